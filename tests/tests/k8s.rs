//! Kubernetes metadata end to end: a real API server with RBAC (`../shared/k8s`), the agent
//! on a node (see `devourer_tests::node`) with a ServiceAccount token bound to the shipped
//! ClusterRole, and pod, workload, Service and node objects matching the namespaces'
//! addresses. Records name both sides; a pod deleted and recreated with the same address
//! renames later flows only; the API server stopped mid-run never stops counting.

use std::{path::Path, time::Duration};

use devourer_tests::{
    k8s::{ApiServer, Kube, enter, kubeconfig, manifest},
    node::*,
    *,
};
use serde_json::{Value, json};

const AGENT: &str = "node-1";
const POD: (&str, &str) = ("v1", "Pod");
const API: &str = "https://127.0.0.1:16443";
/// In the test API server's Service range (198.19.200.0/24).
const GATEWAY_SERVICE_IP: &str = "198.19.200.20";

fn owner(obj: &Value) -> Value {
    json!([{
        "apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"], "controller": true
    }])
}

fn template(app: &str) -> Value {
    json!({
        "metadata": { "labels": { "app": app } },
        "spec": { "containers": [{ "name": "c", "image": "registry.invalid/c" }] }
    })
}

/// A pod on this node holding `ip`, owned by `owner_of`.
fn pod(k: &Kube, name: &str, app: &str, owner_of: &Value, ip: &str) {
    k.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "shop", "labels": { "app": app },
                      "ownerReferences": owner(owner_of) },
        "spec": { "nodeName": AGENT, "containers": [{ "name": "c", "image": "registry.invalid/c" }] }
    }));
    k.patch_status(
        POD,
        Some("shop"),
        name,
        json!({ "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }] }),
    );
}

/// The shipped ClusterRole bound to the agent's ServiceAccount; its token's kubeconfig.
fn agent_credentials(admin: &Kube, path: &Path) {
    admin
        .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "devourer"}}));
    admin.create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": "devourer", "namespace": "devourer"}}));
    let rbac = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/rbac.yaml");
    for doc in manifest(&rbac) {
        admin.create(doc);
    }
    kubeconfig(path, API, &admin.token("devourer", "devourer"));
}

/// What the agent names: a Deployment's pod behind a Service, a StatefulSet's pod, the node.
fn cluster_objects(k: &Kube) {
    k.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
    let selector = |app: &str| json!({ "matchLabels": { "app": app } });
    let deploy = k.create(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web", "namespace": "shop" },
        "spec": { "selector": selector("web"), "template": template("web") }
    }));
    let rs = k.create(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": { "name": "web-6d4f", "namespace": "shop", "ownerReferences": owner(&deploy) },
        "spec": { "selector": selector("web"), "template": template("web") }
    }));
    let sts = k.create(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": { "name": "db", "namespace": "shop" },
        "spec": { "selector": selector("db"), "serviceName": "db", "template": template("db") }
    }));
    pod(k, "web-6d4f-abcde", "web", &rs, POD_IPS[0]);
    pod(k, "db-0", "db", &sts, POD_IPS[1]);
    for (name, ip) in [("web", "198.19.200.10"), ("db", "198.19.200.11")] {
        k.create(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": name, "namespace": "shop" },
            "spec": { "selector": { "app": name }, "clusterIP": ip,
                      "ports": [{ "port": 80, "targetPort": 8000 }] }
        }));
    }
    k.create(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": AGENT,
        "labels": { "topology.kubernetes.io/zone": "zone-a" }}}),
    );
    k.patch_status(
        ("v1", "Node"),
        None,
        AGENT,
        json!({ "addresses": [{ "type": "InternalIP", "address": GATEWAY }] }),
    );
}

