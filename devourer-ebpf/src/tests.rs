//! The parser over frames built with etherparse (and by hand where etherparse will not build
//! them: options, fragments, extension headers, broken headers).

extern crate std;

use std::{vec, vec::Vec};

use etherparse::{PacketBuilder, VlanId};

use super::*;

pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl Packet for Bytes<'_> {
    fn at<T: Copy>(&self, off: usize) -> Option<*const T> {
        let end = off.checked_add(size_of::<T>())?;
        Some(self.0.get(off..end)?.as_ptr().cast::<T>())
    }

    fn frame_len(&self) -> usize {
        self.0.len()
    }
}

pub(crate) fn run(frame: &[u8]) -> Result<Parsed, Skip> {
    run_hint(frame, None)
}

fn run_hint(frame: &[u8], hint: Option<u16>) -> Result<Parsed, Skip> {
    let mut out = Parsed::EMPTY;
    parse(&Bytes(frame), hint, &mut out).map(|()| out)
}

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn v4(a: [u8; 4]) -> [u8; 16] {
    super::v4_mapped_bytes(a)
}

#[test]
fn udp_over_ipv4() {
    let b = PacketBuilder::ethernet2(MAC, MAC)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(5353, 53);
    let mut f = Vec::new();
    b.write(&mut f, &[0u8; 30]).unwrap();
    let p = run(&f).unwrap();
    assert_eq!(p.key.src_addr, v4([10, 0, 0, 1]));
    assert_eq!(p.key.dst_addr, v4([10, 0, 0, 2]));
    assert_eq!(
        (p.key.src_port, p.key.dst_port, p.key.proto),
        (5353, 53, 17)
    );
    assert_eq!(p.bytes, 20 + 8 + 30);
    assert_eq!((p.key.flags & KEY_F_IPV6, p.vlan), (0, 0));
}

#[test]
fn tcp_flags_and_bare_syn() {
    let b = PacketBuilder::ethernet2(MAC, MAC)
        .ipv6([1; 16], [2; 16], 64)
        .tcp(40000, 443, 1, 1000)
        .syn();
    let mut f = Vec::new();
    b.write(&mut f, &[]).unwrap();
    let p = run(&f).unwrap();
    assert_eq!(p.tcp_flags, 0x02);
    assert_eq!(p.val_flags & VAL_F_SYN, VAL_F_SYN);
    assert_eq!(p.key.flags & KEY_F_IPV6, KEY_F_IPV6);
    assert_eq!(p.bytes, 40 + 20);

    let b = PacketBuilder::ethernet2(MAC, MAC)
        .ipv6([2; 16], [1; 16], 64)
        .tcp(443, 40000, 1, 1000)
        .syn()
        .ack(2);
    let mut f = Vec::new();
    b.write(&mut f, &[]).unwrap();
    let p = run(&f).unwrap();
    assert_eq!(p.tcp_flags, 0x12);
    assert_eq!(p.val_flags & VAL_F_SYN, 0, "SYN-ACK is not the initiator");
}

#[test]
fn vlan_and_qinq_take_the_outer_id_outside_the_key() {
    let b = PacketBuilder::ethernet2(MAC, MAC)
        .single_vlan(VlanId::try_new(100).unwrap())
        .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64)
        .udp(1, 2);
    let mut f = Vec::new();
    b.write(&mut f, &[]).unwrap();
    let p = run(&f).unwrap();
    assert_eq!(p.vlan, 100 | VLAN_SEEN);
    let untagged = PacketBuilder::ethernet2(MAC, MAC)
        .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64)
        .udp(1, 2);
    let mut g = Vec::new();
    untagged.write(&mut g, &[]).unwrap();
    assert_eq!(
        run(&g).unwrap().key,
        p.key,
        "the tag is not part of the flow"
    );
    assert_eq!(p.key.src_port, 1);

    let b = PacketBuilder::ethernet2(MAC, MAC)
        .double_vlan(VlanId::try_new(200).unwrap(), VlanId::try_new(300).unwrap())
        .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64)
        .udp(1, 2);
    let mut f = Vec::new();
    b.write(&mut f, &[]).unwrap();
    let p = run(&f).unwrap();
    assert_eq!(p.vlan, 200 | VLAN_SEEN);
    assert_eq!(p.key.dst_port, 2);

    // The kernel already moved the outer tag to skb->vlan_tci: the hint wins.
    let p = run_hint(&f, Some(0x2000 | 7)).unwrap();
    assert_eq!(p.vlan, 7 | VLAN_SEEN);
}

