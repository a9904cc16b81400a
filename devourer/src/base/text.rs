//! Text from outside (wire bytes, request fields) made safe for records and logs: printable
//! ASCII stays (a backslash doubles), any other byte becomes `\DDD`, so nothing can start a
//! new log line, forge a field, or pass as something it is not.

use std::fmt::Write as _;

/// `bytes` escaped.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "\\{b:03}");
            }
        }
    }
    s
}

/// A string from outside, escaped and cut to `max` bytes (for logs).
pub fn escape_str(s: &str, max: usize) -> String {
    let bytes = s.as_bytes();
    let mut out = escape(&bytes[..bytes.len().min(max)]);
    if bytes.len() > max {
        out.push_str("[...]");
    }
    out
}

/// A URL without the credentials in its user part (`scheme://***@host...`), for logs and
/// printed settings; anything else unchanged.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bytes_and_backslashes_cannot_forge_lines() {
        assert_eq!(escape(b"a\nb\\c\x7f"), "a\\010b\\\\c\\127");
        assert_eq!(escape_str("x\r\ny", 2), "x\\013[...]");
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact_url("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("user@host"), "user@host");
    }
}
