//! fluentd's Forward output (`--fluent`, protocol v1): records in devourer's own schema (the
//! JSON lines' fields, as msgpack maps), tagged as the C++ devourer tagged them (`flow.new`
//! for start records, `flow.log`, `dns.tx`, `http.log`, `overflow.log`, after
//! `--fluent-tag-prefix`), sent as PackedForward messages with EventTime, each acknowledged
//! (`chunk`/`ack`) before its events leave the durable spool: at least once across receiver
//! restarts and agent crashes (a batch sent again keeps its records' ids). The spool holds each
//! event as one base64 line, per tag.

mod sender;
mod tls;
pub mod wire;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use base64::Engine;

use super::{
    Sink, SinkReport, Status,
    remote::Shutdown,
    spool::{Limits, Spool, intake::Intake, rejects::Rejects},
};
use crate::record::{Batch, Kind, fields::Record};

/// The tags, as the C++ devourer's (and the spool's tables).
const TAGS: [&str; 5] = ["flow.new", "flow.log", "dns.tx", "http.log", "overflow.log"];

/// Where and how to send.
#[derive(Clone, Debug)]
pub struct FluentConfig {
    /// `HOST:PORT` of the receiver (fluentd's `in_forward`, Fluent Bit's `forward` input).
    pub addr: String,
    /// Prepended to every tag with a dot (`devourer` → `devourer.flow.log`); empty: none.
    pub tag_prefix: String,
    /// The `<security> shared_key`: the handshake proves both ends hold it.
    pub shared_key: Option<String>,
    /// The name the handshake gives for this end (the agent's name).
    pub hostname: String,
    /// TLS to the receiver: its certificate checked against these CA certificates (a PEM
    /// file), or the system's when `None`.
    pub tls: Option<TlsConfig>,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// Spool lines that are not events go to `quarantine.jsonl` in the spool directory, at
    /// most this many bytes.
    pub quarantine_max_bytes: u64,
    /// A message holds at most this many events and bytes, and waits at most this long.
    pub batch: Limits,
    /// Connecting, writing a message and waiting for its ack, each at most this long.
    pub timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// `--fluent-tls`.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    /// The name the receiver's certificate must carry (default: the host of `addr`).
    pub server_name: Option<String>,
}

impl FluentConfig {
    fn tag(&self, table: &str) -> String {
        match self.tag_prefix.trim_end_matches('.') {
            "" => table.to_owned(),
            p => format!("{p}.{table}"),
        }
    }
}

