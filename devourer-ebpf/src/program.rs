//! Entry points, maps and per-packet accounting. Fails open: every path returns PIPE/PASS.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values go to map helpers by reference: one stack copy for the verifier"
)]

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr::{read_unaligned, read_volatile},
};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_PIPE, xdp_action::XDP_PASS},
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    macros::{classifier, map, xdp},
    maps::{HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{TcContext, XdpContext},
};
use devourer_common::dns::{
    DEFAULT_HTTP_CAP, DIR_EGRESS, DIR_INGRESS, DNS_CAP_MAX, DNS_F_IPV6, DNS_HEADER_LEN,
    DNS_PORT_SLOTS, DnsScratch,
};
use devourer_common::flow::{
    C_DNS_CUT, C_DNS_EVENTS, C_DNS_RING_FULL, C_HTTP_CUT, C_HTTP_EVENTS, C_HTTP_RING_FULL,
    C_INSERT_RACE, C_MALFORMED, C_MAP_FULL, C_NON_IP, C_OVERFLOW_FULL_BYTES,
    C_OVERFLOW_FULL_PACKETS, C_PACKETS, C_WAKEUP_FAILED, C_WAKEUPS, CounterBlock,
    DEFAULT_FLOW_MAP_ENTRIES, DEFAULT_WAKE_INTERVAL_NS, FlowKey, FlowValue, KEY_F_IPV6,
    OVERFLOW_MAP_ENTRIES, OverflowKey, OverflowValue, VAL_F_ICMP, WAKEUP_RING_BYTES, Wakeup,
    XdpReplayMeta,
};
use devourer_ebpf::{Packet, Parsed, Skip, is_dns, is_http, parse, starts_http};

const EEXIST: i32 = 17;

/// 1 when replaying recorded packets through BPF_PROG_TEST_RUN (see devourer-common).
#[unsafe(no_mangle)]
static DEVOURER_OFFLINE: u8 = 0;
#[unsafe(no_mangle)]
static DEVOURER_WAKE_INTERVAL_NS: u64 = DEFAULT_WAKE_INTERVAL_NS;

/// Ports whose payloads go to the DNS ring (0 = unused slot).
#[unsafe(no_mangle)]
static DEVOURER_DNS_PORTS: [u16; DNS_PORT_SLOTS] = [53, 0, 0, 0, 0, 0, 0, 0];
/// Flags for DNS ring output: 0 (the kernel wakes the reader when it has caught up), or
/// BPF_RB_NO_WAKEUP where the reader polls anyway (offline replay drains after every frame).
#[unsafe(no_mangle)]
static DEVOURER_DNS_RB_FLAGS: u64 = 0;
/// Payload bytes copied per DNS packet (at most DNS_CAP_MAX).
#[unsafe(no_mangle)]
static DEVOURER_DNS_CAP: u32 = DNS_CAP_MAX as u32;
/// TCP ports whose segments that start an HTTP message go to the HTTP ring (all 0: off).
#[unsafe(no_mangle)]
static DEVOURER_HTTP_PORTS: [u16; DNS_PORT_SLOTS] = [0; DNS_PORT_SLOTS];
/// Payload bytes copied per HTTP segment (at most DNS_CAP_MAX).
#[unsafe(no_mangle)]
static DEVOURER_HTTP_CAP: u32 = DEFAULT_HTTP_CAP;

#[map(name = "FLOWS")]
static FLOWS: PerCpuHashMap<FlowKey, FlowValue> =
    PerCpuHashMap::with_max_entries(DEFAULT_FLOW_MAP_ENTRIES, 0);

/// The shared-map alternative (one value per flow, atomic adds), for the benchmark that
/// compares it with the per-CPU map. One entry unless the benchmark sizes it at load.
#[map(name = "FLOWS_SHARED")]
static FLOWS_SHARED: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(1, 0);

#[map(name = "OVERFLOW")]
static OVERFLOW: PerCpuHashMap<OverflowKey, OverflowValue> =
    PerCpuHashMap::with_max_entries(OVERFLOW_MAP_ENTRIES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<CounterBlock> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "WAKEUP")]
