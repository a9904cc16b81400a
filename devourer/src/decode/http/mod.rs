//! HTTP: turns the kernel's HTTP payload events (the first bytes of segments that start a
//! request or response, no reassembly, as packetlog's httplog did) into request and response
//! records, matches responses to requests per connection in order (pipelining), and produces
//! packetlog-style log lines. A request is held for a moment ([`XLAT_JOIN_NS`]) before it is
//! emitted: the same request seen again from the same client port to another server is the
//! copy a DNAT made (a Service address translated to a backend), and from this host's own
//! address on another interface the copy a masquerade made (with or without a DNAT), so the
//! first names the backend (if any) as its translated server and the copy's connection emits
//! nothing.

pub mod message;

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use devourer_common::payload::{PAYLOAD_F_IPV6, PayloadHeader};

use self::message::{Message, Request, parse_segment};
use super::{Ends, LogLine};
use crate::base::{
    hash::FastMap,
    local::{LocalAddrs, Role},
    net::{IPPROTO_TCP, ip},
};

#[derive(Clone, Copy, Debug)]
pub struct HttpConfig {
    /// A request without a response for this long is forgotten (ns), counted as unanswered.
    pub timeout_ns: u64,
    /// Connections with requests waiting, at most; past it the least recently active go.
    pub max_connections: usize,
    /// Bytes of the requests waiting (method and target), at most; past it the least
    /// recently active connections go.
    pub max_pending_bytes: usize,
    /// Produce packetlog text lines.
    pub text_log: bool,
}

/// Requests waiting on one connection at most (pipelining depth); older ones are forgotten.
const MAX_QUEUE: usize = 64;

/// How long a request is held for its translated copy: a packet crosses a node's interfaces
/// within microseconds.
pub const XLAT_JOIN_NS: u64 = 10_000_000;

/// Requests held for their copy at most (each costs a record's worth of memory); past it the
/// oldest is emitted at once.
const MAX_HELD: usize = 4096;

/// One request or response as records and log lines show it.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpMsg {
    /// Packet time, program clock.
    pub time_ns: u64,
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
    pub role: Role,
    pub ifindex: u32,
    pub message: Message,
    /// Responses: the request they answer (method, target), and the time since it.
    pub request: Option<(String, Option<String>)>,
    pub latency_ns: Option<u64>,
    /// The server a DNAT sent the exchange to (a Service's backend; `server` is the address
    /// the client asked).
    pub xlat: Option<(IpAddr, u16)>,
}

#[derive(Clone, Debug, Default)]
pub struct HttpStats {
    pub events: u64,
    pub requests: u64,
    pub responses: u64,
    /// Responses matched to a request on their connection.
    pub matched: u64,
    /// Requests forgotten without a response (timeout, queue or table limits).
    pub unanswered: u64,
    /// Of those, requests forgotten to stay within the connection limit or the byte budget.
    pub evicted: u64,
    /// Segments that did not start an HTTP message, by reason.
    pub not_http: HashMap<&'static str, u64>,
    /// Messages of a connection a DNAT copied: in their original's record.
    pub xlat_copies: u64,
    /// Requests emitted before their wait for a DNAT copy ended, to hold no more than
    /// [`MAX_HELD`] (a copy arriving later is a record of its own).
    pub released_early: u64,
}

#[derive(Debug, Default)]
pub struct HttpOutput {
    pub msgs: Vec<HttpMsg>,
    pub lines: Vec<LogLine>,
}

/// (client addr, client port, server addr, server port).
type ConnKey = ([u8; 16], u16, [u8; 16], u16);

struct Waiting {
    time_ns: u64,
    method: String,
    target: Option<String>,
}

impl Waiting {
    /// What it holds, for the byte budget.
    fn bytes(&self) -> usize {
        self.method.len() + self.target.as_ref().map_or(0, String::len)
    }
}

#[derive(Default)]
struct Conn {
    queue: VecDeque<Waiting>,
    last_ns: u64,
    /// The client's connection this one is the translated copy of: its messages are not
    /// emitted.
    copy_of: Option<ConnKey>,
    /// This connection's copy is known: `Some(None)` when only its client was translated (a
    /// masquerade), else where a DNAT sent it (the copy's server).
    xlat: Option<Option<(IpAddr, u16)>>,
}

