//! Hand-built frames for crafted captures: tags, options, fragments, extension headers, ICMP
//! errors, jumbo frames and broken headers that capture tools rarely produce on demand.

use std::path::Path;

use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::EnhancedPacketBlock,
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};

pub const A4: [u8; 4] = [192, 0, 2, 1];
pub const B4: [u8; 4] = [192, 0, 2, 2];
pub const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

pub fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(20 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h.extend_from_slice(payload);
    h
}

/// An IPv4 packet. `opt_words` adds 4-byte words of NOP options; `frag` is the raw flags and
/// offset field. `tot_len` overrides the length field (0: computed).
pub fn ipv4(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    payload: &[u8],
    opt_words: usize,
    frag: u16,
) -> Vec<u8> {
    let ihl = 5 + opt_words;
    let tot = (ihl * 4 + payload.len()) as u16;
    let mut p = vec![0x40 | ihl as u8, 0];
    p.extend_from_slice(&tot.to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34]);
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend(std::iter::repeat_n(1u8, opt_words * 4));
    p.extend_from_slice(payload);
    p
}

/// An IPv6 packet whose first next-header is `next`, followed by `ext` then `payload`.
pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, ext: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&((ext.len() + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(ext);
    p.extend_from_slice(payload);
    p
}

/// An 8-byte-multiple extension header (hop-by-hop, destination options, routing) with PadN.
pub fn ext(next: u8, len8: u8) -> Vec<u8> {
    let total = (len8 as usize + 1) * 8;
    let mut e = vec![next, len8];
    e.push(1); // PadN
    e.push((total - 4) as u8);
    e.resize(total, 0);
    e
}

/// Ethernet II with up to two tags: (tpid, vlan id) outermost first.
pub fn eth(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn eth4(p: &[u8]) -> Vec<u8> {
    eth(&[], 0x0800, p)
}

pub fn eth6(p: &[u8]) -> Vec<u8> {
    eth(&[], 0x86dd, p)
}

/// Writes frames 1 ms apart from `start_s` (seconds since the epoch) as a pcap of `link`.
pub fn write_pcap(path: &Path, link: DataLink, frames: &[Vec<u8>], start_s: u64) {
    write_pcap_timed(
        path,
        link,
        &frames
            .iter()
            .enumerate()
            .map(|(i, f)| (start_s * 1_000_000 + i as u64 * 1000, f.clone()))
            .collect::<Vec<_>>(),
    );
}

/// Writes (microseconds since the epoch, frame) pairs as a pcap of `link`.
pub fn write_pcap_timed(path: &Path, link: DataLink, frames: &[(u64, Vec<u8>)]) {
    let file = std::fs::File::create(path).expect("create pcap");
    // tcpdump's snap length: super-packets (BIG TCP) are longer than 64 KiB.
    let header = PcapHeader {
        datalink: link,
        snaplen: 262_144,
        ..Default::default()
    };
    let mut w = PcapWriter::with_header(file, header).expect("pcap header");
    for (us, f) in frames {
        let ts = std::time::Duration::from_micros(*us);
        w.write_packet(&PcapPacket::new(ts, f.len() as u32, f))
            .expect("write packet");
    }
}

/// Writes Ethernet frames seen on the named interfaces as a pcapng with nanosecond
/// timestamps: (index into `interfaces`, nanoseconds since the epoch, frame).
pub fn write_pcapng(path: &Path, interfaces: &[&str], frames: &[(u32, u64, Vec<u8>)]) {
    let file = std::fs::File::create(path).expect("create pcapng");
    let mut w = PcapNgWriter::new(file).expect("pcapng section");
    for name in interfaces {
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 262_144,
            options: vec![
                InterfaceDescriptionOption::IfName((*name).into()),
                // pcap-file writes the nanoseconds it is given: say so.
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        })
        .expect("interface block");
    }
    for (iface, ns, f) in frames {
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: *iface,
            timestamp: std::time::Duration::from_nanos(*ns),
            original_len: f.len() as u32,
            data: f.as_slice().into(),
            options: vec![],
        })
        .expect("packet block");
    }
}

