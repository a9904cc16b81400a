//! The capture-on-request service: takes a message, checks and clamps it, runs one capture
//! per interface on blocking threads, stores the files, and keeps each capture's status.
//! A message is cheap to refuse: the rate (`max_requests_per_second`, all sources together),
//! `max_concurrent` and the size are checked before anything is parsed, and accepted messages
//! wait in a bounded queue (`max_queued_requests`) for one worker, which compiles filters in
//! a child process it kills past `filter_compile_timeout`.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::{
    cloudshark::Cloudshark,
    request::{self, Context, Decision, NodePatterns, Plan, Reject},
    sniff,
    store::{self, Retry},
};
use crate::{
    base::text::{escape, escape_str},
    config::requests::RequestsConfig,
    ops::metrics::Metrics,
};

/// Finished captures remembered for `GET /captures/ID`.
const KEEP_FINISHED: usize = 1000;

/// One interface's part of a capture.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FileStatus {
    pub interface: String,
    pub packets: u64,
    pub bytes: u64,
    /// Which limit ended it: packets, bytes, duration, timeout or shutdown.
    pub stopped_by: Option<&'static str>,
    pub kernel_dropped: u32,
    pub local_path: Option<String>,
    pub s3_url: Option<String>,
    /// CloudShark's id of the uploaded file, and where to view it.
    pub cloudshark_id: Option<String>,
    pub cloudshark_url: Option<String>,
    pub error: Option<String>,
}

impl FileStatus {
    /// Where the file ended up, as the `devourer_captures_total` label.
    pub fn result(&self) -> &'static str {
        let uploaded = self.s3_url.is_some() || self.cloudshark_url.is_some();
        match (&self.error, uploaded, &self.local_path) {
            (None, false, _) => "written",
            // Uploaded; a failed local copy or other upload (in `error`) lost nothing.
            (_, true, _) => "uploaded",
            (Some(_), false, Some(_)) => "upload_failed_kept_locally",
            (Some(_), false, None) => "failed",
        }
    }
}

/// A capture as the API reports it.
#[derive(Clone, Debug, Serialize)]
pub struct CaptureStatus {
    pub id: String,
    /// `running`, `done` (every file stored) or `failed`.
    pub state: &'static str,
    pub node: String,
    pub alertid: u64,
    /// pcapdaemon's free-form metadata, as the request gave it.
    pub tags: Option<String>,
    pub customer: Option<String>,
    pub interfaces: Vec<String>,
    pub filter: Option<String>,
    /// The limits in force after clamping.
    pub packets: u64,
    pub bytes: u64,
    pub duration_secs: f64,
    pub timeout_secs: f64,
    pub clamped: Vec<&'static str>,
    /// Interfaces whose capture socket is open with its filter: packets from then on count.
    pub listening: usize,
    pub files: Vec<FileStatus>,
}

/// Why a request did not start a capture.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Invalid(#[from] Reject),
    #[error("{0} captures are running already (max_concurrent)")]
    Busy(usize),
    #[error("more than max_requests_per_second ({0}) requests a second")]
    RateLimited(u32),
    #[error("{0} requests are waiting already (max_queued_requests)")]
    QueueFull(usize),
    #[error("the capture directory holds {0} bytes, at or past max_local_bytes ({1})")]
    LocalFull(u64, u64),
    #[error("capture on request is stopping")]
    Stopping,
}

impl Refused {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(r) => r.reason(),
            Self::Busy(_) => "busy",
            Self::RateLimited(_) => "rate_limited",
            Self::QueueFull(_) => "queue_full",
            Self::LocalFull(..) => "local_full",
            Self::Stopping => "stopping",
        }
    }

    /// Whether trying again later may succeed (HTTP 429/503 rather than 400).
    pub fn transient(&self) -> bool {
        !matches!(self, Self::Invalid(_))
    }
}

/// What a message became: a capture's id, nothing (it was for other nodes), or a refusal.
pub type Outcome = Result<Option<String>, Refused>;

/// One of the `max_concurrent` capture slots, given back when dropped.
struct RunningSlot(Service);

impl Drop for RunningSlot {
    fn drop(&mut self) {
        *self.0.0.running.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
    }
}

/// A message waiting for the worker, and who wants to know how it went.
struct Job {
    text: String,
    source: &'static str,
    reply: oneshot::Sender<Outcome>,
}

