//! OpenTelemetry export (`--otlp-endpoint`): every record as an OTLP log record ([`attrs`]),
//! spooled per kind (base64 of each log record's protobuf, one per line) until the collector
//! accepts it, so a collector restart or outage loses nothing (at least once: a request sent
//! again carries the same records, each with its `devourer.id`); and the agent's metrics as
//! OTLP metrics ([`metrics`]) every `--otlp-metrics-interval`. gRPC or HTTP/protobuf
//! ([`client`]); the standard `OTEL_EXPORTER_OTLP_*` variables configure what flags do not.

mod attrs;
pub mod client;
mod metrics;
mod sender;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use base64::Engine;
use prost::Message;

pub use self::attrs::attribute;
use self::{attrs::LogRecords, client::ClientConfig};
use super::{
    Sink, SinkReport, Status,
    remote::Shutdown,
    spool::{Limits, Spool, intake::Intake},
};
use crate::record::{Batch, Kind};

/// The spool's tables: one per record kind.
const TABLES: [&str; 4] = ["flow", "dns", "http", "overflow"];

/// What the metrics exporter reads: the agent's metric families at that moment.
pub type Gather = Arc<dyn Fn() -> Vec<prometheus::proto::MetricFamily> + Send + Sync>;

/// Where and how to export.
#[derive(Clone)]
pub struct OtlpConfig {
    pub client: ClientConfig,
    /// The resource's attributes (`service.name`, `host.name`, ...).
    pub resource: Vec<(String, String)>,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub quarantine_max_bytes: u64,
    /// A request holds at most this many log records and bytes, and waits at most this long.
    pub batch: Limits,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub metrics_interval: Duration,
    /// The agent's metrics (`None`: none are exported).
    pub metrics: Option<Gather>,
}

/// What the sink counted.
#[derive(Debug, Default)]
pub struct OtlpStats {
    pub spooled: AtomicU64,
    pub sent: AtomicU64,
    /// Log records of requests sent again after a failure.
    pub retried: AtomicU64,
    /// Log records the collector refused (a partial success, or a request refused as such):
    /// to the dead-letter file.
    pub dead_lettered: AtomicU64,
    /// Spool lines that are not log records (torn by a crash, corrupt).
    pub quarantined: AtomicU64,
    /// Refused because the spool was full (or could not be written).
    pub dropped: AtomicU64,
    pub log_requests: AtomicU64,
    pub log_errors: AtomicU64,
    pub metric_requests: AtomicU64,
    pub metric_errors: AtomicU64,
    /// Unix seconds of the last accepted request (0: none yet).
    pub last_success: AtomicU64,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

struct OtlpStatus {
    stats: Arc<OtlpStats>,
    spool: Arc<Spool>,
}

impl Status for OtlpStatus {
    fn report(&self) -> SinkReport {
        let s = &self.stats;
        SinkReport {
            outcomes: vec![
                ("spooled", get(&s.spooled)),
                ("sent", get(&s.sent)),
                ("retried", get(&s.retried)),
                ("dead_lettered", get(&s.dead_lettered)),
                ("quarantined", get(&s.quarantined)),
                ("dropped", get(&s.dropped)),
            ],
            messages: vec![
                ("logs_sent", get(&s.log_requests)),
                ("logs_error", get(&s.log_errors)),
                ("metrics_sent", get(&s.metric_requests)),
                ("metrics_error", get(&s.metric_errors)),
            ],
            spool_bytes: Some(self.spool.bytes()),
            last_success: Some(get(&s.last_success)),
            ..SinkReport::default()
        }
    }
}

pub struct OtlpSink {
    spool: Arc<Spool>,
    stats: Arc<OtlpStats>,
    shutdown: Shutdown,
    threads: Vec<JoinHandle<()>>,
    intake: Intake,
}

impl OtlpSink {
    /// Opens the spool (what an earlier run left is sent first) and starts the senders.
    pub fn start(cfg: OtlpConfig) -> Result<Self> {
        let intake = Intake::new("OTLP", "--otlp-spool-max-bytes");
        let spool = intake.open(&cfg.spool_dir, cfg.spool_max_bytes, cfg.batch, &TABLES)?;
        let stats = Arc::new(OtlpStats::default());
        let shutdown = Shutdown::default();
        let mut threads = Vec::new();
        let logs = sender::LogSender::new(&cfg, spool.clone(), stats.clone(), shutdown.clone())?;
        threads.push(
            std::thread::Builder::new()
                .name("otlp-logs".into())
                .spawn(move || logs.run())
                .context("starting the OTLP log sender")?,
        );
        if let Some(gather) = cfg.metrics.clone() {
            let m = sender::MetricSender::new(&cfg, gather, stats.clone(), shutdown.clone())?;
            threads.push(
                std::thread::Builder::new()
                    .name("otlp-metrics".into())
                    .spawn(move || m.run())
                    .context("starting the OTLP metric sender")?,
            );
        }
        Ok(Self {
            spool,
            stats,
            shutdown,
            threads,
            intake,
        })
    }

