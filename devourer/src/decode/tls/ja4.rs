//! The JA4 fingerprint of a ClientHello, per FoxIO's specification (`technical_details/JA4.md`):
//! `t` (TLS over TCP), version, SNI or not, cipher and extension counts, the first ALPN's ends,
//! then truncated SHA-256 hashes of the sorted ciphers and of the sorted extensions (SNI and
//! ALPN left out) with the signature algorithms in their order. GREASE values never count.

use std::fmt::Write;

use sha2::{Digest, Sha256};

/// What JA4 reads of a ClientHello (GREASE values may still be in it).
#[derive(Clone, Debug, Default)]
pub struct Hello<'a> {
    /// The highest version offered (`supported_versions`, else the hello's own).
    pub version: u16,
    pub ciphers: &'a [u16],
    /// Extension types in their order.
    pub extensions: &'a [u16],
    /// The first ALPN value, if any.
    pub first_alpn: Option<&'a [u8]>,
    /// Signature algorithms in their order.
    pub sig_algs: &'a [u16],
}

/// A GREASE value (RFC 8701): 0x?a?a with both bytes equal.
pub fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

const SNI: u16 = 0x0000;
const ALPN: u16 = 0x0010;

/// `t13d1516h2_8daaf6152771_e5627efa2ab1`.
pub fn ja4(h: &Hello<'_>) -> String {
    let ciphers = without_grease(h.ciphers);
    let exts = without_grease(h.extensions);
    let sni = if exts.contains(&SNI) { 'd' } else { 'i' };
    let mut out = format!(
        "t{}{sni}{:02}{:02}{}_",
        version(h.version),
        ciphers.len().min(99),
        exts.len().min(99),
        alpn_ends(h.first_alpn)
    );
    let mut sorted = ciphers;
    sorted.sort_unstable();
    out.push_str(&hash12(&hex_list(&sorted)));
    out.push('_');
    let mut sorted: Vec<u16> = exts
        .into_iter()
        .filter(|&e| e != SNI && e != ALPN)
        .collect();
    sorted.sort_unstable();
    let sigs = without_grease(h.sig_algs);
    let mut c = hex_list(&sorted);
    if !sorted.is_empty() && !sigs.is_empty() {
        c.push('_');
        c.push_str(&hex_list(&sigs));
    }
    out.push_str(&hash12(&c));
    out
}

/// `v` in its order, GREASE values left out.
fn without_grease(v: &[u16]) -> Vec<u16> {
    v.iter().copied().filter(|&x| !is_grease(x)).collect()
}

/// The version's two characters.
fn version(v: u16) -> &'static str {
    match v {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        0x0002 => "s2",
        0xfeff => "d1",
        0xfefd => "d2",
        0xfefc => "d3",
        _ => "00",
    }
}

/// The first ALPN value's first and last characters; where either is not alphanumeric, the
/// first and last characters of its hex; `00` without one.
fn alpn_ends(first: Option<&[u8]>) -> String {
    let Some(v) = first.filter(|v| !v.is_empty()) else {
        return "00".into();
    };
    let (a, z) = (v[0], v[v.len() - 1]);
    if a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric() {
        return format!("{}{}", a as char, z as char);
    }
    let hex = format!("{a:02x}{z:02x}");
    let b = hex.as_bytes();
    format!("{}{}", b[0] as char, b[3] as char)
}

/// `002f,0035,...`: four lower-case hex digits each.
fn hex_list(v: &[u16]) -> String {
    let mut s = String::with_capacity(v.len() * 5);
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{x:04x}");
    }
    s
}

/// The first 12 hex digits of the list's SHA-256; twelve zeros for an empty list.
fn hash12(list: &str) -> String {
    if list.is_empty() {
        return "000000000000".into();
    }
    let digest = Sha256::digest(list.as_bytes());
    let mut s = String::with_capacity(12);
    for b in &digest[..6] {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of FoxIO's JA4.md, in its original order (its `JA4_ro`), with GREASE
    /// values added where a browser puts them.
    #[test]
    fn the_specifications_example_gives_its_fingerprint() {
        let ciphers = [
            0x0a0a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013,
            0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
        ];
        let extensions = [
            0x3a3a, 0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023,
            0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015, 0xfafa,
        ];
        let sig_algs = [
            0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
        ];
        let h = Hello {
            version: 0x0304,
            ciphers: &ciphers,
            extensions: &extensions,
            first_alpn: Some(b"h2"),
            sig_algs: &sig_algs,
        };
        assert_eq!(ja4(&h), "t13d1516h2_8daaf6152771_e5627efa2ab1");
        // Without signature algorithms the extension list is hashed alone (the spec's
        // 6d807ffa2a79).
        let h = Hello { sig_algs: &[], ..h };
        assert_eq!(ja4(&h), "t13d1516h2_8daaf6152771_6d807ffa2a79");
    }

    #[test]
    fn alpn_ends_follow_the_specifications_examples() {
        assert_eq!(alpn_ends(Some(b"h2")), "h2");
        assert_eq!(alpn_ends(Some(b"http/1.1")), "h1");
        assert_eq!(alpn_ends(Some(b"x")), "xx");
        assert_eq!(alpn_ends(Some(b"")), "00");
        assert_eq!(alpn_ends(None), "00");
        assert_eq!(alpn_ends(Some(&[0xab])), "ab");
        assert_eq!(alpn_ends(Some(&[0xab, 0xcd])), "ad");
        assert_eq!(alpn_ends(Some(&[0x30, 0xab])), "3b");
        assert_eq!(alpn_ends(Some(&[0x30, 0x31, 0xab, 0xcd])), "3d");
        assert_eq!(alpn_ends(Some(&[0x30, 0xab, 0xcd, 0x31])), "01");
    }

    #[test]
    fn empty_lists_hash_to_zeros_and_counts_stop_at_99() {
        let ciphers: Vec<u16> = (1..=120).collect();
        let h = Hello {
            version: 0x0303,
            ciphers: &ciphers,
            ..Default::default()
        };
        assert_eq!(&ja4(&h)[..10], "t12i990000");
        assert!(ja4(&h).ends_with("_000000000000"));
        let h = Hello {
            version: 0x7f1c,
            ..Default::default()
        };
        assert_eq!(ja4(&h), "t00i000000_000000000000_000000000000");
        assert!(is_grease(0x0a0a) && is_grease(0xfafa) && !is_grease(0x0a1a));
    }
}
