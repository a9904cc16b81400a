//! Entry points, maps and per-packet accounting. Fails open: every path returns TC_ACT_UNSPEC
//! (TCX_NEXT: the next program in the chain runs, a netlink filter after ours too) or XDP_PASS.
//! Included by both objects: the agent's (`main.rs`) and the benchmarks' (`bin/bench.rs`,
//! which adds do-nothing baselines and a per-CPU-map variant through [`FlowStore`]).
//!
//! Count once per node: a packet crosses several attached interfaces on a node (a pod's veth,
//! a bridge, the uplink). The flow key has no interface; the first interface and hook that
//! sees a flow direction creates its entry and is the only one that counts it
//! (`counted_on`); every other one only adds itself to `seen_on`. Payloads (DNS, HTTP, TLS
//! handshakes: see `tls`) go to userspace from the counting hook alone. `DEVOURER_PER_INTERFACE` puts the interface back in
//! the key: every interface counts its own flows.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values go to map helpers by reference: one stack copy for the verifier"
)]

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr::{read_unaligned, read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_UNSPEC, xdp_action::XDP_PASS},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use devourer_common::{
    flow::{
        C_DNS_CUT, C_DNS_EVENTS, C_DNS_RING_FULL, C_HTTP_CUT, C_HTTP_EVENTS, C_HTTP_RING_FULL,
        C_INSERT_RACE, C_MALFORMED, C_MAP_FULL, C_NON_IP, C_OVERFLOW_FULL_BYTES,
        C_OVERFLOW_FULL_PACKETS, C_PACKETS, C_REPEATS, C_SAMPLED_OUT, C_SEEN_FULL, C_TLS_EVENTS,
        C_TLS_RING_FULL, C_WAKEUP_FAILED, C_WAKEUPS, CB_IFINDEX, CB_MAP, CounterBlock,
        DEFAULT_FLOW_MAP_ENTRIES, DEFAULT_HOOK_HORIZON_NS, DEFAULT_WAKE_INTERVAL_NS, FlowKey,
        FlowValue, KEY_F_IPV6, OVERFLOW_MAP_ENTRIES, OverflowKey, OverflowValue, SEEN_SLOTS,
        VAL_F_ICMP, WAKEUP_RING_BYTES, Wakeup, XdpReplayMeta, hook, marks,
    },
    payload::{
        DEFAULT_HTTP_CAP, PAYLOAD_CAP_MAX, PAYLOAD_F_IPV6, PAYLOAD_HEADER_LEN, PORT_SLOTS,
        PayloadScratch,
    },
};
use devourer_ebpf::{
    IPPROTO_TCP, Packet, Parsed, Skip, gso_segments, is_dns, is_http, parse, parse_l3, sample_hash,
    starts_http, zeroed,
};

use crate::{
    access::{CopyOut, TcPacket, XdpPacket},
    rtt::{note_handshake, srtt_due},
    tls::{CHUNK_SHIFT, tls_segment},
};

const EEXIST: i32 = 17;
/// Least time between two log lines from one CPU about malformed packets (debug logging).
const ANOMALY_LOG_INTERVAL_NS: u64 = 1_000_000_000;

/// 1 when replaying recorded packets through BPF_PROG_TEST_RUN (see devourer-common).
#[unsafe(no_mangle)]
static DEVOURER_OFFLINE: u8 = 0;
#[unsafe(no_mangle)]
static DEVOURER_WAKE_INTERVAL_NS: u64 = DEFAULT_WAKE_INTERVAL_NS;
#[unsafe(no_mangle)]
static DEVOURER_HOOK_HORIZON_NS: u64 = DEFAULT_HOOK_HORIZON_NS;
/// The counting hook refreshes its memory of a flow direction at its first packet past each
/// boundary of `1 << DEVOURER_HOOK_REFRESH_SHIFT` ns (at most half the horizon).
#[unsafe(no_mangle)]
static DEVOURER_HOOK_REFRESH_SHIFT: u32 = 32;
/// 1 to remember counting hooks across entries' lives (see devourer-common).
#[unsafe(no_mangle)]
static DEVOURER_HOOK_MEMORY: u8 = 1;
/// 1: every interface counts its own flows (the interface is in the key); 0: once per node.
#[unsafe(no_mangle)]
static DEVOURER_PER_INTERFACE: u8 = 0;
/// 1: live counting alternates map sets, by [`SET`] (kernels before 5.14; see devourer-common).
#[unsafe(no_mangle)]
static DEVOURER_ALTERNATE: u8 = 0;
/// 1: the kernel has `bpf_xdp_load_bytes` (5.18); 0: XDP copies from the linear frame.
#[unsafe(no_mangle)]
static DEVOURER_XDP_LOAD_BYTES: u8 = 1;

