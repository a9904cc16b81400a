//! The BigQuery sink (flows, overflow and DNS transactions): records are appended to an on-disk spool before anything is sent, a
//! thread of its own streams sealed batches with tabledata.insertAll (gcp-bigquery-client),
//! retries with backoff for as long as the spool has room, dead-letters rows BigQuery calls
//! invalid, and deletes a batch only once BigQuery acknowledged it.

pub mod schema;
mod sender;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub use self::schema::TableKind;
pub use super::RequestObserver;
use super::{
    Sink, SinkReport, Status,
    remote::Shutdown,
    spool::{Limits, Spool, intake::Intake, rejects::Rejects},
};
use crate::record::{Batch, Kind, RowLines};

/// Where and how to stream.
#[derive(Clone, Debug)]
pub struct BqConfig {
    pub project: String,
    pub dataset: String,
    pub flow_table: String,
    pub dns_table: String,
    pub overflow_table: String,
    /// A service-account key file; without it Application Default Credentials are used
    /// (GOOGLE_APPLICATION_CREDENTIALS, then the GCE/GKE metadata server).
    pub key_file: Option<PathBuf>,
    /// The BigQuery v2 API root (emulators, private endpoints, tests).
    pub endpoint: Option<String>,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub dead_letter: PathBuf,
    /// Cap of the dead-letter file and of the quarantine file beside it, each.
    pub dead_letter_max_bytes: u64,
    pub batch: Limits,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Per request.
    pub timeout: Duration,
    /// How long start-up waits for the tables to be checked (a type conflict fails start-up;
    /// an unreachable BigQuery does not).
    pub setup_wait: Duration,
    /// After devourer creates or patches a table, BigQuery may refuse rows for a while: retry
    /// them instead of dead-lettering for this long.
    pub schema_settle: Duration,
}

impl BqConfig {
    pub fn table(&self, kind: TableKind) -> &str {
        match kind {
            TableKind::Flow => &self.flow_table,
            TableKind::Dns => &self.dns_table,
            TableKind::Overflow => &self.overflow_table,
        }
    }
}

/// What the sink counted (for the closing summary and metrics).
#[derive(Debug, Default)]
pub struct BqStats {
    pub rows_spooled: AtomicU64,
    pub rows_sent: AtomicU64,
    pub rows_retried: AtomicU64,
    pub rows_dead_lettered: AtomicU64,
    /// Spool lines that were not rows (torn or corrupt), moved to the quarantine file.
    pub rows_quarantined: AtomicU64,
    pub warned_quarantine: AtomicBool,
    /// Refused because the spool was full (or could not be written).
    pub rows_dropped: AtomicU64,
    pub requests: AtomicU64,
    pub request_errors: AtomicU64,
    pub request_micros: AtomicU64,
    /// Unix seconds of the last acknowledged batch (0: none yet).
    pub last_success: AtomicU64,
}

impl BqStats {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

pub struct BqSink {
    spool: Arc<Spool>,
    pub stats: Arc<BqStats>,
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
    intake: Intake,
    /// The sender thread ended (a fatal set-up error, or shutdown).
    sender_done: Arc<AtomicBool>,
}

/// What the BigQuery sink reports, from its counters and the spool's size.
struct BqStatus {
    stats: Arc<BqStats>,
    spool: Arc<Spool>,
    sender_done: Arc<AtomicBool>,
}

impl Status for BqStatus {
    fn report(&self) -> SinkReport {
        let s = &self.stats;
        SinkReport {
            outcomes: vec![
                ("spooled", BqStats::get(&s.rows_spooled)),
                ("sent", BqStats::get(&s.rows_sent)),
                ("retried", BqStats::get(&s.rows_retried)),
                ("dead_lettered", BqStats::get(&s.rows_dead_lettered)),
                ("quarantined", BqStats::get(&s.rows_quarantined)),
                ("dropped", BqStats::get(&s.rows_dropped)),
            ],
            spool_bytes: Some(self.spool.bytes()),
            last_success: Some(BqStats::get(&s.last_success)),
            ..SinkReport::default()
        }
    }

