//! fluentd's Forward output against a receiver written from the Forward Protocol
//! Specification v1 (tests/fake_fluentd.py; no fluentd or Fluent Bit is installable here),
//! which is itself checked against the official clients (PyPI fluent-logger, npm
//! @fluent-org/logger) in every carrier mode, with acks and the shared-key handshake.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use devourer_tests::{frames::*, *};
use pcap_file::DataLink;
use serde_json::Value;

/// tests/fake_fluentd.py on `port` in `ns` (the root namespace for `None`), events to `out`.
fn receiver(ns: Option<&Netns>, port: u16, out: &Path, key: Option<&str>) -> Bg {
    receiver_with(ns, port, out, key, &[])
}

/// [`receiver`] with more of its arguments.
fn receiver_with(
    ns: Option<&Netns>,
    port: u16,
    out: &Path,
    key: Option<&str>,
    more: &[&str],
) -> Bg {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fake_fluentd.py");
    let mut cmd = match ns {
        Some(n) => n.cmd("python3"),
        None => Command::new("python3"),
    };
    cmd.arg(script).arg(port.to_string()).arg(out);
    if let Some(k) = key {
        cmd.args(["--shared-key", k]);
    }
    cmd.args(more).stdout(Stdio::null()).stderr(Stdio::null());
    let bg = Bg::spawn(cmd, "fake fluentd");
    let check = format!("ss -ltn | grep -q '127.0.0.1:{port} '");
    let up = wait_for(Duration::from_secs(10), || {
        let mut c = match ns {
            Some(n) => n.cmd("bash"),
            None => Command::new("bash"),
        };
        c.args(["-c", &check]).status().is_ok_and(|s| s.success())
    });
    assert!(up, "the Forward receiver listens on {port}");
    bg
}

/// The events a receiver wrote.
fn events(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn npm_modules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-npm/node_modules")
}

/// Sends three events `{"n": i, "mode": MODE}` with the npm client; whether it said it did.
fn npm_client(port: u16, mode: &str, key: Option<&str>) -> bool {
    let script = r#"
const { FluentClient } = require("@fluent-org/logger");
(async () => {
  const [port, mode, key] = process.argv.slice(1);
  const c = new FluentClient("npm", {
    socket: { host: "127.0.0.1", port: Number(port), timeout: 3000 },
    eventMode: mode,
    ack: {},
    security: key ? { clientHostname: "npm-client", sharedKey: key } : undefined,
    flushInterval: 10,
  });
  for (let i = 0; i < 3; i++) await c.emit("ev", { n: i, mode });
  await c.shutdown();
})().catch((e) => { console.error(e.message); process.exit(1); });
"#;
    let mut cmd = Command::new("timeout");
    cmd.args(["20", "node", "-e", script, &port.to_string(), mode]);
    if let Some(k) = key {
        cmd.arg(k);
    }
    cmd.env("NODE_PATH", npm_modules())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_receiver_takes_what_the_official_clients_send_in_every_mode_with_acks_and_a_shared_key() {
    let tmp = TempDir::new("fluent-clients");
    let out = tmp.path("events.jsonl");
    let port = 24300 + (std::process::id() % 500) as u16;
    let _plain = receiver(None, port, &out, None);
    // PyPI fluent-logger: Message mode with EventTime.
    run(Command::new("python3").args([
        "-c",
        &format!(
            "from fluent import sender\n\
             s = sender.FluentSender('app', host='127.0.0.1', port={port}, nanosecond_precision=True)\n\
             assert s.emit('follow', {{'from': 'userA', 'to': 'userB'}}), s.last_error\n\
             s.close()"
        ),
    ]));
    let got = events(&out);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["tag"], "app.follow");
    assert_eq!(got[0]["record"]["from"], "userA");
    assert!(
        got[0]["time"][1].as_u64().unwrap() > 0,
        "EventTime's nanoseconds"
    );
    // npm @fluent-org/logger, each carrier mode, acknowledged.
    let modes = [
        "Message",
        "Forward",
        "PackedForward",
        "CompressedPackedForward",
    ];
    for mode in modes {
        assert!(npm_client(port, mode, None), "npm client, {mode}");
    }
    let got = events(&out);
    for mode in modes {
        let n = got
            .iter()
            .filter(|e| e["tag"] == "npm.ev" && e["mode"] == mode && e["record"]["mode"] == mode)
            .count();
        assert_eq!(n, 3, "{mode}: {got:?}");
    }
    // The handshake: the right key delivers, a wrong one delivers nothing.
    let keyed_out = tmp.path("keyed.jsonl");
    let _keyed = receiver(None, port + 1, &keyed_out, Some("s3cr3t-shared"));
    assert!(npm_client(port + 1, "PackedForward", Some("s3cr3t-shared")));
    assert_eq!(events(&keyed_out).len(), 3);
    npm_client(port + 1, "PackedForward", Some("wrong-key"));
    assert_eq!(events(&keyed_out).len(), 3, "nothing with a wrong key");
}

