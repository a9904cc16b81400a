//! The records as sinks write them (`type` `flow`, `dns` and `http`, fields as in design.md):
//! ids, address and time formatting.

use std::{
    borrow::Cow,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use devourer_common::flow::{FlowKey, KEY_F_IPV6, KEY_F_VLAN};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    dns::{
        DnsTx,
        message::{class_name, rcode_name, type_name},
    },
    flow::Emitted,
    http::{HttpMsg, message::Message},
};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FlowRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub seq: u32,
    pub agent: String,
    pub interface: String,
    pub protocol: Cow<'static, str>,
    pub src_addr: String,
    pub dst_addr: String,
    pub src_port: u16,
    pub dst_port: u16,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub vlan: Option<u16>,
    pub first_seen_at: String,
    pub last_seen_at: String,
    pub src_bytes: u64,
    pub dst_bytes: u64,
    pub src_packets: u64,
    pub dst_packets: u64,
    pub status: &'static str,
    pub src_name: Option<String>,
    pub dst_name: Option<String>,
    pub tcp_flags: u16,
}

pub fn protocol_name(proto: u8) -> Cow<'static, str> {
    match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string().into(),
    }
}

/// The key's address as text: IPv4 for IPv4 packets (stored v4-mapped), IPv6 otherwise.
pub fn addr(key: &FlowKey, a: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    if key.flags & KEY_F_IPV6 == 0
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        return IpAddr::V4(v4);
    }
    IpAddr::V6(v6)
}

/// RFC 3339, UTC, microseconds: `2024-05-01T12:00:00.123456Z`.
pub fn rfc3339(ns_since_epoch: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(ns_since_epoch);
    humantime::format_rfc3339_micros(t).to_string()
}

/// Record id: hash of the 5-tuple, interface, VLAN, flow start, agent and seq. The same flow
/// record always gets the same id (BigQuery insertId; replays are reproducible).
pub fn record_id(key: &FlowKey, flow_start_ns: u64, agent: &str, seq: u32) -> String {
    let mut h = Sha256::new();
    h.update(key.src_addr);
    h.update(key.dst_addr);
    h.update(key.src_port.to_be_bytes());
    h.update(key.dst_port.to_be_bytes());
    h.update([key.proto, key.flags]);
    h.update(key.ifindex.to_be_bytes());
    h.update(key.vlan.to_be_bytes());
    h.update(flow_start_ns.to_be_bytes());
    hash_agent(&mut h, agent);
    h.update(seq.to_be_bytes());
    hex16(&h.finalize())
}

/// The agent name, length first, so that no two (agent, following field) pairs collide.
fn hash_agent(h: &mut Sha256, agent: &str) {
    h.update((agent.len() as u32).to_be_bytes());
    h.update(agent.as_bytes());
}

/// The client and server of a DNS or HTTP exchange.
fn hash_endpoints(
    h: &mut Sha256,
    client: impl std::fmt::Display,
    client_port: u16,
    server: impl std::fmt::Display,
    server_port: u16,
) {
    h.update(client.to_string());
    h.update(client_port.to_be_bytes());
    h.update(server.to_string());
    h.update(server_port.to_be_bytes());
}

/// Turns kernel-clock nanoseconds into wall-clock nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock {
    /// Added to the program's timestamps (0 offline, where they already are wall time).
    pub offset_ns: i128,
}

impl Clock {
    pub fn wall(&self, ns: u64) -> u64 {
        (ns as i128 + self.offset_ns).max(0) as u64
    }
}

pub struct RecordContext<'a> {
    pub agent: &'a str,
    pub clock: Clock,
    pub interface_name: &'a dyn Fn(u32) -> String,
}

impl FlowRecord {
    pub fn new(e: &Emitted, cx: &RecordContext<'_>) -> Self {
        let k = &e.key;
        let icmp = e.icmp();
        Self {
            kind: "flow",
            id: record_id(k, e.flow_start_ns, cx.agent, e.seq),
            seq: e.seq,
            agent: cx.agent.to_owned(),
            interface: (cx.interface_name)(k.ifindex),
            protocol: protocol_name(k.proto),
            src_addr: addr(k, k.src_addr).to_string(),
            dst_addr: addr(k, k.dst_addr).to_string(),
            src_port: k.src_port,
            dst_port: k.dst_port,
            icmp_type: icmp.map(|(t, _)| t),
            icmp_code: icmp.map(|(_, c)| c),
            vlan: (k.flags & KEY_F_VLAN != 0).then_some(k.vlan),
            first_seen_at: rfc3339(cx.clock.wall(e.first_ns)),
            last_seen_at: rfc3339(cx.clock.wall(e.last_ns)),
            src_bytes: e.src.bytes,
            dst_bytes: e.dst.bytes,
            src_packets: e.src.packets,
            dst_packets: e.dst.packets,
            status: e.status.as_str(),
            src_name: e.src_name.as_deref().map(str::to_owned),
            dst_name: e.dst_name.as_deref().map(str::to_owned),
            tcp_flags: e.tcp_flags(),
        }
    }
}

/// A DNS transaction record (`type: "dns"`, fields as in design.md).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DnsRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub agent: String,
    pub interface: String,
    pub time: String,
    pub client: String,
    pub client_port: u16,
    pub server: String,
    pub server_port: u16,
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
}

/// DNS record id: hash of the endpoints, transport, message id, query time and agent.
pub fn dns_id(tx: &DnsTx, agent: &str) -> String {
    let mut h = Sha256::new();
    hash_endpoints(&mut h, tx.client, tx.client_port, tx.server, tx.server_port);
    h.update([u8::from(tx.tcp)]);
    h.update(tx.msg_id.to_be_bytes());
    h.update(tx.time_ns.to_be_bytes());
    hash_agent(&mut h, agent);
    hex16(&h.finalize())
}

