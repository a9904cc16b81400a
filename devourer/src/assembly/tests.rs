//! The whole userspace pipeline without root: a fake flow map and fake payload rings (raw ring
//! records, decoded like the kernel's) in, JSON lines and text log lines out, through the
//! assembly the drivers use, built from a command line.

use std::collections::{BTreeMap, VecDeque};

use clap::FromArgMatches;
use devourer_common::{
    flow::{C_FILTERED, C_MAP_FULL, COUNTERS_LEN, FlowKey, FlowValue, VAL_F_SYN},
    payload::{PAYLOAD_HEADER_LEN, PayloadHeader},
};
use serde_json::Value;

use super::*;
use crate::{
    config::{Cli, Command, command},
    decode::dns::testwire::{a, query, response},
    kernel::events::decode,
};

const S: u64 = 1_000_000_000;
/// The file's clock: 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000 * S;
/// A one-thread replay of a capture that may have several interfaces.
const REPLAY: Driver = Driver::Replay {
    threads: 1,
    one_interface: false,
};

/// A kernel side that holds what the program would have written.
#[derive(Default)]
struct FakeKernel {
    flows: BTreeMap<FlowKey, FlowValue>,
    dns: VecDeque<Vec<u8>>,
    http: VecDeque<Vec<u8>>,
    tls: VecDeque<Vec<u8>>,
    wake: bool,
    counters: [u64; COUNTERS_LEN as usize],
    overflow: Vec<(OverflowKey, OverflowValue)>,
}

impl FlowSource for FakeKernel {
    fn read_all(&mut self, f: &mut dyn FnMut(FlowKey, FlowValue)) -> io::Result<()> {
        for (k, v) in &self.flows {
            f(*k, *v);
        }
        Ok(())
    }

    fn take(&mut self, key: &FlowKey) -> io::Result<Option<FlowValue>> {
        Ok(self.flows.remove(key))
    }

    fn capacity(&self) -> usize {
        1024
    }
}

impl Kernel for FakeKernel {
    fn flows(&mut self) -> &mut dyn FlowSource {
        self
    }

    fn payloads(
        &mut self,
        kind: PayloadKind,
        max: usize,
        f: &mut dyn FnMut(&PayloadHeader, &[u8]),
    ) -> usize {
        let ring = match kind {
            PayloadKind::Dns => &mut self.dns,
            PayloadKind::Http => &mut self.http,
            PayloadKind::Tls => &mut self.tls,
        };
        let n = ring.len().min(max);
        for record in ring.drain(..n) {
            let (h, payload) = decode(&record).expect("a whole record");
            f(&h, payload);
        }
        n
    }

    fn woken(&mut self) -> bool {
        std::mem::take(&mut self.wake)
    }

    fn counters(&self) -> io::Result<KernelCounters> {
        Ok(KernelCounters(self.counters))
    }

    fn take_overflow(&mut self) -> io::Result<Vec<(OverflowKey, OverflowValue)>> {
        Ok(std::mem::take(&mut self.overflow))
    }
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[10] = 0xff;
    out[11] = 0xff;
    out[12..].copy_from_slice(&a);
    out
}

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const RESOLVER: [u8; 4] = [10, 0, 0, 53];
const SERVER: [u8; 4] = [192, 0, 2, 7];

/// A ring record as the program writes it: header, then the payload (UDP).
fn ring_record(ts: u64, src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: &[u8]) -> Vec<u8> {
    tcp_record(ts, src, dst, payload, None)
}

/// [`ring_record`] of a TCP segment at sequence number `seq` (`None`: UDP).
fn tcp_record(
    ts: u64,
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    payload: &[u8],
    seq: Option<u32>,
) -> Vec<u8> {
    let h = PayloadHeader {
        ts_ns: ts,
        src_addr: v4(src.0),
        dst_addr: v4(dst.0),
        src_port: src.1,
        dst_port: dst.1,
        ifindex: 1,
        payload_len: payload.len() as u32,
        cap_len: payload.len() as u16,
        proto: if seq.is_some() { 6 } else { 17 },
        tcp_seq: seq.unwrap_or(0),
        ..PayloadHeader::default()
    };
    let mut out = vec![0u8; PAYLOAD_HEADER_LEN];
    // SAFETY: the buffer holds exactly one header.
    unsafe { std::ptr::write_unaligned(out.as_mut_ptr().cast::<PayloadHeader>(), h) };
    out.extend_from_slice(payload);
    out
}

