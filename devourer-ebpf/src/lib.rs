//! Header parsing for the kernel program: Ethernet, VLAN, IPv4, IPv6, TCP, UDP, ICMP to a flow key.
//!
//! Written against the small [`Packet`] trait so the same code runs in the kernel (TC and XDP
//! accessors in `main.rs`) and in host unit tests over byte slices.
#![no_std]

pub mod drop;
pub mod sock;

use devourer_common::{
    flow::{FlowKey, KEY_F_IPV6, VAL_F_ICMP, VAL_F_SYN, VLAN_SEEN},
    tunnel::{IPPROTO_GRE, IPPROTO_IPIP, IPPROTO_IPV6, Tunnel},
};

/// Bounded access to a frame's bytes.
pub trait Packet {
    /// A pointer to `size_of::<T>()` readable bytes at `off` (maybe unaligned); `None` when the
    /// frame is shorter. It stays valid until the next call.
    fn at<T: Copy>(&self, off: usize) -> Option<*const T>;

    /// Copies `size_of::<T>()` bytes at `off`.
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        // SAFETY: `at` returned a pointer to enough readable bytes.
        self.at::<T>(off).map(|p| unsafe { self.read(p) })
    }

    /// Reads through a pointer from [`Packet::at`]. The default copies byte by byte (any
    /// alignment); the kernel accessors read whole words: LLVM splits reads it cannot prove
    /// aligned into single bytes, and the CPUs devourer runs on (x86-64, arm64) load unaligned
    /// words natively, as the verifier allows there.
    ///
    /// # Safety
    /// `p` must come from `at` on this packet, for this `T`.
    #[inline(always)]
    unsafe fn read<T: Copy>(&self, p: *const T) -> T {
        // SAFETY: the caller passes a pointer `at` checked.
        unsafe { core::ptr::read_unaligned(p) }
    }

    /// The packet's length on the wire from its link header on: what its IP length may claim
    /// at most (live TC: `skb->len`, which covers a GSO packet's segments; XDP: the frame;
    /// offline: the record's original length).
    fn frame_len(&self) -> usize;
}

/// Zeroes `slot` a word at a time, with volatile stores, and returns it initialised: LLVM
/// turns adjacent zero stores of a struct into a call to `memset`, which compiler-builtins
/// implements for BPF as a loop over single bytes (a 64-byte value: 64 rounds of it). `T` must
/// be a plain-integer `repr(C)` struct whose size is a multiple of 8 and whose alignment is at
/// least 8.
///
/// # Safety
/// All-zero bytes must be a valid `T`.
#[inline(always)]
pub unsafe fn zeroed<T>(slot: &mut core::mem::MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8) };
    let w = slot.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: within the slot, which is writable and 8-aligned (asserted above).
        unsafe { core::ptr::write_volatile(w.add(i), 0) };
        i += 1;
    }
    // SAFETY: every byte is written, and the caller says all-zero is a valid T.
    unsafe { slot.assume_init_mut() }
}

/// A word of the frame as its bytes in wire order (one load in the kernel).
#[inline(always)]
fn bytes4<P: Packet>(p: &P, off: usize) -> Option<[u8; 4]> {
    p.load::<u32>(off).map(u32::to_ne_bytes)
}

/// What one packet contributes to its flow (the key's `ifindex` is left for the caller).
/// Aligned so the key's addresses can be stored a word at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Parsed {
    pub key: FlowKey,
    /// IP-layer bytes from the IP length field.
    pub bytes: u32,
    /// Network plus transport header bytes: what each extra segment of a GSO/GRO super-packet
    /// adds on the wire (its own IP and TCP/UDP headers).
    pub seg_hdr: u32,
    pub tcp_flags: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// `VAL_F_*` bits for the flow value.
    pub val_flags: u8,
    /// The outer VLAN tag, or'd with `VLAN_SEEN` (0: untagged).
    pub vlan: u16,
    /// Where the TCP/UDP payload starts in the frame, and how long the IP lengths say it is
    /// (0 when there is no transport header).
    pub payload_off: u32,
    pub payload_len: u32,
    /// TCP sequence number (0 for other protocols).
    pub tcp_seq: u32,
    /// What tells packets of a flow apart besides `tcp_seq` and length, the same at every hook
    /// (NAT leaves it): the IPv4 identification or the IPv6 flow label, mixed with the TCP
    /// acknowledgement number, or the ICMP header's second word (an echo's id and sequence),
    /// or the UDP length and checksum (pure ACKs, pings and datagrams of one size under IPv6,
    /// or from sockets that leave the IPv4 id 0, would otherwise all hash alike).
    pub ident: u32,
}

