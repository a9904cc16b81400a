//! TCP round trips at the counting hook: the handshake's times noted in the flow value (the
//! last bare SYN or first SYN-ACK, and the first ACK without SYN, of each direction), and the
//! kernel's smoothed RTT of the socket behind a flow direction, looked up from TC with
//! `bpf_sk_lookup_tcp` (in the interface's own namespace, or for a veth in its peer's: a pod's
//! sockets live there) and read through `bpf_tcp_sock` (a stable UAPI view: no offsets).
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values go to map helpers by reference: one stack copy for the verifier"
)]

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock_tuple},
    helpers::{bpf_sk_lookup_tcp, bpf_sk_release, bpf_tcp_sock},
    macros::map,
    maps::HashMap,
};
use devourer_common::{
    flow::{C_SRTT_LOOKUPS, C_SRTT_MISSES, FlowKey, FlowValue, KEY_F_IPV6},
    tcp::PEER_NETNS_ENTRIES,
};
use devourer_ebpf::{IPPROTO_TCP, Parsed};

use crate::program::Ctr;

const TCP_SYN: u16 = 0x02;
const TCP_RST: u16 = 0x04;
const TCP_ACK: u16 = 0x10;

/// Samples a flow direction's smoothed RTT at its first packet past each multiple of
/// `1 << DEVOURER_SRTT_SHIFT` ns (0: never; see devourer-common).
#[unsafe(no_mangle)]
static DEVOURER_SRTT_SHIFT: u32 = 0;

/// A veth's peer namespace id, by ifindex (see devourer-common).
#[map(name = "PEER_NETNS")]
static PEER_NETNS: HashMap<u32, u32> = HashMap::with_max_entries(PEER_NETNS_ENTRIES, 0);

/// Notes a TCP packet's part in a handshake in its direction's value (a plain store: CPUs
/// racing on one direction's handshake packet pick one of two close times).
#[inline(always)]
pub fn note_handshake(v: *mut FlowValue, flags: u16, ts: u64) {
    if flags & (TCP_SYN | TCP_ACK) == 0 || flags & TCP_RST != 0 {
        return;
    }
    // SAFETY: a live map value (or the caller's fresh one).
    unsafe {
        if flags & TCP_SYN != 0 {
            // The last SYN (a retransmitted one starts the handshake again) or SYN-ACK (the
            // one that answers the last SYN).
            write_volatile(&raw mut (*v).syn_ns, ts);
        } else if read_volatile(&(*v).ack_ns) == 0 {
            write_volatile(&raw mut (*v).ack_ns, ts);
        }
    }
}

/// Whether a TCP packet about to be counted into `v` at `ts` is due to sample its socket's
/// smoothed RTT: the first past a sampling boundary since the direction's last packet, or the
/// direction's first ACK (the handshake's end, when a short connection's socket has its first
/// RTT). Read before the packet updates `v`.
#[inline(always)]
pub fn srtt_due(v: *const FlowValue, p: &Parsed, ts: u64) -> bool {
    // SAFETY: a load-time constant.
    let shift = unsafe { read_volatile(&DEVOURER_SRTT_SHIFT) };
    let flags = p.tcp_flags;
    if shift == 0 || shift > 63 || p.key.proto != IPPROTO_TCP || flags & (TCP_SYN | TCP_RST) != 0 {
        return false;
    }
    // SAFETY: a live map value.
    let (last, ack) = unsafe { (read_volatile(&(*v).last_ns), read_volatile(&(*v).ack_ns)) };
    (ack == 0 && flags & TCP_ACK != 0) || ts >> shift != last >> shift
}

/// Looks up the socket behind the flow direction `key` counted at `hook` and notes its
/// smoothed RTT in `v`. The socket is the packet's receiver where the packet goes into the
/// namespace looked in (ingress on a device of the host's, egress on a veth towards its pod),
/// else its sender. A function of its own: the lookup's reference is acquired and released
/// here, away from the packet path's verification.
#[inline(never)]
pub fn sample_srtt(skb: *mut __sk_buff, v: *mut FlowValue, key: *const FlowKey, hook: u32) {
    let ifindex = hook >> 1;
    let egress = hook & 1 != 0;
    // SAFETY: a live map value, copied out.
    let peer = unsafe { PEER_NETNS.get(&ifindex) }.copied();
    let inbound = egress == peer.is_some();
    // SAFETY: the caller's key (in this CPU's scratch).
    let k = unsafe { &*key };
    let (src, sport, dst, dport) = if inbound {
        (&k.src_addr, k.src_port, &k.dst_addr, k.dst_port)
    } else {
        (&k.dst_addr, k.dst_port, &k.src_addr, k.src_port)
    };
    // SAFETY: all-zero is a valid tuple (plain integers).
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if k.flags & KEY_F_IPV6 != 0 {
        // SAFETY: writing the union's IPv6 member.
        let t6 = unsafe { &mut t.__bindgen_anon_1.ipv6 };
        for i in 0..4 {
            t6.saddr[i] =
                u32::from_ne_bytes([src[4 * i], src[4 * i + 1], src[4 * i + 2], src[4 * i + 3]]);
            t6.daddr[i] =
                u32::from_ne_bytes([dst[4 * i], dst[4 * i + 1], dst[4 * i + 2], dst[4 * i + 3]]);
        }
        t6.sport = sport.to_be();
        t6.dport = dport.to_be();
        size_of_val(t6)
    } else {
        // SAFETY: writing the union's IPv4 member.
        let t4 = unsafe { &mut t.__bindgen_anon_1.ipv4 };
        t4.saddr = u32::from_ne_bytes([src[12], src[13], src[14], src[15]]);
        t4.daddr = u32::from_ne_bytes([dst[12], dst[13], dst[14], dst[15]]);
        t4.sport = sport.to_be();
        t4.dport = dport.to_be();
        size_of_val(t4)
    };
    // A negative 32-bit id: the interface's own namespace (BPF_F_CURRENT_NETNS).
    let netns = peer.map_or(u32::MAX as u64, |id| id as u64);
    Ctr::add_atomic(C_SRTT_LOOKUPS, 1);
    // SAFETY: the context the kernel passed in, a tuple on the stack of the size given.
    let sk = unsafe { bpf_sk_lookup_tcp(skb.cast(), &mut t, size as u32, netns, 0) };
    if sk.is_null() {
        Ctr::add_atomic(C_SRTT_MISSES, 1);
        return;
    }
    // SAFETY: a socket the lookup returned (released below); bpf_tcp_sock checks it is TCP.
    let tp = unsafe { bpf_tcp_sock(sk) };
    let srtt = if tp.is_null() {
        0
    } else {
        // SAFETY: a bpf_tcp_sock the helper returned, read at its UAPI offset.
        unsafe { read_volatile(&(*tp).srtt_us) >> 3 }
    };
    // SAFETY: the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    if srtt == 0 {
        // A listener, or no RTT measured yet.
        Ctr::add_atomic(C_SRTT_MISSES, 1);
        return;
    }
    // SAFETY: a live map value; plain stores (racing samples pick one of two close values).
    unsafe {
        write_volatile(&raw mut (*v).srtt_last_us, srtt);
        let n = read_volatile(&(*v).srtt_samples);
        write_volatile(&raw mut (*v).srtt_samples, n.wrapping_add(1));
    }
}