/// The client asks the resolver for www.example.com at T0 and hears SERVER `after_ns` later
/// (ring records in the DNS ring).
fn resolve_server(kernel: &mut FakeKernel, after_ns: u64) {
    let (c_dns, r_dns) = ((CLIENT, 40000), (RESOLVER, 53));
    let asked = query(7, "www.example.com", 1);
    kernel.dns.push_back(ring_record(T0, c_dns, r_dns, &asked));
    let answer = [a("www.example.com", 300, SERVER)];
    let told = response(7, 0, "www.example.com", 1, &answer);
    kernel
        .dns
        .push_back(ring_record(T0 + after_ns, r_dns, c_dns, &told));
}

fn direction(src: ([u8; 4], u16), dst: ([u8; 4], u16), proto: u8) -> FlowKey {
    FlowKey {
        src_addr: v4(src.0),
        dst_addr: v4(dst.0),
        src_port: src.1,
        dst_port: dst.1,
        ifindex: 1,
        proto,
        ..FlowKey::default()
    }
}

fn counted(first: u64, last: u64, bytes: u64, packets: u64, flags: u8) -> FlowValue {
    let mut v = FlowValue {
        first_ns: first,
        last_ns: last,
        bytes,
        packets,
        ..FlowValue::default()
    };
    v.add_flags(0, flags);
    v
}

