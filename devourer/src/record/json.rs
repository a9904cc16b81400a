//! The records' JSON encoding ([`Fields`] for a JSON object): what serde_json would write for
//! the same fields (strings escaped exactly as it escapes them, tested), without its per-byte
//! escaping of every key and its map machinery. Keys are static and need no escaping;
//! string values take a fast path when they need none and serde_json's escaping otherwise.

use super::fields::{Fields, Nested, Record};

/// A JSON object being written to `out`.
pub struct Object<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Object<'a> {
    pub fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, first: true }
    }

    // Inlined into every call site, where the key is a literal: its copy is then a few moves
    // of known length rather than a call to `memcpy` (calls are dear on this path).
    #[inline(always)]
    fn key(&mut self, key: &'static str) {
        debug_assert!(key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'));
        let out = &mut *self.out;
        out.reserve(key.len() + 4);
        if !self.first {
            out.push(b',');
        }
        self.first = false;
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
    }

    /// Fields written out already (`"a":1,"b":null`), appended as they are.
    pub fn fields(&mut self, json: &'static str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.extend_from_slice(json.as_bytes());
    }

    /// Appends `r` as one JSON object.
    #[inline]
    pub fn write<R: Record>(r: &R, out: &mut Vec<u8>) {
        let mut o = Object::open(out);
        r.fields(&mut o);
        o.close();
    }

    pub fn close(self) {
        self.out.push(b'}');
    }
}

impl Fields for Object<'_> {
    #[inline(always)]
    fn str(&mut self, key: &'static str, value: &str) {
        self.key(key);
        string(self.out, value);
    }

    #[inline(always)]
    fn opt_str(&mut self, key: &'static str, value: Option<&str>) {
        self.key(key);
        match value {
            Some(v) => string(self.out, v),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    #[inline(always)]
    fn uint(&mut self, key: &'static str, value: u64) {
        self.key(key);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    #[inline(always)]
    fn opt_uint(&mut self, key: &'static str, value: Option<u64>) {
        match value {
            Some(v) => self.uint(key, v),
            None => {
                self.key(key);
                self.out.extend_from_slice(b"null");
            }
        }
    }

    #[inline(always)]
    fn time(&mut self, key: &'static str, value: &str) {
        self.str(key, value);
    }

    /// serde_json's float formatting, `null` for what JSON cannot hold.
    fn float(&mut self, key: &'static str, value: Option<f64>) {
        self.key(key);
        serde_json::to_writer(&mut *self.out, &value).expect("a number serialises");
    }

    #[inline(always)]
    fn bool(&mut self, key: &'static str, value: bool) {
        self.key(key);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn strs<S: AsRef<str>>(&mut self, key: &'static str, items: &[S]) {
        self.key(key);
        self.out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            string(self.out, item.as_ref());
        }
        self.out.push(b']');
    }

    fn objects<T: Nested>(&mut self, key: &'static str, items: &[T]) {
        self.key(key);
        self.out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            Object::write(item, self.out);
        }
        self.out.push(b']');
    }

    #[inline(always)]
    fn nulls(&mut self, _keys: &[&'static str], json: &'static str) {
        self.fields(json);
    }
}

/// A JSON string: copied between quotes when nothing in it needs escaping (serde_json escapes
/// control characters, `"` and `\`, nothing else), else written by serde_json.
fn string(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string serialises");
    }
}

/// Whether any byte is a control character, `"` or `\\`: eight bytes at a time (a byte below
/// 0x20, or equal to one of the two, in a word is found with the carry tricks of "Bit
/// Twiddling Hacks", which never miss one), then the tail.
fn needs_escape(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH != 0;
    let mut words = b.chunks_exact(8);
    for c in &mut words {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        if w.wrapping_sub(ONES * 0x20) & !w & HIGH != 0
            || has_zero(w ^ (ONES * u64::from(b'"')))
            || has_zero(w ^ (ONES * u64::from(b'\\')))
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
        for s in [
            "",
            "plain",
            "quote\"",
            "back\\slash",
            "new\nline",
            "tab\t",
            "\u{0}\u{1f}",
            "del\u{7f}",
            "ünïcødé ✓ 😀",
            "</script>",
        ] {
            let mut out = Vec::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn every_byte_that_needs_escaping_is_found_at_every_position() {
        let plain = "abcdefghijklmnopqrstuvwxyzäö€ -~\u{7f}";
        assert!(!needs_escape(plain.as_bytes()));
        for bad in (0u8..0x20).chain([b'"', b'\\']) {
            for len in 1..24 {
                for pos in 0..len {
                    let mut v = vec![b'a'; len];
                    v[pos] = bad;
                    assert!(needs_escape(&v), "{bad:#x} at {pos} of {len}");
                }
            }
        }
        // Bytes next to the ones searched for, and every UTF-8 byte, need none.
        for ok in [0x20u8, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xa2, 0xff] {
            assert!(!needs_escape(&[ok; 17]), "{ok:#x}");
        }
    }
}
