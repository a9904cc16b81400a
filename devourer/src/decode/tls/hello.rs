//! ClientHello and ServerHello from the first bytes of a TCP stream (TLS records), parsed with
//! `tls-parser`: what flow records carry of them. Every length is checked against the bytes at
//! hand; a name or protocol is kept within its bound and made valid UTF-8.

use std::sync::Arc;

use tls_parser::{
    SNIType, TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_client_hello_extension,
    parse_tls_message_handshake,
};

use super::ja4::{self, Hello, is_grease};
use crate::flow::tls::TlsInfo;

/// TLS record content type of a handshake.
const HANDSHAKE: u8 = 0x16;
/// Handshake message types.
const CLIENT_HELLO: u8 = 1;
const SERVER_HELLO: u8 = 2;
/// Extension types read here.
const SUPPORTED_VERSIONS: u16 = 0x002b;
const ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;
/// ALPN values a record keeps at most (a hello may offer more; JA4 counts them all).
pub const MAX_ALPN: usize = 32;
/// Bytes of a server name or protocol kept at most (an SNI host name is at most 255).
const MAX_NAME: usize = 255;

/// Why a handshake's bytes gave nothing (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloError {
    /// Fewer bytes than its records say: the rest was never forwarded (past 16 KiB, or lost).
    Incomplete,
    /// Not a handshake record, or not the message expected.
    NotHello,
    /// The message did not parse.
    Malformed,
}

impl HelloError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Incomplete => "incomplete",
            Self::NotHello => "not_hello",
            Self::Malformed => "malformed",
        }
    }
}

/// The handshake message that starts `stream` (TLS records from the stream's first byte),
/// its fragments joined across records; `Incomplete` until it is all there (a record may be
/// cut after it: a ServerHello's segment with the start of the Certificate in its record).
pub fn first_message(stream: &[u8]) -> Result<Vec<u8>, HelloError> {
    let mut msg = Vec::new();
    let mut rest = stream;
    loop {
        if rest.len() < 5 {
            return Err(HelloError::Incomplete);
        }
        if rest[0] != HANDSHAKE || rest[1] != 3 {
            return Err(HelloError::NotHello);
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let fragment = &rest[5..rest.len().min(5 + len)];
        msg.extend_from_slice(fragment);
        if msg.len() >= 4 {
            let body = u32::from_be_bytes([0, msg[1], msg[2], msg[3]]) as usize;
            if msg.len() >= 4 + body {
                msg.truncate(4 + body);
                return Ok(msg);
            }
        }
        if fragment.len() < len || len == 0 {
            return Err(if len == 0 {
                HelloError::Malformed
            } else {
                HelloError::Incomplete
            });
        }
        rest = &rest[5 + len..];
    }
}

/// The TLS version names records use (OpenSSL's), and the hex of one it has no name for.
pub fn version_name(v: u16) -> &'static str {
    match v {
        0x0304 => "TLSv1.3",
        0x0303 => "TLSv1.2",
        0x0302 => "TLSv1.1",
        0x0301 => "TLSv1",
        0x0300 => "SSLv3",
        0x0002 => "SSLv2",
        _ => "unknown",
    }
}

/// What a ClientHello tells (`stream`: the client's first bytes).
pub fn client_hello(stream: &[u8]) -> Result<TlsInfo, HelloError> {
    let msg = first_message(stream)?;
    let Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)))) =
        parse_tls_message_handshake(&msg)
    else {
        return Err(unread(&msg, CLIENT_HELLO));
    };
    let ciphers: Vec<u16> = ch.ciphers.iter().map(|c| c.0).collect();
    let mut types = Vec::new();
    let mut versions: Vec<u16> = Vec::new();
    let mut sig_algs = Vec::new();
    let mut alpn: Vec<&[u8]> = Vec::new();
    let mut sni = None;
    let mut ech = false;
    // Walked one extension at a time: every type counts for JA4 even where its content does
    // not parse.
    for e in extensions(ch.ext.unwrap_or_default()) {
        let (ty, one) = e?;
        types.push(ty);
        if is_grease(ty) {
            continue;
        }
        if ty == ENCRYPTED_CLIENT_HELLO {
            ech = true;
        }
        match parse_tls_client_hello_extension(one) {
            Ok((_, TlsExtension::SNI(names))) => {
                sni = names
                    .iter()
                    .find(|(t, _)| *t == SNIType::HostName)
                    .map(|(_, n)| bounded(n));
            }
            Ok((_, TlsExtension::ALPN(list))) => alpn = list,
            Ok((_, TlsExtension::SupportedVersions(v))) if ty == SUPPORTED_VERSIONS => {
                versions = v.iter().map(|v| v.0).collect();
            }
            Ok((_, TlsExtension::SignatureAlgorithms(v))) => sig_algs = v,
            _ => {}
        }
    }
    let offered = versions
        .iter()
        .copied()
        .filter(|&v| !is_grease(v))
        .max()
        .unwrap_or(ch.version.0);
    let fingerprint = ja4::ja4(&Hello {
        version: offered,
        ciphers: &ciphers,
        extensions: &types,
        first_alpn: alpn.first().copied(),
        sig_algs: &sig_algs,
    });
    Ok(TlsInfo {
        sni,
        alpn: alpn.iter().take(MAX_ALPN).map(|a| bounded(a)).collect(),
        version: Some(version_name(offered)),
        version_negotiated: None,
        ja4: Some(fingerprint.into()),
        ech: Some(ech),
        client: None,
    })
}

/// The version a ServerHello chose (`stream`: the server's first bytes): its
/// `supported_versions` (TLS 1.3), else its own.
pub fn server_version(stream: &[u8]) -> Result<&'static str, HelloError> {
    let msg = first_message(stream)?;
    let Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ServerHello(sh)))) =
        parse_tls_message_handshake(&msg)
    else {
        return Err(unread(&msg, SERVER_HELLO));
    };
    for e in extensions(sh.ext.unwrap_or_default()) {
        let (ty, one) = e?;
        if let [_, _, _, _, a, b] = *one
            && ty == SUPPORTED_VERSIONS
        {
            return Ok(version_name(u16::from_be_bytes([a, b])));
        }
    }
    Ok(version_name(sh.version.0))
}

/// Why tls-parser read no hello of type `ty` from handshake message `msg`: one that says it
/// is that hello is malformed, anything else is not it.
fn unread(msg: &[u8], ty: u8) -> HelloError {
    if msg.first() == Some(&ty) {
        HelloError::Malformed
    } else {
        HelloError::NotHello
    }
}

/// A hello's extension block, one extension at a time: its type and its bytes, header
/// included. One that runs past the block is `Malformed` (and ends the walk); fewer than four
/// bytes left end it too.
fn extensions(mut raw: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), HelloError>> {
    std::iter::from_fn(move || {
        if raw.len() < 4 {
            return None;
        }
        let ty = u16::from_be_bytes([raw[0], raw[1]]);
        let len = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
        let Some(one) = raw.get(..4 + len) else {
            raw = &[];
            return Some(Err(HelloError::Malformed));
        };
        raw = &raw[4 + len..];
        Some(Ok((ty, one)))
    })
}

/// Bytes from the wire as a record's string: at most [`MAX_NAME`] bytes, invalid UTF-8
/// replaced.
fn bounded(b: &[u8]) -> Arc<str> {
    String::from_utf8_lossy(&b[..b.len().min(MAX_NAME)]).into()
}

#[cfg(test)]
pub(crate) mod tests;
