//! The BigQuery sender thread: builds the client, makes sure the tables exist with our
//! columns, then sends sealed spool segments, oldest first, each table with its own backoff
//! (a table that fails never holds the others up), handling BigQuery's per-row insert errors.
//! Lines that are not rows (torn by a crash, corrupt) are quarantined; rows BigQuery calls
//! invalid are dead-lettered; a row leaves the spool only once one of those holds it.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering, mpsc},
    time::{Duration, Instant, SystemTime},
};

use gcp_bigquery_client::{
    Client, client_builder::ClientBuilder, error::BQError,
    model::table_data_insert_all_request::TableDataInsertAllRequest,
};
use serde_json::Value;

use super::{
    BqConfig, BqStats, RequestObserver, TableKind,
    schema::{self, Upgrade},
};
use crate::sink::{
    remote::{Backoff, Shutdown},
    spool::{
        Segment, Spool,
        rejects::{Kept, Rejects, is_row},
    },
};

pub(super) struct Sender {
    pub cfg: BqConfig,
    pub spool: Arc<Spool>,
    pub stats: Arc<BqStats>,
    pub shutdown: Shutdown,
    pub on_request: Option<RequestObserver>,
    pub rejects: Rejects,
}

/// BigQuery cannot be used with this configuration (a column of the wrong type, a missing
/// dataset, a broken key): the agent refuses to start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Fatal(pub String);

enum SetupError {
    /// Retrying cannot help: refuse to start.
    Fatal(String),
    Retry(String),
}

/// How a request failed.
enum Failure {
    /// The whole request was refused as invalid (400): find the bad rows one by one.
    Invalid(String),
    /// The table is not there (yet): BigQuery may say so for a while after a create.
    NotFound(String),
    /// Anything else: transport errors, timeouts, 429, 5xx, auth: try again later.
    Retry(String),
}

fn classify(e: &BQError) -> Failure {
    match e {
        BQError::ResponseError { error } => {
            let reason = error
                .error
                .errors
                .first()
                .and_then(|m| m.get("reason").cloned())
                .unwrap_or_default();
            let text = format!("{} {reason}: {}", error.error.code, error.error.message);
            match (error.error.code, reason.as_str()) {
                (400, "invalid" | "invalidQuery" | "badRequest") => Failure::Invalid(text),
                (404, _) => Failure::NotFound(text),
                _ => Failure::Retry(text),
            }
        }
        other => Failure::Retry(other.to_string()),
    }
}

impl Sender {
    fn stopping(&self) -> bool {
        self.shutdown.stopping()
    }

    fn past_deadline(&self) -> bool {
        self.shutdown.past_deadline()
    }

