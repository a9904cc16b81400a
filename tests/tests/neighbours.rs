//! What a hostile neighbour on the node cannot do: crowd the probes out by holding connections
//! to the metrics port, write byte counts into records with forged IP lengths, or name other
//! clients' connections with its own DNS answers.

use std::time::Duration;

use devourer_tests::{frames::*, *};
use pcap_file::DataLink;
use serde_json::Value;

#[test]
fn a_crowd_on_the_metrics_port_cannot_starve_the_probes_or_other_peers() {
    if !require_root("a_crowd_on_the_metrics_port_cannot_starve_the_probes_or_other_peers") {
        return;
    }
    let tmp = TempDir::new("crowd");
    let link = Link::new();
    let log = tmp.path("agent.log");
    let agent = start_capture(
        &link.b,
        &[
            &["-i", &link.if_b, "--metrics-addr", "0.0.0.0:9402"][..],
            &QUICK_TIMEOUTS,
        ]
        .concat(),
        None,
        &log,
    );
    // 200 threads in another namespace open, hold and close connections, for 11 s.
    let crowd = format!(
        r#"
import socket, threading, time
end = time.time() + 11
def churn():
    while time.time() < end:
        try:
            s = socket.create_connection(('{b}', 9402), timeout=1)
            time.sleep(0.5)
            s.close()
        except OSError:
            time.sleep(0.05)
ts = [threading.Thread(target=churn) for _ in range(200)]
[t.start() for t in ts]
[t.join() for t in ts]
"#,
        b = link.ip4_b
    );
    let mut cmd = link.a.cmd("python3");
    cmd.args(["-c", &crowd]);
    let crowd = Bg::spawn(cmd, "connection crowd");
    std::thread::sleep(Duration::from_secs(1));
    let prober = Prober::start(&link.b, "http://127.0.0.1:9404/healthz");
    // Another peer of the metrics port is served too: one peer holds at most its share.
    let mut scraped = 0;
    for _ in 0..8 {
        if http_get(&link.b, "http://127.0.0.1:9402/metrics").0 == 200 {
            scraped += 1;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let (probes, answered) = prober.stop();
    drop(crowd);
    let (_, metrics) = http_get(&link.b, "http://127.0.0.1:9402/metrics");
    let stopped = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    assert!(stopped.status.success());
    assert_eq!(answered, probes, "/healthz answered every probe");
    assert_eq!(
        scraped, 8,
        "the metrics endpoint served another peer throughout"
    );
    let refused = series(
        &metrics,
        "devourer_limit_hits_total{limit=\"max_connections_per_peer\"}",
    );
    assert!(
        refused.unwrap_or(0.0) > 100.0,
        "the crowd was cut to its share: {refused:?}"
    );
}

/// 74-byte UDP frames from A's address to B's whose IPv4 header claims 65,535 bytes.
fn forged(src: [u8; 4], dst: [u8; 4], n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let mut ip = ipv4(src, dst, 17, &udp(4444, 9, &[0u8; 32]), 0, 0);
            ip[2..4].copy_from_slice(&65535u16.to_be_bytes());
            let f = eth4(&ip);
            assert_eq!(f.len(), 74);
            f
        })
        .collect()
}

fn flows_from_port(recs: &[Value], port: u16) -> Vec<&Value> {
    recs.iter()
        .filter(|r| r["type"] == "flow" && (r["src_port"] == port || r["dst_port"] == port))
        .collect()
}

