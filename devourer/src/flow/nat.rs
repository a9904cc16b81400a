//! NAT: which flows are one connection seen before and after translation (SNAT, masquerade,
//! a ClusterIP DNAT), read from conntrack, so a record carries the pre-translation endpoints,
//! the translated ones in `xlat_*`, and the connection is counted once.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::FileExt,
    path::Path,
};

use devourer_common::flow::FlowKey;

use crate::{
    base::net::{IPPROTO_ICMP, IPPROTO_ICMPV6, key_addr},
    kernel::conntrack::{
        Conntrack, Entry, Error, FILTER_IP_DST, FILTER_IP_SRC, FILTER_PROTO_NUM, Tuple, has_ports,
    },
};

/// An endpoint as flow keys store it: a 16-byte (v4-mapped) address and a port.
pub type Endpoint = ([u8; 16], u16);

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Entry(Entry),
    /// Conntrack has no such connection.
    None,
    /// Finding out needs a walk of the whole table and this scan has none left.
    Later,
}

/// Where the table learns a connection's translations (conntrack, or a fake in tests).
pub trait Conntracker: Send {
    /// The entry of the connection that `t` (either way round) belongs to. Hash probes are
    /// cheap; a filtered walk of the kernel's whole table costs one of `walks`.
    fn entry(&mut self, t: &Tuple, walks: &mut usize) -> Result<Answer, Error>;

    /// The entries of many flows whose protocol has ports (hash probes only, no walks), in
    /// their order: `None` where conntrack has no connection.
    fn entries(&mut self, ts: &[Tuple]) -> Result<Vec<Option<Entry>>, Error> {
        ts.iter()
            .map(|t| match self.entry(t, &mut 0)? {
                Answer::Entry(e) => Ok(Some(e)),
                Answer::None | Answer::Later => Ok(None),
            })
            .collect()
    }

    /// A new scan begins: what an earlier scan read of the kernel's table is out of date.
    fn new_scan(&mut self) {}
}

/// Whether conntrack may hold a connection of its own for a flow of `proto` whose first ICMP
/// packet had `icmp_type` (`None`: not known, so it may). Conntrack tracks ICMP queries and
/// their replies as connections (echo, timestamp, information and address mask; ICMPv6 echo
/// and node information); errors, neighbour discovery and multicast listener messages have
/// none, and asking about an ICMP flow costs walks of the kernel's whole table.
pub fn may_be_tracked(proto: u8, icmp_type: Option<u8>) -> bool {
    match (proto, icmp_type) {
        (IPPROTO_ICMP, Some(t)) => matches!(t, 0 | 8 | 13..=18),
        (IPPROTO_ICMPV6, Some(t)) => matches!(t, 128 | 129 | 139 | 140),
        _ => true,
    }
}

/// Entries one filtered lookup reads at most.
const MATCHES: usize = 8;
/// Translated ICMP connections one walk per scan keeps for all of that scan's ICMP flows; past
/// it, flows are looked up one by one as before (more walks, nothing missed).
const ICMP_WALK_ENTRIES: usize = 4096;

/// Conntrack as the table asks it: TCP and UDP flows by hash probe, ICMP flows (whose
/// identifier is not in the flow key) against one walk per scan and protocol that reads every
/// translated ICMP connection.
pub struct KernelConntrack {
    ct: Conntrack,
    /// This scan's walk of each ICMP protocol: (protocol, its translated connections, all of them).
    icmp: Vec<(u8, Vec<Entry>, bool)>,
    /// This namespace's count of tracked connections (`None`: not readable, always ask).
    count: Option<File>,
    /// Conntrack tracked no connection at this scan's start: every answer is "none".
    empty: bool,
}

/// Connections conntrack tracks in the opener's network namespace.
const COUNT_FILE: &str = "/proc/sys/net/netfilter/nf_conntrack_count";

