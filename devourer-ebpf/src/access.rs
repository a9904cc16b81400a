//! Packet accessors for the kernel program: TC (direct access to the linear part,
//! `bpf_skb_load_bytes` past it) and XDP (linear first buffer), behind the parser's `Packet`
//! trait and [`CopyOut`] for payload copies.

use core::ptr::read_volatile;

use aya_ebpf::{
    helpers::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use devourer_common::{
    flow::{CB_WIRE_LEN, FlowKey, FlowValue, XdpReplayMeta},
    payload::PAYLOAD_CAP_MAX,
};
use devourer_ebpf::Packet;

use crate::program::{offline, xdp_load_bytes};

/// What the counting program does with a packet besides parsing it: copies `len`
/// (1..=PAYLOAD_CAP_MAX) bytes at `off` into `dst`, and samples the smoothed RTT of the socket
/// behind a flow direction (TC alone can look sockets up).
pub trait CopyOut {
    fn copy_out(&self, off: u32, dst: *mut u8, len: u32) -> bool;

    /// Events a TLS handshake segment may be forwarded in at most: 0 where handshakes are not
    /// looked at, 1 where a packet is one frame, more for a super-packet.
    fn tls_chunks(&self) -> u32 {
        4
    }

    fn sample_srtt(&self, _v: *mut FlowValue, _key: &FlowKey, _hook: u32) {}
}

/// TC accessor: direct packet access for the linear part, `bpf_skb_load_bytes` past it.
pub struct TcPacket<'a> {
    pub ctx: &'a TcContext,
    /// This CPU's header scratch (`Scratch::hdr`).
    pub scratch: *mut [u8; 64],
}

impl CopyOut for TcPacket<'_> {
    #[inline(always)]
    fn copy_out(&self, off: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: dst points at PAYLOAD_CAP_MAX writable bytes and len was bounded by the caller.
        unsafe { bpf_skb_load_bytes(self.ctx.skb.skb as *const _, off, dst.cast(), len) == 0 }
    }

    #[inline(always)]
    fn sample_srtt(&self, v: *mut FlowValue, key: &FlowKey, hook: u32) {
        crate::rtt::sample_srtt(self.ctx.skb.skb, v, key, hook);
    }
}

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

    /// `skb->len`: the frame with its GSO segments. Replayed frames may be cut: their length
    /// on the wire travels in `cb[CB_WIRE_LEN]`.
    #[inline(always)]
    fn frame_len(&self) -> usize {
        if offline() {
            // SAFETY: the context the kernel passed in; cb is readable by sched_cls programs.
            let wire = unsafe { read_volatile(&(*self.ctx.skb.skb).cb[CB_WIRE_LEN]) };
            if wire != 0 {
                return wire as usize;
            }
        }
        self.ctx.len() as usize
    }
}

/// XDP accessor: the frame (first buffer) is linear.
pub struct XdpPacket<'a>(pub &'a XdpContext);

impl CopyOut for XdpPacket<'_> {
    #[inline(always)]
    fn copy_out(&self, off: u32, dst: *mut u8, len: u32) -> bool {
        if xdp_load_bytes() {
            // SAFETY: as for TC; bpf_xdp_load_bytes also reads past the first buffer.
            unsafe { bpf_xdp_load_bytes(self.0.ctx, off, dst.cast(), len) == 0 }
        } else {
            copy_linear(self.0, off, dst, len)
        }
    }

    /// One event per frame; none where the kernel has no `bpf_xdp_load_bytes` (before 5.18):
    /// each copy would walk [`copy_linear`]'s loop again, past what 5.10's verifier accepts.
    /// TLS still reaches the agent from the TC hooks (egress, and ingress in TC mode).
    #[inline(always)]
    fn tls_chunks(&self) -> u32 {
        if xdp_load_bytes() { 1 } else { 0 }
    }
}

/// The highest payload offset [`copy_linear`] copies from (the verifier needs a bound on a
/// packet pointer's variable offset).
const LINEAR_OFF_MAX: u32 = 0xe000;

/// Copies `len` (1..=PAYLOAD_CAP_MAX) bytes at `off` of the frame's linear part into `dst`, a
/// byte at a time, each checked against the frame's end: what XDP does where the kernel has no
/// `bpf_xdp_load_bytes` (before 5.18). A function of its own, so the verifier walks its loop
/// once per call site.
#[inline(never)]
fn copy_linear(ctx: &XdpContext, off: u32, dst: *mut u8, len: u32) -> bool {
    if off > LINEAR_OFF_MAX {
        return false;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    let mut i: u32 = 0;
    while i < PAYLOAD_CAP_MAX as u32 {
        if i >= len {
            return true;
        }
        let p = start + off as usize + i as usize;
        // Compared as `p + 1 > end` (which gives the verifier one readable byte at `p`): read
        // back through a volatile, so LLVM cannot rewrite it as `p >= end`, which 5.10's
        // verifier learns no range from.
        let past = p + 1;
        // SAFETY: a read of a local.
        if unsafe { read_volatile(&past) } > end {
            return false;
        }
        // SAFETY: `p` is within the frame (checked just above); `dst` has PAYLOAD_CAP_MAX
        // writable bytes and `i` is below that.
        unsafe { *dst.add(i as usize) = *(p as *const u8) };
        i += 1;
    }
    true
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

    /// As for TC; offline, the length on the wire travels in the replay metadata.
    #[inline(always)]
    fn frame_len(&self) -> usize {
        if offline() {
            let meta = self.0.metadata();
            if meta + size_of::<XdpReplayMeta>() <= self.0.data() {
                // SAFETY: the metadata area was bounds-checked against data just above.
                let m = unsafe { core::ptr::read_unaligned(meta as *const XdpReplayMeta) };
                if m.wire_len != 0 {
                    return m.wire_len as usize;
                }
            }
        }
        self.0.data_end() - self.0.data()
    }
}