static WAKEUP: RingBuf = RingBuf::with_byte_size(WAKEUP_RING_BYTES, 0);

#[map(name = "DNS_EVENTS")]
static DNS_EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map(name = "HTTP_EVENTS")]
static HTTP_EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Where one payload event (DNS or HTTP) is assembled before it is output to its ring.
#[map(name = "DNS_SCRATCH")]
static DNS_SCRATCH: PerCpuArray<DnsScratch> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "WAKE_STATE")]
static WAKE_STATE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn offline() -> bool {
    // SAFETY: a load-time constant; volatile so the compiler does not fold the default.
    unsafe { read_volatile(&DEVOURER_OFFLINE) != 0 }
}

/// This CPU's counters, looked up once per packet.
struct Ctr(*mut CounterBlock);

impl Ctr {
    #[inline(always)]
    fn get() -> Option<Self> {
        COUNTERS.get_ptr_mut(0).map(Ctr)
    }

    #[inline(always)]
    fn add(&self, idx: u32, n: u64) {
        // SAFETY: this CPU's slot; only this CPU writes it and programs do not nest on one CPU
        // for these hooks. The index is one of the C_* constants, below COUNTERS_LEN.
        unsafe { (*self.0).c[idx as usize] += n };
    }
}

/// Copies `len` (1..=DNS_CAP_MAX) bytes at `off` of the packet into `dst`.
trait CopyOut {
    fn copy_out(&self, off: u32, dst: *mut u8, len: u32) -> bool;
}

/// TC accessor: direct packet access for the linear part, `bpf_skb_load_bytes` past it.
struct TcPacket<'a> {
    ctx: &'a TcContext,
    /// This CPU's header scratch (`Scratch::hdr`).
    scratch: *mut [u8; 64],
}

impl CopyOut for TcPacket<'_> {
    #[inline(always)]
    fn copy_out(&self, off: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: dst points at DNS_CAP_MAX writable bytes and len was bounded by the caller.
        unsafe { bpf_skb_load_bytes(self.ctx.skb.skb as *const _, off, dst.cast(), len) == 0 }
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

impl Packet for TcPacket<'_> {
    #[inline(always)]
    fn at<T: Copy>(&self, off: usize) -> Option<*const T> {
        const { assert!(size_of::<T>() <= 64) };
        let start = self.ctx.data();
        let end = self.ctx.data_end();
        if start + off + size_of::<T>() <= end {
            return Some((start + off) as *const T);
        }
        let buf = self.scratch;
        // SAFETY: buf is 64 writable bytes of this CPU's slot; T fits (asserted above).
        let ret = unsafe {
            bpf_skb_load_bytes(
                self.ctx.skb.skb as *const _,
                off as u32,
                buf.cast(),
                size_of::<T>() as u32,
            )
        };
        (ret == 0).then_some(buf.cast::<T>())
    }

    #[inline(always)]
    unsafe fn read<T: Copy>(&self, p: *const T) -> T {
        // SAFETY: see `Packet::read`: a word load; unaligned packet loads are fine on the
        // architectures devourer supports, and scratch memory is aligned.
        unsafe { core::ptr::read(p) }
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.ctx.len() as usize
    }
}

/// XDP accessor: the frame (first buffer) is linear.
struct XdpPacket<'a>(&'a XdpContext);

impl CopyOut for XdpPacket<'_> {
    #[inline(always)]
    fn copy_out(&self, off: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: as for TC; bpf_xdp_load_bytes also reads past the first buffer.
        unsafe { bpf_xdp_load_bytes(self.0.ctx, off, dst.cast(), len) == 0 }
    }
}

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn at<T: Copy>(&self, off: usize) -> Option<*const T> {
        let start = self.0.data();
        let end = self.0.data_end();
        (start + off + size_of::<T>() <= end).then_some((start + off) as *const T)
    }

    #[inline(always)]
    unsafe fn read<T: Copy>(&self, p: *const T) -> T {
        // SAFETY: as for TC.
        unsafe { core::ptr::read(p) }
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }
}

