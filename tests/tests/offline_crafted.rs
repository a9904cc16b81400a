//! `devourer read` over crafted captures: VLAN and QinQ tags, IPv4 options and fragments, IPv6
//! extension headers and fragments, ICMP errors quoting other flows, a jumbo frame, other link
//! types; then broken frames and a truncated file.

use devourer_tests::{frames::*, *};
use pcap_file::DataLink;

/// More extension headers than the program walks (9 destination options): counted with
/// ports 0 and the last header's protocol. tshark walks them all, so this one is checked alone.
fn beyond_the_extension_header_bound() -> Vec<u8> {
    let mut many = Vec::new();
    for i in 0..9 {
        many.extend(ext(if i == 8 { 17 } else { 60 }, 0));
    }
    eth6(&ipv6(A6, B6, 60, &many, &udp(1, 2, &[0; 8])))
}

fn check(file: &std::path::Path, what: &str) {
    let (oracle, _) = tshark_sums(file, None);
    for mode in ["tc", "xdp"] {
        let (status, stdout, stderr) = devourer_read(file, &["--mode", mode]);
        assert!(status.success(), "{what} --mode {mode}: {status}\n{stderr}");
        let recs = records(&stdout);
        assert_same_sums(
            &devourer_sums(&recs, None),
            &oracle,
            &format!("{what} --mode {mode}"),
        );
        assert_eq!(log_number(&stderr, "malformed"), Some(0), "{stderr}");
        assert_threads_agree(file, &["--mode", mode], 3);
    }
}

