//! `cargo xtask bench [NAME]`: runs benchmarks, prints a table, writes
//! `bench/results/latest.json` and `docs/benchmarks.md`. Every figure is shown beside a
//! baseline measured in the same run (these machines are noisy); traffic stays inside network
//! namespaces the benchmark creates.

mod datapath;
mod dns;
mod k8s;
mod kernel;
mod net;
mod pressure;
mod replay;
mod soak;
mod userspace;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
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

const ALL: &[&str] = &[
    "kernel",
    "datapath",
    "userspace",
    "replay",
    "dns",
    "pressure",
    "k8s",
];

/// Benchmarks run only when named (they take minutes).
const BY_NAME: &[&str] = &["soak"];

pub fn bench(name: Option<String>) -> Result<()> {
    let root = workspace_root();
    let results_path = root.join("bench/results/latest.json");
    if name.as_deref() == Some("report") {
        // Re-renders docs/benchmarks.md from the saved results (after editing the findings).
        let results: Results = serde_json::from_slice(
            &std::fs::read(&results_path).context("no saved results: run a benchmark first")?,
        )?;
        return write_markdown(&root.join("docs/benchmarks.md"), &results);
    }
    let names: Vec<&str> = match &name {
        Some(n) if ALL.contains(&n.as_str()) || BY_NAME.contains(&n.as_str()) => vec![n.as_str()],
        Some(n) => bail!(
            "unknown benchmark {n:?}; known: {}, {}",
            ALL.join(", "),
            BY_NAME.join(", ")
        ),
        None => ALL.to_vec(),
    };
    crate::setup::setup()?;
    require_tools()?;
    run_cmd(cargo().args([
        "build",
        "--release",
        "-p",
        "devourer",
        "--bin",
        "devourer",
        "--example",
        "attach_empty",
        // The benchmarks' kernel object (baselines) beside the agent's.
        "--features",
        "bench-programs",
    ]))?;
    std::fs::create_dir_all(bench_dir())?;
    let mut results: Results = std::fs::read(&results_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for n in names {
        eprintln!("xtask: benchmark {n}");
        let rows = match n {
            "kernel" => kernel::run()?,
            "datapath" => datapath::run()?,
            "userspace" => userspace::run()?,
            "replay" => replay::run()?,
            "dns" => dns::run()?,
            "pressure" => pressure::run()?,
            "soak" => soak::run()?,
            "k8s" => k8s::run()?,
            _ => unreachable!("checked above"),
        };
        print_table(n, &rows);
        results.benches.insert(n.to_owned(), (now(), rows));
        // Written after each benchmark: a later failure keeps what was measured.
        std::fs::create_dir_all(results_path.parent().expect("dir"))?;
        std::fs::write(&results_path, serde_json::to_vec_pretty(&results)?)?;
        write_markdown(&root.join("docs/benchmarks.md"), &results)?;
    }
    eprintln!("xtask: wrote bench/results/latest.json and docs/benchmarks.md");
    Ok(())
}

/// The programs the benchmarks drive, installed from Debian when missing (as root).
fn require_tools() -> Result<()> {
    let tools = [
        ("iperf3", "iperf3"),
        ("tcpreplay", "tcpreplay"),
        ("tcpdump", "tcpdump"),
        ("softflowd", "softflowd"),
        ("ip", "iproute2"),
    ];
    let found = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(t, _)| !found(t))
        .map(|(_, p)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {} for the benchmarks", missing.join(" "));
    let st = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    if !st.is_ok_and(|s| s.success()) {
        bail!(
            "the benchmarks need Debian's {}: install them (apt-get install {})",
            missing.join(", "),
            missing.join(" ")
        );
    }
    Ok(())
}

/// Scratch files (generated captures, logs).
pub fn bench_dir() -> PathBuf {
    workspace_root().join("target/bench")
}

fn now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn print_table(name: &str, rows: &[Row]) {
    println!("\n{name}");
    println!(
        "{:<52} {:>14} {:<10} {:>8}  baseline",
        "case", "value", "unit", "ratio"
    );
    for r in rows {
        println!(
            "{:<52} {:>14} {:<10} {:>8}  {}",
            r.case,
            fmt_value(r.value),
            r.unit,
            r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_default(),
            r.baseline.clone().unwrap_or_default()
        );
    }
}

/// Notes that stay in docs/benchmarks.md whatever the run measured: what holds figures back.
fn findings() -> String {
    std::fs::read_to_string(workspace_root().join("xtask/src/bench/findings.md"))
        .unwrap_or_default()
}

fn write_markdown(path: &Path, results: &Results) -> Result<()> {
    let mut md = String::from(
        "# Benchmarks\n\nWritten by `cargo xtask bench` (as root; `bench/results/latest.json` holds the same\n\
         figures). Every ratio is against a baseline measured in the same run on the same machine:\n\
         absolute numbers vary by tens of percent between runs on these 2-core VMs, ratios much less.\n",
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
    md.push('\n');
    md.push_str(&findings());
    std::fs::create_dir_all(path.parent().expect("dir"))?;
    std::fs::write(path, md)?;
    Ok(())
}

pub fn row(case: &str, value: f64, unit: &str, baseline: Option<(&str, f64)>, note: &str) -> Row {
    Row {
        case: case.into(),
        value,
        unit: unit.into(),
        baseline: baseline.map(|(b, _)| b.into()),
        ratio: baseline.map(|(_, b)| if b > 0.0 { value / b } else { f64::NAN }),
        note: note.into(),
    }
}

pub fn devourer_bin() -> PathBuf {
    workspace_root().join("target/release/devourer")
}

/// A number `key=N` from a log.
pub fn log_number(log: &str, key: &str) -> Option<u64> {
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

/// JSON lines printed by a `cargo bench --bench NAME` binary (after `--`, `args`).
pub fn bench_lines(name: &str, args: &[&str]) -> Result<Vec<serde_json::Value>> {
    let out = cargo()
        .args(["bench", "-p", "devourer", "--features", "bench-programs"])
        .args(["--bench", name, "--"])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running the {name} bench binary"))?;
    if !out.status.success() {
        bail!("cargo bench --bench {name} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The value of `field` in the line whose `case` is `case`.
pub fn case(lines: &[serde_json::Value], case: &str, field: &str) -> Result<f64> {
    lines
        .iter()
        .find(|l| l["case"] == case)
        .and_then(|l| l[field].as_f64())
        .with_context(|| format!("no {case:?} in the bench output"))
}
