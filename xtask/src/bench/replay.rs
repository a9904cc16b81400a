//! Offline replay: packets per second of `devourer read` on a 1M-packet capture against the
//! floor measured in the same run: the same capture read the same way, each frame fed once to
//! an empty TC program.

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
    for flows in [1_000, 10_000] {
        rows.extend(shape(flows)?);
    }
    Ok(rows)
}

/// 1M packets of `flows` UDP flows (both directions), interleaved, 100 µs apart: every flow
/// is active at every scan, so scans read `2 × flows` kernel entries each file-second.
fn shape(flows: u32) -> Result<Vec<Row>> {
    let pcap = bench_dir().join(format!("replay-1m-{flows}.pcap"));
    let frames = (0..PACKETS).map(|i| {
        let f = i % flows;
        let (a, b) = ([10, 1, (f >> 8) as u8, f as u8], [10, 2, 0, 1]);
        let (sport, dport) = (20_000 + (f % 40_000) as u16, 443);
        if (i / flows).is_multiple_of(2) {
            udp_frame(a, b, sport, dport, 100)
        } else {
            udp_frame(b, a, dport, sport, 1200)
        }
    });
    write_pcap(&pcap, frames, 100)?;
    let pcap_s = pcap.to_string_lossy().into_owned();
    let floor_ns = case(
        &bench_lines("kernel", &["--replay-floor", &pcap_s])?,
        "replay floor: empty TC test_run call",
        "ns",
    )?;
    let floor = 1e9 / floor_ns;

    let mut rates = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let out = Command::new(devourer_bin())
            .arg("read")
            .arg(&pcap)
            .args(["--output", "/dev/null", "--no-progress"])
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
    let rate = super::net::median(rates);
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
            rate,
            "pkt/s",
            Some((&floor_name, floor)),
            "whole run: pcap parsing, test_run, scans, records; goal ≥ 0.8×",
        ),
    ])
}
