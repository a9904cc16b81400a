//! Reassembly against hand-made segment sequences: splits, retransmissions, holes inside and
//! across messages, cut super-segments, and every bound.

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

fn limits() -> TcpLimits {
    TcpLimits {
        max_streams: 8,
        max_bytes: 1 << 20,
        max_message: 65_535,
        idle_ns: 30_000_000_000,
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

/// A message of `n` bytes that starts like a DNS header.
fn msg(tag: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| tag.wrapping_add(i as u8)).collect()
}

fn whole(b: &[u8]) -> Reassembled {
    Reassembled {
        bytes: b.to_vec(),
        cut: false,
    }
}

/// Feeds a whole segment.
fn seg(t: &mut TcpStreams, seq: u32, flags: u8, data: &[u8]) -> Vec<Reassembled> {
    t.segment(key(), seq, flags, 0, data, data.len())
}

#[test]
fn several_messages_in_one_segment() {
    let mut t = TcpStreams::new(limits());
    let (a, b) = (msg(1, 20), msg(2, 30));
    let out = seg(&mut t, 1000, 0x18, &framed(&[&a, &b]));
    assert_eq!(out, vec![whole(&a), whole(&b)]);
}

#[test]
fn a_message_split_across_segments_and_a_retransmission() {
    let mut t = TcpStreams::new(limits());
    let m = msg(3, 25);
    let data = framed(&[&m]);
    assert!(seg(&mut t, 100, 0x02, &[]).is_empty());
    assert!(seg(&mut t, 101, 0x18, &data[..1]).is_empty());
    assert!(seg(&mut t, 102, 0x18, &data[1..10]).is_empty());
    // The second segment again, then the rest.
    assert!(seg(&mut t, 102, 0x18, &data[1..10]).is_empty());
    let out = seg(&mut t, 111, 0x18, &data[10..]);
    assert_eq!(out, vec![whole(&m)]);
}

#[test]
fn overlapping_retransmission_adds_only_new_bytes() {
    let mut t = TcpStreams::new(limits());
    let m = msg(4, 16);
    let data = framed(&[&m]);
    assert!(seg(&mut t, 0, 0x10, &data[..6]).is_empty());
    let out = seg(&mut t, 3, 0x10, &data[3..]);
    assert_eq!(out, vec![whole(&m)]);
}

#[test]
fn a_cut_super_segment_hands_its_message_on_cut_and_the_next_one_whole() {
    // A 6,000-byte response in one TSO/GRO super-segment captured to 4,096 bytes, then a
    // second response on the same connection.
    let mut t = TcpStreams::new(limits());
    let big = msg(5, 6000);
    let next = msg(6, 40);
    let data = framed(&[&big]);
    let out = t.segment(key(), 0, 0x18, 0, &data[..4096], data.len());
    assert_eq!(
        out,
        vec![Reassembled {
            bytes: big[..4094].to_vec(),
            cut: true
        }]
    );
    let out = seg(&mut t, data.len() as u32, 0x18, &framed(&[&next]));
    assert_eq!(out, vec![whole(&next)]);
    assert_eq!((t.stats.cut, t.stats.resyncs), (1, 0));
}

#[test]
fn a_lost_segment_inside_a_message_keeps_the_framing() {
    let mut t = TcpStreams::new(limits());
    let m = msg(7, 100);
    let after = msg(8, 20);
    let data = framed(&[&m, &after]);
    assert!(seg(&mut t, 0, 0x10, &data[..30]).is_empty());
    // Bytes 30..60 never seen.
    let out = seg(&mut t, 60, 0x10, &data[60..]);
    assert_eq!(
        out,
        vec![
            Reassembled {
                bytes: [&m[..28], &m[58..]].concat(),
                cut: true
            },
            whole(&after)
        ]
    );
    assert_eq!((t.stats.gaps, t.stats.resyncs), (1, 0));
}

#[test]
fn a_hole_across_a_length_prefix_resynchronises_at_the_next_segment() {
    let mut t = TcpStreams::new(limits());
    let a = framed(&[&msg(9, 17)]);
    assert!(seg(&mut t, 0, 0x10, &a[..5]).is_empty());
    let b = msg(10, 14);
    // 495 bytes unseen: past the first message's end, into whatever followed it.
    let out = seg(&mut t, 500, 0x10, &framed(&[&b]));
    assert_eq!(
        out,
        vec![whole(&b)],
        "the 3 bytes of the first are no DNS header: dropped"
    );
    assert_eq!((t.stats.gaps, t.stats.resyncs), (1, 1));
}

#[test]
fn resets_forget_the_stream() {
    let mut t = TcpStreams::new(limits());
    let a = framed(&[&msg(11, 20)]);
    assert!(seg(&mut t, 0, 0x10, &a[..4]).is_empty());
    assert_eq!(t.held_bytes(), 2);
    assert!(seg(&mut t, 4, 0x04, &[]).is_empty());
    assert!(t.is_empty());
    assert_eq!(t.held_bytes(), 0);
}

#[test]
fn the_number_of_connections_is_bounded() {
    let mut t = TcpStreams::new(TcpLimits {
        max_streams: 2,
        ..limits()
    });
    for port in 0..5u16 {
        let k = StreamKey {
            sport: port,
            ..key()
        };
        t.segment(k, 0, 0x10, 0, &[0, 9, 1], 3);
    }
    assert_eq!((t.len(), t.stats.evicted), (2, 3));
}

#[test]
fn the_byte_budget_forgets_the_least_recent_connections() {
    let mut t = TcpStreams::new(TcpLimits {
        max_bytes: 1000,
        ..limits()
    });
    // Five connections, each 400 bytes into a 60,000-byte message.
    for port in 0..5u16 {
        let k = StreamKey {
            sport: port,
            ..key()
        };
        let mut data = 60_000u16.to_be_bytes().to_vec();
        data.extend(msg(12, 400));
        t.segment(k, 0, 0x10, 0, &data, data.len());
        assert!(t.held_bytes() <= 1000, "{}", t.held_bytes());
    }
    assert_eq!(t.len(), 2);
    assert_eq!(t.stats.evicted_bytes, 3);
}

#[test]
fn one_message_keeps_at_most_the_per_message_cap() {
    let mut t = TcpStreams::new(TcpLimits {
        max_message: 100,
        ..limits()
    });
    let m = msg(13, 5000);
    let out = seg(&mut t, 0, 0x10, &framed(&[&m]));
    assert_eq!(
        out,
        vec![Reassembled {
            bytes: m[..100].to_vec(),
            cut: true
        }]
    );
    assert_eq!(t.stats.capped, 1);
}

#[test]
fn quiet_connections_expire() {
    let mut t = TcpStreams::new(limits());
    let a = framed(&[&msg(14, 20)]);
    t.segment(key(), 0, 0x10, 1_000, &a[..5], 5);
    t.expire(1_000 + 29_000_000_000);
    assert_eq!(t.len(), 1);
    t.expire(1_000 + 30_000_000_000);
    assert_eq!((t.len(), t.held_bytes(), t.stats.expired), (0, 0, 1));
}
