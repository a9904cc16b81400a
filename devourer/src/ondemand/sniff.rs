//! One capture on one interface: libpcap (tcpdump's filter compiler, an AF_PACKET socket) into
//! memory until the first limit (packets, bytes, duration, idle timeout) or cancellation,
//! then a pcap file image. A request's interfaces share its packet and byte totals, and every
//! capture in flight shares one memory budget.

use std::{
    borrow::Cow,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};

use super::request::{BadFilter, Plan};
use crate::config::requests::CAPTURE_RING_BYTES;

/// Memory held by all captures in flight (packets and socket buffers), capped.
#[derive(Debug)]
pub struct Memory {
    held: AtomicU64,
    max: u64,
}

impl Memory {
    pub fn new(max: u64) -> Self {
        Self {
            held: AtomicU64::new(0),
            max,
        }
    }

    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if they fit under the cap.
    fn take(&self, n: u64) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                (h + n <= self.max).then_some(h + n)
            })
            .is_ok()
    }

    /// Gives back what a capture held once it is stored.
    pub fn give(&self, n: u64) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What the captures of one request share: its packet and file-byte totals, and the memory
/// budget of all captures.
#[derive(Debug)]
pub struct Budget {
    packets: AtomicU64,
    bytes: AtomicU64,
    memory: Arc<Memory>,
}

impl Budget {
    pub fn new(memory: Arc<Memory>) -> Self {
        Self {
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            memory,
        }
    }

    /// Whether the request's totals are reached (by any of its interfaces).
    fn spent(&self, plan: &Plan) -> Option<Stop> {
        if self.packets.load(Ordering::Acquire) >= plan.packets {
            Some(Stop::Packets)
        } else if self.bytes.load(Ordering::Acquire) >= plan.bytes {
            Some(Stop::Bytes)
        } else {
            None
        }
    }

    /// Takes one packet of `rec` file bytes: `Ok(last)` to keep it (`last`: it reached a
    /// total), `Err(stop)` when a total or the memory cap leaves no room for it.
    fn take(&self, plan: &Plan, rec: u64) -> Result<Option<Stop>, Stop> {
        let n = self.packets.fetch_add(1, Ordering::AcqRel) + 1;
        if n > plan.packets {
            self.packets.fetch_sub(1, Ordering::AcqRel);
            return Err(Stop::Packets);
        }
        let before = self.bytes.fetch_add(rec, Ordering::AcqRel);
        let undo = |stop| {
            self.packets.fetch_sub(1, Ordering::AcqRel);
            self.bytes.fetch_sub(rec, Ordering::AcqRel);
            Err(stop)
        };
        if before >= plan.bytes {
            return undo(Stop::Bytes);
        }
        if !self.memory.take(rec) {
            return undo(Stop::Memory);
        }
        // The packet that reaches a limit is kept (the file may pass `bytes` by one).
        Ok(if n >= plan.packets {
            Some(Stop::Packets)
        } else if before + rec >= plan.bytes {
            Some(Stop::Bytes)
        } else {
            None
        })
    }
}

/// The socket buffer's share of the memory budget, given back when the capture ends.
struct Ring<'a>(&'a Memory);

impl Drop for Ring<'_> {
    fn drop(&mut self) {
        self.0.give(CAPTURE_RING_BYTES);
    }
}

/// Why a capture ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Packets,
    Bytes,
    Duration,
    Timeout,
    /// The memory all captures in flight may hold (`max_memory`) was reached.
    Memory,
    Cancelled,
}

impl Stop {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Packets => "packets",
            Self::Bytes => "bytes",
            Self::Duration => "duration",
            Self::Timeout => "timeout",
            Self::Memory => "memory",
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
    /// Bytes of the memory budget the packets hold (given back once stored).
    pub held: u64,
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
    #[error("captures in flight hold {0} bytes: no room for another socket (max_memory)")]
    Memory(u64),
}

/// pcap file header plus one record header per packet.
const FILE_HEADER: u64 = 24;
const RECORD_HEADER: u64 = 16;

/// The most a `compile-filter` child reads of its input (`max_filter_bytes` is below it).
pub const COMPILE_INPUT_MAX: usize = 1 << 20;

/// Whether libpcap compiles `expr` (for an Ethernet capture).
pub fn check_filter(expr: &str) -> Result<(), BadFilter> {
    let dead =
        pcap::Capture::dead(pcap::Linktype::ETHERNET).map_err(|e| BadFilter(e.to_string()))?;
    dead.compile(expr, true)
        .map(|_| ())
        .map_err(|e| BadFilter(e.to_string()))
}

