//! The benchmarks' object (`devourer-bench`, built only with the `bench` feature): the agent's
//! programs plus do-nothing baselines of the same types and a TC variant that counts into one
//! shared map with atomic adds instead of the per-CPU one. Never shipped in the agent.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Atomic adds for the shared-map variant.
#![cfg_attr(
    target_arch = "bpf",
    feature(core_intrinsics),
    allow(internal_features)
)]

#[cfg(target_arch = "bpf")]
#[path = "../access.rs"]
mod access;
#[cfg(target_arch = "bpf")]
#[path = "../program.rs"]
mod program;

#[cfg(target_arch = "bpf")]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values go to map helpers by reference: one stack copy for the verifier"
)]
mod baselines {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};

    use aya_ebpf::{
        bindings::{BPF_NOEXIST, xdp_action::XDP_PASS},
        macros::{classifier, map, xdp},
        maps::HashMap,
        programs::{TcContext, XdpContext},
    };
    use devourer_common::flow::{FlowKey, FlowValue};
    use devourer_ebpf::Parsed;

    use crate::program::{Ctr, FlowStore, TC_NEXT, add, overflow, tc};

    /// Programs that do nothing: the baselines of the kernel-cost benchmark.
    #[classifier]
    pub fn devourer_empty_tc(_ctx: TcContext) -> i32 {
        TC_NEXT
    }

    #[xdp]
    pub fn devourer_empty_xdp(_ctx: XdpContext) -> u32 {
        XDP_PASS
    }

    /// TC ingress counting into the shared map instead of the per-CPU one.
    #[classifier]
    pub fn devourer_tc_shared(ctx: TcContext) -> i32 {
        tc::<Shared>(&ctx);
        TC_NEXT
    }

    /// One value per flow for all CPUs. One entry unless the benchmark sizes it at load.
    #[map(name = "FLOWS_SHARED")]
    static FLOWS_SHARED: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(1, 0);

    const EEXIST: i32 = 17;

    /// Counters added atomically; the timestamp and flag updates are plain stores, which a
    /// concurrent update from another CPU may overwrite (good enough to measure the cost).
    struct Shared;

    impl FlowStore for Shared {
        #[inline(always)]
        fn record(p: &Parsed, ts: u64, segs: u64, ctr: &Ctr) {
            let key = &p.key;
            let shared_add = |v: *mut FlowValue| {
                // SAFETY: a live map value; the counters are 8-byte aligned u64 fields.
                unsafe {
                    // BPF_ATOMIC add (the bpf target has no compare-and-swap).
                    atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                        &raw mut (*v).bytes,
                        p.bytes as u64,
                    );
                    atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                        &raw mut (*v).packets,
                        segs,
                    );
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
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Only exists for the bpf target; built by devourer/build.rs with the bench-programs feature.
}