/// An IPv4 header with `opts` option bytes (a multiple of 4) and the given fragment field.
fn ipv4_raw(proto: u8, opts: usize, frag: u16, payload: &[u8]) -> Vec<u8> {
    let ihl = 20 + opts;
    let tot = (ihl + payload.len()) as u16;
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    f.push(0x40 | (ihl / 4) as u8);
    f.push(0);
    f.extend_from_slice(&tot.to_be_bytes());
    f.extend_from_slice(&[0, 1]);
    f.extend_from_slice(&frag.to_be_bytes());
    f.extend_from_slice(&[64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend(core::iter::repeat_n(1u8, opts)); // NOPs
    f.extend_from_slice(payload);
    f
}

#[test]
fn ipv4_options_move_the_transport_header() {
    let udp = [0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0];
    let p = run(&ipv4_raw(17, 8, 0, &udp)).unwrap();
    assert_eq!((p.key.src_port, p.key.dst_port), (12345, 53));
    assert_eq!(p.bytes, 28 + 8);
}

#[test]
fn fragments_first_has_ports_later_ones_do_not() {
    let udp = [0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0];
    let first = run(&ipv4_raw(17, 0, 0x2000, &udp)).unwrap();
    assert_eq!(first.key.src_port, 12345);
    let later = run(&ipv4_raw(17, 0, 0x00b9, &[0xff; 16])).unwrap();
    assert_eq!(
        (later.key.src_port, later.key.dst_port, later.key.proto),
        (0, 0, 17)
    );
    assert_eq!(later.bytes, 36);
}

fn ipv6_raw(next: u8, ext: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&((ext.len() + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&[0xfe; 16]);
    f.extend_from_slice(&[0xfd; 16]);
    f.extend_from_slice(ext);
    f.extend_from_slice(payload);
    f
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let udp = [0x00, 0x35, 0x30, 0x39, 0, 8, 0, 0];
    // Hop-by-hop (8 bytes) -> destination options (16 bytes) -> UDP.
    let mut ext = vec![60, 0, 1, 4, 0, 0, 0, 0];
    ext.extend_from_slice(&[17, 1, 1, 12]);
    ext.extend_from_slice(&[0; 12]);
    let p = run(&ipv6_raw(0, &ext, &udp)).unwrap();
    assert_eq!(
        (p.key.proto, p.key.src_port, p.key.dst_port),
        (17, 53, 12345)
    );
    assert_eq!(p.bytes, 40 + 24 + 8);

    // A non-first fragment: the fragment header's next header, ports 0.
    let frag = [17, 0, 0x05, 0x01, 0, 0, 0, 1];
    let p = run(&ipv6_raw(44, &frag, &[0xaa; 20])).unwrap();
    assert_eq!((p.key.proto, p.key.src_port), (17, 0));

    // A first fragment still has its ports.
    let frag = [17, 0, 0x00, 0x01, 0, 0, 0, 1];
    let p = run(&ipv6_raw(44, &frag, &udp)).unwrap();
    assert_eq!(p.key.src_port, 53);
}

#[test]
fn icmp_type_and_code_are_kept() {
    let b = PacketBuilder::ethernet2(MAC, MAC)
        .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64)
        .icmpv4_echo_request(1, 1);
    let mut f = Vec::new();
    b.write(&mut f, &[0; 56]).unwrap();
    let p = run(&f).unwrap();
    assert_eq!((p.key.proto, p.icmp_type, p.icmp_code), (1, 8, 0));
    assert_eq!(p.val_flags & VAL_F_ICMP, VAL_F_ICMP);
    assert_eq!(p.bytes, 84);
}

#[test]
fn broken_headers_are_malformed_and_other_ethertypes_are_not_ip() {
    assert_eq!(run(&[0u8; 10]).err(), Some(Skip::Malformed));
    let mut arp = vec![0u8; 42];
    arp[12] = 0x08;
    arp[13] = 0x06;
    assert_eq!(run(&arp).err(), Some(Skip::NonIp));
    // IHL 3 (12 bytes) is impossible.
    let mut bad = ipv4_raw(17, 0, 0, &[0; 8]);
    bad[14] = 0x43;
    assert_eq!(run(&bad).err(), Some(Skip::Malformed));
    // Version 5 in an IPv4 ethertype.
    let mut bad = ipv4_raw(17, 0, 0, &[0; 8]);
    bad[14] = 0x55;
    assert_eq!(run(&bad).err(), Some(Skip::Malformed));
    // Total length shorter than the header.
    let mut bad = ipv4_raw(17, 0, 0, &[0; 8]);
    bad[16..18].copy_from_slice(&10u16.to_be_bytes());
    assert_eq!(run(&bad).err(), Some(Skip::Malformed));
    // IP header cut short, and a TCP header cut short.
    let ok = ipv4_raw(6, 0, 0, &[0; 20]);
    assert_eq!(run(&ok[..30]).err(), Some(Skip::Malformed));
    assert_eq!(run(&ok[..40]).err(), Some(Skip::Malformed));
    assert!(run(&ok).is_ok());
    // A VLAN tag with nothing after it.
    let mut vlan = vec![0u8; 12];
    vlan.extend_from_slice(&[0x81, 0x00, 0x00]);
    assert_eq!(run(&vlan).err(), Some(Skip::Malformed));
}

#[test]
fn segment_header_length_covers_ip_and_transport_headers() {
    // TCP with 12 bytes of options (doff 8) over IPv4 with 4 bytes of options.
    let mut t = vec![0u8; 32];
    t[12] = 8 << 4;
    t[13] = 0x10;
    let p = run(&ipv4_raw(6, 4, 0, &t)).unwrap();
    assert_eq!(p.seg_hdr, 24 + 32);
    let udp = [0, 1, 0, 2, 0, 8, 0, 0];
    assert_eq!(run(&ipv4_raw(17, 0, 0, &udp)).unwrap().seg_hdr, 28);
    let mut e = vec![17, 0, 1, 4, 0, 0, 0, 0];
    e.truncate(8);
    assert_eq!(run(&ipv6_raw(0, &e, &udp)).unwrap().seg_hdr, 40 + 8 + 8);
}

#[test]
fn http_payloads_are_picked_by_port_and_first_bytes() {
    let frame = |sport: u16, dport: u16, payload: &[u8]| {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(MAC, MAC)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(sport, dport, 1, 1000)
            .write(&mut f, payload)
            .unwrap();
        f
    };
    let ports = [80, 8080, 0, 0, 0, 0, 0, 0];
    let req = run(&frame(40000, 80, b"GET / HTTP/1.1\r\n\r\n")).unwrap();
    assert!(is_http(&req, &ports));
    assert!(!is_http(&req, &[0; 8]), "all-zero ports turn HTTP off");
    let resp = run(&frame(8080, 40000, b"HTTP/1.1 200 OK\r\n\r\n")).unwrap();
    assert!(is_http(&resp, &ports));
    assert!(!is_http(
        &run(&frame(40000, 443, b"GET /")).unwrap(),
        &ports
    ));
    assert!(
        !is_http(&run(&frame(40000, 80, b"")).unwrap(), &ports),
        "no payload"
    );

    for start in [
        b"HTTP", b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC",
    ] {
        assert!(starts_http(*start), "{start:?}");
    }
    for other in [b"get ", b"\x16\x03\x01\x02", b"\0\0\0\0", b"HTTQ", b"GETX"] {
        assert!(!starts_http(*other), "{other:?}");
    }
}

#[test]
fn an_ip_length_past_what_the_frame_carried_is_malformed() {
    // 74-byte frames whose IP headers claim 65,535 bytes: Linux drops them; so do we.
    let b = PacketBuilder::ethernet2(MAC, MAC)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(5353, 53);
    let mut f = Vec::new();
    b.write(&mut f, &[0u8; 32]).unwrap();
    assert_eq!(f.len(), 74);
    assert_eq!(run(&f).unwrap().bytes, 60);
    f[16..18].copy_from_slice(&65535u16.to_be_bytes());
    assert_eq!(run(&f).err(), Some(Skip::Malformed));
    // One byte past the frame is too much; padding after the IP length is fine.
    f[16..18].copy_from_slice(&61u16.to_be_bytes());
    assert_eq!(run(&f).err(), Some(Skip::Malformed));
    f[16..18].copy_from_slice(&50u16.to_be_bytes());
    assert_eq!(run(&f).unwrap().bytes, 50);

    let b = PacketBuilder::ethernet2(MAC, MAC)
        .ipv6([1; 16], [2; 16], 64)
        .udp(5353, 53);
    let mut f = Vec::new();
    b.write(&mut f, &[0u8; 10]).unwrap();
    assert_eq!(run(&f).unwrap().bytes, 40 + 8 + 10);
    f[18..20].copy_from_slice(&65000u16.to_be_bytes());
    assert_eq!(run(&f).err(), Some(Skip::Malformed));
}

#[test]
fn an_l3_devices_packets_parse_from_their_ip_header() {
    let mut out = Parsed::EMPTY;
    let b4 = PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(1000, 2000);
    let mut f = Vec::new();
    b4.write(&mut f, &[0u8; 12]).unwrap();
    parse_l3(&Bytes(&f), &mut out).unwrap();
    assert_eq!(
        (out.key.src_port, out.key.dst_port, out.bytes),
        (1000, 2000, 40)
    );
    assert_eq!(out.key.src_addr, v4([10, 0, 0, 1]));
    let b6 = PacketBuilder::ipv6([1; 16], [2; 16], 64).icmpv6_echo_request(1, 1);
    let mut f = Vec::new();
    b6.write(&mut f, &[0u8; 8]).unwrap();
    parse_l3(&Bytes(&f), &mut out).unwrap();
    assert_eq!((out.key.proto, out.icmp_type), (58, 128));
    assert_eq!(
        parse_l3(&Bytes(&[0x20; 20]), &mut out).err(),
        Some(Skip::NonIp)
    );
    assert_eq!(
        parse_l3(&Bytes(&[0x45; 19]), &mut out).err(),
        Some(Skip::Malformed)
    );
}

#[test]
fn sampling_decides_alike_for_one_packet_and_keeps_about_one_in_n() {
    let seed = 0x1234_5678_9abc_def0;
    let packet = |id: u16, seq: u32, len: usize| {
        let b = PacketBuilder::ethernet2(MAC, MAC)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 443, seq, 1000);
        let mut f = Vec::new();
        b.write(&mut f, &vec![0u8; len]).unwrap();
        f[18..20].copy_from_slice(&id.to_be_bytes());
        run(&f).unwrap()
    };
    // The same packet (as another hook sees it) gets the same hash; any field moves it.
    let p = packet(7, 1000, 100);
    assert_eq!(
        sample_hash(&p, seed),
        sample_hash(&packet(7, 1000, 100), seed)
    );
    for other in [
        packet(8, 1000, 100),
        packet(7, 1001, 100),
        packet(7, 1000, 101),
    ] {
        assert_ne!(sample_hash(&p, seed), sample_hash(&other, seed));
    }
    assert_ne!(sample_hash(&p, seed), sample_hash(&p, seed + 1));
    // A connection's packets (ids and sequence numbers advancing, one size): one in 10 kept.
    let kept = (0..20_000u32)
        .filter(|i| sample_hash(&packet(*i as u16, i * 1448, 1448), seed) % 10 == 0)
        .count();
    assert!(
        (1_800..2_200).contains(&kept),
        "{kept} of 20000 kept at 1 in 10"
    );
}

/// What the IP header does not tell apart: IPv6 pure ACKs (one sequence number, one length,
/// one flow label), IPv6 pings, and UDP datagrams of one size with IPv4 id 0. Their TCP
/// acknowledgement, ICMP echo sequence or UDP checksum does: about one in 10 kept.
#[test]
fn sampling_spreads_packets_the_ip_header_does_not_tell_apart() {
    let seed = 0x0bad_cafe_f00d_d00d;
    let kept = |frame: &dyn Fn(u32) -> Vec<u8>| {
        (0..5_000u32)
            .filter(|i| sample_hash(&run(&frame(*i)).unwrap(), seed) % 10 == 0)
            .count()
    };
    let ack6 = |i: u32| {
        let b = PacketBuilder::ethernet2(MAC, MAC)
            .ipv6([1; 16], [2; 16], 64)
            .tcp(40000, 443, 1000, 1000)
            .ack(i * 1448);
        let mut f = Vec::new();
        b.write(&mut f, &[]).unwrap();
        f
    };
    let ping6 = |i: u32| {
        let b = PacketBuilder::ethernet2(MAC, MAC)
            .ipv6([1; 16], [2; 16], 64)
            .icmpv6_echo_request(7, i as u16);
        let mut f = Vec::new();
        b.write(&mut f, &[0u8; 56]).unwrap();
        f
    };
    let udp4 = |i: u32| {
        let b = PacketBuilder::ethernet2(MAC, MAC)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(40000, 443);
        let mut f = Vec::new();
        b.write(&mut f, &i.to_be_bytes().repeat(300)).unwrap();
        f[18..20].copy_from_slice(&[0, 0]);
        f
    };
    for (what, n) in [
        ("ack6", kept(&ack6)),
        ("ping6", kept(&ping6)),
        ("udp4", kept(&udp4)),
    ] {
        assert!(
            (400..600).contains(&n),
            "{what}: {n} of 5000 kept at 1 in 10"
        );
    }
}

/// A TCP/IPv4 packet (no link header) with `len` bytes of payload.
fn inner_tcp(len: usize) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ipv4([10, 1, 0, 1], [10, 1, 0, 2], 64)
        .tcp(40000, 5201, 1, 1000)
        .write(&mut f, &vec![0u8; len])
        .unwrap();
    f
}

