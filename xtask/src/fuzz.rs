//! `cargo xtask fuzz [TARGET] [--seconds N]`: runs the libFuzzer targets in `fuzz/` (cargo
//! fuzz, on the pinned nightly, overflow checks on) for a bounded time each, from a copy of
//! the checked-in seed corpus. A crash fails the run; its input lands in `fuzz/artifacts/`
//! and becomes a regression test.

use std::{path::Path, process::Command};

use anyhow::{Context, Result};

use crate::{run_cmd, setup, workspace_root};

/// Every target, in `fuzz/fuzz_targets/`.
pub const TARGETS: &[&str] = &[
    "pcap_reader",
    "dns_message",
    "dns_tcp",
    "http_head",
    "tls_hello",
    "payload_events",
    "capture_request",
    "spool_recovery",
];

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    if let Ok(entries) = std::fs::read_dir(from) {
        for e in entries {
            let e = e?;
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

pub fn fuzz(target: Option<String>, seconds: u32) -> Result<()> {
    let tc = setup::ebpf_toolchain()?;
    let root = workspace_root();
    let targets: Vec<&str> = match &target {
        Some(t) => vec![
            TARGETS
                .iter()
                .copied()
                .find(|x| x == t)
                .with_context(|| format!("no fuzz target {t}: one of {TARGETS:?}"))?,
        ],
        None => TARGETS.to_vec(),
    };
    for t in targets {
        let corpus = root.join("target/fuzz-corpus").join(t);
        copy_dir(&root.join("fuzz/corpus").join(t), &corpus)?;
        run_cmd(
            Command::new("cargo")
                .current_dir(&root)
                .arg(format!("+{tc}"))
                .args(["fuzz", "run", "--dev", "--fuzz-dir", "fuzz", t])
                .arg(&corpus)
                .args([
                    "--",
                    &format!("-max_total_time={seconds}"),
                    "-rss_limit_mb=2048",
                ])
                .args(["-max_len=16384", "-print_final_stats=1"]),
        )
        .with_context(|| format!("fuzz target {t} found a crash (see fuzz/artifacts/{t})"))?;
    }
    Ok(())
}
