//! Running it in production: metrics scraped during live traffic (parsed with a real Prometheus
//! text parser) equal what was sent; health endpoints; SIGHUP reopens the output; interfaces
//! that appear later are followed; exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON suffice.

use std::{process::Stdio, time::Duration};

use devourer_tests::*;

/// Scrapes `url` from inside `ns` and parses the Prometheus text format.
fn scrape(ns: &Netns, url: &str) -> prometheus_parse::Scrape {
    let out = run(ns.cmd("curl").args(["-sf", url]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text")
}

fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[test]
fn metrics_equal_the_traffic_sent_and_health_endpoints_answer() {
    if !require_root("metrics_equal_the_traffic_sent_and_health_endpoints_answer") {
        return;
    }
    let tmp = TempDir::new("metrics");
    let link = Link::new();
    let (out, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
    let agent = start_capture(
        &link.a,
        &[
            &["-i", &link.if_a, "--metrics-addr", "127.0.0.1:9402"][..],
            &QUICK_TIMEOUTS,
        ]
        .concat(),
        Some(&out),
        &log,
    );
    let base = "http://127.0.0.1:9402";
    let ready = run(link
        .a
        .cmd("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{base}/readyz")));
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "200");
    run(link.a.cmd("curl").arg("-sf").arg(format!("{base}/healthz")));

    link.a
        .sh(&format!("ping -c 10 -i 0.05 {} >/dev/null", link.ip4_b));
    let emitted = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.contains("\"protocol\":\"icmp\""))
    });
    assert!(emitted, "{}", std::fs::read_to_string(&log).unwrap());
    std::thread::sleep(Duration::from_millis(500));
    // Records read before and after the scrape: a flow emitted in between (neighbour
    // discovery on the veth, say) is counted at once and written a moment later.
    let idle = |recs: &[serde_json::Value]| {
        recs.iter()
            .filter(|r| r["type"] == "flow" && r["status"] == "idle_timeout")
            .count() as f64
    };
    // The sink counts a row once its write returned, so a row can be in the file a moment
    // before it is counted: the scrape is taken again until it falls between two reads of
    // the file that agree (nothing written in between).
    let written_rows = |s: &prometheus_parse::Scrape| {
        value(
            s,
            "devourer_sink_rows_total",
            &[("sink", "jsonl"), ("outcome", "written")],
        )
        .unwrap()
    };
    let (mut recs, mut s, mut later);
    let mut tries = 0;
    loop {
        recs = records(&std::fs::read(&out).unwrap());
        s = scrape(&link.a, &format!("{base}/metrics"));
        std::thread::sleep(Duration::from_millis(500));
        later = records(&std::fs::read(&out).unwrap());
        tries += 1;
        if (recs.len() == later.len() && written_rows(&s) == recs.len() as f64) || tries == 10 {
            break;
        }
    }
    let flows: Vec<_> = recs.iter().filter(|r| r["type"] == "flow").collect();
    let pkts: u64 = flows
        .iter()
        .map(|r| r["src_packets"].as_u64().unwrap() + r["dst_packets"].as_u64().unwrap())
        .sum();
    let bytes: u64 = flows
        .iter()
        .map(|r| r["src_bytes"].as_u64().unwrap() + r["dst_bytes"].as_u64().unwrap())
        .sum();
    let icmp = flows.iter().find(|r| r["protocol"] == "icmp").unwrap();
    assert_eq!(
        (icmp["src_packets"].as_u64(), icmp["dst_packets"].as_u64()),
        (Some(10), Some(10))
    );
    // Traffic counters follow each scan: flows not emitted yet (neighbour discovery on the
    // veth, say) are in them already.
    assert!(
        value(&s, "devourer_packets_total", &[("interface", &link.if_a)])
            .is_some_and(|v| v >= pkts as f64)
    );
    assert!(
        value(&s, "devourer_bytes_total", &[("interface", &link.if_a)])
            .is_some_and(|v| v >= bytes as f64)
    );
    let emitted = value(
        &s,
        "devourer_flows_emitted_total",
        &[("status", "idle_timeout")],
    )
    .unwrap();
    assert!(
        (idle(&recs)..=idle(&later)).contains(&emitted),
        "{emitted} idle_timeout flows counted, {} to {} written",
        idle(&recs),
        idle(&later)
    );
    assert!(value(&s, "devourer_kernel_events_total", &[("event", "packets")]).unwrap() >= 20.0);
    assert_eq!(
        value(&s, "devourer_kernel_map_capacity", &[]),
        Some(65536.0)
    );
    let written = written_rows(&s);
    assert!(
        (recs.len() as f64..=later.len() as f64).contains(&written),
        "{written} rows counted written, {} to {} in the file",
        recs.len(),
        later.len()
    );
    assert_eq!(value(&s, "devourer_interfaces_attached", &[]), Some(1.0));
    assert!(
        s.samples
            .iter()
            .any(|x| x.metric == "devourer_eviction_scan_duration_seconds_count")
    );
    assert!(s.samples.iter().any(|x| x.metric == "devourer_build_info"));
    // Label values stay low-cardinality: no addresses.
    for x in &s.samples {
        for (k, v) in x.labels.iter() {
            assert!(
                !v.contains(&link.ip4_a) && !v.contains(&link.ip4_b),
                "{k}={v} on {}",
                x.metric
            );
        }
    }
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    assert!(res.status.success());
}

