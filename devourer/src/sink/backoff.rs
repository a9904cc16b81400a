//! Exponential backoff with jitter, for the remote sinks' retries.

use std::time::Duration;

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
