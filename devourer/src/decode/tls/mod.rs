//! TLS: turns the kernel's TLS ring events (a ClientHello's segments from the first, up to
//! 16 KiB of the client's stream; a ServerHello's first segment) into what flows carry: each
//! ClientHello reassembled by sequence number, parsed ([`hello`]) and fingerprinted ([`ja4`]),
//! and the version the server chose. Handshakes being reassembled are bounded in bytes and
//! time; what a bound cuts is counted.

pub mod hello;
pub mod ja4;

use std::{collections::HashMap, num::NonZeroUsize};

use devourer_common::{
    flow::{FlowKey, KEY_F_IPV6},
    payload::{PAYLOAD_F_IPV6, PayloadHeader, TLS_STREAM_MAX, hello_stream_len},
};
use lru::LruCache;

use crate::{
    base::net::IPPROTO_TCP,
    flow::{
        reverse,
        tls::{Seen, TlsSeen},
    },
};

#[derive(Clone, Copy, Debug)]
pub struct TlsTrackerConfig {
    /// A ClientHello still missing segments this long after its first is given up (ns).
    pub timeout_ns: u64,
    /// Bytes of ClientHellos being reassembled, at most; past it the oldest is given up.
    pub max_pending_bytes: usize,
}

/// Out-of-order pieces one ClientHello keeps at most (a hello is a few segments).
const MAX_PIECES: usize = 64;

/// What a ClientHello being reassembled costs besides its bytes (its key and entry, the
/// vectors' headers, its pieces at most), charged to the byte budget: a flood of tiny "hellos"
/// is bounded by count too.
const STREAM_COST: usize = 256 + MAX_PIECES * 16;

/// Hellos remembered as read, at most (a retransmission comes within a few round trips).
const DONE_KEPT: usize = 4096;

/// Findings waiting for the next scan at most (one per handshake message; a scan takes them
/// every second); past it they are counted (`found_full`) and lost.
const MAX_FOUND: usize = 65_536;

#[derive(Clone, Debug, Default)]
pub struct TlsStats {
    pub events: u64,
    /// ClientHellos and ServerHellos read.
    pub client_hellos: u64,
    pub server_hellos: u64,
    /// Handshakes that gave nothing, by reason ([`hello::HelloError::as_str`], `timeout`,
    /// `evicted` for the byte budget, `fragmented` past [`MAX_PIECES`] pieces, `orphan` for a
    /// segment whose hello was not being
    /// reassembled, `repeated` for a retransmitted segment of a hello read already,
    /// `found_full` past [`MAX_FOUND`]).
    pub failed: HashMap<&'static str, u64>,
}

/// One ClientHello being put together.
struct Stream {
    /// Sequence number of its first byte.
    base: u32,
    /// The stream bytes its message takes in its records (`hello_stream_len`, at most
    /// 16 KiB): nothing past it is kept.
    want: usize,
    /// The stream's bytes from `base` (zero where not arrived), and which ranges arrived.
    bytes: Vec<u8>,
    have: Vec<(usize, usize)>,
    first_ns: u64,
}

impl Stream {
    /// Copies a segment's bytes at `off` (past `want` cut off); false when it holds too many
    /// pieces already.
    fn put(&mut self, off: usize, data: &[u8]) -> bool {
        let end = (off + data.len()).min(self.want);
        if off >= end {
            return true;
        }
        if self.have.len() >= MAX_PIECES {
            return false;
        }
        self.bytes[off..end].copy_from_slice(&data[..end - off]);
        self.have.push((off, end));
        true
    }

    /// How far the bytes from the first arrived without a gap.
    fn reach(&mut self) -> usize {
        self.have.sort_unstable();
        let mut reach = 0;
        for &(a, b) in &self.have {
            if a > reach {
                break;
            }
            reach = reach.max(b);
        }
        reach
    }

    /// What it is charged to the byte budget.
    fn cost(&self) -> usize {
        self.want + STREAM_COST
    }
}

/// Tracks the handshakes of the TLS ring.
pub struct TlsTracker {
    cfg: TlsTrackerConfig,
    /// By the client's direction of the connection; least recently started first out.
    streams: LruCache<FlowKey, Stream>,
    pending_bytes: usize,
    /// The hellos read lately (first sequence number and length): their retransmitted
    /// segments are told from strays.
    done: LruCache<FlowKey, (u32, u32)>,
    found: Vec<TlsSeen>,
    pub stats: TlsStats,
}

impl TlsTracker {
    pub fn new(cfg: TlsTrackerConfig) -> Self {
        Self {
            cfg,
            streams: LruCache::unbounded(),
            pending_bytes: 0,
            done: LruCache::new(NonZeroUsize::new(DONE_KEPT).expect("non-zero")),
            found: Vec::new(),
            stats: TlsStats::default(),
        }
    }

    /// Handles one ring event.
    pub fn on_event(&mut self, h: &PayloadHeader, payload: &[u8]) {
        self.stats.events += 1;
        if h.proto != IPPROTO_TCP {
            return;
        }
        let key = key_of(h);
        // Part of a hello being reassembled (whatever its bytes look like). Looked up without
        // making it recent: the oldest started go first.
        if let Some(s) = self.streams.peek_mut(&key) {
            let off = h.tcp_seq.wrapping_sub(s.base) as usize;
            if off < s.want {
                if !s.put(off, payload) {
                    self.drop_stream(&key, "fragmented");
                    return;
                }
                return self.finish_if_complete(key);
            }
        }
        // A handshake record's start: a hello of either side.
        if payload.len() >= 6 && payload[0] == 0x16 && payload[1] == 3 {
            match payload[5] {
                1 => return self.start(key, h, payload),
                2 => return self.server_hello(key, payload),
                _ => {}
            }
        }
        // A segment of a hello read already (retransmitted), or of none.
        let done = self.done.peek(&key).copied();
        let repeat = done.is_some_and(|(base, want)| h.tcp_seq.wrapping_sub(base) < want);
        self.fail(if repeat { "repeated" } else { "orphan" });
    }

