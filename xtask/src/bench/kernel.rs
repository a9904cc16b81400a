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
        rows.push(row(
            &format!("{hook} new flow vs existing flow"),
            new,
            "ns/pkt",
            Some((&format!("{hook} existing flow, IPv4 TCP"), existing)),
            "goal ≤ 5×",
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
    Ok(rows)
}
