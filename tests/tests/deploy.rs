//! Packaging and deployment: Kubernetes manifests validate against the Kubernetes schemas and
//! the DaemonSet's settings parse; the systemd unit verifies; the Grafana dashboard queries only
//! metrics a live agent serves; the static binary the Dockerfile ships runs in an empty root.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use devourer_tests::*;

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
