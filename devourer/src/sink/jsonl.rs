//! The JSON lines sink: flow, overflow, DNS and HTTP records as one JSON object per line on
//! stdout or in a file, written by a thread of its own behind a queue bounded in records and
//! bytes, so that a slow or stuck output never blocks the flow table (a live agent drops and
//! counts what does not fit; a replay waits for room instead).

use std::{
    io::{self, Write},
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, Sender},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{Sink, SinkReport};
use crate::{
    base::{files, par},
    record::{Batch, Kind},
};

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
            Self::File(p) => Box::new(files::open_output(p)?),
        })
    }
}

/// Records serialised and queued as one piece at most (about a MiB of JSON).
const CHUNK: usize = 1024;

/// How much may wait for the output.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    pub records: u64,
    pub bytes: u64,
    /// Wait for room instead of dropping (a replay must not lose records).
    pub lossless: bool,
}

/// Counters shared between the writer thread and the pipeline.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    /// The reader of our output went away (EPIPE): time to stop.
    pub closed: AtomicBool,
}

/// What waits for the writer: records and bytes, with a condition for a lossless sender.
#[derive(Default)]
struct Queued {
    level: Mutex<(u64, u64)>,
    room: Condvar,
}

impl Queued {
    fn add(&self, records: u64, bytes: u64) {
        let mut l = self.level.lock().expect("queue lock");
        l.0 += records;
        l.1 += bytes;
    }

    fn remove(&self, records: u64, bytes: u64) {
        let mut l = self.level.lock().expect("queue lock");
        l.0 -= records;
        l.1 -= bytes;
        self.room.notify_all();
    }

    fn records(&self) -> u64 {
        self.level.lock().expect("queue lock").0
    }
}

struct Shared {
    stats: SinkStats,
    queued: Queued,
    /// SIGHUP asked for a reopen; the writer does it before its next write.
    reopen: AtomicBool,
}

/// A JSON-lines writer on its own thread.
pub struct JsonLinesSink {
    tx: Option<Sender<(Vec<u8>, u64)>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    limits: QueueLimits,
    /// Threads a large batch is serialised on (see [`JsonLinesSink::serialise_on`]).
    threads: usize,
}

impl JsonLinesSink {
    /// Opens the target and starts the writer.
    pub fn start(target: &Target, limits: QueueLimits, retry: Duration) -> io::Result<Self> {
        let out = target.open()?;
        let shared = Arc::new(Shared {
            stats: SinkStats::default(),
            queued: Queued::default(),
            reopen: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let sh = shared.clone();
        let target = target.clone();
        let thread = std::thread::Builder::new()
            .name("sink-jsonl".into())
            .spawn(move || writer(rx, out, &sh, retry, target))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            shared,
            limits,
            threads: 1,
        })
    }

    /// Serialises batches of more than one piece on up to `threads` threads (a replay's
    /// large batches; see `assembly::Driver`); a live agent keeps one.
    pub fn serialise_on(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    pub fn stats(&self) -> &SinkStats {
        &self.shared.stats
    }

    fn drop_counted(&self, n: u64) {
        let before = self.shared.stats.dropped.fetch_add(n, Ordering::Relaxed);
        if before == 0 {
            tracing::error!(
                "output is not keeping up: dropping records past --output-queue (counted)"
            );
        }
    }

    /// Whether `n` records of `bytes` fit now; a lossless sink waits until they do (or the
    /// writer stops).
    fn room(&self, n: u64, bytes: u64) -> bool {
        let q = &self.shared.queued;
        let mut l = q.level.lock().expect("queue lock");
        loop {
            // An empty queue always takes a batch, however large: progress is never blocked.
            let fits =
                l.0 == 0 || (l.0 + n <= self.limits.records && l.1 + bytes <= self.limits.bytes);
            if fits || !self.limits.lossless || self.shared.stats.closed.load(Ordering::Relaxed) {
                return fits;
            }
            l = q
                .room
                .wait_timeout(l, Duration::from_millis(100))
                .expect("queue lock")
                .0;
        }
    }

    /// Queues `batch` in pieces of at most [`CHUNK`] records, so that a large batch (the
    /// queries a flush ends, tens of thousands) never sits in memory as one buffer beside the
    /// queue. Returns `false` once the output is closed for good.
    fn send(&self, batch: Batch<'_>) -> bool {
        let stats = &self.shared.stats;
        if batch.is_empty() {
            return !stats.closed.load(Ordering::Relaxed);
        }
        // Every piece is sent (or counted dropped), even after the output closed; a few
        // pieces at a time are serialised side by side, then queued in order.
        let pieces: Vec<Batch<'_>> = batch.chunks(CHUNK).collect();
        let mut open = true;
        for group in pieces.chunks(self.threads) {
            for (bytes, n) in par::map_parts(group, self.threads, 1, |g| serialise(g[0])) {
                open &= self.queue(bytes, n);
            }
        }
        open
    }

    fn queue(&self, bytes: Vec<u8>, n: u64) -> bool {
        let stats = &self.shared.stats;
        if !self.room(n, bytes.len() as u64) {
            self.drop_counted(n);
            return !stats.closed.load(Ordering::Relaxed);
        }
        self.shared.queued.add(n, bytes.len() as u64);
        let len = bytes.len() as u64;
        let tx = self.tx.as_ref().expect("sink running");
        if tx.send((bytes, n)).is_err() {
            self.shared.queued.remove(n, len);
            stats.dropped.fetch_add(n, Ordering::Relaxed);
            return false;
        }
        !stats.closed.load(Ordering::Relaxed)
    }
}

/// One piece as JSON lines, with how many records it holds.
fn serialise(batch: Batch<'_>) -> (Vec<u8>, u64) {
    let mut bytes = Vec::with_capacity(batch.len() * 1024);
    let n = batch.write_json(&mut bytes) as u64;
    (bytes, n)
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

    /// Asks the writer to reopen its output before its next write (never skipped: a full
    /// queue only delays it).
    fn reopen(&mut self) {
        self.shared.reopen.store(true, Ordering::Relaxed);
        if let Some(tx) = &self.tx {
            // An empty batch wakes an idle writer so that the reopen happens now.
            let _ = tx.send((Vec::new(), 0));
        }
    }

    fn alive(&self) -> bool {
        !self.shared.stats.closed.load(Ordering::Relaxed)
    }

    fn report(&self) -> SinkReport {
        let s = &self.shared.stats;
        SinkReport {
            outcomes: vec![
                ("written", s.written.load(Ordering::Relaxed)),
                ("dropped", s.dropped.load(Ordering::Relaxed)),
            ],
            ..SinkReport::default()
        }
    }

    /// Stops accepting records and waits until `deadline` for the queue to drain; records
    /// still queued then are lost and counted as dropped.
    fn finish(mut self: Box<Self>, deadline: Instant) -> u64 {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                let left = self.shared.queued.records();
                self.shared.stats.dropped.fetch_add(left, Ordering::Relaxed);
                tracing::error!(
                    records = left,
                    "output did not drain by the shutdown deadline; records still queued are lost (counted as dropped)"
                );
            }
        }
        self.shared.stats.dropped.load(Ordering::Relaxed)
    }
}

