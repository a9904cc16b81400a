//! The on-disk spool in front of a remote sink (BigQuery): rows are appended to a table's open
//! segment file and made durable (fdatasync, and the directory after a create or rename) before they count as
//! spooled; a segment never holds more than one batch (rows and bytes checked before each
//! line is appended), is sealed by those limits or by age, and is deleted only once BigQuery
//! has acknowledged it. At start, segments left by an earlier run (sealed or still open when
//! it died) are sent first; a torn last line (a crash during an append) is cut off and handed
//! back to be quarantined.

pub mod intake;
pub mod rejects;

use std::{
    collections::{BTreeMap, VecDeque},
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::base::files;

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

/// Makes a directory's entries (a created or renamed file) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The tail of an interrupted append: bytes after the last newline of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub table: String,
    pub bytes: Vec<u8>,
}

/// Cuts `path` back to its last newline; returns what was cut.
fn cut_torn_tail(path: &Path) -> io::Result<Vec<u8>> {
    let data = fs::read(path)?;
    let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if keep == data.len() {
        return Ok(Vec::new());
    }
    let tail = data[keep..].to_vec();
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(keep as u64)?;
    f.sync_all()?;
    Ok(tail)
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
    /// `inner.bytes` as of the last change, readable without the lock (an append may hold it
    /// through a slow fsync).
    held: AtomicU64,
    /// Torn lines found at start, for the sender to quarantine.
    torn: Mutex<Vec<TornTail>>,
}

