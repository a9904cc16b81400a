//! Kernel cost per packet: devourer's TC and XDP programs under BPF_PROG_TEST_RUN against
//! empty programs of the same type, and the flow map's candidates (the agent's shared map, the
//! per-CPU map, the closest peer's program) side by side in the same run.

use anyhow::Result;

use super::{Row, bench_lines, case, row};

pub fn run() -> Result<Vec<Row>> {
    let lines = bench_lines("kernel", &["--per-packet"])?;
    let mut rows = Vec::new();
    for hook in ["tc", "xdp"] {
        let ns = |c: &str| case(&lines, &format!("{hook} {c}"), "ns");
        let empty_name = format!("{hook} empty, same packet");
        let empty = ns("empty, same packet")?;
        rows.push(row(
            &empty_name,
            empty,
            "ns/pkt",
            None,
            "baseline: returns OK",
        ));
        let existing = ns("existing flow, IPv4 TCP")?;
        for c in [
            "existing flow, IPv4 TCP",
            "existing flow, IPv6 UDP",
            "existing flow, VLAN",
            "DNS query to the ring",
        ] {
            let v = ns(c)?;
            rows.push(row(
                &format!("{hook} {c}"),
                v,
                "ns/pkt",
                Some((&empty_name, empty)),
                &format!(
                    "{:+.0} ns over empty; goal ≤ +{} ns",
                    v - empty,
                    if c.starts_with("DNS") { 80 } else { 50 }
                ),
            ));
        }
        let empty1_name = format!("{hook} empty, one run per packet");
        let empty1 = ns("empty, one run per packet")?;
        rows.push(row(
            &empty1_name,
            empty1,
            "ns/pkt",
            None,
            "baseline for single runs",
        ));
        let new = ns("new flow")?;
        rows.push(row(
            &format!("{hook} new flow"),
            new,
            "ns/pkt",
            Some((&empty1_name, empty1)),
            "a distinct 5-tuple per run (map insert)",
        ));
        let again_name = format!("{hook} existing flow, one run per packet");
        let again = ns("existing flow, one run per packet")?;
        rows.push(row(
            &again_name,
            again,
            "ns/pkt",
            Some((&empty1_name, empty1)),
            "the same 20k packets again: cold caches, like the new-flow runs",
        ));
        let plain = ns("new flow, plain segment")?;
        let hello = ns("new flow, a ClientHello to the ring")?;
        rows.push(row(
            &format!("{hook} new flow, a ClientHello to the ring"),
            hello,
            "ns/pkt",
            Some((&format!("{hook} new flow, plain segment"), plain)),
            &format!(
                "{:+.0} ns per TLS handshake over a plain first segment (the hello's headers read, 512 bytes copied to the TLS ring; once per connection); a later segment pays one compare, in the existing-flow case",
                hello - plain
            ),
        ));
        rows.push(row(
            &format!("{hook} new flow vs existing flow, same packet repeated"),
            new,
            "ns/pkt",
            Some((&format!("{hook} existing flow, IPv4 TCP"), existing)),
            "goal ≤ 5× (hot caches and no per-call cost on the existing side)",
        ));
        rows.push(row(
            &format!("{hook} new flow vs existing flow, one run each"),
            new,
            "ns/pkt",
            Some((&again_name, again)),
            "goal ≤ 5×, like for like",
        ));
    }
    let existing = case(&lines, "tc existing flow, IPv4 TCP", "ns")?;
    let sampled = case(
        &lines,
        "tc existing flow, IPv4 TCP, RTT sampled every packet",
        "ns",
    )?;
    rows.push(row(
        "tc RTT sample (socket lookup) on every packet",
        sampled,
        "ns/pkt",
        Some(("tc existing flow, IPv4 TCP", existing)),
        &format!(
            "{:+.0} ns per sample, paid at most once per flow direction per scan interval; the drop and retransmit programs run only on their own events (nothing on this path)",
            sampled - existing
        ),
    ));
    rows.extend(breakdown(&lines)?);
    rows.extend(candidates(&lines)?);
    rows.extend(events(existing)?);
    Ok(rows)
}

/// The drop and retransmit programs per event (they run on nothing else), beside a counted
/// packet's cost.
fn events(counted: f64) -> Result<Vec<Row>> {
    let lines = bench_lines("kernel", &["--events"])?;
    let mut rows = Vec::new();
    for (c, what) in [
        (
            "drop program, per dropped packet",
            "kfree_skb: a reason and a tuple read from the sk_buff, two per-CPU map adds",
        ),
        (
            "retransmit program, per retransmission",
            "tcp_retransmit_skb: the socket's tuple read, one shared map add",
        ),
    ] {
        // Kernels without run-time statistics report none: the row is left out.
        if let Ok(v) = case(&lines, c, "ns") {
            rows.push(row(
                c,
                v,
                "ns/event",
                Some(("tc existing flow, IPv4 TCP", counted)),
                &format!("{what}; nothing on the counting path"),
            ));
        }
    }
    Ok(rows)
}

