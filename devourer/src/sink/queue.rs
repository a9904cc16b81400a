//! One sink on a thread of its own behind a queue bounded in records and bytes
//! (`--sink-queue-records`, `--sink-queue-bytes`): the counting thread offers a batch and goes
//! on at once. What does not fit is dropped and counted for that sink alone; a slow disk, a
//! remote service or a lock a sink holds never stalls the thread that counts (a replay, which
//! must not lose a record, waits for room instead).

use std::{
    ops::Range,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, Sender},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{Sink, SinkReport, Status};
use crate::record::{Kind, Records};

/// How much may wait for one sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    pub records: u64,
    /// Bytes of memory the waiting records hold (their [`crate::record::Footprint`]).
    pub bytes: u64,
    /// Wait for room instead of dropping (a replay must not lose records).
    pub lossless: bool,
}

/// Records offered to a sink at once at most: a large batch is queued in pieces, so a bound
/// is never overshot by more than one piece and a piece never waits behind a whole flush.
const PIECE: usize = 4096;

/// How long past the shutdown deadline a sink that is finishing (its queue delivered) may take
/// to log its summary.
const FINISH_GRACE: Duration = Duration::from_millis(500);

/// A piece of shared records on its way to one sink.
struct Parcel {
    records: Records,
    range: Range<usize>,
    bytes: u64,
}

enum Msg {
    Records(Parcel),
    /// SIGHUP: reopen files before the next write (never dropped, whatever the queue holds).
    Reopen,
}

/// What the counting thread and the worker share.
#[derive(Default)]
struct State {
    /// Records and bytes waiting.
    level: Mutex<(u64, u64)>,
    room: Condvar,
    /// Dropped because the queue was full, or still queued when the deadline came.
    dropped: AtomicU64,
    /// The sink said it closed for good (the reader of the JSON output went away).
    closed: AtomicBool,
    warned: AtomicBool,
    /// When the worker must give up at shutdown.
    deadline: Mutex<Option<Instant>>,
    /// The queue is drained and the sink finishes (it keeps the deadline itself).
    finishing: AtomicBool,
}

impl State {
    fn take(&self, records: u64, bytes: u64) {
        let mut l = self.level.lock().unwrap_or_else(|e| e.into_inner());
        l.0 -= records;
        l.1 -= bytes;
        self.room.notify_all();
    }

