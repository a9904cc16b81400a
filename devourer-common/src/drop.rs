//! Packets the kernel dropped, with its reason: what the drop program (a raw tracepoint on
//! `kfree_skb`, 5.17 and newer) leaves in its maps for the agent, and the load-time globals
//! that tell it where `sk_buff`'s fields are (read from the running kernel's BTF: Rust eBPF has
//! no CO-RE relocations).

use crate::flow::FlowKey;

/// The raw tracepoint program.
pub const PROG_KFREE_SKB: &str = "devourer_kfree_skb";
/// Per-CPU hash map [`DropKey`] -> [`DropValue`]: drops by flow tuple and reason, taken out
/// by the agent each scan.
pub const DROPS_MAP: &str = "DROPS";
/// Entries of [`DROPS_MAP`]; past them a drop is counted by reason only (and in
/// `drops_map_full`).
pub const DROPS_MAP_ENTRIES: u32 = 4096;
/// Per-CPU hash map reason (u32) -> [`DropValue`]: every drop by reason, never emptied.
pub const DROP_REASONS_MAP: &str = "DROP_REASONS";
/// Entries of [`DROP_REASONS_MAP`] (the kernel has about 130 reasons).
pub const DROP_REASONS_ENTRIES: u32 = 1024;
/// Load-time global ([`SkbOffsets`]): where the program reads `sk_buff`'s fields; `len` 0
/// leaves the program doing nothing.
pub const GLOBAL_SKB_OFFSETS: &str = "DEVOURER_SKB_OFFSETS";

/// Byte offsets of the `sk_buff` fields the drop program reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkbOffsets {
    /// `unsigned int len`.
    pub len: u32,
    /// `unsigned char *head`.
    pub head: u32,
    /// `unsigned char *data`.
    pub data: u32,
    /// `__u16 network_header` (from `head`; `0xffff` when not set).
    pub network_header: u32,
    /// `__be16 protocol`.
    pub protocol: u32,
    pub _pad: u32,
}

impl SkbOffsets {
    pub const ZERO: Self = Self {
        len: 0,
        head: 0,
        data: 0,
        network_header: 0,
        protocol: 0,
        _pad: 0,
    };
}

/// A dropped packet's flow tuple (as the counting program keys it, interface 0) and reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DropKey {
    pub key: FlowKey,
    pub reason: u32,
}

/// Dropped packets and their bytes (`sk_buff.len` when freed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropValue {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: repr(C), Copy, made of integers, with explicit padding.
    unsafe impl aya::Pod for SkbOffsets {}
    unsafe impl aya::Pod for DropKey {}
    unsafe impl aya::Pod for DropValue {}
}

const _: () = assert!(core::mem::size_of::<DropKey>() == 48);
