//! What the remote sinks' sender threads share: exponential backoff with jitter for their
//! retries, and the shutdown they are told of ([`Shutdown`]).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

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
