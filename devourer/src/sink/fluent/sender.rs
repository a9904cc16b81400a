//! The Forward sender thread: sends sealed spool segments, oldest first, one PackedForward
//! message each, over one connection kept open between them; a segment leaves the spool only
//! once its ack came. Each tag has its own backoff (a message the receiver keeps refusing
//! holds up only its tag). A failure (no connection, no ack in time, a refused handshake)
//! closes the connection and the same segment is sent again after its tag's backoff; a
//! connection the receiver closed while idle is replaced at once. Spool lines that are not
//! events (torn by a crash, corrupt) go to the quarantine file, never to the receiver.

use std::{
    io::{self, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use rmpv::Value;

use super::{FluentConfig, FluentStats, add, tls, wire};
use crate::sink::{
    remote::{self, Shutdown},
    spool::{
        Segment, Spool,
        rejects::{Kept, Rejects},
    },
};

pub(super) struct Sender {
    pub cfg: FluentConfig,
    pub spool: Arc<Spool>,
    pub stats: Arc<FluentStats>,
    pub shutdown: Shutdown,
    pub rejects: Rejects,
}

/// A connection to the receiver: the stream (plain or TLS) behind a reader for its answers,
/// the socket itself (for timeouts), and whether a message went over it already.
struct Conn {
    reader: BufReader<Timed>,
    used: bool,
}

/// The stream, each read and write bounded by one deadline for the whole exchange (a
/// receiver that trickles bytes cannot hold the sender past `--fluent-timeout`).
struct Timed {
    stream: Box<dyn tls::Stream>,
    socket: TcpStream,
    deadline: Instant,
}

impl Timed {
    fn remaining(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer within --fluent-timeout",
            ));
        }
        Ok(left)
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.set_read_timeout(Some(self.remaining()?))?;
        self.stream.read(buf)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.set_write_timeout(Some(self.remaining()?))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.set_write_timeout(Some(self.remaining()?))?;
        self.stream.flush()
    }
}

/// A reader and its stream's writer as one (for the handshake).
struct Both<'a>(&'a mut BufReader<Timed>);

impl Read for Both<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Both<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.get_mut().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.get_mut().flush()
    }
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("connecting to {0}: {1}")]
    Connect(String, io::Error),
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    #[error("reading the spool: {0}")]
    Spool(io::Error),
}

/// Whether a decoded spool line is one event: `[EventTime or integer time, map]`, nothing
/// after it.
fn is_event(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    match rmpv::decode::read_value(&mut rest) {
        Ok(Value::Array(a)) if rest.is_empty() && a.len() == 2 => {
            matches!(a[0], Value::Ext(0, ref t) if t.len() == 8) && matches!(a[1], Value::Map(_))
        }
        _ => false,
    }
}

/// The sender and its connection, kept open between messages.
struct Connected {
    sender: Sender,
    conn: Option<Conn>,
}

impl remote::Deliver for Connected {
    type Error = SendError;

    fn deliver(&mut self, seg: &Segment) -> Result<(), SendError> {
        let result = self.sender.deliver(&mut self.conn, seg);
        // A connection kept open between messages may have been closed by the receiver
        // meanwhile: one more try at once, on a fresh one.
        if result.is_err() && self.conn.as_ref().is_some_and(|c| c.used) {
            self.conn = None;
            return self.sender.deliver(&mut self.conn, seg);
        }
        result
    }

    fn failed(&mut self, seg: &Segment, e: SendError) {
        self.conn = None;
        add(&self.sender.stats.errors, 1);
        tracing::warn!(
            tag = seg.table,
            addr = self.sender.cfg.addr,
            "Forward: {e}; sending again after a pause"
        );
    }
}

impl Sender {
    pub fn run(self) {
        for torn in self.spool.take_torn() {
            self.quarantine(&torn.table, "torn (a crash during an append)", &torn.bytes);
        }
        let (spool, shutdown) = (self.spool.clone(), self.shutdown.clone());
        let (base, max) = (self.cfg.backoff_base, self.cfg.backoff_max);
        let mut d = Connected {
            sender: self,
            conn: None,
        };
        remote::drain(&spool, &shutdown, base, max, "fluent", &mut d);
    }

