//! Flow table behaviour against a fake per-CPU map that counts like the kernel program.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use devourer_common::flow::{FlowKey, FlowValue, VAL_F_ICMP, VAL_F_SYN};

use super::*;
use crate::kernel::tcp::Retransmit;

const S: u64 = 1_000_000_000;
const NCPU: usize = 4;

fn cfg() -> TableConfig {
    TableConfig {
        idle_timeout: 10 * S,
        active_timeout: 60 * S,
        tcp_linger: 2 * S,
        evict_after: 3 * S,
        max_flows: usize::MAX,
        start_records: false,
        drain: false,
    }
}

/// A per-CPU hash as the kernel program fills it.
#[derive(Default)]
struct FakeMap {
    entries: BTreeMap<FlowKey, [FlowValue; NCPU]>,
    capacity: usize,
    /// Packets that arrive between the table's read and its delete (the eviction race).
    on_take: Vec<(FlowKey, usize, u64, u64)>,
    takes: usize,
    /// Batched drains of the whole map.
    drains: usize,
    /// Reads of the whole map.
    reads: usize,
}

impl FakeMap {
    fn new() -> Self {
        Self {
            capacity: 1024,
            ..Default::default()
        }
    }

    fn packet(&mut self, cpu: usize, key: FlowKey, ts: u64, bytes: u64, tcp: u16, flags: u8) {
        let slot = &mut self.entries.entry(key).or_default()[cpu];
        if slot.first_ns == 0 || ts < slot.first_ns {
            slot.first_ns = ts;
        }
        slot.last_ns = slot.last_ns.max(ts);
        slot.bytes += bytes;
        slot.packets += 1;
        slot.add_flags(tcp, flags);
        // What the counting program notes of a handshake (see devourer-ebpf's rtt.rs).
        if tcp & 0x04 == 0 {
            if tcp & 0x02 != 0 {
                slot.syn_ns = ts;
            } else if tcp & 0x12 == 0x10 && slot.ack_ns == 0 {
                slot.ack_ns = ts;
            }
        }
    }
}

impl FlowSource for FakeMap {
    fn read_all(&mut self, f: &mut dyn FnMut(FlowKey, FlowValue)) -> io::Result<()> {
        self.reads += 1;
        for (k, slots) in &self.entries {
            if let Some(v) = sum_per_cpu(slots.iter().copied()) {
                f(*k, v);
            }
        }
        Ok(())
    }

    fn take(&mut self, key: &FlowKey) -> io::Result<Option<FlowValue>> {
        self.takes += 1;
        for (k, cpu, ts, bytes) in std::mem::take(&mut self.on_take) {
            self.packet(cpu, k, ts, bytes, 0, 0);
        }
        Ok(self.entries.remove(key).and_then(sum_per_cpu))
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn take_all(&mut self, f: &mut dyn FnMut(FlowKey, FlowValue)) -> io::Result<()> {
        self.drains += 1;
        for (k, slots) in std::mem::take(&mut self.entries) {
            if let Some(v) = sum_per_cpu(slots) {
                f(k, v);
            }
        }
        Ok(())
    }
}

/// Flushes the table with no kernel reports.
fn flush(t: &mut FlowTable, m: &mut FakeMap, status: Status, now: u64) -> Vec<Emitted> {
    t.flush(m, status, &mut NoNames, now, &Reports::default())
        .unwrap()
}

fn key(a: u8, ap: u16, b: u8, bp: u16, proto: u8) -> FlowKey {
    let mut k = FlowKey {
        src_port: ap,
        dst_port: bp,
        proto,
        ifindex: 2,
        ..Default::default()
    };
    k.src_addr[15] = a;
    k.dst_addr[15] = b;
    k
}

fn rev(k: FlowKey) -> FlowKey {
    super::entry::reverse(&k)
}

fn scan(t: &mut FlowTable, m: &mut FakeMap, now: u64) -> Vec<Emitted> {
    t.scan(
        m,
        now,
        false,
        &mut ScanStats::default(),
        &mut NoNames,
        &Reports::default(),
    )
    .unwrap()
}

/// A kernel value of `packets` ICMP packets of type `ty` (`None`: not ICMP) from `first` to
/// `last`.
fn icmp_value(first: u64, last: u64, bytes: u64, packets: u64, ty: Option<u8>) -> FlowValue {
    let mut v = FlowValue {
        first_ns: first,
        last_ns: last,
        bytes,
        packets,
        ..Default::default()
    };
    if let Some(ty) = ty {
        v.add_flags(0, VAL_F_ICMP);
        v.set_icmp(ty, 0);
    }
    v
}

#[test]
fn per_cpu_slots_sum_with_earliest_first_packet_and_its_icmp_type() {
    let a = icmp_value(20, 50, 100, 2, Some(0));
    let b = icmp_value(10, 30, 60, 1, Some(8));
    let v = sum_per_cpu([FlowValue::default(), a, FlowValue::default(), b]).unwrap();
    assert_eq!(
        (v.first_ns, v.last_ns, v.bytes, v.packets),
        (10, 50, 160, 3)
    );
    assert_eq!(v.icmp_type(), 8);
    assert!(sum_per_cpu([FlowValue::default(); 3]).is_none());
}

#[test]
fn both_directions_merge_with_the_syn_sender_as_source() {
    let mut m = FakeMap::new();
    let mut t = FlowTable::new(cfg());
    // Client 9:40000 -> server 1:80. The server's reply is stamped earlier on another CPU
    // (clocks differ per CPU): the bare SYN still decides who initiated.
    let c2s = key(9, 40000, 1, 80, 6);
    m.packet(0, rev(c2s), S + 5, 60, 0x12, 0);
    m.packet(1, c2s, S + 10, 60, 0x02, VAL_F_SYN);
    m.packet(1, c2s, S + 20, 52, 0x10, 0);
    assert!(scan(&mut t, &mut m, 2 * S).is_empty());
    let out = scan(&mut t, &mut m, 20 * S);
    assert_eq!(out.len(), 1);
    let r = &out[0];
    assert_eq!(r.key.src_addr[15], 9);
    assert_eq!((r.key.src_port, r.key.dst_port), (40000, 80));
    assert_eq!((r.src.bytes, r.src.packets), (112, 2));
    assert_eq!((r.dst.bytes, r.dst.packets), (60, 1));
    assert_eq!(r.status, Status::IdleTimeout);
    assert_eq!(r.tcp_flags(), 0x12);
    assert_eq!(r.first_ns, S + 5);
    assert_eq!(r.last_ns, S + 20);
}

#[test]
fn without_syn_the_first_sender_is_the_source() {
    let mut m = FakeMap::new();
    let mut t = FlowTable::new(cfg());
    let q = key(1, 53, 9, 5353, 17);
    m.packet(0, rev(q), S, 70, 0, 0);
    m.packet(0, q, S + 100, 200, 0, 0);
    let out = scan(&mut t, &mut m, 30 * S);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].key.src_addr[15], 9);
    assert_eq!(out[0].key.src_port, 5353);
    assert_eq!(out[0].src.bytes, 70);
    assert_eq!(out[0].dst.bytes, 200);
}

