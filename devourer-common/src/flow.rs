//! The flow map's key and value, the overflow map, the counter array and load-time settings.

/// Hash: directional flow key -> [`FlowValue`], one value for all CPUs (counts added
/// atomically), so its memory does not grow with the CPU count. Size set at load time.
pub const FLOWS_MAP: &str = "FLOWS";
/// Per-CPU hash: coarse [`OverflowKey`] -> [`OverflowValue`] for packets the full flow map refused.
pub const OVERFLOW_MAP: &str = "OVERFLOW";
/// Offline replay's second flow map and overflow map: frames alternate between the two sets
/// at each scan boundary ([`CB_MAP`], [`XdpReplayMeta::map`]), so the set of the interval
/// before is read (and emptied) while this interval's frames go to the other. One entry each
/// in the live agent.
pub const FLOWS_B_MAP: &str = "FLOWS_B";
pub const OVERFLOW_B_MAP: &str = "OVERFLOW_B";
/// Map sets offline replay alternates between.
pub const REPLAY_SETS: u32 = 2;
/// LRU hash: flow key -> the hook that counts it and when it last did, across the entries of
/// the key (a flow map's size; one entry when unused: see [`GLOBAL_HOOK_MEMORY`]).
pub const HOOKS_MAP: &str = "HOOKS";
/// Array of one `u32`: the map set live counting writes to, where it alternates sets.
pub const SET_MAP: &str = "SET";
/// Load-time global (u8): 1 when live counting alternates between the two map sets as offline
/// replay does, the agent flipping [`SET_MAP`] at each scan and draining the idle set after an
/// RCU grace period: on kernels without an atomic lookup-and-delete of hash entries (before
/// 5.14), where an entry cannot be taken out of a map a packet may be updating.
pub const GLOBAL_ALTERNATE: &str = "DEVOURER_ALTERNATE";
/// Load-time global (u8): 1 when the kernel has `bpf_xdp_load_bytes` (5.18); else XDP copies
/// payloads from the frame's linear part.
pub const GLOBAL_XDP_LOAD_BYTES: &str = "DEVOURER_XDP_LOAD_BYTES";
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
/// Load-time global (u64): how long after a flow direction's last counted packet its counting
/// hook still holds for a new entry of it (one the agent took out, or offline and before 5.14
/// one in the other map set): offline the agent's `evict_after` (as long as one map would have
/// kept its entry), live a couple of seconds (a packet between two hooks when its entry went).
pub const GLOBAL_HOOK_HORIZON_NS: &str = "DEVOURER_HOOK_HORIZON_NS";
/// Load-time global (u32): the counting hook refreshes its memory of a flow direction at its
/// first packet past each multiple of `1 << shift` ns (at most half the horizon apart).
pub const GLOBAL_HOOK_REFRESH_SHIFT: &str = "DEVOURER_HOOK_REFRESH_SHIFT";
/// Load-time global (u8): 1 to remember each flow direction's counting hook in [`HOOKS_MAP`]
/// across its entries' lives; 0 counting per interface, and offline for a capture of one
/// interface (classic pcap), where every packet meets the same hook.
pub const GLOBAL_HOOK_MEMORY: &str = "DEVOURER_HOOK_MEMORY";
pub const DEFAULT_HOOK_HORIZON_NS: u64 = 10_000_000_000;
/// Load-time global (u8): 1 to count a packet on every attached interface it crosses, each
/// interface its own flow (`--count-per-interface`); 0 (the default) to count it once per node,
/// on the first interface that saw its flow (the key then has no interface).
pub const GLOBAL_PER_INTERFACE: &str = "DEVOURER_PER_INTERFACE";

/// Where a packet was seen: `ifindex << 1 | HOOK_EGRESS` (ingress: the bit clear).
pub const HOOK_EGRESS: u32 = 1;

/// Encodes an interface and a hook direction as [`FlowValue::counted_on`] stores them.
#[inline(always)]
pub const fn hook(ifindex: u32, egress: bool) -> u32 {
    ifindex << 1 | egress as u32
}

/// Other interfaces a flow direction was seen on, at most ([`FlowValue::seen_on`]).
pub const SEEN_SLOTS: usize = 4;

/// The kernel counters, one table for the program (which increments them by index), the
/// metrics (`devourer_kernel_events_total{event=METRIC}`) and the shutdown summary (NAME=count).
/// Each line: index constant, index, summary name, metric label, what it counts.
macro_rules! counters {
    ($($konst:ident = $idx:literal, $name:literal, $metric:literal, $help:literal;)*) => {
        $(#[doc = $help] pub const $konst: u32 = $idx;)*
        /// Every counter, in index order.
        pub const COUNTERS: [Counter; COUNTERS_LEN as usize] = [
            $(Counter { index: $konst, name: $name, metric: $metric, help: $help },)*
        ];
    };
}

/// One kernel counter of [`COUNTERS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    /// Its slot in [`CounterBlock::c`].
    pub index: u32,
    /// The key it is logged under in the agent's summary.
    pub name: &'static str,
    /// The `event` label of `devourer_kernel_events_total`.
    pub metric: &'static str,
    pub help: &'static str,
}

