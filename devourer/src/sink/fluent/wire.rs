//! fluentd's Forward protocol v1 on the wire: an event as `[EventTime, record]` (EventTime is
//! msgpack extension 0: seconds and nanoseconds, 32 bits each, big-endian), PackedForward
//! messages `[tag, entries, {"size": N, "chunk": ID}]` acknowledged by `{"ack": ID}`, and the
//! shared-key handshake (HELO, PING, PONG).

use std::{
    io::{self, Read, Write},
    time::{SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use rmpv::Value;
use sha2::{Digest, Sha512};

use crate::record::fields::{Msgpack, Record};

/// Messages read at most (an ack or a handshake message is a few hundred bytes).
const MAX_MESSAGE: u64 = 64 << 10;

fn ok(r: Result<(), rmp::encode::ValueWriteError>) {
    r.expect("writing to a Vec cannot fail");
}

/// An EventTime for `at`.
fn event_time(out: &mut Vec<u8>, at: SystemTime) {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    ok(rmp::encode::write_ext_meta(out, 8, 0).map(|_| ()));
    // Seconds fit 32 bits until 2106.
    out.extend_from_slice(&(d.as_secs() as u32).to_be_bytes());
    out.extend_from_slice(&d.subsec_nanos().to_be_bytes());
}

/// Appends `r` as one event, `[EventTime(at), record]`.
pub fn event<R: Record>(out: &mut Vec<u8>, at: SystemTime, r: &R) {
    ok(rmp::encode::write_array_len(out, 2).map(|_| ()));
    event_time(out, at);
    Msgpack::write(r, out);
}

/// A PackedForward message of `events` (concatenated events) under `tag`, asking for an
/// acknowledgement of `chunk`.
pub fn packed_forward(tag: &str, events: &[u8], count: usize, chunk: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(events.len() + tag.len() + 64);
    ok(rmp::encode::write_array_len(&mut m, 3).map(|_| ()));
    ok(rmp::encode::write_str(&mut m, tag));
    ok(rmp::encode::write_bin(&mut m, events));
    ok(rmp::encode::write_map_len(&mut m, 2).map(|_| ()));
    ok(rmp::encode::write_str(&mut m, "size"));
    ok(rmp::encode::write_uint(&mut m, count as u64).map(|_| ()));
    ok(rmp::encode::write_str(&mut m, "chunk"));
    ok(rmp::encode::write_str(&mut m, chunk));
    m
}

/// A fresh chunk id (16 random bytes, base64, as the official clients make them).
pub fn chunk_id() -> String {
    let bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the server sent what the protocol does not: {0}")]
    Protocol(String),
    #[error("the server refused the shared key: {0}")]
    Refused(String),
}

/// Reads one msgpack value of at most [`MAX_MESSAGE`] bytes.
fn read_value(r: &mut impl Read) -> Result<Value, WireError> {
    let mut limited = r.take(MAX_MESSAGE);
    rmpv::decode::read_value(&mut limited).map_err(|e| match e {
        rmpv::decode::Error::InvalidMarkerRead(e) | rmpv::decode::Error::InvalidDataRead(e) => {
            WireError::Io(e)
        }
        other => WireError::Protocol(other.to_string()),
    })
}

/// Waits for `{"ack": chunk}`.
pub fn read_ack(r: &mut impl Read, chunk: &str) -> Result<(), WireError> {
    let v = read_value(r)?;
    let ack = v
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| bytes(k) == Some(b"ack")))
        .and_then(|(_, v)| bytes(v));
    match ack {
        Some(a) if a == chunk.as_bytes() => Ok(()),
        _ => Err(WireError::Protocol(format!(
            "expected the ack of {chunk}, got {v}"
        ))),
    }
}

fn hex_sha512(parts: &[&[u8]]) -> String {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a msgpack string or binary.
fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::String(s) => Some(s.as_bytes()),
        Value::Binary(b) => Some(b),
        _ => None,
    }
}

