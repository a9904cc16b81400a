//! `devourer read` over captures of real traffic (ping, curl to a local web server, iperf3, UDP
//! to many ports) made by tcpdump and dumpcap in test namespaces: per-direction bytes and
//! packets must equal tshark's, in TC and in XDP mode.

use std::process::Command;

use devourer_tests::*;

fn check_modes(pcap: &std::path::Path, link: &Link, expect_iface: &str) {
    let addrs = link.addrs();
    let (oracle, protos) = tshark_sums(pcap, Some(&addrs));
    assert!(
        oracle.len() > 150,
        "the mix made many flows: {}",
        oracle.len()
    );
    for mode in ["tc", "xdp"] {
        let (status, stdout, stderr) = devourer_read(pcap, &["--mode", mode]);
        assert!(
            status.success(),
            "devourer read --mode {mode}: {status}\n{stderr}"
        );
        let recs = records(&stdout);
        let sums = devourer_sums(&recs, Some(&addrs));
        assert_same_sums(&sums, &oracle, &format!("{} --mode {mode}", pcap.display()));
        community_ids_match_tshark(pcap, &recs);
        // Protocols agree with tshark, and records carry the contract's fields.
        for r in &recs {
            for f in [
                "id",
                "seq",
                "agent",
                "interface",
                "protocol",
                "src_addr",
                "dst_addr",
                "first_seen_at",
                "last_seen_at",
                "status",
                "tcp_flags",
            ] {
                assert!(!r[f].is_null(), "{f} missing in {r}");
            }
            assert_eq!(r["interface"], expect_iface, "{r}");
            assert_eq!(
                r["status"], "end_of_input",
                "short capture, long timeouts: {r}"
            );
            let key = DirKey {
                src: r["src_addr"].as_str().unwrap().into(),
                dst: r["dst_addr"].as_str().unwrap().into(),
                sport: r["src_port"].as_u64().unwrap() as u16,
                dport: r["dst_port"].as_u64().unwrap() as u16,
            };
            if let Some(p) = protos.get(&key).filter(|p| !p.is_empty()) {
                assert_eq!(r["protocol"], p.as_str(), "{r}");
            }
        }
        // TCP flows are oriented client -> server (the SYN sender).
        let http = recs
            .iter()
            .find(|r| r["dst_port"] == 8000 && r["protocol"] == "tcp")
            .expect("an HTTP flow");
        assert_eq!(http["src_addr"], link.ip4_a.as_str());
        assert_eq!(
            http["tcp_flags"].as_u64().unwrap() & 0x13,
            0x13,
            "SYN, ACK and FIN seen"
        );
        let icmp = recs
            .iter()
            .find(|r| r["protocol"] == "icmp")
            .expect("an ICMP flow");
        assert_eq!(icmp["icmp_type"], 8, "first packet is the echo request");
        assert_eq!(icmp["src_addr"], link.ip4_a.as_str());
        assert_eq!(icmp["src_packets"], 4);
        // Echo replies plus the port-unreachable errors for the UDP probes share the flow
        // (ICMP flows are keyed by addresses); the exact count is checked against tshark above.
        assert!(icmp["dst_packets"].as_u64().unwrap() >= 4, "{icmp}");
        // The same file gives the same records (ids included) every time, on any number of
        // threads; with four, the other three feed about 3/4 of the flows (150 UDP flows alone
        // give about 110 packets).
        let (_, again, _) = devourer_read(pcap, &["--mode", mode]);
        assert_eq!(
            sorted_lines(&stdout),
            sorted_lines(&again),
            "replay is deterministic"
        );
        let elsewhere = assert_threads_agree(pcap, &["--mode", mode], 4);
        assert!(elsewhere > 50, "the other threads fed {elsewhere} packets");
    }
}

