//! Packaging and deployment: Kubernetes manifests validate against the Kubernetes schemas and
//! the DaemonSet's settings parse; the systemd unit verifies; the Grafana dashboard queries only
//! metrics a live agent serves; the static binary the Dockerfile ships runs in an empty root.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use devourer_tests::{
    k8s::{ApiServer, manifest},
    *,
};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn kubernetes_manifests_validate_and_the_daemonset_settings_parse() {
    let script = repo().join("tests/check_deploy.py");
    let out = run(Command::new("python3")
        .arg(script)
        .arg(repo().join("deploy"))
        .arg(devourer_bin()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("DaemonSet valid against Kubernetes"),
        "{text}"
    );
    assert!(text.contains("ServiceMonitor well-formed"), "{text}");
    assert!(text.contains("parse with devourer config check"), "{text}");
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/devourer.service")).unwrap();
    assert!(unit.contains("AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON"));
    assert!(unit.contains("CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON"));
    let tmp = TempDir::new("systemd");
    // systemd-analyze checks that ExecStart exists: point it at the binary under test.
    let path = tmp.path("devourer.service");
    let bin = devourer_bin();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/devourer", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("devourer.service:"),
        "warnings about the unit: {err}"
    );
}

/// Metric families a dashboard expression refers to.
fn queried_metrics(dashboard: &serde_json::Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    for e in exprs {
        let bytes = e.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let rest = &e[i..];
            if (rest.starts_with("devourer_") || rest.starts_with("process_"))
                && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
            {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                out.insert(rest[..end].to_owned());
                i += end;
            } else {
                i += 1;
            }
        }
    }
    out
}