/// Records by their id.
fn by_id(recs: &[Value]) -> BTreeMap<String, Value> {
    recs.iter()
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r.clone()))
        .collect()
}

#[test]
fn every_record_reaches_fluentd_once_with_its_tag_across_a_receiver_restart() {
    if !require_root("every_record_reaches_fluentd_once_with_its_tag_across_a_receiver_restart") {
        return;
    }
    let tmp = TempDir::new("fluent-agent");
    let link = Link::new();
    let _servers = start_servers(&link.b);
    let (out, log, fwd) = (
        tmp.path("records.jsonl"),
        tmp.path("agent.log"),
        tmp.path("forward.jsonl"),
    );
    let key_file = tmp.path("key");
    std::fs::write(&key_file, "node-key-0123456789\n").unwrap();
    let key = Some("node-key-0123456789");
    let r1 = receiver(Some(&link.b), 24224, &fwd, key);
    let spool = tmp.path("spool");
    let mut args = vec![
        "-i",
        &link.if_b,
        "--metrics-addr",
        "127.0.0.1:9402",
        "--flow-start-records",
        "--http-ports",
        "8000",
        "--fluent",
        "127.0.0.1:24224",
        "--fluent-tag-prefix",
        "devourer",
        "--fluent-spool-dir",
        spool.to_str().unwrap(),
        "--fluent-shared-key-file",
        key_file.to_str().unwrap(),
        "--fluent-flush-interval",
        "100ms",
        "--fluent-timeout",
        "2s",
        "--fluent-backoff-base",
        "100ms",
        "--fluent-backoff-max",
        "400ms",
    ];
    args.extend(QUICK_TIMEOUTS);
    let agent = start_capture(&link.b, &args, Some(&out), &log);
    let traffic = |n: u32| {
        link.a.sh(&format!(
            "ping -q -c {n} -i 0.1 -W 1 {b} >/dev/null
             curl -sf -o /dev/null http://{b}:8000/",
            b = link.ip4_b
        ));
        std::thread::sleep(Duration::from_millis(1500));
    };
    traffic(2);
    // The receiver goes away: records wait in the spool, and are retried.
    drop(r1);
    traffic(3);
    let _r2 = receiver(Some(&link.b), 24224, &fwd, key);
    traffic(4);
    let (_, metrics) = http_get(&link.b, "http://127.0.0.1:9402/metrics");
    let sent = series(
        &metrics,
        r#"devourer_sink_rows_total{outcome="sent",sink="fluent"}"#,
    );
    assert!(sent.is_some_and(|n| n > 0.0), "{metrics}");
    assert!(
        series(&metrics, r#"devourer_sink_spool_bytes{sink="fluent"}"#).is_some(),
        "{metrics}"
    );
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(res.status.success(), "{log_text}");
    let recs = records(&std::fs::read(&out).unwrap());
    let sent = events(&fwd);
    assert!(
        recs.iter().filter(|r| r["type"] == "flow").count() >= 6
            && recs.iter().any(|r| r["type"] == "http"),
        "flows and HTTP in the JSON output: {recs:?}"
    );
    // Every record came once (a batch sent again after a lost ack may come twice, with
    // the same id and fields), as the JSON output has it, under the C++ devourer's tag.
    let want = by_id(&recs);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for e in &sent {
        let r = &e["record"];
        let id = r["id"].as_str().unwrap();
        assert_eq!(Some(r), want.get(id), "the Forward record is the JSON line");
        let tag = match (r["type"].as_str().unwrap(), r["status"].as_str()) {
            ("flow", Some("start")) => "devourer.flow.new",
            ("flow", _) => "devourer.flow.log",
            ("dns", _) => "devourer.dns.tx",
            ("http", _) => "devourer.http.log",
            _ => "devourer.overflow.log",
        };
        assert_eq!(e["tag"], tag, "{e}");
        assert_eq!(e["mode"], "PackedForward", "entries as bin: {e}");
        assert_eq!(
            (&e["event_time"], &e["size_ok"], &e["acked"]),
            (&Value::Bool(true), &Value::Bool(true), &Value::Bool(true)),
            "EventTime, the size option, an ack asked for: {e}"
        );
        *seen.entry(id.to_owned()).or_default() += 1;
    }
    // Sent again only what a lost ack may cover: never more than twice here.
    assert!(seen.values().all(|&n| n <= 2), "{seen:?}");
    let missing: Vec<&String> = want.keys().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "records the receiver never got: {missing:?}\n{log_text}"
    );
    assert!(
        log_text.contains("Forward:"),
        "the outage was seen and retried: {log_text}"
    );
}

