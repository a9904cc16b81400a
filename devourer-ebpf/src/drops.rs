//! Drops with the kernel's reason: a raw tracepoint on `kfree_skb` (its arguments are
//! `skb, location, reason` from 5.17 on; the agent checks the prototype in BTF before it
//! attaches). Each drop is counted by reason, and by flow tuple and reason for the agent to
//! attribute to the flow that counted the packet. Runs only when the kernel frees a packet
//! as dropped: nothing on the counting path.

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr::read_volatile,
};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_probe_read_kernel,
    macros::{map, raw_tracepoint},
    maps::PerCpuHashMap,
    programs::RawTracePointContext,
};
use devourer_common::{
    drop::{DROP_REASONS_ENTRIES, DROPS_MAP_ENTRIES, DropKey, DropValue, SkbOffsets},
    flow::{C_DROP_REASONS_FULL, C_DROPS, C_DROPS_MAP_FULL, C_DROPS_UNKEYED, FlowKey},
};
use devourer_ebpf::{
    Parsed,
    drop::{Mem, drop_key},
};

use crate::program::Ctr;

/// Where `sk_buff`'s fields are, from the running kernel's BTF (all zero: do nothing).
#[unsafe(no_mangle)]
static DEVOURER_SKB_OFFSETS: SkbOffsets = SkbOffsets::ZERO;

#[map(name = "DROPS")]
static DROPS: PerCpuHashMap<DropKey, DropValue> =
    PerCpuHashMap::with_max_entries(DROPS_MAP_ENTRIES, 0);

#[map(name = "DROP_REASONS")]
static DROP_REASONS: PerCpuHashMap<u32, DropValue> =
    PerCpuHashMap::with_max_entries(DROP_REASONS_ENTRIES, 0);

/// Kernel memory from a packet's network header on.
struct Kernel(u64);

impl Mem for Kernel {
    #[inline(always)]
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error.
        unsafe { bpf_probe_read_kernel((self.0 + off as u64) as *const [u8; N]).ok() }
    }
}

/// Reads a `T` at `off` in the object at `base`.
#[inline(always)]
fn field<T: Copy>(base: u64, off: u32) -> Option<T> {
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn devourer_kfree_skb(ctx: RawTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let reason: u64 = ctx.arg(2);
    dropped(skb, reason as u32);
    0
}

/// Adds `v` to `map`'s entry for `key`, creating it; false when the map is full. Atomic adds:
/// on kernels before 6.1 a drop in softirq can run this program on top of a run of it on the
/// same CPU.
#[inline(always)]
fn add<K>(map: &PerCpuHashMap<K, DropValue>, key: &K, v: &DropValue) -> bool {
    if let Some(e) = map.get_ptr_mut(key) {
        // SAFETY: a valid per-CPU value pointer from the map.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*e).packets, v.packets);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*e).bytes, v.bytes);
        }
        return true;
    }
    match map.insert(key, v, BPF_NOEXIST as u64) {
        Ok(()) => true,
        // Raced with this CPU's own earlier insert (not possible) or full.
        Err(_) => false,
    }
}

#[inline(always)]
fn dropped(skb: u64, reason: u32) {
    // SAFETY: a load-time constant.
    let off: SkbOffsets = unsafe { read_volatile(&DEVOURER_SKB_OFFSETS) };
    if off.len == 0 || skb == 0 {
        return;
    }
    let skb_len: u32 = field(skb, off.len).unwrap_or(0);
    // Every byte of the key written before any path reads it (see `drop_key`).
    let mut dk = DropKey {
        key: Parsed::EMPTY.key,
        reason,
    };
    let keyed = key_of(skb, &off, &mut dk.key);
    // IP-layer bytes, as flows count them (the buffer's length where the header states none:
    // a jumbogram, or no IP).
    let ip_len = keyed.unwrap_or(0);
    let v = DropValue {
        packets: 1,
        bytes: if ip_len != 0 { ip_len } else { skb_len } as u64,
    };
    Ctr::bump_atomic(C_DROPS);
    if !add(&DROP_REASONS, &reason, &v) {
        Ctr::bump_atomic(C_DROP_REASONS_FULL);
    }
    if keyed.is_none() {
        Ctr::bump_atomic(C_DROPS_UNKEYED);
        return;
    }
    if !add(&DROPS, &dk, &v) {
        Ctr::bump_atomic(C_DROPS_MAP_FULL);
    }
}

/// Writes the dropped packet's flow key into `key`; its IP length, `None` without one.
#[inline(always)]
fn key_of(skb: u64, off: &SkbOffsets, key: &mut FlowKey) -> Option<u32> {
    let head: u64 = field(skb, off.head)?;
    let nh: u16 = field(skb, off.network_header)?;
    let proto: u16 = field(skb, off.protocol)?;
    if head == 0 || nh == 0xffff {
        return None;
    }
    drop_key(&Kernel(head + nh as u64), u16::from_be(proto), key)
}
