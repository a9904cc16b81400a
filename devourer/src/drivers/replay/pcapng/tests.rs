//! The reader against hand-built files: both byte orders, the options replay needs, options
//! other readers refuse, and hostile or cut blocks.

use super::*;

/// Blocks in one byte order.
struct W {
    be: bool,
    out: Vec<u8>,
}

impl W {
    fn u16(&self, v: u16) -> [u8; 2] {
        if self.be {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    fn u32(&self, v: u32) -> [u8; 4] {
        if self.be {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    fn opt(&self, code: u16, value: &[u8]) -> Vec<u8> {
        let mut o = self.u16(code).to_vec();
        o.extend(self.u16(value.len() as u16));
        o.extend(value);
        o.resize(o.len().next_multiple_of(4), 0);
        o
    }

    fn block(&mut self, kind: u32, body: &[u8]) {
        let len = (12 + body.len()) as u32;
        let (k, l) = (self.u32(kind), self.u32(len));
        self.out.extend(k);
        self.out.extend(l);
        self.out.extend(body);
        self.out.extend(l);
    }

    fn shb(&mut self) {
        let mut b = self.u32(BYTE_ORDER_MAGIC).to_vec();
        b.extend(self.u16(1));
        b.extend(self.u16(0));
        b.extend([0xff; 8]);
        // A custom option and a malformed one: both skipped.
        b.extend(self.opt(2988, b"\0\0\x7e\xd9custom"));
        b.extend(self.opt(3, b"\xff\xfeos"));
        self.block(SHB, &b);
    }

    fn idb(&mut self, opts: &[Vec<u8>]) {
        let mut b = self.u16(1).to_vec();
        b.extend(self.u16(0));
        b.extend(self.u32(65535));
        for o in opts {
            b.extend(o);
        }
        self.block(IDB, &b);
    }

    fn epb(&mut self, iface: u32, ts: u64, data: &[u8], opts: &[Vec<u8>]) {
        let mut b = self.u32(iface).to_vec();
        b.extend(self.u32((ts >> 32) as u32));
        b.extend(self.u32(ts as u32));
        b.extend(self.u32(data.len() as u32));
        b.extend(self.u32(data.len() as u32));
        b.extend(data);
        b.resize(b.len().next_multiple_of(4), 0);
        for o in opts {
            b.extend(o);
        }
        self.block(EPB, &b);
    }
}

fn file(be: bool) -> Vec<u8> {
    let mut w = W {
        be,
        out: Vec::new(),
    };
    w.shb();
    let opts = [
        w.opt(2, b"eth\xff1"),
        w.opt(9, &[6]),
        w.opt(
            14,
            &if be {
                5i64.to_be_bytes()
            } else {
                5i64.to_le_bytes()
            },
        ),
        w.opt(2989, b"\0\0\x7e\xd9x"),
        w.opt(0, b""),
    ];
    w.idb(&opts);
    // if_tsresol with a wrong length and a wrong-length epb_flags: ignored, not fatal.
    let bad = [w.opt(9, &[6, 0]), w.opt(0, b"")];
    w.idb(&bad);
    let flags = [w.opt(2, b"\x01\x02"), w.opt(0, b"")];
    w.epb(0, 1_700_000_000_000_123, b"packet-one", &flags);
    w.block(5, &[0; 16]);
    w.epb(1, 42, b"two", &[]);
    w.out
}

#[test]
fn both_byte_orders_read_with_the_options_that_matter_and_bad_ones_ignored() {
    for be in [false, true] {
        let bytes = file(be);
        let mut r = Reader::new(&bytes[..]);
        assert_eq!(r.next_block().unwrap(), Some(Block::Section));
        let Some(Block::Interface(d)) = r.next_block().unwrap() else {
            panic!("an interface")
        };
        assert_eq!(d.name.as_deref(), Some("eth\u{fffd}1"));
        assert_eq!((d.linktype, d.tsresol, d.tsoffset), (1, Some(6), Some(5)));
        let Some(Block::Interface(d)) = r.next_block().unwrap() else {
            panic!("a second interface")
        };
        assert_eq!(d.tsresol, None, "a two-byte if_tsresol is ignored");
        assert_eq!(
            r.next_block().unwrap(),
            Some(Block::Packet {
                iface: 0,
                ts: 1_700_000_000_000_123,
                orig_len: 10,
                data: b"packet-one"
            })
        );
        assert_eq!(r.next_block().unwrap(), Some(Block::Other));
        assert_eq!(
            r.next_block().unwrap(),
            Some(Block::Packet {
                iface: 1,
                ts: 42,
                orig_len: 3,
                data: b"two"
            })
        );
        assert_eq!(r.next_block().unwrap(), None);
    }
}

#[test]
fn hostile_and_cut_blocks_are_errors_not_allocations() {
    let mut w = W {
        be: false,
        out: Vec::new(),
    };
    w.shb();
    let mut huge = w.out.clone();
    huge.extend(w.u32(EPB));
    huge.extend(w.u32(0xffff_fff0));
    assert!(matches!(
        Reader::new(&huge[..]).next_blocks(),
        Err(NgError::BadLength { .. })
    ));
    // A block that claims nearly the most a block may take, in a file cut after a few bytes
    // of it: an error, and the reader holds about what arrived, not what was claimed.
    let mut claims = w.out.clone();
    claims.extend(w.u32(EPB));
    claims.extend(w.u32((MAX_BLOCK - 4) as u32));
    claims.extend([0u8; 100]);
    let mut r = Reader::new(&claims[..]);
    assert!(matches!(r.next_blocks(), Err(NgError::Truncated)));
    assert!(
        r.buf.capacity() < 64 << 10,
        "{} bytes held",
        r.buf.capacity()
    );
    let whole = file(false);
    let cut = &whole[..whole.len() - 3];
    assert!(matches!(
        Reader::new(cut).next_blocks(),
        Err(NgError::Truncated)
    ));
    assert!(matches!(
        Reader::new(&whole[28..]).next_blocks(),
        Err(NgError::NoSection) | Err(NgError::BadLength { .. })
    ));
}

impl<R: Read> Reader<R> {
    /// Reads every block, for the tests.
    fn next_blocks(&mut self) -> Result<usize, NgError> {
        let mut n = 0;
        while self.next_block()?.is_some() {
            n += 1;
        }
        Ok(n)
    }
}
