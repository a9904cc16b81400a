//! Prometheus metrics and the health endpoints: `/metrics`, `/healthz` (the process is up) and
//! `/readyz` (programs attached, map reader and sinks alive), served on the tokio runtime.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{dns::DnsStats, kmaps::KernelCounters};

/// Latency buckets for DNS (seconds): 100 µs to 10 s.
const DNS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Scan duration buckets (seconds): 10 µs to 5 s.
const SCAN_BUCKETS: &[f64] = &[
    0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub flow_packets: IntCounterVec,
    pub flow_bytes: IntCounterVec,
    pub flows_emitted: IntCounterVec,
    pub flows_active: IntGauge,
    pub map_entries: IntGauge,
    pub map_capacity: IntGauge,
    pub scan_seconds: Histogram,
    kernel: IntCounterVec,
    pub dns_transactions: IntCounterVec,
    pub dns_latency: Histogram,
    dns_parse_errors: IntCounterVec,
    pub dns_pending: IntGauge,
    pub http_messages: IntCounterVec,
    pub http_latency: Histogram,
    pub capture_requests: IntCounterVec,
    pub captures: IntCounterVec,
    pub captured_packets: IntCounter,
    pub sink_rows: IntCounterVec,
    pub spool_bytes: IntGauge,
    pub bq_last_success: IntGauge,
    pub bq_request_seconds: HistogramVec,
    pub interfaces: IntGauge,
    /// Last absolute values of counters kept elsewhere, to add only what is new.
    seen: Mutex<HashMap<String, u64>>,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
    r.register(Box::new(c.clone())).expect("register");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric");
    r.register(Box::new(g.clone())).expect("register");
    g
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let r = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new(
                "devourer_build_info",
                "Build of the running agent (always 1).",
            ),
            &["version"],
        )
        .expect("metric");
        r.register(Box::new(build.clone())).expect("register");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        {
            let _ = r.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        let scan_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "devourer_eviction_scan_duration_seconds",
                "Time one scan of the kernel flow map takes.",
            )
            .buckets(SCAN_BUCKETS.to_vec()),
        )
        .expect("metric");
        r.register(Box::new(scan_seconds.clone()))
            .expect("register");
        let dns_latency = Histogram::with_opts(
            HistogramOpts::new(
                "devourer_dns_latency_seconds",
                "Time from a DNS query to its response.",
            )
            .buckets(DNS_BUCKETS.to_vec()),
        )
        .expect("metric");
        r.register(Box::new(dns_latency.clone())).expect("register");
        let http_latency = Histogram::with_opts(
            HistogramOpts::new(
                "devourer_http_latency_seconds",
                "Time from an HTTP request to its response (first segments).",
            )
            .buckets(DNS_BUCKETS.to_vec()),
        )
        .expect("metric");
        r.register(Box::new(http_latency.clone()))
            .expect("register");
        let bq_request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "devourer_sink_request_duration_seconds",
                "Duration of requests to a remote sink.",
            ),
            &["sink"],
        )
        .expect("metric");
        r.register(Box::new(bq_request_seconds.clone()))
            .expect("register");
        Arc::new(Self {
            flow_packets: counter_vec(
                &r,
                "devourer_packets_total",
                "Packets in emitted flow records, by interface.",
                &["interface"],
            ),
            flow_bytes: counter_vec(
                &r,
                "devourer_bytes_total",
                "IP-layer bytes in emitted flow records, by interface.",
                &["interface"],
            ),
            flows_emitted: counter_vec(
                &r,
                "devourer_flows_emitted_total",
                "Flow records emitted, by status.",
                &["status"],
            ),
            flows_active: gauge(
                &r,
                "devourer_flows_active",
                "Flows open in the agent's table.",
            ),
            map_entries: gauge(
                &r,
                "devourer_kernel_map_entries",
                "Entries in the kernel flow map at the last scan.",
            ),
            map_capacity: gauge(
                &r,
                "devourer_kernel_map_capacity",
                "Entries the kernel flow map holds at most.",
            ),
            scan_seconds,
            kernel: counter_vec(
                &r,
                "devourer_kernel_events_total",
                "What the kernel program counted: packets seen, non_ip, malformed, map_full (packets into the overflow map), overflow_full, dns_events, dns_ring_drops, dns_cut, http_events, http_ring_drops, http_cut, wakeups.",
                &["event"],
            ),
            dns_transactions: counter_vec(
                &r,
                "devourer_dns_transactions_total",
                "DNS transactions, by status and rcode.",
                &["status", "rcode"],
            ),
            dns_latency,
            dns_parse_errors: counter_vec(
                &r,
                "devourer_dns_parse_errors_total",
                "DNS payloads that did not decode, by reason.",
                &["reason"],
            ),
            dns_pending: gauge(
                &r,
                "devourer_dns_pending",
                "DNS queries awaiting a response.",
            ),
            http_messages: counter_vec(
                &r,
                "devourer_http_messages_total",
                "HTTP requests and responses seen, by kind and role.",
                &["kind", "role"],
            ),
            http_latency,
            capture_requests: counter_vec(
                &r,
                "devourer_capture_requests_total",
                "Capture requests by outcome: accepted, other_node, or the reason they were rejected.",
                &["outcome"],
            ),
            captures: counter_vec(
                &r,
                "devourer_captures_total",
                "Capture files by result: written, uploaded, upload_failed_kept_locally, failed.",
                &["result"],
            ),
            captured_packets: {
                let c = IntCounter::new(
                    "devourer_captured_packets_total",
                    "Packets written to capture files.",
                )
                .expect("metric");
                r.register(Box::new(c.clone())).expect("register");
                c
            },
            sink_rows: counter_vec(
                &r,
                "devourer_sink_rows_total",
                "Records by sink and outcome (written, sent, retried, dead_lettered, dropped).",
                &["sink", "outcome"],
            ),
            spool_bytes: gauge(
                &r,
                "devourer_spool_bytes",
                "Bytes waiting in the BigQuery spool.",
            ),
            bq_last_success: gauge(
                &r,
                "devourer_bigquery_last_success_timestamp_seconds",
                "When BigQuery last acknowledged a batch (Unix time, 0: never).",
            ),
            bq_request_seconds,
            interfaces: gauge(
                &r,
                "devourer_interfaces_attached",
                "Interfaces being monitored.",
            ),
            seen: Mutex::new(HashMap::new()),
            registry: r,
        })
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

    pub fn kernel(&self, k: &KernelCounters) {
        for (event, v) in [
            ("packets", k.packets),
            ("non_ip", k.non_ip),
            ("malformed", k.malformed),
            ("map_full", k.map_full),
            ("overflow_full", k.overflow_full_packets),
            ("dns_events", k.dns_events),
            ("dns_ring_drops", k.dns_ring_full),
            ("dns_cut", k.dns_cut),
            ("http_events", k.http_events),
            ("http_ring_drops", k.http_ring_full),
            ("http_cut", k.http_cut),
            ("wakeups", k.wakeups),
        ] {
            self.sync(
                &format!("kernel/{event}"),
                &self.kernel.with_label_values(&[event]),
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
        self.dns_pending.set(pending as i64);
    }

    /// A sink's absolute counts (from its own statistics).
    pub fn sink(&self, sink: &str, outcome: &str, total: u64) {
        self.sync(
            &format!("sink/{sink}/{outcome}"),
            &self.sink_rows.with_label_values(&[sink, outcome]),
            total,
        );
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("UTF-8")
    }
}

/// What `/readyz` checks.
#[derive(Default)]
pub struct Health {
    /// Programs attached and the capture loop running.
    pub capturing: AtomicBool,
    /// Every sink is still accepting records.
    pub sinks_ok: AtomicBool,
}

/// Serves the endpoints on `listener` until the runtime stops.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let m = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let h = health.clone();
                async move {
                    let capturing = h.capturing.load(Ordering::Relaxed);
                    let sinks = h.sinks_ok.load(Ordering::Relaxed);
                    if capturing && sinks {
                        (StatusCode::OK, "ready\n").into_response()
                    } else {
                        let why = format!("not ready: capturing={capturing} sinks={sinks}\n");
                        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
                    }
                }
            }),
        );
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_kept_elsewhere_only_add_what_is_new() {
        let m = Metrics::new();
        let k = KernelCounters {
            packets: 10,
            ..Default::default()
        };
        m.kernel(&k);
        m.kernel(&k);
        m.kernel(&KernelCounters {
            packets: 15,
            ..Default::default()
        });
        let text = m.render();
        assert!(
            text.contains("devourer_kernel_events_total{event=\"packets\"} 15"),
            "{text}"
        );
        assert!(text.contains("devourer_build_info{version="), "{text}");
    }
}
