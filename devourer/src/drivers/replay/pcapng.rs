//! A tolerant pcapng block reader: sections (either byte order), interface descriptions
//! (`if_name`, `if_tsresol`, `if_tsoffset`), enhanced, simple and obsolete packet blocks;
//! every other block and every option it does not need is skipped, and a malformed option
//! (a wrong length, text that is not UTF-8) is ignored as tshark does, instead of refusing
//! the whole file. Block lengths are checked and capped, so a hostile length cannot make it
//! allocate more than [`MAX_BLOCK`].

use std::io::{self, Read};

/// The longest block read; a longer one means a corrupt file.
pub const MAX_BLOCK: usize = 16 << 20;

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const OPB: u32 = 2;
const SPB: u32 = 3;
const EPB: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

#[derive(Debug, thiserror::Error)]
pub enum NgError {
    #[error("reading: {0}")]
    Io(#[from] io::Error),
    #[error("a block ends before its header")]
    Truncated,
    #[error("block of type {kind:#x} has a bad length {len}")]
    BadLength { kind: u32, len: u64 },
    #[error("bad byte-order magic {0:#x} in a section header")]
    BadMagic(u32),
    #[error("a block came before the first section header")]
    NoSection,
}

/// One block, as much of it as replay needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Block<'a> {
    /// A new section: its interfaces start from index 0 again.
    Section,
    Interface(IfaceDesc),
    /// A packet on interface `iface` at `ts` (raw units of that interface), `orig_len` bytes
    /// on the wire of which `data` was captured.
    Packet {
        iface: u32,
        ts: u64,
        orig_len: u32,
        data: &'a [u8],
    },
    /// A simple packet block: interface 0, no timestamp.
    Simple {
        orig_len: u32,
        data: &'a [u8],
    },
    /// Anything else (name resolution, statistics, custom, ...).
    Other,
}

/// What an interface description says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IfaceDesc {
    pub linktype: u16,
    pub snaplen: u32,
    pub name: Option<String>,
    pub tsresol: Option<u8>,
    pub tsoffset: Option<i64>,
}

pub struct Reader<R> {
    r: R,
    big_endian: bool,
    in_section: bool,
    buf: Vec<u8>,
}

impl<R: Read> Reader<R> {
    pub fn new(r: R) -> Self {
        Self {
            r,
            big_endian: false,
            in_section: false,
            buf: Vec::new(),
        }
    }

    fn u32(&self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }

    fn u16(&self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.big_endian {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    }

    /// Reads exactly `buf.len()` bytes; `Ok(false)` at a clean end before the first one.
    fn fill(&mut self, buf: &mut [u8], at_block_start: bool) -> Result<bool, NgError> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) if got == 0 && at_block_start => return Ok(false),
                Ok(0) => return Err(NgError::Truncated),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// The next block; `Ok(None)` at the clean end of the file.
    pub fn next_block(&mut self) -> Result<Option<Block<'_>>, NgError> {
        let mut head = [0u8; 8];
        if !self.fill(&mut head, true)? {
            return Ok(None);
        }
        let kind_le = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if kind_le == SHB {
            // The byte order follows the length: read it first.
            let mut bom = [0u8; 4];
            self.fill(&mut bom, false)?;
            self.big_endian = match u32::from_le_bytes(bom) {
                BYTE_ORDER_MAGIC => false,
                m if m.swap_bytes() == BYTE_ORDER_MAGIC => true,
                m => return Err(NgError::BadMagic(m)),
            };
            self.in_section = true;
            let len = self.u32(&head[4..]) as usize;
            self.body(SHB, len, 12)?;
            return Ok(Some(Block::Section));
        }
        if !self.in_section {
            return Err(NgError::NoSection);
        }
        let kind = self.u32(&head[..4]);
        let len = self.u32(&head[4..]) as usize;
        self.body(kind, len, 8)?;
        let b = &self.buf;
        Ok(Some(match kind {
            IDB if b.len() >= 8 => Block::Interface(self.idb()),
            EPB if b.len() >= 20 => {
                let caplen = (self.u32(&b[12..]) as usize).min(b.len() - 20);
                Block::Packet {
                    iface: self.u32(&b[..4]),
                    ts: u64::from(self.u32(&b[4..])) << 32 | u64::from(self.u32(&b[8..])),
                    orig_len: self.u32(&b[16..]),
                    data: &self.buf[20..20 + caplen],
                }
            }
            OPB if b.len() >= 20 => {
                let caplen = (self.u32(&b[12..]) as usize).min(b.len() - 20);
                Block::Packet {
                    iface: u32::from(self.u16(&b[..2])),
                    ts: u64::from(self.u32(&b[4..])) << 32 | u64::from(self.u32(&b[8..])),
                    orig_len: self.u32(&b[16..]),
                    data: &self.buf[20..20 + caplen],
                }
            }
            SPB if b.len() >= 4 => {
                let orig_len = self.u32(&b[..4]);
                let len = (orig_len as usize).min(b.len() - 4);
                Block::Simple {
                    orig_len,
                    data: &self.buf[4..4 + len],
                }
            }
            IDB | EPB | OPB | SPB => {
                return Err(NgError::BadLength {
                    kind,
                    len: len as u64,
                });
            }
            _ => Block::Other,
        }))
    }

    /// Reads the rest of a block of total length `len` (`read` bytes of it already read)
    /// into `buf`, without its trailing length. The buffer grows with the bytes that arrive,
    /// not with the length the block claims: a cut file that claims a long block costs what
    /// it holds.
    fn body(&mut self, kind: u32, len: usize, read: usize) -> Result<(), NgError> {
        if len < 12 || !len.is_multiple_of(4) || len > MAX_BLOCK || len < read + 4 {
            return Err(NgError::BadLength {
                kind,
                len: len as u64,
            });
        }
        let want = len - read;
        self.buf.clear();
        let got = (&mut self.r).take(want as u64).read_to_end(&mut self.buf)?;
        if got < want {
            return Err(NgError::Truncated);
        }
        self.buf.truncate(want - 4);
        Ok(())
    }

    /// An interface description from `buf`; malformed options are ignored.
    fn idb(&self) -> IfaceDesc {
        let b = &self.buf;
        let mut d = IfaceDesc {
            linktype: self.u16(b),
            snaplen: self.u32(&b[4..]),
            ..IfaceDesc::default()
        };
        let mut opts = &b[8..];
        while opts.len() >= 4 {
            let code = self.u16(opts);
            let olen = usize::from(self.u16(&opts[2..]));
            let Some(value) = opts.get(4..4 + olen) else {
                break;
            };
            match (code, olen) {
                (0, _) => break,
                (2, _) => d.name = Some(String::from_utf8_lossy(value).into_owned()),
                (9, 1) => d.tsresol = Some(value[0]),
                (14, 8) => {
                    let a: [u8; 8] = value.try_into().expect("eight bytes");
                    d.tsoffset = Some(if self.big_endian {
                        i64::from_be_bytes(a)
                    } else {
                        i64::from_le_bytes(a)
                    });
                }
                _ => {}
            }
            opts = opts.get(4 + olen.next_multiple_of(4)..).unwrap_or(&[]);
        }
        d
    }
}

#[cfg(test)]
mod tests;