/// The client's side of the shared-key handshake: reads HELO, answers PING as `hostname`,
/// checks PONG's digest (the server knows the key too). User authentication is not
/// supported: a server that asks for it is refused here.
pub fn handshake(
    s: &mut (impl Read + Write),
    hostname: &str,
    shared_key: &str,
) -> Result<(), WireError> {
    let helo = read_value(s)?;
    let a = helo.as_array().map(Vec::as_slice).unwrap_or_default();
    let opts = match a {
        [kind, opts, ..] if kind.as_str() == Some("HELO") => opts,
        _ => return Err(WireError::Protocol(format!("expected HELO, got {helo}"))),
    };
    let get = |k: &str| {
        opts.as_map()
            .and_then(|m| m.iter().find(|(key, _)| key.as_str() == Some(k)))
            .map(|(_, v)| v)
    };
    let nonce = get("nonce")
        .and_then(bytes)
        .ok_or_else(|| WireError::Protocol(format!("HELO without a nonce: {helo}")))?
        .to_vec();
    if get("auth").and_then(bytes).is_some_and(|a| !a.is_empty()) {
        return Err(WireError::Refused(
            "the server asks for a user name and password, which devourer does not send".into(),
        ));
    }
    let salt: String = (0..16)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect();
    let digest = |host: &str| {
        hex_sha512(&[
            salt.as_bytes(),
            host.as_bytes(),
            &nonce,
            shared_key.as_bytes(),
        ])
    };
    let mut ping = Vec::new();
    ok(rmp::encode::write_array_len(&mut ping, 6).map(|_| ()));
    for field in ["PING", hostname, &salt, &digest(hostname), "", ""] {
        ok(rmp::encode::write_str(&mut ping, field));
    }
    s.write_all(&ping)?;
    s.flush()?;
    let pong = read_value(s)?;
    match pong.as_array().map(Vec::as_slice).unwrap_or_default() {
        [kind, ok, reason, server, their] if kind.as_str() == Some("PONG") => {
            if ok.as_bool() != Some(true) {
                return Err(WireError::Refused(
                    reason.as_str().unwrap_or("no reason given").to_owned(),
                ));
            }
            let server = server.as_str().unwrap_or_default();
            if their.as_str() != Some(digest(server).as_str()) {
                return Err(WireError::Refused(
                    "the server's digest does not prove it holds the shared key".into(),
                ));
            }
            Ok(())
        }
        _ => Err(WireError::Protocol(format!("expected PONG, got {pong}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::OverflowRecord;

    #[test]
    fn an_event_is_an_event_time_and_the_record_map() {
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let mut out = Vec::new();
        event(&mut out, at, &OverflowRecord::sample());
        let v = rmpv::decode::read_value(&mut &out[..]).unwrap();
        let a = v.as_array().unwrap();
        let Value::Ext(0, t) = &a[0] else {
            panic!("EventTime: {v}")
        };
        assert_eq!(t[..4], 1_700_000_000u32.to_be_bytes());
        assert_eq!(t[4..], 123_456_789u32.to_be_bytes());
        assert_eq!(a[1].as_map().unwrap()[0].0.as_str(), Some("type"));
    }

    #[test]
    fn a_packed_forward_message_carries_its_events_size_and_chunk() {
        let mut events = Vec::new();
        for _ in 0..3 {
            event(&mut events, SystemTime::now(), &OverflowRecord::sample());
        }
        let m = packed_forward("flow.log", &events, 3, "abc=");
        let v = rmpv::decode::read_value(&mut &m[..]).unwrap();
        let a = v.as_array().unwrap();
        assert_eq!(a[0].as_str(), Some("flow.log"));
        assert_eq!(a[1].as_slice(), Some(&events[..]));
        let opts = a[2].as_map().unwrap();
        assert_eq!(opts[0].1.as_u64(), Some(3));
        assert_eq!(opts[1].1.as_str(), Some("abc="));
        let mut ack = Vec::new();
        ok(rmp::encode::write_map_len(&mut ack, 1).map(|_| ()));
        ok(rmp::encode::write_str(&mut ack, "ack"));
        ok(rmp::encode::write_str(&mut ack, "abc="));
        read_ack(&mut &ack[..], "abc=").unwrap();
        assert!(read_ack(&mut &ack[..], "other").is_err());
    }
}
