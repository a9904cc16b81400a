//! DNS userspace throughput: one million generated messages (half queries, half responses)
//! through the tracker (decode, match, name cache) and record encoding, against decoding alone
//! as the baseline measured in the same run. `--write-pcap FILE` also writes the messages as
//! an Ethernet/IPv4/UDP capture for the replay and live benchmarks.
//!
//! Prints one JSON object per case on stdout: {"case", "messages", "seconds", "per_sec"}.

use std::{hint::black_box, net::Ipv4Addr, time::Instant};

use devourer::{
    base::{local::LocalAddrs, time::Clock},
    decode::dns::{DnsConfig, DnsOutput, DnsTracker},
    record::{Batch, DnsRecord, RecordContext},
};
use devourer_common::payload::PayloadHeader;

const PAIRS: u32 = 500_000;

fn name(i: u32) -> String {
    format!("host{}.zone{}.example.com", i % 5000, i % 97)
}

fn message(id: u16, qname: &str, response: bool, ip: Ipv4Addr) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(if response {
        &[0x81, 0x80]
    } else {
        &[0x01, 0x00]
    });
    m.extend_from_slice(&[0, 1, 0, u8::from(response), 0, 0, 0, 0]);
    for label in qname.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    if response {
        m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 1, 0x2c, 0, 4]);
        m.extend_from_slice(&ip.octets());
    }
    m
}

struct Msg {
    h: PayloadHeader,
    payload: Vec<u8>,
}

fn v4(a: Ipv4Addr) -> [u8; 16] {
    a.to_ipv6_mapped().octets()
}

fn generate() -> Vec<Msg> {
    let client = Ipv4Addr::new(10, 0, 0, 1);
    let server = Ipv4Addr::new(10, 0, 0, 53);
    let mut out = Vec::with_capacity(2 * PAIRS as usize);
    for i in 0..PAIRS {
        let id = (i % 65_536) as u16;
        let port = 10_000 + (i / 65_536) as u16 * 7 + (i % 50) as u16;
        let qname = name(i);
        let answer = Ipv4Addr::from(0x0a80_0000 + (i % 60_000));
        let ts = 1_000_000_000 + u64::from(i) * 2_000;
        for (response, ts) in [(false, ts), (true, ts + 700)] {
            let payload = message(id, &qname, response, answer);
            let (src, dst, sp, dp) = if response {
                (server, client, 53, port)
            } else {
                (client, server, port, 53)
            };
            out.push(Msg {
                h: PayloadHeader {
                    ts_ns: ts,
                    src_addr: v4(src),
                    dst_addr: v4(dst),
                    src_port: sp,
                    dst_port: dp,
                    ifindex: 1,
                    tcp_seq: 0,
                    payload_len: payload.len() as u32,
                    cap_len: payload.len() as u16,
                    proto: 17,
                    flags: 0,
                    tcp_flags: 0,
                    _pad: [0; 11],
                },
                payload,
            });
        }
    }
    out
}

fn report(case: &str, messages: usize, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"case\":\"{case}\",\"messages\":{messages},\"seconds\":{secs:.6},\"per_sec\":{:.0}}}",
        messages as f64 / secs
    );
}

fn write_pcap(path: &str, msgs: &[Msg]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    // pcap header: microseconds, Ethernet.
    f.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    f.write_all(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0])?;
    f.write_all(&65_535u32.to_le_bytes())?;
    f.write_all(&1u32.to_le_bytes())?;
    for m in msgs {
        let udp_len = 8 + m.payload.len();
        let ip_len = 20 + udp_len;
        let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        frame.extend_from_slice(&[0x45, 0]);
        frame.extend_from_slice(&(ip_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
        frame.extend_from_slice(&m.h.src_addr[12..]);
        frame.extend_from_slice(&m.h.dst_addr[12..]);
        frame.extend_from_slice(&m.h.src_port.to_be_bytes());
        frame.extend_from_slice(&m.h.dst_port.to_be_bytes());
        frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&m.payload);
        let us = m.h.ts_ns / 1000;
        f.write_all(&((us / 1_000_000) as u32).to_le_bytes())?;
        f.write_all(&((us % 1_000_000) as u32).to_le_bytes())?;
        f.write_all(&(frame.len() as u32).to_le_bytes())?;
        f.write_all(&(frame.len() as u32).to_le_bytes())?;
        f.write_all(&frame)?;
    }
    f.flush()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let msgs = generate();
    if let Some(i) = args.iter().position(|a| a == "--write-pcap") {
        let path = args.get(i + 1).expect("--write-pcap FILE");
        write_pcap(path, &msgs).expect("writing the pcap");
        eprintln!("wrote {} messages to {path}", msgs.len());
        return;
    }

    // Baseline: decoding every message with hickory-proto, nothing else.
    let start = Instant::now();
    for m in &msgs {
        black_box(hickory_proto::op::Message::from_vec(&m.payload).is_ok());
    }
    report("decode_only", msgs.len(), start);

    // The tracker (decode, match, name cache) plus records encoded as JSON lines.
    let mut tracker = DnsTracker::new(
        DnsConfig {
            timeout_ns: 5_000_000_000,
            max_pending: 65_536,
            tcp: devourer::decode::dns::tcp::TcpLimits {
                max_streams: 10_000,
                max_bytes: 16 << 20,
                max_message: 65_535,
                idle_ns: 30_000_000_000,
            },
            name_cache_entries: 100_000,
            shared_names: false,
            text_log: false,
        },
        LocalAddrs::new(vec!["10.0.0.0/24".parse().expect("net")]),
    );
    let name = |_: u32| std::sync::Arc::<str>::from("eth0");
    let workload = |_| None;
    let cx = RecordContext {
        agent: &"bench".into(),
        clock: Clock::default(),
        interface_name: &name,
        community_seed: 0,
        sampling: 1,
        workload: &workload,
    };
    let mut buf = Vec::with_capacity(1 << 20);
    let mut records = 0usize;
    // As the agent's pipeline does: the output and record vectors keep their room between
    // batches.
    let mut out = DnsOutput::default();
    let mut recs: Vec<DnsRecord> = Vec::new();
    let start = Instant::now();
    for chunk in msgs.chunks(1024) {
        for m in chunk {
            tracker.on_event(&m.h, &m.payload, &mut out);
        }
        recs.clear();
        recs.extend(out.txs.drain(..).map(|t| DnsRecord::new(t, &cx)));
        records += recs.len();
        buf.clear();
        Batch::Dns(&recs).write_json(&mut buf);
        black_box(&buf);
    }
    report("tracker_and_records", msgs.len(), start);
    assert_eq!(records, PAIRS as usize, "every pair matched");
}