/// Ports whose payloads go to the DNS ring (0 = unused slot).
#[unsafe(no_mangle)]
static DEVOURER_DNS_PORTS: [u16; PORT_SLOTS] = [53, 0, 0, 0, 0, 0, 0, 0];
/// Flags for payload ring output: 0 (the kernel wakes the reader when it has caught up), or
/// BPF_RB_NO_WAKEUP where the reader polls anyway (offline replay drains after every frame).
#[unsafe(no_mangle)]
static DEVOURER_RB_FLAGS: u64 = 0;
/// Payload bytes copied per DNS packet (at most PAYLOAD_CAP_MAX).
#[unsafe(no_mangle)]
static DEVOURER_DNS_CAP: u32 = PAYLOAD_CAP_MAX as u32;
/// TCP ports whose segments that start an HTTP message go to the HTTP ring (all 0: off).
#[unsafe(no_mangle)]
static DEVOURER_HTTP_PORTS: [u16; PORT_SLOTS] = [0; PORT_SLOTS];
/// Payload bytes copied per HTTP segment (at most PAYLOAD_CAP_MAX).
#[unsafe(no_mangle)]
static DEVOURER_HTTP_CAP: u32 = DEFAULT_HTTP_CAP;

/// `--sampling N`: count one packet in N (0 and 1: all).
#[unsafe(no_mangle)]
static DEVOURER_SAMPLING: u32 = 0;
/// The key of [`sampled_out`]'s hash.
#[unsafe(no_mangle)]
static DEVOURER_SAMPLING_SEED: u64 = 0;

/// One value per flow direction for all CPUs: memory flat in the CPU count, one first
/// interface per flow (what counting once needs); counts are added atomically.
#[map(name = "FLOWS")]
static FLOWS: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(DEFAULT_FLOW_MAP_ENTRIES, 0);

#[map(name = "OVERFLOW")]
static OVERFLOW: PerCpuHashMap<OverflowKey, OverflowValue> =
    PerCpuHashMap::with_max_entries(OVERFLOW_MAP_ENTRIES, 0);

/// Offline replay's second map set: replay counts each scan interval's frames in the other set
/// than the interval before (`cb[CB_MAP]`, the XDP replay metadata), so the agent reads and
/// empties that one while frames go to this one. The loader sizes them to one entry in the
/// live agent, which never uses them.
#[map(name = "FLOWS_B")]
static FLOWS_B: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(1, 0);

#[map(name = "OVERFLOW_B")]
static OVERFLOW_B: PerCpuHashMap<OverflowKey, OverflowValue> =
    PerCpuHashMap::with_max_entries(1, 0);

/// The set live counting writes to where it alternates sets (`DEVOURER_ALTERNATE`): the agent
/// flips it at each scan, then drains the other once no program can still be writing there.
#[map(name = "SET")]
static SET: Array<u32> = Array::with_max_entries(1, 0);

/// Offline replay: the hook that counts each flow direction, and when it was last refreshed,
/// kept across the map sets (a set holds one scan interval). Least recently used entries go
/// first when it is full; the loader sizes it to one entry in the live agent.
#[map(name = "HOOKS")]
static HOOKS: LruHashMap<FlowKey, HookMemo> = LruHashMap::with_max_entries(1, 0);

/// A [`HOOKS`] value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HookMemo {
    counted_on: u32,
    _pad: u32,
    /// A packet it counted: the first of a scan interval, no more than half the horizon
    /// before the last one.
    counted_ns: u64,
}

/// Notes that `hook` counted `key` at `ts`.
#[inline(always)]
fn remember(hooks: &LruHashMap<FlowKey, HookMemo>, key: &FlowKey, hook: u32, ts: u64) {
    let m = HookMemo {
        counted_on: hook,
        _pad: 0,
        counted_ns: ts,
    };
    // A full memory evicts its least recently used entry; a failure only forgets.
    let _ = hooks.insert(key, &m, 0);
}

/// A flow map and the overflow map beside it, and the counting hooks' memory.
#[derive(Clone, Copy)]
pub struct MapSet {
    /// The flow map (the benchmarks' breakdown looks it up alone).
    pub flows: &'static HashMap<FlowKey, FlowValue>,
    /// Where packets go when the flow map is full (the benchmarks' per-CPU variant too).
    pub overflow: &'static PerCpuHashMap<OverflowKey, OverflowValue>,
    /// A direction new in `flows` (the agent took its entry out, or offline replay and
    /// kernels before 5.14 moved on to the other set) that another hook counted within the
    /// horizon keeps that hook: the copy of a packet counted there, between two hooks when its
    /// entry went, must not count again. None when counting per interface, and offline for a
    /// capture of one interface.
    hooks: Option<&'static LruHashMap<FlowKey, HookMemo>>,
}

impl MapSet {
    /// The live agent's set: the one map set, or where sets alternate (kernels before 5.14)
    /// the one [`SET`] names.
    #[inline(always)]
    fn live() -> Self {
        // SAFETY: a load-time constant.
        if unsafe { read_volatile(&DEVOURER_ALTERNATE) } != 0 {
            return Self::numbered(SET.get(0).copied().unwrap_or(0));
        }
        Self {
            flows: &FLOWS,
            overflow: &OVERFLOW,
            hooks: memory(),
        }
    }

    /// Set 0 or 1 (offline replay marks each frame with one; alternating live counting reads
    /// it from [`SET`]), with the counting hooks' memory where it is on.
    #[inline(always)]
    fn numbered(set: u32) -> Self {
        let (flows, overflow) = if set != 0 {
            (&FLOWS_B, &OVERFLOW_B)
        } else {
            (&FLOWS, &OVERFLOW)
        };
        Self {
            flows,
            overflow,
            hooks: memory(),
        }
    }
}