/// The same frame as Linux cooked capture v1 (SLL) and v2 (SLL2), from an Ethernet frame.
pub fn to_sll(frame: &[u8]) -> Vec<u8> {
    let mut s = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0];
    s.extend_from_slice(&frame[12..14]);
    s.extend_from_slice(&frame[14..]);
    s
}

pub fn to_sll2(frame: &[u8]) -> Vec<u8> {
    let mut s = frame[12..14].to_vec();
    s.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 0, 6, 2, 0, 0, 0, 0, 0, 1]);
    s.extend_from_slice(&frame[14..]);
    s
}

/// A DNS message: one question (type A, class IN) and, for a response, one A answer.
pub fn dns(id: u16, name: &str, answer: Option<[u8; 4]>) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(if answer.is_some() {
        &[0x81, 0x80]
    } else {
        &[0x01, 0x00]
    });
    m.extend_from_slice(&[0, 1, 0, u8::from(answer.is_some()), 0, 0, 0, 0]);
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    if let Some(ip) = answer {
        m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        m.extend_from_slice(&ip);
    }
    m
}

/// A name in DNS wire form (no compression).
fn dns_name(name: &str) -> Vec<u8> {
    let mut m = Vec::new();
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m
}

/// An answer record of [`dns_response`].
pub enum Rr<'a> {
    A(&'a str, [u8; 4]),
    Cname(&'a str, &'a str),
}

/// A response to an A question for `qname` with `answers` in order (TTL 300).
pub fn dns_response(id: u16, qname: &str, answers: &[Rr<'_>]) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x81, 0x80, 0, 1]);
    m.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend(dns_name(qname));
    m.extend_from_slice(&[0, 1, 0, 1]);
    for rr in answers {
        let (owner, rtype, data) = match rr {
            Rr::A(owner, ip) => (owner, 1u16, ip.to_vec()),
            Rr::Cname(owner, target) => (owner, 5, dns_name(target)),
        };
        m.extend(dns_name(owner));
        m.extend_from_slice(&rtype.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 0, 1, 0x2c]);
        m.extend_from_slice(&(data.len() as u16).to_be_bytes());
        m.extend(data);
    }
    m
}

/// `flows` UDP flows and `lookups` DNS query/response pairs from A to B, 1 ms apart; the
/// names are `host<i>.example`, or `poison` for the index given.
pub fn flows_and_lookups(flows: u16, lookups: u16, poison: Option<u16>) -> Vec<Vec<u8>> {
    let mut f = Vec::new();
    for i in 0..flows {
        f.push(eth4(&ipv4(A4, B4, 17, &udp(20_000 + i, 9, &[0; 30]), 0, 0)));
    }
    for i in 0..lookups {
        let name = if Some(i) == poison {
            "poison.example".to_owned()
        } else {
            format!("host{i}.example")
        };
        let port = 30_000 + i;
        f.push(eth4(&ipv4(
            A4,
            B4,
            17,
            &udp(port, 53, &dns(i, &name, None)),
            0,
            0,
        )));
        f.push(eth4(&ipv4(
            B4,
            A4,
            17,
            &udp(53, port, &dns(i, &name, Some([10, 0, 0, 1]))),
            0,
            0,
        )));
    }
    f
}

