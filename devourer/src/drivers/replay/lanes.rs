//! Which replay thread feeds a frame to the kernel program. Records must not depend on how many
//! threads replay, so within a segment (the threads meet after each) every packet of one flow
//! key goes to the same thread, in file order (the program keeps per-key state that follows
//! packet order: which interface counts a flow, its first ICMP type), and every packet the
//! program may hand to a payload ring goes to the ordered lane 0, so DNS and HTTP events
//! arrive in file order. Other flows spread over the lanes by a hash of their key (addresses,
//! protocol and ports as the kernel keys them), both directions alike: lane 0 takes the share
//! of them the driver gives it for a segment (its thread also scans and decodes payloads),
//! the other lanes split the rest evenly.
//!
//! The header walk mirrors the kernel parser's (`devourer-ebpf`'s `parse`): the same VLAN tags,
//! fragments and IPv6 extension headers, so a key's packets are classified alike.

/// IPv6 extension headers walked before giving up, as in the kernel parser.
const MAX_IPV6_EXT: usize = 8;
const ETH_HLEN: usize = 14;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_DCCP: u8 = 33;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

/// The lane rule of one replay.
#[derive(Clone, Debug)]
pub struct Lanes {
    count: usize,
    /// DNS and HTTP ports: packets from or to these are the ordered lane's.
    payload_ports: Vec<u16>,
}

impl Lanes {
    /// `count` threads (at least 1, at most 255); `payload_ports` are every port whose packets
    /// the program may copy to a ring.
    pub fn new(count: usize, payload_ports: Vec<u16>) -> Self {
        Self {
            count: count.clamp(1, usize::from(u8::MAX)),
            payload_ports,
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// How an Ethernet frame may be spread: `None` for the ordered lane 0 (on the thread that
    /// also reads the rings and scans): anything that is not plain IP or may carry a ring's
    /// payload; else the hash of its flow key that [`Lanes::lane`] places.
    pub fn spread(&self, frame: &[u8]) -> Option<u32> {
        if self.count == 1 {
            return None;
        }
        let ip = headers(frame)?;
        let (sport, dport) = match ip.ports {
            Ports::Known(a, b) => {
                if self.payload_ports.iter().any(|&p| p == a || p == b) {
                    return None;
                }
                (a, b)
            }
            Ports::Unreadable => return None,
            Ports::None => (0, 0),
        };
        Some(symmetric_hash((ip.src, sport), (ip.dst, dport), ip.proto) as u32)
    }

    /// The lane of a frame with spread hash `spread` when lane 0 takes `share` (of
    /// [`WHOLE`]) of the spread frames.
    pub fn lane(&self, spread: Option<u32>, share: u32) -> u8 {
        let Some(h) = spread else {
            return 0;
        };
        if self.count == 1 || h & 0xffff < share {
            return 0;
        }
        1 + ((h >> 16) % (self.count as u32 - 1)) as u8
    }

    /// Lane 0's share when every lane takes as many spread frames.
    pub fn even_share(&self) -> u32 {
        WHOLE / self.count as u32
    }
}

/// All of the spread frames, as a share for [`Lanes::lane`].
pub const WHOLE: u32 = 1 << 16;

impl Lanes {
    /// The lane of a frame at an even share (tests).
    #[cfg(test)]
    fn of(&self, frame: &[u8]) -> u8 {
        self.lane(self.spread(frame), self.even_share())
    }
}

#[derive(Debug, PartialEq)]
enum Ports {
    /// Source and destination port.
    Known(u16, u16),
    /// A protocol with ports whose header is cut off: the kernel counts it as malformed.
    Unreadable,
    /// No ports in the key: other protocols, non-first fragments, headers past the walk.
    None,
}

#[derive(Debug)]
struct Ip {
    src: u128,
    dst: u128,
    /// The key's protocol: the last header walked.
    proto: u8,
    ports: Ports,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn addr(b: &[u8], at: usize, len: usize) -> Option<u128> {
    let bytes = b.get(at..at + len)?;
    Some(bytes.iter().fold(0u128, |a, &x| a << 8 | u128::from(x)))
}

/// The addresses and ports of an Ethernet frame, as the kernel parser keys it; `None` when it
/// is not IP or too short for its IP header.
fn headers(f: &[u8]) -> Option<Ip> {
    let mut ethertype = be16(f, 12)?;
    let mut off = ETH_HLEN;
    for _ in 0..2 {
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            ethertype = be16(f, off + 2)?;
            off += 4;
        }
    }
    match ethertype {
        0x0800 => ipv4(f, off),
        0x86dd => ipv6(f, off),
        _ => None,
    }
}

fn ipv4(f: &[u8], off: usize) -> Option<Ip> {
    let h = f.get(off..off + 20)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return None;
    }
    let (src, dst) = (addr(f, off + 12, 4)?, addr(f, off + 16, 4)?);
    let proto = h[9];
    let ports = if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
        Ports::None
    } else {
        l4_ports(f, off + ihl, proto)
    };
    Some(Ip {
        src,
        dst,
        proto,
        ports,
    })
}

