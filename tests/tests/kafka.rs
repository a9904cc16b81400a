//! Kafka export against a real Kafka-protocol broker (Tansu), read back with an independent
//! client (kafka-python): every record's value is its JSON line, keyed by community_id in the
//! partition Kafka's own partitioner picks, exactly once across a broker restart (a batch
//! sent again keeps its records' ids), lz4 and gzip compressed.

use std::{collections::BTreeMap, time::Duration};

use devourer_tests::{kafka::*, *};
use serde_json::Value;

const TOPICS: [&str; 4] = [
    "devourer-flows",
    "devourer-dns",
    "devourer-http",
    "devourer-overflow",
];

/// Checks each produced record against the JSON output: its value is a JSON line, its key
/// the line's community_id, its partition the one Kafka's partitioner picks. Returns how
/// many times each record id came.
fn check_against(recs: &[Value], produced: &[Value]) -> BTreeMap<String, usize> {
    let want: BTreeMap<&str, &Value> = recs
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r))
        .collect();
    let mut seen = BTreeMap::new();
    for m in produced {
        let v: Value = serde_json::from_str(m["value"].as_str().unwrap()).unwrap();
        let id = v["id"].as_str().unwrap();
        assert_eq!(
            Some(&&v),
            want.get(id),
            "the Kafka value is the JSON line: {m}"
        );
        let topic = match v["type"].as_str().unwrap() {
            "flow" => "devourer-flows",
            "dns" => "devourer-dns",
            "http" => "devourer-http",
            _ => "devourer-overflow",
        };
        assert_eq!(m["topic"], topic, "{m}");
        assert_eq!(m["key"], v["community_id"], "keyed by community_id: {m}");
        if !m["key"].is_null() {
            assert_eq!(m["partition"], m["partitioner"], "Kafka's partition: {m}");
        }
        *seen.entry(id.to_owned()).or_insert(0) += 1;
    }
    seen
}

#[test]
fn a_replayed_capture_reaches_kafka_record_for_record_gzip_compressed_where_kafkas_partitioner_puts_it()
 {
    if !require_root(
        "a_replayed_capture_reaches_kafka_record_for_record_gzip_compressed_where_kafkas_partitioner_puts_it",
    ) {
        return;
    }
    let tmp = TempDir::new("kafka-replay");
    let ns = Netns::new("kafka");
    let _broker = tansu(&ns, 19092);
    let pcap = tmp.path("flows.pcap");
    frames::write_pcap(
        &pcap,
        pcap_file::DataLink::ETHERNET,
        &frames::flows_and_lookups(300, 40, None),
        1_700_000_000,
    );
    let spool = tmp.path("spool");
    let out = run(ns.cmd(devourer_bin()).arg("read").arg(&pcap).args([
        "--kafka-brokers",
        "127.0.0.1:19092",
        "--kafka-compression",
        "gzip",
        "--kafka-batch-records",
        "50",
        "--kafka-spool-dir",
        spool.to_str().unwrap(),
    ]));
    let recs = records(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        recs.iter().filter(|r| r["type"] == "flow").count() >= 300
            && recs.iter().any(|r| r["type"] == "dns"),
        "{stderr}"
    );
    let produced = dump(&ns, 19092, &TOPICS, &tmp.path("dump.jsonl"));
    let seen = check_against(&recs, &produced);
    assert!(
        seen.values().all(|&n| n == 1) && seen.len() == recs.len(),
        "each record once: {} of {}\n{stderr}",
        seen.len(),
        recs.len()
    );
    let parts: std::collections::BTreeSet<u64> = produced
        .iter()
        .filter(|m| m["topic"] == "devourer-flows")
        .map(|m| m["partition"].as_u64().unwrap())
        .collect();
    assert_eq!(parts.len(), 4, "flows spread over the topic's 4 partitions");
    assert!(
        std::fs::read_dir(spool.join("flows")).unwrap().count() == 0,
        "nothing left in the spool"
    );
}

