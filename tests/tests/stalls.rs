//! Nothing on the node can stall counting: with flows and DNS at about 1,000 records a second,
//! a spool disk frozen for 20 s (`fsfreeze`) leaves the scans on time, the rings and the flow
//! map without drops and `/healthz` answering, and once it thaws every row reaches the
//! BigQuery stand-in. No timed assertion: counts, and a scan-gap bound of three intervals.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use devourer_tests::{bigquery::FakeBigQuery, *};

/// An ext4 file system on a loop device, for a spool that can be frozen.
struct Frozen {
    img: PathBuf,
    dir: PathBuf,
}

impl Frozen {
    fn new(tmp: &TempDir) -> Self {
        let img = tmp.path("spool.img");
        let dir = tmp.path("spool-fs");
        std::fs::create_dir_all(&dir).unwrap();
        sh(&format!(
            "truncate -s 256M {img} && mkfs.ext4 -q -F {img} && mount -o loop {img} {dir}",
            img = img.display(),
            dir = dir.display()
        ));
        Self { img, dir }
    }

    fn freeze(&self) {
        run(Command::new("fsfreeze").arg("-f").arg(&self.dir));
    }

    fn thaw(&self) {
        let _ = Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.dir)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_file(&self.img);
    }
}

fn ids(path: &Path) -> BTreeSet<String> {
    records(&std::fs::read(path).unwrap_or_default())
        .iter()
        .filter(|r| r["type"] == "flow" || r["type"] == "dns")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_frozen_spool_disk_stalls_no_scan_drops_nothing_and_loses_no_row() {
    if !require_root("a_frozen_spool_disk_stalls_no_scan_drops_nothing_and_loses_no_row") {
        return;
    }
    let tmp = TempDir::new("stall-freeze");
    let link = Link::new();
    let fs = Frozen::new(&tmp);
    let fake = FakeBigQuery::start_in(Some(&link.b), &tmp, &[]);
    let out = tmp.path("records.jsonl");
    let log = tmp.path("agent.log");
    let spool = fs.dir.join("spool");
    let endpoint = fake.url("/bigquery/v2");
    let args = [
        "-i",
        &link.if_b,
        "--idle-timeout",
        "1s",
        "--evict-after",
        "300ms",
        "--scan-interval",
        "333ms",
        "--dns-timeout",
        "1s",
        "--metrics-addr",
        "127.0.0.1:9402",
        "--probe-addr",
        "127.0.0.1:9404",
        "--shutdown-timeout",
        "20s",
        "--bq-project-id",
        "p",
        "--bq-dataset",
        "d",
        "--bq-sa-key-file",
        fake.key.to_str().unwrap(),
        "--bq-endpoint",
        &endpoint,
        "--bq-flush-interval",
        "200ms",
        "--bq-backoff-base",
        "50ms",
        "--bq-backoff-max",
        "500ms",
        "--spool-dir",
        spool.to_str().unwrap(),
    ];
    let agent = start_capture(&link.b, &args, Some(&out), &log);
    let load = udp_and_dns_load(&link.a, &link.ip4_b, 32);
    std::thread::sleep(Duration::from_secs(4));
    fs.freeze();
    let prober = Prober::start(&link.b, "http://127.0.0.1:9404/healthz");
    std::thread::sleep(Duration::from_secs(20));
    let (probes, answered) = prober.stop();
    let (_, during) = http_get(&link.b, "http://127.0.0.1:9402/metrics");
    fs.thaw();
    drop(load);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        answered,
        probes,
        "/healthz answered every probe while the disk was frozen:\n{}",
        logs()
    );
    let queued = series(&during, "devourer_sink_queue_records{sink=\"bigquery\"}").unwrap_or(0.0);
    assert!(
        queued > 1000.0,
        "rows waited in the BigQuery sink's queue, not on the counting thread: {queued}"
    );
    // Every record the agent wrote reaches BigQuery once the disk thaws.
    std::thread::sleep(Duration::from_secs(3));
    let all_arrived = wait_for(Duration::from_secs(90), || {
        let want = ids(&out);
        let got: BTreeSet<String> = fake
            .ids("flow_logs")
            .union(&fake.ids("dns_logs"))
            .cloned()
            .collect();
        want.is_subset(&got)
    });
    let (_, metrics) = http_get(&link.b, "http://127.0.0.1:9402/metrics");
    let stopped = agent.stop(libc::SIGTERM, Duration::from_secs(30));
    assert!(stopped.status.success(), "{}", logs());
    let want = ids(&out);
    assert!(
        want.len() > 15_000,
        "about 1,000 records a second: {}",
        want.len()
    );
    assert!(
        all_arrived,
        "rows missing at the BigQuery stand-in:\n{}",
        logs()
    );
    for event in [
        "dns_ring_drops",
        "map_full",
        "overflow_full",
        "wakeup_failed",
    ] {
        let v = series(
            &metrics,
            &format!("devourer_kernel_events_total{{event=\"{event}\"}}"),
        );
        assert_eq!(v, Some(0.0), "{event}:\n{metrics}");
    }
    for sink in ["bigquery", "jsonl"] {
        let v = series(
            &metrics,
            &format!("devourer_sink_dropped_total{{sink=\"{sink}\"}}"),
        );
        assert_eq!(v, Some(0.0), "{sink} dropped records");
    }
    // Every gap between two scan starts under three scan intervals (1 s).
    let count = series(&metrics, "devourer_scan_gap_seconds_count").unwrap();
    let within = series(&metrics, "devourer_scan_gap_seconds_bucket{le=\"1\"}").unwrap();
    assert!(count > 60.0, "scans went on: {count}");
    assert_eq!(within, count, "a scan gap of over 1 s:\n{metrics}");
}
