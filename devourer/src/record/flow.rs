//! Flow records (`type: "flow"`): one per finished flow or active-timeout continuation,
//! oriented so that `src_*` is the initiator.

use std::{borrow::Cow, sync::Arc};

use devourer_common::flow::HOOK_EGRESS;

use super::{
    RecordContext,
    community::{CommunityId, Ports, community_id},
    fields::{Fields, Nested, Record},
    id::{RecordId, record_id},
    k8s::K8sFields,
};
use crate::{
    base::{
        inline::AddrText,
        net::{addr_text, key_addr, protocol_name},
        time::{Timestamp, rfc3339},
    },
    flow::{Emitted, Status, Workload},
    kernel::conntrack::has_ports,
};

#[derive(Clone, Debug, PartialEq)]
pub struct FlowRecord {
    pub kind: &'static str,
    pub id: RecordId,
    pub seq: u32,
    pub agent: Arc<str>,
    pub interface: Arc<str>,
    /// The counting interface's index: not a field of the record's own encodings (its name
    /// is), but IPFIX's `ingressInterface`.
    pub ifindex: u32,
    pub protocol: Cow<'static, str>,
    pub src_addr: AddrText,
    pub dst_addr: AddrText,
    pub src_port: u16,
    pub dst_port: u16,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub vlan: Option<u16>,
    pub first_seen_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub src_bytes: u64,
    pub dst_bytes: u64,
    pub src_packets: u64,
    pub dst_packets: u64,
    pub status: &'static str,
    pub src_name: Option<Arc<str>>,
    /// The destination's name: from the DNS answer its client was given, else the server name
    /// its TLS ClientHello asked for.
    pub dst_name: Option<Arc<str>>,
    /// Where `dst_name` came from: `dns` or `sni` (null when unnamed).
    pub dst_name_source: Option<&'static str>,
    pub tcp_flags: u16,
    /// The initiator's and the responder's TCP flags apart (`tcp_flags` is both): not fields of
    /// the record's own encodings, but IPFIX's `tcpControlBits` and its reverse.
    pub side_tcp_flags: [u16; 2],
    /// Every interface that saw the flow and in which direction (packets entering it:
    /// `ingress`, leaving it: `egress`); the ones that counted it first.
    pub interfaces: Vec<Observed>,
    /// Community ID v1 of the conversation (its endpoints before any NAT).
    pub community_id: CommunityId,
    /// One packet in this many was counted (`--sampling`; 1: all): scale counts by it.
    pub sampling: u32,
    /// A NAT'd connection's translated source and destination (null where not translated;
    /// ports null for protocols without ports): `src_*`/`dst_*` are before translation.
    pub xlat_src_addr: Option<AddrText>,
    pub xlat_src_port: Option<u16>,
    pub xlat_dst_addr: Option<AddrText>,
    pub xlat_dst_port: Option<u16>,
    /// The encapsulation this flow carries (`wireguard`, `ipip`, `gre`, `vxlan`, `geneve`),
    /// null for other traffic: its packets are also the inner flows on the tunnel's own
    /// device, so a sum that counts each byte once skips records with `tunnel` set.
    pub tunnel: Option<&'static str>,
    /// Packets of the flow the kernel dropped since its last record, and their bytes (their
    /// length when freed); null where drops are not reported (kernels before 5.17, replays).
    pub drops_packets: Option<u64>,
    pub drops_bytes: Option<u64>,
    /// The most frequent reasons of those drops (at most three, most first).
    pub drop_reasons: Vec<DropReason>,
    /// TCP health, in seconds (null for other protocols and where not measured): the
    /// handshake's round trip at the counting hook; the smoothed RTT of the local socket(s)
    /// since the last record (least, greatest, last sample); retransmitted segments since the
    /// last record (null where the kernel does not report them); a SYN answered by RST or never.
    pub tcp_handshake_rtt: Option<f64>,
    pub tcp_srtt_min: Option<f64>,
    pub tcp_srtt_max: Option<f64>,
    pub tcp_srtt_last: Option<f64>,
    pub tcp_retransmits: Option<u64>,
    pub tcp_failed: Option<bool>,
    /// The TLS ClientHello the client sent (null, or empty, where none was seen): the server
    /// name, the application protocols offered, the highest version offered, its JA4
    /// fingerprint, whether it was an Encrypted Client Hello's outer hello; and the version
    /// the ServerHello chose.
    pub tls_sni: Option<Arc<str>>,
    pub tls_alpn: Vec<Arc<str>>,
    pub tls_version: Option<&'static str>,
    pub tls_version_negotiated: Option<&'static str>,
    pub tls_ja4: Option<Arc<str>>,
    pub tls_ech: Option<bool>,
    /// `src_k8s_*`/`dst_k8s_*`: the Kubernetes objects of both ends.
    pub k8s: K8sFields,
}