fn ipv6(f: &[u8], off: usize) -> Option<Ip> {
    let h = f.get(off..off + 40)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let (src, dst) = (addr(f, off + 8, 16)?, addr(f, off + 24, 16)?);
    let mut next = h[6];
    let mut l4 = off + 40;
    let mut ip = Ip {
        src,
        dst,
        proto: next,
        ports: Ports::None,
    };
    for _ in 0..MAX_IPV6_EXT {
        ip.proto = next;
        match next {
            0 | 43 | 60 | 135 | 139 | 140 => {
                let Some(e) = f.get(l4..l4 + 2) else {
                    ip.ports = Ports::Unreadable;
                    return Some(ip);
                };
                next = e[0];
                l4 += (usize::from(e[1]) + 1) * 8;
            }
            44 => {
                let Some(e) = f.get(l4..l4 + 4) else {
                    ip.ports = Ports::Unreadable;
                    return Some(ip);
                };
                next = e[0];
                l4 += 8;
                if u16::from_be_bytes([e[2], e[3]]) >> 3 != 0 {
                    ip.proto = next;
                    return Some(ip);
                }
            }
            51 => {
                let Some(e) = f.get(l4..l4 + 2) else {
                    ip.ports = Ports::Unreadable;
                    return Some(ip);
                };
                next = e[0];
                l4 += (usize::from(e[1]) + 2) * 4;
            }
            _ => {
                ip.ports = l4_ports(f, l4, next);
                return Some(ip);
            }
        }
    }
    // More extension headers than the kernel walks: counted with ports 0.
    ip.proto = next;
    Some(ip)
}

fn l4_ports(f: &[u8], off: usize, proto: u8) -> Ports {
    match proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP | IPPROTO_DCCP => {
            match (be16(f, off), be16(f, off + 2)) {
                (Some(a), Some(b)) => Ports::Known(a, b),
                _ => Ports::Unreadable,
            }
        }
        _ => Ports::None,
    }
}

