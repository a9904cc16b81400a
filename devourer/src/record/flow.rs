//! Flow records (`type: "flow"`): one per finished flow or active-timeout continuation,
//! oriented so that `src_*` is the initiator.

use std::borrow::Cow;

use devourer_common::flow::{HOOK_EGRESS, KEY_F_VLAN};
use serde::Serialize;

use super::{
    RecordContext,
    community::{Ports, community_id},
    id::record_id,
    k8s::K8sFields,
};
use crate::{
    base::{
        net::{key_addr, protocol_name},
        time::rfc3339,
    },
    flow::{Emitted, Status},
    kernel::conntrack::has_ports,
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
    /// Every interface that saw the flow and in which direction (packets entering it:
    /// `ingress`, leaving it: `egress`); the ones that counted it first.
    pub interfaces: Vec<Observed>,
    /// Community ID v1 of the conversation (its endpoints before any NAT).
    pub community_id: String,
    /// One packet in this many was counted (`--sampling`; 1: all): scale counts by it.
    pub sampling: u32,
    /// A NAT'd connection's translated source and destination (null where not translated;
    /// ports null for protocols without ports): `src_*`/`dst_*` are before translation.
    pub xlat_src_addr: Option<String>,
    pub xlat_src_port: Option<u16>,
    pub xlat_dst_addr: Option<String>,
    pub xlat_dst_port: Option<u16>,
    /// `src_k8s_*`/`dst_k8s_*`: the Kubernetes objects of both ends.
    #[serde(flatten)]
    pub k8s: K8sFields,
}

/// One interface a flow crossed, and which way.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Observed {
    pub interface: String,
    pub direction: &'static str,
}

impl Observed {
    fn new(hook: u32, cx: &RecordContext<'_>) -> Self {
        Self {
            interface: (cx.interface_name)(hook >> 1),
            direction: if hook & HOOK_EGRESS != 0 {
                "egress"
            } else {
                "ingress"
            },
        }
    }
}

impl FlowRecord {
    pub fn new(e: &Emitted, cx: &RecordContext<'_>) -> Self {
        let k = &e.key;
        let icmp = e.icmp();
        Self {
            kind: "flow",
            // A start record's id differs from its flow's first record's (BigQuery would
            // drop one of two rows with the same insertId).
            id: record_id(
                k,
                e.flow_start_ns,
                cx.agent,
                if e.status == Status::Start {
                    u32::MAX
                } else {
                    e.seq
                },
            ),
            seq: e.seq,
            agent: cx.agent.to_owned(),
            interface: (cx.interface_name)(e.interface),
            protocol: protocol_name(k.proto),
            src_addr: key_addr(k, k.src_addr).to_string(),
            dst_addr: key_addr(k, k.dst_addr).to_string(),
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
            interfaces: e.hooks.iter().map(|h| Observed::new(*h, cx)).collect(),
            sampling: cx.sampling,
            community_id: community_id(
                cx.community_seed,
                key_addr(k, k.src_addr),
                key_addr(k, k.dst_addr),
                k.proto,
                Ports::of(k.proto, (k.src_port, k.dst_port), icmp),
            ),
            xlat_src_addr: e.xlat_src.map(|(a, _)| key_addr(k, a).to_string()),
            xlat_src_port: e
                .xlat_src
                .and_then(|(_, p)| has_ports(k.proto).then_some(p)),
            xlat_dst_addr: e.xlat_dst.map(|(a, _)| key_addr(k, a).to_string()),
            xlat_dst_port: e
                .xlat_dst
                .and_then(|(_, p)| has_ports(k.proto).then_some(p)),
            k8s: K8sFields::flow(e.src_k8s.clone(), e.dst_k8s.clone()),
        }
    }
}
