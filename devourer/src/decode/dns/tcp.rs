//! DNS over TCP: per-connection reassembly of the 2-byte length-prefixed messages from the
//! segments the kernel forwarded, in sequence order, with bounded memory.

use std::num::NonZeroUsize;

use lru::LruCache;

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const FIN: u8 = 0x01;
/// A length prefix plus the largest DNS message.
const MAX_BUFFER: usize = 2 + 65_535;

/// One direction of one connection, as seen on one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub ifindex: u32,
}

struct Stream {
    next_seq: u32,
    buf: Vec<u8>,
}

/// Why bytes of a stream were given up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// A segment's payload was cut at the capture cap: the stream restarts at the next segment.
    pub cut: u64,
    /// A segment arrived after a gap (a lost or unseen segment): buffered bytes dropped.
    pub gaps: u64,
    /// Connections forgotten to stay within the connection limit.
    pub evicted: u64,
}

pub struct TcpStreams {
    streams: LruCache<StreamKey, Stream>,
    pub stats: TcpStats,
}

impl TcpStreams {
    pub fn new(max_streams: usize) -> Self {
        Self {
            streams: LruCache::new(NonZeroUsize::new(max_streams.max(1)).expect("non-zero")),
            stats: TcpStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Feeds one segment; returns the DNS messages it completed (without length prefixes).
    /// `complete` is false when the payload was cut at the capture cap.
    pub fn segment(
        &mut self,
        key: StreamKey,
        seq: u32,
        flags: u8,
        payload: &[u8],
        complete: bool,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if flags & RST != 0 {
            self.streams.pop(&key);
            return out;
        }
        // Data on a SYN (TCP Fast Open) starts one past the SYN's sequence number.
        let data_seq = if flags & SYN != 0 {
            self.streams.pop(&key);
            seq.wrapping_add(1)
        } else {
            seq
        };
        if !complete {
            // Bytes are missing from this segment: nothing after it can be framed reliably.
            self.stats.cut += 1;
            self.streams.pop(&key);
            return out;
        }
        if !payload.is_empty() {
            if !self.streams.contains(&key) && self.streams.len() == self.streams.cap().get() {
                // Inserting pushes the least recently used connection out.
                self.stats.evicted += 1;
            }
            let stream = self.streams.get_or_insert_mut(key, || Stream {
                next_seq: data_seq,
                buf: Vec::new(),
            });
            let ahead = data_seq.wrapping_sub(stream.next_seq) as i32;
            let fresh: &[u8] = if ahead > 0 {
                self.stats.gaps += 1;
                stream.buf.clear();
                stream.next_seq = data_seq;
                payload
            } else {
                // Retransmitted bytes (ahead < 0) are skipped; the rest is new.
                let skip = (-(ahead as i64)) as usize;
                payload.get(skip..).unwrap_or(&[])
            };
            stream.buf.extend_from_slice(fresh);
            stream.next_seq = stream.next_seq.wrapping_add(fresh.len() as u32);
            while stream.buf.len() >= 2 {
                let len = u16::from_be_bytes([stream.buf[0], stream.buf[1]]) as usize;
                if stream.buf.len() < 2 + len {
                    break;
                }
                out.push(stream.buf[2..2 + len].to_vec());
                stream.buf.drain(..2 + len);
            }
            if stream.buf.len() > MAX_BUFFER {
                stream.buf.clear();
                self.stats.gaps += 1;
            }
        }
        if flags & FIN != 0 {
            self.streams.pop(&key);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StreamKey {
        StreamKey {
            src: [1; 16],
            dst: [2; 16],
            sport: 40000,
            dport: 53,
            ifindex: 1,
        }
    }

    fn framed(msgs: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for m in msgs {
            v.extend_from_slice(&(m.len() as u16).to_be_bytes());
            v.extend_from_slice(m);
        }
        v
    }

    #[test]
    fn several_messages_in_one_segment() {
        let mut t = TcpStreams::new(8);
        let data = framed(&[b"first", b"second!"]);
        let out = t.segment(key(), 1000, 0x18, &data, true);
        assert_eq!(out, vec![b"first".to_vec(), b"second!".to_vec()]);
    }

    #[test]
    fn a_message_split_across_segments_and_a_retransmission() {
        let mut t = TcpStreams::new(8);
        let data = framed(&[b"split-over-three-segments"]);
        assert!(t.segment(key(), 100, 0x02, &[], true).is_empty());
        assert!(t.segment(key(), 101, 0x18, &data[..1], true).is_empty());
        assert!(t.segment(key(), 102, 0x18, &data[1..10], true).is_empty());
        // The second segment again, then the rest.
        assert!(t.segment(key(), 102, 0x18, &data[1..10], true).is_empty());
        let out = t.segment(key(), 111, 0x18, &data[10..], true);
        assert_eq!(out, vec![b"split-over-three-segments".to_vec()]);
    }

    #[test]
    fn overlapping_retransmission_adds_only_new_bytes() {
        let mut t = TcpStreams::new(8);
        let data = framed(&[b"abcdefgh"]);
        assert!(t.segment(key(), 0, 0x10, &data[..6], true).is_empty());
        let out = t.segment(key(), 3, 0x10, &data[3..], true);
        assert_eq!(out, vec![b"abcdefgh".to_vec()]);
    }

    #[test]
    fn a_gap_drops_the_partial_message_and_resynchronises() {
        let mut t = TcpStreams::new(8);
        let a = framed(&[b"lost-tail-message"]);
        assert!(t.segment(key(), 0, 0x10, &a[..5], true).is_empty());
        let b = framed(&[b"next"]);
        let out = t.segment(key(), 500, 0x10, &b, true);
        assert_eq!(out, vec![b"next".to_vec()]);
        assert_eq!(t.stats.gaps, 1);
    }

    #[test]
    fn cut_payloads_and_resets_forget_the_stream() {
        let mut t = TcpStreams::new(8);
        let a = framed(&[b"0123456789"]);
        assert!(t.segment(key(), 0, 0x10, &a[..4], true).is_empty());
        assert!(t.segment(key(), 4, 0x10, &a[4..6], false).is_empty());
        assert_eq!((t.stats.cut, t.len()), (1, 0));
        assert!(t.segment(key(), 0, 0x10, &a[..4], true).is_empty());
        assert!(t.segment(key(), 4, 0x04, &[], true).is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn the_number_of_connections_is_bounded() {
        let mut t = TcpStreams::new(2);
        for port in 0..5u16 {
            let k = StreamKey {
                sport: port,
                ..key()
            };
            t.segment(k, 0, 0x10, &[0, 9, 1], true);
        }
        assert_eq!(t.len(), 2);
    }
}
