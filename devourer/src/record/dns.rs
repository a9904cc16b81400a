//! DNS transaction records (`type: "dns"`, fields as in design.md).

use serde::Serialize;

use super::{ExchangeHead, RecordContext, id::dns_id};
use crate::{
    base::net::{IPPROTO_TCP, IPPROTO_UDP},
    decode::dns::{
        DnsTx,
        message::{class_name, rcode_name, type_name},
    },
};

/// A DNS transaction record (`type: "dns"`, fields as in design.md).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DnsRecord {
    #[serde(flatten)]
    pub head: ExchangeHead,
    pub transport: &'static str,
    pub msg_id: u16,
    pub q_name: Option<String>,
    pub q_type: Option<String>,
    pub q_class: Option<String>,
    pub rcode: Option<String>,
    pub answers: Vec<String>,
    pub latency: Option<f64>,
    pub status: &'static str,
    pub role: &'static str,
    /// The response was longer than what was captured: its answers are those that fit.
    pub cut: bool,
}

impl DnsRecord {
    /// The record of `tx`, whose strings it takes over.
    pub fn new(tx: DnsTx, cx: &RecordContext<'_>) -> Self {
        let head = ExchangeHead::new(
            ("dns", if tx.tcp { IPPROTO_TCP } else { IPPROTO_UDP }),
            |addrs| dns_id(&tx, addrs, cx.agent),
            cx,
            (tx.ifindex, tx.time_ns),
            (tx.client, tx.client_port),
            (tx.server, tx.server_port),
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
