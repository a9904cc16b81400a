//! A Kubernetes node (see `devourer_tests::node`): the agent with `--all-interfaces` in the
//! node namespace sees each pod packet on the pod's veth, the bridge and the uplink, and must
//! count it once. Oracle: tcpdump inside the pod, where each packet is seen once.

use std::{process::Stdio, time::Duration};

use devourer_tests::{node::*, *};
use serde_json::Value;

/// Pod 1 talks to pod 2 and to the outside: ICMP, UDP (iperf3), TCP (iperf3, curl).
fn traffic(n: &Node) {
    let [pod1, pod2] = &n.pods;
    pod1.sh(&format!(
        "ping -q -c 3 -i 0.2 -W 1 {p2} >/dev/null
         ping -q -c 3 -i 0.2 -W 1 {OUTSIDE_IP} >/dev/null
         iperf3 -c {OUTSIDE_IP} -p 5201 -u -b 2M -t 1 -l 1000 >/dev/null
         iperf3 -c {p2} -p 5201 -n 300K >/dev/null
         curl -sf -o /dev/null http://{OUTSIDE_IP}:8000/",
        p2 = POD_IPS[1]
    ));
    let _ = pod2;
}

/// Runs the agent in the node namespace over [`traffic`]; returns its records, the pod's
/// capture and the agent's log.
fn observe(
    n: &Node,
    tmp: &TempDir,
    mode: &str,
    extra: &[&str],
) -> (Vec<Value>, std::path::PathBuf, String) {
    let _outside = start_servers(&n.outside);
    let _pod2 = start_servers(&n.pods[1]);
    let out = tmp.path(&format!("{mode}.jsonl"));
    let log = tmp.path(&format!("{mode}.log"));
    let pcap = tmp.path(&format!("{mode}-pod.pcap"));
    let mut args = vec!["--all-interfaces", "--mode", mode, "--metrics-addr", "off"];
    args.extend_from_slice(extra);
    let agent = start_capture(&n.node, &args, Some(&out), &log);
    let dump = tcpdump(&n.pods[0], "eth0", &pcap);
    traffic(n);
    std::thread::sleep(Duration::from_millis(300));
    dump.stop(libc::SIGINT, Duration::from_secs(10));
    agent.stop(libc::SIGTERM, Duration::from_secs(20));
    let log = std::fs::read_to_string(&log).unwrap();
    (records(&std::fs::read(&out).unwrap()), pcap, log)
}

fn pod_addrs() -> Vec<String> {
    vec![
        POD_IPS[0].to_owned(),
        POD_IPS[1].to_owned(),
        OUTSIDE_IP.to_owned(),
    ]
}