impl KernelConntrack {
    /// Conntrack through `ct`; its connection count is read from this namespace's sysctl.
    pub fn new(ct: Conntrack) -> Self {
        Self::with_count_file(ct, Path::new(COUNT_FILE))
    }

    /// As [`Self::new`], the count read from `count` (a file that cannot be opened: always ask).
    pub fn with_count_file(ct: Conntrack, count: &Path) -> Self {
        Self {
            ct,
            icmp: Vec::new(),
            count: File::open(count).ok(),
            empty: false,
        }
    }

    /// The translated connections of `proto` this scan (walking once for them), or `None`
    /// when the walk found more than it keeps or none is left to spend.
    fn icmp_walk(&mut self, proto: u8, walks: &mut usize) -> Result<Option<&[Entry]>, Error> {
        let i = match self.icmp.iter().position(|(p, ..)| *p == proto) {
            Some(i) => i,
            None if *walks == 0 => return Ok(None),
            None => {
                *walks -= 1;
                // Only the protocol is compared; the address family picks IPv4 or IPv6.
                let none: IpAddr = if proto == IPPROTO_ICMP {
                    Ipv4Addr::UNSPECIFIED.into()
                } else {
                    Ipv6Addr::UNSPECIFIED.into()
                };
                let any = Tuple {
                    src: none,
                    dst: none,
                    proto,
                    src_port: 0,
                    dst_port: 0,
                };
                let (entries, all) = self.ct.find(
                    &any,
                    (false, FILTER_PROTO_NUM),
                    ICMP_WALK_ENTRIES,
                    &translated,
                )?;
                self.icmp.push((proto, entries, all));
                self.icmp.len() - 1
            }
        };
        let (_, entries, all) = &self.icmp[i];
        Ok(all.then_some(entries.as_slice()))
    }
}

impl Conntracker for KernelConntrack {
    fn new_scan(&mut self) {
        self.icmp.clear();
        // A flow's connection is tracked from its first packet on, before the scan read that
        // packet's counts: with none tracked now, every lookup of this scan would miss, and a
        // host that tracks nothing (no firewall, no NAT) pays no lookups at all.
        self.empty = self.count.as_ref().is_some_and(tracks_nothing);
    }

    fn entries(&mut self, ts: &[Tuple]) -> Result<Vec<Option<Entry>>, Error> {
        if self.empty {
            return Ok(vec![None; ts.len()]);
        }
        // One hash probe finds either tuple of an entry; a flow may be oriented either way, so
        // each tuple as it is, then the misses the other way round. (A copy seen between DNAT
        // and SNAT matches neither: the table finds its twin.)
        let mut found = self.ct.get_many(ts)?;
        let misses: Vec<usize> = (0..ts.len()).filter(|&i| found[i].is_none()).collect();
        let reversed: Vec<Tuple> = misses.iter().map(|&i| ts[i].reversed()).collect();
        for (i, e) in misses.into_iter().zip(self.ct.get_many(&reversed)?) {
            found[i] = e;
        }
        Ok(found)
    }

    fn entry(&mut self, t: &Tuple, walks: &mut usize) -> Result<Answer, Error> {
        if self.empty {
            return Ok(Answer::None);
        }
        if has_ports(t.proto) {
            let found = self.entries(std::slice::from_ref(t))?.pop().flatten();
            return Ok(found.map_or(Answer::None, Answer::Entry));
        }
        if !matches!(t.proto, IPPROTO_ICMP | IPPROTO_ICMPV6) {
            return Ok(Answer::None);
        }
        if let Some(entries) = self.icmp_walk(t.proto, walks)? {
            let found = entries.iter().find(|e| view(t, e).is_some());
            return Ok(found.map_or(Answer::None, |e| Answer::Entry(*e)));
        }
        // More translated ICMP connections than one walk keeps: filter by addresses, each side.
        let flags = FILTER_IP_SRC | FILTER_IP_DST | FILTER_PROTO_NUM;
        let mut plan: Vec<(Tuple, bool)> = Vec::new();
        for reply_side in [false, true] {
            plan.extend([(*t, reply_side), (t.reversed(), reply_side)]);
        }
        if *walks < plan.len() {
            return Ok(Answer::Later);
        }
        let fits = |e: &Entry| translated(e) && view(t, e).is_some();
        for (probe, reply_side) in plan {
            *walks -= 1;
            let (found, _) = self.ct.find(&probe, (reply_side, flags), MATCHES, &fits)?;
            if let Some(e) = found.into_iter().next() {
                return Ok(Answer::Entry(e));
            }
        }
        Ok(Answer::None)
    }
}

