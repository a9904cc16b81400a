//! The soak (`cargo xtask bench soak`, not in CI): the agent on a veth for MINUTES (10 by
//! default) under mixed real traffic (ping, curl), a flood of unique one-packet UDP flows and
//! a flood of DNS queries nobody answers, while the fake BigQuery fails a fifth of its inserts.
//! Prints JSON lines (`{"case":…,"value":…}`): resident memory, open descriptors and spool
//! bytes at the start and the end of the run, and how many of the flood's flows reached
//! BigQuery: every one exactly once is the goal.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use devourer_tests::{bigquery::FakeBigQuery, *};

/// Unique flows the flood sends per second: (sport, dport) with sport fixed for the second.
const FLOOD_PER_SECOND: u16 = 200;
/// DNS queries per second.
const DNS_PER_SECOND: u32 = 200;
/// First source port of the flood (one per second of the run).
const FLOOD_SPORT: u16 = 10_000;

fn report(case: &str, value: f64) {
    println!("{}", serde_json::json!({ "case": case, "value": value }));
}

/// (resident KiB, open descriptors) of process `pid`.
fn proc_usage(pid: i32) -> (u64, u64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    (rss, fds)
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Averages of the first and the last quarter of `samples`.
fn ends(samples: &[u64]) -> (f64, f64) {
    let q = (samples.len() / 4).max(1);
    let avg = |s: &[u64]| s.iter().sum::<u64>() as f64 / s.len().max(1) as f64;
    (avg(&samples[..q]), avg(&samples[samples.len() - q..]))
}

fn main() {
    let minutes: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10.0);
    if !require_root("soak") {
        std::process::exit(2);
    }
    let tmp = TempDir::new("soak");
    let link = Link::new();
    let fake = FakeBigQuery::start_in(Some(&link.a), &tmp, &[]);
    fake.control(r#"{"fail_ratio": 0.2}"#);
    let spool = tmp.path("spool");
    let log = tmp.path("agent.log");
    let endpoint = fake.url("/bigquery/v2");
    let args = [
        "-i",
        &link.if_a,
        "--output",
        "none",
        "--metrics-addr",
        "off",
        "--bq-project-id",
        "p",
        "--bq-dataset",
        "d",
        "--bq-sa-key-file",
        fake.key.to_str().expect("path"),
        "--bq-endpoint",
        &endpoint,
        "--spool-dir",
        spool.to_str().expect("path"),
        "--bq-backoff-base",
        "100ms",
        "--bq-backoff-max",
        "2s",
        "--bq-flush-interval",
        "500ms",
        "--bq-schema-settle",
        "1ms",
        "--idle-timeout",
        "5s",
        "--evict-after",
        "2s",
        "--shutdown-timeout",
        "120s",
    ];
    let agent = start_capture(&link.a, &args, None, &log);
    let pid = agent.pid();
    let servers = start_servers(&link.b);

    // The sampler: memory, descriptors and spool every 5 s.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, spool) = (stop.clone(), spool.clone());
        std::thread::spawn(move || {
            let (mut rss, mut fds, mut sp) = (Vec::new(), Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let (r, f) = proc_usage(pid);
                rss.push(r);
                fds.push(f);
                sp.push(dir_bytes(&spool));
                std::thread::sleep(Duration::from_secs(5));
            }
            (rss, fds, sp)
        })
    };

    // The traffic, one round a second.
    let mut rounds = 0u64;
    let deadline = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let (b4, b6) = (link.ip4_b.clone(), link.ip6_b.clone());
    while Instant::now() < deadline {
        let round = Instant::now();
        let sport = FLOOD_SPORT + rounds as u16;
        rounds += 1;
        link.a.sh(&format!(
            "python3 - <<'EOF'
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', {sport}))
for port in range(1, {FLOOD_PER_SECOND} + 1):
    s.sendto(b'f', ('{b4}', port))
q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range({DNS_PER_SECOND}):
    name = b''.join(bytes([len(p)]) + p for p in [b'soak%d' % i, b'example']) + b'\\0'
    q.sendto(struct.pack('>HHHHHH', i, 0x0100, 1, 0, 0, 0) + name + b'\\0\\1\\0\\1', ('{b4}', 53))
EOF
             ping -q -c 2 -i 0.2 {b4} >/dev/null || true
             curl -sf -o /dev/null http://{b4}:8000/ || true
             curl -sf -o /dev/null 'http://[{b6}]:8000/' || true"
        ));
        if let Some(rest) = Duration::from_secs(1).checked_sub(round.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    drop(servers);

    // Let BigQuery work again and the spool drain, then stop.
    fake.control(r#"{"fail_ratio": 0.0}"#);
    std::thread::sleep(Duration::from_secs(8));
    let drained = wait_for(Duration::from_secs(120), || dir_bytes(&spool) == 0);
    stop.store(true, Ordering::Relaxed);
    let (rss, fds, sp) = sampler.join().expect("sampler");
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(150));
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        res.status.success(),
        "agent exit {}: {log_text}",
        res.status
    );

    // The oracle: every (sport, dport) the flood sent.
    let rows =
        fake.get("/control/rows?table=p/d/flow_logs&fields=protocol,src_addr,src_port,dst_port");
    let mut seen: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for r in rows.as_array().expect("rows") {
        let sport = r["src_port"].as_u64().unwrap_or(0);
        if r["protocol"] == "udp"
            && r["src_addr"] == link.ip4_a.as_str()
            && (u64::from(FLOOD_SPORT)..u64::from(FLOOD_SPORT) + rounds).contains(&sport)
        {
            *seen
                .entry((sport, r["dst_port"].as_u64().unwrap_or(0)))
                .or_default() += 1;
        }
    }
    let sent = rounds * u64::from(FLOOD_PER_SECOND);
    let once = seen.values().filter(|n| **n == 1).count() as u64;
    let twice = seen.values().filter(|n| **n > 1).count() as u64;
    let state = fake.state();
    let inserts = state["inserts"].as_u64().unwrap_or(0);
    let (rss0, rss1) = ends(&rss);
    let (fd0, fd1) = ends(&fds);
    report("soak minutes", minutes);
    report("soak RSS first quarter MiB", rss0 / 1024.0);
    report("soak RSS last quarter MiB", rss1 / 1024.0);
    report("soak open fds first quarter", fd0);
    report("soak open fds last quarter", fd1);
    report(
        "soak spool peak MiB",
        sp.iter().copied().max().unwrap_or(0) as f64 / 1048576.0,
    );
    report("soak spool drained", if drained { 1.0 } else { 0.0 });
    report("soak flood flows sent", sent as f64);
    report("soak flood flows in BigQuery once", once as f64);
    report("soak flood flows in BigQuery twice", twice as f64);
    report(
        "soak flood flows missing",
        sent.saturating_sub(once + twice) as f64,
    );
    report(
        "soak BigQuery insert requests (a fifth failed)",
        inserts as f64,
    );
    report(
        "soak BigQuery duplicate rows dropped by insertId",
        state["tables"]["p/d/flow_logs"]["dups"]
            .as_u64()
            .unwrap_or(0) as f64,
    );
}
