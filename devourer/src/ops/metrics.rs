//! Prometheus metrics: what the kernel counted, the records emitted, the flow table and the
//! decoders' state, the sinks' outcomes and capture on request. Names and labels are part of
//! the contract (the Grafana dashboard queries them).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use devourer_common::{
    filter::{FilterCounts, MAX_FILTER_RULES},
    flow::COUNTERS,
};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{
    decode::dns::{DnsStats, message::ParseError},
    flow::{Status, drops::DropStats, nat::NatStats},
    kernel::maps::KernelCounters,
    record::Batch,
    sink::{RequestObserver, SinkReport},
};

/// Latency buckets (seconds): 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Buckets of the time between two scan starts (seconds), as the issue on stalls asks.
const SCAN_GAP_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];
/// Scan duration buckets (seconds): 10 µs to 5 s.
const SCAN_BUCKETS: &[f64] = &[
    0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub struct Metrics {
    pub registry: Registry,
    records: RecordMetrics,
    pub flows_active: IntGauge,
    pub map_entries: IntGauge,
    pub map_capacity: IntGauge,
    pub map_bytes: IntGauge,
    pub scan_seconds: Histogram,
    pub scan_gap: Histogram,
    kernel: IntCounterVec,
    dns_parse_errors: IntCounterVec,
    dns_names_refused: IntCounter,
    pub dns_pending: IntGauge,
    pub capture: CaptureMetrics,
    pub k8s: K8sMetrics,
    sink_rows: IntCounterVec,
    sink_dropped: IntCounterVec,
    sink_queue: IntGaugeVec,
    sink_spool_bytes: IntGaugeVec,
    sink_last_success: IntGaugeVec,
    sink_table_rows: IntCounterVec,
    sink_messages: IntCounterVec,
    spool_bytes: IntGauge,
    bq_last_success: IntGauge,
    sink_request_seconds: HistogramVec,
    limit_hits: IntCounterVec,
    conntrack_lookups: IntCounterVec,
    filter_packets: IntCounterVec,
    filter_bytes: IntCounterVec,
    nat_duplicates: IntCounter,
    conntrack_walks: IntCounter,
    drops: IntCounterVec,
    drop_bytes: IntCounterVec,
    drop_attribution: IntCounterVec,
    retransmit_attribution: IntCounterVec,
    tls_messages: IntCounterVec,
    tls_pending_bytes: IntGauge,
    pub interfaces: IntGauge,
    /// 1 for each feature newer than the floor the running kernel has, 0 where devourer falls
    /// back (`kernel::features`).
    pub kernel_feature: IntGaugeVec,
    /// TCP health and drops by workload, under the series budget.
    pub workloads: super::workloads::WorkloadMetrics,
    /// Last absolute values of counters kept elsewhere, to add only what is new.
    seen: Mutex<HashMap<String, u64>>,
}

/// What the records on their way to the sinks add up to.
struct RecordMetrics {
    flow_packets: IntCounterVec,
    flow_bytes: IntCounterVec,
    flows_emitted: IntCounterVec,
    dns_transactions: IntCounterVec,
    dns_latency: Histogram,
    http_messages: IntCounterVec,
    http_latency: Histogram,
}

impl RecordMetrics {
    fn new(r: &Reg) -> Self {
        Self {
            flow_packets: r.counters(
                "devourer_packets_total",
                "Packets counted, by the interface that counted them (once per node: the first that saw the flow), updated every scan; summed over time, what the flow records carry plus what --filter dropped (kernel event filtered).",
                &["interface"],
            ),
            flow_bytes: r.counters(
                "devourer_bytes_total",
                "IP-layer bytes counted, by the interface that counted them, updated every scan.",
                &["interface"],
            ),
            flows_emitted: r.counters(
                "devourer_flows_emitted_total",
                "Flow records emitted, by status.",
                &["status"],
            ),
            dns_transactions: r.counters(
                "devourer_dns_transactions_total",
                "DNS transactions, by status and rcode (unassigned codes as `other`).",
                &["status", "rcode"],
            ),
            dns_latency: r.histogram(
                "devourer_dns_latency_seconds",
                "Time from a DNS query to its response.",
                LATENCY_BUCKETS,
            ),
            http_messages: r.counters(
                "devourer_http_messages_total",
                "HTTP requests and responses seen, by kind and role.",
                &["kind", "role"],
            ),
            http_latency: r.histogram(
                "devourer_http_latency_seconds",
                "Time from an HTTP request to its response (first segments).",
                LATENCY_BUCKETS,
            ),
        }
    }
}

/// Capture on request.
pub struct CaptureMetrics {
    /// Requests by outcome.
    pub requests: IntCounterVec,
    /// Capture files by result.
    pub files: IntCounterVec,
    pub packets: IntCounter,
    /// 1 while the Redis trigger is subscribed.
    pub redis_subscribed: IntGauge,
    /// Subscriptions made (the first, then one per reconnect).
    pub redis_subscriptions: IntCounter,
    /// 1 while the Kafka trigger reads its topic.
    pub kafka_connected: IntGauge,
    /// Failures of the Kafka trigger (unreachable brokers, refused requests); each is
    /// retried after a backoff.
    pub kafka_errors: IntCounter,
    /// Memory held by captures in flight.
    pub memory: IntGauge,
}

impl CaptureMetrics {
    fn new(r: &Reg) -> Self {
        Self {
            requests: r.counters(
                "devourer_capture_requests_total",
                "Capture requests by outcome: accepted, other_node, or the reason they were rejected.",
                &["outcome"],
            ),
            files: r.counters(
                "devourer_captures_total",
                "Capture files by result: written, uploaded, upload_failed_kept_locally, failed.",
                &["result"],
            ),
            packets: r.counter(
                "devourer_captured_packets_total",
                "Packets written to capture files.",
            ),
            redis_subscribed: r.gauge(
                "devourer_capture_redis_subscribed",
                "1 while subscribed to the Redis capture channel, else 0.",
            ),
            redis_subscriptions: r.counter(
                "devourer_capture_redis_subscriptions_total",
                "Subscriptions to the Redis capture channel (the first, then one per reconnect).",
            ),
            kafka_connected: r.gauge(
                "devourer_capture_kafka_connected",
                "1 while the Kafka capture trigger reads every partition of its topic, else 0.",
            ),
            kafka_errors: r.counter(
                "devourer_capture_kafka_errors_total",
                "Failures of the Kafka capture trigger (brokers unreachable or refusing), each retried after a backoff.",
            ),
            memory: r.gauge(
                "devourer_capture_memory_bytes",
                "Memory held by captures in flight (packets and socket buffers), at most [capture] max_memory.",
            ),
        }
    }
}

/// Kubernetes metadata (`--k8s-metadata`).
pub struct K8sMetrics {
    /// Objects held, by kind (pods, services, nodes, replicasets).
    pub objects: IntGaugeVec,
    /// Watches restarted after an error, by kind.
    pub watch_restarts: IntCounterVec,
    /// New objects not kept at the byte cap, by kind.
    pub refused: IntCounterVec,
    pub cache_bytes: IntGauge,
    pub lookups_missed: IntCounter,
    /// 1 while some watch is not following its objects.
    pub stale: IntGauge,
}

/// The kinds of object watched (metric labels).
pub const K8S_KINDS: [&str; 4] = ["pods", "services", "nodes", "replicasets"];

impl K8sMetrics {
    fn new(r: &Reg) -> Self {
        let objects = r.add(
            IntGaugeVec::new(
                Opts::new(
                    "devourer_k8s_objects",
                    "Kubernetes objects held for naming records, by kind.",
                ),
                &["kind"],
            )
            .expect("metric"),
        );
        let m = Self {
            objects,
            watch_restarts: r.counters(
                "devourer_k8s_watch_restarts_total",
                "Kubernetes watches restarted after an error (API server unreachable, refusing, or a watch that expired), by kind.",
                &["kind"],
            ),
            refused: r.counters(
                "devourer_k8s_objects_refused_total",
                "New Kubernetes objects not kept because the metadata held reached --k8s-max-bytes, by kind.",
                &["kind"],
            ),
            cache_bytes: r.gauge(
                "devourer_k8s_cache_bytes",
                "Memory held by Kubernetes metadata (estimate), at most --k8s-max-bytes.",
            ),
            lookups_missed: r.counter(
                "devourer_k8s_lookups_missed_total",
                "Addresses looked up for records that no known pod holds (a node, a Service, outside the cluster, or not known yet).",
            ),
            stale: r.gauge(
                "devourer_k8s_metadata_stale",
                "1 while some Kubernetes watch is not following its objects (not listed yet, or the API server lost): names may be missing or old.",
            ),
        };
        for kind in K8S_KINDS {
            m.objects.with_label_values(&[kind]).set(0);
            m.watch_restarts.with_label_values(&[kind]).inc_by(0);
            m.refused.with_label_values(&[kind]).inc_by(0);
        }
        m
    }
}

/// Registers metrics on one registry (every name is registered once, at start).
struct Reg(Registry);

impl Reg {
    fn add<M: prometheus::core::Collector + Clone + 'static>(&self, m: M) -> M {
        self.0
            .register(Box::new(m.clone()))
            .expect("metric registered once");
        m
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("metric"))
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("metric"))
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(Histogram::with_opts(opts).expect("metric"))
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let r = Reg(Registry::new());
        let build = r.add(
            IntGaugeVec::new(
                Opts::new(
                    "devourer_build_info",
                    "Build of the running agent (always 1).",
                ),
                &["version"],
            )
            .expect("metric"),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        {
            let _ = r.0.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        let kernel_help = format!(
            "What the kernel program counted, by event: {}.",
            COUNTERS
                .iter()
                .map(|c| format!("{} ({})", c.metric, c.help.trim_end_matches('.')))
                .collect::<Vec<_>>()
                .join("; ")
        );
        let m = Self {
            records: RecordMetrics::new(&r),
            flows_active: r.gauge("devourer_flows_active", "Flows open in the agent's table."),
            map_entries: r.gauge(
                "devourer_kernel_map_entries",
                "Entries in the kernel flow map at the last scan.",
            ),
            map_capacity: r.gauge(
                "devourer_kernel_map_capacity",
                "Entries the kernel flow map holds at most.",
            ),
            map_bytes: r.gauge(
                "devourer_kernel_map_bytes",
                "Kernel memory of the program's maps (estimate): the shared flow map, flat in the CPU count, the rings and the small per-CPU parts.",
            ),
            scan_seconds: r.histogram(
                "devourer_eviction_scan_duration_seconds",
                "Time one scan of the kernel flow map takes.",
                SCAN_BUCKETS,
            ),
            scan_gap: r.histogram(
                "devourer_scan_gap_seconds",
                "Time between the starts of two scans of the kernel flow map (the scan interval when nothing holds the counting thread up).",
                SCAN_GAP_BUCKETS,
            ),
            kernel: r.counters("devourer_kernel_events_total", &kernel_help, &["event"]),
            dns_parse_errors: r.counters(
                "devourer_dns_parse_errors_total",
                "DNS payloads that did not decode, by reason.",
                &["reason"],
            ),
            dns_names_refused: r.counter(
                "devourer_dns_names_refused_total",
                "Addresses in DNS answers not learned as flow names: the response matched no query the agent saw (unsolicited or spoofed).",
            ),
            dns_pending: r.gauge("devourer_dns_pending", "DNS queries awaiting a response."),
            capture: CaptureMetrics::new(&r),
            k8s: K8sMetrics::new(&r),
            sink_rows: r.counters(
                "devourer_sink_rows_total",
                "Records by sink and outcome (written, sent, retried, dead_lettered, dropped).",
                &["sink", "outcome"],
            ),
            sink_dropped: r.counters(
                "devourer_sink_dropped_total",
                "Records a sink lost, by sink: its queue was full (--sink-queue-records, --sink-queue-bytes), its spool was full, it could not write them, or they were still queued at the shutdown deadline.",
                &["sink"],
            ),
            sink_queue: r.add(
                IntGaugeVec::new(
                    Opts::new(
                        "devourer_sink_queue_records",
                        "Records waiting in a sink's queue for its thread.",
                    ),
                    &["sink"],
                )
                .expect("metric"),
            ),
            spool_bytes: r.gauge(
                "devourer_spool_bytes",
                "Bytes waiting in the BigQuery spool.",
            ),
            sink_spool_bytes: r.add(
                IntGaugeVec::new(
                    Opts::new(
                        "devourer_sink_spool_bytes",
                        "Bytes waiting in a spooling sink's spool (bigquery, fluent, kafka).",
                    ),
                    &["sink"],
                )
                .expect("metric"),
            ),
            sink_last_success: r.add(
                IntGaugeVec::new(
                    Opts::new(
                        "devourer_sink_last_success_timestamp_seconds",
                        "When a remote sink's destination last acknowledged a batch (Unix time, 0: never).",
                    ),
                    &["sink"],
                )
                .expect("metric"),
            ),
            sink_table_rows: r.counters(
                "devourer_sink_table_records_total",
                "Records by sink, destination table or topic (kafka: the configured topics), and outcome (spooled, sent, retried, quarantined, dropped).",
                &["sink", "table", "outcome"],
            ),
            sink_messages: r.counters(
                "devourer_sink_messages_total",
                "Messages a sink without acknowledgements sent, by outcome (ipfix: sent, error).",
                &["sink", "outcome"],
            ),
            bq_last_success: r.gauge(
                "devourer_bigquery_last_success_timestamp_seconds",
                "When BigQuery last acknowledged a batch (Unix time, 0: never).",
            ),
            sink_request_seconds: r.add(
                HistogramVec::new(
                    HistogramOpts::new(
                        "devourer_sink_request_duration_seconds",
                        "Duration of requests to a remote sink.",
                    ),
                    &["sink"],
                )
                .expect("metric"),
            ),
            limit_hits: r.counters(
                "devourer_limit_hits_total",
                "What a configured bound cut, by the flag that sets it (max_flows: flows emitted early as table_full; dns_max_pending: queries ended as lost; dns_max_tcp_streams, dns_tcp_max_bytes, dns_tcp_idle_timeout: DNS-over-TCP connections forgotten; dns_tcp_max_message: messages kept in part; http_max_pending: requests forgotten; http_max_held: requests emitted before their wait for a DNAT copy ended, past 4096 held).",
                &["limit"],
            ),
            conntrack_lookups: r.counters(
                "devourer_conntrack_lookups_total",
                "Flows looked up in conntrack to join NAT'd connections, by result (translated, not_translated, error: a failed attempt, asked again up to --conntrack-retries; skipped: emitted before their turn, --conntrack-lookups-per-scan; gave_up: emitted unjoined once every retry failed).",
                &["result"],
            ),
            filter_packets: r.counters(
                "devourer_filter_packets_total",
                "Packets each --filter rule matched (the first that matched decides), by rule number (1 is the first) and action: drop ones are in no record.",
                &["rule", "action"],
            ),
            filter_bytes: r.counters(
                "devourer_filter_bytes_total",
                "IP-layer bytes each --filter rule matched, by rule number and action.",
                &["rule", "action"],
            ),
            nat_duplicates: r.counter(
                "devourer_nat_duplicates_total",
                "Records not emitted: the translated copy of a connection whose pre-translation flow is recorded (its packets are counted there).",
            ),
            drops: r.counters(
                "devourer_drops_total",
                "Packets the kernel dropped, by its reason (the running kernel's enum skb_drop_reason names, without SKB_DROP_REASON_; SUBSYS_* for a subsystem's own reasons), on any interface or none (5.17 and newer).",
                &["reason"],
            ),
            drop_bytes: r.counters(
                "devourer_drop_bytes_total",
                "Bytes of the packets the kernel dropped (their length when freed), by reason.",
                &["reason"],
            ),
            retransmit_attribution: r.counters(
                "devourer_tcp_retransmits_attributed_total",
                "Retransmitted TCP segments the kernel reported, by whether a flow in the table held their socket's tuple (flow: on that flow's records; no_flow: no monitored interface counted the connection).",
                &["outcome"],
            ),
            tls_messages: r.counters(
                "devourer_tls_handshakes_total",
                "TLS handshake messages from the TLS ring, by outcome (client_hello, server_hello: read; flow, no_flow: whether a flow in the table took what they said; incomplete, not_hello, malformed: read nothing; timeout: a ClientHello still missing segments after --tls-timeout; evicted: given up to stay within --tls-max-pending-bytes; fragmented: past 64 pieces; orphan: a segment whose ClientHello was not being reassembled; repeated: a retransmitted segment of a ClientHello read already; found_full: past 65536 waiting for a scan).",
                &["outcome"],
            ),
            tls_pending_bytes: r.gauge(
                "devourer_tls_pending_bytes",
                "Bytes of ClientHellos being reassembled (at most --tls-max-pending-bytes).",
            ),
            drop_attribution: r.counters(
                "devourer_drops_attributed_total",
                "Dropped packets with an IP tuple, by whether a flow in the table held it (flow: added to that flow; no_flow: no monitored interface counted the packet, so only devourer_drops_total has it; unrecorded: added to a flow that ended before another record of it, so in no record).",
                &["outcome"],
            ),
            conntrack_walks: r.counter(
                "devourer_conntrack_walks_total",
                "Filtered walks of the kernel's whole conntrack table (ICMP query flows' lookups; at most --conntrack-walks-per-scan per scan).",
            ),
            interfaces: r.gauge(
                "devourer_interfaces_attached",
                "Interfaces being monitored.",
            ),
            kernel_feature: r.add(
                IntGaugeVec::new(
                    Opts::new(
                        "devourer_kernel_feature",
                        "Kernel features newer than 5.10 that devourer uses: 1 present, 0 absent (a fallback is used; see README's support table).",
                    ),
                    &["feature"],
                )
                .expect("metric"),
            ),
            workloads: super::workloads::WorkloadMetrics::new(&r.0),
            seen: Mutex::new(HashMap::new()),
            registry: r.0,
        };
        m.known_labels();
        Arc::new(m)
    }

    /// Creates every series whose label values are known in advance, at 0, so a fresh agent's
    /// dashboard shows 0 rather than no data.
    fn known_labels(&self) {
        for s in Status::ALL {
            self.records.flows_emitted.with_label_values(&[s.as_str()]);
        }
        for rcode in [
            "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
        ] {
            for status in ["success", "no_query"] {
                self.records
                    .dns_transactions
                    .with_label_values(&[status, rcode]);
            }
        }
        self.records
            .dns_transactions
            .with_label_values(&["lost", rcode_label(None)]);
        for reason in ParseError::REASONS {
            self.dns_parse_errors.with_label_values(&[reason]);
        }
        for c in COUNTERS {
            self.kernel.with_label_values(&[c.metric]);
        }
        for kind in ["request", "response"] {
            for role in ["client", "server", "transit"] {
                self.records.http_messages.with_label_values(&[kind, role]);
            }
        }
        for outcome in [
            "translated",
            "not_translated",
            "error",
            "skipped",
            "gave_up",
        ] {
            self.conntrack_lookups.with_label_values(&[outcome]);
        }
    }

    /// Adds to `counter` what `total` (an absolute count kept elsewhere) gained since last time.
    fn sync(&self, key: &str, counter: &IntCounter, total: u64) {
        let mut seen = self.seen.lock().expect("metrics lock");
        let last = seen.entry(key.to_owned()).or_insert(0);
        if total > *last {
            counter.inc_by(total - *last);
        }
        *last = (*last).max(total);
    }

    /// Every kernel counter, labelled as the shared counter table says.
    pub fn kernel(&self, k: &KernelCounters) {
        for (c, v) in k.iter() {
            self.sync(
                &format!("kernel/{}", c.metric),
                &self.kernel.with_label_values(&[c.metric]),
                v,
            );
        }
    }

    pub fn dns(&self, s: &DnsStats, pending: usize) {
        for (reason, n) in &s.parse_errors {
            self.sync(
                &format!("dns_parse/{reason}"),
                &self.dns_parse_errors.with_label_values(&[reason]),
                *n,
            );
        }
        self.sync(
            "dns_names_refused",
            &self.dns_names_refused,
            s.names_refused,
        );
        self.dns_pending.set(pending as i64);
    }

    /// A sink's absolute counts and backlog (from its own statistics).
    pub fn sink(&self, sink: &str, report: &SinkReport) {
        self.sync(
            &format!("sink_dropped/{sink}"),
            &self.sink_dropped.with_label_values(&[sink]),
            report.dropped(),
        );
        self.sink_queue
            .with_label_values(&[sink])
            .set(report.queued as i64);
        for (outcome, total) in &report.outcomes {
            self.sync(
                &format!("sink/{sink}/{outcome}"),
                &self.sink_rows.with_label_values(&[sink, outcome]),
                *total,
            );
        }
        for (table, outcome, total) in &report.by_table {
            self.sync(
                &format!("sink_table/{sink}/{table}/{outcome}"),
                &self
                    .sink_table_rows
                    .with_label_values(&[sink, table, outcome]),
                *total,
            );
        }
        for (outcome, total) in &report.messages {
            self.sync(
                &format!("sink_messages/{sink}/{outcome}"),
                &self.sink_messages.with_label_values(&[sink, outcome]),
                *total,
            );
        }
        if let Some(b) = report.spool_bytes {
            self.sink_spool_bytes
                .with_label_values(&[sink])
                .set(b as i64);
            if sink == "bigquery" {
                self.spool_bytes.set(b as i64);
            }
        }
        if let Some(t) = report.last_success {
            self.sink_last_success
                .with_label_values(&[sink])
                .set(t as i64);
            if sink == "bigquery" {
                self.bq_last_success.set(t as i64);
            }
        }
    }

    /// The counter of one bound, for a stage that counts as it cuts.
    pub fn limit_counter(&self, limit: &str) -> IntCounter {
        self.limit_hits.with_label_values(&[limit])
    }

    /// What each bound cut, as absolute counts (from the stages' statistics).
    pub fn limits(&self, hits: &[(&'static str, u64)]) {
        for (limit, total) in hits {
            self.sync(
                &format!("limit/{limit}"),
                &self.limit_hits.with_label_values(&[limit]),
                *total,
            );
        }
    }

    /// What each `--filter` rule matched (kept or dropped), by rule number and action.
    pub fn filters(&self, actions: &[&'static str], counts: &FilterCounts) {
        for (i, action) in actions.iter().enumerate().take(MAX_FILTER_RULES) {
            let rule = (i + 1).to_string();
            for (what, v, c) in [
                ("packets", counts.packets[i], &self.filter_packets),
                ("bytes", counts.bytes[i], &self.filter_bytes),
            ] {
                self.sync(
                    &format!("filter/{what}/{rule}"),
                    &c.with_label_values(&[rule.as_str(), action]),
                    v,
                );
            }
        }
    }

    /// Traffic one scan read, for one interface (0 and 0 creates its series).
    pub fn traffic(&self, interface: &str, packets: u64, bytes: u64) {
        self.records
            .flow_packets
            .with_label_values(&[interface])
            .inc_by(packets);
        self.records
            .flow_bytes
            .with_label_values(&[interface])
            .inc_by(bytes);
    }

    /// Conntrack lookups and the records of NAT'd connections joined to their twin.
    pub fn nat(&self, s: &NatStats) {
        let not_translated = s.lookups.saturating_sub(s.translated + s.errors);
        for (outcome, total) in [
            ("translated", s.translated),
            ("not_translated", not_translated),
            ("error", s.errors),
            ("skipped", s.skipped),
            ("gave_up", s.gave_up),
        ] {
            self.sync(
                &format!("conntrack/{outcome}"),
                &self.conntrack_lookups.with_label_values(&[outcome]),
                total,
            );
        }
        self.sync("nat_duplicates", &self.nat_duplicates, s.merged);
        self.sync("conntrack_walks", &self.conntrack_walks, s.walks);
    }

    /// The kernel's drops so far by reason (a bounded label set: the kernel enum's names).
    pub fn drops(&self, totals: &[(&'static str, u64, u64)]) {
        for &(reason, packets, bytes) in totals {
            self.sync(
                &format!("drops/{reason}"),
                &self.drops.with_label_values(&[reason]),
                packets,
            );
            self.sync(
                &format!("drop_bytes/{reason}"),
                &self.drop_bytes.with_label_values(&[reason]),
                bytes,
            );
        }
    }

    /// Dropped packets attributed to flows, or not, so far.
    pub fn drop_attribution(&self, s: &DropStats) {
        for (outcome, total) in [
            ("flow", s.attributed),
            ("no_flow", s.unattributed),
            ("unrecorded", s.unrecorded),
        ] {
            self.sync(
                &format!("drop_attribution/{outcome}"),
                &self.drop_attribution.with_label_values(&[outcome]),
                total,
            );
        }
    }

    /// Retransmitted segments added to flows, and of tuples no flow held, so far.
    pub fn retransmit_attribution(&self, (flow, no_flow): (u64, u64)) {
        for (outcome, total) in [("flow", flow), ("no_flow", no_flow)] {
            self.sync(
                &format!("retransmit_attribution/{outcome}"),
                &self.retransmit_attribution.with_label_values(&[outcome]),
                total,
            );
        }
    }

    /// What the TLS decoder read and gave up so far, and where what it read went: `outcomes`
    /// (name, total), and the bytes it holds now.
    pub fn tls(&self, outcomes: &[(&'static str, u64)], pending_bytes: usize) {
        for (outcome, total) in outcomes {
            self.sync(
                &format!("tls/{outcome}"),
                &self.tls_messages.with_label_values(&[outcome]),
                *total,
            );
        }
        self.tls_pending_bytes.set(pending_bytes as i64);
    }

    /// Removes the series of an interface that is gone (pod veths come and go).
    pub fn forget_interface(&self, name: &str) {
        let _ = self.records.flow_packets.remove_label_values(&[name]);
        let _ = self.records.flow_bytes.remove_label_values(&[name]);
    }

    /// Observes the durations of a remote sink's requests.
    pub fn request_observer(&self, sink: &'static str) -> RequestObserver {
        let h = self.sink_request_seconds.with_label_values(&[sink]);
        Arc::new(move |d: Duration| h.observe(d.as_secs_f64()))
    }

    /// Counts records on their way to the sinks.
    pub fn records(&self, batch: Batch<'_>) {
        match batch {
            Batch::Flow(records) => {
                for r in records {
                    self.records
                        .flows_emitted
                        .with_label_values(&[r.status])
                        .inc();
                    self.workloads.flow(r);
                }
            }
            Batch::Dns(records) => {
                for r in records {
                    let rcode = rcode_label(r.rcode.as_deref());
                    self.records
                        .dns_transactions
                        .with_label_values(&[r.status, rcode])
                        .inc();
                    if let Some(l) = r.latency {
                        self.records.dns_latency.observe(l);
                    }
                }
            }
            Batch::Http(records) => {
                for r in records {
                    self.records
                        .http_messages
                        .with_label_values(&[r.message, r.role])
                        .inc();
                    if let Some(l) = r.latency {
                        self.records.http_latency.observe(l);
                    }
                }
            }
            Batch::Overflow(_) | Batch::DnsLog(_) | Batch::HttpLog(_) => {}
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("UTF-8")
    }
}

/// The `rcode` label: a named response code, `none`, or `other` for the thousands of
/// unassigned values a packet may carry (traffic must not grow the label set).
fn rcode_label(rcode: Option<&str>) -> &str {
    match rcode {
        None => "none",
        Some(r) if r.starts_with("RCODE") => "other",
        Some(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use devourer_common::flow::{C_INSERT_RACE, C_PACKETS, COUNTERS_LEN};

    use super::*;

    #[test]
    fn traffic_cannot_grow_label_sets_for_good() {
        assert_eq!(rcode_label(Some("RCODE4095")), "other");
        assert_eq!(rcode_label(Some("NXDOMAIN")), "NXDOMAIN");
        assert_eq!(rcode_label(None), "none");
        let m = Metrics::new();
        m.records
            .flow_packets
            .with_label_values(&["veth1234"])
            .inc();
        m.records.flow_bytes.with_label_values(&["veth1234"]).inc();
        m.records.flow_packets.with_label_values(&["eth0"]).inc();
        assert!(m.render().contains("veth1234"));
        m.forget_interface("veth1234");
        let text = m.render();
        assert!(
            !text.contains("veth1234") && text.contains("eth0"),
            "{text}"
        );
    }

    #[test]
    fn counters_kept_elsewhere_only_add_what_is_new() {
        let m = Metrics::new();
        let mut k = KernelCounters([0; COUNTERS_LEN as usize]);
        k.0[C_PACKETS as usize] = 10;
        m.kernel(&k);
        m.kernel(&k);
        k.0[C_PACKETS as usize] = 15;
        m.kernel(&k);
        let text = m.render();
        assert!(
            text.contains("devourer_kernel_events_total{event=\"packets\"} 15"),
            "{text}"
        );
        assert!(text.contains("devourer_build_info{version="), "{text}");
    }

    #[test]
    fn every_kernel_counter_is_surfaced_under_its_table_label() {
        let m = Metrics::new();
        let mut k = KernelCounters([0; COUNTERS_LEN as usize]);
        for (i, v) in k.0.iter_mut().enumerate() {
            *v = i as u64 + 1;
        }
        m.kernel(&k);
        let text = m.render();
        for c in COUNTERS {
            let line = format!(
                "devourer_kernel_events_total{{event=\"{}\"}} {}",
                c.metric,
                c.index + 1
            );
            assert!(text.contains(&line), "{line} missing:\n{text}");
        }
        assert!(text.contains("event=\"dns_ring_drops\""));
        assert!(text.contains(&format!("event=\"insert_race\"}} {}", C_INSERT_RACE + 1)));
    }
}
