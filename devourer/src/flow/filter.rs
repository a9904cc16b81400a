//! `--filter` rules, decided once per conversation on the tuple its client sent: after the
//! table joined a NAT'd connection's views, on its record's key (the endpoints before
//! translation), so a dropped conversation leaves no record on any interface, and what each
//! rule matched is counted once, from the records it decided (the kernel counts every packet
//! once per node; a packet crossing three interfaces is one packet here too).

use std::net::IpAddr;

use devourer_common::{
    filter::{FilterCounts, FilterRule, MAX_FILTER_RULES, RULE_DROP},
    flow::{FlowKey, KEY_F_IPV6},
};

use super::Emitted;

/// The rules in order (at most [`MAX_FILTER_RULES`]) and what they matched.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    rules: Vec<FilterRule>,
    counts: FilterCounts,
    /// Packets in the records the rules dropped.
    filtered: u64,
}

/// The 16-byte form flow keys store an address in (IPv4 v4-mapped) and whether it is IPv6.
fn key_bytes(a: IpAddr) -> ([u8; 16], bool) {
    match a {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), false),
        IpAddr::V6(v6) => (v6.octets(), true),
    }
}

impl Filters {
    /// `rules` in order; those past [`MAX_FILTER_RULES`] are ignored (configuration refuses
    /// them first).
    pub fn new(mut rules: Vec<FilterRule>) -> Self {
        rules.truncate(MAX_FILTER_RULES);
        Self {
            rules,
            ..Self::default()
        }
    }

    /// The first rule matching `key`, by index.
    fn first_match(&self, key: &FlowKey) -> Option<(usize, &FilterRule)> {
        self.rules.iter().enumerate().find(|(_, r)| r.matches(key))
    }

    /// Decides a flow record: counts its packets and bytes under the first rule that matches
    /// its key, and in `filtered` when that rule drops it; true when it is dropped.
    pub fn drops_flow(&mut self, e: &Emitted) -> bool {
        let Some((i, rule)) = self.first_match(&e.key) else {
            return false;
        };
        let drop = rule.action == RULE_DROP;
        let packets = e.src.packets + e.dst.packets;
        self.counts.packets[i] += packets;
        self.counts.bytes[i] += e.src.bytes + e.dst.bytes;
        if drop {
            self.filtered += packets;
        }
        drop
    }

    /// Whether the rules drop a DNS or HTTP exchange between `client` and `server` (as the
    /// client sent it). Not counted: its packets are in a flow record, decided alike.
    pub fn drops_exchange(
        &self,
        proto: u8,
        (client, client_port): (IpAddr, u16),
        (server, server_port): (IpAddr, u16),
    ) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        let ((src_addr, v6), (dst_addr, _)) = (key_bytes(client), key_bytes(server));
        let key = FlowKey {
            src_addr,
            dst_addr,
            src_port: client_port,
            dst_port: server_port,
            proto,
            flags: if v6 { KEY_F_IPV6 } else { 0 },
            ..FlowKey::default()
        };
        self.drops(&key)
    }

    /// Whether the first rule that matches `key` drops it (nothing counted).
    fn drops(&self, key: &FlowKey) -> bool {
        self.first_match(key)
            .is_some_and(|(_, r)| r.action == RULE_DROP)
    }

    /// Packets and bytes each rule matched so far.
    pub fn counts(&self) -> &FilterCounts {
        &self.counts
    }

    /// Packets of the flow records dropped so far.
    pub fn filtered(&self) -> u64 {
        self.filtered
    }
}
