//! `cargo xtask compare-records BASELINE DIR`: replays every capture under DIR with a baseline
//! agent binary and with the current one (TC and XDP, DNS and HTTP decoding and text logs on)
//! and compares their records and text log files byte for byte, and their exit codes. What a
//! refactoring must leave unchanged.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cargo, run_cmd, workspace_root};

fn captures(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            captures(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|e| e == "pcap" || e == "pcapng")
        {
            out.push(path);
        }
    }
    Ok(())
}

/// What one replay produced: exit code, JSON lines, and every text log file with its content.
type Replayed = (Option<i32>, Vec<u8>, Vec<(String, Vec<u8>)>);

fn replay(bin: &Path, file: &Path, mode: &str) -> Result<Replayed> {
    let logs = std::env::temp_dir().join(format!("devourer-compare-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&logs);
    let out = Command::new(bin)
        .arg("read")
        .arg(file)
        .args(["--agent-name", "compare", "--mode", mode])
        .args(["--http-ports", "80", "--no-progress", "--output", "-"])
        .arg("--dns-log-dir")
        .arg(logs.join("dns"))
        .arg("--http-log-dir")
        .arg(logs.join("http"))
        .env("DEVOURER_LOG", "error")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let mut texts = Vec::new();
    for kind in ["dns", "http"] {
        if let Ok(entries) = std::fs::read_dir(logs.join(kind)) {
            for e in entries {
                let e = e?;
                let name = format!("{kind}/{}", e.file_name().to_string_lossy());
                texts.push((name, std::fs::read(e.path())?));
            }
        }
    }
    texts.sort();
    let _ = std::fs::remove_dir_all(&logs);
    Ok((out.status.code(), out.stdout, texts))
}

pub fn compare(baseline: &Path, dir: &Path) -> Result<()> {
    run_cmd(cargo().args(["build", "-p", "devourer"]))?;
    let current = workspace_root().join("target/debug/devourer");
    let mut files = Vec::new();
    captures(dir, &mut files)?;
    files.sort();
    if files.is_empty() {
        bail!("no .pcap or .pcapng under {}", dir.display());
    }
    let (mut same, mut differ) = (0, Vec::new());
    for file in &files {
        for mode in ["tc", "xdp"] {
            let old = replay(baseline, file, mode)?;
            let new = replay(&current, file, mode)?;
            if old == new {
                same += 1;
            } else {
                differ.push(format!(
                    "{} ({mode}): exit {:?} vs {:?}, {} vs {} bytes of records, {} vs {} log files",
                    file.display(),
                    old.0,
                    new.0,
                    old.1.len(),
                    new.1.len(),
                    old.2.len(),
                    new.2.len()
                ));
            }
        }
    }
    eprintln!(
        "xtask: {same} replays identical, {} different, over {} captures",
        differ.len(),
        files.len()
    );
    if !differ.is_empty() {
        bail!("records differ:\n{}", differ.join("\n"));
    }
    Ok(())
}