#[test]
fn idle_timeout_waits_for_quiet_and_emits_once() {
    let mut m = FakeMap::new();
    let mut t = FlowTable::new(cfg());
    let k = key(1, 1000, 2, 2000, 17);
    m.packet(0, k, S, 100, 0, 0);
    m.packet(0, k, 5 * S, 100, 0, 0);
    assert!(
        scan(&mut t, &mut m, 14 * S).is_empty(),
        "quiet 9s < 10s idle"
    );
    let out = scan(&mut t, &mut m, 15 * S);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].src.packets, 2);
    assert!(scan(&mut t, &mut m, 30 * S).is_empty());
    assert!(t.is_empty());
    assert!(m.entries.is_empty(), "kernel entry deleted");
}

#[test]
fn active_timeout_emits_deltas_with_increasing_seq_and_one_flow_start() {
    let mut m = FakeMap::new();
    let mut t = FlowTable::new(cfg());
    let k = key(1, 1000, 2, 2000, 6);
    let mut out = Vec::new();
    // A packet every second for 150 s, scans every second.
    for s in 1..=150u64 {
        m.packet((s % 3) as usize, k, s * S, 10, 0x10, 0);
        out.extend(scan(&mut t, &mut m, s * S + S / 2));
    }
    out.extend(scan(&mut t, &mut m, 200 * S));
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(
        out.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![
            Status::ActiveTimeout,
            Status::ActiveTimeout,
            Status::IdleTimeout
        ]
    );
    assert!(out.iter().all(|r| r.flow_start_ns == S));
    let total: u64 = out.iter().map(|r| r.src.packets).sum();
    assert_eq!(total, 150, "deltas add up to every packet exactly once");
    // Each continuation starts at the first packet after the previous record's end.
    assert_eq!(out[1].first_ns, out[0].last_ns + S);
    assert_eq!(out[2].first_ns, out[1].last_ns + S);
}

#[test]
fn tcp_close_is_emitted_after_the_linger_not_before() {
    let mut m = FakeMap::new();
    let mut t = FlowTable::new(cfg());
    let k = key(1, 1000, 2, 80, 6);
    m.packet(0, k, S, 60, 0x02, VAL_F_SYN);
    m.packet(0, rev(k), S + 1, 60, 0x12, 0);
    m.packet(0, k, 2 * S, 52, 0x11, 0);
    m.packet(0, rev(k), 2 * S + 1, 52, 0x11, 0);
    assert!(scan(&mut t, &mut m, 3 * S).is_empty(), "within linger");
    m.packet(0, k, 3 * S, 52, 0x10, 0);
    let out = scan(&mut t, &mut m, 5 * S + 1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].status, Status::TcpClosed);
    assert_eq!(out[0].src.packets, 3, "the last ACK is in the record");
}

#[test]
fn rst_alone_closes() {
    let mut m = FakeMap::new();
    let mut t = FlowTable::new(cfg());
    let k = key(1, 1000, 2, 80, 6);
    m.packet(0, k, S, 60, 0x02, VAL_F_SYN);
    m.packet(0, rev(k), S + 1, 40, 0x14, 0);
    let out = scan(&mut t, &mut m, 4 * S);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].status, Status::TcpClosed);
}

#[test]
fn a_packet_between_read_and_delete_is_kept_and_keeps_the_flow_open() {
    let mut m = FakeMap::new();
    let mut t = FlowTable::new(cfg());
    let k = key(1, 1000, 2, 2000, 17);
    m.packet(0, k, S, 100, 0, 0);
    // At 11 s the entry reads as idle; while the table deletes it, a packet lands.
    m.on_take.push((k, 1, 11 * S, 40));
    let out = scan(&mut t, &mut m, 11 * S);
    assert!(
        out.is_empty(),
        "the late packet keeps the flow from idling: {out:?}"
    );
    let out = scan(&mut t, &mut m, 30 * S);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].src.packets, out[0].src.bytes), (2, 140));
}