/// Whether the connection count in `count` (read from its start) is zero; `false` when it
/// cannot be read, so that lookups go on.
fn tracks_nothing(count: &File) -> bool {
    let mut buf = [0u8; 24];
    match count.read_at(&mut buf, 0) {
        Ok(n) => {
            std::str::from_utf8(&buf[..n])
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                == Some(0)
        }
        Err(_) => false,
    }
}

/// True when the reply tuple is not the original's mirror image: the kernel translates.
fn translated(e: &Entry) -> bool {
    e.reply != e.orig.reversed()
}

/// Whether `t` is a view of the connection `e`: each of its endpoints either the original or
/// the translated one of its side. Returns (`t` runs against the original direction, `t` is
/// the original tuple itself).
fn view(t: &Tuple, e: &Entry) -> Option<(bool, bool)> {
    let (o, r) = (&e.orig, &e.reply);
    let pre = [(o.src, o.src_port), (o.dst, o.dst_port)];
    // What each original endpoint became: replies go to the source's translation and come
    // from the destination's.
    let post = [(r.dst, r.dst_port), (r.src, r.src_port)];
    let flow = [(t.src, t.src_port), (t.dst, t.dst_port)];
    for swapped in [false, true] {
        let f = if swapped { [flow[1], flow[0]] } else { flow };
        if (f[0] == pre[0] || f[0] == post[0]) && (f[1] == pre[1] || f[1] == post[1]) {
            return Some((swapped, f == pre));
        }
    }
    None
}

/// What conntrack says about one flow, for the canonical key's two endpoints (0: `src_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nat {
    /// Each endpoint before translation (what the connection's initiator addressed).
    pub pre: [Endpoint; 2],
    /// Each endpoint after translation (equal to `pre` on a side that was not translated).
    pub post: [Endpoint; 2],
    /// The flow is the translated copy: the packets it counts are the pre-translation flow's
    /// again (after the NAT hook), so when that flow is seen too this one is not emitted.
    pub translated_view: bool,
    /// The conntrack entry it was read from (copies conntrack cannot find by their own tuple
    /// are matched against it).
    pub entry: Entry,
}

impl Nat {
    /// The canonical key of the pre-translation flow, seen on the same kind of hook.
    pub fn twin(&self, key: &FlowKey) -> FlowKey {
        super::canonical(&FlowKey {
            src_addr: self.pre[0].0,
            src_port: self.pre[0].1,
            dst_addr: self.pre[1].0,
            dst_port: self.pre[1].1,
            ..*key
        })
        .0
    }
}