counters! {
    C_PACKETS = 0, "packets", "packets", "Packets the program saw.";
    C_NON_IP = 1, "non_ip", "non_ip", "Frames that are not IPv4/IPv6 (ARP, LLDP, ...): seen, in no flow.";
    C_MALFORMED = 2, "malformed", "malformed", "IP frames with truncated or inconsistent headers: in no flow.";
    C_MAP_FULL = 3, "map_full", "map_full", "Packets the full flow map refused; aggregated in the overflow map.";
    C_OVERFLOW_FULL_PACKETS = 4, "overflow_full_packets", "overflow_full", "Packets the overflow map refused too (full): counted only here.";
    C_OVERFLOW_FULL_BYTES = 5, "overflow_full_bytes", "overflow_full_bytes", "Bytes of the packets the overflow map refused.";
    C_INSERT_RACE = 6, "insert_race", "insert_race", "Inserts that lost the race to another CPU and were retried as updates.";
    C_WAKEUPS = 7, "wakeups", "wakeups", "Map-full wake-ups sent to the agent.";
    C_WAKEUP_FAILED = 8, "wakeup_failed", "wakeup_failed", "Wake-ups the wake-up ring had no room for.";
    C_DNS_EVENTS = 9, "dns_events", "dns_events", "DNS payload events sent to the DNS ring.";
    C_DNS_RING_FULL = 10, "dns_ring_full", "dns_ring_drops", "DNS payload events refused by a full DNS ring.";
    C_DNS_CUT = 11, "dns_cut", "dns_cut", "DNS payload events cut at the DNS cap.";
    C_HTTP_EVENTS = 12, "http_events", "http_events", "HTTP payload events sent to the HTTP ring.";
    C_HTTP_RING_FULL = 13, "http_ring_full", "http_ring_drops", "HTTP payload events refused by a full HTTP ring.";
    C_HTTP_CUT = 14, "http_cut", "http_cut", "HTTP payload events cut at the HTTP cap.";
    C_REPEATS = 15, "repeats", "repeats", "Packets seen again on another attached interface: counted once, where their flow was first seen.";
    C_SEEN_FULL = 16, "seen_full", "seen_full", "Sightings on another interface not listed: the flow's interface list was full.";
    C_FILTERED = 17, "filtered", "filtered", "Packets of the conversations a --filter rule dropped (the agent decides, on the client's tuple before NAT, and fills this in): in no flow, DNS or HTTP record.";
    C_SAMPLED_OUT = 18, "sampled_out", "sampled_out", "Packets --sampling left uncounted (their flows' times and flags still noted).";
    C_DROPS = 19, "drops", "drops", "Packets the kernel dropped with a reason (kfree_skb, 5.17 and newer), on any interface or none.";
    C_DROPS_UNKEYED = 20, "drops_unkeyed", "drops_unkeyed", "Dropped packets without an IP flow tuple to attribute (not IP, headers not set or unreadable): counted by reason only.";
    C_DROPS_MAP_FULL = 21, "drops_map_full", "drops_map_full", "Dropped packets the full drop map refused: counted by reason only.";
    C_DROP_REASONS_FULL = 22, "drop_reasons_full", "drop_reasons_full", "Dropped packets whose reason the full per-reason map refused: counted only here.";
    C_RETRANSMITS = 23, "tcp_retransmits", "tcp_retransmits", "TCP segments the kernel retransmitted (tcp_retransmit_skb), on any socket.";
    C_RETRANSMITS_MAP_FULL = 24, "retransmits_map_full", "retransmits_map_full", "Retransmitted segments the full retransmit map refused: counted only here.";
    C_SRTT_LOOKUPS = 25, "srtt_lookups", "srtt_lookups", "Socket lookups for a TCP flow's smoothed RTT (at most one per flow direction per sampling period).";
    C_SRTT_MISSES = 26, "srtt_misses", "srtt_misses", "Socket lookups that found no socket with an RTT (not local, not in the peer's namespace, or not established).";
    C_TLS_EVENTS = 27, "tls_events", "tls_events", "TLS handshake payload events sent to the TLS ring.";
    C_TLS_RING_FULL = 28, "tls_ring_full", "tls_ring_drops", "TLS handshake payload events refused by a full TLS ring.";
    C_TLS_CUT = 29, "tls_cut", "tls_cut", "ClientHellos longer than the 16 KiB of stream a flow direction forwards: the rest is not sent.";
}
pub const COUNTERS_LEN: u32 = 30;

