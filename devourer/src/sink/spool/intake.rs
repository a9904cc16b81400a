//! A sink's way into its spool: records appended and counted spooled, or dropped (the spool
//! full, or a failed write) and counted, with an error logged (once while the spool is full).

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use anyhow::Context;

use super::{Limits, Spool};

pub struct Intake {
    /// The sink, as logs name it (`Kafka`, `OTLP`, ...).
    sink: &'static str,
    /// The flag that caps its spool.
    flag: &'static str,
    warned_full: AtomicBool,
}

impl Intake {
    /// Opens (creating) `dir` as the sink's spool for `tables`; what an earlier run left there
    /// is said, and sent first.
    pub fn open(
        &self,
        dir: &Path,
        max_bytes: u64,
        limits: Limits,
        tables: &[&str],
    ) -> anyhow::Result<Arc<Spool>> {
        let spool = Spool::open(dir, max_bytes, limits, tables)
            .with_context(|| format!("opening the {} spool in {}", self.sink, dir.display()))?;
        if spool.bytes() > 0 {
            tracing::info!(bytes = spool.bytes(), dir = %dir.display(), "the {} spool holds records from an earlier run; sending them first", self.sink);
        }
        Ok(Arc::new(spool))
    }

    pub const fn new(sink: &'static str, flag: &'static str) -> Self {
        Self {
            sink,
            flag,
            warned_full: AtomicBool::new(false),
        }
    }

    /// Appends the lines of `n` records to `table`, adding `n` to `spooled` or, when they
    /// cannot be kept, to `dropped`.
    pub fn append(
        &self,
        spool: &Spool,
        table: &str,
        lines: &[u8],
        n: u64,
        spooled: &AtomicU64,
        dropped: &AtomicU64,
    ) {
        match spool.append(table, lines) {
            Ok(true) => {
                spooled.fetch_add(n, Ordering::Relaxed);
            }
            Ok(false) => {
                dropped.fetch_add(n, Ordering::Relaxed);
                if !self.warned_full.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        "the {} spool is full ({}): new records are dropped and counted",
                        self.sink,
                        self.flag
                    );
                }
            }
            Err(e) => {
                dropped.fetch_add(n, Ordering::Relaxed);
                tracing::error!(
                    "writing to the {} spool failed: {e}; records dropped and counted",
                    self.sink
                );
            }
        }
    }
}
