//! IPFIX export against a real collector: `devourer read` of the crafted capture and of a
//! capture of real traffic exported to nfdump's nfcapd; what `nfdump -o json` reads back
//! (after nfcapd closes its file) equals the JSON records field by field: per-direction bytes
//! and packets, addresses, ports, protocol, ICMP type and code, VLAN, times to the millisecond.

use std::{net::IpAddr, path::Path, process::Command, time::Duration};

use devourer_tests::{frames::*, *};
use pcap_file::DataLink;
use serde_json::Value;

/// One flow as both sides describe it: its key, and its counts and times.
type Key = (u8, IpAddr, IpAddr, u64, u64, u64);
type Counts = (u64, u64, u64, u64, String, String);

fn proto_number(name: &str) -> u8 {
    match name {
        "icmp" => 1,
        "tcp" => 6,
        "udp" => 17,
        "icmpv6" => 58,
        n => n.parse().expect("a protocol number"),
    }
}

/// The JSON records' flows (start records excluded: they are not exported): for ICMP the
/// "ports" are its type and code, as nfdump shows them.
fn from_json(recs: &[Value]) -> Vec<(Key, Counts)> {
    let mut v: Vec<_> = recs
        .iter()
        .filter(|r| r["type"] == "flow" && r["status"] != "start")
        .map(|r| {
            let proto = proto_number(r["protocol"].as_str().unwrap());
            let (a, b) = if matches!(proto, 1 | 58) {
                (
                    r["icmp_type"].as_u64().unwrap_or(0),
                    r["icmp_code"].as_u64().unwrap_or(0),
                )
            } else {
                (
                    r["src_port"].as_u64().unwrap(),
                    r["dst_port"].as_u64().unwrap(),
                )
            };
            // RFC 3339 with microseconds, cut to milliseconds as IPFIX carries them.
            let ms = |k: &str| r[k].as_str().unwrap()[..23].to_owned();
            (
                (
                    proto,
                    r["src_addr"].as_str().unwrap().parse().unwrap(),
                    r["dst_addr"].as_str().unwrap().parse().unwrap(),
                    a,
                    b,
                    r["vlan"].as_u64().unwrap_or(0),
                ),
                (
                    r["src_bytes"].as_u64().unwrap(),
                    r["src_packets"].as_u64().unwrap(),
                    r["dst_bytes"].as_u64().unwrap(),
                    r["dst_packets"].as_u64().unwrap(),
                    ms("first_seen_at"),
                    ms("last_seen_at"),
                ),
            )
        })
        .collect();
    v.sort();
    v
}

/// What nfdump read from nfcapd's files, in UTC.
fn from_nfdump(dir: &Path) -> Vec<(Key, Counts)> {
    let out = run(Command::new("nfdump")
        .env("TZ", "UTC")
        .args(["-q", "-R"])
        .arg(dir)
        .args(["-o", "json"]));
    // With -q, the objects of the array without its brackets.
    let text = format!("[{}]", String::from_utf8_lossy(&out.stdout));
    let flows: Vec<Value> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("nfdump's JSON: {e}: {text}"));
    let mut v: Vec<_> = flows
        .iter()
        .map(|f| {
            let proto = f["proto"].as_u64().unwrap() as u8;
            let addr = |k: &str| -> IpAddr {
                f[format!("{k}4_addr")]
                    .as_str()
                    .or_else(|| f[format!("{k}6_addr")].as_str())
                    .unwrap_or_else(|| panic!("{k} address in {f}"))
                    .parse()
                    .unwrap()
            };
            let (a, b) = if matches!(proto, 1 | 58) {
                (
                    f["icmp_type"].as_u64().unwrap(),
                    f["icmp_code"].as_u64().unwrap(),
                )
            } else {
                (
                    f["src_port"].as_u64().unwrap_or(0),
                    f["dst_port"].as_u64().unwrap_or(0),
                )
            };
            let n = |k: &str| f[k].as_u64().unwrap_or(0);
            let t = |k: &str| f[k].as_str().unwrap().to_owned();
            (
                (proto, addr("src"), addr("dst"), a, b, n("src_vlan")),
                (
                    n("in_bytes"),
                    n("in_packets"),
                    n("out_bytes"),
                    n("out_packets"),
                    t("first"),
                    t("last"),
                ),
            )
        })
        .collect();
    v.sort();
    v
}