#[test]
fn gro_and_dodgy_gso_packets_count_their_segments_headers_and_all() {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC, MAC)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40000, 443, 1, 1000)
        .write(&mut f, &vec![0u8; 10_000])
        .unwrap();
    let seg = |segs, size| {
        let mut p = run(&f).unwrap();
        let n = gso_segments(&Bytes(&f), &mut p, segs, size);
        (n, p.bytes)
    };
    // A single packet, a GRO packet of three, a DODGY one (virtio, tun) of ten by its size.
    assert_eq!(seg(1, 0), (1, 10_040));
    assert_eq!(seg(3, 3334), (3, 10_040 + 2 * 40));
    assert_eq!(seg(0, 1000), (10, 10_040 + 9 * 40));
    assert_eq!(seg(0, 1448), (7, 10_040 + 6 * 40));
}

#[test]
fn tunnel_gso_segments_repeat_the_inner_headers_too() {
    // VXLAN: outer IPv4 + UDP, then VXLAN, an inner Ethernet frame, IPv4 and TCP.
    let mut inner = vec![0x08, 0, 0, 0, 0, 0, 0x64, 0];
    inner.extend_from_slice(&MAC);
    inner.extend_from_slice(&MAC);
    inner.extend_from_slice(&ETH_P_IP.to_be_bytes());
    inner.extend_from_slice(&inner_tcp(3000));
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC, MAC)
        .ipv4([192, 168, 0, 1], [192, 168, 0, 2], 64)
        .udp(50000, 4789)
        .write(&mut f, &inner)
        .unwrap();
    let mut p = run(&f).unwrap();
    let outer = p.bytes;
    assert_eq!(tunnel_headers(&Bytes(&f), &p), 8 + 14 + 20 + 20);
    assert_eq!(gso_segments(&Bytes(&f), &mut p, 3, 1000), 3);
    assert_eq!(p.bytes, outer + 2 * (20 + 8 + 8 + 14 + 20 + 20));

    // IP in IP from a tun-like sender: DODGY, segments from the inner payload.
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC, MAC)
        .ipv4([192, 168, 0, 1], [192, 168, 0, 2], 64)
        .write(&mut f, etherparse::IpNumber(4), &inner_tcp(2000))
        .unwrap();
    let mut p = run(&f).unwrap();
    assert_eq!((p.key.proto, p.bytes), (4, 20 + 20 + 20 + 2000));
    assert_eq!(gso_segments(&Bytes(&f), &mut p, 0, 1000), 2);
    assert_eq!(p.bytes, 2060 + 60);

    // GRE with a key, carrying IPv4.
    let mut gre = vec![0x20, 0, 0x08, 0x00, 0, 0, 0, 7];
    gre.extend_from_slice(&inner_tcp(100));
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC, MAC)
        .ipv4([192, 168, 0, 1], [192, 168, 0, 2], 64)
        .write(&mut f, etherparse::IpNumber(47), &gre)
        .unwrap();
    let p = run(&f).unwrap();
    assert_eq!(tunnel_headers(&Bytes(&f), &p), 8 + 20 + 20);
    // Not a tunnel, and WireGuard (encrypted): nothing inside counts.
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC, MAC)
        .ipv4([192, 168, 0, 1], [192, 168, 0, 2], 64)
        .udp(51820, 51820)
        .write(&mut f, &[0u8; 200])
        .unwrap();
    assert_eq!(tunnel_headers(&Bytes(&f), &run(&f).unwrap()), 0);
}