    fn queued(&self) -> u64 {
        self.level.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

/// A sink, its thread and its queue.
pub struct Worker {
    name: &'static str,
    kinds: Vec<Kind>,
    tx: Option<Sender<Msg>>,
    thread: Option<JoinHandle<u64>>,
    state: Arc<State>,
    status: Arc<dyn Status>,
    limits: QueueLimits,
}

impl Worker {
    /// Moves `sink` onto a thread of its own.
    pub fn start(sink: Box<dyn Sink>, limits: QueueLimits) -> std::io::Result<Self> {
        let name = sink.name();
        let kinds = [
            Kind::Flow,
            Kind::Overflow,
            Kind::Dns,
            Kind::Http,
            Kind::DnsLog,
            Kind::HttpLog,
        ]
        .into_iter()
        .filter(|k| sink.takes(*k))
        .collect();
        let status = sink.status();
        let state = Arc::new(State::default());
        let (tx, rx) = mpsc::channel();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("sink-{name}"))
            .spawn(move || run(sink, &rx, &st))?;
        Ok(Self {
            name,
            kinds,
            tx: Some(tx),
            thread: Some(thread),
            state,
            status,
            limits,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn takes(&self, kind: Kind) -> bool {
        self.kinds.contains(&kind)
    }

    /// Queues `records` in pieces, dropping (and counting) what does not fit; a lossless
    /// queue waits for room. `false` once the sink closed for good.
    pub fn offer(&self, records: &Records) -> bool {
        let len = records.len();
        let mut start = 0;
        while start < len {
            let range = start..(start + PIECE).min(len);
            start = range.end;
            let bytes = records.batch(range.clone()).footprint() as u64;
            let n = range.len() as u64;
            if !self.room(n, bytes) {
                self.drop_counted(n);
                continue;
            }
            let parcel = Parcel {
                records: records.clone(),
                range,
                bytes,
            };
            let sent = self
                .tx
                .as_ref()
                .is_some_and(|tx| tx.send(Msg::Records(parcel)).is_ok());
            if !sent {
                // The worker is gone (it panicked): nothing will take these.
                self.state.take(n, bytes);
                self.drop_counted(n);
            }
        }
        !self.state.closed.load(Ordering::Relaxed)
    }

    /// Whether `n` records of `bytes` fit now, and if so counts them in; a lossless queue
    /// waits until they do (or the sink closed).
    fn room(&self, n: u64, bytes: u64) -> bool {
        let st = &self.state;
        let mut l = st.level.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // An empty queue takes a piece whatever its size: progress is never blocked.
            let fits =
                l.0 == 0 || (l.0 + n <= self.limits.records && l.1 + bytes <= self.limits.bytes);
            if fits {
                l.0 += n;
                l.1 += bytes;
                return true;
            }
            let gone = self.thread.as_ref().is_none_or(JoinHandle::is_finished);
            if !self.limits.lossless || st.closed.load(Ordering::Relaxed) || gone {
                return false;
            }
            l = st
                .room
                .wait_timeout(l, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn drop_counted(&self, n: u64) {
        self.state.dropped.fetch_add(n, Ordering::Relaxed);
        if !self.state.warned.swap(true, Ordering::Relaxed) {
            tracing::error!(
                sink = self.name,
                "sink is not keeping up: dropping records past its queue (--sink-queue-records, --sink-queue-bytes; counted in devourer_sink_dropped_total)"
            );
        }
    }

    /// Asks the sink to reopen its files before its next write.
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Reopen);
        }
    }

    /// Whether the sink said it closed for good.
    pub fn closed(&self) -> bool {
        self.state.closed.load(Ordering::Relaxed)
    }

    /// Whether the sink still accepts records (`/readyz`).
    pub fn alive(&self) -> bool {
        let running = self.thread.as_ref().is_some_and(|t| !t.is_finished());
        running && !self.state.closed.load(Ordering::Relaxed) && self.status.alive()
    }

    /// The sink's own report, with what its queue holds and dropped added.
    pub fn report(&self) -> SinkReport {
        let mut r = self.status.report();
        r.queued = self.state.queued();
        let dropped = self.state.dropped.load(Ordering::Relaxed);
        match r.outcomes.iter_mut().find(|(o, _)| *o == "dropped") {
            Some((_, n)) => *n += dropped,
            None => r.outcomes.push(("dropped", dropped)),
        }
        r
    }

    /// Stops taking records: the worker delivers what is queued, then lets the sink finish,
    /// both by `deadline`. Records still queued then are lost and counted. Returns the records
    /// the sink dropped over its life, its queue's included.
    pub fn finish(mut self, deadline: Instant) -> u64 {
        *self
            .state
            .deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(deadline);
        drop(self.tx.take());
        let mut own = 0;
        if let Some(thread) = self.thread.take() {
            // A sink finishing keeps the deadline itself: a moment more lets it say so.
            let grace = deadline + FINISH_GRACE;
            while !thread.is_finished() {
                let finishing = self.state.finishing.load(Ordering::Relaxed);
                let now = Instant::now();
                if now >= grace || (now >= deadline && !finishing) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                own = thread.join().unwrap_or(0);
            } else {
                let left = self.state.queued();
                self.state.dropped.fetch_add(left, Ordering::Relaxed);
                tracing::error!(
                    sink = self.name,
                    records = left,
                    "sink did not drain by the shutdown deadline; records still queued are lost (counted as dropped)"
                );
                own = self.status.report().dropped();
            }
        }
        own + self.state.dropped.load(Ordering::Relaxed)
    }
}

/// The worker: writes what arrives, in order, until the queue closes; then the sink finishes.
fn run(mut sink: Box<dyn Sink>, rx: &Receiver<Msg>, state: &State) -> u64 {
    let deadline = || {
        let d = *state.deadline.lock().unwrap_or_else(|e| e.into_inner());
        d.unwrap_or_else(|| Instant::now() + Duration::from_secs(1))
    };
    for msg in rx {
        match msg {
            Msg::Reopen => sink.reopen(),
            Msg::Records(p) => {
                let n = p.range.len() as u64;
                // Past the deadline what is left is counted by `finish`, not written.
                let late = state
                    .deadline
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some_and(|d| Instant::now() >= d);
                if !late && !sink.write(p.records.batch(p.range.clone())) {
                    state.closed.store(true, Ordering::Relaxed);
                }
                if late {
                    state.dropped.fetch_add(n, Ordering::Relaxed);
                }
                state.take(n, p.bytes);
            }
        }
    }
    state.finishing.store(true, Ordering::Relaxed);
    sink.finish(deadline())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        record::{Batch, OverflowRecord},
        sink::SinkReport,
    };

    /// A sink that blocks on a gate (a frozen disk) and remembers what it wrote.
    struct Gated {
        gate: Arc<(Mutex<bool>, Condvar)>,
        written: Arc<AtomicU64>,
    }

    struct GatedStatus(Arc<AtomicU64>);

    impl Status for GatedStatus {
        fn report(&self) -> SinkReport {
            SinkReport {
                outcomes: vec![("written", self.0.load(Ordering::Relaxed))],
                ..SinkReport::default()
            }
        }
    }

    impl Sink for Gated {
        fn name(&self) -> &'static str {
            "gated"
        }
        fn takes(&self, kind: Kind) -> bool {
            kind == Kind::Overflow
        }
        fn write(&mut self, batch: Batch<'_>) -> bool {
            let (open, cv) = &*self.gate;
            let mut g = open.lock().unwrap();
            while !*g {
                g = cv.wait(g).unwrap();
            }
            self.written
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            true
        }
        fn status(&self) -> Arc<dyn Status> {
            Arc::new(GatedStatus(self.written.clone()))
        }
        fn finish(self: Box<Self>, _deadline: Instant) -> u64 {
            0
        }
    }

    fn overflow(n: usize) -> Records {
        Records::Overflow(Arc::new(
            (0..n)
                .map(|i| OverflowRecord {
                    kind: "overflow",
                    id: format!("{i}").into(),
                    agent: "a".into(),
                    interface: "eth0".into(),
                    protocol: "udp".into(),
                    time: Default::default(),
                    packets: 1,
                    bytes: 1,
                })
                .collect(),
        ))
    }

    type Gate = Arc<(Mutex<bool>, Condvar)>;

    fn gated() -> (Box<Gated>, Gate, Arc<AtomicU64>) {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let written = Arc::new(AtomicU64::new(0));
        let s = Gated {
            gate: gate.clone(),
            written: written.clone(),
        };
        (Box::new(s), gate, written)
    }

    fn open(gate: &(Mutex<bool>, Condvar)) {
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
    }

    #[test]
    fn a_stuck_sink_never_blocks_the_caller_and_drops_past_its_bound_counted() {
        let (sink, gate, written) = gated();
        let limits = QueueLimits {
            records: 100,
            bytes: 1 << 30,
            lossless: false,
        };
        let w = Worker::start(sink, limits).unwrap();
        assert!(w.takes(Kind::Overflow) && !w.takes(Kind::Flow));
        // The sink is stuck in its first write: every offer returns at once.
        for _ in 0..50 {
            assert!(w.offer(&overflow(30)));
        }
        let r = w.report();
        // The first piece went to the stuck write; at most 100 more wait behind it.
        assert!(r.queued <= 130, "{r:?}");
        assert_eq!(
            r.dropped() + r.queued,
            1500,
            "every record queued or counted: {r:?}"
        );
        open(&gate);
        let dropped = w.finish(Instant::now() + Duration::from_secs(10));
        assert_eq!(written.load(Ordering::Relaxed) + dropped, 1500);
        assert!(dropped >= 1500 - 130);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let (sink, gate, _) = gated();
        let one = overflow(1).all().footprint() as u64;
        let limits = QueueLimits {
            records: 1 << 20,
            bytes: 10 * one,
            lossless: false,
        };
        let w = Worker::start(sink, limits).unwrap();
        for _ in 0..100 {
            w.offer(&overflow(1));
        }
        let r = w.report();
        assert!(r.queued <= 11, "{r:?}");
        open(&gate);
        w.finish(Instant::now() + Duration::from_secs(10));
    }

    #[test]
    fn a_lossless_queue_waits_and_loses_nothing() {
        let (sink, gate, written) = gated();
        let limits = QueueLimits {
            records: 10,
            bytes: 1 << 30,
            lossless: true,
        };
        let w = Worker::start(sink, limits).unwrap();
        let g = gate.clone();
        let opener = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            open(&g);
        });
        for _ in 0..100 {
            assert!(w.offer(&overflow(7)));
        }
        opener.join().unwrap();
        assert_eq!(w.finish(Instant::now() + Duration::from_secs(10)), 0);
        assert_eq!(written.load(Ordering::Relaxed), 700);
    }

    #[test]
    fn what_is_still_queued_at_the_deadline_is_counted_and_finish_returns() {
        let (sink, _gate, _) = gated();
        let limits = QueueLimits {
            records: 1000,
            bytes: 1 << 30,
            lossless: false,
        };
        let w = Worker::start(sink, limits).unwrap();
        w.offer(&overflow(10));
        w.offer(&overflow(20));
        let started = Instant::now();
        let dropped = w.finish(Instant::now() + Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(5));
        // The write in progress (10) and the 20 behind it never reached the sink.
        assert_eq!(dropped, 30);
    }
}
