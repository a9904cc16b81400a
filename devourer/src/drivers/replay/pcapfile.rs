//! Capture files for replay: pcap (with pcap-file) and pcapng (with the tolerant reader in
//! `pcapng`), keeping each pcapng interface's name, link type and timestamp resolution, and
//! every supported link type turned into an Ethernet frame for the kernel program.

use std::{
    fs::File,
    io::{self, BufReader, Read},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use pcap_file::{DataLink, pcap::PcapReader};

use super::pcapng::{self, Block, IfaceDesc};

type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum PcapFileError {
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} is neither a pcap nor a pcapng file (magic {1:02x?})")]
    UnknownFormat(String, [u8; 4]),
    #[error("bad capture file header")]
    Header(#[source] Source),
    #[error("the capture file is truncated or corrupt after {packets} packets")]
    Corrupt {
        packets: u64,
        #[source]
        source: Source,
    },
}

/// One interface of the capture (pcap files have exactly one).
#[derive(Clone, Debug)]
pub struct Interface {
    /// pcapng `if_name`, if any.
    pub name: Option<String>,
    pub linktype: DataLink,
    /// Nanoseconds per timestamp unit numerator/denominator (pcapng `if_tsresol`).
    ts_mul: u128,
    ts_div: u128,
    ts_offset_s: u64,
}

impl Interface {
    fn from_desc(d: &IfaceDesc) -> Self {
        // Microseconds unless `if_tsresol` says otherwise.
        let (ts_mul, ts_div) = d.tsresol.map_or((1000, 1), tsresol);
        Self {
            name: d.name.clone(),
            linktype: DataLink::from(u32::from(d.linktype)),
            ts_mul,
            ts_div,
            ts_offset_s: d.tsoffset.map_or(0, |s| s.max(0) as u64),
        }
    }

    /// Converts a raw pcapng timestamp (in this interface's units) to nanoseconds.
    fn ns(&self, raw: u64) -> u64 {
        let ns = raw as u128 * self.ts_mul / self.ts_div;
        (ns as u64).saturating_add(self.ts_offset_s.saturating_mul(1_000_000_000))
    }
}

/// `if_tsresol`: units of 10^-n seconds (high bit clear) or 2^-n seconds (high bit set),
/// as (multiplier, divisor) giving nanoseconds.
fn tsresol(r: u8) -> (u128, u128) {
    let n = u32::from(r & 0x7f);
    if r & 0x80 == 0 {
        if n <= 9 {
            (10u128.pow(9 - n), 1)
        } else {
            (1, 10u128.pow(n.min(38) - 9))
        }
    } else {
        (1_000_000_000, 1u128 << n.min(127))
    }
}

/// A packet as recorded.
#[derive(Debug)]
pub struct Packet {
    pub ts_ns: u64,
    /// Index into [`PcapFile::interfaces`].
    pub iface: usize,
    pub data: Vec<u8>,
    /// Its length on the wire (the capture may hold less: a snap length).
    pub orig_len: u32,
}

/// What a capture is read from: a file, or bytes (tests, fuzzing).
type Input = BufReader<Counting<Box<dyn Read + Send>>>;

enum Inner {
    Pcap(PcapReader<Input>),
    PcapNg {
        reader: pcapng::Reader<Input>,
        /// Interfaces of the current section, as indexes into `interfaces`.
        section: Vec<usize>,
        last_ts: u64,
    },
}

pub struct PcapFile {
    inner: Inner,
    pub interfaces: Vec<Interface>,
    pub file_len: u64,
    read_bytes: Arc<AtomicU64>,
    packets: u64,
}

/// Counts the bytes read, for the progress bar.
struct Counting<R> {
    inner: R,
    n: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl PcapFile {
    /// A classic pcap: one interface for the whole file (a pcapng may add interfaces as it
    /// goes, so it never is).
    pub fn one_interface(&self) -> bool {
        matches!(self.inner, Inner::Pcap(_))
    }

    pub fn open(path: &Path) -> Result<Self, PcapFileError> {
        let open_err = |source| PcapFileError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut f = File::open(path).map_err(open_err)?;
        let file_len = f.metadata().map_err(open_err)?.len();
        let mut magic = [0u8; 4];
        f.read_exact(&mut magic).map_err(open_err)?;
        let f = File::open(path).map_err(open_err)?;
        Self::start(Box::new(f), magic, file_len, &path.display().to_string())
    }

    /// A capture held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, PcapFileError> {
        let mut magic = [0u8; 4];
        let n = bytes.len().min(4);
        magic[..n].copy_from_slice(&bytes[..n]);
        let len = bytes.len() as u64;
        Self::start(Box::new(io::Cursor::new(bytes)), magic, len, "the capture")
    }

    fn start(
        input: Box<dyn Read + Send>,
        magic: [u8; 4],
        file_len: u64,
        name: &str,
    ) -> Result<Self, PcapFileError> {
        let read_bytes = Arc::new(AtomicU64::new(0));
        let reader = BufReader::with_capacity(
            1 << 16,
            Counting {
                inner: input,
                n: read_bytes.clone(),
            },
        );
        let (inner, interfaces) = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0xc3, 0xd4]
            | [0x4d, 0x3c, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d] => {
                let r = PcapReader::new(reader).map_err(|e| PcapFileError::Header(e.into()))?;
                let h = r.header();
                let iface = Interface {
                    name: None,
                    linktype: h.datalink,
                    ts_mul: 1,
                    ts_div: 1,
                    ts_offset_s: 0,
                };
                (Inner::Pcap(r), vec![iface])
            }
            [0x0a, 0x0d, 0x0d, 0x0a] => {
                let r = pcapng::Reader::new(reader);
                (
                    Inner::PcapNg {
                        reader: r,
                        section: Vec::new(),
                        last_ts: 0,
                    },
                    Vec::new(),
                )
            }
            other => {
                return Err(PcapFileError::UnknownFormat(name.to_owned(), other));
            }
        };
        Ok(Self {
            inner,
            interfaces,
            file_len,
            read_bytes,
            packets: 0,
        })
    }

    /// Bytes of the file consumed so far.
    pub fn position(&self) -> u64 {
        self.read_bytes.load(Ordering::Relaxed)
    }

    /// The next packet; `Ok(None)` at the clean end of the file.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, PcapFileError> {
        let packets = self.packets;
        let corrupt = |source: Source| PcapFileError::Corrupt { packets, source };
        let pkt = match &mut self.inner {
            Inner::Pcap(r) => {
                let res = r.header().ts_resolution;
                match r.next_raw_packet() {
                    None => None,
                    Some(Err(e)) => return Err(corrupt(e.into())),
                    Some(Ok(raw)) => {
                        let frac = u64::from(raw.ts_frac);
                        let frac_ns = match res {
                            pcap_file::TsResolution::MicroSecond => frac * 1000,
                            pcap_file::TsResolution::NanoSecond => frac,
                        };
                        Some(Packet {
                            ts_ns: u64::from(raw.ts_sec) * 1_000_000_000 + frac_ns,
                            iface: 0,
                            orig_len: raw.orig_len,
                            data: raw.data.into_owned(),
                        })
                    }
                }
            }
            Inner::PcapNg {
                reader,
                section,
                last_ts,
            } => loop {
                let block = match reader.next_block() {
                    Ok(None) => break None,
                    Err(e) => return Err(corrupt(e.into())),
                    Ok(Some(b)) => b,
                };
                let iface_of = |section: &[usize], id: u32| -> Result<usize, PcapFileError> {
                    section
                        .get(id as usize)
                        .copied()
                        .ok_or_else(|| PcapFileError::Corrupt {
                            packets,
                            source: format!("a packet names interface {id}, not described").into(),
                        })
                };
                match block {
                    Block::Section => section.clear(),
                    Block::Interface(d) => {
                        section.push(self.interfaces.len());
                        self.interfaces.push(Interface::from_desc(&d));
                    }
                    Block::Packet {
                        iface,
                        ts,
                        orig_len,
                        data,
                    } => {
                        let idx = iface_of(section, iface)?;
                        let ts = self.interfaces[idx].ns(ts);
                        *last_ts = ts;
                        break Some(Packet {
                            ts_ns: ts,
                            iface: idx,
                            orig_len,
                            data: data.to_vec(),
                        });
                    }
                    Block::Simple { orig_len, data } => {
                        // No timestamp and always interface 0: use the last time seen.
                        let idx = iface_of(section, 0)?;
                        break Some(Packet {
                            ts_ns: *last_ts,
                            iface: idx,
                            orig_len,
                            data: data.to_vec(),
                        });
                    }
                    Block::Other => {}
                }
            },
        };
        if pkt.is_some() {
            self.packets += 1;
        }
        Ok(pkt)
    }
}