/// The counting hooks' memory, where it is on.
#[inline(always)]
fn memory() -> Option<&'static LruHashMap<FlowKey, HookMemo>> {
    // SAFETY: a load-time constant.
    (unsafe { read_volatile(&DEVOURER_HOOK_MEMORY) } != 0).then_some(&HOOKS)
}

/// The first-hook rule across entries' lives: the hook that counts a packet of `key` seen at
/// `hook` at `ts`. Another hook that counted the key within the horizon (the packet is a copy
/// of one counted there), else `hook`, whose memory of it is then refreshed (when the hook
/// changes or at half the horizon: one lookup per new entry and rarely a write).
#[inline(always)]
fn counting_hook(maps: MapSet, key: &FlowKey, hook: u32, ts: u64) -> u32 {
    let Some(hooks) = maps.hooks else {
        return hook;
    };
    // SAFETY: a live map value, copied out at once.
    let memo = unsafe { hooks.get(key) }.copied();
    let (inherited, counted_ns) = memo.map_or((0, 0), |m| (m.counted_on, m.counted_ns));
    // SAFETY: a load-time constant.
    let horizon = unsafe { read_volatile(&DEVOURER_HOOK_HORIZON_NS) };
    let age = ts.saturating_sub(counted_ns);
    if inherited != 0 && inherited != hook && age <= horizon {
        return inherited;
    }
    if inherited != hook || age > horizon / 2 {
        remember(hooks, key, hook, ts);
    }
    hook
}

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<CounterBlock> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "WAKEUP")]
static WAKEUP: RingBuf = RingBuf::with_byte_size(WAKEUP_RING_BYTES, 0);

#[map(name = "DNS_EVENTS")]
static DNS_EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map(name = "HTTP_EVENTS")]
static HTTP_EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map(name = "TLS_EVENTS")]
static TLS_EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Where one payload event (DNS or HTTP) is assembled before it is output to its ring.
#[map(name = "PAYLOAD_SCRATCH")]
static PAYLOAD_SCRATCH: PerCpuArray<PayloadScratch> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "WAKE_STATE")]
static WAKE_STATE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// When this CPU last logged a malformed packet (debug logging only).
#[map(name = "LOG_STATE")]
static LOG_STATE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn offline() -> bool {
    // SAFETY: a load-time constant; volatile so the compiler does not fold the default.
    unsafe { read_volatile(&DEVOURER_OFFLINE) != 0 }
}

/// Whether the kernel has `bpf_xdp_load_bytes` (a load-time constant).
#[inline(always)]
pub fn xdp_load_bytes() -> bool {
    // SAFETY: as `offline`.
    unsafe { read_volatile(&DEVOURER_XDP_LOAD_BYTES) != 0 }
}

#[inline(always)]
fn per_interface() -> bool {
    // SAFETY: as `offline`.
    unsafe { read_volatile(&DEVOURER_PER_INTERFACE) != 0 }
}

/// This CPU's counters, looked up once per packet.
pub struct Ctr(*mut CounterBlock);

impl Ctr {
    #[inline(always)]
    fn get() -> Option<Self> {
        COUNTERS.get_ptr_mut(0).map(Ctr)
    }

    /// Adds one to a counter atomically: for programs that may run while a counting program
    /// is between a read and a write of the same slot on this CPU (the drop tracepoint).
    #[inline(always)]
    pub fn bump_atomic(idx: u32) {
        Self::add_atomic(idx, 1);
    }

    /// Adds `n` to a counter atomically (see [`Ctr::bump_atomic`]).
    #[inline(always)]
    pub fn add_atomic(idx: u32, n: u64) {
        if let Some(c) = Self::get() {
            // SAFETY: this CPU's slot, index below COUNTERS_LEN (a C_* constant).
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                    &raw mut (*c.0).c[idx as usize],
                    n,
                )
            };
        }
    }

    #[inline(always)]
    pub fn add(&self, idx: u32, n: u64) {
        // SAFETY: this CPU's slot; only this CPU writes it and programs do not nest on one CPU
        // for these hooks. The index is one of the C_* constants, below COUNTERS_LEN.
        unsafe { (*self.0).c[idx as usize] += n };
    }
}

/// Per-CPU working memory (map memory, not stack; one lookup per packet for both parts):
/// - `parsed`: where a packet is parsed into (see `devourer_ebpf::parse`); its key is used as
///   the map key in place;
/// - `hdr`: where headers beyond the linear part of an skb are copied (every load site would
///   otherwise keep its own stack buffer, and the stack is 512 bytes).
#[repr(C)]
struct Scratch {
    parsed: Parsed,
    hdr: [u8; 64],
}

#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// What every TC program returns: TC_ACT_UNSPEC, which TCX calls TCX_NEXT. Attached first in
/// the TCX chain (nothing before us can hide a packet), we must hand every packet on: PIPE or
/// OK would end a netlink filter list, OK a TCX chain, and skip a CNI's policy after us.
pub const TC_NEXT: i32 = TC_ACT_UNSPEC;

#[classifier]
pub fn devourer_tc_ingress(ctx: TcContext) -> i32 {
    tc::<Shared>(&ctx, false);
    TC_NEXT
}

#[classifier]
pub fn devourer_tc_egress(ctx: TcContext) -> i32 {
    tc::<Shared>(&ctx, true);
    TC_NEXT
}

