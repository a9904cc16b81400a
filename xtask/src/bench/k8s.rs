//! Kubernetes metadata: resident memory per pod held (10k and 100k pods, each in a fresh
//! process) beside the estimate `--k8s-max-bytes` counts against, and the cost of one lookup.

use anyhow::Result;

use super::{Row, bench_lines, case, row};

pub fn run() -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for pods in [10_000u32, 100_000] {
        let lines = bench_lines("k8s", &["--pods", &pods.to_string()])?;
        let n = f64::from(pods);
        let rss = case(&lines, "pods", "rss_bytes")? / n;
        let estimate = case(&lines, "pods", "estimate_bytes")? / n;
        let lookup = case(&lines, "pods", "lookup_ns")?;
        let est_case = format!("{pods} pods: estimate per pod (what the cap counts)");
        rows.push(row(&est_case, estimate, "B/pod", None, "baseline"));
        rows.push(row(
            &format!("{pods} pods: resident memory per pod"),
            rss,
            "B/pod",
            Some((&est_case, estimate)),
            "≤ 1.0x: the cap holds memory under --k8s-max-bytes",
        ));
        rows.push(row(
            &format!("{pods} pods: one lookup by address"),
            lookup,
            "ns",
            None,
            "1M lookups, half of them pods' addresses",
        ));
    }
    Ok(rows)
}
