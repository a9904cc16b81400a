//! The records as sinks write them: flows ([`flow`]), DNS transactions ([`dns`]), HTTP messages
//! ([`http`]) and packetlog text lines ([`LogRecord`]), built from what the flow stage and the
//! decoders produced, with wall-clock times, interface names and stable ids ([`id`]).

pub mod community;
pub mod dns;
pub mod fields;
pub mod flow;
pub mod http;
pub mod id;
pub mod json;
pub mod k8s;
pub mod overflow;

use std::{net::IpAddr, sync::Arc};

pub use self::{dns::DnsRecord, flow::FlowRecord, http::HttpRecord, overflow::OverflowRecord};
use self::{
    fields::{Fields, Record},
    id::RecordId,
    json::Object,
};
use crate::{
    base::{
        inline::AddrText,
        net::addr_text,
        time::{Clock, Timestamp, rfc3339},
    },
    decode::LogLine,
    flow::Workload,
};

/// What records are built with: the agent's name, the clock that turns program time into wall
/// time, interface names and the Community ID seed.
pub struct RecordContext<'a> {
    pub agent: &'a Arc<str>,
    pub clock: Clock,
    pub interface_name: &'a (dyn Fn(u32) -> Arc<str> + Sync),
    pub community_seed: u16,
    /// `--sampling`: one packet in this many was counted.
    pub sampling: u32,
    /// The Kubernetes object holding an address now (DNS and HTTP records' `*_k8s_*`).
    pub workload: &'a (dyn Fn(IpAddr) -> Option<Arc<Workload>> + Sync),
}

/// The fields DNS and HTTP records open with: which exchange, seen where and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeHead {
    pub kind: &'static str,
    pub id: RecordId,
    pub agent: Arc<str>,
    pub interface: Arc<str>,
    pub time: Timestamp,
    pub client: AddrText,
    pub client_port: u16,
    pub server: AddrText,
    pub server_port: u16,
    /// Community ID v1 of the connection ([`community`]).
    pub community_id: community::CommunityId,
    /// `client_k8s_*`/`server_k8s_*`: the Kubernetes objects of both ends.
    pub k8s: k8s::K8sFields,
    /// Where a DNAT sent the exchange (a Service's backend; `server` is what the client
    /// asked for), else null; `xlat_server_k8s_*`: its Kubernetes object.
    pub xlat_server: Option<AddrText>,
    pub xlat_server_port: Option<u16>,
    pub xlat_k8s: k8s::XlatK8s,
}

impl ExchangeHead {
    /// The head of a `kind` record seen on `ifindex` at `time_ns` (program clock) between
    /// `client` and `server` over `proto` (TCP or UDP); `id` makes its id from the client's and
    /// server's addresses as the record shows them.
    pub fn new(
        (kind, proto): (&'static str, u8),
        id: impl FnOnce((&str, &str)) -> RecordId,
        cx: &RecordContext<'_>,
        (ifindex, time_ns): (u32, u64),
        (client, client_port): (IpAddr, u16),
        (server, server_port): (IpAddr, u16),
        xlat: Option<(IpAddr, u16)>,
    ) -> Self {
        let community_id = community::community_id(
            cx.community_seed,
            client,
            server,
            proto,
            community::Ports::Ports(client_port, server_port),
        );
        // Formatted once: the record shows them and its id hashes them.
        let (client_text, server_text) = (addr_text(client), addr_text(server));
        Self {
            kind,
            id: id((&client_text, &server_text)),
            agent: cx.agent.clone(),
            interface: (cx.interface_name)(ifindex),
            time: rfc3339(cx.clock.wall(time_ns)),
            client: client_text,
            client_port,
            server: server_text,
            server_port,
            community_id,
            k8s: k8s::K8sFields::exchange((cx.workload)(client), (cx.workload)(server)),
            xlat_server: xlat.map(|(a, _)| addr_text(a)),
            xlat_server_port: xlat.map(|(_, p)| p),
            xlat_k8s: k8s::XlatK8s(xlat.and_then(|(a, _)| (cx.workload)(a))),
        }
    }

    /// A head of no exchange (`kind` records' columns are read from it).
    pub fn sample(kind: &'static str) -> Self {
        Self {
            kind,
            id: Default::default(),
            agent: "".into(),
            interface: "".into(),
            time: Default::default(),
            client: Default::default(),
            client_port: 0,
            server: Default::default(),
            server_port: 0,
            community_id: Default::default(),
            k8s: k8s::K8sFields::exchange(None, None),
            xlat_server: None,
            xlat_server_port: None,
            xlat_k8s: Default::default(),
        }
    }
}

/// The head's fields, first in its record.
impl Record for ExchangeHead {
    fn fields<F: Fields>(&self, o: &mut F) {
        o.str("type", self.kind);
        o.str("id", &self.id);
        o.str("agent", &self.agent);
        o.str("interface", &self.interface);
        o.time("time", &self.time);
        o.str("client", &self.client);
        o.uint("client_port", self.client_port.into());
        o.str("server", &self.server);
        o.uint("server_port", self.server_port.into());
        o.str("community_id", &self.community_id);
        self.k8s.fields(o);
        o.opt_str("xlat_server", self.xlat_server.as_deref());
        o.opt_uint("xlat_server_port", self.xlat_server_port.map(u64::from));
        self.xlat_k8s.fields(o);
    }
}

/// The kinds of record a sink may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Flow,
    /// What the full flow map could not hold, per interface and protocol.
    Overflow,
    Dns,
    Http,
    /// packetlog DNS text lines.
    DnsLog,
    /// packetlog HTTP text lines.
    HttpLog,
}