/// [`devourer_tc_ingress`] for an L3 device (tun, WireGuard, IPIP, SIT, GRE, PPP): its
/// packets start at the IP header.
#[classifier]
pub fn devourer_tc_ingress_l3(ctx: TcContext) -> i32 {
    tc_l3(&ctx, false);
    TC_NEXT
}

/// [`devourer_tc_egress`] for an L3 device.
#[classifier]
pub fn devourer_tc_egress_l3(ctx: TcContext) -> i32 {
    tc_l3(&ctx, true);
    TC_NEXT
}

#[xdp]
pub fn devourer_xdp(ctx: XdpContext) -> u32 {
    xdp(&ctx);
    XDP_PASS
}

/// What [`FlowStore::record`] did with a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Not counted here: seen already where its flow is counted (so is its payload).
    No,
    /// Counted at this hook, which alone then sends its payload: into the live entry it
    /// points at (null where none is at hand: the overflow map, a benchmark's store).
    Yes(*mut FlowValue),
    /// Counted into the live entry it points at, whose socket's smoothed RTT is due for a
    /// sample.
    Sample(*mut FlowValue),
}

/// Where a parsed packet is counted: the agent's shared flow map ([`Shared`]), or a variant
/// the benchmark object compares it with.
pub trait FlowStore {
    fn record(maps: MapSet, p: &Parsed, ts: u64, segs: u64, hook: u32, ctr: &Ctr) -> Counted;
}

/// The shared flow map.
pub struct Shared;

impl FlowStore for Shared {
    #[inline(always)]
    fn record(maps: MapSet, p: &Parsed, ts: u64, segs: u64, hook: u32, ctr: &Ctr) -> Counted {
        record(maps, p, ts, segs, hook, ctr)
    }
}

/// Counts one packet seen at TC (`egress`: the egress hook) into `S`.
#[inline(always)]
pub fn tc<S: FlowStore>(ctx: &TcContext, egress: bool) {
    tc_at::<S, false>(ctx, egress)
}

/// [`tc`] on an L3 device, into the shared map.
#[inline(always)]
fn tc_l3(ctx: &TcContext, egress: bool) {
    tc_at::<Shared, true>(ctx, egress)
}

