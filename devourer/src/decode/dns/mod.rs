//! DNS: turns the kernel's port-53 payload events into transactions (success, lost, no_query)
//! with latency, feeds the name cache from answers, and produces packetlog-style log lines.

pub mod logline;
pub mod matcher;
pub mod message;
pub mod names;
pub mod tcp;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub mod testwire;

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use devourer_common::payload::{PAYLOAD_F_IPV6, PayloadHeader};

use self::{
    logline::line,
    matcher::{Matcher, Pending, ResponseMatch, Seen, TxKey},
    message::{Answer, DnsMessage, Question, parse},
    names::{Asker, NameCache},
    tcp::{StreamKey, TcpLimits, TcpStreams},
};
use super::{Ends, LogLine};
use crate::base::{
    local::{LocalAddrs, Role},
    net::{IPPROTO_TCP, ip},
};

#[derive(Clone, Copy, Debug)]
pub struct DnsConfig {
    /// A query unanswered this long is lost (ns).
    pub timeout_ns: u64,
    pub max_pending: usize,
    /// Bounds on DNS-over-TCP reassembly.
    pub tcp: TcpLimits,
    pub name_cache_entries: usize,
    /// Any client's answers name every flow (`--dns-names shared`), not only the client's own.
    pub shared_names: bool,
    /// Produce packetlog text lines.
    pub text_log: bool,
}

/// Why a transaction record was emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TxStatus {
    Success,
    Lost,
    NoQuery,
}

impl TxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Lost => "lost",
            Self::NoQuery => "no_query",
        }
    }
}

/// One finished DNS transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsTx {
    pub status: TxStatus,
    /// Query time (response time for `no_query`), program clock.
    pub time_ns: u64,
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
    pub tcp: bool,
    pub msg_id: u16,
    pub question: Option<Question>,
    pub rcode: Option<u16>,
    /// dig-style answer lines.
    pub answers: Vec<String>,
    pub latency_ns: Option<u64>,
    pub role: Role,
    pub ifindex: u32,
    /// The response was longer than what was captured (`--dns-cap`, a cut TCP segment, a
    /// lost one): the answers are those that fit.
    pub cut: bool,
    /// The server a DNAT sent the query to (a Service's backend; `server` is the address the
    /// client asked).
    pub xlat: Option<(IpAddr, u16)>,
}

/// What the tracker counted (for the closing summary and metrics).
#[derive(Clone, Debug, Default)]
pub struct DnsStats {
    pub events: u64,
    pub messages: u64,
    /// Responses whose records after the question were cut or broken (still matched).
    pub partial: u64,
    pub parse_errors: BTreeMap<&'static str, u64>,
    /// Answer addresses not learned as names: their response matched no query we saw.
    pub names_refused: u64,
    pub transactions: BTreeMap<&'static str, u64>,
}

/// Transactions and log lines produced by one call.
#[derive(Debug, Default)]
pub struct DnsOutput {
    pub txs: Vec<DnsTx>,
    pub lines: Vec<LogLine>,
}

pub struct DnsTracker {
    cfg: DnsConfig,
    tcp: TcpStreams,
    matcher: Matcher,
    pub names: NameCache,
    pub local: LocalAddrs,
    pub stats: DnsStats,
}

/// The server a query's translated copy went to, when it is not the one the client asked (a
/// masquerade alone translates only the client).
fn translated_server(p: &Pending, server: IpAddr, port: u16) -> Option<(IpAddr, u16)> {
    let copy = p.xlat?;
    let to = (ip(&copy.server, p.v6), copy.server_port);
    (to != (server, port)).then_some(to)
}

fn endpoint(addr: IpAddr, port: u16) -> String {
    format!("{addr}#{port}")
}

impl DnsTracker {
    pub fn new(cfg: DnsConfig, local: LocalAddrs) -> Self {
        Self {
            tcp: TcpStreams::new(cfg.tcp),
            matcher: Matcher::new(cfg.timeout_ns, cfg.max_pending),
            names: NameCache::new(cfg.name_cache_entries),
            local,
            stats: DnsStats::default(),
            cfg,
        }
    }