fn writer(
    rx: Receiver<(Vec<u8>, u64)>,
    mut out: Box<dyn Write + Send>,
    shared: &Shared,
    retry: Duration,
    target: Target,
) {
    let name = format!("{target:?}");
    let stats = &shared.stats;
    let mut failing = false;
    for (bytes, records) in rx {
        if shared.reopen.swap(false, Ordering::Relaxed) {
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
        }
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
        shared.queued.remove(records, bytes.len() as u64);
        stats.written.fetch_add(records, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::LogRecord;

    #[test]
    fn a_batch_is_split_in_order_into_pieces_of_at_most_the_chunk() {
        let recs: Vec<crate::record::OverflowRecord> = (0..2 * CHUNK + 5)
            .map(|i| crate::record::OverflowRecord {
                kind: "overflow",
                id: format!("{i}").into(),
                agent: "a".into(),
                interface: "eth0".into(),
                protocol: "udp".into(),
                time: Default::default(),
                packets: 1,
                bytes: 1,
            })
            .collect();
        let pieces: Vec<Batch<'_>> = Batch::Overflow(&recs).chunks(CHUNK).collect();
        assert_eq!(
            pieces.iter().map(Batch::len).collect::<Vec<_>>(),
            [CHUNK, CHUNK, 5]
        );
        let ids: Vec<String> = pieces
            .iter()
            .flat_map(|b| b.json_values())
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            ids,
            (0..2 * CHUNK + 5)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_stuck_output_drops_past_the_record_bound_and_counts_what_is_left_at_shutdown() {
        // A pipe nobody reads: the writer blocks once the pipe buffer is full.
        let mut fds = [0i32; 2];
        // SAFETY: a fresh pipe; the read end is kept open (never read) until the end.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let path = PathBuf::from(format!("/proc/self/fd/{}", fds[1]));
        let limits = QueueLimits {
            records: 100,
            bytes: 1 << 30,
            lossless: false,
        };
        let mut s =
            JsonLinesSink::start(&Target::File(path), limits, Duration::from_millis(10)).unwrap();
        let lines: Vec<LogRecord> = Vec::new();
        assert!(s.write(Batch::DnsLog(&lines)), "an empty batch is fine");
        // 50 batches of 50 overflow records of ~150 bytes: ~375 KB, far past the pipe buffer.
        let recs: Vec<crate::record::OverflowRecord> = (0..50)
            .map(|i| crate::record::OverflowRecord {
                kind: "overflow",
                id: format!("{i:032}").into(),
                agent: "a".repeat(40).into(),
                interface: "eth0".into(),
                protocol: "udp".into(),
                time: "2023-11-14T22:13:20.000000Z".into(),
                packets: 1,
                bytes: 1,
            })
            .collect();
        for _ in 0..50 {
            assert!(s.write(Batch::Overflow(&recs)));
        }
        let dropped_live = s.stats().dropped.load(Ordering::Relaxed);
        assert!(dropped_live > 0, "the bound dropped some");
        let report = s.report();
        let dropped = Box::new(s).finish(Instant::now() + Duration::from_millis(200));
        let written = report.outcomes[0].1;
        assert!(
            dropped > dropped_live,
            "what was still queued is counted too"
        );
        assert!(written + dropped <= 2500);
        // SAFETY: closing our pipe ends.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
