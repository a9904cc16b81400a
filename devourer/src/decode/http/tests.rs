//! The HTTP tracker: records, matching in order on a connection, interim responses, expiry,
//! roles and packetlog lines.

use devourer_common::payload::PayloadHeader;

use super::*;

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const SERVER: [u8; 4] = [10, 0, 0, 2];

fn mapped(a: [u8; 4]) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[10] = 0xff;
    m[11] = 0xff;
    m[12..].copy_from_slice(&a);
    m
}

/// A header for a segment from `src` to `dst` at `ts_ns`.
fn seg(ts_ns: u64, src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> PayloadHeader {
    PayloadHeader {
        ts_ns,
        src_addr: mapped(src.0),
        dst_addr: mapped(dst.0),
        src_port: src.1,
        dst_port: dst.1,
        ifindex: 3,
        proto: 6,
        ..PayloadHeader::default()
    }
}

fn tracker(local: &[&str]) -> HttpTracker {
    let nets = local.iter().map(|n| n.parse().unwrap()).collect();
    HttpTracker::new(
        HttpConfig {
            timeout_ns: 30_000_000_000,
            max_connections: 100,
            max_pending_bytes: 1 << 20,
            text_log: true,
        },
        LocalAddrs::new(nets),
    )
}

fn request(t: &mut HttpTracker, ts: u64, port: u16, payload: &[u8], out: &mut HttpOutput) {
    t.on_event(&seg(ts, (CLIENT, port), (SERVER, 80)), payload, out);
}

fn response(t: &mut HttpTracker, ts: u64, port: u16, payload: &[u8], out: &mut HttpOutput) {
    t.on_event(&seg(ts, (SERVER, 80), (CLIENT, port)), payload, out);
}

#[test]
fn pipelined_responses_match_their_requests_in_order() {
    let mut t = tracker(&["10.0.0.2/32"]);
    let mut out = HttpOutput::default();
    request(
        &mut t,
        1_000,
        5000,
        b"GET /a HTTP/1.1\r\nHost: s\r\n\r\nGET /b HTTP/1.1\r\nHost: s\r\n\r\n",
        &mut out,
    );
    response(
        &mut t,
        5_000,
        5000,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        &mut out,
    );
    assert_eq!(out.msgs.len(), 4);
    let responses: Vec<_> = out.msgs.iter().filter(|m| m.request.is_some()).collect();
    assert_eq!(responses.len(), 2);
    assert_eq!(
        responses[0].request,
        Some(("GET".into(), Some("/a".into())))
    );
    assert_eq!(
        responses[1].request,
        Some(("GET".into(), Some("/b".into())))
    );
    assert_eq!(responses[0].latency_ns, Some(4_000));
    assert_eq!(t.pending(), 0);
    assert_eq!(t.stats.matched, 2);
}

#[test]
fn roles_and_lines_follow_httplog() {
    // This host is the server: CQ/CR.
    let mut t = tracker(&["10.0.0.2/32"]);
    let mut out = HttpOutput::default();
    request(
        &mut t,
        1,
        50905,
        b"GET / HTTP/1.1\r\nHost: cloud.example\r\nUser-Agent: Mozilla/5.0 (X11)\r\n\r\n",
        &mut out,
    );
    response(
        &mut t,
        2,
        50905,
        b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\nContent-Type: text/html; charset=UTF-8\r\n\r\n",
        &mut out,
    );
    let bodies: Vec<_> = out
        .lines
        .iter()
        .map(|l| (l.kind, l.body.as_str()))
        .collect();
    assert_eq!(
        bodies,
        [
            (
                "CQ",
                "10.0.0.1#50905 10.0.0.2#80 CQ GET / HTTP/1.1 cloud.example Mozilla/5.0 (X11)"
            ),
            (
                "CR",
                "10.0.0.2#80 10.0.0.1#50905 CR HTTP/1.1 302 Found 0 text/html; charset=UTF-8"
            ),
        ]
    );
    // This host is the client: SQ/SR; missing fields are dashes.
    let mut t = tracker(&["10.0.0.1/32"]);
    let mut out = HttpOutput::default();
    request(&mut t, 1, 40000, b"GET /x HTTP/1.0\r\n\r\n", &mut out);
    response(&mut t, 2, 40000, b"HTTP/1.0 200 OK\r\n\r\n", &mut out);
    assert_eq!(
        out.lines[0].body,
        "10.0.0.1#40000 10.0.0.2#80 SQ GET /x HTTP/1.0 - -"
    );
    assert_eq!(
        out.lines[1].body,
        "10.0.0.2#80 10.0.0.1#40000 SR HTTP/1.0 200 OK - -"
    );
}

#[test]
fn an_interim_response_does_not_end_the_exchange() {
    let mut t = tracker(&[]);
    let mut out = HttpOutput::default();
    request(
        &mut t,
        10,
        6000,
        b"POST /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        &mut out,
    );
    response(&mut t, 20, 6000, b"HTTP/1.1 100 Continue\r\n\r\n", &mut out);
    response(
        &mut t,
        30,
        6000,
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        &mut out,
    );
    let latencies: Vec<_> = out.msgs.iter().map(|m| m.latency_ns).collect();
    assert_eq!(latencies, [None, Some(10), Some(20)]);
    assert_eq!(out.msgs[0].role, Role::Transit);
}

#[test]
fn a_response_without_a_request_and_unanswered_requests_are_counted() {
    let mut t = tracker(&[]);
    let mut out = HttpOutput::default();
    response(&mut t, 5, 7000, b"HTTP/1.1 200 OK\r\n\r\n", &mut out);
    assert_eq!(out.msgs[0].request, None);
    assert_eq!(out.msgs[0].latency_ns, None);
    request(&mut t, 10, 7001, b"GET /slow HTTP/1.1\r\n\r\n", &mut out);
    t.expire(10 + 29_000_000_000, &mut out);
    assert_eq!(t.pending(), 1);
    t.expire(10 + 30_000_000_000, &mut out);
    assert_eq!((t.pending(), t.stats.unanswered), (0, 1));
}

#[test]
fn segments_that_are_not_http_are_counted_not_recorded() {
    let mut t = tracker(&[]);
    let mut out = HttpOutput::default();
    request(&mut t, 1, 8000, b"\x16\x03\x01\x00\xa5\x01\x00", &mut out);
    assert!(out.msgs.is_empty() && out.lines.is_empty());
    assert_eq!(t.stats.not_http.values().sum::<u64>(), 1);
}

mod fuzz {
    //! Random and mutated segments never panic the tracker, and every line it writes stays one
    //! printable line.
    use proptest::prelude::*;

    use super::*;

    const SEEDS: &[&[u8]] = &[
        b"GET /a?b=c HTTP/1.1\r\nHost: example.test\r\nUser-Agent: curl/8\r\n\r\n",
        b"POST /up HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /next HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
        b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n",
    ];

    fn check(t: &mut HttpTracker, payload: &[u8], response: bool) {
        let mut out = HttpOutput::default();
        let h = if response {
            seg(1, (SERVER, 80), (CLIENT, 9000))
        } else {
            seg(1, (CLIENT, 9000), (SERVER, 80))
        };
        t.on_event(&h, payload, &mut out);
        t.flush(&mut out);
        for l in &out.lines {
            assert!(
                l.body.bytes().all(|b| (0x20..0x7f).contains(&b)),
                "{:?}",
                l.body
            );
        }
    }

    proptest! {
        #[test]
        fn random_segments_are_harmless(payload in proptest::collection::vec(any::<u8>(), 0..600), response: bool) {
            let mut t = tracker(&[]);
            check(&mut t, &payload, response);
        }

        #[test]
        fn mutated_heads_are_harmless(
            seed in 0..SEEDS.len(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut p = SEEDS[seed].to_vec();
            for (at, b) in flips {
                let i = at % p.len();
                p[i] = b;
            }
            p.truncate(cut % (p.len() + 1));
            let mut t = tracker(&[]);
            check(&mut t, &p, p.starts_with(b"HTTP"));
        }
    }
}

#[test]
fn waiting_requests_stay_within_their_byte_budget_and_long_methods_are_cut() {
    let mut t = HttpTracker::new(
        HttpConfig {
            timeout_ns: 30_000_000_000,
            max_connections: 100_000,
            max_pending_bytes: 10_000,
            text_log: false,
        },
        LocalAddrs::new(vec![]),
    );
    let mut out = HttpOutput::default();
    // 200 connections, each with one request whose target is 500 bytes: 100 KB unbounded.
    for i in 0..200u16 {
        let req = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(499));
        t.on_event(
            &seg(
                u64::from(i),
                ([10, 0, 0, 1], 10_000 + i),
                ([10, 0, 0, 2], 80),
            ),
            req.as_bytes(),
            &mut out,
        );
        assert!(t.pending_bytes() <= 10_000, "{}", t.pending_bytes());
    }
    assert!(t.stats.evicted > 0 && t.stats.evicted == t.stats.unanswered);
    let long = format!("{} / HTTP/1.1\r\n\r\n", "X".repeat(100));
    t.flush(&mut out);
    out = HttpOutput::default();
    t.on_event(
        &seg(1, ([10, 0, 0, 9], 1), ([10, 0, 0, 2], 80)),
        long.as_bytes(),
        &mut out,
    );
    t.flush(&mut out);
    let Message::Request(r) = &out.msgs[0].message else {
        panic!("a request")
    };
    assert!(
        r.method.len() < 40 && r.method.ends_with("[...]"),
        "{}",
        r.method
    );
    assert_eq!(r.truncated, ["method"]);
}

/// The client's request to a Service address and its DNAT'd copy to the backend (the same
/// client port, another server), as a node sees both, then the backend's response and its
/// un-DNAT'd copy: one request record and one response record, naming the backend.
#[test]
fn a_request_through_a_dnat_is_one_record_naming_its_backend() {
    const SERVICE: ([u8; 4], u16) = ([10, 96, 0, 10], 80);
    const BACKEND: ([u8; 4], u16) = ([10, 244, 1, 9], 8080);
    let mut t = tracker(&[]);
    let mut out = HttpOutput::default();
    for round in 0..2u64 {
        let at = round * 1_000_000_000;
        let get = format!("GET /{round} HTTP/1.1\r\nHost: web\r\n\r\n");
        t.on_event(
            &seg(at + 1_000, (CLIENT, 5000), SERVICE),
            get.as_bytes(),
            &mut out,
        );
        t.on_event(
            &seg(at + 1_010, (CLIENT, 5000), BACKEND),
            get.as_bytes(),
            &mut out,
        );
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        t.on_event(&seg(at + 5_000, BACKEND, (CLIENT, 5000)), ok, &mut out);
        t.on_event(&seg(at + 5_010, SERVICE, (CLIENT, 5000)), ok, &mut out);
    }
    t.flush(&mut out);
    assert_eq!(out.msgs.len(), 4, "{:#?}", out.msgs);
    for m in &out.msgs {
        assert_eq!(
            (m.server, m.server_port),
            (ip(&mapped(SERVICE.0), false), 80)
        );
        assert_eq!(m.xlat, Some((ip(&mapped(BACKEND.0), false), 8080)), "{m:?}");
    }
    assert_eq!(out.msgs[1].latency_ns, Some(4_010), "as the client saw it");
    assert_eq!(t.stats.xlat_copies, 4);
    // A request no copy follows goes out after the join window, without a backend.
    t.on_event(
        &seg(5_000_000_000, (CLIENT, 6000), SERVICE),
        b"GET / HTTP/1.1\r\n\r\n",
        &mut out,
    );
    assert_eq!(out.msgs.len(), 4, "held");
    t.expire(5_000_000_000 + XLAT_JOIN_NS, &mut out);
    assert_eq!((out.msgs.len(), out.msgs[4].xlat), (5, None));
}

/// A request leaving a pod's veth and, masqueraded, the uplink (the node's address, the same
/// port, another interface), to an outside server and through a Service: one request record
/// and one response record each, under the pod's address, naming a backend only where a DNAT
/// changed the server. The same bytes from another client on the same interface stay apart.
#[test]
fn a_masqueraded_request_is_one_record_under_the_pods_address() {
    const NODE: [u8; 4] = [192, 168, 77, 1];
    const SERVICE: ([u8; 4], u16) = ([10, 96, 0, 10], 80);
    const BACKEND: ([u8; 4], u16) = ([192, 168, 77, 2], 8000);
    let on = |h: PayloadHeader, ifindex: u32| PayloadHeader { ifindex, ..h };
    // The node's own address (offline, --local-net says which are the host's).
    let mut t = tracker(&["192.168.77.1/32"]);
    let mut out = HttpOutput::default();
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    for (port, to) in [(5000, BACKEND), (5001, SERVICE)] {
        let get = format!("GET /{port} HTTP/1.1\r\nHost: web\r\n\r\n");
        t.on_event(
            &on(seg(1_000, (CLIENT, port), to), 3),
            get.as_bytes(),
            &mut out,
        );
        if to == SERVICE {
            // The bridge sees it after the DNAT, before the masquerade.
            let after_dnat = on(seg(1_005, (CLIENT, port), BACKEND), 2);
            t.on_event(&after_dnat, get.as_bytes(), &mut out);
        }
        t.on_event(
            &on(seg(1_010, (NODE, port), BACKEND), 4),
            get.as_bytes(),
            &mut out,
        );
        t.on_event(&on(seg(5_000, BACKEND, (NODE, port)), 4), ok, &mut out);
        t.on_event(&on(seg(5_010, to, (CLIENT, port)), 3), ok, &mut out);
    }
    t.flush(&mut out);
    assert_eq!(out.msgs.len(), 4, "{:#?}", out.msgs);
    for m in &out.msgs {
        assert_eq!(m.client, ip(&mapped(CLIENT), false), "{m:?}");
        let dnat = m.client_port == 5001;
        let expected = dnat.then(|| (ip(&mapped(BACKEND.0), false), 8000));
        assert_eq!(m.xlat, expected, "{m:?}");
    }
    assert_eq!(t.stats.xlat_copies, 5);
    // Another client on the same interface sending the same bytes from the same port.
    let get = b"GET / HTTP/1.1\r\n\r\n";
    t.on_event(&on(seg(9_000, (CLIENT, 7000), BACKEND), 3), get, &mut out);
    t.on_event(&on(seg(9_010, (NODE, 7000), BACKEND), 3), get, &mut out);
    // Nor does another client on another interface unless its address is this host's.
    t.on_event(&on(seg(9_100, (CLIENT, 7001), BACKEND), 3), get, &mut out);
    t.on_event(
        &on(seg(9_110, ([203, 0, 113, 9], 7001), BACKEND), 4),
        get,
        &mut out,
    );
    t.flush(&mut out);
    assert_eq!((out.msgs.len(), t.stats.xlat_copies), (8, 5));
    // Those four are unanswered; the copy between the DNAT and the masquerade, which saw no
    // response of its own, is not.
    t.expire(u64::MAX / 2, &mut out);
    assert_eq!(t.stats.unanswered, 4);
}

/// A pipelined second request on a connection whose first still waits for copies goes out
/// behind the first, naming the same backend.
#[test]
fn a_request_behind_a_held_one_keeps_its_place() {
    const SERVICE: ([u8; 4], u16) = ([10, 96, 0, 10], 80);
    const BACKEND: ([u8; 4], u16) = ([10, 244, 1, 9], 8080);
    let mut t = tracker(&[]);
    let mut out = HttpOutput::default();
    let (first, second) = (b"GET /1 HTTP/1.1\r\n\r\n", b"GET /2 HTTP/1.1\r\n\r\n");
    t.on_event(&seg(1_000, (CLIENT, 5000), SERVICE), first, &mut out);
    t.on_event(&seg(1_010, (CLIENT, 5000), BACKEND), first, &mut out);
    t.on_event(&seg(2_000, (CLIENT, 5000), SERVICE), second, &mut out);
    t.on_event(&seg(2_010, (CLIENT, 5000), BACKEND), second, &mut out);
    t.flush(&mut out);
    let targets: Vec<_> = out
        .msgs
        .iter()
        .map(|m| match &m.message {
            Message::Request(r) => r.target.clone(),
            Message::Response(_) => None,
        })
        .collect();
    assert_eq!(targets, [Some("/1".to_owned()), Some("/2".to_owned())]);
    assert!(out.msgs.iter().all(|m| m.xlat.is_some()));
    // Both requests before either copy (pipelined in one segment): both name the backend.
    let mut t = tracker(&[]);
    let mut out = HttpOutput::default();
    t.on_event(&seg(1_000, (CLIENT, 6000), SERVICE), first, &mut out);
    t.on_event(&seg(1_001, (CLIENT, 6000), SERVICE), second, &mut out);
    t.on_event(&seg(1_010, (CLIENT, 6000), BACKEND), first, &mut out);
    t.on_event(&seg(1_011, (CLIENT, 6000), BACKEND), second, &mut out);
    t.flush(&mut out);
    assert_eq!(out.msgs.len(), 2, "{:#?}", out.msgs);
    assert!(out.msgs.iter().all(|m| m.xlat.is_some()), "{:#?}", out.msgs);
}

#[test]
fn requests_held_for_a_dnat_copy_are_bounded_and_those_sent_early_are_counted() {
    let mut t = HttpTracker::new(
        HttpConfig {
            timeout_ns: 30_000_000_000,
            max_connections: 2 * MAX_HELD,
            max_pending_bytes: 1 << 24,
            text_log: false,
        },
        LocalAddrs::new(Vec::new()),
    );
    let mut out = HttpOutput::default();
    for i in 0..MAX_HELD as u16 + 10 {
        t.on_event(
            &seg(1_000 + u64::from(i), (CLIENT, 10_000 + i), (SERVER, 80)),
            b"GET / HTTP/1.1\r\n\r\n",
            &mut out,
        );
    }
    assert_eq!(out.msgs.len(), 10, "the oldest go out at once");
    assert_eq!(out.msgs[0].client_port, 10_000);
    assert_eq!(t.stats.released_early, 10);
    t.expire(
        1_000 + XLAT_JOIN_NS + u64::from(MAX_HELD as u16 + 10),
        &mut out,
    );
    assert_eq!(out.msgs.len(), MAX_HELD + 10, "the rest after their wait");
}