/// [`tc`], parsing from the Ethernet header or (`L3`) from the IP header.
#[inline(always)]
fn tc_at<S: FlowStore, const L3: bool>(ctx: &TcContext, egress: bool) {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer the kernel passed in; these __sk_buff fields are readable by
    // sched_cls programs. Fields are read with volatile loads at their constant offsets, so
    // LLVM cannot turn two field reads into one load through a selected pointer (which the
    // verifier refuses on the context).
    let (ts, ifindex, maps, vlan_hint, segs) = unsafe {
        // Both interface fields are read whatever the mode (LLVM would otherwise merge the two
        // 32-bit reads into one through a selected offset, which the verifier refuses); only
        // offline replay reads tstamp, whose read carries extra checks, and the map set.
        let cb0 = read_volatile(&(*skb).cb[CB_IFINDEX]);
        let dev = read_volatile(&(*skb).ifindex);
        let (ts, ifindex, maps) = if offline() {
            (
                read_volatile(&(*skb).tstamp),
                cb0,
                MapSet::numbered(read_volatile(&(*skb).cb[CB_MAP])),
            )
        } else {
            (bpf_ktime_get_ns(), dev, MapSet::live())
        };
        let vlan_present = read_volatile(&(*skb).vlan_present);
        let vlan_tci = read_volatile(&(*skb).vlan_tci);
        let segs = (
            read_volatile(&(*skb).gso_segs),
            read_volatile(&(*skb).gso_size),
        );
        let vlan = if vlan_present != 0 {
            Some(vlan_tci as u16)
        } else {
            None
        };
        (ts, ifindex, maps, vlan, segs)
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; programs do not nest on one CPU for these hooks.
    let scratch = unsafe { &mut *scratch };
    let pkt = TcPacket {
        ctx,
        scratch: &mut scratch.hdr,
    };
    account::<_, S, L3>(
        &pkt,
        &mut scratch.parsed,
        vlan_hint,
        (ts, maps),
        hook(ifindex, egress),
        Some(segs),
    );
}

#[inline(always)]
fn xdp(ctx: &XdpContext) {
    // SAFETY: the context the kernel passed in; read at its constant offset (see `tc`).
    let dev = unsafe { read_volatile(&(*ctx.ctx).ingress_ifindex) };
    let (ts, ifindex, maps) = if offline() {
        let meta = ctx.metadata();
        if meta + size_of::<XdpReplayMeta>() > ctx.data() {
            if let Some(ctr) = Ctr::get() {
                ctr.add(C_PACKETS, 1);
                ctr.add(C_MALFORMED, 1);
            }
            return;
        }
        // SAFETY: the metadata area was bounds-checked against data just above.
        let m = unsafe { read_unaligned(meta as *const XdpReplayMeta) };
        (m.ts_ns, m.ifindex, MapSet::numbered(m.map))
    } else {
        // SAFETY: plain helper call.
        (unsafe { bpf_ktime_get_ns() }, dev, MapSet::live())
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; see `tc`.
    let parsed = unsafe { &mut (*scratch).parsed };
    account::<_, Shared, false>(
        &XdpPacket(ctx),
        parsed,
        None,
        (ts, maps),
        hook(ifindex, false),
        None,
    );
}

/// Counts one packet seen at `hook` (interface and direction, see [`hook`]) at `ts` in
/// `maps`; `L3`: the packet starts at its IP header. `gso`: TC's `gso_segs` and `gso_size`
/// (XDP frames are single packets).
#[inline(always)]
fn account<P: Packet + CopyOut, S: FlowStore, const L3: bool>(
    p: &P,
    parsed: &mut Parsed,
    vlan_hint: Option<u16>,
    (ts, maps): (u64, MapSet),
    hook: u32,
    gso: Option<(u32, u32)>,
) {
    let Some(ctr) = Ctr::get() else {
        return;
    };
    ctr.add(C_PACKETS, 1);
    let ifindex = hook >> 1;
    let res = if L3 {
        parse_l3(p, parsed)
    } else {
        parse(p, vlan_hint, parsed)
    };
    match res {
        Ok(()) => {
            // A GSO/GRO super-packet stands for `segs` packets on the wire, each with its own
            // headers: count the bytes those packets' IP length fields add up to.
            let segs = match gso {
                Some((segs, size)) => segments(p, parsed, segs, size),
                None => 1,
            };
            parsed.key.ifindex = if per_interface() { ifindex } else { 0 };
            let mut segs = segs;
            if sampled_out(parsed) {
                // Not counted, but still noted (times, flags, interfaces) and its payload
                // still decoded: DNS and HTTP are not sampled.
                ctr.add(C_SAMPLED_OUT, segs);
                parsed.bytes = 0;
                segs = 0;
            }
            let v = match S::record(maps, parsed, ts, segs, hook, &ctr) {
                // Seen already where its flow is counted: so is its payload.
                Counted::No => return,
                Counted::Yes(v) => v,
                Counted::Sample(v) => {
                    p.sample_srtt(v, &parsed.key, hook);
                    v
                }
            };
            // SAFETY: a load-time constant array.
            let ports = unsafe { read_volatile(&DEVOURER_DNS_PORTS) };
            if is_dns(parsed, &ports) {
                payload_event(p, parsed, ts, ifindex as u64 | KIND_DNS, &ctr);
            }
            // SAFETY: a load-time constant array.
            let http_ports = unsafe { read_volatile(&DEVOURER_HTTP_PORTS) };
            if is_http(parsed, &http_ports) {
                // Through the load helper: the payload offset is not a bounded packet offset.
                let mut first = [0u8; 4];
                if parsed.payload_len >= 4
                    && p.copy_out(parsed.payload_off, first.as_mut_ptr(), 4)
                    && starts_http(first)
                {
                    payload_event(p, parsed, ts, ifindex as u64 | KIND_HTTP, &ctr);
                }
            }
            if parsed.key.proto == IPPROTO_TCP && parsed.payload_len != 0 {
                tls_segment(p, parsed, v, ts, ifindex, &ctr);
            }
        }
        Err(Skip::NonIp) => ctr.add(C_NON_IP, 1),
        Err(Skip::Malformed) => {
            ctr.add(C_MALFORMED, 1);
            log_malformed(ts, ifindex);
        }
    }
}

/// [`gso_segments`], a function of its own (a BPF-to-BPF call, on every TC packet): inlined,
/// the super-packet's branches would each walk the rest of the program in the verifier.
#[inline(never)]
fn segments<P: Packet>(p: &P, parsed: &mut Parsed, gso_segs: u32, gso_size: u32) -> u64 {
    gso_segments(p, parsed, gso_segs, gso_size) as u64
}

/// True for the packets `--sampling N` leaves uncounted: all but one in N, decided by a keyed
/// hash of what the packet is (addresses, ports, length, IPv4 id or IPv6 flow label, TCP
/// sequence), so that every hook a packet crosses decides alike and a sampled packet is counted
/// once or not at all.
#[inline(always)]
fn sampled_out(p: &Parsed) -> bool {
    // SAFETY: a load-time constant.
    let n = unsafe { read_volatile(&DEVOURER_SAMPLING) };
    // SAFETY: a load-time constant.
    n > 1
        && !sample_hash(p, unsafe { read_volatile(&DEVOURER_SAMPLING_SEED) })
            .is_multiple_of(n as u64)
}

/// A debug line about a malformed packet, at most once per CPU per second (a flood of bad
/// packets must not become a flood of log records); nothing unless the agent logs at debug.
#[inline(never)]
fn log_malformed(ts: u64, ifindex: u32) {
    let Some(last) = LOG_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot.
    let last = unsafe { &mut *last };
    if *last != 0 && ts.wrapping_sub(*last) < ANOMALY_LOG_INTERVAL_NS {
        return;
    }
    *last = ts;
    debug!(
        &(),
        "malformed packet on ifindex {} (more are only counted for a second)", ifindex
    );
}

/// The nibble of [`VAL_F_ICMP`] in [`FlowValue::marks`] (its lowest bit).
const ICMP_MARK: u64 = marks::spread((VAL_F_ICMP as u16) << marks::VAL_SHIFT);

/// A packet's flags as [`FlowValue::marks`] spells them: TCP flags, then `VAL_F_*`.
#[inline(always)]
fn mark_bits(p: &Parsed) -> u16 {
    p.tcp_flags | (p.val_flags as u16) << marks::VAL_SHIFT
}

#[inline(always)]
pub fn add(v: &mut FlowValue, p: &Parsed, ts: u64, segs: u64) {
    if v.first_ns == 0 || ts < v.first_ns {
        v.first_ns = ts;
    }
    if ts > v.last_ns {
        v.last_ns = ts;
    }
    v.bytes += p.bytes as u64;
    v.packets += segs;
    note_handshake(v, p.tcp_flags, ts);
    let bits = mark_bits(p);
    if bits != 0 {
        let present = marks::present(v.marks);
        if p.val_flags & VAL_F_ICMP != 0 && present & ICMP_MARK == 0 {
            v.set_icmp(p.icmp_type, p.icmp_code);
        }
        v.marks |= marks::spread(bits) & !present;
    }
}

/// Adds a packet to an entry other CPUs may be updating: counts and flags atomically, with
/// atomic adds alone (BPF_XADD, on every kernel and JIT); the last-seen time and the first
/// ICMP type are plain stores, where a race only picks one of two close values.
#[inline(always)]
pub fn add_shared(v: *mut FlowValue, p: &Parsed, ts: u64, segs: u64) {
    // SAFETY: a live map value; the counters and `marks` are 8-byte aligned u64 fields
    // (repr(C), asserted in devourer-common).
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).bytes, p.bytes as u64);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).packets, segs);
        if ts > (*v).last_ns {
            (*v).last_ns = ts;
        }
        note_handshake(v, p.tcp_flags, ts);
        let bits = mark_bits(p);
        if bits != 0 {
            // A flag is added once, when its nibble reads zero (most packets of a connection
            // carry flags it has: ACK). Two CPUs adding at once make it 2: still set.
            let word = &raw mut (*v).marks;
            let present = marks::present(read_volatile(word));
            let missing = marks::spread(bits) & !present;
            if missing != 0 {
                if p.val_flags & VAL_F_ICMP != 0 && present & ICMP_MARK == 0 {
                    let b = word.cast::<u8>();
                    write_volatile(b.add(6), p.icmp_type);
                    write_volatile(b.add(7), p.icmp_code);
                }
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(word, missing);
            }
        }
    }
}