pub struct HttpTracker {
    cfg: HttpConfig,
    conns: FastMap<ConnKey, Conn>,
    /// Requests held for their copy, oldest first, with their connection.
    held: VecDeque<(ConnKey, HttpMsg)>,
    /// Bytes of every waiting request.
    pending_bytes: usize,
    pub local: LocalAddrs,
    pub stats: HttpStats,
}

impl HttpTracker {
    pub fn new(cfg: HttpConfig, local: LocalAddrs) -> Self {
        Self {
            cfg,
            conns: FastMap::default(),
            held: VecDeque::new(),
            pending_bytes: 0,
            local,
            stats: HttpStats::default(),
        }
    }

    /// Requests waiting for a response.
    pub fn pending(&self) -> usize {
        self.conns.values().map(|c| c.queue.len()).sum()
    }

    /// One event from the kernel: the first bytes of a TCP segment to or from an HTTP port.
    pub fn on_event(&mut self, h: &PayloadHeader, payload: &[u8], out: &mut HttpOutput) {
        self.stats.events += 1;
        let messages = match parse_segment(payload) {
            Ok(m) => m,
            Err(reason) => {
                *self.stats.not_http.entry(reason).or_default() += 1;
                tracing::debug!(
                    len = payload.len(),
                    reason,
                    "segment is not the start of an HTTP message"
                );
                return;
            }
        };
        let v6 = h.flags & PAYLOAD_F_IPV6 != 0;
        self.release(h.ts_ns.saturating_sub(XLAT_JOIN_NS), out);
        for m in messages {
            let response = matches!(m, Message::Response(_));
            // A request goes from client to server, a response back.
            let (c, cp, s, sp) = if response {
                (h.dst_addr, h.dst_port, h.src_addr, h.src_port)
            } else {
                (h.src_addr, h.src_port, h.dst_addr, h.dst_port)
            };
            let (client, server) = (ip(&c, v6), ip(&s, v6));
            let mut msg = HttpMsg {
                time_ns: h.ts_ns,
                client,
                client_port: cp,
                server,
                server_port: sp,
                role: self.local.role(&client, &server),
                ifindex: h.ifindex,
                message: m,
                request: None,
                latency_ns: None,
                xlat: None,
            };
            let key = (c, cp, s, sp);
            match &msg.message {
                Message::Request(r) => {
                    self.stats.requests += 1;
                    self.wait(key, h.ts_ns, r);
                    self.request(key, msg, out);
                }
                Message::Response(r) => {
                    self.stats.responses += 1;
                    // What was held goes first: a record never follows its response.
                    self.release(u64::MAX, out);
                    // An interim response (100 Continue, 103 Early Hints) does not end the
                    // exchange: it reports the request without taking it off the queue.
                    let interim = (100..200).contains(&r.status_code) && r.status_code != 101;
                    let mut copy = false;
                    if let Some(conn) = self.conns.get_mut(&key) {
                        conn.last_ns = conn.last_ns.max(h.ts_ns);
                        copy = conn.copy_of.is_some();
                        msg.xlat = conn.xlat.flatten();
                        let w = if interim {
                            conn.queue
                                .front()
                                .map(|w| (w.time_ns, w.method.clone(), w.target.clone()))
                        } else {
                            conn.queue.pop_front().map(|w| {
                                self.pending_bytes -= w.bytes();
                                (w.time_ns, w.method, w.target)
                            })
                        };
                        if let Some((t, method, target)) = w {
                            self.stats.matched += 1;
                            msg.latency_ns = Some(h.ts_ns.saturating_sub(t));
                            msg.request = Some((method, target));
                        }
                        if conn.queue.is_empty() {
                            self.conns.remove(&key);
                        }
                    }
                    if copy {
                        self.stats.xlat_copies += 1;
                    } else {
                        self.push(msg, out);
                    }
                }
            }
        }
    }