#[test]
fn sighup_reopens_the_output_file() {
    if !require_root("sighup_reopens_the_output_file") {
        return;
    }
    let tmp = TempDir::new("hup");
    let link = Link::new();
    let file = tmp.path("flows.jsonl");
    let log = tmp.path("agent.log");
    let agent = start_capture(
        &link.a,
        &[
            &[
                "-i",
                &link.if_a,
                "--output",
                file.to_str().unwrap(),
                "--metrics-addr",
                "off",
            ][..],
            &QUICK_TIMEOUTS,
        ]
        .concat(),
        None,
        &log,
    );
    link.a
        .sh(&format!("ping -c 2 -i 0.1 {} >/dev/null", link.ip4_b));
    assert!(wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&file).is_ok_and(|s| !s.is_empty())
    }));
    let rotated = tmp.path("flows.jsonl.1");
    std::fs::rename(&file, &rotated).unwrap();
    agent.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("reopened"))
    }));
    link.a
        .sh(&format!("ping -c 2 -i 0.1 {} >/dev/null", link.ip4_b));
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::read_to_string(&file)
            .is_ok_and(|s| s.contains("icmp"))),
        "records go to the new file"
    );
    let old = std::fs::read_to_string(&rotated).unwrap();
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    assert!(res.status.success());
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap(),
        old,
        "nothing more in the rotated file"
    );
}

#[test]
fn all_interfaces_follows_interfaces_that_come_and_go() {
    if !require_root("all_interfaces_follows_interfaces_that_come_and_go") {
        return;
    }
    let tmp = TempDir::new("follow");
    let link = Link::new();
    let (out, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
    let agent = start_capture(
        &link.a,
        &[
            &["--all-interfaces", "--metrics-addr", "off"][..],
            &QUICK_TIMEOUTS,
        ]
        .concat(),
        Some(&out),
        &log,
    );
    // A new namespace and a new veth pair into A, after the agent started.
    let c = Netns::new("dvc");
    let newif = format!("vn{}", std::process::id() % 10000);
    link.a.sh(&format!(
        "ip link add {newif} type veth peer name {newif}p netns {c}
         ip addr add 192.168.77.1/24 dev {newif}
         ip link set {newif} up",
        c = c.name
    ));
    c.sh(&format!(
        "ip addr add 192.168.77.2/24 dev {newif}p; ip link set {newif}p up"
    ));
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains(&format!("interface={newif} "))
                || l.contains(&format!("interface={newif}\n")))),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    link.a.sh("ping -c 3 -i 0.1 192.168.77.2 >/dev/null");
    assert!(wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|s| {
            s.lines().any(|l| {
                l.contains(&format!("\"interface\":\"{newif}\"")) && l.contains("192.168.77.2")
            })
        })
    }));
    link.a.sh(&format!("ip link del {newif}"));
    log_shows(&log, "interface gone: letting go");
    stops_cleanly(agent, &log);
}

