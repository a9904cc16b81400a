//! Clocks and time formats: the kernel's monotonic clock mapped to wall time, RFC 3339 for
//! records, and broken-down civil time for text log names and lines.

use std::time::{Duration, SystemTime};

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and a writable timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel program stamps live packets with `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Turns program-clock nanoseconds into wall-clock nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    /// Added to the program's timestamps (0 offline, where they already are wall time).
    pub offset_ns: i128,
}

impl Clock {
    /// The mapping from CLOCK_MONOTONIC to wall time right now (re-read often, so that clock
    /// steps are followed).
    pub fn live() -> Self {
        let real = clock_ns(libc::CLOCK_REALTIME) as i128;
        let mono = monotonic_ns() as i128;
        Self {
            offset_ns: real - mono,
        }
    }

    pub fn wall(&self, ns: u64) -> u64 {
        (ns as i128 + self.offset_ns).max(0) as u64
    }
}

/// RFC 3339, UTC, microseconds: `2024-05-01T12:00:00.123456Z`.
pub fn rfc3339(ns_since_epoch: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(ns_since_epoch);
    humantime::format_rfc3339_micros(t).to_string()
}

/// Broken-down time of a wall-clock instant, UTC or the local zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub min: u32,
    pub sec: u32,
    pub ms: u32,
}

pub fn civil(wall_ns: u64, local: bool) -> Civil {
    // time_t is 64 bits on the targets devourer runs on (glibc and musl x86_64/aarch64).
    let secs = (wall_ns / 1_000_000_000) as i64;
    let secs = (&secs as *const i64).cast();
    // SAFETY: a zeroed tm filled by the reentrant libc conversions from a valid time.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe {
        if local {
            libc::localtime_r(secs, &mut tm);
        } else {
            libc::gmtime_r(secs, &mut tm);
        }
    }
    Civil {
        year: tm.tm_year + 1900,
        month: (tm.tm_mon + 1) as u32,
        day: tm.tm_mday as u32,
        hour: tm.tm_hour as u32,
        min: tm.tm_min as u32,
        sec: tm.tm_sec as u32,
        ms: ((wall_ns / 1_000_000) % 1000) as u32,
    }
}

/// A duration in whole nanoseconds, saturating (timeouts are compared with program clocks).
pub fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_rfc3339_with_microseconds() {
        assert_eq!(
            rfc3339(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn civil_time_in_utc() {
        let c = civil(1_700_000_000_123_456_789, false);
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.min, c.sec, c.ms),
            (2023, 11, 14, 22, 13, 20, 123)
        );
    }
}
