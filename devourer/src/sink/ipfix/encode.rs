//! IPFIX (RFC 7011) encoding of flow records: four templates (IPv4 and IPv6, each with and
//! without NAT), one data record per flow record as an RFC 5103 biflow (the responder's counts
//! as reverse elements under enterprise 29305), and messages of at most the MTU.

use std::net::IpAddr;

use crate::{
    base::{net::protocol_number, time::rfc3339_millis},
    record::{
        fields::{Fields, Nested, Record},
        flow::FlowRecord,
    },
};

/// RFC 5103's enterprise number of reverse Information Elements.
pub const REVERSE_PEN: u32 = 29305;
/// IPFIX's version number, in every message header.
const VERSION: u16 = 10;
/// The message header's length.
const HEADER: usize = 16;
/// A set header's length.
const SET_HEADER: usize = 4;
/// The set id of template sets.
const TEMPLATE_SET: u16 = 2;
/// A field of variable length (RFC 7011 section 7).
const VARIABLE: u16 = 65535;
/// The first template id (256 to 259: IPv4, IPv4 with NAT, IPv6, IPv6 with NAT).
const FIRST_TEMPLATE: u16 = 256;

/// Record fields without a standard element, exported as strings under the agent's enterprise
/// number with these element ids (`deploy/ipfix/primitives.lst` describes them for
/// collectors). They start at 101: pmacct matches enterprise elements by id alone, and 1 and 2
/// would be taken for the reverse counters (29305's 1 and 2) of the same template.
pub const TEXTS: [(&str, u16); 27] = [
    ("src_name", 101),
    ("dst_name", 102),
    ("community_id", 103),
    ("src_k8s_namespace", 104),
    ("src_k8s_pod", 105),
    ("src_k8s_owner_kind", 106),
    ("src_k8s_owner", 107),
    ("src_k8s_node", 108),
    ("src_k8s_service", 109),
    ("dst_k8s_namespace", 110),
    ("dst_k8s_pod", 111),
    ("dst_k8s_owner_kind", 112),
    ("dst_k8s_owner", 113),
    ("dst_k8s_node", 114),
    ("dst_k8s_service", 115),
    ("tunnel", 116),
    ("dst_name_source", 117),
    ("tls_sni", 118),
    // Comma-separated.
    ("tls_alpn", 119),
    ("tls_version", 120),
    ("tls_version_negotiated", 121),
    ("tls_ja4", 122),
    // `true` or `false`.
    ("tls_ech", 123),
    ("src_k8s_zone", 124),
    ("dst_k8s_zone", 125),
    // `true` or `false`.
    ("tcp_failed", 131),
    // The three most frequent, `REASON:packets` comma-separated.
    ("drop_reasons", 132),
];

/// Numeric record fields without a standard element, exported as unsigned integers of the
/// given length under the agent's enterprise number: the TCP round trips in microseconds (0:
/// none measured; one measured is at least 1) and the retransmitted segments. A flow's drops
/// have standard elements (`droppedOctetDeltaCount` 132, `droppedPacketDeltaCount` 133).
pub const NUMBERS: [(&str, u16, u16); 5] = [
    ("tcp_handshake_rtt_us", 126, 4),
    ("tcp_srtt_min_us", 127, 4),
    ("tcp_srtt_max_us", 128, 4),
    ("tcp_srtt_last_us", 129, 4),
    ("tcp_retransmits", 130, 8),
];

/// The value of `NUMBERS[i]` in `r`.
fn number(r: &FlowRecord, i: usize) -> u64 {
    let micros = |secs: Option<f64>| {
        secs.map_or(0, |s| {
            ((s * 1e6).round() as u64).clamp(1, u64::from(u32::MAX))
        })
    };
    match NUMBERS[i].0 {
        "tcp_handshake_rtt_us" => micros(r.tcp_handshake_rtt),
        "tcp_srtt_min_us" => micros(r.tcp_srtt_min),
        "tcp_srtt_max_us" => micros(r.tcp_srtt_max),
        "tcp_srtt_last_us" => micros(r.tcp_srtt_last),
        "tcp_retransmits" => r.tcp_retransmits.unwrap_or(0),
        other => unreachable!("no value for {other}"),
    }
}

