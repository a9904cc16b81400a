//! The JSON lines sink: flow, overflow, DNS and HTTP records as one JSON object per line on stdout or in
//! a file, written by a thread of its own behind a bounded queue so that a slow or stuck
//! output never blocks the flow table.

use std::{
    fs::OpenOptions,
    io::{self, Write},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{Sink, SinkReport};
use crate::record::{Batch, Kind};

/// Where JSON lines go.
#[derive(Clone, Debug)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Self::Stdout => Box::new(io::stdout()),
            Self::File(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
        })
    }
}

/// Counters shared between the writer thread and the pipeline.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    /// The reader of our output went away (EPIPE): time to stop.
    pub closed: AtomicBool,
}

enum Msg {
    Batch {
        bytes: Vec<u8>,
        records: u64,
    },
    /// Reopen the output (a file moved away by logrotate).
    Reopen,
}

/// A JSON-lines writer on its own thread.
pub struct JsonLinesSink {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<SinkStats>,
    /// Offline replays must not lose records: they wait for room instead of dropping.
    lossless: bool,
}

impl JsonLinesSink {
    /// Opens the target and starts the writer. `queue` is how many batches may wait.
    pub fn start(
        target: &Target,
        queue: usize,
        lossless: bool,
        retry: Duration,
    ) -> io::Result<Self> {
        let out = target.open()?;
        let stats = Arc::new(SinkStats::default());
        let (tx, rx) = mpsc::sync_channel(queue);
        let st = stats.clone();
        let target = target.clone();
        let thread = std::thread::Builder::new()
            .name("sink-jsonl".into())
            .spawn(move || writer(rx, out, st, retry, target))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            stats,
            lossless,
        })
    }

    /// Queues records. Returns `false` once the output is closed for good.
    fn send(&self, batch: Batch<'_>) -> bool {
        if batch.is_empty() {
            return !self.stats.closed.load(Ordering::Relaxed);
        }
        let mut bytes = Vec::with_capacity(batch.len() * 400);
        let n = batch.write_json(&mut bytes) as u64;
        let batch = Msg::Batch { bytes, records: n };
        let tx = self.tx.as_ref().expect("sink running");
        let res = if self.lossless {
            tx.send(batch).map_err(|_| ())
        } else {
            match tx.try_send(batch) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => {
                    let before = self.stats.dropped.fetch_add(n, Ordering::Relaxed);
                    if before == 0 {
                        tracing::error!(
                            "output is not keeping up: dropping records (counted in the summary)"
                        );
                    }
                    Ok(())
                }
                Err(TrySendError::Disconnected(_)) => Err(()),
            }
        };
        if res.is_err() {
            self.stats.dropped.fetch_add(n, Ordering::Relaxed);
            return false;
        }
        !self.stats.closed.load(Ordering::Relaxed)
    }
}

impl Sink for JsonLinesSink {
    fn name(&self) -> &'static str {
        "jsonl"
    }

    fn takes(&self, kind: Kind) -> bool {
        matches!(kind, Kind::Flow | Kind::Overflow | Kind::Dns | Kind::Http)
    }

    fn write(&mut self, batch: Batch<'_>) -> bool {
        self.send(batch)
    }

    /// Asks the writer to reopen its output after what is queued.
    fn reopen(&mut self) {
        if let Some(tx) = &self.tx
            && tx.try_send(Msg::Reopen).is_err()
        {
            tracing::warn!("output queue full: the reopen waits for the next SIGHUP");
        }
    }

    fn alive(&self) -> bool {
        !self.stats.closed.load(Ordering::Relaxed)
    }

    fn report(&self) -> SinkReport {
        SinkReport {
            outcomes: vec![
                ("written", self.stats.written.load(Ordering::Relaxed)),
                ("dropped", self.stats.dropped.load(Ordering::Relaxed)),
            ],
            ..SinkReport::default()
        }
    }

    /// Stops accepting records and waits until `deadline` for the queue to drain.
    fn finish(mut self: Box<Self>, deadline: Instant) -> u64 {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::error!(
                    "output did not drain by the shutdown deadline; records still queued are lost"
                );
            }
        }
        self.stats.dropped.load(Ordering::Relaxed)
    }
}

fn writer(
    rx: Receiver<Msg>,
    mut out: Box<dyn Write + Send>,
    stats: Arc<SinkStats>,
    retry: Duration,
    target: Target,
) {
    let name = format!("{target:?}");
    let mut failing = false;
    for msg in rx {
        let (bytes, records) = match msg {
            Msg::Batch { bytes, records } => (bytes, records),
            Msg::Reopen => {
                let _ = out.flush();
                match target.open() {
                    Ok(o) => {
                        out = o;
                        tracing::info!(output = %name, "reopened");
                    }
                    Err(e) => {
                        tracing::error!(output = %name, "reopening failed: {e}; keeping the old file")
                    }
                }
                continue;
            }
        };
        let mut off = 0;
        while off < bytes.len() {
            match out.write(&bytes[off..]) {
                Ok(0) => {
                    stats.closed.store(true, Ordering::Relaxed);
                    return;
                }
                Ok(n) => {
                    off += n;
                    if failing {
                        tracing::info!(output = %name, "output writable again");
                        failing = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    tracing::info!(output = %name, "output closed by its reader; stopping");
                    stats.closed.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    // Disk full and friends: keep the batch and retry; meanwhile the queue
                    // fills and new records are dropped and counted, never blocking capture.
                    if !failing {
                        tracing::error!(output = %name, "writing records failed: {e}; retrying every {retry:?}");
                        failing = true;
                    }
                    std::thread::sleep(retry);
                }
            }
        }
        if let Err(e) = out.flush() {
            tracing::warn!(output = %name, "flush failed: {e}");
        }
        stats.written.fetch_add(records, Ordering::Relaxed);
    }
}