#[test]
fn quiet_entries_leave_the_kernel_map_but_not_the_record() {
    let mut m = FakeMap::new();
    let mut t = FlowTable::new(cfg());
    let k = key(1, 1000, 2, 2000, 17);
    m.packet(0, k, S, 100, 0, 0);
    assert!(scan(&mut t, &mut m, 5 * S).is_empty());
    assert!(m.entries.is_empty(), "evicted after 3 s quiet");
    m.packet(1, k, 8 * S, 50, 0, 0);
    m.packet(1, rev(k), 8 * S + 1, 70, 0, 0);
    assert!(scan(&mut t, &mut m, 9 * S).is_empty());
    let out = scan(&mut t, &mut m, 19 * S);
    assert_eq!(out.len(), 1, "{out:?}");
    let r = &out[0];
    assert_eq!((r.src.packets, r.src.bytes, r.dst.bytes), (2, 150, 70));
    assert_eq!((r.first_ns, r.last_ns), (S, 8 * S + 1));
}

#[test]
fn a_mostly_quiet_map_is_drained_in_one_batch_and_active_flows_keep_every_packet() {
    let mut m = FakeMap::new();
    m.capacity = 4096;
    let mut t = FlowTable::new(cfg());
    let active = key(9, 9000, 2, 443, 6);
    for i in 0..1000u16 {
        m.packet(0, key(1, 1000 + i, 2, 53, 17), S, 80, 0, 0);
    }
    m.packet(0, active, S, 100, 0, 0);
    m.packet(1, active, 5 * S, 100, 0, 0);
    // At 5 s, 1000 of 1001 entries have been quiet for 4 s (evict_after 3 s).
    assert!(scan(&mut t, &mut m, 5 * S).is_empty());
    assert_eq!(
        (m.drains, m.takes),
        (1, 0),
        "one batch, no delete per entry"
    );
    assert!(m.entries.is_empty(), "the active entry went with the batch");
    // Its next packet starts a fresh entry; the record holds both parts.
    m.packet(0, active, 6 * S, 100, 0, 0);
    let out = scan(&mut t, &mut m, 20 * S);
    assert_eq!(out.len(), 1001);
    let r = out
        .iter()
        .find(|r| r.key.src_port == 9000)
        .expect("active flow");
    assert_eq!((r.src.packets, r.src.bytes), (3, 300));
    assert_eq!((r.first_ns, r.last_ns), (S, 6 * S));
    assert!(out.iter().all(|r| r.src.packets >= 1 && r.src.bytes >= 80));
}

#[test]
fn entries_quiet_since_their_last_read_are_drained_without_reading_them_again() {
    let mut m = FakeMap::new();
    m.capacity = 4096;
    let mut t = FlowTable::new(cfg());
    let first = key(1, 1000, 2, 53, 17);
    for i in 0..1000u16 {
        m.packet(0, key(1, 1000 + i, 2, 53, 17), S, 80, 0, 0);
    }
    // At 2 s every entry is active (evict_after 3 s): read and kept.
    assert!(scan(&mut t, &mut m, 2 * S).is_empty());
    assert_eq!((m.reads, m.drains, m.entries.len()), (1, 0, 1000));
    // Before the next scan, a packet on a known flow and a new flow.
    let new = key(7, 7000, 2, 80, 6);
    m.packet(1, first, 4 * S, 80, 0, 0);
    m.packet(1, new, 4 * S, 100, 0, 0);
    // At 5 s the 1000 entries read at 2 s have been quiet for 4 s by what they held then.
    assert!(scan(&mut t, &mut m, 5 * S).is_empty());
    assert_eq!((m.reads, m.drains), (1, 1), "drained without a read first");
    assert!(m.entries.is_empty());
    // Every packet is in a record, the late ones included.
    let out = scan(&mut t, &mut m, 20 * S);
    assert_eq!(out.len(), 1001);
    let packets = |k: FlowKey| {
        out.iter()
            .find(|r| r.key == k)
            .map(|r| (r.src.packets, r.last_ns))
    };
    assert_eq!(packets(first), Some((2, 4 * S)));
    assert_eq!(packets(new), Some((1, 4 * S)));
    assert_eq!(out.iter().map(|r| r.src.packets).sum::<u64>(), 1002);
}

#[test]
fn active_flows_whose_records_were_just_cut_are_read_not_drained() {
    let mut m = FakeMap::new();
    m.capacity = 4096;
    let mut t = FlowTable::new(TableConfig {
        active_timeout: 4 * S,
        ..cfg()
    });
    let flows: Vec<FlowKey> = (0..1000u16).map(|i| key(1, 1000 + i, 2, 443, 17)).collect();
    for s in 1..=6 {
        for k in &flows {
            m.packet(0, *k, s * S, 100, 0, 0);
        }
        let out = scan(&mut t, &mut m, s * S + 1);
        // At 5 s every record is cut at its active timeout; the entries stay busy.
        assert_eq!(out.len(), if s == 5 { 1000 } else { 0 }, "at {s} s");
    }
    assert_eq!(m.drains, 0, "busy entries are read, never drained");
    assert_eq!(m.entries.len(), 1000);
}

