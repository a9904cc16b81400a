//! The OTLP senders, each on its own thread with a small runtime of its own: the log sender
//! sends sealed spool segments, oldest first, one export request each, and a segment leaves
//! the spool once the collector accepted it (records it rejects go to the dead-letter file);
//! the metric sender exports the agent's metrics every interval, and once more when stopping.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use base64::Engine;
use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    metrics::v1::{ResourceMetrics, ScopeMetrics},
    resource::v1::Resource,
};
use prost::Message;

use super::{
    Gather, OtlpConfig, OtlpStats, add,
    client::{Client, ExportError},
    metrics::{Starts, convert},
    now_ns,
};
use crate::sink::{
    remote::{self, Shutdown},
    spool::{
        Segment, Spool,
        rejects::{Kept, Rejects},
    },
};

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("the OTLP sender's runtime")
}

fn resource(attrs: &[(String, String)]) -> Resource {
    Resource {
        attributes: attrs
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: Some(AnyValue {
                    value: Some(Value::StringValue(v.clone())),
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "devourer".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

pub(super) struct LogSender {
    runtime: tokio::runtime::Runtime,
    client: Client,
    resource: Resource,
    spool: Arc<Spool>,
    stats: Arc<OtlpStats>,
    shutdown: Shutdown,
    rejects: Rejects,
    backoff: (Duration, Duration),
    endpoint: String,
}

impl LogSender {
    pub fn new(
        cfg: &OtlpConfig,
        spool: Arc<Spool>,
        stats: Arc<OtlpStats>,
        shutdown: Shutdown,
    ) -> Result<Self> {
        Ok(Self {
            runtime: runtime()?,
            client: Client::new(cfg.client.clone()).map_err(anyhow::Error::msg)?,
            resource: resource(&cfg.resource),
            rejects: Rejects::capped_by(
                cfg.spool_dir.join("dead-letter.jsonl"),
                cfg.quarantine_max_bytes,
                "--otlp-quarantine-max-bytes",
            ),
            spool,
            stats,
            shutdown,
            backoff: (cfg.backoff_base, cfg.backoff_max),
            endpoint: cfg.client.logs_url.clone(),
        })
    }

    pub fn run(mut self) {
        for torn in self.spool.take_torn() {
            self.quarantine(&torn.table, "torn (a crash during an append)", &torn.bytes);
        }
        let (spool, shutdown) = (self.spool.clone(), self.shutdown.clone());
        let (base, max) = self.backoff;
        remote::drain(&spool, &shutdown, base, max, "otlp", &mut self);
    }

    fn quarantine(&self, table: &str, why: &str, raw: &[u8]) {
        add(&self.stats.quarantined, 1);
        match self.rejects.quarantine(table, why, raw) {
            Ok(Kept::Stored) => tracing::warn!(
                table,
                file = %self.rejects.quarantine_path().display(),
                "an OTLP spool line that is no log record ({why}) was quarantined"
            ),
            Ok(Kept::Full) => {}
            Err(e) => tracing::error!(table, "quarantining an OTLP spool line failed: {e}"),
        }
    }

    /// The records of a segment the collector refused (`refused` of them), kept with the
    /// reason.
    fn dead_letter(&self, table: &str, reason: &str, lines: &[&[u8]], refused: u64) {
        add(&self.stats.dead_lettered, refused);
        for l in lines {
            let row = String::from_utf8_lossy(l);
            if let Err(e) = self.rejects.dead_letter(table, reason, &row) {
                tracing::error!(table, "writing the OTLP dead-letter file failed: {e}");
            }
        }
    }
}

impl remote::Deliver for LogSender {
    type Error = ExportError;

    fn deliver(&mut self, seg: &Segment) -> Result<(), ExportError> {
        let text = std::fs::read(&seg.path)
            .map_err(|e| ExportError::Retryable(format!("reading the spool: {e}")))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut records: Vec<LogRecord> = Vec::new();
        let mut lines: Vec<&[u8]> = Vec::new();
        let mut bad = Vec::new();
        for l in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match b64.decode(l).ok().and_then(|b| LogRecord::decode(&*b).ok()) {
                Some(r) => {
                    records.push(r);
                    lines.push(l);
                }
                None => bad.push(l),
            }
        }
        if !records.is_empty() {
            let n = records.len() as u64;
            let req = ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: Some(self.resource.clone()),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(scope()),
                        log_records: records,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            let started = Instant::now();
            match self.runtime.block_on(self.client.export_logs(req)) {
                Ok((rejected, message)) => {
                    add(&self.stats.log_requests, 1);
                    let rejected = rejected.clamp(0, n as i64) as u64;
                    add(&self.stats.sent, n - rejected);
                    if rejected > 0 {
                        // A partial success names how many, not which: the whole request is
                        // kept aside with the collector's message.
                        tracing::warn!(
                            rejected,
                            "the OTLP collector rejected log records: {message}"
                        );
                        let why = format!("partial success, {rejected} rejected: {message}");
                        self.dead_letter(&seg.table, &why, &lines, rejected);
                    }
                    self.stats.last_success.store(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs()),
                        Ordering::Relaxed,
                    );
                    tracing::debug!(records = n, took = ?started.elapsed(), "OTLP logs exported");
                }
                Err(ExportError::Refused(why)) => {
                    add(&self.stats.log_errors, 1);
                    tracing::error!(
                        table = seg.table,
                        "the OTLP collector refused a request ({why}): its records go to the dead-letter file"
                    );
                    self.dead_letter(&seg.table, &why, &lines, n);
                }
                Err(e) => {
                    add(&self.stats.log_errors, 1);
                    add(&self.stats.retried, n);
                    return Err(e);
                }
            }
        }
        for l in bad {
            self.quarantine(&seg.table, "not a log record", l);
        }
        self.spool
            .done(seg)
            .map_err(|e| ExportError::Retryable(format!("removing a sent segment: {e}")))
    }

    fn failed(&mut self, seg: &Segment, e: ExportError) {
        tracing::warn!(
            table = seg.table,
            endpoint = self.endpoint,
            "OTLP: {e}; sending again after a pause"
        );
    }
}

pub(super) struct MetricSender {
    runtime: tokio::runtime::Runtime,
    client: Client,
    resource: Resource,
    gather: Gather,
    interval: Duration,
    stats: Arc<OtlpStats>,
    shutdown: Shutdown,
    starts: Starts,
}

impl MetricSender {
    pub fn new(
        cfg: &OtlpConfig,
        gather: Gather,
        stats: Arc<OtlpStats>,
        shutdown: Shutdown,
    ) -> Result<Self> {
        Ok(Self {
            runtime: runtime()?,
            client: Client::new(cfg.client.clone()).map_err(anyhow::Error::msg)?,
            resource: resource(&cfg.resource),
            gather,
            interval: cfg.metrics_interval,
            stats,
            shutdown,
            starts: Starts::new(now_ns()),
        })
    }

    pub fn run(mut self) {
        let mut next = Instant::now() + self.interval;
        loop {
            let stopping = self.shutdown.stopping();
            if stopping || Instant::now() >= next {
                self.export();
                next = Instant::now() + self.interval;
            }
            if stopping {
                return;
            }
            std::thread::sleep(Duration::from_millis(50).min(self.interval));
        }
    }

    fn export(&mut self) {
        let metrics = convert(&(self.gather)(), &mut self.starts, now_ns());
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        match self.runtime.block_on(self.client.export_metrics(req)) {
            Ok((rejected, message)) => {
                add(&self.stats.metric_requests, 1);
                if rejected > 0 {
                    tracing::warn!(
                        rejected,
                        "the OTLP collector rejected data points: {message}"
                    );
                }
            }
            Err(e) => {
                add(&self.stats.metric_errors, 1);
                tracing::warn!(
                    "OTLP metrics not exported (the next export carries the same totals): {e}"
                );
            }
        }
    }
}