    /// A request (queued on its connection already): a DNAT'd copy of a held request names
    /// its backend and is not emitted; a request of a connection known to be a copy neither;
    /// one of a connection whose translation is known goes out with it; any other is held.
    fn request(&mut self, key: ConnKey, mut msg: HttpMsg, out: &mut HttpOutput) {
        let (c, cp, s, sp) = key;
        let conn = self.conns.get(&key);
        if conn.is_some_and(|c| c.copy_of.is_some()) {
            self.stats.xlat_copies += 1;
            return;
        }
        if let Some(x) = conn.and_then(|c| c.xlat) {
            msg.xlat = x;
            // Behind its connection's earlier request if that one still waits for copies:
            // records keep their order.
            if self.held.iter().any(|(k, _)| *k == key) {
                self.hold(key, msg, out);
            } else {
                self.push(msg, out);
            }
            return;
        }
        // The copy of a held request: the same request from the same client port, to another
        // server from the same client (a DNAT), or from this host's own address (a masquerade,
        // with or without a DNAT); live, on another interface; the same client first.
        let live = self.local.is_live();
        let copy_of = |same_client: bool| {
            self.held.iter().position(|(k, m)| {
                let elsewhere = m.ifindex != msg.ifindex;
                let translated = if same_client {
                    k.0 == c && (k.2, k.3) != (s, sp) && (elsewhere || !live)
                } else {
                    k.0 != c && elsewhere && self.local.is_own(&msg.client)
                };
                k.1 == cp && translated && m.message == msg.message
            })
        };
        let original = copy_of(true).or_else(|| copy_of(false));
        if let Some(i) = original {
            let orig = self.held[i].0;
            // The first copy whose server is not the one asked names the backend. The request
            // stays held for the rest of its wait: a packet may be seen after a DNAT, then
            // again after a masquerade.
            let backend = ((s, sp) != (orig.2, orig.3)).then_some((msg.server, msg.server_port));
            // Every request of the connection still held names it (pipelined ones too).
            for (_, m) in self.held.iter_mut().filter(|(k, _)| *k == orig) {
                m.xlat = m.xlat.or(backend);
            }
            if let Some(conn) = self.conns.get_mut(&orig) {
                conn.xlat = Some(conn.xlat.flatten().or(backend));
            }
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.copy_of = Some(orig);
                // Its original's connection waits for the response: a copy queues nothing (a
                // copy seen between a DNAT and a masquerade sees no response of its own).
                if let Some(w) = conn.queue.pop_back() {
                    self.pending_bytes -= w.bytes();
                }
            }
            self.stats.xlat_copies += 1;
            return;
        }
        self.hold(key, msg, out);
    }

    /// Holds a request for its copies (past [`MAX_HELD`], the oldest held goes out at once).
    fn hold(&mut self, key: ConnKey, msg: HttpMsg, out: &mut HttpOutput) {
        if self.held.len() >= MAX_HELD {
            self.stats.released_early += 1;
            self.release_at(0, out);
        }
        self.held.push_back((key, msg));
    }

    /// Emits the held requests that came at or before `until` (all: `u64::MAX`), in order.
    fn release(&mut self, until: u64, out: &mut HttpOutput) {
        while self.held.front().is_some_and(|(_, m)| m.time_ns <= until) {
            self.release_at(0, out);
        }
    }

    /// Emits held request `i`, and the ones held before it (records keep their order).
    fn release_at(&mut self, i: usize, out: &mut HttpOutput) {
        for (_, msg) in self.held.drain(..=i).collect::<Vec<_>>() {
            self.push(msg, out);
        }
    }

    fn push(&mut self, msg: HttpMsg, out: &mut HttpOutput) {
        if self.cfg.text_log {
            out.lines.push(line(&msg));
        }
        out.msgs.push(msg);
    }

    fn wait(&mut self, key: ConnKey, time_ns: u64, r: &Request) {
        if !self.conns.contains_key(&key) && self.conns.len() >= self.cfg.max_connections {
            self.forget_oldest();
        }
        let conn = self.conns.entry(key).or_default();
        conn.last_ns = conn.last_ns.max(time_ns);
        if conn.copy_of.is_some() {
            return;
        }
        if conn.queue.len() >= MAX_QUEUE
            && let Some(w) = conn.queue.pop_front()
        {
            self.pending_bytes -= w.bytes();
            self.stats.unanswered += 1;
        }
        let w = Waiting {
            time_ns,
            method: r.method.clone(),
            target: r.target.clone(),
        };
        self.pending_bytes += w.bytes();
        conn.queue.push_back(w);
        while self.pending_bytes > self.cfg.max_pending_bytes && !self.conns.is_empty() {
            self.forget_oldest();
        }
    }

    /// Bytes of the requests waiting for a response.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// The table is full: the least recently active tenth of the connections goes.
    fn forget_oldest(&mut self) {
        let mut by_age: Vec<(u64, ConnKey)> =
            self.conns.iter().map(|(k, c)| (c.last_ns, *k)).collect();
        by_age.sort_unstable();
        let n = (by_age.len() / 10).max(1);
        for (_, k) in &by_age[..n] {
            if let Some(c) = self.conns.remove(k) {
                self.stats.unanswered += c.queue.len() as u64;
                self.stats.evicted += c.queue.len() as u64;
                self.pending_bytes -= c.queue.iter().map(Waiting::bytes).sum::<usize>();
            }
        }
    }

    /// Shutdown or end of input: every held request goes out.
    pub fn flush(&mut self, out: &mut HttpOutput) {
        self.release(u64::MAX, out);
    }

    /// Requests held past the join window at `now` go out; requests unanswered for the
    /// timeout are forgotten (and counted).
    pub fn expire(&mut self, now: u64, out: &mut HttpOutput) {
        self.release(now.saturating_sub(XLAT_JOIN_NS), out);
        let timeout = self.cfg.timeout_ns;
        let (mut gone, mut bytes) = (0, 0);
        self.conns.retain(|_, c| {
            while let Some(w) = c
                .queue
                .pop_front_if(|w| now.saturating_sub(w.time_ns) >= timeout)
            {
                bytes += w.bytes();
                gone += 1;
            }
            // A copy's connection, with nothing queued, is kept as long as a request would
            // be: its responses must still be known for a copy's.
            !c.queue.is_empty() || c.copy_of.is_some() && now.saturating_sub(c.last_ns) < timeout
        });
        self.pending_bytes -= bytes;
        self.stats.unanswered += gone;
    }
}