/// Captures on `iface` as `plan` says, until a limit (the request's totals in `budget`) or
/// `cancel`; `armed` is called once the socket is open with its filter.
pub fn run(
    iface: &str,
    plan: &Plan,
    budget: &Budget,
    cancel: &AtomicBool,
    armed: &dyn Fn(),
) -> Result<Captured, SniffError> {
    let open_err = |source| SniffError::Open {
        iface: iface.to_owned(),
        source,
    };
    if !budget.memory.take(CAPTURE_RING_BYTES) {
        return Err(SniffError::Memory(budget.memory.held()));
    }
    let _ring = Ring(&budget.memory);
    let cap = pcap::Capture::from_device(iface)
        .map_err(open_err)?
        .snaplen(plan.snap as i32)
        .immediate_mode(true)
        .promisc(false)
        .buffer_size(CAPTURE_RING_BYTES as i32)
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
        held: 0,
    };
    budget.bytes.fetch_add(FILE_HEADER, Ordering::AcqRel);
    let start = Instant::now();
    let mut last = start;
    let stop = loop {
        if cancel.load(Ordering::Relaxed) {
            break Stop::Cancelled;
        }
        if let Some(stop) = budget.spent(plan) {
            break stop;
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
                let rec = RECORD_HEADER + u64::from(p.header.caplen);
                let reached = match budget.take(plan, rec) {
                    Ok(reached) => reached,
                    Err(stop) => break stop,
                };
                out.bytes += rec;
                out.held += rec;
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
                if let Some(stop) = reached {
                    break stop;
                }
            }
            Err(pcap::Error::TimeoutExpired) => wait_readable(fd, 50),
            Err(source) => {
                budget.memory.give(out.held);
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

/// The capture as a pcap file (microsecond timestamps), built in the packets' place: each is
/// freed once written, so the image and the packets never take twice the memory the budget
/// counted for them.
pub fn into_pcap(c: &mut Captured) -> Result<bytes::Bytes, SniffError> {
    let header = PcapHeader {
        snaplen: c.snap,
        datalink: DataLink::from(c.linktype as u32),
        ..PcapHeader::default()
    };
    let mut w = PcapWriter::with_header(Vec::with_capacity(c.bytes as usize), header)?;
    for p in std::mem::take(&mut c.packets) {
        w.write_packet(&PcapPacket {
            timestamp: p.ts,
            orig_len: p.orig_len,
            data: Cow::Owned(p.data),
        })?;
    }
    Ok(w.into_writer().into())
}

/// Why a filter was refused.
pub use super::request::BadFilter as FilterError;

/// Compiles `filter` in a child process (`devourer compile-filter`), killed after `limit`:
/// libpcap's optimizer may take seconds on a long filter and cannot be cancelled, and the
/// agent's threads must not wait on it. The service runs one at a time.
pub async fn compile_in_child(filter: &str, limit: Duration) -> Result<(), FilterError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("/proc/self/exe")
        .args(["--config", "/dev/null", "compile-filter"])
        .env_remove("DEVOURER_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| FilterError(format!("starting the filter compiler: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = filter.as_bytes().to_vec();
    let run = async move {
        // The child reads all of it before compiling; a write error shows in its answer.
        let _ = stdin.write_all(&input).await;
        drop(stdin);
        child.wait_with_output().await
    };
    match tokio::time::timeout(limit, run).await {
        Err(_) => Err(FilterError(format!(
            "libpcap took longer than filter_compile_timeout ({limit:?}) to compile it"
        ))),
        Ok(Err(e)) => Err(FilterError(format!("running the filter compiler: {e}"))),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let why = String::from_utf8_lossy(&out.stdout);
            let why = why.trim();
            Err(FilterError(if why.is_empty() {
                format!("the filter compiler failed ({})", out.status)
            } else {
                why.to_owned()
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(packets: u64, bytes: u64) -> Plan {
        Plan {
            interfaces: vec!["a".into(), "b".into()],
            filter: None,
            snap: 100,
            packets,
            bytes,
            duration: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            alertid: 0,
            tags: None,
            customer: None,
            s3: None,
            packetdebug: false,
            clamped: Vec::new(),
        }
    }

    #[test]
    fn a_requests_interfaces_share_its_totals() {
        let memory = Arc::new(Memory::new(1 << 30));
        let p = plan(3, 1 << 20);
        let (a, b) = (Budget::new(memory.clone()), Budget::new(memory.clone()));
        // Two interfaces of one request take from one budget: three packets in all.
        assert_eq!(a.take(&p, 100), Ok(None));
        assert_eq!(a.take(&p, 100), Ok(None));
        assert_eq!(a.take(&p, 100), Ok(Some(Stop::Packets)));
        assert_eq!(a.take(&p, 100), Err(Stop::Packets));
        assert_eq!(a.spent(&p), Some(Stop::Packets));
        // Another request has its own totals, and the memory is shared by all.
        assert_eq!(b.take(&p, 100), Ok(None));
        assert_eq!(memory.held(), 400);
        // Bytes: the packet that reaches the total is kept, the next is not.
        let p = plan(100, 250);
        let c = Budget::new(memory.clone());
        assert_eq!(c.take(&p, 200), Ok(None));
        assert_eq!(c.take(&p, 200), Ok(Some(Stop::Bytes)));
        assert_eq!(c.take(&p, 10), Err(Stop::Bytes));
        assert_eq!(memory.held(), 800);
    }

    #[test]
    fn captures_in_flight_stop_at_the_memory_cap_and_give_it_back() {
        let memory = Arc::new(Memory::new(1000));
        let p = plan(1000, 1 << 20);
        let a = Budget::new(memory.clone());
        assert_eq!(a.take(&p, 600), Ok(None));
        let b = Budget::new(memory.clone());
        assert_eq!(b.take(&p, 600), Err(Stop::Memory), "no room left");
        assert_eq!(
            b.packets.load(Ordering::Relaxed),
            0,
            "the refused packet is not counted"
        );
        memory.give(600);
        assert_eq!(
            b.take(&p, 600),
            Ok(None),
            "room again once the first is stored"
        );
    }

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
            held: 0,
        };
        let mut c = c;
        let bytes = into_pcap(&mut c).unwrap();
        assert!(
            c.packets.is_empty(),
            "the packets are freed as they are written"
        );
        assert_eq!(bytes.len() as u64, FILE_HEADER + RECORD_HEADER + 14);
        let mut r = pcap_file::pcap::PcapReader::new(&bytes[..]).unwrap();
        assert_eq!(r.header().snaplen, 96);
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!((p.orig_len, p.data.len()), (60, 14));
        assert_eq!(p.timestamp, Duration::new(1_700_000_000, 5_000));
    }
}
