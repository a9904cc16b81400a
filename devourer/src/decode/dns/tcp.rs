//! DNS over TCP: per-connection reassembly of the 2-byte length-prefixed messages from the
//! segments the kernel forwarded, in sequence order, with bounded memory: a cap on the
//! connections followed, on the bytes held for all of them and on the bytes kept of one
//! message, and an idle timeout.
//!
//! Framing survives bytes it never sees: a segment cut at the capture cap (a TSO/GRO
//! super-segment bigger than `--dns-cap`), or one lost, leaves a hole of known size. While the
//! hole lies inside a message, that message is handed on cut (its header, question and the
//! answers that fit) and the stream stays in step through the length prefixes, so the next
//! message is decoded whole. Only a hole that swallows a length prefix loses the framing; the
//! next segment is then taken to start a message.

use crate::base::hash::{FastLru, lru};

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const FIN: u8 = 0x01;
/// A message shorter than a DNS header is not worth handing on.
const DNS_HEADER: usize = 12;

/// One direction of one connection, as seen on one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub ifindex: u32,
}

/// Bounds on reassembly.
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    /// Connections followed at once.
    pub max_streams: usize,
    /// Bytes held for all of them together.
    pub max_bytes: usize,
    /// Bytes kept of one message (the rest is skipped, the message handed on cut).
    pub max_message: usize,
    /// A connection quiet this long is forgotten (program-clock ns).
    pub idle_ns: u64,
}

/// A message out of a stream: its bytes (all of them, or the first ones) and whether some
/// were never seen (`cut`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reassembled {
    pub bytes: Vec<u8>,
    pub cut: bool,
}

#[derive(Default)]
struct Stream {
    next_seq: u32,
    last_ns: u64,
    /// The framing was lost: the next segment is taken to start a message.
    lost: bool,
    /// Bytes of the length prefix read so far.
    prefix: [u8; 2],
    prefix_len: u8,
    /// Bytes of the current message still to come (0: reading a prefix).
    remaining: usize,
    msg: Vec<u8>,
    cut: bool,
    /// Messages of this stream kept only in part (longer than the per-message cap).
    capped: u64,
}

impl Stream {
    fn reset_framing(&mut self) {
        self.prefix_len = 0;
        self.remaining = 0;
        self.msg = Vec::new();
        self.cut = false;
    }

    fn finish(&mut self, out: &mut Vec<Reassembled>) {
        let bytes = std::mem::take(&mut self.msg);
        if bytes.len() >= DNS_HEADER {
            out.push(Reassembled {
                bytes,
                cut: self.cut,
            });
        }
        self.cut = false;
    }

    /// Bytes seen in order.
    fn known(&mut self, mut bytes: &[u8], max_message: usize, out: &mut Vec<Reassembled>) {
        while !bytes.is_empty() {
            if self.remaining == 0 {
                self.prefix[self.prefix_len as usize] = bytes[0];
                self.prefix_len += 1;
                bytes = &bytes[1..];
                if self.prefix_len == 2 {
                    self.prefix_len = 0;
                    self.remaining = usize::from(u16::from_be_bytes(self.prefix));
                    self.msg = Vec::new();
                    self.cut = false;
                }
                continue;
            }
            let n = self.remaining.min(bytes.len());
            let keep = n.min(max_message.saturating_sub(self.msg.len()));
            self.msg.extend_from_slice(&bytes[..keep]);
            if keep < n && !self.cut {
                self.capped += 1;
            }
            self.cut |= keep < n;
            self.remaining -= n;
            bytes = &bytes[n..];
            if self.remaining == 0 {
                self.finish(out);
            }
        }
    }

    /// `n` bytes in order that were never seen. `false` when they run past the current
    /// message (into a length prefix): the framing is lost.
    fn unknown(&mut self, mut n: usize, out: &mut Vec<Reassembled>) -> bool {
        if n == 0 {
            return true;
        }
        if self.remaining == 0 {
            return false;
        }
        let take = n.min(self.remaining);
        self.remaining -= take;
        self.cut = true;
        n -= take;
        if self.remaining == 0 {
            self.finish(out);
        }
        n == 0
    }
}

/// What reassembly gave up, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Segments whose payload was cut at the capture cap (their message was handed on cut).
    pub cut: u64,
    /// Holes (lost or unseen segments) before a segment.
    pub gaps: u64,
    /// Holes that swallowed a length prefix: the framing restarted at the next segment.
    pub resyncs: u64,
    /// Connections forgotten to stay within the connection limit.
    pub evicted: u64,
    /// Connections forgotten to stay within the byte budget.
    pub evicted_bytes: u64,
    /// Connections forgotten after the idle timeout.
    pub expired: u64,
    /// Messages kept only in part: longer than the per-message cap.
    pub capped: u64,
}