#[test]
fn pressure_evicts_the_least_recently_active_half_without_losing_counts() {
    let mut m = FakeMap::new();
    m.capacity = 8;
    let mut t = FlowTable::new(cfg());
    for i in 0..8u8 {
        m.packet(
            0,
            key(1, 1000 + u16::from(i), 2, 53, 17),
            S + u64::from(i),
            80,
            0,
            0,
        );
    }
    let mut st = ScanStats::default();
    assert!(
        t.scan(
            &mut m,
            2 * S,
            true,
            &mut st,
            &mut NoNames,
            &Reports::default()
        )
        .unwrap()
        .is_empty()
    );
    assert_eq!(m.entries.len(), 4);
    assert!(
        m.entries.keys().all(|k| k.src_port >= 1004),
        "the newest stay"
    );
    let out = flush(&mut t, &mut m, Status::Shutdown, 2 * S);
    assert_eq!(out.len(), 8);
    assert!(
        out.iter()
            .all(|r| r.src.bytes == 80 && r.status == Status::Shutdown)
    );
}

#[test]
fn flush_emits_every_open_flow_in_a_stable_order() {
    let run = || {
        let mut m = FakeMap::new();
        let mut t = FlowTable::new(cfg());
        for i in 0..50u8 {
            m.packet(usize::from(i) % NCPU, key(i, 10, 200, 20, 17), S, 1, 0, 0);
        }
        scan(&mut t, &mut m, 2 * S);
        flush(&mut t, &mut m, Status::EndOfInput, 2 * S)
    };
    let a = run();
    assert_eq!(a.len(), 50);
    assert_eq!(a, run());
    assert!(a.iter().all(|r| r.status == Status::EndOfInput));
}

#[test]
fn icmp_records_carry_the_first_packets_type() {
    let mut m = FakeMap::new();
    let mut t = FlowTable::new(cfg());
    let k = key(1, 0, 2, 0, 1);
    let mut echo = |cpu, k, ts, ty: u8| {
        let slot = &mut m.entries.entry(k).or_default()[cpu];
        *slot = icmp_value(ts, ts, 84, 1, Some(ty));
    };
    echo(0, rev(k), 2 * S, 0);
    echo(1, k, S, 8);
    let out = scan(&mut t, &mut m, 20 * S);
    assert_eq!(out[0].icmp(), Some((8, 0)));
    assert_eq!(out[0].key.src_addr[15], 1);
}

