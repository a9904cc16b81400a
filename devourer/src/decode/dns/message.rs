//! DNS messages from the wire: decoded with hickory-proto, rendered the way dig prints them,
//! with every byte from the wire escaped (no packet can forge a log line or a JSON field).

use std::{borrow::Cow, fmt::Write as _, net::IpAddr};

use hickory_proto::{
    op::{Message, Query},
    rr::{DNSClass, Name, RData, Record, RecordType},
    serialize::binary::{BinDecodable, BinDecoder},
};

use crate::base::net::addr_text;

/// Why a payload could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParseError {
    /// Shorter than the 12-byte header.
    TooShort,
    /// The question section does not decode.
    BadQuestion,
}

impl ParseError {
    /// Every reason, as metrics label them.
    pub const REASONS: [&'static str; 2] = ["too_short", "bad_question"];

    pub fn reason(self) -> &'static str {
        match self {
            Self::TooShort => "too_short",
            Self::BadQuestion => "bad_question",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// Presentation form without the trailing dot (`""` for the root).
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

impl Question {
    /// Whether two questions ask the same thing (names compare case-insensitively).
    pub fn same(&self, other: &Question) -> bool {
        self.qtype == other.qtype
            && self.qclass == other.qclass
            && self.name.eq_ignore_ascii_case(&other.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The answer as dig prints it: `name ttl class type data` (built once: a record takes it
    /// as it is).
    line: String,
    /// Where the owner name ends and the RDATA starts in `line`.
    name_end: usize,
    data_start: usize,
    pub ttl: u32,
    pub class: u16,
    pub rtype: u16,
    /// RDATA as packetlog's dnslog printed it where that differs from dig's (names without
    /// the trailing dot, SOA timers in parentheses).
    log_data: Option<String>,
}

impl Answer {
    fn new(r: &Record, data: &str, log_data: Option<String>) -> Self {
        let (class, rtype) = (u16::from(r.dns_class), u16::from(r.record_type()));
        let mut ttl = itoa::Buffer::new();
        let mid = [ttl.format(r.ttl), &class_name(class), &type_name(rtype)];
        let mut line = String::with_capacity(
            r.name.len() + 2 + mid.iter().map(|m| m.len() + 1).sum::<usize>() + data.len(),
        );
        name_into(&mut line, &r.name, true);
        let name_end = line.len();
        for m in mid {
            line.push(' ');
            line.push_str(m);
        }
        line.push(' ');
        let data_start = line.len();
        line.push_str(data);
        Self {
            line,
            name_end,
            data_start,
            ttl: r.ttl,
            class,
            rtype,
            log_data,
        }
    }

    /// Owner name, presentation form with the trailing dot (as dig prints it).
    pub fn name(&self) -> &str {
        &self.line[..self.name_end]
    }

    /// RDATA as dig prints it.
    pub fn data(&self) -> &str {
        &self.line[self.data_start..]
    }

    /// RDATA as packetlog's dnslog printed it.
    pub fn data_log(&self) -> &str {
        self.log_data.as_deref().unwrap_or(self.data())
    }

    /// `name ttl class type data`, as in dig's answer section.
    pub fn dig(&self) -> &str {
        &self.line
    }

    /// The same, taken over.
    pub fn into_dig(self) -> String {
        self.line
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsMessage {
    pub id: u16,
    pub response: bool,
    pub opcode: u8,
    /// Response code, with the EDNS extended bits when an OPT record carries them.
    pub rcode: u16,
    /// Section counts as the header states them (QD, AN, NS, AR).
    pub counts: [u16; 4],
    pub question: Option<Question>,
    pub answers: Vec<Answer>,
    /// Addresses from A/AAAA answers for the question's name or a name its CNAME chain leads
    /// to, with their TTL: what names flows (other answers name nothing).
    pub addresses: Vec<(IpAddr, u32)>,
    /// A response whose records did not all decode (cut at the capture cap, or broken records
    /// after the question): the answers are those before the first that did not.
    pub partial: bool,
}

/// Decodes a message: a query's header and question, a response whole. Everything after the
/// question is optional: a response whose records are cut or broken still yields its id, flags
/// and question (`partial`).
pub fn parse(bytes: &[u8]) -> Result<DnsMessage, ParseError> {
    if bytes.len() < 12 {
        return Err(ParseError::TooShort);
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    let flags = u16::from_be_bytes([bytes[2], bytes[3]]);
    let counts = [4, 6, 8, 10].map(|i| u16::from_be_bytes([bytes[i], bytes[i + 1]]));
    let mut msg = DnsMessage {
        id,
        response: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0x0f) as u8,
        rcode: flags & 0x000f,
        counts,
        question: None,
        answers: Vec::new(),
        addresses: Vec::new(),
        partial: false,
    };
    if !msg.response {
        // A query: only its question is used (answers, names and the rcode's EDNS bits come
        // from responses), so the records after it (a query's EDNS OPT record, usually) are
        // not decoded, nor checked: `partial` is about responses.
        msg.question = first_question(bytes, counts[0])?.1.map(|q| question(&q));
        return Ok(msg);
    }
    match Message::from_vec(bytes) {
        Ok(m) => {
            msg.question = m.queries.first().map(question);
            if let Some(edns) = &m.edns {
                msg.rcode |= u16::from(edns.rcode_high()) << 4;
            }
            msg.add_answers(m.queries.first().map(Query::name), &m.answers);
        }
        Err(_) => {
            // Cut at the capture cap, or broken after some point: the question, then every
            // answer that decodes whole, in order.
            msg.partial = true;
            let (mut d, q) = first_question(bytes, counts[0])?;
            msg.question = q.as_ref().map(question);
            let mut records = Vec::new();
            let mut more = true;
            for _ in 1..counts[0] {
                if Query::read(&mut d).is_err() {
                    more = false;
                    break;
                }
            }
            for _ in 0..if more { counts[1] } else { 0 } {
                match Record::read(&mut d) {
                    Ok(r) => records.push(r),
                    Err(_) => break,
                }
            }
            msg.add_answers(q.as_ref().map(Query::name), &records);
        }
    }
    Ok(msg)
}

/// CNAMEs followed from the question's name at most (a longer chain names nothing further).
const MAX_CNAME_CHAIN: usize = 16;

/// The first of `qdcount` questions after the 12-byte header, and the decoder past it.
fn first_question(
    bytes: &[u8],
    qdcount: u16,
) -> Result<(BinDecoder<'_>, Option<Query>), ParseError> {
    let mut d = BinDecoder::new(bytes);
    d.read_slice(12).map_err(|_| ParseError::TooShort)?;
    if qdcount == 0 {
        return Ok((d, None));
    }
    let q = Query::read(&mut d).map_err(|_| ParseError::BadQuestion)?;
    Ok((d, Some(q)))
}

impl DnsMessage {
    /// Every answer as dig prints it; the addresses only of `qname` and the names its CNAME
    /// chain leads to (in any order of the records): a response cannot name an address it
    /// was not asked about.
    fn add_answers(&mut self, qname: Option<&Name>, records: &[Record]) {
        self.answers.extend(records.iter().filter_map(answer));
        let Some(qname) = qname else {
            return;
        };
        let mut chain: Vec<&Name> = vec![qname];
        let mut i = 0;
        while i < chain.len() && chain.len() <= MAX_CNAME_CHAIN {
            let owner = chain[i];
            for r in records {
                if let RData::CNAME(t) = &r.data
                    && r.name == *owner
                    && !chain.contains(&&t.0)
                {
                    chain.push(&t.0);
                }
            }
            i += 1;
        }
        for r in records {
            let addr = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            if chain.contains(&&r.name) {
                self.addresses.push((addr, r.ttl));
            }
        }
    }
}

fn question(q: &Query) -> Question {
    Question {
        name: name_text(q.name(), false),
        qtype: u16::from(q.query_type()),
        qclass: u16::from(q.query_class()),
    }
}

/// Appends `b`: after a backslash if it is one of `special`, as is if it is printable ASCII
/// from `lowest`, else as `\DDD`.
fn escape(out: &mut String, b: u8, special: [u8; 2], lowest: u8) {
    if special.contains(&b) {
        out.push('\\');
        out.push(b as char);
    } else if (lowest..=0x7e).contains(&b) {
        out.push(b as char);
    } else {
        let _ = write!(out, "\\{b:03}");
    }
}

/// A name in presentation form: printable ASCII as is, `.` and `\` inside labels escaped with
/// a backslash, every other byte as `\DDD`.
pub fn name_text(name: &Name, trailing_dot: bool) -> String {
    // Sized for the usual case (no escapes): one allocation, not a growth per doubling.
    let mut s = String::with_capacity(name.len() + 1);
    name_into(&mut s, name, trailing_dot);
    s
}

/// Appends [`name_text`]'s text to `s`.
fn name_into(s: &mut String, name: &Name, trailing_dot: bool) {
    let start = s.len();
    for label in name.iter() {
        if s.len() > start {
            s.push('.');
        }
        for &b in label {
            escape(s, b, [b'.', b'\\'], 0x21);
        }
    }
    if trailing_dot {
        s.push('.');
    }
}

/// A character string (TXT and friends) as dig prints it: in quotes, `"` and `\` escaped,
/// bytes outside printable ASCII as `\DDD`.
fn quoted(bytes: &[u8], out: &mut String) {
    out.push('"');
    for &b in bytes {
        escape(out, b, [b'"', b'\\'], 0x20);
    }
    out.push('"');
}

/// Escapes anything outside printable ASCII in text produced by hickory's Display impls.
fn sanitize(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        if (' '..='~').contains(&c) {
            s.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(s, "\\{b:03}");
            }
        }
    }
    s
}

fn hex_rdata(bytes: &[u8]) -> String {
    let mut s = format!("\\# {}", bytes.len());
    if !bytes.is_empty() {
        s.push(' ');
        for b in bytes {
            let _ = write!(s, "{b:02x}");
        }
    }
    s
}

fn answer(r: &Record) -> Option<Answer> {
    let named = |n: &Name| (name_text(n, true), Some(name_text(n, false)));
    let (data, log_data) = match &r.data {
        RData::A(a) => (addr_text(IpAddr::V4(a.0)).to_string(), None),
        RData::AAAA(a) => (a.0.to_string(), None),
        RData::CNAME(n) => named(&n.0),
        RData::NS(n) => named(&n.0),
        RData::PTR(n) => named(&n.0),
        RData::MX(mx) => (
            format!("{} {}", mx.preference, name_text(&mx.exchange, true)),
            Some(format!(
                "{} {}",
                mx.preference,
                name_text(&mx.exchange, false)
            )),
        ),
        RData::SOA(soa) => {
            let timers = format!(
                "{} {} {} {} {}",
                soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum
            );
            (
                format!(
                    "{} {} {timers}",
                    name_text(&soa.mname, true),
                    name_text(&soa.rname, true)
                ),
                Some(format!(
                    "{} {} ({timers})",
                    name_text(&soa.mname, false),
                    name_text(&soa.rname, false)
                )),
            )
        }
        RData::SRV(srv) => (
            format!(
                "{} {} {} {}",
                srv.priority,
                srv.weight,
                srv.port,
                name_text(&srv.target, true)
            ),
            Some(format!(
                "{} {} {} {}",
                srv.priority,
                srv.weight,
                srv.port,
                name_text(&srv.target, false)
            )),
        ),
        RData::TXT(txt) => {
            let mut s = String::new();
            for (i, part) in txt.txt_data.iter().enumerate() {
                if i > 0 {
                    s.push(' ');
                }
                quoted(part, &mut s);
            }
            (s, None)
        }
        RData::NULL(null) => (hex_rdata(&null.anything), None),
        RData::Unknown { rdata, .. } => (hex_rdata(&rdata.anything), None),
        // OPT has no presentation form (and lives in the EDNS field, not among answers).
        RData::OPT(_) => return None,
        other => {
            let mut s = String::new();
            if write!(s, "{other}").is_err() {
                s.clear();
            }
            (sanitize(&s), None)
        }
    };
    Some(Answer::new(r, &data, log_data))
}

/// Mnemonic for a record type, `TYPE123` for unknown ones (as dig prints them).
pub fn type_name(t: u16) -> Cow<'static, str> {
    match RecordType::from(t) {
        RecordType::Unknown(_) => format!("TYPE{t}").into(),
        rt => <&'static str>::from(rt).into(),
    }
}

/// Mnemonic for a class, `CLASS123` for unknown ones.
pub fn class_name(c: u16) -> Cow<'static, str> {
    match DNSClass::from(c) {
        DNSClass::IN => "IN".into(),
        DNSClass::CH => "CH".into(),
        DNSClass::HS => "HS".into(),
        DNSClass::NONE => "NONE".into(),
        DNSClass::ANY => "ANY".into(),
        _ => format!("CLASS{c}").into(),
    }
}

/// Mnemonic for a response code (RFC 6895 names, as dig prints them).
pub fn rcode_name(rc: u16) -> Cow<'static, str> {
    let known = match rc {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        11 => "DSOTYPENI",
        16 => "BADVERS",
        17 => "BADKEY",
        18 => "BADTIME",
        19 => "BADMODE",
        20 => "BADNAME",
        21 => "BADALG",
        22 => "BADTRUNC",
        23 => "BADCOOKIE",
        _ => return format!("RCODE{rc}").into(),
    };
    known.into()
}

#[cfg(test)]
mod tests;
