//! Kafka export (`--kafka-brokers`): each record's JSON line (the same bytes as the JSON lines
//! output, without the newline) as a record value in its kind's topic, keyed by
//! `community_id` (so a conversation stays in one partition; records without one are spread
//! over the partitions). At least once: records wait in a durable spool, per topic, until the
//! partition leader acknowledged them; a broker outage or restart loses nothing, and a batch
//! sent again keeps its records' ids. Batches are compressed (lz4 by default, or gzip).

pub mod client;
mod sender;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use self::client::Connect;
use super::{
    Sink, SinkReport, Status,
    remote::Shutdown,
    spool::{Limits, Spool, intake::Intake, rejects::Rejects},
};
use crate::record::{Batch, JsonLines, Kind};

/// The spool's tables, one per record kind (each sent to its configured topic).
const TABLES: [&str; 4] = ["flows", "dns", "http", "overflow"];

/// How record batches are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Lz4,
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip),
            "lz4" => Ok(Self::Lz4),
            _ => Err(format!("compression {s:?}: none, gzip or lz4")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct KafkaConfig {
    pub connect: Connect,
    /// The topic of each table: flows, dns, http, overflow.
    pub topics: [String; 4],
    pub compression: Compression,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub quarantine_max_bytes: u64,
    /// A produce request holds at most this many records and bytes (before compression,
    /// split over the partitions), and waits at most this long.
    pub batch: Limits,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl KafkaConfig {
    fn topic(&self, table: &str) -> &str {
        let i = TABLES.iter().position(|t| *t == table).unwrap_or(0);
        &self.topics[i]
    }
}

/// Counts of one topic.
#[derive(Debug, Default)]
pub struct TopicStats {
    pub spooled: AtomicU64,
    pub sent: AtomicU64,
    pub retried: AtomicU64,
    pub quarantined: AtomicU64,
    pub dropped: AtomicU64,
}

impl TopicStats {
    const OUTCOMES: [&str; 5] = ["spooled", "sent", "retried", "quarantined", "dropped"];

    fn counts(&self) -> [u64; 5] {
        [
            &self.spooled,
            &self.sent,
            &self.retried,
            &self.quarantined,
            &self.dropped,
        ]
        .map(get)
    }
}

/// What the sink counted, per table (topic).
#[derive(Debug, Default)]
pub struct KafkaStats {
    pub tables: [TopicStats; 4],
    pub connects: AtomicU64,
    pub errors: AtomicU64,
    /// Unix seconds of the last acknowledged produce (0: none yet).
    pub last_success: AtomicU64,
}

impl KafkaStats {
    fn of(&self, table: &str) -> &TopicStats {
        let i = TABLES.iter().position(|t| *t == table).unwrap_or(0);
        &self.tables[i]
    }
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub struct KafkaSink {
    spool: Arc<Spool>,
    stats: Arc<KafkaStats>,
    topics: [String; 4],
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
    intake: Intake,
}

struct KafkaStatus {
    stats: Arc<KafkaStats>,
    spool: Arc<Spool>,
    topics: [String; 4],
}

impl Status for KafkaStatus {
    fn report(&self) -> SinkReport {
        let mut totals = [0u64; 5];
        let mut by_table = Vec::new();
        for (topic, t) in self.topics.iter().zip(&self.stats.tables) {
            let counts = t.counts();
            for (i, (outcome, n)) in TopicStats::OUTCOMES.iter().zip(counts).enumerate() {
                totals[i] += n;
                by_table.push((topic.clone(), *outcome, n));
            }
        }
        SinkReport {
            outcomes: TopicStats::OUTCOMES.into_iter().zip(totals).collect(),
            by_table,
            spool_bytes: Some(self.spool.bytes()),
            last_success: Some(get(&self.stats.last_success)),
            ..SinkReport::default()
        }
    }
}

impl KafkaSink {
    /// Opens the spool (what an earlier run left is sent first) and starts the sender.
    pub fn start(cfg: KafkaConfig) -> Result<Self> {
        let intake = Intake::new("Kafka", "--kafka-spool-max-bytes");
        let spool = intake.open(&cfg.spool_dir, cfg.spool_max_bytes, cfg.batch, &TABLES)?;
        let stats = Arc::new(KafkaStats::default());
        let shutdown = Shutdown::default();
        let rejects = Rejects::capped_by(
            cfg.spool_dir.join("dead-letter.jsonl"),
            cfg.quarantine_max_bytes,
            "--kafka-quarantine-max-bytes",
        );
        let topics = cfg.topics.clone();
        let s = sender::Sender {
            rejects,
            cfg,
            spool: spool.clone(),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
            client: None,
            partitions: BTreeMap::new(),
            next: 0,
        };
        let thread = std::thread::Builder::new()
            .name("kafka-sender".into())
            .spawn(move || s.run())
            .context("starting the Kafka sender")?;
        Ok(Self {
            spool,
            stats,
            topics,
            shutdown,
            thread: Some(thread),
            intake,
        })
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn takes(&self, kind: Kind) -> bool {
        matches!(kind, Kind::Flow | Kind::Dns | Kind::Http | Kind::Overflow)
    }

    /// Spools the batch as JSON lines under its table. Never waits on the brokers; what does
    /// not fit in the spool is dropped and counted.
    fn write(&mut self, batch: Batch<'_>) -> bool {
        let table = match batch.kind() {
            Kind::Flow => "flows",
            Kind::Dns => "dns",
            Kind::Http => "http",
            Kind::Overflow => "overflow",
            Kind::DnsLog | Kind::HttpLog => return true,
        };
        let mut lines = Vec::with_capacity(batch.len() * 1024);
        let n = batch.encode(&mut JsonLines(&mut lines)) as u64;
        let stats = self.stats.of(table);
        self.intake.append(
            &self.spool,
            table,
            &lines,
            n,
            &stats.spooled,
            &stats.dropped,
        );
        true
    }

    fn status(&self) -> Arc<dyn Status> {
        Arc::new(KafkaStatus {
            stats: self.stats.clone(),
            spool: self.spool.clone(),
            topics: self.topics.clone(),
        })
    }

    /// Seals what is open and sends until `deadline`; what is left stays in the spool for the
    /// next start.
    fn finish(mut self: Box<Self>, deadline: Instant) -> u64 {
        if !self.shutdown.stop_by(deadline, self.thread.take()) {
            tracing::warn!(
                "the Kafka brokers did not acknowledge by the shutdown deadline: stopping anyway"
            );
        }
        let s = &self.stats;
        let report = KafkaStatus {
            stats: s.clone(),
            spool: self.spool.clone(),
            topics: self.topics.clone(),
        }
        .report();
        let count = |o: &str| {
            report
                .outcomes
                .iter()
                .find(|(k, _)| *k == o)
                .map_or(0, |(_, n)| *n)
        };
        let left = self.spool.bytes();
        tracing::info!(
            spooled = count("spooled"),
            sent = count("sent"),
            retried = count("retried"),
            quarantined = count("quarantined"),
            dropped = count("dropped"),
            connects = get(&s.connects),
            errors = get(&s.errors),
            spool_bytes_left = left,
            "kafka"
        );
        if left > 0 {
            tracing::warn!(bytes = left, dir = %self.spool.dir().display(), "records not yet acknowledged stay in the Kafka spool and are sent at the next start");
        }
        report.dropped()
    }
}
