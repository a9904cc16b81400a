//! TCP health on flow records, against the kernel's own figures: the agent in namespace B on
//! its veth end (its peer, A, is where the client's socket lives, as a pod's would), a server in
//! B, a client in A.
//! - Round trips: with netem delaying A's packets (where the kernel has netem: the matrix's
//!   guests), the handshake RTT and the smoothed RTT are compared with `ss -ti`'s `rtt` for the
//!   client's socket (the kernel's own figure; netem's nominal delay only a lower bound).
//! - Retransmits: an nftables rule in B drops one in twenty of the client's data segments (after
//!   B's interface counted them, so A's retransmissions succeed); with offloads off, the
//!   records' `tcp_retransmits` equal the `TcpRetransSegs` both namespaces added.
//! - A SYN to a closed port is `tcp_failed`.

use std::time::Duration;

use devourer_tests::*;
use serde_json::Value;

const ECHO_PORT: u16 = 7001;
const BULK_PORT: u16 = 7002;
const CLOSED_PORT: u16 = 7003;
/// An echo server on B's loopback, for a connection of B's own (no peer namespace).
const LOOP_PORT: u16 = 7004;
/// netem's delay on A's packets, where the kernel has netem.
const DELAY_MS: f64 = 40.0;

/// `RetransSegs` of the namespace's TCP MIB (`/proc/net/snmp` as seen from inside it).
fn retrans_segs(ns: &Netns) -> u64 {
    let out = ns.sh("cat /proc/net/snmp");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "RetransSegs")
        .expect("RetransSegs");
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// The `rtt:SRTT/RTTVAR` of `ss -ti` output, in seconds.
fn ss_rtt(ss: &str) -> Option<f64> {
    let at = ss.find(" rtt:")?;
    let v = &ss[at + 5..];
    let end = v.find('/')?;
    v[..end].parse::<f64>().ok().map(|ms| ms / 1000.0)
}

fn devices_required() -> bool {
    std::env::var_os("DEVOURER_REQUIRE_DEVICES").is_some()
}