    /// Whether the sender thread is still running (it stops only on a fatal set-up error or at
    /// shutdown).
    fn alive(&self) -> bool {
        !self.sender_done.load(Ordering::Relaxed)
    }
}

impl BqSink {
    /// Opens the spool (replaying what an earlier run left), checks the key file, starts the
    /// sender and waits up to `setup_wait` for the tables: a column of the wrong type, a missing
    /// dataset or a broken key file is an error here.
    pub fn start(cfg: BqConfig, on_request: Option<RequestObserver>) -> Result<Self> {
        if let Some(key) = &cfg.key_file {
            let text = std::fs::read_to_string(key)
                .with_context(|| format!("reading the service-account key {}", key.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a JSON key file", key.display()))?;
            for field in ["client_email", "private_key", "token_uri"] {
                if v[field].as_str().is_none() {
                    bail!(
                        "{}: no {field} (a service-account key file is expected)",
                        key.display()
                    );
                }
            }
        }
        let tables = TableKind::ALL.map(TableKind::spool_name);
        let spool = Spool::open(&cfg.spool_dir, cfg.spool_max_bytes, cfg.batch, &tables)
            .with_context(|| format!("opening the spool in {}", cfg.spool_dir.display()))?;
        let queued = spool.bytes();
        if queued > 0 {
            tracing::info!(bytes = queued, dir = %cfg.spool_dir.display(), "spool holds rows from an earlier run; sending them first");
        }
        let spool = Arc::new(spool);
        let stats = Arc::new(BqStats::default());
        let shutdown = Shutdown::default();
        let (setup_tx, setup_rx) = mpsc::channel();
        let wait = cfg.setup_wait;
        let rejects = Rejects::new(cfg.dead_letter.clone(), cfg.dead_letter_max_bytes);
        let s = sender::Sender {
            spool: spool.clone(),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
            on_request,
            rejects,
            cfg,
        };
        let sender_done = Arc::new(AtomicBool::new(false));
        let done = sender_done.clone();
        let thread = std::thread::Builder::new()
            .name("bigquery-sender".into())
            .spawn(move || {
                s.run(setup_tx);
                done.store(true, Ordering::Relaxed);
            })
            .context("starting the BigQuery sender")?;
        match setup_rx.recv_timeout(wait) {
            Ok(Err(fatal)) => {
                let _ = thread.join();
                bail!("BigQuery: {fatal}");
            }
            Ok(Ok(())) => tracing::info!("BigQuery tables ready"),
            Err(_) => tracing::warn!(
                "BigQuery not reachable yet (waited {wait:?}); rows are spooled and sent once it is"
            ),
        }
        Ok(Self {
            spool,
            stats,
            shutdown,
            thread: Some(thread),
            intake: Intake::new("BigQuery", "--spool-max-bytes"),
            sender_done,
        })
    }

    /// Spools records (without the `type` field, which is the table). Never blocks on
    /// BigQuery; rows that do not fit in the spool are dropped and counted.
    fn send(&self, batch: Batch<'_>) {
        let kind = match batch {
            Batch::Flow(_) => TableKind::Flow,
            Batch::Dns(_) => TableKind::Dns,
            Batch::Overflow(_) => TableKind::Overflow,
            _ => return,
        };
        if batch.is_empty() {
            return;
        }
        let mut lines = Vec::with_capacity(batch.len() * 400);
        let n = batch.encode(&mut RowLines(&mut lines)) as u64;
        let s = &self.stats;
        self.intake.append(
            &self.spool,
            kind.spool_name(),
            &lines,
            n,
            &s.rows_spooled,
            &s.rows_dropped,
        );
    }
}

impl Sink for BqSink {
    fn name(&self) -> &'static str {
        "bigquery"
    }

    /// Flows, overflow and DNS transactions; HTTP records and text lines have no table.
    fn takes(&self, kind: Kind) -> bool {
        matches!(kind, Kind::Flow | Kind::Overflow | Kind::Dns)
    }

    fn write(&mut self, batch: Batch<'_>) -> bool {
        self.send(batch);
        true
    }

    fn status(&self) -> Arc<dyn Status> {
        Arc::new(BqStatus {
            stats: self.stats.clone(),
            spool: self.spool.clone(),
            sender_done: self.sender_done.clone(),
        })
    }

    /// Seals what is open and sends until `deadline`; what is left stays in the spool for the
    /// next start.
    fn finish(mut self: Box<Self>, deadline: Instant) -> u64 {
        // A request in flight may take up to --bq-timeout: never wait past the deadline. Its
        // rows stay in the spool (sent again at the next start; insertIds de-duplicate).
        if !self.shutdown.stop_by(deadline, self.thread.take()) {
            tracing::warn!("BigQuery did not answer by the shutdown deadline: stopping anyway");
        }
        let left = self.spool.bytes();
        let s = &self.stats;
        tracing::info!(
            rows_spooled = BqStats::get(&s.rows_spooled),
            rows_sent = BqStats::get(&s.rows_sent),
            rows_retried = BqStats::get(&s.rows_retried),
            rows_dead_lettered = BqStats::get(&s.rows_dead_lettered),
            rows_quarantined = BqStats::get(&s.rows_quarantined),
            rows_dropped = BqStats::get(&s.rows_dropped),
            requests = BqStats::get(&s.requests),
            request_errors = BqStats::get(&s.request_errors),
            spool_bytes_left = left,
            "bigquery"
        );
        if left > 0 {
            tracing::warn!(
                bytes = left,
                dir = %self.spool.dir().display(),
                "rows not yet acknowledged stay in the spool and are sent at the next start"
            );
        }
        BqStats::get(&s.rows_dropped)
    }
}