#[test]
fn exactly_bpf_net_admin_and_perfmon_are_enough_and_net_raw_only_for_capture_on_request() {
    if !require_root(
        "exactly_bpf_net_admin_and_perfmon_are_enough_and_net_raw_only_for_capture_on_request",
    ) {
        return;
    }
    let tmp = TempDir::new("caps");
    let link = Link::new();
    let bin = devourer_bin();
    let limited = |caps: &str| {
        let mut c = link.a.cmd("setpriv");
        c.args([
            &format!("--bounding-set=-all,{caps}"),
            &format!("--inh-caps=-all,{caps}"),
            &format!("--ambient-caps=-all,{caps}"),
            "--",
        ])
        .arg(&bin);
        c
    };
    let log = tmp.path("agent.log");
    let out = tmp.path("out.jsonl");
    let mut cmd = limited("+bpf,+net_admin,+perfmon");
    // Without conntrack lookups (they keep CAP_NET_ADMIN to join NAT'd connections).
    cmd.args(["capture", "-i", &link.if_a, "--no-conntrack"])
        .args(QUICK_TIMEOUTS)
        .args(["--metrics-addr", "127.0.0.1:9402"])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
    let agent = Bg::spawn(cmd, "devourer with three capabilities");
    log_shows(&log, "capturing");
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap_or_default();
    assert!(
        status.contains("CapBnd:\t000000c000001000"),
        "only the three in the bounding set: {status}"
    );
    // Loaded and attached on one interface: only CAP_BPF is still needed (map reads).
    assert!(
        status.contains("CapEff:\t0000008000000000"),
        "CAP_BPF alone after start-up: {status}"
    );
    link.a
        .sh(&format!("ping -c 3 -i 0.1 {} >/dev/null", link.ip4_b));
    assert!(wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.contains("icmp"))
    }));
    stops_cleanly(agent, &log);

    for (caps, missing) in [
        ("+net_admin,+perfmon", "CAP_BPF"),
        ("+bpf,+perfmon", "CAP_NET_ADMIN"),
    ] {
        let mut cmd = limited(caps);
        cmd.args(["capture", "-i", &link.if_a, "--metrics-addr", "off"]);
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains(&format!("missing {missing}")), "{caps}: {err}");
    }

    // Capture on request opens a packet socket: CAP_NET_RAW, and only then.
    let cfg = tmp.path("requests.toml");
    std::fs::write(tmp.path("token"), "t0ken-of-sixteen-bytes-at-least\n").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[capture]\nlocal_dir = \"{}\"\n[api]\naddr = \"127.0.0.1:9403\"\ntoken_file = \"{}\"\n",
            tmp.path("captures").display(),
            tmp.path("token").display()
        ),
    )
    .unwrap();
    let with_requests = |caps: &str| {
        let mut cmd = limited(caps);
        cmd.args(["capture", "-i", &link.if_a, "--metrics-addr", "off"])
            .arg("--config")
            .arg(&cfg);
        cmd
    };
    let o = with_requests("+bpf,+net_admin,+perfmon").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("missing CAP_NET_RAW"), "{err}");

    let mut cmd = with_requests("+bpf,+net_admin,+perfmon,+net_raw");
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let agent = Bg::spawn(cmd, "devourer with capture on request");
    log_shows(&log, "capturing");
    let req = format!(
        r#"{{"node":"any","interface":["{}"],"bpf":"icmp","packets":2}}"#,
        link.if_a
    );
    link.a.sh(&format!(
        "curl -sf -H 'Authorization: Bearer t0ken-of-sixteen-bytes-at-least' --data-binary '{req}' http://127.0.0.1:9403/captures >/dev/null"
    ));
    link.a
        .sh(&format!("ping -c 3 -i 0.1 {} >/dev/null", link.ip4_b));
    assert!(
        wait_for(Duration::from_secs(10), || {
            std::fs::read_dir(tmp.path("captures")).is_ok_and(|d| d.count() == 1)
        }),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    stops_cleanly(agent, &log);
}