#[test]
fn crafted_headers_match_tshark_on_ethernet_sll_and_sll2() {
    if !require_root("crafted_headers_match_tshark_on_ethernet_sll_and_sll2") {
        return;
    }
    let tmp = TempDir::new("crafted");
    let frames = crafted();
    let eth_file = tmp.path("crafted.pcap");
    write_pcap(&eth_file, DataLink::ETHERNET, &frames, 1_700_000_000);
    check(&eth_file, "ethernet");
    let sll = tmp.path("crafted-sll.pcap");
    let sll_frames: Vec<_> = frames.iter().map(|f| to_sll(f)).collect();
    write_pcap(&sll, DataLink::LINUX_SLL, &sll_frames, 1_700_000_000);
    check(&sll, "sll");
    let sll2 = tmp.path("crafted-sll2.pcap");
    let sll2_frames: Vec<_> = frames.iter().map(|f| to_sll2(f)).collect();
    write_pcap(&sll2, DataLink::LINUX_SLL2, &sll2_frames, 1_700_000_000);
    check(&sll2, "sll2");
    // Raw IP: only the untagged frames.
    let raw = tmp.path("crafted-raw.pcap");
    let raw_frames: Vec<_> = frames
        .iter()
        .filter(|f| matches!(&f[12..14], [0x08, 0x00] | [0x86, 0xdd]))
        .map(|f| f[14..].to_vec())
        .collect();
    write_pcap(&raw, DataLink::RAW, &raw_frames, 1_700_000_000);
    check(&raw, "raw");

    // Field by field on the Ethernet file.
    let (_, stdout, _) = devourer_read(&eth_file, &[]);
    let recs = records(&stdout);
    let find = |f: &dyn Fn(&serde_json::Value) -> bool| {
        recs.iter()
            .find(|r| f(r))
            .cloned()
            .unwrap_or_else(|| panic!("no such record in {recs:#?}"))
    };
    let v = find(&|r| r["vlan"] == 100);
    assert_eq!(
        (
            v["protocol"].as_str(),
            v["src_addr"].as_str(),
            v["src_port"].as_u64(),
            v["dst_port"].as_u64()
        ),
        (Some("udp"), Some("192.0.2.1"), Some(5000), Some(53))
    );
    assert_eq!(
        (v["src_bytes"].as_u64(), v["dst_bytes"].as_u64()),
        (Some(58), Some(118))
    );
    let q = find(&|r| r["vlan"] == 200);
    assert_eq!(q["protocol"], "tcp");
    assert_eq!(q["src_port"], 40000, "the SYN sender is the source");
    assert_eq!(q["tcp_flags"], 0x12);
    // The untagged packet of the same connection is the same flow: VLAN is not in the key.
    assert_eq!(q["src_bytes"], 60 + 160);
    assert!(
        !recs
            .iter()
            .any(|r| r["vlan"].is_null() && r["dst_port"] == 443),
        "{recs:#?}"
    );
    let frag_rest =
        find(&|r| r["protocol"] == "udp" && r["src_port"] == 0 && r["src_addr"] == "192.0.2.1");
    assert_eq!(
        (
            frag_rest["src_packets"].as_u64(),
            frag_rest["src_bytes"].as_u64()
        ),
        (Some(2), Some(1140))
    );
    let icmp = find(&|r| r["protocol"] == "icmp");
    assert_eq!(
        (icmp["icmp_type"].as_u64(), icmp["icmp_code"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(icmp["src_addr"], "192.0.2.2");
    let icmp6 = find(&|r| r["protocol"] == "icmpv6");
    assert_eq!(
        (icmp6["icmp_type"].as_u64(), icmp6["icmp_code"].as_u64()),
        (Some(1), Some(4))
    );
    assert_eq!(
        icmp6["src_packets"].as_u64().unwrap() + icmp6["dst_packets"].as_u64().unwrap(),
        2
    );
    let jumbo = find(&|r| r["dst_port"] == 11001);
    assert_eq!(jumbo["src_bytes"], 8028);
    let gre = find(&|r| r["protocol"] == "47");
    assert_eq!(gre["src_port"], 0);
    assert!(
        recs.iter()
            .all(|r| r["interface"] == "pcap" && r["agent"] == "test-agent")
    );
    assert!(
        recs.iter().all(|r| r["first_seen_at"]
            .as_str()
            .unwrap()
            .starts_with("2023-11-14T22:13:2")),
        "timestamps come from the file"
    );

    let deep = tmp.path("deep.pcap");
    write_pcap(
        &deep,
        DataLink::ETHERNET,
        &[beyond_the_extension_header_bound()],
        1_700_000_000,
    );
    for mode in ["tc", "xdp"] {
        let (status, stdout, stderr) = devourer_read(&deep, &["--mode", mode]);
        assert!(status.success(), "{stderr}");
        let recs = records(&stdout);
        assert_eq!(recs.len(), 1);
        assert_eq!(
            recs[0]["protocol"], "60",
            "stopped at a destination-options header"
        );
        assert_eq!(
            (recs[0]["src_port"].as_u64(), recs[0]["src_bytes"].as_u64()),
            (Some(0), Some(128))
        );
    }
}

#[test]
fn broken_frames_are_counted_as_malformed_without_stopping_the_replay() {
    if !require_root("broken_frames_are_counted_as_malformed_without_stopping_the_replay") {
        return;
    }
    let tmp = TempDir::new("broken");
    let good = eth4(&ipv4(A4, B4, 17, &udp(1, 2, &[0; 10]), 0, 0));
    let mut bogus_ihl = good.clone();
    bogus_ihl[14] = 0x42;
    let mut bad_version = good.clone();
    bad_version[14] = 0x75;
    let mut short_total = good.clone();
    short_total[16..18].copy_from_slice(&8u16.to_be_bytes());
    let cut_ip = good[..24].to_vec();
    let cut_tcp = eth4(&ipv4(A4, B4, 6, &tcp(1, 2, 0x02, &[]), 0, 0))[..40].to_vec();
    let cut_v6 = eth6(&ipv6(A6, B6, 0, &ext(17, 3), &udp(1, 2, &[])))[..70].to_vec();
    let garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
    let mut frames = vec![
        good.clone(),
        bogus_ihl,
        bad_version,
        short_total,
        cut_ip,
        cut_tcp,
        cut_v6,
        vec![],
        vec![0xff; 5],
        garbage,
        eth(&[(0x8100, 5)], 0x0800, &[]),
    ];
    frames.push(good.clone());
    let file = tmp.path("broken.pcap");
    write_pcap(&file, DataLink::ETHERNET, &frames, 1_700_000_000);
    for mode in ["tc", "xdp"] {
        let (status, stdout, stderr) = devourer_read(&file, &["--mode", mode]);
        assert!(
            status.success(),
            "malformed packets are not fatal ({mode}): {stderr}"
        );
        let recs = records(&stdout);
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(recs[0]["src_packets"], 2, "both good frames counted");
        // 7 broken IP frames in the kernel, 2 too short for an Ethernet header in userspace;
        // the garbage frame has a random ethertype: not IP.
        assert_eq!(log_number(&stderr, "malformed"), Some(9), "{stderr}");
        assert_eq!(log_number(&stderr, "non_ip"), Some(1), "{stderr}");
        assert_eq!(log_number(&stderr, "packets"), Some(12), "{stderr}");
        // The program's own log is off unless asked for.
        assert!(!stderr.contains("malformed packet on ifindex"), "{stderr}");
    }
}

#[test]
fn the_kernel_programs_own_log_reaches_the_agents_log_when_asked_and_is_rate_limited() {
    if !require_root(
        "the_kernel_programs_own_log_reaches_the_agents_log_when_asked_and_is_rate_limited",
    ) {
        return;
    }
    let tmp = TempDir::new("klog");
    let good = eth4(&ipv4(A4, B4, 17, &udp(1, 2, &[0; 10]), 0, 0));
    let mut bogus_ihl = good.clone();
    bogus_ihl[14] = 0x42;
    // Fifty malformed frames within one second of the file's clock: one log line for them.
    let frames = vec![bogus_ihl; 50];
    let file = tmp.path("malformed.pcap");
    write_pcap(&file, DataLink::ETHERNET, &frames, 1_700_000_000);
    let out = std::process::Command::new(devourer_tests::devourer_bin())
        .arg("read")
        .arg(&file)
        .args(["--output", "none"])
        .env("DEVOURER_LOG", "info,devourer::kernel=debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines = stderr
        .lines()
        .filter(|l| l.contains("devourer::kernel") && l.contains("malformed packet on ifindex 1"))
        .count();
    // At most one line per CPU per second (the replay thread may move between CPUs).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!((1..=cpus).contains(&lines), "{lines} lines:\n{stderr}");
    assert_eq!(log_number(&stderr, "malformed"), Some(50), "{stderr}");
}

#[test]
fn a_truncated_file_emits_what_was_read_and_exits_nonzero() {
    if !require_root("a_truncated_file_emits_what_was_read_and_exits_nonzero") {
        return;
    }
    let tmp = TempDir::new("trunc");
    let frames: Vec<_> = (0..20u16)
        .map(|i| eth4(&ipv4(A4, B4, 17, &udp(1000 + i, 9, &[0; 50]), 0, 0)))
        .collect();
    let file = tmp.path("whole.pcap");
    write_pcap(&file, DataLink::ETHERNET, &frames, 1_700_000_000);
    let bytes = std::fs::read(&file).unwrap();
    let cut = tmp.path("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 30]).unwrap();
    let (status, stdout, stderr) = devourer_read(&cut, &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("truncated or corrupt after 19 packets"),
        "{stderr}"
    );
    let recs = records(&stdout);
    assert_eq!(recs.len(), 19, "every complete packet's flow is emitted");
    assert!(recs.iter().all(|r| r["status"] == "end_of_input"));

    let not_pcap = tmp.path("notes.txt");
    std::fs::write(&not_pcap, "hello, I am not a capture\n").unwrap();
    let (status, stdout, stderr) = devourer_read(&not_pcap, &[]);
    assert!(!status.success());
    assert!(stdout.is_empty());
    assert!(stderr.contains("neither a pcap nor a pcapng"), "{stderr}");

    let (status, _, stderr) = devourer_read(&tmp.path("missing.pcap"), &[]);
    assert!(!status.success());
    assert!(stderr.contains("cannot open"), "{stderr}");
}

#[test]
fn timeouts_fire_on_the_files_clock() {
    if !require_root("timeouts_fire_on_the_files_clock") {
        return;
    }
    let tmp = TempDir::new("clock");
    let t0 = 1_700_000_000_000_000u64;
    let s = 1_000_000u64;
    let a = |sp| eth4(&ipv4(A4, B4, 17, &udp(sp, 9, &[0; 10]), 0, 0));
    let mut frames = Vec::new();
    // Flow 1: two packets, then quiet for a minute of file time: idle timeout.
    frames.push((t0, a(1)));
    frames.push((t0 + s, a(1)));
    // Flow 2: one packet every 10 s for 100 s: active timeouts every 30 s.
    for i in 0..=10 {
        frames.push((t0 + 2 * s + i * 10 * s, a(2)));
    }
    // Flow 3: a TCP exchange closed with FIN both ways, then a late packet of flow 2.
    let c = |fl| eth4(&ipv4(A4, B4, 6, &tcp(3333, 80, fl, &[]), 0, 0));
    let sv = |fl| eth4(&ipv4(B4, A4, 6, &tcp(80, 3333, fl, &[]), 0, 0));
    frames.push((t0 + 5 * s, c(0x02)));
    frames.push((t0 + 5 * s + 1, sv(0x12)));
    frames.push((t0 + 6 * s, c(0x11)));
    frames.push((t0 + 6 * s + 1, sv(0x11)));
    frames.sort_by_key(|(t, _)| *t);
    let file = tmp.path("clock.pcap");
    write_pcap_timed(&file, DataLink::ETHERNET, &frames);
    let (status, stdout, stderr) = devourer_read(
        &file,
        &[
            "--idle-timeout",
            "20s",
            "--active-timeout",
            "30s",
            "--tcp-linger",
            "2s",
        ],
    );
    assert!(status.success(), "{stderr}");
    let recs = records(&stdout);
    let of = |sp: u64| {
        recs.iter()
            .filter(|r| r["src_port"] == sp)
            .map(|r| {
                (
                    r["seq"].as_u64().unwrap(),
                    r["status"].as_str().unwrap().to_owned(),
                    r["src_packets"].as_u64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(of(1), vec![(0, "idle_timeout".into(), 2)]);
    let f2 = of(2);
    assert_eq!(f2.iter().map(|x| x.2).sum::<u64>(), 11, "{f2:?}");
    assert!(f2.len() >= 3, "{f2:?}");
    assert!(
        f2[..f2.len() - 1].iter().all(|x| x.1 == "active_timeout"),
        "{f2:?}"
    );
    assert_eq!(f2.last().unwrap().1, "end_of_input");
    assert_eq!(
        f2.iter().map(|x| x.0).collect::<Vec<_>>(),
        (0..f2.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(of(3333), vec![(0, "tcp_closed".into(), 2)]);
    // All records of flow 2 share nothing but the flow: distinct ids.
    let mut ids: Vec<_> = recs
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), recs.len());
}

#[test]
fn a_full_flow_map_spills_to_the_overflow_map_and_nothing_is_lost() {
    if !require_root("a_full_flow_map_spills_to_the_overflow_map_and_nothing_is_lost") {
        return;
    }
    let tmp = TempDir::new("full");
    // 400 one-packet UDP flows and 100 TCP packets of one flow, 1 ms apart, into a map of 16.
    let mut frames: Vec<Vec<u8>> = (0..400u16)
        .map(|i| eth4(&ipv4(A4, B4, 17, &udp(10_000 + i, 9, &[0; 20]), 0, 0)))
        .collect();
    for i in 0..100 {
        frames.insert(
            i * 4,
            eth4(&ipv4(A4, B4, 6, &tcp(4444, 80, 0x10, &[0; 10]), 0, 0)),
        );
    }
    let file = tmp.path("many.pcap");
    write_pcap(&file, DataLink::ETHERNET, &frames, 1_700_000_000);
    for mode in ["tc", "xdp"] {
        let (status, stdout, stderr) = devourer_read(
            &file,
            &[
                "--mode",
                mode,
                "--flow-map-entries",
                "16",
                "--wake-interval",
                "20ms",
            ],
        );
        assert!(status.success(), "{stderr}");
        let recs = records(&stdout);
        let flows: Vec<_> = recs.iter().filter(|r| r["type"] == "flow").collect();
        let in_records: u64 = flows
            .iter()
            .map(|r| r["src_packets"].as_u64().unwrap())
            .sum();
        let overflow: Vec<_> = recs.iter().filter(|r| r["type"] == "overflow").collect();
        let in_overflow: u64 = overflow
            .iter()
            .map(|r| r["packets"].as_u64().unwrap())
            .sum();
        assert!(in_overflow > 0, "the map did fill up: {stderr}");
        assert!(
            overflow
                .iter()
                .all(|r| r["interface"] == "pcap" && r["bytes"].as_u64().unwrap() > 0),
            "{overflow:?}"
        );
        assert_eq!(
            in_records + in_overflow,
            500,
            "every packet is in a flow record or an overflow record:\n{stderr}"
        );
        assert!(
            in_records > 100,
            "wake-ups made room early: only {in_records} in records"
        );
        assert_eq!(
            log_number(&stderr, "map_full"),
            Some(in_overflow),
            "{stderr}"
        );
        // The long TCP flow is one flow however often its entry was evicted under pressure.
        let tcp: Vec<_> = flows.iter().filter(|r| r["protocol"] == "tcp").collect();
        assert_eq!(tcp.len(), 1, "{tcp:?}");
    }
}

#[test]
fn big_tcp_super_packets_count_their_length_on_the_wire_though_replayed_cut() {
    if !require_root("big_tcp_super_packets_count_their_length_on_the_wire_though_replayed_cut") {
        return;
    }
    let tmp = TempDir::new("bigtcp");
    // BIG TCP: an IPv4 super-packet of 80,066 bytes on the wire with total length 0, and an
    // IPv6 one with payload length 0; each replayed cut to 3 KiB.
    let mut v4 = eth4(&ipv4(
        A4,
        B4,
        6,
        &tcp(4000, 80, 0x10, &vec![7u8; 80_012]),
        0,
        0,
    ));
    assert_eq!(v4.len(), 80_066);
    v4[16..18].copy_from_slice(&[0, 0]);
    let mut v6 = eth6(&ipv6(
        A6,
        B6,
        6,
        &[],
        &tcp(4001, 80, 0x10, &vec![8u8; 70_000]),
    ));
    v6[18..20].copy_from_slice(&[0, 0]);
    let file = tmp.path("bigtcp.pcap");
    write_pcap(
        &file,
        DataLink::ETHERNET,
        &[v4.clone(), v6.clone()],
        1_700_000_000,
    );
    for mode in ["tc", "xdp"] {
        let (status, stdout, stderr) = devourer_read(&file, &["--mode", mode]);
        assert!(status.success(), "{stderr}");
        let recs = records(&stdout);
        let bytes = |port: u64| {
            recs.iter()
                .find(|r| r["src_port"] == port)
                .and_then(|r| r["src_bytes"].as_u64())
        };
        assert_eq!(bytes(4000), Some(80_066 - 14), "IPv4, {mode}: {recs:?}");
        assert_eq!(
            bytes(4001),
            Some(v6.len() as u64 - 14),
            "IPv6, {mode}: {recs:?}"
        );
    }
}

#[test]
fn dns_records_do_not_depend_on_how_many_threads_replay() {
    if !require_root("dns_records_do_not_depend_on_how_many_threads_replay") {
        return;
    }
    // 300 queries from as many ports, then their responses newest first, each followed by a
    // packet of a plain UDP flow (fed on the other threads). With room for 50 pending
    // queries, which ones match depends on the order the queries reach the tracker: the
    // replay must hand DNS to it in file order however many threads feed the program.
    let mut frames = Vec::new();
    for i in 0..300u16 {
        let q = udp(30_000 + i, 53, &dns(i, &format!("q{i}.example"), None));
        frames.push(eth4(&ipv4(A4, B4, 17, &q, 0, 0)));
        frames.push(eth4(&ipv4(A4, B4, 17, &udp(20_000 + i, 9, &[0; 30]), 0, 0)));
    }
    for i in (0..300u16).rev() {
        let answer = Some([10, 9, (i >> 8) as u8, i as u8]);
        let r = udp(53, 30_000 + i, &dns(i, &format!("q{i}.example"), answer));
        frames.push(eth4(&ipv4(B4, A4, 17, &r, 0, 0)));
        frames.push(eth4(&ipv4(B4, A4, 17, &udp(9, 20_000 + i, &[0; 30]), 0, 0)));
    }
    let tmp = TempDir::new("dnsorder");
    let file = tmp.path("dns.pcap");
    write_pcap(&file, DataLink::ETHERNET, &frames, 1_700_000_000);
    let args = ["--dns-max-pending", "50", "--dns-timeout", "60s"];
    let (status, stdout, stderr) = devourer_read(&file, &args);
    assert!(status.success(), "{stderr}");
    let recs = records(&stdout);
    let status_of = |s: &str| {
        recs.iter()
            .filter(|r| r["type"] == "dns" && r["status"] == s)
            .count()
    };
    assert!(
        status_of("success") > 0 && status_of("no_query") > 0,
        "some responses match, others find their query evicted: {recs:#?}"
    );
    let elsewhere = assert_threads_agree(&file, &args, 4);
    assert!(elsewhere > 100, "the other threads fed {elsewhere} packets");
}

#[test]
fn a_packets_copy_on_a_second_interface_just_after_a_scan_boundary_is_not_counted_again() {
    if !require_root("a_packets_copy_on_a_second_interface_just_after_a_scan_boundary") {
        return;
    }
    // A node's capture: each packet crosses a pod's veth, then the bridge 1 µs later. The
    // requests straddle every scan boundary (veth 0.5 µs before it, bridge after), where the
    // replay moves to another map set; the replies sit mid-interval.
    const BASE: u64 = 1_700_000_000 * 1_000_000_000;
    const SECOND: u64 = 1_000_000_000;
    let request = eth4(&ipv4(A4, B4, 17, &udp(5000, 6000, &[1; 20]), 0, 0));
    let reply = eth4(&ipv4(B4, A4, 17, &udp(6000, 5000, &[2; 40]), 0, 0));
    let mut frames = vec![
        (0, BASE, request.clone()),
        (1, BASE + 1000, request.clone()),
    ];
    for i in 1..20u64 {
        let at = BASE + i * SECOND;
        frames.push((0, at - 500, request.clone()));
        frames.push((1, at + 500, request.clone()));
        frames.push((1, at + SECOND / 3, reply.clone()));
        frames.push((0, at + SECOND / 3 + 1000, reply.clone()));
    }
    let tmp = TempDir::new("straddle");
    let file = tmp.path("node.pcapng");
    write_pcapng(&file, &["veth-pod", "br0"], &frames);
    let (status, stdout, stderr) = devourer_read(&file, &["--scan-interval", "1s"]);
    assert!(status.success(), "{stderr}");
    let flows: Vec<serde_json::Value> = records(&stdout)
        .into_iter()
        .filter(|r| r["type"] == "flow")
        .collect();
    assert_eq!(flows.len(), 1, "{flows:#?}");
    let f = &flows[0];
    assert_eq!(
        (f["src_packets"].as_u64(), f["dst_packets"].as_u64()),
        (Some(20), Some(19)),
        "each packet once, though 19 of its copies followed a scan boundary: {f:#}"
    );
    assert_eq!(f["src_bytes"], 20 * 48);
    assert_eq!(f["interface"], "veth-pod", "{f:#}");
    let ingress = |i: &str| serde_json::json!({"direction": "ingress", "interface": i});
    assert_eq!(
        f["interfaces"],
        serde_json::json!([ingress("veth-pod"), ingress("br0")]),
        "{f:#}"
    );
    assert_threads_agree(&file, &["--scan-interval", "1s"], 2);
}

#[test]
fn a_last_flush_of_tens_of_thousands_of_flows_writes_each_once_in_order_on_every_thread_count() {
    if !require_root(
        "a_last_flush_of_tens_of_thousands_of_flows_writes_each_once_in_order_on_every_thread_count",
    ) {
        return;
    }
    // 40,000 one-packet UDP flows 1 ms apart, all still open when the file ends: the last
    // flush emits them at once, built and serialised in pieces on several threads.
    let flows = 40_000u32;
    let frames: Vec<Vec<u8>> = (0..flows)
        .map(|i| {
            let src = [10, 1, (i >> 8) as u8, i as u8];
            eth4(&ipv4(
                src,
                B4,
                17,
                &udp(10_000 + (i % 50) as u16, 9, &[0; 20]),
                0,
                0,
            ))
        })
        .collect();
    let tmp = TempDir::new("flush");
    let file = tmp.path("flush.pcap");
    write_pcap(&file, DataLink::ETHERNET, &frames, 1_700_000_000);
    let (status, stdout, stderr) = devourer_read(&file, &["--replay-threads", "4"]);
    assert!(status.success(), "{stderr}");
    let recs = records(&stdout);
    let flow_recs: Vec<_> = recs.iter().filter(|r| r["type"] == "flow").collect();
    assert_eq!(flow_recs.len(), flows as usize, "one record per flow");
    let ids: std::collections::HashSet<_> = flow_recs
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), flows as usize, "no record twice");
    // Flows come out in the order they began, whichever thread built or wrote them.
    let starts: Vec<&str> = flow_recs
        .iter()
        .map(|r| r["first_seen_at"].as_str().unwrap())
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] < w[1]),
        "records out of order"
    );
    assert_threads_agree(&file, &[], 4);
}
