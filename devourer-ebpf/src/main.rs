//! devourer's kernel program, the object the agent embeds: TC ingress/egress and XDP entry
//! points that count every packet once per node in a shared flow map, spill to a small
//! overflow map when it is full, and always pass the packet. Benchmark-only programs live in
//! `bin/bench.rs`.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Atomic adds and ors on the shared flow map's values.
#![cfg_attr(
    target_arch = "bpf",
    feature(core_intrinsics),
    allow(internal_features)
)]

#[cfg(target_arch = "bpf")]
mod access;
#[cfg(target_arch = "bpf")]
mod drops;
#[cfg(target_arch = "bpf")]
mod program;
#[cfg(target_arch = "bpf")]
mod retransmits;
#[cfg(target_arch = "bpf")]
mod rtt;
#[cfg(target_arch = "bpf")]
mod tls;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // The program only exists for the bpf target; devourer/build.rs builds it with aya-build.
}
