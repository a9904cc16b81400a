//! The userspace stages wired together, the same for live capture and replay: payload events
//! through the DNS and HTTP trackers, kernel entries through the flow table, and what they
//! produce turned into records for the metrics and every sink that takes their kind.

use std::{
    collections::VecDeque,
    io,
    net::IpAddr,
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant},
};

use devourer_common::{
    filter::FilterRule,
    flow::{C_FILTERED, OverflowKey, OverflowValue},
    payload::PayloadHeader,
};
use lru::LruCache;

use crate::{
    base::{
        net::{IPPROTO_TCP, IPPROTO_UDP},
        par,
        time::Clock,
    },
    decode::{
        LogLine,
        dns::{DnsOutput, DnsTracker},
        http::{HttpOutput, HttpTracker},
        tls::TlsTracker,
    },
    flow::{
        Emitted, Filters, FlowSource, FlowTable, Reports, Resolver, ScanStats, Status, Workload,
    },
    k8s::Cluster,
    kernel::{events::PayloadKind, maps::KernelCounters},
    ops::metrics::Metrics,
    record::{
        DnsRecord, FlowRecord, HttpRecord, LogRecord, OverflowRecord, RecordContext, Records,
    },
    sink::Sinks,
};

/// Flow records built and handed to the sinks at once at most.
const EMIT_PIECE: usize = 16_384;

/// The name records give interface `ifindex`.
fn interface_name(names: &LruCache<u32, Arc<str>>, default: &Arc<str>, ifindex: u32) -> Arc<str> {
    names.peek(&ifindex).unwrap_or(default).clone()
}

/// What a pipeline is built from (see `assembly::build`).
pub struct Parts {
    pub table: FlowTable,
    /// Threads a large batch of flow records is built on.
    pub record_threads: usize,
    pub sinks: Sinks,
    pub dns: Option<DnsTracker>,
    pub http: Option<HttpTracker>,
    pub tls: Option<TlsTracker>,
    pub metrics: Option<Arc<Metrics>>,
    pub agent: String,
    /// Seed of the records' Community ID.
    pub community_seed: u16,
    /// `--sampling` (flow records carry it).
    pub sampling: u32,
    /// `--filter`: the rules in order, and each one's action (metric labels).
    pub filters: Vec<FilterRule>,
    pub filter_actions: Vec<&'static str>,
    /// Interface name for indexes without one (`unknown` live, `pcap` offline).
    pub default_interface: &'static str,
    /// Interface names remembered at most (interfaces come and go on a node).
    pub max_interface_names: usize,
    /// How long a detached interface's metric series stay: until its last flows are out.
    pub interface_linger: Duration,
}

pub struct Pipeline {
    table: FlowTable,
    record_threads: usize,
    sinks: Sinks,
    dns: Option<DnsTracker>,
    http: Option<HttpTracker>,
    tls: Option<TlsTracker>,
    metrics: Option<Arc<Metrics>>,
    /// Shared by every record (one reference count, no copy each).
    agent: Arc<str>,
    community_seed: u16,
    sampling: u32,
    /// `--filter`, decided on each record after the NAT join.
    filters: Filters,
    filter_actions: Vec<&'static str>,
    default_interface: Arc<str>,
    /// ifindex -> interface name for records; the least recently named go first.
    names: LruCache<u32, Arc<str>>,
    max_interface_names: usize,
    /// Detached interfaces whose metric series go once their last flows are out, oldest
    /// first (at most `max_interface_names`).
    gone: VecDeque<(String, Instant)>,
    interface_linger: Duration,
    /// Program clock to wall clock (re-read live; zero offset offline).
    clock: Clock,
    scan_stats: ScanStats,
    records: u64,
    dns_out: DnsOutput,
    http_out: HttpOutput,
    /// Packets and bytes emitted in overflow records, for the summary.
    overflow: OverflowValue,
    /// Kubernetes metadata (`--k8s-metadata`).
    cluster: Option<Arc<Cluster>>,
}

/// Items whose room an emptied vector keeps for the next batch (a few MiB of records at most);
/// a larger batch (a busy turn, a flush of lost queries) gives the rest back.
const KEEP_ROOM: usize = 4096;

/// `v`, emptied, with at most [`KEEP_ROOM`] items' room.
fn keep_room<T>(mut v: Vec<T>) -> Vec<T> {
    v.clear();
    v.shrink_to(KEEP_ROOM);
    v
}

