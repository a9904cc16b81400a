//! A dropped packet's flow tuple, read from the kernel's `sk_buff` at its network header: the
//! same key the counting program gives the packet (interface 0, IPv4 addresses v4-mapped,
//! ports in host order, 0 for protocols without ports and non-first fragments), so the agent
//! attributes the drop to the flow that counted it. Written against [`Mem`], so the kernel
//! reads through `bpf_probe_read_kernel` and host tests read byte slices.

use devourer_common::flow::{FlowKey, KEY_F_IPV6};

use crate::{
    ETH_P_IP, ETH_P_IPV6, IPPROTO_DCCP, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE,
    MAX_IPV6_EXT, Parsed, set_addr, v4_mapped,
};

/// Bytes at offsets from a packet's network header.
pub trait Mem {
    /// `N` bytes at `off`, `None` when they cannot be read.
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]>;
}

/// The flow key of the packet whose network header `m` reads (`protocol`: the `sk_buff`'s
/// EtherType, network byte order already swapped) and its IP-layer length as its header
/// states it (the bytes the counting program counts; 0 for an IPv6 jumbogram), `None` for
/// what is not IPv4 or IPv6.
///
/// The key is written into `key` (which the caller initialises: on the kernel's older verifiers
/// a value returned inside an `Option` can be read from stack the path never wrote).
#[inline(always)]
pub fn drop_key<M: Mem>(m: &M, protocol: u16, key: &mut FlowKey) -> Option<u32> {
    *key = Parsed::EMPTY.key;
    let len;
    match protocol {
        ETH_P_IP => {
            let h: [u8; 20] = m.bytes(0)?;
            if h[0] >> 4 != 4 || h[0] & 0x0f < 5 {
                return None;
            }
            len = u16::from_be_bytes([h[2], h[3]]) as u32;
            let src = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
            let dst = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
            set_addr(&mut key.src_addr, v4_mapped(src));
            set_addr(&mut key.dst_addr, v4_mapped(dst));
            key.proto = h[9];
            let frag_off = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
            if frag_off == 0 {
                ports(m, ((h[0] & 0x0f) as usize) * 4, key);
            }
        }
        ETH_P_IPV6 => {
            let h: [u8; 40] = m.bytes(0)?;
            if h[0] >> 4 != 6 {
                return None;
            }
            let payload = u16::from_be_bytes([h[4], h[5]]) as u32;
            len = if payload == 0 { 0 } else { payload + 40 };
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&h[8..24]);
            dst.copy_from_slice(&h[24..40]);
            key.src_addr = src;
            key.dst_addr = dst;
            key.flags |= KEY_F_IPV6;
            let mut next = h[6];
            let mut l4 = 40;
            let mut walked_all = true;
            for _ in 0..MAX_IPV6_EXT {
                match next {
                    0 | 43 | 60 | 135 | 139 | 140 => {
                        let e: [u8; 2] = m.bytes(l4)?;
                        next = e[0];
                        l4 += (e[1] as usize + 1) * 8;
                    }
                    44 => {
                        let f: [u8; 4] = m.bytes(l4)?;
                        next = f[0];
                        l4 += 8;
                        if u16::from_be_bytes([f[2], f[3]]) >> 3 != 0 {
                            key.proto = next;
                            return Some(len);
                        }
                    }
                    51 => {
                        let e: [u8; 2] = m.bytes(l4)?;
                        next = e[0];
                        l4 += (e[1] as usize + 2) * 4;
                    }
                    _ => {
                        walked_all = false;
                        break;
                    }
                }
            }
            key.proto = next;
            if !walked_all {
                ports(m, l4, key);
            }
        }
        _ => return None,
    }
    Some(len)
}

/// The ports of the protocols the counting program reads them for (ICMP keys have none).
#[inline(always)]
fn ports<M: Mem>(m: &M, off: usize, key: &mut FlowKey) {
    if matches!(
        key.proto,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP | IPPROTO_DCCP
    ) && let Some(p) = m.bytes::<4>(off)
    {
        key.src_port = u16::from_be_bytes([p[0], p[1]]);
        key.dst_port = u16::from_be_bytes([p[2], p[3]]);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use etherparse::PacketBuilder;

    use super::*;
    use crate::tests::run;

    struct Slice<'a>(&'a [u8]);

    impl Mem for Slice<'_> {
        fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
            self.0.get(off..off + N)?.try_into().ok()
        }
    }

    /// The drop program's key equals the counting parser's for the same packet.
    fn same_key(frame: &[u8], ethertype: u16) {
        let parsed = run(frame).unwrap();
        let mut got = FlowKey::default();
        let len = drop_key(&Slice(&frame[14..]), ethertype, &mut got).unwrap();
        assert_eq!(got, parsed.key);
        assert_eq!(
            len, parsed.bytes,
            "the IP length the counting program counts"
        );
    }

    #[test]
    fn a_dropped_packets_key_is_the_key_its_flow_was_counted_under() {
        let payload = [1u8, 2, 3, 4];
        let mut out = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
            .udp(5353, 53)
            .write(&mut out, &payload)
            .unwrap();
        same_key(&out, ETH_P_IP);
        out.clear();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv6([1; 16], [2; 16], 64)
            .tcp(40000, 443, 7, 1000)
            .syn()
            .write(&mut out, &payload)
            .unwrap();
        same_key(&out, ETH_P_IPV6);
        out.clear();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(1, 2)
            .write(&mut out, &payload)
            .unwrap();
        same_key(&out, ETH_P_IP);
    }

    #[test]
    fn what_is_not_ip_or_is_cut_short_has_no_key() {
        let mut k = FlowKey::default();
        assert_eq!(drop_key(&Slice(&[0x45; 10]), ETH_P_IP, &mut k), None);
        assert_eq!(drop_key(&Slice(&[0x45; 40]), 0x0806, &mut k), None);
        assert_eq!(drop_key(&Slice(&[0x65; 40]), ETH_P_IP, &mut k), None);
        // A header without its ports: the addresses still name the flow, ports 0.
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[9] = IPPROTO_TCP;
        drop_key(&Slice(&h), ETH_P_IP, &mut k).unwrap();
        assert_eq!((k.proto, k.src_port, k.dst_port), (IPPROTO_TCP, 0, 0));
        // A header length under five words is no IPv4 header.
        h[0] = 0x44;
        assert_eq!(drop_key(&Slice(&h), ETH_P_IP, &mut k), None);
    }
}