/// Waits up to ten seconds for the agent's log to hold `text` (twenty for start-up).
fn log_shows(log: &std::path::Path, text: &str) {
    let secs = if text == "capturing" { 20 } else { 10 };
    let seen = wait_for(Duration::from_secs(secs), || {
        std::fs::read_to_string(log).is_ok_and(|l| l.contains(text))
    });
    assert!(
        seen,
        "no {text:?} in the log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// SIGTERM, and the agent must exit successfully.
fn stops_cleanly(agent: Bg, log: &std::path::Path) {
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    assert!(
        res.status.success(),
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn traffic_counters_follow_each_scan_and_a_fresh_agent_has_every_known_series_at_zero() {
    if !require_root(
        "traffic_counters_follow_each_scan_and_a_fresh_agent_has_every_known_series_at_zero",
    ) {
        return;
    }
    let tmp = TempDir::new("fresh");
    let link = Link::new();
    let (out, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
    // Flows stay open for a minute: records come only at shutdown.
    let agent = start_capture(
        &link.a,
        &[
            "-i",
            &link.if_a,
            "--metrics-addr",
            "127.0.0.1:9402",
            "--idle-timeout",
            "60s",
            "--scan-interval",
            "200ms",
            "--flow-start-records",
        ],
        Some(&out),
        &log,
    );
    let base = "http://127.0.0.1:9402";
    std::thread::sleep(Duration::from_millis(600));
    let s = scrape(&link.a, &format!("{base}/metrics"));
    let zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(
            value(&s, name, labels),
            Some(0.0),
            "{name} {labels:?} at 0 on a fresh agent"
        );
    };
    // Neighbour discovery on the veth may have started a flow already.
    assert!(value(&s, "devourer_flows_emitted_total", &[("status", "start")]).is_some());
    for status in [
        "idle_timeout",
        "active_timeout",
        "tcp_closed",
        "shutdown",
        "end_of_input",
        "table_full",
    ] {
        zero("devourer_flows_emitted_total", &[("status", status)]);
    }
    zero(
        "devourer_dns_transactions_total",
        &[("status", "lost"), ("rcode", "none")],
    );
    zero(
        "devourer_dns_transactions_total",
        &[("status", "success"), ("rcode", "NXDOMAIN")],
    );
    zero(
        "devourer_dns_parse_errors_total",
        &[("reason", "too_short")],
    );
    zero("devourer_kernel_events_total", &[("event", "map_full")]);
    zero(
        "devourer_sink_rows_total",
        &[("sink", "jsonl"), ("outcome", "dropped")],
    );
    zero("devourer_limit_hits_total", &[("limit", "max_flows")]);
    assert!(value(&s, "devourer_packets_total", &[("interface", &link.if_a)]).is_some());

    let before = value(&s, "devourer_packets_total", &[("interface", &link.if_a)]).unwrap();
    link.a
        .sh(&format!("ping -c 5 -i 0.05 {} >/dev/null", link.ip4_b));
    std::thread::sleep(Duration::from_millis(800));
    let s = scrape(&link.a, &format!("{base}/metrics"));
    let after = value(&s, "devourer_packets_total", &[("interface", &link.if_a)]).unwrap();
    assert!(
        after - before >= 10.0,
        "5 echo requests and 5 replies within a scan or two of being sent: {before} -> {after}"
    );
    // The flow's start record is out within a scan; its counted record is not (60 s idle).
    let so_far = records(&std::fs::read(&out).unwrap_or_default());
    let icmp: Vec<&str> = so_far
        .iter()
        .filter(|r| r["protocol"] == "icmp")
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(icmp, ["start"], "the counters did not wait for a record");
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    assert!(res.status.success());
    let recs = records(&std::fs::read(&out).unwrap());
    let icmp = recs
        .iter()
        .find(|r| r["type"] == "flow" && r["protocol"] == "icmp" && r["status"] == "shutdown")
        .expect("the ping's record at shutdown");
    assert_eq!(
        (icmp["src_packets"].as_u64(), icmp["dst_packets"].as_u64()),
        (Some(5), Some(5))
    );
}
