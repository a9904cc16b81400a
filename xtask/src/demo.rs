//! Demo traffic for `cargo xtask run`: a name resolved through a local dnsmasq (when it is
//! installed), a TCP request to the resolved address, and a UDP datagram, every two seconds.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Child, Command, Stdio},
    time::Duration,
};

pub const DEMO_NAME: &str = "demo.devourer.test";

/// The dnsmasq the demo started; stopped on drop.
pub struct Resolver(Child);

impl Drop for Resolver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the demo traffic (and dnsmasq on 127.0.0.1:53 when it is installed and the port is
/// free); the traffic runs on a thread until the process ends.
pub fn start() -> Option<Resolver> {
    let resolver = start_dnsmasq();
    match &resolver {
        Some(_) => eprintln!(
            "xtask: dnsmasq answers {DEMO_NAME} on 127.0.0.1:53; demo traffic resolves it, then connects (--no-demo to stop)"
        ),
        None => eprintln!(
            "xtask: generating TCP and UDP traffic on lo (install dnsmasq to see DNS records too; --no-demo to stop)"
        ),
    }
    std::thread::spawn(traffic);
    resolver
}

fn start_dnsmasq() -> Option<Resolver> {
    // The port must be free: do not stand in for a resolver the host already runs.
    drop(UdpSocket::bind("127.0.0.1:53").ok()?);
    let child = Command::new("dnsmasq")
        .args([
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
        ])
        .args(["--listen-address=127.0.0.1", "--port=53", "--local-ttl=60"])
        .arg(format!("--address=/{DEMO_NAME}/127.0.0.1"))
        .arg("--log-facility=/dev/null")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    Some(Resolver(child))
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

fn resolve(id: u16) -> Option<Ipv4Addr> {
    let s = UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let q = query(id, DEMO_NAME);
    s.send_to(&q, "127.0.0.1:53").ok()?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).ok()?;
    first_a(&q, &buf[..n])
}

fn traffic() {
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
        let ip = resolve(id).unwrap_or(Ipv4Addr::LOCALHOST);
        if let Ok(mut c) = TcpStream::connect(SocketAddr::from((ip, tcp_addr.port()))) {
            let _ = c.write_all(b"hello devourer\n");
            let mut buf = [0u8; 64];
            let _ = c.read(&mut buf);
        }
        let _ = udp.send_to(b"ping", udp_addr);
        std::thread::sleep(Duration::from_secs(2));
    }
}
