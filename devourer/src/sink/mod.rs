//! Where records go, behind one interface: JSON lines ([`jsonl`]), packetlog text logs
//! ([`textlog`]) and BigQuery ([`bigquery`], in front of which a durable [`spool`] keeps every
//! row until it is acknowledged). Each sink declares which record kinds it takes and runs on a
//! thread of its own behind a bounded queue ([`queue`]), so no sink can stall counting;
//! adding a destination (Kafka, fluentd, IPFIX, ...) is one new module implementing [`Sink`].

#[cfg(feature = "bigquery")]
pub mod bigquery;
pub mod fluent;
pub mod ipfix;
pub mod jsonl;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod queue;
pub mod remote;
pub mod spool;
pub mod textlog;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

pub use self::queue::QueueLimits;
use self::queue::Worker;
use crate::record::{Batch, Kind, Records};

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
    /// Records waiting in the sink's queue.
    pub queued: u64,
    /// Counts by destination table or topic and outcome, for a sink with several
    /// (`devourer_sink_table_records_total{sink, table, outcome}`).
    pub by_table: Vec<(String, &'static str, u64)>,
    /// Messages by outcome, for a sink that sends without acknowledgement (IPFIX:
    /// `devourer_sink_messages_total{sink, outcome}`).
    pub messages: Vec<(&'static str, u64)>,
}

impl SinkReport {
    /// Records the sink lost, for any reason (its `dropped` outcome).
    pub fn dropped(&self) -> u64 {
        self.outcomes
            .iter()
            .find(|(o, _)| *o == "dropped")
            .map_or(0, |(_, n)| *n)
    }
}

/// A sink's counts, readable from any thread without waiting on the sink (atomics only).
pub trait Status: Send + Sync {
    fn report(&self) -> SinkReport;

    /// Whether it still accepts records (`/readyz`).
    fn alive(&self) -> bool {
        true
    }
}

pub trait Sink: Send {
    /// The sink's name in metrics (the `sink` label) and logs.
    fn name(&self) -> &'static str;

    /// Whether this sink takes records of `kind`.
    fn takes(&self, kind: Kind) -> bool;

    /// Delivers a batch of a kind it takes. Runs on the sink's own thread and may wait on its
    /// destination (a disk, a network); meanwhile its queue fills and the counting thread goes
    /// on. Returns `false` once the sink is closed for good (the reader of the JSON output
    /// went away): the agent stops.
    fn write(&mut self, batch: Batch<'_>) -> bool;

    /// Reopens files (SIGHUP, after logrotate moved them).
    fn reopen(&mut self) {}

    /// Its counts, for metrics and `/readyz`, read from other threads.
    fn status(&self) -> Arc<dyn Status>;

    /// Stops taking records and delivers what it holds until `deadline`, then logs its own
    /// summary; returns how many records it dropped over its life.
    fn finish(self: Box<Self>, deadline: Instant) -> u64;
}

/// Every configured sink, each on its own thread; records go to each one that takes their kind.
#[derive(Default)]
pub struct Sinks(Vec<Worker>);

impl Sinks {
    /// Starts `sink` on its own thread behind a queue bounded by `limits`.
    pub fn push(&mut self, sink: Box<dyn Sink>, limits: QueueLimits) -> std::io::Result<()> {
        self.0.push(Worker::start(sink, limits)?);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Offers `records` to every sink that takes them (never waiting on one, but in a
    /// lossless replay); `false` if one of them closed for good.
    pub fn write(&mut self, records: &Records) -> bool {
        if records.is_empty() {
            return !self.0.iter().any(Worker::closed);
        }
        let kind = records.all().kind();
        let mut open = true;
        for w in &self.0 {
            if w.takes(kind) {
                open &= w.offer(records);
            }
        }
        open
    }

    pub fn reopen(&mut self) {
        for w in &self.0 {
            w.reopen();
        }
    }

    pub fn alive(&self) -> bool {
        self.0.iter().all(Worker::alive)
    }

    /// Each sink's name and report.
    pub fn reports(&self) -> impl Iterator<Item = (&'static str, SinkReport)> + '_ {
        self.0.iter().map(|w| (w.name(), w.report()))
    }

    /// Finishes every sink against one deadline, side by side; returns the records dropped
    /// in all.
    pub fn finish(self, deadline: Instant) -> u64 {
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .0
                .into_iter()
                .map(|w| s.spawn(move || w.finish(deadline)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        })
    }
}