/// nfcapd listening on a port of its own, writing under `dir`.
fn nfcapd(dir: &Path, port: u16) -> Bg {
    std::fs::create_dir_all(dir).unwrap();
    let mut c = Command::new("nfcapd");
    c.args([
        "-b",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        "60",
        "-B",
        "8388608",
        "-w",
    ])
    .arg(dir)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let bg = Bg::spawn(c, "nfcapd");
    await_listener(None, "udp", port, Duration::from_secs(10), "nfcapd");
    bg
}

/// Replays `pcap` with `--ipfix` to a fresh nfcapd and compares what nfdump reads back with
/// the JSON records of the same run.
fn exported_equals_json(tmp: &TempDir, pcap: &Path, port: u16, what: &str) -> usize {
    let dir = tmp.path(&format!("nfcapd-{what}"));
    let collector = nfcapd(&dir, port);
    let url = format!("udp://127.0.0.1:{port}");
    let (status, stdout, stderr) = devourer_read(pcap, &["--ipfix", &url, "--ipfix-mtu", "1200"]);
    assert!(status.success(), "{what}: {stderr}");
    // SIGTERM: nfcapd writes out and closes its current file.
    let out = collector.stop(libc::SIGTERM, Duration::from_secs(20));
    let log = String::from_utf8_lossy(&out.stderr);
    let json = from_json(&records(&stdout));
    let exported = from_nfdump(&dir);
    assert!(!json.is_empty(), "{what}: flows to compare");
    assert_eq!(
        exported.len(),
        json.len(),
        "{what}: one IPFIX data record per flow record\n{stderr}\n{log}"
    );
    for (j, x) in json.iter().zip(&exported) {
        assert_eq!(j, x, "{what}: JSON record, then nfdump's");
    }
    assert!(
        stderr.contains("IPFIX export finished"),
        "{what}: the sink's summary: {stderr}"
    );
    json.len()
}

#[test]
fn ipfix_biflows_read_back_by_nfdump_equal_the_json_records_of_crafted_and_real_captures() {
    if !require_root(
        "ipfix_biflows_read_back_by_nfdump_equal_the_json_records_of_crafted_and_real_captures",
    ) {
        return;
    }
    let tmp = TempDir::new("ipfix");
    let crafted_pcap = tmp.path("crafted.pcap");
    write_pcap(&crafted_pcap, DataLink::ETHERNET, &crafted(), 1_700_000_000);
    let n = exported_equals_json(&tmp, &crafted_pcap, 29_951, "crafted");
    assert!(n >= 10, "the crafted mix has many flows: {n}");

    let link = Link::new();
    let real = tmp.path("real.pcap");
    capture_mix(&link, &real, false);
    let n = exported_equals_json(&tmp, &real, 29_952, "real traffic");
    assert!(n > 150, "the real mix has many flows: {n}");
}

/// nfacctd (pmacct) configured with `deploy/ipfix/primitives.lst`, printing every flow as a
/// JSON line to `out`.
fn nfacctd(dir: &Path, port: u16, out: &Path) -> Bg {
    let conf = dir.join("nfacctd.conf");
    let primitives = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ipfix/primitives.lst");
    std::fs::write(
        &conf,
        format!(
            "nfacctd_ip: 127.0.0.1\nnfacctd_port: {port}\ndaemonize: false\n\
             aggregate_primitives: {}\nplugins: print\n\
             aggregate: src_host, dst_host, src_port, dst_port, proto, {}\n\
             print_output: json\nprint_output_file: {}\nprint_refresh_time: 1\n",
            primitives.display(),
            OWN.join(", "),
            out.display()
        ),
    )
    .unwrap();
    let mut c = Command::new("nfacctd");
    c.arg("-f")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let bg = Bg::spawn(c, "nfacctd");
    await_listener(None, "udp", port, Duration::from_secs(10), "nfacctd");
    bg
}

/// The record fields exported as devourer's own elements.
const OWN: [&str; 16] = [
    "src_name",
    "dst_name",
    "community_id",
    "src_k8s_namespace",
    "src_k8s_pod",
    "src_k8s_owner_kind",
    "src_k8s_owner",
    "src_k8s_node",
    "src_k8s_service",
    "dst_k8s_namespace",
    "dst_k8s_pod",
    "dst_k8s_owner_kind",
    "dst_k8s_owner",
    "dst_k8s_node",
    "dst_k8s_service",
    "tunnel",
];