fn metric(n: &Node, name: &str) -> Option<f64> {
    let out = n
        .node
        .cmd("curl")
        .args(["-sf", "http://127.0.0.1:9402/metrics"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn stale_is(n: &Node, v: f64) -> bool {
    wait_for(Duration::from_secs(30), || {
        metric(n, "devourer_k8s_metadata_stale") == Some(v)
    })
}

/// A curl from pod 1 to pod 2's web server from source port `port` (one flow each).
fn curl(n: &Node, port: u16) {
    n.pods[0].sh(&format!(
        "curl -sf -o /dev/null --local-port {port} http://{}:8000/",
        POD_IPS[1]
    ));
}

fn flow_from(recs: &[Value], port: u16) -> &Value {
    recs.iter()
        .find(|r| r["type"] == "flow" && r["src_port"] == port && r["protocol"] == "tcp")
        .unwrap_or_else(|| panic!("no flow from port {port}"))
}

fn out_records(path: &Path) -> Vec<Value> {
    records(&std::fs::read(path).unwrap_or_default())
}

/// The API server on a node, the agent's credentials, and the test thread on the node's
/// network (fields drop in order: the API server before its namespace).
struct Setup {
    api: ApiServer,
    admin: Kube,
    agent_kc: std::path::PathBuf,
    n: Node,
    tmp: TempDir,
}

fn setup(what: &str) -> Setup {
    let tmp = TempDir::new(what);
    let n = Node::new(false);
    let api = ApiServer::start(&n.node, &tmp.path("apiserver"));
    // This test's thread talks to the API server on the node's loopback.
    enter(&n.node);
    let admin = Kube::new(&api.kubeconfig);
    let agent_kc = tmp.path("agent.kubeconfig");
    agent_credentials(&admin, &agent_kc);
    Setup {
        api,
        admin,
        agent_kc,
        n,
        tmp,
    }
}

/// The agent on the node with metadata in `mode`, its metrics on the node's loopback.
fn agent(s: &Setup, mode: &str, out: &Path, log: &Path) -> Bg {
    let mut args = vec![
        "--all-interfaces",
        "--agent-name",
        AGENT,
        "--k8s-metadata",
        mode,
        "--kubeconfig",
        s.agent_kc.to_str().unwrap(),
        "--k8s-backoff-max",
        "1s",
        "--metrics-addr",
        "127.0.0.1:9402",
        "--http-ports",
        "8000",
    ];
    args.extend(QUICK_TIMEOUTS);
    start_capture(&s.n.node, &args, Some(out), log)
}

#[test]
fn records_name_pods_workloads_services_and_nodes_through_ip_reuse_and_an_api_outage() {
    if !require_root(
        "records_name_pods_workloads_services_and_nodes_through_ip_reuse_and_an_api_outage",
    ) {
        return;
    }
    let s = setup("k8s");
    let (n, api, admin) = (&s.n, &s.api, &s.admin);
    let agent_view = Kube::new(&s.agent_kc);
    assert!(
        agent_view.can_list(POD, None),
        "the ClusterRole grants pods"
    );
    assert!(
        !agent_view.can_list(("v1", "Secret"), Some("devourer")),
        "and nothing else: secrets are refused"
    );
    cluster_objects(admin);

    let _pod2 = start_servers(&n.pods[1]);
    // A Service without selector whose ClusterIP kube-proxy-style DNAT sends outside.
    let _outside = start_servers(&n.outside);
    n.service_at(GATEWAY_SERVICE_IP, 80, 8000);
    admin.create(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "gateway", "namespace": "shop" },
        "spec": { "clusterIP": GATEWAY_SERVICE_IP, "ports": [{ "port": 80 }] }
    }));
    let _dns = Bg::spawn(
        {
            let mut c = n.pods[1].cmd("dnsmasq");
            c.args([
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--port=53",
            ])
            .arg(format!("--listen-address={}", POD_IPS[1]))
            .arg("--address=/db.shop.test/198.19.200.11");
            c
        },
        "dnsmasq",
    );
    let out = s.tmp.path("records.jsonl");
    let log = s.tmp.path("agent.log");
    let agent = agent(&s, "node", &out, &log);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(stale_is(n, 0.0), "watches never followed: {}", logs());
    assert_eq!(metric(n, "devourer_k8s_objects{kind=\"pods\"}"), Some(2.0));

    // Names while the API server is up.
    curl(n, 40001);
    n.pods[0].sh(&format!(
        "dig +short +tries=1 +time=2 @{} db.shop.test A >/dev/null
         ping -q -c 2 -i 0.2 -W 1 {OUTSIDE_IP} >/dev/null",
        POD_IPS[1]
    ));
    n.node.sh(&format!(
        "ping -q -c 2 -i 0.2 -W 1 {} >/dev/null",
        POD_IPS[0]
    ));
    n.pods[0].sh(&format!(
        "curl -sf -o /dev/null --local-port 39001 http://{GATEWAY_SERVICE_IP}/"
    ));

    // The API server gone: counting goes on with the names known so far.
    api.down();
    assert!(stale_is(n, 1.0), "no stale metadata reported: {}", logs());
    let ready = run(n
        .node
        .cmd("curl")
        .args(["-s", "http://127.0.0.1:9402/readyz"]));
    assert!(
        String::from_utf8_lossy(&ready.stdout).contains("kubernetes metadata stale"),
        "{ready:?}"
    );
    curl(n, 40002);
    api.up();
    assert!(stale_is(n, 0.0), "watches did not resume: {}", logs());

    // db-0 gone, db-1 holds its address: flows from now on are db-1's.
    let admin = Kube::new(&api.kubeconfig);
    admin.delete(POD, Some("shop"), "db-0");
    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                     "metadata": {"name": "db", "uid": "unknown"}});
    pod(&admin, "db-1", "db", &sts, POD_IPS[1]);
    let mut renamed = None;
    for port in 40003..40023 {
        curl(n, port);
        std::thread::sleep(Duration::from_millis(1500));
        let recs = out_records(&out);
        let f = recs
            .iter()
            .find(|r| r["type"] == "flow" && r["src_port"] == port && r["dst_k8s_pod"] == "db-1");
        if f.is_some() {
            renamed = Some(port);
            break;
        }
    }
    let restarts = metric(n, "devourer_k8s_watch_restarts_total{kind=\"pods\"}");
    agent.stop(libc::SIGTERM, Duration::from_secs(20));
    let recs = out_records(&out);
    let renamed = renamed.unwrap_or_else(|| panic!("no flow named db-1: {}", logs()));
    assert!(restarts.is_some_and(|r| r >= 1.0), "restarts: {restarts:?}");

    // Both sides of a pod-to-pod flow, before the outage and during it.
    for port in [40001, 40002] {
        let f = flow_from(&recs, port);
        assert_eq!(f["src_k8s_namespace"], "shop", "{f}");
        assert_eq!(f["src_k8s_pod"], "web-6d4f-abcde", "{f}");
        assert_eq!(f["src_k8s_owner_kind"], "Deployment", "{f}");
        assert_eq!(f["src_k8s_owner"], "web", "{f}");
        assert_eq!(f["src_k8s_node"], AGENT, "{f}");
        assert_eq!(f["src_k8s_service"], "web", "{f}");
        assert_eq!(f["dst_k8s_pod"], "db-0", "{f}");
        assert_eq!(f["dst_k8s_owner_kind"], "StatefulSet", "{f}");
        assert_eq!(f["dst_k8s_owner"], "db", "{f}");
        assert_eq!(f["dst_k8s_service"], "db", "{f}");
        // Both on this node, in its zone.
        assert_eq!(f["src_k8s_zone"], "zone-a", "{f}");
        assert_eq!(f["dst_k8s_zone"], "zone-a", "{f}");
    }
    // Flows that began while db-1 held the address are db-1's; none later is db-0's.
    let later = u64::from(renamed)..40023;
    for r in recs.iter().filter(|r| {
        r["type"] == "flow"
            && r["dst_port"] == 8000
            && r["src_port"].as_u64().is_some_and(|p| later.contains(&p))
    }) {
        assert_eq!(r["dst_k8s_pod"], "db-1", "{r}");
    }
    // The outside is no one's; the node's own address names the node alone.
    let out_ping = recs
        .iter()
        .find(|r| r["protocol"] == "icmp" && r["dst_addr"] == OUTSIDE_IP)
        .expect("ping to the outside");
    assert_eq!(out_ping["src_k8s_pod"], "web-6d4f-abcde");
    assert!(out_ping["dst_k8s_namespace"].is_null() && out_ping["dst_k8s_node"].is_null());
    let node_ping = recs
        .iter()
        .find(|r| r["protocol"] == "icmp" && r["src_addr"] == GATEWAY)
        .expect("ping from the node");
    assert_eq!(node_ping["src_k8s_node"], AGENT, "{node_ping}");
    assert!(node_ping["src_k8s_pod"].is_null());
    assert_eq!(node_ping["dst_k8s_pod"], "web-6d4f-abcde");

    // A connection to a ClusterIP names the Service it was addressed to.
    let svc = flow_from(&recs, 39001);
    assert_eq!(svc["dst_addr"], GATEWAY_SERVICE_IP, "{svc}");
    assert_eq!(svc["xlat_dst_addr"], OUTSIDE_IP, "{svc}");
    assert_eq!(svc["dst_k8s_service"], "gateway", "{svc}");
    assert_eq!(svc["dst_k8s_namespace"], "shop", "{svc}");
    assert!(svc["dst_k8s_pod"].is_null(), "{svc}");

    // DNS and HTTP records name client and server.
    let dns = recs
        .iter()
        .find(|r| r["type"] == "dns" && r["q_name"] == "db.shop.test")
        .expect("a DNS record");
    assert_eq!(dns["client_k8s_pod"], "web-6d4f-abcde", "{dns}");
    assert_eq!(dns["server_k8s_pod"], "db-0", "{dns}");
    let http = recs
        .iter()
        .find(|r| r["type"] == "http" && r["client_port"] == 40001)
        .expect("an HTTP record");
    assert_eq!(http["client_k8s_owner"], "web", "{http}");
    assert_eq!(http["server_k8s_pod"], "db-0", "{http}");
}