#[test]
fn an_ip_length_past_the_frame_is_malformed_live_in_tc_and_xdp_and_offline() {
    if !require_root("an_ip_length_past_the_frame_is_malformed_live_in_tc_and_xdp_and_offline") {
        return;
    }
    let tmp = TempDir::new("forged");
    // Offline: the frames' original length is all they carried.
    let pcap = tmp.path("forged.pcap");
    write_pcap(
        &pcap,
        DataLink::ETHERNET,
        &forged(A4, B4, 100),
        1_700_000_000,
    );
    let (status, stdout, stderr) = devourer_read(&pcap, &[]);
    assert!(status.success(), "{stderr}");
    assert!(
        flows_from_port(&records(&stdout), 4444).is_empty(),
        "offline: {stderr}"
    );
    assert_eq!(log_number(&stderr, "malformed"), Some(100), "{stderr}");

    for mode in ["tc", "xdp"] {
        let link = Link::new();
        let out = tmp.path(&format!("{mode}.jsonl"));
        let log = tmp.path(&format!("{mode}.log"));
        let agent = start_capture(
            &link.b,
            &[
                &["-i", &link.if_b, "--mode", mode, "--metrics-addr", "off"][..],
                &QUICK_TIMEOUTS,
            ]
            .concat(),
            Some(&out),
            &log,
        );
        let mac_b = link
            .b
            .sh(&format!("cat /sys/class/net/{}/address", link.if_b));
        let mac_b = String::from_utf8_lossy(&mac_b.stdout)
            .trim()
            .replace(':', "");
        let ip = |s: &str| -> [u8; 4] { s.parse::<std::net::Ipv4Addr>().unwrap().octets() };
        let frames: Vec<String> = forged(ip(&link.ip4_a), ip(&link.ip4_b), 100)
            .into_iter()
            .map(|mut f| {
                f[..6].copy_from_slice(&hex(&mac_b));
                f.iter().map(|b| format!("{b:02x}")).collect()
            })
            .collect();
        // Written raw from A's side (what a pod with NET_RAW can do), plus one real ping.
        let script = format!(
            "import socket\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('{}', 0))\nfor f in {:?}:\n    s.send(bytes.fromhex(f))\n",
            link.if_a, frames
        );
        run(link.a.cmd("python3").args(["-c", &script]));
        link.a
            .sh(&format!("ping -q -c 1 -W 1 {} >/dev/null", link.ip4_b));
        std::thread::sleep(Duration::from_millis(500));
        let stopped = agent.stop(libc::SIGTERM, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&stopped.stderr).into_owned()
            + &std::fs::read_to_string(&log).unwrap();
        assert!(stopped.status.success(), "{stderr}");
        let recs = records(&std::fs::read(&out).unwrap());
        assert!(
            flows_from_port(&recs, 4444).is_empty(),
            "{mode}: a forged length made a record: {:?}",
            flows_from_port(&recs, 4444)
        );
        assert!(
            recs.iter().any(|r| r["protocol"] == "icmp"),
            "{mode}: the ping is counted"
        );
        assert!(
            log_number(&stderr, "malformed").is_some_and(|n| n >= 100),
            "{mode}: {stderr}"
        );
    }
}

fn hex(s: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// A TCP SYN from `src`:`port` to `dst`:443.
fn syn(src: [u8; 4], dst: [u8; 4], port: u16) -> Vec<u8> {
    eth4(&ipv4(src, dst, 6, &tcp(port, 443, 0x02, &[]), 0, 0))
}

fn dst_name_of(recs: &[Value], port: u16) -> Value {
    recs.iter()
        .find(|r| r["type"] == "flow" && r["src_port"] == port)
        .unwrap_or_else(|| panic!("no flow from port {port}"))["dst_name"]
        .clone()
}

#[test]
fn a_name_one_client_resolved_never_labels_another_clients_flow() {
    if !require_root("a_name_one_client_resolved_never_labels_another_clients_flow") {
        return;
    }
    let tmp = TempDir::new("names");
    let (a, b, resolver) = ([198, 18, 40, 2], [198, 18, 40, 3], [198, 18, 40, 53]);
    let (target, bank) = ([192, 0, 2, 80], [198, 51, 100, 1]);
    let answer = dns_response(
        7,
        "evil.test",
        &[
            Rr::Cname("evil.test", "edge.evil.test"),
            Rr::A("edge.evil.test", target),
            // Not on the question's chain: must not name anything.
            Rr::A("bank.example", bank),
        ],
    );
    let frames = vec![
        eth4(&ipv4(
            a,
            resolver,
            17,
            &udp(5000, 53, &dns(7, "evil.test", None)),
            0,
            0,
        )),
        eth4(&ipv4(resolver, a, 17, &udp(53, 5000, &answer), 0, 0)),
        // A, who resolved it, connects; so does B, who resolved nothing.
        syn(a, target, 40001),
        syn(b, target, 40002),
        syn(a, bank, 40003),
    ];
    let pcap = tmp.path("names.pcap");
    write_pcap(&pcap, DataLink::ETHERNET, &frames, 1_700_000_000);
    let (status, stdout, stderr) = devourer_read(&pcap, &[]);
    assert!(status.success(), "{stderr}");
    let recs = records(&stdout);
    assert_eq!(dst_name_of(&recs, 40001), "evil.test");
    assert_eq!(dst_name_of(&recs, 40002), Value::Null, "B resolved nothing");
    assert_eq!(
        dst_name_of(&recs, 40003),
        Value::Null,
        "an address off the chain"
    );
    // The old behaviour on request.
    let (status, stdout, stderr) = devourer_read(&pcap, &["--dns-names", "shared"]);
    assert!(status.success(), "{stderr}");
    assert_eq!(dst_name_of(&records(&stdout), 40002), "evil.test");
    // This host's addresses are one client (a local caching resolver asks for all of them).
    let (status, stdout, stderr) = devourer_read(&pcap, &["--local-net", "198.18.40.0/24"]);
    assert!(status.success(), "{stderr}");
    assert_eq!(dst_name_of(&records(&stdout), 40002), "evil.test");
}
