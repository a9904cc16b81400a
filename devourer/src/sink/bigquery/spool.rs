//! The on-disk spool in front of BigQuery: rows are appended to a table's open segment file,
//! segments are sealed into batches (by rows, bytes or age), and a sealed segment is deleted
//! only once BigQuery has acknowledged it. At start, segments left by an earlier run (sealed or
//! still open when it died) are sent first.

use std::{
    collections::{BTreeMap, VecDeque},
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

/// When a batch is complete.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub rows: usize,
    pub bytes: u64,
    pub age: Duration,
}

struct Open {
    path: PathBuf,
    file: File,
    rows: usize,
    bytes: u64,
    opened: Instant,
}

#[derive(Default)]
struct Table {
    open: Option<Open>,
    sealed: VecDeque<(u64, PathBuf)>,
}

struct Inner {
    tables: BTreeMap<String, Table>,
    bytes: u64,
    next_seq: u64,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    limits: Limits,
    inner: Mutex<Inner>,
}

/// A batch ready to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub table: String,
    pub path: PathBuf,
}

fn seq_of(path: &Path) -> Option<u64> {
    path.file_stem()?.to_str()?.parse().ok()
}

impl Spool {
    /// Opens (creating) the spool under `dir` for `tables`, recovering what an earlier run left.
    pub fn open(dir: &Path, max_bytes: u64, limits: Limits, tables: &[&str]) -> io::Result<Self> {
        let mut inner = Inner {
            tables: BTreeMap::new(),
            bytes: 0,
            next_seq: 0,
        };
        for t in tables {
            let tdir = dir.join(t);
            fs::create_dir_all(&tdir)?;
            let mut found: Vec<(u64, PathBuf)> = Vec::new();
            for entry in fs::read_dir(&tdir)? {
                let path = entry?.path();
                let Some(seq) = seq_of(&path) else { continue };
                let path = match path.extension().and_then(|e| e.to_str()) {
                    Some("jsonl") => path,
                    // A segment still open when an earlier run stopped: seal it now.
                    Some("open") => {
                        let sealed = path.with_extension("jsonl");
                        fs::rename(&path, &sealed)?;
                        sealed
                    }
                    _ => continue,
                };
                let len = fs::metadata(&path)?.len();
                if len == 0 {
                    fs::remove_file(&path)?;
                    continue;
                }
                inner.bytes += len;
                inner.next_seq = inner.next_seq.max(seq + 1);
                found.push((seq, path));
            }
            found.sort();
            inner.tables.insert(
                (*t).to_owned(),
                Table {
                    open: None,
                    sealed: found.into(),
                },
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            limits,
            inner: Mutex::new(inner),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes held on disk.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().expect("spool lock").bytes
    }

    /// Appends rows (JSON lines, `rows` of them) to `table`. Refuses them when the spool would
    /// grow past its cap (the caller counts them as dropped).
    pub fn append(&self, table: &str, lines: &[u8], rows: usize) -> io::Result<bool> {
        let mut g = self.inner.lock().expect("spool lock");
        let inner = &mut *g;
        if inner.bytes + lines.len() as u64 > self.max_bytes {
            return Ok(false);
        }
        let Some(t) = inner.tables.get_mut(table) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no spool for table {table}"),
            ));
        };
        if t.open.is_none() {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let path = self.dir.join(table).join(format!("{seq:020}.open"));
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            t.open = Some(Open {
                path,
                file,
                rows: 0,
                bytes: 0,
                opened: Instant::now(),
            });
        }
        let open = t.open.as_mut().expect("just opened");
        open.file.write_all(lines)?;
        open.rows += rows;
        open.bytes += lines.len() as u64;
        inner.bytes += lines.len() as u64;
        if open.rows >= self.limits.rows || open.bytes >= self.limits.bytes {
            Self::seal(t)?;
        }
        Ok(true)
    }

    fn seal(t: &mut Table) -> io::Result<()> {
        if let Some(open) = t.open.take() {
            open.file.sync_data()?;
            let sealed = open.path.with_extension("jsonl");
            fs::rename(&open.path, &sealed)?;
            let seq = seq_of(&sealed).expect("segment names are numbers");
            t.sealed.push_back((seq, sealed));
        }
        Ok(())
    }

    /// Seals open segments older than the batch age (or all of them with `all`).
    pub fn seal_due(&self, all: bool) -> io::Result<()> {
        let mut g = self.inner.lock().expect("spool lock");
        for t in g.tables.values_mut() {
            let due = t
                .open
                .as_ref()
                .is_some_and(|o| all || o.opened.elapsed() >= self.limits.age);
            if due {
                Self::seal(t)?;
            }
        }
        Ok(())
    }

    /// The oldest sealed segment of any table.
    pub fn next(&self) -> Option<Segment> {
        let g = self.inner.lock().expect("spool lock");
        g.tables
            .iter()
            .filter_map(|(name, t)| t.sealed.front().map(|(seq, p)| (*seq, name, p)))
            .min_by_key(|(seq, _, _)| *seq)
            .map(|(_, name, p)| Segment {
                table: name.clone(),
                path: p.clone(),
            })
    }

    /// Whether anything (sealed or open) waits to be sent.
    pub fn is_empty(&self) -> bool {
        let g = self.inner.lock().expect("spool lock");
        g.tables
            .values()
            .all(|t| t.sealed.is_empty() && t.open.is_none())
    }

    /// Deletes a segment BigQuery acknowledged.
    pub fn done(&self, seg: &Segment) -> io::Result<()> {
        let mut g = self.inner.lock().expect("spool lock");
        let len = fs::metadata(&seg.path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(&seg.path)?;
        g.bytes = g.bytes.saturating_sub(len);
        if let Some(t) = g.tables.get_mut(&seg.table) {
            t.sealed.retain(|(_, p)| *p != seg.path);
        }
        Ok(())
    }

    /// Replaces a segment's rows with `lines` (what is left to send), atomically.
    pub fn rewrite(&self, seg: &Segment, lines: &[u8]) -> io::Result<()> {
        if lines.is_empty() {
            return self.done(seg);
        }
        let mut g = self.inner.lock().expect("spool lock");
        let old = fs::metadata(&seg.path).map(|m| m.len()).unwrap_or(0);
        let tmp = seg.path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(lines)?;
            f.sync_data()?;
        }
        fs::rename(&tmp, &seg.path)?;
        g.bytes = g.bytes.saturating_sub(old) + lines.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            rows: 3,
            bytes: 1 << 20,
            age: Duration::from_secs(3600),
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("devourer-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn batches_seal_by_rows_and_go_in_order() {
        let dir = tmp("order");
        let s = Spool::open(&dir, 1 << 20, limits(), &["flows", "dns"]).unwrap();
        assert!(
            s.append("flows", b"{\"id\":\"a\"}\n{\"id\":\"b\"}\n", 2)
                .unwrap()
        );
        assert_eq!(s.next(), None, "two rows: not a batch yet");
        assert!(s.append("dns", b"{\"id\":\"x\"}\n", 1).unwrap());
        assert!(s.append("flows", b"{\"id\":\"c\"}\n", 1).unwrap());
        let first = s.next().unwrap();
        assert_eq!(first.table, "flows");
        s.seal_due(true).unwrap();
        s.done(&first).unwrap();
        assert_eq!(s.next().unwrap().table, "dns");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_restart_finds_sealed_and_open_segments() {
        let dir = tmp("restart");
        {
            let s = Spool::open(&dir, 1 << 20, limits(), &["flows"]).unwrap();
            s.append("flows", b"1\n2\n3\n", 3).unwrap();
            s.append("flows", b"4\n", 1).unwrap();
            // Dropped without sealing: as if killed.
        }
        let s = Spool::open(&dir, 1 << 20, limits(), &["flows"]).unwrap();
        assert_eq!(s.bytes(), 8);
        let a = s.next().unwrap();
        assert_eq!(fs::read(&a.path).unwrap(), b"1\n2\n3\n");
        s.done(&a).unwrap();
        let b = s.next().unwrap();
        assert_eq!(fs::read(&b.path).unwrap(), b"4\n");
        s.rewrite(&b, b"").unwrap();
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_cap_refuses_rows_instead_of_growing() {
        let dir = tmp("cap");
        let s = Spool::open(&dir, 10, limits(), &["flows"]).unwrap();
        assert!(s.append("flows", b"12345678\n", 1).unwrap());
        assert!(!s.append("flows", b"abc\n", 1).unwrap());
        assert_eq!(s.bytes(), 9);
        let _ = fs::remove_dir_all(&dir);
    }
}