/// The same for (a, b) and (b, a); spreads neighbouring keys (splitmix64's finaliser).
fn symmetric_hash(a: (u128, u16), b: (u128, u16), proto: u8) -> u64 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let fold = |(x, port): (u128, u16)| {
        (x as u64) ^ ((x >> 64) as u64).rotate_left(29) ^ u64::from(port) << 40
    };
    let mut z = fold(lo)
        ^ fold(hi).rotate_left(17).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ u64::from(proto) << 56;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16, tags: &[u16], l3: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        for &t in tags {
            f.extend_from_slice(&t.to_be_bytes());
            f.extend_from_slice(&[0, 7]);
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(l3);
        f
    }

    fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 0, 0, 0];
        h.extend_from_slice(&frag.to_be_bytes());
        h.extend_from_slice(&[64, proto, 0, 0]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(l4);
        h
    }

    fn v6(next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0, 0, 0, next, 64];
        h.extend_from_slice(&[0xfd; 16]);
        h.extend_from_slice(&[0xfe; 16]);
        h.extend_from_slice(ext);
        h.extend_from_slice(l4);
        h
    }

    fn ports(a: u16, b: u16) -> Vec<u8> {
        [a.to_be_bytes(), b.to_be_bytes()].concat()
    }

    #[test]
    fn both_directions_of_a_flow_share_a_lane_and_flows_spread_over_lanes() {
        let lanes = Lanes::new(4, vec![53]);
        let mut used = [0usize; 4];
        for i in 0..400u16 {
            let a = [10, 1, (i >> 8) as u8, i as u8];
            let b = [10, 2, 0, 1];
            let out = eth(0x0800, &[], &v4(a, b, 17, 0, &ports(20_000 + i, 443)));
            let back = eth(0x0800, &[0x8100], &v4(b, a, 17, 0, &ports(443, 20_000 + i)));
            let lane = lanes.of(&out);
            assert_eq!(lane, lanes.of(&back), "flow {i}");
            used[usize::from(lane)] += 1;
        }
        assert!(used.iter().all(|&n| n > 50), "{used:?}");
    }

    #[test]
    fn payload_ports_non_ip_and_cut_headers_take_the_ordered_lane() {
        let lanes = Lanes::new(8, vec![53, 8080]);
        let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let lane_of = |l3: Vec<u8>| lanes.of(&eth(0x0800, &[], &l3));
        // Find a pair of addresses that does not hash to lane 0 for the checks to mean much.
        let other = (3..255u8)
            .map(|x| [10, 0, 1, x])
            .find(|&c| lane_of(v4(a, c, 17, 0, &ports(1000, 2000))) != 0)
            .unwrap();
        assert_ne!(lane_of(v4(a, other, 17, 0, &ports(1000, 2000))), 0);
        assert_eq!(lane_of(v4(a, other, 17, 0, &ports(1000, 53))), 0);
        assert_eq!(lane_of(v4(other, a, 6, 0, &ports(8080, 999))), 0);
        // A TCP or UDP header cut off: malformed for the kernel, ordered here.
        assert_eq!(lane_of(v4(a, other, 6, 0, &[0, 53])), 0);
        // Non-first fragments have no ports in their key, so none in their lane's hash.
        assert_eq!(
            lane_of(v4(a, other, 17, 100, &ports(1000, 53))),
            lane_of(v4(other, a, 17, 100, &[]))
        );
        assert_eq!(lanes.of(&eth(0x0806, &[], &[0; 28])), 0, "ARP");
        assert_eq!(lanes.of(&[0; 10]), 0, "too short");
        assert_eq!(
            lane_of(v4(a, b, 6, 0, &ports(5, 6))),
            lane_of(v4(b, a, 6, 0, &ports(6, 5)))
        );
        // Lane 0's share moves spread flows, never ordered ones.
        let spread = lanes.spread(&eth(0x0800, &[], &v4(a, other, 17, 0, &ports(1, 2))));
        assert!(spread.is_some());
        assert_eq!(lanes.lane(spread, WHOLE), 0);
        assert_ne!(lanes.lane(spread, 0), 0);
        let dns = lanes.spread(&eth(0x0800, &[], &v4(a, other, 17, 0, &ports(1000, 53))));
        assert_eq!((dns, lanes.lane(dns, 0)), (None, 0));
        let single = Lanes::new(1, vec![]);
        assert_eq!(
            single.of(&eth(0x0800, &[], &v4(a, other, 17, 0, &ports(1, 2)))),
            0
        );
    }

    #[test]
    fn ipv6_extension_headers_are_walked_like_the_kernel_does() {
        let dns = ports(33_000, 53);
        assert_eq!(
            headers(&eth(0x86dd, &[], &v6(17, &[], &dns)))
                .unwrap()
                .ports,
            Ports::Known(33_000, 53)
        );
        // Hop-by-hop (8 bytes) then UDP.
        let hbh = [17, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            headers(&eth(0x86dd, &[], &v6(0, &hbh, &dns)))
                .unwrap()
                .ports,
            Ports::Known(33_000, 53)
        );
        // A non-first fragment: no ports.
        let frag = [17, 0, 0, 0x10, 0, 0, 0, 1];
        assert_eq!(
            headers(&eth(0x86dd, &[], &v6(44, &frag, &dns)))
                .unwrap()
                .ports,
            Ports::None
        );
        // Nine hop-by-hop headers: past the walk, counted with ports 0.
        let deep: Vec<u8> = (0..9).flat_map(|_| [0u8, 0, 0, 0, 0, 0, 0, 0]).collect();
        assert_eq!(
            headers(&eth(0x86dd, &[], &v6(0, &deep, &dns)))
                .unwrap()
                .ports,
            Ports::None
        );
        assert_eq!(
            Lanes::new(2, vec![53]).of(&eth(0x86dd, &[], &v6(17, &[], &dns))),
            0
        );
    }
}
