//! Records as OTLP log records: every field an attribute, named by OpenTelemetry's semantic
//! conventions where one exists (`source.address`, `dns.question.name`, ...) and under
//! `devourer.` otherwise (each side's Kubernetes fields as `devourer.source.k8s.pod.name`, ...);
//! a null field is left out. README's table lists the whole mapping.

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, ArrayValue, KeyValue, KeyValueList, any_value::Value},
    logs::v1::{LogRecord, SeverityNumber},
};

use crate::{
    base::time::rfc3339_micros,
    record::{
        Encoder,
        fields::{Fields, Nested, Record},
    },
};

/// Fields with a semantic-convention attribute (or a `devourer.` name other than the field's
/// own), for every record kind.
const NAMES: &[(&str, &str)] = &[
    ("interface", "network.interface.name"),
    ("protocol", "network.transport"),
    ("transport", "network.transport"),
    ("src_addr", "source.address"),
    ("src_port", "source.port"),
    ("dst_addr", "destination.address"),
    ("dst_port", "destination.port"),
    ("client", "client.address"),
    ("client_port", "client.port"),
    ("server", "server.address"),
    ("server_port", "server.port"),
    ("q_name", "dns.question.name"),
    ("answers", "dns.answers"),
    ("method", "http.request.method"),
    ("status_code", "http.response.status_code"),
    ("user_agent", "user_agent.original"),
    ("version", "network.protocol.version"),
    ("tls_sni", "tls.client.server_name"),
];

/// The prefixes of the Kubernetes fields and the side they name.
const SIDES: [(&str, &str); 5] = [
    ("src_k8s_", "devourer.source.k8s."),
    ("dst_k8s_", "devourer.destination.k8s."),
    ("client_k8s_", "devourer.client.k8s."),
    ("server_k8s_", "devourer.server.k8s."),
    ("xlat_server_k8s_", "devourer.xlat_server.k8s."),
];

/// A Kubernetes field's attribute, after its side's prefix.
const K8S: [(&str, &str); 7] = [
    ("namespace", "namespace.name"),
    ("pod", "pod.name"),
    ("owner_kind", "owner.kind"),
    ("owner", "owner.name"),
    ("node", "node.name"),
    ("service", "service.name"),
    ("zone", "zone"),
];

/// The attribute of record field `key`.
pub fn attribute(key: &str) -> String {
    if let Some((_, a)) = NAMES.iter().find(|(k, _)| *k == key) {
        return (*a).to_owned();
    }
    for (prefix, side) in SIDES {
        if let Some(rest) = key.strip_prefix(prefix)
            && let Some((_, a)) = K8S.iter().find(|(k, _)| *k == rest)
        {
            return format!("{side}{a}");
        }
    }
    format!("devourer.{key}")
}

/// The attributes of one record (or of an object inside one, with its fields' own names).
struct Attributes {
    out: Vec<KeyValue>,
    /// Nested objects keep their field names.
    nested: bool,
    /// The record's type and its time (for the log record's own fields).
    kind: Option<String>,
    time_us: Option<u64>,
    /// The address family of the record's first address, for `network.type`.
    family: Option<&'static str>,
}

impl Attributes {
    fn new(nested: bool) -> Self {
        Self {
            out: Vec::new(),
            nested,
            kind: None,
            time_us: None,
            family: None,
        }
    }

    fn put(&mut self, key: &'static str, v: Value) {
        let key = if self.nested {
            key.to_owned()
        } else {
            attribute(key)
        };
        self.put_as(key, v);
    }

    fn put_as(&mut self, key: String, v: Value) {
        self.out.push(KeyValue {
            key,
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        });
    }
}