/// A packetlog text line with its wall-clock time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub wall_ns: u64,
    /// packetlog's kind: CQ, CR, SQ, SR, Q, R.
    pub kind: &'static str,
    /// Everything after the time.
    pub body: String,
}

impl LogRecord {
    pub fn new(l: LogLine, clock: Clock) -> Self {
        Self {
            wall_ns: clock.wall(l.ts_ns),
            kind: l.kind,
            body: l.body,
        }
    }
}

/// Records of one kind, built once and shared by every sink that takes them (each on its own
/// thread): the pipeline hands them over and goes on.
#[derive(Clone, Debug)]
pub enum Records {
    Flow(Arc<Vec<FlowRecord>>),
    Overflow(Arc<Vec<OverflowRecord>>),
    Dns(Arc<Vec<DnsRecord>>),
    Http(Arc<Vec<HttpRecord>>),
    DnsLog(Arc<Vec<LogRecord>>),
    HttpLog(Arc<Vec<LogRecord>>),
}

impl Records {
    /// The records of `range`, borrowed.
    pub fn batch(&self, range: std::ops::Range<usize>) -> Batch<'_> {
        match self {
            Self::Flow(x) => Batch::Flow(&x[range]),
            Self::Overflow(x) => Batch::Overflow(&x[range]),
            Self::Dns(x) => Batch::Dns(&x[range]),
            Self::Http(x) => Batch::Http(&x[range]),
            Self::DnsLog(x) => Batch::DnsLog(&x[range]),
            Self::HttpLog(x) => Batch::HttpLog(&x[range]),
        }
    }

    pub fn all(&self) -> Batch<'_> {
        self.batch(0..self.len())
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Flow(x) => x.len(),
            Self::Overflow(x) => x.len(),
            Self::Dns(x) => x.len(),
            Self::Http(x) => x.len(),
            Self::DnsLog(x) | Self::HttpLog(x) => x.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// About how many bytes of memory a record holds (itself and what it alone points to; strings
/// shared with other records, such as names and the agent, are not counted): what the sinks'
/// queues are bounded by.
pub trait Footprint {
    fn footprint(&self) -> usize;
}

fn string_bytes(s: &Option<String>) -> usize {
    s.as_ref().map_or(0, String::capacity)
}

impl Footprint for FlowRecord {
    fn footprint(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.interfaces.capacity() * std::mem::size_of::<flow::Observed>()
    }
}