/// One reason the kernel dropped a flow's packets for (its `enum skb_drop_reason` name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropReason {
    pub reason: &'static str,
    pub packets: u64,
}

impl Record for DropReason {
    fn fields<F: Fields>(&self, o: &mut F) {
        o.str("reason", self.reason);
        o.uint("packets", self.packets);
    }
}

impl Nested for DropReason {
    fn sample() -> Self {
        Self {
            reason: "NOT_SPECIFIED",
            packets: 0,
        }
    }
}

/// One interface a flow crossed, and which way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub interface: Arc<str>,
    pub direction: &'static str,
}

impl Observed {
    fn new(hook: u32, cx: &RecordContext<'_>) -> Self {
        Self {
            interface: (cx.interface_name)(hook >> 1),
            direction: if hook & HOOK_EGRESS != 0 {
                "egress"
            } else {
                "ingress"
            },
        }
    }
}

impl Record for FlowRecord {
    fn fields<F: Fields>(&self, o: &mut F) {
        o.str("type", self.kind);
        o.str("id", &self.id);
        o.uint("seq", self.seq.into());
        o.str("agent", &self.agent);
        o.str("interface", &self.interface);
        o.str("protocol", &self.protocol);
        o.str("src_addr", &self.src_addr);
        o.str("dst_addr", &self.dst_addr);
        o.uint("src_port", self.src_port.into());
        o.uint("dst_port", self.dst_port.into());
        o.opt_uint("icmp_type", self.icmp_type.map(u64::from));
        o.opt_uint("icmp_code", self.icmp_code.map(u64::from));
        o.opt_uint("vlan", self.vlan.map(u64::from));
        o.time("first_seen_at", &self.first_seen_at);
        o.time("last_seen_at", &self.last_seen_at);
        o.uint("src_bytes", self.src_bytes);
        o.uint("dst_bytes", self.dst_bytes);
        o.uint("src_packets", self.src_packets);
        o.uint("dst_packets", self.dst_packets);
        o.str("status", self.status);
        o.opt_str("src_name", self.src_name.as_deref());
        o.opt_str("dst_name", self.dst_name.as_deref());
        o.opt_str("dst_name_source", self.dst_name_source);
        o.uint("tcp_flags", self.tcp_flags.into());
        o.objects("interfaces", &self.interfaces);
        o.str("community_id", &self.community_id);
        o.uint("sampling", self.sampling.into());
        o.opt_str("xlat_src_addr", self.xlat_src_addr.as_deref());
        o.opt_uint("xlat_src_port", self.xlat_src_port.map(u64::from));
        o.opt_str("xlat_dst_addr", self.xlat_dst_addr.as_deref());
        o.opt_uint("xlat_dst_port", self.xlat_dst_port.map(u64::from));
        o.opt_str("tunnel", self.tunnel);
        o.opt_uint("drops_packets", self.drops_packets);
        o.opt_uint("drops_bytes", self.drops_bytes);
        o.objects("drop_reasons", &self.drop_reasons);
        o.float("tcp_handshake_rtt", self.tcp_handshake_rtt);
        o.float("tcp_srtt_min", self.tcp_srtt_min);
        o.float("tcp_srtt_max", self.tcp_srtt_max);
        o.float("tcp_srtt_last", self.tcp_srtt_last);
        o.opt_uint("tcp_retransmits", self.tcp_retransmits);
        o.opt_bool("tcp_failed", self.tcp_failed);
        o.opt_str("tls_sni", self.tls_sni.as_deref());
        o.strs("tls_alpn", &self.tls_alpn);
        o.opt_str("tls_version", self.tls_version);
        o.opt_str("tls_version_negotiated", self.tls_version_negotiated);
        o.opt_str("tls_ja4", self.tls_ja4.as_deref());
        o.opt_bool("tls_ech", self.tls_ech);
        self.k8s.fields(o);
    }
}

