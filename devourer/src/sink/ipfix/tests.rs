//! The IPFIX encoding read back as a collector reads it: templates, biflow data records,
//! sequence numbers and message sizes.

use std::collections::BTreeMap;

use super::encode::*;
use crate::record::flow::FlowRecord;

/// A template as a collector reads it: (element id, enterprise number) and length.
type Read = Vec<((u16, u32), u16)>;

/// A data record as a collector reads it: its fields' bytes by (element id, enterprise).
type DataRecord = BTreeMap<(u16, u32), Vec<u8>>;

/// What a collector reads from messages: each message's header, the templates, and each
/// data record's fields by (element id, enterprise number).
#[derive(Default)]
struct Collector {
    templates: BTreeMap<u16, Read>,
    headers: Vec<(u16, u16, u32, u32, u32)>,
    records: Vec<(u16, DataRecord)>,
}

impl Collector {
    fn read(&mut self, m: &[u8]) {
        let be16 = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
        let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
        self.headers
            .push((be16(m, 0), be16(m, 2), be32(m, 4), be32(m, 8), be32(m, 12)));
        assert_eq!(usize::from(be16(m, 2)), m.len(), "message length");
        let mut at = 16;
        while at < m.len() {
            let (id, len) = (be16(m, at), usize::from(be16(m, at + 2)));
            let set = &m[at + 4..at + len];
            at += len;
            if id == 2 {
                let mut p = 0;
                while p < set.len() {
                    let (tid, n) = (be16(set, p), be16(set, p + 2));
                    p += 4;
                    let mut fields = Vec::new();
                    for _ in 0..n {
                        let (eid, flen) = (be16(set, p), be16(set, p + 2));
                        p += 4;
                        let pen = if eid & 0x8000 != 0 {
                            p += 4;
                            be32(set, p - 4)
                        } else {
                            0
                        };
                        fields.push(((eid & 0x7fff, pen), flen));
                    }
                    self.templates.insert(tid, fields);
                }
                continue;
            }
            let t = self.templates[&id].clone();
            let mut p = 0;
            while p < set.len() {
                let mut rec = BTreeMap::new();
                for (k, flen) in &t {
                    let n = if *flen == 65535 {
                        let short = usize::from(set[p]);
                        p += 1;
                        if short == 255 {
                            p += 2;
                            usize::from(be16(set, p - 2))
                        } else {
                            short
                        }
                    } else {
                        usize::from(*flen)
                    };
                    rec.insert(*k, set[p..p + n].to_vec());
                    p += n;
                }
                self.records.push((id, rec));
            }
        }
    }
}

fn uint(v: &[u8]) -> u64 {
    v.iter().fold(0, |a, b| a << 8 | u64::from(*b))
}

fn flow(src: &str, dst: &str) -> FlowRecord {
    FlowRecord {
        src_addr: src.into(),
        dst_addr: dst.into(),
        protocol: "udp".into(),
        src_port: 5353,
        dst_port: 53,
        src_bytes: 1_000_000_007,
        src_packets: 11,
        dst_bytes: 900,
        dst_packets: 3,
        first_seen_at: "2026-12-07T20:05:35.226250Z".into(),
        last_seen_at: "2026-12-07T20:05:36.187999Z".into(),
        status: "idle_timeout",
        vlan: Some(100),
        ifindex: 7,
        ..FlowRecord::sample()
    }
}

#[test]
fn templates_name_every_element_with_its_enterprise_and_reverse_counters_under_29305() {
    let e = Encoder::new(9, 1400, 32473);
    let mut c = Collector::default();
    for m in e.templates(1_700_000_000) {
        c.read(&m.bytes);
    }
    // Four templates take more than one message of 1,400 bytes: each is numbered 0, as
    // templates are no data records.
    assert!(!c.headers.is_empty());
    for h in &c.headers {
        assert_eq!(*h, (10, h.1, 1_700_000_000, 0, 9));
        assert!(h.1 <= 1400);
    }
    assert_eq!(
        c.templates.keys().copied().collect::<Vec<_>>(),
        [256, 257, 258, 259]
    );
    let v4 = &c.templates[&256];
    for (k, len) in [
        ((8, 0), 4),
        ((12, 0), 4),
        ((1, 0), 8),
        ((1, 29305), 8),
        ((2, 29305), 8),
        ((152, 0), 8),
        ((136, 0), 1),
        ((32, 0), 2),
        ((58, 0), 2),
        ((10, 0), 4),
        ((103, 32473), 65535),
    ] {
        assert!(v4.contains(&(k, len)), "{k:?} in {v4:?}");
    }
    assert!(!v4.iter().any(|((id, _), _)| *id == 225));
    let nat6 = &c.templates[&259];
    for (k, len) in [
        ((27, 0), 16),
        ((28, 0), 16),
        ((139, 0), 2),
        ((281, 0), 16),
        ((282, 0), 16),
        ((227, 0), 2),
        ((228, 0), 2),
    ] {
        assert!(nat6.contains(&(k, len)), "{k:?} in {nat6:?}");
    }
    assert_eq!(
        nat6.iter().filter(|((_, pen), _)| *pen == 32473).count(),
        TEXTS.len() + NUMBERS.len()
    );
}

