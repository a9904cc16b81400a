//! The packetlog-compatible DNS text log: one line per message,
//! `HH:MM:SS.mmm SRC#PORT DST#PORT KIND ID RCODE [QD/AN/NS/AR] QNAME CLASS TYPE [TTL DATA]`,
//! in hourly files `dns-YYYYMMDD-HH.log` (or one file per kind with `--dns-log-split`).

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::PathBuf,
};

use super::message::{DnsMessage, class_name, type_name};
use crate::record::Clock;

/// Which side of a DNS exchange this host is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// This host answered (packetlog CQ/CR).
    Server,
    /// This host asked (packetlog SQ/SR).
    Client,
    /// Neither address is this host's.
    Transit,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
            Self::Transit => "transit",
        }
    }

    /// packetlog's kind of a query or response seen in this role.
    pub fn kind(self, response: bool) -> &'static str {
        match (self, response) {
            (Self::Server, false) => "CQ",
            (Self::Server, true) => "CR",
            (Self::Client, false) => "SQ",
            (Self::Client, true) => "SR",
            (Self::Transit, false) => "Q",
            (Self::Transit, true) => "R",
        }
    }
}

/// A log line before its time is formatted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Program clock.
    pub ts_ns: u64,
    pub kind: &'static str,
    /// Everything after the time.
    pub body: String,
}