impl Record for Observed {
    fn fields<F: Fields>(&self, o: &mut F) {
        o.str("interface", &self.interface);
        o.str("direction", self.direction);
    }
}

impl Nested for Observed {
    fn sample() -> Self {
        Self {
            interface: "".into(),
            direction: "ingress",
        }
    }
}

impl FlowRecord {
    /// A record of no flow: what the columns of every flow record are read from.
    pub fn sample() -> Self {
        Self {
            kind: "flow",
            id: Default::default(),
            seq: 0,
            agent: "".into(),
            interface: "".into(),
            ifindex: 0,
            protocol: "tcp".into(),
            src_addr: Default::default(),
            dst_addr: Default::default(),
            src_port: 0,
            dst_port: 0,
            icmp_type: None,
            icmp_code: None,
            vlan: None,
            first_seen_at: Default::default(),
            last_seen_at: Default::default(),
            src_bytes: 0,
            dst_bytes: 0,
            src_packets: 0,
            dst_packets: 0,
            status: "shutdown",
            src_name: None,
            dst_name: None,
            dst_name_source: None,
            tcp_flags: 0,
            side_tcp_flags: [0; 2],
            interfaces: Vec::new(),
            community_id: Default::default(),
            sampling: 1,
            xlat_src_addr: None,
            xlat_src_port: None,
            xlat_dst_addr: None,
            xlat_dst_port: None,
            tunnel: None,
            drops_packets: None,
            drops_bytes: None,
            drop_reasons: Vec::new(),
            tcp_handshake_rtt: None,
            tcp_srtt_min: None,
            tcp_srtt_max: None,
            tcp_srtt_last: None,
            tcp_retransmits: None,
            tcp_failed: None,
            tls_sni: None,
            tls_alpn: Vec::new(),
            tls_version: None,
            tls_version_negotiated: None,
            tls_ja4: None,
            tls_ech: None,
            k8s: K8sFields::flow(None, None),
        }
    }

