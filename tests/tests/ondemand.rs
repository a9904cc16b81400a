//! Packet capture on request (pcapdaemon), end to end: a real redis-server and a local S3
//! server (moto) on the receiving namespace's loopback, requests published with redis-cli or
//! posted to the HTTP API, ping and UDP traffic from the other namespace. Every file must open
//! in tshark and hold exactly the filtered packets up to the limit (checked against tcpdump on
//! the same interface); each limit ends a capture; bad requests are rejected and counted while
//! the agent keeps running.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use devourer_tests::*;
use serde_json::Value;

const TOKEN: &str = "s3cret-token-of-32-bytes-or-more";
const NODE: &str = "test-node";
const REDIS_PASSWORD: &str = "redis-pw-7731";

/// redis-server on `ns`'s loopback, with a password, answering.
fn redis_server(ns: &Netns) -> Bg {
    let mut redis = ns.cmd("redis-server");
    redis
        .args([
            "--port",
            "6379",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--requirepass", REDIS_PASSWORD])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let redis = Bg::spawn(redis, "redis-server");
    let up = wait_for(Duration::from_secs(10), || {
        ns.cmd("redis-cli")
            .args([
                "-p",
                "6379",
                "--no-auth-warning",
                "-a",
                REDIS_PASSWORD,
                "ping",
            ])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
    });
    assert!(up, "redis-server answering");
    redis
}

struct Od {
    link: Link,
    dir: TempDir,
    redis: Option<Bg>,
    /// Servers started before the agent (a Kafka broker).
    servers: Vec<Bg>,
    _discard: Bg,
    agent: Option<Bg>,
    log: PathBuf,
}

impl Od {
    /// moto (S3 and SQS) on B's loopback, port 5000, with the test credentials' account.
    fn moto(&self) -> Bg {
        let mut moto = self.link.b.cmd("moto_server");
        moto.args(["-H", "127.0.0.1", "-p", "5000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Bg::spawn(moto, "moto_server")
    }

    /// redis-server on B's loopback, then the agent on B's veth end with capture on request:
    /// `[capture]` limits from `limits` (TOML lines), Redis, the API with a token, an alias.
    fn new(limits: &str, env: &[(&str, &str)]) -> Self {
        Self::with(limits, "", env)
    }

    /// [`Od::new`] with more `[capture.*]` tables (upload destinations).
    fn with(limits: &str, tables: &str, env: &[(&str, &str)]) -> Self {
        Self::build(limits, tables, env, |_| Vec::new())
    }

    /// [`Od::with`], with servers `before` starts in B before the agent.
    fn build(
        limits: &str,
        tables: &str,
        env: &[(&str, &str)],
        before: impl FnOnce(&Netns) -> Vec<Bg>,
    ) -> Self {
        let link = Link::new();
        let dir = TempDir::new("ondemand");
        let redis = redis_server(&link.b);
        let servers = before(&link.b);
        // A UDP sink on B's discard port, so the UDP traffic below draws no ICMP errors.
        let mut discard = link.b.cmd("python3");
        discard.args([
            "-c",
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',9))\nwhile True: s.recv(65536)",
        ]);
        let discard = Bg::spawn(discard, "udp discard");
        std::fs::write(dir.path("token"), format!("{TOKEN}\n")).unwrap();
        let config = format!(
            "[capture]\n{limits}\nlocal_dir = \"{caps}\"\nretry_base = \"100ms\"\nretry_max = \"200ms\"\nupload_attempts = 2\n\
             [[capture.interface]]\nname = \"{ifb}\"\nalias = [\"public\"]\n{tables}\n\
             [capture.redis]\nurl = \"redis://:{REDIS_PASSWORD}@127.0.0.1:6379\"\nping_interval = \"500ms\"\n\
             [api]\naddr = \"127.0.0.1:9403\"\ntoken_file = \"{token}\"\n",
            caps = dir.path("caps").display(),
            ifb = link.if_b,
            token = dir.path("token").display(),
        );
        std::fs::write(dir.path("devourer.toml"), config).unwrap();
        let log = dir.path("agent.log");
        let cfg = dir.path("devourer.toml");
        let agent = start_capture_env(
            &link.b,
            &[
                "--config",
                cfg.to_str().unwrap(),
                "-i",
                &link.if_b,
                "--agent-name",
                NODE,
                "--metrics-addr",
                "127.0.0.1:9402",
            ],
            None,
            &log,
            env,
        );
        let od = Self {
            link,
            dir,
            redis: Some(redis),
            servers,
            _discard: discard,
            agent: Some(agent),
            log,
        };
        let subscribed = wait_for(Duration::from_secs(10), || {
            od.try_metric("devourer_capture_redis_subscribed", "") == Some(1)
        });
        assert!(subscribed, "{}", od.log_text());
        od
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn caps(&self) -> PathBuf {
        self.dir.path("caps")
    }

    fn publish(&self, msg: &str) {
        let out = run(self
            .link
            .b
            .cmd("redis-cli")
            .args(["-p", "6379", "--no-auth-warning", "-a", REDIS_PASSWORD])
            .args(["PUBLISH", "capture", msg]));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "1",
            "one subscriber"
        );
    }

    /// curl in B; returns (HTTP status, body).
    fn http(&self, args: &[&str]) -> (u16, String) {
        let out = run(self
            .link
            .b
            .cmd("curl")
            .args(["-s", "-w", "\n%{http_code}"])
            .args(args));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap(), body.to_owned())
    }

    fn post(&self, request: &str, token: &str) -> (u16, Value) {
        let auth = format!("Authorization: Bearer {token}");
        let (code, body) = self.http(&[
            "-H",
            &auth,
            "--data-binary",
            request,
            "http://127.0.0.1:9403/captures",
        ]);
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Posts a request and waits for its capture to finish; returns its status.
    fn capture(&self, request: &str, traffic: impl FnOnce()) -> Value {
        let (code, body) = self.post(request, TOKEN);
        assert_eq!(code, 202, "{body}\n{}", self.log_text());
        let id = body["id"].as_str().unwrap().to_owned();
        // The API answers once the capture listens: traffic may start right away.
        assert_eq!(body["listening"], true, "{body}");
        traffic();
        let auth = format!("Authorization: Bearer {TOKEN}");
        let url = format!("http://127.0.0.1:9403/captures/{id}");
        let mut status = Value::Null;
        let done = wait_for(Duration::from_secs(20), || {
            status =
                serde_json::from_str(&self.http(&["-H", &auth, &url]).1).unwrap_or(Value::Null);
            status["state"] != "running"
        });
        assert!(
            done,
            "capture {id} still running: {status}\n{}",
            self.log_text()
        );
        status
    }

    fn metric(&self, name: &str, label: &str) -> u64 {
        self.try_metric(name, label).unwrap_or(0)
    }

    /// A metric's value, `None` while the endpoint does not answer.
    fn try_metric(&self, name: &str, label: &str) -> Option<u64> {
        let out = self
            .link
            .b
            .cmd("curl")
            .args(["-sf", "http://127.0.0.1:9402/metrics"])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let v = text
            .lines()
            .find(|l| l.starts_with(name) && l.contains(label))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        Some(v as u64)
    }

    /// `count` pings from A to B, `interval` seconds apart, `size` bytes of payload.
    fn ping(&self, count: u32, interval: f64, size: u32) {
        self.link.a.sh(&format!(
            "ping -q -c {count} -i {interval} -s {size} -W 1 {} >/dev/null || true",
            self.link.ip4_b
        ));
    }

    /// UDP datagrams from A to B's discard port, which the filters below exclude.
    fn udp(&self, count: u32) {
        self.link.a.sh(&format!(
            "python3 -c \"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range({count}):
    s.sendto(b'x' * 64, ('{}', 9))
\"",
            self.link.ip4_b
        ));
    }
}

impl Drop for Od {
    fn drop(&mut self) {
        if let Some(a) = self.agent.take() {
            a.stop(libc::SIGTERM, Duration::from_secs(20));
        }
    }
}

/// (frame count, protocols) of a capture file as tshark reads it.
fn tshark_frames(file: &Path) -> Vec<String> {
    let out = run(Command::new("tshark").arg("-r").arg(file).args([
        "-n",
        "-T",
        "fields",
        "-e",
        "frame.protocols",
    ]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The frames of a pcap file, as bytes.
fn frames(file: &Path) -> Vec<Vec<u8>> {
    let mut r = pcap_file::pcap::PcapReader::new(std::fs::File::open(file).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        out.push(p.unwrap().data.into_owned());
    }
    out
}

#[test]
fn a_redis_request_captures_exactly_the_filtered_packets_up_to_the_limit() {
    if !require_root("a_redis_request_captures_exactly_the_filtered_packets_up_to_the_limit") {
        return;
    }
    let od = Od::new("max_packets = 1000", &[]);
    let oracle = od.dir.path("oracle.pcap");
    let dump = tcpdump(&od.link.b, &od.link.if_b, &oracle);
    od.publish(r#"{"nodere":"^test-","alias":["public"],"bpf":"icmp","packets":6,"alertid":7,"logrequest":true}"#);
    // A request for another node is ignored.
    od.publish(r#"{"node":"elsewhere","interface":["lo"],"packets":1}"#);
    std::thread::sleep(Duration::from_millis(300));
    std::thread::scope(|s| {
        s.spawn(|| od.udp(200));
        od.ping(10, 0.05, 56);
    });
    let written = wait_for(Duration::from_secs(10), || {
        std::fs::read_dir(od.caps()).is_ok_and(|d| d.count() == 1)
    });
    assert!(written, "{}", od.log_text());
    dump.stop(libc::SIGINT, Duration::from_secs(10));
    let file = std::fs::read_dir(od.caps())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let name = file.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        name.starts_with(&format!("{NODE}_{}_7_", od.link.if_b)) && name.ends_with("Z.pcap"),
        "{name}"
    );
    let protos = tshark_frames(&file);
    assert_eq!(protos.len(), 6, "{protos:?}");
    assert!(protos.iter().all(|p| p.contains(":ip:icmp")), "{protos:?}");
    // Exactly packets tcpdump saw on the interface, in order, with nothing in between.
    let ours = frames(&file);
    let seen = frames(&oracle);
    let icmp: Vec<&Vec<u8>> = seen.iter().filter(|f| f.get(23) == Some(&1)).collect();
    let at = icmp
        .iter()
        .position(|f| **f == ours[0])
        .expect("first packet in tcpdump's capture");
    for (i, f) in ours.iter().enumerate() {
        assert_eq!(icmp.get(at + i).copied(), Some(f), "packet {i}");
    }
    assert_eq!(
        od.metric("devourer_capture_requests_total", "other_node"),
        1
    );
    assert_eq!(
        od.metric("devourer_capture_requests_total", "\"accepted\""),
        1
    );
    assert_eq!(od.metric("devourer_captured_packets_total", ""), 6);
}

#[test]
fn every_limit_ends_a_capture_and_over_limit_requests_are_clamped() {
    if !require_root("every_limit_ends_a_capture_and_over_limit_requests_are_clamped") {
        return;
    }
    let od = Od::new("max_duration = 2\nmax_timeout = 30\n", &[]);
    let iface = od.link.if_b.clone();
    let req = |extra: &str| {
        format!(r#"{{"node":"{NODE}","interface":["{iface}"],"bpf":"icmp",{extra}}}"#)
    };

    // bytes: 400-byte pings make 442-byte frames; the third passes 1000 bytes of file.
    let s = od.capture(&req(r#""bytes":1000"#), || od.ping(6, 0.05, 400));
    assert_eq!(
        (s["state"].as_str(), s["files"][0]["stopped_by"].as_str()),
        (Some("done"), Some("bytes")),
        "{s}"
    );
    assert_eq!(s["files"][0]["packets"], 3, "{s}");

    // duration: a steady ping for longer than the request's one second.
    let t0 = Instant::now();
    let s = od.capture(&req(r#""duration":1"#), || od.ping(40, 0.05, 56));
    assert_eq!(s["files"][0]["stopped_by"], "duration", "{s}");
    assert!(t0.elapsed() < Duration::from_secs(10));

    // An over-limit duration is clamped to max_duration (2 s).
    let s = od.capture(&req(r#""duration":7200"#), || od.ping(60, 0.05, 56));
    assert_eq!(
        (
            s["files"][0]["stopped_by"].as_str(),
            s["duration_secs"].as_f64()
        ),
        (Some("duration"), Some(2.0)),
        "{s}"
    );
    assert!(
        s["clamped"]
            .as_array()
            .unwrap()
            .contains(&"duration".into()),
        "{s}"
    );

    // timeout: one exchange, then quiet for longer than the idle timeout.
    let s = od.capture(&req(r#""timeout":1"#), || od.ping(1, 0.2, 56));
    assert_eq!(s["files"][0]["stopped_by"], "timeout", "{s}");
    assert_eq!(s["files"][0]["packets"], 2, "request and reply: {s}");

    // packets.
    let s = od.capture(&req(r#""packets":4"#), || od.ping(10, 0.05, 56));
    assert_eq!(s["files"][0]["stopped_by"], "packets", "{s}");
    assert_eq!(s["files"][0]["packets"], 4, "{s}");
    let path = s["files"][0]["local_path"].as_str().unwrap();
    assert_eq!(tshark_frames(Path::new(path)).len(), 4);
}

#[test]
fn s3_uploads_reach_the_bucket_and_a_dead_endpoint_falls_back_to_local() {
    if !require_root("s3_uploads_reach_the_bucket_and_a_dead_endpoint_falls_back_to_local") {
        return;
    }
    // The default destination (moto), and one that nothing serves.
    let od = Od::with(
        "",
        "[capture.s3]\nbucket = \"pcaps\"\nendpoint = \"http://127.0.0.1:5000\"\nallow_http = true\n\
         [[capture.destination]]\nname = \"dead\"\nbucket = \"pcaps\"\nendpoint = \"http://127.0.0.1:1\"\nallow_http = true\n\
         [[capture.destination]]\nname = \"public\"\nbucket = \"pcaps\"\nendpoint = \"http://127.0.0.1:5000\"\nallow_http = true\nacl = \"public-read\"\n",
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ],
    );
    let _moto = od.moto();
    let up = wait_for(Duration::from_secs(30), || {
        od.link
            .b
            .cmd("curl")
            .args(["-sf", "-X", "PUT", "http://127.0.0.1:5000/pcaps"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(up, "moto S3 server with bucket pcaps");
    let iface = od.link.if_b.clone();

    let s = od.capture(
        &format!(r#"{{"node":"any","interface":["{iface}"],"bpf":"icmp","packets":3,"alertid":11,"tags":"blah,tagme","customer":"importantcustomer","bucket":"pcaps","folder":"alerts","endpoint":"http://127.0.0.1:5000","region":"us-east-1"}}"#),
        || od.ping(5, 0.05, 56),
    );
    assert_eq!(s["state"], "done", "{s}\n{}", od.log_text());
    assert_eq!(
        (s["tags"].as_str(), s["customer"].as_str()),
        (Some("blah,tagme"), Some("importantcustomer"))
    );
    let url = s["files"][0]["s3_url"].as_str().unwrap();
    let key = url.strip_prefix("s3://pcaps/").unwrap();
    assert!(
        key.starts_with(&format!("alerts/{NODE}_{iface}_11_")),
        "{key}"
    );
    // NODE_IFACE_ALERTID_TIME_ID.pcap: the capture's id keeps a replayed alertid from
    // overwriting an object, in the same second too.
    let id = s["id"].as_str().unwrap();
    assert!(key.ends_with(&format!("Z_{id}.pcap")), "{key}");
    let again = od.capture(
        &format!(r#"{{"node":"any","interface":["{iface}"],"bpf":"icmp","packets":1,"alertid":11,"folder":"alerts"}}"#),
        || od.ping(2, 0.05, 56),
    );
    let key2 = again["files"][0]["s3_url"].as_str().unwrap();
    assert_ne!(
        key2.strip_prefix("s3://pcaps/").unwrap(),
        key,
        "a second object"
    );
    // local_dir is configured, so a local copy is kept as well.
    assert!(
        s["files"][0]["local_path"].is_string(),
        "local copy too: {s}"
    );
    assert_eq!(od.metric("devourer_captures_total", "\"uploaded\""), 2);
    let (code, _) = od.http(&[
        "--aws-sigv4",
        "aws:amz:us-east-1:s3",
        "--user",
        "testing:testing",
        "-o",
        od.dir.path("down.pcap").to_str().unwrap(),
        &format!("http://127.0.0.1:5000/pcaps/{key}"),
    ]);
    assert_eq!(code, 200);
    let protos = tshark_frames(&od.dir.path("down.pcap"));
    assert_eq!(protos.len(), 3, "{protos:?}");
    // The object's ACL (GetObjectAcl): the owner alone on the default destination.
    let object_acl = |key: &str| {
        let (code, body) = od.http(&[
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            "testing:testing",
            &format!("http://127.0.0.1:5000/pcaps/{key}?acl"),
        ]);
        assert_eq!(code, 200, "{body}");
        body
    };
    assert!(!object_acl(key).contains("AllUsers"), "private by default");

    // A destination with a canned ACL: applied to the upload, whatever the request says.
    let s = od.capture(
        &format!(r#"{{"node":"any","interface":["{iface}"],"bpf":"icmp","packets":2,"destination":"public","acl":"private"}}"#),
        || od.ping(3, 0.05, 56),
    );
    assert_eq!(s["state"], "done", "{s}\n{}", od.log_text());
    let url = s["files"][0]["s3_url"].as_str().unwrap();
    let acl = object_acl(url.strip_prefix("s3://pcaps/").unwrap());
    assert!(
        acl.contains("http://acs.amazonaws.com/groups/global/AllUsers") && acl.contains("READ"),
        "public-read applied: {acl}"
    );

    // Nothing listens on port 1: two failed attempts, then the file is kept locally.
    let s = od.capture(
        &format!(r#"{{"node":"any","interface":["{iface}"],"bpf":"icmp","packets":2,"destination":"dead"}}"#),
        || od.ping(3, 0.05, 56),
    );
    assert_eq!(s["state"], "failed", "{s}");
    let f = &s["files"][0];
    assert!(f["error"].as_str().unwrap().starts_with("upload"), "{f}");
    let local = f["local_path"].as_str().expect("kept locally");
    assert_eq!(tshark_frames(Path::new(local)).len(), 2);
    assert_eq!(
        od.metric("devourer_captures_total", "upload_failed_kept_locally"),
        1
    );
}

/// A TCP listener on B's loopback that counts the connections it gets (in a file).
fn trap(od: &Od, port: u16) -> (Bg, PathBuf) {
    let hits = od.dir.path("trap-hits");
    std::fs::write(&hits, "0").unwrap();
    let mut t = od.link.b.cmd("python3");
    t.args([
        "-c",
        &format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('127.0.0.1',{port}))\ns.listen(16)\nn=0\nwhile True:\n c,_=s.accept()\n n+=1\n \
             open('{}','w').write(str(n))\n c.close()",
            hits.display()
        ),
    ]);
    let bg = Bg::spawn(t, "trap endpoint");
    let up = wait_for(Duration::from_secs(5), || {
        od.link
            .b
            .cmd("sh")
            .args(["-c", &format!("ss -ltn | grep -q 127.0.0.1:{port}")])
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(up, "trap listening");
    (bg, hits)
}

/// Capability bits in force in every thread of `pid`, by thread name.
fn thread_caps(pid: i32) -> Vec<(String, u64)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .map(|st| {
            let field = |k: &str| {
                st.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            let eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
            (field("Name:"), eff)
        })
        .collect()
}

#[test]
fn requests_cannot_steer_uploads_multiply_limits_or_forge_logs_and_captures_stay_private() {
    if !require_root(
        "requests_cannot_steer_uploads_multiply_limits_or_forge_logs_and_captures_stay_private",
    ) {
        return;
    }
    let od = Od::new("", &[]);
    let iface = od.link.if_b.clone();
    let (_trap, hits) = trap(&od, 8080);

    // Upload destinations are the administrator's: a request naming a server of its own is
    // refused (API and Redis), and the trap hears nothing.
    let steer = format!(
        r#"{{"node":"any","interface":["{iface}"],"packets":1,"bucket":"loot","endpoint":"http://127.0.0.1:8080"}}"#
    );
    let (code, body) = od.post(&steer, TOKEN);
    assert_eq!(
        (code, body["reason"].as_str()),
        (400, Some("bad_destination")),
        "{body}"
    );
    od.publish(&steer);
    od.publish(&format!(
        r#"{{"node":"any","interface":["{iface}"],"packets":1,"endpoint":"127.0.0.1:8080"}}"#
    ));
    let counted = wait_for(Duration::from_secs(10), || {
        od.metric("devourer_capture_requests_total", "bad_destination") == 3
    });
    assert!(counted, "{}", od.log_text());

    // The token is needed on loopback too, before any body is read; a body past the limit is
    // refused and counted, over Redis as well.
    let (code, _) = od.http(&["--data-binary", &steer, "http://127.0.0.1:9403/captures"]);
    assert_eq!(code, 401, "no token");
    let (code, _) = od.http(&["http://127.0.0.1:9403/captures/x"]);
    assert_eq!(code, 401, "no token for a status either");
    let huge = format!(
        r#"{{"node":"any","interface":["{iface}"],"tags":"{}"}}"#,
        "x".repeat(70_000)
    );
    let big = od.dir.path("big.json");
    std::fs::write(&big, &huge).unwrap();
    let (code, _) = od.http(&[
        "-H",
        &format!("Authorization: Bearer {TOKEN}"),
        "--data-binary",
        &format!("@{}", big.display()),
        "http://127.0.0.1:9403/captures",
    ]);
    assert_eq!(code, 413);
    od.publish(&huge);
    let counted = wait_for(Duration::from_secs(10), || {
        od.metric("devourer_capture_requests_total", "too_large") == 2
    });
    assert!(counted, "{}", od.log_text());

    // A newline in a request field forges no log line.
    od.publish(r#"{"nodere":"(\nFORGED-LINE from nodere","interface":["lo"]}"#);
    od.publish(
        r#"{"node":"any","interface":["lo"],"destination":"x\nFORGED-LINE from destination"}"#,
    );
    od.publish(r#"{"node":"any","interface":["no\nFORGED-LINE from interface"]}"#);
    let seen = wait_for(Duration::from_secs(10), || {
        od.metric("devourer_capture_requests_total", "bad_node") == 1
            && od.metric("devourer_capture_requests_total", "bad_destination") == 4
            && od.metric("devourer_capture_requests_total", "bad_interface") == 1
    });
    assert!(seen, "{}", od.log_text());

    // One interface named 64 times is one capture, one file; every thread of the agent,
    // the capture's own included, holds only CAP_BPF, CAP_NET_RAW and (conntrack lookups for
    // NAT'd connections) CAP_NET_ADMIN.
    let many = serde_json::json!(vec![iface.clone(); 64]).to_string();
    let pid = od.agent.as_ref().unwrap().pid();
    let mut during = Vec::new();
    let s = od.capture(
        &format!(r#"{{"node":"any","interface":{many},"bpf":"icmp","packets":3}}"#),
        || {
            during = thread_caps(pid);
            od.ping(5, 0.05, 56);
        },
    );
    assert_eq!(s["state"], "done", "{s}");
    assert_eq!(s["interfaces"], serde_json::json!([iface]), "{s}");
    assert_eq!(s["files"].as_array().unwrap().len(), 1, "{s}");
    let kept = (1u64 << 39) | (1u64 << 13) | (1u64 << 12);
    assert!(
        during.len() >= 3,
        "main, output and capture threads: {during:?}"
    );
    for (name, eff) in &during {
        assert_eq!(*eff, kept, "thread {name} holds {eff:#x}");
    }
    assert!(
        od.log_text()
            .contains(r#"kept=["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF"]"#),
        "{}",
        od.log_text()
    );

    // The capture file is for root alone.
    let file = PathBuf::from(s["files"][0]["local_path"].as_str().unwrap());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(file.parent().unwrap()).unwrap().mode() & 0o777,
        0o700
    );
    let other = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!other.success(), "another user cannot read the capture");

    let log = od.log_text();
    let forged: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("FORGED-LINE"))
        .collect();
    assert!(forged.is_empty(), "forged log lines: {forged:?}\n{log}");
    assert!(
        log.contains("FORGED-LINE from nodere"),
        "the field is logged, escaped: {log}"
    );
    assert_eq!(
        std::fs::read_to_string(&hits).unwrap(),
        "0",
        "the trap got a connection"
    );
}

#[test]
fn bad_requests_are_rejected_and_counted_and_the_agent_keeps_running_through_a_redis_restart() {
    if !require_root(
        "bad_requests_are_rejected_and_counted_and_the_agent_keeps_running_through_a_redis_restart",
    ) {
        return;
    }
    let od = Od::new("", &[]);
    let iface = od.link.if_b.clone();
    od.publish("not json at all");
    od.publish(r#"{"node":"any","interface":["lo"],"packets":"many"}"#);
    od.publish(&format!(
        r#"{{"node":"any","interface":["{iface}"],"bpf":"tcp prot 80"}}"#
    ));
    od.publish(&format!(
        r#"{{"node":"any","nodere":".*","interface":["{iface}"]}}"#
    ));
    od.publish(r#"{"node":"any","alias":["nowhere"]}"#);
    od.publish(&format!(
        r#"{{"node":"any","interface":["{iface}"],"packets":1,"colour":"blue"}}"#
    ));
    let counted = wait_for(Duration::from_secs(10), || {
        od.metric("devourer_capture_requests_total", "bad_json") == 2
            && od.metric("devourer_capture_requests_total", "bad_filter") == 1
            && od.metric("devourer_capture_requests_total", "bad_node") == 1
            && od.metric("devourer_capture_requests_total", "bad_interface") == 1
            && od.metric("devourer_capture_requests_total", "\"accepted\"") == 1
    });
    assert!(counted, "{}", od.log_text());
    assert!(od.log_text().contains("unknown fields ignored"));

    // The API: a wrong token is refused, a bad request is a 400 with the reason.
    let (code, _) = od.post(
        &format!(r#"{{"node":"any","interface":["{iface}"]}}"#),
        "wrong",
    );
    assert_eq!(code, 401);
    let (code, body) = od.post(r#"{"node":"any","interface":["no-such-if"]}"#, TOKEN);
    assert_eq!(
        (code, body["reason"].as_str()),
        (400, Some("bad_interface")),
        "{body}"
    );
    let (code, _) = od.http(&[
        "-H",
        &format!("Authorization: Bearer {TOKEN}"),
        "http://127.0.0.1:9403/captures/nope",
    ]);
    assert_eq!(code, 404);

    // Still capturing, and still taking requests.
    let s = od.capture(
        &format!(r#"{{"node":"any","interface":["{iface}"],"bpf":"icmp","packets":2}}"#),
        || od.ping(4, 0.05, 56),
    );
    assert_eq!(s["state"], "done", "{s}");

    // Redis goes away and comes back: the agent resubscribes (with the password) and takes
    // requests again.
    let mut od = od;
    od.redis
        .take()
        .unwrap()
        .stop(libc::SIGTERM, Duration::from_secs(10));
    // Waits on the agent's state (the subscription gauge), not on one wording of a log line:
    // the end of the stream or the keepalive ping may notice first.
    let noticed = wait_for(Duration::from_secs(10), || {
        od.try_metric("devourer_capture_redis_subscribed", "") == Some(0)
    });
    assert!(noticed, "{}", od.log_text());
    od.redis = Some(redis_server(&od.link.b));
    // Subscribed `n` times in all, then a published request is captured.
    let resubscribed_and_serving = |od: &Od, n: usize| {
        let again = wait_for(Duration::from_secs(15), || {
            od.try_metric("devourer_capture_redis_subscriptions_total", "") == Some(n as u64)
                && od.try_metric("devourer_capture_redis_subscribed", "") == Some(1)
        });
        assert!(again, "{}", od.log_text());
        let files = || std::fs::read_dir(od.caps()).map(|d| d.count()).unwrap_or(0);
        let before = files();
        od.publish(&format!(
            r#"{{"node":"any","interface":["{iface}"],"bpf":"icmp","packets":2}}"#
        ));
        std::thread::sleep(Duration::from_millis(500));
        od.ping(4, 0.05, 56);
        assert!(
            wait_for(Duration::from_secs(10), || files() == before + 1),
            "{}",
            od.log_text()
        );
    };
    resubscribed_and_serving(&od, 2);

    // A server that stops answering (SIGSTOP: the connection stays open, silent) is noticed
    // by the keepalive ping; once it answers again the agent is subscribed again.
    let redis = od.redis.as_ref().unwrap();
    redis.signal(libc::SIGSTOP);
    let noticed = wait_for(Duration::from_secs(10), || {
        od.try_metric("devourer_capture_redis_subscribed", "") == Some(0)
    });
    redis.signal(libc::SIGCONT);
    assert!(noticed, "{}", od.log_text());
    resubscribed_and_serving(&od, 3);

    let log = od.log_text();
    assert!(log.contains("capturing") && !log.contains("panicked"));
    assert!(
        !log.contains(REDIS_PASSWORD),
        "the Redis password stays out of the log"
    );
}

#[test]
fn a_tls_redis_with_a_private_ca_delivers_requests() {
    if !require_root("a_tls_redis_with_a_private_ca_delivers_requests") {
        return;
    }
    let link = Link::new();
    let dir = TempDir::new("ondemand-tls");
    // A private CA and a server certificate for 127.0.0.1, made with openssl.
    sh(&format!(
        "cd {d} && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca 2>/dev/null \
         && openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 2>/dev/null \
         && printf 'subjectAltName=IP:127.0.0.1\\n' > ext \
         && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext 2>/dev/null",
        d = dir.path("").display()
    ));
    let pem = |f: &str| dir.path(f).display().to_string();
    let mut redis = link.b.cmd("redis-server");
    redis
        .args([
            "--port",
            "0",
            "--tls-port",
            "6380",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args([
            "--tls-cert-file",
            &pem("srv.pem"),
            "--tls-key-file",
            &pem("srv.key"),
        ])
        .args([
            "--tls-ca-cert-file",
            &pem("ca.pem"),
            "--tls-auth-clients",
            "no",
        ])
        .args(["--requirepass", REDIS_PASSWORD])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _redis = Bg::spawn(redis, "redis-server with TLS");
    let cli = || {
        let mut c = link.b.cmd("redis-cli");
        c.args([
            "--tls",
            "--cacert",
            &pem("ca.pem"),
            "-p",
            "6380",
            "--no-auth-warning",
        ])
        .args(["-a", REDIS_PASSWORD]);
        c
    };
    let up = wait_for(Duration::from_secs(10), || {
        cli()
            .arg("ping")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
    });
    assert!(up, "redis-server with TLS answering");

    let log = dir.path("agent.log");
    let url = format!("rediss://:{REDIS_PASSWORD}@127.0.0.1:6380");
    let caps = dir.path("caps");
    let agent = start_capture_env(
        &link.b,
        &[
            "-i",
            &link.if_b,
            "--agent-name",
            NODE,
            "--metrics-addr",
            "off",
        ],
        None,
        &log,
        &[
            ("DEVOURER_CAPTURE_REDIS", url.as_str()),
            ("DEVOURER_CAPTURE_DIR", caps.to_str().unwrap()),
            // The private CA, through the standard variable rustls' native roots honour.
            ("SSL_CERT_FILE", pem("ca.pem").as_str()),
        ],
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(10), || log_text()
            .contains("subscribed")),
        "{}",
        log_text()
    );
    let req = format!(
        r#"{{"node":"{NODE}","interface":["{}"],"bpf":"icmp","packets":2}}"#,
        link.if_b
    );
    let out = run(cli().args(["PUBLISH", "capture", &req]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "one subscriber"
    );
    std::thread::sleep(Duration::from_millis(500));
    link.a.sh(&format!(
        "ping -q -c 3 -i 0.1 -W 1 {} >/dev/null || true",
        link.ip4_b
    ));
    let written = wait_for(Duration::from_secs(10), || {
        std::fs::read_dir(&caps).is_ok_and(|d| d.count() == 1)
    });
    assert!(written, "{}", log_text());
    let file = std::fs::read_dir(&caps)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(tshark_frames(&file).len(), 2);
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    assert!(res.status.success(), "{}", log_text());
    assert!(!log_text().contains(REDIS_PASSWORD));
}

/// Calls moto's SQS (query protocol, signed as the AWS CLI would) from namespace B.
fn sqs(od: &Od, params: &[(&str, &str)]) -> String {
    let mut cmd = od.link.b.cmd("curl");
    cmd.args([
        "-s",
        "--aws-sigv4",
        "aws:amz:us-east-1:sqs",
        "--user",
        "testing:testing",
    ]);
    for (k, v) in params {
        cmd.args(["--data-urlencode", &format!("{k}={v}")]);
    }
    cmd.arg("http://127.0.0.1:5000/");
    // Not `run`: the server may not be up yet (the caller waits for an answer).
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn sqs_requests_from_this_nodes_queue_are_captured_and_deleted() {
    if !require_root("sqs_requests_from_this_nodes_queue_are_captured_and_deleted") {
        return;
    }
    // One queue per node: {node} in the URL is the agent's name.
    let od = Od::with(
        "",
        "[capture.sqs]\nurl = \"http://127.0.0.1:5000/123456789012/capture-{node}\"\n\
         endpoint = \"http://127.0.0.1:5000\"\nregion = \"us-east-1\"\nwait_seconds = 1\nchunk_size = 10\n",
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ],
    );
    let _moto = od.moto();
    let queue = format!("capture-{NODE}");
    let created = wait_for(Duration::from_secs(30), || {
        sqs(&od, &[("Action", "CreateQueue"), ("QueueName", &queue)]).contains(&queue)
    });
    assert!(created, "moto SQS queue {queue}");
    let url = format!("http://127.0.0.1:5000/123456789012/{queue}");
    let iface = od.link.if_b.clone();
    let send = |body: &str| {
        let out = sqs(
            &od,
            &[
                ("Action", "SendMessage"),
                ("QueueUrl", &url),
                ("MessageBody", body),
            ],
        );
        assert!(out.contains("MessageId"), "{out}");
    };
    send("not json at all");
    send(&format!(
        r#"{{"node":"{NODE}","interface":["{iface}"],"bpf":"icmp","packets":3,"alertid":42}}"#
    ));
    let accepted = wait_for(Duration::from_secs(20), || {
        od.metric("devourer_capture_requests_total", "\"accepted\"") == 1
    });
    assert!(accepted, "{}", od.log_text());
    od.ping(5, 0.1, 56);
    let caps = od.dir.path("caps");
    let file = wait_for(Duration::from_secs(20), || {
        std::fs::read_dir(&caps).is_ok_and(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .contains(&format!("_{iface}_42_"))
            })
        })
    });
    assert!(
        file,
        "the capture's file in {}\n{}",
        caps.display(),
        od.log_text()
    );
    assert_eq!(
        od.metric("devourer_capture_requests_total", "\"bad_json\""),
        1,
        "the bad message is refused and counted"
    );
    // Both messages were deleted: nothing visible or in flight.
    let attrs = sqs(
        &od,
        &[
            ("Action", "GetQueueAttributes"),
            ("QueueUrl", &url),
            ("AttributeName.1", "All"),
        ],
    );
    for name in [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
    ] {
        let at = attrs
            .find(name)
            .unwrap_or_else(|| panic!("{name} in {attrs}"));
        assert!(
            attrs[at..]
                .split("</Value>")
                .next()
                .unwrap()
                .ends_with(">0"),
            "{name} is 0: {attrs}"
        );
    }
}

/// A filter of `n` host terms (about 18 bytes each).
fn hosts_filter(n: u32) -> String {
    (0..n)
        .map(|i| format!("host 10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256))
        .collect::<Vec<_>>()
        .join(" or ")
}

#[test]
fn a_costly_filter_is_refused_in_time_and_the_probes_answer_throughout() {
    if !require_root("a_costly_filter_is_refused_in_time_and_the_probes_answer_throughout") {
        return;
    }
    // libpcap compiles 170 host terms (3 KB) in about 0.3 s here: past a 100 ms limit.
    let od = Od::new("filter_compile_timeout = \"100ms\"", &[]);
    let iface = od.link.if_b.clone();
    let prober = Prober::start(&od.link.b, "http://127.0.0.1:9404/healthz");
    let req = |filter: &str| {
        format!(
            r#"{{"node":"any","interface":["{iface}"],"bpf":{},"packets":1}}"#,
            serde_json::json!(filter)
        )
    };
    // The issue's 17 KB filter: refused unread by its length.
    let (code, body) = od.post(&req(&hosts_filter(700)), TOKEN);
    assert_eq!(
        (code, body["reason"].as_str()),
        (400, Some("bad_filter")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("max_filter_bytes"),
        "{body}"
    );
    // Under the cap, but slow to compile: the child is killed at the limit.
    for _ in 0..3 {
        let (code, body) = od.post(&req(&hosts_filter(170)), TOKEN);
        assert_eq!(
            (code, body["reason"].as_str()),
            (400, Some("bad_filter")),
            "{body}"
        );
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("filter_compile_timeout"),
            "{body}"
        );
    }
    // A filter libpcap refuses says why; an ordinary one runs.
    let (code, body) = od.post(&req("tcp prot 80"), TOKEN);
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("syntax"), "{body}");
    let s = od.capture(&req("icmp"), || od.ping(3, 0.05, 56));
    assert_eq!(s["state"], "done", "{s}");
    let (probes, answered) = prober.stop();
    assert_eq!(answered, probes, "/healthz answered while filters compiled");
    assert_eq!(
        od.metric("devourer_capture_requests_total", "bad_filter"),
        5
    );
    // No compiler is left running.
    let left = Command::new("pgrep")
        .args(["-f", "compile-filter"])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[test]
fn requests_past_the_rate_or_the_queue_are_refused_unread_and_counted() {
    if !require_root("requests_past_the_rate_or_the_queue_are_refused_unread_and_counted") {
        return;
    }
    let od = Od::new("max_requests_per_second = 3", &[]);
    // Twenty messages in a burst, all for other nodes: at most a few tokens' worth are read.
    let msgs: String = (0..20)
        .map(|i| format!("PUBLISH capture '{{\"node\":\"other-{i}\",\"interface\":[\"lo\"]}}'\n"))
        .collect();
    run(od
        .link
        .b
        .cmd("bash")
        .arg("-c")
        .arg(format!(
            "printf %s \"$0\" | redis-cli -p 6379 --no-auth-warning -a {REDIS_PASSWORD} >/dev/null"
        ))
        .arg(&msgs));
    let counted = wait_for(Duration::from_secs(10), || {
        od.metric("devourer_capture_requests_total", "rate_limited")
            + od.metric("devourer_capture_requests_total", "other_node")
            == 20
    });
    let limited = od.metric("devourer_capture_requests_total", "rate_limited");
    assert!(
        counted && limited >= 10,
        "{limited} rate limited:\n{}",
        od.log_text()
    );
    drop(od);

    // One request may wait while the worker compiles a slow filter; the rest are refused.
    let od = Od::new(
        "max_requests_per_second = 1000\nmax_queued_requests = 1\nfilter_compile_timeout = \"100ms\"",
        &[],
    );
    let slow = format!(
        r#"{{"node":"any","interface":["lo"],"bpf":{}}}"#,
        serde_json::json!(hosts_filter(170))
    );
    let msgs: String = (0..10)
        .map(|_| format!("PUBLISH capture {}\n", serde_json::json!(slow)))
        .collect();
    run(od
        .link
        .b
        .cmd("bash")
        .arg("-c")
        .arg(format!(
            "printf %s \"$0\" | redis-cli -p 6379 --no-auth-warning -a {REDIS_PASSWORD} >/dev/null"
        ))
        .arg(&msgs));
    let counted = wait_for(Duration::from_secs(20), || {
        ["queue_full", "bad_filter", "accepted"]
            .iter()
            .map(|o| od.metric("devourer_capture_requests_total", o))
            .sum::<u64>()
            == 10
    });
    let full = od.metric("devourer_capture_requests_total", "queue_full");
    assert!(
        counted && full >= 5,
        "{full} refused by the queue:\n{}",
        od.log_text()
    );
}

#[test]
fn the_api_token_has_a_floor_and_wrong_guesses_wait_longer_each_time() {
    if !require_root("the_api_token_has_a_floor_and_wrong_guesses_wait_longer_each_time") {
        return;
    }
    let tmp = TempDir::new("token");
    std::fs::write(tmp.path("token"), "short\n").unwrap();
    std::fs::write(
        tmp.path("devourer.toml"),
        format!(
            "[capture]\nlocal_dir = \"{}\"\n[api]\ntoken_file = \"{}\"\n",
            tmp.path("caps").display(),
            tmp.path("token").display()
        ),
    )
    .unwrap();
    let out = Command::new(devourer_bin())
        .arg("--config")
        .arg(tmp.path("devourer.toml"))
        .args([
            "capture",
            "-i",
            "lo",
            "--metrics-addr",
            "off",
            "--probe-addr",
            "off",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is 5 bytes: at least 16 are required"),
        "{err}"
    );

    let od = Od::new("", &[]);
    // Wrong tokens: answered after 250 ms, then 500 ms, 1 s, 2 s (the default delays), and
    // each closes its connection.
    let t0 = Instant::now();
    for guess in ["a", "b", "c", "d"] {
        let (code, _) = od.post(r#"{"node":"any","interface":["lo"]}"#, guess);
        assert_eq!(code, 401);
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(3750),
        "four failures answered in {took:?}"
    );
    assert_eq!(
        od.metric("devourer_capture_requests_total", "unauthorized"),
        4
    );
    // The right token is not slowed down.
    let (code, body) = od.post(r#"{"node":"other","interface":["lo"]}"#, TOKEN);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn the_capture_directory_is_capped() {
    if !require_root("the_capture_directory_is_capped") {
        return;
    }
    let od = Od::new("max_local_bytes = 3000", &[]);
    let iface = od.link.if_b.clone();
    // About 1 KB: written.
    let s = od.capture(
        &format!(r#"{{"node":"any","interface":["{iface}"],"bpf":"icmp","packets":6}}"#),
        || od.ping(4, 0.05, 56),
    );
    assert_eq!(s["state"], "done", "{s}");
    // Large packets: the file would pass the cap, so it is not written (counted).
    let s = od.capture(
        &format!(r#"{{"node":"any","interface":["{iface}"],"bpf":"icmp","packets":4}}"#),
        || od.ping(4, 0.05, 1400),
    );
    assert_eq!(s["state"], "failed", "{s}");
    assert!(
        s["files"][0]["error"]
            .as_str()
            .unwrap()
            .contains("max_local_bytes"),
        "{s}"
    );
    assert_eq!(
        od.metric("devourer_limit_hits_total", "capture_max_local_bytes"),
        1
    );
    // Once the directory holds its cap, requests that would write there are refused.
    std::fs::write(od.caps().join("operator-file.pcap"), vec![0u8; 3000]).unwrap();
    let (code, body) = od.post(
        &format!(r#"{{"node":"any","interface":["{iface}"],"packets":1}}"#),
        TOKEN,
    );
    assert_eq!(
        (code, body["reason"].as_str()),
        (503, Some("local_full")),
        "{body}"
    );
}

/// tests/fake_cloudshark.py in B: CloudShark's upload API on B's loopback, port 8088.
fn cloudshark(od: &Od, token: &str, store: &Path) -> Bg {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fake_cloudshark.py");
    let mut cmd = od.link.b.cmd("python3");
    cmd.arg(script)
        .args(["8088", token])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let bg = Bg::spawn(cmd, "fake CloudShark");
    let up = wait_for(Duration::from_secs(10), || {
        od.link
            .b
            .cmd("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://127.0.0.1:8088/api/v1/{token}/info/none"))
            .output()
            .is_ok_and(|o| o.stdout == b"404")
    });
    assert!(up, "the CloudShark stand-in answers");
    bg
}

#[test]
fn cloudshark_holds_each_capture_byte_for_byte_with_its_tags_and_a_dead_one_falls_back_to_local() {
    if !require_root(
        "cloudshark_holds_each_capture_byte_for_byte_with_its_tags_and_a_dead_one_falls_back_to_local",
    ) {
        return;
    }
    const CS_TOKEN: &str = "0123456789abcdef0123456789abcdef";
    let secrets = TempDir::new("cloudshark");
    std::fs::write(secrets.path("token"), format!("{CS_TOKEN}\n")).unwrap();
    let store = secrets.path("uploads");
    std::fs::create_dir_all(&store).unwrap();
    let od = Od::with(
        "snaplength = 1500",
        &format!(
            "[capture.cloudshark]\nurl = \"http://127.0.0.1:8088/\"\ntoken_file = \"{}\"\ntimeout = 5\ntags = \"site:lab\"\nallow_http = true\n",
            secrets.path("token").display()
        ),
        &[],
    );
    let cs = cloudshark(&od, CS_TOKEN, &store);
    let iface = od.link.if_b.clone();
    let s = od.capture(
        &format!(r#"{{"node":"any","interface":["{iface}"],"bpf":"icmp","packets":3,"alertid":12,"tags":"blah,tagme"}}"#),
        || od.ping(5, 0.05, 56),
    );
    assert_eq!(s["state"], "done", "{s}\n{}", od.log_text());
    let f = &s["files"][0];
    let id = f["cloudshark_id"].as_str().expect("a CloudShark id");
    assert_eq!(
        f["cloudshark_url"],
        format!("http://127.0.0.1:8088/captures/{id}"),
        "{f}"
    );
    // What CloudShark holds is the file kept locally (local_dir is configured), byte for byte.
    let held = std::fs::read(store.join(format!("{id}.pcap"))).unwrap();
    let local = std::fs::read(f["local_path"].as_str().expect("a local copy")).unwrap();
    assert_eq!(held, local);
    assert_eq!(tshark_frames(&store.join(format!("{id}.pcap"))).len(), 3);
    // The request's tags, the configured ones, then pcapdaemon's, read back through the API.
    let (code, info) = od.http(&[&format!(
        "http://127.0.0.1:8088/api/v1/{CS_TOKEN}/info/{id}"
    )]);
    assert_eq!(code, 200, "{info}");
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        info["tags"],
        format!("blah,tagme,site:lab,node:{NODE},interface:{iface},snaplength:1500")
    );
    assert!(
        info["filename"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{NODE}_{iface}_12_")),
        "{info}"
    );
    assert_eq!(od.metric("devourer_captures_total", "\"uploaded\""), 1);
    assert!(
        !od.log_text().contains(CS_TOKEN),
        "the token is never logged"
    );

    // CloudShark gone: two failed attempts, then the file stays in the local directory.
    drop(cs);
    let s = od.capture(
        &format!(r#"{{"node":"any","interface":["{iface}"],"bpf":"icmp","packets":2}}"#),
        || od.ping(3, 0.05, 56),
    );
    assert_eq!(s["state"], "failed", "{s}");
    let f = &s["files"][0];
    assert!(
        f["error"].as_str().unwrap().starts_with("cloudshark"),
        "{f}"
    );
    assert!(f["cloudshark_id"].is_null(), "{f}");
    let local = f["local_path"].as_str().expect("kept locally");
    assert_eq!(tshark_frames(Path::new(local)).len(), 2);
    assert_eq!(
        od.metric("devourer_captures_total", "upload_failed_kept_locally"),
        1
    );
    assert!(!od.log_text().contains(CS_TOKEN), "nor in errors");
}

/// The capture file of alert `alertid` in the capture directory, once there.
fn capture_of(od: &Od, alertid: u32) -> PathBuf {
    let prefix = format!("{NODE}_{}_{alertid}_", od.link.if_b);
    let mut found = None;
    let written = wait_for(Duration::from_secs(10), || {
        found = std::fs::read_dir(od.caps()).ok().and_then(|d| {
            d.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with(&prefix)
            })
        });
        found.is_some()
    });
    assert!(written, "capture {alertid}: {}", od.log_text());
    found.unwrap()
}

#[test]
fn a_kafka_request_on_any_partition_captures_as_a_redis_one_and_a_broker_restart_is_retried() {
    if !require_root(
        "a_kafka_request_on_any_partition_captures_as_a_redis_one_and_a_broker_restart_is_retried",
    ) {
        return;
    }
    use devourer_tests::kafka::{publish, tansu};
    let od = Od::build(
        "max_packets = 1000",
        "[capture.kafka]\nbrokers = [\"127.0.0.1:19092\"]\ntimeout = \"2s\"\nmax_wait = \"200ms\"\nmetadata_interval = \"1s\"\n",
        &[],
        |ns| vec![tansu(ns, 19092)],
    );
    let connected = |up: u64| {
        wait_for(Duration::from_secs(15), || {
            od.try_metric("devourer_capture_kafka_connected", "") == Some(up)
        })
    };
    assert!(connected(1), "reading the topic: {}", od.log_text());
    let request = |alertid: u32| {
        format!(
            r#"{{"nodere":"^test-","alias":["public"],"bpf":"icmp","packets":6,"alertid":{alertid}}}"#
        )
    };
    // Each request on a different partition of the auto-created topic (4 partitions), one
    // for another node, one that is no text; then the same request over Redis.
    let kafka = |partition: u32, msg: &[u8]| publish(&od.link.b, 19092, "capture", partition, msg);
    kafka(0, br#"{"node":"elsewhere","interface":["lo"],"packets":1}"#);
    kafka(1, &[0xff, 0xfe, 0x00]);
    let mut files = Vec::new();
    for (alertid, via) in [(31, "kafka 3"), (32, "redis"), (33, "kafka 2")] {
        match via {
            "redis" => od.publish(&request(alertid)),
            "kafka 3" => kafka(3, request(alertid).as_bytes()),
            _ => {
                // The broker restarts (its log lost): the trigger retries, counted, and reads
                // the new log from its start.
                let broker = od.servers.first().unwrap();
                broker.signal(libc::SIGKILL);
                assert!(connected(0), "the broker's loss is seen: {}", od.log_text());
                let _again = tansu(&od.link.b, 19092);
                assert!(connected(1), "read again: {}", od.log_text());
                kafka(2, request(alertid).as_bytes());
                std::thread::sleep(Duration::from_millis(500));
                od.ping(10, 0.05, 56);
                files.push(capture_of(&od, alertid));
                continue;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        od.ping(10, 0.05, 56);
        files.push(capture_of(&od, alertid));
    }
    // The same capture, whichever way the request came: six ICMP packets of the interface.
    for f in &files {
        let protos = tshark_frames(f);
        assert_eq!(protos.len(), 6, "{}: {protos:?}", f.display());
        assert!(protos.iter().all(|p| p.contains(":ip:icmp")), "{protos:?}");
    }
    assert_eq!(
        od.metric("devourer_capture_requests_total", "\"accepted\""),
        3
    );
    assert_eq!(
        od.metric("devourer_capture_requests_total", "other_node"),
        1
    );
    assert_eq!(od.metric("devourer_capture_requests_total", "bad_json"), 1);
    assert!(od.metric("devourer_capture_kafka_errors_total", "") >= 1);
}
