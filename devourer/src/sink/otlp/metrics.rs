//! The agent's Prometheus metrics as OTLP metrics, cumulative, under their Prometheus names:
//! counters as monotonic sums, gauges as gauges, histograms as explicit-bucket histograms
//! (OTLP counts each bucket on its own where Prometheus counts up to each bound); labels
//! become attributes. Exported every `--otlp-metrics-interval`; a failed export is not kept
//! (the next one carries the same totals). A series' start time is when the exporter first
//! saw it, and again whenever it went down (a series removed and made again, its room given
//! back under the series budget, starts from zero): a cumulative reset, as OTLP marks one.

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, Sum,
        metric::Data, number_data_point,
    },
};
use prometheus::proto::{MetricFamily, MetricType};

/// Each series' start time and last value, by name and labels: the series the agent has now
/// (a gather's), so it holds no more than the registry does. A series seen for the first time,
/// or lower than before (made again from zero), starts at the previous export (at first, the
/// exporter's start): its whole count falls in the interval that ends with this export. A
/// series made again that is already past its old value cannot be told apart.
pub struct Starts {
    series: std::collections::HashMap<String, (u64, f64)>,
    /// When the previous export was taken.
    previous_ns: u64,
}

impl Starts {
    pub fn new(start_ns: u64) -> Self {
        Self {
            series: Default::default(),
            previous_ns: start_ns,
        }
    }

    /// The start time of series `key` holding `value`.
    fn of(&self, key: String, value: f64, seen: &mut Self) -> u64 {
        let start = match self.series.get(&key) {
            Some(&(start, last)) if value >= last => start,
            _ => self.previous_ns,
        };
        seen.series.insert(key, (start, value));
        start
    }
}

fn series_key(name: &str, m: &prometheus::proto::Metric) -> String {
    let mut k = name.to_owned();
    for l in m.get_label() {
        k.push('\u{1}');
        k.push_str(l.name());
        k.push('=');
        k.push_str(l.value());
    }
    k
}

fn attributes(m: &prometheus::proto::Metric) -> Vec<KeyValue> {
    m.get_label()
        .iter()
        .map(|l| KeyValue {
            key: l.name().to_owned(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(l.value().to_owned())),
            }),
            ..Default::default()
        })
        .collect()
}

/// `families` as OTLP metrics observed at `now_ns`, each point cumulative since its series'
/// start (`starts`, kept between exports).
pub fn convert(families: &[MetricFamily], starts: &mut Starts, now_ns: u64) -> Vec<Metric> {
    let cumulative = AggregationTemporality::Cumulative as i32;
    let mut seen = Starts::new(now_ns);
    let mut metrics = Vec::with_capacity(families.len());
    for f in families {
        let mut start = |m: &prometheus::proto::Metric, v: f64| {
            starts.of(series_key(f.name(), m), v, &mut seen)
        };
        let points = |start: &mut dyn FnMut(&prometheus::proto::Metric, f64) -> u64,
                      value: fn(&prometheus::proto::Metric) -> f64| {
            f.get_metric()
                .iter()
                .map(|m| NumberDataPoint {
                    attributes: attributes(m),
                    start_time_unix_nano: start(m, value(m)),
                    time_unix_nano: now_ns,
                    value: Some(number_data_point::Value::AsDouble(value(m))),
                    ..Default::default()
                })
                .collect()
        };
        let data = match f.get_field_type() {
            MetricType::COUNTER => Data::Sum(Sum {
                data_points: points(&mut start, |m| m.get_counter().get_value()),
                aggregation_temporality: cumulative,
                is_monotonic: true,
            }),
            // A gauge has no start: it goes up and down.
            MetricType::GAUGE => Data::Gauge(Gauge {
                data_points: points(&mut |_, _| 0, |m| m.get_gauge().get_value()),
            }),
            MetricType::HISTOGRAM => Data::Histogram(Histogram {
                data_points: f
                    .get_metric()
                    .iter()
                    .map(|m| {
                        let count = m.get_histogram().get_sample_count() as f64;
                        histogram(m, start(m, count), now_ns)
                    })
                    .collect(),
                aggregation_temporality: cumulative,
            }),
            // The agent registers neither summaries nor untyped metrics.
            _ => continue,
        };
        metrics.push(Metric {
            name: f.name().to_owned(),
            description: f.help().to_owned(),
            data: Some(data),
            ..Default::default()
        });
    }
    *starts = seen;
    metrics
}

