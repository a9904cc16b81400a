//! OTLP export against a receiver on the official protobuf definitions and servicers
//! (`tests/otlp_receiver.py`): every JSON record of a replay (flows, DNS, HTTP) is one log
//! record whose attributes equal its fields under README's mapping, over gRPC and over
//! HTTP/protobuf; a live agent whose receiver is stopped and started again mid-run loses
//! nothing, and its metrics arrive as cumulative OTLP metrics.

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use devourer_tests::{frames::*, *};
use pcap_file::DataLink;
use serde_json::{Map, Value, json};

/// The receiver on `port` in `ns` (`None`: this namespace), appending each request to `out`.
fn receiver(ns: Option<&Netns>, mode: &str, port: u16, out: &Path) -> Bg {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp_receiver.py");
    let mut c = ns.map_or_else(|| Command::new("python3"), |n| n.cmd("python3"));
    c.arg(script)
        .args([mode, &port.to_string()])
        .arg(out)
        .stdout(std::process::Stdio::null());
    let bg = Bg::spawn(c, "OTLP receiver");
    await_listener(ns, "tcp", port, Duration::from_secs(20), "receiver");
    bg
}

/// Every request the receiver accepted, in order.
fn requests(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn log_records(reqs: &[Value]) -> Vec<Value> {
    reqs.iter()
        .filter(|r| r["signal"] == "logs")
        .flat_map(|r| r["records"].as_array().unwrap().clone())
        .collect()
}

/// README's mapping of a record field to its attribute (the test's own copy).
fn attribute(key: &str) -> String {
    let named = [
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
        ("tls_sni", "tls.client.server_name"),
    ];
    if let Some((_, a)) = named.iter().find(|(k, _)| *k == key) {
        return (*a).to_owned();
    }
    for (prefix, side) in [
        ("src_k8s_", "source"),
        ("dst_k8s_", "destination"),
        ("client_k8s_", "client"),
        ("server_k8s_", "server"),
        ("xlat_server_k8s_", "xlat_server"),
    ] {
        if let Some(rest) = key.strip_prefix(prefix) {
            let a = match rest {
                "namespace" => "namespace.name",
                "pod" => "pod.name",
                "owner_kind" => "owner.kind",
                "owner" => "owner.name",
                "node" => "node.name",
                "service" => "service.name",
                "zone" => "zone",
                _ => continue,
            };
            return format!("devourer.{side}.k8s.{a}");
        }
    }
    format!("devourer.{key}")
}

/// A JSON record as the attributes it must arrive with: nulls left out, an HTTP target as
/// its path and query, `HTTP/1.1` and `TLSv1.3` as the protocol's name and version.
fn expected(rec: &Map<String, Value>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (k, v) in rec {
        if v.is_null() {
            continue;
        }
        if k == "version"
            && let Some(v) = v.as_str().and_then(|v| v.strip_prefix("HTTP/"))
        {
            out.insert("network.protocol.name".into(), json!("http"));
            out.insert("network.protocol.version".into(), json!(v));
            continue;
        }
        if k == "tls_version_negotiated" {
            let v = v.as_str().unwrap();
            let (name, version) = match v.strip_prefix("TLSv") {
                Some("1") => ("tls", "1.0"),
                Some(n) => ("tls", n),
                None => ("ssl", v.trim_start_matches("SSLv")),
            };
            out.insert("tls.protocol.name".into(), json!(name));
            out.insert("tls.protocol.version".into(), json!(version));
            continue;
        }
        if k == "target" {
            let t = v.as_str().unwrap();
            let (path, query) = t.split_once('?').map_or((t, None), |(p, q)| (p, Some(q)));
            out.insert("url.path".into(), json!(path));
            if let Some(q) = query {
                out.insert("url.query".into(), json!(q));
            }
            continue;
        }
        out.insert(attribute(k), v.clone());
    }
    out
}

/// Each JSON record has exactly one log record, with equal attributes.
fn assert_one_log_record_each(json: &[Value], logs: &[Value], what: &str) {
    let mut by_id: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for l in logs {
        let id = l["attributes"]["devourer.id"].as_str().unwrap().to_owned();
        by_id.entry(id).or_default().push(l);
    }
    assert_eq!(logs.len(), json.len(), "{what}: one log record per record");
    for r in json {
        let id = r["id"].as_str().unwrap();
        let found = by_id
            .get(id)
            .unwrap_or_else(|| panic!("{what}: no log record for {r}"));
        assert_eq!(found.len(), 1, "{what}: {id} once");
        let l = found[0];
        assert_eq!(
            l["event_name"],
            format!("devourer.{}", r["type"].as_str().unwrap()),
            "{what}"
        );
        let mut got: BTreeMap<String, Value> = l["attributes"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Derived, not a field: the address family.
        if let Some(t) = got.remove("network.type") {
            let addr = r["src_addr"].as_str().or(r["client"].as_str()).unwrap();
            assert_eq!(t, if addr.contains(':') { "ipv6" } else { "ipv4" });
        }
        assert_eq!(got, expected(r.as_object().unwrap()), "{what}: {id}");
    }
}

/// The crafted mix, lookups naming an address and flows to it, and an HTTP exchange from a
/// capture of real traffic: flows, DNS and HTTP records.
fn captures(tmp: &TempDir) -> Vec<std::path::PathBuf> {
    let file = tmp.path("crafted.pcap");
    let mut frames = crafted();
    frames.extend(flows_and_lookups(3, 4, None));
    write_pcap(&file, DataLink::ETHERNET, &frames, 1_700_000_000);
    let link = Link::new();
    let real = tmp.path("real.pcap");
    capture_mix(&link, &real, false);
    vec![file, real]
}

fn export_replay(pcap: &Path, tmp: &TempDir, mode: &str, port: u16) -> (Vec<Value>, Vec<Value>) {
    let got = tmp.path(&format!("received-{mode}-{port}.jsonl"));
    let r = receiver(None, mode, port, &got);
    let spool = tmp.path(&format!("spool-{mode}-{port}"));
    let endpoint = format!("http://127.0.0.1:{port}");
    let protocol = if mode == "grpc" {
        "grpc"
    } else {
        "http/protobuf"
    };
    let (status, stdout, stderr) = devourer_read(
        pcap,
        &[
            "--http-ports",
            "8000",
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            protocol,
            "--otlp-compression",
            if mode == "grpc" { "gzip" } else { "none" },
            "--otlp-headers",
            "x-tenant=edge%201",
            "--otlp-spool-dir",
            spool.to_str().unwrap(),
            "--otlp-flush-interval",
            "100ms",
        ],
    );
    assert!(status.success(), "{stderr}");
    drop(r);
    let reqs = requests(&got);
    for q in reqs.iter().filter(|q| q["signal"] == "logs") {
        assert_eq!(q["resource"]["service.name"], "devourer");
        assert!(q["resource"]["host.name"].is_string());
        assert_eq!(q["headers"]["x-tenant"], "edge 1", "the configured header");
    }
    (records(&stdout), log_records(&reqs))
}

#[test]
fn every_record_is_one_log_record_with_equal_attributes_over_grpc_and_http() {
    if !require_root("every_record_is_one_log_record_with_equal_attributes_over_grpc_and_http") {
        return;
    }
    let tmp = TempDir::new("otlp");
    let pcaps = captures(&tmp);
    let mut kinds = std::collections::BTreeSet::new();
    for (i, pcap) in pcaps.iter().enumerate() {
        for (j, mode) in ["grpc", "http"].iter().enumerate() {
            let (json, logs) = export_replay(pcap, &tmp, mode, 29_960 + (i * 2 + j) as u16);
            assert!(!json.is_empty());
            kinds.extend(json.iter().map(|r| r["type"].as_str().unwrap().to_owned()));
            assert_one_log_record_each(&json, &logs, &format!("{} over {mode}", pcap.display()));
        }
    }
    for k in ["flow", "dns", "http"] {
        assert!(kinds.contains(k), "{k} records among {kinds:?}");
    }
}

#[test]
fn a_receiver_restarted_mid_run_loses_nothing_and_metrics_arrive_cumulative_at_their_endpoint() {
    if !require_root(
        "a_receiver_restarted_mid_run_loses_nothing_and_metrics_arrive_cumulative_at_their_endpoint",
    ) {
        return;
    }
    let tmp = TempDir::new("otlp-live");
    let link = Link::new();
    let got = tmp.path("received.jsonl");
    let port = 29_970;
    let first = receiver(Some(&link.a), "grpc", port, &got);
    // Metrics to an endpoint of their own, and everything set by the standard variables.
    let got_metrics = tmp.path("metrics.jsonl");
    let _metrics = receiver(Some(&link.a), "grpc", port + 1, &got_metrics);
    let (out, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
    let endpoint = format!("http://127.0.0.1:{port}");
    let metrics_endpoint = format!("http://127.0.0.1:{}", port + 1);
    let spool = tmp.path("spool");
    let agent = start_capture_env(
        &link.a,
        &[
            &[
                "-i",
                &link.if_a,
                "--otlp-spool-dir",
                spool.to_str().unwrap(),
                "--otlp-flush-interval",
                "100ms",
                "--otlp-backoff-base",
                "100ms",
                "--otlp-backoff-max",
                "300ms",
                "--metrics-addr",
                "127.0.0.1:9406",
            ][..],
            &QUICK_TIMEOUTS,
        ]
        .concat(),
        Some(&out),
        &log,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &metrics_endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ],
    );
    let ids_in = |path: &Path| -> std::collections::BTreeSet<String> {
        log_records(&requests(path))
            .iter()
            .map(|l| l["attributes"]["devourer.id"].as_str().unwrap().to_owned())
            .collect()
    };
    let json_ids = || -> Vec<String> {
        records(&std::fs::read(&out).unwrap_or_default())
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    link.a
        .sh(&format!("ping -c 3 -i 0.1 {} >/dev/null", link.ip4_b));
    assert!(
        wait_for(Duration::from_secs(15), || !ids_in(&got).is_empty()),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );

    // The receiver goes away while records keep coming: they wait in the spool.
    drop(first);
    for i in 0..3 {
        link.a.sh(&format!(
            "echo x > /dev/udp/{}/{}; sleep 0.7",
            link.ip4_b,
            31_000 + i
        ));
    }
    let scrape = || http_get(&link.a, "http://127.0.0.1:9406/metrics").1;
    assert!(
        wait_for(Duration::from_secs(10), || series(
            &scrape(),
            r#"devourer_sink_messages_total{outcome="logs_error",sink="otlp"}"#
        )
        .is_some_and(|v| v >= 1.0)),
        "failed requests are counted"
    );
    let _second = receiver(Some(&link.a), "grpc", port, &got);
    link.a
        .sh(&format!("ping -c 2 -i 0.1 {} >/dev/null", link.ip4_b));
    let everything = wait_for(Duration::from_secs(30), || {
        let have = ids_in(&got);
        let want = json_ids();
        want.len() >= 5 && want.iter().all(|id| have.contains(id))
    });
    let stopped = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    assert!(stopped.status.success());
    let (have, want) = (ids_in(&got), json_ids());
    let missing: Vec<&String> = want.iter().filter(|id| !have.contains(*id)).collect();
    assert!(
        everything && missing.is_empty(),
        "records the receiver never got: {missing:?}"
    );

    // The agent's metrics, at their own endpoint, cumulative: counters as monotonic sums that
    // never go down.
    assert!(
        requests(&got).iter().all(|q| q["signal"] == "logs"),
        "no metrics at the logs endpoint"
    );
    let mut last = 0.0;
    let mut exports = 0;
    for q in requests(&got_metrics)
        .iter()
        .filter(|q| q["signal"] == "metrics")
    {
        let m = q["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "devourer_packets_total")
            .expect("devourer_packets_total");
        assert_eq!(
            (m["kind"].as_str(), m["monotonic"].as_bool()),
            (Some("sum"), Some(true))
        );
        assert_eq!(m["temporality"], 2, "AGGREGATION_TEMPORALITY_CUMULATIVE");
        let total: f64 = m["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["value"].as_f64().unwrap())
            .sum();
        assert!(total >= last, "cumulative: {last} then {total}");
        last = total;
        exports += 1;
    }
    assert!(
        exports >= 2 && last >= 10.0,
        "{exports} metric exports, {last} packets"
    );
}
