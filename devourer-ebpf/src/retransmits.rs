//! Retransmitted TCP segments: a raw tracepoint on `tcp_retransmit_skb` (arguments `sk, skb`,
//! and from 6.17 an error) adds the segments the retransmitted skb stands for (its
//! `tcp_gso_segs`, what the kernel adds to `TcpRetransSegs`) to the socket's tuple, keyed as
//! the counting program keys the socket's packets; one on `tcp_retransmit_synack` adds a
//! listener's retransmitted SYN-ACKs. The agent takes the map each scan and adds
//! each tuple's segments to its flow. Runs only when the kernel retransmits: nothing on the
//! counting path.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values go to map helpers by reference: one stack copy for the verifier"
)]

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr::read_volatile,
};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_probe_read_kernel,
    macros::{map, raw_tracepoint},
    maps::HashMap,
    programs::RawTracePointContext,
};
use devourer_common::{
    flow::{C_RETRANSMITS, C_RETRANSMITS_MAP_FULL, FlowKey},
    tcp::{RETRANSMITS_ENTRIES, SockOffsets},
};
use devourer_ebpf::{
    Parsed,
    sock::{AF_INET6, End, sock_key},
};

use crate::program::Ctr;

/// Where `sock_common`'s and the segment count's fields are, from the running kernel's BTF
/// (all zero: do nothing).
#[unsafe(no_mangle)]
static DEVOURER_SOCK_OFFSETS: SockOffsets = SockOffsets::ZERO;

#[map(name = "RETRANSMITS")]
static RETRANSMITS: HashMap<FlowKey, u64> = HashMap::with_max_entries(RETRANSMITS_ENTRIES, 0);

/// Reads a `T` at `off` in the kernel object at `base`.
#[inline(always)]
fn field<T: Copy>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn devourer_tcp_retransmit(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    // SAFETY: a load-time constant.
    let off: SockOffsets = unsafe { read_volatile(&DEVOURER_SOCK_OFFSETS) };
    // From 6.17 the tracepoint fires for failed attempts too, with their error.
    if off.err_arg != 0 && ctx.arg::<u64>(2) as i32 != 0 {
        return 0;
    }
    retransmitted(sk, skb, &off);
    0
}

/// A SYN-ACK retransmitted for a connection not yet accepted: arguments `sk, req`, the
/// request socket starting with the `sock_common` of the connection (what the kernel adds to
/// `TcpRetransSegs` too).
#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn devourer_tcp_retransmit_synack(ctx: RawTracePointContext) -> i32 {
    let req: u64 = ctx.arg(1);
    // SAFETY: a load-time constant.
    let off: SockOffsets = unsafe { read_volatile(&DEVOURER_SOCK_OFFSETS) };
    if off.family != 0 && req != 0 {
        add(req, &off, 1);
    }
    0
}

#[inline(always)]
fn retransmitted(sk: u64, skb: u64, off: &SockOffsets) {
    if off.family == 0 || sk == 0 || skb == 0 {
        return;
    }
    // A segment at least: an skb the kernel has not counted segments of yet is one.
    let segs = field::<u16>(skb, off.gso_segs).unwrap_or(1).max(1) as u64;
    add(sk, off, segs);
}

/// Adds `segs` retransmitted segments to the tuple of the socket at `sk`.
#[inline(always)]
fn add(sk: u64, off: &SockOffsets, segs: u64) {
    Ctr::add_atomic(C_RETRANSMITS, segs);
    let mut key = Parsed::EMPTY.key;
    if !socket_key(sk, off, &mut key) {
        return;
    }
    if let Some(v) = RETRANSMITS.get_ptr_mut(&key) {
        // SAFETY: a live map value; programs on other CPUs (and a softirq on this one) may
        // add at the same time.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(v, segs) };
        return;
    }
    match RETRANSMITS.insert(&key, &segs, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(_) => match RETRANSMITS.get_ptr_mut(&key) {
            // Another CPU created it in between.
            // SAFETY: as above.
            Some(v) => {
                unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(v, segs) };
            }
            None => Ctr::add_atomic(C_RETRANSMITS_MAP_FULL, segs),
        },
    }
}

/// Writes the key of the socket's outgoing packets into `key`; false when it cannot be read.
#[inline(always)]
fn socket_key(sk: u64, off: &SockOffsets, key: &mut FlowKey) -> bool {
    let Some(family) = field::<u16>(sk, off.family) else {
        return false;
    };
    let (Some(lport), Some(rport)) = (field::<u16>(sk, off.num), field::<u16>(sk, off.dport))
    else {
        return false;
    };
    let mut local = End {
        v4: field::<u32>(sk, off.rcv_saddr).unwrap_or(0),
        v6: [0; 16],
        port: lport,
    };
    let mut remote = End {
        v4: field::<u32>(sk, off.daddr).unwrap_or(0),
        v6: [0; 16],
        port: u16::from_be(rport),
    };
    if family == AF_INET6 && off.v6_daddr != 0 {
        local.v6 = field(sk, off.v6_rcv_saddr).unwrap_or([0; 16]);
        remote.v6 = field(sk, off.v6_daddr).unwrap_or([0; 16]);
    }
    sock_key(family, &local, &remote, key)
}
