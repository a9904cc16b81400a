//! The running kernel's BTF (`/sys/kernel/btf/vmlinux`) read for what the drop program needs
//! and Rust eBPF cannot relocate itself (no CO-RE): an enum's names and values (the drop
//! reasons, whose numbering changes between kernels), a struct member's offset (the
//! `sk_buff` fields it reads) and a tracepoint's arguments. A bounds-checked reader of the
//! format in `include/uapi/linux/btf.h`: a bad or truncated file is an error, never a panic.

use std::path::Path;

/// Where the kernel exposes its own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The file is larger than this only if something is wrong (vmlinux BTF is a few MiB).
const MAX_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
    #[error("not BTF: {0}")]
    Format(&'static str),
    #[error("no {0} in the kernel's BTF")]
    Missing(String),
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One type: its kind, name, `size_or_type` word, member count, kflag, and where its trailing
/// data starts in the type section.
#[derive(Clone, Copy, Debug)]
struct Ty {
    kind: u32,
    name: u32,
    vlen: usize,
    kflag: bool,
    size_or_type: u32,
    extra: usize,
}

/// A parsed BTF blob: the type section indexed by id (ids start at 1) and the strings.
pub struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    index: Vec<Ty>,
}

/// A struct member found by [`Btf::member`]: its byte offset in the struct and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub size: u32,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Format("truncated"))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn vmlinux() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        use std::io::Read;
        let io = |e| BtfError::Io(path.display().to_string(), e);
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_BYTES)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        Self::parse(&bytes)
    }

    /// Parses a little-endian BTF blob (the kernels devourer runs on are little-endian).
    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        if b.len() < 24 || b[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Format("bad magic"));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let section = |off: usize, len: usize| -> Result<Vec<u8>, BtfError> {
            let start = hdr_len
                .checked_add(off)
                .ok_or(BtfError::Format("section offset"))?;
            b.get(start..start.saturating_add(len))
                .filter(|s| s.len() == len)
                .map(<[u8]>::to_vec)
                .ok_or(BtfError::Format("section past the end"))
        };
        let types = section(u32_at(b, 8)? as usize, u32_at(b, 12)? as usize)?;
        let strings = section(u32_at(b, 16)? as usize, u32_at(b, 20)? as usize)?;
        let mut index = vec![Ty {
            kind: 0,
            name: 0,
            vlen: 0,
            kflag: false,
            size_or_type: 0,
            extra: 0,
        }];
        let mut off = 0;
        while off < types.len() {
            let info = u32_at(&types, off + 4)?;
            let ty = Ty {
                kind: (info >> 24) & 0x1f,
                name: u32_at(&types, off)?,
                vlen: (info & 0xffff) as usize,
                kflag: info >> 31 != 0,
                size_or_type: u32_at(&types, off + 8)?,
                extra: off + 12,
            };
            let trailing = match ty.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => ty.vlen * 12,
                KIND_ENUM | KIND_FUNC_PROTO => ty.vlen * 8,
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | KIND_TYPE_TAG => 0,
                _ => return Err(BtfError::Format("unknown type kind")),
            };
            off = ty.extra + trailing;
            if off > types.len() {
                return Err(BtfError::Format("type past the section"));
            }
            index.push(ty);
        }
        Ok(Self {
            types,
            strings,
            index,
        })
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Result<Ty, BtfError> {
        self.index
            .get(id as usize)
            .copied()
            .ok_or(BtfError::Format("type id out of range"))
    }

    /// The first type of one of `kinds` named `name`.
    fn find(&self, name: &str, kinds: &[u32]) -> Option<Ty> {
        self.index
            .iter()
            .skip(1)
            .find(|t| kinds.contains(&t.kind) && self.name(t.name) == name)
            .copied()
    }

    /// Follows typedefs, qualifiers and type tags to the type they name.
    fn resolve(&self, mut id: u32) -> Result<Ty, BtfError> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Ok(t),
            }
        }
        Err(BtfError::Format("typedef loop"))
    }

    /// The named enum's enumerators and their values (`ENUM` or `ENUM64`, values above 32
    /// bits dropped: the kernel's enums that matter here are 32-bit).
    pub fn enumerators(&self, name: &str) -> Result<Vec<(String, u32)>, BtfError> {
        let t = self
            .find(name, &[KIND_ENUM, KIND_ENUM64])
            .ok_or_else(|| BtfError::Missing(format!("enum {name}")))?;
        let step = if t.kind == KIND_ENUM { 8 } else { 12 };
        let mut out = Vec::with_capacity(t.vlen);
        for i in 0..t.vlen {
            let at = t.extra + i * step;
            let lo = u32_at(&self.types, at + 4)?;
            let hi = if step == 12 {
                u32_at(&self.types, at + 8)?
            } else {
                0
            };
            if hi == 0 {
                out.push((self.name(u32_at(&self.types, at)?).to_owned(), lo));
            }
        }
        Ok(out)
    }

    /// The byte size of a type (pointers are 8 bytes: 64-bit kernels only).
    fn size_of(&self, id: u32) -> Result<u32, BtfError> {
        let t = self.resolve(id)?;
        Ok(match t.kind {
            KIND_PTR => 8,
            KIND_ARRAY => {
                let elem = u32_at(&self.types, t.extra)?;
                let n = u32_at(&self.types, t.extra + 8)?;
                self.size_of(elem)?.saturating_mul(n)
            }
            _ => t.size_or_type,
        })
    }

    /// The member `name` of struct `strukt`, looked for in anonymous structs and unions too
    /// (the kernel groups `sk_buff`'s header offsets in one); bitfields are refused.
    pub fn member(&self, strukt: &str, name: &str) -> Result<Member, BtfError> {
        let t = self
            .find(strukt, &[KIND_STRUCT])
            .ok_or_else(|| BtfError::Missing(format!("struct {strukt}")))?;
        self.member_in(t, name, 0, 0)?
            .ok_or_else(|| BtfError::Missing(format!("{strukt}.{name}")))
    }

    fn member_in(
        &self,
        t: Ty,
        name: &str,
        base_bits: u32,
        depth: u32,
    ) -> Result<Option<Member>, BtfError> {
        if depth > 8 {
            return Ok(None);
        }
        for i in 0..t.vlen {
            let at = t.extra + i * 12;
            let mname = self.name(u32_at(&self.types, at)?);
            let mtype = u32_at(&self.types, at + 4)?;
            let raw = u32_at(&self.types, at + 8)?;
            // With kflag, the top 8 bits are a bitfield's size and the rest its bit offset.
            let (bits, bitfield) = if t.kflag {
                (raw & 0x00ff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            let bits = base_bits.saturating_add(bits);
            if mname == name {
                if bitfield || bits % 8 != 0 {
                    return Err(BtfError::Format("member is a bitfield"));
                }
                return Ok(Some(Member {
                    offset: bits / 8,
                    size: self.size_of(mtype)?,
                }));
            }
            if mname.is_empty() {
                let inner = self.resolve(mtype)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some(m) = self.member_in(inner, name, bits, depth + 1)?
                {
                    return Ok(Some(m));
                }
            }
        }
        Ok(None)
    }

    /// The arguments of a raw tracepoint (`btf_trace_NAME`, a pointer to a function whose
    /// first parameter is the tracepoint's private data): each argument's type name, after
    /// typedefs (`enum skb_drop_reason` as `skb_drop_reason`, pointers as `*`).
    pub fn tracepoint_args(&self, tracepoint: &str) -> Result<Vec<String>, BtfError> {
        let name = format!("btf_trace_{tracepoint}");
        let t = self
            .find(&name, &[KIND_TYPEDEF])
            .ok_or_else(|| BtfError::Missing(name.clone()))?;
        let ptr = self.resolve(t.size_or_type)?;
        let proto = if ptr.kind == KIND_PTR {
            self.resolve(ptr.size_or_type)?
        } else {
            ptr
        };
        if proto.kind != KIND_FUNC_PROTO {
            return Err(BtfError::Format("tracepoint type is not a function"));
        }
        let mut out = Vec::new();
        for i in 1..proto.vlen {
            let at = proto.extra + i * 8;
            let p = self.resolve(u32_at(&self.types, at + 4)?)?;
            out.push(match p.kind {
                KIND_PTR => "*".to_owned(),
                _ => self.name(p.name).to_owned(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob built by hand: what the parser is checked against, field by field.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next: u32,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next: 1,
            }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn words(&mut self, w: &[u32]) {
            for x in w {
                self.types.extend_from_slice(&x.to_le_bytes());
            }
        }
        fn ty(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, st: u32) -> u32 {
            let n = self.s(name);
            self.words(&[n, kind << 24 | vlen | u32::from(kflag) << 31, st]);
            self.next += 1;
            self.next - 1
        }
        fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.ty(name, KIND_INT, 0, false, size);
            self.words(&[size * 8]);
            id
        }
        fn composite(&mut self, kind: u32, name: &str, size: u32, m: &[(&str, u32, u32)]) -> u32 {
            let id = self.ty(name, kind, m.len() as u32, false, size);
            for (n, t, bits) in m {
                let n = self.s(n);
                self.words(&[n, *t, *bits]);
            }
            id
        }
        fn build(self) -> Vec<u8> {
            let mut b = vec![0x9f, 0xeb, 1, 0];
            for w in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                b.extend_from_slice(&w.to_le_bytes());
            }
            b.extend(self.types);
            b.extend(self.strings);
            b
        }
    }

    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let u16_ = b.int("__u16", 2);
        let u32_ = b.int("unsigned int", 4);
        let ptr = b.ty("", KIND_PTR, 0, false, 0);
        // enum skb_drop_reason { NOT_SPECIFIED = 2, NETFILTER_DROP = 12 }
        let reason = b.ty("skb_drop_reason", KIND_ENUM, 2, false, 4);
        for (n, v) in [
            ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
            ("SKB_DROP_REASON_NETFILTER_DROP", 12),
        ] {
            let n = b.s(n);
            b.words(&[n, v]);
        }
        // An ENUM64 with one value above 32 bits.
        b.ty("wide", KIND_ENUM64, 2, false, 8);
        for (n, lo, hi) in [("SMALL", 7, 0), ("HUGE", 0, 1)] {
            let n = b.s(n);
            b.words(&[n, lo, hi]);
        }
        // struct { __u16 transport_header; __u16 network_header; } inside a union at 192 bits.
        let inner = b.composite(
            KIND_STRUCT,
            "",
            4,
            &[("transport_header", u16_, 0), ("network_header", u16_, 16)],
        );
        let grp = b.composite(KIND_UNION, "", 4, &[("", inner, 0)]);
        b.composite(
            KIND_STRUCT,
            "sk_buff",
            64,
            &[("head", ptr, 0), ("len", u32_, 128), ("", grp, 192)],
        );
        // typedef void (*btf_trace_kfree_skb)(void *, struct sk_buff *, void *, enum ...);
        let proto = b.ty("", KIND_FUNC_PROTO, 4, false, 0);
        b.words(&[0, ptr, 0, ptr, 0, ptr, 0, reason]);
        let fptr = b.ty("", KIND_PTR, 0, false, proto);
        b.ty("btf_trace_kfree_skb", KIND_TYPEDEF, 0, false, fptr);
        b.build()
    }

    #[test]
    fn enumerators_come_with_their_values_and_wide_ones_are_left_out() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            btf.enumerators("skb_drop_reason").unwrap(),
            vec![
                ("SKB_DROP_REASON_NOT_SPECIFIED".to_owned(), 2),
                ("SKB_DROP_REASON_NETFILTER_DROP".to_owned(), 12)
            ]
        );
        assert_eq!(
            btf.enumerators("wide").unwrap(),
            vec![("SMALL".to_owned(), 7)]
        );
        assert!(matches!(
            btf.enumerators("nothing"),
            Err(BtfError::Missing(_))
        ));
    }

    #[test]
    fn members_are_found_inside_anonymous_unions_with_their_offset_and_size() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            btf.member("sk_buff", "len").unwrap(),
            Member {
                offset: 16,
                size: 4
            }
        );
        assert_eq!(
            btf.member("sk_buff", "head").unwrap(),
            Member { offset: 0, size: 8 }
        );
        assert_eq!(
            btf.member("sk_buff", "network_header").unwrap(),
            Member {
                offset: 26,
                size: 2
            }
        );
        assert!(btf.member("sk_buff", "mac_len").is_err());
    }

    #[test]
    fn with_kflag_a_members_offset_is_its_low_24_bits_and_bitfields_are_refused() {
        let mut b = Builder::new();
        let u8_ = b.int("u8", 1);
        let u16_ = b.int("__u16", 2);
        // struct s { u8 a:3; u8 b:5; __u16 network_header; } with kflag: sizes in the top byte.
        b.ty("s", KIND_STRUCT, 3, true, 4);
        for (n, t, bits) in [
            ("a", u8_, 3 << 24),
            ("b", u8_, 5 << 24 | 3),
            ("network_header", u16_, 16),
        ] {
            let n = b.s(n);
            b.words(&[n, t, bits]);
        }
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(
            btf.member("s", "network_header").unwrap(),
            Member { offset: 2, size: 2 }
        );
        assert!(matches!(btf.member("s", "b"), Err(BtfError::Format(_))));
    }

    #[test]
    fn a_tracepoints_arguments_are_read_from_its_prototype() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            btf.tracepoint_args("kfree_skb").unwrap(),
            vec!["*", "*", "skb_drop_reason"]
        );
    }

    #[test]
    fn truncated_or_foreign_bytes_are_errors_not_panics() {
        let good = sample();
        for cut in 0..good.len() {
            let _ = Btf::parse(&good[..cut]);
        }
        assert!(Btf::parse(b"not btf at all, really not").is_err());
        let mut bad = good.clone();
        bad[24 + 7] = 0x1f; // the first type's kind: 31, unknown
        assert!(Btf::parse(&bad).is_err());
    }

    #[test]
    fn the_running_kernels_btf_names_its_drop_reasons_and_skb_fields() {
        let Ok(btf) = Btf::vmlinux() else {
            eprintln!("no {VMLINUX}: skipped");
            return;
        };
        let v = aya::util::KernelVersion::current().unwrap();
        if v >= aya::util::KernelVersion::new(5, 17, 0) {
            let reasons = btf.enumerators("skb_drop_reason").unwrap();
            assert!(
                reasons
                    .iter()
                    .any(|(n, _)| n == "SKB_DROP_REASON_NETFILTER_DROP")
            );
        }
        for f in ["len", "head", "data", "network_header", "protocol"] {
            let m = btf.member("sk_buff", f).unwrap();
            assert!(m.size > 0 && m.offset < 512, "{f}: {m:?}");
        }
    }
}
