//! HTTP request and response records (`type: "http"`, packetlog httplog fields).

use super::{
    ExchangeHead, RecordContext,
    fields::{Fields, Record},
    id::http_id,
};
use crate::{
    base::net::IPPROTO_TCP,
    decode::http::{HttpMsg, message::Message},
};

/// An HTTP request or response (`type: "http"`, packetlog httplog fields).
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRecord {
    pub head: ExchangeHead,
    pub role: &'static str,
    /// `request` or `response` (the `kind` field).
    pub message: &'static str,
    /// Requests: theirs; responses: the matched request's.
    pub method: Option<String>,
    pub target: Option<String>,
    pub version: Option<String>,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub status_code: Option<u16>,
    pub reason: Option<String>,
    pub content_length: Option<u64>,
    pub content_type: Option<String>,
    /// Seconds since the matched request (responses).
    pub latency: Option<f64>,
    /// Fields cut short by the segment's end, the capture cap or the length limits.
    pub truncated: Vec<&'static str>,
}

impl Record for HttpRecord {
    fn fields<F: Fields>(&self, o: &mut F) {
        self.head.fields(o);
        o.str("role", self.role);
        o.str("kind", self.message);
        o.opt_str("method", self.method.as_deref());
        o.opt_str("target", self.target.as_deref());
        o.opt_str("version", self.version.as_deref());
        o.opt_str("host", self.host.as_deref());
        o.opt_str("user_agent", self.user_agent.as_deref());
        o.opt_uint("status_code", self.status_code.map(u64::from));
        o.opt_str("reason", self.reason.as_deref());
        o.opt_uint("content_length", self.content_length);
        o.opt_str("content_type", self.content_type.as_deref());
        o.float("latency", self.latency);
        o.strs("truncated", &self.truncated);
    }
}

impl HttpRecord {
    pub fn new(m: &HttpMsg, cx: &RecordContext<'_>) -> Self {
        let mut r = Self {
            head: ExchangeHead::new(
                ("http", IPPROTO_TCP),
                |addrs| http_id(m, addrs, cx.agent),
                cx,
                (m.ifindex, m.time_ns),
                (m.client, m.client_port),
                (m.server, m.server_port),
                m.xlat,
            ),
            role: m.role.as_str(),
            message: "request",
            method: None,
            target: None,
            version: None,
            host: None,
            user_agent: None,
            status_code: None,
            reason: None,
            content_length: None,
            content_type: None,
            latency: m.latency_ns.map(|ns| ns as f64 / 1e9),
            truncated: Vec::new(),
        };
        match &m.message {
            Message::Request(q) => {
                r.method = Some(q.method.clone());
                r.target.clone_from(&q.target);
                r.version.clone_from(&q.version);
                r.host.clone_from(&q.host);
                r.user_agent.clone_from(&q.user_agent);
                r.truncated.clone_from(&q.truncated);
            }
            Message::Response(s) => {
                r.message = "response";
                if let Some((method, target)) = &m.request {
                    r.method = Some(method.clone());
                    r.target.clone_from(target);
                }
                r.version = Some(s.version.clone());
                r.status_code = Some(s.status_code);
                r.reason.clone_from(&s.reason);
                r.content_length = s.content_length;
                r.content_type.clone_from(&s.content_type);
                r.truncated.clone_from(&s.truncated);
            }
        }
        r
    }
}