#[test]
fn handshake_and_smoothed_rtt_match_ss_retransmits_match_the_mib_and_a_refused_syn_fails() {
    let test =
        "handshake_and_smoothed_rtt_match_ss_retransmits_match_the_mib_and_a_refused_syn_fails";
    if !require_root(test) {
        return;
    }
    let tmp = TempDir::new("tcp-health");
    let link = Link::new();
    let (out, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
    let (a, b, ip_b) = (&link.a, &link.b, link.ip4_b.clone());
    // Offloads off: each retransmitted skb is one segment on the wire.
    for (ns, ifc) in [(a, &link.if_a), (b, &link.if_b)] {
        ns.sh(&format!(
            "ethtool -K {ifc} tso off gso off gro off >/dev/null 2>&1 || true"
        ));
    }
    let delayed = a
        .cmd("tc")
        .args(["qdisc", "add", "dev", &link.if_a, "root", "netem", "delay"])
        .arg(format!("{DELAY_MS}ms"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        delayed || !devices_required(),
        "the matrix's kernels have netem"
    );
    if !delayed {
        eprintln!("{test}: no netem here: round trips checked against ss without a delay");
    }
    b.sh(&format!(
        "nft add table inet dvloss
         nft add chain inet dvloss in '{{ type filter hook input priority 0; }}'
         nft add rule inet dvloss in tcp dport {BULK_PORT} meta length gt 200 numgen random mod 20 == 0 counter drop"
    ));
    let server = Bg::spawn(
        {
            let mut c = b.cmd("python3");
            c.arg("-c").arg(format!(
                "
import socket, threading
def serve(port, echo, addr='{ip_b}'):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((addr, port)); l.listen(8)
    while True:
        c, _ = l.accept()
        def run(c=c):
            while True:
                d = c.recv(65536)
                if not d:
                    break
                if echo:
                    c.sendall(d)
            c.close()
        threading.Thread(target=run, daemon=True).start()
threading.Thread(target=serve, args=({ECHO_PORT}, True), daemon=True).start()
threading.Thread(target=serve, args=({LOOP_PORT}, True, '127.0.0.1'), daemon=True).start()
serve({BULK_PORT}, False)
"
            ));
            c
        },
        "server",
    );
    let mut args = vec![
        "-i",
        link.if_b.as_str(),
        "-i",
        "lo",
        "--metrics-addr",
        "127.0.0.1:9402",
    ];
    args.extend(QUICK_TIMEOUTS);
    let agent = start_capture(b, &args, Some(&out), &log);
    std::thread::sleep(Duration::from_millis(300));
    let (ra, rb) = (retrans_segs(a), retrans_segs(b));
    // The client: an echo connection a few scans long (the socket's RTT sampled each scan),
    // `ss -ti` of it while open; a bulk transfer through the lossy rule; a refused SYN.
    let client = a.sh(&format!(
        "python3 -c \"
import socket, subprocess, time
s = socket.create_connection(('{ip_b}', {ECHO_PORT}))
for i in range(10):
    s.sendall(b'x' * 100)
    n = 0
    while n < 100:
        n += len(s.recv(100 - n))
    time.sleep(0.25)
print(subprocess.run(['ss', '-tin', 'dport', '= :{ECHO_PORT}'], capture_output=True, text=True).stdout)
s.close()
b = socket.create_connection(('{ip_b}', {BULK_PORT}))
b.sendall(b'y' * 2000000)
b.shutdown(socket.SHUT_WR)
b.recv(1)
b.close()
try:
    socket.create_connection(('{ip_b}', {CLOSED_PORT}), timeout=5)
except ConnectionRefusedError:
    print('refused')
\""
    ));
    let client_out = String::from_utf8_lossy(&client.stdout).into_owned();
    // B's own connection over its loopback: both sockets in the agent's namespace.
    b.sh(&format!(
        "python3 -c \"
import socket, time
s = socket.create_connection(('127.0.0.1', {LOOP_PORT}))
for i in range(6):
    s.sendall(b'z' * 10)
    n = 0
    while n < 10:
        n += len(s.recv(10 - n))
    time.sleep(0.25)
s.close()
\""
    ));
    assert!(client_out.contains("refused"), "{client_out}");
    let ss = ss_rtt(&client_out).unwrap_or_else(|| panic!("ss -ti: {client_out}"));
    let retransmitted = retrans_segs(a) - ra + retrans_segs(b) - rb;
    // The flows' records (at their idle timeout) reach the metrics: every retransmission, a
    // handshake each for the echo, bulk and loopback connections.
    let unlabelled = "devourer_tcp_retransmits_total{dst_namespace=\"\",dst_workload=\"\",src_namespace=\"\",src_workload=\"\"}";
    let handshakes = "devourer_tcp_rtt_seconds_count{dst_namespace=\"\",dst_workload=\"\",rtt=\"handshake\",src_namespace=\"\",src_workload=\"\"}";
    let metrics_caught_up = wait_for(Duration::from_secs(15), || {
        let (_, body) = http_get(b, "http://127.0.0.1:9402/metrics");
        series(&body, unlabelled) == Some(retransmitted as f64)
            && series(&body, handshakes) >= Some(3.0)
    });
    let (_, metrics) = http_get(b, "http://127.0.0.1:9402/metrics");
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    drop(server);
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(res.status.success(), "agent: {log_text}");
    let recs = records(&std::fs::read(&out).unwrap());
    let flows = |port: u16| -> Vec<&Value> {
        recs.iter()
            .filter(|r| r["type"] == "flow" && r["dst_port"] == port)
            .collect()
    };

    // Round trips.
    let echo = flows(ECHO_PORT);
    assert!(!echo.is_empty(), "{recs:?}");
    let hs = echo[0]["tcp_handshake_rtt"]
        .as_f64()
        .unwrap_or_else(|| panic!("handshake RTT on the first record: {:?}", echo[0]));
    let tolerance = (ss * 0.5).max(0.02);
    assert!(
        (hs - ss).abs() <= tolerance,
        "handshake {hs} s vs ss {ss} s: {client_out}"
    );
    let last = echo
        .iter()
        .rev()
        .find_map(|r| r["tcp_srtt_last"].as_f64())
        .unwrap_or_else(|| panic!("sRTT sampled: {echo:?}\n{log_text}"));
    assert!(
        (last - ss).abs() <= tolerance,
        "sRTT {last} s vs ss {ss} s: {client_out}"
    );
    for r in &echo {
        if let (Some(lo), Some(hi), Some(l)) = (
            r["tcp_srtt_min"].as_f64(),
            r["tcp_srtt_max"].as_f64(),
            r["tcp_srtt_last"].as_f64(),
        ) {
            assert!(lo <= l && l <= hi, "{r}");
        }
        assert_eq!(r["tcp_failed"], false, "{r}");
    }
    if delayed {
        let nominal = DELAY_MS / 1000.0;
        assert!(
            hs >= nominal && last >= nominal,
            "netem's delay is a floor: {hs} {last}"
        );
    }

    // Retransmits: every segment both namespaces retransmitted, on the bulk flow.
    let bulk = flows(BULK_PORT);
    let on_records: u64 = bulk
        .iter()
        .map(|r| r["tcp_retransmits"].as_u64().expect("a number"))
        .sum();
    assert!(retransmitted > 0, "the rule made the client retransmit");
    assert_eq!(
        on_records, retransmitted,
        "records vs TcpRetransSegs: {bulk:?}"
    );
    assert!(
        metrics_caught_up,
        "retransmits equal to TcpRetransSegs ({retransmitted}) and three handshakes:\n{metrics}"
    );
    assert_eq!(
        series(
            &metrics,
            "devourer_kernel_feature{feature=\"tcp_retransmits\"}"
        ),
        Some(1.0),
        "{metrics}"
    );

    // B's own connection, sampled in B's namespace (lo has no peer).
    let own = flows(LOOP_PORT);
    assert!(
        own.iter().any(|r| r["tcp_srtt_last"].as_f64().is_some()),
        "{own:?}"
    );
    assert!(own[0]["tcp_handshake_rtt"].as_f64().is_some(), "{own:?}");

    // The refused SYN.
    let refused = flows(CLOSED_PORT);
    assert!(!refused.is_empty(), "{recs:?}");
    assert!(
        refused.iter().all(|r| r["tcp_failed"] == true),
        "{refused:?}"
    );
    assert!(refused.iter().all(|r| r["tcp_handshake_rtt"].is_null()));
    // Other protocols carry none of it.
    for r in recs
        .iter()
        .filter(|r| r["type"] == "flow" && r["protocol"] != "tcp")
    {
        assert!(
            r["tcp_failed"].is_null() && r["tcp_retransmits"].is_null(),
            "{r}"
        );
    }
}
