//! IPFIX export (`--ipfix udp://HOST:PORT` or `tcp://`): each flow record as one biflow data
//! record ([`encode`]), sent on the sink's own thread. Best effort, as IPFIX is: UDP loses what
//! the network loses and TCP has no acknowledgement, so nothing is spooled; messages sent and
//! send errors are counted, and records that could not be sent are counted dropped. Templates
//! go out before the first data, every `--ipfix-template-interval` over UDP, and again on
//! every TCP connection (which restarts the sequence numbers, a new transport session).

pub mod encode;
#[cfg(test)]
mod tests;

use std::{
    io::Write,
    net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use self::encode::{Encoder, Message, Skip};
use super::{Sink, SinkReport, Status, remote::Backoff};
use crate::record::{Batch, Kind};

/// The transport to the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Where and how to export.
#[derive(Clone, Debug)]
pub struct IpfixConfig {
    pub transport: Transport,
    /// `HOST:PORT` of the collector (resolved on every connection, and over UDP with every
    /// template refresh).
    pub addr: String,
    /// The observation domain in every message header.
    pub domain_id: u32,
    /// UDP: templates again this often.
    pub template_interval: Duration,
    /// The most bytes of one message.
    pub mtu: usize,
    /// The enterprise number of the agent's own elements.
    pub enterprise_number: u32,
    /// Connecting and writing a message, each at most this long.
    pub timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl IpfixConfig {
    /// `udp://HOST:PORT` or `tcp://HOST:PORT` (an IPv6 host in brackets).
    pub fn parse_url(url: &str) -> Result<(Transport, String), String> {
        let (transport, rest) = if let Some(r) = url.strip_prefix("udp://") {
            (Transport::Udp, r)
        } else if let Some(r) = url.strip_prefix("tcp://") {
            (Transport::Tcp, r)
        } else {
            return Err(format!(
                "{url:?}: expected udp://HOST:PORT or tcp://HOST:PORT"
            ));
        };
        let rest = rest.trim_end_matches('/');
        match rest.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Ok((transport, rest.to_owned()))
            }
            _ => Err(format!("{url:?}: expected a host and a port above 0")),
        }
    }
}

/// Counts, read by metrics from any thread.
#[derive(Debug, Default)]
struct Stats {
    sent: AtomicU64,
    dropped: AtomicU64,
    skipped: AtomicU64,
    malformed: AtomicU64,
    messages_sent: AtomicU64,
    messages_failed: AtomicU64,
}

impl Status for Stats {
    fn report(&self) -> SinkReport {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SinkReport {
            outcomes: vec![
                ("sent", n(&self.sent)),
                ("dropped", n(&self.dropped) + n(&self.malformed)),
                ("skipped", n(&self.skipped)),
            ],
            messages: vec![
                ("sent", n(&self.messages_sent)),
                ("error", n(&self.messages_failed)),
            ],
            ..SinkReport::default()
        }
    }
}

/// An open socket to the collector.
enum Socket {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl Socket {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Udp(s) => s.send(bytes).map(drop),
            Self::Tcp(s) => s.write_all(bytes),
        }
    }
}

pub struct IpfixSink {
    cfg: IpfixConfig,
    encoder: Encoder,
    socket: Option<Socket>,
    backoff: Backoff,
    /// No connection attempt before this.
    retry_at: Instant,
    /// When the templates were last sent on this socket (`None`: not yet).
    templates_at: Option<Instant>,
    /// When the collector's name was last looked up (the socket connected).
    connected_at: Instant,
    stats: Arc<Stats>,
}

impl IpfixSink {
    pub fn new(cfg: IpfixConfig) -> Self {
        Self {
            encoder: Encoder::new(cfg.domain_id, cfg.mtu, cfg.enterprise_number),
            backoff: Backoff::new(cfg.backoff_base, cfg.backoff_max),
            retry_at: Instant::now(),
            socket: None,
            templates_at: None,
            connected_at: Instant::now(),
            stats: Arc::default(),
            cfg,
        }
    }

