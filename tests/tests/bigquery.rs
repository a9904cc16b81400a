//! The BigQuery sink against a fake BigQuery on loopback (tests/fake_bigquery.py: the real v2
//! discovery document validates every request; a generated service-account key signs the
//! JWT its token endpoint checks). Replays of crafted captures produce the records; time is
//! compressed with small backoffs.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use devourer_tests::{bigquery::FakeBigQuery as Fake, frames::*, *};
use pcap_file::DataLink;
use serde_json::Value;

/// `devourer read` against the fake (test-only settings).
trait ReadWith {
    fn read(&self, file: &Path, spool: &Path, extra: &[&str]) -> Command;
}

impl ReadWith for Fake {
    /// devourer read FILE with this BigQuery, the spool in `spool`, compressed backoff.
    fn read(&self, file: &Path, spool: &Path, extra: &[&str]) -> Command {
        let mut cmd = Command::new(devourer_bin());
        cmd.arg("read")
            .arg(file)
            .args([
                "--agent-name",
                "bq-test",
                "--bq-project-id",
                "p",
                "--bq-dataset",
                "d",
            ])
            .arg("--bq-sa-key-file")
            .arg(&self.key)
            .arg("--bq-endpoint")
            .arg(self.url("/bigquery/v2"))
            .arg("--spool-dir")
            .arg(spool)
            .args(["--bq-backoff-base", "20ms", "--bq-backoff-max", "200ms"])
            .args([
                "--bq-timeout",
                "2s",
                "--bq-flush-interval",
                "100ms",
                "--bq-schema-settle",
                "1ms",
            ])
            .args(extra)
            .env("DEVOURER_LOG", "info");
        cmd
    }
}

