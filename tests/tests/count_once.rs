//! Count once on what a real node has beyond a bridge and veths: L3 devices (tun here; WireGuard,
//! IPIP and GRE run in the kernel-matrix VMs, see `kernels.rs`). Oracle: what crossed the
//! device as its far end wrote and read it.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Duration,
};

use devourer_tests::*;

/// Ten ICMP echo requests written into a tun device and answered by the kernel: one flow with
/// the inner addresses and every packet and byte, in TC and XDP mode (XDP falls back to TC on
/// a device without a link header).
#[test]
fn a_tun_devices_packets_are_counted_from_their_ip_header_in_tc_and_xdp_modes() {
    if !require_root("a_tun_devices_packets_are_counted_from_their_ip_header_in_tc_and_xdp_modes") {
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
        assert_eq!(
            oracle,
            [10, 840, 10, 840],
            "{mode}: the kernel answered every echo"
        );
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
            vec![
                n("src_packets"),
                n("src_bytes"),
                n("dst_packets"),
                n("dst_bytes")
            ],
            oracle,
            "{mode}: {f}"
        );
        assert_eq!(f["interface"], "tun0");
        assert!(
            log.contains("(L3"),
            "{mode}: attached as an L3 device: {log}"
        );
    }
}

/// The underlay's and the overlay's addresses: the node and the outside joined by a veth pair
/// (`up0` / `eth0`), and a VLAN or tunnel device on each end carrying the inner network.
const NODE_UL: &str = "192.168.77.1";
const OUTSIDE_UL: &str = "192.168.77.2";
const NODE_IN: &str = "10.10.0.1";
const OUTSIDE_IN: &str = "10.10.0.2";
const OFFLOADS_OFF: &str = "tso off gso off gro off tx off rx off";

/// What carries the inner network between the node and the outside.
#[derive(Clone, Copy, Debug)]
enum Over {
    Vlan,
    Ipip,
    Gre,
    Wireguard,
}

impl Over {
    /// The device on each end.
    fn device(self) -> &'static str {
        match self {
            Over::Vlan => "eth0.100",
            Over::Ipip | Over::Gre => "t0",
            Over::Wireguard => "wg0",
        }
    }

    /// The `tunnel` label of the outer traffic's records (none for a VLAN: one flow).
    fn label(self) -> Option<&'static str> {
        match self {
            Over::Vlan => None,
            Over::Ipip => Some("ipip"),
            Over::Gre => Some("gre"),
            Over::Wireguard => Some("wireguard"),
        }
    }

    /// Creates the device in `ns` (whose underlay device is `under`, with `local` and the far
    /// end's `remote` address; `keys`: this end's private key file and the far end's public
    /// key, for WireGuard), addresses it `inner`. False when the kernel has no such device.
    fn create(
        self,
        ns: &Netns,
        under: &str,
        (local, remote): (&str, &str),
        inner: &str,
        keys: &(String, String),
    ) -> bool {
        let dev = self.device();
        let make = match self {
            Over::Vlan => format!("ip link add link {under} name {dev} type vlan id 100"),
            Over::Ipip => format!("ip link add {dev} type ipip local {local} remote {remote}"),
            Over::Gre => format!("ip link add {dev} type gre local {local} remote {remote}"),
            Over::Wireguard => format!(
                "ip link add {dev} type wireguard
                 wg set {dev} listen-port 51820 private-key {} peer {} allowed-ips 10.10.0.0/24 endpoint {remote}:51820",
                keys.0, keys.1
            ),
        };
        let made = ns
            .cmd("bash")
            .args(["-euo", "pipefail", "-c", &make])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if made {
            ns.sh(&format!(
                "ethtool -K {dev} {OFFLOADS_OFF} >/dev/null 2>&1 || true
                 echo 1 > /proc/sys/net/ipv6/conf/{dev}/disable_ipv6
                 ip addr add {inner}/24 dev {dev}
                 ip link set {dev} up"
            ));
        }
        made
    }
}

