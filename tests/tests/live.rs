//! `devourer capture` on a veth end in a test namespace, against tcpdump on the same interface:
//! per-direction bytes and packets equal, in TC and XDP mode; SIGTERM flushes and detaches; a
//! closed stdout ends the agent cleanly.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use devourer_tests::*;

/// Starts the agent in namespace A on its veth end; returns once it is capturing.
fn start_agent(link: &Link, mode: &str, out: &Path, log: &Path, extra: &[&str]) -> Bg {
    let mut args = vec![
        "-i",
        &link.if_a,
        "--mode",
        mode,
        "--agent-name",
        "live-agent",
    ];
    args.extend(["--scan-interval", "200ms"]);
    args.extend(extra);
    start_capture(&link.a, &args, Some(out), log)
}

fn traffic(link: &Link) {
    let servers = start_servers(&link.b);
    let (ip4b, ip6b) = (&link.ip4_b, &link.ip6_b);
    link.a.sh(&format!(
        "ping -c 5 -i 0.2 {ip4b} >/dev/null
         ping -6 -c 3 -i 0.2 {ip6b} >/dev/null
         for i in 1 2 3; do curl -sf -o /dev/null http://{ip4b}:8000/; done
         curl -sf -o /dev/null 'http://[{ip6b}]:8000/'
         iperf3 -c {ip4b} -p 5201 -n 3M -b 300M >/dev/null
         iperf3 -c {ip6b} -p 5201 -u -b 20M -n 1M -l 1200 >/dev/null
         python3 -c \"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in range(30000, 30200):
    s.sendto(b'z' * (port % 50), ('{ip4b}', port))
\"
         sleep 0.5"
    ));
    drop(servers);
}

fn live_matches_tcpdump(mode: &str) {
    let tmp = TempDir::new(&format!("live-{mode}"));
    let link = Link::new();
    let pcap = tmp.path("live.pcap");
    let (out, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
    let dump = tcpdump(&link.a, &link.if_a, &pcap);
    let agent = start_agent(&link, mode, &out, &log, &[]);
    traffic(&link);
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    dump.stop(libc::SIGINT, Duration::from_secs(10));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        res.status.success(),
        "agent exit {}: {log_text}",
        res.status
    );
    assert!(log_text.contains("stopping (SIGTERM)"), "{log_text}");

    let addrs = link.addrs();
    let (oracle, _) = tshark_sums(&pcap, Some(&addrs));
    let recs = records(&std::fs::read(&out).unwrap());
    assert_same_sums(
        &devourer_sums(&recs, Some(&addrs)),
        &oracle,
        &format!("live --mode {mode}"),
    );
    community_ids_match_tshark(&pcap, &recs);
    assert!(oracle.len() > 200, "many flows: {}", oracle.len());
    assert!(
        recs.iter()
            .all(|r| r["interface"] == link.if_a.as_str() && r["agent"] == "live-agent")
    );
    // Idle timeout is 120 s: everything still open was flushed by SIGTERM.
    assert!(recs.iter().any(|r| r["status"] == "shutdown"));
    // TCP records are oriented from the client (A) to the servers' ports.
    for r in recs.iter().filter(|r| r["protocol"] == "tcp") {
        let src = r["src_addr"].as_str().unwrap();
        assert!(
            src == link.ip4_a || src == link.ip6_a,
            "client is in A: {r}"
        );
        assert!(
            r["dst_port"] == 8000 || r["dst_port"] == 5201,
            "client -> server: {r}"
        );
    }
    // Detached: no XDP program and no TC filter is left on the interface.
    let shown = link.a.sh(&format!(
        "ip link show dev {}; tc filter show dev {} ingress; tc filter show dev {} egress",
        link.if_a, link.if_a, link.if_a
    ));
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(!shown.contains("xdp"), "{shown}");
    assert!(!shown.contains("devourer"), "{shown}");
}

#[test]
fn live_tc_counts_match_tcpdump_and_sigterm_flushes() {
    if !require_root("live_tc_counts_match_tcpdump_and_sigterm_flushes") {
        return;
    }
    live_matches_tcpdump("tc");
}

#[test]
fn live_xdp_counts_match_tcpdump_and_sigterm_flushes() {
    if !require_root("live_xdp_counts_match_tcpdump_and_sigterm_flushes") {
        return;
    }
    live_matches_tcpdump("xdp");
}

