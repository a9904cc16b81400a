//! The soak (#14): the agent for `DEVOURER_SOAK_MINUTES` (10) under mixed traffic, a unique-flow
//! flood and a DNS flood while the fake BigQuery fails a fifth of its inserts
//! (tests/src/bin/soak.rs drives it). Memory, descriptors and the spool must stay flat, and
//! every flow of the flood must reach BigQuery exactly once. Only run by name: it takes minutes.

use std::process::Stdio;

use anyhow::{Context, Result, bail};

use super::{Row, case, row};
use crate::{cargo, run_cmd, workspace_root};

pub fn run() -> Result<Vec<Row>> {
    let minutes = std::env::var("DEVOURER_SOAK_MINUTES").unwrap_or_else(|_| "10".into());
    run_cmd(cargo().args([
        "build",
        "--release",
        "-p",
        "devourer-tests",
        "--bin",
        "soak",
    ]))?;
    let root = workspace_root();
    let out = std::process::Command::new(root.join("target/release/soak"))
        .arg(&minutes)
        .env("DEVOURER_BIN", root.join("target/release/devourer"))
        .stderr(Stdio::inherit())
        .output()
        .context("running the soak")?;
    if !out.status.success() {
        bail!("the soak failed");
    }
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let v = |c: &str| case(&lines, c, "value");
    let mut rows = vec![row(
        "soak minutes",
        v("soak minutes")?,
        "min",
        None,
        "mixed traffic, 200 unique flows/s, 200 unanswered DNS queries/s, a fifth of BigQuery inserts failing",
    )];
    for (what, unit, goal) in [
        ("RSS", "MiB", "goal ≤ 1.2× (flat)"),
        ("open fds", "fds", "goal ≤ 1.1× (no leak)"),
    ] {
        let first = format!(
            "soak {what} first quarter{}",
            if unit == "MiB" { " MiB" } else { "" }
        );
        let last = format!(
            "soak {what} last quarter{}",
            if unit == "MiB" { " MiB" } else { "" }
        );
        let f = v(&first)?;
        rows.push(row(
            &first,
            f,
            unit,
            None,
            "average over the run's first quarter",
        ));
        rows.push(row(&last, v(&last)?, unit, Some((&first, f)), goal));
    }
    rows.push(row(
        "soak spool peak",
        v("soak spool peak MiB")?,
        "MiB",
        None,
        "bounded while inserts fail; drained at the end",
    ));
    let sent = v("soak flood flows sent")?;
    rows.push(row(
        "soak flood flows sent",
        sent,
        "flows",
        None,
        "the oracle: every (sport, dport) the flood sent",
    ));
    rows.push(row(
        "soak flood flows in BigQuery exactly once",
        v("soak flood flows in BigQuery once")?,
        "flows",
        Some(("soak flood flows sent", sent)),
        "goal 1.00×",
    ));
    for c in [
        "soak flood flows in BigQuery twice",
        "soak flood flows missing",
    ] {
        rows.push(row(c, v(c)?, "flows", None, "goal 0"));
    }
    rows.push(row(
        "soak spool drained at the end",
        v("soak spool drained")?,
        "1 = yes",
        None,
        "once BigQuery stops failing",
    ));
    Ok(rows)
}
