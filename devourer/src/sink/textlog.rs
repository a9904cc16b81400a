//! The packetlog text log sinks, one for DNS lines and one for HTTP lines: files that roll
//! over hourly (DNS) or daily (HTTP), one per kind (CQ, CR, SQ, SR) when split, reopened on
//! SIGHUP.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, BufWriter, Write},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use super::{Sink, SinkReport, Status};
use crate::{
    base::{
        files,
        time::{Civil, civil},
    },
    record::{Batch, Kind, LogRecord},
};

/// How often a new file starts, which also sets the line's time stamp: hourly files have
/// `HH:MM:SS.mmm` lines (packetlog dnslog), daily files `YYYY-MM-DD HH:MM:SS.mmm` (httplog).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Hourly,
    Daily,
}

/// Which log: the record kind it takes, its file name prefix and period.
#[derive(Clone, Copy, Debug)]
struct Spec {
    kind: Kind,
    name: &'static str,
    period: Period,
}

/// Hourly `dns-YYYYMMDD-HH.log` files (packetlog dnslog).
const DNS: Spec = Spec {
    kind: Kind::DnsLog,
    name: "dns",
    period: Period::Hourly,
};
/// Daily `http-YYYYMMDD.log` files (packetlog httplog).
const HTTP: Spec = Spec {
    kind: Kind::HttpLog,
    name: "http",
    period: Period::Daily,
};

/// Writes log lines into `NAME-STAMP.log` files (or `NAME-KIND-STAMP.log` when split), keeping
/// the files of the current period open.
pub struct TextLog {
    spec: Spec,
    dir: PathBuf,
    split: bool,
    local: bool,
    open: HashMap<String, BufWriter<File>>,
    counts: Arc<LogCounts>,
    failing: bool,
}

/// Lines written and lines lost.
#[derive(Debug, Default)]
pub struct LogCounts {
    pub lines: AtomicU64,
    pub failed: AtomicU64,
}

impl Status for LogCounts {
    fn report(&self) -> SinkReport {
        SinkReport {
            outcomes: vec![
                ("written", self.lines.load(Ordering::Relaxed)),
                ("dropped", self.failed.load(Ordering::Relaxed)),
            ],
            ..SinkReport::default()
        }
    }
}

impl TextLog {
    /// The DNS log.
    pub fn dns(dir: PathBuf, split: bool, local: bool) -> io::Result<Self> {
        Self::new(DNS, dir, split, local)
    }

    /// The HTTP log.
    pub fn http(dir: PathBuf, split: bool, local: bool) -> io::Result<Self> {
        Self::new(HTTP, dir, split, local)
    }

    fn new(spec: Spec, dir: PathBuf, split: bool, local: bool) -> io::Result<Self> {
        files::create_dir_all(&dir)?;
        Ok(Self {
            spec,
            dir,
            split,
            local,
            open: HashMap::new(),
            counts: Arc::default(),
            failing: false,
        })
    }

    fn file_name(&self, c: &Civil, kind: &str) -> String {
        let stamp = match self.spec.period {
            Period::Hourly => format!("{:04}{:02}{:02}-{:02}", c.year, c.month, c.day, c.hour),
            Period::Daily => format!("{:04}{:02}{:02}", c.year, c.month, c.day),
        };
        let name = self.spec.name;
        if self.split {
            format!("{name}-{kind}-{stamp}.log")
        } else {
            format!("{name}-{stamp}.log")
        }
    }

