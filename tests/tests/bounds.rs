//! The agent stays responsive and bounded under hostile conditions: a DNS flood does not
//! starve scans or SIGTERM; idle clients cannot hold the endpoints; shutdown honours one
//! deadline with a hung BigQuery and a stuck output.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use devourer_tests::*;

/// A metric's value from the agent's endpoint in `ns` (`None` while it does not answer).
fn metric(ns: &Netns, port: u16, name: &str) -> Option<f64> {
    let out = ns
        .cmd("curl")
        .args(["-sf", "--max-time", "2"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn a_dns_flood_does_not_starve_scans_and_sigterm_stops_within_the_deadline() {
    if !require_root("a_dns_flood_does_not_starve_scans_and_sigterm_stops_within_the_deadline") {
        return;
    }
    let link = Link::new();
    let dir = TempDir::new("flood");
    // An iperf3 server on port 53: every datagram of the flood is a DNS-port payload.
    let server = Bg::spawn(
        {
            let mut c = link.b.cmd("iperf3");
            c.args(["-s", "-p", "53"]).stdout(Stdio::null());
            c
        },
        "iperf3 server",
    );
    std::thread::sleep(Duration::from_millis(300));
    let log = dir.path("agent.log");
    let agent = start_capture(
        &link.b,
        &[
            "-i",
            &link.if_b,
            "--scan-interval",
            "100ms",
            "--metrics-addr",
            "127.0.0.1:9402",
            "--shutdown-timeout",
            "3s",
            "--output",
            "none",
        ],
        None,
        &log,
    );
    let flood = Bg::spawn(
        {
            let mut c = link.a.cmd("iperf3");
            c.args([
                "-c",
                &link.ip4_b,
                "-p",
                "53",
                "-u",
                "-b",
                "0",
                "-l",
                "64",
                "-t",
                "8",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            c
        },
        "UDP flood to port 53",
    );
    std::thread::sleep(Duration::from_secs(2));
    let scans = |_| {
        metric(
            &link.b,
            9402,
            "devourer_eviction_scan_duration_seconds_count",
        )
    };
    let first = scans(()).expect("metrics answer during the flood");
    std::thread::sleep(Duration::from_secs(2));
    let second = scans(()).expect("metrics answer during the flood");
    assert!(
        second >= first + 5.0,
        "scans kept happening during the flood: {first} then {second}"
    );
    let events = metric(
        &link.b,
        9402,
        "devourer_kernel_events_total{event=\"dns_events\"}",
    )
    .unwrap_or(0.0);
    assert!(events > 10_000.0, "it was a flood: {events} DNS events");
    let t0 = Instant::now();
    let out = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    let took = t0.elapsed();
    drop(flood);
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(
        took < Duration::from_secs(5),
        "stopped {took:?} after SIGTERM (deadline 3s):\n{text}"
    );
}

#[test]
fn idle_clients_cannot_hold_the_metrics_endpoint() {
    if !require_root("idle_clients_cannot_hold_the_metrics_endpoint") {
        return;
    }
    let link = Link::new();
    let dir = TempDir::new("endpoint");
    let log = dir.path("agent.log");
    let agent = start_capture(
        &link.b,
        &[
            "-i",
            &link.if_b,
            "--metrics-addr",
            "127.0.0.1:9402",
            "--endpoint-max-connections",
            "4",
            "--endpoint-timeout",
            "1s",
            "--output",
            "none",
        ],
        None,
        &log,
    );
    assert!(wait_for(Duration::from_secs(5), || metric(
        &link.b,
        9402,
        "devourer_build_info"
    )
    .is_some()));
    // Ten clients connect and send nothing, for longer than the endpoint timeout.
    let idle = Bg::spawn(
        {
            let mut c = link.b.cmd("python3");
            c.args([
                "-c",
                "import socket, time\ncs = [socket.create_connection(('127.0.0.1', 9402)) for _ in range(10)]\ntime.sleep(30)",
            ]);
            c
        },
        "idle clients",
    );
    std::thread::sleep(Duration::from_millis(500));
    // The idle ones time out; a scrape then gets through, and the refused ones were counted.
    let served = wait_for(Duration::from_secs(5), || {
        metric(&link.b, 9402, "devourer_build_info").is_some()
    });
    assert!(served, "{}", std::fs::read_to_string(&log).unwrap());
    let refused = metric(
        &link.b,
        9402,
        "devourer_limit_hits_total{limit=\"endpoint_max_connections\"}",
    )
    .unwrap_or(0.0);
    assert!(
        refused >= 6.0,
        "connections past the cap are counted: {refused}"
    );
    drop(idle);
    let out = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    assert!(out.status.success());
}

#[test]
fn shutdown_keeps_one_deadline_with_a_hung_bigquery_and_a_stuck_output() {
    if !require_root("shutdown_keeps_one_deadline_with_a_hung_bigquery_and_a_stuck_output") {
        return;
    }
    let link = Link::new();
    let dir = TempDir::new("deadline");
    // A "BigQuery" that accepts connections and never answers.
    let hung = Bg::spawn(
        {
            let mut c = link.b.cmd("python3");
            c.args([
                "-c",
                "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', 9555))\ns.listen(64)\nheld = []\nwhile True:\n    c, _ = s.accept()\n    held.append(c)",
            ]);
            c
        },
        "hung BigQuery",
    );
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(
        dir.path("key.json"),
        r#"{"type":"service_account","client_email":"a@b.c","private_key":"-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEAu\n-----END PRIVATE KEY-----\n","token_uri":"http://127.0.0.1:9555/token"}"#,
    )
    .unwrap();
    // The agent's stdout is a pipe nobody reads: once its buffer is full, writes block.
    let log = dir.path("agent.log");
    let script = format!(
        "exec {bin} capture -i {ifb} --idle-timeout 1s --evict-after 300ms --scan-interval 200ms \
         --shutdown-timeout 3s --bq-project-id p --bq-dataset d --bq-sa-key-file {key} \
         --bq-endpoint http://127.0.0.1:9555/bigquery/v2 --bq-setup-wait 1s --bq-timeout 60s \
         --spool-dir {spool} --metrics-addr off | sleep 120",
        bin = devourer_bin().display(),
        ifb = link.if_b,
        key = dir.path("key.json").display(),
        spool = dir.path("spool").display(),
    );
    let mut cmd = link.b.cmd("bash");
    cmd.args(["-c", &script])
        .env("DEVOURER_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap());
    let pipeline = Bg::spawn(cmd, "agent | sleep");
    assert!(
        wait_for(start_timeout(), || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("capturing"))),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Thousands of short flows: far more JSON than a pipe holds.
    link.a.sh(&format!(
        "python3 -c \"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for p in range(1, 4001):
    s.sendto(b'x', ('{}', p))
\"",
        link.ip4_b
    ));
    std::thread::sleep(Duration::from_secs(2));
    let pid = String::from_utf8(
        Command::new("pgrep")
            .args(["-f", "-n", "devourer capture -i"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let pid: i32 = pid.trim().parse().expect("the agent's pid");
    let t0 = Instant::now();
    // SAFETY: kill(2) on the agent we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let gone = wait_for(Duration::from_secs(15), || {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) != 0 }
    });
    let took = t0.elapsed();
    drop(pipeline);
    drop(hung);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        gone,
        "the agent is still running 15 s after SIGTERM:\n{text}"
    );
    assert!(
        took < Duration::from_secs(6),
        "stopped {took:?} after SIGTERM (one deadline of 3s):\n{text}"
    );
    assert!(
        text.contains("sink did not drain by the shutdown deadline"),
        "{text}"
    );
}

/// The largest resident set of any child this test process has waited for, in KiB.
fn children_max_rss_kib() -> u64 {
    // SAFETY: getrusage fills a zeroed struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    u.ru_maxrss as u64
}

#[test]
fn every_flood_at_once_stays_under_256_mib_at_default_settings() {
    if !require_root("every_flood_at_once_stays_under_256_mib_at_default_settings") {
        return;
    }
    use devourer_tests::frames::*;
    use pcap_file::DataLink;
    let tmp = TempDir::new("floods");
    let addr = |i: u32| [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
    let server = [192, 0, 2, 53];
    let mut frames: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut t = 1_700_000_000_000_000u64;
    let mut push = |f: Vec<u8>| {
        t += 50;
        frames.push((t, f));
    };
    // Interleaved: spoofed SYNs (180,000 distinct flows: past --max-flows and the kernel map
    // together), DNS queries nobody answers (70,000: past --dns-max-pending), DNS-over-TCP
    // connections each stuck inside a long message (12,000: past the connection cap and the
    // byte budget), and HTTP requests with long targets on as many connections (30,000: past
    // the pending-bytes budget).
    for i in 0..180_000u32 {
        push(eth4(&ipv4(
            addr(i),
            server,
            6,
            &tcp(40_000, 443, 0x02, &[]),
            0,
            0,
        )));
        if i < 70_000 {
            let mut q = (i as u16).to_be_bytes().to_vec();
            q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 7]);
            q.extend_from_slice(b"example\0\0\x01\0\x01");
            push(eth4(&ipv4(
                addr(i),
                server,
                17,
                &udp(5000 + (i % 50_000) as u16, 53, &q),
                0,
                0,
            )));
        }
        if i < 12_000 {
            let mut m = 60_000u16.to_be_bytes().to_vec();
            m.extend(std::iter::repeat_n(0x41u8, 1400));
            push(eth4(&ipv4(
                addr(i),
                server,
                6,
                &tcp(6000, 53, 0x18, &m),
                0,
                0,
            )));
        }
        if i < 30_000 {
            let req = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "t".repeat(1000));
            push(eth4(&ipv4(
                addr(i),
                server,
                6,
                &tcp(7000, 80, 0x18, req.as_bytes()),
                0,
                0,
            )));
        }
    }
    let file = tmp.path("floods.pcap");
    write_pcap_timed(&file, DataLink::ETHERNET, &frames);
    let packets = frames.len();
    drop(frames);
    let out = Command::new(devourer_bin())
        .arg("read")
        .arg(&file)
        .args([
            "--http-ports",
            "80",
            "--output",
            "/dev/null",
            "--no-progress",
        ])
        .env("DEVOURER_LOG", "info")
        .output()
        .expect("running devourer read");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        log_number(&stderr, "replayed"),
        Some(packets as u64),
        "{stderr}"
    );
    let peak_mib = children_max_rss_kib() / 1024;
    assert!(
        peak_mib < 256,
        "peak RSS {peak_mib} MiB under every flood at once:\n{stderr}"
    );
    eprintln!("peak RSS {peak_mib} MiB for {packets} packets");
}