#[test]
fn pcap_of_real_traffic_matches_tshark_in_tc_and_xdp_modes() {
    if !require_root("pcap_of_real_traffic_matches_tshark_in_tc_and_xdp_modes") {
        return;
    }
    let tmp = TempDir::new("real");
    let link = Link::new();
    let pcap = tmp.path("mix.pcap");
    capture_mix(&link, &pcap, false);
    check_modes(&pcap, &link, "pcap");
}

#[test]
fn pcapng_from_dumpcap_matches_tshark_and_names_the_interface() {
    if !require_root("pcapng_from_dumpcap_matches_tshark_and_names_the_interface") {
        return;
    }
    let tmp = TempDir::new("realng");
    let link = Link::new();
    let pcap = tmp.path("mix.pcapng");
    capture_mix(&link, &pcap, true);
    let head = std::fs::read(&pcap).unwrap();
    assert_eq!(
        &head[..4],
        &[0x0a, 0x0d, 0x0d, 0x0a],
        "dumpcap wrote pcapng"
    );
    check_modes(&pcap, &link, &link.if_b);
    // Timestamps follow the file (pcapng default microsecond resolution), not the replay time.
    let (_, stdout, _) = devourer_read(&pcap, &[]);
    let recs = records(&stdout);
    let out = run(Command::new("tshark").arg("-r").arg(&pcap).args([
        "-T",
        "fields",
        "-e",
        "frame.time_epoch",
        "-c",
        "1",
    ]));
    let first: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let earliest = recs
        .iter()
        .filter_map(|r| r["first_seen_at"].as_str())
        .min()
        .unwrap()
        .to_owned();
    let secs = first.trunc() as i64;
    let date =
        run(Command::new("date").args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S"]));
    let expect = String::from_utf8_lossy(&date.stdout).trim().to_owned();
    assert!(
        earliest.starts_with(&expect),
        "{earliest} vs first packet {expect}"
    );
}

#[test]
fn flow_start_records_come_once_per_flow_before_its_records_with_zero_counters() {
    if !require_root("flow_start_records_come_once_per_flow_before_its_records_with_zero_counters")
    {
        return;
    }
    let tmp = TempDir::new("starts");
    let link = Link::new();
    let pcap = tmp.path("mix.pcap");
    capture_mix(&link, &pcap, false);
    let (status, plain, err) = devourer_read(&pcap, &[]);
    assert!(status.success(), "{err}");
    let (status, with, err) = devourer_read(&pcap, &["--flow-start-records"]);
    assert!(status.success(), "{err}");
    let (plain, with) = (records(&plain), records(&with));
    let addrs = link.addrs();
    assert_same_sums(
        &devourer_sums(&with, Some(&addrs)),
        &devourer_sums(&plain, Some(&addrs)),
        "start records count nothing",
    );
    let conv = |r: &serde_json::Value| {
        format!(
            "{} {}:{} {}:{}",
            r["protocol"], r["src_addr"], r["src_port"], r["dst_addr"], r["dst_port"]
        )
    };
    let mut started = std::collections::BTreeMap::new();
    let mut ids = std::collections::BTreeSet::new();
    for r in with.iter().filter(|r| r["type"] == "flow") {
        assert!(
            ids.insert(r["id"].as_str().unwrap().to_owned()),
            "ids are distinct: {r}"
        );
        if r["status"] == "start" {
            for f in [
                "src_packets",
                "dst_packets",
                "src_bytes",
                "dst_bytes",
                "tcp_flags",
            ] {
                assert_eq!(r[f], 0, "{f} in {r}");
            }
            assert_eq!(r["first_seen_at"], r["last_seen_at"]);
            assert!(
                started.insert(conv(r), r.clone()).is_none(),
                "one start per flow: {r}"
            );
        } else {
            let s = started
                .get(&conv(r))
                .unwrap_or_else(|| panic!("a record before its flow's start: {r}"));
            assert_eq!(s["first_seen_at"], r["first_seen_at"], "{r}");
            assert_eq!(s["community_id"], r["community_id"]);
        }
    }
    let flows = plain.iter().filter(|r| r["type"] == "flow").count();
    assert_eq!(
        started.len(),
        flows,
        "one start for each flow of the plain run"
    );
}

#[test]
fn filters_record_exactly_what_their_rules_keep_and_sampling_scales() {
    if !require_root("filters_record_exactly_what_their_rules_keep_and_sampling_scales") {
        return;
    }
    let tmp = TempDir::new("filters");
    let link = Link::new();
    let pcap = tmp.path("mix.pcap");
    capture_mix(&link, &pcap, false);
    let addrs = link.addrs();
    let (oracle, protos) = tshark_sums(&pcap, Some(&addrs));
    let (b4, b6) = (link.ip4_b.as_str(), link.ip6_b.as_str());
    let rules = [
        format!("drop proto udp net {b4}/32 port 20000-20059"),
        "keep port 8000".to_owned(),
        format!("drop net {b6}/128"),
    ];
    // The same rules, evaluated on tshark's view of each direction.
    let keep = |k: &DirKey| {
        let proto = protos.get(k).map(String::as_str).unwrap_or("");
        let either = |a: &str| k.src == a || k.dst == a;
        let port = |lo: u16, hi: u16| (lo..=hi).contains(&k.sport) || (lo..=hi).contains(&k.dport);
        if proto == "udp" && either(b4) && port(20000, 20059) {
            false
        } else if port(8000, 8000) {
            true
        } else {
            !either(b6)
        }
    };
    let mut want = oracle.clone();
    want.retain(|k, _| keep(k));
    let dropped: u64 = oracle
        .iter()
        .filter(|(k, _)| !keep(k))
        .map(|(_, c)| c.packets)
        .sum();
    assert!(
        dropped > 60 && want.len() > 50,
        "the rules cut something and keep something"
    );
    let mut args = Vec::new();
    for r in &rules {
        args.extend(["--filter", r.as_str()]);
    }
    for mode in ["tc", "xdp"] {
        let mut a = args.clone();
        a.extend(["--mode", mode]);
        let (status, out, err) = devourer_read(&pcap, &a);
        assert!(status.success(), "{err}");
        let recs = records(&out);
        assert_same_sums(
            &devourer_sums(&recs, Some(&addrs)),
            &want,
            &format!("{mode}: filtered"),
        );
        assert_eq!(log_number(&err, "filtered"), Some(dropped), "{err}");
    }
    // The same rules from the environment, `;` between them.
    let (status, out, err) =
        devourer_read_env(&pcap, &[], &[("DEVOURER_FILTER", &rules.join(";"))]);
    assert!(status.success(), "{err}");
    assert_same_sums(
        &devourer_sums(&records(&out), Some(&addrs)),
        &want,
        "from the environment",
    );
    // A bad rule is refused with a message naming it.
    let (status, _, err) = devourer_read(&pcap, &["--filter", "drop proto tcpx"]);
    assert!(!status.success() && err.contains("tcpx"), "{err}");

    // One packet in 4, at random: the 2 MB iperf3 transfer's packets scale back to within 25%.
    let (status, out, err) = devourer_read(&pcap, &["--sampling", "4"]);
    assert!(status.success(), "{err}");
    let recs = records(&out);
    let big = |sums: &Sums| {
        sums.iter()
            .filter(|(k, _)| k.dport == 5201 || k.sport == 5201)
            .map(|(_, c)| c.packets)
            .sum::<u64>()
    };
    let (total, sampled) = (big(&oracle), big(&devourer_sums(&recs, Some(&addrs))));
    let scaled = sampled as f64 * 4.0;
    assert!(
        (scaled - total as f64).abs() <= total as f64 * 0.25,
        "sampled {sampled} x 4 vs {total}"
    );
    assert!(
        recs.iter()
            .filter(|r| r["type"] == "flow")
            .all(|r| r["sampling"] == 4)
    );
    let dropped = log_number(&err, "sampled_out").unwrap_or(0);
    assert!(dropped > 0, "{err}");
}
