//! Property tests: random and mutated payloads through the parser, the TCP reassembly and the
//! matcher never panic, and every string they produce stays on one printable line.

use devourer_common::payload::PayloadHeader;
use proptest::prelude::*;

use super::{DnsConfig, DnsOutput, DnsTracker, message::parse, testwire::*};
use crate::base::local::LocalAddrs;

fn seeds() -> Vec<Vec<u8>> {
    vec![
        query(1, "www.example.com", 1),
        response(
            1,
            0,
            "www.example.com",
            1,
            &[
                cname("www.example.com", 60, "edge.example.net"),
                a("edge.example.net", 30, [192, 0, 2, 1]),
            ],
        ),
        response(2, 3, "nx.example", 28, &[]),
        response(
            3,
            0,
            "t.example",
            16,
            &[txt("t.example", 5, &[b"hello", b"\x00\xff\n"])],
        ),
    ]
}

fn tracker() -> DnsTracker {
    DnsTracker::new(
        DnsConfig {
            timeout_ns: 1_000_000_000,
            max_pending: 64,
            tcp: super::tcp::TcpLimits {
                max_streams: 16,
                max_bytes: 256 << 10,
                max_message: 65_535,
                idle_ns: 30_000_000_000,
            },
            name_cache_entries: 64,
            shared_names: false,
            text_log: true,
        },
        LocalAddrs::new(vec!["10.0.0.0/8".parse().unwrap()]),
    )
}

fn header(tcp: bool, seq: u32, flags: u8, len: usize, ts: u64, swap: bool) -> PayloadHeader {
    let (a, b) = ([10u8; 16], [20u8; 16]);
    PayloadHeader {
        ts_ns: ts,
        src_addr: if swap { b } else { a },
        dst_addr: if swap { a } else { b },
        src_port: if swap { 53 } else { 40000 },
        dst_port: if swap { 40000 } else { 53 },
        ifindex: 1,
        tcp_seq: seq,
        payload_len: len as u32,
        cap_len: len as u16,
        proto: if tcp { 6 } else { 17 },
        flags: 0,
        tcp_flags: flags,
        _pad: [0; 11],
    }
}

fn assert_printable(out: &DnsOutput) {
    for l in &out.lines {
        assert!(
            l.body.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "{:?}",
            l.body
        );
    }
    for t in &out.txs {
        for a in &t.answers {
            assert!(a.bytes().all(|b| (0x20..0x7f).contains(&b)), "{a:?}");
        }
        if let Some(q) = &t.question {
            assert!(
                q.name.bytes().all(|b| (0x21..0x7f).contains(&b)),
                "{:?}",
                q.name
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&bytes);
        let mut t = tracker();
        let mut out = DnsOutput::default();
        t.on_event(&header(false, 0, 0, bytes.len(), 1, false), &bytes, &mut out);
        t.on_event(&header(true, 7, 0x18, bytes.len(), 2, true), &bytes, &mut out);
        assert_printable(&out);
    }

    #[test]
    fn mutated_messages_never_panic(
        which in 0usize..4,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        tcp in any::<bool>(),
        seq in any::<u32>(),
        flags in any::<u8>(),
    ) {
        let mut m = seeds()[which].clone();
        for (at, byte) in &edits {
            let i = at.index(m.len());
            m[i] = *byte;
        }
        let m = &m[..cut.index(m.len() + 1)];
        let _ = parse(m);
        let mut t = tracker();
        let mut out = DnsOutput::default();
        // The query, then the mutated message both ways, as datagrams or framed segments.
        let q = query(1, "www.example.com", 1);
        t.on_event(&header(false, 0, 0, q.len(), 1, false), &q, &mut out);
        let mut framed = (m.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(m);
        let payload = if tcp { &framed[..] } else { m };
        t.on_event(&header(tcp, seq, flags, payload.len(), 2, true), payload, &mut out);
        t.on_event(&header(tcp, seq, flags, payload.len(), 3, false), payload, &mut out);
        t.expire(10_000_000_000, &mut out);
        t.flush(&mut out);
        assert_printable(&out);
    }
}