#[test]
fn a_flow_record_is_one_biflow_data_record_with_its_counts_times_and_names() {
    let mut e = Encoder::new(0, 1400, 32473);
    let mut c = Collector::default();
    for m in e.templates(0) {
        c.read(&m.bytes);
    }
    let mut r = flow("10.0.0.1", "10.0.0.2");
    r.dst_name = Some("dns.example".into());
    r.community_id = "1:abc".into();
    r.tunnel = Some("vxlan");
    r.side_tcp_flags = [0x02, 0x12];
    r.sampling = 10;
    let (msgs, skipped) = e.data(&[r], 0);
    assert!(skipped.is_empty());
    assert_eq!(msgs.len(), 1);
    c.read(&msgs[0].bytes);
    let (tid, f) = &c.records[0];
    assert_eq!(*tid, 256);
    let get = |id: u16, pen: u32| f[&(id, pen)].clone();
    assert_eq!(get(8, 0), [10, 0, 0, 1]);
    assert_eq!(get(12, 0), [10, 0, 0, 2]);
    assert_eq!(
        (uint(&get(7, 0)), uint(&get(11, 0)), uint(&get(4, 0))),
        (5353, 53, 17)
    );
    assert_eq!((uint(&get(1, 0)), uint(&get(2, 0))), (1_000_000_007, 11));
    assert_eq!((uint(&get(1, 29305)), uint(&get(2, 29305))), (900, 3));
    assert_eq!(
        (uint(&get(152, 0)), uint(&get(153, 0))),
        (1_796_673_935_226, 1_796_673_936_187)
    );
    assert_eq!(
        (uint(&get(136, 0)), uint(&get(58, 0)), uint(&get(10, 0))),
        (1, 100, 7)
    );
    assert_eq!(get(102, 32473), b"dns.example");
    assert_eq!(get(101, 32473), b"");
    assert_eq!(get(103, 32473), b"1:abc");
    assert_eq!(get(116, 32473), b"vxlan");
    assert_eq!(
        (uint(&get(6, 0)), uint(&get(6, 29305))),
        (0x02, 0x12),
        "each side's flags"
    );
    assert_eq!(uint(&get(305, 0)), 10, "samplingPacketInterval");
}

#[test]
fn drops_go_in_the_standard_elements_and_tcp_health_in_own_ones() {
    use crate::record::flow::DropReason;
    let mut e = Encoder::new(0, 1400, 32473);
    let mut c = Collector::default();
    for m in e.templates(0) {
        c.read(&m.bytes);
    }
    let r = FlowRecord {
        drops_packets: Some(4),
        drops_bytes: Some(336),
        drop_reasons: vec![
            DropReason {
                reason: "NETFILTER_DROP",
                packets: 3,
            },
            DropReason {
                reason: "TCP_CSUM",
                packets: 1,
            },
        ],
        tcp_handshake_rtt: Some(0.000_250_4),
        tcp_srtt_min: Some(0.000_000_1),
        tcp_srtt_max: Some(0.02),
        tcp_srtt_last: None,
        tcp_retransmits: Some(2),
        tcp_failed: Some(false),
        ..flow("192.0.2.1", "198.51.100.2")
    };
    let (msgs, _) = e.data(&[r], 0);
    c.read(&msgs[0].bytes);
    let f = &c.records[0].1;
    assert_eq!((uint(&f[&(132, 0)]), uint(&f[&(133, 0)])), (336, 4));
    let own = |name: &str| {
        let id = NUMBERS.iter().find(|(n, ..)| *n == name).unwrap().1;
        uint(&f[&(id, 32473)])
    };
    // Microseconds; one under a microsecond is 1, none measured 0.
    assert_eq!(own("tcp_handshake_rtt_us"), 250);
    assert_eq!(own("tcp_srtt_min_us"), 1);
    assert_eq!(own("tcp_srtt_max_us"), 20_000);
    assert_eq!(own("tcp_srtt_last_us"), 0);
    assert_eq!(own("tcp_retransmits"), 2);
    assert_eq!(f[&(131, 32473)], b"false");
    assert_eq!(f[&(132, 32473)], b"NETFILTER_DROP:3,TCP_CSUM:1");
}