    pub fn new(e: &Emitted, cx: &RecordContext<'_>) -> Self {
        let k = &e.key;
        let icmp = e.icmp();
        let tcp = e.tcp.as_ref();
        let srtt = tcp.and_then(|t| t.srtt);
        let tls = e.tls.as_deref();
        // The SNI names the destination when the destination is what the hello was sent to:
        // its sender is the record's source (before or after NAT).
        let from_src = |c: &([u8; 16], u16)| {
            *c == (k.src_addr, k.src_port) || e.xlat_src.is_some_and(|x| x == *c)
        };
        let sni = tls
            .filter(|t| t.client.as_ref().is_none_or(from_src))
            .and_then(|t| t.sni.clone());
        let (dst_name, dst_name_source) = match (&e.dst_name, sni) {
            (Some(n), _) => (Some(n.clone()), Some("dns")),
            (None, Some(sni)) => (Some(sni), Some("sni")),
            (None, None) => (None, None),
        };
        Self {
            kind: "flow",
            // A start record's id differs from its flow's first record's (BigQuery would
            // drop one of two rows with the same insertId).
            id: record_id(
                k,
                e.flow_start_ns,
                cx.agent,
                if e.status == Status::Start {
                    u32::MAX
                } else {
                    e.seq
                },
            ),
            seq: e.seq,
            agent: cx.agent.clone(),
            interface: (cx.interface_name)(e.interface),
            ifindex: e.interface,
            protocol: protocol_name(k.proto),
            src_addr: addr_text(key_addr(k, k.src_addr)),
            dst_addr: addr_text(key_addr(k, k.dst_addr)),
            src_port: k.src_port,
            dst_port: k.dst_port,
            icmp_type: icmp.map(|(t, _)| t),
            icmp_code: icmp.map(|(_, c)| c),
            vlan: e.vlan,
            first_seen_at: rfc3339(cx.clock.wall(e.first_ns)),
            last_seen_at: rfc3339(cx.clock.wall(e.last_ns)),
            src_bytes: e.src.bytes,
            dst_bytes: e.dst.bytes,
            src_packets: e.src.packets,
            dst_packets: e.dst.packets,
            status: e.status.as_str(),
            src_name: e.src_name.clone(),
            dst_name,
            dst_name_source,
            tcp_flags: e.tcp_flags(),
            side_tcp_flags: [e.src.tcp_flags(), e.dst.tcp_flags()],
            interfaces: e.hooks.iter().map(|h| Observed::new(*h, cx)).collect(),
            sampling: cx.sampling,
            community_id: community_id(
                cx.community_seed,
                key_addr(k, k.src_addr),
                key_addr(k, k.dst_addr),
                k.proto,
                Ports::of(k.proto, (k.src_port, k.dst_port), icmp),
            ),
            xlat_src_addr: e.xlat_src.map(|(a, _)| addr_text(key_addr(k, a))),
            xlat_src_port: e
                .xlat_src
                .and_then(|(_, p)| has_ports(k.proto).then_some(p)),
            xlat_dst_addr: e.xlat_dst.map(|(a, _)| addr_text(key_addr(k, a))),
            xlat_dst_port: e
                .xlat_dst
                .and_then(|(_, p)| has_ports(k.proto).then_some(p)),
            tunnel: tunnel(k.proto, k.src_port, k.dst_port),
            drops_packets: e.drops.as_ref().map(|d| d.packets),
            drops_bytes: e.drops.as_ref().map(|d| d.bytes),
            drop_reasons: e.drops.as_ref().map_or_else(Vec::new, |d| {
                d.top()
                    .into_iter()
                    .map(|(reason, packets)| DropReason { reason, packets })
                    .collect()
            }),
            tcp_handshake_rtt: tcp.and_then(|t| t.handshake_rtt_ns).map(secs),
            tcp_srtt_min: srtt.map(|s| micros(s.min_us)),
            tcp_srtt_max: srtt.map(|s| micros(s.max_us)),
            tcp_srtt_last: srtt.map(|s| micros(s.last_us)),
            tcp_retransmits: tcp.and_then(|t| t.retransmits),
            tcp_failed: tcp.map(|t| t.failed),
            tls_sni: tls.and_then(|t| t.sni.clone()),
            tls_alpn: tls.map_or_else(Vec::new, |t| t.alpn.clone()),
            tls_version: tls.and_then(|t| t.version),
            tls_version_negotiated: tls.and_then(|t| t.version_negotiated),
            tls_ja4: tls.and_then(|t| t.ja4.clone()),
            tls_ech: tls.and_then(|t| t.ech),
            k8s: K8sFields::flow(e.src_k8s.clone(), backend_zone(e, cx)),
        }
    }
}

/// The destination's object, with a Service's the zone of the backend a DNAT sent the flow to
/// (a Service has none of its own: the bytes go where its backend is).
fn backend_zone(e: &Emitted, cx: &RecordContext<'_>) -> Option<Arc<Workload>> {
    let dst = e.dst_k8s.clone();
    let (Some(w), Some((addr, _))) = (&dst, e.xlat_dst) else {
        return dst;
    };
    if w.zone.is_some() || w.service.is_none() || w.pod.is_some() {
        return dst;
    }
    match (cx.workload)(key_addr(&e.key, addr)).and_then(|b| b.zone.clone()) {
        Some(zone) => Some(Arc::new(Workload {
            zone: Some(zone),
            ..(**w).clone()
        })),
        None => dst,
    }
}

/// Nanoseconds as seconds.
fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Microseconds as seconds.
fn micros(us: u32) -> f64 {
    f64::from(us) / 1e6
}