fn or_dash(s: Option<&str>) -> &str {
    match s {
        Some(v) if !v.is_empty() => v,
        _ => "-",
    }
}

/// The packetlog httplog line (after the time): `SRC#PORT DST#PORT KIND` then
/// `METHOD TARGET VERSION HOST USER-AGENT` for a request or
/// `VERSION STATUS REASON LENGTH CONTENT-TYPE` for a response; `-` for what is missing.
pub fn line(m: &HttpMsg) -> LogLine {
    let client = format!("{}#{}", m.client, m.client_port);
    let server = format!("{}#{}", m.server, m.server_port);
    let (kind, body) = match &m.message {
        Message::Request(r) => (
            m.role.kind(false),
            format!(
                "{client} {server} {} {} {} {} {} {}",
                m.role.kind(false),
                r.method,
                or_dash(r.target.as_deref()),
                or_dash(r.version.as_deref()),
                or_dash(r.host.as_deref()),
                or_dash(r.user_agent.as_deref()),
            ),
        ),
        Message::Response(r) => (
            m.role.kind(true),
            format!(
                "{server} {client} {} {} {} {} {} {}",
                m.role.kind(true),
                r.version,
                r.status_code,
                or_dash(r.reason.as_deref()),
                r.content_length
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                or_dash(r.content_type.as_deref()),
            ),
        ),
    };
    LogLine {
        ts_ns: m.time_ns,
        kind,
        body,
        ends: Ends {
            src: (m.client, m.client_port),
            dst: (m.server, m.server_port),
            proto: IPPROTO_TCP,
        },
    }
}

#[cfg(test)]
mod tests;
