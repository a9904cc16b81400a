use super::{
    hello::tests::{ClientHelloBytes, server_hello},
    *,
};
use crate::flow::tls::TlsInfo;

fn tracker(max_pending_bytes: usize) -> TlsTracker {
    TlsTracker::new(TlsTrackerConfig {
        timeout_ns: 1_000,
        max_pending_bytes,
    })
}

/// An event of the client 10.0.0.1:40000 -> 10.0.0.2:443 (or the reverse) at `seq`.
fn event(client: bool, seq: u32, ts: u64, payload: &[u8]) -> (PayloadHeader, Vec<u8>) {
    let a = |last: u8| {
        let mut x = [0u8; 16];
        x[10] = 0xff;
        x[11] = 0xff;
        x[12..].copy_from_slice(&[10, 0, 0, last]);
        x
    };
    let (src, dst, sp, dp) = if client {
        (a(1), a(2), 40000, 443)
    } else {
        (a(2), a(1), 443, 40000)
    };
    let h = PayloadHeader {
        ts_ns: ts,
        src_addr: src,
        dst_addr: dst,
        src_port: sp,
        dst_port: dp,
        tcp_seq: seq,
        payload_len: payload.len() as u32,
        cap_len: payload.len() as u16,
        proto: IPPROTO_TCP,
        ..Default::default()
    };
    (h, payload.to_vec())
}

/// The one thing the tracker found: a ClientHello, and its key.
fn the_client_hello(t: &mut TlsTracker) -> (FlowKey, TlsInfo) {
    let found = t.take_found();
    assert_eq!(found.len(), 1, "{:?}", t.stats);
    match &found[0].what {
        Seen::Client(info) => (found[0].key, info.clone()),
        other => panic!("{other:?}"),
    }
}

fn big_hello() -> Vec<u8> {
    let mut h = ClientHelloBytes::spec_example("big.example");
    let protos: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("proto-{i:04}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = protos.iter().map(Vec::as_slice).collect();
    h.extensions[4] = hello::tests::alpn(&refs);
    h.record()
}

#[test]
fn a_hello_in_segments_out_of_order_and_repeated_is_read_once_whole() {
    let rec = big_hello();
    assert!(rec.len() > 3000);
    let mut t = tracker(1 << 20);
    let base = u32::MAX - 1000; // the sequence wraps inside the hello
    let pieces: Vec<(u32, &[u8])> = rec
        .chunks(1448)
        .enumerate()
        .map(|(i, c)| (base.wrapping_add(i as u32 * 1448), c))
        .collect();
    // First segment, then the last, a repeat of the first, then the middle.
    let order = [0, pieces.len() - 1, 0, 1];
    for &i in &order {
        let (h, p) = event(true, pieces[i].0, 10, pieces[i].1);
        t.on_event(&h, &p);
    }
    let (key, info) = the_client_hello(&mut t);
    assert_eq!(info.sni.as_deref(), Some("big.example"));
    assert_eq!(info.alpn.len(), hello::MAX_ALPN);
    assert_eq!(key.src_port, 40000);
    assert_eq!(t.pending(), (0, 0));
    // The ServerHello is told for the client's direction.
    let (h, p) = event(false, 5, 11, &server_hello(0x0304));
    t.on_event(&h, &p);
    let found = t.take_found();
    assert_eq!(found[0].what, Seen::Server("TLSv1.3"));
    assert_eq!(found[0].key.src_port, 40000);
}

#[test]
fn a_hello_missing_segments_times_out_and_the_byte_budget_evicts_the_oldest() {
    let rec = big_hello();
    let mut t = tracker(1 << 20);
    let (h, p) = event(true, 1, 10, &rec[..1448]);
    t.on_event(&h, &p);
    assert_eq!(t.pending().0, 1);
    t.expire(500);
    assert_eq!(t.pending().0, 1);
    t.expire(1_010);
    assert_eq!(t.pending(), (0, 0));
    assert_eq!(t.stats.failed["timeout"], 1);
    // A segment whose hello is gone.
    let (h, p) = event(true, 1449, 1_020, &rec[1448..2896]);
    t.on_event(&h, &p);
    assert_eq!(t.stats.failed["orphan"], 1);

    let mut t = tracker(rec.len() + STREAM_COST + 10);
    let (h, p) = event(true, 1, 10, &rec[..1448]);
    t.on_event(&h, &p);
    let (mut h, p) = event(true, 1, 11, &rec[..1448]);
    h.src_port = 40001;
    t.on_event(&h, &p);
    assert_eq!(t.pending(), (1, rec.len() + STREAM_COST));
    assert_eq!(t.stats.failed["evicted"], 1);
    assert!(t.take_found().is_empty());
}

#[test]
fn other_payloads_and_broken_hellos_are_counted_not_found() {
    let mut t = tracker(1 << 20);
    let (h, p) = event(true, 1, 1, b"\x17\x03\x03\x00\x10application data");
    t.on_event(&h, &p);
    // A whole record whose ClientHello is ten bytes of garbage.
    let mut broken = vec![0x16, 3, 1, 0, 14, 1, 0, 0, 10];
    broken.extend_from_slice(&[0xff; 10]);
    let (h, p) = event(true, 1, 2, &broken);
    t.on_event(&h, &p);
    // A record shorter than its message, whose next records never come.
    let mut short = ClientHelloBytes::spec_example("x").record();
    short.truncate(60);
    short[3..5].copy_from_slice(&55u16.to_be_bytes());
    let (mut h, p) = event(true, 1, 3, &short);
    h.src_port = 40001;
    t.on_event(&h, &p);
    assert_eq!(t.pending().0, 1, "its next records may come");
    t.expire(10_000);
    assert!(t.take_found().is_empty());
    assert_eq!(t.stats.failed["orphan"], 1);
    assert_eq!(t.stats.failed["malformed"], 1);
    assert_eq!(t.stats.failed["timeout"], 1);
}

#[test]
fn a_hello_in_many_records_and_segments_and_a_server_hello_cut_by_its_segment_are_read() {
    let mut t = tracker(1 << 20);
    let hello = ClientHelloBytes::spec_example("records.example");
    let stream = hello.records(60);
    assert!(stream.len() > 4 * 65, "several records");
    for (i, piece) in stream.chunks(100).enumerate() {
        let (h, p) = event(true, 1 + 100 * i as u32, 10, piece);
        t.on_event(&h, &p);
    }
    let (_, info) = the_client_hello(&mut t);
    assert_eq!(info.sni.as_deref(), Some("records.example"));
    // A ServerHello and the start of a Certificate in one record, cut by the segment's end.
    let sh = server_hello(0x0304);
    let mut rec = sh[..5].to_vec();
    rec.extend_from_slice(&sh[5..]);
    rec.extend_from_slice(&[11, 0, 0x0b, 0xb8]);
    rec.extend_from_slice(&[0; 200]);
    let len = (rec.len() - 5 + 2800) as u16;
    rec[3..5].copy_from_slice(&len.to_be_bytes());
    let (h, p) = event(false, 9, 11, &rec);
    t.on_event(&h, &p);
    assert_eq!(t.take_found()[0].what, Seen::Server("TLSv1.3"));
}