const _: () = {
    let mut i = 0;
    while i < COUNTERS.len() {
        assert!(
            COUNTERS[i].index as usize == i,
            "COUNTERS must be in index order"
        );
        i += 1;
    }
};

/// The counters of one CPU (one lookup per packet, then plain increments).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterBlock {
    pub c: [u64; COUNTERS_LEN as usize],
}

/// `FlowValue::vlan`: a tagged packet was seen (the low 12 bits are its id; 0 is a priority
/// tag).
pub const VLAN_SEEN: u16 = 0x8000;
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
    /// Zero. No VLAN in the key: a packet seen on a VLAN device and on its tagged parent is
    /// one flow (the tag goes to [`FlowValue::vlan`]), and XDP cannot see a tag the NIC took
    /// off.
    pub _pad: u16,
    pub proto: u8,
    pub flags: u8,
}

/// What was counted for one direction since the entry was created (all CPUs add to it).
/// `first_ns == 0` means no packet was counted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub first_ns: u64,
    pub last_ns: u64,
    /// IP-layer bytes from the IP header length fields.
    pub bytes: u64,
    /// Packets (a GSO super-packet counts its segments).
    pub packets: u64,
    /// The TCP flags (FIN=0x01 ... CWR=0x80, NS=0x100) and `VAL_F_*` seen, four bits each (a
    /// flag is set when its nibble is not zero; see [`marks`]), and the first ICMP type and
    /// code in bytes 6 and 7. CPUs set a flag by atomically adding 1 to its nibble when it
    /// reads zero: an atomic add works on every kernel and JIT (an atomic OR needs 5.12, and
    /// 5.18 on arm64), and two CPUs adding at once only make the nibble 2.
    pub marks: u64,
    /// The interface and hook ([`hook`]) that counts this direction: the first that saw it.
    pub counted_on: u32,
    /// The VLAN tag a hook saw last on this direction, or'd with [`VLAN_SEEN`] (0: none).
    pub vlan: u16,
    /// Where the ClientHello this direction forwards to the TLS ring ends: the low 16 bits of
    /// the sequence number after its last byte (at most [`crate::payload::TLS_STREAM_MAX`]
    /// past its first; 0: none, 1 for an end of 0). A segment that starts before it is
    /// forwarded, whatever the order segments come in.
    pub tls_end: u16,
    /// TCP handshake, at the counting hook: when this direction last sent a SYN (bare, or a
    /// SYN-ACK; 0: neither). In the first cache line with the counts: every TCP packet reads
    /// it.
    pub syn_ns: u64,
    /// When this direction first sent a TCP segment with ACK and without SYN (the one that
    /// completes a handshake it took part in; 0: none yet).
    pub ack_ns: u64,
    /// The other interfaces and hooks that saw it, not counted there (0: a free slot).
    pub seen_on: [u32; SEEN_SLOTS],
    /// The kernel's smoothed RTT of the socket behind this direction (`srtt_us >> 3`, in
    /// microseconds), sampled at the counting hook at most once per sampling period: the last
    /// sample (0: none). The agent reads it each scan.
    pub srtt_last_us: u32,
    /// Samples taken (the agent sees whether a new one came since its last read).
    pub srtt_samples: u32,
}

/// [`FlowValue::marks`]: eleven flags, each in a nibble of its own.
pub mod marks {
    /// TCP flags take nibbles 0..9, `VAL_F_*` the two after.
    pub const VAL_SHIFT: u32 = 9;
    /// The lowest bit of every flag's nibble.
    pub const LOW_BITS: u64 = 0x111_1111_1111;
    /// Where the first ICMP type and code live.
    pub const ICMP_TYPE_SHIFT: u32 = 48;
    pub const ICMP_CODE_SHIFT: u32 = 56;

    /// The flags in `bits` (TCP flags, then `VAL_F_*` from bit 9), one to a nibble: the word
    /// to add for them.
    #[inline(always)]
    pub const fn spread(bits: u16) -> u64 {
        let mut x = bits as u64 & 0x7ff;
        x = (x | x << 24) & 0x0000_00ff_0000_00ff;
        x = (x | x << 12) & 0x000f_000f_000f_000f;
        x = (x | x << 6) & 0x0303_0303_0303_0303;
        x = (x | x << 3) & 0x1111_1111_1111_1111;
        x
    }

    /// The lowest bit of every nibble of `word` that is not zero (which flags are set).
    #[inline(always)]
    pub const fn present(word: u64) -> u64 {
        (word | word >> 1 | word >> 2 | word >> 3) & LOW_BITS
    }