#[test]
fn idle_flows_are_emitted_while_running() {
    if !require_root("idle_flows_are_emitted_while_running") {
        return;
    }
    let tmp = TempDir::new("idle");
    let link = Link::new();
    let (out, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
    let agent = start_agent(
        &link,
        "tc",
        &out,
        &log,
        &["--idle-timeout", "1s", "--evict-after", "500ms"],
    );
    link.a.sh(&format!("ping -c 2 -i 0.2 {}", link.ip4_b));
    let emitted = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|s| {
            s.lines()
                .any(|l| l.contains("\"protocol\":\"icmp\"") && l.contains("idle_timeout"))
        })
    });
    let res = agent.stop(libc::SIGINT, Duration::from_secs(20));
    assert!(emitted, "{}", std::fs::read_to_string(&log).unwrap());
    assert!(res.status.success());
    let recs = records(&std::fs::read(&out).unwrap());
    let icmp: Vec<_> = recs.iter().filter(|r| r["protocol"] == "icmp").collect();
    assert_eq!(icmp.len(), 1, "{recs:?}");
    assert_eq!(
        (
            icmp[0]["src_packets"].as_u64(),
            icmp[0]["dst_packets"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(icmp[0]["status"], "idle_timeout");
}

#[test]
fn a_closed_stdout_ends_the_agent_cleanly() {
    if !require_root("a_closed_stdout_ends_the_agent_cleanly") {
        return;
    }
    let tmp = TempDir::new("epipe");
    let link = Link::new();
    let log = tmp.path("agent.log");
    let mut cmd = link.a.cmd(devourer_bin());
    cmd.args([
        "capture",
        "-i",
        &link.if_a,
        "--idle-timeout",
        "1s",
        "--evict-after",
        "200ms",
    ])
    .args(["--scan-interval", "200ms"])
    .stdout(Stdio::piped())
    .stderr(File::create(&log).unwrap());
    let mut agent = Bg::spawn(cmd, "devourer capture");
    let stdout = agent.child.as_mut().unwrap().stdout.take().unwrap();
    let pinger = Bg::spawn(
        {
            let mut c = link.a.cmd("ping");
            c.args(["-i", "0.3", "-c", "100", &link.ip4_b])
                .stdout(Stdio::null());
            c
        },
        "ping",
    );
    // Read one record, then close our end, like `devourer capture ... | head -1`.
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    assert!(first.contains("\"type\":\"flow\""), "{first}");
    // Pings with a 1 s idle timeout: UDP-less ICMP flow stays open; force new flows instead.
    link.a.sh(&format!(
        "for p in 1 2 3 4 5; do echo x > /dev/udp/{}/4000$p; sleep 0.3; done",
        link.ip4_b
    ));
    let child = agent.child.as_mut().unwrap();
    let exited = wait_for(Duration::from_secs(15), || {
        child.try_wait().unwrap().is_some()
    });
    drop(pinger);
    assert!(
        exited,
        "agent still running after its stdout closed:\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("output closed")
    );
}

#[test]
fn unknown_interface_and_no_interface_are_clear_errors() {
    if !require_root("unknown_interface_and_no_interface_are_clear_errors") {
        return;
    }
    let out = Command::new(devourer_bin())
        .args(["capture", "-i", "nosuchif0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown interface \"nosuchif0\""), "{err}");
    let out = Command::new(devourer_bin())
        .args(["capture"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass -i IFACE"));
    let out = Command::new(devourer_bin())
        .args(["capture", "-i", "lo", "--idle-timeout", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--idle-timeout"));
}

/// Tagged frames sent from B with a raw socket: at TC ingress on A the kernel has moved the
/// outer tag into `skb->vlan_tci`; XDP sees it in the frame. Both must report the outer id.
fn tagged_frames_keep_their_outer_vlan(mode: &str) {
    use devourer_tests::frames::*;
    let tmp = TempDir::new(&format!("vlan-{mode}"));
    let link = Link::new();
    let mac = |ns: &Netns, ifc: &str| {
        let out = ns.sh(&format!("cat /sys/class/net/{ifc}/address"));
        String::from_utf8_lossy(&out.stdout).trim().replace(':', "")
    };
    let (mac_a, mac_b) = (mac(&link.a, &link.if_a), mac(&link.b, &link.if_b));
    let with_macs = |f: Vec<u8>| {
        let mut f = f;
        let hex = |s: &str| {
            (0..6)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
                .collect::<Vec<_>>()
        };
        f[..6].copy_from_slice(&hex(&mac_a));
        f[6..12].copy_from_slice(&hex(&mac_b));
        f
    };
    let mut frames = Vec::new();
    for i in 0..5u16 {
        frames.push(eth(
            &[(0x8100, 100)],
            0x0800,
            &ipv4(B4, A4, 17, &udp(7000 + i, 53, &[1; 40]), 0, 0),
        ));
        frames.push(eth(
            &[(0x88a8, 200), (0x8100, 300)],
            0x0800,
            &ipv4(B4, A4, 17, &udp(8000, 53, &[2; 60]), 0, 0),
        ));
        frames.push(eth(
            &[(0x8100, 0)],
            0x86dd,
            &ipv6(B6, A6, 17, &[], &udp(9000, 53, &[3; 20])),
        ));
    }
    let hexfile = tmp.path("frames.hex");
    let text: String = frames
        .into_iter()
        .map(|f| {
            with_macs(f)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                + "\n"
        })
        .collect();
    std::fs::write(&hexfile, text).unwrap();
    let pcap = tmp.path("vlan.pcap");
    let (out, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
    let dump = tcpdump(&link.a, &link.if_a, &pcap);
    let agent = start_agent(&link, mode, &out, &log, &[]);
    link.b.sh(&format!(
        "python3 -c \"
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('{}', 0))
for line in open('{}'):
    s.send(bytes.fromhex(line.strip()))
\"
         sleep 0.3",
        link.if_b,
        hexfile.display()
    ));
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    dump.stop(libc::SIGINT, Duration::from_secs(10));
    assert!(res.status.success());
    // Only the crafted frames: link-local multicast chatter may fall between the two starts.
    let addrs: Vec<String> = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"]
        .map(String::from)
        .to_vec();
    let (oracle, _) = tshark_sums(&pcap, Some(&addrs));
    let recs = records(&std::fs::read(&out).unwrap());
    assert_same_sums(
        &devourer_sums(&recs, Some(&addrs)),
        &oracle,
        &format!("tagged frames, --mode {mode}"),
    );
    let vlans: std::collections::BTreeSet<u64> =
        recs.iter().filter_map(|r| r["vlan"].as_u64()).collect();
    assert_eq!(vlans, [0, 100, 200].into_iter().collect(), "{recs:?}");
}

#[test]
fn live_tc_reads_the_vlan_tag_the_kernel_moved_out_of_the_frame() {
    if !require_root("live_tc_reads_the_vlan_tag_the_kernel_moved_out_of_the_frame") {
        return;
    }
    tagged_frames_keep_their_outer_vlan("tc");
}

#[test]
fn live_xdp_reads_vlan_tags_in_the_frame() {
    if !require_root("live_xdp_reads_vlan_tags_in_the_frame") {
        return;
    }
    tagged_frames_keep_their_outer_vlan("xdp");
}

#[test]
fn live_filters_drop_what_their_rules_say_and_count_it_per_rule() {
    if !require_root("live_filters_drop_what_their_rules_say_and_count_it_per_rule") {
        return;
    }
    let tmp = TempDir::new("live-filter");
    let link = Link::new();
    let (out, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
    let agent = start_agent(
        &link,
        "tc",
        &out,
        &log,
        &["--filter", "drop proto icmp", "--filter", "keep port 8000"],
    );
    let servers = start_servers(&link.b);
    link.a.sh(&format!(
        "ping -c 4 -i 0.1 {b} >/dev/null
         curl -sf -o /dev/null http://{b}:8000/",
        b = link.ip4_b
    ));
    drop(servers);
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(res.status.success(), "{log_text}");
    let recs = records(&std::fs::read(&out).unwrap());
    assert!(
        !recs.iter().any(|r| r["protocol"] == "icmp"),
        "no ICMP record: the first rule drops it"
    );
    let web = recs
        .iter()
        .find(|r| r["protocol"] == "tcp" && r["dst_port"] == 8000)
        .expect("the web flow, kept by the second rule");
    assert!(web["src_packets"].as_u64().unwrap() >= 4, "{web}");
    // Echo requests and replies were seen and dropped, nothing else.
    assert_eq!(log_number(&log_text, "filtered"), Some(8), "{log_text}");
}