#[test]
fn cluster_mode_names_pods_of_other_nodes_and_their_zones_and_node_mode_does_not() {
    if !require_root(
        "cluster_mode_names_pods_of_other_nodes_and_their_zones_and_node_mode_does_not",
    ) {
        return;
    }
    let s = setup("k8s-cluster");
    cluster_objects(&s.admin);
    // A pod of another node, in another zone, holds the outside's address.
    s.admin.create(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-2",
        "labels": { "topology.kubernetes.io/zone": "zone-b" }}}),
    );
    let job = s.admin.create(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": { "name": "report", "namespace": "shop" },
        "spec": { "template": { "spec": { "restartPolicy": "Never",
            "containers": [{ "name": "c", "image": "registry.invalid/c" }] } } }
    }));
    s.admin.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "report-x1", "namespace": "shop", "ownerReferences": owner(&job) },
        "spec": { "nodeName": "node-2", "containers": [{ "name": "c", "image": "registry.invalid/c" }] }
    }));
    s.admin.patch_status(
        POD,
        Some("shop"),
        "report-x1",
        json!({ "phase": "Running", "podIP": OUTSIDE_IP, "podIPs": [{ "ip": OUTSIDE_IP }] }),
    );
    for (mode, pods) in [("node", 2.0), ("cluster", 3.0)] {
        let out = s.tmp.path(&format!("{mode}.jsonl"));
        let log = s.tmp.path(&format!("{mode}.log"));
        if mode == "node" {
            // Unreachable at start: the agent starts and counts all the same.
            s.api.down();
        }
        let a = agent(&s, mode, &out, &log);
        if mode == "node" {
            assert!(stale_is(&s.n, 1.0), "started without the API server");
            s.n.pods[0].sh(&format!("ping -q -c 1 -W 1 {} >/dev/null", POD_IPS[1]));
            s.api.up();
        }
        assert!(stale_is(&s.n, 0.0), "{mode}: watches never followed");
        assert_eq!(
            metric(&s.n, "devourer_k8s_objects{kind=\"pods\"}"),
            Some(pods),
            "{mode}"
        );
        s.n.pods[0].sh(&format!("ping -q -c 2 -i 0.2 -W 1 {OUTSIDE_IP} >/dev/null"));
        let is_ping = |r: &Value| r["protocol"] == "icmp" && r["dst_addr"] == OUTSIDE_IP;
        // Its record out (idle), the bytes between zones and workloads are in the metrics.
        assert!(
            wait_for(Duration::from_secs(20), || out_records(&out)
                .iter()
                .any(is_ping)),
            "{mode}: no ping record"
        );
        let dst_zone = if mode == "cluster" { "zone-b" } else { "" };
        let zone_bytes = metric(
            &s.n,
            &format!(r#"devourer_zone_bytes_total{{dst_zone="{dst_zone}",src_zone="zone-a"}}"#),
        );
        let (dst_ns, dst_w, scope) = if mode == "cluster" {
            ("shop", "report", "cross_zone")
        } else {
            // 192.168.77.2, private and no one's.
            ("", "", "other")
        };
        let workload_bytes = metric(
            &s.n,
            &format!(
                r#"devourer_workload_bytes_total{{dst_namespace="{dst_ns}",dst_workload="{dst_w}",scope="{scope}",src_namespace="shop",src_workload="web"}}"#
            ),
        );
        a.stop(libc::SIGTERM, Duration::from_secs(20));
        let recs = out_records(&out);
        let ping = recs.iter().find(|r| is_ping(r)).expect("the ping record");
        let bytes =
            (ping["src_bytes"].as_u64().unwrap() + ping["dst_bytes"].as_u64().unwrap()) as f64;
        assert_eq!(zone_bytes, Some(bytes), "{mode}: {ping}");
        assert_eq!(workload_bytes, Some(bytes), "{mode}: {ping}");
        assert_eq!(ping["src_k8s_zone"], "zone-a", "{mode}: {ping}");
        assert_eq!(ping["src_k8s_pod"], "web-6d4f-abcde", "{mode}: {ping}");
        if mode == "node" {
            let early = recs
                .iter()
                .find(|r| r["protocol"] == "icmp" && r["dst_addr"] == POD_IPS[1])
                .expect("the ping sent while the API server was away is counted");
            assert_eq!(early["src_packets"], 1, "{early}");
        }
        if mode == "cluster" {
            assert_eq!(ping["dst_k8s_pod"], "report-x1", "{ping}");
            assert_eq!(ping["dst_k8s_owner_kind"], "Job", "{ping}");
            assert_eq!(ping["dst_k8s_owner"], "report", "{ping}");
            assert_eq!(ping["dst_k8s_node"], "node-2", "{ping}");
            assert_eq!(ping["dst_k8s_zone"], "zone-b", "{ping}");
        } else {
            assert!(ping["dst_k8s_pod"].is_null(), "node mode: {ping}");
            assert!(ping["dst_k8s_zone"].is_null(), "node mode: {ping}");
        }
    }
}