/// What one field of a data record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    SrcAddr,
    DstAddr,
    SrcPort,
    DstPort,
    Protocol,
    Octets,
    Packets,
    ReverseOctets,
    ReversePackets,
    Start,
    End,
    EndReason,
    TcpFlags,
    ReverseTcpFlags,
    Sampling,
    IcmpTypeCode,
    Vlan,
    Ingress,
    NatSrcAddr,
    NatDstAddr,
    NatSrcPort,
    NatDstPort,
    DroppedOctets,
    DroppedPackets,
    /// The string field `TEXTS[i]`.
    Text(usize),
    /// The numeric field `NUMBERS[i]`.
    Number(usize),
}

/// One field specifier of a template: element id, length, enterprise number (0: IANA's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub id: u16,
    pub len: u16,
    pub pen: u32,
}

/// A template: its id and fields, with what each holds.
#[derive(Clone, Debug)]
struct Template {
    id: u16,
    fields: Vec<(Spec, Value)>,
}

impl Template {
    fn new(v6: bool, nat: bool, pen: u32) -> Self {
        let iana = |id, len| Spec { id, len, pen: 0 };
        let reverse = |id, len| Spec {
            id,
            len,
            pen: REVERSE_PEN,
        };
        let addr = if v6 { 16 } else { 4 };
        let pick = |v4: u16, v6_id: u16| if v6 { v6_id } else { v4 };
        let mut fields = vec![
            (iana(pick(8, 27), addr), Value::SrcAddr),
            (iana(pick(12, 28), addr), Value::DstAddr),
            (iana(7, 2), Value::SrcPort),
            (iana(11, 2), Value::DstPort),
            (iana(4, 1), Value::Protocol),
            (iana(1, 8), Value::Octets),
            (iana(2, 8), Value::Packets),
            (reverse(1, 8), Value::ReverseOctets),
            (reverse(2, 8), Value::ReversePackets),
            (iana(152, 8), Value::Start),
            (iana(153, 8), Value::End),
            (iana(136, 1), Value::EndReason),
            (iana(6, 2), Value::TcpFlags),
            (reverse(6, 2), Value::ReverseTcpFlags),
            (iana(305, 4), Value::Sampling),
            (iana(pick(32, 139), 2), Value::IcmpTypeCode),
            (iana(58, 2), Value::Vlan),
            (iana(10, 4), Value::Ingress),
            (iana(132, 8), Value::DroppedOctets),
            (iana(133, 8), Value::DroppedPackets),
        ];
        if nat {
            fields.extend([
                (iana(pick(225, 281), addr), Value::NatSrcAddr),
                (iana(pick(226, 282), addr), Value::NatDstAddr),
                (iana(227, 2), Value::NatSrcPort),
                (iana(228, 2), Value::NatDstPort),
            ]);
        }
        for (i, (_, id)) in TEXTS.iter().enumerate() {
            let spec = Spec {
                id: *id,
                len: VARIABLE,
                pen,
            };
            fields.push((spec, Value::Text(i)));
        }
        for (i, (_, id, len)) in NUMBERS.iter().enumerate() {
            let spec = Spec {
                id: *id,
                len: *len,
                pen,
            };
            fields.push((spec, Value::Number(i)));
        }
        Self {
            id: FIRST_TEMPLATE + u16::from(v6) * 2 + u16::from(nat),
            fields,
        }
    }

    /// The template record (RFC 7011 section 3.4.1).
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&(self.fields.len() as u16).to_be_bytes());
        for (s, _) in &self.fields {
            let enterprise = if s.pen != 0 { 0x8000 } else { 0 };
            out.extend_from_slice(&(s.id | enterprise).to_be_bytes());
            out.extend_from_slice(&s.len.to_be_bytes());
            if s.pen != 0 {
                out.extend_from_slice(&s.pen.to_be_bytes());
            }
        }
    }
}

/// `flowEndReason` (IANA): idle timeout 1, active timeout 2, end of flow detected 3, forced end
/// 4, lack of resources 5; `None` for start records, which are not exported.
pub fn end_reason(status: &str) -> Option<u8> {
    Some(match status {
        "idle_timeout" => 1,
        "active_timeout" => 2,
        "tcp_closed" => 3,
        "shutdown" | "end_of_input" => 4,
        "table_full" => 5,
        _ => return None,
    })
}