/// Notes a tagged packet's VLAN in an entry other CPUs may be updating (a plain store: a race
/// picks one of two tags).
#[inline(always)]
fn note_vlan(v: *mut FlowValue, p: &Parsed) {
    if p.vlan != 0 {
        // SAFETY: a live map value.
        unsafe { write_volatile(&raw mut (*v).vlan, p.vlan) };
    }
}

/// A packet at `hook` for an existing entry: counted if `hook` is where its flow is counted,
/// else `hook` is listed among the others that saw it. Whether it was counted (and whether its
/// socket's RTT is due for a sample).
#[inline(always)]
fn count_or_note(
    v: *mut FlowValue,
    p: &Parsed,
    (ts, segs): (u64, u64),
    hook: u32,
    maps: MapSet,
    ctr: &Ctr,
) -> Counted {
    // SAFETY: a live map value; `counted_on` is set once, at insert.
    if unsafe { (*v).counted_on } == hook {
        if let Some(hooks) = maps.hooks {
            // SAFETY: as above.
            let (first, last) = unsafe { ((*v).first_ns, (*v).last_ns) };
            // SAFETY: a load-time constant.
            let shift = unsafe { read_volatile(&DEVOURER_HOOK_REFRESH_SHIFT) };
            // An entry that inherited its counting hook (see `record`) starts without a first
            // packet: this is its first. A long-lived entry refreshes the memory at its first
            // packet past each boundary, so that the memory outlives the entry by the horizon
            // whenever the agent takes it out.
            if first == 0 || ts >> shift != last >> shift {
                if first == 0 {
                    // SAFETY: as above.
                    unsafe { (*v).first_ns = ts };
                }
                remember(hooks, &p.key, hook, ts);
            }
        }
        let due = srtt_due(v, p, ts);
        add_shared(v, p, ts, segs);
        return if due {
            Counted::Sample(v)
        } else {
            Counted::Yes(v)
        };
    }
    ctr.add(C_REPEATS, segs);
    // The tag a VLAN device's parent sees (the device itself sees the packet untagged).
    note_vlan(v, p);
    // SAFETY: as above; a racing CPU may take the same free slot, which only repeats a hook.
    let seen = unsafe { &mut (*v).seen_on };
    for slot in seen.iter_mut().take(SEEN_SLOTS) {
        if *slot == hook {
            return Counted::No;
        }
        if *slot == 0 {
            *slot = hook;
            return Counted::No;
        }
    }
    ctr.add(C_SEEN_FULL, 1);
    Counted::No
}

