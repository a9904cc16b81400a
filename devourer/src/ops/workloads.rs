//! Per-workload metrics under one series budget: TCP retransmits, TCP round trips and drops by
//! source and destination workload, from the flow records on their way to the sinks. Workload
//! labels come from traffic (pod and owner names), so together they hold at most
//! `--metrics-max-series` series; a label set past the budget is added to the `other` series
//! (every label `other`) and counted in `devourer_metrics_series_dropped_total`. A label set not
//! observed for `--metrics-series-idle` (a pod long gone) gives its room back when a new one
//! needs it: its series are removed, as an interface's are when it goes.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::{flow::Workload, record::flow::FlowRecord};

/// The budget `--metrics-max-series` defaults to.
pub const DEFAULT_MAX_SERIES: usize = 10_000;
/// How long a label set may go unobserved before its room may be taken
/// (`--metrics-series-idle`).
pub const DEFAULT_SERIES_IDLE: Duration = Duration::from_secs(3600);
/// Least time between two sweeps for idle label sets (each walks them all).
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// The label value of the series that holds what is past the budget.
pub const OTHER: &str = "other";
const LABELS: [&str; 4] = [
    "src_namespace",
    "src_workload",
    "dst_namespace",
    "dst_workload",
];

/// Round-trip buckets: 0.1 ms to 10 s in steps of ×2.5.
fn rtt_buckets() -> Vec<f64> {
    let mut b: Vec<f64> = (0..13).map(|i| 0.0001 * 2.5f64.powi(i)).collect();
    b.push(10.0);
    b
}

/// A histogram's label set is its buckets, +Inf, sum and count.
fn rtt_cost() -> usize {
    rtt_buckets().len() + 3
}

/// The `rtt` label: the handshake's round trip (once per connection), the socket's smoothed RTT
/// (its last sample per record).
const RTT_KINDS: [&str; 2] = ["handshake", "smoothed"];

/// One label set of the workload metrics (shared strings: cloning one is a reference count).
type Labels = [Arc<str>; 4];

/// The metrics a label set may be admitted to, as bits of [`Held::sets`].
const RETRANSMITS: u8 = 1;
const DROPS: u8 = 2;
const HANDSHAKE: u8 = 4;
const SMOOTHED: u8 = 8;

pub struct WorkloadMetrics {
    retransmits: IntCounterVec,
    rtt: HistogramVec,
    drops: IntCounterVec,
    dropped_series: IntCounter,
    max_series: AtomicUsize,
    /// Series held per metric and label set (a histogram's buckets, sum and count each).
    held: Mutex<Held>,
}

struct Held {
    /// Label sets admitted: the metrics each is admitted to (bits), when it was last observed.
    sets: HashMap<Labels, (u8, Instant)>,
    series: usize,
    idle: Duration,
    last_sweep: Option<Instant>,
}

fn other() -> Labels {
    std::array::from_fn(|_| Arc::from(OTHER))
}

