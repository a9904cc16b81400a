//! Entry points, maps and per-packet accounting. Fails open: every path returns PIPE/PASS.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values go to map helpers by reference: one stack copy for the verifier"
)]

use core::ptr::{read_unaligned, read_volatile};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_PIPE, xdp_action::XDP_PASS},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{TcContext, XdpContext},
};
use devourer_common::flow::{
    C_INSERT_RACE, C_MALFORMED, C_MAP_FULL, C_NON_IP, C_OVERFLOW_FULL_BYTES,
    C_OVERFLOW_FULL_PACKETS, C_PACKETS, C_WAKEUP_FAILED, C_WAKEUPS, COUNTERS_LEN,
    DEFAULT_FLOW_MAP_ENTRIES, DEFAULT_WAKE_INTERVAL_NS, FlowKey, FlowValue, OVERFLOW_MAP_ENTRIES,
    OverflowKey, OverflowValue, VAL_F_ICMP, WAKEUP_RING_BYTES, Wakeup, XdpReplayMeta,
};
use devourer_ebpf::{Packet, Parsed, Skip, parse};

const EEXIST: i32 = 17;

/// 1 when replaying recorded packets through BPF_PROG_TEST_RUN (see devourer-common).
#[unsafe(no_mangle)]
static DEVOURER_OFFLINE: u8 = 0;
#[unsafe(no_mangle)]
static DEVOURER_WAKE_INTERVAL_NS: u64 = DEFAULT_WAKE_INTERVAL_NS;

#[map(name = "FLOWS")]
static FLOWS: PerCpuHashMap<FlowKey, FlowValue> =
    PerCpuHashMap::with_max_entries(DEFAULT_FLOW_MAP_ENTRIES, 0);

#[map(name = "OVERFLOW")]
static OVERFLOW: PerCpuHashMap<OverflowKey, OverflowValue> =
    PerCpuHashMap::with_max_entries(OVERFLOW_MAP_ENTRIES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

#[map(name = "WAKEUP")]
static WAKEUP: RingBuf = RingBuf::with_byte_size(WAKEUP_RING_BYTES, 0);

#[map(name = "WAKE_STATE")]
static WAKE_STATE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn offline() -> bool {
    // SAFETY: a load-time constant; volatile so the compiler does not fold the default.
    unsafe { read_volatile(&DEVOURER_OFFLINE) != 0 }
}

#[inline(always)]
fn count(idx: u32, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU writes it, and programs do not nest on one CPU
        // for these hooks.
        unsafe { *c += n };
    }
}

/// TC accessor: direct packet access for the linear part, `bpf_skb_load_bytes` past it.
struct TcPacket<'a>(&'a TcContext);

impl Packet for TcPacket<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        let start = self.0.data();
        let end = self.0.data_end();
        if start + off + size_of::<T>() <= end {
            // SAFETY: bounds checked against data_end just above.
            Some(unsafe { read_unaligned((start + off) as *const T) })
        } else {
            self.0.load::<T>(off).ok()
        }
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.0.len() as usize
    }
}

/// XDP accessor: the frame (first buffer) is linear.
struct XdpPacket<'a>(&'a XdpContext);

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        let start = self.0.data();
        let end = self.0.data_end();
        if start + off + size_of::<T>() > end {
            return None;
        }
        // SAFETY: bounds checked against data_end just above.
        Some(unsafe { read_unaligned((start + off) as *const T) })
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }
}

#[classifier]
pub fn devourer_tc_ingress(ctx: TcContext) -> i32 {
    tc(&ctx);
    TC_ACT_PIPE
}

#[classifier]
pub fn devourer_tc_egress(ctx: TcContext) -> i32 {
    tc(&ctx);
    TC_ACT_PIPE
}

#[xdp]
pub fn devourer_xdp(ctx: XdpContext) -> u32 {
    xdp(&ctx);
    XDP_PASS
}