#[test]
fn names_and_community_ids_reach_nfacctd_as_the_description_file_declares_them() {
    if !require_root("names_and_community_ids_reach_nfacctd_as_the_description_file_declares_them")
    {
        return;
    }
    let tmp = TempDir::new("ipfix-own");
    // Lookups that name 10.0.0.1, then flows to it.
    let mut frames = flows_and_lookups(0, 3, None);
    for port in 40_000..40_005 {
        frames.push(eth4(&ipv4(
            A4,
            [10, 0, 0, 1],
            6,
            &tcp(port, 443, 0x02, &[]),
            0,
            0,
        )));
    }
    let pcap = tmp.path("named.pcap");
    write_pcap(&pcap, DataLink::ETHERNET, &frames, 1_700_000_000);
    let out = tmp.path("nfacctd.json");
    let collector = nfacctd(&tmp.path(""), 29_953, &out);
    let (status, stdout, stderr) = devourer_read(&pcap, &["--ipfix", "udp://127.0.0.1:29953"]);
    assert!(status.success(), "{stderr}");
    let key = |v: &Value, a: &str, b: &str, p: &str, q: &str| {
        let mut k = vec![
            v[a].as_str().unwrap().to_owned(),
            v[b].as_str().unwrap().to_owned(),
            v[p].as_u64().unwrap().to_string(),
            v[q].as_u64().unwrap().to_string(),
        ];
        k.extend(OWN.iter().map(|f| v[*f].as_str().unwrap_or("").to_owned()));
        k
    };
    let mut json: Vec<Vec<String>> = records(&stdout)
        .iter()
        .filter(|r| r["type"] == "flow" && r["status"] != "start")
        .map(|r| key(r, "src_addr", "dst_addr", "src_port", "dst_port"))
        .collect();
    json.sort();
    assert!(
        json.iter().any(|k| k[5].ends_with(".example")),
        "flows named by the lookups: {json:?}"
    );
    // nfacctd prints its cache each second: wait until every flow is in the file.
    let mut exported = Vec::new();
    wait_for(Duration::from_secs(15), || {
        exported = std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| key(&v, "ip_src", "ip_dst", "port_src", "port_dst"))
            .collect();
        exported.sort();
        exported.dedup();
        exported.len() >= json.len()
    });
    drop(collector);
    assert_eq!(exported, json, "nfacctd's flows, then the JSON records'");
}

/// The test collector (`tests/ipfix_collector.py`, written from RFC 7011) on `port` in `ns`,
/// appending what it reads to `out`.
fn tcp_collector(ns: &Netns, port: u16, out: &Path) -> Bg {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ipfix_collector.py");
    let mut c = ns.cmd("python3");
    c.arg(script)
        .arg(port.to_string())
        .arg(out)
        .stdout(std::process::Stdio::null());
    let bg = Bg::spawn(c, "IPFIX collector");
    await_listener(Some(ns), "tcp", port, Duration::from_secs(10), "collector");
    bg
}