/// Where flows get their names: the DNS name cache and the Kubernetes objects, each if on.
struct Names<'a> {
    dns: Option<&'a mut DnsTracker>,
    cluster: Option<&'a Cluster>,
}

impl Resolver for Names<'_> {
    fn name(&mut self, client: IpAddr, addr: IpAddr, now: u64) -> Option<Arc<str>> {
        self.dns.as_mut()?.name(client, addr, now)
    }

    fn workload(&mut self, addr: IpAddr) -> Option<Arc<Workload>> {
        self.cluster?.lookup(addr)
    }
}

impl Pipeline {
    pub fn new(p: Parts) -> Self {
        Self {
            table: p.table,
            record_threads: p.record_threads.max(1),
            sinks: p.sinks,
            dns: p.dns,
            http: p.http,
            tls: p.tls,
            metrics: p.metrics,
            agent: p.agent.into(),
            community_seed: p.community_seed,
            sampling: p.sampling,
            filters: Filters::new(p.filters),
            filter_actions: p.filter_actions,
            default_interface: p.default_interface.into(),
            names: LruCache::new(
                NonZeroUsize::new(p.max_interface_names.max(1)).expect("non-zero"),
            ),
            max_interface_names: p.max_interface_names.max(1),
            gone: VecDeque::new(),
            interface_linger: p.interface_linger,
            clock: Clock::default(),
            scan_stats: ScanStats::default(),
            records: 0,
            dns_out: DnsOutput::default(),
            http_out: HttpOutput::default(),
            overflow: OverflowValue::default(),
            cluster: None,
        }
    }

    /// Names records' addresses with the Kubernetes objects that hold them.
    pub fn set_cluster(&mut self, cluster: Arc<Cluster>) {
        self.cluster = Some(cluster);
    }

    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// Names interfaces in records (more are added as they appear).
    pub fn name_interfaces(&mut self, names: impl IntoIterator<Item = (u32, String)>) {
        for (ifindex, name) in names {
            // Back (a re-created pod veth): its series stay.
            self.gone.retain(|(n, _)| *n != name);
            if let Some(m) = &self.metrics {
                // Its traffic series exist from the start, at 0.
                m.traffic(&name, 0, 0);
            }
            self.names.put(ifindex, name.into());
        }
    }

    /// Interfaces let go of: their metric series are removed once their flows are out.
    pub fn interfaces_gone(&mut self, names: Vec<String>) {
        let at = Instant::now() + self.interface_linger;
        for name in names {
            self.gone.push_back((name, at));
            if self.gone.len() > self.max_interface_names
                && let Some((oldest, _)) = self.gone.pop_front()
                && let Some(m) = &self.metrics
            {
                m.forget_interface(&oldest);
            }
        }
    }

    /// Removes the series of interfaces gone for longer than the linger.
    pub fn forget_gone_interfaces(&mut self, now: Instant) {
        while let Some((_, at)) = self.gone.front()
            && *at <= now
        {
            let (name, _) = self.gone.pop_front().expect("front");
            if let Some(m) = &self.metrics {
                m.forget_interface(&name);
            }
        }
    }

    /// How many interfaces have a name.
    pub fn named_interfaces(&self) -> usize {
        self.names.len()
    }

    pub fn interface_name(&self, ifindex: u32) -> Arc<str> {
        interface_name(&self.names, &self.default_interface, ifindex)
    }

    pub fn dns(&self) -> Option<&DnsTracker> {
        self.dns.as_ref()
    }

    pub fn http(&self) -> Option<&HttpTracker> {
        self.http.as_ref()
    }

    pub fn tls(&self) -> Option<&TlsTracker> {
        self.tls.as_ref()
    }

    /// Re-reads this host's addresses (they decide DNS and HTTP roles).
    pub fn refresh_local_addrs(&mut self) {
        let locals = [
            self.dns.as_mut().map(|d| &mut d.local),
            self.http.as_mut().map(|h| &mut h.local),
        ];
        for local in locals.into_iter().flatten() {
            if let Err(e) = local.refresh_from_interfaces() {
                tracing::warn!("re-reading this host's addresses failed: {e}");
            }
        }
    }

