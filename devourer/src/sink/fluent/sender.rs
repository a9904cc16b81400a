//! The Forward sender thread: sends sealed spool segments, oldest first, one PackedForward
//! message each, over one connection kept open between them; a segment leaves the spool only
//! once its ack came. A failure (no connection, no ack in time, a refused handshake) closes
//! the connection and the same segment is sent again after a backoff.

use std::{
    io::{BufReader, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine;

use super::{FluentConfig, FluentStats, add, tls, wire};
use crate::sink::{
    backoff::Backoff,
    spool::{Segment, Spool},
};

pub(super) struct Sender {
    pub cfg: FluentConfig,
    pub spool: Arc<Spool>,
    pub stats: Arc<FluentStats>,
    pub stop: Arc<AtomicBool>,
    pub deadline: Arc<Mutex<Option<Instant>>>,
}

/// A connection to the receiver: its reader (acks) and the stream it writes to.
struct Conn {
    reader: BufReader<Box<dyn tls::Stream>>,
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    #[error("reading the spool: {0}")]
    Spool(std::io::Error),
}

impl Sender {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn past_deadline(&self) -> bool {
        self.stopping()
            && self
                .deadline
                .lock()
                .expect("deadline lock")
                .is_some_and(|d| Instant::now() >= d)
    }

    /// Sleeps `d`, or less when shutting down past the deadline.
    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until && !self.past_deadline() {
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
    }

    pub fn run(self) {
        for torn in self.spool.take_torn() {
            add(&self.stats.quarantined, 1);
            tracing::warn!(
                tag = torn.table,
                bytes = torn.bytes.len(),
                "a torn Forward spool line (a crash during an append) was dropped"
            );
        }
        let mut backoff = Backoff::new(self.cfg.backoff_base, self.cfg.backoff_max);
        let mut conn: Option<Conn> = None;
        loop {
            if let Err(e) = self.spool.seal_due(self.stopping()) {
                tracing::error!("sealing a Forward spool segment failed: {e}");
            }
            let Some(seg) = self.spool.next() else {
                if self.past_deadline() || self.stopping() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            match self.deliver(&mut conn, &seg) {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    conn = None;
                    add(&self.stats.errors, 1);
                    tracing::warn!(
                        tag = seg.table,
                        addr = self.cfg.addr,
                        "Forward: {e}; sending again after a pause"
                    );
                    self.pause(backoff.wait());
                }
            }
            if self.past_deadline() {
                return;
            }
        }
    }

    fn connect(&self) -> Result<Conn, SendError> {
        let fail = |e| SendError::Connect(self.cfg.addr.clone(), e);
        let addr = self
            .cfg
            .addr
            .to_socket_addrs()
            .map_err(fail)?
            .next()
            .ok_or_else(|| fail(std::io::Error::other("no address")))?;
        let s = TcpStream::connect_timeout(&addr, self.cfg.timeout).map_err(fail)?;
        s.set_read_timeout(Some(self.cfg.timeout)).map_err(fail)?;
        s.set_write_timeout(Some(self.cfg.timeout)).map_err(fail)?;
        s.set_nodelay(true).map_err(fail)?;
        let host = self
            .cfg
            .addr
            .rsplit_once(':')
            .map_or(&*self.cfg.addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let s = tls::wrap(self.cfg.tls.as_ref(), host, s).map_err(fail)?;
        add(&self.stats.connects, 1);
        let mut reader = BufReader::new(s);
        if let Some(key) = &self.cfg.shared_key {
            let mut both = Both(&mut reader);
            wire::handshake(&mut both, &self.cfg.hostname, key)?;
        }
        Ok(Conn { reader })
    }

    /// Sends one segment and waits for its ack; then it leaves the spool.
    fn deliver(&self, conn: &mut Option<Conn>, seg: &Segment) -> Result<(), SendError> {
        let text = std::fs::read(&seg.path).map_err(SendError::Spool)?;
        let mut events = Vec::with_capacity(text.len());
        let mut count = 0usize;
        for l in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match base64::engine::general_purpose::STANDARD.decode(l) {
                Ok(e) if rmpv::decode::read_value(&mut &e[..]).is_ok() => {
                    events.extend_from_slice(&e);
                    count += 1;
                }
                _ => {
                    add(&self.stats.quarantined, 1);
                    tracing::warn!(
                        tag = seg.table,
                        "a Forward spool line that is no event was skipped"
                    );
                }
            }
        }
        if count > 0 {
            if conn.is_none() {
                *conn = Some(self.connect()?);
            }
            let c = conn.as_mut().expect("connected");
            let chunk = wire::chunk_id();
            let message = wire::packed_forward(&self.cfg.tag(&seg.table), &events, count, &chunk);
            let sent = c
                .reader
                .get_mut()
                .write_all(&message)
                .and_then(|()| c.reader.get_mut().flush());
            if let Err(e) = sent
                .map_err(wire::WireError::Io)
                .and_then(|()| wire::read_ack(&mut c.reader, &chunk))
            {
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
        self.spool.done(seg).map_err(SendError::Spool)
    }
}

/// A buffered reader and its stream's writer as one, for the handshake.
struct Both<'a>(&'a mut BufReader<Box<dyn tls::Stream>>);

impl Read for Both<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Both<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.get_mut().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.get_mut().flush()
    }
}
