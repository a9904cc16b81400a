//! Short strings of a known greatest length kept inline (record ids, timestamps, addresses,
//! Community IDs): every record carries several, and an allocation each was a tenth of the
//! agent's CPU per evicted flow.

use std::{fmt, ops::Deref};

/// A string of at most `N` bytes, stored in place. Serialises, prints and compares as a `str`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Inline<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

/// An address as records print it: IPv6 text is at most 45 bytes (`INET6_ADDRSTRLEN` - 1).
pub type AddrText = Inline<45>;

impl<const N: usize> Inline<N> {
    const FITS_U8: () = assert!(N <= u8::MAX as usize);

    pub const fn empty() -> Self {
        let () = Self::FITS_U8;
        Self {
            len: 0,
            bytes: [0; N],
        }
    }

    /// `s`, or `None` when it is longer than `N` bytes.
    pub fn new(s: &str) -> Option<Self> {
        let mut out = Self::empty();
        out.push_str(s).ok()?;
        Some(out)
    }

    /// ASCII bytes (digits, letters, punctuation), as formatters build them.
    pub fn from_ascii(b: &[u8; N]) -> Self {
        assert!(b.is_ascii(), "ASCII only");
        Self {
            len: N as u8,
            bytes: *b,
        }
    }

    /// Appends `s` whole, or nothing when it does not fit.
    pub fn push_str(&mut self, s: &str) -> Result<(), fmt::Error> {
        let at = usize::from(self.len);
        let end = at + s.len();
        if end > N {
            return Err(fmt::Error);
        }
        self.bytes[at..end].copy_from_slice(s.as_bytes());
        self.len = end as u8;
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        let b = &self.bytes[..usize::from(self.len)];
        // SAFETY: the bytes up to len were only ever written whole from `&str`s or checked
        // ASCII arrays, so they are valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(b) }
    }
}

impl<const N: usize> Default for Inline<N> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<const N: usize> Deref for Inline<N> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> fmt::Write for Inline<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_str(s)
    }
}

impl<const N: usize> fmt::Debug for Inline<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for Inline<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> serde::Serialize for Inline<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<const N: usize> PartialEq<str> for Inline<N> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl<const N: usize> PartialEq<&str> for Inline<N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl<const N: usize> PartialEq<String> for Inline<N> {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

/// Records built by hand in tests.
#[cfg(test)]
impl<const N: usize> From<&str> for Inline<N> {
    fn from(s: &str) -> Self {
        Self::new(s).expect("a test string that fits")
    }
}

#[cfg(test)]
impl<const N: usize> From<String> for Inline<N> {
    fn from(s: String) -> Self {
        Self::from(s.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    #[test]
    fn holds_what_fits_and_refuses_what_does_not() {
        let s = Inline::<4>::new("abcd").expect("fits");
        assert_eq!(s, "abcd");
        assert_eq!(format!("{s} {s:?}"), "abcd \"abcd\"");
        assert!(Inline::<4>::new("abcde").is_none());
        let mut w = Inline::<5>::empty();
        assert!(write!(w, "ü{}", 12).is_ok());
        assert_eq!(w, "ü12");
        // A piece that does not fit is left out whole: what is there stays valid UTF-8.
        assert!(w.write_str("ü").is_err());
        assert_eq!(w.as_str(), "ü12");
        assert_eq!(serde_json::to_string(&w).expect("json"), "\"ü12\"");
    }

    #[test]
    fn the_longest_ipv6_text_fits() {
        let a: std::net::Ipv6Addr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .expect("addr");
        let mut t = AddrText::empty();
        write!(t, "{a}").expect("fits");
        assert_eq!(t.as_str(), a.to_string());
    }
}
