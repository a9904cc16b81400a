//! One capture on one interface: libpcap (tcpdump's filter compiler, an AF_PACKET socket) into
//! memory until the first limit (packets, bytes, duration, idle timeout) or cancellation,
//! then a pcap file image.

use std::{
    borrow::Cow,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};

use super::request::{BadFilter, Plan};

/// Why a capture ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Packets,
    Bytes,
    Duration,
    Timeout,
    Cancelled,
}

impl Stop {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Packets => "packets",
            Self::Bytes => "bytes",
            Self::Duration => "duration",
            Self::Timeout => "timeout",
            Self::Cancelled => "shutdown",
        }
    }
}

pub struct Pkt {
    pub ts: Duration,
    pub orig_len: u32,
    pub data: Vec<u8>,
}

pub struct Captured {
    pub iface: String,
    pub linktype: i32,
    pub snap: u32,
    pub packets: Vec<Pkt>,
    /// File bytes so far (pcap record headers included).
    pub bytes: u64,
    pub stop: Stop,
    /// Packets the kernel dropped because the capture buffer was full.
    pub dropped: u32,
}

/// Why a capture could not run or be written.
#[derive(Debug, thiserror::Error)]
pub enum SniffError {
    #[error("opening {iface}: {source}")]
    Open {
        iface: String,
        #[source]
        source: pcap::Error,
    },
    #[error("filter {filter:?}: {source}")]
    Filter {
        filter: String,
        #[source]
        source: pcap::Error,
    },
    #[error("reading {iface}: {source}")]
    Read {
        iface: String,
        #[source]
        source: pcap::Error,
    },
    #[error("writing the pcap file: {0}")]
    Write(#[from] pcap_file::PcapError),
}

/// pcap file header plus one record header per packet.
const FILE_HEADER: u64 = 24;
const RECORD_HEADER: u64 = 16;

/// Whether libpcap compiles `expr` (for an Ethernet capture).
pub fn check_filter(expr: &str) -> Result<(), BadFilter> {
    let dead =
        pcap::Capture::dead(pcap::Linktype::ETHERNET).map_err(|e| BadFilter(e.to_string()))?;
    dead.compile(expr, true)
        .map(|_| ())
        .map_err(|e| BadFilter(e.to_string()))
}

/// Captures on `iface` as `plan` says, until a limit or `cancel`; `armed` is called once the
/// socket is open with its filter.
pub fn run(
    iface: &str,
    plan: &Plan,
    cancel: &AtomicBool,
    armed: &dyn Fn(),
) -> Result<Captured, SniffError> {
    let open_err = |source| SniffError::Open {
        iface: iface.to_owned(),
        source,
    };
    let cap = pcap::Capture::from_device(iface)
        .map_err(open_err)?
        .snaplen(plan.snap as i32)
        .immediate_mode(true)
        .promisc(false)
        .buffer_size(8 << 20)
        // Wake at least this often to check the clock and cancellation.
        .timeout(50);
    // Non-blocking, waited on with poll(2): libpcap's own read timeout may block for good on
    // an idle interface (TPACKET_V3), and the limits must be checked on the clock.
    let mut cap = cap.open().and_then(|c| c.setnonblock()).map_err(open_err)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&cap);
    if let Some(f) = &plan.filter {
        cap.filter(f, true).map_err(|source| SniffError::Filter {
            filter: f.clone(),
            source,
        })?;
    }
    armed();
    let mut out = Captured {
        iface: iface.to_owned(),
        linktype: cap.get_datalink().0,
        snap: plan.snap,
        packets: Vec::new(),
        bytes: FILE_HEADER,
        stop: Stop::Cancelled,
        dropped: 0,
    };
    let start = Instant::now();
    let mut last = start;
    let stop = loop {
        if cancel.load(Ordering::Relaxed) {
            break Stop::Cancelled;
        }
        if start.elapsed() >= plan.duration {
            break Stop::Duration;
        }
        // The idle timeout counts only once something was captured (pcapdaemon's rule).
        if !out.packets.is_empty() && last.elapsed() >= plan.timeout {
            break Stop::Timeout;
        }
        match cap.next_packet() {
            Ok(p) => {
                last = Instant::now();
                let ts = Duration::new(p.header.ts.tv_sec.max(0) as u64, 0)
                    + Duration::from_micros(p.header.ts.tv_usec.max(0) as u64);
                out.bytes += RECORD_HEADER + u64::from(p.header.caplen);
                out.packets.push(Pkt {
                    ts,
                    orig_len: p.header.len,
                    data: p.data.to_vec(),
                });
                if plan.packetdebug {
                    tracing::info!(
                        iface,
                        len = p.header.len,
                        caplen = p.header.caplen,
                        "captured packet"
                    );
                }
                // The packet that reaches a limit is kept (the file may pass `bytes` by one).
                if out.packets.len() as u64 >= plan.packets {
                    break Stop::Packets;
                }
                if out.bytes >= plan.bytes {
                    break Stop::Bytes;
                }
            }
            Err(pcap::Error::TimeoutExpired) => wait_readable(fd, 50),
            Err(source) => {
                return Err(SniffError::Read {
                    iface: iface.to_owned(),
                    source,
                });
            }
        }
    };
    out.stop = stop;
    if let Ok(s) = cap.stats() {
        out.dropped = s.dropped + s.if_dropped;
    }
    Ok(out)
}

/// Waits until `fd` is readable or `ms` pass.
fn wait_readable(fd: i32, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd on the stack, for the capture's own descriptor.
    unsafe { libc::poll(&mut p, 1, ms) };
}

/// The capture as a pcap file (microsecond timestamps).
pub fn pcap_bytes(c: &Captured) -> Result<Vec<u8>, SniffError> {
    let header = PcapHeader {
        snaplen: c.snap,
        datalink: DataLink::from(c.linktype as u32),
        ..PcapHeader::default()
    };
    let mut w = PcapWriter::with_header(Vec::with_capacity(c.bytes as usize), header)?;
    for p in &c.packets {
        w.write_packet(&PcapPacket {
            timestamp: p.ts,
            orig_len: p.orig_len,
            data: Cow::Borrowed(&p.data),
        })?;
    }
    Ok(w.into_writer())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_with_libpcap() {
        assert!(check_filter("tcp port 80 and host 10.0.0.1").is_ok());
        assert!(check_filter("icmp or (udp and dst portrange 1000-2000)").is_ok());
        let e = check_filter("tcp prot 80").unwrap_err();
        assert!(e.0.contains("syntax") || e.0.contains("prot"), "{e}");
    }

    #[test]
    fn a_capture_becomes_a_pcap_file() {
        let c = Captured {
            iface: "lo".into(),
            linktype: 1,
            snap: 96,
            packets: vec![Pkt {
                ts: Duration::new(1_700_000_000, 5_000),
                orig_len: 60,
                data: vec![0xab; 14],
            }],
            bytes: FILE_HEADER + RECORD_HEADER + 14,
            stop: Stop::Packets,
            dropped: 0,
        };
        let bytes = pcap_bytes(&c).unwrap();
        assert_eq!(bytes.len() as u64, c.bytes);
        let mut r = pcap_file::pcap::PcapReader::new(&bytes[..]).unwrap();
        assert_eq!(r.header().snaplen, 96);
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!((p.orig_len, p.data.len()), (60, 14));
        assert_eq!(p.timestamp, Duration::new(1_700_000_000, 5_000));
    }
}
