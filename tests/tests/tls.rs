//! TLS handshakes on flows, end to end: `openssl s_client` (TLS 1.3 with ALPN, TLS 1.2
//! without, and a ClientHello of about 2.5 KB that spans two segments on a 1500-byte link) and
//! `curl --resolve` over IPv6 against `openssl s_server` in a test namespace. Each flow's
//! `tls_*` fields are compared with tshark's reading of the same traffic (server name, ALPN,
//! offered and chosen versions, and JA4 computed here from tshark's raw fields per FoxIO's
//! specification), live and replayed offline.

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use devourer_tests::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What tshark says of one connection's handshake, by the client's port.
#[derive(Debug, Default, PartialEq)]
struct Oracle {
    sni: Option<String>,
    alpn: Vec<String>,
    version: String,
    chosen: Option<String>,
    ja4: String,
    /// Segments the ClientHello was reassembled from (1 when it fit one).
    segments: u32,
}

/// A number as tshark prints it: `0x0403`, or decimal (extension types).
fn number(v: &str) -> u16 {
    match v.strip_prefix("0x") {
        Some(h) => u16::from_str_radix(h, 16),
        None => v.parse(),
    }
    .unwrap_or_else(|_| panic!("not a number: {v:?}"))
}

fn grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

fn version_name(v: u16) -> String {
    match v {
        0x0304 => "TLSv1.3",
        0x0303 => "TLSv1.2",
        0x0302 => "TLSv1.1",
        0x0301 => "TLSv1",
        _ => "unknown",
    }
    .into()
}

