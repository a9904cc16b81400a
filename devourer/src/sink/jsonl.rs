//! The JSON lines sink: flow, overflow, DNS and HTTP records as one JSON object per line on
//! stdout or in a file. It runs on its sink thread (behind the queue that keeps a slow or stuck
//! output from ever blocking the flow table); a write that fails for a while (a full disk) is
//! retried while the queue fills and drops, and an output closed by its reader stops the agent.

use std::{
    io::{self, Write},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{Sink, SinkReport, Status};
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

/// Records serialised as one piece at most (about a MiB of JSON).
const CHUNK: usize = 1024;

/// Counters the sink keeps, read by metrics.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub written: AtomicU64,
    /// The reader of our output went away (EPIPE): time to stop.
    pub closed: AtomicBool,
}

impl Status for SinkStats {
    fn report(&self) -> SinkReport {
        SinkReport {
            outcomes: vec![("written", self.written.load(Ordering::Relaxed))],
            ..SinkReport::default()
        }
    }

    fn alive(&self) -> bool {
        !self.closed.load(Ordering::Relaxed)
    }
}

/// A JSON-lines writer.
pub struct JsonLinesSink {
    out: Box<dyn Write + Send>,
    target: Target,
    stats: Arc<SinkStats>,
    retry: Duration,
    failing: bool,
    /// Threads a large batch is serialised on (see [`JsonLinesSink::serialise_on`]).
    threads: usize,
}

impl JsonLinesSink {
    /// Opens the target; `retry` is the pause between attempts of a failing write.
    pub fn start(target: &Target, retry: Duration) -> io::Result<Self> {
        Ok(Self {
            out: target.open()?,
            target: target.clone(),
            stats: Arc::default(),
            retry,
            failing: false,
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
        &self.stats
    }

    /// Writes `bytes` whole; `false` when the output is closed for good.
    fn write_all(&mut self, bytes: &[u8]) -> bool {
        let name = &self.target;
        let mut off = 0;
        while off < bytes.len() {
            match self.out.write(&bytes[off..]) {
                Ok(0) => {
                    self.stats.closed.store(true, Ordering::Relaxed);
                    return false;
                }
                Ok(n) => {
                    off += n;
                    if self.failing {
                        tracing::info!(output = ?name, "output writable again");
                        self.failing = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    tracing::info!(output = ?name, "output closed by its reader; stopping");
                    self.stats.closed.store(true, Ordering::Relaxed);
                    return false;
                }
                Err(e) => {
                    // Disk full and friends: keep the batch and retry; meanwhile the queue
                    // fills and new records are dropped and counted, never blocking capture.
                    if !self.failing {
                        tracing::error!(output = ?name, "writing records failed: {e}; retrying every {:?}", self.retry);
                        self.failing = true;
                    }
                    std::thread::sleep(self.retry);
                }
            }
        }
        if let Err(e) = self.out.flush() {
            tracing::warn!(output = ?name, "flush failed: {e}");
        }
        true
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

    /// Serialises the batch in pieces of at most [`CHUNK`] records (a few side by side on a
    /// replay's threads) and writes them in order.
    fn write(&mut self, batch: Batch<'_>) -> bool {
        if self.stats.closed.load(Ordering::Relaxed) {
            return false;
        }
        let pieces: Vec<Batch<'_>> = batch.chunks(CHUNK).collect();
        for group in pieces.chunks(self.threads) {
            for (bytes, n) in par::map_parts(group, self.threads, 1, |g| serialise(g[0])) {
                if !self.write_all(&bytes) {
                    return false;
                }
                self.stats.written.fetch_add(n, Ordering::Relaxed);
            }
        }
        true
    }

    fn reopen(&mut self) {
        let _ = self.out.flush();
        match self.target.open() {
            Ok(o) => {
                self.out = o;
                tracing::info!(output = ?self.target, "reopened");
            }
            Err(e) => {
                tracing::error!(output = ?self.target, "reopening failed: {e}; keeping the old file")
            }
        }
    }

    fn status(&self) -> Arc<dyn Status> {
        self.stats.clone()
    }

    fn finish(mut self: Box<Self>, _deadline: Instant) -> u64 {
        let _ = self.out.flush();
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut lines = Vec::new();
        for b in &pieces {
            b.write_json(&mut lines);
        }
        let ids: Vec<String> = lines
            .split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            ids,
            (0..2 * CHUNK + 5)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn records_are_written_in_order_on_several_threads_and_counted() {
        let dir = std::env::temp_dir().join(format!("devourer-jsonl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        let recs: Vec<crate::record::OverflowRecord> = (0..3 * CHUNK + 7)
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
        let mut s = JsonLinesSink::start(&Target::File(path.clone()), Duration::from_millis(10))
            .unwrap()
            .serialise_on(3);
        assert!(s.write(Batch::Overflow(&recs)));
        let status = s.status();
        assert_eq!(Box::new(s).finish(Instant::now()), 0);
        assert_eq!(status.report().outcomes, [("written", recs.len() as u64)]);
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            ids,
            (0..recs.len()).map(|i| i.to_string()).collect::<Vec<_>>()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