/// The (interface, direction) pairs a record lists.
fn listed(r: &Value) -> Vec<(String, String)> {
    r["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["interface"].as_str().unwrap().to_owned(),
                o["direction"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn each_pod_packet_is_counted_once_across_veth_bridge_and_uplink_in_tc_and_xdp_modes() {
    if !require_root(
        "each_pod_packet_is_counted_once_across_veth_bridge_and_uplink_in_tc_and_xdp_modes",
    ) {
        return;
    }
    for mode in ["tc", "xdp"] {
        let tmp = TempDir::new(&format!("node-{mode}"));
        let n = Node::new(false);
        let (recs, pcap, log) = observe(&n, &tmp, mode, &[]);
        let addrs = pod_addrs();
        let (oracle, _) = tshark_sums(&pcap, Some(&addrs));
        let ours = devourer_sums(&recs, Some(&addrs));
        assert_same_sums(&ours, &oracle, &format!("{mode}: pod 1's conversations"));
        assert!(
            log_number(&log, "repeats").is_some_and(|n| n > 0),
            "{mode}: packets were seen again on other interfaces: {log}"
        );

        // Each record is counted where its flow entered the node first and lists the rest.
        let flow = |src: &str, dst: &str, proto: &str| {
            recs.iter()
                .find(|r| {
                    r["type"] == "flow"
                        && r["src_addr"] == src
                        && r["dst_addr"] == dst
                        && r["protocol"] == proto
                })
                .unwrap_or_else(|| panic!("{mode}: no {proto} flow {src} -> {dst}"))
        };
        let to_outside = flow(POD_IPS[0], OUTSIDE_IP, "icmp");
        assert_eq!(to_outside["interface"], POD_VETHS[0], "{to_outside}");
        let seen = listed(to_outside);
        for want in [
            (POD_VETHS[0], "ingress"),
            (UPLINK, "egress"),
            (UPLINK, "ingress"),
            (POD_VETHS[0], "egress"),
        ] {
            assert!(
                seen.contains(&(want.0.to_owned(), want.1.to_owned())),
                "{mode}: {want:?} missing from {seen:?}"
            );
        }
        assert_eq!(seen[0], (POD_VETHS[0].to_owned(), "ingress".to_owned()));
        let to_pod = flow(POD_IPS[0], POD_IPS[1], "icmp");
        assert_eq!(to_pod["interface"], POD_VETHS[0]);
        let seen = listed(to_pod);
        assert!(
            seen.contains(&(POD_VETHS[1].to_owned(), "egress".to_owned()))
                && seen.contains(&(POD_VETHS[1].to_owned(), "ingress".to_owned())),
            "{mode}: {seen:?}"
        );
    }
}

#[test]
fn counting_per_interface_counts_every_crossing_on_request() {
    if !require_root("counting_per_interface_counts_every_crossing_on_request") {
        return;
    }
    let tmp = TempDir::new("node-per-if");
    let n = Node::new(false);
    let (recs, pcap, _) = observe(&n, &tmp, "tc", &["--count-per-interface"]);
    let addrs = pod_addrs();
    let (oracle, _) = tshark_sums(&pcap, Some(&addrs));
    let to_outside = DirKey {
        src: POD_IPS[0].into(),
        dst: OUTSIDE_IP.into(),
        sport: 0,
        dport: 0,
    };
    let want = oracle[&to_outside].packets;
    // The pod's echo requests cross its veth, the bridge and the uplink: a record on each.
    let mut on: Vec<(String, u64)> = recs
        .iter()
        .filter(|r| {
            r["type"] == "flow"
                && r["protocol"] == "icmp"
                && r["src_addr"] == POD_IPS[0]
                && r["dst_addr"] == OUTSIDE_IP
        })
        .map(|r| {
            (
                r["interface"].as_str().unwrap().to_owned(),
                r["src_packets"].as_u64().unwrap(),
            )
        })
        .collect();
    on.sort();
    assert_eq!(
        on,
        [
            (BRIDGE.to_owned(), want),
            (UPLINK.to_owned(), want),
            (POD_VETHS[0].to_owned(), want)
        ]
    );
}

#[test]
fn a_pcapng_of_the_nodes_interfaces_counts_each_packet_once_offline() {
    if !require_root("a_pcapng_of_the_nodes_interfaces_counts_each_packet_once_offline") {
        return;
    }
    let tmp = TempDir::new("node-pcapng");
    let n = Node::new(false);
    let _outside = start_servers(&n.outside);
    let _pod2 = start_servers(&n.pods[1]);
    let node_file = tmp.path("node.pcapng");
    let pod_file = tmp.path("pod.pcap");
    // One file with every node interface the pods' packets cross, as dumpcap writes it.
    let mut c = n.node.cmd("dumpcap");
    c.args([
        "-q",
        "-i",
        POD_VETHS[0],
        "-i",
        POD_VETHS[1],
        "-i",
        BRIDGE,
        "-i",
        UPLINK,
    ])
    .arg("-w")
    .arg(&node_file)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let dumpcap = Bg::spawn(c, "dumpcap");
    assert!(
        wait_for(Duration::from_secs(10), || node_file
            .metadata()
            .is_ok_and(|m| m.len() > 0)),
        "dumpcap writing"
    );
    std::thread::sleep(Duration::from_millis(500));
    let dump = tcpdump(&n.pods[0], "eth0", &pod_file);
    traffic(&n);
    std::thread::sleep(Duration::from_millis(500));
    dump.stop(libc::SIGINT, Duration::from_secs(10));
    dumpcap.stop(libc::SIGINT, Duration::from_secs(10));
    let addrs = pod_addrs();
    let (oracle, _) = tshark_sums(&pod_file, Some(&addrs));
    let (status, out, log) = devourer_read(&node_file, &[]);
    assert!(status.success(), "{log}");
    let ours = devourer_sums(&records(&out), Some(&addrs));
    assert_same_sums(&ours, &oracle, "the node's pcapng, once per packet");
    // Each packet appears once per interface it crossed, in file order: which interface
    // counts a flow follows that order, on any number of replay threads.
    assert_threads_agree(&node_file, &[], 4);
    // With a scan every millisecond of the file's time, boundaries fall between a packet's
    // copies on its interfaces, where the replay moves to another map set: still once each.
    let fine = ["--scan-interval", "1ms"];
    let (status, out, log) = devourer_read(&node_file, &fine);
    assert!(status.success(), "{log}");
    let ours = devourer_sums(&records(&out), Some(&addrs));
    assert_same_sums(&ours, &oracle, "the node's pcapng, a scan every ms");
    assert_threads_agree(&node_file, &fine, 4);
}

#[test]
fn masqueraded_and_service_dnat_connections_are_one_record_with_the_translated_endpoints() {
    if !require_root(
        "masqueraded_and_service_dnat_connections_are_one_record_with_the_translated_endpoints",
    ) {
        return;
    }
    let tmp = TempDir::new("node-nat");
    let n = Node::new(true);
    n.service(80, 8000);
    let _outside = start_servers(&n.outside);
    let out = tmp.path("nat.jsonl");
    let log = tmp.path("nat.log");
    let pcap = tmp.path("nat-pod.pcap");
    let agent = start_capture(
        &n.node,
        &["--all-interfaces", "--metrics-addr", "off"],
        Some(&out),
        &log,
    );
    let dump = tcpdump(&n.pods[0], "eth0", &pcap);
    n.pods[0].sh(&format!(
        "ping -q -c 3 -i 0.2 -W 1 {OUTSIDE_IP} >/dev/null
         iperf3 -c {OUTSIDE_IP} -p 5201 -u -b 1M -t 1 -l 1000 >/dev/null
         curl -sf -o /dev/null http://{OUTSIDE_IP}:8000/
         curl -sf -o /dev/null http://{SERVICE_IP}:80/"
    ));
    std::thread::sleep(Duration::from_millis(300));
    dump.stop(libc::SIGINT, Duration::from_secs(10));
    agent.stop(libc::SIGTERM, Duration::from_secs(20));
    let log = std::fs::read_to_string(&log).unwrap();
    let recs = records(&std::fs::read(&out).unwrap());
    let flows: Vec<&Value> = recs.iter().filter(|r| r["type"] == "flow").collect();

    // The pod sees its conversations before translation, each packet once: so must we.
    let addrs = vec![
        POD_IPS[0].to_owned(),
        OUTSIDE_IP.to_owned(),
        SERVICE_IP.to_owned(),
    ];
    let (oracle, _) = tshark_sums(&pcap, Some(&addrs));
    let ours = devourer_sums(&recs, Some(&addrs));
    assert_same_sums(&ours, &oracle, "pod 1's NAT'd conversations");
    // No second record under the node's address for the masqueraded copies.
    for r in &flows {
        assert!(
            r["src_addr"] != NODE_UPLINK_IP && r["dst_addr"] != NODE_UPLINK_IP,
            "the translated copy was recorded too: {r}\n{log}"
        );
    }
    // Masquerade: the source as the outside saw it.
    for proto in ["icmp", "udp", "tcp"] {
        let r = flows
            .iter()
            .find(|r| {
                r["protocol"] == proto && r["src_addr"] == POD_IPS[0] && r["dst_addr"] == OUTSIDE_IP
            })
            .unwrap_or_else(|| panic!("no {proto} flow to the outside"));
        assert_eq!(r["xlat_src_addr"], NODE_UPLINK_IP, "{r}");
        assert_eq!(r["xlat_dst_addr"], Value::Null, "{r}");
        if proto == "icmp" {
            assert_eq!(r["xlat_src_port"], Value::Null, "{r}");
        } else {
            assert!(r["xlat_src_port"].as_u64().is_some(), "{r}");
        }
        let seen = listed(r);
        assert!(
            seen.contains(&(UPLINK.to_owned(), "egress".to_owned())),
            "the uplink, where the translated copy was seen, is listed: {seen:?}"
        );
    }
    // The service: recorded to the ClusterIP, its backend in xlat_dst_*.
    let svc = flows
        .iter()
        .find(|r| r["dst_addr"] == SERVICE_IP)
        .expect("a flow to the service address");
    assert_eq!(svc["src_addr"], POD_IPS[0]);
    assert_eq!(svc["dst_port"], 80);
    assert_eq!(svc["xlat_dst_addr"], OUTSIDE_IP, "{svc}");
    assert_eq!(svc["xlat_dst_port"], 8000, "{svc}");
    assert_eq!(svc["xlat_src_addr"], NODE_UPLINK_IP, "{svc}");
    assert!(
        !flows.iter().any(|r| r["protocol"] == "tcp"
            && r["dst_port"] == 8000
            && r["src_addr"] == POD_IPS[0]
            && r["xlat_dst_addr"].is_null()
            && r["dst_addr"] == OUTSIDE_IP
            && svc["xlat_src_port"] == r["src_port"]),
        "the service connection's backend side is not a record of its own"
    );
}

/// Five lookups and an HTTP request from a pod through a Service address DNAT'd to a backend
/// outside, and two lookups straight to it: each packet crosses the pod's veth before
/// translation and the uplink after it, and each transaction is one record, under the pod's
/// address, to the address the pod asked, naming the backend in `xlat_server*` where a DNAT
/// changed it; with the pods masqueraded on the uplink (the node's address on the copy) too.
/// Oracle: dig and curl in the pod.
#[test]
fn dns_and_http_through_a_service_are_one_record_each_naming_the_backend() {
    if !require_root("dns_and_http_through_a_service_are_one_record_each_naming_the_backend") {
        return;
    }
    for masquerade in [false, true] {
        lookups_through_a_service(masquerade);
    }
}

fn lookups_through_a_service(masquerade: bool) {
    let tmp = TempDir::new("node-svc-dns");
    let n = Node::new(masquerade);
    n.service_proto(SERVICE_IP, "udp", 53, 53);
    n.service(80, 8000);
    let _web = start_servers(&n.outside);
    let mut dnsmasq = n.outside.cmd("dnsmasq");
    dnsmasq
        .args([
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
        ])
        .arg(format!("--listen-address={OUTSIDE_IP}"))
        .args(["--address=/svc.test/192.0.2.80", "--log-facility=-"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _dnsmasq = Bg::spawn(dnsmasq, "dnsmasq");
    assert!(wait_for(Duration::from_secs(10), || {
        n.outside
            .cmd("bash")
            .args(["-c", "ss -lun | grep -q ':53 '"])
            .status()
            .is_ok_and(|s| s.success())
    }));
    let (out, log) = (tmp.path("svc.jsonl"), tmp.path("svc.log"));
    let agent = start_capture(
        &n.node,
        &[
            "--all-interfaces",
            "--http-ports",
            "80,8000",
            "--metrics-addr",
            "off",
        ],
        Some(&out),
        &log,
    );
    let answers = n.pods[0].sh(&format!(
        "for i in 1 2 3 4 5; do dig +short +tries=1 +time=2 @{SERVICE_IP} svc.test; done
         for i in 1 2; do dig +short +tries=1 +time=2 @{OUTSIDE_IP} direct.svc.test; done
         curl -sf -o /dev/null http://{SERVICE_IP}:80/"
    ));
    assert_eq!(
        String::from_utf8_lossy(&answers.stdout).lines().count(),
        7,
        "dig answered every lookup (masquerade {masquerade})"
    );
    std::thread::sleep(Duration::from_millis(300));
    agent.stop(libc::SIGTERM, Duration::from_secs(20));
    let log = std::fs::read_to_string(&log).unwrap();
    let recs = records(&std::fs::read(&out).unwrap());
    let dns: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "dns" && r["q_name"] == "svc.test")
        .collect();
    assert_eq!(
        dns.len(),
        5,
        "one record per lookup (masquerade {masquerade}): {dns:#?}\n{log}"
    );
    for r in &dns {
        assert_eq!(
            (&r["client"], &r["server"], &r["server_port"], &r["status"]),
            (
                &Value::from(POD_IPS[0]),
                &Value::from(SERVICE_IP),
                &Value::from(53),
                &Value::from("success")
            ),
            "{r}"
        );
        assert_eq!(
            (&r["xlat_server"], &r["xlat_server_port"]),
            (&Value::from(OUTSIDE_IP), &Value::from(53)),
            "{r}"
        );
    }
    let direct: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "dns" && r["q_name"] == "direct.svc.test")
        .collect();
    assert_eq!(
        direct.len(),
        2,
        "one record per direct lookup (masquerade {masquerade}): {direct:#?}"
    );
    for r in &direct {
        assert_eq!(
            (&r["client"], &r["server"], &r["xlat_server"]),
            (
                &Value::from(POD_IPS[0]),
                &Value::from(OUTSIDE_IP),
                &Value::Null
            ),
            "{r}"
        );
    }
    let http: Vec<&Value> = recs.iter().filter(|r| r["type"] == "http").collect();
    assert_eq!(
        http.len(),
        2,
        "the request and its response (masquerade {masquerade}): {http:#?}"
    );
    for r in &http {
        assert_eq!(
            (&r["client"], &r["server"], &r["server_port"]),
            (
                &Value::from(POD_IPS[0]),
                &Value::from(SERVICE_IP),
                &Value::from(80)
            )
        );
        assert_eq!(
            (&r["xlat_server"], &r["xlat_server_port"]),
            (&Value::from(OUTSIDE_IP), &Value::from(8000)),
            "{r}"
        );
    }
}

/// `--filter 'drop port 80'` and a pod's requests to a Service on port 80, DNAT'd to port 8000
/// outside: the rule decides on the tuple the pod sent, so the conversation leaves no flow or
/// HTTP record on any interface (the uplink's translated copy, to port 8000, included), and
/// `filtered` counts each of its packets once. A ping beside it is recorded as usual. Oracle:
/// tcpdump inside the pod.
#[test]
fn a_drop_rule_decides_on_the_tuple_the_client_sent_once_for_every_interface_in_tc_and_xdp_modes() {
    if !require_root(
        "a_drop_rule_decides_on_the_tuple_the_client_sent_once_for_every_interface_in_tc_and_xdp_modes",
    ) {
        return;
    }
    for mode in ["tc", "xdp"] {
        let tmp = TempDir::new(&format!("node-filter-{mode}"));
        let n = Node::new(false);
        n.service(80, 8000);
        let _outside = start_servers(&n.outside);
        let (out, log) = (tmp.path("filter.jsonl"), tmp.path("filter.log"));
        let pcap = tmp.path("filter-pod.pcap");
        let agent = start_capture(
            &n.node,
            &[
                "--all-interfaces",
                "--mode",
                mode,
                "--filter",
                "drop port 80",
                "--http-ports",
                "80,8000",
                "--metrics-addr",
                "off",
            ],
            Some(&out),
            &log,
        );
        let dump = tcpdump(&n.pods[0], "eth0", &pcap);
        n.pods[0].sh(&format!(
            "ping -q -c 3 -i 0.2 -W 1 {OUTSIDE_IP} >/dev/null
             curl -sf -o /dev/null http://{SERVICE_IP}:80/
             curl -sf -o /dev/null http://{SERVICE_IP}:80/"
        ));
        std::thread::sleep(Duration::from_millis(300));
        dump.stop(libc::SIGINT, Duration::from_secs(10));
        agent.stop(libc::SIGTERM, Duration::from_secs(20));
        let log = std::fs::read_to_string(&log).unwrap();
        let recs = records(&std::fs::read(&out).unwrap());
        let addrs = vec![POD_IPS[0].to_owned(), SERVICE_IP.to_owned()];
        let (oracle, _) = tshark_sums(&pcap, Some(&addrs));
        let dropped: u64 = oracle
            .iter()
            .filter(|(k, _)| k.sport == 80 || k.dport == 80)
            .map(|(_, c)| c.packets)
            .sum();
        assert!(
            dropped >= 10,
            "{mode}: the pod sent two requests: {oracle:?}"
        );
        let web = |r: &&Value| {
            [
                "src_port",
                "dst_port",
                "server_port",
                "client_port",
                "xlat_dst_port",
            ]
            .iter()
            .any(|f| r[*f] == 80 || r[*f] == 8000)
        };
        let leaked: Vec<&Value> = recs.iter().filter(web).collect();
        assert!(
            leaked.is_empty(),
            "{mode}: the dropped conversation left records: {leaked:#?}\n{log}"
        );
        assert_eq!(
            log_number(&log, "filtered"),
            Some(dropped),
            "{mode}: each dropped packet counted once\n{log}"
        );
        assert!(
            recs.iter().any(|r| r["protocol"] == "icmp"
                && r["src_addr"] == POD_IPS[0]
                && r["dst_addr"] == OUTSIDE_IP),
            "{mode}: the ping is recorded\n{log}"
        );
    }
}