pub struct TcpStreams {
    streams: FastLru<StreamKey, Stream>,
    limits: TcpLimits,
    /// Bytes held in all streams' messages.
    held: usize,
    pub stats: TcpStats,
}

impl TcpStreams {
    pub fn new(limits: TcpLimits) -> Self {
        Self {
            streams: lru(limits.max_streams),
            limits,
            held: 0,
            stats: TcpStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Bytes held for messages in progress.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    fn forget(&mut self, key: &StreamKey) {
        if let Some(s) = self.streams.pop(key) {
            self.held -= s.msg.len();
        }
    }

    /// Feeds one segment: `payload` is what was captured of its `payload_len` bytes. Returns
    /// the DNS messages it completed (without length prefixes).
    pub fn segment(
        &mut self,
        key: StreamKey,
        seq: u32,
        flags: u8,
        ts_ns: u64,
        payload: &[u8],
        payload_len: usize,
    ) -> Vec<Reassembled> {
        let mut out = Vec::new();
        if flags & RST != 0 {
            self.forget(&key);
            return out;
        }
        // Data on a SYN (TCP Fast Open) starts one past the SYN's sequence number.
        let data_seq = if flags & SYN != 0 {
            self.forget(&key);
            seq.wrapping_add(1)
        } else {
            seq
        };
        let payload_len = payload_len.max(payload.len());
        if payload_len > 0 {
            self.data(key, data_seq, ts_ns, payload, payload_len, &mut out);
        }
        if flags & FIN != 0 {
            self.forget(&key);
        }
        out
    }

    fn data(
        &mut self,
        key: StreamKey,
        data_seq: u32,
        ts_ns: u64,
        payload: &[u8],
        payload_len: usize,
        out: &mut Vec<Reassembled>,
    ) {
        if !self.streams.contains(&key) && self.streams.len() == self.streams.cap().get() {
            // Inserting pushes the least recently used connection out.
            if let Some((_, s)) = self.streams.pop_lru() {
                self.held -= s.msg.len();
            }
            self.stats.evicted += 1;
        }
        if payload.len() < payload_len {
            self.stats.cut += 1;
        }
        let limits = self.limits;
        let stream = self.streams.get_or_insert_mut(key, || Stream {
            next_seq: data_seq,
            ..Stream::default()
        });
        let before = stream.msg.len();
        stream.last_ns = ts_ns;
        let ahead = data_seq.wrapping_sub(stream.next_seq) as i32;
        // Bytes of this segment already seen (a retransmission).
        let mut skip = 0usize;
        if ahead > 0 {
            self.stats.gaps += 1;
            if !stream.unknown(ahead as usize, out) {
                stream.lost = true;
            }
            stream.next_seq = data_seq;
        } else if ahead < 0 {
            skip = (-(ahead as i64)) as usize;
        }
        if skip < payload_len {
            if stream.lost {
                // The framing was lost: take this segment to start a message.
                stream.lost = false;
                stream.reset_framing();
                self.stats.resyncs += 1;
            }
            let captured = payload.get(skip..).unwrap_or(&[]);
            let capped_before = stream.capped;
            stream.known(captured, limits.max_message, out);
            self.stats.capped += stream.capped - capped_before;
            let missing = payload_len - skip.max(payload.len());
            if !stream.unknown(missing, out) {
                stream.lost = true;
            }
            stream.next_seq = data_seq.wrapping_add(payload_len as u32);
        }
        let after = stream.msg.len();
        self.held = self.held - before + after;
        self.rebalance(&key);
    }

    /// Keeps the bytes held within the budget, forgetting the least recently used
    /// connections first.
    fn rebalance(&mut self, current: &StreamKey) {
        while self.held > self.limits.max_bytes {
            let Some((k, _)) = self.streams.peek_lru() else {
                break;
            };
            if k == current {
                // The current stream alone is over the budget: cut its message short.
                if let Some(s) = self.streams.get_mut(current) {
                    self.held -= s.msg.len();
                    s.msg = Vec::new();
                    s.cut = true;
                }
                self.stats.evicted_bytes += 1;
                break;
            }
            if let Some((_, s)) = self.streams.pop_lru() {
                self.held -= s.msg.len();
                self.stats.evicted_bytes += 1;
            }
        }
    }

    /// Forgets connections quiet since before `now - idle`.
    pub fn expire(&mut self, now: u64) {
        let idle = self.limits.idle_ns;
        while let Some((_, s)) = self.streams.peek_lru() {
            if now.saturating_sub(s.last_ns) < idle {
                break;
            }
            if let Some((_, s)) = self.streams.pop_lru() {
                self.held -= s.msg.len();
                self.stats.expired += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
