//! TLS handshakes on any TCP port: which counted payloads of a flow direction go to the TLS
//! ring. A segment that starts a handshake record holding a ClientHello, and every segment
//! that starts before the end of that hello's message (its records, at most 16 KiB of the
//! stream, whatever order they come in, within the direction's first packets), or one holding
//! a ServerHello, while the direction's entry is young; nothing else, so a bulk transfer costs
//! one compare a packet.

use core::ptr::{read_volatile, write_volatile};

use devourer_common::{
    flow::{C_TLS_CUT, FlowValue},
    payload::{
        PAYLOAD_CAP_MAX, TLS_EARLY_PACKETS, TLS_HELLO_PACKETS, TLS_STREAM_MAX, hello_stream_len,
    },
};
use devourer_ebpf::Parsed;

use crate::{
    access::CopyOut,
    program::{Ctr, KIND_TLS, payload_event},
};

/// TLS record content type of a handshake.
const HANDSHAKE: u8 = 0x16;
/// Handshake message types.
const CLIENT_HELLO: u8 = 1;
const SERVER_HELLO: u8 = 2;
/// Events one segment is forwarded in at most (a super-packet can hold a whole ClientHello).
const CHUNKS: u32 = TLS_STREAM_MAX / PAYLOAD_CAP_MAX as u32;

/// Whether TLS handshakes are forwarded (`--no-tls`, a load-time constant).
#[unsafe(no_mangle)]
static DEVOURER_TLS: u8 = 1;

/// Looks at a TCP segment with payload counted into `v` at this hook, and forwards it to the
/// TLS ring when it belongs to a handshake's start (see the module doc). `ifindex`: the
/// counting interface, as the payload events carry it.
#[inline(always)]
pub fn tls_segment<P: CopyOut>(
    p: &P,
    parsed: &Parsed,
    v: *mut FlowValue,
    ts: u64,
    ifindex: u32,
    ctr: &Ctr,
) {
    let chunks = p.tls_chunks();
    // SAFETY: a load-time constant.
    if unsafe { read_volatile(&DEVOURER_TLS) } == 0 || v.is_null() || chunks == 0 {
        return;
    }
    // SAFETY: a live map value (plain reads and a plain store: two CPUs racing on one flow's
    // hello at most forward a segment twice, which the agent's reassembly absorbs).
    let (end, packets) = unsafe { (read_volatile(&raw const (*v).tls_end), (*v).packets) };
    if packets > TLS_HELLO_PACKETS || (end == 0 && packets > TLS_EARLY_PACKETS) {
        return;
    }
    let len = parsed.payload_len;
    // How far this segment starts before the hello's end (mod 2^16; the hello spans less).
    let before = end.wrapping_sub(parsed.tcp_seq as u16) as u32;
    if end != 0 && (before == 0 || before > 1 << 15) {
        // The client went on past its hello (a round trip later, once the server answered):
        // the hello is over, and a segment far ahead is never taken for part of it.
        // SAFETY: as above.
        unsafe { write_volatile(&raw mut (*v).tls_end, 0) };
    }
    let want = if end != 0 && before != 0 && before <= TLS_STREAM_MAX {
        // Part of the hello (a retransmission of any of its segments too).
        before
    } else {
        let Some((want, client)) = hello(p, parsed, ctr) else {
            return;
        };
        if client {
            let mut e = parsed.tcp_seq.wrapping_add(want) as u16;
            if e == 0 {
                e = 1;
            }
            // SAFETY: as above.
            unsafe { write_volatile(&raw mut (*v).tls_end, e) };
        }
        want
    };
    forward(p, parsed, (ts, ifindex), want.min(len), chunks, ctr);
}

/// Whether a segment starts a hello, and the stream bytes it wants forwarded: a ClientHello's
/// (its handshake message in its records, at most [`TLS_STREAM_MAX`]: a longer one is counted
/// cut; `true`), or a ServerHello's segment (its first record's bytes in it; `false`).
#[inline(always)]
fn hello<P: CopyOut>(p: &P, parsed: &Parsed, ctr: &Ctr) -> Option<(u32, bool)> {
    if parsed.payload_len < 9 {
        return None;
    }
    let mut h = [0u8; 12];
    // Through the load helper: the payload offset is not a bounded packet offset.
    if !p.copy_out(parsed.payload_off, h.as_mut_ptr(), 9) {
        return None;
    }
    // A handshake record of SSL 3.0 to TLS 1.3 (whose records still say 3.1 to 3.3).
    if h[0] != HANDSHAKE || h[1] != 3 || h[2] > 4 {
        return None;
    }
    let record = u16::from_be_bytes([h[3], h[4]]) as u32;
    match h[5] {
        CLIENT_HELLO => {
            let message = u32::from_be_bytes([0, h[6], h[7], h[8]]);
            let want = hello_stream_len(record, message);
            if want == 0 {
                return None;
            }
            if want > TLS_STREAM_MAX {
                ctr.add(C_TLS_CUT, 1);
            }
            Some((want.min(TLS_STREAM_MAX), true))
        }
        SERVER_HELLO => Some(((5 + record).min(PAYLOAD_CAP_MAX as u32), false)),
        _ => None,
    }
}

/// Forwards the segment's first `len` payload bytes (or a little more: whole events) in events
/// of at most [`PAYLOAD_CAP_MAX`], more than one (up to `chunks`) only for a super-packet.
#[inline(always)]
fn forward<P: CopyOut>(
    p: &P,
    parsed: &Parsed,
    (ts, ifindex): (u64, u32),
    len: u32,
    chunks: u32,
    ctr: &Ctr,
) {
    let mut chunk = 0;
    while chunk < CHUNKS && chunk < chunks {
        if chunk * PAYLOAD_CAP_MAX as u32 >= len {
            break;
        }
        payload_event(
            p,
            parsed,
            ts,
            ifindex as u64 | KIND_TLS | (chunk as u64) << CHUNK_SHIFT,
            ctr,
        );
        chunk += 1;
    }
}

/// Where `payload_event` finds a TLS event's chunk (its offset in the segment, in caps).
pub const CHUNK_SHIFT: u32 = 34;

const _: () = assert!(TLS_STREAM_MAX.is_multiple_of(PAYLOAD_CAP_MAX as u32));
