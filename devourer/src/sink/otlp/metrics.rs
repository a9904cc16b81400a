//! The agent's Prometheus metrics as OTLP metrics, cumulative, under their Prometheus names:
//! counters as monotonic sums, gauges as gauges, histograms as explicit-bucket histograms
//! (OTLP counts each bucket on its own where Prometheus counts up to each bound); labels
//! become attributes. Exported every `--otlp-metrics-interval`; a failed export is not kept
//! (the next one carries the same totals).

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, Sum,
        metric::Data, number_data_point,
    },
};
use prometheus::proto::{MetricFamily, MetricType};

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

/// `families` as OTLP metrics, each point cumulative since `start_ns`, observed at `now_ns`.
pub fn convert(families: &[MetricFamily], start_ns: u64, now_ns: u64) -> Vec<Metric> {
    let cumulative = AggregationTemporality::Cumulative as i32;
    families
        .iter()
        .filter_map(|f| {
            let number = |v: f64, m: &prometheus::proto::Metric| NumberDataPoint {
                attributes: attributes(m),
                start_time_unix_nano: start_ns,
                time_unix_nano: now_ns,
                value: Some(number_data_point::Value::AsDouble(v)),
                ..Default::default()
            };
            let data = match f.get_field_type() {
                MetricType::COUNTER => Data::Sum(Sum {
                    data_points: f
                        .get_metric()
                        .iter()
                        .map(|m| number(m.get_counter().get_value(), m))
                        .collect(),
                    aggregation_temporality: cumulative,
                    is_monotonic: true,
                }),
                MetricType::GAUGE => Data::Gauge(Gauge {
                    data_points: f
                        .get_metric()
                        .iter()
                        .map(|m| number(m.get_gauge().get_value(), m))
                        .collect(),
                }),
                MetricType::HISTOGRAM => Data::Histogram(Histogram {
                    data_points: f
                        .get_metric()
                        .iter()
                        .map(|m| histogram(m, start_ns, now_ns))
                        .collect(),
                    aggregation_temporality: cumulative,
                }),
                // The agent registers neither summaries nor untyped metrics.
                _ => return None,
            };
            Some(Metric {
                name: f.name().to_owned(),
                description: f.help().to_owned(),
                data: Some(data),
                ..Default::default()
            })
        })
        .collect()
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
        let ms = convert(&r.gather(), 1, 2);
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
    }
}