/// What the sink counted.
#[derive(Debug, Default)]
pub struct FluentStats {
    pub spooled: AtomicU64,
    pub sent: AtomicU64,
    /// Events of messages sent again after a failure (not acknowledged in time).
    pub retried: AtomicU64,
    /// Spool lines that are not events (torn by a crash, corrupt): skipped.
    pub quarantined: AtomicU64,
    /// Refused because the spool was full (or could not be written).
    pub dropped: AtomicU64,
    pub connects: AtomicU64,
    pub errors: AtomicU64,
    /// Unix seconds of the last acknowledged message (0: none yet).
    pub last_success: AtomicU64,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub struct FluentSink {
    spool: Arc<Spool>,
    stats: Arc<FluentStats>,
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
    intake: Intake,
}

struct FluentStatus {
    stats: Arc<FluentStats>,
    spool: Arc<Spool>,
}

impl Status for FluentStatus {
    fn report(&self) -> SinkReport {
        let s = &self.stats;
        SinkReport {
            outcomes: vec![
                ("spooled", get(&s.spooled)),
                ("sent", get(&s.sent)),
                ("retried", get(&s.retried)),
                ("quarantined", get(&s.quarantined)),
                ("dropped", get(&s.dropped)),
            ],
            spool_bytes: Some(self.spool.bytes()),
            last_success: Some(get(&s.last_success)),
            ..SinkReport::default()
        }
    }
}

/// Appends `r` as one spool line: the base64 of its event.
fn line<R: Record>(lines: &mut Vec<u8>, event: &mut Vec<u8>, at: SystemTime, r: &R) {
    event.clear();
    wire::event(event, at, r);
    let text = base64::engine::general_purpose::STANDARD.encode(&*event);
    lines.extend_from_slice(text.as_bytes());
    lines.push(b'\n');
}

impl FluentSink {
    /// Opens the spool (what an earlier run left is sent first) and starts the sender.
    pub fn start(cfg: FluentConfig) -> Result<Self> {
        let intake = Intake::new("Forward", "--fluent-spool-max-bytes");
        let spool = intake.open(&cfg.spool_dir, cfg.spool_max_bytes, cfg.batch, &TAGS)?;
        let stats = Arc::new(FluentStats::default());
        let shutdown = Shutdown::default();
        let rejects = Rejects::capped_by(
            cfg.spool_dir.join("dead-letter.jsonl"),
            cfg.quarantine_max_bytes,
            "--fluent-quarantine-max-bytes",
        );
        let s = sender::Sender {
            rejects,
            cfg,
            spool: spool.clone(),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("fluent-sender".into())
            .spawn(move || s.run())
            .context("starting the Forward sender")?;
        Ok(Self {
            spool,
            stats,
            shutdown,
            thread: Some(thread),
            intake,
        })
    }

    /// Spools a batch, each record under its tag. Never waits on the receiver; what does not
    /// fit in the spool is dropped and counted.
    fn spool_batch(&self, batch: Batch<'_>) {
        let at = SystemTime::now();
        let mut by_tag: BTreeMap<&'static str, (Vec<u8>, u64)> = BTreeMap::new();
        let mut event = Vec::with_capacity(1024);
        let mut put = |tag: &'static str, f: &mut dyn FnMut(&mut Vec<u8>, &mut Vec<u8>)| {
            let (lines, n) = by_tag.entry(tag).or_default();
            f(lines, &mut event);
            *n += 1;
        };
        match batch {
            Batch::Flow(rs) => {
                for r in rs {
                    let tag = if r.status == "start" {
                        "flow.new"
                    } else {
                        "flow.log"
                    };
                    put(tag, &mut |l, e| line(l, e, at, r));
                }
            }
            Batch::Dns(rs) => rs
                .iter()
                .for_each(|r| put("dns.tx", &mut |l, e| line(l, e, at, r))),
            Batch::Http(rs) => rs
                .iter()
                .for_each(|r| put("http.log", &mut |l, e| line(l, e, at, r))),
            Batch::Overflow(rs) => {
                rs.iter()
                    .for_each(|r| put("overflow.log", &mut |l, e| line(l, e, at, r)));
            }
            Batch::DnsLog(_) | Batch::HttpLog(_) => {}
        }
        for (tag, (lines, n)) in by_tag {
            let s = &self.stats;
            self.intake
                .append(&self.spool, tag, &lines, n, &s.spooled, &s.dropped);
        }
    }
}

impl Sink for FluentSink {
    fn name(&self) -> &'static str {
        "fluent"
    }

    fn takes(&self, kind: Kind) -> bool {
        matches!(kind, Kind::Flow | Kind::Dns | Kind::Http | Kind::Overflow)
    }

    fn write(&mut self, batch: Batch<'_>) -> bool {
        self.spool_batch(batch);
        true
    }

    fn status(&self) -> Arc<dyn Status> {
        Arc::new(FluentStatus {
            stats: self.stats.clone(),
            spool: self.spool.clone(),
        })
    }

    /// Seals what is open and sends until `deadline`; what is left stays in the spool for the
    /// next start.
    fn finish(mut self: Box<Self>, deadline: Instant) -> u64 {
        if !self.shutdown.stop_by(deadline, self.thread.take()) {
            tracing::warn!(
                "the Forward receiver did not acknowledge by the shutdown deadline: stopping anyway"
            );
        }
        let s = &self.stats;
        let left = self.spool.bytes();
        tracing::info!(
            spooled = get(&s.spooled),
            sent = get(&s.sent),
            retried = get(&s.retried),
            quarantined = get(&s.quarantined),
            dropped = get(&s.dropped),
            connects = get(&s.connects),
            errors = get(&s.errors),
            spool_bytes_left = left,
            "fluent"
        );
        if left > 0 {
            tracing::warn!(bytes = left, dir = %self.spool.dir().display(), "events not yet acknowledged stay in the Forward spool and are sent at the next start");
        }
        get(&s.dropped)
    }
}