    pub fn write_line(&mut self, l: &LogRecord) {
        let c = civil(l.wall_ns, self.local);
        let name = self.file_name(&c, l.kind);
        let time = format!("{:02}:{:02}:{:02}.{:03}", c.hour, c.min, c.sec, c.ms);
        let text = match self.spec.period {
            Period::Hourly => format!("{time} {}\n", l.body),
            Period::Daily => format!(
                "{:04}-{:02}-{:02} {time} {}\n",
                c.year, c.month, c.day, l.body
            ),
        };
        let res = self.file(&name).and_then(|f| f.write_all(text.as_bytes()));
        match res {
            Ok(()) => {
                self.counts.lines.fetch_add(1, Ordering::Relaxed);
                self.failing = false;
            }
            Err(e) => {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
                if !self.failing {
                    tracing::error!(dir = %self.dir.display(), log = self.spec.name, "writing the text log failed: {e}; lines are dropped and counted");
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
            let f = files::open_append(&self.dir.join(name))?;
            self.open.insert(name.to_owned(), BufWriter::new(f));
        }
        Ok(self.open.get_mut(name).expect("just opened"))
    }

    pub fn flush(&mut self) {
        for (name, f) in &mut self.open {
            if let Err(e) = f.flush() {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file = %name, "flushing the text log failed: {e}");
            }
        }
    }
}

impl Sink for TextLog {
    fn name(&self) -> &'static str {
        match self.spec.kind {
            Kind::HttpLog => "http_log",
            _ => "dns_log",
        }
    }

    fn takes(&self, kind: Kind) -> bool {
        kind == self.spec.kind
    }

    fn write(&mut self, batch: Batch<'_>) -> bool {
        if let Batch::DnsLog(lines) | Batch::HttpLog(lines) = batch {
            for l in lines {
                self.write_line(l);
            }
        }
        self.flush();
        true
    }

    /// Closes the open files; the next line opens them again (after logrotate moved them).
    fn reopen(&mut self) {
        self.flush();
        self.open.clear();
    }

    fn status(&self) -> Arc<dyn Status> {
        self.counts.clone()
    }

    fn finish(mut self: Box<Self>, _deadline: Instant) -> u64 {
        self.flush();
        let failed = self.counts.failed.load(Ordering::Relaxed);
        tracing::info!(
            log = self.spec.name,
            lines = self.counts.lines.load(Ordering::Relaxed),
            failed,
            "text log"
        );
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        base::{local::Role, time::Clock},
        decode::dns::{logline::line, message::parse, testwire::*},
    };

    fn rec(l: crate::decode::LogLine) -> LogRecord {
        LogRecord::new(l, Clock::default())
    }

    #[test]
    fn files_are_hourly_and_split_by_kind_on_request() {
        let dir = std::env::temp_dir().join(format!("devourer-dnslog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // 2019-08-26T16:56:49.465Z
        let ts = 1_566_838_609_465_000_000;
        let q = parse(&query(1, "a.example", 1)).unwrap();
        let mut log = TextLog::dns(dir.clone(), false, false).unwrap();
        log.write_line(&rec(line(
            ts,
            "10.0.0.1#5000",
            "10.0.0.2#53",
            Role::Client,
            &q,
        )));
        log.flush();
        let text = std::fs::read_to_string(dir.join("dns-20190826-16.log")).unwrap();
        assert_eq!(
            text,
            "16:56:49.465 10.0.0.1#5000 10.0.0.2#53 SQ 0001 00 a.example IN A\n"
        );
        let mut split = TextLog::dns(dir.clone(), true, false).unwrap();
        split.write_line(&rec(line(
            ts,
            "10.0.0.1#5000",
            "10.0.0.2#53",
            Role::Server,
            &q,
        )));
        split.flush();
        assert!(dir.join("dns-CQ-20190826-16.log").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn each_text_log_takes_only_its_own_kind() {
        let dir = std::env::temp_dir().join(format!("devourer-kinds-{}", std::process::id()));
        let http = TextLog::http(dir.clone(), false, false).unwrap();
        assert!(http.takes(Kind::HttpLog) && !http.takes(Kind::Http) && !http.takes(Kind::DnsLog));
        let dns = TextLog::dns(dir.clone(), false, false).unwrap();
        assert!(dns.takes(Kind::DnsLog) && !dns.takes(Kind::Dns) && !dns.takes(Kind::HttpLog));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
