//! Decoders of the payloads the kernel forwards: DNS transactions ([`dns`]) and HTTP
//! messages ([`http`]), each with packetlog-style text lines ([`LogLine`]), and TLS
//! handshakes ([`tls`]), which name flows.

pub mod dns;
pub mod http;
pub mod tls;

use std::net::{IpAddr, Ipv4Addr};

/// A packetlog text line before its time is formatted (by the text log sink).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Program clock.
    pub ts_ns: u64,
    /// packetlog's kind: CQ, CR, SQ, SR, Q, R.
    pub kind: &'static str,
    /// Everything after the time.
    pub body: String,
    /// What the line is about (what `--filter` judges it by).
    pub ends: Ends,
}

/// The endpoints of a line: its packet's (DNS), or its message's as the client sent it
/// (HTTP), and the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ends {
    pub src: (IpAddr, u16),
    pub dst: (IpAddr, u16),
    pub proto: u8,
}

impl Default for Ends {
    fn default() -> Self {
        let none = (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        Self {
            src: none,
            dst: none,
            proto: 0,
        }
    }
}
