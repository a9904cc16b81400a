//! What the running kernel can do, probed rather than guessed from its version (distributions
//! backport features): each feature the programs or the agent use that is newer than the floor
//! (5.10), the fallback taken without it, said once at start and exported as
//! `devourer_kernel_feature{feature}`.

use std::os::fd::{AsFd, AsRawFd};

use aya::util::KernelVersion;

use super::sys;

/// The oldest kernel devourer runs on (ring buffers 5.8, batched map reads 5.6, BTF and the
/// `__sk_buff` test-run context well before).
pub const MIN_KERNEL: (u8, u8) = (5, 10);

/// The features newer than [`MIN_KERNEL`] that devourer uses where it finds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Atomic lookup-and-delete of a hash map's entries (5.14): without it, live counting
    /// alternates between two map sets and drains the idle one after an RCU grace period (the
    /// flow maps take twice the memory).
    pub lookup_and_delete: bool,
    /// `bpf_xdp_load_bytes` (5.18): without it, XDP copies DNS and HTTP payloads from the
    /// frame's linear part only.
    pub xdp_load_bytes: bool,
    /// An `xdp_md` context in BPF_PROG_TEST_RUN (5.15), offline XDP replay's clock: without
    /// it, `read --mode xdp` replays with the TC program.
    pub xdp_test_run_ctx: bool,
    /// TCX links (6.6): without them, TC programs attach as netlink clsact filters.
    pub tcx: bool,
    /// A drop reason on the `kfree_skb` tracepoint (5.17), and the drop program attached to
    /// it: without it, records carry no drops (null) and nothing counts them. Set at load.
    pub drop_reason: bool,
    /// The `tcp_retransmit_skb` tracepoint, and the retransmit program attached to it:
    /// without it, records carry no retransmits (null). Set at load.
    pub tcp_retransmits: bool,
}

impl Features {
    /// Every feature, as the metric and the start-up line name it.
    pub fn list(&self) -> [(&'static str, bool); 6] {
        [
            ("lookup_and_delete", self.lookup_and_delete),
            ("xdp_load_bytes", self.xdp_load_bytes),
            ("xdp_test_run_ctx", self.xdp_test_run_ctx),
            ("tcx", self.tcx),
            ("drop_reason", self.drop_reason),
            ("tcp_retransmits", self.tcp_retransmits),
        ]
    }

    /// Probes the running kernel (needs CAP_BPF).
    pub fn probe() -> Self {
        Self {
            lookup_and_delete: probe_lookup_and_delete(),
            xdp_load_bytes: xdp_program(true).is_ok(),
            xdp_test_run_ctx: probe_xdp_test_run_ctx(),
            tcx: KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)),
            drop_reason: false,
            tcp_retransmits: false,
        }
    }

    /// Says once what the kernel lacks and what devourer does instead.
    pub fn log(&self) {
        let missing: Vec<&str> = self
            .list()
            .into_iter()
            // Drops and retransmits are said at load, with the reason.
            .filter(|(name, on)| !on && *name != "drop_reason" && *name != "tcp_retransmits")
            .map(|(name, _)| match name {
                "lookup_and_delete" => {
                    "no atomic lookup-and-delete of hash entries (5.14): counting alternates two map sets (twice the flow maps' memory)"
                }
                "xdp_load_bytes" => {
                    "no bpf_xdp_load_bytes (5.18): XDP copies payloads from the frame's linear part"
                }
                "xdp_test_run_ctx" => {
                    "no XDP test-run context (5.15): read --mode xdp replays with the TC program"
                }
                _ => "no TCX (6.6): TC programs attach as netlink clsact filters",
            })
            .collect();
        if missing.is_empty() {
            tracing::info!("kernel features: all present");
        } else {
            tracing::info!(fallbacks = ?missing, "kernel features");
        }
    }
}

/// Whether BPF_MAP_LOOKUP_AND_DELETE_ELEM works on a hash map.
fn probe_lookup_and_delete() -> bool {
    let Ok(map) = sys::map_create(sys::BPF_MAP_TYPE_HASH, 4, 4, 1, None) else {
        return false;
    };
    let fd = map.as_fd().as_raw_fd();
    let key = 0u32.to_ne_bytes();
    if sys::update(fd, &key, &1u32.to_ne_bytes()).is_err() {
        return false;
    }
    let mut out = [0u8; 4];
    sys::lookup_and_delete(fd, &key, &mut out).is_ok_and(|found| found)
}

/// One BPF instruction: opcode, registers, offset, immediate.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64
        | ((dst | src << 4) as u64) << 8
        | (off as u16 as u64) << 16
        | (imm as u32 as u64) << 32
}

/// An XDP program that returns XDP_PASS, calling `bpf_xdp_load_bytes` first with `call`.
fn xdp_program(call: bool) -> std::io::Result<std::os::fd::OwnedFd> {
    const BPF_FUNC_XDP_LOAD_BYTES: i32 = 189;
    const XDP_PASS: i32 = 2;
    let mut p = Vec::new();
    if call {
        p.extend([
            insn(0xb7, 2, 0, 0, 0),  // r2 = 0 (offset)
            insn(0xbf, 3, 10, 0, 0), // r3 = fp
            insn(0x07, 3, 0, 0, -8), // r3 -= 8 (an 8-byte buffer)
            insn(0xb7, 4, 0, 0, 1),  // r4 = 1 (length)
            insn(0x85, 0, 0, 0, BPF_FUNC_XDP_LOAD_BYTES),
        ]);
    }
    p.extend([insn(0xb7, 0, 0, 0, XDP_PASS), insn(0x95, 0, 0, 0, 0)]);
    sys::prog_load(sys::BPF_PROG_TYPE_XDP, &p)
}

/// Whether BPF_PROG_TEST_RUN takes an `xdp_md` context.
fn probe_xdp_test_run_ctx() -> bool {
    let Ok(prog) = xdp_program(false) else {
        return false;
    };
    let data = [0u8; 64];
    let ctx = sys::xdp_ctx(0, data.len() as u32);
    sys::test_run(prog.as_fd().as_raw_fd(), &data, &ctx).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_encode_as_the_kernel_reads_them() {
        // r3 += -8: BPF_ALU64|BPF_ADD|BPF_K, dst r3, imm -8.
        assert_eq!(insn(0x07, 3, 0, 0, -8), 0xffff_fff8_0000_0307);
        // call 189
        assert_eq!(insn(0x85, 0, 0, 0, 189), 0x0000_00bd_0000_0085);
        // r3 = r10
        assert_eq!(insn(0xbf, 3, 10, 0, 0), 0xa3bf);
    }
}