    /// Sleeps `d`, or less when shutting down past the deadline.
    async fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until && !self.past_deadline() {
            tokio::time::sleep(Duration::from_millis(20).min(until - Instant::now())).await;
        }
    }

    pub fn run(self, setup: mpsc::Sender<Result<(), Fatal>>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = setup.send(Err(Fatal(format!("starting the sender runtime: {e}"))));
                return;
            }
        };
        rt.block_on(self.main(setup));
    }

    async fn client(&self) -> Result<Client, BQError> {
        let http = reqwest::Client::builder()
            .timeout(self.cfg.timeout)
            .connect_timeout(self.cfg.timeout.min(Duration::from_secs(10)))
            .build()?;
        let mut b = ClientBuilder::new();
        b.with_client(http);
        if let Some(root) = &self.cfg.endpoint {
            b.with_v2_base_url(root.trim_end_matches('/').to_owned());
        }
        match &self.cfg.key_file {
            Some(key) => {
                b.build_from_service_account_key_file(&key.to_string_lossy())
                    .await
            }
            None => b.build_from_application_default_credentials().await,
        }
    }

    async fn main(self, setup: mpsc::Sender<Result<(), Fatal>>) {
        let mut backoff = Backoff::new(self.cfg.backoff_base, self.cfg.backoff_max);
        let client = loop {
            match self.client().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!("BigQuery client: {e}; retrying");
                    if self.past_deadline() {
                        return;
                    }
                    self.pause(backoff.wait()).await;
                }
            }
        };
        let mut settle_until = loop {
            match self.ensure_tables(&client).await {
                Ok(changed) => {
                    let _ = setup.send(Ok(()));
                    break changed.then(|| Instant::now() + self.cfg.schema_settle);
                }
                Err(SetupError::Fatal(msg)) => {
                    tracing::error!("BigQuery: {msg}");
                    let _ = setup.send(Err(Fatal(msg)));
                    return;
                }
                Err(SetupError::Retry(msg)) => {
                    tracing::warn!("checking the BigQuery tables failed: {msg}; retrying");
                    if self.past_deadline() {
                        return;
                    }
                    self.pause(backoff.wait()).await;
                }
            }
        };
        for torn in self.spool.take_torn() {
            self.quarantine(&torn.table, &torn.bytes);
        }
        // Each table has its own backoff: the oldest segment of any table that is not
        // waiting goes next.
        let mut tables: BTreeMap<String, (Backoff, Instant)> = self
            .spool
            .tables()
            .into_iter()
            .map(|t| {
                (
                    t,
                    (
                        Backoff::new(self.cfg.backoff_base, self.cfg.backoff_max),
                        Instant::now(),
                    ),
                )
            })
            .collect();
        loop {
            if let Err(e) = self.spool.seal_due(self.stopping()) {
                tracing::error!("sealing a spool segment failed: {e}");
            }
            let now = Instant::now();
            let ready = tables
                .iter()
                .filter(|(_, (_, at))| *at <= now)
                .filter_map(|(t, _)| self.spool.next_of(t))
                .min_by(|a, b| a.path.file_name().cmp(&b.path.file_name()));
            let Some(seg) = ready else {
                if self.past_deadline() || (self.stopping() && self.spool.next().is_none()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let settling = settle_until.is_some_and(|t| Instant::now() < t);
            let (backoff, at) = tables.get_mut(&seg.table).expect("a spool table");
            match self.send(&client, &seg, settling).await {
                Ok(true) => backoff.reset(),
                Ok(false) => *at = Instant::now() + backoff.wait(),
                Err(Failure::NotFound(msg)) => {
                    tracing::warn!(table = %seg.table, "BigQuery: {msg}; checking the table again");
                    if let Ok(true) = self.ensure_tables(&client).await {
                        settle_until = Some(Instant::now() + self.cfg.schema_settle);
                    }
                    *at = Instant::now() + backoff.wait();
                }
                Err(Failure::Retry(msg) | Failure::Invalid(msg)) => {
                    tracing::warn!(table = %seg.table, "BigQuery insert failed: {msg}; retrying");
                    *at = Instant::now() + backoff.wait();
                }
            }
            if self.past_deadline() {
                return;
            }
        }
    }

    /// Creates missing tables and adds missing columns. `Ok(true)` when it changed something.
    async fn ensure_tables(&self, client: &Client) -> Result<bool, SetupError> {
        let mut changed = false;
        for kind in TableKind::ALL {
            changed |= self.ensure_table(client, kind).await?;
        }
        Ok(changed)
    }

    async fn ensure_table(&self, client: &Client, kind: TableKind) -> Result<bool, SetupError> {
        let (p, d, t) = (&self.cfg.project, &self.cfg.dataset, self.cfg.table(kind));
        match client.table().get(p, d, t, None).await {
            Ok(existing) => match schema::upgrade(&existing, kind) {
                Ok(Upgrade::UpToDate) => Ok(false),
                Ok(Upgrade::AddColumns(cols)) => {
                    let patched = schema::with_columns(existing, kind, &cols);
                    client
                        .table()
                        .patch(p, d, t, patched)
                        .await
                        .map_err(|e| SetupError::Retry(format!("patching {t}: {e}")))?;
                    tracing::info!(table = t, columns = ?cols, "added missing columns (NULLABLE)");
                    Ok(true)
                }
                Err(conflict) => Err(SetupError::Fatal(format!(
                    "table {p}:{d}.{t} has columns devourer cannot write: {conflict}"
                ))),
            },
            Err(e) => match classify(&e) {
                Failure::NotFound(_) => {
                    let table = schema::new_table(p, d, t, kind);
                    match client.table().create(table).await {
                        Ok(_) => {
                            tracing::info!(table = t, "created table");
                            Ok(true)
                        }
                        Err(e) => match &e {
                            BQError::ResponseError { error } if error.error.code == 409 => Ok(true),
                            BQError::ResponseError { error }
                                if error.error.code == 404
                                    && error.error.message.contains("Dataset") =>
                            {
                                Err(SetupError::Fatal(format!(
                                    "dataset {p}:{d} does not exist (create it first): {}",
                                    error.error.message
                                )))
                            }
                            _ => Err(SetupError::Retry(format!("creating {t}: {e}"))),
                        },
                    }
                }
                _ => Err(SetupError::Retry(format!("reading {t}: {e}"))),
            },
        }
    }

    /// Dead-letters a row BigQuery refused; `false` when it could not be written (the row
    /// stays in the spool and is tried again).
    fn dead_letter(&self, table: &str, reason: &str, row: &str) -> bool {
        match self.rejects.dead_letter(table, reason, row) {
            Ok(Kept::Stored) => {
                BqStats::add(&self.stats.rows_dead_lettered, 1);
                tracing::warn!(table, reason, file = %self.rejects.dead_letter_path().display(), "row dead-lettered");
                true
            }
            Ok(Kept::Full) => {
                BqStats::add(&self.stats.rows_dropped, 1);
                true
            }
            Err(e) => {
                tracing::error!(
                    "writing the dead-letter file {} failed: {e}; the row stays in the spool",
                    self.rejects.dead_letter_path().display()
                );
                false
            }
        }
    }

    /// Quarantines a spool line that is not a row; `false` when it could not be written (the
    /// line stays in the spool).
    fn quarantine(&self, table: &str, raw: &[u8]) -> bool {
        let reason = "not a JSON row (torn by a crash during an append, or corrupt)";
        match self.rejects.quarantine(table, reason, raw) {
            Ok(kept) => {
                if kept == Kept::Stored {
                    BqStats::add(&self.stats.rows_quarantined, 1);
                } else {
                    BqStats::add(&self.stats.rows_dropped, 1);
                }
                if !self.stats.warned_quarantine.swap(true, Ordering::Relaxed) {
                    tracing::error!(table, file = %self.rejects.quarantine_path().display(), "{reason}: quarantined (counted; logged once)");
                }
                true
            }
            Err(e) => {
                tracing::error!(
                    "writing the quarantine file {} failed: {e}; the line stays in the spool",
                    self.rejects.quarantine_path().display()
                );
                false
            }
        }
    }

    async fn insert(
        &self,
        client: &Client,
        table: &str,
        rows: &[&str],
    ) -> Result<Option<BTreeMap<usize, (bool, String)>>, BQError> {
        let mut req = TableDataInsertAllRequest::new();
        for line in rows {
            let v: Value = serde_json::from_str(line)?;
            let id = v.get("id").and_then(Value::as_str).map(str::to_owned);
            req.add_row(id, v)?;
        }
        BqStats::add(&self.stats.requests, 1);
        let start = Instant::now();
        let res = client
            .tabledata()
            .insert_all(&self.cfg.project, &self.cfg.dataset, table, req)
            .await;
        let took = start.elapsed();
        BqStats::add(&self.stats.request_micros, took.as_micros() as u64);
        if let Some(f) = &self.on_request {
            f(took);
        }
        let resp = res.inspect_err(|_| BqStats::add(&self.stats.request_errors, 1))?;
        let Some(errs) = resp.insert_errors.filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        // index -> (invalid, reasons); a row only "stopped" by a neighbour is not invalid.
        let mut out = BTreeMap::new();
        for e in errs {
            let Some(i) = e.index.and_then(|i| usize::try_from(i).ok()) else {
                continue;
            };
            let reasons: Vec<(String, String)> = e
                .errors
                .unwrap_or_default()
                .into_iter()
                .map(|p| (p.reason.unwrap_or_default(), p.message.unwrap_or_default()))
                .collect();
            let invalid = reasons.iter().any(|(r, _)| r != "stopped");
            let text = reasons
                .iter()
                .map(|(r, m)| format!("{r}: {m}"))
                .collect::<Vec<_>>()
                .join("; ");
            out.insert(i, (invalid, text));
        }
        Ok(Some(out))
    }

    /// Sends one segment. `Ok(true)`: progress was made (delivered or dead-lettered rows);
    /// `Ok(false)`: nothing moved, wait before trying again.
    async fn send(&self, client: &Client, seg: &Segment, settling: bool) -> Result<bool, Failure> {
        let kind = TableKind::from_spool_name(&seg.table).unwrap_or(TableKind::Flow);
        let table = self.cfg.table(kind).to_owned();
        let text = match std::fs::read_to_string(&seg.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(path = %seg.path.display(), "reading a spool segment failed: {e}");
                return Ok(false);
            }
        };
        let mut rows: Vec<&str> = Vec::new();
        // Lines that are not rows, which could not be quarantined: they stay in the spool.
        let mut held = String::new();
        let mut quarantined = false;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if is_row(line) {
                rows.push(line);
            } else if self.quarantine(&seg.table, line.as_bytes()) {
                quarantined = true;
            } else {
                held.push_str(line);
                held.push('\n');
            }
        }
        if quarantined {
            let mut rest = rows.join("\n");
            if !rest.is_empty() {
                rest.push('\n');
            }
            rest.push_str(&held);
            if let Err(e) = self.spool.rewrite(seg, rest.as_bytes()) {
                tracing::error!("rewriting a spool segment failed: {e}");
            }
        }
        if rows.is_empty() {
            if held.is_empty() {
                let _ = self.spool.done(seg);
            }
            return Ok(quarantined);
        }
        let n = rows.len() as u64;
        match self.insert(client, &table, &rows).await {
            Ok(None) => {
                self.delivered(seg, n, &held);
                Ok(true)
            }
            Ok(Some(errors)) => {
                let mut keep = String::new();
                let mut dead = 0;
                for (i, row) in rows.iter().enumerate() {
                    match errors.get(&i) {
                        // Just after a create or patch BigQuery may not know new columns yet.
                        Some((true, reason))
                            if !settling && self.dead_letter(&table, reason, row) =>
                        {
                            dead += 1;
                        }
                        _ => {
                            keep.push_str(row);
                            keep.push('\n');
                        }
                    }
                }
                BqStats::add(&self.stats.rows_retried, n - dead);
                keep.push_str(&held);
                if let Err(e) = self.spool.rewrite(seg, keep.as_bytes()) {
                    tracing::error!("rewriting a spool segment failed: {e}");
                }
                Ok(dead > 0)
            }
            Err(e) => match classify(&e) {
                Failure::Invalid(msg) if !settling => {
                    tracing::warn!(
                        table,
                        "BigQuery refused the batch ({msg}); sending its rows one by one"
                    );
                    self.one_by_one(client, seg, &table, &rows, &held).await
                }
                f => {
                    BqStats::add(&self.stats.rows_retried, n);
                    Err(f)
                }
            },
        }
    }

    /// `n` rows of `seg` were acknowledged; what is `held` stays in the spool.
    fn delivered(&self, seg: &Segment, n: u64, held: &str) {
        BqStats::add(&self.stats.rows_sent, n);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.stats.last_success.store(now, Ordering::Relaxed);
        if let Err(e) = self.spool.rewrite(seg, held.as_bytes()) {
            tracing::error!("deleting an acknowledged spool segment failed: {e}");
        }
    }

    /// Finds the rows BigQuery refuses: each alone; refused ones are dead-lettered.
    async fn one_by_one(
        &self,
        client: &Client,
        seg: &Segment,
        table: &str,
        rows: &[&str],
        held: &str,
    ) -> Result<bool, Failure> {
        let mut keep = held.to_owned();
        let mut moved = false;
        for (i, row) in rows.iter().enumerate() {
            match self.insert(client, table, &[row]).await {
                Ok(None) => {
                    BqStats::add(&self.stats.rows_sent, 1);
                    moved = true;
                }
                Ok(Some(errs)) => {
                    let reason = errs
                        .into_values()
                        .map(|(_, r)| r)
                        .collect::<Vec<_>>()
                        .join("; ");
                    if self.dead_letter(table, &reason, row) {
                        moved = true;
                    } else {
                        keep.push_str(row);
                        keep.push('\n');
                    }
                }
                Err(e) => match classify(&e) {
                    Failure::Invalid(msg) => {
                        if self.dead_letter(table, &msg, row) {
                            moved = true;
                        } else {
                            keep.push_str(row);
                            keep.push('\n');
                        }
                    }
                    _ => {
                        // BigQuery is unwell again: keep this row and the rest for later.
                        for r in &rows[i..] {
                            keep.push_str(r);
                            keep.push('\n');
                        }
                        break;
                    }
                },
            }
        }
        if let Err(e) = self.spool.rewrite(seg, keep.as_bytes()) {
            tracing::error!("rewriting a spool segment failed: {e}");
        }
        Ok(moved)
    }
}
