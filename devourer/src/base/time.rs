//! Clocks and time formats: the kernel's monotonic clock mapped to wall time, RFC 3339 for
//! records, and broken-down civil time for text log names and lines.

use std::time::Duration;

use super::inline::Inline;

/// An RFC 3339 timestamp as records print it (always 27 bytes).
pub type Timestamp = Inline<27>;

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
/// Written digit by digit (every record carries two; formatting through `fmt` cost a few
/// percent of the agent's CPU per flow); tested against humantime's formatting.
pub fn rfc3339(ns_since_epoch: u64) -> Timestamp {
    let secs = ns_since_epoch / 1_000_000_000;
    let micros = (ns_since_epoch % 1_000_000_000 / 1000) as u32;
    let (year, month, day) = civil_from_days(secs / 86_400);
    let s = (secs % 86_400) as u32;
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut digits = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    // u64 nanoseconds end in the year 2554: four digits always suffice.
    digits(0, 4, year);
    digits(5, 2, month);
    digits(8, 2, day);
    digits(11, 2, s / 3600);
    digits(14, 2, s / 60 % 60);
    digits(17, 2, s % 60);
    digits(20, 6, micros);
    Timestamp::from_ascii(&b)
}

/// Milliseconds since the epoch of a time [`rfc3339`] wrote (`None` for any other text):
/// what exporters with integer times (IPFIX) carry, equal to the record's own field.
pub fn rfc3339_millis(t: &str) -> Option<u64> {
    rfc3339_micros(t).map(|us| us / 1000)
}

/// Microseconds since the epoch of a time [`rfc3339`] wrote (`None` for any other text).
pub fn rfc3339_micros(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    let shape = b.len() == 27
        && [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (26, b'Z'),
        ]
        .iter()
        .all(|&(i, c)| b[i] == c);
    if !shape {
        return None;
    }
    let num = |at: usize, width: usize| -> Option<u64> {
        b[at..at + width].iter().try_fold(0u64, |v, &d| {
            d.is_ascii_digit().then(|| v * 10 + u64::from(d - b'0'))
        })
    };
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, m, s, micros) = (num(11, 2)?, num(14, 2)?, num(17, 2)?, num(20, 6)?);
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s;
    Some(secs * 1_000_000 + micros)
}

/// Days from 1970-01-01 to a proleptic Gregorian date on or after it (the inverse of
/// [`civil_from_days`], Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y % 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// for days on or after the epoch).
fn civil_from_days(days: u64) -> (u32, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400) as u32 + u32::from(month <= 2);
    (year, month, day)
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
    use std::time::SystemTime;

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
    fn timestamps_match_humantime_over_the_whole_u64_range() {
        let humantime = |ns: u64| {
            let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(ns);
            humantime::format_rfc3339_micros(t).to_string()
        };
        let day = 86_400 * 1_000_000_000u64;
        // Leap days, century and 400-year boundaries, the ends of months and of the range.
        let mut cases = vec![0, 1, 999, 1000, u64::MAX, u64::MAX - day, day - 1, day];
        let leap =
            |y: u64| y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
        for (y, m, d) in [(2000, 2, 29), (2100, 3, 1), (2024, 12, 31), (2400, 2, 29)] {
            let days = (1970..y).map(|y| 365 + u64::from(leap(y))).sum::<u64>()
                + [0u64, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][m - 1]
                + u64::from(m > 2 && leap(y))
                + (d - 1);
            cases.extend([days * day - 1, days * day, days * day + day - 1]);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push(x);
        }
        for ns in cases {
            assert_eq!(rfc3339(ns), humantime(ns), "{ns} ns");
        }
    }

    #[test]
    fn millis_read_back_what_rfc3339_wrote() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ns = x % 8_000_000_000_000_000_000;
            assert_eq!(
                rfc3339_millis(&rfc3339(ns)),
                Some(ns / 1_000_000),
                "{ns} ns"
            );
        }
        assert_eq!(rfc3339_millis("1970-01-01T00:00:00.000999Z"), Some(0));
        assert_eq!(
            rfc3339_millis("2024-02-29T23:59:59.999999Z"),
            Some(1_709_251_199_999)
        );
        for bad in [
            "",
            "2024-02-29 23:59:59.999999Z",
            "2024-13-01T00:00:00.000000Z",
            "2024-01-01T00:00:00.00000xZ",
        ] {
            assert_eq!(rfc3339_millis(bad), None, "{bad}");
        }
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
