//! packetlog-style text logs shared by DNS and HTTP: the CQ/CR/SQ/SR role of a line, and files
//! that roll over hourly or daily (one per kind when split), reopened on SIGHUP.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::PathBuf,
};

use crate::record::Clock;

/// Which side of an exchange (DNS, HTTP) this host is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// This host answered: the server (packetlog CQ/CR).
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

    /// packetlog's kind of a query (request) or response seen in this role.
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

/// How often a new file starts, which also sets the line's time stamp: hourly files have
/// `HH:MM:SS.mmm` lines (packetlog dnslog), daily files `YYYY-MM-DD HH:MM:SS.mmm` (httplog).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Hourly,
    Daily,
}

/// Writes log lines into `NAME-STAMP.log` files (or `NAME-KIND-STAMP.log` when split), keeping
/// the files of the current period open.
pub struct TextLog {
    name: &'static str,
    period: Period,
    dir: PathBuf,
    split: bool,
    local: bool,
    open: HashMap<String, BufWriter<File>>,
    pub lines: u64,
    pub failed: u64,
    failing: bool,
}

impl TextLog {
    pub fn new(
        name: &'static str,
        period: Period,
        dir: PathBuf,
        split: bool,
        local: bool,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            name,
            period,
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
        let stamp = match self.period {
            Period::Hourly => format!("{:04}{:02}{:02}-{:02}", c.year, c.month, c.day, c.hour),
            Period::Daily => format!("{:04}{:02}{:02}", c.year, c.month, c.day),
        };
        let name = self.name;
        if self.split {
            format!("{name}-{kind}-{stamp}.log")
        } else {
            format!("{name}-{stamp}.log")
        }
    }

    pub fn write(&mut self, l: &LogLine, clock: Clock) {
        let c = civil(clock.wall(l.ts_ns), self.local);
        let name = self.file_name(&c, l.kind);
        let time = format!("{:02}:{:02}:{:02}.{:03}", c.hour, c.min, c.sec, c.ms);
        let text = match self.period {
            Period::Hourly => format!("{time} {}\n", l.body),
            Period::Daily => format!(
                "{:04}-{:02}-{:02} {time} {}\n",
                c.year, c.month, c.day, l.body
            ),
        };
        let res = self.file(&name).and_then(|f| f.write_all(text.as_bytes()));
        match res {
            Ok(()) => {
                self.lines += 1;
                self.failing = false;
            }
            Err(e) => {
                self.failed += 1;
                if !self.failing {
                    tracing::error!(dir = %self.dir.display(), log = self.name, "writing the text log failed: {e}; lines are dropped and counted");
                    self.failing = true;
                }
            }
        }
    }

    fn file(&mut self, name: &str) -> io::Result<&mut BufWriter<File>> {
        if !self.open.contains_key(name) {
            // A new period: close the previous period's files.
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
                tracing::warn!(file = %name, "flushing the text log failed: {e}");
            }
        }
    }
}
