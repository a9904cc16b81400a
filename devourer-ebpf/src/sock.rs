//! A TCP socket's tuple as the counting program keys the packets it sends (local endpoint as
//! source, IPv4 v4-mapped, interface 0), so the agent adds what the kernel reports about the
//! socket (retransmissions) to the flow that counted its packets.

use devourer_common::flow::{FlowKey, KEY_F_IPV6};

use crate::{IPPROTO_TCP, Parsed, set_addr, v4_mapped};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// One side of a socket: its IPv4 address word (network order, as the kernel stores it), its
/// IPv6 address (meaningful for `AF_INET6`), its port in host order.
#[derive(Clone, Copy)]
pub struct End {
    pub v4: u32,
    pub v6: [u8; 16],
    pub port: u16,
}

/// Whether `a` is `::ffff:a.b.c.d` (an IPv4 peer of an IPv6 socket: its packets are IPv4).
#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff
}

/// Writes the key of the packets a socket of `family` sends from `local` to `remote` into
/// `key`; false for a family that is neither IPv4 nor IPv6.
#[inline(always)]
pub fn sock_key(family: u16, local: &End, remote: &End, key: &mut FlowKey) -> bool {
    *key = Parsed::EMPTY.key;
    match family {
        AF_INET => {
            set_addr(&mut key.src_addr, v4_mapped(local.v4));
            set_addr(&mut key.dst_addr, v4_mapped(remote.v4));
        }
        AF_INET6 => {
            key.src_addr = local.v6;
            key.dst_addr = remote.v6;
            // A dual-stack socket talking to an IPv4 peer sends IPv4 packets, which the
            // counting program keys v4-mapped like these addresses already are.
            if !(is_v4_mapped(&local.v6) && is_v4_mapped(&remote.v6)) {
                key.flags = KEY_F_IPV6;
            }
        }
        _ => return false,
    }
    key.src_port = local.port;
    key.dst_port = remote.port;
    key.proto = IPPROTO_TCP;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v4_mapped_bytes;

    fn end(v4: [u8; 4], v6: [u8; 16], port: u16) -> End {
        End {
            v4: u32::from_ne_bytes(v4),
            v6,
            port,
        }
    }

    #[test]
    fn an_ipv4_socket_keys_like_its_packets_local_side_first() {
        let mut k = FlowKey::default();
        let local = end([10, 0, 0, 1], [0; 16], 40000);
        let remote = end([10, 0, 0, 2], [0; 16], 80);
        assert!(sock_key(AF_INET, &local, &remote, &mut k));
        assert_eq!(k.src_addr, v4_mapped_bytes([10, 0, 0, 1]));
        assert_eq!(k.dst_addr, v4_mapped_bytes([10, 0, 0, 2]));
        assert_eq!(
            (k.src_port, k.dst_port, k.proto, k.flags),
            (40000, 80, 6, 0)
        );
    }

    #[test]
    fn a_dual_stack_socket_to_an_ipv4_peer_keys_as_ipv4_and_a_real_ipv6_one_as_ipv6() {
        let mut k = FlowKey::default();
        let l = v4_mapped_bytes([10, 0, 0, 1]);
        let r = v4_mapped_bytes([10, 0, 0, 2]);
        assert!(sock_key(
            AF_INET6,
            &end([0; 4], l, 1),
            &end([0; 4], r, 2),
            &mut k
        ));
        assert_eq!((k.src_addr, k.dst_addr, k.flags), (l, r, 0));
        let mut l6 = [0u8; 16];
        l6[0] = 0x20;
        l6[15] = 1;
        assert!(sock_key(
            AF_INET6,
            &end([0; 4], l6, 1),
            &end([0; 4], r, 2),
            &mut k
        ));
        assert_eq!(k.flags, KEY_F_IPV6);
        assert!(!sock_key(
            1,
            &end([0; 4], l6, 1),
            &end([0; 4], r, 2),
            &mut k
        ));
    }
}