/// Why a frame is not part of any flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    NonIp,
    /// Truncated or inconsistent headers.
    Malformed,
}

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
const ETH_HLEN: usize = 14;
/// IPv6 extension headers walked before giving up on finding the transport header.
pub const MAX_IPV6_EXT: usize = 8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_DCCP: u8 = 33;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_UDPLITE: u8 = 136;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[inline(always)]
const fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Stores 16 address bytes given as four words in wire order (aligned stores: a `FlowKey`
/// is 4-aligned and its addresses sit at offsets 0 and 16).
#[inline(always)]
fn set_addr(dst: &mut [u8; 16], words: [u32; 4]) {
    // SAFETY: [u8; 16] and [u32; 4] have the same size; the address fields of a FlowKey are
    // 4-aligned.
    unsafe { *(dst.as_mut_ptr().cast::<[u32; 4]>()) = words };
}

/// `::ffff:a.b.c.d` from the IPv4 address word.
#[inline(always)]
fn v4_mapped(addr: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), addr]
}

#[cfg(test)]
pub(crate) fn v4_mapped_bytes(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

impl Parsed {
    pub const EMPTY: Self = Self {
        key: FlowKey {
            src_addr: [0; 16],
            dst_addr: [0; 16],
            src_port: 0,
            dst_port: 0,
            ifindex: 0,
            _pad: 0,
            proto: 0,
            flags: 0,
        },
        bytes: 0,
        seg_hdr: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        val_flags: 0,
        vlan: 0,
        payload_off: 0,
        payload_len: 0,
        tcp_seq: 0,
        ident: 0,
    };
}

/// Parses one frame starting at its Ethernet header into `out`. `vlan_hint` is the tag the
/// kernel already removed from the frame (TC's `skb->vlan_tci`); it is the outer tag when
/// present.
///
/// `out` is written in place, every field of it (no zeroing pass: a 72-byte memset is a call
/// in BPF): in the kernel it lives in a per-CPU map slot, because LLVM keeps a local struct of
/// this size as one register per byte and spills them past the 512-byte stack.
#[inline(always)]
pub fn parse<P: Packet>(p: &P, vlan_hint: Option<u16>, out: &mut Parsed) -> Result<(), Skip> {
    let (mut vlan, mut tagged) = match vlan_hint {
        Some(tci) => (tci & 0x0fff, 1u16),
        None => (0, 0),
    };
    let mut ethertype = be16(p.load::<[u8; 2]>(12).ok_or(Skip::Malformed)?);
    let mut off = ETH_HLEN;
    // Up to two tags (802.1Q, or QinQ: 802.1ad outer + 802.1Q inner) in the frame itself.
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let tag = bytes4(p, off).ok_or(Skip::Malformed)?;
            if tagged == 0 {
                vlan = be16([tag[0], tag[1]]) & 0x0fff;
                tagged = 1;
            }
            ethertype = be16([tag[2], tag[3]]);
            off += 4;
        }
    }
    // Without a branch (each would double the verifier's walk of the rest): bit 15 is
    // `VLAN_SEEN`.
    const _: () = assert!(VLAN_SEEN == 1 << 15);
    reset(out, vlan | tagged << 15);
    match ethertype {
        ETH_P_IP => parse_ipv4(p, off, out),
        ETH_P_IPV6 => parse_ipv6(p, off, out),
        _ => Err(Skip::NonIp),
    }
}

