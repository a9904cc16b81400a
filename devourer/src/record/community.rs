//! Community ID v1 (corelight's spec, as Zeek, Suricata, Packetbeat and Wireshark compute it):
//! a conversation's endpoints hashed in an order that does not depend on direction, so a
//! devourer record joins other tools' logs of the same connection.

use std::net::IpAddr;

use base64::{Engine, engine::general_purpose::STANDARD};
use sha1::{Digest, Sha1};

use crate::base::{
    inline::Inline,
    net::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};

/// `1:` and the base64 of a SHA-1: 30 bytes.
pub type CommunityId = Inline<30>;

const IPPROTO_SCTP: u8 = 132;

/// What stands in for ports in the hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ports {
    /// TCP, UDP, SCTP.
    Ports(u16, u16),
    /// ICMP or ICMPv6 type and code of the conversation's first message.
    Icmp(u8, u8),
    /// Other protocols (and ICMP without a type): addresses and protocol only.
    None,
}

impl Ports {
    /// The ports part of a conversation of protocol `proto`.
    pub fn of(proto: u8, ports: (u16, u16), icmp: Option<(u8, u8)>) -> Self {
        match proto {
            IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => Self::Ports(ports.0, ports.1),
            IPPROTO_ICMP | IPPROTO_ICMPV6 => icmp.map_or(Self::None, |(t, c)| Self::Icmp(t, c)),
            _ => Self::None,
        }
    }
}

/// The request or reply type an ICMP type pairs with (Zeek's mapping), if it has one.
fn icmp_counterpart(proto: u8, t: u8) -> Option<u8> {
    let pairs: &[(u8, u8)] = if proto == IPPROTO_ICMPV6 {
        // Echo, MLD query/report, router and neighbour discovery, who-are-you, home agent.
        &[
            (128, 129),
            (130, 131),
            (133, 134),
            (135, 136),
            (139, 140),
            (144, 145),
        ]
    } else {
        // Echo, router solicitation/advert, timestamp, information, address mask.
        &[(8, 0), (10, 9), (13, 14), (15, 16), (17, 18)]
    };
    pairs.iter().find_map(|&(a, b)| {
        if t == a {
            Some(b)
        } else if t == b {
            Some(a)
        } else {
            None
        }
    })
}

/// An address's bytes in network order (4 or 16 of them), without an allocation.
fn octets(a: IpAddr) -> ([u8; 16], usize) {
    let mut b = [0; 16];
    match a {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (b, 4)
        }
        IpAddr::V6(v6) => (v6.octets(), 16),
    }
}

/// The Community ID (`1:` and the base64 SHA-1) of a conversation from `src` to `dst`.
pub fn community_id(seed: u16, src: IpAddr, dst: IpAddr, proto: u8, ports: Ports) -> CommunityId {
    let ((sb, sn), (db, dn)) = (octets(src), octets(dst));
    let (mut sa, mut da) = (&sb[..sn], &db[..dn]);
    let (mut sp, mut dp, one_way, with_ports) = match ports {
        Ports::Ports(s, d) => (s, d, false, true),
        Ports::Icmp(t, c) => match icmp_counterpart(proto, t) {
            Some(other) => (u16::from(t), u16::from(other), false, true),
            None => (u16::from(t), u16::from(c), true, true),
        },
        Ports::None => (0, 0, false, false),
    };
    // The smaller address (then port) first, unless the message has no reply to pair with.
    if !(one_way || sa < da || (sa == da && sp < dp)) {
        std::mem::swap(&mut sa, &mut da);
        std::mem::swap(&mut sp, &mut dp);
    }
    let mut h = Sha1::new();
    h.update(seed.to_be_bytes());
    h.update(sa);
    h.update(da);
    h.update([proto, 0]);
    if with_ports {
        h.update(sp.to_be_bytes());
        h.update(dp.to_be_bytes());
    }
    let mut b64 = [0u8; 28];
    let n = STANDARD
        .encode_slice(h.finalize(), &mut b64)
        .expect("a SHA-1 is 28 base64 bytes");
    let mut out = CommunityId::empty();
    out.push_str("1:").expect("fits");
    out.push_str(std::str::from_utf8(&b64[..n]).expect("base64 is ASCII"))
        .expect("fits");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_tcp_tuple_hashes_to_the_published_value_either_way_round() {
        let want = "1:koNcqhFRD5kb254ZrLsdv630jCM=";
        let p = IPPROTO_TCP;
        let fwd = community_id(
            0,
            ip("1.2.3.4"),
            ip("43.3.132.3"),
            p,
            Ports::Ports(4584, 3483),
        );
        let back = community_id(
            0,
            ip("43.3.132.3"),
            ip("1.2.3.4"),
            p,
            Ports::Ports(3483, 4584),
        );
        assert_eq!(fwd, want);
        assert_eq!(back, want);
        let seeded = community_id(
            1,
            ip("1.2.3.4"),
            ip("43.3.132.3"),
            p,
            Ports::Ports(4584, 3483),
        );
        assert_ne!(seeded, want);
    }

    #[test]
    fn an_echo_request_and_its_reply_share_an_id_and_an_unreachable_does_not_flip() {
        let (a, b) = (ip("10.0.0.2"), ip("10.0.0.1"));
        let req = community_id(0, a, b, IPPROTO_ICMP, Ports::Icmp(8, 0));
        let rep = community_id(0, b, a, IPPROTO_ICMP, Ports::Icmp(0, 0));
        assert_eq!(req, rep);
        let v6 = |t| {
            community_id(
                0,
                ip("fd00::2"),
                ip("fd00::1"),
                IPPROTO_ICMPV6,
                Ports::Icmp(t, 0),
            )
        };
        assert_eq!(
            v6(128),
            community_id(
                0,
                ip("fd00::1"),
                ip("fd00::2"),
                IPPROTO_ICMPV6,
                Ports::Icmp(129, 0)
            )
        );
        let unreach = community_id(0, a, b, IPPROTO_ICMP, Ports::Icmp(3, 1));
        let unreach_back = community_id(0, b, a, IPPROTO_ICMP, Ports::Icmp(3, 1));
        assert_ne!(
            unreach, unreach_back,
            "one-way messages keep their direction"
        );
    }
}