#[inline(always)]
fn tc(ctx: &TcContext) {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer the kernel passed in; these __sk_buff fields are readable by
    // sched_cls programs. Every field is read unconditionally at its constant offset (volatile,
    // so LLVM cannot turn two field reads into one load through a selected pointer, which the
    // verifier refuses on the context).
    let (ts, ifindex, vlan_hint, segs) = unsafe {
        let cb0 = read_volatile(&(*skb).cb[0]);
        let dev = read_volatile(&(*skb).ifindex);
        let tstamp = read_volatile(&(*skb).tstamp);
        let vlan_present = read_volatile(&(*skb).vlan_present);
        let vlan_tci = read_volatile(&(*skb).vlan_tci);
        let segs = read_volatile(&(*skb).gso_segs);
        let (ts, ifindex) = if offline() {
            (tstamp, cb0)
        } else {
            (bpf_ktime_get_ns(), dev)
        };
        let vlan = if vlan_present != 0 {
            Some(vlan_tci as u16)
        } else {
            None
        };
        (ts, ifindex, vlan, segs)
    };
    account(&TcPacket(ctx), vlan_hint, ts, ifindex, segs);
}

#[inline(always)]
fn xdp(ctx: &XdpContext) {
    // SAFETY: the context the kernel passed in; read at its constant offset (see `tc`).
    let dev = unsafe { read_volatile(&(*ctx.ctx).ingress_ifindex) };
    let (ts, ifindex) = if offline() {
        let meta = ctx.metadata();
        if meta + size_of::<XdpReplayMeta>() > ctx.data() {
            count(C_PACKETS, 1);
            count(C_MALFORMED, 1);
            return;
        }
        // SAFETY: the metadata area was bounds-checked against data just above.
        let m = unsafe { read_unaligned(meta as *const XdpReplayMeta) };
        (m.ts_ns, m.ifindex)
    } else {
        // SAFETY: plain helper call.
        (unsafe { bpf_ktime_get_ns() }, dev)
    };
    account(&XdpPacket(ctx), None, ts, ifindex, 1);
}

#[inline(always)]
fn account<P: Packet>(p: &P, vlan_hint: Option<u16>, ts: u64, ifindex: u32, gso_segs: u32) {
    count(C_PACKETS, 1);
    match parse(p, vlan_hint) {
        Ok(mut parsed) => {
            let segs = if gso_segs <= 1 { 1 } else { gso_segs as u64 };
            // A GSO/GRO super-packet stands for `segs` packets on the wire, each with its own
            // headers: count the bytes those packets' IP length fields add up to.
            parsed.bytes = parsed
                .bytes
                .saturating_add(((segs - 1) as u32).saturating_mul(parsed.seg_hdr));
            record(&parsed, ts, ifindex, segs);
        }
        Err(Skip::NonIp) => count(C_NON_IP, 1),
        Err(Skip::Malformed) => count(C_MALFORMED, 1),
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
fn record(p: &Parsed, ts: u64, ifindex: u32, segs: u64) {
    let mut key = p.key;
    key.ifindex = ifindex;
    if let Some(v) = FLOWS.get_ptr_mut(&key) {
        // SAFETY: this CPU's slot of the entry; see `count`.
        add(unsafe { &mut *v }, p, ts, segs);
        return;
    }
    let mut fresh = FlowValue::default();
    add(&mut fresh, p, ts, segs);
    match FLOWS.insert(&key, &fresh, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {
            // Another CPU created the entry between our lookup and insert: our slot is zeroed.
            count(C_INSERT_RACE, 1);
            match FLOWS.get_ptr_mut(&key) {
                // SAFETY: as above.
                Some(v) => add(unsafe { &mut *v }, p, ts, segs),
                // Deleted again by the agent in between: account it as overflow, not lost.
                None => overflow(p, ts, ifindex, segs),
            }
        }
        Err(_) => overflow(p, ts, ifindex, segs),
    }
}

/// The flow map is full: aggregate by (ifindex, protocol) and ask the agent to evict early.
#[inline(always)]
fn overflow(p: &Parsed, ts: u64, ifindex: u32, segs: u64) {
    count(C_MAP_FULL, segs);
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
        count(C_OVERFLOW_FULL_PACKETS, segs);
        count(C_OVERFLOW_FULL_BYTES, p.bytes as u64);
    }
    wake(ts);
}

/// At most one wake-up per CPU per interval: a full map must not turn into an event per packet.
#[inline(always)]
fn wake(ts: u64) {
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
        Ok(()) => count(C_WAKEUPS, 1),
        Err(_) => count(C_WAKEUP_FAILED, 1),
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects programs that could reach a panic; nothing calls this.
    unsafe { core::hint::unreachable_unchecked() }
}