#[test]
fn the_dashboard_is_well_formed_and_queries_only_served_metrics() {
    if !require_root("the_dashboard_is_well_formed_and_queries_only_served_metrics") {
        return;
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/devourer.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "devourer");
    let queried = queried_metrics(&dash);
    assert!(queried.len() >= 15, "{queried:?}");

    let tmp = TempDir::new("dash");
    let link = Link::new();
    let log = tmp.path("agent.log");
    let agent = start_capture(
        &link.a,
        &[
            &[
                "-i",
                &link.if_a,
                "--metrics-addr",
                "127.0.0.1:9402",
                "--dns-timeout",
                "500ms",
            ][..],
            &QUICK_TIMEOUTS,
        ]
        .concat(),
        None,
        &log,
    );
    // Traffic that makes every family appear: flows, a DNS query that gets no answer (a
    // transaction), and a payload on port 53 that is not DNS (a parse error).
    link.a.sh(&format!(
        "ping -c 2 -i 0.1 {b} >/dev/null
         dig @{b} never.example +tries=1 +time=1 >/dev/null || true
         echo x > /dev/udp/{b}/53",
        b = link.ip4_b
    ));
    std::thread::sleep(Duration::from_secs(3));
    let out = run(link
        .a
        .cmd("curl")
        .args(["-sf", "http://127.0.0.1:9402/metrics"]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let served: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    for m in &queried {
        assert!(
            served.contains(m),
            "the dashboard queries {m}, which the agent does not serve:\n{text}"
        );
    }
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    assert!(res.status.success());
}

#[test]
fn the_static_binary_runs_in_an_empty_root() {
    if !require_root("the_static_binary_runs_in_an_empty_root") {
        return;
    }
    let Some(bin) = std::env::var_os("DEVOURER_STATIC_BIN") else {
        eprintln!(
            "SKIP the_static_binary_runs_in_an_empty_root: DEVOURER_STATIC_BIN unset (cargo xtask test builds it)"
        );
        return;
    };
    let tmp = TempDir::new("chroot");
    let root = tmp.path("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(&bin, root.join("devourer")).unwrap();
    let ldd = Command::new("ldd")
        .arg(root.join("devourer"))
        .output()
        .unwrap();
    let l =
        String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        l.contains("not a dynamic executable") || l.contains("statically linked"),
        "{l}"
    );
    let out = run(Command::new("chroot")
        .arg(&root)
        .args(["/devourer", "--version"]));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("devourer "));
    // It parses a configuration and loads its embedded eBPF object there too.
    std::fs::write(root.join("devourer.toml"), "idle_timeout = \"30s\"\n").unwrap();
    let out = run(Command::new("chroot").arg(&root).args([
        "/devourer",
        "config",
        "check",
        "/devourer.toml",
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("idle_timeout = \"30s\"  # file"));
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("FROM scratch"),
        "the final image has nothing but the binary"
    );
    assert!(
        dockerfile.contains("cargo xtask build-static"),
        "the image ships the binary this test ran"
    );
}

/// Where `want` (a manifest) is not in `live` (what the API server holds): every field it
/// gives is there with the same value (the server adds defaults; lists match item by item).
fn missing(want: &Value, live: &Value, path: &str) -> Vec<String> {
    match (want, live) {
        (Value::Object(w), Value::Object(l)) => w
            .iter()
            .flat_map(|(k, v)| match l.get(k) {
                Some(lv) => missing(v, lv, &format!("{path}.{k}")),
                None => vec![format!("{path}.{k}: absent")],
            })
            .collect(),
        (Value::Array(w), Value::Array(l)) if w.len() == l.len() => w
            .iter()
            .zip(l)
            .enumerate()
            .flat_map(|(i, (a, b))| missing(a, b, &format!("{path}[{i}]")))
            .collect(),
        (w, l) if w == l => Vec::new(),
        (w, l) => vec![format!("{path}: {w} in the manifest, {l} on the server")],
    }
}

/// `kubectl` against the API server in `ns` as its admin.
fn kubectl(ns: &Netns, api: &ApiServer, args: &[&str]) -> std::process::Output {
    ns.cmd("kubectl")
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args(args)
        .output()
        .expect("kubectl (on these machines)")
}

/// Applies kustomization `dir` server-side, as README says, and checks that every object it
/// renders is on the server as written.
fn apply_and_check(ns: &Netns, api: &ApiServer, tmp: &TempDir, dir: &Path) -> Vec<Value> {
    let d = dir.to_str().unwrap();
    let out = kubectl(ns, api, &["apply", "--server-side", "-k", d]);
    assert!(
        out.status.success(),
        "kubectl apply -k {d}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = kubectl(ns, api, &["kustomize", d]);
    assert!(rendered.status.success());
    let file = tmp.path("rendered.yaml");
    std::fs::write(&file, &rendered.stdout).unwrap();
    let docs = manifest(&file);
    for doc in &docs {
        let (kind, name) = (
            doc["kind"].as_str().unwrap(),
            doc["metadata"]["name"].as_str().unwrap(),
        );
        let mut args = vec!["get", kind, name, "-o", "json"];
        if let Some(n) = doc["metadata"]["namespace"].as_str() {
            args.extend(["-n", n]);
        }
        let got = kubectl(ns, api, &args);
        assert!(got.status.success(), "{kind} {name} is not on the server");
        let live: Value = serde_json::from_slice(&got.stdout).unwrap();
        let diff = missing(doc, &live, kind);
        assert!(
            diff.is_empty(),
            "{kind} {name} differs from its manifest: {diff:#?}"
        );
    }
    docs
}

#[test]
fn every_kustomization_applies_to_a_real_api_server_and_grants_exactly_what_the_agent_needs() {
    if !require_root(
        "every_kustomization_applies_to_a_real_api_server_and_grants_exactly_what_the_agent_needs",
    ) {
        return;
    }
    let tmp = TempDir::new("apply");
    let ns = Netns::new("dvkapi");
    let api = ApiServer::start(&ns, &tmp.path("apiserver"));
    // A plain cluster: no Prometheus Operator.
    let base = apply_and_check(&ns, &api, &tmp, &repo().join("deploy/kubernetes"));
    let kinds: BTreeSet<&str> = base.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for k in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Service",
        "DaemonSet",
    ] {
        assert!(kinds.contains(k), "the base applies no {k}: {kinds:?}");
    }
    assert!(!kinds.contains("ServiceMonitor"), "the base needs no CRD");
    // With the operator's CRD installed, the monitoring kustomization applies too.
    let crd = repo().join("tests/fixtures/servicemonitor-crd.yaml");
    let out = kubectl(
        &ns,
        &api,
        &["apply", "--server-side", "-f", crd.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl(
        &ns,
        &api,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/servicemonitors.monitoring.coreos.com",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mon = apply_and_check(
        &ns,
        &api,
        &tmp,
        &repo().join("deploy/kubernetes/monitoring"),
    );
    assert_eq!(mon.len(), 1);
    assert_eq!(mon[0]["kind"], "ServiceMonitor");
    // Capture on request: the base again, its DaemonSet with NET_RAW added and nothing else.
    let capture = apply_and_check(&ns, &api, &tmp, &repo().join("deploy/kubernetes-capture"));
    let ds = capture.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let caps = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"];
    assert_eq!(
        caps["add"],
        serde_json::json!(["BPF", "NET_ADMIN", "PERFMON", "NET_RAW"]),
        "{caps}"
    );
    assert_eq!(capture.len(), base.len(), "the same objects as the base");

    // The DaemonSet's ServiceAccount may list and watch what the agent watches, and nothing
    // else: no get, no writes, no secrets, no EndpointSlices.
    let can_sub = |verb: &str, resource: &str, sub: &str| {
        let mut args = vec![
            "auth",
            "can-i",
            "--as=system:serviceaccount:devourer:devourer",
            verb,
            resource,
        ];
        let sub = format!("--subresource={sub}");
        if sub.len() > "--subresource=".len() {
            args.push(&sub);
        }
        let out = kubectl(&ns, &api, &args);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    let can = |verb: &str, resource: &str| can_sub(verb, resource, "");
    for resource in ["pods", "services", "nodes", "replicasets.apps"] {
        for verb in ["list", "watch"] {
            assert!(can(verb, resource), "{verb} {resource} is refused");
        }
        for verb in ["get", "create", "update", "patch", "delete"] {
            assert!(!can(verb, resource), "{verb} {resource} is granted");
        }
    }
    for resource in [
        "secrets",
        "configmaps",
        "endpointslices.discovery.k8s.io",
        "endpoints",
        "deployments.apps",
    ] {
        for verb in ["get", "list", "watch", "create"] {
            assert!(!can(verb, resource), "{verb} {resource} is granted");
        }
    }
    for (resource, sub) in [
        ("pods", "exec"),
        ("pods", "log"),
        ("serviceaccounts", "token"),
    ] {
        for verb in ["get", "create"] {
            assert!(
                !can_sub(verb, resource, sub),
                "{verb} {resource}/{sub} is granted"
            );
        }
    }
}