/// What each step of the existing-flow path adds over the one before (see the bench's
/// `breakdown`), in the candidates' harness.
fn breakdown(lines: &[serde_json::Value]) -> Result<Vec<Row>> {
    let steps = [
        (
            "empty",
            "empty TC program",
            "baseline: median of three interleaved rounds, zeroed __sk_buff",
        ),
        ("clock", "+ clock", "bpf_ktime_get_ns: the packet's time"),
        (
            "parse",
            "+ parse",
            "context fields, counters and scratch lookups, Ethernet/IP/TCP parse, sampling check",
        ),
        (
            "lookup",
            "+ flow lookup",
            "the flow map's hash lookup (jhash of the 44-byte key, bucket walk, key compare)",
        ),
        (
            "full",
            "+ count (the agent's program)",
            "counting hook check, atomic adds of bytes and packets, times and flags, TCP handshake notes and the RTT sampling check",
        ),
    ];
    let mut rows = Vec::new();
    let mut before: Option<(String, f64)> = None;
    for (step, label, what) in steps {
        let v = case(lines, &format!("breakdown {step}: existing flow"), "ns")?;
        let name = format!("breakdown: {label}");
        let note = match &before {
            Some((_, b)) => format!("{:+.0} ns: {what}", v - b),
            None => what.to_string(),
        };
        rows.push(row(
            &name,
            v,
            "ns/pkt",
            before.as_ref().map(|(n, b)| (n.as_str(), *b)),
            &note,
        ));
        before = Some((name, v));
    }
    Ok(rows)
}

/// The median of the interleaved rounds of one candidate's existing-flow case.
fn median_rounds(lines: &[serde_json::Value], name: &str) -> Result<f64> {
    let mut v: Vec<f64> = (1..=3)
        .map(|r| {
            case(
                lines,
                &format!("candidates {name}: existing flow, round {r}"),
                "ns",
            )
        })
        .collect::<Result<_>>()?;
    v.sort_by(f64::total_cmp);
    Ok(v[1])
}

/// The shared map (the agent's), the per-CPU map and the peer, measured in the same run on the
/// same frames and zeroed `__sk_buff`, with an empty program as the floor.
fn candidates(lines: &[serde_json::Value]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let c = |name: &str, what: &str| case(lines, &format!("candidates {name}: {what}"), "ns");
    let empty = median_rounds(lines, "empty")?;
    rows.push(row(
        "candidates: empty TC program, existing flow",
        empty,
        "ns/pkt",
        None,
        "baseline: median of three interleaved rounds, zeroed __sk_buff",
    ));
    let shared = median_rounds(lines, "shared map")?;
    let per_cpu = median_rounds(lines, "per-CPU map")?;
    let peer = median_rounds(lines, "peer").ok();
    rows.push(row(
        "candidates: shared map (agent), existing flow",
        shared,
        "ns/pkt",
        Some(("candidates: empty TC program, existing flow", empty)),
        &format!("{:+.0} ns over empty; goal ≤ +50 ns", shared - empty),
    ));
    rows.push(row(
        "candidates: per-CPU map, existing flow",
        per_cpu,
        "ns/pkt",
        Some(("candidates: shared map (agent), existing flow", shared)),
        "no atomics, but a value per CPU per entry and no single first interface",
    ));
    let new_shared = c("shared map", "new flow")?;
    rows.push(row(
        "candidates: shared map (agent), new flow",
        new_shared,
        "ns/pkt",
        Some((
            "candidates: per-CPU map, new flow",
            c("per-CPU map", "new flow")?,
        )),
        "one value to initialise instead of one per CPU",
    ));
    if let Some(peer) = peer {
        rows.push(row(
            "candidates: peer (netobserv tc_ingress_flow_parse), existing flow",
            peer,
            "ns/pkt",
            Some(("candidates: empty TC program, existing flow", empty)),
            "measured in this run from ../shared/peers/",
        ));
        rows.push(row(
            "candidates: shared map (agent) vs peer, existing flow",
            shared,
            "ns/pkt",
            Some((
                "candidates: peer (netobserv tc_ingress_flow_parse), existing flow",
                peer,
            )),
            "goal ≤ 0.5×",
        ));
        let new_peer = c("peer", "new flow")?;
        rows.push(row(
            "candidates: shared map (agent) vs peer, new flow",
            new_shared,
            "ns/pkt",
            Some(("candidates: peer, new flow", new_peer)),
            "goal ≤ 0.4×",
        ));
    }
    if let (Ok(s2), Ok(p2)) = (
        c("shared map", "same flow on 2 CPUs at once"),
        c("per-CPU map", "same flow on 2 CPUs at once"),
    ) {
        rows.push(row(
            "candidates: shared map (agent), same flow on 2 CPUs at once",
            s2,
            "ns/pkt",
            Some(("candidates: per-CPU map, same flow on 2 CPUs at once", p2)),
            "the value's cache line moves between CPUs on every packet (one flow on two CPUs at once is rare: a flow's packets meet one queue and one CPU)",
        ));
    }
    Ok(rows)
}
