//! What the remote sinks' sender threads share: exponential backoff with jitter for their
//! retries, the shutdown they are told of ([`Shutdown`]), and the loop that sends a spool's
//! segments with a backoff per table ([`drain`]).

use std::{
    collections::BTreeMap,
    fmt::Display,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::spool::{Segment, Spool};

/// Exponential backoff with jitter: base, 2×base, ... up to max; each wait is 50–100% of that.
pub struct Backoff {
    base: Duration,
    max: Duration,
    step: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max, step: 0 }
    }

    /// The next wait (and the one after it doubles).
    pub fn wait(&mut self) -> Duration {
        let full = self
            .base
            .saturating_mul(1u32 << self.step.min(20))
            .min(self.max);
        self.step += 1;
        full.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    pub fn reset(&mut self) {
        self.step = 0;
    }
}

/// A sender thread's stop signal and deadline, shared with the sink that started it.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    stop: Arc<AtomicBool>,
    deadline: Arc<Mutex<Option<Instant>>>,
}

impl Shutdown {
    /// Whether the sink is stopping (it sends what it holds until the deadline).
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Whether stopping and the deadline has passed.
    pub fn past_deadline(&self) -> bool {
        self.stopping()
            && self
                .deadline
                .lock()
                .expect("deadline lock")
                .is_some_and(|d| Instant::now() >= d)
    }

    /// Tells the sender to stop by `deadline`, and waits for `thread` until then; `false`
    /// when it was still busy at the deadline (a request in flight), and is left behind.
    pub fn stop_by(&self, deadline: Instant, thread: Option<JoinHandle<()>>) -> bool {
        *self.deadline.lock().expect("deadline lock") = Some(deadline);
        self.stop.store(true, Ordering::Relaxed);
        let Some(t) = thread else {
            return true;
        };
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let done = t.is_finished();
        if done {
            let _ = t.join();
        }
        done
    }
}

/// What a sender does with one sealed segment.
pub trait Deliver {
    type Error: Display;

    /// Sends `seg` and, once its destination acknowledged it, takes it out of the spool.
    fn deliver(&mut self, seg: &Segment) -> Result<(), Self::Error>;

    /// `seg` failed with `e` (count it, drop the connection); it is sent again after its
    /// table's backoff.
    fn failed(&mut self, seg: &Segment, e: Self::Error);
}

/// Sends the spool's sealed segments, oldest first, until told to stop (then what is left,
/// until the deadline). Each table has its own backoff: a table its destination keeps
/// refusing holds up only itself.
pub fn drain(
    spool: &Spool,
    shutdown: &Shutdown,
    base: Duration,
    max: Duration,
    label: &str,
    d: &mut impl Deliver,
) {
    let mut tables: BTreeMap<String, (Backoff, Instant)> = spool
        .tables()
        .into_iter()
        .map(|t| (t, (Backoff::new(base, max), Instant::now())))
        .collect();
    loop {
        // Read once: stopping seals every open segment, and only then may an empty spool end
        // the loop (read twice, the stop could fall between the seal and the check, and the
        // last records stay in an open segment unsent).
        let stopping = shutdown.stopping();
        if let Err(e) = spool.seal_due(stopping) {
            tracing::error!(sink = label, "sealing a spool segment failed: {e}");
        }
        let now = Instant::now();
        let ready = tables
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .filter_map(|(t, _)| spool.next_of(t))
            .min_by(|a, b| a.path.file_name().cmp(&b.path.file_name()));
        let Some(seg) = ready else {
            if shutdown.past_deadline() || (stopping && spool.next().is_none()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let (backoff, at) = tables.get_mut(&seg.table).expect("a spool table");
        match d.deliver(&seg) {
            Ok(()) => backoff.reset(),
            Err(e) => {
                d.failed(&seg, e);
                *at = Instant::now() + backoff.wait();
            }
        }
        if shutdown.past_deadline() {
            return;
        }
    }
}
