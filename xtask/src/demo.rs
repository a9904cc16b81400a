//! Demo traffic for `cargo xtask run`: a name resolved through the demo's own DNS responder on
//! loopback (answering `demo.devourer.test` with 127.0.0.1, NXDOMAIN for anything else), a TCP
//! request to the resolved address, and a UDP datagram, every two seconds; the agent shows a
//! `dns` record with its latency and a `flow` record named from it within seconds.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use hickory_proto::{
    op::{Message, Metadata, ResponseCode},
    rr::{RData, Record, RecordType, rdata::A},
};

pub const DEMO_NAME: &str = "demo.devourer.test";

/// Where the responder listens: DNS's own port, or one of ours where 53 is taken (or not ours
/// to bind); the agent is then told to decode it too (`--dns-ports`).
pub struct Demo {
    pub dns_port: u16,
}

/// Starts the responder and the demo traffic on threads that run until the process ends.
pub fn start() -> Demo {
    let (socket, port) = match UdpSocket::bind("127.0.0.1:53") {
        Ok(s) => (s, 53),
        Err(_) => {
            let s = UdpSocket::bind("127.0.0.1:0").expect("a UDP port on loopback");
            let port = s.local_addr().map_or(0, |a| a.port());
            (s, port)
        }
    };
    eprintln!(
        "xtask: the demo answers {DEMO_NAME} on 127.0.0.1:{port}; demo traffic resolves it, then connects (--no-demo to stop)"
    );
    std::thread::spawn(move || respond(&socket));
    std::thread::spawn(move || traffic(port));
    Demo { dns_port: port }
}

/// Answers A queries for [`DEMO_NAME`] with 127.0.0.1 (TTL 60), anything else with NXDOMAIN.
fn respond(socket: &UdpSocket) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
        answer.metadata = Metadata::response_from_request(&query.metadata);
        answer.metadata.authoritative = true;
        answer.add_queries(query.queries.iter().cloned());
        match query.queries.first() {
            Some(q)
                if q.query_type() == RecordType::A
                    && q.name().to_ascii().trim_end_matches('.') == DEMO_NAME =>
            {
                answer.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::LOCALHOST)),
                ));
            }
            _ => answer.metadata.response_code = ResponseCode::NXDomain,
        }
        if let Ok(bytes) = answer.to_vec() {
            let _ = socket.send_to(&bytes, peer);
        }
    }
}

/// A minimal A query for `name`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The first A record of a response to `query`, if any.
fn first_a(query: &[u8], resp: &[u8]) -> Option<Ipv4Addr> {
    let ancount = u16::from_be_bytes([*resp.get(6)?, *resp.get(7)?]);
    if ancount == 0 || resp.get(..2) != query.get(..2) {
        return None;
    }
    // The answer follows the echoed question; a compressed owner name is 2 bytes.
    let rdata = resp.get(query.len() + 2 + 10..query.len() + 2 + 14)?;
    Some(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]))
}

fn resolve(id: u16, port: u16) -> Option<Ipv4Addr> {
    let s = UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let q = query(id, DEMO_NAME);
    s.send_to(&q, (Ipv4Addr::LOCALHOST, port)).ok()?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).ok()?;
    first_a(&q, &buf[..n])
}

fn traffic(dns_port: u16) {
    let (Ok(listener), Ok(udp)) = (
        TcpListener::bind("127.0.0.1:0"),
        UdpSocket::bind("127.0.0.1:0"),
    ) else {
        return;
    };
    let (Ok(tcp_addr), Ok(udp_addr)) = (listener.local_addr(), udp.local_addr()) else {
        return;
    };
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 64];
            if let Ok(n) = conn.read(&mut buf) {
                let _ = conn.write_all(&buf[..n]);
            }
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    for id in 1u16.. {
        let ip = resolve(id, dns_port).unwrap_or(Ipv4Addr::LOCALHOST);
        if let Ok(mut c) = TcpStream::connect(SocketAddr::from((ip, tcp_addr.port()))) {
            let _ = c.write_all(b"hello devourer\n");
            let mut buf = [0u8; 64];
            let _ = c.read(&mut buf);
        }
        let _ = udp.send_to(b"ping", udp_addr);
        std::thread::sleep(Duration::from_secs(2));
    }
}