impl Footprint for OverflowRecord {
    fn footprint(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

impl Footprint for DnsRecord {
    fn footprint(&self) -> usize {
        std::mem::size_of::<Self>()
            + string_bytes(&self.q_name)
            + self.answers.capacity() * std::mem::size_of::<String>()
            + self.answers.iter().map(String::capacity).sum::<usize>()
    }
}

impl Footprint for HttpRecord {
    fn footprint(&self) -> usize {
        std::mem::size_of::<Self>()
            + [
                &self.method,
                &self.target,
                &self.version,
                &self.host,
                &self.user_agent,
                &self.reason,
                &self.content_type,
            ]
            .into_iter()
            .map(string_bytes)
            .sum::<usize>()
            + self.truncated.capacity() * std::mem::size_of::<&str>()
    }
}

impl Footprint for LogRecord {
    fn footprint(&self) -> usize {
        std::mem::size_of::<Self>() + self.body.capacity()
    }
}

impl Batch<'_> {
    /// About how many bytes of memory the records hold ([`Footprint`]).
    pub fn footprint(&self) -> usize {
        fn sum<T: Footprint>(r: &[T]) -> usize {
            r.iter().map(Footprint::footprint).sum()
        }
        match self {
            Self::Flow(r) => sum(r),
            Self::Overflow(r) => sum(r),
            Self::Dns(r) => sum(r),
            Self::Http(r) => sum(r),
            Self::DnsLog(r) | Self::HttpLog(r) => sum(r),
        }
    }
}

/// Records of one kind, on their way to the sinks that take that kind.
#[derive(Clone, Copy, Debug)]
pub enum Batch<'a> {
    Flow(&'a [FlowRecord]),
    Overflow(&'a [OverflowRecord]),
    Dns(&'a [DnsRecord]),
    Http(&'a [HttpRecord]),
    DnsLog(&'a [LogRecord]),
    HttpLog(&'a [LogRecord]),
}

impl<'a> Batch<'a> {
    /// The batch in pieces of at most `n` records, in order.
    pub fn chunks(self, n: usize) -> impl Iterator<Item = Batch<'a>> {
        let (n, len) = (n.max(1), self.len());
        (0..len).step_by(n).map(move |i| {
            let r = i..(i + n).min(len);
            match self {
                Self::Flow(x) => Self::Flow(&x[r]),
                Self::Overflow(x) => Self::Overflow(&x[r]),
                Self::Dns(x) => Self::Dns(&x[r]),
                Self::Http(x) => Self::Http(&x[r]),
                Self::DnsLog(x) => Self::DnsLog(&x[r]),
                Self::HttpLog(x) => Self::HttpLog(&x[r]),
            }
        })
    }

    pub fn kind(&self) -> Kind {
        match self {
            Self::Flow(_) => Kind::Flow,
            Self::Overflow(_) => Kind::Overflow,
            Self::Dns(_) => Kind::Dns,
            Self::Http(_) => Kind::Http,
            Self::DnsLog(_) => Kind::DnsLog,
            Self::HttpLog(_) => Kind::HttpLog,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Flow(r) => r.len(),
            Self::Overflow(r) => r.len(),
            Self::Dns(r) => r.len(),
            Self::Http(r) => r.len(),
            Self::DnsLog(r) | Self::HttpLog(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Walks each record's fields with `e` (text lines have no fields
    /// and give none); returns how many records it walked.
    pub fn encode<E: Encoder>(&self, e: &mut E) -> usize {
        fn all<T: Record, E: Encoder>(records: &[T], e: &mut E) -> usize {
            for r in records {
                e.record(r);
            }
            records.len()
        }
        match self {
            Self::Flow(r) => all(r, e),
            Self::Overflow(r) => all(r, e),
            Self::Dns(r) => all(r, e),
            Self::Http(r) => all(r, e),
            Self::DnsLog(_) | Self::HttpLog(_) => 0,
        }
    }

    /// Appends the records as JSON lines (text lines have no JSON form and add nothing);
    /// returns how many were written.
    pub fn write_json(&self, out: &mut Vec<u8>) -> usize {
        self.encode(&mut JsonLines(out))
    }
}

/// What turns a batch's records into bytes, one at a time ([`Batch::encode`]).
pub trait Encoder {
    fn record<R: Record>(&mut self, r: &R);
}

/// JSON lines.
pub struct JsonLines<'a>(pub &'a mut Vec<u8>);

impl Encoder for JsonLines<'_> {
    #[inline]
    fn record<R: Record>(&mut self, r: &R) {
        Object::write(r, self.0);
        self.0.push(b'\n');
    }
}

/// JSON lines without the `type` field (BigQuery rows: the table is the type).
pub struct RowLines<'a>(pub &'a mut Vec<u8>);

impl Encoder for RowLines<'_> {
    fn record<R: Record>(&mut self, r: &R) {
        let mut o = Object::open(self.0);
        r.fields(&mut fields::Without {
            inner: &mut o,
            key: "type",
        });
        o.close();
        self.0.push(b'\n');
    }
}

/// msgpack maps, one after another.
pub struct MsgpackMaps<'a>(pub &'a mut Vec<u8>);

impl Encoder for MsgpackMaps<'_> {
    fn record<R: Record>(&mut self, r: &R) {
        fields::Msgpack::write(r, self.0);
    }
}
