//! Per-workload metrics under one series budget: TCP retransmits, TCP round trips and drops by
//! source and destination workload, and (with Kubernetes metadata) bytes between zones and
//! between workloads by scope, from the flow records on their way to the sinks. Workload
//! labels come from traffic (pod and owner names), so together they hold at most
//! `--metrics-max-series` series; a label set past the budget is added to the `other` series
//! (every label `other`) and counted in `devourer_metrics_series_dropped_total`. A label set not
//! observed for `--metrics-series-idle` (a pod long gone) gives its room back when a new one
//! needs it: its series are removed, as an interface's are when it goes.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
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

/// One label set of the workload metrics (shared strings: cloning one is a reference count):
/// the source's and destination's namespace and workload, and the scope of workload bytes
/// (empty for the other metrics); for zone bytes the two zones, the rest empty.
type Labels = [Arc<str>; 5];

/// `scope` of `devourer_workload_bytes_total`.
const SCOPES: [&str; 4] = ["same_zone", "cross_zone", "internet", OTHER];

/// The metrics a label set may be admitted to, as bits of [`Held::sets`].
const RETRANSMITS: u8 = 1;
const DROPS: u8 = 2;
const HANDSHAKE: u8 = 4;
const SMOOTHED: u8 = 8;
const ZONE_BYTES: u8 = 16;
const WORKLOAD_BYTES: u8 = 32;

pub struct WorkloadMetrics {
    retransmits: IntCounterVec,
    rtt: HistogramVec,
    drops: IntCounterVec,
    zone_bytes: IntCounterVec,
    workload_bytes: IntCounterVec,
    /// Kubernetes metadata is on: bytes by zone and by workload are counted.
    zones: AtomicBool,
    /// [`SCOPES`], made once.
    scopes: [Arc<str>; 4],
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
    let o: Arc<str> = Arc::from(OTHER);
    [o.clone(), o.clone(), o.clone(), o, Arc::from("")]
}

/// The label set `metric`'s observations go to past the budget (`scope`: the workload bytes'
/// own).
fn other_of(metric: u8, scope: &Arc<str>) -> Labels {
    let [a, b, c, d, e] = other();
    match metric {
        ZONE_BYTES => [a, b, e.clone(), e.clone(), e],
        WORKLOAD_BYTES => [a, b, c, d, scope.clone()],
        _ => [a, b, c, d, e],
    }
}

