//! The userspace pipeline shared by live capture and offline replay: scans the flow table,
//! runs DNS and HTTP events through their trackers, turns due flows, finished transactions and
//! HTTP messages into records for the sinks and lines for the text logs; reports what the
//! kernel counted outside flows.

use std::{collections::HashMap, io, sync::Arc};

use devourer_common::{
    dns::DnsEventHeader,
    flow::{OverflowKey, OverflowValue},
};

use crate::{
    bq::{BqSink, Kind},
    dns::{DnsOutput, DnsTracker},
    flow::{Emitted, FlowSource, FlowTable, NoNames, Resolver, ScanStats, Status, TableConfig},
    http::{HttpOutput, HttpTracker},
    kmaps::{KernelCounters, PerCpuHash, read_overflow},
    metrics::Metrics,
    record::{Clock, DnsRecord, FlowRecord, HttpRecord, RecordContext, protocol_name},
    sink::JsonLinesSink,
    textlog::TextLog,
};

pub struct Pipeline {
    pub table: FlowTable,
    /// JSON lines (stdout or a file), unless `--output none`.
    pub sink: Option<JsonLinesSink>,
    pub bq: Option<BqSink>,
    pub agent: String,
    pub clock: Clock,
    /// ifindex -> interface name for records.
    pub names: HashMap<u32, String>,
    /// Name for interfaces not in `names`.
    pub default_name: String,
    pub scan_stats: ScanStats,
    pub records: u64,
    pub dns: Option<DnsTracker>,
    pub dns_log: Option<TextLog>,
    pub http: Option<HttpTracker>,
    pub http_log: Option<TextLog>,
    pub metrics: Option<Arc<Metrics>>,
    dns_out: DnsOutput,
    http_out: HttpOutput,
}

impl Pipeline {
    pub fn new(cfg: TableConfig, sink: Option<JsonLinesSink>, agent: String, clock: Clock) -> Self {
        Self {
            table: FlowTable::new(cfg),
            sink,
            bq: None,
            agent,
            clock,
            names: HashMap::new(),
            default_name: "unknown".into(),
            scan_stats: ScanStats::default(),
            records: 0,
            dns: None,
            dns_log: None,
            metrics: None,
            dns_out: DnsOutput::default(),
            http: None,
            http_log: None,
            http_out: HttpOutput::default(),
        }
    }

