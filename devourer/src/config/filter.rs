//! `--filter` rules as written (`keep|drop [proto P] [net CIDR] [port N[-M]]`), parsed into the
//! form the flow stage evaluates ([`FilterRule`]).

use std::{fmt, net::IpAddr};

use devourer_common::filter::{FilterRule, MAX_FILTER_RULES, RULE_DROP, RULE_KEEP};
use ipnet::IpNet;

use super::values::BadValue;

/// One rule, as given and as the flow stage evaluates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub text: String,
    pub rule: FilterRule,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Rule {
    /// `keep` or `drop`.
    pub fn action(&self) -> &'static str {
        if self.rule.action == RULE_DROP {
            "drop"
        } else {
            "keep"
        }
    }
}

fn bad(msg: String) -> BadValue {
    BadValue(msg)
}

fn proto(s: &str) -> Result<u8, BadValue> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "icmpv6" | "icmp6" => 58,
        n => match n.parse::<u8>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(bad(format!(
                    "proto {s:?}: tcp, udp, icmp, icmpv6 or a protocol number 1-255"
                )));
            }
        },
    })
}

/// The network as masked key words (IPv4 v4-mapped, as flow keys store it).
fn net(s: &str, rule: &mut FilterRule) -> Result<(), BadValue> {
    let n: IpNet = match s.parse() {
        Ok(n) => n,
        // A bare address is a host.
        Err(_) => match s.parse::<IpAddr>() {
            Ok(a) => IpNet::from(a),
            Err(_) => {
                return Err(bad(format!(
                    "net {s:?} is not a CIDR (10.0.0.0/8, fd00::/8)"
                )));
            }
        },
    };
    let (addr, bits, family) = match n {
        IpNet::V4(v4) => (
            v4.network().to_ipv6_mapped().octets(),
            96 + u32::from(v4.prefix_len()),
            4,
        ),
        IpNet::V6(v6) => (v6.network().octets(), u32::from(v6.prefix_len()), 6),
    };
    let mut mask = [0u8; 16];
    for (i, m) in mask.iter_mut().enumerate() {
        let from = i as u32 * 8;
        *m = match bits.saturating_sub(from) {
            0 => 0,
            b if b >= 8 => 0xff,
            b => 0xffu8 << (8 - b),
        };
    }
    for i in 0..4 {
        let w =
            |b: &[u8; 16]| u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        rule.mask[i] = w(&mask);
        rule.net[i] = w(&addr) & rule.mask[i];
    }
    rule.family = family;
    Ok(())
}

fn ports(s: &str, rule: &mut FilterRule) -> Result<(), BadValue> {
    let p = |t: &str| {
        t.trim()
            .parse::<u16>()
            .map_err(|_| bad(format!("port {s:?}: N or N-M, 0-65535")))
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (p(a)?, p(b)?),
        None => (p(s)?, p(s)?),
    };
    if lo > hi {
        return Err(bad(format!("port {s:?}: the range is backwards")));
    }
    (rule.port_lo, rule.port_hi, rule.has_port) = (lo, hi, 1);
    Ok(())
}

/// One rule: an action, then conditions (each at most once), all of which must match.
pub fn parse_rule(s: &str) -> Result<Rule, BadValue> {
    let mut words = s.split_whitespace();
    let mut rule = FilterRule {
        action: match words.next() {
            Some("keep") => RULE_KEEP,
            Some("drop") => RULE_DROP,
            _ => {
                return Err(bad(format!(
                    "filter {s:?}: starts with keep or drop, then any of: proto P, net CIDR, port N[-M]"
                )));
            }
        },
        ..FilterRule::default()
    };
    let mut seen: Vec<&str> = Vec::new();
    while let Some(what) = words.next() {
        let Some(value) = words.next() else {
            return Err(bad(format!("filter {s:?}: {what} needs a value")));
        };
        if seen.contains(&what) {
            return Err(bad(format!("filter {s:?}: {what} given twice")));
        }
        match what {
            "proto" => rule.proto = proto(value)?,
            "net" => net(value, &mut rule)?,
            "port" => ports(value, &mut rule)?,
            other => {
                return Err(bad(format!(
                    "filter {s:?}: unknown condition {other:?} (proto, net, port)"
                )));
            }
        }
        seen.push(what);
    }
    Ok(Rule {
        text: s.split_whitespace().collect::<Vec<_>>().join(" "),
        rule,
    })
}