    /// The receiver's addresses, each tried in turn.
    fn connect(&self) -> Result<Conn, SendError> {
        let fail = |e| SendError::Connect(self.cfg.addr.clone(), e);
        let addrs: Vec<SocketAddr> = self.cfg.addr.to_socket_addrs().map_err(fail)?.collect();
        let mut last = io::Error::other("no address");
        let socket = addrs
            .iter()
            .find_map(|a| match TcpStream::connect_timeout(a, self.cfg.timeout) {
                Ok(s) => Some(s),
                Err(e) => {
                    last = e;
                    None
                }
            })
            .ok_or_else(|| fail(last))?;
        socket.set_nodelay(true).map_err(fail)?;
        let deadline = Instant::now() + self.cfg.timeout;
        let host = self
            .cfg
            .addr
            .rsplit_once(':')
            .map_or(&*self.cfg.addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let clone = socket.try_clone().map_err(fail)?;
        // The TLS handshake within the same deadline.
        clone
            .set_read_timeout(Some(self.cfg.timeout))
            .map_err(fail)?;
        clone
            .set_write_timeout(Some(self.cfg.timeout))
            .map_err(fail)?;
        let stream = tls::wrap(self.cfg.tls.as_ref(), host, socket).map_err(fail)?;
        add(&self.stats.connects, 1);
        let mut reader = BufReader::new(Timed {
            stream,
            socket: clone,
            deadline,
        });
        if let Some(key) = &self.cfg.shared_key {
            wire::handshake(&mut Both(&mut reader), &self.cfg.hostname, key)?;
        }
        Ok(Conn {
            reader,
            used: false,
        })
    }

    fn quarantine(&self, tag: &str, why: &str, raw: &[u8]) {
        add(&self.stats.quarantined, 1);
        match self.rejects.quarantine(tag, why, raw) {
            Ok(Kept::Stored) => tracing::warn!(
                tag,
                file = %self.rejects.quarantine_path().display(),
                "a Forward spool line that is no event ({why}) was quarantined"
            ),
            Ok(Kept::Full) => {}
            Err(e) => tracing::error!(tag, "quarantining a Forward spool line failed: {e}"),
        }
    }

    /// Sends one segment and waits for its ack; then it leaves the spool.
    fn deliver(&self, conn: &mut Option<Conn>, seg: &Segment) -> Result<(), SendError> {
        let text = std::fs::read(&seg.path).map_err(SendError::Spool)?;
        let mut events = Vec::with_capacity(text.len());
        let mut count = 0usize;
        let mut bad = Vec::new();
        for l in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match base64::engine::general_purpose::STANDARD.decode(l) {
                Ok(e) if is_event(&e) => {
                    events.extend_from_slice(&e);
                    count += 1;
                }
                _ => bad.push(l),
            }
        }
        if count > 0 {
            if conn.is_none() {
                *conn = Some(self.connect()?);
            }
            let c = conn.as_mut().expect("connected");
            c.reader.get_mut().deadline = Instant::now() + self.cfg.timeout;
            let chunk = wire::chunk_id();
            let message = wire::packed_forward(&self.cfg.tag(&seg.table), &events, count, &chunk);
            let w = c.reader.get_mut();
            let sent = w.write_all(&message).and_then(|()| w.flush());
            let acked = sent
                .map_err(wire::WireError::Io)
                .and_then(|()| wire::read_ack(&mut c.reader, &chunk));
            c.used = true;
            if let Err(e) = acked {
                add(&self.stats.retried, count as u64);
                return Err(e.into());
            }
            add(&self.stats.sent, count as u64);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            self.stats
                .last_success
                .store(now.as_secs(), Ordering::Relaxed);
        }
        // Acknowledged (or nothing to send): what was not an event is kept aside first.
        for l in bad {
            self.quarantine(&seg.table, "not an event", l);
        }
        self.spool.done(seg).map_err(SendError::Spool)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::record::OverflowRecord;

    #[test]
    fn only_a_whole_event_passes_for_one() {
        let mut e = Vec::new();
        wire::event(&mut e, SystemTime::now(), &OverflowRecord::sample());
        assert!(is_event(&e));
        let mut trailing = e.clone();
        trailing.push(0xc0);
        assert!(!is_event(&trailing), "bytes after it");
        assert!(!is_event(&e[..e.len() - 1]), "cut short");
        let mut int = Vec::new();
        rmp::encode::write_uint(&mut int, 7).unwrap();
        assert!(!is_event(&int), "a bare value");
    }
}
