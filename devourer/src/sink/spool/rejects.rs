//! Where rows that cannot be delivered go, each file capped in bytes: the dead-letter file
//! (rows BigQuery refuses as invalid, with its reason) and the quarantine file beside it
//! (spool lines that are not rows at all: torn by a crash during an append, or corrupt).

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::SystemTime,
};

use serde_json::{Value, json};

use crate::base::files;

/// What became of a rejected row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// Written (and synced) to its file.
    Stored,
    /// The file is at its cap: the row is dropped (counted by the caller).
    Full,
}

pub struct Rejects {
    dead_letter: PathBuf,
    quarantine: PathBuf,
    max_bytes: u64,
    /// The flag that sets `max_bytes` (named when the cap is hit).
    flag: &'static str,
    warned_full: AtomicBool,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

impl Rejects {
    /// `dead_letter` is the dead-letter file; the quarantine file is `quarantine.jsonl` beside
    /// it. Each holds at most `max_bytes`.
    pub fn new(dead_letter: PathBuf, max_bytes: u64) -> Self {
        Self::capped_by(dead_letter, max_bytes, "--bq-dead-letter-max-bytes")
    }

    /// [`Self::new`], the cap set by `flag`.
    pub fn capped_by(dead_letter: PathBuf, max_bytes: u64, flag: &'static str) -> Self {
        let quarantine = dead_letter.with_file_name("quarantine.jsonl");
        Self {
            dead_letter,
            quarantine,
            max_bytes,
            flag,
            warned_full: AtomicBool::new(false),
        }
    }

    pub fn dead_letter_path(&self) -> &Path {
        &self.dead_letter
    }

    pub fn quarantine_path(&self) -> &Path {
        &self.quarantine
    }

    /// A row BigQuery refused, with its reason.
    pub fn dead_letter(&self, table: &str, reason: &str, row: &str) -> io::Result<Kept> {
        let line = json!({
            "time": now_rfc3339(),
            "table": table,
            "reason": reason,
            "row": serde_json::from_str::<Value>(row).unwrap_or(Value::String(row.to_owned())),
        });
        self.store(&self.dead_letter, &line)
    }

    /// A spool line that is not a row, kept as text (lossy where it is not UTF-8).
    pub fn quarantine(&self, table: &str, reason: &str, raw: &[u8]) -> io::Result<Kept> {
        let line = json!({
            "time": now_rfc3339(),
            "table": table,
            "reason": reason,
            "line": String::from_utf8_lossy(raw),
        });
        self.store(&self.quarantine, &line)
    }

    fn store(&self, path: &Path, line: &Value) -> io::Result<Kept> {
        let text = format!("{line}\n");
        let len = std::fs::metadata(path).map_or(0, |m| m.len());
        if len + text.len() as u64 > self.max_bytes {
            if !self.warned_full.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    file = %path.display(),
                    flag = self.flag,
                    "the reject file is full: rejected rows are dropped and counted"
                );
            }
            return Ok(Kept::Full);
        }
        let mut f = files::open_append(path)?;
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        Ok(Kept::Stored)
    }
}

/// Whether a spool line is a row: a JSON object (anything else was torn or corrupted).
pub fn is_row(line: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_json_objects_and_files_stop_at_their_cap() {
        assert!(is_row("{\"id\":\"a\"}"));
        assert!(!is_row("{\"type\":\"flow\",\"id\":\"torn"));
        assert!(!is_row("17"));
        let dir = std::env::temp_dir().join(format!("devourer-rejects-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let r = Rejects::new(dir.join("dead-letter.jsonl"), 300);
        assert_eq!(r.quarantine("flow", "torn", b"{\"x").unwrap(), Kept::Stored);
        assert_eq!(
            r.dead_letter("flow", "invalid", "{\"id\":1}").unwrap(),
            Kept::Stored
        );
        let big = "x".repeat(400);
        assert_eq!(
            r.quarantine("flow", "torn", big.as_bytes()).unwrap(),
            Kept::Full
        );
        let q = std::fs::read_to_string(r.quarantine_path()).unwrap();
        assert_eq!(q.lines().count(), 1);
        assert!(q.contains("\"line\":\"{\\\"x\""), "{q}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