#[inline(always)]
fn record(maps: MapSet, p: &Parsed, ts: u64, segs: u64, hook: u32, ctr: &Ctr) -> Counted {
    let key = &p.key;
    let ifindex = hook >> 1;
    if let Some(v) = maps.flows.get_ptr_mut(key) {
        return count_or_note(v, p, (ts, segs), hook, maps, ctr);
    }
    let mut slot = core::mem::MaybeUninit::<FlowValue>::uninit();
    // SAFETY: all-zero is a valid FlowValue (plain integers).
    let fresh = unsafe { zeroed(&mut slot) };
    fresh.counted_on = hook;
    fresh.vlan = p.vlan;
    // A direction another hook counted within the horizon keeps that hook (as an entry kept
    // in the map would have): a packet at this hook is a copy of one counted there, so its
    // entry starts with no packets, the counting hook, and this hook as seen.
    let counter = counting_hook(maps, key, hook, ts);
    let counted = counter == hook;
    if counted {
        add(fresh, p, ts, segs);
    } else {
        fresh.counted_on = counter;
        fresh.seen_on[0] = hook;
    }
    match maps.flows.insert(key, fresh, BPF_NOEXIST as u64) {
        // A new entry whose first packet carries payload (TCP Fast Open, a connection older
        // than its entry): the entry, for the TLS ring's look at it.
        Ok(()) if counted => Counted::Yes(if p.payload_len != 0 {
            maps.flows.get_ptr_mut(key).unwrap_or_default()
        } else {
            core::ptr::null_mut()
        }),
        Ok(()) => {
            ctr.add(C_REPEATS, segs);
            Counted::No
        }
        Err(e) if e == -EEXIST => {
            // Another CPU created the entry between our lookup and insert.
            ctr.add(C_INSERT_RACE, 1);
            debug!(
                &(),
                "insert race on ifindex {}: retried as an update", ifindex
            );
            match maps.flows.get_ptr_mut(key) {
                Some(v) => count_or_note(v, p, (ts, segs), hook, maps, ctr),
                // Deleted again by the agent in between: account it as overflow, not lost.
                None => overflow(maps, p, ts, hook, segs, ctr),
            }
        }
        Err(_) if counted => overflow(maps, p, ts, hook, segs, ctr),
        // The map is full and the packet is a copy: nothing to count, only its hook is lost.
        Err(_) => {
            ctr.add(C_REPEATS, segs);
            Counted::No
        }
    }
}

/// The overflow map's key, built as one word: its three zero pad bytes would otherwise become a
/// `memset` call, a loop over single bytes in BPF, on the path every packet takes while the
/// flow map is full.
#[inline(always)]
fn overflow_key(ifindex: u32, proto: u8) -> OverflowKey {
    const { assert!(size_of::<OverflowKey>() == 8 && cfg!(target_endian = "little")) };
    let word = ifindex as u64 | (proto as u64) << 32;
    // SAFETY: OverflowKey is repr(C) { ifindex: u32, proto: u8, _pad: [u8; 3] }: 8 bytes of
    // plain integers, which this little-endian word lays out as ifindex, proto and zeroes.
    unsafe { core::mem::transmute::<u64, OverflowKey>(word) }
}

/// `len` (1..=PAYLOAD_CAP_MAX already) in a form every verifier bounds to 1..=PAYLOAD_CAP_MAX:
/// 6.1's does not learn `len >= 1` from a `len != 0` test, and refuses a copy whose length
/// may be 0. The volatile read keeps LLVM from folding the mask away.
#[inline(always)]
fn one_to_cap(len: u32) -> u32 {
    const { assert!(PAYLOAD_CAP_MAX.is_power_of_two()) };
    // SAFETY: a read of a local.
    let len = unsafe { read_volatile(&len) };
    (len.wrapping_sub(1) & (PAYLOAD_CAP_MAX as u32 - 1)) + 1
}

/// `payload_event`'s kind, in bits 32 and 33 of its `if_kind` argument (the interface in bits
/// 0..32; a TLS event's chunk from [`CHUNK_SHIFT`]).
const KIND_DNS: u64 = 0;
const KIND_HTTP: u64 = 1 << 32;
pub const KIND_TLS: u64 = 1 << 33;

