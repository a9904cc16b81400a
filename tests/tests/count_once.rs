//! Count once on what a real node has beyond a bridge and veths: L3 devices (tun here; WireGuard,
//! IPIP and GRE run in the kernel-matrix VMs, see `kernels.rs`). Oracle: what crossed the
//! device as its far end wrote and read it.

use std::{
    io::{BufRead, BufReader, Write},
    process::Stdio,
    time::Duration,
};

use devourer_tests::*;

/// Ten ICMP echo requests written into a tun device and answered by the kernel: one flow with
/// the inner addresses and every packet and byte, in TC and XDP mode (XDP falls back to TC on
/// a device without a link header).
#[test]
fn a_tun_devices_packets_are_counted_from_their_ip_header_in_tc_and_xdp_modes() {
    if !require_root("a_tun_devices_packets_are_counted_from_their_ip_header_in_tc_and_xdp_modes")
    {
        return;
    }
    for mode in ["tc", "xdp"] {
        let tmp = TempDir::new(&format!("tun-{mode}"));
        let ns = Netns::new("dvtun");
        let mut peer = ns.cmd(env!("CARGO_BIN_EXE_tun_echo"));
        peer.args(["tun0", "10"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut peer = peer.spawn().expect("start tun_echo");
        let mut out = BufReader::new(peer.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "tun_echo did not start");

        let recs_file = tmp.path("out.jsonl");
        let log = tmp.path("agent.log");
        let mut args = vec!["-i", "tun0", "--mode", mode, "--metrics-addr", "off"];
        args.extend_from_slice(&QUICK_TIMEOUTS);
        let agent = start_capture(&ns, &args, Some(&recs_file), &log);
        peer.stdin.take().unwrap().write_all(b"go\n").unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        assert!(peer.wait().unwrap().success());
        let oracle: Vec<u64> = line
            .split_whitespace()
            .map(|kv| kv.split_once('=').unwrap().1.parse().unwrap())
            .collect();
        assert_eq!(oracle, [10, 840, 10, 840], "{mode}: the kernel answered every echo");
        std::thread::sleep(Duration::from_millis(300));
        agent.stop(libc::SIGTERM, Duration::from_secs(20));
        let log = std::fs::read_to_string(&log).unwrap();
        let recs = records(&std::fs::read(&recs_file).unwrap());
        let flows: Vec<_> = recs.iter().filter(|r| r["type"] == "flow").collect();
        assert_eq!(flows.len(), 1, "{mode}: one flow: {flows:?}\n{log}");
        let f = flows[0];
        assert_eq!(
            (&f["src_addr"], &f["dst_addr"], &f["protocol"]),
            (&"10.9.0.2".into(), &"10.9.0.1".into(), &"icmp".into()),
            "{mode}: {f}"
        );
        let n = |k: &str| f[k].as_u64().unwrap();
        assert_eq!(
            vec![n("src_packets"), n("src_bytes"), n("dst_packets"), n("dst_bytes")],
            oracle,
            "{mode}: {f}"
        );
        assert_eq!(f["interface"], "tun0");
        assert!(log.contains("(L3"), "{mode}: attached as an L3 device: {log}");
    }
}