    /// The flags set in `word`, as bits (the reverse of [`spread`]).
    #[inline(always)]
    pub const fn gather(word: u64) -> u16 {
        let mut x = present(word);
        x = (x | x >> 3) & 0x0303_0303_0303_0303;
        x = (x | x >> 6) & 0x000f_000f_000f_000f;
        x = (x | x >> 12) & 0x0000_00ff_0000_00ff;
        x = (x | x >> 24) & 0xffff;
        x as u16 & 0x7ff
    }
}

impl FlowValue {
    /// The TCP flags seen.
    pub const fn tcp_flags(&self) -> u16 {
        marks::gather(self.marks) & 0x1ff
    }

    /// The `VAL_F_*` flags seen.
    pub const fn val_flags(&self) -> u8 {
        (marks::gather(self.marks) >> marks::VAL_SHIFT) as u8
    }

    pub const fn icmp_type(&self) -> u8 {
        (self.marks >> marks::ICMP_TYPE_SHIFT) as u8
    }

    pub const fn icmp_code(&self) -> u8 {
        (self.marks >> marks::ICMP_CODE_SHIFT) as u8
    }

    /// Sets flags (not atomically: for a value no one else writes).
    pub fn add_flags(&mut self, tcp_flags: u16, val_flags: u8) {
        let bits = tcp_flags | (val_flags as u16) << marks::VAL_SHIFT;
        self.marks |= marks::spread(bits) & !marks::present(self.marks);
    }

    /// Sets the first ICMP type and code.
    pub fn set_icmp(&mut self, icmp_type: u8, icmp_code: u8) {
        self.marks = (self.marks & !(0xffff << marks::ICMP_TYPE_SHIFT))
            | (icmp_type as u64) << marks::ICMP_TYPE_SHIFT
            | (icmp_code as u64) << marks::ICMP_CODE_SHIFT;
    }
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
    /// The frame's length on the wire (it may be replayed cut): what an IP length of 0 (a
    /// BIG TCP or jumbo super-packet) is counted from.
    pub wire_len: u32,
    /// Which map set counts the frame: 0 (`FLOWS`, `OVERFLOW`) or 1 (`*_B`).
    pub map: u32,
    pub _pad: u32,
}

/// Offline TC replay: `__sk_buff.cb[CB_IFINDEX]` carries the replayed interface,
/// `cb[CB_WIRE_LEN]` the frame's length on the wire (see [`XdpReplayMeta::wire_len`]) and
/// `cb[CB_MAP]` the map set that counts it (see [`XdpReplayMeta::map`]).
pub const CB_IFINDEX: usize = 0;
pub const CB_WIRE_LEN: usize = 1;
pub const CB_MAP: usize = 2;

impl XdpReplayMeta {
    /// The bytes the program reads at `data_meta` (native byte order, as the kernel's).
    pub fn to_ne_bytes(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.ts_ns.to_ne_bytes());
        b[8..12].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[12..16].copy_from_slice(&self.wire_len.to_ne_bytes());
        b[16..20].copy_from_slice(&self.map.to_ne_bytes());
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
const _: () = assert!(core::mem::size_of::<FlowValue>() == 88);
// What every counted packet touches stays in the first 64 bytes.
const _: () = assert!(core::mem::offset_of!(FlowValue, ack_ns) == 56);
const _: () = assert!(core::mem::offset_of!(FlowValue, marks) == 32);
const _: () = assert!(core::mem::size_of::<OverflowKey>() == 8);
const _: () = assert!(core::mem::size_of::<XdpReplayMeta>() == 24);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_spread_to_nibbles_and_back() {
        for bits in 0..0x800u16 {
            assert_eq!(marks::gather(marks::spread(bits)), bits, "{bits:#x}");
        }
        let mut v = FlowValue::default();
        v.add_flags(0x12, VAL_F_SYN);
        v.set_icmp(8, 3);
        assert_eq!((v.tcp_flags(), v.val_flags()), (0x12, VAL_F_SYN));
        assert_eq!((v.icmp_type(), v.icmp_code()), (8, 3));
        // Two CPUs that both saw a flag unset and added it: still that flag, nothing else.
        let both = v.marks + marks::spread(0x100);
        v.marks = both + marks::spread(0x100);
        assert_eq!((v.tcp_flags(), v.val_flags()), (0x112, VAL_F_SYN));
        assert_eq!((v.icmp_type(), v.icmp_code()), (8, 3));
        v.add_flags(0x01, VAL_F_ICMP);
        assert_eq!(
            (v.tcp_flags(), v.val_flags()),
            (0x113, VAL_F_SYN | VAL_F_ICMP)
        );
    }
}
