//! DNS transaction records (`type: "dns"`, fields as in design.md).

use std::borrow::Cow;

use super::{
    ExchangeHead, RecordContext,
    fields::{Fields, Record},
    id::dns_id,
};
use crate::{
    base::net::{IPPROTO_TCP, IPPROTO_UDP},
    decode::dns::{
        DnsTx,
        message::{class_name, rcode_name, type_name},
    },
};

/// A DNS transaction record (`type: "dns"`, fields as in design.md).
#[derive(Clone, Debug, PartialEq)]
pub struct DnsRecord {
    pub head: ExchangeHead,
    pub transport: &'static str,
    pub msg_id: u16,
    pub q_name: Option<String>,
    pub q_type: Option<Cow<'static, str>>,
    pub q_class: Option<Cow<'static, str>>,
    pub rcode: Option<Cow<'static, str>>,
    pub answers: Vec<String>,
    pub latency: Option<f64>,
    pub status: &'static str,
    pub role: &'static str,
    /// The response was longer than what was captured: its answers are those that fit.
    pub cut: bool,
}

impl Record for DnsRecord {
    fn fields<F: Fields>(&self, o: &mut F) {
        self.head.fields(o);
        o.str("transport", self.transport);
        o.uint("msg_id", self.msg_id.into());
        o.opt_str("q_name", self.q_name.as_deref());
        o.opt_str("q_type", self.q_type.as_deref());
        o.opt_str("q_class", self.q_class.as_deref());
        o.opt_str("rcode", self.rcode.as_deref());
        o.strs("answers", &self.answers);
        o.float("latency", self.latency);
        o.str("status", self.status);
        o.str("role", self.role);
        o.bool("cut", self.cut);
    }
}

impl DnsRecord {
    /// A record of no transaction: what the columns of every DNS record are read from.
    pub fn sample() -> Self {
        Self {
            head: ExchangeHead::sample("dns"),
            transport: "udp",
            msg_id: 0,
            q_name: None,
            q_type: None,
            q_class: None,
            rcode: None,
            answers: Vec::new(),
            latency: None,
            status: "lost",
            role: "client",
            cut: false,
        }
    }

    /// The record of `tx`, whose strings it takes over.
    pub fn new(tx: DnsTx, cx: &RecordContext<'_>) -> Self {
        let head = ExchangeHead::new(
            ("dns", if tx.tcp { IPPROTO_TCP } else { IPPROTO_UDP }),
            |addrs| dns_id(&tx, addrs, cx.agent),
            cx,
            (tx.ifindex, tx.time_ns),
            (tx.client, tx.client_port),
            (tx.server, tx.server_port),
            tx.xlat,
        );
        let (q_type, q_class) = match &tx.question {
            Some(q) => (Some(type_name(q.qtype)), Some(class_name(q.qclass))),
            None => (None, None),
        };
        Self {
            head,
            transport: if tx.tcp { "tcp" } else { "udp" },
            msg_id: tx.msg_id,
            q_name: tx.question.map(|q| q.name),
            q_type,
            q_class,
            rcode: tx.rcode.map(rcode_name),
            answers: tx.answers,
            latency: tx.latency_ns.map(|ns| ns as f64 / 1e9),
            status: tx.status.as_str(),
            role: tx.role.as_str(),
            cut: tx.cut,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{flow::Workload, record::k8s::K8sFields};

    const STRINGS: [&str; 5] = [
        "example.com.",
        "a\"b\\c",
        "tab\there\u{2}",
        "ünï.example.",
        "",
    ];

    fn record(i: usize) -> DnsRecord {
        let s = |k: usize| STRINGS[(i + k) % STRINGS.len()].to_owned();
        let some = |k: usize| (i >> k) & 1 == 1;
        let side = some(5).then(|| {
            Arc::new(Workload {
                namespace: Some(s(1).into()),
                pod: some(6).then(|| s(2).into()),
                ..Workload::default()
            })
        });
        DnsRecord {
            head: ExchangeHead {
                kind: "dns",
                id: format!("{i:032x}").into(),
                agent: s(0).into(),
                interface: s(1).into(),
                time: "2026-12-05T23:59:59.000001Z".into(),
                client: "10.0.0.1".into(),
                client_port: (i * 97) as u16,
                server: "fd00::53".into(),
                server_port: 53,
                community_id: "1:abc+/=".into(),
                k8s: if some(0) {
                    K8sFields::exchange(side.clone(), None)
                } else {
                    K8sFields::exchange(None, side.clone())
                },
                xlat_server: some(8).then(|| "10.244.1.9".into()),
                xlat_server_port: some(8).then_some(5353),
                xlat_k8s: crate::record::k8s::XlatK8s(side.filter(|_| some(8))),
            },
            transport: if some(1) { "tcp" } else { "udp" },
            msg_id: (i * 7919) as u16,
            q_name: some(2).then(|| s(2)),
            q_type: some(3).then(|| "AAAA".into()),
            q_class: some(3).then(|| "IN".into()),
            rcode: some(4).then(|| s(3).into()),
            answers: (0..i % 4).map(s).collect(),
            latency: match i % 5 {
                0 => None,
                1 => Some(0.000_123_4),
                2 => Some(1.5),
                3 => Some(f64::NAN),
                _ => Some(i as f64 / 1e9),
            },
            status: "ok",
            role: "client",
            cut: some(7),
        }
    }

    #[test]
    fn every_encoding_holds_every_field_with_the_same_value() {
        for i in 0..512 {
            crate::record::fields::tests::assert_encodings_agree(&record(i));
        }
    }
}