/// The crafted mix: VLAN and QinQ tags, IPv4 options and fragments, IPv6 extension headers
/// and fragments, ICMP errors quoting other flows, echo requests, a jumbo frame, GRE.
pub fn crafted() -> Vec<Vec<u8>> {
    let mut f = Vec::new();
    // 802.1Q VLAN 100, both directions of a UDP exchange.
    f.push(eth(
        &[(0x8100, 100)],
        0x0800,
        &ipv4(A4, B4, 17, &udp(5000, 53, &[1; 30]), 0, 0),
    ));
    f.push(eth(
        &[(0x8100, 100)],
        0x0800,
        &ipv4(B4, A4, 17, &udp(53, 5000, &[2; 90]), 0, 0),
    ));
    // QinQ: 802.1ad outer 200, 802.1Q inner 300, TCP over IPv6.
    let syn = ipv6(A6, B6, 6, &[], &tcp(40000, 443, 0x02, &[]));
    f.push(eth(&[(0x88a8, 200), (0x8100, 300)], 0x86dd, &syn));
    let synack = ipv6(B6, A6, 6, &[], &tcp(443, 40000, 0x12, &[]));
    f.push(eth(&[(0x88a8, 200), (0x8100, 300)], 0x86dd, &synack));
    // Same addresses and ports untagged: a different flow.
    f.push(eth6(&ipv6(
        A6,
        B6,
        6,
        &[],
        &tcp(40000, 443, 0x10, &[7; 100]),
    )));
    // IPv4 with 12 bytes of options.
    f.push(eth4(&ipv4(A4, B4, 17, &udp(6000, 7000, &[3; 10]), 3, 0)));
    // IPv4 fragments: first (MF, offset 0) carries the UDP header, the rest have no ports.
    f.push(eth4(&ipv4(
        A4,
        B4,
        17,
        &udp(6001, 7001, &[4; 1000]),
        0,
        0x2000,
    )));
    f.push(eth4(&ipv4(A4, B4, 17, &[5; 800], 0, 0x2000 | 126)));
    f.push(eth4(&ipv4(A4, B4, 17, &[6; 300], 0, 226)));
    // IPv6: hop-by-hop then destination options then UDP.
    let mut e = ext(60, 0);
    e.extend(ext(17, 1));
    f.push(eth6(&ipv6(A6, B6, 0, &e, &udp(8000, 8001, &[8; 20]))));
    // IPv6 routing header (type 4, segments left 0) then TCP.
    let mut rh = vec![6, 2, 4, 0, 0, 0, 0, 0];
    rh.extend_from_slice(&A6);
    f.push(eth6(&ipv6(A6, B6, 43, &rh, &tcp(1234, 80, 0x18, &[9; 50]))));
    // IPv6 fragments: first with the UDP header, a later one without.
    let fh_first = [17, 0, 0x00, 0x01, 0, 0, 0, 42];
    f.push(eth6(&ipv6(
        A6,
        B6,
        44,
        &fh_first,
        &udp(9000, 9001, &[10; 200]),
    )));
    let fh_later = [17, 0, 0x00, 0xd0, 0, 0, 0, 42];
    f.push(eth6(&ipv6(A6, B6, 44, &fh_later, &[11; 100])));
    // ICMP port unreachable quoting the VLAN-less UDP flow's header: counted as ICMP only.
    let quoted = ipv4(A4, B4, 17, &udp(6000, 7000, &[3; 10]), 0, 0);
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted[..28]);
    f.push(eth4(&ipv4(B4, A4, 1, &icmp, 0, 0)));
    // ICMPv6 destination unreachable quoting an IPv6 UDP header, and an echo request.
    let q6 = ipv6(A6, B6, 17, &[], &udp(8000, 8001, &[]));
    let mut icmp6 = vec![1, 4, 0, 0, 0, 0, 0, 0];
    icmp6.extend_from_slice(&q6);
    f.push(eth6(&ipv6(B6, A6, 58, &[], &icmp6)));
    f.push(eth6(&ipv6(
        A6,
        B6,
        58,
        &[],
        &[128, 0, 0, 0, 0, 1, 0, 1, 0xab, 0xcd],
    )));
    // A jumbo frame (8 KiB of UDP payload): replayed cut, counted by its IP length.
    f.push(eth4(&ipv4(
        A4,
        B4,
        17,
        &udp(11000, 11001, &vec![12; 8000]),
        0,
        0,
    )));
    // GRE: no ports, protocol by number.
    f.push(eth4(&ipv4(
        A4,
        B4,
        47,
        &[0, 0, 0x08, 0x00, 0x45, 0, 0, 20],
        0,
        0,
    )));
    f
}
