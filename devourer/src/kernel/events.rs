//! Payload events from the kernel's DNS, HTTP and TLS rings: each ring record is a
//! [`PayloadHeader`] and the payload's first bytes. One reader for every ring and driver.

use aya::maps::{MapData, RingBuf};
use devourer_common::payload::{PAYLOAD_HEADER_LEN, PayloadHeader};

/// Which ring an event came from (and which decoder takes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadKind {
    Dns,
    Http,
    Tls,
}

impl PayloadKind {
    pub const ALL: [Self; 3] = [Self::Dns, Self::Http, Self::Tls];
}

/// Splits one ring record into its header and payload; `None` when it is too short.
pub fn decode(bytes: &[u8]) -> Option<(PayloadHeader, &[u8])> {
    if bytes.len() < PAYLOAD_HEADER_LEN {
        return None;
    }
    // SAFETY: length checked; the header is plain old data written by the kernel program.
    let h = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<PayloadHeader>()) };
    let end = (PAYLOAD_HEADER_LEN + usize::from(h.cap_len)).min(bytes.len());
    Some((h, &bytes[PAYLOAD_HEADER_LEN..end]))
}

/// Hands the events waiting in `ring` to `f`, in ring order, until the ring is empty or `max`
/// were taken; returns how many records there were (`max`: more may wait). Records too short
/// to hold a header are skipped (logged at debug: the program never writes them).
pub fn drain(
    kind: PayloadKind,
    ring: &mut RingBuf<MapData>,
    max: usize,
    mut f: impl FnMut(&PayloadHeader, &[u8]),
) -> usize {
    let mut n = 0;
    while n < max
        && let Some(item) = ring.next()
    {
        n += 1;
        match decode(&item) {
            Some((h, payload)) => f(&h, payload),
            None => tracing::debug!(?kind, len = item.len(), "short payload ring record"),
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_shorter_than_a_header_do_not_decode_and_the_payload_stops_at_cap_len() {
        assert!(decode(&[0u8; PAYLOAD_HEADER_LEN - 1]).is_none());
        let h = PayloadHeader {
            cap_len: 3,
            ..Default::default()
        };
        let mut bytes = vec![0u8; PAYLOAD_HEADER_LEN];
        // SAFETY: the buffer holds exactly one header.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast::<PayloadHeader>(), h) };
        bytes.extend_from_slice(b"abcdef");
        let (got, payload) = decode(&bytes).unwrap();
        assert_eq!(got, h);
        assert_eq!(payload, b"abc");
    }
}