/// The `tunnel` a flow of `proto` between these ports carries, by name.
pub fn tunnel(proto: u8, src_port: u16, dst_port: u16) -> Option<&'static str> {
    devourer_common::tunnel::Tunnel::of(proto, src_port, dst_port).map(|t| t.name())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::flow::Workload;

    /// Strings that exercise the escaping: plain, quotes, backslashes, control characters,
    /// non-ASCII.
    const STRINGS: [&str; 6] = [
        "eth0",
        "a\"quoted\" name",
        "back\\slash",
        "line\nbreak\t\u{1}",
        "ünïcødé.example ✓",
        "",
    ];

    fn record(i: usize) -> FlowRecord {
        let s = |k: usize| STRINGS[(i + k) % STRINGS.len()].to_owned();
        let some = |k: usize| (i >> k) & 1 == 1;
        let pod = Workload {
            namespace: some(1).then(|| s(1).into()),
            pod: Some(s(2).into()),
            owner_kind: some(2).then(|| "Deployment".into()),
            owner: some(3).then(|| s(3).into()),
            node: Some("node-1".into()),
            service: some(4).then(|| s(4).into()),
            zone: some(5).then(|| "zone-a".into()),
        };
        let (src_k8s, dst_k8s) = match i % 3 {
            0 => (None, None),
            1 => (Some(Arc::new(pod)), None),
            _ => (None, Some(Arc::new(pod))),
        };
        FlowRecord {
            kind: "flow",
            id: format!("{i:032x}").into(),
            seq: i as u32 * 7919,
            agent: s(0).into(),
            interface: s(1).into(),
            ifindex: i as u32,
            protocol: if some(0) {
                "tcp".into()
            } else {
                Cow::Owned(format!("proto-{i}"))
            },
            src_addr: "10.0.0.1".into(),
            dst_addr: "fd00::2".into(),
            src_port: (i * 131) as u16,
            dst_port: u16::MAX,
            icmp_type: some(1).then_some(8),
            icmp_code: some(2).then_some(0),
            vlan: some(3).then_some(4095),
            first_seen_at: "2026-12-05T23:59:59.123456Z".into(),
            last_seen_at: "2026-12-06T00:00:00Z".into(),
            src_bytes: u64::MAX - i as u64,
            dst_bytes: 0,
            src_packets: i as u64,
            dst_packets: 1 << 40,
            status: if some(4) { "end" } else { "active_timeout" },
            src_name: some(0).then(|| s(2).into()),
            dst_name: some(5).then(|| s(3).into()),
            dst_name_source: some(5).then_some(if some(6) { "sni" } else { "dns" }),
            tcp_flags: 0x1ff,
            side_tcp_flags: [0x1f, 0x1ff],
            interfaces: (0..i % 4)
                .map(|n| Observed {
                    interface: s(n).into(),
                    direction: if n % 2 == 0 { "ingress" } else { "egress" },
                })
                .collect(),
            community_id: "1:LQU9qZlK+B5F3KDmev6m5PMibrg=".into(),
            sampling: 1 + i as u32,
            xlat_src_addr: some(2).then(|| "192.0.2.1".into()),
            xlat_src_port: some(3).then_some(1024),
            xlat_dst_addr: some(4).then(|| "198.51.100.7".into()),
            xlat_dst_port: some(5).then_some(0),
            tunnel: some(6).then_some("wireguard"),
            drops_packets: some(7).then_some(3),
            drops_bytes: some(7).then_some(180),
            drop_reasons: if some(7) {
                vec![
                    DropReason {
                        reason: "NETFILTER_DROP",
                        packets: 2,
                    },
                    DropReason {
                        reason: "TCP_CSUM",
                        packets: 1,
                    },
                ]
            } else {
                Vec::new()
            },
            tcp_handshake_rtt: some(0).then_some(0.012_5),
            tcp_srtt_min: some(1).then_some(0.01),
            tcp_srtt_max: some(1).then_some(0.250_001),
            tcp_srtt_last: some(1).then_some(0.1),
            tcp_retransmits: some(2).then_some(4),
            tcp_failed: some(3).then_some(i.is_multiple_of(2)),
            tls_sni: some(4).then(|| s(4).into()),
            tls_alpn: (0..i % 3).map(|n| s(n).into()).collect(),
            tls_version: some(5).then_some("TLSv1.3"),
            tls_version_negotiated: some(6).then_some("TLSv1.2"),
            tls_ja4: some(4).then(|| "t13d1516h2_8daaf6152771_e5627efa2ab1".into()),
            tls_ech: some(5).then_some(i.is_multiple_of(3)),
            k8s: K8sFields::flow(src_k8s, dst_k8s),
        }
    }

    /// A record of a flow from 10.0.0.1:40000 to `dst` (the key's, before NAT), its DNS name,
    /// its hello sent from `client`, its destination's object and the address a DNAT sent it
    /// to (whose object is in zone-b).
    fn built(
        dns: Option<&str>,
        client: ([u8; 16], u16),
        dst_k8s: Option<Workload>,
        xlat: Option<[u8; 16]>,
    ) -> FlowRecord {
        use devourer_common::flow::{FlowKey, FlowValue};

        use crate::flow::tls::TlsInfo;
        let v4 = |a: [u8; 4]| {
            let mut x = [0u8; 16];
            x[10..12].copy_from_slice(&[0xff, 0xff]);
            x[12..].copy_from_slice(&a);
            x
        };
        let key = FlowKey {
            src_addr: v4([10, 0, 0, 1]),
            dst_addr: v4([198, 19, 0, 10]),
            src_port: 40000,
            dst_port: 443,
            proto: 6,
            ..FlowKey::default()
        };
        let e = Emitted {
            key,
            interface: 1,
            hooks: Vec::new(),
            vlan: None,
            seq: 0,
            flow_start_ns: 1,
            first_ns: 1,
            last_ns: 2,
            src: FlowValue::default(),
            dst: FlowValue::default(),
            status: Status::IdleTimeout,
            src_name: None,
            dst_name: dns.map(Into::into),
            src_k8s: None,
            dst_k8s: dst_k8s.map(Arc::new),
            xlat_src: None,
            xlat_dst: xlat.map(|a| (a, 8443)),
            drops: None,
            tcp: None,
            tls: Some(Arc::new(TlsInfo {
                sni: Some("api.example".into()),
                client: Some(client),
                ..TlsInfo::default()
            })),
        };
        let backend = v4([10, 1, 0, 9]);
        let workload = |a: std::net::IpAddr| {
            (a == key_addr(&key, backend)).then(|| {
                Arc::new(Workload {
                    pod: Some("db-0".into()),
                    zone: Some("zone-b".into()),
                    ..Workload::default()
                })
            })
        };
        let agent: Arc<str> = "a".into();
        let name = |_: u32| -> Arc<str> { "eth0".into() };
        let cx = RecordContext {
            agent: &agent,
            clock: Default::default(),
            interface_name: &name,
            community_seed: 0,
            sampling: 1,
            workload: &workload,
        };
        FlowRecord::new(&e, &cx)
    }

    #[test]
    fn dst_name_is_dns_first_then_the_sni_of_a_hello_its_source_sent() {
        let src = |k: u8| {
            let mut x = [0u8; 16];
            x[10..12].copy_from_slice(&[0xff, 0xff]);
            x[12..].copy_from_slice(&[10, 0, 0, k]);
            x
        };
        let r = built(Some("www.example"), (src(1), 40000), None, None);
        assert_eq!(
            (r.dst_name.as_deref(), r.dst_name_source),
            (Some("www.example"), Some("dns"))
        );
        assert_eq!(r.tls_sni.as_deref(), Some("api.example"));
        let r = built(None, (src(1), 40000), None, None);
        assert_eq!(
            (r.dst_name.as_deref(), r.dst_name_source),
            (Some("api.example"), Some("sni"))
        );
        // A hello the destination sent names no destination.
        let r = built(None, ([9; 16], 443), None, None);
        assert_eq!((r.dst_name.as_deref(), r.dst_name_source), (None, None));
        assert_eq!(r.tls_sni.as_deref(), Some("api.example"));
    }

    #[test]
    fn a_service_flow_takes_the_zone_of_the_backend_its_dnat_chose() {
        let svc = || Workload {
            namespace: Some("shop".into()),
            service: Some("db".into()),
            ..Workload::default()
        };
        let mut backend = [0u8; 16];
        backend[10..12].copy_from_slice(&[0xff, 0xff]);
        backend[12..].copy_from_slice(&[10, 1, 0, 9]);
        let r = built(None, ([0; 16], 0), Some(svc()), Some(backend));
        let [_, dst] = r.k8s.sides();
        let dst = dst.as_deref().unwrap();
        assert_eq!(dst.zone.as_deref(), Some("zone-b"));
        assert_eq!(dst.service.as_deref(), Some("db"));
        assert_eq!(dst.pod, None, "still the Service's record");
        // No translation, or a backend of no known zone: the Service as it is.
        let r = built(None, ([0; 16], 0), Some(svc()), None);
        assert_eq!(r.k8s.sides()[1].as_deref().unwrap().zone, None);
        let r = built(None, ([0; 16], 0), Some(svc()), Some([7; 16]));
        assert_eq!(r.k8s.sides()[1].as_deref().unwrap().zone, None);
    }

    #[test]
    fn tunnels_are_told_by_protocol_and_well_known_port() {
        assert_eq!(tunnel(4, 0, 0), Some("ipip"));
        assert_eq!(tunnel(41, 0, 0), Some("ipip"));
        assert_eq!(tunnel(47, 0, 0), Some("gre"));
        assert_eq!(tunnel(17, 40000, 51820), Some("wireguard"));
        assert_eq!(tunnel(17, 51820, 51820), Some("wireguard"));
        assert_eq!(tunnel(17, 4789, 33000), Some("vxlan"));
        assert_eq!(tunnel(17, 50000, 6081), Some("geneve"));
        assert_eq!(
            tunnel(6, 40000, 51820),
            None,
            "TCP to the port is not WireGuard"
        );
        assert_eq!(tunnel(17, 40000, 53), None);
    }

    /// The JSON line, byte for byte: field order, escaping, nulls and numbers as the JSON
    /// lines have had them (consumers parse these lines; a change here is a format change).
    #[test]
    fn the_json_line_is_byte_for_byte_the_established_format() {
        let mut out = Vec::new();
        crate::record::json::Object::write(&record(5), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"type":"flow","id":"00000000000000000000000000000005","seq":39595,"agent":"","interface":"eth0","protocol":"tcp","src_addr":"10.0.0.1","dst_addr":"fd00::2","src_port":655,"dst_port":65535,"icmp_type":null,"icmp_code":0,"vlan":null,"first_seen_at":"2026-12-05T23:59:59.123456Z","last_seen_at":"2026-12-06T00:00:00Z","src_bytes":18446744073709551610,"dst_bytes":0,"src_packets":5,"dst_packets":1099511627776,"status":"active_timeout","src_name":"a\"quoted\" name","dst_name":null,"dst_name_source":null,"tcp_flags":511,"interfaces":[{"interface":"","direction":"ingress"}],"community_id":"1:LQU9qZlK+B5F3KDmev6m5PMibrg=","sampling":6,"xlat_src_addr":"192.0.2.1","xlat_src_port":null,"xlat_dst_addr":null,"xlat_dst_port":null,"tunnel":null,"drops_packets":null,"drops_bytes":null,"drop_reasons":[],"tcp_handshake_rtt":0.0125,"tcp_srtt_min":null,"tcp_srtt_max":null,"tcp_srtt_last":null,"tcp_retransmits":4,"tcp_failed":null,"tls_sni":null,"tls_alpn":["","eth0"],"tls_version":null,"tls_version_negotiated":null,"tls_ja4":null,"tls_ech":null,"src_k8s_namespace":null,"src_k8s_pod":null,"src_k8s_owner_kind":null,"src_k8s_owner":null,"src_k8s_node":null,"src_k8s_service":null,"src_k8s_zone":null,"dst_k8s_namespace":null,"dst_k8s_pod":"a\"quoted\" name","dst_k8s_owner_kind":"Deployment","dst_k8s_owner":null,"dst_k8s_node":"node-1","dst_k8s_service":null,"dst_k8s_zone":null}"#
        );
    }

    #[test]
    fn every_encoding_holds_every_field_with_the_same_value() {
        for i in 0..256 {
            crate::record::fields::tests::assert_encodings_agree(&record(i));
        }
    }
}
