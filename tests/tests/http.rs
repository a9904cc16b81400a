//! HTTP end to end: curl and raw sockets against a real `python3 -m http.server` (HTTP/1.1) in a
//! test namespace: keep-alive, a 404, IPv6, a large download, pipelined requests in one
//! segment, a request split across two segments, and binary garbage on port 80 (which the server
//! never answers). Every request
//! and response is compared with tshark's, segment by segment (TCP desegmentation off, as the
//! kernel program sees them), live and offline; the text log follows packetlog's httplog.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use devourer_tests::*;
use serde_json::Value;

/// One HTTP message as both sides name it: (sender, sender port, receiver port, what), where
/// `what` is `METHOD TARGET` for a request and the status code for a response.
type Msg = (String, u16, u16, String);

/// tshark's HTTP messages, one per request or response line, TCP desegmentation off.
fn tshark_messages(pcap: &Path) -> Vec<Msg> {
    let out = run(Command::new("tshark").arg("-r").arg(pcap).args([
        "-n",
        "-o",
        "tcp.desegment_tcp_streams:FALSE",
        "-Y",
        "http",
        "-T",
        "fields",
        "-E",
        "separator=\t",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=|",
        "-e",
        "ip.src",
        "-e",
        "ipv6.src",
        "-e",
        "tcp.srcport",
        "-e",
        "tcp.dstport",
        "-e",
        "http.request.method",
        "-e",
        "http.request.uri",
        "-e",
        "http.response.code",
    ]));
    let mut msgs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let c: Vec<&str> = line.split('\t').collect();
        let g = |i: usize| c.get(i).copied().unwrap_or("");
        let src = if g(0).is_empty() { g(1) } else { g(0) };
        let (sp, dp): (u16, u16) = (g(2).parse().unwrap(), g(3).parse().unwrap());
        let split = |s: &str| -> Vec<String> {
            s.split('|')
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let (methods, uris, codes) = (split(g(4)), split(g(5)), split(g(6)));
        for (m, u) in methods.iter().zip(&uris) {
            msgs.push((src.to_owned(), sp, dp, format!("{m} {u}")));
        }
        for code in codes {
            msgs.push((src.to_owned(), sp, dp, code));
        }
    }
    msgs.sort();
    msgs
}

fn devourer_messages(recs: &[Value]) -> Vec<Msg> {
    let mut msgs: Vec<Msg> = recs
        .iter()
        .filter(|r| r["type"] == "http")
        .map(|r| {
            let s = |f: &str| {
                r[f].as_str()
                    .unwrap_or_else(|| panic!("{f} in {r}"))
                    .to_owned()
            };
            let port = |f: &str| r[f].as_u64().unwrap() as u16;
            if r["kind"] == "request" {
                let target = s("target").trim_end_matches("[...]").to_owned();
                (
                    s("client"),
                    port("client_port"),
                    port("server_port"),
                    format!("{} {target}", s("method")),
                )
            } else {
                (
                    s("server"),
                    port("server_port"),
                    port("client_port"),
                    r["status_code"].as_u64().unwrap().to_string(),
                )
            }
        })
        .collect();
    msgs.sort();
    msgs
}

struct Web {
    link: Link,
    _server: Bg,
    _root: TempDir,
}