/// The string fields of [`TEXTS`] of one record, copied out as its fields are walked.
#[derive(Default)]
struct Texts {
    bytes: Vec<u8>,
    spans: [(usize, usize); TEXTS.len()],
}

impl Texts {
    fn of(r: &FlowRecord) -> Self {
        let mut t = Self::default();
        r.fields(&mut t);
        t
    }

    fn get(&self, i: usize) -> &[u8] {
        let (a, b) = self.spans[i];
        &self.bytes[a..b]
    }
}

impl Fields for Texts {
    fn str(&mut self, key: &'static str, v: &str) {
        if let Some(i) = TEXTS.iter().position(|(k, _)| *k == key) {
            let at = self.bytes.len();
            let v = &v[..v.floor_char_boundary(MAX_TEXT)];
            self.bytes.extend_from_slice(v.as_bytes());
            self.spans[i] = (at, self.bytes.len());
        }
    }
    fn opt_str(&mut self, key: &'static str, v: Option<&str>) {
        if let Some(v) = v {
            self.str(key, v);
        }
    }
    fn uint(&mut self, _: &'static str, _: u64) {}
    fn opt_uint(&mut self, _: &'static str, _: Option<u64>) {}
    fn time(&mut self, _: &'static str, _: &str) {}
    fn float(&mut self, _: &'static str, _: Option<f64>) {}
    fn bool(&mut self, key: &'static str, v: bool) {
        self.str(key, if v { "true" } else { "false" });
    }
    fn strs<S: AsRef<str>>(&mut self, key: &'static str, v: &[S]) {
        if TEXTS.iter().any(|(k, _)| *k == key) && !v.is_empty() {
            let joined: Vec<&str> = v.iter().map(AsRef::as_ref).collect();
            self.str(key, &joined.join(","));
        }
    }
    fn objects<T: Nested>(&mut self, key: &'static str, v: &[T]) {
        if TEXTS.iter().any(|(k, _)| *k == key) && !v.is_empty() {
            let mut joined = Joined::default();
            for o in v {
                joined.0.push(Vec::new());
                o.fields(&mut joined);
            }
            let text: Vec<String> = joined.0.iter().map(|o| o.join(":")).collect();
            self.str(key, &text.join(","));
        }
    }
}

/// The values of objects' fields, one list per object.
#[derive(Default)]
struct Joined(Vec<Vec<String>>);

impl Joined {
    fn value(&mut self, v: &dyn std::fmt::Display) {
        if let Some(o) = self.0.last_mut() {
            o.push(v.to_string());
        }
    }
}

impl Fields for Joined {
    fn str(&mut self, _: &'static str, v: &str) {
        self.value(&v);
    }
    fn opt_str(&mut self, _: &'static str, v: Option<&str>) {
        self.value(&v.unwrap_or(""));
    }
    fn uint(&mut self, _: &'static str, v: u64) {
        self.value(&v);
    }
    fn opt_uint(&mut self, _: &'static str, v: Option<u64>) {
        self.value(&v.map_or(String::new(), |v| v.to_string()));
    }
    fn time(&mut self, _: &'static str, v: &str) {
        self.value(&v);
    }
    fn float(&mut self, _: &'static str, v: Option<f64>) {
        self.value(&v.map_or(String::new(), |v| v.to_string()));
    }
    fn bool(&mut self, _: &'static str, v: bool) {
        self.value(&v);
    }
    fn strs<S: AsRef<str>>(&mut self, _: &'static str, v: &[S]) {
        let v: Vec<&str> = v.iter().map(AsRef::as_ref).collect();
        self.value(&v.join(" "));
    }
    fn objects<T: Nested>(&mut self, _: &'static str, _: &[T]) {}
}

/// The most bytes of one string field (names and Kubernetes values are at most 253): all of
/// them and the fixed fields keep a record far below a message's 65,535 bytes.
pub const MAX_TEXT: usize = 1024;

/// A variable-length field: one length byte below 255, else 255 and two length bytes
/// (RFC 7011 section 7); [`Texts`] cut values to [`MAX_TEXT`] bytes.
fn variable(out: &mut Vec<u8>, v: &[u8]) {
    if v.len() < 255 {
        out.push(v.len() as u8);
    } else {
        out.push(255);
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(v);
}

fn address(out: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

/// Why a flow record was not exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// A start record (zero counters; its flow's records follow).
    Start,
    /// Addresses or times that are not what the agent writes (counted, never expected).
    Malformed,
}

/// The parts of a record the data record is written from, checked.
struct Parsed {
    src: IpAddr,
    dst: IpAddr,
    nat_src: IpAddr,
    nat_dst: IpAddr,
    start_ms: u64,
    end_ms: u64,
    reason: u8,
}

impl Parsed {
    fn of(r: &FlowRecord) -> Result<Self, Skip> {
        let reason = end_reason(r.status).ok_or(Skip::Start)?;
        let ip = |t: &str| t.parse::<IpAddr>().map_err(|_| Skip::Malformed);
        let (src, dst) = (ip(&r.src_addr)?, ip(&r.dst_addr)?);
        let nat_src = r.xlat_src_addr.as_deref().map_or(Ok(src), ip)?;
        let nat_dst = r.xlat_dst_addr.as_deref().map_or(Ok(dst), ip)?;
        let family = |a: IpAddr| a.is_ipv6();
        if [dst, nat_src, nat_dst]
            .iter()
            .any(|a| family(*a) != family(src))
        {
            return Err(Skip::Malformed);
        }
        let ms = |t: &str| rfc3339_millis(t).ok_or(Skip::Malformed);
        Ok(Self {
            src,
            dst,
            nat_src,
            nat_dst,
            start_ms: ms(&r.first_seen_at)?,
            end_ms: ms(&r.last_seen_at)?,
            reason,
        })
    }
}

/// Builds IPFIX messages for one observation domain and transport session: the templates,
/// then data records, each message numbered with the data records sent before it.
#[derive(Debug)]
pub struct Encoder {
    templates: [Template; 4],
    domain: u32,
    mtu: usize,
    /// Data records sent in this session so far (modulo 2^32).
    sequence: u32,
}

/// One message, and how many data records it holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    pub bytes: Vec<u8>,
    pub records: u32,
}

impl Encoder {
    /// `pen`: the enterprise number of the agent's own elements; `mtu`: the most bytes a
    /// message holds (a record that alone exceeds it is sent in a message of its own).
    pub fn new(domain: u32, mtu: usize, pen: u32) -> Self {
        Self {
            templates: [
                Template::new(false, false, pen),
                Template::new(false, true, pen),
                Template::new(true, false, pen),
                Template::new(true, true, pen),
            ],
            domain,
            mtu: mtu.max(HEADER + SET_HEADER + 1),
            sequence: 0,
        }
    }

    /// A new transport session (a TCP reconnection): sequence numbers start again at zero.
    pub fn restart(&mut self) {
        self.sequence = 0;
    }

    /// Every template, in as few messages as the MTU allows.
    pub fn templates(&self, export_secs: u32) -> Vec<Message> {
        let mut b = Builder::new(self, export_secs);
        let mut rec = Vec::new();
        for t in &self.templates {
            rec.clear();
            t.write(&mut rec);
            b.push(TEMPLATE_SET, &rec, 0);
        }
        b.finish()
    }

    /// Data records for `records` (start records and malformed ones skipped, returned with
    /// their reason), in messages of at most the MTU.
    pub fn data(&mut self, records: &[FlowRecord], export_secs: u32) -> (Vec<Message>, Vec<Skip>) {
        let mut b = Builder::new(self, export_secs);
        let mut skipped = Vec::new();
        let mut rec = Vec::new();
        for r in records {
            let p = match Parsed::of(r) {
                Ok(p) => p,
                Err(s) => {
                    skipped.push(s);
                    continue;
                }
            };
            let nat = r.xlat_src_addr.is_some() || r.xlat_dst_addr.is_some();
            let t = &self.templates[usize::from(p.src.is_ipv6()) * 2 + usize::from(nat)];
            rec.clear();
            write_record(t, r, &p, &mut rec);
            b.push(t.id, &rec, 1);
        }
        let messages = b.finish();
        let sent: u32 = messages.iter().map(|m| m.records).sum();
        self.sequence = self.sequence.wrapping_add(sent);
        (messages, skipped)
    }
}

/// One data record of template `t`.
fn write_record(t: &Template, r: &FlowRecord, p: &Parsed, out: &mut Vec<u8>) {
    let icmp = match (r.icmp_type, r.icmp_code) {
        (Some(ty), code) => u16::from(ty) << 8 | u16::from(code.unwrap_or(0)),
        _ => 0,
    };
    let texts = Texts::of(r);
    for (_, v) in &t.fields {
        match *v {
            Value::SrcAddr => address(out, p.src),
            Value::DstAddr => address(out, p.dst),
            Value::SrcPort => out.extend_from_slice(&r.src_port.to_be_bytes()),
            Value::DstPort => out.extend_from_slice(&r.dst_port.to_be_bytes()),
            Value::Protocol => out.push(protocol_number(&r.protocol).unwrap_or(0)),
            Value::Octets => out.extend_from_slice(&r.src_bytes.to_be_bytes()),
            Value::Packets => out.extend_from_slice(&r.src_packets.to_be_bytes()),
            Value::ReverseOctets => out.extend_from_slice(&r.dst_bytes.to_be_bytes()),
            Value::ReversePackets => out.extend_from_slice(&r.dst_packets.to_be_bytes()),
            Value::Start => out.extend_from_slice(&p.start_ms.to_be_bytes()),
            Value::End => out.extend_from_slice(&p.end_ms.to_be_bytes()),
            Value::EndReason => out.push(p.reason),
            Value::TcpFlags => out.extend_from_slice(&r.side_tcp_flags[0].to_be_bytes()),
            Value::ReverseTcpFlags => out.extend_from_slice(&r.side_tcp_flags[1].to_be_bytes()),
            Value::Sampling => out.extend_from_slice(&r.sampling.to_be_bytes()),
            Value::IcmpTypeCode => out.extend_from_slice(&icmp.to_be_bytes()),
            Value::Vlan => out.extend_from_slice(&r.vlan.unwrap_or(0).to_be_bytes()),
            Value::Ingress => out.extend_from_slice(&r.ifindex.to_be_bytes()),
            Value::NatSrcAddr => address(out, p.nat_src),
            Value::NatDstAddr => address(out, p.nat_dst),
            Value::NatSrcPort => {
                out.extend_from_slice(&r.xlat_src_port.unwrap_or(r.src_port).to_be_bytes())
            }
            Value::NatDstPort => {
                out.extend_from_slice(&r.xlat_dst_port.unwrap_or(r.dst_port).to_be_bytes())
            }
            Value::DroppedOctets => {
                out.extend_from_slice(&r.drops_bytes.unwrap_or(0).to_be_bytes())
            }
            Value::DroppedPackets => {
                out.extend_from_slice(&r.drops_packets.unwrap_or(0).to_be_bytes())
            }
            Value::Text(i) => variable(out, texts.get(i)),
            Value::Number(i) => {
                let v = number(r, i).to_be_bytes();
                out.extend_from_slice(&v[v.len() - usize::from(NUMBERS[i].2)..]);
            }
        }
    }
}

/// Packs records into messages: a set per run of records of one template, a new message
/// when the next record would pass the MTU.
struct Builder {
    domain: u32,
    mtu: usize,
    export_secs: u32,
    /// The sequence number of the message being built.
    sequence: u32,
    messages: Vec<Message>,
    buf: Vec<u8>,
    records: u32,
    /// The open set's id and where its header starts.
    set: Option<(u16, usize)>,
}

impl Builder {
    fn new(e: &Encoder, export_secs: u32) -> Self {
        let mut b = Self {
            domain: e.domain,
            mtu: e.mtu,
            export_secs,
            sequence: e.sequence,
            messages: Vec::new(),
            buf: Vec::new(),
            records: 0,
            set: None,
        };
        b.open();
        b
    }

    fn open(&mut self) {
        self.buf = Vec::with_capacity(self.mtu);
        self.buf.resize(HEADER, 0);
        self.records = 0;
        self.set = None;
    }

    /// Adds one record of set `set_id`; `data`: how many data records it is (0 or 1).
    fn push(&mut self, set_id: u16, rec: &[u8], data: u32) {
        let new_set = self.set.is_none_or(|(id, _)| id != set_id);
        let need = rec.len() + if new_set { SET_HEADER } else { 0 };
        if self.buf.len() + need > self.mtu && self.buf.len() > HEADER {
            self.close();
            self.open();
        }
        if self.set.is_none_or(|(id, _)| id != set_id) {
            self.close_set();
            self.set = Some((set_id, self.buf.len()));
            self.buf.extend_from_slice(&set_id.to_be_bytes());
            self.buf.extend_from_slice(&[0, 0]);
        }
        self.buf.extend_from_slice(rec);
        self.records += data;
    }

    fn close_set(&mut self) {
        if let Some((_, at)) = self.set.take() {
            let len = (self.buf.len() - at) as u16;
            self.buf[at + 2..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }

    /// Ends the message being built (nothing for an empty one).
    fn close(&mut self) {
        if self.buf.len() == HEADER {
            return;
        }
        self.close_set();
        // At most 16 strings of MAX_TEXT bytes and the fixed fields: far below 65,535.
        debug_assert!(self.buf.len() <= usize::from(u16::MAX));
        let len = self.buf.len().min(usize::from(u16::MAX)) as u16;
        let mut h = [0u8; HEADER];
        h[0..2].copy_from_slice(&VERSION.to_be_bytes());
        h[2..4].copy_from_slice(&len.to_be_bytes());
        h[4..8].copy_from_slice(&self.export_secs.to_be_bytes());
        h[8..12].copy_from_slice(&self.sequence.to_be_bytes());
        h[12..16].copy_from_slice(&self.domain.to_be_bytes());
        self.buf[..HEADER].copy_from_slice(&h);
        self.sequence = self.sequence.wrapping_add(self.records);
        self.messages.push(Message {
            bytes: std::mem::take(&mut self.buf),
            records: self.records,
        });
    }

    fn finish(mut self) -> Vec<Message> {
        self.close();
        self.messages
    }
}

/// The worked example of RFC 7011 (appendix A.2.1's template, A.3's data set, header values
/// the RFC leaves open at zero and observation domain 1), byte for byte.
#[cfg(test)]
mod rfc_7011 {
    use super::*;

    const EXAMPLE: &str = "000a 006c 0000 0000 0000 0000 0000 0001 \
        0002 001c 0100 0005 0008 0004 000c 0004 000f 0004 0002 0004 0001 0004 \
        0100 0040 \
        c000 020c c000 02fe c000 0201 0000 1391 0051 8c81 \
        c000 021b c000 0217 c000 0202 0000 02ec 0005 ef46 \
        c000 0238 c000 0241 c000 0203 0000 0005 0000 1986";

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_rfcs_template_and_data_set_are_encoded_byte_for_byte() {
        let spec = |id| Spec { id, len: 4, pen: 0 };
        // sourceIPv4Address, destinationIPv4Address, ipNextHopIPv4Address, packetDeltaCount,
        // octetDeltaCount: what each holds does not matter to the template record.
        let t = Template {
            id: 256,
            fields: [8, 12, 15, 2, 1]
                .into_iter()
                .map(|id| (spec(id), Value::SrcAddr))
                .collect(),
        };
        let e = Encoder::new(1, 1400, 32473);
        let mut b = Builder::new(&e, 0);
        let mut rec = Vec::new();
        t.write(&mut rec);
        b.push(TEMPLATE_SET, &rec, 0);
        for (src, dst, hop, packets, octets) in [
            (12u8, 254u8, 1u8, 5009u32, 5_344_385u32),
            (27, 23, 2, 748, 388_934),
            (56, 65, 3, 5, 6534),
        ] {
            rec.clear();
            for host in [src, dst, hop] {
                address(&mut rec, IpAddr::from([192, 0, 2, host]));
            }
            rec.extend_from_slice(&packets.to_be_bytes());
            rec.extend_from_slice(&octets.to_be_bytes());
            b.push(256, &rec, 1);
        }
        let m = b.finish();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].bytes, hex(EXAMPLE));
        assert_eq!(m[0].records, 3);
    }

    #[test]
    fn variable_lengths_take_one_byte_below_255_and_three_from_it() {
        let mut out = Vec::new();
        variable(&mut out, &[7; 254]);
        assert_eq!(&out[..1], [254]);
        assert_eq!(out.len(), 255);
        out.clear();
        variable(&mut out, &[7; 255]);
        assert_eq!(&out[..3], [255, 0, 255]);
        out.clear();
        variable(&mut out, &[7; 300]);
        assert_eq!(&out[..3], [255, 0x01, 0x2c]);
        assert_eq!(out.len(), 303);
    }
}
