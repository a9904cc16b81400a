//! The packetlog-compatible DNS text log line: one per message,
//! `HH:MM:SS.mmm SRC#PORT DST#PORT KIND ID RCODE [QD/AN/NS/AR] QNAME CLASS TYPE [TTL DATA]`,
//! written to hourly files `dns-YYYYMMDD-HH.log` (or one file per kind with `--dns-log-split`)
//! by the text log sink.

use std::fmt::Write as _;

use super::message::{DnsMessage, class_name, type_name};
use crate::{base::local::Role, decode::LogLine};

/// The line for one message. `src`/`dst` are `ADDR#PORT`.
pub fn line(ts_ns: u64, src: &str, dst: &str, role: Role, m: &DnsMessage) -> LogLine {
    let kind = role.kind(m.response);
    let mut b = format!("{src} {dst} {kind} {:04X} {:02X}", m.id, m.rcode);
    if m.response {
        let [qd, an, ns, ar] = m.counts;
        let _ = write!(b, " {qd}/{an}/{ns}/{ar}");
    }
    let (qname, qclass, qtype) = match &m.question {
        Some(q) => (q.name.as_str(), class_name(q.qclass), type_name(q.qtype)),
        None => ("", "-".into(), "-".into()),
    };
    match m.answers.first() {
        Some(first) if m.response => {
            let _ = write!(
                b,
                " {qname} {qclass} {} {} {}",
                type_name(first.rtype),
                first.ttl,
                first.data_log()
            );
            // An alias: show where the chain leads, as packetlog did.
            if first.rtype == 5 && m.answers.len() > 1 {
                let chain: Vec<String> = m.answers[1..]
                    .iter()
                    .map(|a| {
                        format!(
                            "{} {} {} {} {}",
                            a.name().trim_end_matches('.'),
                            a.ttl,
                            class_name(a.class),
                            type_name(a.rtype),
                            a.data_log()
                        )
                    })
                    .collect();
                let _ = write!(b, " ({})", chain.join(", "));
            }
        }
        _ => {
            let _ = write!(b, " {qname} {qclass} {qtype}");
        }
    }
    LogLine {
        ts_ns,
        kind,
        body: b,
        ends: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::dns::{message::parse, testwire::*};

    #[test]
    fn lines_follow_packetlog() {
        let q = parse(&query(0xfce9, "sukmoonlee.com", 6)).unwrap();
        let l = line(0, "172.1.214.14#33974", "172.1.214.13#53", Role::Server, &q);
        assert_eq!(
            l.body,
            "172.1.214.14#33974 172.1.214.13#53 CQ FCE9 00 sukmoonlee.com IN SOA"
        );
        assert_eq!(l.kind, "CQ");

        let r = parse(&response(
            0xa804,
            0,
            "www.sukmoonlee.com",
            28,
            &[
                cname("www.sukmoonlee.com", 1800, "ghs.google.com"),
                aaaa(
                    "ghs.google.com",
                    300,
                    [
                        0x24, 0x04, 0x68, 0, 0x40, 0x04, 0x08, 0x06, 0, 0, 0, 0, 0, 0, 0x20, 0x13,
                    ],
                ),
            ],
        ))
        .unwrap();
        let l = line(0, "172.1.214.13#53", "172.1.214.14#9762", Role::Server, &r);
        assert_eq!(
            l.body,
            "172.1.214.13#53 172.1.214.14#9762 CR A804 00 1/2/0/0 www.sukmoonlee.com IN CNAME 1800 ghs.google.com (ghs.google.com 300 IN AAAA 2404:6800:4004:806::2013)"
        );

        let nx = parse(&response(0x39ac, 3, "nope.example", 1, &[])).unwrap();
        let l = line(
            0,
            "198.97.190.53#53",
            "172.1.214.13#9684",
            Role::Client,
            &nx,
        );
        assert_eq!(
            l.body,
            "198.97.190.53#53 172.1.214.13#9684 SR 39AC 03 1/0/0/0 nope.example IN A"
        );
        assert_eq!(Role::Transit.kind(false), "Q");
    }
}
