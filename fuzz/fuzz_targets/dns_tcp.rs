//! DNS over TCP as a sequence of segments (any flags, sequence numbers, cuts, connections):
//! reassembly never holds more than its bounds and never hands on more than a message.
#![no_main]

use devourer::decode::dns::tcp::{StreamKey, TcpLimits, TcpStreams};
use libfuzzer_sys::fuzz_target;

const LIMITS: TcpLimits = TcpLimits {
    max_streams: 4,
    max_bytes: 2048,
    max_message: 700,
    idle_ns: 1_000,
};

fuzz_target!(|data: &[u8]| {
    let mut t = TcpStreams::new(LIMITS);
    let mut seqs = [0u32; 8];
    let mut rest = data;
    let mut now = 0u64;
    // Each segment: connection (1), flags (1), sequence step (2, signed), bytes missing from
    // the capture (2), captured length (1), then the captured bytes.
    while rest.len() >= 7 {
        let conn = usize::from(rest[0] % 8);
        let flags = rest[1];
        let step = i16::from_le_bytes([rest[2], rest[3]]);
        let missing = usize::from(u16::from_le_bytes([rest[4], rest[5]]));
        let len = usize::from(rest[6]).min(rest.len() - 7);
        let payload = &rest[7..7 + len];
        rest = &rest[7 + len..];
        seqs[conn] = seqs[conn].wrapping_add(step as i32 as u32);
        let key = StreamKey {
            src: [conn as u8; 16],
            dst: [9; 16],
            sport: 1000 + conn as u16,
            dport: 53,
            ifindex: 1,
        };
        now += 100;
        for m in t.segment(key, seqs[conn], flags, now, payload, len + missing) {
            assert!(m.bytes.len() <= LIMITS.max_message);
        }
        assert!(t.held_bytes() <= LIMITS.max_bytes, "{}", t.held_bytes());
        assert!(t.len() <= LIMITS.max_streams);
        seqs[conn] = seqs[conn].wrapping_add(len as u32);
        if flags & 0x80 != 0 {
            t.expire(now);
        }
    }
});
