//! Addresses and protocols as the kernel program stores them and as records print them.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv6Addr},
};

use devourer_common::flow::{FlowKey, KEY_F_IPV6};

use super::inline::AddrText;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// A 16-byte kernel address: IPv4 when the packet was IPv4 (stored v4-mapped), else IPv6.
pub fn ip(addr: &[u8; 16], v6: bool) -> IpAddr {
    let a = Ipv6Addr::from(*addr);
    match a.to_ipv4_mapped() {
        Some(v4) if !v6 => IpAddr::V4(v4),
        _ => IpAddr::V6(a),
    }
}

/// An address as records print it: what `to_string` gives, IPv4 without the formatting
/// machinery (every record prints two or more; IPv6 keeps std's canonical form).
pub fn addr_text(a: IpAddr) -> AddrText {
    let mut s = AddrText::empty();
    match a {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    b[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    b[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    b[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                b[n] = b'0' + octet % 10;
                n += 1;
            }
            let text = std::str::from_utf8(&b[..n]).expect("ASCII digits and dots");
            s.push_str(text).expect("15 bytes at most");
        }
        IpAddr::V6(v6) => {
            write!(s, "{v6}").expect("IPv6 text is at most 45 bytes");
        }
    }
    s
}

/// One of a flow key's addresses.
pub fn key_addr(key: &FlowKey, a: [u8; 16]) -> IpAddr {
    ip(&a, key.flags & KEY_F_IPV6 != 0)
}

/// The protocol's name in records (`tcp`, `udp`, `icmp`, `icmpv6`), else its number.
pub fn protocol_name(proto: u8) -> std::borrow::Cow<'static, str> {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        IPPROTO_ICMPV6 => "icmpv6".into(),
        n => n.to_string().into(),
    }
}

/// The protocol number [`protocol_name`] named (`None` for any other text).
pub fn protocol_number(name: &str) -> Option<u8> {
    match name {
        "tcp" => Some(IPPROTO_TCP),
        "udp" => Some(IPPROTO_UDP),
        "icmp" => Some(IPPROTO_ICMP),
        "icmpv6" => Some(IPPROTO_ICMPV6),
        n => n.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_numbers_read_back_their_names() {
        for p in 0..=u8::MAX {
            assert_eq!(protocol_number(&protocol_name(p)), Some(p));
        }
        assert_eq!(protocol_number("sctp"), None);
    }

    #[test]
    fn addresses_print_as_std_prints_them() {
        let mut v4 = 0x0102_0304u32;
        for _ in 0..10_000 {
            let a = IpAddr::from(v4.to_be_bytes());
            assert_eq!(addr_text(a), a.to_string());
            v4 = v4.wrapping_mul(2_654_435_761).wrapping_add(12_345);
        }
        for a in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "100.64.9.99",
            "::",
            "fd00::53",
            "::ffff:1.2.3.4",
            "2001:db8::1:0:0:1",
        ] {
            let a: IpAddr = a.parse().unwrap();
            assert_eq!(addr_text(a), a.to_string());
        }
    }

    #[test]
    fn ipv4_keys_print_as_ipv4_and_ipv6_keys_as_ipv6() {
        let mut k = FlowKey::default();
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1];
        assert_eq!(key_addr(&k, mapped).to_string(), "10.0.0.1");
        k.flags |= KEY_F_IPV6;
        assert_eq!(key_addr(&k, mapped).to_string(), "::ffff:10.0.0.1");
    }

    #[test]
    fn protocols_have_names_or_numbers() {
        assert_eq!(protocol_name(6), "tcp");
        assert_eq!(protocol_name(58), "icmpv6");
        assert_eq!(protocol_name(47), "47");
    }
}