fn key_bytes(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn endpoint(a: IpAddr, port: u16) -> Endpoint {
    (key_bytes(a), port)
}

/// The tuple of a canonical flow key (ports 0 where the protocol has none).
pub fn tuple(key: &FlowKey) -> Tuple {
    let ports = has_ports(key.proto);
    Tuple {
        src: key_addr(key, key.src_addr),
        dst: key_addr(key, key.dst_addr),
        proto: key.proto,
        src_port: if ports { key.src_port } else { 0 },
        dst_port: if ports { key.dst_port } else { 0 },
    }
}

/// Reads a conntrack entry against a flow's canonical key: `None` when the connection is not
/// translated or the entry is not this flow's.
pub fn interpret(key: &FlowKey, e: &Entry) -> Option<Nat> {
    if !translated(e) {
        return None;
    }
    let (swapped, original) = view(&tuple(key), e)?;
    let (o, r) = (&e.orig, &e.reply);
    let pre = [endpoint(o.src, o.src_port), endpoint(o.dst, o.dst_port)];
    let post = [endpoint(r.dst, r.dst_port), endpoint(r.src, r.src_port)];
    let order = |p: [Endpoint; 2]| if swapped { [p[1], p[0]] } else { p };
    Some(Nat {
        pre: order(pre),
        post: order(post),
        translated_view: !original,
        entry: *e,
    })
}

/// The address of an [`Endpoint`] of a key with `key`'s family.
pub fn endpoint_addr(key: &FlowKey, e: &Endpoint) -> IpAddr {
    key_addr(key, e.0)
}

/// Conntrack lookups over the agent's life, for metrics and the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Flows looked up in conntrack.
    pub lookups: u64,
    /// Filtered walks of the kernel's whole conntrack table those lookups took (ICMP).
    pub walks: u64,
    /// Of those, flows of a translated connection.
    pub translated: u64,
    /// Records not emitted because they were the translated copy of a flow also seen.
    pub merged: u64,
    /// Packets those records held (counted in their twin's records).
    pub merged_packets: u64,
    /// Flows emitted before their turn to be looked up (`--conntrack-lookups-per-scan`).
    pub skipped: u64,
    /// Lookups that failed (timeout, refused).
    pub errors: u64,
    /// Flows emitted unjoined because every retry of their lookup failed.
    pub gave_up: u64,
}

/// A table's conntrack: the source, how many flows one scan may look up, and how many
/// filtered walks of the kernel's table (ICMP, half-translated copies) those may cost.
pub struct NatLookup {
    pub source: Box<dyn Conntracker>,
    pub per_scan: usize,
    pub walks_per_scan: usize,
    /// How many times a failed lookup is asked again (a scan apart) before its flow is
    /// emitted unjoined; its records wait meanwhile.
    pub retries: u8,
}

