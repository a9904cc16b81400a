//! Offline replay: packets per second of `devourer read` on a 1M-packet capture against the
//! floor measured in the same run: the same capture read the same way, each frame fed once to
//! an empty TC program on one core. devourer runs twice: on every CPU (the default), and on
//! one feeding thread.

use std::{process::Command, time::Instant};

use anyhow::{Result, bail};

use super::{
    Row, bench_dir, bench_lines, case, devourer_bin,
    net::{udp_frame, write_pcap},
    row,
};

const PACKETS: u32 = 1_000_000;

pub fn run() -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (flows, gap_us) in [(1_000, 100), (10_000, 100), (100_000, 10)] {
        rows.extend(shape(flows, gap_us)?);
    }
    Ok(rows)
}

/// 1M packets of `flows` UDP flows (both directions), interleaved, `gap_us` apart: every flow
/// is active at every scan (1 s of file time), so scans read `2 × flows` kernel entries each.
fn shape(flows: u32, gap_us: u64) -> Result<Vec<Row>> {
    let pcap = bench_dir().join(format!("replay-1m-{flows}.pcap"));
    let frames = (0..PACKETS).map(|i| {
        let f = i % flows;
        let (a, b) = (
            [10, (1 + (f >> 16)) as u8, (f >> 8) as u8, f as u8],
            [10, 9, 0, 1],
        );
        let (sport, dport) = (20_000 + (f % 40_000) as u16, 443);
        if (i / flows).is_multiple_of(2) {
            udp_frame(a, b, sport, dport, 100)
        } else {
            udp_frame(b, a, dport, sport, 1200)
        }
    });
    write_pcap(&pcap, frames, gap_us)?;
    let pcap_s = pcap.to_string_lossy().into_owned();
    let floor_ns = case(
        &bench_lines("kernel", &["--replay-floor", &pcap_s])?,
        "replay floor: empty TC test_run call",
        "ns",
    )?;
    let floor = 1e9 / floor_ns;

    // 100k flows need a kernel map (200k entries) and a flow table (100k flows) larger than
    // the defaults (65,536 entries, 50,000 flows).
    let sizes: &[&str] = if flows > 20_000 {
        &["--flow-map-entries", "262144", "--max-flows", "262144"]
    } else {
        &[]
    };
    let all = replay_rate(&pcap, sizes)?;
    let one_thread: Vec<&str> = sizes
        .iter()
        .copied()
        .chain(["--replay-threads", "1"])
        .collect();
    let one = replay_rate(&pcap, &one_thread)?;
    let floor_name = format!("floor, {flows} flows: empty TC test_run calls");
    Ok(vec![
        row(
            &floor_name,
            floor,
            "pkt/s",
            None,
            &format!("{floor_ns:.0} ns per frame (pcap read + test_run), one core"),
        ),
        row(
            &format!("devourer read, 1M packets, {flows} flows"),
            all,
            "pkt/s",
            Some((&floor_name, floor)),
            "whole run on every CPU: pcap parsing, test_run, scans, records; goal ≥ 0.8×",
        ),
        row(
            &format!("devourer read --replay-threads 1, {flows} flows"),
            one,
            "pkt/s",
            Some((&floor_name, floor)),
            "the same on one feeding thread (the pcap reader thread still beside it)",
        ),
    ])
}

/// Median packets per second of three `devourer read` runs of `pcap` with `args`.
fn replay_rate(pcap: &std::path::Path, args: &[&str]) -> Result<f64> {
    let mut rates = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let out = Command::new(devourer_bin())
            .arg("read")
            .arg(pcap)
            .args(["--output", "/dev/null", "--no-progress"])
            .args(args)
            .env("DEVOURER_LOG", "info")
            .output()?;
        if !out.status.success() {
            bail!(
                "devourer read failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        rates.push(f64::from(PACKETS) / start.elapsed().as_secs_f64());
    }
    Ok(super::net::median(rates))
}
