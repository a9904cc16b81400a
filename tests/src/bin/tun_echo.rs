//! Plays the far end of a tun device (an L3 device, as WireGuard and VPNs are): creates
//! `NAME` (IFF_TUN, no packet info) with address 10.9.0.1/24, waits for a line on stdin, then
//! writes COUNT ICMP echo requests from 10.9.0.2 into it, which the kernel answers back out
//! of the device, and reads the replies (one second at most). Prints
//! `sent=N sent_bytes=B received=N received_bytes=B`: what crossed the device, as the oracle.
//!
//! With `--gso`, the device takes a virtio-net header and one TCP super-packet of COUNT
//! segments of 1000 bytes is written instead (as a virtio NIC or a VM's tap hands them over:
//! GSO, `SKB_GSO_DODGY`, no segment count); it prints what those segments are on the wire.
//!
//! Usage: `tun_echo [--gso] NAME COUNT` (run inside the network namespace under test).

use std::{
    fs::{File, OpenOptions},
    io::{BufRead, Read, Write},
    os::fd::AsRawFd,
    process::Command,
    time::{Duration, Instant},
};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// The segments' payload in `--gso` mode.
const MSS: usize = 1000;
const LOCAL: [u8; 4] = [10, 9, 0, 1];
const PEER: [u8; 4] = [10, 9, 0, 2];

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn open_tun(name: &str, vnet: bool) -> File {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI | if vnet { IFF_VNET_HDR } else { 0 },
        _pad: [0; 22],
    };
    assert!(name.len() < libc::IFNAMSIZ, "interface name too long");
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `IfReq` lays out.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    tun
}

fn echo_request(seq: u16) -> Vec<u8> {
    let mut buf = Vec::new();
    etherparse::PacketBuilder::ipv4(PEER, LOCAL, 64)
        .icmpv4_echo_request(0x7777, seq)
        .write(&mut buf, &[0x5a; 56])
        .expect("build echo request");
    buf
}

/// A virtio-net header (little-endian) and a TCP/IPv4 super-packet of `segs` segments of
/// [`MSS`] bytes, checksum left to the kernel.
fn gso_packet(segs: usize) -> Vec<u8> {
    let mut ip = Vec::new();
    etherparse::PacketBuilder::ipv4(PEER, LOCAL, 64)
        .tcp(40000, 9, 1, 65535)
        .ack(1)
        .write(&mut ip, &vec![0x5a; segs * MSS])
        .expect("build super-packet");
    let mut p = vec![
        1, // VIRTIO_NET_HDR_F_NEEDS_CSUM
        1, // VIRTIO_NET_HDR_GSO_TCPV4
    ];
    // hdr_len, gso_size, csum_start, csum_offset
    for v in [40u16, MSS as u16, 20, 16] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p.extend_from_slice(&ip);
    p
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let gso = args.first().is_some_and(|a| a == "--gso");
    if gso {
        args.remove(0);
    }
    let name = args.first().expect("NAME").clone();
    let count: u16 = args
        .get(1)
        .expect("COUNT")
        .parse()
        .expect("COUNT: a number");
    let mut tun = open_tun(&name, gso);
    let ok = Command::new("sh")
        .arg("-ec")
        .arg(format!(
            "sysctl -qw net.ipv6.conf.{name}.disable_ipv6=1; ip addr add 10.9.0.1/24 dev {name}; ip link set {name} up"
        ))
        .status()
        .expect("run ip");
    assert!(ok.success(), "configuring {name} failed");
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();

    if gso {
        tun.write_all(&gso_packet(count.into()))
            .expect("write to tun");
        println!(
            "sent={count} sent_bytes={}",
            usize::from(count) * (40 + MSS)
        );
        return;
    }
    let (mut sent, mut sent_bytes) = (0u32, 0usize);
    for seq in 1..=count {
        let p = echo_request(seq);
        tun.write_all(&p).expect("write to tun");
        sent += 1;
        sent_bytes += p.len();
    }
    // SAFETY: plain fcntl on our own descriptor.
    unsafe {
        let fl = libc::fcntl(tun.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(tun.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let (mut received, mut received_bytes) = (0u32, 0usize);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 2048];
    while received < u32::from(count) && Instant::now() < deadline {
        match tun.read(&mut buf) {
            // Echo replies to the peer only: the kernel may also send IPv6 router
            // solicitations or the like out of a fresh device.
            Ok(n) if n >= 20 && buf[0] >> 4 == 4 && buf[9] == 1 && buf[16..20] == PEER => {
                received += 1;
                received_bytes += n;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("read from tun: {e}"),
        }
    }
    println!(
        "sent={sent} sent_bytes={sent_bytes} received={received} received_bytes={received_bytes}"
    );
}