#[test]
fn five_thousand_pods_and_a_thousand_services_in_cluster_mode_stall_no_scan() {
    if !require_root("five_thousand_pods_and_a_thousand_services_in_cluster_mode_stall_no_scan") {
        return;
    }
    let s = setup("k8s-big");
    let n = &s.n;
    s.admin
        .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "big"}}));
    let out = s.tmp.path("records.jsonl");
    let log = s.tmp.path("agent.log");
    let mut args = vec![
        "--all-interfaces",
        "--agent-name",
        AGENT,
        "--k8s-metadata",
        "cluster",
        "--kubeconfig",
        s.agent_kc.to_str().unwrap(),
        "--metrics-addr",
        "127.0.0.1:9402",
        "--probe-addr",
        "127.0.0.1:9404",
        "--idle-timeout",
        "1s",
        "--evict-after",
        "300ms",
        "--scan-interval",
        "333ms",
        "--dns-timeout",
        "1s",
    ];
    args.push("--k8s-backoff-max");
    args.push("1s");
    let agent = start_capture(&n.node, &args, Some(&out), &log);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(stale_is(n, 0.0), "watches never followed: {}", logs());
    let load = udp_and_dns_load(&n.pods[0], POD_IPS[1], 600);
    let prober = Prober::start(&n.node, "http://127.0.0.1:9404/healthz");
    // Five pods per app, each app behind a (headless) Service: every Service added renames
    // the pods it selects while the agent counts.
    let pods = (0..5000u32)
        .map(|i| {
            let ip = format!("10.250.{}.{}", i / 250, i % 250 + 1);
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": format!("p{i}"), "namespace": "big",
                              "labels": { "app": format!("a{}", i / 5) } },
                "spec": { "nodeName": format!("node-{}", i % 50),
                          "containers": [{ "name": "c", "image": "registry.invalid/c" }] }
            });
            let status = json!({ "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }] });
            (pod, Some(status))
        })
        .collect();
    s.admin.create_all(pods, 16);
    let services = (0..1000u32)
        .map(|i| {
            let svc = json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": format!("s{i}"), "namespace": "big" },
                "spec": { "clusterIP": "None", "selector": { "app": format!("a{i}") },
                          "ports": [{ "port": 80 }] }
            });
            (svc, None)
        })
        .collect();
    s.admin.create_all(services, 16);
    let indexed = wait_for(Duration::from_secs(120), || {
        metric(n, "devourer_k8s_objects{kind=\"pods\"}") >= Some(5000.0)
            && metric(n, "devourer_k8s_objects{kind=\"services\"}") >= Some(1000.0)
    });
    std::thread::sleep(Duration::from_secs(2));
    let (probes, answered) = prober.stop();
    drop(load);
    let (_, metrics) = http_get(&n.node, "http://127.0.0.1:9402/metrics");
    let stopped = agent.stop(libc::SIGTERM, Duration::from_secs(30));
    assert!(stopped.status.success(), "{}", logs());
    assert!(indexed, "the agent indexed every object:\n{metrics}");
    assert_eq!(
        answered,
        probes,
        "/healthz answered every probe:\n{}",
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
    let v = series(&metrics, "devourer_sink_dropped_total{sink=\"jsonl\"}");
    assert_eq!(v, Some(0.0), "records dropped");
    let count = series(&metrics, "devourer_scan_gap_seconds_count").unwrap();
    let within = series(&metrics, "devourer_scan_gap_seconds_bucket{le=\"1\"}").unwrap();
    assert!(count > 30.0, "scans went on: {count}");
    assert_eq!(
        within, count,
        "a scan gap of over three intervals:\n{metrics}"
    );
    let recs = out_records(&out);
    assert!(
        recs.iter().filter(|r| r["type"] == "dns").count() > 5000,
        "records flowed throughout"
    );
}
