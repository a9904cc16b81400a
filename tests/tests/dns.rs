//! DNS end to end: dig against a real dnsmasq in a test namespace (UDP and TCP, A, AAAA, MX,
//! TXT, NXDOMAIN, a large TXT over TCP, queries forwarded to an upstream that never answers), a
//! response nobody asked for, and a flow to a resolved address. Every transaction is compared
//! with tshark's own query/response matching on a capture of the same traffic.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use devourer_tests::*;
use serde_json::Value;

/// What both sides must agree on for one transaction.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Tx {
    status: String,
    client: String,
    client_port: u16,
    server: String,
    server_port: u16,
    transport: String,
    id: u16,
    q_name: String,
    q_type: String,
    rcode: Option<String>,
}

fn type_name(t: &str) -> String {
    match t {
        "1" => "A",
        "28" => "AAAA",
        "15" => "MX",
        "16" => "TXT",
        "6" => "SOA",
        other => other,
    }
    .to_owned()
}

fn rcode_name(r: &str) -> String {
    match r {
        "0" => "NOERROR",
        "2" => "SERVFAIL",
        "3" => "NXDOMAIN",
        "5" => "REFUSED",
        other => other,
    }
    .to_owned()
}

/// tshark's transactions (its own matching: dns.response_to / dns.response_in / dns.time),
/// with the latency of each answered one.
fn tshark_transactions(pcap: &Path) -> Vec<(Tx, Option<f64>)> {
    let fields = [
        "frame.number",
        "ip.src",
        "ip.dst",
        "ipv6.src",
        "ipv6.dst",
        "udp.srcport",
        "udp.dstport",
        "tcp.srcport",
        "tcp.dstport",
        "dns.id",
        "dns.flags.response",
        "dns.qry.name",
        "dns.qry.type",
        "dns.flags.rcode",
        "dns.time",
        "dns.response_in",
        "dns.response_to",
        "dns.retransmission",
    ];
    let mut cmd = Command::new("tshark");
    // Two passes, so that queries know their response (dns.response_in); DNS quoted inside
    // ICMP errors is not a message of its own.
    cmd.arg("-r")
        .arg(pcap)
        .args(["-n", "-2", "-Y", "dns && !icmp && !icmpv6"]);
    cmd.args(["-T", "fields", "-E", "separator=\t", "-E", "occurrence=f"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = run(&mut cmd);
    let mut txs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let c: Vec<&str> = line.split('\t').collect();
        let g = |i: usize| c.get(i).copied().unwrap_or("");
        let (src, dst) = if g(1).is_empty() {
            (g(3), g(4))
        } else {
            (g(1), g(2))
        };
        let tcp = g(5).is_empty();
        let (sp, dp): (u16, u16) = if tcp {
            (g(7).parse().unwrap(), g(8).parse().unwrap())
        } else {
            (g(5).parse().unwrap(), g(6).parse().unwrap())
        };
        let response = g(10) == "1" || g(10) == "True";
        let retrans = g(17) == "1" || g(17) == "True";
        let (status, latency) = match (response, g(16).is_empty(), g(15).is_empty()) {
            (true, false, _) => ("success", g(14).parse::<f64>().ok()),
            (true, true, _) if !retrans => ("no_query", None),
            (false, _, true) if !retrans => ("lost", None),
            _ => continue,
        };
        let (client, cport, server, sport) = if response {
            (dst, dp, src, sp)
        } else {
            (src, sp, dst, dp)
        };
        txs.push((
            Tx {
                status: status.into(),
                client: client.into(),
                client_port: cport,
                server: server.into(),
                server_port: sport,
                transport: if tcp { "tcp" } else { "udp" }.into(),
                id: u16::from_str_radix(g(9).trim_start_matches("0x"), 16).unwrap(),
                q_name: g(11).into(),
                q_type: type_name(g(12)),
                rcode: response.then(|| rcode_name(g(13))),
            },
            latency,
        ));
    }
    txs.sort_by(|a, b| a.0.cmp(&b.0));
    txs
}

fn devourer_transactions(recs: &[Value]) -> Vec<(Tx, Option<f64>)> {
    let mut txs: Vec<(Tx, Option<f64>)> = recs
        .iter()
        .filter(|r| r["type"] == "dns")
        .map(|r| {
            let s = |f: &str| {
                r[f].as_str()
                    .unwrap_or_else(|| panic!("{f} in {r}"))
                    .to_owned()
            };
            (
                Tx {
                    status: s("status"),
                    client: s("client"),
                    client_port: r["client_port"].as_u64().unwrap() as u16,
                    server: s("server"),
                    server_port: r["server_port"].as_u64().unwrap() as u16,
                    transport: s("transport"),
                    id: r["msg_id"].as_u64().unwrap() as u16,
                    q_name: s("q_name"),
                    q_type: s("q_type"),
                    rcode: r["rcode"].as_str().map(str::to_owned),
                },
                r["latency"].as_f64(),
            )
        })
        .collect();
    txs.sort_by(|a, b| a.0.cmp(&b.0));
    txs
}

/// How far a latency may be from tshark's: 2 ms, or `DEVOURER_LATENCY_TOLERANCE_MS` where the
/// kernel matrix runs this test under software emulation (the program's and tcpdump's clocks
/// are read several emulated instructions apart there). The program stamps a packet at its
/// hook and tcpdump at its own tap, a softirq apart at worst: a CI run saw 1.02 ms between
/// them once in XDP mode; pairing the wrong packets is off by far more.
fn latency_tolerance() -> f64 {
    std::env::var("DEVOURER_LATENCY_TOLERANCE_MS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.002, |ms| ms / 1000.0)
}

fn assert_same_transactions(ours: &[(Tx, Option<f64>)], oracle: &[(Tx, Option<f64>)], what: &str) {
    let a: Vec<&Tx> = ours.iter().map(|t| &t.0).collect();
    let b: Vec<&Tx> = oracle.iter().map(|t| &t.0).collect();
    assert_eq!(a, b, "{what}: transactions differ from tshark's");
    let tolerance = latency_tolerance();
    for ((t, mine), (_, theirs)) in ours.iter().zip(oracle) {
        match (mine, theirs) {
            (Some(x), Some(y)) => assert!(
                (x - y).abs() < tolerance,
                "{what}: latency of {t:?}: devourer {x}, tshark {y}"
            ),
            (None, None) => {}
            other => panic!("{what}: latency of {t:?}: {other:?}"),
        }
    }
}

struct Dns {
    link: Link,
    _dnsmasq: Bg,
    _blackhole: Bg,
    _servers: [Bg; 2],
    spoof_addr: String,
}

/// dnsmasq on B (a local zone, plus a forwarded zone whose upstream never answers) and B's
/// web server.
fn dns_setup() -> Dns {
    let link = Link::new();
    let b = &link.b;
    let n: String = link.ip4_b.split('.').nth(1).unwrap().into();
    let spoof_addr = format!("10.{n}.0.3");
    b.sh(&format!("ip addr add {spoof_addr}/24 dev {}", link.if_b));
    let blackhole = Bg::spawn(
        {
            let mut c = b.cmd("python3");
            c.args([
                "-c",
                "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('127.0.0.1',5399))\nwhile True: s.recv(4096)",
            ]);
            c
        },
        "blackhole",
    );
    let big: Vec<String> = (0..8)
        .map(|i| format!("\"{}\"", "x".repeat(200 + i)))
        .collect();
    let mut dnsmasq = b.cmd("dnsmasq");
    dnsmasq
        .args([
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--port=53",
        ])
        .arg(format!("--listen-address={}", link.ip4_b))
        .arg(format!("--listen-address={}", link.ip6_b))
        .args(["--local=/example.test/", "--local-ttl=300"])
        .arg(format!("--address=/www.example.test/{}", link.ip4_b))
        .arg(format!("--host-record=v6.example.test,{}", link.ip6_b))
        .arg("--mx-host=example.test,mail.example.test,10")
        .arg("--txt-record=txt.example.test,\"hello world\"")
        .arg(format!("--txt-record=big.example.test,{}", big.join(",")))
        .args(["--server=/fwd.test/127.0.0.1#5399", "--log-facility=-"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let dnsmasq = Bg::spawn(dnsmasq, "dnsmasq");
    let up = wait_for(Duration::from_secs(10), || {
        b.cmd("bash")
            .args(["-c", "ss -lun | grep -q ':53 '"])
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(up, "dnsmasq listening");
    let servers = start_servers(b);
    Dns {
        link,
        _dnsmasq: dnsmasq,
        _blackhole: blackhole,
        _servers: servers,
        spoof_addr,
    }
}

/// The queries, a response nobody asked for, and a connection to a resolved address.
fn dns_traffic(d: &Dns) {
    let (b4, b6, a4) = (&d.link.ip4_b, &d.link.ip6_b, &d.link.ip4_a);
    d.link.a.sh(&format!(
        "dig @{b4} www.example.test A +tries=1 +time=2 >/dev/null
         dig @{b4} v6.example.test AAAA +tries=1 +time=2 >/dev/null
         dig @{b6} example.test MX +tries=1 +time=2 >/dev/null
         dig @{b4} txt.example.test TXT +tcp +tries=1 +time=2 >/dev/null
         dig @{b4} nope.example.test A +tries=1 +time=2 >/dev/null
         dig @{b4} big.example.test TXT +tcp +tries=1 +time=2 >/dev/null
         dig @{b4} www.example.test A +tcp +tries=1 +time=2 >/dev/null
         dig @{b4} lost.fwd.test A +tries=1 +time=1 >/dev/null || true
         dig @{b4} lost2.fwd.test AAAA +tries=1 +time=1 >/dev/null || true
         ip=$(dig @{b4} www.example.test A +short +tries=1 +time=2)
         curl -sf -o /dev/null http://$ip:8000/"
    ));
    // A response from port 53 of an address that was never asked.
    d.link.b.sh(&format!(
        "python3 -c \"
import socket, struct
m = struct.pack('>HHHHHH', 0x4242, 0x8180, 1, 1, 0, 0)
m += b'\\x07unasked\\x07example\\x00' + struct.pack('>HH', 1, 1)
m += b'\\xc0\\x0c' + struct.pack('>HHIH', 1, 1, 60, 4) + bytes([192, 0, 2, 9])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('{}', 53))
s.sendto(m, ('{a4}', 5555))
\"",
        d.spoof_addr
    ));
    // Lost queries expire after --dns-timeout (2 s).
    std::thread::sleep(Duration::from_millis(2500));
}

fn run_dns(mode: &str) {
    let tmp = TempDir::new(&format!("dns-{mode}"));
    let d = dns_setup();
    let pcap = tmp.path("dns.pcap");
    let (out, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
    let logdir = tmp.path("dnslog");
    let dump = tcpdump(&d.link.a, &d.link.if_a, &pcap);
    let logdir_s = logdir.to_str().unwrap().to_owned();
    let agent = start_capture(
        &d.link.a,
        &[
            "-i",
            &d.link.if_a,
            "--mode",
            mode,
            "--scan-interval",
            "200ms",
            "--dns-timeout",
            "2s",
            "--dns-log-dir",
            &logdir_s,
        ],
        Some(&out),
        &log,
    );
    dns_traffic(&d);
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    dump.stop(libc::SIGINT, Duration::from_secs(10));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(res.status.success(), "{log_text}");

    let recs = records(&std::fs::read(&out).unwrap());
    let oracle = tshark_transactions(&pcap);
    let ours = devourer_transactions(&recs);
    assert_same_transactions(&ours, &oracle, &format!("live --mode {mode}"));

    let count = |s: &str| ours.iter().filter(|t| t.0.status == s).count();
    assert_eq!(count("lost"), 2, "{ours:#?}");
    assert_eq!(count("no_query"), 1, "{ours:#?}");
    assert!(count("success") >= 8, "{ours:#?}");
    let tcp_ok = ours
        .iter()
        .filter(|t| t.0.transport == "tcp" && t.0.status == "success")
        .count();
    assert_eq!(tcp_ok, 3, "TXT, large TXT and A over TCP");
    // Fields: role from this host's addresses, answers as dig prints them.
    let www = recs
        .iter()
        .find(|r| r["q_name"] == "www.example.test" && r["transport"] == "udp")
        .unwrap();
    assert_eq!(www["role"], "client");
    assert_eq!(
        www["answers"][0],
        format!("www.example.test. 300 IN A {}", d.link.ip4_b)
    );
    let nx = recs
        .iter()
        .find(|r| r["q_name"] == "nope.example.test")
        .unwrap();
    assert_eq!(
        (nx["rcode"].as_str(), nx["status"].as_str()),
        (Some("NXDOMAIN"), Some("success"))
    );
    let big = recs
        .iter()
        .find(|r| r["q_name"] == "big.example.test")
        .unwrap();
    assert_eq!(big["answers"].as_array().unwrap().len(), 1);
    assert!(
        big["answers"][0].as_str().unwrap().len() > 1600,
        "whole large TXT: {big}"
    );
    let lost = recs
        .iter()
        .find(|r| r["q_name"] == "lost.fwd.test")
        .unwrap();
    assert!(lost["rcode"].is_null() && lost["latency"].is_null());
    let unasked = recs.iter().find(|r| r["status"] == "no_query").unwrap();
    assert_eq!(unasked["q_name"], "unasked.example");
    assert_eq!(unasked["role"], "client");
    // The flow to the resolved address carries the name it was resolved from.
    let web = recs
        .iter()
        .find(|r| r["type"] == "flow" && r["dst_port"] == 8000)
        .expect("the web flow");
    assert_eq!(web["dst_name"], "www.example.test", "{web}");

    // The text log has one line per DNS message tshark saw (retransmissions included).
    let lines: Vec<String> = std::fs::read_dir(&logdir)
        .unwrap()
        .flat_map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let msgs = run(Command::new("tshark").arg("-r").arg(&pcap).args([
        "-n",
        "-Y",
        "dns && !icmp && !icmpv6",
        "-T",
        "fields",
        "-e",
        "dns.id",
    ]));
    let n_msgs = String::from_utf8_lossy(&msgs.stdout).lines().count();
    assert_eq!(lines.len(), n_msgs, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("#53 {}#", d.link.ip4_a))
                && l.contains(" SR ")
                && l.contains(" 1/1/0/")
                && l.ends_with(&format!("www.example.test IN A 300 {}", d.link.ip4_b))),
        "{lines:#?}"
    );

    // Offline, the same capture gives the same transactions.
    let local = format!("{}/24", d.link.ip4_a);
    let (status, stdout, stderr) = devourer_read(
        &pcap,
        &["--mode", mode, "--dns-timeout", "2s", "--local-net", &local],
    );
    assert!(status.success(), "{stderr}");
    let offline = devourer_transactions(&records(&stdout));
    assert_same_transactions(&offline, &oracle, &format!("offline --mode {mode}"));
    // On four threads, the same DNS and flow records: DNS stays in file order on the first.
    assert_threads_agree(
        &pcap,
        &["--mode", mode, "--dns-timeout", "2s", "--local-net", &local],
        4,
    );
}

#[test]
fn dns_transactions_match_tshark_in_tc_mode() {
    if !require_root("dns_transactions_match_tshark_in_tc_mode") {
        return;
    }
    run_dns("tc");
}

#[test]
fn dns_transactions_match_tshark_in_xdp_mode() {
    if !require_root("dns_transactions_match_tshark_in_xdp_mode") {
        return;
    }
    run_dns("xdp");
}

/// A DNS server over TCP on B that answers every query on a connection: `big6k.test` with
/// about 6 KB of TXT records, `big60k.test` with about 60 KB, anything else with one A record.
fn big_tcp_server(b: &Netns, addr: &str) -> Bg {
    let script = format!(
        r#"
import socket, struct
def answer(q):
    qid = q[:2]
    end = 12
    while q[end] != 0:
        end += 1 + q[end]
    question = q[12:end + 5]
    name = q[12:end + 1]
    if b'big6k' in name:
        rrs = [b'\xc0\x0c' + struct.pack('>HHIH', 16, 1, 60, 256) + bytes([255]) + b't' * 255 for _ in range(22)]
    elif b'big60k' in name:
        rrs = [b'\xc0\x0c' + struct.pack('>HHIH', 16, 1, 60, 256) + bytes([255]) + b'u' * 255 for _ in range(223)]
    else:
        rrs = [b'\xc0\x0c' + struct.pack('>HHIH', 1, 1, 60, 4) + bytes([192, 0, 2, 53])]
    return qid + struct.pack('>HHHHH', 0x8180, 1, len(rrs), 0, 0) + question + b''.join(rrs)
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('{addr}', 53))
s.listen(4)
while True:
    c, _ = s.accept()
    buf = b''
    while True:
        d = c.recv(65536)
        if not d:
            break
        buf += d
        while len(buf) >= 2 and len(buf) >= 2 + struct.unpack('>H', buf[:2])[0]:
            n = struct.unpack('>H', buf[:2])[0]
            r = answer(buf[2:2 + n])
            buf = buf[2 + n:]
            c.sendall(struct.pack('>H', len(r)) + r)
    c.close()
"#
    );
    let mut c = b.cmd("python3");
    c.args(["-c", &script]);
    let bg = Bg::spawn(c, "big DNS over TCP");
    let up = wait_for(Duration::from_secs(10), || {
        b.cmd("bash")
            .args(["-c", "ss -ltn | grep -q ':53 '"])
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(up, "the TCP DNS server listens");
    bg
}

#[test]
fn large_dns_responses_over_tcp_with_offloads_on_are_matched_and_the_connection_stays_in_step() {
    if !require_root(
        "large_dns_responses_over_tcp_with_offloads_on_are_matched_and_the_connection_stays_in_step",
    ) {
        return;
    }
    let tmp = TempDir::new("dns-big");
    let link = Link::new();
    // As on a real NIC: TSO/GSO on the sender and GRO on the receiver, so a response arrives
    // at the program as one super-segment far larger than --dns-cap.
    for (ns, ifc) in [(&link.a, &link.if_a), (&link.b, &link.if_b)] {
        ns.sh(&format!(
            "ethtool -K {ifc} tso on gso on gro on >/dev/null 2>&1 || true"
        ));
    }
    let _server = big_tcp_server(&link.b, &link.ip4_b);
    let (out, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
    let agent = start_capture(
        &link.a,
        &[
            "-i",
            &link.if_a,
            "--scan-interval",
            "200ms",
            "--dns-timeout",
            "2s",
        ],
        Some(&out),
        &log,
    );
    // Three queries on one connection: 6 KB, 60 KB, then a small answer.
    let dig = link.a.sh(&format!(
        "dig @{} +tcp +keepopen +tries=1 +time=5 big6k.test TXT big60k.test TXT small.test A",
        link.ip4_b
    ));
    let dig = String::from_utf8_lossy(&dig.stdout).into_owned();
    assert_eq!(dig.matches("status: NOERROR").count(), 3, "{dig}");
    assert!(
        dig.contains("ANSWER: 223"),
        "dig got the 60 KB answer whole: {dig}"
    );
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(res.status.success(), "{log_text}");
    let recs = records(&std::fs::read(&out).unwrap());
    let dns: Vec<&Value> = recs.iter().filter(|r| r["type"] == "dns").collect();
    let by_name = |n: &str| {
        dns.iter()
            .find(|r| r["q_name"] == n)
            .unwrap_or_else(|| panic!("no record for {n}: {dns:#?}\n{log_text}"))
    };
    for (name, cut) in [
        ("big6k.test", true),
        ("big60k.test", true),
        ("small.test", false),
    ] {
        let r = by_name(name);
        assert_eq!(r["status"], "success", "{r}");
        assert_eq!(r["rcode"], "NOERROR", "{r}");
        assert_eq!(r["transport"], "tcp", "{r}");
        assert_eq!(r["cut"], cut, "{r}");
        assert!(r["latency"].as_f64().unwrap() > 0.0, "{r}");
    }
    // The answers that fit in the 4,096 captured bytes are kept.
    let kept = by_name("big6k.test")["answers"].as_array().unwrap().len();
    assert!((10..22).contains(&kept), "{kept} of 22 answers kept");
    assert_eq!(
        by_name("small.test")["answers"][0],
        "small.test. 60 IN A 192.0.2.53"
    );
    assert_eq!(dns.len(), 3, "{dns:#?}");
}
