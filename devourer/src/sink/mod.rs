//! Where records go, behind one interface: JSON lines ([`jsonl`]), packetlog text logs
//! ([`textlog`]) and BigQuery ([`bigquery`], in front of which a durable [`spool`] keeps every
//! row until it is acknowledged). Each sink declares which record kinds it takes;
//! adding a destination (Kafka, OTLP, ...) is one new module implementing [`Sink`].

#[cfg(feature = "bigquery")]
pub mod bigquery;
pub mod jsonl;
pub mod spool;
pub mod textlog;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::record::{Batch, Kind};

/// Called with the duration of every request a remote sink makes (for a metrics histogram).
pub type RequestObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// What a sink reports for metrics: absolute counts by outcome
/// (`devourer_sink_rows_total{sink, outcome}`) and, for a spooling sink, its backlog.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkReport {
    pub outcomes: Vec<(&'static str, u64)>,
    /// Bytes waiting on disk to be delivered.
    pub spool_bytes: Option<u64>,
    /// Unix seconds of the last acknowledged delivery (0: never).
    pub last_success: Option<u64>,
}

pub trait Sink: Send {
    /// The sink's name in metrics (the `sink` label) and logs.
    fn name(&self) -> &'static str;

    /// Whether this sink takes records of `kind`.
    fn takes(&self, kind: Kind) -> bool;

    /// Hands over a batch of a kind it takes. Never blocks on a slow destination (a live
    /// sink drops and counts instead; a replay's JSON output waits). Returns `false` once the
    /// sink is closed for good (the reader of the JSON output went away): the agent stops.
    fn write(&mut self, batch: Batch<'_>) -> bool;

    /// Reopens files (SIGHUP, after logrotate moved them).
    fn reopen(&mut self) {}

    /// Whether it still accepts records (`/readyz`).
    fn alive(&self) -> bool {
        true
    }

    fn report(&self) -> SinkReport {
        SinkReport::default()
    }

    /// Stops taking records and delivers what it holds until `deadline`, then logs its own
    /// summary; returns how many records it dropped over its life.
    fn finish(self: Box<Self>, deadline: Instant) -> u64;
}

/// Every configured sink; a batch goes to each one that takes its kind.
#[derive(Default)]
pub struct Sinks(Vec<Box<dyn Sink>>);

impl Sinks {
    pub fn push(&mut self, sink: Box<dyn Sink>) {
        self.0.push(sink);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Writes `batch` to every sink that takes it; `false` if one of them closed for good.
    pub fn write(&mut self, batch: Batch<'_>) -> bool {
        let kind = batch.kind();
        let mut open = true;
        for s in &mut self.0 {
            if s.takes(kind) {
                open &= s.write(batch);
            }
        }
        open
    }

    pub fn reopen(&mut self) {
        for s in &mut self.0 {
            s.reopen();
        }
    }

    pub fn alive(&self) -> bool {
        self.0.iter().all(|s| s.alive())
    }

    /// Each sink's name and report.
    pub fn reports(&self) -> impl Iterator<Item = (&'static str, SinkReport)> + '_ {
        self.0.iter().map(|s| (s.name(), s.report()))
    }

    /// Finishes every sink against one deadline; returns the records dropped in all.
    pub fn finish(self, deadline: Instant) -> u64 {
        self.0.into_iter().map(|s| s.finish(deadline)).sum()
    }
}