#[test]
fn a_flow_takes_names_when_it_starts_and_fills_unknown_ones_at_emit() {
    struct Book(Vec<(IpAddr, &'static str, u64)>);
    impl Resolver for Book {
        fn name(&mut self, _client: IpAddr, addr: IpAddr, now: u64) -> Option<Arc<str>> {
            self.0
                .iter()
                .find(|(a, _, from)| *a == addr && now >= *from)
                .map(|(_, n, _)| Arc::from(*n))
        }
    }
    let mut m = FakeMap::new();
    let mut t = FlowTable::new(cfg());
    let k = key(1, 40000, 2, 443, 6);
    let server = crate::base::net::key_addr(&k, k.dst_addr);
    let client = crate::base::net::key_addr(&k, k.src_addr);
    // The server's name is known from the start; the client's only later.
    let mut book = Book(vec![
        (server, "www.example.com", 0),
        (client, "laptop.lan", 5 * S),
    ]);
    m.packet(0, k, S, 60, 0x02, VAL_F_SYN);
    t.scan(
        &mut m,
        2 * S,
        false,
        &mut ScanStats::default(),
        &mut book,
        &Reports::default(),
    )
    .unwrap();
    // The server's address now means something else: the flow keeps its first name.
    book.0[0].1 = "other.example.com";
    let out = t
        .scan(
            &mut m,
            20 * S,
            false,
            &mut ScanStats::default(),
            &mut book,
            &Reports::default(),
        )
        .unwrap();
    assert_eq!(out[0].dst_name.as_deref(), Some("www.example.com"));
    assert_eq!(out[0].src_name.as_deref(), Some("laptop.lan"));
}

#[test]
fn a_full_table_emits_its_least_recently_active_flows_early_and_loses_no_packet() {
    let mut m = FakeMap::new();
    let mut t = FlowTable::new(TableConfig {
        max_flows: 3,
        ..cfg()
    });
    // Five UDP flows, flow i last active at i seconds; two packets each.
    for i in 0..5u8 {
        let k = key(10 + i, 1000, 1, 53, 17);
        m.packet(0, k, u64::from(i) * S, 100, 0, 0);
        m.packet(1, k, u64::from(i) * S + 1, 100, 0, 0);
    }
    let out = scan(&mut t, &mut m, 5 * S);
    assert_eq!(t.len(), 3, "the table keeps its cap");
    let early: Vec<(u8, Status, u64)> = out
        .iter()
        .map(|e| (e.key.src_addr[15], e.status, e.src.packets))
        .collect();
    assert_eq!(
        early,
        [(10, Status::TableFull, 2), (11, Status::TableFull, 2)],
        "the two least recently active, with every packet"
    );
    assert!(
        !m.entries.contains_key(&key(10, 1000, 1, 53, 17)),
        "their kernel entries were taken"
    );
    // A later packet of an evicted flow starts a new record; nothing is counted twice.
    m.packet(0, key(10, 1000, 1, 53, 17), 6 * S, 100, 0, 0);
    let mut all = out;
    all.extend(flush(&mut t, &mut m, Status::Shutdown, 7 * S));
    let packets: u64 = all.iter().map(|e| e.src.packets + e.dst.packets).sum();
    assert_eq!(packets, 11);
}

/// Conntrack with fixed entries, found by either tuple as the kernel finds them.
struct FakeConntrack(Vec<crate::kernel::conntrack::Entry>);

impl nat::Conntracker for FakeConntrack {
    fn entry(
        &mut self,
        t: &crate::kernel::conntrack::Tuple,
        _walks: &mut usize,
    ) -> Result<nat::Answer, crate::kernel::conntrack::Error> {
        let found = self.0.iter().copied().find(|e| {
            [e.orig, e.reply]
                .iter()
                .any(|x| *x == *t || *x == t.reversed())
        });
        Ok(found.map_or(nat::Answer::None, nat::Answer::Entry))
    }
}

/// Pod ::1:1000 to service ::3:80, DNAT'd to backend ::9:8000 and masqueraded to node ::7.
fn nat_table() -> FlowTable {
    use crate::kernel::conntrack::{Entry, tcp as t};
    let entry = Entry {
        orig: t("::1", 1000, "::3", 80),
        reply: t("::9", 8000, "::7", 1000),
    };
    FlowTable::new(cfg()).with_nat(nat::NatLookup {
        source: Box::new(FakeConntrack(vec![entry])),
        per_scan: 100,
        walks_per_scan: 8,
        retries: 3,
    })
}

/// The service connection of [`nat_table`] seen both before NAT and after (a SYN and its
/// SYN-ACK each): its two keys, before and after.
fn nat_pair(m: &mut FakeMap) -> (FlowKey, FlowKey) {
    let pre = key(1, 1000, 3, 80, 6);
    let post = key(7, 1000, 9, 8000, 6);
    for (i, k) in [pre, post].into_iter().enumerate() {
        m.packet(0, k, S + i as u64, 60, 0x02, VAL_F_SYN);
        m.packet(0, rev(k), S + 10 + i as u64, 60, 0x12, 0);
    }
    (pre, post)
}

#[test]
fn the_translated_copy_of_a_nat_connection_is_not_a_second_record() {
    let mut t = nat_table();
    let mut m = FakeMap::new();
    nat_pair(&mut m);
    assert!(scan(&mut t, &mut m, 2 * S).is_empty());
    let traffic: u64 = t.take_traffic().iter().map(|x| x.1).sum();
    assert_eq!(traffic, 2, "the copy's packets are not counted again");
    let out = scan(&mut t, &mut m, 30 * S);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_is_the_service_connection(&out[0]);
    let s = t.nat_stats();
    assert_eq!((s.lookups, s.translated, s.merged), (2, 2, 1));
}

/// A `--filter` rule on a protocol (0: any) and a port (0: any).
fn rule(drop: bool, proto: u8, port: u16) -> devourer_common::filter::FilterRule {
    use devourer_common::filter::{FilterRule, RULE_DROP, RULE_KEEP};
    FilterRule {
        action: if drop { RULE_DROP } else { RULE_KEEP },
        proto,
        has_port: u8::from(port != 0),
        port_lo: port,
        port_hi: port,
        ..FilterRule::default()
    }
}

#[test]
fn a_drop_rule_on_the_port_the_client_sent_drops_the_joined_record_and_counts_its_packets_once() {
    let mut t = nat_table();
    let mut m = FakeMap::new();
    nat_pair(&mut m);
    scan(&mut t, &mut m, 2 * S);
    let out = scan(&mut t, &mut m, 30 * S);
    assert_eq!(out.len(), 1, "{out:?}");
    // A rule on the backend's port (after DNAT) does not match what the client sent.
    let mut after = Filters::new(vec![rule(true, 0, 8000)]);
    assert!(!after.drops_flow(&out[0]));
    assert_eq!((after.filtered(), after.counts().packets[0]), (0, 0));
    // The Service's port does, once for both views; a later rule is never reached.
    let mut f = Filters::new(vec![
        rule(false, 17, 0),
        rule(true, 0, 80),
        rule(true, 6, 0),
    ]);
    assert!(f.drops_flow(&out[0]));
    assert_eq!(f.filtered(), 2, "one SYN and one SYN-ACK, not each view's");
    assert_eq!(f.counts().packets[..3], [0, 2, 0]);
    assert_eq!(f.counts().bytes[1], 120);
}

#[test]
fn a_translated_flow_seen_alone_is_recorded_with_its_original_endpoints() {
    let mut t = nat_table();
    let mut m = FakeMap::new();
    let post = key(7, 1000, 9, 8000, 6);
    m.packet(0, post, S, 60, 0x02, VAL_F_SYN);
    m.packet(0, rev(post), S + 10, 60, 0x12, 0);
    let out = flush(&mut t, &mut m, Status::Shutdown, 2 * S);
    assert_eq!(out.len(), 1);
    assert_is_the_service_connection(&out[0]);
}

/// The record of [`nat_table`]'s connection: pod to service, node and backend in `xlat_*`,
/// one packet each way.
fn assert_is_the_service_connection(r: &Emitted) {
    assert_eq!((r.key.src_addr[15], r.key.src_port), (1, 1000));
    assert_eq!((r.key.dst_addr[15], r.key.dst_port), (3, 80));
    assert_eq!(r.xlat_src.map(|(a, p)| (a[15], p)), Some((7, 1000)));
    assert_eq!(r.xlat_dst.map(|(a, p)| (a[15], p)), Some((9, 8000)));
    assert_eq!((r.src.packets, r.dst.packets), (1, 1));
}

#[test]
fn a_start_record_comes_once_per_flow_when_first_seen_with_zero_counters() {
    let mut t = FlowTable::new(TableConfig {
        start_records: true,
        active_timeout: 20 * S,
        ..cfg()
    });
    let mut m = FakeMap::new();
    let k = key(1, 1000, 2, 80, 6);
    m.packet(0, k, S, 60, 0x02, VAL_F_SYN);
    m.packet(1, rev(k), S + 5, 60, 0x12, 0);
    let out = scan(&mut t, &mut m, 2 * S);
    assert_eq!(out.len(), 1);
    let s = &out[0];
    assert_eq!(s.status, Status::Start);
    assert_eq!((s.first_ns, s.last_ns), (S, S));
    assert_eq!((s.src.packets, s.dst.packets, s.src.bytes), (0, 0, 0));
    assert_eq!(
        s.key, k,
        "oriented like the flow's records: the SYN sender first"
    );
    // Active timeout, then idle: two real records, no second start.
    for i in 3..25 {
        m.packet(0, k, i * S, 60, 0x10, 0);
        let out = scan(&mut t, &mut m, i * S + 1);
        assert!(out.iter().all(|r| r.status != Status::Start), "{out:?}");
    }
    let out = scan(&mut t, &mut m, 60 * S);
    assert!(out.iter().all(|r| r.status != Status::Start));
    // A flow seen and finished within one scan: its start first, then its record.
    let k2 = key(3, 1000, 4, 53, 17);
    m.packet(0, k2, 61 * S, 80, 0, 0);
    let out = flush(&mut t, &mut m, Status::EndOfInput, 62 * S);
    let statuses: Vec<Status> = out.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Status::Start, Status::EndOfInput]);
}

