//! devourer's kernel program: TC ingress/egress and XDP entry points that count every packet in
//! a per-CPU flow map, spill to a small overflow map when it is full, and always pass the packet.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Atomic adds for the benchmark-only shared-map variant (see program.rs).
#![cfg_attr(
    target_arch = "bpf",
    feature(core_intrinsics),
    allow(internal_features)
)]

#[cfg(target_arch = "bpf")]
mod program;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // The program only exists for the bpf target; devourer/build.rs builds it with aya-build.
}