    /// Spools a batch, each record as one line in its kind's table. Never waits on the
    /// collector; what does not fit in the spool is dropped and counted.
    fn spool_batch(&self, batch: Batch<'_>) {
        let table = match batch.kind() {
            Kind::Flow => "flow",
            Kind::Dns => "dns",
            Kind::Http => "http",
            Kind::Overflow => "overflow",
            Kind::DnsLog | Kind::HttpLog => return,
        };
        let mut logs = LogRecords {
            records: Vec::with_capacity(batch.len()),
            observed_ns: now_ns(),
        };
        batch.encode(&mut logs);
        let mut lines = Vec::with_capacity(logs.records.len() * 1024);
        let mut bytes = Vec::with_capacity(2048);
        let b64 = base64::engine::general_purpose::STANDARD;
        for r in &logs.records {
            bytes.clear();
            r.encode(&mut bytes).expect("a Vec grows");
            lines.extend_from_slice(b64.encode(&bytes).as_bytes());
            lines.push(b'\n');
        }
        let n = logs.records.len() as u64;
        let s = &self.stats;
        self.intake
            .append(&self.spool, table, &lines, n, &s.spooled, &s.dropped);
    }
}

impl Sink for OtlpSink {
    fn name(&self) -> &'static str {
        "otlp"
    }

    fn takes(&self, kind: Kind) -> bool {
        matches!(kind, Kind::Flow | Kind::Dns | Kind::Http | Kind::Overflow)
    }

    fn write(&mut self, batch: Batch<'_>) -> bool {
        self.spool_batch(batch);
        true
    }

    fn status(&self) -> Arc<dyn Status> {
        Arc::new(OtlpStatus {
            stats: self.stats.clone(),
            spool: self.spool.clone(),
        })
    }

    /// Seals what is open and sends until `deadline` (the metrics once more); what is left
    /// stays in the spool for the next start.
    fn finish(mut self: Box<Self>, deadline: Instant) -> u64 {
        let threads = std::mem::take(&mut self.threads);
        let mut all_done = true;
        // One deadline for both senders: each is told to stop, then waited for in turn.
        for t in threads {
            all_done &= self.shutdown.stop_by(deadline, Some(t));
        }
        if !all_done {
            tracing::warn!(
                "the OTLP collector did not accept everything by the shutdown deadline: stopping anyway"
            );
        }
        let s = &self.stats;
        let left = self.spool.bytes();
        tracing::info!(
            spooled = get(&s.spooled),
            sent = get(&s.sent),
            retried = get(&s.retried),
            dead_lettered = get(&s.dead_lettered),
            quarantined = get(&s.quarantined),
            dropped = get(&s.dropped),
            metric_requests = get(&s.metric_requests),
            spool_bytes_left = left,
            "otlp"
        );
        if left > 0 {
            tracing::warn!(bytes = left, dir = %self.spool.dir().display(), "records not yet accepted stay in the OTLP spool and are sent at the next start");
        }
        get(&s.dropped)
    }
}

/// The resource attributes: `service.name` (`OTEL_SERVICE_NAME`, else devourer), `host.name`,
/// `k8s.node.name` (the agent's name, which the DaemonSet sets to its node's, when running in
/// a cluster), and `OTEL_RESOURCE_ATTRIBUTES` (`k=v,...`, percent-encoded) over them.
pub fn resource(agent: &str, host: &str, in_cluster: bool) -> Vec<(String, String)> {
    let mut r: BTreeMap<String, String> = BTreeMap::new();
    r.insert("service.name".into(), "devourer".into());
    r.insert("host.name".into(), host.into());
    if in_cluster {
        r.insert("k8s.node.name".into(), agent.into());
    }
    if let Ok(extra) = std::env::var("OTEL_RESOURCE_ATTRIBUTES") {
        for (k, v) in parse_pairs(&extra) {
            r.insert(k, v);
        }
    }
    if let Ok(name) = std::env::var("OTEL_SERVICE_NAME")
        && !name.is_empty()
    {
        r.insert("service.name".into(), name);
    }
    r.into_iter().collect()
}

/// `k=v,k2=v2` as the OTLP exporter variables write headers and resource attributes (W3C
/// Baggage's syntax: values percent-encoded, blanks around items ignored).
pub fn parse_pairs(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|item| {
            let (k, v) = item.split_once('=')?;
            let (k, v) = (k.trim(), percent_decode(v.trim()));
            (!k.is_empty()).then(|| (k.to_owned(), v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_read_as_the_otlp_variables_write_them() {
        assert_eq!(
            parse_pairs(" api-key = a%20b%2Cc ,x=1,=bad,novalue"),
            [("api-key".into(), "a b,c".into()), ("x".into(), "1".into())]
        );
    }
}
