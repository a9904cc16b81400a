//! The flow map's key and value, the overflow map, the counter array and load-time settings.

/// Per-CPU hash: directional flow key -> [`FlowValue`]. Size set at load time.
pub const FLOWS_MAP: &str = "FLOWS";
/// Per-CPU hash: coarse [`OverflowKey`] -> [`OverflowValue`] for packets the full flow map refused.
pub const OVERFLOW_MAP: &str = "OVERFLOW";
/// Per-CPU array with one [`CounterBlock`]: `u64` counters indexed by the `C_*` constants.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Ring buffer of rate-limited [`Wakeup`] events asking the agent to evict early.
pub const WAKEUP_RING: &str = "WAKEUP";
/// Per-CPU array (one `u64`): when this CPU last wrote to the wake-up ring.
pub const WAKE_STATE_MAP: &str = "WAKE_STATE";

pub const DEFAULT_FLOW_MAP_ENTRIES: u32 = 65_536;
pub const OVERFLOW_MAP_ENTRIES: u32 = 1024;
pub const WAKEUP_RING_BYTES: u32 = 4096;

/// Load-time global (u8): 1 when the program runs over recorded packets (BPF_PROG_TEST_RUN):
/// the clock comes from the packet context (TC `skb->tstamp`, XDP metadata) and so does the
/// interface index (TC `cb[0]`, XDP metadata), instead of `bpf_ktime_get_ns()` and the device.
pub const GLOBAL_OFFLINE: &str = "DEVOURER_OFFLINE";
/// Load-time global (u64): least nanoseconds between two wake-ups from one CPU.
pub const GLOBAL_WAKE_INTERVAL_NS: &str = "DEVOURER_WAKE_INTERVAL_NS";
pub const DEFAULT_WAKE_INTERVAL_NS: u64 = 100_000_000;

/// Counter indexes in [`COUNTERS_MAP`].
pub const C_PACKETS: u32 = 0;
/// Frames that are not IPv4/IPv6 (ARP, LLDP, ...): seen, not part of any flow.
pub const C_NON_IP: u32 = 1;
/// IP frames whose headers are truncated or inconsistent: not part of any flow.
pub const C_MALFORMED: u32 = 2;
/// Packets the full flow map refused; they are aggregated in [`OVERFLOW_MAP`].
pub const C_MAP_FULL: u32 = 3;
/// Packets and bytes refused by the overflow map too (it is full): counted only here.
pub const C_OVERFLOW_FULL_PACKETS: u32 = 4;
pub const C_OVERFLOW_FULL_BYTES: u32 = 5;
/// Inserts that lost the race to another CPU (EEXIST) and were retried as updates.
pub const C_INSERT_RACE: u32 = 6;
/// Wake-ups sent to the agent, and those the ring had no room for.
pub const C_WAKEUPS: u32 = 7;
pub const C_WAKEUP_FAILED: u32 = 8;
/// DNS payload events sent, refused by a full ring, and sent cut at the cap.
pub const C_DNS_EVENTS: u32 = 9;
pub const C_DNS_RING_FULL: u32 = 10;
pub const C_DNS_CUT: u32 = 11;
/// HTTP payload events sent, refused by a full ring, and sent cut at the cap.
pub const C_HTTP_EVENTS: u32 = 12;
pub const C_HTTP_RING_FULL: u32 = 13;
pub const C_HTTP_CUT: u32 = 14;
pub const COUNTERS_LEN: u32 = 15;

/// The counters of one CPU (one lookup per packet, then plain increments).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterBlock {
    pub c: [u64; COUNTERS_LEN as usize],
}

/// `FlowKey::flags`: the frame carried a VLAN tag (`vlan` is its id; 0 is a priority tag).
pub const KEY_F_VLAN: u8 = 1;
/// `FlowKey::flags`: an IPv6 packet (IPv4 addresses are stored v4-mapped; this tells them apart).
pub const KEY_F_IPV6: u8 = 2;

/// `FlowValue::flags`: a TCP SYN without ACK was sent in this direction (the initiator).
pub const VAL_F_SYN: u8 = 1;
/// `FlowValue::flags`: `icmp_type`/`icmp_code` hold the first ICMP packet's type and code.
pub const VAL_F_ICMP: u8 = 2;

/// One direction of a flow. IPv4 addresses are stored v4-mapped (`::ffff:a.b.c.d`).
/// Ports are in host byte order, 0 for protocols without ports and non-first fragments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub ifindex: u32,
    pub vlan: u16,
    pub proto: u8,
    pub flags: u8,
}

/// What one CPU counted for one direction since the entry was created.
/// `first_ns == 0` means this CPU saw no packet of the flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub first_ns: u64,
    pub last_ns: u64,
    /// IP-layer bytes from the IP header length fields.
    pub bytes: u64,
    /// Packets (a GSO super-packet counts its segments).
    pub packets: u64,
    /// OR of the TCP flags seen (FIN=0x01 ... CWR=0x80).
    pub tcp_flags: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub flags: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OverflowKey {
    pub ifindex: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverflowValue {
    pub bytes: u64,
    pub packets: u64,
}

/// Written to [`WAKEUP_RING`]; its arrival is the message, the field helps debugging.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Wakeup {
    pub ts_ns: u64,
}

/// Metadata put in front of each frame for XDP BPF_PROG_TEST_RUN (offline mode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XdpReplayMeta {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub _pad: u32,
}

impl XdpReplayMeta {
    /// The bytes the program reads at `data_meta` (native byte order, as the kernel's).
    pub fn to_ne_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.ts_ns.to_ne_bytes());
        b[8..12].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[12..].copy_from_slice(&self._pad.to_ne_bytes());
        b
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are repr(C), Copy, made of integers, with explicit padding.
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for OverflowKey {}
    unsafe impl aya::Pod for OverflowValue {}
    unsafe impl aya::Pod for CounterBlock {}
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 44);
const _: () = assert!(core::mem::size_of::<FlowValue>() == 40);
const _: () = assert!(core::mem::size_of::<OverflowKey>() == 8);
const _: () = assert!(core::mem::size_of::<XdpReplayMeta>() == 16);
