//! The closing summary on the log stream: what the kernel counted outside flow records (every
//! counter of the shared table, the overflow map's aggregates), and what the DNS and HTTP
//! decoders counted. Records never go here.

use devourer_common::flow::{
    C_DNS_RING_FULL, C_HTTP_RING_FULL, C_OVERFLOW_FULL_BYTES, C_OVERFLOW_FULL_PACKETS,
    C_TLS_RING_FULL, OverflowValue,
};

use crate::{
    decode::{dns::DnsTracker, http::HttpTracker},
    kernel::maps::KernelCounters,
};

/// Every kernel counter as `name=value`, then what went to overflow records, then loud
/// errors for what was counted only in totals or dropped by a full ring.
pub fn kernel(counters: &KernelCounters, overflow: OverflowValue) {
    let fields: String = counters
        .iter()
        .map(|(c, v)| format!(" {}={v}", c.name))
        .collect();
    tracing::info!("kernel counters{fields}");
    if overflow.packets > 0 {
        tracing::warn!(
            packets = overflow.packets,
            bytes = overflow.bytes,
            "the flow map was full: these went to overflow records, per interface and protocol, not to flow records (raise --flow-map-entries)"
        );
    }
    let get = |i| counters.get(i);
    if get(C_OVERFLOW_FULL_PACKETS) > 0 {
        tracing::error!(
            packets = get(C_OVERFLOW_FULL_PACKETS),
            bytes = get(C_OVERFLOW_FULL_BYTES),
            "the overflow map was full too: these were counted only in totals"
        );
    }
    for (index, flag, what) in [
        (C_DNS_RING_FULL, "--dns-ring-size", "DNS"),
        (C_HTTP_RING_FULL, "--http-ring-size", "HTTP"),
        (C_TLS_RING_FULL, "--tls-ring-size", "TLS"),
    ] {
        if get(index) > 0 {
            tracing::error!(
                events = get(index),
                "{what} payloads dropped: the {what} ring buffer was full (raise {flag})"
            );
        }
    }
}

/// What the DNS decoder counted.
pub fn dns(dns: &DnsTracker) {
    let s = &dns.stats;
    let m = dns.matcher_stats();
    let t = dns.tcp_stats();
    let tx = |k: &str| s.transactions.get(k).copied().unwrap_or(0);
    tracing::info!(
        events = s.events,
        messages = s.messages,
        success = tx("success"),
        lost = tx("lost"),
        no_query = tx("no_query"),
        partial = s.partial,
        names_refused = s.names_refused,
        parse_errors = s.parse_errors.values().sum::<u64>(),
        retransmits = m.retransmits,
        duplicates = m.duplicates,
        pending_overflow = m.overflow,
        tcp_gaps = t.gaps,
        tcp_cut = t.cut,
        "dns"
    );
    for (reason, n) in &s.parse_errors {
        tracing::info!(reason, count = n, "dns payloads that did not decode");
    }
}

/// What the HTTP decoder counted.
pub fn http(http: &HttpTracker) {
    let s = &http.stats;
    tracing::info!(
        events = s.events,
        requests = s.requests,
        responses = s.responses,
        matched = s.matched,
        unanswered = s.unanswered + http.pending() as u64,
        not_http = s.not_http.values().sum::<u64>(),
        "http"
    );
}
