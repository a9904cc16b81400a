//! The tracker end to end: translated copies of a transaction become one record under the
//! client's own endpoints, and names stay with the client that resolved them.

use std::net::IpAddr;

use devourer_common::payload::PayloadHeader;

use super::{DnsConfig, DnsOutput, DnsTracker, TxStatus, tcp::TcpLimits, testwire::*};
use crate::base::local::LocalAddrs;

const POD: [u8; 4] = [10, 244, 1, 2];
const NODE: [u8; 4] = [192, 168, 77, 1];
const RESOLVER: [u8; 4] = [192, 168, 77, 2];
const SERVICE: [u8; 4] = [10, 96, 0, 10];

fn mapped(a: [u8; 4]) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[10..12].copy_from_slice(&[0xff, 0xff]);
    m[12..].copy_from_slice(&a);
    m
}

fn addr(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

fn tracker(local_nets: &[&str]) -> DnsTracker {
    tracker_with(LocalAddrs::new(
        local_nets.iter().map(|n| n.parse().unwrap()).collect(),
    ))
}

fn tracker_with(local: LocalAddrs) -> DnsTracker {
    DnsTracker::new(
        DnsConfig {
            timeout_ns: 5_000_000_000,
            max_pending: 64,
            tcp: TcpLimits {
                max_streams: 4,
                max_bytes: 1 << 16,
                max_message: 65_535,
                idle_ns: 30_000_000_000,
            },
            name_cache_entries: 64,
            shared_names: false,
            text_log: false,
        },
        local,
    )
}

/// A datagram from `src` to `dst` on `ifindex` at `ts`.
fn send(
    t: &mut DnsTracker,
    (src, dst): (([u8; 4], u16), ([u8; 4], u16)),
    ifindex: u32,
    ts: u64,
    payload: &[u8],
    out: &mut DnsOutput,
) {
    let h = PayloadHeader {
        ts_ns: ts,
        src_addr: mapped(src.0),
        dst_addr: mapped(dst.0),
        src_port: src.1,
        dst_port: dst.1,
        ifindex,
        payload_len: payload.len() as u32,
        cap_len: payload.len() as u16,
        proto: 17,
        ..PayloadHeader::default()
    };
    t.on_event(&h, payload, out);
}

#[test]
fn a_lookup_masqueraded_on_the_uplink_is_one_record_under_the_pods_address() {
    // To the resolver outside (masquerade alone), then through a Service (DNAT and
    // masquerade): the pod's veth (ifindex 3) sees each query first, the uplink (4) last.
    for (id, asked) in [(1, RESOLVER), (2, SERVICE)] {
        // The node's own address (offline, --local-net says which are the host's).
        let mut t = tracker(&["192.168.77.1/32"]);
        let mut out = DnsOutput::default();
        let (pod, node) = ((POD, 40000), (NODE, 40000));
        let q = query(id, "svc.test", 1);
        let r = response(id, 0, "svc.test", 1, &[a("svc.test", 30, [192, 0, 2, 80])]);
        send(&mut t, (pod, (asked, 53)), 3, 1_000, &q, &mut out);
        if asked == SERVICE {
            // The bridge sees it after the DNAT, before the masquerade.
            send(&mut t, (pod, (RESOLVER, 53)), 2, 1_005, &q, &mut out);
        }
        send(&mut t, (node, (RESOLVER, 53)), 4, 1_010, &q, &mut out);
        send(&mut t, ((RESOLVER, 53), node), 4, 9_000, &r, &mut out);
        send(&mut t, ((asked, 53), pod), 3, 9_010, &r, &mut out);
        t.flush(&mut out);
        assert_eq!(out.txs.len(), 1, "{:#?}", out.txs);
        let tx = &out.txs[0];
        assert_eq!(tx.status, TxStatus::Success);
        assert_eq!((tx.client, tx.client_port), (addr(POD), 40000));
        assert_eq!((tx.server, tx.server_port), (addr(asked), 53));
        let backend = (asked == SERVICE).then_some((addr(RESOLVER), 53));
        assert_eq!(
            tx.xlat, backend,
            "a backend only where a DNAT changed the server"
        );
        assert_eq!(tx.latency_ns, Some(8_000));
        // The name is the pod's, not the node's.
        let answer = addr([192, 0, 2, 80]);
        assert!(t.name(addr(POD), answer, 10_000).is_some());
        assert!(t.name(addr(NODE), answer, 10_000).is_none());
    }
}

#[test]
fn live_a_local_net_does_not_make_its_addresses_share_one_name_cache() {
    let mut local = LocalAddrs::new(vec!["10.0.0.0/8".parse().unwrap()]);
    local.refresh_from_interfaces().unwrap();
    let mut t = tracker_with(local);
    let mut out = DnsOutput::default();
    let a_pod = ([10, 244, 1, 2], 40000);
    let q = query(7, "mine.test", 1);
    let r = response(
        7,
        0,
        "mine.test",
        1,
        &[a("mine.test", 30, [198, 51, 100, 7])],
    );
    send(&mut t, (a_pod, (RESOLVER, 53)), 3, 1_000, &q, &mut out);
    send(&mut t, ((RESOLVER, 53), a_pod), 3, 2_000, &r, &mut out);
    let answer = addr([198, 51, 100, 7]);
    assert!(t.name(addr(a_pod.0), answer, 3_000).is_some());
    assert!(
        t.name(addr([10, 244, 1, 3]), answer, 3_000).is_none(),
        "another address of --local-net did not resolve it"
    );
}