#[test]
fn every_record_reaches_kafka_once_across_a_broker_restart() {
    if !require_root("every_record_reaches_kafka_once_across_a_broker_restart") {
        return;
    }
    let tmp = TempDir::new("kafka-agent");
    let link = Link::new();
    let _servers = start_servers(&link.b);
    let (out, log) = (tmp.path("records.jsonl"), tmp.path("agent.log"));
    let broker = tansu(&link.b, 19092);
    let spool = tmp.path("spool");
    let mut args = vec![
        "-i",
        &link.if_b,
        "--metrics-addr",
        "127.0.0.1:9402",
        "--flow-start-records",
        "--http-ports",
        "8000",
        "--kafka-brokers",
        "127.0.0.1:19092",
        "--kafka-spool-dir",
        spool.to_str().unwrap(),
        "--kafka-flush-interval",
        "100ms",
        "--kafka-timeout",
        "2s",
        "--kafka-backoff-base",
        "100ms",
        "--kafka-backoff-max",
        "400ms",
    ];
    args.extend(QUICK_TIMEOUTS);
    let agent = start_capture(&link.b, &args, Some(&out), &log);
    let traffic = |n: u32| {
        link.a.sh(&format!(
            "ping -q -c {n} -i 0.1 -W 1 {b} >/dev/null
             curl -sf -o /dev/null http://{b}:8000/",
            b = link.ip4_b
        ));
        std::thread::sleep(Duration::from_millis(1500));
    };
    traffic(2);
    // What the broker holds is lost with it (memory storage): once every record of the
    // traffic so far was acknowledged and no new one comes, read it, then stop the broker.
    let counts = || {
        let (_, m) = http_get(&link.b, "http://127.0.0.1:9402/metrics");
        let n = |o: &str| {
            series(
                &m,
                &format!(r#"devourer_sink_rows_total{{outcome="{o}",sink="kafka"}}"#),
            )
        };
        (n("spooled"), n("sent"))
    };
    let mut last = counts();
    let settled = wait_for(Duration::from_secs(15), || {
        std::thread::sleep(Duration::from_millis(1500));
        let now = counts();
        let done = now == last && now.0.is_some() && now.0 == now.1;
        last = now;
        done
    });
    assert!(settled, "the agent settles: {last:?}");
    let mut produced = dump(&link.b, 19092, &TOPICS, &tmp.path("dump1.jsonl"));
    assert!(!produced.is_empty(), "records before the restart");
    drop(broker);
    // The broker is away: records wait in the spool and are retried.
    traffic(3);
    let (_, metrics) = http_get(&link.b, "http://127.0.0.1:9402/metrics");
    assert!(
        series(&metrics, r#"devourer_sink_spool_bytes{sink="kafka"}"#).is_some_and(|b| b > 0.0),
        "records wait in the spool while the broker is away: {metrics}"
    );
    let _broker = tansu(&link.b, 19092);
    traffic(4);
    let (_, metrics) = http_get(&link.b, "http://127.0.0.1:9402/metrics");
    let sent = series(
        &metrics,
        r#"devourer_sink_table_records_total{outcome="sent",sink="kafka",table="devourer-flows"}"#,
    );
    assert!(sent.is_some_and(|n| n > 0.0), "{metrics}");
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(res.status.success(), "{log_text}");
    produced.extend(dump(&link.b, 19092, &TOPICS, &tmp.path("dump2.jsonl")));
    let recs = records(&std::fs::read(&out).unwrap());
    assert!(
        recs.iter().filter(|r| r["type"] == "flow").count() >= 6
            && recs.iter().any(|r| r["type"] == "http"),
        "flows and HTTP in the JSON output: {recs:?}"
    );
    let seen = check_against(&recs, &produced);
    // Sent again only what a lost acknowledgement may cover: never more than twice here.
    assert!(seen.values().all(|&n| n <= 2), "{seen:?}");
    let missing: Vec<&str> = recs
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "records the broker never got: {missing:?}\n{log_text}"
    );
}
