//! Payload events: what the kernel program forwards to the agent for DNS ports (UDP and TCP),
//! HTTP ports (TCP segments that start a request or response) and TLS handshakes on any TCP
//! port (a ClientHello's segments, a ServerHello's first). Each kind has a ring of its own, so
//! a large download cannot crowd out DNS; all carry a [`PayloadHeader`] and the payload's
//! first bytes.

/// Ring buffer of DNS payload events ([`PayloadHeader`] + payload).
pub const DNS_RING: &str = "DNS_EVENTS";
/// Ring buffer of HTTP payload events ([`PayloadHeader`] + payload).
pub const HTTP_RING: &str = "HTTP_EVENTS";
/// Ring buffer of TLS handshake events ([`PayloadHeader`] + payload).
pub const TLS_RING: &str = "TLS_EVENTS";
/// Per-CPU scratch where one event is assembled before `bpf_ringbuf_output`.
pub const PAYLOAD_SCRATCH_MAP: &str = "PAYLOAD_SCRATCH";

pub const DEFAULT_DNS_RING_BYTES: u32 = 4 << 20;
pub const DEFAULT_HTTP_RING_BYTES: u32 = 4 << 20;
pub const DEFAULT_TLS_RING_BYTES: u32 = 4 << 20;
/// Largest payload copied per packet, whatever the kind (enough for EDNS answers).
pub const PAYLOAD_CAP_MAX: usize = 4096;
/// Default payload bytes copied per HTTP segment (request line and the usual headers).
pub const DEFAULT_HTTP_CAP: u32 = 1024;
/// Ports per kind whose payloads are forwarded; 0 marks an unused slot.
pub const PORT_SLOTS: usize = 8;

/// Load-time global (`[u16; PORT_SLOTS]`): the DNS ports, 0 = unused.
pub const GLOBAL_DNS_PORTS: &str = "DEVOURER_DNS_PORTS";
/// Load-time global (u32): payload bytes copied per DNS packet, at most [`PAYLOAD_CAP_MAX`].
pub const GLOBAL_DNS_CAP: &str = "DEVOURER_DNS_CAP";
/// Load-time global (`[u16; PORT_SLOTS]`): the HTTP ports, 0 = unused (all 0: HTTP off).
pub const GLOBAL_HTTP_PORTS: &str = "DEVOURER_HTTP_PORTS";
/// Load-time global (u32): payload bytes copied per HTTP segment, at most [`PAYLOAD_CAP_MAX`].
pub const GLOBAL_HTTP_CAP: &str = "DEVOURER_HTTP_CAP";
/// Load-time global (u8): 1 forwards TLS handshakes to the TLS ring, 0 turns it off.
pub const GLOBAL_TLS: &str = "DEVOURER_TLS";
/// Client bytes of a TLS handshake forwarded per flow direction at most (the first record of
/// a ClientHello, up to this): what the agent reassembles.
pub const TLS_STREAM_MAX: u32 = 16 * 1024;
/// The stream bytes a ClientHello takes, from its first record's length and its handshake
/// message's: the record, or where the message goes on past it, the message with a header for
/// each record it needs (records the size of the first). 0 for a record of no length. What is
/// forwarded and kept of it stops at [`TLS_STREAM_MAX`].
pub const fn hello_stream_len(record_len: u32, message_len: u32) -> u32 {
    if record_len == 0 {
        return 0;
    }
    let msg = 4 + message_len;
    if msg <= record_len {
        5 + record_len
    } else {
        msg + 5 * msg.div_ceil(record_len)
    }
}

/// Packets of a flow direction after which a ClientHello still being forwarded is given up:
/// the early ones, and as many segments as the agent keeps pieces of one hello (a client
/// sending its hello in tiny segments cannot fill the ring).
pub const TLS_HELLO_PACKETS: u64 = TLS_EARLY_PACKETS + 64;

/// A direction's TCP payloads are looked at for a handshake's start only while its entry has
/// counted at most this many packets (a ClientHello follows the handshake; a ServerHello
/// answers it): later payloads cost one compare.
pub const TLS_EARLY_PACKETS: u64 = 16;

const _: () = assert!(TLS_STREAM_MAX < 1 << 15);
/// Load-time global (u64): flags for all rings' output (see [`BPF_RB_NO_WAKEUP`]).
pub const GLOBAL_RB_FLAGS: &str = "DEVOURER_RB_FLAGS";
/// No wake-up per event: for a reader that polls after every replayed frame anyway.
pub const BPF_RB_NO_WAKEUP: u64 = 1;

/// `PayloadHeader::flags`: addresses are IPv6 (else v4-mapped IPv4).
pub const PAYLOAD_F_IPV6: u8 = 1;

/// Precedes `cap_len` payload bytes in each ring record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadHeader {
    /// Packet time on the program's clock (monotonic live, the file's offline).
    pub ts_ns: u64,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub ifindex: u32,
    /// TCP sequence number of the payload's first byte (0 for UDP).
    pub tcp_seq: u32,
    /// Transport payload bytes the packet carried.
    pub payload_len: u32,
    /// Payload bytes that follow this header (at most the cap).
    pub cap_len: u16,
    pub proto: u8,
    pub flags: u8,
    pub tcp_flags: u8,
    pub _pad: [u8; 11],
}

/// The per-CPU scratch record: header and payload, output with its used length.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PayloadScratch {
    pub header: PayloadHeader,
    pub payload: [u8; PAYLOAD_CAP_MAX],
}

pub const PAYLOAD_HEADER_LEN: usize = size_of::<PayloadHeader>();

const _: () = assert!(PAYLOAD_HEADER_LEN == 72);