/// The rules in order, at most [`MAX_FILTER_RULES`].
pub fn check_count(rules: &[Rule]) -> Result<(), BadValue> {
    if rules.len() > MAX_FILTER_RULES {
        return Err(bad(format!(
            "{} --filter rules: at most {MAX_FILTER_RULES}",
            rules.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use devourer_common::flow::{FlowKey, KEY_F_IPV6};

    use super::*;

    fn key(src: &str, sp: u16, dst: &str, dp: u16, proto: u8) -> FlowKey {
        let b = |s: &str| match s.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        };
        FlowKey {
            src_addr: b(src),
            dst_addr: b(dst),
            src_port: sp,
            dst_port: dp,
            proto,
            flags: if src.contains(':') { KEY_F_IPV6 } else { 0 },
            ..Default::default()
        }
    }

    #[test]
    fn conditions_all_must_match_either_address_or_port() {
        let r = parse_rule("drop proto udp net 10.1.0.0/16 port 5000-5010")
            .unwrap()
            .rule;
        assert!(r.matches(&key("10.1.2.3", 40000, "8.8.8.8", 5005, 17)));
        assert!(
            r.matches(&key("8.8.8.8", 5000, "10.1.9.9", 1, 17)),
            "either side"
        );
        assert!(
            !r.matches(&key("10.1.2.3", 40000, "8.8.8.8", 5005, 6)),
            "proto"
        );
        assert!(
            !r.matches(&key("10.2.2.3", 40000, "8.8.8.8", 5005, 17)),
            "net"
        );
        assert!(
            !r.matches(&key("10.1.2.3", 40000, "8.8.8.8", 5011, 17)),
            "port"
        );
        let v6 = parse_rule("keep net fd00::/8").unwrap().rule;
        assert!(v6.matches(&key("fd00::1", 1, "2001:db8::1", 2, 6)));
        assert!(!v6.matches(&key("10.0.0.1", 1, "10.0.0.2", 2, 6)), "family");
        let host = parse_rule("keep net 192.168.1.7").unwrap().rule;
        assert!(host.matches(&key("192.168.1.7", 1, "10.0.0.2", 2, 6)));
        assert!(!host.matches(&key("192.168.1.8", 1, "10.0.0.2", 2, 6)));
        let zero = parse_rule("drop port 0-10").unwrap().rule;
        assert!(
            !zero.matches(&key("1.1.1.1", 0, "2.2.2.2", 0, 1)),
            "ICMP has no ports"
        );
        let all = parse_rule("drop").unwrap().rule;
        assert!(all.matches(&key("1.1.1.1", 0, "2.2.2.2", 0, 1)));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (s, says) in [
            ("", "starts with keep or drop"),
            ("allow proto tcp", "starts with keep or drop"),
            ("keep proto", "needs a value"),
            ("keep proto sctpx", "protocol number"),
            ("keep net 10.0.0.0/33", "not a CIDR"),
            ("keep port 10-5", "backwards"),
            ("keep port 70000", "0-65535"),
            ("keep host 1.2.3.4", "unknown condition"),
            ("keep port 1 port 2", "twice"),
        ] {
            let e = parse_rule(s).unwrap_err().0;
            assert!(e.contains(says), "{s:?}: {e}");
        }
        let many: Vec<Rule> = (0..17).map(|_| parse_rule("keep").unwrap()).collect();
        assert!(check_count(&many).is_err());
        assert!(check_count(&many[..16]).is_ok());
    }

    /// The `Filters` of `text` (`;` between rules), as the flow stage gets them.
    fn filters(text: &str) -> crate::flow::Filters {
        crate::flow::Filters::new(
            text.split(';')
                .map(|r| parse_rule(r).unwrap().rule)
                .collect(),
        )
    }

    #[test]
    fn an_exchange_is_judged_on_the_client_and_the_server_it_asked() {
        let f = filters("keep net 10.0.0.53;drop port 53");
        let (client, dns) = (
            ("10.1.0.5".parse().unwrap(), 40000),
            ("10.96.0.10".parse().unwrap(), 53),
        );
        assert!(f.drops_exchange(17, client, dns));
        assert!(
            !f.drops_exchange(17, client, ("10.0.0.53".parse().unwrap(), 53)),
            "the first rule that matches decides"
        );
        assert!(!filters("drop proto udp").drops_exchange(6, client, dns));
        assert!(!crate::flow::Filters::default().drops_exchange(17, client, dns));
    }
}