#[cfg(test)]
pub(crate) fn v4(a: &str) -> [u8; 16] {
    key_bytes(a.parse::<IpAddr>().expect("address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::conntrack::tcp as t;

    fn key(s: &str, sp: u16, d: &str, dp: u16) -> FlowKey {
        super::super::canonical(&FlowKey {
            src_addr: v4(s),
            dst_addr: v4(d),
            src_port: sp,
            dst_port: dp,
            proto: 6,
            ..Default::default()
        })
        .0
    }

    /// Pod 10.244.1.2:40000 to 192.168.77.2:80, masqueraded to the node's 192.168.77.1:61000.
    fn masquerade() -> Entry {
        Entry {
            orig: t("10.244.1.2", 40000, "192.168.77.2", 80),
            reply: t("192.168.77.2", 80, "192.168.77.1", 61000),
        }
    }

    #[test]
    fn the_pod_side_flow_of_a_masqueraded_connection_carries_the_translated_source() {
        let k = key("10.244.1.2", 40000, "192.168.77.2", 80);
        let n = interpret(&k, &masquerade()).unwrap();
        assert!(!n.translated_view);
        let i = if k.src_addr == v4("10.244.1.2") { 0 } else { 1 };
        assert_eq!(n.pre[i], (v4("10.244.1.2"), 40000));
        assert_eq!(n.post[i], (v4("192.168.77.1"), 61000));
        assert_eq!(n.pre[1 - i], n.post[1 - i]);
    }

    #[test]
    fn the_uplink_side_flow_is_the_translated_copy_whose_twin_is_the_pod_flow() {
        let pod = key("10.244.1.2", 40000, "192.168.77.2", 80);
        let up = key("192.168.77.1", 61000, "192.168.77.2", 80);
        let n = interpret(&up, &masquerade()).unwrap();
        assert!(n.translated_view);
        assert_eq!(n.twin(&up), pod);
    }

    #[test]
    fn a_service_dnat_maps_the_cluster_ip_to_its_backend() {
        let e = Entry {
            orig: t("10.244.1.2", 5000, "10.96.0.10", 53),
            reply: t("192.168.77.2", 53, "10.244.1.2", 5000),
        };
        let backend = key("10.244.1.2", 5000, "192.168.77.2", 53);
        let n = interpret(&backend, &e).unwrap();
        assert!(n.translated_view);
        assert_eq!(n.twin(&backend), key("10.244.1.2", 5000, "10.96.0.10", 53));
        let svc = interpret(&key("10.244.1.2", 5000, "10.96.0.10", 53), &e).unwrap();
        assert!(!svc.translated_view);
    }

    #[test]
    fn a_half_translated_copy_between_dnat_and_snat_is_a_copy_of_the_service_flow() {
        // Service DNAT and masquerade: the bridge (br_netfilter) sees pod -> backend.
        let e = Entry {
            orig: t("10.244.1.2", 5000, "10.96.0.10", 80),
            reply: t("192.168.77.2", 8000, "192.168.77.1", 5000),
        };
        let half = key("10.244.1.2", 5000, "192.168.77.2", 8000);
        let n = interpret(&half, &e).unwrap();
        assert!(n.translated_view);
        assert_eq!(n.twin(&half), key("10.244.1.2", 5000, "10.96.0.10", 80));
    }

    #[test]
    fn an_untranslated_or_unrelated_entry_says_nothing() {
        let plain = Entry {
            orig: t("10.0.0.1", 1, "10.0.0.2", 2),
            reply: t("10.0.0.2", 2, "10.0.0.1", 1),
        };
        assert_eq!(interpret(&key("10.0.0.1", 1, "10.0.0.2", 2), &plain), None);
        assert_eq!(
            interpret(&key("10.9.9.9", 1, "10.0.0.2", 2), &masquerade()),
            None
        );
    }

    /// A fresh directory of this test process.
    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("devourer-ct-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_zero_connection_count_is_read_as_nothing_tracked_and_anything_else_as_ask() {
        let dir = scratch("count-parse");
        let file = |text: &str| {
            let p = dir.join("count");
            std::fs::write(&p, text).unwrap();
            File::open(&p).unwrap()
        };
        assert!(tracks_nothing(&file("0\n")));
        assert!(!tracks_nothing(&file("17\n")));
        assert!(!tracks_nothing(&file("")));
        assert!(!tracks_nothing(&file("not a number\n")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn with_nothing_tracked_lookups_answer_none_without_asking_or_walking() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: ctnetlink answers only CAP_NET_ADMIN (run as root)");
            return;
        }
        let dir = scratch("count-empty");
        let count = dir.join("count");
        std::fs::write(&count, "0\n").unwrap();
        let ct = Conntrack::open(std::time::Duration::from_secs(2)).expect("ctnetlink socket");
        let mut k = KernelConntrack::with_count_file(ct, &count);
        k.new_scan();
        let ping = Tuple {
            proto: IPPROTO_ICMP,
            ..t("203.0.113.1", 0, "203.0.113.2", 0)
        };
        let mut walks = 4;
        assert_eq!(k.entry(&ping, &mut walks).unwrap(), Answer::None);
        assert_eq!(walks, 4, "no walk of the kernel's table was spent");
        let probes = [t("203.0.113.1", 1000, "203.0.113.2", 80)];
        assert_eq!(k.entries(&probes).unwrap(), vec![None]);
        // Once connections are tracked, the next scan asks again (and walks for ICMP).
        std::fs::write(&count, "3\n").unwrap();
        k.new_scan();
        assert_eq!(k.entry(&ping, &mut walks).unwrap(), Answer::None);
        assert_eq!(walks, 3, "a walk was spent once the count was not zero");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