/// A token bucket: `per_sec` tokens a second, at most `per_sec` saved up.
struct Rate {
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl Rate {
    fn new(per_sec: u32) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        Self {
            per_sec,
            tokens: per_sec,
            last: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let gained = now.saturating_duration_since(self.last).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + gained).min(self.per_sec);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Inner {
    cfg: RequestsConfig,
    /// `[capture.cloudshark]`, with its token.
    cloudshark: Option<Cloudshark>,
    node: String,
    metrics: Option<Arc<Metrics>>,
    cancel: AtomicBool,
    running: Mutex<usize>,
    statuses: Mutex<(BTreeMap<String, CaptureStatus>, VecDeque<String>)>,
    seq: AtomicU64,
    /// Memory held by every capture in flight (`max_memory`).
    memory: Arc<sniff::Memory>,
    rate: Mutex<Rate>,
    queue: mpsc::Sender<Job>,
    nodes: NodePatterns,
}

/// The capture-on-request service; cheap to clone.
#[derive(Clone)]
pub struct Service(Arc<Inner>);

impl Service {
    /// The service, with its worker started on the current tokio runtime.
    pub fn new(
        cfg: RequestsConfig,
        cloudshark: Option<Cloudshark>,
        node: String,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let memory = Arc::new(sniff::Memory::new(cfg.capture.limits().max_memory));
        let (queue, jobs) = mpsc::channel(cfg.capture.max_queued_requests.max(1));
        let svc = Self(Arc::new(Inner {
            memory,
            rate: Mutex::new(Rate::new(cfg.capture.max_requests_per_second)),
            queue,
            nodes: NodePatterns::default(),
            cloudshark,
            cfg,
            node,
            metrics,
            cancel: AtomicBool::new(false),
            running: Mutex::new(0),
            statuses: Mutex::new((BTreeMap::new(), VecDeque::new())),
            seq: AtomicU64::new(0),
        }));
        tokio::spawn(svc.clone().work(jobs));
        svc
    }

    /// Takes a message if the rate, `max_concurrent`, its size and the queue allow, before
    /// anything of it is parsed; the receiver tells how it went. Never waits.
    pub fn offer(
        &self,
        text: String,
        source: &'static str,
    ) -> Result<oneshot::Receiver<Outcome>, Refused> {
        let res = self.admit(text, source);
        if let Err(e) = &res {
            self.refused(e, source);
        }
        res
    }

    fn admit(
        &self,
        text: String,
        source: &'static str,
    ) -> Result<oneshot::Receiver<Outcome>, Refused> {
        let c = &self.0.cfg.capture;
        if self.0.cancel.load(Ordering::Relaxed) {
            return Err(Refused::Stopping);
        }
        if !self.0.rate.lock().expect("lock").take(Instant::now()) {
            return Err(Refused::RateLimited(c.max_requests_per_second));
        }
        self.check_busy()?;
        let max = c.limits().max_request_bytes;
        if text.len() > max {
            return Err(Reject::TooLarge(text.len(), max).into());
        }
        let (reply, rx) = oneshot::channel();
        self.0
            .queue
            .try_send(Job {
                text,
                source,
                reply,
            })
            .map_err(|_| Refused::QueueFull(c.max_queued_requests))?;
        Ok(rx)
    }

    /// `Busy` while `max_concurrent` captures run.
    fn check_busy(&self) -> Result<(), Refused> {
        let running = *self.0.running.lock().expect("lock");
        if running >= self.0.cfg.capture.limits().max_concurrent {
            return Err(Refused::Busy(running));
        }
        Ok(())
    }

    /// The worker: one message at a time, in order.
    async fn work(self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            let out = self.submit(&job.text, job.source).await;
            let _ = job.reply.send(out);
        }
    }

    pub fn config(&self) -> &RequestsConfig {
        &self.0.cfg
    }

    /// The Redis trigger subscribed (`true`) or lost its subscription.
    pub fn redis_subscribed(&self, subscribed: bool) {
        if let Some(m) = &self.0.metrics {
            m.capture.redis_subscribed.set(i64::from(subscribed));
            if subscribed {
                m.capture.redis_subscriptions.inc();
            }
        }
    }

    /// The Kafka trigger reads its topic (`true`), or lost its brokers (counted as an error).
    pub fn kafka_connected(&self, connected: bool) {
        if let Some(m) = &self.0.metrics {
            m.capture.kafka_connected.set(i64::from(connected));
            if !connected {
                m.capture.kafka_errors.inc();
            }
        }
    }

    fn count(&self, outcome: &str) {
        if let Some(m) = &self.0.metrics {
            m.capture.requests.with_label_values(&[outcome]).inc();
        }
    }

    /// Handles one message. `Ok(Some(id))`: a capture started; `Ok(None)`: it was for other
    /// nodes.
    async fn submit(&self, text: &str, source: &'static str) -> Outcome {
        let res = self.try_submit(text, source).await;
        match &res {
            Ok(Some(id)) => {
                self.count("accepted");
                tracing::info!(id, source, "capture request accepted");
            }
            Ok(None) => {
                self.count("other_node");
                tracing::debug!(source, "capture request for other nodes");
            }
            Err(e) => self.refused(e, source),
        }
        res
    }

    fn refused(&self, e: &Refused, source: &'static str) {
        self.count(e.reason());
        tracing::warn!(source, reason = e.reason(), "capture request rejected: {e}");
    }

    /// A request without the API's token: counted (the API delays and closes).
    pub fn unauthorized(&self) {
        self.count("unauthorized");
    }

    /// A message refused before it could be read (too large, not text): counted and logged.
    pub fn refused_unread(&self, reason: &'static str, source: &'static str, why: &str) {
        self.count(reason);
        tracing::warn!(
            source,
            reason,
            "capture request rejected: {}",
            escape_str(why, 256)
        );
    }

    async fn try_submit(&self, text: &str, source: &'static str) -> Outcome {
        let cfg = &self.0.cfg;
        let limits = cfg.capture.limits();
        // Captures may have started while it waited.
        self.check_busy()?;
        let raw = request::parse(text, limits.max_request_bytes)?;
        if raw.logrequest {
            tracing::info!(source, request = %escape(text.as_bytes()), "capture request");
        }
        if !raw.unknown.is_empty() {
            let keys: Vec<String> = raw.unknown.keys().map(|k| escape_str(k, 64)).collect();
            tracing::warn!(source, ?keys, "capture request: unknown fields ignored");
        }
        let decision = {
            let destinations = cfg.capture.destinations();
            let aliases = |a: &str| cfg.capture.aliases(a);
            let exists = |i: &str| crate::kernel::attach::ifindex(i).is_ok();
            let cx = Context {
                node: &self.0.node,
                limits: &limits,
                aliases: &aliases,
                interface_exists: &exists,
                nodes: &self.0.nodes,
                destinations: &destinations,
                has_default: cfg.capture.s3.is_some(),
            };
            request::plan(&raw, &cx)?
        };
        let plan = match decision {
            Decision::Run(p) => *p,
            Decision::NotForUs => return Ok(None),
        };
        if let Some(f) = &plan.filter {
            sniff::compile_in_child(f, cfg.capture.filter_compile_timeout)
                .await
                .map_err(|e| Reject::Filter(escape_str(&e.0, 256)))?;
        }
        if self.keeps_locally(&plan) {
            let held = store::dir_bytes(&cfg.local_dir);
            if held >= cfg.capture.max_local_bytes {
                return Err(Refused::LocalFull(held, cfg.capture.max_local_bytes));
            }
        }
        let slot = {
            let mut running = self.0.running.lock().expect("lock");
            if *running >= limits.max_concurrent {
                return Err(Refused::Busy(*running));
            }
            *running += 1;
            RunningSlot(self.clone())
        };
        let n = self.0.seq.fetch_add(1, Ordering::Relaxed);
        let started = SystemTime::now();
        let id = format!(
            "{:x}-{n}",
            started
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
        );
        if !plan.clamped.is_empty() {
            tracing::info!(id, clamped = ?plan.clamped, "capture request clamped to the configured limits");
        }
        self.remember(CaptureStatus {
            id: id.clone(),
            state: "running",
            node: self.0.node.clone(),
            alertid: plan.alertid,
            tags: plan.tags.clone(),
            customer: plan.customer.clone(),
            interfaces: plan.interfaces.clone(),
            filter: plan.filter.clone(),
            packets: plan.packets,
            bytes: plan.bytes,
            duration_secs: plan.duration.as_secs_f64(),
            timeout_secs: plan.timeout.as_secs_f64(),
            clamped: plan.clamped.clone(),
            listening: 0,
            files: Vec::new(),
        });
        let svc = self.clone();
        let task_id = id.clone();
        tokio::spawn(async move {
            // The slot goes back however the task ends (a panic included).
            let _slot = slot;
            let files = svc.run_capture(&task_id, plan, started).await;
            svc.finish(&task_id, files);
        });
        Ok(Some(id))
    }

    fn remember(&self, s: CaptureStatus) {
        let mut g = self.0.statuses.lock().expect("lock");
        let (map, order) = &mut *g;
        order.push_back(s.id.clone());
        map.insert(s.id.clone(), s);
        // Forget the oldest finished captures; running ones stay.
        while map.len() > KEEP_FINISHED {
            let Some(i) = order
                .iter()
                .position(|id| map.get(id).is_none_or(|s| s.state != "running"))
            else {
                break;
            };
            if let Some(old) = order.remove(i) {
                map.remove(&old);
            }
        }
    }

    /// One more interface of capture `id` is listening.
    fn armed(&self, id: &str) {
        self.show_memory();
        if let Some(s) = self.0.statuses.lock().expect("lock").0.get_mut(id) {
            s.listening += 1;
        }
    }

    /// Waits up to `limit` until every interface of capture `id` listens (or it ended), so an
    /// API caller may send traffic as soon as it has the answer. Whether it is listening.
    pub async fn wait_listening(&self, id: &str, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            match self.status(id) {
                Some(s) if s.listening >= s.interfaces.len() => return true,
                Some(s) if s.state == "running" && start.elapsed() < limit => {}
                _ => return false,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn status(&self, id: &str) -> Option<CaptureStatus> {
        self.0.statuses.lock().expect("lock").0.get(id).cloned()
    }

    fn show_memory(&self) {
        if let Some(m) = &self.0.metrics {
            m.capture.memory.set(self.0.memory.held() as i64);
        }
    }

    fn finish(&self, id: &str, files: Vec<FileStatus>) {
        let failed = files.is_empty() || files.iter().any(|f| f.error.is_some());
        self.show_memory();
        if let Some(m) = &self.0.metrics {
            for f in &files {
                m.capture.files.with_label_values(&[f.result()]).inc();
                m.capture.packets.inc_by(f.packets);
                if f.stopped_by == Some("memory") {
                    m.limit_counter("capture_max_memory").inc();
                }
            }
        }
        if let Some(s) = self.0.statuses.lock().expect("lock").0.get_mut(id) {
            s.state = if failed { "failed" } else { "done" };
            s.files = files;
        }
    }

    async fn run_capture(&self, id: &str, plan: Plan, started: SystemTime) -> Vec<FileStatus> {
        let plan = Arc::new(plan);
        let budget = Arc::new(sniff::Budget::new(self.0.memory.clone()));
        let mut jobs = Vec::new();
        for iface in plan.interfaces.clone() {
            let (svc, plan, id, budget) =
                (self.clone(), plan.clone(), id.to_owned(), budget.clone());
            jobs.push(tokio::task::spawn_blocking(move || {
                let armed = || svc.armed(&id);
                let r = sniff::run(&iface, &plan, &budget, &svc.0.cancel, &armed);
                (iface, r)
            }));
        }
        let mut files = Vec::new();
        for job in jobs {
            let (iface, res) = match job.await {
                Ok(x) => x,
                Err(e) => {
                    files.push(FileStatus {
                        error: Some(format!("capture thread: {e}")),
                        ..FileStatus::default()
                    });
                    continue;
                }
            };
            let mut f = FileStatus {
                interface: iface.clone(),
                ..FileStatus::default()
            };
            match res {
                Ok(c) => {
                    f.packets = c.packets.len() as u64;
                    f.bytes = c.bytes;
                    f.stopped_by = Some(c.stop.as_str());
                    f.kernel_dropped = c.dropped;
                    // The packets' memory stays taken until the file image (built from
                    // them, in their place) is stored.
                    let held = c.held;
                    self.store(id, &plan, c, started, &mut f).await;
                    self.0.memory.give(held);
                }
                Err(e) => {
                    tracing::error!(id, iface, "capture failed: {e}");
                    f.error = Some(e.to_string());
                }
            }
            files.push(f);
        }
        files
    }

    /// Whether `plan`'s files go to the local directory whatever the uploads do: it is
    /// configured, or nothing else takes them (a failed upload lands there too).
    fn keeps_locally(&self, plan: &Plan) -> bool {
        (plan.s3.is_none() && self.0.cloudshark.is_none()) || self.0.cfg.local_copy
    }

    /// Writes and/or uploads one interface's capture, filling in where it went.
    async fn store(
        &self,
        id: &str,
        plan: &Plan,
        mut c: sniff::Captured,
        started: SystemTime,
        f: &mut FileStatus,
    ) {
        let cfg = &self.0.cfg;
        let name = store::file_name(&self.0.node, &c.iface, plan.alertid, started);
        let bytes = match sniff::into_pcap(&mut c) {
            Ok(b) => b,
            Err(e) => {
                f.error = Some(e.to_string());
                return;
            }
        };
        let mut keep_local = self.keeps_locally(plan);
        let retry = Retry {
            attempts: cfg.capture.upload_attempts.max(1),
            base: cfg.capture.retry_base,
            max: cfg.capture.retry_max,
            timeout: cfg.capture.upload_timeout,
        };
        if let Some(t) = &plan.s3 {
            // The capture's id makes the key unique: an object is never overwritten.
            let key = store::object_key(t, &store::object_name(&name, id));
            let t0 = Instant::now();
            match store::upload(
                store::from_env(),
                t,
                &key,
                bytes.clone(),
                retry,
                &self.0.cancel,
            )
            .await
            {
                Ok(()) => {
                    let url = format!("s3://{}/{key}", t.bucket);
                    tracing::info!(
                        id,
                        url,
                        packets = f.packets,
                        secs = t0.elapsed().as_secs_f64(),
                        "capture uploaded"
                    );
                    f.s3_url = Some(url);
                }
                Err(e) => {
                    tracing::error!(id, bucket = %t.bucket, key, "upload failed for good ({e}); keeping the capture in {}", cfg.local_dir.display());
                    f.error = Some(format!("upload: {e}"));
                    keep_local = true;
                }
            }
        }
        if let Some(cs) = &self.0.cloudshark {
            let tags = cs.tags(plan.tags.as_deref(), &self.0.node, &c.iface, plan.snap);
            match cs.upload(&name, &bytes, &tags, retry, &self.0.cancel).await {
                Ok(u) => {
                    tracing::info!(
                        id,
                        cloudshark_id = u.id,
                        url = u.url,
                        packets = f.packets,
                        "capture uploaded to CloudShark"
                    );
                    f.cloudshark_id = Some(u.id);
                    f.cloudshark_url = Some(u.url);
                }
                Err(e) => {
                    tracing::error!(
                        id,
                        "CloudShark upload failed for good ({e}); keeping the capture in {}",
                        cfg.local_dir.display()
                    );
                    let prev = f.error.take();
                    f.error = Some(match prev {
                        Some(p) => format!("{p}; cloudshark: {e}"),
                        None => format!("cloudshark: {e}"),
                    });
                    keep_local = true;
                }
            }
        }
        if keep_local {
            // A slow disk (an fsync on a throttled volume) holds a blocking thread, not the
            // runtime the endpoints and triggers run on.
            let (dir, max, file) = (
                cfg.local_dir.clone(),
                cfg.capture.max_local_bytes,
                name.clone(),
            );
            let image = bytes.clone();
            let written =
                tokio::task::spawn_blocking(move || store::write_local(&dir, &file, &image, max))
                    .await
                    .unwrap_or_else(|e| {
                        Err(std::io::Error::other(format!("the writing thread: {e}")))
                    });
            match written {
                Ok(p) => {
                    tracing::info!(id, path = %p.display(), packets = f.packets, stopped_by = f.stopped_by, "capture written");
                    f.local_path = Some(p.display().to_string());
                }
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::StorageFull
                        && let Some(m) = &self.0.metrics
                    {
                        m.limit_counter("capture_max_local_bytes").inc();
                    }
                    tracing::error!(id, dir = %cfg.local_dir.display(), "writing the capture failed: {e}; it is lost");
                    let prev = f.error.take();
                    f.error = Some(match prev {
                        Some(p) => format!("{p}; local write: {e}"),
                        None => format!("local write: {e}"),
                    });
                }
            }
        }
    }

    /// Shutdown: running captures stop and store what they have, waiting up to `deadline`.
    pub async fn shutdown(&self, deadline: Duration) {
        self.0.cancel.store(true, Ordering::Relaxed);
        let start = Instant::now();
        while *self.0.running.lock().expect("lock") > 0 && start.elapsed() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = *self.0.running.lock().expect("lock");
        if left > 0 {
            tracing::warn!(
                captures = left,
                "shutdown deadline passed with captures still being stored"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FileStatus;

    #[test]
    fn results_say_where_the_file_went() {
        let f = |error: Option<&str>, s3: bool, local: bool| FileStatus {
            error: error.map(str::to_owned),
            s3_url: s3.then(|| "s3://b/k".to_owned()),
            local_path: local.then(|| "/d/f.pcap".to_owned()),
            ..FileStatus::default()
        };
        assert_eq!(f(None, false, true).result(), "written");
        assert_eq!(f(None, true, false).result(), "uploaded");
        assert_eq!(f(None, true, true).result(), "uploaded");
        assert_eq!(
            f(Some("local write: full"), true, false).result(),
            "uploaded"
        );
        assert_eq!(
            f(Some("upload: refused"), false, true).result(),
            "upload_failed_kept_locally"
        );
        assert_eq!(
            f(Some("upload: refused; local write: full"), false, false).result(),
            "failed"
        );
        assert_eq!(f(Some("opening eth9"), false, false).result(), "failed");
    }
}