/// A WireGuard key pair's files in `tmp`: (private key file, public key).
fn wg_keys(tmp: &TempDir, name: &str) -> (String, String) {
    let key = run(Command::new("wg").arg("genkey")).stdout;
    let file = tmp.path(name);
    std::fs::write(&file, &key).unwrap();
    let mut pubkey = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey");
    pubkey.stdin.take().unwrap().write_all(&key).unwrap();
    let out = pubkey.wait_with_output().unwrap();
    (
        file.display().to_string(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

/// The matrix's guests set this: there the devices must exist, and a test that cannot make one
/// fails instead of skipping.
fn devices_required() -> bool {
    std::env::var_os("DEVOURER_REQUIRE_DEVICES").is_some()
}

/// The agent with `--all-interfaces` in the node namespace, which reaches the outside over
/// `over` (its underlay device too attached): ping, HTTP and iperf3 on the inner network. Each
/// inner packet is counted once, as tcpdump on the outside's inner device saw it, and the
/// encapsulated copies on the underlay are records of their own marked `tunnel` (for a VLAN,
/// the tagged and untagged copies are one flow, with its tag).
fn counted_once_over(over: Over, test: &str) {
    if !require_root(test) {
        return;
    }
    for mode in ["tc", "xdp"] {
        let tmp = TempDir::new(&format!("over-{over:?}-{mode}"));
        let node = Netns::new("dvnode");
        let outside = Netns::new("dvout");
        sh(&format!(
            "ip link add up0 netns {n} type veth peer name eth0 netns {o}",
            n = node.name,
            o = outside.name
        ));
        for (ns, dev, ul) in [(&node, "up0", NODE_UL), (&outside, "eth0", OUTSIDE_UL)] {
            ns.sh(&format!(
                "ip addr add {ul}/24 dev {dev}
                 ethtool -K {dev} {OFFLOADS_OFF} >/dev/null 2>&1 || true
                 echo 1 > /proc/sys/net/ipv6/conf/{dev}/disable_ipv6
                 ip link set {dev} up"
            ));
        }
        let (kn, ko) = match over {
            Over::Wireguard => (wg_keys(&tmp, "node.key"), wg_keys(&tmp, "out.key")),
            _ => Default::default(),
        };
        let made = over.create(
            &node,
            "up0",
            (NODE_UL, OUTSIDE_UL),
            NODE_IN,
            &(kn.0.clone(), ko.1.clone()),
        ) && over.create(
            &outside,
            "eth0",
            (OUTSIDE_UL, NODE_UL),
            OUTSIDE_IN,
            &(ko.0, kn.1),
        );
        if !made {
            assert!(
                !devices_required(),
                "{test}: this kernel cannot make a {over:?} device"
            );
            eprintln!(
                "SKIP {test}: this kernel has no {over:?} devices (the kernel matrix runs it)"
            );
            return;
        }
        let _servers = start_servers(&outside);
        let (inner_pcap, outer_pcap) = (tmp.path("inner.pcap"), tmp.path("outer.pcap"));
        let inner_dump = tcpdump(&outside, over.device(), &inner_pcap);
        let outer_dump = tcpdump(&outside, "eth0", &outer_pcap);
        let (out, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
        let agent = start_capture(
            &node,
            &["--all-interfaces", "--mode", mode, "--metrics-addr", "off"],
            Some(&out),
            &log,
        );
        node.sh(&format!(
            "ping -q -c 5 -i 0.2 -W 2 {OUTSIDE_IN} >/dev/null
             curl -sf -o /dev/null http://{OUTSIDE_IN}:8000/
             iperf3 -c {OUTSIDE_IN} -p 5201 -n 200K >/dev/null"
        ));
        std::thread::sleep(Duration::from_millis(300));
        inner_dump.stop(libc::SIGINT, Duration::from_secs(10));
        outer_dump.stop(libc::SIGINT, Duration::from_secs(10));
        agent.stop(libc::SIGTERM, Duration::from_secs(20));
        let log = std::fs::read_to_string(&log).unwrap();
        let recs = records(&std::fs::read(&out).unwrap());
        let what = format!("{over:?}, --mode {mode}");

        let inner_addrs = vec![NODE_IN.to_owned(), OUTSIDE_IN.to_owned()];
        let inner: Vec<_> = recs
            .iter()
            .filter(|r| r["tunnel"].is_null())
            .cloned()
            .collect();
        let (oracle, _) = tshark_sums(&inner_pcap, Some(&inner_addrs));
        assert!(!oracle.is_empty(), "{what}: no inner traffic captured");
        assert_same_sums(
            &devourer_sums(&inner, Some(&inner_addrs)),
            &oracle,
            &format!("{what}: inner traffic\n{log}"),
        );
        let outer_addrs = vec![NODE_UL.to_owned(), OUTSIDE_UL.to_owned()];
        let outer: Vec<_> = recs
            .iter()
            .filter(|r| {
                r["type"] == "flow"
                    && r["src_addr"]
                        .as_str()
                        .is_some_and(|a| outer_addrs.iter().any(|o| o == a))
            })
            .cloned()
            .collect();
        match over.label() {
            None => {
                assert!(outer.is_empty(), "{what}: {outer:?}");
                let tagged = recs
                    .iter()
                    .filter(|r| r["type"] == "flow" && r["src_addr"] == NODE_IN)
                    .all(|r| r["vlan"] == 100);
                assert!(tagged, "{what}: every inner flow carries its tag: {recs:?}");
            }
            Some(label) => {
                assert!(
                    outer.iter().all(|r| r["tunnel"] == label),
                    "{what}: the outer records are marked {label}: {outer:?}"
                );
                let (oracle, _) = tshark_sums(&outer_pcap, Some(&outer_addrs));
                assert_same_sums(
                    &devourer_sums(&outer, Some(&outer_addrs)),
                    &oracle,
                    &format!("{what}: encapsulated traffic"),
                );
            }
        }
    }
}

#[test]
fn a_packet_on_a_vlan_device_and_its_tagged_parent_counts_once_with_its_tag() {
    counted_once_over(
        Over::Vlan,
        "a_packet_on_a_vlan_device_and_its_tagged_parent_counts_once_with_its_tag",
    );
}

#[test]
fn ipip_inner_traffic_counts_once_and_the_outer_copy_is_marked_ipip() {
    counted_once_over(
        Over::Ipip,
        "ipip_inner_traffic_counts_once_and_the_outer_copy_is_marked_ipip",
    );
}

#[test]
fn gre_inner_traffic_counts_once_and_the_outer_copy_is_marked_gre() {
    counted_once_over(
        Over::Gre,
        "gre_inner_traffic_counts_once_and_the_outer_copy_is_marked_gre",
    );
}

#[test]
fn wireguard_inner_traffic_counts_once_and_the_outer_copy_is_marked_wireguard() {
    counted_once_over(
        Over::Wireguard,
        "wireguard_inner_traffic_counts_once_and_the_outer_copy_is_marked_wireguard",
    );
}

/// A TCP super-packet written into a tun device with a virtio-net header (as a virtio NIC or
/// a VM's tap hands them over: `SKB_GSO_DODGY`, `gso_segs` 0) counts as its segments on the
/// wire, headers and all, in TC and XDP mode.
#[test]
fn a_dodgy_gso_packet_counts_its_segments_from_its_size() {
    if !require_root("a_dodgy_gso_packet_counts_its_segments_from_its_size") {
        return;
    }
    for mode in ["tc", "xdp"] {
        let tmp = TempDir::new(&format!("dodgy-{mode}"));
        let ns = Netns::new("dvgso");
        let mut peer = ns.cmd(env!("CARGO_BIN_EXE_tun_echo"));
        peer.args(["--gso", "tun0", "10"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut peer = peer.spawn().expect("start tun_echo");
        let mut out = BufReader::new(peer.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "tun_echo did not start");
        let (recs_file, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
        let agent = start_capture(
            &ns,
            &["-i", "tun0", "--mode", mode, "--metrics-addr", "off"],
            Some(&recs_file),
            &log,
        );
        peer.stdin.take().unwrap().write_all(b"go\n").unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        assert!(peer.wait().unwrap().success());
        assert_eq!(line.trim(), "sent=10 sent_bytes=10400");
        std::thread::sleep(Duration::from_millis(300));
        agent.stop(libc::SIGTERM, Duration::from_secs(20));
        let recs = records(&std::fs::read(&recs_file).unwrap());
        let f = recs
            .iter()
            .find(|r| r["type"] == "flow" && r["src_port"] == 40000)
            .unwrap_or_else(|| panic!("{mode}: no flow from the super-packet's sender: {recs:?}"));
        assert_eq!(
            (f["src_packets"].as_u64(), f["src_bytes"].as_u64()),
            (Some(10), Some(10_400)),
            "{mode}: {f}"
        );
    }
}