    pub fn pending(&self) -> usize {
        self.matcher.len()
    }

    /// Whose resolutions `client`'s are: this host's (any of its own addresses, loopback
    /// included; live, not every address of `--local-net`, which holds pods and other
    /// machines), its own, or anyone's with `--dns-names shared`.
    fn asker(&self, client: IpAddr) -> Asker {
        if self.cfg.shared_names {
            Asker::Anyone
        } else if client.is_loopback() || self.local.is_own(&client) {
            Asker::Host
        } else {
            Asker::Client(client)
        }
    }

    /// The name `client` resolved `addr` from, valid at `now`.
    pub fn name(&mut self, client: IpAddr, addr: IpAddr, now: u64) -> Option<Arc<str>> {
        let asker = self.asker(client);
        self.names.lookup(asker, &addr, now)
    }

    pub fn matcher_stats(&self) -> matcher::MatcherStats {
        self.matcher.stats
    }

    pub fn tcp_stats(&self) -> tcp::TcpStats {
        self.tcp.stats
    }

    /// One event from the kernel: a UDP datagram's or a TCP segment's payload.
    pub fn on_event(&mut self, h: &PayloadHeader, payload: &[u8], out: &mut DnsOutput) {
        self.stats.events += 1;
        if h.proto == IPPROTO_TCP {
            let key = StreamKey {
                src: h.src_addr,
                dst: h.dst_addr,
                sport: h.src_port,
                dport: h.dst_port,
                ifindex: h.ifindex,
            };
            let messages = self.tcp.segment(
                key,
                h.tcp_seq,
                h.tcp_flags,
                h.ts_ns,
                payload,
                h.payload_len as usize,
            );
            for m in messages {
                self.on_message(h, &m.bytes, m.cut, out);
            }
        } else {
            let cut = (payload.len() as u32) < h.payload_len;
            self.on_message(h, payload, cut, out);
        }
    }