/// Every message the collector read, in order.
fn messages(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn data_records(msgs: &[Value]) -> Vec<Value> {
    msgs.iter()
        .flat_map(|m| m["records"].as_array().unwrap().clone())
        .collect()
}

#[test]
fn live_export_over_tcp_reconnects_and_each_connection_starts_with_templates_at_sequence_zero() {
    if !require_root(
        "live_export_over_tcp_reconnects_and_each_connection_starts_with_templates_at_sequence_zero",
    ) {
        return;
    }
    let tmp = TempDir::new("ipfix-tcp");
    let link = Link::new();
    let collected = tmp.path("collected.jsonl");
    std::fs::write(&collected, "").unwrap();
    let port = 29_954;
    let collector = tcp_collector(&link.a, port, &collected);
    let (out, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
    let url = format!("tcp://127.0.0.1:{port}");
    let agent = start_capture(
        &link.a,
        &[
            &[
                "-i",
                &link.if_a,
                "--ipfix",
                &url,
                "--ipfix-domain-id",
                "7",
                "--ipfix-backoff-base",
                "100ms",
                "--ipfix-backoff-max",
                "200ms",
                "--metrics-addr",
                "127.0.0.1:9405",
            ][..],
            &QUICK_TIMEOUTS,
        ]
        .concat(),
        Some(&out),
        &log,
    );
    let icmp_exported = |n: usize| {
        wait_for(Duration::from_secs(15), || {
            data_records(&messages(&collected))
                .iter()
                .filter(|r| r["4"] == 1)
                .count()
                >= n
        })
    };
    let ping = |count: u32| {
        link.a
            .sh(&format!("ping -c {count} -i 0.1 {} >/dev/null", link.ip4_b));
    };
    ping(3);
    assert!(
        icmp_exported(1),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );

    // The collector goes away: records meanwhile are lost (the connection is refused), and
    // counted.
    drop(collector);
    for i in 0..3 {
        link.a.sh(&format!(
            "echo x > /dev/udp/{}/{}; sleep 1.5",
            link.ip4_b,
            30_000 + i
        ));
    }
    let metrics = |name: &str| {
        let (_, text) = http_get(&link.a, "http://127.0.0.1:9405/metrics");
        series(&text, name).unwrap_or(0.0)
    };
    assert!(
        wait_for(Duration::from_secs(10), || metrics(
            r#"devourer_sink_rows_total{outcome="dropped",sink="ipfix"}"#
        ) >= 1.0),
        "records lost while the collector was away are counted"
    );
    // The closed connection is seen before a batch is written into it: nothing is counted
    // sent that the collector did not read.
    assert!(metrics(r#"devourer_sink_messages_total{outcome="sent",sink="ipfix"}"#) >= 1.0);

    // Back: a new connection, which starts with the templates and sequence number 0.
    let collector = tcp_collector(&link.a, port, &collected);
    ping(3);
    assert!(
        icmp_exported(2),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let stopped = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    assert!(stopped.status.success());
    drop(collector);

    let msgs = messages(&collected);
    let connections: std::collections::BTreeSet<u64> = msgs
        .iter()
        .map(|m| m["connection"].as_u64().unwrap())
        .collect();
    assert_eq!(connections.len(), 2, "{msgs:?}");
    for c in connections {
        let mine: Vec<&Value> = msgs.iter().filter(|m| m["connection"] == c).collect();
        assert_eq!(
            mine[0]["sets"][0], 2,
            "connection {c} starts with templates"
        );
        let mut seq = 0;
        for m in &mine {
            assert_eq!(m["domain"], 7);
            assert_eq!(
                m["sequence"], seq,
                "connection {c}: data records sent before"
            );
            seq += m["records"].as_array().unwrap().len() as u64;
        }
    }

    // What arrived equals the JSON records, and names the counting interface.
    let ifindex: u64 = String::from_utf8_lossy(
        &link
            .a
            .sh(&format!("cat /sys/class/net/{}/ifindex", link.if_a))
            .stdout,
    )
    .trim()
    .parse()
    .unwrap();
    let recs = records(&std::fs::read(&out).unwrap());
    let flows: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "flow" && r["status"] != "start")
        .collect();
    let exported = data_records(&msgs);
    let mut matched = 0;
    for x in &exported {
        let j = flows
            .iter()
            .find(|r| {
                (r["src_addr"] == x["8"] || r["src_addr"] == x["27"])
                    && (r["dst_addr"] == x["12"] || r["dst_addr"] == x["28"])
                    && r["src_port"] == x["7"]
                    && r["dst_port"] == x["11"]
                    && r["first_seen_at"].as_str().unwrap()[..23]
                        == *ms_text(x["152"].as_u64().unwrap())
            })
            .unwrap_or_else(|| panic!("a JSON record for {x}"));
        assert_eq!(
            (&x["1"], &x["2"], &x["29305:1"], &x["29305:2"]),
            (
                &j["src_bytes"],
                &j["src_packets"],
                &j["dst_bytes"],
                &j["dst_packets"]
            ),
            "{x} {j}"
        );
        assert_eq!(x["10"], ifindex, "ingressInterface");
        assert_eq!(x["32473:103"], j["community_id"]);
        matched += 1;
    }
    assert!(matched >= 2);
    // Every record is accounted for: sent or dropped, as the sink's summary says.
    let log = std::fs::read_to_string(&log).unwrap();
    let summary = log
        .lines()
        .find(|l| l.contains("IPFIX export finished"))
        .unwrap_or_else(|| panic!("the sink's summary in {log}"));
    let sent = log_number(summary, "sent").unwrap();
    let dropped = log_number(summary, "dropped").unwrap();
    assert_eq!(sent + dropped, flows.len() as u64, "{log}");
    assert_eq!(exported.len() as u64, sent, "what was counted sent arrived");
}

/// Milliseconds since the epoch as RFC 3339 cut to milliseconds (`2026-01-02T03:04:05.678`).
fn ms_text(ms: u64) -> String {
    let out = run(Command::new("date")
        .env("TZ", "UTC")
        .arg("-d")
        .arg(format!("@{}.{:03}", ms / 1000, ms % 1000))
        .arg("+%Y-%m-%dT%H:%M:%S.%3N"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