impl Fields for Attributes {
    fn str(&mut self, key: &'static str, v: &str) {
        if !self.nested {
            match key {
                "type" => self.kind = Some(v.to_owned()),
                "src_addr" | "client" if self.family.is_none() => {
                    self.family = Some(if v.contains(':') { "ipv6" } else { "ipv4" });
                }
                // `HTTP/1.1`: the protocol's name and its version, apart.
                "version" if v.starts_with("HTTP/") => {
                    self.put_as(
                        "network.protocol.name".into(),
                        Value::StringValue("http".into()),
                    );
                    self.put_as(
                        "network.protocol.version".into(),
                        Value::StringValue(v["HTTP/".len()..].to_owned()),
                    );
                    return;
                }
                // `TLSv1.3`: the protocol's name and its version, apart (OpenSSL's `TLSv1` is
                // 1.0).
                "tls_version_negotiated" => {
                    let (name, version) = match v.strip_prefix("TLSv") {
                        Some("1") => ("tls", "1.0"),
                        Some(n) => ("tls", n),
                        None => ("ssl", v.strip_prefix("SSLv").unwrap_or(v)),
                    };
                    self.put_as("tls.protocol.name".into(), Value::StringValue(name.into()));
                    self.put_as(
                        "tls.protocol.version".into(),
                        Value::StringValue(version.into()),
                    );
                    return;
                }
                // An HTTP request's target: its path and its query, apart.
                "target" => {
                    let (path, query) = v.split_once('?').map_or((v, None), |(p, q)| (p, Some(q)));
                    self.put_as("url.path".into(), Value::StringValue(path.to_owned()));
                    if let Some(q) = query {
                        self.put_as("url.query".into(), Value::StringValue(q.to_owned()));
                    }
                    return;
                }
                _ => {}
            }
        }
        self.put(key, Value::StringValue(v.to_owned()));
    }
    fn opt_str(&mut self, key: &'static str, v: Option<&str>) {
        if let Some(v) = v {
            self.str(key, v);
        }
    }
    fn uint(&mut self, key: &'static str, v: u64) {
        self.put(key, Value::IntValue(i64::try_from(v).unwrap_or(i64::MAX)));
    }
    fn opt_uint(&mut self, key: &'static str, v: Option<u64>) {
        if let Some(v) = v {
            self.uint(key, v);
        }
    }
    fn time(&mut self, key: &'static str, v: &str) {
        // The record's own time: a flow's last packet, a transaction's or a scan's time.
        if matches!(key, "last_seen_at" | "time") {
            self.time_us = rfc3339_micros(v);
        }
        self.put(key, Value::StringValue(v.to_owned()));
    }
    fn float(&mut self, key: &'static str, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.put(key, Value::DoubleValue(v));
        }
    }
    fn bool(&mut self, key: &'static str, v: bool) {
        self.put(key, Value::BoolValue(v));
    }
    fn strs<S: AsRef<str>>(&mut self, key: &'static str, v: &[S]) {
        let values = v
            .iter()
            .map(|s| AnyValue {
                value: Some(Value::StringValue(s.as_ref().to_owned())),
            })
            .collect();
        self.put(key, Value::ArrayValue(ArrayValue { values }));
    }
    fn objects<T: Nested>(&mut self, key: &'static str, v: &[T]) {
        let values = v
            .iter()
            .map(|o| {
                let mut a = Attributes::new(true);
                o.fields(&mut a);
                AnyValue {
                    value: Some(Value::KvlistValue(KeyValueList { values: a.out })),
                }
            })
            .collect();
        self.put(key, Value::ArrayValue(ArrayValue { values }));
    }
}

/// `r` as a log record: its event name `devourer.TYPE`, its time the record's own (a flow's
/// last packet), observed at `observed_ns`.
pub fn log_record<R: Record>(r: &R, observed_ns: u64) -> LogRecord {
    let mut a = Attributes::new(false);
    r.fields(&mut a);
    if let Some(f) = a.family {
        a.out.push(KeyValue {
            key: "network.type".into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(f.into())),
            }),
            ..Default::default()
        });
    }
    LogRecord {
        time_unix_nano: a.time_us.map_or(0, |us| us * 1000),
        observed_time_unix_nano: observed_ns,
        severity_number: SeverityNumber::Info as i32,
        severity_text: "INFO".into(),
        event_name: format!("devourer.{}", a.kind.as_deref().unwrap_or("record")),
        attributes: a.out,
        ..Default::default()
    }
}

/// Log records of a batch, one per record.
pub struct LogRecords {
    pub records: Vec<LogRecord>,
    pub observed_ns: u64,
}