/// The line for one message. `src`/`dst` are `ADDR#PORT`.
pub fn line(ts_ns: u64, src: &str, dst: &str, role: Role, m: &DnsMessage) -> LogLine {
    let kind = role.kind(m.response);
    let mut b = format!("{src} {dst} {kind} {:04X} {:02X}", m.id, m.rcode);
    if m.response {
        let [qd, an, ns, ar] = m.counts;
        let _ = write!(b, " {qd}/{an}/{ns}/{ar}");
    }
    let (qname, qclass, qtype) = match &m.question {
        Some(q) => (q.name.as_str(), class_name(q.qclass), type_name(q.qtype)),
        None => ("", "-".into(), "-".into()),
    };
    match m.answers.first() {
        Some(first) if m.response => {
            let _ = write!(
                b,
                " {qname} {qclass} {} {} {}",
                type_name(first.rtype),
                first.ttl,
                first.data_log
            );
            // An alias: show where the chain leads, as packetlog did.
            if first.rtype == 5 && m.answers.len() > 1 {
                let chain: Vec<String> = m.answers[1..]
                    .iter()
                    .map(|a| {
                        format!(
                            "{} {} {} {} {}",
                            a.name.trim_end_matches('.'),
                            a.ttl,
                            class_name(a.class),
                            type_name(a.rtype),
                            a.data_log
                        )
                    })
                    .collect();
                let _ = write!(b, " ({})", chain.join(", "));
            }
        }
        _ => {
            let _ = write!(b, " {qname} {qclass} {qtype}");
        }
    }
    LogLine {
        ts_ns,
        kind,
        body: b,
    }
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

/// Writes log lines into hourly files, keeping the files of the current hour open.
pub struct DnsLog {
    dir: PathBuf,
    split: bool,
    local: bool,
    open: HashMap<String, BufWriter<File>>,
    pub lines: u64,
    pub failed: u64,
    failing: bool,
}

impl DnsLog {
    pub fn new(dir: PathBuf, split: bool, local: bool) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            split,
            local,
            open: HashMap::new(),
            lines: 0,
            failed: 0,
            failing: false,
        })
    }

    fn file_name(&self, c: &Civil, kind: &str) -> String {
        let stamp = format!("{:04}{:02}{:02}-{:02}", c.year, c.month, c.day, c.hour);
        if self.split {
            format!("dns-{kind}-{stamp}.log")
        } else {
            format!("dns-{stamp}.log")
        }
    }

    pub fn write(&mut self, l: &LogLine, clock: Clock) {
        let c = civil(clock.wall(l.ts_ns), self.local);
        let name = self.file_name(&c, l.kind);
        let text = format!(
            "{:02}:{:02}:{:02}.{:03} {}\n",
            c.hour, c.min, c.sec, c.ms, l.body
        );
        let res = self.file(&name).and_then(|f| f.write_all(text.as_bytes()));
        match res {
            Ok(()) => {
                self.lines += 1;
                self.failing = false;
            }
            Err(e) => {
                self.failed += 1;
                if !self.failing {
                    tracing::error!(dir = %self.dir.display(), "writing the DNS log failed: {e}; lines are dropped and counted");
                    self.failing = true;
                }
            }
        }
    }

    fn file(&mut self, name: &str) -> io::Result<&mut BufWriter<File>> {
        if !self.open.contains_key(name) {
            // A new hour: close the previous hour's files.
            if self.open.len() >= 8 {
                self.flush();
                self.open.clear();
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(name))?;
            self.open.insert(name.to_owned(), BufWriter::new(f));
        }
        Ok(self.open.get_mut(name).expect("just opened"))
    }

    /// Closes the open files; the next line opens them again (after logrotate moved them).
    pub fn reopen(&mut self) {
        self.flush();
        self.open.clear();
    }

    pub fn flush(&mut self) {
        for (name, f) in &mut self.open {
            if let Err(e) = f.flush() {
                self.failed += 1;
                tracing::warn!(file = %name, "flushing the DNS log failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{message::parse, testwire::*};

    #[test]
    fn lines_follow_packetlog() {
        let q = parse(&query(0xfce9, "sukmoonlee.com", 6)).unwrap();
        let l = line(0, "172.1.214.14#33974", "172.1.214.13#53", Role::Server, &q);
        assert_eq!(
            l.body,
            "172.1.214.14#33974 172.1.214.13#53 CQ FCE9 00 sukmoonlee.com IN SOA"
        );
        assert_eq!(l.kind, "CQ");

        let r = parse(&response(
            0xa804,
            0,
            "www.sukmoonlee.com",
            28,
            &[
                cname("www.sukmoonlee.com", 1800, "ghs.google.com"),
                aaaa(
                    "ghs.google.com",
                    300,
                    [
                        0x24, 0x04, 0x68, 0, 0x40, 0x04, 0x08, 0x06, 0, 0, 0, 0, 0, 0, 0x20, 0x13,
                    ],
                ),
            ],
        ))
        .unwrap();
        let l = line(0, "172.1.214.13#53", "172.1.214.14#9762", Role::Server, &r);
        assert_eq!(
            l.body,
            "172.1.214.13#53 172.1.214.14#9762 CR A804 00 1/2/0/0 www.sukmoonlee.com IN CNAME 1800 ghs.google.com (ghs.google.com 300 IN AAAA 2404:6800:4004:806::2013)"
        );

        let nx = parse(&response(0x39ac, 3, "nope.example", 1, &[])).unwrap();
        let l = line(
            0,
            "198.97.190.53#53",
            "172.1.214.13#9684",
            Role::Client,
            &nx,
        );
        assert_eq!(
            l.body,
            "198.97.190.53#53 172.1.214.13#9684 SR 39AC 03 1/0/0/0 nope.example IN A"
        );
        assert_eq!(Role::Transit.kind(false), "Q");
    }

    #[test]
    fn files_are_hourly_and_split_by_kind_on_request() {
        let dir = std::env::temp_dir().join(format!("devourer-dnslog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let clock = Clock::default();
        // 2019-08-26T16:56:49.465Z
        let ts = 1_566_838_609_465_000_000;
        let q = parse(&query(1, "a.example", 1)).unwrap();
        let mut log = DnsLog::new(dir.clone(), false, false).unwrap();
        log.write(
            &line(ts, "10.0.0.1#5000", "10.0.0.2#53", Role::Client, &q),
            clock,
        );
        log.flush();
        let text = std::fs::read_to_string(dir.join("dns-20190826-16.log")).unwrap();
        assert_eq!(
            text,
            "16:56:49.465 10.0.0.1#5000 10.0.0.2#53 SQ 0001 00 a.example IN A\n"
        );
        let mut split = DnsLog::new(dir.clone(), true, false).unwrap();
        split.write(
            &line(ts, "10.0.0.1#5000", "10.0.0.2#53", Role::Server, &q),
            clock,
        );
        split.flush();
        assert!(dir.join("dns-CQ-20190826-16.log").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
