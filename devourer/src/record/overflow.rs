//! Overflow records (`type: "overflow"`): packets and bytes the full flow map could not hold,
//! per interface and protocol, for one scan. With the flow records they account for every
//! packet the program saw.

use std::sync::Arc;

use devourer_common::flow::{OverflowKey, OverflowValue};
use sha2::{Digest, Sha256};

use super::{
    RecordContext,
    fields::{Fields, Record},
    id::hex16,
};
use crate::base::{
    net::protocol_name,
    time::{Timestamp, rfc3339},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverflowRecord {
    pub kind: &'static str,
    pub id: super::id::RecordId,
    pub agent: Arc<str>,
    pub interface: Arc<str>,
    pub protocol: std::borrow::Cow<'static, str>,
    /// When the scan that read them ran (program clock mapped to wall time).
    pub time: Timestamp,
    pub packets: u64,
    pub bytes: u64,
}

impl Record for OverflowRecord {
    fn fields<F: Fields>(&self, o: &mut F) {
        o.str("type", self.kind);
        o.str("id", &self.id);
        o.str("agent", &self.agent);
        o.str("interface", &self.interface);
        o.str("protocol", &self.protocol);
        o.time("time", &self.time);
        o.uint("packets", self.packets);
        o.uint("bytes", self.bytes);
    }
}

impl OverflowRecord {
    /// A record of nothing: what the columns of every overflow record are read from.
    pub fn sample() -> Self {
        Self {
            kind: "overflow",
            id: Default::default(),
            agent: "".into(),
            interface: "".into(),
            protocol: "udp".into(),
            time: Default::default(),
            packets: 0,
            bytes: 0,
        }
    }

    /// The record of what `k` aggregated until the scan at `now_ns` (program clock).
    pub fn new(k: &OverflowKey, v: &OverflowValue, now_ns: u64, cx: &RecordContext<'_>) -> Self {
        let mut h = Sha256::new();
        h.update(b"overflow");
        h.update(k.ifindex.to_be_bytes());
        h.update([k.proto]);
        h.update(now_ns.to_be_bytes());
        h.update((cx.agent.len() as u32).to_be_bytes());
        h.update(cx.agent.as_bytes());
        Self {
            kind: "overflow",
            id: hex16(&h.finalize()),
            agent: cx.agent.clone(),
            interface: (cx.interface_name)(k.ifindex),
            protocol: protocol_name(k.proto),
            time: rfc3339(cx.clock.wall(now_ns)),
            packets: v.packets,
            bytes: v.bytes,
        }
    }
}