fn ids_of(stdout: &[u8], kind: &str) -> BTreeSet<String> {
    records(stdout)
        .iter()
        .filter(|r| r["type"] == kind)
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn capture(dir: &TempDir, name: &str, flows: u16, lookups: u16, poison: Option<u16>) -> PathBuf {
    let p = dir.path(name);
    write_pcap(
        &p,
        DataLink::ETHERNET,
        &flows_and_lookups(flows, lookups, poison),
        1_700_000_000,
    );
    p
}

fn output(cmd: &mut Command) -> (std::process::ExitStatus, Vec<u8>, String) {
    let out = cmd.output().expect("running devourer");
    (
        out.status,
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tables_are_created_as_designed_and_every_row_arrives_once() {
    if !require_root("tables_are_created_as_designed_and_every_row_arrives_once") {
        return;
    }
    let dir = TempDir::new("bq-create");
    let fake = Fake::start(&dir, &[]);
    let pcap = capture(&dir, "c.pcap", 150, 120, None);
    let (status, stdout, stderr) = output(&mut fake.read(&pcap, &dir.path("spool"), &[]));
    assert!(status.success(), "{stderr}");
    let st = fake.state();
    assert_eq!(
        st["bad_requests"],
        Value::Array(vec![]),
        "every request fits the discovery document"
    );
    assert!(
        st["token_requests"].as_u64().unwrap() >= 1,
        "the signed JWT was accepted"
    );
    let flows = &st["tables"]["p/d/flow_logs"]["resource"];
    assert_eq!(flows["timePartitioning"]["type"], "DAY");
    assert_eq!(flows["timePartitioning"]["field"], "first_seen_at");
    assert_eq!(
        flows["clustering"]["fields"],
        serde_json::json!(["src_addr", "dst_addr"])
    );
    let cols: Vec<(&str, &str)> = flows["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["type"].as_str().unwrap()))
        .collect();
    assert!(
        cols.contains(&("first_seen_at", "TIMESTAMP")) && cols.contains(&("src_bytes", "INTEGER"))
    );
    let dns = &st["tables"]["p/d/dns_logs"]["resource"];
    assert_eq!(dns["timePartitioning"]["field"], "time");
    assert_eq!(
        dns["clustering"]["fields"],
        serde_json::json!(["client", "server"])
    );
    assert!(
        dns["schema"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "answers" && f["mode"] == "REPEATED")
    );
    assert_eq!(fake.ids("flow_logs"), ids_of(&stdout, "flow"));
    assert_eq!(fake.ids("dns_logs"), ids_of(&stdout, "dns"));
    assert_eq!(fake.ids("dns_logs").len(), 120);
    assert_eq!(st["tables"]["p/d/flow_logs"]["dups"], 0);
    assert!(
        std::fs::read_dir(dir.path("spool/flow"))
            .unwrap()
            .next()
            .is_none(),
        "spool emptied"
    );
}

#[test]
fn failures_are_retried_until_every_row_arrives() {
    if !require_root("failures_are_retried_until_every_row_arrives") {
        return;
    }
    let dir = TempDir::new("bq-retry");
    let fake = Fake::start(&dir, &[]);
    let pcap = capture(&dir, "r.pcap", 200, 100, None);
    fake.control(
        r#"{"schedule": [{"status": 500}, {"status": 503}, {"status": 429, "reason": "rateLimitExceeded"},
            {"mode": "reset"}, {"status": 500, "reason": "internalError"}, {"mode": "timeout", "secs": 3},
            {"status": 502}, {"mode": "reset"}, {"status": 500, "reason": "backendError"}]}"#,
    );
    let (status, stdout, stderr) =
        output(&mut fake.read(&pcap, &dir.path("spool"), &["--bq-batch-rows", "20"]));
    assert!(status.success(), "{stderr}");
    assert_eq!(fake.ids("flow_logs"), ids_of(&stdout, "flow"));
    assert_eq!(fake.ids("dns_logs"), ids_of(&stdout, "dns"));
    assert!(log_number(&stderr, "rows_retried").unwrap() > 0, "{stderr}");
    assert_eq!(log_number(&stderr, "spool_bytes_left"), Some(0));
}

#[test]
fn an_outage_then_recovery_loses_nothing() {
    if !require_root("an_outage_then_recovery_loses_nothing") {
        return;
    }
    let dir = TempDir::new("bq-outage");
    let fake = Fake::start(&dir, &[]);
    let pcap = capture(&dir, "o.pcap", 300, 50, None);
    // Tables exist first; then BigQuery goes away for a while (the two minutes of a real
    // outage are compressed by the 200 ms backoff cap).
    let (status, _, stderr) = output(&mut fake.read(
        &capture(&dir, "w.pcap", 1, 0, None),
        &dir.path("spool"),
        &[],
    ));
    assert!(status.success(), "{stderr}");
    fake.control(r#"{"down": true}"#);
    let mut agent = fake.read(&pcap, &dir.path("spool"), &[]);
    agent.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = agent.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    fake.control(r#"{"down": false}"#);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        fake.state()["inserts"].as_u64().unwrap() > 10,
        "it kept trying during the outage"
    );
    for kind in ["flow", "dns"] {
        let sent = ids_of(&out.stdout, kind);
        let got = fake.ids(&format!("{kind}_logs"));
        assert!(
            sent.is_subset(&got),
            "{kind}: {} of {} missing",
            sent.difference(&got).count(),
            sent.len()
        );
    }
}

#[test]
fn a_killed_agent_sends_its_spool_when_it_starts_again() {
    if !require_root("a_killed_agent_sends_its_spool_when_it_starts_again") {
        return;
    }
    let dir = TempDir::new("bq-kill");
    let fake = Fake::start(&dir, &[]);
    fake.control(r#"{"down": true}"#);
    let pcap = capture(&dir, "k.pcap", 400, 100, None);
    let out_file = dir.path("run1.jsonl");
    let mut first = fake.read(
        &pcap,
        &dir.path("spool"),
        &["--output", out_file.to_str().unwrap()],
    );
    first.stdout(Stdio::null()).stderr(Stdio::null());
    let bg = Bg::spawn(first, "devourer read (run 1)");
    // Wait until every record is written (the replay is done and the sender keeps failing),
    // then kill -9 mid-retry.
    let all_written = wait_for(Duration::from_secs(30), || {
        std::fs::read(&out_file).is_ok_and(|b| records(&b).len() >= 500)
    });
    assert!(all_written);
    std::thread::sleep(Duration::from_millis(300));
    bg.signal(libc::SIGKILL);
    drop(bg);
    let expected = std::fs::read(&out_file).unwrap();
    assert!(
        fake.ids("flow_logs").is_empty(),
        "nothing went through while down"
    );

    fake.control(r#"{"down": false}"#);
    let empty = capture(&dir, "empty.pcap", 0, 0, None);
    let (status, _, stderr) = output(&mut fake.read(&empty, &dir.path("spool"), &[]));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("spool holds rows from an earlier run"),
        "{stderr}"
    );
    assert_eq!(fake.ids("flow_logs"), ids_of(&expected, "flow"));
    assert_eq!(fake.ids("dns_logs"), ids_of(&expected, "dns"));
}

#[test]
fn a_poison_row_is_dead_lettered_and_its_neighbours_arrive() {
    if !require_root("a_poison_row_is_dead_lettered_and_its_neighbours_arrive") {
        return;
    }
    let dir = TempDir::new("bq-poison");
    let fake = Fake::start(&dir, &[]);
    fake.control(r#"{"poison": "poison.example"}"#);
    let pcap = capture(&dir, "p.pcap", 10, 40, Some(17));
    let (status, stdout, stderr) = output(&mut fake.read(&pcap, &dir.path("spool"), &[]));
    assert!(status.success(), "{stderr}");
    let sent = ids_of(&stdout, "dns");
    let got = fake.ids("dns_logs");
    assert_eq!(got.len(), 39, "all but the poison row");
    assert!(got.is_subset(&sent));
    let dead = std::fs::read_to_string(dir.path("spool/dead-letter.jsonl")).unwrap();
    let lines: Vec<Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{dead}");
    assert_eq!(lines[0]["row"]["q_name"], "poison.example");
    assert_eq!(lines[0]["table"], "dns_logs");
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap()
            .contains("invalid: poison row"),
        "{dead}"
    );
    assert_eq!(log_number(&stderr, "rows_dead_lettered"), Some(1));
}

#[test]
fn a_full_spool_drops_rows_and_counts_them() {
    if !require_root("a_full_spool_drops_rows_and_counts_them") {
        return;
    }
    let dir = TempDir::new("bq-full");
    let fake = Fake::start(&dir, &[]);
    fake.control(r#"{"down": true}"#);
    let pcap = capture(&dir, "f.pcap", 300, 0, None);
    let (status, stdout, stderr) = output(&mut fake.read(
        &pcap,
        &dir.path("spool"),
        &["--spool-max-bytes", "16K", "--shutdown-timeout", "500ms"],
    ));
    assert!(status.success(), "{stderr}");
    let records = ids_of(&stdout, "flow").len() as u64;
    let spooled = log_number(&stderr, "rows_spooled").unwrap();
    let dropped = log_number(&stderr, "rows_dropped").unwrap();
    assert!(dropped > 0, "{stderr}");
    assert!(stderr.contains("spool is full"), "{stderr}");
    assert_eq!(spooled + dropped, records, "{stderr}");
    assert!(log_number(&stderr, "spool_bytes_left").unwrap() <= 16 * 1024);
}

#[test]
fn an_existing_table_gets_missing_columns_and_a_type_conflict_stops_start_up() {
    if !require_root("an_existing_table_gets_missing_columns_and_a_type_conflict_stops_start_up") {
        return;
    }
    // The Go devourer's flow_logs.
    let go = "p/d/flow_logs=id:STRING,protocol:STRING,src_addr:STRING,dst_addr:STRING,\
              src_port:INTEGER,dst_port:INTEGER,first_seen_at:TIMESTAMP,last_seen_at:TIMESTAMP,\
              src_bytes:INTEGER,dst_bytes:INTEGER,src_packets:INTEGER,dst_packets:INTEGER,status:STRING";
    let dir = TempDir::new("bq-upgrade");
    let fake = Fake::start(&dir, &[go]);
    let pcap = capture(&dir, "u.pcap", 20, 5, None);
    let (status, stdout, stderr) = output(&mut fake.read(&pcap, &dir.path("spool"), &[]));
    assert!(status.success(), "{stderr}");
    let st = fake.state();
    assert_eq!(st["patches"], 1);
    let fields: Vec<&Value> = st["tables"]["p/d/flow_logs"]["resource"]["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert!(
        fields
            .iter()
            .any(|f| f["name"] == "tcp_flags" && f["mode"] == "NULLABLE")
    );
    assert_eq!(fields[0]["name"], "id", "existing columns keep their place");
    assert_eq!(fake.ids("flow_logs"), ids_of(&stdout, "flow"));

    let dir2 = TempDir::new("bq-conflict");
    let fake2 = Fake::start(&dir2, &["p/d/flow_logs=id:STRING,src_port:STRING"]);
    let (status, _, stderr) = output(&mut fake2.read(&pcap, &dir2.path("spool"), &[]));
    assert!(!status.success());
    assert!(
        stderr.contains("src_port is STRING, devourer writes INTEGER"),
        "{stderr}"
    );
}

#[test]
fn a_torn_spool_line_is_quarantined_and_every_good_row_still_arrives() {
    if !require_root("a_torn_spool_line_is_quarantined_and_every_good_row_still_arrives") {
        return;
    }
    // What a kill -9, an OOM kill or a power loss during an append leaves: a good row, then
    // half of the next one, in the segment that was open.
    let dir = TempDir::new("bq-torn");
    let fake = Fake::start(&dir, &[]);
    let spool = dir.path("spool");
    std::fs::create_dir_all(spool.join("flow")).unwrap();
    let good = r#"{"id":"left-by-an-earlier-run","seq":0,"agent":"bq-test","interface":"pcap","protocol":"udp","src_addr":"10.0.0.1","dst_addr":"10.0.0.2","src_port":1,"dst_port":2,"icmp_type":null,"icmp_code":null,"vlan":null,"first_seen_at":"2023-11-14T22:13:20.000000Z","last_seen_at":"2023-11-14T22:13:20.000000Z","src_bytes":28,"dst_bytes":0,"src_packets":1,"dst_packets":0,"status":"idle_timeout","src_name":null,"dst_name":null,"tcp_flags":0}"#;
    let torn = r#"{"type":"flow","id":"torn"#;
    std::fs::write(
        spool.join("flow/00000000000000000000.open"),
        format!("{good}\n{torn}"),
    )
    .unwrap();
    // A line corrupted in the middle of a sealed segment, between two good rows.
    std::fs::write(
        spool.join("flow/00000000000000000001.jsonl"),
        format!(
            "{}\n\u{1}garbage\n{}\n",
            good.replace("left-by-an-earlier-run", "before-the-garbage"),
            good.replace("left-by-an-earlier-run", "after-the-garbage")
        ),
    )
    .unwrap();
    let pcap = capture(&dir, "t.pcap", 30, 10, None);
    let (status, stdout, stderr) = output(&mut fake.read(&pcap, &spool, &[]));
    assert!(status.success(), "{stderr}");
    let mut want = ids_of(&stdout, "flow");
    want.extend(
        [
            "left-by-an-earlier-run",
            "before-the-garbage",
            "after-the-garbage",
        ]
        .map(String::from),
    );
    assert_eq!(fake.ids("flow_logs"), want, "{stderr}");
    assert_eq!(fake.ids("dns_logs"), ids_of(&stdout, "dns"));
    assert_eq!(log_number(&stderr, "rows_quarantined"), Some(2), "{stderr}");
    assert_eq!(log_number(&stderr, "spool_bytes_left"), Some(0), "{stderr}");
    let quarantine = std::fs::read_to_string(spool.join("quarantine.jsonl")).unwrap();
    assert_eq!(quarantine.lines().count(), 2, "{quarantine}");
    assert!(
        quarantine.contains(r#"{\"type\":\"flow\",\"id\":\"torn"#),
        "{quarantine}"
    );
    assert!(quarantine.contains("garbage"), "{quarantine}");
}

#[test]
fn a_table_bigquery_keeps_refusing_does_not_hold_up_the_other() {
    if !require_root("a_table_bigquery_keeps_refusing_does_not_hold_up_the_other") {
        return;
    }
    let dir = TempDir::new("bq-tables");
    let fake = Fake::start(&dir, &[]);
    // Every insert into flow_logs fails with a 503 for as long as the run lasts; dns_logs
    // works. The DNS rows must arrive; the flow rows stay spooled for the next start.
    fake.control(r#"{"fail_table": {"table": "p/d/flow_logs", "status": 503}}"#);
    let pcap = capture(&dir, "s.pcap", 40, 60, None);
    let (status, stdout, stderr) = output(&mut fake.read(
        &pcap,
        &dir.path("spool"),
        &["--bq-batch-rows", "10", "--shutdown-timeout", "3s"],
    ));
    assert!(status.success(), "{stderr}");
    assert_eq!(fake.ids("dns_logs"), ids_of(&stdout, "dns"), "{stderr}");
    assert!(fake.ids("flow_logs").is_empty());
    assert!(
        log_number(&stderr, "spool_bytes_left").unwrap() > 0,
        "{stderr}"
    );
}
