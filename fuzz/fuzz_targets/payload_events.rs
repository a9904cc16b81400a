//! Ring records as the kernel would write them (a header, then payload): decoded and run
//! through the DNS, HTTP and TLS decoders with small bounds, then expired and flushed.
#![no_main]

use devourer::{
    base::local::LocalAddrs,
    decode::{
        dns::{DnsConfig, DnsOutput, DnsTracker, tcp::TcpLimits},
        http::{HttpConfig, HttpOutput, HttpTracker},
        tls::{TlsTracker, TlsTrackerConfig},
    },
    kernel::events::decode,
};
use devourer_common::payload::PAYLOAD_HEADER_LEN;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut dns = DnsTracker::new(
        DnsConfig {
            timeout_ns: 1_000,
            max_pending: 8,
            tcp: TcpLimits {
                max_streams: 4,
                max_bytes: 4096,
                max_message: 1024,
                idle_ns: 1_000,
            },
            name_cache_entries: 8,
            shared_names: false,
            text_log: true,
        },
        LocalAddrs::new(vec![]),
    );
    let mut http = HttpTracker::new(
        HttpConfig {
            timeout_ns: 1_000,
            max_connections: 4,
            max_pending_bytes: 4096,
            text_log: true,
        },
        LocalAddrs::new(vec![]),
    );
    let mut tls = TlsTracker::new(TlsTrackerConfig {
        timeout_ns: 1_000,
        max_pending_bytes: 20_000,
    });
    let (mut d, mut h) = (DnsOutput::default(), HttpOutput::default());
    // Records back to back, each its header's cap_len long.
    let mut rest = data;
    while let Some((header, payload)) = decode(rest) {
        let used = (PAYLOAD_HEADER_LEN + payload.len()).max(PAYLOAD_HEADER_LEN);
        if header.proto & 1 == 0 {
            dns.on_event(&header, payload, &mut d);
        } else {
            http.on_event(&header, payload, &mut h);
        }
        // Every record is a TLS event too (the tracker takes TCP ones only).
        tls.on_event(&header, payload);
        dns.expire(header.ts_ns, &mut d);
        http.expire(header.ts_ns, &mut h);
        tls.expire(header.ts_ns);
        assert!(tls.pending().1 <= 20_000);
        assert!(dns.pending() <= 8 && dns.tcp_held_bytes() <= 4096);
        assert!(http.pending_bytes() <= 4096);
        rest = &rest[used.min(rest.len())..];
    }
    dns.flush(&mut d);
    http.flush(&mut h);
});