#[test]
fn a_copy_seen_between_dnat_and_snat_joins_its_service_flow_without_a_table_walk() {
    let mut t = nat_table();
    let mut m = FakeMap::new();
    let pre = key(1, 1000, 3, 80, 6);
    // The bridge (br_netfilter) sees the pod's source and the backend: no conntrack tuple.
    let half = key(1, 1000, 9, 8000, 6);
    m.packet(0, pre, S, 60, 0x02, VAL_F_SYN);
    m.packet(0, rev(pre), S + 10, 60, 0x12, 0);
    m.packet(0, half, S + 1, 60, 0x02, VAL_F_SYN);
    let out = scan(&mut t, &mut m, 30 * S);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_is_the_service_connection(&out[0]);
    assert_eq!(t.nat_stats().merged, 1);
}

/// Conntrack that finds nothing, keeps the tuples it was asked about, and spends a walk of
/// its table on each one without ports.
struct Asked(Arc<std::sync::Mutex<Vec<crate::kernel::conntrack::Tuple>>>);

impl nat::Conntracker for Asked {
    fn entry(
        &mut self,
        t: &crate::kernel::conntrack::Tuple,
        walks: &mut usize,
    ) -> Result<nat::Answer, crate::kernel::conntrack::Error> {
        if !crate::kernel::conntrack::has_ports(t.proto) {
            *walks -= 1;
        }
        self.0.lock().unwrap().push(*t);
        Ok(nat::Answer::None)
    }
}

#[test]
fn icmp_flows_conntrack_cannot_track_are_not_looked_up() {
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut t = FlowTable::new(cfg()).with_nat(nat::NatLookup {
        source: Box::new(Asked(Arc::clone(&asked))),
        per_scan: 100,
        walks_per_scan: 100,
        retries: 3,
    });
    let mut m = FakeMap::new();
    // (peer, protocol, first ICMP type or None): neighbour solicitation, ICMPv6 echo,
    // destination unreachable, ICMP echo reply, an ICMP flow of fragments (type unknown).
    let flows = [
        (1, 58, Some(135)),
        (2, 58, Some(128)),
        (3, 1, Some(3)),
        (4, 1, Some(0)),
        (5, 1, None),
    ];
    for (peer, proto, ty) in flows {
        m.entries.entry(key(peer, 0, 100, 0, proto)).or_default()[0] = icmp_value(S, S, 84, 1, ty);
    }
    let out = scan(&mut t, &mut m, 2 * S);
    assert!(out.is_empty());
    let mut peers: Vec<u8> = asked
        .lock()
        .unwrap()
        .iter()
        .map(|x| match x.src {
            IpAddr::V6(a) => a.octets()[15],
            IpAddr::V4(a) => a.octets()[3],
        })
        .collect();
    peers.sort_unstable();
    assert_eq!(
        peers,
        [2, 4, 5],
        "only flows conntrack may hold are asked about"
    );
    let out = scan(&mut t, &mut m, 30 * S);
    assert_eq!(out.len(), 5, "every flow is still recorded");
    assert_eq!(asked.lock().unwrap().len(), 3, "none is asked again");
    assert_eq!(t.nat_stats().walks, 3, "the walks they took are counted");
}

/// [`FakeConntrack`] that fails its first `failures` calls (a timeout).
struct Flaky {
    inner: FakeConntrack,
    failures: usize,
}

impl nat::Conntracker for Flaky {
    fn entry(
        &mut self,
        t: &crate::kernel::conntrack::Tuple,
        walks: &mut usize,
    ) -> Result<nat::Answer, crate::kernel::conntrack::Error> {
        if self.failures > 0 {
            self.failures -= 1;
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
        }
        self.inner.entry(t, walks)
    }