#[test]
fn nat_records_use_the_nat_template_and_an_untranslated_side_keeps_its_address() {
    let mut e = Encoder::new(0, 1400, 32473);
    let mut c = Collector::default();
    for m in e.templates(0) {
        c.read(&m.bytes);
    }
    let mut r = flow("fd00::1", "fd00::2");
    r.protocol = "icmpv6".into();
    r.icmp_type = Some(128);
    r.icmp_code = Some(0);
    r.xlat_dst_addr = Some("fd00::99".into());
    r.xlat_dst_port = Some(8080);
    let (msgs, _) = e.data(&[r], 0);
    c.read(&msgs[0].bytes);
    let (tid, f) = &c.records[0];
    assert_eq!(*tid, 259);
    let addr = |id| std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&f[&(id, 0)][..]).unwrap());
    assert_eq!(addr(281).to_string(), "fd00::1");
    assert_eq!(addr(282).to_string(), "fd00::99");
    assert_eq!((uint(&f[&(227, 0)]), uint(&f[&(228, 0)])), (5353, 8080));
    assert_eq!((uint(&f[&(139, 0)]), uint(&f[&(4, 0)])), (128 << 8, 58));
}

#[test]
fn messages_stay_within_the_mtu_and_number_the_data_records_sent_before_them() {
    let mut e = Encoder::new(3, 600, 32473);
    let recs: Vec<_> = (0..40)
        .map(|i| {
            let mut r = flow(
                if i % 3 == 0 { "fd00::1" } else { "10.0.0.1" },
                if i % 3 == 0 { "fd00::2" } else { "10.0.0.2" },
            );
            r.src_port = i;
            r
        })
        .collect();
    let mut c = Collector::default();
    for m in e.templates(0) {
        c.read(&m.bytes);
    }
    let (first, _) = e.data(&recs, 0);
    let (second, _) = e.data(&recs[..5], 0);
    assert!(first.len() > 3);
    let mut expect = 0;
    for m in first.iter().chain(&second) {
        assert!(m.bytes.len() <= 600, "{} bytes", m.bytes.len());
        c.read(&m.bytes);
        assert_eq!(c.headers.last().unwrap().3, expect);
        expect += m.records;
    }
    assert_eq!(expect, 45);
    let ports: Vec<u64> = c.records.iter().map(|(_, f)| uint(&f[&(7, 0)])).collect();
    let want: Vec<u64> = (0..40).chain(0..5).collect();
    assert_eq!(ports, want, "in order");
    e.restart();
    let (again, _) = e.data(&recs[..1], 0);
    assert_eq!(&again[0].bytes[8..12], &[0, 0, 0, 0]);
}

#[test]
fn start_and_malformed_records_are_not_exported_and_long_names_are_cut_on_a_character() {
    let mut e = Encoder::new(0, 1400, 32473);
    let start = FlowRecord {
        status: "start",
        ..flow("10.0.0.1", "10.0.0.2")
    };
    let mixed = flow("10.0.0.1", "fd00::2");
    let (msgs, skipped) = e.data(&[start, mixed], 0);
    assert!(msgs.is_empty());
    assert_eq!(skipped, [Skip::Start, Skip::Malformed]);

    let mut c = Collector::default();
    for m in e.templates(0) {
        c.read(&m.bytes);
    }
    let mut long = flow("10.0.0.1", "10.0.0.2");
    long.src_name = Some("é".repeat(600).into());
    long.dst_name = Some("x".repeat(300).into());
    let (msgs, _) = e.data(&[long], 0);
    assert_eq!(msgs.len(), 1, "a record larger than the MTU goes alone");
    c.read(&msgs[0].bytes);
    let f = &c.records[0].1;
    assert_eq!(f[&(101, 32473)], "é".repeat(512).as_bytes());
    assert_eq!(f[&(102, 32473)].len(), 300);
}

#[test]
fn the_collectors_description_file_lists_every_own_element() {
    let file = include_str!("../../../../deploy/ipfix/primitives.lst");
    let rules: Vec<&str> = file.lines().filter(|l| !l.starts_with('!')).collect();
    let texts = TEXTS
        .iter()
        .map(|(name, id)| format!("name={name}\tfield_type=32473:{id}\tlen=vlen\tsemantics=str"));
    let numbers = NUMBERS.iter().map(|(name, id, len)| {
        format!("name={name}\tfield_type=32473:{id}\tlen={len}\tsemantics=u_int")
    });
    let want: Vec<String> = texts.chain(numbers).collect();
    assert_eq!(rules, want);
}
