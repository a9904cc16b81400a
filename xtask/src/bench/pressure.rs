//! Map pressure: a flood of unique 5-tuples, eight times the flow map's size, at the highest
//! rate tcpreplay reaches. Every packet must be in a flow record or an overflow record.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{
    Row, bench_dir, log_number,
    net::{Pair, agent, proc_cpu_seconds, tcpreplay, unique_flows, write_pcap},
    row,
};

const MAP: u32 = 16_384;
const FLOWS: u32 = 131_072;

pub fn run() -> Result<Vec<Row>> {
    let dir = bench_dir();
    let pcap = dir.join("pressure.pcap");
    write_pcap(&pcap, unique_flows(0, FLOWS), 1)?;
    let out = dir.join("pressure.jsonl");
    let _ = std::fs::remove_file(&out);
    let pair = Pair::new()?;
    let map = MAP.to_string();
    let out_s = out.to_string_lossy().into_owned();
    let a = agent(
        &pair.b,
        &[
            "-i",
            "vb",
            "--output",
            &out_s,
            "--flow-map-entries",
            &map,
            "--idle-timeout",
            "2s",
            "--wake-interval",
            "10ms",
        ],
        &dir.join("pressure.log"),
    )?;
    let rx0 = pair.rx_packets();
    let c0 = proc_cpu_seconds(a.pid());
    let t0 = Instant::now();
    let (sent, pps) = tcpreplay(&pair, &pcap, None)?;
    let secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let cpu = proc_cpu_seconds(a.pid()) - c0;
    let received = pair.rx_packets() - rx0;
    let log = a.stop()?;
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .context("reading the records")?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let in_records: u64 = records
        .iter()
        .filter(|r| r["type"] == "flow" && r["src_addr"] == "10.99.0.1")
        .map(|r| r["src_packets"].as_u64().unwrap_or(0))
        .sum();
    // What the full map could not hold is in overflow records (per interface and protocol).
    let in_overflow: u64 = records
        .iter()
        .filter(|r| r["type"] == "overflow" && r["interface"] == "vb")
        .map(|r| r["packets"].as_u64().unwrap_or(0))
        .sum();
    let uncounted = log_number(&log, "overflow_full_packets").unwrap_or(0);
    if sent != u64::from(FLOWS) {
        bail!("tcpreplay sent {sent} of {FLOWS} packets");
    }
    Ok(vec![
        row(
            "flood: packets sent",
            sent as f64,
            "pkt",
            None,
            &format!("{FLOWS} unique 5-tuples into a {MAP}-entry map at {pps:.0} pkt/s"),
        ),
        row(
            "flood: in flow + overflow records",
            (in_records + in_overflow + uncounted) as f64,
            "pkt",
            Some(("flood: packets sent", sent as f64)),
            &format!(
                "{in_records} in flow records, {in_overflow} in overflow records, {uncounted} in totals only; goal 1.00×"
            ),
        ),
        row(
            "flood: received on vb",
            received as f64,
            "pkt",
            Some(("flood: packets sent", sent as f64)),
            "the receiving interface's own count",
        ),
        row(
            "flood: agent CPU",
            cpu * 1e6 / f64::from(FLOWS),
            "µs/flow",
            None,
            &format!("over {secs:.1} s of flood plus 1 s; map-full wake-ups drive early eviction"),
        ),
    ])
}