#[classifier]
pub fn devourer_tc_ingress(ctx: TcContext) -> i32 {
    tc::<false>(&ctx, DIR_INGRESS);
    TC_ACT_PIPE
}

#[classifier]
pub fn devourer_tc_egress(ctx: TcContext) -> i32 {
    tc::<false>(&ctx, DIR_EGRESS);
    TC_ACT_PIPE
}

#[xdp]
pub fn devourer_xdp(ctx: XdpContext) -> u32 {
    xdp(&ctx);
    XDP_PASS
}

/// Programs that do nothing: the baselines of the kernel-cost benchmark (never attached by the
/// agent, loaded only by `cargo xtask bench`).
#[classifier]
pub fn devourer_empty_tc(_ctx: TcContext) -> i32 {
    TC_ACT_PIPE
}

#[xdp]
pub fn devourer_empty_xdp(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// TC ingress counting into the shared map instead of the per-CPU one (benchmark only).
#[classifier]
pub fn devourer_tc_shared(ctx: TcContext) -> i32 {
    tc::<true>(&ctx, DIR_INGRESS);
    TC_ACT_PIPE
}

/// `SHARED`: count into the shared map (benchmark) instead of the per-CPU one.
#[inline(always)]
fn tc<const SHARED: bool>(ctx: &TcContext, direction: u8) {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer the kernel passed in; these __sk_buff fields are readable by
    // sched_cls programs. Fields are read with volatile loads at their constant offsets, so
    // LLVM cannot turn two field reads into one load through a selected pointer (which the
    // verifier refuses on the context).
    let (ts, ifindex, vlan_hint, segs) = unsafe {
        // Both interface fields are read whatever the mode (LLVM would otherwise merge the two
        // 32-bit reads into one through a selected offset, which the verifier refuses); only
        // offline replay reads tstamp, whose read carries extra checks.
        let cb0 = read_volatile(&(*skb).cb[0]);
        let dev = read_volatile(&(*skb).ifindex);
        let (ts, ifindex) = if offline() {
            (read_volatile(&(*skb).tstamp), cb0)
        } else {
            (bpf_ktime_get_ns(), dev)
        };
        let vlan_present = read_volatile(&(*skb).vlan_present);
        let vlan_tci = read_volatile(&(*skb).vlan_tci);
        let segs = read_volatile(&(*skb).gso_segs);
        let vlan = if vlan_present != 0 {
            Some(vlan_tci as u16)
        } else {
            None
        };
        (ts, ifindex, vlan, segs)
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
    account::<_, SHARED>(
        &pkt,
        &mut scratch.parsed,
        vlan_hint,
        ts,
        ifindex,
        segs,
        direction,
    );
}

#[inline(always)]
fn xdp(ctx: &XdpContext) {
    // SAFETY: the context the kernel passed in; read at its constant offset (see `tc`).
    let dev = unsafe { read_volatile(&(*ctx.ctx).ingress_ifindex) };
    let (ts, ifindex) = if offline() {
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
        (m.ts_ns, m.ifindex)
    } else {
        // SAFETY: plain helper call.
        (unsafe { bpf_ktime_get_ns() }, dev)
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; see `tc`.
    let parsed = unsafe { &mut (*scratch).parsed };
    account::<_, false>(&XdpPacket(ctx), parsed, None, ts, ifindex, 1, DIR_INGRESS);
}

#[inline(always)]
fn account<P: Packet + CopyOut, const SHARED: bool>(
    p: &P,
    parsed: &mut Parsed,
    vlan_hint: Option<u16>,
    ts: u64,
    ifindex: u32,
    gso_segs: u32,
    direction: u8,
) {
    let Some(ctr) = Ctr::get() else {
        return;
    };
    ctr.add(C_PACKETS, 1);
    match parse(p, vlan_hint, parsed) {
        Ok(()) => {
            // SAFETY: a load-time constant array.
            let ports = unsafe { read_volatile(&DEVOURER_DNS_PORTS) };
            let if_dir = ifindex as u64 | (direction as u64) << 32;
            if is_dns(parsed, &ports) {
                payload_event(p, parsed, ts, if_dir | KIND_DNS, &ctr);
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
                    payload_event(p, parsed, ts, if_dir | KIND_HTTP, &ctr);
                }
            }
            let segs = if gso_segs <= 1 { 1 } else { gso_segs as u64 };
            // A GSO/GRO super-packet stands for `segs` packets on the wire, each with its own
            // headers: count the bytes those packets' IP length fields add up to.
            parsed.bytes = parsed
                .bytes
                .saturating_add(((segs - 1) as u32).saturating_mul(parsed.seg_hdr));
            parsed.key.ifindex = ifindex;
            if SHARED {
                record_shared(parsed, ts, segs, &ctr);
            } else {
                record(parsed, ts, segs, &ctr);
            }
        }
        Err(Skip::NonIp) => ctr.add(C_NON_IP, 1),
        Err(Skip::Malformed) => ctr.add(C_MALFORMED, 1),
    }
}

#[inline(always)]
fn add(v: &mut FlowValue, p: &Parsed, ts: u64, segs: u64) {
    if v.first_ns == 0 || ts < v.first_ns {
        v.first_ns = ts;
    }
    if ts > v.last_ns {
        v.last_ns = ts;
    }
    v.bytes += p.bytes as u64;
    v.packets += segs;
    v.tcp_flags |= p.tcp_flags;
    if p.val_flags & VAL_F_ICMP != 0 && v.flags & VAL_F_ICMP == 0 {
        v.icmp_type = p.icmp_type;
        v.icmp_code = p.icmp_code;
    }
    v.flags |= p.val_flags;
}

#[inline(always)]
fn record(p: &Parsed, ts: u64, segs: u64, ctr: &Ctr) {
    let key = &p.key;
    let ifindex = key.ifindex;
    if let Some(v) = FLOWS.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of the entry; see `count`.
        add(unsafe { &mut *v }, p, ts, segs);
        return;
    }
    let mut fresh = FlowValue::default();
    add(&mut fresh, p, ts, segs);
    match FLOWS.insert(key, &fresh, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {
            // Another CPU created the entry between our lookup and insert: our slot is zeroed.
            ctr.add(C_INSERT_RACE, 1);
            match FLOWS.get_ptr_mut(key) {
                // SAFETY: as above.
                Some(v) => add(unsafe { &mut *v }, p, ts, segs),
                // Deleted again by the agent in between: account it as overflow, not lost.
                None => overflow(p, ts, ifindex, segs, ctr),
            }
        }
        Err(_) => overflow(p, ts, ifindex, segs, ctr),
    }
}

/// [`record`] into the shared map: one value for all CPUs, counters added atomically. For the
/// benchmark only: the timestamp and flag updates are plain stores, which a concurrent update
/// from another CPU may overwrite.
#[inline(always)]
fn record_shared(p: &Parsed, ts: u64, segs: u64, ctr: &Ctr) {
    let key = &p.key;
    let shared_add = |v: *mut FlowValue| {
        // SAFETY: a live map value; the counters are 8-byte aligned u64 fields.
        unsafe {
            // BPF_ATOMIC add (the bpf target has no compare-and-swap, so no AtomicU64 methods).
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                &raw mut (*v).bytes,
                p.bytes as u64,
            );
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).packets, segs);
            if ts > (*v).last_ns {
                (*v).last_ns = ts;
            }
            (*v).tcp_flags |= p.tcp_flags;
            (*v).flags |= p.val_flags;
        }
    };
    if let Some(v) = FLOWS_SHARED.get_ptr_mut(key) {
        shared_add(v);
        return;
    }
    let mut fresh = FlowValue::default();
    add(&mut fresh, p, ts, segs);
    match FLOWS_SHARED.insert(key, &fresh, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => match FLOWS_SHARED.get_ptr_mut(key) {
            Some(v) => shared_add(v),
            None => overflow(p, ts, key.ifindex, segs, ctr),
        },
        Err(_) => overflow(p, ts, key.ifindex, segs, ctr),
    }
}