fn histogram(m: &prometheus::proto::Metric, start_ns: u64, now_ns: u64) -> HistogramDataPoint {
    let h = m.get_histogram();
    let buckets = h.get_bucket();
    let mut explicit_bounds = Vec::with_capacity(buckets.len());
    let mut bucket_counts = Vec::with_capacity(buckets.len() + 1);
    let mut below = 0u64;
    for b in buckets.iter().filter(|b| b.upper_bound().is_finite()) {
        explicit_bounds.push(b.upper_bound());
        bucket_counts.push(b.cumulative_count().saturating_sub(below));
        below = b.cumulative_count();
    }
    bucket_counts.push(h.get_sample_count().saturating_sub(below));
    HistogramDataPoint {
        attributes: attributes(m),
        start_time_unix_nano: start_ns,
        time_unix_nano: now_ns,
        count: h.get_sample_count(),
        sum: Some(h.get_sample_sum()),
        bucket_counts,
        explicit_bounds,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

    use super::*;

    #[test]
    fn counters_gauges_and_histograms_keep_their_values_labels_and_buckets() {
        let r = Registry::new();
        let c = IntCounterVec::new(Opts::new("c_total", "a counter"), &["k"]).unwrap();
        let g = IntGauge::new("g", "a gauge").unwrap();
        let h =
            Histogram::with_opts(HistogramOpts::new("h", "a histogram").buckets(vec![1.0, 2.0]))
                .unwrap();
        r.register(Box::new(c.clone())).unwrap();
        r.register(Box::new(g.clone())).unwrap();
        r.register(Box::new(h.clone())).unwrap();
        c.with_label_values(&["v"]).inc_by(5);
        g.set(-3);
        for x in [0.5, 1.5, 1.7, 9.0] {
            h.observe(x);
        }
        let mut starts = Starts::new(1);
        let ms = convert(&r.gather(), &mut starts, 2);
        let by = |n: &str| {
            ms.iter()
                .find(|m| m.name == n)
                .unwrap()
                .data
                .clone()
                .unwrap()
        };
        let Data::Sum(s) = by("c_total") else {
            panic!("a sum")
        };
        assert!(s.is_monotonic);
        assert_eq!(
            s.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(
            s.data_points[0].value,
            Some(number_data_point::Value::AsDouble(5.0))
        );
        assert_eq!(s.data_points[0].attributes[0].key, "k");
        assert_eq!(
            (
                s.data_points[0].start_time_unix_nano,
                s.data_points[0].time_unix_nano
            ),
            (1, 2)
        );
        let Data::Gauge(g) = by("g") else {
            panic!("a gauge")
        };
        assert_eq!(
            g.data_points[0].value,
            Some(number_data_point::Value::AsDouble(-3.0))
        );
        let Data::Histogram(h) = by("h") else {
            panic!("a histogram")
        };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, [1.0, 2.0]);
        assert_eq!(p.bucket_counts, [1, 2, 1]);
        assert_eq!((p.count, p.sum), (4, Some(12.7)));

        // Later: a series that grew keeps its start; one that went down (made again) restarts.
        c.with_label_values(&["v"]).inc();
        c.with_label_values(&["w"]).inc();
        let start_of = |ms: &[Metric], label: &str| {
            let Some(Data::Sum(s)) = ms
                .iter()
                .find(|m| m.name == "c_total")
                .unwrap()
                .data
                .clone()
            else {
                panic!("a sum")
            };
            let p = s
                .data_points
                .iter()
                .find(|p| {
                    p.attributes[0].value.as_ref().unwrap().value
                        == Some(Value::StringValue(label.into()))
                })
                .unwrap()
                .clone();
            p.start_time_unix_nano
        };
        let ms = convert(&r.gather(), &mut starts, 3);
        assert_eq!((start_of(&ms, "v"), start_of(&ms, "w")), (1, 2));
        c.remove_label_values(&["v"]).unwrap();
        c.with_label_values(&["v"]).inc();
        let ms = convert(&r.gather(), &mut starts, 4);
        assert_eq!(
            (start_of(&ms, "v"), start_of(&ms, "w")),
            (3, 2),
            "v went from 6 to 1"
        );
    }
}