/// Forwards a packet's payload (up to the kind's cap) with its addresses to the DNS, HTTP or
/// TLS ring; a TLS event may be a later chunk of a super-packet's payload (its bytes from
/// chunk * PAYLOAD_CAP_MAX on, its sequence number moved as far). A function of its own (a
/// BPF-to-BPF call, at most five arguments, so interface, kind and chunk share one): inlined,
/// it would push the packet path's stack frame past 512 bytes.
#[inline(never)]
pub fn payload_event<P: CopyOut>(p: &P, parsed: &Parsed, ts: u64, if_kind: u64, ctr: &Ctr) {
    let ifindex = if_kind as u32;
    let http = if_kind & KIND_HTTP != 0;
    let tls = if_kind & KIND_TLS != 0;
    // A TLS chunk's offset into the payload (0 for every other kind); at most 3 caps.
    let skip = ((if_kind >> CHUNK_SHIFT) as u32 & 3) * PAYLOAD_CAP_MAX as u32;
    if skip >= parsed.payload_len {
        return;
    }
    let avail = parsed.payload_len - skip;
    let Some(scratch) = PAYLOAD_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; programs do not nest on one CPU for these hooks.
    let scratch = unsafe { &mut *scratch };
    // SAFETY: load-time constants.
    let cap = unsafe {
        if tls {
            PAYLOAD_CAP_MAX as u32
        } else if http {
            read_volatile(&DEVOURER_HTTP_CAP)
        } else {
            read_volatile(&DEVOURER_DNS_CAP)
        }
    }
    .min(PAYLOAD_CAP_MAX as u32);
    let len = avail.min(cap);
    if len == 0 || len > PAYLOAD_CAP_MAX as u32 {
        return;
    }
    let len = one_to_cap(len);
    if !p.copy_out(parsed.payload_off + skip, scratch.payload.as_mut_ptr(), len) {
        return;
    }
    let k = &parsed.key;
    let h = &mut scratch.header;
    h.ts_ns = ts;
    h.src_addr = k.src_addr;
    h.dst_addr = k.dst_addr;
    h.src_port = k.src_port;
    h.dst_port = k.dst_port;
    h.ifindex = ifindex;
    h.tcp_seq = parsed.tcp_seq.wrapping_add(skip);
    h.payload_len = avail;
    h.cap_len = len as u16;
    h.proto = k.proto;
    h.flags = if k.flags & KEY_F_IPV6 != 0 {
        PAYLOAD_F_IPV6
    } else {
        0
    };
    h.tcp_flags = parsed.tcp_flags as u8;
    let size = PAYLOAD_HEADER_LEN + len as usize;
    // SAFETY: size <= PAYLOAD_HEADER_LEN + PAYLOAD_CAP_MAX = size_of::<PayloadScratch>().
    let bytes = unsafe {
        core::slice::from_raw_parts((scratch as *const PayloadScratch).cast::<u8>(), size)
    };
    // SAFETY: a load-time constant (the same wake-up policy for both rings).
    let flags = unsafe { read_volatile(&DEVOURER_RB_FLAGS) };
    // A TLS event carries what its chunk holds; what a handshake does not send is counted
    // where it is decided (`tls`).
    let (ring, sent, full, cut) = if tls {
        (&TLS_EVENTS, C_TLS_EVENTS, C_TLS_RING_FULL, None)
    } else if http {
        (
            &HTTP_EVENTS,
            C_HTTP_EVENTS,
            C_HTTP_RING_FULL,
            Some(C_HTTP_CUT),
        )
    } else {
        (&DNS_EVENTS, C_DNS_EVENTS, C_DNS_RING_FULL, Some(C_DNS_CUT))
    };
    match ring.output::<[u8]>(bytes, flags) {
        Ok(()) => {
            ctr.add(sent, 1);
            if let Some(cut) = cut
                && avail > len
            {
                ctr.add(cut, 1);
            }
        }
        Err(_) => ctr.add(full, 1),
    }
}

/// The flow map is full: aggregate by (ifindex, protocol) in the overflow map and ask the
/// agent to evict early. Whether the packet was counted: by the flow map's first-hook rule,
/// only at the hook that counts its flow direction (a copy at another interface is a repeat).
#[inline(always)]
pub fn overflow(maps: MapSet, p: &Parsed, ts: u64, hook: u32, segs: u64, ctr: &Ctr) -> Counted {
    if counting_hook(maps, &p.key, hook, ts) != hook {
        ctr.add(C_REPEATS, segs);
        return Counted::No;
    }
    ctr.add(C_MAP_FULL, segs);
    let map = maps.overflow;
    let key = overflow_key(hook >> 1, p.key.proto);
    let added = match map.get_ptr_mut(&key) {
        Some(v) => {
            // SAFETY: this CPU's slot.
            let v = unsafe { &mut *v };
            v.bytes += p.bytes as u64;
            v.packets += segs;
            true
        }
        None => {
            let v = OverflowValue {
                bytes: p.bytes as u64,
                packets: segs,
            };
            match map.insert(&key, &v, BPF_NOEXIST as u64) {
                Ok(()) => true,
                Err(e) if e == -EEXIST => match map.get_ptr_mut(&key) {
                    Some(slot) => {
                        // SAFETY: this CPU's slot.
                        let slot = unsafe { &mut *slot };
                        slot.bytes += p.bytes as u64;
                        slot.packets += segs;
                        true
                    }
                    None => false,
                },
                Err(_) => false,
            }
        }
    };
    if !added {
        ctr.add(C_OVERFLOW_FULL_PACKETS, segs);
        ctr.add(C_OVERFLOW_FULL_BYTES, p.bytes as u64);
    }
    wake(ts, ctr);
    Counted::Yes(core::ptr::null_mut())
}

/// At most one wake-up per CPU per interval: a full map must not turn into an event per packet.
#[inline(always)]
fn wake(ts: u64, ctr: &Ctr) {
    let Some(last) = WAKE_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot.
    let last = unsafe { &mut *last };
    // SAFETY: a load-time constant.
    let interval = unsafe { read_volatile(&DEVOURER_WAKE_INTERVAL_NS) };
    if *last != 0 && ts.wrapping_sub(*last) < interval {
        return;
    }
    *last = ts;
    match WAKEUP.output::<Wakeup>(Wakeup { ts_ns: ts }, 0) {
        Ok(()) => {
            ctr.add(C_WAKEUPS, 1);
            debug!(
                &(),
                "flow map full: packets go to the overflow map; waking the agent"
            );
        }
        Err(_) => {
            ctr.add(C_WAKEUP_FAILED, 1);
            debug!(
                &(),
                "flow map full and the wake-up ring too: the agent evicts at its next scan"
            );
        }
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects programs that could reach a panic; nothing calls this.
    unsafe { core::hint::unreachable_unchecked() }
}