/// Parses one packet of an L3 device (a tun, WireGuard, IPIP, SIT or GRE device: no link
/// header) starting at its IP header, told apart by its version.
#[inline(always)]
pub fn parse_l3<P: Packet>(p: &P, out: &mut Parsed) -> Result<(), Skip> {
    // The smallest IP header, not one byte: the verifier learns nothing from a bounds check
    // at offset 0 (LLVM makes `data + 1 <= end` into `data < end`).
    let version = p.load::<[u8; 20]>(0).ok_or(Skip::Malformed)?[0] >> 4;
    reset(out, 0);
    match version {
        4 => parse_ipv4(p, 0, out),
        6 => parse_ipv6(p, 0, out),
        _ => Err(Skip::NonIp),
    }
}

/// Clears what a parse fills in only for some packets, and sets the packet's VLAN.
#[inline(always)]
fn reset(out: &mut Parsed, vlan: u16) {
    out.vlan = vlan;
    out.key._pad = 0;
    out.key.flags = 0;
    out.key.src_port = 0;
    out.key.dst_port = 0;
    // Two of these five adjacent zero stores volatile: LLVM would merge them into a call to
    // `memset`, which compiler-builtins implements for BPF as a loop over single bytes.
    // SAFETY: plain stores to fields of `out`.
    unsafe {
        core::ptr::write_volatile(&mut out.seg_hdr, 0);
        core::ptr::write_volatile(&mut out.tcp_flags, 0);
    }
    out.icmp_code = 0;
    out.val_flags = 0;
    out.payload_off = 0;
    out.payload_len = 0;
    out.tcp_seq = 0;
}

/// The hash `--sampling` decides by (the program keeps one in N by it): each 64-bit word of the packet's identity mixed in with the
/// finalizer of MurmurHash3 (every input bit moves every output bit), keyed by the seed.
#[inline(always)]
pub fn sample_hash(p: &Parsed, seed: u64) -> u64 {
    let k = &p.key;
    // The low words: all of an IPv4 address (v4-mapped), an IPv6 address's interface part.
    let low = |a: &[u8; 16]| {
        u64::from(u32::from_ne_bytes([a[12], a[13], a[14], a[15]]))
            ^ u64::from(u32::from_ne_bytes([a[4], a[5], a[6], a[7]])) << 32
    };
    let words = [
        low(&k.src_addr) ^ low(&k.dst_addr).rotate_left(29),
        ((k.src_port as u64) << 48 | (k.dst_port as u64) << 32 | (k.proto as u64) << 24)
            ^ p.bytes as u64,
        (p.ident as u64) << 32 | p.tcp_seq as u64,
    ];
    let mut h = seed;
    for w in words {
        h ^= w;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
    }
    h
}