fn hex16(digest: &[u8]) -> String {
    let mut out = String::with_capacity(32);
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl DnsRecord {
    pub fn new(tx: &DnsTx, cx: &RecordContext<'_>) -> Self {
        let q = tx.question.as_ref();
        Self {
            kind: "dns",
            id: dns_id(tx, cx.agent),
            agent: cx.agent.to_owned(),
            interface: (cx.interface_name)(tx.ifindex),
            time: rfc3339(cx.clock.wall(tx.time_ns)),
            client: tx.client.to_string(),
            client_port: tx.client_port,
            server: tx.server.to_string(),
            server_port: tx.server_port,
            transport: if tx.tcp { "tcp" } else { "udp" },
            msg_id: tx.msg_id,
            q_name: q.map(|q| q.name.clone()),
            q_type: q.map(|q| type_name(q.qtype)),
            q_class: q.map(|q| class_name(q.qclass)),
            rcode: tx.rcode.map(rcode_name),
            answers: tx.answers.clone(),
            latency: tx.latency_ns.map(|ns| ns as f64 / 1e9),
            status: tx.status.as_str(),
            role: tx.role.as_str(),
        }
    }
}

/// An HTTP request or response (`type: "http"`, packetlog httplog fields).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HttpRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub agent: String,
    pub interface: String,
    pub time: String,
    pub client: String,
    pub client_port: u16,
    pub server: String,
    pub server_port: u16,
    pub role: &'static str,
    /// `request` or `response`.
    #[serde(rename = "kind")]
    pub message: &'static str,
    /// Requests: theirs; responses: the matched request's.
    pub method: Option<String>,
    pub target: Option<String>,
    pub version: Option<String>,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub status_code: Option<u16>,
    pub reason: Option<String>,
    pub content_length: Option<u64>,
    pub content_type: Option<String>,
    /// Seconds since the matched request (responses).
    pub latency: Option<f64>,
    /// Fields cut short by the segment's end, the capture cap or the length limits.
    pub truncated: Vec<&'static str>,
}

/// HTTP record id: hash of the endpoints, time, kind and agent.
pub fn http_id(m: &HttpMsg, agent: &str) -> String {
    let mut h = Sha256::new();
    hash_endpoints(&mut h, m.client, m.client_port, m.server, m.server_port);
    h.update(m.time_ns.to_be_bytes());
    h.update([u8::from(matches!(m.message, Message::Response(_)))]);
    // Pipelined messages share a packet time: the request line tells them apart.
    if let Message::Request(r) = &m.message {
        h.update(r.method.as_bytes());
        h.update(r.target.as_deref().unwrap_or_default().as_bytes());
    }
    hash_agent(&mut h, agent);
    hex16(&h.finalize())
}

impl HttpRecord {
    pub fn new(m: &HttpMsg, cx: &RecordContext<'_>) -> Self {
        let mut r = Self {
            kind: "http",
            id: http_id(m, cx.agent),
            agent: cx.agent.to_owned(),
            interface: (cx.interface_name)(m.ifindex),
            time: rfc3339(cx.clock.wall(m.time_ns)),
            client: m.client.to_string(),
            client_port: m.client_port,
            server: m.server.to_string(),
            server_port: m.server_port,
            role: m.role.as_str(),
            message: "request",
            method: None,
            target: None,
            version: None,
            host: None,
            user_agent: None,
            status_code: None,
            reason: None,
            content_length: None,
            content_type: None,
            latency: m.latency_ns.map(|ns| ns as f64 / 1e9),
            truncated: Vec::new(),
        };
        match &m.message {
            Message::Request(q) => {
                r.method = Some(q.method.clone());
                r.target.clone_from(&q.target);
                r.version.clone_from(&q.version);
                r.host.clone_from(&q.host);
                r.user_agent.clone_from(&q.user_agent);
                r.truncated.clone_from(&q.truncated);
            }
            Message::Response(s) => {
                r.message = "response";
                if let Some((method, target)) = &m.request {
                    r.method = Some(method.clone());
                    r.target.clone_from(target);
                }
                r.version = Some(s.version.clone());
                r.status_code = Some(s.status_code);
                r.reason.clone_from(&s.reason);
                r.content_length = s.content_length;
                r.content_type.clone_from(&s.content_type);
                r.truncated.clone_from(&s.truncated);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_rfc3339_with_microseconds() {
        assert_eq!(
            rfc3339(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn ipv4_keys_print_as_ipv4_and_ipv6_keys_as_ipv6() {
        let mut k = FlowKey::default();
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1];
        assert_eq!(addr(&k, mapped).to_string(), "10.0.0.1");
        k.flags |= KEY_F_IPV6;
        assert_eq!(addr(&k, mapped).to_string(), "::ffff:10.0.0.1");
    }

    #[test]
    fn record_ids_differ_by_seq_agent_and_start_and_repeat_otherwise() {
        let k = FlowKey {
            proto: 6,
            ..Default::default()
        };
        let a = record_id(&k, 1, "node-a", 0);
        assert_eq!(a.len(), 32);
        assert_eq!(a, record_id(&k, 1, "node-a", 0));
        assert_ne!(a, record_id(&k, 1, "node-a", 1));
        assert_ne!(a, record_id(&k, 1, "node-b", 0));
        assert_ne!(a, record_id(&k, 2, "node-a", 0));
    }

    #[test]
    fn protocols_have_names_or_numbers() {
        assert_eq!(protocol_name(6), "tcp");
        assert_eq!(protocol_name(58), "icmpv6");
        assert_eq!(protocol_name(47), "47");
    }
}