/// python3's HTTP/1.1 server on B's port 80 (keep-alive), serving a small page, a text file
/// and a 4 MiB download.
fn web_setup() -> Web {
    let link = Link::new();
    let root = TempDir::new("http-root");
    std::fs::write(root.path("index.html"), "<html>hello</html>\n").unwrap();
    std::fs::write(root.path("a.txt"), "a\n").unwrap();
    std::fs::write(root.path("big.bin"), "x".repeat(4 << 20)).unwrap();
    let mut cmd = link.b.cmd("python3");
    cmd.args([
        "-m",
        "http.server",
        "80",
        "--bind",
        "::",
        "--protocol",
        "HTTP/1.1",
    ])
    .current_dir(&root.0)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let server = Bg::spawn(cmd, "http.server");
    let up = wait_for(Duration::from_secs(10), || {
        link.b
            .cmd("bash")
            .args(["-c", "ss -ltn | grep -q ':80 '"])
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(up, "http.server listening");
    Web {
        link,
        _server: server,
        _root: root,
    }
}

/// The client side, run in A.
fn web_traffic(w: &Web) {
    let (b4, b6) = (&w.link.ip4_b, &w.link.ip6_b);
    w.link.a.sh(&format!(
        "curl -sf -o /dev/null -o /dev/null http://{b4}/ http://{b4}/a.txt
         curl -s -o /dev/null http://{b4}/missing
         curl -sf -o /dev/null 'http://[{b6}]/index.html?lang=en'
         curl -sf -o /dev/null http://{b4}/big.bin"
    ));
    // Pipelined: two requests in one segment; a request split across two segments; garbage.
    w.link.a.sh(&format!(
        "python3 -c \"
import socket, time
def conn():
    s = socket.create_connection(('{b4}', 80), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s
def drain(s):
    while s.recv(65536):
        pass
s = conn()
s.sendall(b'GET /a.txt HTTP/1.1\\r\\nHost: pipe\\r\\n\\r\\nGET /missing HTTP/1.1\\r\\nHost: pipe\\r\\nConnection: close\\r\\n\\r\\n')
drain(s)
s = conn()
s.sendall(b'GET /index.html HTTP/1.1\\r\\nHo')
time.sleep(0.2)
s.sendall(b'st: split\\r\\nUser-Agent: raw\\r\\nConnection: close\\r\\n\\r\\n')
drain(s)
s = conn()
s.sendall(bytes(range(256)) * 2)
time.sleep(0.2)
s.close()
\""
    ));
}

#[test]
fn http_messages_match_tshark_segment_by_segment_live_and_offline() {
    if !require_root("http_messages_match_tshark_segment_by_segment_live_and_offline") {
        return;
    }
    let tmp = TempDir::new("http");
    let w = web_setup();
    let pcap = tmp.path("http.pcap");
    let (out, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
    let logdir = tmp.path("httplog");
    let logdir_s = logdir.to_str().unwrap().to_owned();
    let dump = tcpdump(&w.link.b, &w.link.if_b, &pcap);
    let agent = start_capture(
        &w.link.b,
        &[
            "-i",
            &w.link.if_b,
            "--scan-interval",
            "200ms",
            "--http-log-dir",
            &logdir_s,
        ],
        Some(&out),
        &log,
    );
    web_traffic(&w);
    std::thread::sleep(Duration::from_millis(500));
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    dump.stop(libc::SIGINT, Duration::from_secs(10));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(res.status.success(), "{log_text}");

    let recs = records(&std::fs::read(&out).unwrap());
    let oracle = tshark_messages(&pcap);
    let ours = devourer_messages(&recs);
    assert_eq!(ours, oracle, "live: HTTP messages differ from tshark's");
    assert_eq!(
        log_number(&log_text, "http_ring_full"),
        Some(0),
        "{log_text}"
    );

    let http: Vec<&Value> = recs.iter().filter(|r| r["type"] == "http").collect();
    let find = |kind: &str, target: &str| {
        http.iter()
            .copied()
            .filter(|r| r["kind"] == kind && r["target"] == target)
            .collect::<Vec<_>>()
    };
    // Keep-alive and pipelining: every response matched to its request, in order.
    for r in http.iter().filter(|r| r["kind"] == "response") {
        assert!(r["latency"].as_f64().is_some_and(|l| l >= 0.0), "{r}");
        assert_eq!(r["role"], "server", "{r}");
    }
    let missing = find("response", "/missing");
    assert_eq!(missing.len(), 2, "{missing:?}");
    assert!(
        missing
            .iter()
            .all(|r| r["status_code"] == 404 && r["method"] == "GET")
    );
    let big = find("response", "/big.bin");
    assert_eq!(big[0]["content_length"], 4 << 20);
    // The split request: what the first segment held (the request line; "Ho" is no header
    // yet), the cut marked.
    let split = find("request", "/index.html")
        .into_iter()
        .find(|r| {
            r["truncated"]
                .as_array()
                .unwrap()
                .contains(&"headers".into())
        })
        .expect("the split request");
    assert_eq!(
        (split["method"].as_str(), split["version"].as_str()),
        (Some("GET"), Some("HTTP/1.1"))
    );
    assert!(split["host"].is_null(), "{split}");
    // IPv6, with the query string.
    assert_eq!(
        find("request", "/index.html?lang=en")[0]["client"],
        w.link.ip6_a
    );
    // The garbage was not HTTP: no record from it (tshark saw none either, compared above).
    assert!(
        http.iter()
            .all(|r| matches!(r["method"].as_str(), Some("GET" | "HEAD") | None)),
        "{http:#?}"
    );

    // The text log: one line per message, in httplog's shape.
    let lines: Vec<String> = std::fs::read_dir(&logdir)
        .unwrap()
        .flat_map(|e| {
            let p = e.unwrap().path();
            assert!(
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("http-"),
                "{p:?}"
            );
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(lines.len(), ours.len(), "{lines:#?}");
    let (a4, b4) = (&w.link.ip4_a, &w.link.ip4_b);
    let curl = lines
        .iter()
        .find(|l| l.contains(" CQ GET /a.txt HTTP/1.1 ") && l.contains("curl/"))
        .expect("curl's request line");
    let re_time = curl.as_bytes();
    assert!(
        re_time[4] == b'-' && re_time[10] == b' ' && re_time[19] == b'.',
        "{curl}"
    );
    assert!(curl.contains(&format!(" {a4}#")) && curl.contains(&format!(" {b4}#80 CQ ")));
    assert!(
        lines.iter().any(|l| l.contains(&format!("{b4}#80 {a4}#"))
            && l.contains(" CR HTTP/1.1 404 File not found ")
            && l.ends_with("text/html;charset=utf-8")),
        "{lines:#?}"
    );

    // Offline, the same capture gives the same messages.
    let local = format!("{b4}/32");
    let (status, stdout, stderr) =
        devourer_read(&pcap, &["--http-ports", "80", "--local-net", &local]);
    assert!(status.success(), "{stderr}");
    let offline_recs = records(&stdout);
    assert_eq!(devourer_messages(&offline_recs), oracle, "offline");
    assert_threads_agree(&pcap, &["--http-ports", "80", "--local-net", &local], 4);
    let roles: Vec<&Value> = offline_recs
        .iter()
        .filter(|r| r["type"] == "http" && r["client"] == a4.as_str())
        .map(|r| &r["role"])
        .collect();
    assert!(
        !roles.is_empty() && roles.iter().all(|r| *r == "server"),
        "{roles:?}"
    );
}
