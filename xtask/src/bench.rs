//! `cargo xtask bench [NAME]`: runs benchmarks, prints a table, writes
//! `bench/results/latest.json` and `docs/benchmarks.md`. Every figure is shown beside a
//! baseline measured in the same run (these machines are noisy); traffic stays inside network
//! namespaces the benchmark creates.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{cargo, run_cmd, workspace_root};

/// One measured figure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub case: String,
    pub value: f64,
    pub unit: String,
    /// The case this one is compared with, and the ratio value / baseline.
    pub baseline: Option<String>,
    pub ratio: Option<f64>,
    pub note: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Results {
    /// bench name -> (when, rows)
    benches: BTreeMap<String, (String, Vec<Row>)>,
}

const ALL: &[&str] = &["dns"];

pub fn bench(name: Option<String>) -> Result<()> {
    let names: Vec<&str> = match &name {
        Some(n) if ALL.contains(&n.as_str()) => vec![n.as_str()],
        Some(n) => bail!("unknown benchmark {n:?}; known: {}", ALL.join(", ")),
        None => ALL.to_vec(),
    };
    crate::setup::setup()?;
    run_cmd(cargo().args(["build", "--release", "-p", "devourer"]))?;
    let root = workspace_root();
    let results_path = root.join("bench/results/latest.json");
    let mut results: Results = std::fs::read(&results_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for n in names {
        let rows = match n {
            "dns" => dns()?,
            _ => unreachable!("checked above"),
        };
        print_table(n, &rows);
        results.benches.insert(n.to_owned(), (now(), rows));
    }
    std::fs::create_dir_all(results_path.parent().expect("dir"))?;
    std::fs::write(&results_path, serde_json::to_vec_pretty(&results)?)?;
    write_markdown(&root.join("docs/benchmarks.md"), &results)?;
    eprintln!(
        "xtask: wrote {} and docs/benchmarks.md",
        results_path
            .strip_prefix(&root)
            .unwrap_or(&results_path)
            .display()
    );
    Ok(())
}

fn now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn print_table(name: &str, rows: &[Row]) {
    println!("\n{name}");
    println!(
        "{:<40} {:>14} {:<10} {:>8}  baseline",
        "case", "value", "unit", "ratio"
    );
    for r in rows {
        println!(
            "{:<40} {:>14} {:<10} {:>8}  {}",
            r.case,
            fmt_value(r.value),
            r.unit,
            r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_default(),
            r.baseline.clone().unwrap_or_default()
        );
    }
}

fn write_markdown(path: &Path, results: &Results) -> Result<()> {
    let mut md = String::from(
        "# Benchmarks\n\nWritten by `cargo xtask bench` (bench/results/latest.json holds the same figures).\n\
         Every ratio is against a baseline measured in the same run on the same machine: absolute\n\
         numbers vary by tens of percent between runs on these 2-core machines, ratios much less.\n",
    );
    for (name, (when, rows)) in &results.benches {
        md.push_str(&format!("\n## {name}\n\nMeasured {when}.\n\n"));
        md.push_str(
            "| case | value | unit | ratio | baseline | note |\n|---|---:|---|---:|---|---|\n",
        );
        for r in rows {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.case,
                fmt_value(r.value),
                r.unit,
                r.ratio.map(|x| format!("{x:.2}×")).unwrap_or_default(),
                r.baseline.clone().unwrap_or_default(),
                r.note
            ));
        }
    }
    std::fs::create_dir_all(path.parent().expect("dir"))?;
    std::fs::write(path, md)?;
    Ok(())
}

fn row(case: &str, value: f64, unit: &str, baseline: Option<(&str, f64)>, note: &str) -> Row {
    Row {
        case: case.into(),
        value,
        unit: unit.into(),
        baseline: baseline.map(|(b, _)| b.into()),
        ratio: baseline.map(|(_, b)| if b > 0.0 { value / b } else { f64::NAN }),
        note: note.into(),
    }
}

fn devourer_bin() -> PathBuf {
    workspace_root().join("target/release/devourer")
}

