//! DNS: userspace decode and matching throughput, offline replay of a 1M-message capture, and
//! ring-buffer drops live on a veth pair at a fixed rate and at top speed.

use std::{process::Command, time::Instant};

use anyhow::{Result, bail};

use super::{
    Row, bench_dir, bench_lines, case, devourer_bin, log_number,
    net::{Pair, agent, median, spread, tcpreplay},
    row,
};
use crate::{cargo, run_cmd};

/// Runs of the in-process DNS bench.
const USERSPACE_ROUNDS: usize = 5;

pub fn run() -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    // 1. Userspace path (in process, one core), in rounds: one run moves by a third with the
    // machine's state.
    let (mut decodes, mut fulls, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..USERSPACE_ROUNDS {
        let lines = bench_lines("dns", &[])?;
        let decode = case(&lines, "decode_only", "per_sec")?;
        let full = case(&lines, "tracker_and_records", "per_sec")?;
        decodes.push(decode);
        fulls.push(full);
        ratios.push(full / decode);
    }
    let (decode, full) = (median(decodes), median(fulls));
    rows.push(row(
        "userspace: decode only (hickory)",
        decode,
        "msg/s",
        None,
        "baseline",
    ));
    rows.push(row(
        "userspace: tracker + JSON records",
        full,
        "msg/s",
        Some(("userspace: decode only (hickory)", decode)),
        &format!(
            "1M messages, one core, median of {USERSPACE_ROUNDS} runs (ratio {}); goal ≥ 200k msg/s",
            spread(&ratios)
        ),
    ));

    // 2. The generated capture, replayed through the kernel program.
    let pcap = bench_dir().join("dns-1m.pcap");
    run_cmd(
        cargo()
            .args([
                "bench",
                "-p",
                "devourer",
                "--bench",
                "dns",
                "--",
                "--write-pcap",
            ])
            .arg(&pcap),
    )?;
    let replay = |extra: &[&str]| -> Result<f64> {
        let start = Instant::now();
        let st = Command::new(devourer_bin())
            .arg("read")
            .arg(&pcap)
            .args(["--output", "/dev/null", "--no-progress"])
            .args(extra)
            .env("DEVOURER_LOG", "warn")
            .status()?;
        if !st.success() {
            bail!("devourer read failed: {st}");
        }
        Ok(1_000_000.0 / start.elapsed().as_secs_f64())
    };
    let flows_only = replay(&["--dns-ports", "none"])?;
    let with_dns = replay(&[])?;
    rows.push(row(
        "replay: flows only",
        flows_only,
        "msg/s",
        None,
        "baseline",
    ));
    rows.push(row(
        "replay: flows + DNS",
        with_dns,
        "msg/s",
        Some(("replay: flows only", flows_only)),
        "devourer read of the 1M-message capture",
    ));

    // 3. Live: the capture sent over a veth pair at 200k msg/s and as fast as tcpreplay can.
    for (label, rate) in [("200k msg/s", Some(200_000)), ("top speed", None)] {
        let pair = Pair::new()?;
        let log = bench_dir().join("dns-live.log");
        let a = agent(&pair.b, &["-i", "vb"], &log)?;
        let (_, pps) = tcpreplay(&pair, &pcap, rate)?;
        std::thread::sleep(std::time::Duration::from_secs(1));
        let text = a.stop()?;
        let events = log_number(&text, "dns_events").unwrap_or(0);
        let drops = log_number(&text, "dns_ring_full").unwrap_or(0);
        let messages = log_number(&text, "messages").unwrap_or(0);
        rows.push(row(
            &format!("live {label}: tcpreplay rate"),
            pps,
            "pkt/s",
            None,
            "1M DNS messages over veth",
        ));
        rows.push(row(
            &format!("live {label}: messages decoded"),
            messages as f64,
            "messages",
            Some(("DNS events from the kernel", events as f64)),
            "1.00 = every event decoded",
        ));
        rows.push(row(
            &format!("live {label}: ring-buffer drops"),
            drops as f64,
            "events",
            None,
            if rate.is_some() {
                "goal 0"
            } else {
                "counted, not silent: beyond one core's reach"
            },
        ));
    }
    Ok(rows)
}