/// The spool's state while locked: publishes its size on unlock.
struct Locked<'a> {
    guard: MutexGuard<'a, Inner>,
    held: &'a AtomicU64,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.held.store(self.guard.bytes, Ordering::Relaxed);
    }
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
        let mut torn = Vec::new();
        files::create_dir_all(dir)?;
        for t in tables {
            let tdir = dir.join(t);
            if !tdir.exists() {
                files::create_dir_all(&tdir)?;
                sync_dir(dir)?;
            }
            let mut found: Vec<(u64, PathBuf)> = Vec::new();
            for entry in fs::read_dir(&tdir)? {
                let path = entry?.path();
                let Some(seq) = seq_of(&path) else { continue };
                let path = match path.extension().and_then(|e| e.to_str()) {
                    Some("jsonl") => path,
                    // A segment still open when an earlier run stopped: cut a torn last line
                    // (kept for quarantine), then seal it.
                    Some("open") => {
                        let tail = cut_torn_tail(&path)?;
                        if !tail.is_empty() {
                            torn.push(TornTail {
                                table: (*t).to_owned(),
                                bytes: tail,
                            });
                        }
                        let sealed = path.with_extension("jsonl");
                        fs::rename(&path, &sealed)?;
                        sync_dir(&tdir)?;
                        sealed
                    }
                    // A rewrite interrupted before its rename: the segment itself is whole.
                    Some("tmp") => {
                        fs::remove_file(&path)?;
                        continue;
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
            held: AtomicU64::new(inner.bytes),
            inner: Mutex::new(inner),
            torn: Mutex::new(torn),
        })
    }

    /// The torn lines found at start (each returned once).
    pub fn take_torn(&self) -> Vec<TornTail> {
        std::mem::take(&mut *self.torn.lock().expect("spool lock"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes held on disk (never waits for the spool's lock).
    pub fn bytes(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// The state, locked; its size is published when the guard goes.
    fn lock(&self) -> Locked<'_> {
        Locked {
            guard: self.inner.lock().expect("spool lock"),
            held: &self.held,
        }
    }

    /// Appends rows (JSON lines) to `table`, durably: when this returns `Ok(true)` every row
    /// is on disk. A segment is sealed before a line would take it past the batch limits, so
    /// no batch BigQuery refuses for its size is ever written. Refuses the rows (`Ok(false)`)
    /// when the spool would grow past its cap (the caller counts them as dropped). On a write
    /// error the segment is cut back to its last whole row, so no torn line remains.
    pub fn append(&self, table: &str, lines: &[u8]) -> io::Result<bool> {
        let mut g = self.lock();
        let inner = &mut *g;
        if inner.bytes + lines.len() as u64 > self.max_bytes {
            return Ok(false);
        }
        if !inner.tables.contains_key(table) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no spool for table {table}"),
            ));
        }
        let mut chunk: Vec<u8> = Vec::new();
        let mut chunk_rows = 0;
        for line in lines.split_inclusive(|&b| b == b'\n') {
            let t = inner.tables.get_mut(table).expect("checked above");
            let (rows, bytes) = t.open.as_ref().map_or((0, 0), |o| (o.rows, o.bytes));
            let full = rows + chunk_rows + 1 > self.limits.rows
                || bytes + (chunk.len() + line.len()) as u64 > self.limits.bytes;
            if full && (rows + chunk_rows) > 0 {
                self.write(inner, table, &chunk, chunk_rows)?;
                chunk.clear();
                chunk_rows = 0;
                Self::seal(inner.tables.get_mut(table).expect("checked"))?;
            }
            chunk.extend_from_slice(line);
            chunk_rows += 1;
        }
        if chunk_rows > 0 {
            self.write(inner, table, &chunk, chunk_rows)?;
            let t = inner.tables.get_mut(table).expect("checked above");
            if t.open
                .as_ref()
                .is_some_and(|o| o.rows >= self.limits.rows || o.bytes >= self.limits.bytes)
            {
                Self::seal(t)?;
            }
        }
        Ok(true)
    }

    /// Appends whole rows to `table`'s open segment (creating one) and syncs them.
    fn write(&self, inner: &mut Inner, table: &str, chunk: &[u8], rows: usize) -> io::Result<()> {
        let t = inner.tables.get_mut(table).expect("checked by append");
        if t.open.is_none() {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let tdir = self.dir.join(table);
            let path = tdir.join(format!("{seq:020}.open"));
            let file = files::create_new(&path)?;
            sync_dir(&tdir)?;
            t.open = Some(Open {
                path,
                file,
                rows: 0,
                bytes: 0,
                opened: Instant::now(),
            });
        }
        let open = t.open.as_mut().expect("just opened");
        if let Err(e) = open
            .file
            .write_all(chunk)
            .and_then(|()| open.file.sync_data())
        {
            // Nothing half-written may stay: the next append would extend a torn line.
            if let Err(cut) = open.file.set_len(open.bytes) {
                tracing::error!(path = %open.path.display(), "cutting a failed append back failed: {cut}");
            }
            return Err(e);
        }
        open.rows += rows;
        open.bytes += chunk.len() as u64;
        inner.bytes += chunk.len() as u64;
        Ok(())
    }

    fn seal(t: &mut Table) -> io::Result<()> {
        if let Some(open) = t.open.take() {
            open.file.sync_data()?;
            let sealed = open.path.with_extension("jsonl");
            fs::rename(&open.path, &sealed)?;
            if let Some(parent) = sealed.parent() {
                sync_dir(parent)?;
            }
            let seq = seq_of(&sealed).expect("segment names are numbers");
            t.sealed.push_back((seq, sealed));
        }
        Ok(())
    }

    /// Seals open segments older than the batch age (or all of them with `all`).
    pub fn seal_due(&self, all: bool) -> io::Result<()> {
        let mut g = self.lock();
        // Each table on its own: one that cannot be sealed holds up only itself.
        let mut first_error = None;
        for t in g.tables.values_mut() {
            let due = t
                .open
                .as_ref()
                .is_some_and(|o| all || o.opened.elapsed() >= self.limits.age);
            if due && let Err(e) = Self::seal(t) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The oldest sealed segment of any table.
    pub fn next(&self) -> Option<Segment> {
        let g = self.lock();
        g.tables
            .iter()
            .filter_map(|(name, t)| t.sealed.front().map(|(seq, p)| (*seq, name, p)))
            .min_by_key(|(seq, _, _)| *seq)
            .map(|(_, name, p)| Segment {
                table: name.clone(),
                path: p.clone(),
            })
    }

    /// The oldest sealed segment of `table` (tables are sent independently: one that fails
    /// does not hold the others up).
    pub fn next_of(&self, table: &str) -> Option<Segment> {
        let g = self.lock();
        let t = g.tables.get(table)?;
        t.sealed.front().map(|(_, p)| Segment {
            table: table.to_owned(),
            path: p.clone(),
        })
    }

    /// The tables this spool holds.
    pub fn tables(&self) -> Vec<String> {
        let g = self.lock();
        g.tables.keys().cloned().collect()
    }

    /// Whether anything (sealed or open) waits to be sent.
    pub fn is_empty(&self) -> bool {
        let g = self.lock();
        g.tables
            .values()
            .all(|t| t.sealed.is_empty() && t.open.is_none())
    }

    /// Deletes a segment BigQuery acknowledged.
    pub fn done(&self, seg: &Segment) -> io::Result<()> {
        let mut g = self.lock();
        let len = fs::metadata(&seg.path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(&seg.path)?;
        if let Some(parent) = seg.path.parent() {
            sync_dir(parent)?;
        }
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
        let mut g = self.lock();
        let old = fs::metadata(&seg.path).map(|m| m.len()).unwrap_or(0);
        let tmp = seg.path.with_extension("tmp");
        {
            // A leftover of an interrupted rewrite is removed first (a link, not its target).
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = files::create_new(&tmp)?;
            f.write_all(lines)?;
            f.sync_data()?;
        }
        fs::rename(&tmp, &seg.path)?;
        if let Some(parent) = seg.path.parent() {
            sync_dir(parent)?;
        }
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
            s.append("flows", b"{\"id\":\"a\"}\n{\"id\":\"b\"}\n")
                .unwrap()
        );
        assert_eq!(s.next(), None, "two rows: not a batch yet");
        assert!(s.append("dns", b"{\"id\":\"x\"}\n").unwrap());
        assert!(s.append("flows", b"{\"id\":\"c\"}\n").unwrap());
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
            s.append("flows", b"1\n2\n3\n").unwrap();
            s.append("flows", b"4\n").unwrap();
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
        assert!(s.append("flows", b"12345678\n").unwrap());
        assert!(!s.append("flows", b"abc\n").unwrap());
        assert_eq!(s.bytes(), 9);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_append_never_makes_a_batch_past_the_limits() {
        let dir = tmp("limits");
        let lim = Limits {
            rows: 3,
            bytes: 10,
            age: Duration::from_secs(3600),
        };
        let s = Spool::open(&dir, 1 << 20, lim, &["flows"]).unwrap();
        // Seven rows of 2 bytes: batches of 3 rows (6 bytes), then the last one open.
        assert!(s.append("flows", b"a\nb\nc\nd\ne\nf\ng\n").unwrap());
        let mut batches = Vec::new();
        while let Some(seg) = s.next() {
            batches.push(fs::read(&seg.path).unwrap());
            s.done(&seg).unwrap();
        }
        assert_eq!(batches, [b"a\nb\nc\n".to_vec(), b"d\ne\nf\n".to_vec()]);
        // Bytes: g (still open) and 5-byte rows, at most 10 bytes a batch.
        assert!(s.append("flows", b"hhhh\niiii\njjjj\n").unwrap());
        s.seal_due(true).unwrap();
        let mut sizes = Vec::new();
        while let Some(seg) = s.next() {
            sizes.push(fs::read(&seg.path).unwrap().len());
            s.done(&seg).unwrap();
        }
        assert_eq!(
            sizes,
            [7, 10],
            "g+hhhh (iiii would pass 10 bytes), then iiii+jjjj"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_last_line_is_cut_off_at_restart_and_handed_back() {
        let dir = tmp("torn");
        fs::create_dir_all(dir.join("flow")).unwrap();
        fs::write(
            dir.join("flow/00000000000000000000.open"),
            b"{\"id\":\"good\"}\n{\"type\":\"flow\",\"id\":\"torn",
        )
        .unwrap();
        fs::write(dir.join("flow/00000000000000000001.tmp"), b"half a rewrite").unwrap();
        let s = Spool::open(&dir, 1 << 20, limits(), &["flow", "dns"]).unwrap();
        let torn = s.take_torn();
        assert_eq!(torn.len(), 1);
        assert_eq!(torn[0].table, "flow");
        assert_eq!(torn[0].bytes, b"{\"type\":\"flow\",\"id\":\"torn");
        assert!(s.take_torn().is_empty(), "handed back once");
        let seg = s.next().unwrap();
        assert_eq!(fs::read(&seg.path).unwrap(), b"{\"id\":\"good\"}\n");
        assert!(!dir.join("flow/00000000000000000001.tmp").exists());
        assert_eq!(s.next_of("dns"), None);
        assert_eq!(s.next_of("flow"), Some(seg));
        let _ = fs::remove_dir_all(&dir);
    }
}