const ETH_HLEN: usize = 14;

/// Why a recorded frame cannot be given to the kernel program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameSkip {
    /// Shorter than its link-layer header (or than an Ethernet header).
    Short,
    /// A link type devourer does not replay.
    UnsupportedLink,
}

fn eth_header(ethertype: u16) -> [u8; ETH_HLEN] {
    let mut h = [0u8; ETH_HLEN];
    h[12..].copy_from_slice(&ethertype.to_be_bytes());
    h
}

fn ethertype_for_ip(first: Option<&u8>) -> Option<u16> {
    match first.map(|b| b >> 4) {
        Some(4) => Some(0x0800),
        Some(6) => Some(0x86dd),
        _ => None,
    }
}

fn prepend(ethertype: u16, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&eth_header(ethertype));
    out.extend_from_slice(payload);
}

/// Writes `data` (of link type `lt`) into `out` as an Ethernet frame.
pub fn to_ethernet(lt: DataLink, data: &[u8], out: &mut Vec<u8>) -> Result<(), FrameSkip> {
    match lt {
        DataLink::ETHERNET => {
            if data.len() < ETH_HLEN {
                return Err(FrameSkip::Short);
            }
            out.clear();
            out.extend_from_slice(data);
        }
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => {
            // Non-IP content still gets a frame: the program counts it as malformed/non-IP.
            let et = ethertype_for_ip(data.first()).unwrap_or(0);
            if data.is_empty() {
                return Err(FrameSkip::Short);
            }
            prepend(et, data, out);
        }
        DataLink::LINUX_SLL => {
            // 16-byte header, protocol (ethertype) in the last two bytes.
            if data.len() < 16 {
                return Err(FrameSkip::Short);
            }
            prepend(u16::from_be_bytes([data[14], data[15]]), &data[16..], out);
        }
        DataLink::LINUX_SLL2 => {
            // 20-byte header, protocol first.
            if data.len() < 20 {
                return Err(FrameSkip::Short);
            }
            prepend(u16::from_be_bytes([data[0], data[1]]), &data[20..], out);
        }
        DataLink::NULL | DataLink::LOOP => {
            // 4-byte address family (host order for NULL, network order for LOOP); the IP
            // version nibble is the reliable part across writers' byte orders.
            if data.len() < 4 {
                return Err(FrameSkip::Short);
            }
            let et = ethertype_for_ip(data.get(4)).unwrap_or(0);
            prepend(et, &data[4..], out);
        }
        _ => return Err(FrameSkip::UnsupportedLink),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsresol_defaults_and_powers() {
        assert_eq!(tsresol(6), (1000, 1));
        assert_eq!(tsresol(9), (1, 1));
        assert_eq!(tsresol(3), (1_000_000, 1));
        assert_eq!(tsresol(12), (1, 1000));
        assert_eq!(tsresol(0x80 | 10), (1_000_000_000, 1024));
    }

    #[test]
    fn raw_ip_and_cooked_frames_become_ethernet() {
        let ip4 = [0x45u8, 0, 0, 20];
        let mut out = Vec::new();
        to_ethernet(DataLink::RAW, &ip4, &mut out).unwrap();
        assert_eq!(&out[12..14], &[0x08, 0x00]);
        assert_eq!(&out[14..], &ip4);

        let mut sll = vec![0u8; 16];
        sll[14] = 0x86;
        sll[15] = 0xdd;
        sll.extend_from_slice(&[0x60, 0, 0, 0]);
        to_ethernet(DataLink::LINUX_SLL, &sll, &mut out).unwrap();
        assert_eq!(&out[12..14], &[0x86, 0xdd]);
        assert_eq!(&out[14..], &[0x60, 0, 0, 0]);

        let mut sll2 = vec![0x08, 0x00];
        sll2.extend_from_slice(&[0u8; 18]);
        sll2.push(0x45);
        to_ethernet(DataLink::LINUX_SLL2, &sll2, &mut out).unwrap();
        assert_eq!(&out[12..], &[0x08, 0x00, 0x45]);
    }

    #[test]
    fn short_and_unknown_frames_are_refused() {
        let mut out = Vec::new();
        assert_eq!(
            to_ethernet(DataLink::ETHERNET, &[0; 13], &mut out),
            Err(FrameSkip::Short)
        );
        assert_eq!(
            to_ethernet(DataLink::IEEE802_11, &[0; 64], &mut out),
            Err(FrameSkip::UnsupportedLink)
        );
    }
}
