//! TCP health the kernel reports beside the counts: retransmitted segments, from a raw
//! tracepoint on `tcp_retransmit_skb` keyed by the socket's tuple, and the socket's smoothed
//! RTT, sampled by the counting program (the handshake's times live in the flow value). The
//! socket and `sk_buff` offsets the retransmit program reads come from the running kernel's
//! BTF (no CO-RE in Rust eBPF).

use crate::flow::FlowKey;

/// The raw tracepoint programs: retransmitted segments of a socket, and SYN-ACKs of a
/// connection not yet accepted.
pub const PROG_TCP_RETRANSMIT: &str = "devourer_tcp_retransmit";
pub const PROG_TCP_RETRANSMIT_SYNACK: &str = "devourer_tcp_retransmit_synack";
/// Hash map [`FlowKey`] (local endpoint as source, interface 0) -> retransmitted segments
/// (`u64`, added atomically): taken out by the agent each scan.
pub const RETRANSMITS_MAP: &str = "RETRANSMITS";
/// Entries of [`RETRANSMITS_MAP`]; past them a retransmission is only counted
/// (`retransmits_map_full`).
pub const RETRANSMITS_ENTRIES: u32 = 4096;
/// Load-time global ([`SockOffsets`]): where the retransmit program reads the socket's tuple
/// and the segment count; `family` 0 leaves it doing nothing.
pub const GLOBAL_SOCK_OFFSETS: &str = "DEVOURER_SOCK_OFFSETS";

/// Hash map ifindex (`u32`) -> the network namespace id (`u32`) of the peer of a veth (or
/// netkit) device whose other end is in another namespace, as that device's namespace numbers
/// it: where the counting program looks up the socket of a flow counted on it (a pod's).
/// Interfaces not in it look in their own namespace.
pub const PEER_NETNS_MAP: &str = "PEER_NETNS";
/// Entries of [`PEER_NETNS_MAP`]: interfaces past it sample no RTT from their peer's sockets.
pub const PEER_NETNS_ENTRIES: u32 = 4096;
/// Load-time global (u32): the counting program samples a TCP flow direction's smoothed RTT
/// at its first packet past each multiple of `1 << shift` ns (and at the first ACK of its
/// handshake); 0: never (offline replay, XDP has no socket lookup).
pub const GLOBAL_SRTT_SHIFT: &str = "DEVOURER_SRTT_SHIFT";

/// Byte offsets the retransmit program reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sock_common.skc_family` (u16).
    pub family: u32,
    /// `skc_daddr` (be32): the remote IPv4 address.
    pub daddr: u32,
    /// `skc_rcv_saddr` (be32): the local one.
    pub rcv_saddr: u32,
    /// `skc_dport` (be16): the remote port.
    pub dport: u32,
    /// `skc_num` (u16, host order): the local port.
    pub num: u32,
    /// `skc_v6_daddr` and `skc_v6_rcv_saddr` (16 bytes each; 0 without IPv6).
    pub v6_daddr: u32,
    pub v6_rcv_saddr: u32,
    /// `sk_buff.cb` plus `tcp_skb_cb.tcp_gso_segs` (u16): the segments the skb stands for.
    pub gso_segs: u32,
    /// 1 where `tcp_retransmit_skb` has a third argument, the transmission's error (6.17):
    /// it then fires for failed attempts too, which the program leaves out (as older kernels
    /// do, firing only for a retransmission handed on).
    pub err_arg: u32,
}

impl SockOffsets {
    pub const ZERO: Self = Self {
        family: 0,
        daddr: 0,
        rcv_saddr: 0,
        dport: 0,
        num: 0,
        v6_daddr: 0,
        v6_rcv_saddr: 0,
        gso_segs: 0,
        err_arg: 0,
    };
}

/// A retransmitting socket's tuple, as the counting program keys its packets (local side as
/// source, IPv4 v4-mapped, interface 0).
pub type RetransmitKey = FlowKey;

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: repr(C), Copy, made of integers.
    unsafe impl aya::Pod for SockOffsets {}
}

const _: () = assert!(core::mem::size_of::<SockOffsets>() == 36);
