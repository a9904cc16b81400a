//! Record sinks: JSON lines on stdout or in a file, written by a thread of their own behind a
//! bounded queue so that a slow or stuck output never blocks the flow table.

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
    time::Duration,
};

use serde::Serialize;

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

/// Serialises records as one JSON object per line.
pub fn encode<T: Serialize>(records: &[T], out: &mut Vec<u8>) {
    for r in records {
        serde_json::to_writer(&mut *out, r).expect("records serialise");
        out.push(b'\n');
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
    pub fn send<T: Serialize>(&self, records: &[T]) -> bool {
        if records.is_empty() {
            return !self.stats.closed.load(Ordering::Relaxed);
        }
        let mut bytes = Vec::with_capacity(records.len() * 400);
        encode(records, &mut bytes);
        let n = records.len() as u64;
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

    /// Asks the writer to reopen its output after what is queued.
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx
            && tx.try_send(Msg::Reopen).is_err()
        {
            tracing::warn!("output queue full: the reopen waits for the next SIGHUP");
        }
    }

    /// Stops accepting records and waits up to `deadline` for the queue to drain.
    pub fn finish(mut self, deadline: Duration) {
        drop(self.tx.take());
        let Some(thread) = self.thread.take() else {
            return;
        };
        let start = std::time::Instant::now();
        while !thread.is_finished() && start.elapsed() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            tracing::error!(
                "output did not drain within {deadline:?}; records still queued are lost"
            );
        }
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