    fn connect(&self) -> std::io::Result<Socket> {
        let addrs: Vec<SocketAddr> = self.cfg.addr.to_socket_addrs()?.collect();
        let mut last = std::io::Error::other("no address");
        for a in addrs {
            let tried = match self.cfg.transport {
                Transport::Udp => {
                    let any: SocketAddr = if a.is_ipv6() {
                        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                    } else {
                        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                    };
                    UdpSocket::bind(any)
                        .and_then(|s| s.connect(a).map(|()| s))
                        .map(Socket::Udp)
                }
                Transport::Tcp => TcpStream::connect_timeout(&a, self.cfg.timeout).and_then(|s| {
                    s.set_write_timeout(Some(self.cfg.timeout))?;
                    s.set_nodelay(true)?;
                    Ok(Socket::Tcp(s))
                }),
            };
            match tried {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Whether a TCP collector closed its end (a write would still succeed once, into the
    /// kernel's buffer, and the batch be lost uncounted): a peek that reads the end of the
    /// stream, without waiting.
    fn peer_closed(s: &TcpStream) -> bool {
        let mut b = [0u8; 1];
        if s.set_nonblocking(true).is_err() {
            return true;
        }
        let closed = match s.peek(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        closed || s.set_nonblocking(false).is_err()
    }

    /// Over UDP, every template interval: the collector's name looked up again and the
    /// socket connected to where it points now (the same socket, so the same local port: the
    /// collector sees one session), the templates sent again. A failed lookup keeps the
    /// socket as it was.
    fn refresh_udp(&mut self, now: Instant) {
        let Some(Socket::Udp(u)) = &self.socket else {
            return;
        };
        if now.duration_since(self.connected_at) < self.cfg.template_interval {
            return;
        }
        self.connected_at = now;
        self.templates_at = None;
        let local_v6 = u.local_addr().is_ok_and(|a| a.is_ipv6());
        let found = self
            .cfg
            .addr
            .to_socket_addrs()
            .map(|mut addrs| addrs.find(|a| a.is_ipv6() == local_v6));
        match found {
            Ok(Some(a)) => {
                if let Err(e) = u.connect(a) {
                    tracing::warn!(collector = %self.cfg.addr, "IPFIX collector at {a}: {e}");
                }
            }
            Ok(None) => {
                tracing::warn!(collector = %self.cfg.addr, "the IPFIX collector's name has no address of the socket's family now; sending where it pointed before")
            }
            Err(e) => {
                tracing::warn!(collector = %self.cfg.addr, "looking the IPFIX collector up again failed ({e}); sending where it pointed before")
            }
        }
    }

    /// The open socket, connecting when due; templates sent first where due. Over UDP data
    /// goes out even when the templates met an error (a late ICMP error of an earlier
    /// datagram): the next batch sends them again.
    fn ready(&mut self, now: Instant) -> bool {
        self.refresh_udp(now);
        if matches!(&self.socket, Some(Socket::Tcp(s)) if Self::peer_closed(s)) {
            tracing::warn!(collector = %self.cfg.addr, "the IPFIX collector closed the connection; connecting again");
            self.socket = None;
        }
        if self.socket.is_none() {
            if now < self.retry_at {
                return false;
            }
            match self.connect() {
                Ok(s) => {
                    tracing::info!(collector = %self.cfg.addr, "IPFIX export connected");
                    self.socket = Some(s);
                    self.connected_at = now;
                    self.templates_at = None;
                    if self.cfg.transport == Transport::Tcp {
                        self.encoder.restart();
                    }
                }
                Err(e) => {
                    self.retry_at = now + self.backoff.wait();
                    tracing::warn!(collector = %self.cfg.addr, "IPFIX collector unreachable: {e}");
                    return false;
                }
            }
        }
        if self.templates_at.is_none() {
            let mut sent = true;
            for m in self.encoder.templates(export_secs()) {
                sent &= self.send(&m);
            }
            if sent {
                self.templates_at = Some(now);
            } else if self.cfg.transport == Transport::Tcp {
                return false;
            }
        }
        self.socket.is_some()
    }

    /// Sends one message; on failure counts it, and drops a TCP connection (the next write
    /// reconnects after the backoff).
    fn send(&mut self, m: &Message) -> bool {
        let Some(s) = self.socket.as_mut() else {
            return false;
        };
        match s.send(&m.bytes) {
            Ok(()) => {
                self.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .sent
                    .fetch_add(m.records.into(), Ordering::Relaxed);
                self.backoff.reset();
                true
            }
            Err(e) => {
                self.stats.messages_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(collector = %self.cfg.addr, "IPFIX message not sent: {e}");
                if self.cfg.transport == Transport::Tcp {
                    self.socket = None;
                    self.retry_at = Instant::now() + self.backoff.wait();
                }
                false
            }
        }
    }
}

/// Seconds since the epoch, for message headers (until 2106).
fn export_secs() -> u32 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

impl Sink for IpfixSink {
    fn name(&self) -> &'static str {
        "ipfix"
    }

    fn takes(&self, kind: Kind) -> bool {
        kind == Kind::Flow
    }

    fn write(&mut self, batch: Batch<'_>) -> bool {
        let Batch::Flow(records) = batch else {
            return true;
        };
        let now = Instant::now();
        let ready = self.ready(now);
        let (messages, skipped) = self.encoder.data(records, export_secs());
        for s in skipped {
            match s {
                Skip::Start => &self.stats.skipped,
                Skip::Malformed => &self.stats.malformed,
            }
            .fetch_add(1, Ordering::Relaxed);
        }
        for m in &messages {
            // A failed TCP send closes the socket: the rest of the batch is dropped unsent.
            if !(ready && self.send(m)) {
                self.stats
                    .dropped
                    .fetch_add(m.records.into(), Ordering::Relaxed);
            }
        }
        true
    }

    fn status(&self) -> Arc<dyn Status> {
        self.stats.clone()
    }

    fn finish(self: Box<Self>, _deadline: Instant) -> u64 {
        if let Some(Socket::Tcp(s)) = &self.socket {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        let r = self.stats.report();
        tracing::info!(
            sent = r.outcomes[0].1,
            dropped = r.dropped(),
            messages = self.stats.messages_sent.load(Ordering::Relaxed),
            send_errors = self.stats.messages_failed.load(Ordering::Relaxed),
            "IPFIX export finished"
        );
        r.dropped()
    }
}