impl WorkloadMetrics {
    pub fn new(registry: &Registry) -> Self {
        let add = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric registered once");
        };
        let retransmits = IntCounterVec::new(
            Opts::new(
                "devourer_tcp_retransmits_total",
                "TCP segments retransmitted, by source and destination workload (the flow's initiator as source), from flow records.",
            ),
            &LABELS,
        )
        .expect("metric");
        let rtt = HistogramVec::new(
            HistogramOpts::new(
                "devourer_tcp_rtt_seconds",
                "TCP round trips by source and destination workload: rtt=handshake once per connection, rtt=smoothed the last kernel sample per record.",
            )
            .buckets(rtt_buckets()),
            &[LABELS[0], LABELS[1], LABELS[2], LABELS[3], "rtt"],
        )
        .expect("metric");
        let drops = IntCounterVec::new(
            Opts::new(
                "devourer_workload_drops_total",
                "Packets the kernel dropped, by the source and destination workload of their flow, from flow records.",
            ),
            &LABELS,
        )
        .expect("metric");
        let dropped_series = IntCounter::new(
            "devourer_metrics_series_dropped_total",
            "Observations of per-workload label sets with no room under --metrics-max-series (each one counted), added to the `other` series instead.",
        )
        .expect("metric");
        add(Box::new(retransmits.clone()));
        add(Box::new(rtt.clone()));
        add(Box::new(drops.clone()));
        add(Box::new(dropped_series.clone()));
        let m = Self {
            retransmits,
            rtt,
            drops,
            dropped_series,
            max_series: AtomicUsize::new(DEFAULT_MAX_SERIES),
            held: Mutex::new(Held {
                sets: HashMap::new(),
                series: 0,
                idle: DEFAULT_SERIES_IDLE,
                last_sweep: None,
            }),
        };
        // The `other` series exist from the start (at zero): what is past the budget always
        // has somewhere to go, and every family is served before its first observation.
        m.retransmits.with_label_values(&[OTHER; 4]);
        m.drops.with_label_values(&[OTHER; 4]);
        for kind in RTT_KINDS {
            m.rtt.with_label_values(&[OTHER, OTHER, OTHER, OTHER, kind]);
        }
        {
            let mut held = m.held.lock().expect("not poisoned");
            held.sets.insert(
                other(),
                (RETRANSMITS | DROPS | HANDSHAKE | SMOOTHED, Instant::now()),
            );
            held.series = 2 + 2 * rtt_cost();
        }
        m
    }

    /// Sets the budget (`--metrics-max-series`; the `other` series count in it).
    pub fn set_max_series(&self, max: usize) {
        self.max_series.store(max.max(1), Ordering::Relaxed);
    }

    /// Sets how long a label set may go unobserved before its room may be taken
    /// (`--metrics-series-idle`).
    pub fn set_series_idle(&self, idle: Duration) {
        self.held.lock().expect("not poisoned").idle = idle;
    }

    /// Whether `labels` has series of its own in `metric` (a bit; `cost` series per label
    /// set): yes while within the budget (after idle label sets gave their room back), else
    /// its observations go to the `other` set (counted).
    fn admit(&self, metric: u8, labels: &Labels, cost: usize) -> bool {
        let now = Instant::now();
        let mut held = self.held.lock().expect("not poisoned");
        if let Some((bits, seen)) = held.sets.get_mut(labels)
            && *bits & metric != 0
        {
            *seen = now;
            return true;
        }
        let max = self.max_series.load(Ordering::Relaxed);
        if held.series + cost > max {
            self.sweep(&mut held, now);
        }
        if held.series + cost > max {
            self.dropped_series.inc();
            return false;
        }
        held.series += cost;
        let e = held.sets.entry(labels.clone()).or_insert((0, now));
        e.0 |= metric;
        e.1 = now;
        true
    }

    /// Removes the label sets not observed for the idle time (never `other`), their series
    /// with them; at most once per [`SWEEP_EVERY`].
    fn sweep(&self, held: &mut Held, now: Instant) {
        if held
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < SWEEP_EVERY.min(held.idle))
        {
            return;
        }
        held.last_sweep = Some(now);
        let (idle, other) = (held.idle, other());
        let gone: Vec<(Labels, u8)> = held
            .sets
            .iter()
            .filter(|(l, (_, seen))| **l != other && now.duration_since(*seen) >= idle)
            .map(|(l, (bits, _))| (l.clone(), *bits))
            .collect();
        for (l, bits) in gone {
            held.sets.remove(&l);
            let v = [&*l[0], &*l[1], &*l[2], &*l[3]];
            if bits & RETRANSMITS != 0 {
                let _ = self.retransmits.remove_label_values(&v);
                held.series -= 1;
            }
            if bits & DROPS != 0 {
                let _ = self.drops.remove_label_values(&v);
                held.series -= 1;
            }
            for (kind, bit) in RTT_KINDS.into_iter().zip([HANDSHAKE, SMOOTHED]) {
                if bits & bit != 0 {
                    let _ = self
                        .rtt
                        .remove_label_values(&[v[0], v[1], v[2], v[3], kind]);
                    held.series -= rtt_cost();
                }
            }
        }
    }

    /// The label values `labels` is observed under in `metric`.
    fn values<'a>(&self, metric: u8, labels: &'a Labels, cost: usize) -> [&'a str; 4] {
        if self.admit(metric, labels, cost) {
            [&labels[0], &labels[1], &labels[2], &labels[3]]
        } else {
            [OTHER; 4]
        }
    }

    /// Adds a flow record's retransmits, round trips and drops.
    pub fn flow(&self, r: &FlowRecord) {
        let retransmits = r.tcp_retransmits.unwrap_or(0);
        let drops = r.drops_packets.unwrap_or(0);
        let handshake = r.tcp_handshake_rtt.filter(|_| r.seq == 0);
        if retransmits == 0 && drops == 0 && handshake.is_none() && r.tcp_srtt_last.is_none() {
            return;
        }
        let [src, dst] = r.k8s.sides();
        let labels = labels(src.as_deref(), dst.as_deref());
        if retransmits > 0 {
            let l = self.values(RETRANSMITS, &labels, 1);
            self.retransmits.with_label_values(&l).inc_by(retransmits);
        }
        if drops > 0 {
            let l = self.values(DROPS, &labels, 1);
            self.drops.with_label_values(&l).inc_by(drops);
        }
        let cost = rtt_cost();
        for ((kind, bit), v) in RTT_KINDS
            .into_iter()
            .zip([HANDSHAKE, SMOOTHED])
            .zip([handshake, r.tcp_srtt_last])
        {
            if let Some(v) = v {
                let [a, b, c, d] = self.values(bit, &labels, cost);
                self.rtt.with_label_values(&[a, b, c, d, kind]).observe(v);
            }
        }
    }
}