/// `payload_event`'s kind, in bits 40.. of its `if_dir` argument.
const KIND_DNS: u64 = 0;
const KIND_HTTP: u64 = 1 << 40;

/// Forwards a packet's payload (up to the kind's cap) with its addresses to the DNS or the
/// HTTP ring. A function of its own (a BPF-to-BPF call, at most five arguments, so interface,
/// direction and kind share one): inlined, it would push the packet path's stack frame past
/// 512 bytes.
#[inline(never)]
fn payload_event<P: CopyOut>(p: &P, parsed: &Parsed, ts: u64, if_dir: u64, ctr: &Ctr) {
    let ifindex = if_dir as u32;
    let direction = (if_dir >> 32) as u8;
    let http = if_dir & KIND_HTTP != 0;
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; programs do not nest on one CPU for these hooks.
    let scratch = unsafe { &mut *scratch };
    // SAFETY: load-time constants.
    let cap = unsafe {
        if http {
            read_volatile(&DEVOURER_HTTP_CAP)
        } else {
            read_volatile(&DEVOURER_DNS_CAP)
        }
    }
    .min(DNS_CAP_MAX as u32);
    let len = parsed.payload_len.min(cap);
    if len == 0 || len > DNS_CAP_MAX as u32 {
        return;
    }
    if !p.copy_out(parsed.payload_off, scratch.payload.as_mut_ptr(), len) {
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
    h.tcp_seq = parsed.tcp_seq;
    h.payload_len = parsed.payload_len;
    h.cap_len = len as u16;
    h.proto = k.proto;
    h.direction = direction;
    h.flags = if k.flags & KEY_F_IPV6 != 0 {
        DNS_F_IPV6
    } else {
        0
    };
    h.tcp_flags = parsed.tcp_flags as u8;
    let size = DNS_HEADER_LEN + len as usize;
    // SAFETY: size <= DNS_HEADER_LEN + DNS_CAP_MAX = size_of::<DnsScratch>().
    let bytes =
        unsafe { core::slice::from_raw_parts((scratch as *const DnsScratch).cast::<u8>(), size) };
    // SAFETY: a load-time constant (the same wake-up policy for both rings).
    let flags = unsafe { read_volatile(&DEVOURER_DNS_RB_FLAGS) };
    let (ring, sent, full, cut) = if http {
        (&HTTP_EVENTS, C_HTTP_EVENTS, C_HTTP_RING_FULL, C_HTTP_CUT)
    } else {
        (&DNS_EVENTS, C_DNS_EVENTS, C_DNS_RING_FULL, C_DNS_CUT)
    };
    match ring.output::<[u8]>(bytes, flags) {
        Ok(()) => {
            ctr.add(sent, 1);
            if parsed.payload_len > len {
                ctr.add(cut, 1);
            }
        }
        Err(_) => ctr.add(full, 1),
    }
}

/// The flow map is full: aggregate by (ifindex, protocol) and ask the agent to evict early.
#[inline(always)]
fn overflow(p: &Parsed, ts: u64, ifindex: u32, segs: u64, ctr: &Ctr) {
    ctr.add(C_MAP_FULL, segs);
    let key = OverflowKey {
        ifindex,
        proto: p.key.proto,
        _pad: [0; 3],
    };
    let added = match OVERFLOW.get_ptr_mut(&key) {
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
            match OVERFLOW.insert(&key, &v, BPF_NOEXIST as u64) {
                Ok(()) => true,
                Err(e) if e == -EEXIST => match OVERFLOW.get_ptr_mut(&key) {
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
        Ok(()) => ctr.add(C_WAKEUPS, 1),
        Err(_) => ctr.add(C_WAKEUP_FAILED, 1),
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects programs that could reach a panic; nothing calls this.
    unsafe { core::hint::unreachable_unchecked() }
}
