//! The first bytes of a TCP stream read as a TLS ClientHello or ServerHello: names and
//! protocols bounded, the JA4 fingerprint well formed, whatever the bytes.
#![no_main]

use devourer::decode::tls::hello::{MAX_ALPN, client_hello, server_version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = client_hello(data) {
        assert!(info.sni.as_deref().is_none_or(|s| s.len() <= 255 * 3));
        assert!(info.alpn.len() <= MAX_ALPN);
        assert!(info.alpn.iter().all(|a| a.len() <= 255 * 3));
        let ja4 = info.ja4.as_deref().expect("a hello has a fingerprint");
        assert_eq!(ja4.len(), 36, "{ja4}");
        assert!(ja4.is_ascii(), "{ja4}");
    }
    let _ = server_version(data);
});