impl Encoder for LogRecords {
    fn record<R: Record>(&mut self, r: &R) {
        self.records.push(log_record(r, self.observed_ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::flow::FlowRecord;

    fn get<'a>(l: &'a LogRecord, k: &str) -> Option<&'a Value> {
        l.attributes
            .iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    /// The keys of a record's non-null fields.
    struct Present(Vec<&'static str>);

    impl Fields for Present {
        fn str(&mut self, key: &'static str, _: &str) {
            self.0.push(key);
        }
        fn opt_str(&mut self, key: &'static str, v: Option<&str>) {
            if v.is_some() {
                self.0.push(key);
            }
        }
        fn uint(&mut self, key: &'static str, _: u64) {
            self.0.push(key);
        }
        fn opt_uint(&mut self, key: &'static str, v: Option<u64>) {
            if v.is_some() {
                self.0.push(key);
            }
        }
        fn time(&mut self, key: &'static str, _: &str) {
            self.0.push(key);
        }
        fn float(&mut self, key: &'static str, v: Option<f64>) {
            if v.is_some() {
                self.0.push(key);
            }
        }
        fn bool(&mut self, key: &'static str, _: bool) {
            self.0.push(key);
        }
        fn strs<S: AsRef<str>>(&mut self, key: &'static str, _: &[S]) {
            self.0.push(key);
        }
        fn objects<T: Nested>(&mut self, key: &'static str, _: &[T]) {
            self.0.push(key);
        }
    }

    #[test]
    fn fields_take_semantic_convention_names_and_the_rest_live_under_devourer() {
        assert_eq!(attribute("src_addr"), "source.address");
        assert_eq!(attribute("q_name"), "dns.question.name");
        assert_eq!(attribute("src_k8s_pod"), "devourer.source.k8s.pod.name");
        assert_eq!(
            attribute("server_k8s_owner_kind"),
            "devourer.server.k8s.owner.kind"
        );
        assert_eq!(
            attribute("xlat_server_k8s_pod"),
            "devourer.xlat_server.k8s.pod.name"
        );
        assert_eq!(attribute("src_bytes"), "devourer.src_bytes");
        assert_eq!(attribute("src_k8s_zone"), "devourer.source.k8s.zone");
        assert_eq!(attribute("tls_ja4"), "devourer.tls_ja4");
    }

    #[test]
    fn a_flow_is_one_log_record_with_every_field_and_no_nulls() {
        let r = FlowRecord {
            src_addr: "fd00::1".into(),
            dst_addr: "fd00::2".into(),
            src_bytes: 42,
            last_seen_at: "2026-12-07T20:05:36.187999Z".into(),
            tcp_handshake_rtt: Some(0.25),
            ..FlowRecord::sample()
        };
        let l = log_record(&r, 7);
        assert_eq!(l.event_name, "devourer.flow");
        assert_eq!(l.time_unix_nano, 1_796_673_936_187_999_000);
        assert_eq!(l.observed_time_unix_nano, 7);
        assert_eq!(
            get(&l, "source.address"),
            Some(&Value::StringValue("fd00::1".into()))
        );
        assert_eq!(get(&l, "devourer.src_bytes"), Some(&Value::IntValue(42)));
        assert_eq!(
            get(&l, "devourer.tcp_handshake_rtt"),
            Some(&Value::DoubleValue(0.25))
        );
        assert_eq!(
            get(&l, "network.type"),
            Some(&Value::StringValue("ipv6".into()))
        );
        assert_eq!(
            get(&l, "devourer.src_name"),
            None,
            "null fields are left out"
        );
        // Every field that is not null, and nothing else (but `network.type`).
        let mut present = Present(Vec::new());
        r.fields(&mut present);
        let mut want: Vec<String> = present.0.iter().map(|k| attribute(k)).collect();
        want.push("network.type".into());
        let mut got: Vec<String> = l.attributes.iter().map(|kv| kv.key.clone()).collect();
        want.sort();
        got.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn a_tls_flow_names_its_server_and_splits_the_chosen_version() {
        let string = |s: &str| Some(Value::StringValue(s.into()));
        for (chosen, name, version) in [
            ("TLSv1.3", "tls", "1.3"),
            ("TLSv1", "tls", "1.0"),
            ("SSLv3", "ssl", "3"),
        ] {
            let r = FlowRecord {
                tls_sni: Some("api.example".into()),
                tls_version_negotiated: Some(chosen),
                ..FlowRecord::sample()
            };
            let l = log_record(&r, 0);
            assert_eq!(
                get(&l, "tls.client.server_name"),
                string("api.example").as_ref()
            );
            assert_eq!(get(&l, "tls.protocol.name"), string(name).as_ref());
            assert_eq!(get(&l, "tls.protocol.version"), string(version).as_ref());
            assert_eq!(get(&l, "devourer.tls_version_negotiated"), None);
        }
    }
}