    fn entries(
        &mut self,
        ts: &[crate::kernel::conntrack::Tuple],
    ) -> Result<Vec<Option<crate::kernel::conntrack::Entry>>, crate::kernel::conntrack::Error> {
        if self.failures > 0 {
            self.failures -= 1;
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
        }
        ts.iter()
            .map(|t| match self.inner.entry(t, &mut 0)? {
                nat::Answer::Entry(e) => Ok(Some(e)),
                _ => Ok(None),
            })
            .collect()
    }
}

/// [`nat_table`] whose conntrack fails `failures` times first, retrying 3 times.
fn flaky_nat_table(failures: usize) -> FlowTable {
    use crate::kernel::conntrack::{Entry, tcp as t};
    let entry = Entry {
        orig: t("::1", 1000, "::3", 80),
        reply: t("::9", 8000, "::7", 1000),
    };
    FlowTable::new(cfg()).with_nat(nat::NatLookup {
        source: Box::new(Flaky {
            inner: FakeConntrack(vec![entry]),
            failures,
        }),
        per_scan: 100,
        walks_per_scan: 8,
        retries: 3,
    })
}

#[test]
fn a_failed_conntrack_lookup_is_retried_and_the_flow_waits_to_be_emitted_joined() {
    let mut t = flaky_nat_table(2);
    let mut m = FakeMap::new();
    nat_pair(&mut m);
    // Two failed scans, both flows idle long since: nothing is emitted unjoined meanwhile.
    assert!(scan(&mut t, &mut m, 200 * S).is_empty());
    assert!(scan(&mut t, &mut m, 201 * S).is_empty());
    let out = scan(&mut t, &mut m, 202 * S);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_is_the_service_connection(&out[0]);
    let s = t.nat_stats();
    assert_eq!((s.errors, s.gave_up, s.merged), (4, 0, 1));
}

#[test]
fn a_lookup_failing_past_its_retries_is_emitted_unjoined_and_counted_as_given_up() {
    let mut t = flaky_nat_table(100);
    let mut m = FakeMap::new();
    let post = key(7, 1000, 9, 8000, 6);
    m.packet(0, post, S, 60, 0x02, VAL_F_SYN);
    for i in 0..3 {
        assert!(scan(&mut t, &mut m, (200 + i) * S).is_empty(), "retry {i}");
    }
    let out = scan(&mut t, &mut m, 203 * S);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].xlat_dst, None, "unjoined");
    assert_eq!(t.nat_stats().gave_up, 1);
}

fn drop(key: FlowKey, reason: &'static str, packets: u64) -> drops::Drop {
    drops::Drop {
        key,
        reason,
        packets,
        bytes: packets * 60,
    }
}

#[test]
fn drops_go_to_the_flow_of_their_tuple_either_way_and_other_tuples_are_only_counted() {
    let mut t = FlowTable::new(cfg());
    t.follow_drops();
    let mut m = FakeMap::new();
    let k = FlowKey {
        ifindex: 0,
        ..key(1, 1000, 2, 53, 17)
    };
    m.packet(0, k, S, 100, 0, 0);
    m.packet(1, rev(k), S + 1, 100, 0, 0);
    let stranger = FlowKey {
        ifindex: 0,
        ..key(9, 1, 9, 2, 17)
    };
    let drops = [
        drop(rev(k), "NETFILTER_DROP", 3),
        drop(k, "TCP_CSUM", 1),
        drop(stranger, "NO_SOCKET", 5),
    ];
    let out = t
        .scan(
            &mut m,
            2 * S,
            false,
            &mut ScanStats::default(),
            &mut NoNames,
            &Reports {
                drops: drops.to_vec(),
                ..Reports::default()
            },
        )
        .unwrap();
    assert!(out.is_empty());
    assert_eq!(
        t.drop_stats(),
        drops::DropStats {
            attributed: 4,
            unattributed: 5,
            unrecorded: 0
        }
    );
    let out = flush(&mut t, &mut m, Status::Shutdown, 3 * S);
    assert_eq!(out.len(), 1, "a dropped tuple no flow holds makes no flow");
    let d = out[0].drops.as_ref().unwrap();
    assert_eq!((d.packets, d.bytes), (4, 240));
    assert_eq!(d.top(), vec![("NETFILTER_DROP", 3), ("TCP_CSUM", 1)]);
}

#[test]
fn counting_per_interface_a_drop_finds_its_tuple_on_any_interface() {
    let mut t = FlowTable::new(cfg());
    t.follow_drops();
    let mut m = FakeMap::new();
    let k = key(1, 1000, 2, 80, 6);
    m.packet(0, k, S, 100, 0x02, VAL_F_SYN);
    scan(&mut t, &mut m, S + 1);
    let out = t
        .flush(
            &mut m,
            Status::Shutdown,
            &mut NoNames,
            2 * S,
            &Reports {
                drops: vec![drop(FlowKey { ifindex: 0, ..k }, "NETFILTER_DROP", 2)],
                ..Reports::default()
            },
        )
        .unwrap();
    assert_eq!(out[0].drops.as_ref().unwrap().packets, 2);
}

#[test]
fn records_carry_zero_drops_when_drops_are_followed_and_none_when_not() {
    for follow in [false, true] {
        let mut t = FlowTable::new(TableConfig {
            start_records: true,
            ..cfg()
        });
        if follow {
            t.follow_drops();
        }
        let mut m = FakeMap::new();
        m.packet(0, key(1, 1, 2, 2, 17), S, 100, 0, 0);
        let mut out = scan(&mut t, &mut m, S + 1);
        out.extend(flush(&mut t, &mut m, Status::Shutdown, 2 * S));
        assert_eq!(out.len(), 2, "a start record and a flow record");
        for r in out {
            assert_eq!(r.drops, follow.then(drops::FlowDrops::default), "{r:?}");
        }
    }
}

