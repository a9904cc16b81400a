//! Kernel cost per packet: devourer's TC and XDP programs under BPF_PROG_TEST_RUN against
//! empty programs of the same type, and against the closest peer's published figures.

use anyhow::Result;

use super::{Row, bench_lines, case, row};

/// netobserv-ebpf-agent's `tc_ingress_flow_parse`, measured the same way on this machine kind
/// (issue #7): existing flow 160–196 ns, new flow 1.5–1.9 µs. The lower ends are used.
const PEER_EXISTING_NS: f64 = 160.0;
const PEER_NEW_NS: f64 = 1500.0;

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
                    "{:+.0} ns over empty; goal ≤ +60 ns for existing flows",
                    v - empty
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
        if hook == "tc" {
            rows.push(row(
                "tc existing flow vs peer",
                existing,
                "ns/pkt",
                Some(("netobserv tc_ingress_flow_parse (quoted)", PEER_EXISTING_NS)),
                "peer figure quoted from issue #7, not measured in this run; goal ≤ 0.5×",
            ));
            rows.push(row(
                "tc new flow vs peer",
                new,
                "ns/pkt",
                Some(("netobserv tc_ingress_flow_parse (quoted)", PEER_NEW_NS)),
                "peer figure quoted from issue #7, not measured in this run; goal ≤ 0.5×",
            ));
        }
    }
    // The shared map with atomic adds, against the per-CPU map (design.md: benchmark both).
    let sh = |c: &str| case(&lines, &format!("tc shared map: {c}"), "ns");
    let tc = |c: &str| case(&lines, &format!("tc {c}"), "ns");
    rows.push(row(
        "tc shared map: existing flow",
        sh("existing flow, IPv4 TCP")?,
        "ns/pkt",
        Some(("tc existing flow, IPv4 TCP", tc("existing flow, IPv4 TCP")?)),
        "atomic adds instead of a CPU-private slot",
    ));
    rows.push(row(
        "tc shared map: new flow",
        sh("new flow")?,
        "ns/pkt",
        Some(("tc new flow", tc("new flow")?)),
        "one value to initialise instead of one per CPU",
    ));
    if let (Ok(p), Ok(s)) = (
        tc("per-CPU map: same flow on 2 CPUs at once"),
        sh("same flow on 2 CPUs at once"),
    ) {
        rows.push(row(
            "tc per-CPU map: same flow on 2 CPUs at once",
            p,
            "ns/pkt",
            None,
            "baseline: each CPU its own slot",
        ));
        rows.push(row(
            "tc shared map: same flow on 2 CPUs at once",
            s,
            "ns/pkt",
            Some(("tc per-CPU map: same flow on 2 CPUs at once", p)),
            "the value's cache line moves between CPUs on every packet",
        ));
    }
    Ok(rows)
}
