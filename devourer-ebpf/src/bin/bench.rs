//! The benchmarks' object (`devourer-bench`, built only with the `bench` feature): the agent's
//! programs plus do-nothing baselines of the same types and a TC variant that counts into a
//! per-CPU map (a CPU-private slot per entry, every interface counting) instead of the shared
//! one. Never shipped in the agent.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Atomic adds and ors on the shared flow map's values.
#![cfg_attr(
    target_arch = "bpf",
    feature(core_intrinsics),
    allow(internal_features)
)]

#[cfg(target_arch = "bpf")]
#[path = "../access.rs"]
mod access;
#[cfg(target_arch = "bpf")]
#[path = "../drops.rs"]
mod drops;
#[cfg(target_arch = "bpf")]
#[path = "../program.rs"]
mod program;
#[cfg(target_arch = "bpf")]
#[path = "../retransmits.rs"]
mod retransmits;
#[cfg(target_arch = "bpf")]
#[path = "../rtt.rs"]
mod rtt;
#[cfg(target_arch = "bpf")]
#[path = "../tls.rs"]
mod tls;

#[cfg(target_arch = "bpf")]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values go to map helpers by reference: one stack copy for the verifier"
)]
mod baselines {
    use core::ptr::read_volatile;

    use aya_ebpf::{
        bindings::{BPF_NOEXIST, TC_ACT_OK, xdp_action::XDP_PASS},
        helpers::bpf_ktime_get_ns,
        macros::{classifier, map, xdp},
        maps::PerCpuHashMap,
        programs::{TcContext, XdpContext},
    };
    use devourer_common::flow::{FlowKey, FlowValue};
    use devourer_ebpf::{Parsed, zeroed};

    use crate::program::{Counted, Ctr, FlowStore, MapSet, TC_NEXT, add, overflow, tc};

    /// Programs that do nothing: the baselines of the kernel-cost benchmark.
    #[classifier]
    pub fn devourer_empty_tc(_ctx: TcContext) -> i32 {
        TC_NEXT
    }

    #[xdp]
    pub fn devourer_empty_xdp(_ctx: XdpContext) -> u32 {
        XDP_PASS
    }

    /// The cost breakdown of the existing-flow path, each a step further than the one before:
    /// an empty program that reads the clock ...
    #[classifier]
    pub fn devourer_clock_tc(_ctx: TcContext) -> i32 {
        // SAFETY: a helper without arguments.
        let ts = unsafe { bpf_ktime_get_ns() };
        // Used, so that the call stays (never 0 on a running kernel).
        if ts == 0 { TC_ACT_OK } else { TC_NEXT }
    }

    /// ... the agent's program up to a parsed packet (context, counters, scratch, parse,
    /// sampling check), never touching the flow map ...
    #[classifier]
    pub fn devourer_tc_parse(ctx: TcContext) -> i32 {
        tc::<ParseOnly>(&ctx, false);
        TC_NEXT
    }

    /// ... and up to the flow map lookup (the agent's flow map, read only).
    #[classifier]
    pub fn devourer_tc_lookup(ctx: TcContext) -> i32 {
        tc::<LookupOnly>(&ctx, false);
        TC_NEXT
    }

    struct ParseOnly;

    impl FlowStore for ParseOnly {
        #[inline(always)]
        fn record(_: MapSet, _: &Parsed, _: u64, _: u64, _: u32, _: &Ctr) -> Counted {
            Counted::No
        }
    }

    struct LookupOnly;

    impl FlowStore for LookupOnly {
        #[inline(always)]
        fn record(maps: MapSet, p: &Parsed, _: u64, _: u64, _: u32, _: &Ctr) -> Counted {
            if let Some(v) = maps.flows.get_ptr_mut(&p.key) {
                // SAFETY: a live map value; read as the agent's program reads it first.
                let _ = unsafe { read_volatile(&(*v).counted_on) };
            }
            Counted::No
        }
    }

    /// TC ingress counting into the per-CPU map instead of the shared one.
    #[classifier]
    pub fn devourer_tc_percpu(ctx: TcContext) -> i32 {
        tc::<PerCpu>(&ctx, false);
        TC_NEXT
    }

    /// A CPU-private value per entry. One entry unless the benchmark sizes it at load.
    #[map(name = "FLOWS_PERCPU")]
    static FLOWS_PERCPU: PerCpuHashMap<FlowKey, FlowValue> = PerCpuHashMap::with_max_entries(1, 0);

    const EEXIST: i32 = 17;

    /// Plain adds to this CPU's slot, every hook counting (what the agent did before it
    /// counted once per node).
    struct PerCpu;

    impl FlowStore for PerCpu {
        #[inline(always)]
        fn record(maps: MapSet, p: &Parsed, ts: u64, segs: u64, hook: u32, ctr: &Ctr) -> Counted {
            let key = &p.key;
            if let Some(v) = FLOWS_PERCPU.get_ptr_mut(key) {
                // SAFETY: this CPU's slot of a live entry.
                add(unsafe { &mut *v }, p, ts, segs);
                return Counted::Yes(core::ptr::null_mut());
            }
            let mut slot = core::mem::MaybeUninit::<FlowValue>::uninit();
            // SAFETY: all-zero is a valid FlowValue (plain integers).
            let fresh = unsafe { zeroed(&mut slot) };
            add(fresh, p, ts, segs);
            match FLOWS_PERCPU.insert(key, fresh, BPF_NOEXIST as u64) {
                Ok(()) => Counted::Yes(core::ptr::null_mut()),
                Err(e) if e == -EEXIST => match FLOWS_PERCPU.get_ptr_mut(key) {
                    // SAFETY: as above.
                    Some(v) => {
                        add(unsafe { &mut *v }, p, ts, segs);
                        Counted::Yes(core::ptr::null_mut())
                    }
                    None => overflow(maps, p, ts, hook, segs, ctr),
                },
                Err(_) => overflow(maps, p, ts, hook, segs, ctr),
            }
        }
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Only exists for the bpf target; built by devourer/build.rs with the bench-programs feature.
}
