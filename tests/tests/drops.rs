//! Drops with the kernel's reason, against nftables' own counter of what its rule dropped:
//! the agent in namespace B on its veth end, a `counter drop` rule on B's input for one UDP
//! port, datagrams from A over IPv4 and IPv6. The flow of those datagrams carries exactly the
//! packets and bytes the rule counted, with reason NETFILTER_DROP; a drop of packets no
//! monitored interface saw makes no flow and is counted by reason only.

use std::time::Duration;

use devourer_tests::*;
use serde_json::Value;

/// The rule's counter in `nft -j list ruleset` of `ns`: (packets, bytes).
fn nft_counter(ns: &Netns, table: &str) -> (u64, u64) {
    let out = ns.sh("nft -j list ruleset");
    let v: Value = serde_json::from_slice(&out.stdout).expect("nft json");
    for item in v["nftables"].as_array().expect("nftables array") {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        if rule["table"] != table {
            continue;
        }
        for e in rule["expr"].as_array().into_iter().flatten() {
            if let Some(c) = e.get("counter") {
                return (c["packets"].as_u64().unwrap(), c["bytes"].as_u64().unwrap());
            }
        }
    }
    panic!("no counter in table {table}: {v}");
}

/// Whether the running kernel is 5.17 or newer (kfree_skb has a drop reason).
fn reports_drop_reasons() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut it = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (major, minor) >= (5, 17)
}

#[test]
fn packets_an_nftables_rule_drops_are_on_their_flow_with_the_kernels_reason_and_its_counts() {
    if !require_root(
        "packets_an_nftables_rule_drops_are_on_their_flow_with_the_kernels_reason_and_its_counts",
    ) {
        return;
    }
    let tmp = TempDir::new("drops");
    let link = Link::new();
    let (out, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
    link.b.sh("nft add table inet dvdrop
         nft add chain inet dvdrop in '{ type filter hook input priority 0; }'
         nft add rule inet dvdrop in udp dport 9999 counter drop");
    // A drops its own datagrams to port 7777 on output: B's interface never sees them.
    link.a.sh("nft add table inet dvout
         nft add chain inet dvout out '{ type filter hook output priority 0; }'
         nft add rule inet dvout out udp dport 7777 counter drop");
    let mut args = vec!["-i", link.if_b.as_str(), "--metrics-addr", "127.0.0.1:9402"];
    args.extend(QUICK_TIMEOUTS);
    let agent = start_capture(&link.b, &args, Some(&out), &log);
    let log_text = std::fs::read_to_string(&log).unwrap();
    if !reports_drop_reasons() {
        assert!(
            log_text.contains("kernel drops are not reported"),
            "a kernel before 5.17 says it reports no drops: {log_text}"
        );
        eprintln!("this kernel has no drop reasons (before 5.17): skipped");
        agent.stop(libc::SIGTERM, Duration::from_secs(20));
        return;
    }
    assert!(
        !log_text.contains("kernel drops are not reported"),
        "5.17 and newer report drops: {log_text}"
    );
    let (ip4b, ip6b) = (&link.ip4_b, &link.ip6_b);
    link.a.sh(&format!(
        "python3 -c \"
import socket
for fam, addr, n in ((socket.AF_INET, '{ip4b}', 7), (socket.AF_INET6, '{ip6b}', 3)):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind(('', 0))
    for i in range(n):
        s.sendto(b'd' * (20 + 30 * i), (addr, 9999))
    for i in range(4):
        try:
            s.sendto(b'x' * 10, (addr, 7777))
        except OSError:
            pass
\"
         ping -c 2 -i 0.2 {ip4b} >/dev/null"
    ));
    let metrics_ready = wait_for(Duration::from_secs(10), || {
        let (_, body) = http_get(&link.b, "http://127.0.0.1:9402/metrics");
        series(&body, "devourer_drops_attributed_total{outcome=\"flow\"}").unwrap_or(0.0) >= 10.0
    });
    let (_, metrics) = http_get(&link.b, "http://127.0.0.1:9402/metrics");
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(res.status.success(), "agent: {log_text}");
    assert!(
        metrics_ready,
        "drops attributed in the metrics:\n{metrics}\n{log_text}"
    );

    let (nft_packets, nft_bytes) = nft_counter(&link.b, "dvdrop");
    assert_eq!(nft_packets, 10, "the rule dropped every datagram");
    let recs = records(&std::fs::read(&out).unwrap());
    let dropped: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "flow" && r["dst_port"] == 9999)
        .collect();
    assert_eq!(dropped.len(), 2, "one flow per address family: {recs:?}");
    let sum = |f: &str| dropped.iter().map(|r| r[f].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("drops_packets"), nft_packets, "{dropped:?}");
    assert_eq!(sum("drops_bytes"), nft_bytes, "{dropped:?}");
    assert_eq!(
        sum("src_packets"),
        nft_packets,
        "counted before they were dropped"
    );
    for r in &dropped {
        assert_eq!(
            r["drop_reasons"],
            serde_json::json!([{"reason": "NETFILTER_DROP", "packets": r["drops_packets"]}]),
            "{r}"
        );
    }
    // The datagrams A dropped itself never reached B's interface: no flow, only the metric.
    assert!(
        recs.iter().all(|r| r["dst_port"] != 7777),
        "a drop makes no flow: {recs:?}"
    );
    let no_flow = series(
        &metrics,
        "devourer_drops_attributed_total{outcome=\"no_flow\"}",
    );
    assert!(no_flow.unwrap_or(0.0) >= 8.0, "{metrics}");
    let by_reason = series(&metrics, "devourer_drops_total{reason=\"NETFILTER_DROP\"}");
    assert!(by_reason.unwrap_or(0.0) >= 18.0, "{metrics}");
    assert_eq!(
        series(&metrics, "devourer_kernel_feature{feature=\"drop_reason\"}"),
        Some(1.0)
    );
    // Every flow record carries numbers (the kernel drops more than the rule: a ping's replies
    // go to the raw socket and the kernel frees the original as NO_SOCKET), at most three
    // reasons, most first, adding up to no more than the flow's drops.
    for r in recs.iter().filter(|r| r["type"] == "flow") {
        let reasons = r["drop_reasons"].as_array().expect("an array");
        let n: Vec<u64> = reasons
            .iter()
            .map(|x| x["packets"].as_u64().unwrap())
            .collect();
        assert!(reasons.len() <= 3 && n.is_sorted_by(|a, b| a >= b), "{r}");
        assert!(n.iter().sum::<u64>() <= r["drops_packets"].as_u64().expect("a number"));
    }
}