/// A flow's workload labels: each end's namespace and workload (its owner, else its pod, else
/// the Service or node it is), empty where it is not a Kubernetes object.
fn labels(src: Option<&Workload>, dst: Option<&Workload>) -> Labels {
    let empty: Arc<str> = Arc::from("");
    let side = |w: Option<&Workload>| -> (Arc<str>, Arc<str>) {
        let Some(w) = w else {
            return (empty.clone(), empty.clone());
        };
        let name = [&w.owner, &w.pod, &w.service, &w.node]
            .into_iter()
            .find_map(|n| n.clone())
            .unwrap_or_else(|| empty.clone());
        (w.namespace.clone().unwrap_or_else(|| empty.clone()), name)
    };
    let (sn, sw) = side(src);
    let (dn, dw) = side(dst);
    [sn, sw, dn, dw]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::k8s::K8sFields;

    fn rec(owner: &str, retransmits: u64, srtt: Option<f64>) -> FlowRecord {
        let w = Workload {
            namespace: Some("shop".into()),
            owner: Some(owner.into()),
            ..Workload::default()
        };
        FlowRecord {
            tcp_retransmits: Some(retransmits),
            tcp_srtt_last: srtt,
            k8s: K8sFields::flow(Some(Arc::new(w)), None),
            ..FlowRecord::sample()
        }
    }

    fn text(r: &Registry) -> String {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode_to_string(&r.gather())
            .map(|s| buf.extend_from_slice(s.as_bytes()))
            .unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn label_sets_past_the_budget_go_to_other_and_are_counted() {
        let r = Registry::new();
        let m = WorkloadMetrics::new(&r);
        // Room for two label sets besides the `other` ones.
        m.set_max_series(2 + 2 + 2 * rtt_cost());
        m.flow(&rec("cart", 3, None));
        m.flow(&rec("web", 1, None));
        m.flow(&rec("cart", 2, None));
        m.flow(&rec("api", 4, None));
        m.flow(&rec("db", 5, None));
        let t = text(&r);
        assert!(t.contains(r#"devourer_tcp_retransmits_total{dst_namespace="",dst_workload="",src_namespace="shop",src_workload="cart"} 5"#), "{t}");
        assert!(t.contains(r#"src_workload="web"} 1"#), "{t}");
        assert!(t.contains(r#"devourer_tcp_retransmits_total{dst_namespace="other",dst_workload="other",src_namespace="other",src_workload="other"} 9"#), "{t}");
        assert!(t.contains("devourer_metrics_series_dropped_total 2"), "{t}");
        assert!(!t.contains("api") && !t.contains("\"db\""), "{t}");
    }

    #[test]
    fn an_idle_label_set_gives_its_room_to_a_new_one() {
        let r = Registry::new();
        let m = WorkloadMetrics::new(&r);
        m.set_max_series(2 + 2 * rtt_cost() + 1);
        m.flow(&rec("cronjob-1", 1, None));
        m.flow(&rec("cronjob-2", 1, None));
        assert!(text(&r).contains("devourer_metrics_series_dropped_total 1"));
        m.set_series_idle(Duration::ZERO);
        m.flow(&rec("cronjob-3", 1, None));
        let t = text(&r);
        assert!(t.contains(r#"src_workload="cronjob-3"} 1"#), "{t}");
        assert!(!t.contains("cronjob-1"), "the idle set's series went: {t}");
        assert!(t.contains("devourer_metrics_series_dropped_total 1"), "{t}");
    }

    #[test]
    fn round_trips_are_observed_in_the_histogram_with_their_kind() {
        let r = Registry::new();
        let m = WorkloadMetrics::new(&r);
        m.flow(&rec("cart", 0, Some(0.02)));
        let t = text(&r);
        assert!(t.contains(r#"devourer_tcp_rtt_seconds_count{dst_namespace="",dst_workload="",rtt="smoothed",src_namespace="shop",src_workload="cart"} 1"#), "{t}");
        assert!(t.contains(r#"le="0.0244140625"} 1"#), "{t}");
    }
}