#[inline(always)]
fn parse_ipv4<P: Packet>(p: &P, off: usize, out: &mut Parsed) -> Result<(), Skip> {
    // version/IHL, TOS, total length | id, fragment | TTL, protocol, checksum | src | dst
    let w0 = bytes4(p, off).ok_or(Skip::Malformed)?;
    let w1 = bytes4(p, off + 4).ok_or(Skip::Malformed)?;
    let w2 = bytes4(p, off + 8).ok_or(Skip::Malformed)?;
    let src = p.load::<u32>(off + 12).ok_or(Skip::Malformed)?;
    let dst = p.load::<u32>(off + 16).ok_or(Skip::Malformed)?;
    if w0[0] >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let ihl = ((w0[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Skip::Malformed);
    }
    let tot_len = be16([w0[2], w0[3]]) as usize;
    // What the packet carried past the link header: an IP length may not claim more (the
    // kernel's IP layer drops such packets; counting them would let a sender write any byte
    // count into a record).
    let room = p.frame_len().saturating_sub(off);
    out.bytes = if tot_len == 0 {
        // TSO/BIG TCP super-packets may carry 0: the frame is the only length there is.
        room as u32
    } else if tot_len < ihl || tot_len > room {
        return Err(Skip::Malformed);
    } else {
        tot_len as u32
    };
    set_addr(&mut out.key.src_addr, v4_mapped(src));
    set_addr(&mut out.key.dst_addr, v4_mapped(dst));
    out.key.proto = w2[1];
    out.ident = be16([w1[0], w1[1]]) as u32;
    out.seg_hdr = ihl as u32;
    if be16([w1[2], w1[3]]) & 0x1fff != 0 {
        // Non-first fragment: no transport header; counted with ports 0.
        return Ok(());
    }
    let ip_end = off + out.bytes as usize;
    parse_l4(p, off + ihl, ip_end, false, out)
}

#[inline(always)]
fn parse_ipv6<P: Packet>(p: &P, off: usize, out: &mut Parsed) -> Result<(), Skip> {
    // version/class/flow | payload length, next header, hop limit | src (4 words) | dst
    let w0 = bytes4(p, off).ok_or(Skip::Malformed)?;
    let w1 = bytes4(p, off + 4).ok_or(Skip::Malformed)?;
    let mut src = [0u32; 4];
    let mut dst = [0u32; 4];
    for i in 0..4 {
        src[i] = p.load::<u32>(off + 8 + 4 * i).ok_or(Skip::Malformed)?;
        dst[i] = p.load::<u32>(off + 24 + 4 * i).ok_or(Skip::Malformed)?;
    }
    if w0[0] >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    let payload = be16([w1[0], w1[1]]) as usize;
    // As for IPv4: no more than the packet carried.
    let room = p.frame_len().saturating_sub(off);
    out.bytes = if payload == 0 {
        // Jumbogram / BIG TCP: the payload length lives elsewhere; use the frame.
        room as u32
    } else if payload + 40 > room {
        return Err(Skip::Malformed);
    } else {
        (payload + 40) as u32
    };
    set_addr(&mut out.key.src_addr, src);
    set_addr(&mut out.key.dst_addr, dst);
    out.key.flags |= KEY_F_IPV6;
    out.ident = u32::from_be_bytes(w0) & 0x000f_ffff;
    let mut next = w1[2];
    let mut l4 = off + 40;
    let mut walked_all = true;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6.
            0 | 43 | 60 | 135 | 139 | 140 => {
                let e: [u8; 2] = p.load(l4).ok_or(Skip::Malformed)?;
                next = e[0];
                l4 += (e[1] as usize + 1) * 8;
            }
            // Fragment header.
            44 => {
                let f = bytes4(p, l4).ok_or(Skip::Malformed)?;
                next = f[0];
                l4 += 8;
                if be16([f[2], f[3]]) >> 3 != 0 {
                    out.key.proto = next;
                    out.seg_hdr = (l4 - off) as u32;
                    return Ok(());
                }
            }
            // Authentication header: length in 4-byte units, minus 2.
            51 => {
                let e: [u8; 2] = p.load(l4).ok_or(Skip::Malformed)?;
                next = e[0];
                l4 += (e[1] as usize + 2) * 4;
            }
            _ => {
                walked_all = false;
                break;
            }
        }
    }
    out.key.proto = next;
    out.seg_hdr = (l4 - off) as u32;
    if walked_all {
        // More extension headers than we walk: counted, with ports 0.
        return Ok(());
    }
    let ip_end = off + out.bytes as usize;
    parse_l4(p, l4, ip_end, true, out)
}

