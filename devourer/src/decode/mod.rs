//! Decoders of the payloads the kernel forwards: DNS transactions ([`dns`]) and HTTP
//! messages ([`http`]), each with packetlog-style text lines ([`LogLine`]).

pub mod dns;
pub mod http;

/// A packetlog text line before its time is formatted (by the text log sink).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Program clock.
    pub ts_ns: u64,
    /// packetlog's kind: CQ, CR, SQ, SR, Q, R.
    pub kind: &'static str,
    /// Everything after the time.
    pub body: String,
}