/// JA4 from tshark's fields, as FoxIO's JA4.md spells it out.
fn ja4(version: u16, ciphers: &[u16], exts: &[u16], alpn: Option<&str>, sigs: &[u16]) -> String {
    let ciphers: Vec<u16> = ciphers.iter().copied().filter(|c| !grease(*c)).collect();
    let exts: Vec<u16> = exts.iter().copied().filter(|e| !grease(*e)).collect();
    let v = match version {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        _ => "00",
    };
    let d = if exts.contains(&0) { "d" } else { "i" };
    let a = alpn.map_or("00".to_owned(), |a| {
        format!("{}{}", a.chars().next().unwrap(), a.chars().last().unwrap())
    });
    let list = |v: &[u16]| {
        v.iter()
            .map(|x| format!("{x:04x}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let hash = |s: &str| {
        if s.is_empty() {
            "000000000000".to_owned()
        } else {
            let d = Sha256::digest(s.as_bytes());
            d[..6].iter().map(|b| format!("{b:02x}")).collect()
        }
    };
    let mut sorted_c = ciphers.clone();
    sorted_c.sort();
    let mut sorted_e: Vec<u16> = exts
        .iter()
        .copied()
        .filter(|&e| e != 0 && e != 16)
        .collect();
    sorted_e.sort();
    let sigs: Vec<u16> = sigs.iter().copied().filter(|s| !grease(*s)).collect();
    let mut c = list(&sorted_e);
    if !sorted_e.is_empty() && !sigs.is_empty() {
        c = format!("{c}_{}", list(&sigs));
    }
    format!(
        "t{v}{d}{:02}{:02}{a}_{}_{}",
        ciphers.len().min(99),
        exts.len().min(99),
        hash(&list(&sorted_c)),
        hash(&c)
    )
}

/// tshark's reading of every handshake in `pcap`, by client port.
fn tshark_handshakes(pcap: &Path) -> BTreeMap<u16, Oracle> {
    let out = run(Command::new("tshark").arg("-r").arg(pcap).args([
        "-n",
        "-Y",
        "tls.handshake.type == 1 || tls.handshake.type == 2",
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=,",
        "-e",
        "tcp.srcport",
        "-e",
        "tcp.dstport",
        "-e",
        "tls.handshake.type",
        "-e",
        "tls.handshake.extensions_server_name",
        "-e",
        "tls.handshake.extensions_alpn_str",
        "-e",
        "tls.handshake.version",
        "-e",
        "tls.handshake.extensions.supported_version",
        "-e",
        "tls.handshake.ciphersuite",
        "-e",
        "tls.handshake.extension.type",
        "-e",
        "tls.handshake.sig_hash_alg",
        "-e",
        "tcp.segment.count",
    ]));
    let mut by_port: BTreeMap<u16, Oracle> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('|').collect();
        let g = |i: usize| f.get(i).copied().unwrap_or("");
        let nums = |i: usize| -> Vec<u16> {
            g(i).split(',')
                .filter(|x| !x.is_empty())
                .map(number)
                .collect()
        };
        let (sp, dp): (u16, u16) = (g(0).parse().unwrap(), g(1).parse().unwrap());
        let types = nums(2);
        let supported = nums(6);
        let own = nums(5).first().copied().unwrap_or(0);
        if types.first() == Some(&1) {
            let offered = supported
                .iter()
                .copied()
                .filter(|v| !grease(*v))
                .max()
                .unwrap_or(own);
            let alpn: Vec<String> = g(4)
                .split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect();
            let o = by_port.entry(sp).or_default();
            o.sni = Some(g(3)).filter(|s| !s.is_empty()).map(str::to_owned);
            o.version = version_name(offered);
            o.ja4 = ja4(
                offered,
                &nums(7),
                &nums(8),
                alpn.first().map(String::as_str),
                &nums(9),
            );
            // Records keep the first 32 protocols (JA4 reads the first).
            o.alpn = alpn.into_iter().take(32).collect();
            o.segments = g(10).parse().unwrap_or(1);
        } else {
            let chosen = supported.first().copied().unwrap_or(own);
            by_port.entry(dp).or_default().chosen = Some(version_name(chosen));
        }
    }
    by_port
}

/// devourer's handshakes in the same shape (JA4 and segments as the oracle's), by client port.
fn devourer_handshakes(recs: &[Value], oracle: &BTreeMap<u16, Oracle>) -> BTreeMap<u16, Oracle> {
    let mut by_port = BTreeMap::new();
    for r in recs
        .iter()
        .filter(|r| r["type"] == "flow" && r["tls_ja4"].is_string())
    {
        let port = r["src_port"].as_u64().unwrap() as u16;
        let s = |k: &str| r[k].as_str().map(str::to_owned);
        by_port.insert(
            port,
            Oracle {
                sni: s("tls_sni"),
                alpn: r["tls_alpn"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect(),
                version: s("tls_version").unwrap(),
                chosen: s("tls_version_negotiated"),
                ja4: s("tls_ja4").unwrap(),
                segments: oracle.get(&port).map_or(0, |o| o.segments),
            },
        );
        assert_eq!(r["tls_ech"], false, "{r}");
        if let Some(sni) = s("tls_sni") {
            assert_eq!(r["dst_name"], sni.as_str(), "{r}");
            assert_eq!(r["dst_name_source"], "sni", "{r}");
        }
    }
    by_port
}

#[test]
fn tls_handshakes_on_flows_match_tshark_live_and_offline() {
    if !require_root("tls_handshakes_on_flows_match_tshark_live_and_offline") {
        return;
    }
    let tmp = TempDir::new("tls");
    let link = Link::new();
    let (cert, key) = (tmp.path("cert.pem"), tmp.path("key.pem"));
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=devourer.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let server = |family: &str, port: &str| {
        let mut c = link.b.cmd("openssl");
        c.args(["s_server", family, "-accept", port, "-www", "-quiet"])
            .args(["-alpn", "h2,http/1.1", "-cert"])
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Bg::spawn(c, "openssl s_server")
    };
    let _servers = [server("-4", "8443"), server("-6", "8444")];
    await_listener(
        Some(&link.b),
        "tcp",
        8443,
        Duration::from_secs(10),
        "s_server",
    );
    await_listener(
        Some(&link.b),
        "tcp",
        8444,
        Duration::from_secs(10),
        "s_server",
    );

    let pcap = tmp.path("tls.pcap");
    let (out, log) = (tmp.path("out.jsonl"), tmp.path("agent.log"));
    let dump = tcpdump(&link.a, &link.if_a, &pcap);
    let mut args = vec!["-i", &link.if_a, "--tcp-linger", "200ms"];
    args.extend(QUICK_TIMEOUTS);
    let agent = start_capture(&link.a, &args, Some(&out), &log);

    let b4 = format!("{}:8443", link.ip4_b);
    // A list of protocols long enough (about 2 KB) that the ClientHello spans two segments.
    let many: Vec<String> = (0..200).map(|i| format!("proto-{i:03}")).collect();
    let many = format!("h2,{}", many.join(","));
    let client = |extra: &[&str]| {
        let script = format!(
            "echo | timeout 10 openssl s_client -connect {b4} {} >/dev/null 2>&1",
            extra.join(" ")
        );
        link.a.sh(&script);
    };
    client(&["-servername one.example.test", "-alpn h2,http/1.1"]);
    client(&["-servername two.example.test", "-tls1_2"]);
    client(&["-servername big.example.test", "-alpn", &many]);
    link.a.sh(&format!(
        "curl -sk --http1.1 --max-time 10 -o /dev/null --resolve curl.example.test:8444:[{b6}] \
         https://curl.example.test:8444/",
        b6 = link.ip6_b
    ));
    std::thread::sleep(Duration::from_millis(800));
    let res = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    dump.stop(libc::SIGINT, Duration::from_secs(10));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(res.status.success(), "{log_text}");

    let oracle = tshark_handshakes(&pcap);
    assert_eq!(
        oracle.len(),
        4,
        "four handshakes in the capture: {oracle:?}"
    );
    let names: Vec<Option<&str>> = oracle.values().map(|o| o.sni.as_deref()).collect();
    for want in ["one", "two", "big", "curl"] {
        let name = format!("{want}.example.test");
        assert!(names.contains(&Some(name.as_str())), "{names:?}");
    }
    assert!(
        oracle.values().any(|o| o.segments >= 2),
        "one ClientHello spans segments: {oracle:?}"
    );
    assert!(
        oracle
            .values()
            .any(|o| o.chosen.as_deref() == Some("TLSv1.2"))
    );
    assert!(
        oracle
            .values()
            .any(|o| o.chosen.as_deref() == Some("TLSv1.3"))
    );

    let recs = records(&std::fs::read(&out).unwrap());
    assert_eq!(
        devourer_handshakes(&recs, &oracle),
        oracle,
        "live: handshakes differ from tshark's\n{log_text}"
    );
    assert_eq!(
        log_number(&log_text, "tls_ring_full"),
        Some(0),
        "{log_text}"
    );

    // The same program on the capture: the same handshakes.
    let (status, stdout, stderr) = devourer_read(&pcap, &[]);
    assert!(status.success(), "{stderr}");
    assert_eq!(
        devourer_handshakes(&records(&stdout), &oracle),
        oracle,
        "offline: handshakes differ from tshark's\n{stderr}"
    );
}