#[inline(always)]
fn parse_l4<P: Packet>(
    p: &P,
    off: usize,
    ip_end: usize,
    v6: bool,
    out: &mut Parsed,
) -> Result<(), Skip> {
    match out.key.proto {
        IPPROTO_TCP => {
            // ports | sequence | ack | offset, flags, window
            let ports = bytes4(p, off).ok_or(Skip::Malformed)?;
            let seq = bytes4(p, off + 4).ok_or(Skip::Malformed)?;
            let ack = bytes4(p, off + 8).ok_or(Skip::Malformed)?;
            let w3 = bytes4(p, off + 12).ok_or(Skip::Malformed)?;
            out.ident ^= u32::from_be_bytes(ack).rotate_left(12);
            let t = [w3[0], w3[1]];
            out.key.src_port = be16([ports[0], ports[1]]);
            out.key.dst_port = be16([ports[2], ports[3]]);
            out.tcp_seq = u32::from_be_bytes(seq);
            let doff = ((t[0] >> 4) as usize) * 4;
            out.seg_hdr += doff as u32;
            if doff >= 20 {
                payload(off + doff, ip_end, out);
            }
            let flags = t[1];
            out.tcp_flags = flags as u16 | (((t[0] & 1) as u16) << 8);
            if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
                out.val_flags |= VAL_F_SYN;
            }
        }
        IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP | IPPROTO_DCCP => {
            let u = bytes4(p, off).ok_or(Skip::Malformed)?;
            out.key.src_port = be16([u[0], u[1]]);
            out.key.dst_port = be16([u[2], u[3]]);
            if let Some(w) = bytes4(p, off + 4) {
                out.ident ^= u32::from_be_bytes(w).rotate_left(12);
            }
            if out.key.proto == IPPROTO_UDP {
                out.seg_hdr += 8;
                payload(off + 8, ip_end, out);
            }
        }
        IPPROTO_ICMP if !v6 => icmp(p, off, out)?,
        IPPROTO_ICMPV6 if v6 => icmp(p, off, out)?,
        // Tunnels: where the inner headers start, for GSO (see `gso_segments`).
        IPPROTO_IPIP | IPPROTO_IPV6 | IPPROTO_GRE => payload(off, ip_end, out),
        _ => {}
    }
    Ok(())
}

/// The packets on the wire a parsed (GSO or GRO super-)packet stands for, given the kernel's
/// `gso_segs` and `gso_size`; adds to `out.bytes` the headers each segment past the first
/// carries on the wire. A packet from a virtio NIC or a tun device (`SKB_GSO_DODGY`) comes
/// with `gso_segs` 0: its segments are its payload past every header over `gso_size`.
#[inline(always)]
pub fn gso_segments<P: Packet>(p: &P, out: &mut Parsed, gso_segs: u32, gso_size: u32) -> u32 {
    if gso_segs <= 1 && gso_size == 0 {
        return 1;
    }
    let hdr = out.seg_hdr + tunnel_headers(p, out);
    let segs = if gso_segs > 1 {
        gso_segs
    } else if gso_segs == 0 {
        out.bytes.saturating_sub(hdr).div_ceil(gso_size).max(1)
    } else {
        1
    };
    out.bytes = out.bytes.saturating_add((segs - 1).saturating_mul(hdr));
    segs
}

/// Past this, an outer payload offset is not looked into (it bounds the verifier's offsets).
const MAX_OUTER_HEADERS: u32 = 1023;
/// GRE and Geneve's protocol type of an inner Ethernet frame (transparent bridging).
const ETH_P_TEB: u16 = 0x6558;

/// The header bytes a tunnel's outer payload repeats in each GSO segment (its own header, an
/// inner Ethernet header, the inner IP and transport headers): 0 for no tunnel, WireGuard
/// (encrypted: GSO ends at its device) and what cannot be read.
#[inline(always)]
pub fn tunnel_headers<P: Packet>(p: &P, out: &Parsed) -> u32 {
    let k = &out.key;
    let Some(t) = Tunnel::of(k.proto, k.src_port, k.dst_port) else {
        return 0;
    };
    // No early return for a longer offset: after a comparison the compiler drops the mask,
    // and older verifiers (6.1) then lose the offset's bound and refuse the packet read. The
    // mask stays; what a longer offset would read is discarded instead.
    let off = (out.payload_off & MAX_OUTER_HEADERS) as usize;
    let within = u32::from(out.payload_off <= MAX_OUTER_HEADERS);
    inner_headers(p, t, k.proto, off).map_or(0, |end| (end - off) as u32) * within
}