    /// Runs one payload event through its tracker; its records wait for [`Pipeline::emit`].
    pub fn payload(&mut self, kind: PayloadKind, h: &PayloadHeader, payload: &[u8]) {
        match kind {
            PayloadKind::Dns => {
                if let Some(dns) = &mut self.dns {
                    dns.on_event(h, payload, &mut self.dns_out);
                }
            }
            PayloadKind::Http => {
                if let Some(http) = &mut self.http {
                    http.on_event(h, payload, &mut self.http_out);
                }
            }
            PayloadKind::Tls => {
                if let Some(tls) = &mut self.tls {
                    tls.on_event(h, payload);
                }
            }
        }
    }

    /// Records and text lines of `kind` waiting to be written.
    pub fn backlog(&self, kind: PayloadKind) -> usize {
        match kind {
            PayloadKind::Dns => self.dns_out.txs.len() + self.dns_out.lines.len(),
            PayloadKind::Http => self.http_out.msgs.len() + self.http_out.lines.len(),
            // Handshakes become fields of flows: nothing of their own to write.
            PayloadKind::Tls => 0,
        }
    }

    /// Builds records with this pipeline's agent, clock and interface names.
    fn build<T>(&self, f: impl FnOnce(&RecordContext<'_>) -> T) -> T {
        let (names, default) = (&self.names, &self.default_interface);
        let name = |idx: u32| interface_name(names, default, idx);
        let cluster = self.cluster.as_deref();
        let workload = |a: IpAddr| cluster?.lookup(a);
        f(&RecordContext {
            agent: &self.agent,
            clock: self.clock,
            interface_name: &name,
            community_seed: self.community_seed,
            sampling: self.sampling,
            workload: &workload,
        })
    }

    /// Counts records in the metrics and hands them to every sink that takes them; `false`
    /// once a sink closed for good.
    fn send(&mut self, records: Records) -> bool {
        if let Some(m) = &self.metrics {
            m.records(records.all());
        }
        if !matches!(records, Records::DnsLog(_) | Records::HttpLog(_)) {
            self.records += records.len() as u64;
        }
        self.sinks.write(&records)
    }

    /// The text lines `--filter` keeps (each judged on its own endpoints: a DNS packet's, an
    /// HTTP message's as its client sent it), with wall-clock times.
    fn lines(&self, lines: Vec<LogLine>) -> Arc<Vec<LogRecord>> {
        Arc::new(
            lines
                .into_iter()
                .filter(|l| {
                    !self
                        .filters
                        .drops_exchange(l.ends.proto, l.ends.src, l.ends.dst)
                })
                .map(|l| LogRecord::new(l, self.clock))
                .collect(),
        )
    }

    /// Writes the records and text lines of `kind` produced so far; `false` when an output
    /// closed for good.
    pub fn emit(&mut self, kind: PayloadKind) -> bool {
        match kind {
            PayloadKind::Dns => {
                let mut out = std::mem::take(&mut self.dns_out);
                let filters = &self.filters;
                out.txs.retain(|t| {
                    let proto = if t.tcp { IPPROTO_TCP } else { IPPROTO_UDP };
                    !filters.drops_exchange(
                        proto,
                        (t.client, t.client_port),
                        (t.server, t.server_port),
                    )
                });
                let lines = self.lines(std::mem::take(&mut out.lines));
                self.send(Records::DnsLog(lines));
                let mut records = Vec::with_capacity(out.txs.len());
                self.build(|cx| records.extend(out.txs.drain(..).map(|t| DnsRecord::new(t, cx))));
                // The transactions' vector goes back with its room.
                self.dns_out.txs = keep_room(out.txs);
                self.send(Records::Dns(Arc::new(records)))
            }
            PayloadKind::Http => {
                let mut out = std::mem::take(&mut self.http_out);
                let filters = &self.filters;
                out.msgs.retain(|m| {
                    !filters.drops_exchange(
                        IPPROTO_TCP,
                        (m.client, m.client_port),
                        (m.server, m.server_port),
                    )
                });
                let lines = self.lines(out.lines);
                self.send(Records::HttpLog(lines));
                let records = self.build(|cx| {
                    out.msgs
                        .iter()
                        .map(|m| HttpRecord::new(m, cx))
                        .collect::<Vec<_>>()
                });
                self.send(Records::Http(Arc::new(records)))
            }
            PayloadKind::Tls => true,
        }
    }

    /// Hands what TLS handshakes told to the flow table (for the scan that follows), after
    /// giving up the ClientHellos still incomplete at `now`.
    fn note_tls(&mut self, now: Option<u64>) {
        if let Some(tls) = &mut self.tls {
            if let Some(now) = now {
                tls.expire(now);
            }
            self.table.note_tls(tls.take_found());
        }
    }

    /// Flow records in pieces of at most [`EMIT_PIECE`], each built on up to
    /// `record_threads` threads, so that a flush of every flow never holds all its records
    /// at once.
    fn emit_flows(&mut self, mut emitted: Vec<Emitted>) -> bool {
        // `--filter` decides each record on its key: the endpoints its client sent, before
        // any NAT, whichever interfaces saw which view.
        let filters = &mut self.filters;
        emitted.retain(|e| !filters.drops_flow(e));
        let mut open = true;
        for piece in emitted.chunks(EMIT_PIECE) {
            let parts = self.build(|cx| {
                par::map_parts(piece, self.record_threads, EMIT_PIECE / 8, |part| {
                    part.iter()
                        .map(|e| FlowRecord::new(e, cx))
                        .collect::<Vec<_>>()
                })
            });
            for records in parts {
                open &= self.send(Records::Flow(Arc::new(records)));
            }
        }
        open
    }

    /// Overflow records for what the overflow map aggregated until `now` (program clock);
    /// `false` when an output closed.
    pub fn emit_overflow(&mut self, entries: &[(OverflowKey, OverflowValue)], now: u64) -> bool {
        for (_, v) in entries {
            self.overflow.packets += v.packets;
            self.overflow.bytes += v.bytes;
        }
        let records = self.build(|cx| {
            entries
                .iter()
                .map(|(k, v)| OverflowRecord::new(k, v, now, cx))
                .collect::<Vec<_>>()
        });
        self.send(Records::Overflow(Arc::new(records)))
    }

    /// Packets and bytes emitted in overflow records so far.
    pub fn overflow_totals(&self) -> OverflowValue {
        self.overflow
    }

    /// One scan at `now`: lost DNS queries and forgotten HTTP requests, then due flows.
    /// `Ok(false)` when an output closed.
    /// `reports`: what the kernel dropped and retransmitted since the last scan (read before
    /// the flow map).
    pub fn scan(
        &mut self,
        src: &mut dyn FlowSource,
        now: u64,
        pressure: bool,
        reports: &Reports,
    ) -> io::Result<bool> {
        let started = Instant::now();
        if let Some(dns) = &mut self.dns {
            dns.expire(now, &mut self.dns_out);
        }
        if let Some(http) = &mut self.http {
            http.expire(now, &mut self.http_out);
        }
        if !self.emit(PayloadKind::Dns) || !self.emit(PayloadKind::Http) {
            return Ok(false);
        }
        self.note_tls(Some(now));
        let mut stats = self.scan_stats;
        let mut resolver = Names {
            dns: self.dns.as_mut(),
            cluster: self.cluster.as_deref(),
        };
        let out = self
            .table
            .scan(src, now, pressure, &mut stats, &mut resolver, reports)?;
        self.scan_stats = stats;
        self.count_traffic();
        let open = self.emit_flows(out);
        if let Some(m) = &self.metrics {
            m.scan_seconds.observe(started.elapsed().as_secs_f64());
        }
        Ok(open)
    }

    /// Emits every open flow with `status`, empties the kernel map, and ends every waiting DNS
    /// query as lost. `Ok(false)` when an output closed.
    pub fn flush(
        &mut self,
        src: &mut dyn FlowSource,
        status: Status,
        now: u64,
        reports: &Reports,
    ) -> io::Result<bool> {
        if let Some(dns) = &mut self.dns {
            dns.flush(&mut self.dns_out);
        }
        if let Some(http) = &mut self.http {
            http.flush(&mut self.http_out);
        }
        let open = self.emit(PayloadKind::Dns) & self.emit(PayloadKind::Http);
        self.note_tls(None);
        let mut resolver = Names {
            dns: self.dns.as_mut(),
            cluster: self.cluster.as_deref(),
        };
        let out = self.table.flush(src, status, &mut resolver, now, reports)?;
        self.count_traffic();
        Ok(self.emit_flows(out) && open)
    }

    /// Adds what the table read this scan to the per-interface traffic counters.
    fn count_traffic(&mut self) {
        let traffic = self.table.take_traffic();
        if let Some(m) = &self.metrics {
            for (ifindex, packets, bytes) in traffic {
                m.traffic(&self.interface_name(ifindex), packets, bytes);
            }
        }
    }

    /// Entries in the kernel flow map at the last scan.
    pub fn kernel_entries(&self) -> usize {
        self.scan_stats.kernel_entries
    }

    /// SIGHUP: reopen output files (logrotate moved them).
    pub fn reopen(&mut self) {
        self.sinks.reopen();
    }

    /// Whether every sink still accepts records (for /readyz).
    pub fn sinks_alive(&self) -> bool {
        self.sinks.alive()
    }

    /// Copies what the stages counted into the metrics.
    pub fn update_metrics(&self, kernel: &KernelCounters) {
        let Some(m) = &self.metrics else {
            return;
        };
        m.kernel(&self.with_filtered(kernel));
        m.filters(&self.filter_actions, self.filters.counts());
        m.flows_active.set(self.table.len() as i64);
        m.map_entries.set(self.scan_stats.kernel_entries as i64);
        if let Some(dns) = &self.dns {
            m.dns(&dns.stats, dns.pending());
        }
        for (name, report) in self.sinks.reports() {
            m.sink(name, &report);
        }
        m.limits(&self.limit_hits());
        m.nat(&self.table.nat_stats());
        m.drop_attribution(&self.table.drop_stats());
        m.retransmit_attribution(self.table.retransmit_stats());
        if let Some(tls) = &self.tls {
            let (flow, no_flow) = self.table.tls_stats();
            let s = &tls.stats;
            let mut outcomes = vec![
                ("client_hello", s.client_hellos),
                ("server_hello", s.server_hellos),
                ("flow", flow),
                ("no_flow", no_flow),
            ];
            outcomes.extend(s.failed.iter().map(|(k, v)| (*k, *v)));
            m.tls(&outcomes, tls.pending().1);
        }
    }

    /// The kernel's drops by reason so far into `devourer_drops_total`.
    pub fn update_drop_metrics(&self, totals: &[(&'static str, u64, u64)]) {
        if let Some(m) = &self.metrics {
            m.drops(totals);
        }
    }

    /// TCP records carry retransmissions from now on (the kernel reports them).
    pub fn follow_retransmits(&mut self) {
        self.table.follow_retransmits();
    }

    /// Records carry drops from now on (the kernel reports them).
    pub fn follow_drops(&mut self) {
        self.table.follow_drops();
    }

    /// The kernel's counters with `filtered` filled in: the packets of the records the
    /// `--filter` rules dropped (decided here, after the NAT join; the kernel counts them
    /// like any packet).
    pub fn with_filtered(&self, kernel: &KernelCounters) -> KernelCounters {
        let mut k = *kernel;
        k.0[C_FILTERED as usize] = self.filters.filtered();
        k
    }

    /// What each bound cut so far, by the flag that sets it (or the constant, `http_max_held`).
    pub fn limit_hits(&self) -> Vec<(&'static str, u64)> {
        let mut hits = vec![
            ("max_flows", self.table.table_full()),
            // Interfaces whose peer namespace the kernel's map had no room for (their pods'
            // sockets sample no RTT).
            ("peer_netns_entries", crate::kernel::netns::refused()),
        ];
        if let Some(dns) = &self.dns {
            let t = dns.tcp_stats();
            hits.extend([
                ("dns_max_pending", dns.matcher_stats().overflow),
                ("dns_max_tcp_streams", t.evicted),
                ("dns_tcp_max_bytes", t.evicted_bytes),
                ("dns_tcp_max_message", t.capped),
                ("dns_tcp_idle_timeout", t.expired),
            ]);
        }
        if let Some(http) = &self.http {
            hits.extend([
                ("http_max_pending", http.stats.evicted),
                ("http_max_held", http.stats.released_early),
            ]);
        }
        hits
    }

    /// Stops the sinks against `deadline`; returns (records emitted, records dropped by
    /// sinks). BigQuery rows not yet acknowledged stay in its spool.
    pub fn finish(self, deadline: Instant) -> (u64, u64) {
        (self.records, self.sinks.finish(deadline))
    }
}