    /// Builds records with this pipeline's agent, clock and interface names.
    fn build<T>(&self, f: impl FnOnce(&RecordContext<'_>) -> Vec<T>) -> Vec<T> {
        let names = &self.names;
        let default = &self.default_name;
        let name = |idx: u32| names.get(&idx).cloned().unwrap_or_else(|| default.clone());
        f(&RecordContext {
            agent: &self.agent,
            clock: self.clock,
            interface_name: &name,
        })
    }

    /// Hands records to every sink; `false` once the JSON output has closed.
    fn send<T: serde::Serialize>(&mut self, kind: Kind, records: &[T]) -> bool {
        self.records += records.len() as u64;
        if let Some(bq) = &self.bq {
            bq.send(kind, records);
        }
        self.sink.as_ref().is_none_or(|s| s.send(records))
    }

    fn emit_flows(&mut self, emitted: &[Emitted]) -> bool {
        let records = self.build(|cx| emitted.iter().map(|e| FlowRecord::new(e, cx)).collect());
        if let Some(m) = &self.metrics {
            for r in &records {
                m.flows_emitted.with_label_values(&[r.status]).inc();
                m.flow_packets
                    .with_label_values(&[&r.interface])
                    .inc_by(r.src_packets + r.dst_packets);
                m.flow_bytes
                    .with_label_values(&[&r.interface])
                    .inc_by(r.src_bytes + r.dst_bytes);
            }
        }
        self.send(Kind::Flow, &records)
    }

    /// SIGHUP: reopen the JSON output file and the DNS log files (logrotate moved them).
    pub fn reopen(&mut self) {
        if let Some(s) = &self.sink {
            s.reopen();
        }
        if let Some(l) = &mut self.dns_log {
            l.reopen();
        }
        if let Some(l) = &mut self.http_log {
            l.reopen();
        }
    }

    /// Whether every sink still accepts records (for /readyz).
    pub fn sinks_alive(&self) -> bool {
        self.sink
            .as_ref()
            .is_none_or(|s| !s.stats.closed.load(std::sync::atomic::Ordering::Relaxed))
            && self.bq.as_ref().is_none_or(BqSink::alive)
    }

    /// Runs one DNS event through the tracker; its records wait for [`Pipeline::emit_dns`].
    pub fn dns_event(&mut self, h: &DnsEventHeader, payload: &[u8]) {
        if let Some(dns) = &mut self.dns {
            dns.on_event(h, payload, &mut self.dns_out);
        }
    }

    /// DNS records and log lines waiting to be written.
    pub fn dns_backlog(&self) -> usize {
        self.dns_out.txs.len() + self.dns_out.lines.len()
    }

    /// Writes the DNS records and log lines produced so far; `false` when the output closed.
    pub fn emit_dns(&mut self) -> bool {
        let out = std::mem::take(&mut self.dns_out);
        if let Some(log) = &mut self.dns_log {
            for l in &out.lines {
                log.write(l, self.clock);
            }
            log.flush();
        }
        let records = self.build(|cx| out.txs.iter().map(|t| DnsRecord::new(t, cx)).collect());
        if let Some(m) = &self.metrics {
            for r in &records {
                let rcode = r.rcode.as_deref().unwrap_or("none");
                m.dns_transactions
                    .with_label_values(&[r.status, rcode])
                    .inc();
                if let Some(l) = r.latency {
                    m.dns_latency.observe(l);
                }
            }
        }
        self.send(Kind::Dns, &records)
    }

    /// Runs one HTTP event through the tracker; its records wait for [`Pipeline::emit_http`].
    pub fn http_event(&mut self, h: &DnsEventHeader, payload: &[u8]) {
        if let Some(http) = &mut self.http {
            http.on_event(h, payload, &mut self.http_out);
        }
    }

    /// HTTP records and log lines waiting to be written.
    pub fn http_backlog(&self) -> usize {
        self.http_out.msgs.len() + self.http_out.lines.len()
    }

    /// Writes the HTTP records (JSON lines only) and log lines produced so far; `false` when
    /// the output closed.
    pub fn emit_http(&mut self) -> bool {
        let out = std::mem::take(&mut self.http_out);
        if let Some(log) = &mut self.http_log {
            for l in &out.lines {
                log.write(l, self.clock);
            }
            log.flush();
        }
        let records = self.build(|cx| out.msgs.iter().map(|m| HttpRecord::new(m, cx)).collect());
        if let Some(m) = &self.metrics {
            for r in &records {
                m.http_messages
                    .with_label_values(&[r.message, r.role])
                    .inc();
                if let Some(l) = r.latency {
                    m.http_latency.observe(l);
                }
            }
        }
        self.records += records.len() as u64;
        self.sink.as_ref().is_none_or(|s| s.send(&records))
    }

    /// One scan at `now`: lost DNS queries and forgotten HTTP requests, then due flows.
    /// `Ok(false)` when the output closed.
    pub fn scan(&mut self, src: &mut dyn FlowSource, now: u64, pressure: bool) -> io::Result<bool> {
        if let Some(dns) = &mut self.dns {
            dns.expire(now, &mut self.dns_out);
        }
        if let Some(http) = &mut self.http {
            http.expire(now);
        }
        if !self.emit_dns() || !self.emit_http() {
            return Ok(false);
        }
        let mut stats = self.scan_stats;
        let resolver: &mut dyn Resolver = match &mut self.dns {
            Some(dns) => &mut dns.names,
            None => &mut NoNames,
        };
        let out = self.table.scan(src, now, pressure, &mut stats, resolver)?;
        self.scan_stats = stats;
        Ok(self.emit_flows(&out))
    }

    /// Emits every open flow with `status`, empties the kernel map, and ends every waiting DNS
    /// query as lost.
    pub fn flush(
        &mut self,
        src: &mut dyn FlowSource,
        status: Status,
        now: u64,
    ) -> io::Result<bool> {
        if let Some(dns) = &mut self.dns {
            dns.flush(&mut self.dns_out);
        }
        let open = self.emit_dns() & self.emit_http();
        let resolver: &mut dyn Resolver = match &mut self.dns {
            Some(dns) => &mut dns.names,
            None => &mut NoNames,
        };
        let out = self.table.flush(src, status, resolver, now)?;
        Ok(self.emit_flows(&out) && open)
    }

    /// Stops the sinks, each waiting up to `deadline`; returns (records emitted, JSON lines
    /// dropped). BigQuery rows not yet acknowledged stay in its spool.
    pub fn finish(self, deadline: std::time::Duration) -> (u64, u64) {
        let dropped = match self.sink {
            Some(sink) => {
                let stats = sink.stats.clone();
                sink.finish(deadline);
                stats.dropped.load(std::sync::atomic::Ordering::Relaxed)
            }
            None => 0,
        };
        if let Some(bq) = self.bq {
            bq.finish(deadline);
        }
        (self.records, dropped)
    }

    /// Logs what the HTTP side counted.
    pub fn report_http(&self) {
        let Some(http) = &self.http else {
            return;
        };
        let s = &http.stats;
        tracing::info!(
            events = s.events,
            requests = s.requests,
            responses = s.responses,
            matched = s.matched,
            unanswered = s.unanswered + http.pending() as u64,
            not_http = s.not_http.values().sum::<u64>(),
            log_lines = self.http_log.as_ref().map_or(0, |l| l.lines),
            log_failed = self.http_log.as_ref().map_or(0, |l| l.failed),
            "http"
        );
    }

    /// Logs what the DNS side counted.
    pub fn report_dns(&self) {
        let Some(dns) = &self.dns else {
            return;
        };
        let s = &dns.stats;
        let m = dns.matcher_stats();
        let t = dns.tcp_stats();
        let tx = |k: &str| s.transactions.get(k).copied().unwrap_or(0);
        tracing::info!(
            events = s.events,
            messages = s.messages,
            success = tx("success"),
            lost = tx("lost"),
            no_query = tx("no_query"),
            partial = s.partial,
            parse_errors = s.parse_errors.values().sum::<u64>(),
            retransmits = m.retransmits,
            duplicates = m.duplicates,
            pending_overflow = m.overflow,
            tcp_gaps = t.gaps,
            tcp_cut = t.cut,
            log_lines = self.dns_log.as_ref().map_or(0, |l| l.lines),
            log_failed = self.dns_log.as_ref().map_or(0, |l| l.failed),
            "dns"
        );
        for (reason, n) in &s.parse_errors {
            tracing::info!(reason, count = n, "dns payloads that did not decode");
        }
    }
}

/// What the kernel counted outside flow records, for the closing summary and warnings.
pub fn report_kernel(
    counters: &KernelCounters,
    overflow: &mut PerCpuHash<OverflowKey, OverflowValue>,
    names: &dyn Fn(u32) -> String,
) -> io::Result<()> {
    tracing::info!(
        packets = counters.packets,
        non_ip = counters.non_ip,
        malformed = counters.malformed,
        map_full = counters.map_full,
        overflow_full_packets = counters.overflow_full_packets,
        dns_events = counters.dns_events,
        dns_ring_full = counters.dns_ring_full,
        dns_cut = counters.dns_cut,
        http_events = counters.http_events,
        http_ring_full = counters.http_ring_full,
        http_cut = counters.http_cut,
        "kernel counters"
    );
    for (k, v) in read_overflow(overflow)? {
        tracing::warn!(
            interface = %names(k.ifindex),
            protocol = %protocol_name(k.proto),
            packets = v.packets,
            bytes = v.bytes,
            "counted in the overflow map, not in flow records (the flow map was full; raise --flow-map-entries)"
        );
    }
    if counters.overflow_full_packets > 0 {
        tracing::error!(
            packets = counters.overflow_full_packets,
            bytes = counters.overflow_full_bytes,
            "the overflow map was full too: these were counted only in totals"
        );
    }
    if counters.dns_ring_full > 0 {
        tracing::error!(
            events = counters.dns_ring_full,
            "DNS payloads dropped: the DNS ring buffer was full (raise --dns-ring-size)"
        );
    }
    if counters.http_ring_full > 0 {
        tracing::error!(
            events = counters.http_ring_full,
            "HTTP payloads dropped: the HTTP ring buffer was full (raise --http-ring-size)"
        );
    }
    Ok(())
}