/// A number `key=N` from the agent's log.
fn log_number(log: &str, key: &str) -> Option<u64> {
    let needle = format!(" {key}=");
    log.lines().rev().find_map(|l| {
        let at = l.find(&needle)?;
        l[at + needle.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

#[derive(Deserialize)]
struct BenchLine {
    case: String,
    per_sec: f64,
}

/// DNS: userspace throughput, offline replay throughput, and live ring-buffer drops on veth.
fn dns() -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    // 1. Userspace path (in process, one core).
    let out = cargo()
        .args(["bench", "-p", "devourer", "--bench", "dns"])
        .stderr(Stdio::inherit())
        .output()
        .context("running the dns bench binary")?;
    if !out.status.success() {
        bail!("cargo bench --bench dns failed");
    }
    let lines: Vec<BenchLine> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let get = |c: &str| lines.iter().find(|l| l.case == c).map(|l| l.per_sec);
    let decode = get("decode_only").context("decode_only result")?;
    let full = get("tracker_and_records").context("tracker_and_records result")?;
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
        "1M messages, one core; target >= 200k msg/s",
    ));

    // 2. The generated capture, replayed through the kernel program.
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let pcap = dir.join("dns-1m.pcap");
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
        "baseline: test_run per frame",
    ));
    rows.push(row(
        "replay: flows + DNS",
        with_dns,
        "msg/s",
        Some(("replay: flows only", flows_only)),
        "devourer read of the 1M-message capture",
    ));

    // 3. Live: the capture sent as fast as tcpreplay can over a veth pair.
    if Command::new("tcpreplay").arg("--version").output().is_err() {
        eprintln!("xtask: tcpreplay is not installed; skipping the live DNS benchmark");
        return Ok(rows);
    }
    for (label, rate) in [("200k msg/s", Some(200_000)), ("top speed", None)] {
        let (sent_pps, events, drops, messages) = live_dns(&pcap, rate)?;
        rows.push(row(
            &format!("live {label}: tcpreplay rate"),
            sent_pps,
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
                "target 0"
            } else {
                "beyond one core's reach"
            },
        ));
    }
    Ok(rows)
}

/// Two namespaces joined by a veth pair, removed on drop.
struct Pair(String, String);

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.1]).status();
    }
}

fn sh(script: &str) -> Result<()> {
    let st = Command::new("bash").args(["-euc", script]).status()?;
    if !st.success() {
        bail!("{script}: {st}");
    }
    Ok(())
}

fn live_dns(pcap: &Path, rate: Option<u64>) -> Result<(f64, u64, u64, u64)> {
    let pid = std::process::id();
    let pair = Pair(format!("dvbench-a{pid}"), format!("dvbench-b{pid}"));
    let (a, b) = (&pair.0, &pair.1);
    sh(&format!(
        "ip netns add {a}; ip netns add {b}
         ip link add vba netns {a} type veth peer name vbb netns {b}
         ip -n {a} link set vba up; ip -n {b} link set vbb up
         ip netns exec {a} ethtool -K vba gro off >/dev/null 2>&1 || true"
    ))?;
    let log = workspace_root().join("target/bench/dns-live.log");
    let mut agent = Command::new("ip")
        .args(["netns", "exec", a])
        .arg(devourer_bin())
        .args(["capture", "-i", "vba", "--output", "/dev/null"])
        .env("DEVOURER_LOG", "info")
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("capturing")
    {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = agent.kill();
            bail!("agent did not start: {}", std::fs::read_to_string(&log)?);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let speed = match rate {
        Some(pps) => format!("--pps={pps}"),
        None => "--topspeed".into(),
    };
    let out = Command::new("ip")
        .args(["netns", "exec", b, "tcpreplay", "-i", "vbb", &speed])
        .arg(pcap)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "Rated: 123.4 Bps, 0.98 Mbps, 45678.90 pps"
    let pps = text
        .lines()
        .find(|l| l.contains("Rated:"))
        .and_then(|l| l.split(',').find(|p| p.contains("pps")))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: kill(2) on our child.
    unsafe { libc_kill(agent.id() as i32, 15) };
    let _ = agent.wait();
    let log_text = std::fs::read_to_string(&log)?;
    let events = log_number(&log_text, "dns_events").unwrap_or(0);
    let drops = log_number(&log_text, "dns_ring_full").unwrap_or(0);
    let messages = log_number(&log_text, "messages").unwrap_or(0);
    drop(pair);
    Ok((pps, events, drops, messages))
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