    /// One message; `cut` when some of its bytes were never captured (the answers are those
    /// that fit).
    fn on_message(&mut self, h: &PayloadHeader, bytes: &[u8], cut: bool, out: &mut DnsOutput) {
        let m = match parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                *self.stats.parse_errors.entry(e.reason()).or_default() += 1;
                tracing::debug!(
                    len = bytes.len(),
                    reason = e.reason(),
                    "undecodable DNS payload"
                );
                return;
            }
        };
        self.stats.messages += 1;
        if m.partial {
            self.stats.partial += 1;
        }
        let v6 = h.flags & PAYLOAD_F_IPV6 != 0;
        let (src, dst) = (ip(&h.src_addr, v6), ip(&h.dst_addr, v6));
        let (client, server, cport, sport) = if m.response {
            (dst, src, h.dst_port, h.src_port)
        } else {
            (src, dst, h.src_port, h.dst_port)
        };
        let role = self.local.role(&client, &server);
        if self.cfg.text_log {
            let mut l = line(
                h.ts_ns,
                &endpoint(src, h.src_port),
                &endpoint(dst, h.dst_port),
                role,
                &m,
            );
            l.ends = Ends {
                src: (src, h.src_port),
                dst: (dst, h.dst_port),
                proto: h.proto,
            };
            out.lines.push(l);
        }
        let key = TxKey {
            client: if m.response { h.dst_addr } else { h.src_addr },
            server: if m.response { h.src_addr } else { h.dst_addr },
            client_port: cport,
            server_port: sport,
            proto: h.proto,
            id: m.id,
        };
        if !m.response {
            let q = m.question.unwrap_or(Question {
                name: String::new(),
                qtype: 0,
                qclass: 0,
            });
            let at = Seen {
                ifindex: h.ifindex,
                own_client: self.local.is_own(&client),
                live: self.local.is_live(),
            };
            for (k, p) in self.matcher.query(key, q, h.ts_ns, at, v6) {
                self.emit_lost(k, p, out);
            }
            return;
        }
        match self.matcher.response(key, m.question.as_ref()) {
            ResponseMatch::Matched(asked, p) => {
                // Under the endpoints the client sent it from and to (a translated copy's
                // response answers the client's query).
                let (client, cport) = (ip(&asked.client, v6), asked.client_port);
                let (server, sport) = (ip(&asked.server, v6), asked.server_port);
                let role = self.local.role(&client, &server);
                // Names only from answers to queries we saw: an unsolicited (spoofed)
                // response must not rename a flow's peer.
                if let Some(q) = &m.question {
                    let asker = self.asker(client);
                    for (addr, ttl) in &m.addresses {
                        self.names.learn(asker, *addr, &q.name, *ttl, h.ts_ns);
                    }
                }
                let mut tx = self.answered(h, m, client, server, cport, sport, role, Some(p));
                tx.cut = cut;
                self.push(tx, out);
            }
            ResponseMatch::Unmatched => {
                self.stats.names_refused += m.addresses.len() as u64;
                let mut tx = self.answered(h, m, client, server, cport, sport, role, None);
                tx.cut = cut;
                self.push(tx, out);
            }
            ResponseMatch::Duplicate => {}
        }
    }

    #[expect(clippy::too_many_arguments, reason = "the endpoints of one exchange")]
    fn answered(
        &self,
        h: &PayloadHeader,
        m: DnsMessage,
        client: IpAddr,
        server: IpAddr,
        cport: u16,
        sport: u16,
        role: Role,
        query: Option<Pending>,
    ) -> DnsTx {
        let xlat = query
            .as_ref()
            .and_then(|p| translated_server(p, server, sport));
        let query = query.map(|p| (p.first_ns, p.ifindex, p.question));
        DnsTx {
            status: if query.is_some() {
                TxStatus::Success
            } else {
                TxStatus::NoQuery
            },
            time_ns: query.as_ref().map_or(h.ts_ns, |q| q.0),
            client,
            client_port: cport,
            server,
            server_port: sport,
            tcp: h.proto == IPPROTO_TCP,
            msg_id: m.id,
            latency_ns: query.as_ref().map(|q| h.ts_ns.saturating_sub(q.0)),
            ifindex: query.as_ref().map_or(h.ifindex, |q| q.1),
            question: m.question.or(query.map(|q| q.2)),
            rcode: Some(m.rcode),
            answers: m.answers.into_iter().map(Answer::into_dig).collect(),
            role,
            cut: false,
            xlat,
        }
    }

    fn emit_lost(&mut self, k: TxKey, p: Pending, out: &mut DnsOutput) {
        let client = ip(&k.client, p.v6);
        let server = ip(&k.server, p.v6);
        let role = self.local.role(&client, &server);
        let xlat = translated_server(&p, server, k.server_port);
        let tx = DnsTx {
            status: TxStatus::Lost,
            time_ns: p.first_ns,
            client,
            client_port: k.client_port,
            server,
            server_port: k.server_port,
            tcp: k.proto == IPPROTO_TCP,
            msg_id: k.id,
            question: Some(p.question),
            rcode: None,
            answers: Vec::new(),
            latency_ns: None,
            role,
            ifindex: p.ifindex,
            cut: false,
            xlat,
        };
        self.push(tx, out);
    }

    fn push(&mut self, tx: DnsTx, out: &mut DnsOutput) {
        *self
            .stats
            .transactions
            .entry(tx.status.as_str())
            .or_default() += 1;
        out.txs.push(tx);
    }

    /// Queries unanswered for `--dns-timeout` at `now` end as lost.
    pub fn expire(&mut self, now: u64, out: &mut DnsOutput) {
        for (k, p) in self.matcher.expire(now) {
            self.emit_lost(k, p, out);
        }
        self.tcp.expire(now);
    }

    /// Bytes held for DNS-over-TCP messages in progress.
    pub fn tcp_held_bytes(&self) -> usize {
        self.tcp.held_bytes()
    }

    /// Shutdown or end of input: every query still waiting ends as lost.
    pub fn flush(&mut self, out: &mut DnsOutput) {
        for (k, p) in self.matcher.drain() {
            self.emit_lost(k, p, out);
        }
    }
}