/// Whether `l` is one of the `other` label sets (never swept).
fn is_other(l: &Labels) -> bool {
    &*l[0] == OTHER && &*l[1] == OTHER && (l[2].is_empty() || &*l[2] == OTHER)
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
        let zone_bytes = IntCounterVec::new(
            Opts::new(
                "devourer_zone_bytes_total",
                "Bytes of flows (both directions) by the zone of their source and destination (the initiator as source; a pod's node's topology.kubernetes.io/zone label, a node's own; empty where unknown), from flow records. With Kubernetes metadata only.",
            ),
            &["src_zone", "dst_zone"],
        )
        .expect("metric");
        let workload_bytes = IntCounterVec::new(
            Opts::new(
                "devourer_workload_bytes_total",
                "Bytes of flows (both directions) by source and destination workload and scope: same_zone, cross_zone (both zones known), internet (an end that is no known pod, Service or node address and not private, CGNAT, link-local, loopback or multicast), other. With Kubernetes metadata only.",
            ),
            &[LABELS[0], LABELS[1], LABELS[2], LABELS[3], "scope"],
        )
        .expect("metric");
        add(Box::new(retransmits.clone()));
        add(Box::new(rtt.clone()));
        add(Box::new(drops.clone()));
        add(Box::new(zone_bytes.clone()));
        add(Box::new(workload_bytes.clone()));
        add(Box::new(dropped_series.clone()));
        let m = Self {
            retransmits,
            rtt,
            drops,
            zone_bytes,
            workload_bytes,
            zones: AtomicBool::new(false),
            scopes: SCOPES.map(Arc::from),
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

    /// Counts bytes by zone and by workload from now on (Kubernetes metadata is on); their
    /// `other` series exist from then, in the budget.
    pub fn follow_zones(&self) {
        if self.zones.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut held = self.held.lock().expect("not poisoned");
        self.zone_bytes.with_label_values(&[OTHER, OTHER]);
        let now = Instant::now();
        held.sets
            .insert(other_of(ZONE_BYTES, &Arc::from("")), (ZONE_BYTES, now));
        for scope in SCOPES {
            self.workload_bytes
                .with_label_values(&[OTHER, OTHER, OTHER, OTHER, scope]);
            held.sets.insert(
                other_of(WORKLOAD_BYTES, &Arc::from(scope)),
                (WORKLOAD_BYTES, now),
            );
        }
        held.series += 1 + SCOPES.len();
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
        let idle = held.idle;
        let gone: Vec<(Labels, u8)> = held
            .sets
            .iter()
            .filter(|(l, (_, seen))| !is_other(l) && now.duration_since(*seen) >= idle)
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
            if bits & ZONE_BYTES != 0 {
                let _ = self.zone_bytes.remove_label_values(&v[..2]);
                held.series -= 1;
            }
            if bits & WORKLOAD_BYTES != 0 {
                let _ = self
                    .workload_bytes
                    .remove_label_values(&[v[0], v[1], v[2], v[3], &l[4]]);
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

    /// The label set `labels` is observed under in `metric`: its own, or past the budget
    /// `metric`'s `other` one.
    fn values(&self, metric: u8, labels: &Labels, cost: usize) -> Labels {
        if self.admit(metric, labels, cost) {
            labels.clone()
        } else {
            other_of(metric, &labels[4])
        }
    }

    /// Adds a flow record's retransmits, round trips and drops.
    pub fn flow(&self, r: &FlowRecord) {
        let retransmits = r.tcp_retransmits.unwrap_or(0);
        let drops = r.drops_packets.unwrap_or(0);
        let handshake = r.tcp_handshake_rtt.filter(|_| r.seq == 0);
        let bytes = r.src_bytes.saturating_add(r.dst_bytes);
        let zones = bytes > 0 && self.zones.load(Ordering::Relaxed);
        if retransmits == 0
            && drops == 0
            && handshake.is_none()
            && r.tcp_srtt_last.is_none()
            && !zones
        {
            return;
        }
        let [src, dst] = r.k8s.sides();
        let mut labels = labels(src.as_deref(), dst.as_deref());
        // The first `N` values of a label set.
        fn first<const N: usize>(l: &Labels) -> [&str; N] {
            std::array::from_fn(|i| &*l[i])
        }
        if retransmits > 0 {
            let l = self.values(RETRANSMITS, &labels, 1);
            self.retransmits
                .with_label_values(&first::<4>(&l))
                .inc_by(retransmits);
        }
        if drops > 0 {
            let l = self.values(DROPS, &labels, 1);
            self.drops.with_label_values(&first::<4>(&l)).inc_by(drops);
        }
        let cost = rtt_cost();
        for ((kind, bit), v) in RTT_KINDS
            .into_iter()
            .zip([HANDSHAKE, SMOOTHED])
            .zip([handshake, r.tcp_srtt_last])
        {
            if let Some(v) = v {
                let l = self.values(bit, &labels, cost);
                let [a, b, c, d] = first::<4>(&l);
                self.rtt.with_label_values(&[a, b, c, d, kind]).observe(v);
            }
        }
        if zones {
            // Labels' strings shared, not made again for each record.
            let empty = &labels[4];
            let zone = |w: &Option<Arc<Workload>>| {
                w.as_ref()
                    .and_then(|w| w.zone.clone())
                    .unwrap_or_else(|| empty.clone())
            };
            let z: Labels = [
                zone(src),
                zone(dst),
                empty.clone(),
                empty.clone(),
                empty.clone(),
            ];
            let l = self.values(ZONE_BYTES, &z, 1);
            self.zone_bytes
                .with_label_values(&first::<2>(&l))
                .inc_by(bytes);
            labels[4] = self.scopes[scope(r)].clone();
            let l = self.values(WORKLOAD_BYTES, &labels, 1);
            self.workload_bytes
                .with_label_values(&first::<5>(&l))
                .inc_by(bytes);
        }
    }
}

/// Where a flow's bytes went (its index in [`SCOPES`]): between two ends in one zone or two,
/// to or from the internet (an end that is no Kubernetes object and whose address is public),
/// or elsewhere.
fn scope(r: &FlowRecord) -> usize {
    let [src, dst] = r.k8s.sides();
    let outside = |addr: &str, w: &Option<Arc<Workload>>| {
        w.is_none() && addr.parse::<IpAddr>().is_ok_and(|a| public(&a))
    };
    if outside(&r.src_addr, src) || outside(&r.dst_addr, dst) {
        return 2;
    }
    let zone = |w: &Option<Arc<Workload>>| w.as_ref().and_then(|w| w.zone.clone());
    match (zone(src), zone(dst)) {
        (Some(a), Some(b)) if a == b => 0,
        (Some(_), Some(_)) => 1,
        _ => 3,
    }
}

/// An address of the internet: not private (RFC 1918, unique local), CGNAT (RFC 6598),
/// link-local, loopback, multicast, broadcast or unspecified.
fn public(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => {
            let [a, b, ..] = v.octets();
            !(v.is_private()
                || (a == 100 && (64..128).contains(&b))
                || v.is_link_local()
                || v.is_loopback()
                || v.is_multicast()
                || v.is_broadcast()
                || v.is_unspecified())
        }
        IpAddr::V6(v) => {
            if let Some(v4) = v.to_ipv4_mapped() {
                return public(&IpAddr::V4(v4));
            }
            let first = v.segments()[0];
            !((first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || v.is_loopback()
                || v.is_multicast()
                || v.is_unspecified())
        }
    }
}

/// A flow's workload labels: each end's namespace and workload (its owner, else its pod, else
/// the Service or node it is), empty where it is not a Kubernetes object; the scope empty.
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
    [sn, sw, dn, dw, empty]
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

    /// A flow of `bytes` from a pod of `src` in `src_zone` to `dst` (a pod in `dst_zone`, or
    /// no object at `dst_addr`).
    fn between(src_zone: &str, dst: Option<&str>, dst_addr: &str, bytes: u64) -> FlowRecord {
        let pod = |owner: &str, zone: Option<&str>| {
            Arc::new(Workload {
                namespace: Some("shop".into()),
                owner: Some(owner.into()),
                zone: zone.map(Into::into),
                ..Workload::default()
            })
        };
        FlowRecord {
            src_addr: "10.1.0.5".into(),
            dst_addr: dst_addr.into(),
            src_bytes: bytes,
            dst_bytes: 1,
            k8s: K8sFields::flow(
                Some(pod("cart", Some(src_zone))),
                dst.map(|z| pod("db", Some(z))),
            ),
            ..FlowRecord::sample()
        }
    }

    #[test]
    fn bytes_go_by_zone_and_by_workload_with_their_scope_once_zones_are_followed() {
        let r = Registry::new();
        let m = WorkloadMetrics::new(&r);
        m.flow(&between("a", Some("a"), "10.1.0.6", 99));
        assert!(
            !text(&r).contains("devourer_zone_bytes_total{"),
            "off without metadata"
        );
        m.follow_zones();
        m.flow(&between("a", Some("a"), "10.1.0.6", 99));
        m.flow(&between("a", Some("b"), "10.2.0.6", 9));
        m.flow(&between("a", None, "203.0.113.9", 4));
        m.flow(&between("a", None, "100.64.3.3", 2));
        m.flow(&between("a", None, "::ffff:192.168.1.1", 2));
        let t = text(&r);
        assert!(
            t.contains(r#"devourer_zone_bytes_total{dst_zone="a",src_zone="a"} 100"#),
            "{t}"
        );
        assert!(
            t.contains(r#"devourer_zone_bytes_total{dst_zone="b",src_zone="a"} 10"#),
            "{t}"
        );
        assert!(
            t.contains(r#"devourer_zone_bytes_total{dst_zone="",src_zone="a"} 11"#),
            "{t}"
        );
        let bytes = |scope: &str, dst: &str| {
            format!(
                r#"devourer_workload_bytes_total{{dst_namespace="{ns}",dst_workload="{dst}",scope="{scope}",src_namespace="shop",src_workload="cart"}}"#,
                ns = if dst.is_empty() { "" } else { "shop" }
            )
        };
        assert!(
            t.contains(&format!("{} 100", bytes("same_zone", "db"))),
            "{t}"
        );
        assert!(
            t.contains(&format!("{} 10", bytes("cross_zone", "db"))),
            "{t}"
        );
        assert!(t.contains(&format!("{} 5", bytes("internet", ""))), "{t}");
        assert!(
            t.contains(&format!("{} 6", bytes("other", ""))),
            "CGNAT and private: {t}"
        );
        assert!(t.contains(r#"devourer_workload_bytes_total{dst_namespace="other",dst_workload="other",scope="internet",src_namespace="other",src_workload="other"} 0"#), "{t}");
    }

    #[test]
    fn zone_label_sets_share_the_budget_and_overflow_to_other() {
        let r = Registry::new();
        let m = WorkloadMetrics::new(&r);
        m.follow_zones();
        // The `other` sets (2 + 2 histograms + 1 zone + 4 scopes) and room for two more.
        m.set_max_series(2 + 2 * rtt_cost() + 5 + 2);
        m.flow(&between("a", Some("a"), "10.1.0.6", 7));
        m.flow(&between("a", Some("b"), "10.1.0.6", 7));
        let t = text(&r);
        assert!(
            t.contains(r#"devourer_zone_bytes_total{dst_zone="a",src_zone="a"} 8"#),
            "{t}"
        );
        assert!(
            t.contains(r#"devourer_zone_bytes_total{dst_zone="other",src_zone="other"} 8"#),
            "{t}"
        );
        assert!(
            t.contains(r#"scope="cross_zone",src_namespace="other",src_workload="other"} 8"#),
            "{t}"
        );
        assert!(t.contains("devourer_metrics_series_dropped_total 2"), "{t}");
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