#[test]
fn records_reach_a_tls_receiver_whose_certificate_chains_to_the_given_ca_and_no_other() {
    if !require_root(
        "records_reach_a_tls_receiver_whose_certificate_chains_to_the_given_ca_and_no_other",
    ) {
        return;
    }
    let tmp = TempDir::new("fluent-tls");
    // A private CA and a server certificate for 127.0.0.1, made with openssl; and another CA.
    sh(&format!(
        "cd {d} && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca 2>/dev/null \
         && openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.pem -days 2 -subj /CN=other-ca 2>/dev/null \
         && openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 2>/dev/null \
         && printf 'subjectAltName=IP:127.0.0.1\\n' > ext \
         && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext 2>/dev/null",
        d = tmp.path("").display()
    ));
    let pem = |f: &str| tmp.path(f).display().to_string();
    let port = 24800 + (std::process::id() % 500) as u16;
    let fwd = tmp.path("forward.jsonl");
    let _r = receiver_with(
        None,
        port,
        &fwd,
        None,
        &["--tls-cert", &pem("srv.pem"), "--tls-key", &pem("srv.key")],
    );
    // Ten UDP flows, replayed.
    let frames: Vec<Vec<u8>> = (0..10u16)
        .map(|i| eth4(&ipv4(A4, B4, 17, &udp(40000 + i, 53, b"x"), 0, 0)))
        .collect();
    let pcap = tmp.path("flows.pcap");
    write_pcap(&pcap, DataLink::ETHERNET, &frames, 1_700_000_000);
    let addr = format!("127.0.0.1:{port}");
    let read = |ca: &str, spool: &str| {
        devourer_read(
            &pcap,
            &[
                "--fluent",
                &addr,
                "--fluent-tls",
                "--fluent-ca-file",
                &pem(ca),
                "--fluent-spool-dir",
                &pem(spool),
                "--fluent-backoff-base",
                "100ms",
                "--fluent-backoff-max",
                "200ms",
                "--shutdown-timeout",
                "3s",
            ],
        )
    };
    let (status, out, err) = read("ca.pem", "spool");
    assert!(status.success(), "{err}");
    let recs = records(&out);
    assert_eq!(recs.len(), 10, "{err}");
    let got: Vec<Value> = events(&fwd)
        .into_iter()
        .map(|e| e["record"].clone())
        .collect();
    assert_eq!(got, recs, "every record over TLS, in order\n{err}");
    // A receiver whose certificate the CA given did not sign gets nothing; the records wait
    // in the spool for the next start.
    let (status, _, err) = read("other.pem", "spool-other");
    assert!(status.success(), "{err}");
    assert_eq!(events(&fwd).len(), 10, "nothing more: {err}");
    assert!(
        err.contains("certificate") || err.contains("Certificate"),
        "{err}"
    );
    assert!(err.contains("stay in the Forward spool"), "{err}");
}
