//! Kernel-facing: the embedded program loaded with its settings ([`object`]), attached to
//! interfaces ([`attach`], [`interfaces`]) or fed recorded frames ([`replay`]); its maps read
//! and evicted ([`maps`], through raw `bpf(2)` calls in [`sys`]), alternately where the kernel
//! cannot take entries out of a live map ([`sets`]); its payload rings ([`events`]) and its own
//! log ([`log`]); conntrack's NAT entries ([`conntrack`]); what the kernel can do
//! ([`features`]); the packets it drops, with its reasons ([`drops`], read from its BTF with
//! [`btf`]).

pub mod attach;
pub mod btf;
pub mod conntrack;
pub mod drops;
pub mod events;
pub mod features;
pub mod interfaces;
pub mod log;
pub mod maps;
pub mod netns;
pub mod object;
pub mod replay;
pub mod sets;
pub mod sys;
pub mod tcp;