#[test]
fn a_drop_read_after_its_flows_last_record_is_counted_when_the_flow_ends_without_another() {
    let mut t = FlowTable::new(cfg());
    t.follow_drops();
    let mut m = FakeMap::new();
    let k = FlowKey {
        ifindex: 0,
        ..key(1, 1000, 2, 53, 17)
    };
    m.packet(0, k, S, 100, 0, 0);
    // The packet's record is cut at idle timeout; its drop is read only at a later scan.
    let out = scan(&mut t, &mut m, 12 * S);
    assert_eq!(out.len(), 1);
    let out = t
        .scan(
            &mut m,
            12 * S + 1,
            false,
            &mut ScanStats::default(),
            &mut NoNames,
            &Reports {
                drops: vec![drop(k, "NO_SOCKET", 1)],
                ..Reports::default()
            },
        )
        .unwrap();
    assert!(out.is_empty());
    let s = t.drop_stats();
    assert_eq!(
        (s.attributed + s.unattributed, s.unattributed + s.unrecorded),
        (1, 1),
        "{s:?}"
    );
}

#[test]
fn a_tcp_record_carries_its_handshake_rtt_retransmits_and_srtt_and_udp_none() {
    let mut t = FlowTable::new(cfg());
    t.follow_retransmits();
    let mut m = FakeMap::new();
    let k = key(1, 40000, 2, 443, 6);
    m.packet(0, k, S, 60, 0x02, VAL_F_SYN);
    m.packet(0, rev(k), S + 40_000_000, 60, 0x12, 0);
    m.packet(0, k, S + 40_020_000, 52, 0x10, 0);
    m.entries.get_mut(&k).unwrap()[0].srtt_samples = 1;
    m.entries.get_mut(&k).unwrap()[0].srtt_last_us = 41_000;
    let u = key(1, 5000, 3, 53, 17);
    m.packet(0, u, S, 60, 0, 0);
    scan(&mut t, &mut m, S + 50_000_000);
    let r = Retransmit {
        key: FlowKey { ifindex: 0, ..k },
        segments: 3,
    };
    let out = t
        .flush(
            &mut m,
            Status::Shutdown,
            &mut NoNames,
            2 * S,
            &Reports {
                retransmits: vec![
                    r,
                    Retransmit {
                        key: rev(r.key),
                        segments: 1,
                    },
                ],
                ..Reports::default()
            },
        )
        .unwrap();
    let tcp = out.iter().find(|e| e.key.proto == 6).unwrap();
    let h = tcp.tcp.unwrap();
    assert_eq!(h.handshake_rtt_ns, Some(40_000_000));
    assert_eq!(h.retransmits, Some(4), "both sides' retransmissions");
    assert_eq!(
        h.srtt.map(|s| (s.min_us, s.max_us, s.last_us)),
        Some((41_000, 41_000, 41_000))
    );
    assert!(!h.failed);
    assert_eq!(out.iter().find(|e| e.key.proto == 17).unwrap().tcp, None);
    assert_eq!(t.retransmit_stats(), (4, 0));
}

#[test]
fn a_syn_answered_by_reset_fails_and_retransmits_are_null_when_not_reported() {
    let mut t = FlowTable::new(cfg());
    let mut m = FakeMap::new();
    let k = key(1, 40001, 2, 81, 6);
    m.packet(0, k, S, 60, 0x02, VAL_F_SYN);
    m.packet(0, rev(k), S + 1000, 40, 0x14, 0);
    let out = flush(&mut t, &mut m, Status::Shutdown, 2 * S);
    let h = out[0].tcp.unwrap();
    assert!(h.failed);
    assert_eq!(
        (h.handshake_rtt_ns, h.retransmits, h.srtt),
        (None, None, None)
    );
}

#[test]
fn a_syn_never_answered_fails_only_at_its_last_record() {
    let mut t = FlowTable::new(cfg());
    let mut m = FakeMap::new();
    let k = key(1, 40002, 2, 82, 6);
    m.packet(0, k, S, 60, 0x02, VAL_F_SYN);
    m.packet(0, k, 2 * S, 60, 0x02, VAL_F_SYN);
    let out = scan(&mut t, &mut m, 13 * S);
    assert_eq!(out.len(), 1, "idle timeout");
    assert!(out[0].tcp.unwrap().failed);
}

#[test]
fn rtt_samples_of_the_translated_copy_reach_the_record_of_the_connection() {
    let mut t = nat_table();
    let mut m = FakeMap::new();
    let (_, post) = nat_pair(&mut m);
    // Only the backend's socket (behind DNAT) is local: sampled on the translated copy.
    let backend = m.entries.get_mut(&rev(post)).unwrap();
    backend[0].srtt_samples = 1;
    backend[0].srtt_last_us = 2500;
    scan(&mut t, &mut m, 2 * S);
    let out = flush(&mut t, &mut m, Status::Shutdown, 3 * S);
    assert_eq!(out.len(), 1, "{out:?}");
    let s = out[0].tcp.unwrap().srtt.unwrap();
    assert_eq!((s.min_us, s.max_us, s.last_us), (2500, 2500, 2500));
}