/// An empty directory of this test's own and the records file in it.
fn scratch(what: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("devourer-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("records.jsonl");
    (dir, out)
}

fn replay_args(out: &std::path::Path, log_dir: &std::path::Path) -> PipelineArgs {
    replay_args_with(out, log_dir, &[])
}

fn replay_args_with(
    out: &std::path::Path,
    log_dir: &std::path::Path,
    extra: &[&str],
) -> PipelineArgs {
    let mut argv = vec![
        "devourer",
        "read",
        "unused.pcap",
        "--agent-name",
        "node-1",
        "--output",
        out.to_str().unwrap(),
        "--dns-log-dir",
        log_dir.to_str().unwrap(),
        "--idle-timeout",
        "30s",
    ];
    argv.extend_from_slice(extra);
    let m = command().try_get_matches_from(argv).unwrap();
    let Command::Read(r) = Cli::from_arg_matches(&m).unwrap().command else {
        panic!("read")
    };
    r.pipeline
}

#[test]
fn fake_kernel_entries_and_payloads_come_out_as_records_and_text_lines() {
    let (dir, out) = scratch("assembly");
    let p = replay_args(&out, &dir.join("dnslog"));

    let mut kernel = FakeKernel::default();
    // The client resolves www.example.com (answer 192.0.2.7), then connects to it.
    resolve_server(&mut kernel, 2_000_000);
    let (c, s) = ((CLIENT, 50000), (SERVER, 443));
    kernel.flows.insert(
        direction(c, s, 6),
        counted(T0 + 5 * S, T0 + 6 * S, 600, 6, VAL_F_SYN),
    );
    kernel.flows.insert(
        direction(s, c, 6),
        counted(T0 + 5 * S, T0 + 6 * S, 9000, 7, 0),
    );
    kernel.counters[C_MAP_FULL as usize] = 0;

    let mut agent = Assembly::new(kernel, &p, REPLAY, None).unwrap();
    agent.pipeline.name_interfaces([(1, "eth0".to_owned())]);
    assert_eq!(agent.payloads(PayloadKind::Dns, 1), 1, "a bounded turn");
    assert_eq!(agent.payloads(PayloadKind::Dns, 10), 1);
    assert!(!agent.woken());
    assert!(agent.scan(T0 + 7 * S, false).unwrap());
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let done = agent
        .shutdown(Status::EndOfInput, || T0 + 8 * S, deadline)
        .unwrap();
    assert_eq!((done.records, done.dropped), (2, 0));

    let text = std::fs::read_to_string(&out).unwrap();
    let recs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 2, "{text}");
    let dns = &recs[0];
    assert_eq!(dns["type"], "dns");
    assert_eq!(dns["status"], "success");
    assert_eq!(dns["q_name"], "www.example.com");
    assert_eq!(dns["latency"], 0.002);
    assert_eq!(dns["agent"], "node-1");
    assert_eq!(dns["interface"], "eth0");
    assert_eq!(dns["time"], "2023-11-14T22:13:20.000000Z");
    let flow = &recs[1];
    assert_eq!(flow["type"], "flow");
    assert_eq!(flow["status"], "end_of_input");
    assert_eq!(flow["src_addr"], "10.0.0.1");
    assert_eq!(flow["dst_addr"], "192.0.2.7");
    assert_eq!(flow["dst_name"], "www.example.com");
    assert_eq!(
        (flow["src_bytes"].as_u64(), flow["dst_bytes"].as_u64()),
        (Some(600), Some(9000))
    );
    assert_eq!(
        (flow["src_packets"].as_u64(), flow["dst_packets"].as_u64()),
        (Some(6), Some(7))
    );

    let log = std::fs::read_to_string(dir.join("dnslog/dns-20231114-22.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].starts_with("22:13:20.000 10.0.0.1#40000 10.0.0.53#53 Q 0007"));
    assert!(lines[1].contains(" R 0007 00 1/1/0/0 www.example.com IN A 300 192.0.2.7"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_flow_dns_did_not_name_takes_its_server_name_from_its_client_hello() {
    use crate::decode::tls::hello::tests::{ClientHelloBytes, server_hello};
    let (dir, out) = scratch("sni");
    let p = replay_args(&out, &dir.join("dnslog"));
    let mut kernel = FakeKernel::default();
    // www.example.com resolves to SERVER; its hello names another host. OTHER is asked by
    // name only in its hello, sent in two segments.
    const OTHER: [u8; 4] = [198, 51, 100, 9];
    resolve_server(&mut kernel, 1_000);
    let (c1, s1) = ((CLIENT, 50000), (SERVER, 443));
    let (c2, s2) = ((CLIENT, 50001), (OTHER, 8443));
    for (c, s) in [(c1, s1), (c2, s2)] {
        let v = counted(T0 + S, T0 + 2 * S, 600, 6, VAL_F_SYN);
        kernel.flows.insert(direction(c, s, 6), v);
        kernel
            .flows
            .insert(direction(s, c, 6), counted(T0 + S, T0 + 2 * S, 900, 5, 0));
    }
    let hello = |name: &str| ClientHelloBytes::spec_example(name).record();
    kernel.tls.push_back(tcp_record(
        T0 + S,
        c1,
        s1,
        &hello("cdn.example.net"),
        Some(1),
    ));
    let big = hello("api.example.org");
    let (first, rest) = big.split_at(100);
    kernel
        .tls
        .push_back(tcp_record(T0 + S, c2, s2, first, Some(7)));
    kernel
        .tls
        .push_back(tcp_record(T0 + S, c2, s2, rest, Some(107)));
    kernel
        .tls
        .push_back(tcp_record(T0 + S, s2, c2, &server_hello(0x0303), Some(1)));
    let mut agent = Assembly::new(kernel, &p, REPLAY, None).unwrap();
    assert_eq!(agent.payloads(PayloadKind::Dns, 10), 2);
    assert_eq!(agent.payloads(PayloadKind::Tls, 10), 4);
    assert!(agent.scan(T0 + 3 * S, false).unwrap());
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    agent
        .shutdown(Status::EndOfInput, || T0 + 4 * S, deadline)
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let flows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["type"] == "flow")
        .collect();
    let to = |port: u16| flows.iter().find(|f| f["dst_port"] == port).unwrap();
    let named = to(443);
    assert_eq!(named["dst_name"], "www.example.com", "{named}");
    assert_eq!(named["dst_name_source"], "dns", "{named}");
    assert_eq!(named["tls_sni"], "cdn.example.net", "{named}");
    assert!(named["tls_version_negotiated"].is_null(), "{named}");
    let sni = to(8443);
    assert_eq!(sni["dst_name"], "api.example.org", "{sni}");
    assert_eq!(sni["dst_name_source"], "sni", "{sni}");
    assert_eq!(
        sni["tls_alpn"],
        serde_json::json!(["h2", "http/1.1"]),
        "{sni}"
    );
    assert_eq!(sni["tls_version"], "TLSv1.3", "{sni}");
    assert_eq!(sni["tls_version_negotiated"], "TLSv1.2", "{sni}");
    assert_eq!(
        sni["tls_ja4"], "t13d1516h2_8daaf6152771_e5627efa2ab1",
        "{sni}"
    );
    assert_eq!(sni["tls_ech"], false, "{sni}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_spoofed_unsolicited_answer_does_not_rename_a_flow() {
    let (dir, out) = scratch("spoof");
    let p = replay_args(&out, &dir.join("dnslog"));
    let mut kernel = FakeKernel::default();
    // An answer nobody asked for claims the server is www.bank.example.
    kernel.dns.push_back(ring_record(
        T0,
        (RESOLVER, 53),
        (CLIENT, 40001),
        &response(
            9,
            0,
            "www.bank.example",
            1,
            &[a("www.bank.example", 86400, SERVER)],
        ),
    ));
    let (c, s) = ((CLIENT, 50000), (SERVER, 443));
    kernel.flows.insert(
        direction(c, s, 6),
        counted(T0 + S, T0 + 2 * S, 600, 6, VAL_F_SYN),
    );
    let mut agent = Assembly::new(kernel, &p, REPLAY, None).unwrap();
    assert_eq!(agent.payloads(PayloadKind::Dns, 10), 1);
    assert!(agent.scan(T0 + 3 * S, false).unwrap());
    let refused = agent.pipeline.dns().unwrap().stats.names_refused;
    assert_eq!(refused, 1, "the answer's address is counted as refused");
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    agent
        .shutdown(Status::EndOfInput, || T0 + 4 * S, deadline)
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let flow: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["type"] == "flow")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(flow["dst_addr"], "192.0.2.7");
    assert_eq!(flow["dst_name"].as_str().unwrap_or(""), "", "{flow}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_detached_interface_loses_its_series_once_its_flows_are_out_unless_it_comes_back() {
    let (dir, out) = scratch("gone");
    let p = replay_args(&out, &dir.join("dnslog"));
    let mut kernel = FakeKernel::default();
    for (port, ifindex) in [(50000, 1), (50001, 2)] {
        let mut k = direction((CLIENT, port), (SERVER, 443), 6);
        k.ifindex = ifindex;
        kernel
            .flows
            .insert(k, counted(T0, T0 + S, 600, 6, VAL_F_SYN));
    }
    let metrics = crate::ops::metrics::Metrics::new();
    let mut agent = Assembly::new(kernel, &p, REPLAY, Some(metrics.clone())).unwrap();
    agent
        .pipeline
        .name_interfaces([(1, "veth-a".to_owned()), (2, "veth-b".to_owned())]);
    assert!(
        agent.scan(T0 + 100 * S, false).unwrap(),
        "both flows idle out"
    );
    let text = metrics.render();
    assert!(text.contains("veth-a") && text.contains("veth-b"), "{text}");
    agent
        .pipeline
        .interfaces_gone(vec!["veth-a".to_owned(), "veth-b".to_owned()]);
    // veth-b is re-created under the same name: its series stay.
    agent.pipeline.name_interfaces([(3, "veth-b".to_owned())]);
    let now = Instant::now();
    agent.pipeline.forget_gone_interfaces(now);
    assert!(
        metrics.render().contains("veth-a"),
        "kept while its flows may still be out"
    );
    agent
        .pipeline
        .forget_gone_interfaces(now + std::time::Duration::from_secs(24 * 3600));
    let text = metrics.render();
    assert!(
        !text.contains("veth-a") && text.contains("veth-b"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn what_the_overflow_map_held_becomes_overflow_records_at_each_scan() {
    let (dir, out) = scratch("overflow");
    let p = replay_args(&out, &dir.join("dnslog"));
    let mut kernel = FakeKernel::default();
    let k = OverflowKey {
        ifindex: 1,
        proto: 17,
        _pad: [0; 3],
    };
    kernel.overflow.push((
        k,
        OverflowValue {
            bytes: 560,
            packets: 7,
        },
    ));
    let mut agent = Assembly::new(kernel, &p, REPLAY, None).unwrap();
    agent.pipeline.name_interfaces([(1, "eth0".to_owned())]);
    assert!(agent.scan(T0 + S, false).unwrap());
    // Nothing new by the next scan: no record.
    assert!(agent.scan(T0 + 2 * S, false).unwrap());
    let done = agent
        .shutdown(
            Status::EndOfInput,
            || T0 + 3 * S,
            Instant::now() + std::time::Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(done.records, 1);
    let text = std::fs::read_to_string(&out).unwrap();
    let r: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(r["type"], "overflow");
    assert_eq!(r["interface"], "eth0");
    assert_eq!(r["protocol"], "udp");
    assert_eq!(
        (r["packets"].as_u64(), r["bytes"].as_u64()),
        (Some(7), Some(560))
    );
    assert_eq!(r["time"], "2023-11-14T22:13:21.000000Z");
    assert_eq!(r["id"].as_str().unwrap().len(), 32);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_drop_rule_leaves_no_record_or_line_and_counts_each_dropped_packet_once() {
    let (dir, out) = scratch("assembly-filter");
    let p = replay_args_with(
        &out,
        &dir.join("dnslog"),
        &[
            "--filter",
            "keep net 10.0.0.99/32",
            "--filter",
            "drop port 53",
        ],
    );
    let mut kernel = FakeKernel::default();
    let (c_dns, r_dns) = ((CLIENT, 40000), (RESOLVER, 53));
    kernel.dns.push_back(ring_record(
        T0,
        c_dns,
        r_dns,
        &query(7, "www.example.com", 1),
    ));
    kernel.dns.push_back(ring_record(
        T0 + 2_000_000,
        r_dns,
        c_dns,
        &response(
            7,
            0,
            "www.example.com",
            1,
            &[a("www.example.com", 300, SERVER)],
        ),
    ));
    kernel
        .flows
        .insert(direction(c_dns, r_dns, 17), counted(T0, T0, 60, 1, 0));
    kernel.flows.insert(
        direction(r_dns, c_dns, 17),
        counted(T0 + 2_000_000, T0 + 2_000_000, 120, 2, 0),
    );
    let (c, s) = ((CLIENT, 50000), (SERVER, 443));
    kernel.flows.insert(
        direction(c, s, 6),
        counted(T0 + 5 * S, T0 + 6 * S, 600, 6, VAL_F_SYN),
    );
    kernel.flows.insert(
        direction(s, c, 6),
        counted(T0 + 5 * S, T0 + 6 * S, 9000, 7, 0),
    );

    let mut agent = Assembly::new(kernel, &p, REPLAY, None).unwrap();
    assert_eq!(agent.payloads(PayloadKind::Dns, 10), 2);
    assert!(agent.scan(T0 + 7 * S, false).unwrap());
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let done = agent
        .shutdown(Status::EndOfInput, || T0 + 8 * S, deadline)
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let recs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 1, "only the HTTPS flow: {text}");
    assert_eq!(
        (recs[0]["type"].as_str(), recs[0]["dst_port"].as_u64()),
        (Some("flow"), Some(443))
    );
    assert_eq!(done.records, 1);
    assert_eq!(
        done.counters.0[C_FILTERED as usize], 3,
        "the query and both answer packets"
    );
    let lines = std::fs::read_to_string(dir.join("dnslog/dns-20231114-22.log")).unwrap_or_default();
    assert!(
        lines.is_empty(),
        "no text line of the dropped lookup: {lines}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