    /// A ClientHello's first segment: reassembly starts (a new hello at another sequence
    /// number starts over; the first segment of one read already is a retransmission).
    fn start(&mut self, key: FlowKey, h: &PayloadHeader, payload: &[u8]) {
        if self
            .done
            .peek(&key)
            .is_some_and(|(base, _)| *base == h.tcp_seq)
        {
            self.fail("repeated");
            return;
        }
        // What the kernel forwards of it: its message in its records (see `hello_stream_len`).
        let record = u32::from(u16::from_be_bytes([payload[3], payload[4]]));
        let message = payload
            .get(6..9)
            .map_or(0, |m| u32::from_be_bytes([0, m[0], m[1], m[2]]));
        let want = hello_stream_len(record, message).min(TLS_STREAM_MAX) as usize;
        if want == 0 {
            self.fail(hello::HelloError::Malformed.as_str());
            return;
        }
        if let Some(old) = self.streams.pop(&key) {
            self.pending_bytes -= old.cost();
        }
        let mut s = Stream {
            base: h.tcp_seq,
            want,
            bytes: vec![0; want],
            have: Vec::new(),
            first_ns: h.ts_ns,
        };
        s.put(0, payload);
        self.pending_bytes += s.cost();
        self.streams.push(key, s);
        while self.pending_bytes > self.cfg.max_pending_bytes {
            let Some(old) = self.streams.peek_lru().map(|(k, _)| *k) else {
                break;
            };
            self.drop_stream(&old, "evicted");
        }
        self.finish_if_complete(key);
    }

    /// Parses the ClientHello of `key` once its message arrived whole (up to its last byte
    /// without a gap; what follows it in the stream is not waited for).
    fn finish_if_complete(&mut self, key: FlowKey) {
        let Some(s) = self.streams.peek_mut(&key) else {
            return;
        };
        let reach = s.reach();
        let outcome = match hello::client_hello(&s.bytes[..reach]) {
            Err(hello::HelloError::Incomplete) if reach < s.want => return,
            outcome => outcome,
        };
        let s = self.streams.pop(&key).expect("present");
        self.pending_bytes -= s.cost();
        self.done.put(key, (s.base, s.want as u32));
        match outcome {
            Ok(mut info) => {
                self.stats.client_hellos += 1;
                info.client = Some((key.src_addr, key.src_port));
                self.push(TlsSeen {
                    key,
                    what: Seen::Client(info),
                });
            }
            Err(e) => self.fail(e.as_str()),
        }
    }

    /// A ServerHello (its segment's first bytes): the version it chose, for the connection
    /// whose client it answers.
    fn server_hello(&mut self, key: FlowKey, payload: &[u8]) {
        match hello::server_version(payload) {
            Ok(v) => {
                self.stats.server_hellos += 1;
                self.push(TlsSeen {
                    key: reverse(&key),
                    what: Seen::Server(v),
                });
            }
            Err(e) => self.fail(e.as_str()),
        }
    }

    fn push(&mut self, seen: TlsSeen) {
        if self.found.len() >= MAX_FOUND {
            self.fail("found_full");
        } else {
            self.found.push(seen);
        }
    }

    fn drop_stream(&mut self, key: &FlowKey, why: &'static str) {
        if let Some(s) = self.streams.pop(key) {
            self.pending_bytes -= s.cost();
            self.fail(why);
        }
    }

    fn fail(&mut self, why: &'static str) {
        *self.stats.failed.entry(why).or_default() += 1;
    }

    /// Gives up the ClientHellos still missing segments after the timeout (at `now`, program
    /// clock); what is complete was handed over already.
    pub fn expire(&mut self, now: u64) {
        while let Some((key, s)) = self.streams.peek_lru() {
            if now.saturating_sub(s.first_ns) < self.cfg.timeout_ns {
                break;
            }
            let key = *key;
            self.drop_stream(&key, "timeout");
        }
    }

    /// What the handshakes told since the last call, in arrival order.
    pub fn take_found(&mut self) -> Vec<TlsSeen> {
        std::mem::take(&mut self.found)
    }

    /// ClientHellos being reassembled, and the bytes charged for them.
    pub fn pending(&self) -> (usize, usize) {
        (self.streams.len(), self.pending_bytes)
    }
}

/// The flow key of an event's direction, with the interface that counted it (counting per
/// interface, each interface's copy is a stream of its own and names its own flow).
fn key_of(h: &PayloadHeader) -> FlowKey {
    FlowKey {
        src_addr: h.src_addr,
        dst_addr: h.dst_addr,
        src_port: h.src_port,
        dst_port: h.dst_port,
        ifindex: h.ifindex,
        _pad: 0,
        proto: h.proto,
        flags: if h.flags & PAYLOAD_F_IPV6 != 0 {
            KEY_F_IPV6
        } else {
            0
        },
    }
}

#[cfg(test)]
mod tests;
