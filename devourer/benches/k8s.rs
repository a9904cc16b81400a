//! Memory and lookup cost of Kubernetes metadata: N pods (4 labels, a ReplicaSet owner, one
//! address; a ReplicaSet per 10 pods and a Service per 100) indexed in one fresh process,
//! resident memory measured before and after, beside the estimate `--k8s-max-bytes` counts.
//! `--pods N` (default 10000).
//!
//! Prints one JSON object on stdout: {"case", "pods", "rss_bytes", "estimate_bytes",
//! "lookup_ns"}.

use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use devourer::k8s::index::{Index, PodInfo, ReplicaSetInfo, ServiceInfo};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn addr(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pods: u32 = args
        .iter()
        .position(|a| a == "--pods")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(10_000);
    let before = rss_bytes();
    let mut x = Index::new(usize::MAX);
    for i in 0..pods {
        let ns = format!("team-{}", i % 50);
        let app = format!("service-{}", i / 100);
        let rs = format!("{app}-7c9d{:04x}", i / 10);
        if i % 10 == 0 {
            x.apply_replicaset(ReplicaSetInfo {
                namespace: ns.clone(),
                name: rs.clone(),
                owner: Some(("Deployment".into(), app.clone())),
            });
        }
        if i % 100 == 0 {
            x.apply_service(ServiceInfo {
                namespace: ns.clone(),
                name: app.clone(),
                selector: vec![("app".into(), app.clone())],
                cluster_ips: vec![addr(0x00f0_0000 + i)],
            });
        }
        x.apply_pod(PodInfo {
            namespace: ns,
            name: format!("{rs}-{:05x}", i),
            node: Some(format!("node-{}", i % 500)),
            ips: vec![addr(i)],
            host_network: false,
            running: true,
            terminating: false,
            created_ms: i64::from(i),
            labels: vec![
                ("app".into(), app),
                ("pod-template-hash".into(), format!("7c9d{:04x}", i / 10)),
                ("tier".into(), "backend".into()),
                ("version".into(), "v1".into()),
            ],
            owner: Some(("ReplicaSet".into(), rs)),
        });
    }
    let after = rss_bytes();
    let estimate = x.stats().bytes;
    let lookups = 1_000_000u32;
    let start = Instant::now();
    let mut found = 0usize;
    for i in 0..lookups {
        // Half the addresses are pods'.
        found +=
            usize::from(black_box(x.lookup(addr(i.wrapping_mul(7919) % (pods * 2)))).is_some());
    }
    let lookup_ns = start.elapsed().as_nanos() as f64 / f64::from(lookups);
    black_box(found);
    println!(
        "{}",
        serde_json::json!({
            "case": "pods",
            "pods": pods,
            "rss_bytes": after.saturating_sub(before),
            "estimate_bytes": estimate,
            "lookup_ns": lookup_ns,
        })
    );
}
