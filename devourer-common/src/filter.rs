//! Record filter rules (`--filter`) and sampling (`--sampling`). The kernel program samples
//! packets before the flow map; the agent evaluates the rules on each record, once per
//! conversation on the tuple its client sent (after the NAT join): the first rule that matches
//! keeps or drops it, no match keeps it. What each rule matched is counted: a filter decides
//! what is recorded, never what the host receives.

use crate::flow::{FlowKey, KEY_F_IPV6};

/// Rules at most.
pub const MAX_FILTER_RULES: usize = 16;
/// Load-time global (u32): count one packet in N (0 and 1: every packet).
pub const GLOBAL_SAMPLING: &str = "DEVOURER_SAMPLING";
/// Load-time global (u64): the key of the hash that decides which packets sampling counts (a
/// secret per agent, so that no sender can craft packets it never counts; fixed offline, so
/// that replays repeat).
pub const GLOBAL_SAMPLING_SEED: &str = "DEVOURER_SAMPLING_SEED";
/// The offline replay's [`GLOBAL_SAMPLING_SEED`].
pub const OFFLINE_SAMPLING_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// [`FilterRule::action`]: record the packet.
pub const RULE_KEEP: u8 = 1;
/// [`FilterRule::action`]: do not record it.
pub const RULE_DROP: u8 = 2;

/// One rule. Addresses compare as four native-endian words of the 16-byte key address (IPv4
/// v4-mapped), `net` already masked.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterRule {
    pub net: [u32; 4],
    pub mask: [u32; 4],
    pub port_lo: u16,
    pub port_hi: u16,
    /// [`RULE_KEEP`] or [`RULE_DROP`].
    pub action: u8,
    /// IP protocol, 0 for any.
    pub proto: u8,
    /// 4 or 6 when the rule has a `net` condition (of that family), else 0.
    pub family: u8,
    /// 1 when the rule has a `port` condition.
    pub has_port: u8,
}

/// Packets and bytes each rule matched (kept or dropped), by rule index.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterCounts {
    pub packets: [u64; MAX_FILTER_RULES],
    pub bytes: [u64; MAX_FILTER_RULES],
}

impl Default for FilterCounts {
    fn default() -> Self {
        Self {
            packets: [0; MAX_FILTER_RULES],
            bytes: [0; MAX_FILTER_RULES],
        }
    }
}

#[inline(always)]
fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]])
}

impl FilterRule {
    #[inline(always)]
    fn in_net(&self, a: &[u8; 16]) -> bool {
        word(a, 0) & self.mask[0] == self.net[0]
            && word(a, 1) & self.mask[1] == self.net[1]
            && word(a, 2) & self.mask[2] == self.net[2]
            && word(a, 3) & self.mask[3] == self.net[3]
    }

    /// Whether every condition of the rule holds for a packet with this key: protocol, either
    /// address in the network, either port in the range.
    #[inline(always)]
    pub fn matches(&self, key: &FlowKey) -> bool {
        if self.proto != 0 && key.proto != self.proto {
            return false;
        }
        if self.family != 0 {
            let v6 = key.flags & KEY_F_IPV6 != 0;
            if v6 != (self.family == 6) {
                return false;
            }
            if !self.in_net(&key.src_addr) && !self.in_net(&key.dst_addr) {
                return false;
            }
        }
        if self.has_port != 0 {
            // Ports only where the protocol has them (TCP, UDP, UDP-Lite, SCTP, DCCP): an
            // ICMP packet's zero ports match no port rule.
            if !matches!(key.proto, 6 | 17 | 33 | 132 | 136) {
                return false;
            }
            let (lo, hi) = (self.port_lo, self.port_hi);
            let s = key.src_port >= lo && key.src_port <= hi;
            let d = key.dst_port >= lo && key.dst_port <= hi;
            if !s && !d {
                return false;
            }
        }
        true
    }
}