/// Where the inner transport payload of tunnel `t` starts, its outer payload at `off`.
#[inline(always)]
fn inner_headers<P: Packet>(p: &P, t: Tunnel, proto: u8, off: usize) -> Option<usize> {
    let (mut at, mut inner) = match t {
        Tunnel::Ipip if proto == IPPROTO_IPIP => (off, ETH_P_IP),
        Tunnel::Ipip => (off, ETH_P_IPV6),
        Tunnel::Gre => {
            let h = bytes4(p, off)?;
            // Checksum, key and sequence number: four bytes each when flagged.
            let opts = (h[0] >> 7 & 1) + (h[0] >> 5 & 1) + (h[0] >> 4 & 1);
            (off + 4 + 4 * opts as usize, be16([h[2], h[3]]))
        }
        Tunnel::Vxlan => (off + 8, ETH_P_TEB),
        Tunnel::Geneve => {
            let h = bytes4(p, off)?;
            (off + 8 + 4 * (h[0] & 0x3f) as usize, be16([h[2], h[3]]))
        }
        Tunnel::Wireguard => return None,
    };
    if inner == ETH_P_TEB {
        inner = be16(p.load::<[u8; 2]>(at + 12)?);
        at += ETH_HLEN;
    }
    let (l4, proto) = match inner {
        ETH_P_IP => {
            let h = bytes4(p, at)?;
            let w2 = bytes4(p, at + 8)?;
            (at + 4 * (h[0] & 0x0f) as usize, w2[1])
        }
        ETH_P_IPV6 => {
            let w1 = bytes4(p, at + 4)?;
            (at + 40, w1[2])
        }
        _ => return None,
    };
    Some(match proto {
        IPPROTO_TCP => l4 + 4 * (bytes4(p, l4 + 12)?[0] >> 4) as usize,
        IPPROTO_UDP => l4 + 8,
        _ => l4,
    })
}

#[inline(always)]
fn payload(start: usize, ip_end: usize, out: &mut Parsed) {
    out.payload_off = start as u32;
    out.payload_len = ip_end.saturating_sub(start) as u32;
}

/// Whether this packet's payload goes to the DNS ring: TCP or UDP with payload, from or to one
/// of `ports` (0 marks an unused slot).
#[inline(always)]
pub fn is_dns(p: &Parsed, ports: &[u16]) -> bool {
    if p.payload_len == 0 || (p.key.proto != IPPROTO_UDP && p.key.proto != IPPROTO_TCP) {
        return false;
    }
    let mut hit = false;
    for &port in ports {
        hit |= port != 0 && (port == p.key.src_port || port == p.key.dst_port);
    }
    hit
}

/// Whether this packet's payload may go to the HTTP ring: TCP with payload, from or to one of
/// `ports` (0 marks an unused slot; all 0 turns HTTP off).
#[inline(always)]
pub fn is_http(p: &Parsed, ports: &[u16]) -> bool {
    // Slots fill from the first: an empty first slot means HTTP is off (one compare per packet).
    if ports.first().is_none_or(|&p| p == 0) || p.payload_len == 0 || p.key.proto != IPPROTO_TCP {
        return false;
    }
    let mut hit = false;
    for &port in ports {
        hit |= port != 0 && (port == p.key.src_port || port == p.key.dst_port);
    }
    hit
}

/// Whether a TCP payload starting with these four bytes can start an HTTP/1 message: a status
/// line (`HTTP/1.1 200`) or a request line with a method RFC 9110 defines. Body segments of a
/// download fail this and never reach userspace, which parses only the first segment of each
/// message anyway.
#[inline(always)]
pub fn starts_http(first: [u8; 4]) -> bool {
    // One 32-bit compare each (a byte-string match could become a memcmp call, which BPF lacks).
    const fn w(b: &[u8; 4]) -> u32 {
        u32::from_be_bytes(*b)
    }
    const STARTS: [u32; 10] = [
        w(b"HTTP"),
        w(b"GET "),
        w(b"POST"),
        w(b"PUT "),
        w(b"HEAD"),
        w(b"DELE"),
        w(b"OPTI"),
        w(b"PATC"),
        w(b"CONN"),
        w(b"TRAC"),
    ];
    let v = u32::from_be_bytes(first);
    let mut hit = false;
    for s in STARTS {
        hit |= v == s;
    }
    hit
}

#[inline(always)]
fn icmp<P: Packet>(p: &P, off: usize, out: &mut Parsed) -> Result<(), Skip> {
    let t: [u8; 2] = p.load(off).ok_or(Skip::Malformed)?;
    out.icmp_type = t[0];
    out.icmp_code = t[1];
    out.val_flags |= VAL_F_ICMP;
    if let Some(w) = bytes4(p, off + 4) {
        out.ident ^= u32::from_be_bytes(w).rotate_left(12);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
