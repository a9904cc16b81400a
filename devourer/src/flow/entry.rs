//! One flow in the agent's table: its two directions' kernel entries (folded after deletion,
//! or live), its orientation (the initiator) and names, and how a record is cut from it.

use std::sync::Arc;

use devourer_common::flow::{FlowKey, FlowValue, VAL_F_ICMP, VAL_F_SYN, VLAN_SEEN};
use smallvec::SmallVec;

use super::{
    Emitted, Resolver, Status, Workload,
    drops::FlowDrops,
    nat::{Nat, endpoint_addr},
    tcp::{Handshake, Samples, Srtt, TcpHealth, failed, handshake_rtt, sent_here},
    tls::TlsInfo,
};
use crate::base::net::key_addr;

const TCP_FIN: u16 = 0x01;
const IPPROTO_TCP: u8 = 6;
const TCP_RST: u16 = 0x04;

/// Sums one entry's per-CPU slots: counts add up, the first packet is the earliest slot's.
/// Returns `None` when no slot saw a packet.
pub fn sum_per_cpu(slots: impl IntoIterator<Item = FlowValue>) -> Option<FlowValue> {
    let mut total: Option<FlowValue> = None;
    for s in slots {
        // A CPU's slot that saw nothing (offline, an entry that only noted a copy at another
        // hook counts nothing either, but names its counting hook).
        if counts_nothing(&s) && s.counted_on == 0 {
            continue;
        }
        match &mut total {
            None => total = Some(s),
            Some(t) => merge_value(t, &s),
        }
    }
    total
}

/// Whether a kernel value holds no counted packet: an empty per-CPU slot, or offline an entry
/// that only noted a copy at another hook.
pub(super) fn counts_nothing(v: &FlowValue) -> bool {
    v.packets == 0 && v.first_ns == 0
}

/// Interfaces and hooks a flow lists in its records, at most.
pub const MAX_HOOKS: usize = 16;

/// Adds `b` into `a` (same direction of the same flow).
fn merge_value(a: &mut FlowValue, b: &FlowValue) {
    if a.counted_on == 0 {
        a.counted_on = b.counted_on;
    }
    let mut sum = Counts::of(a);
    sum.add(b, b.packets, b.bytes);
    let earliest = |x: u64, y: u64| if x == 0 || (y != 0 && y < x) { y } else { x };
    let newer = if b.srtt_samples > a.srtt_samples {
        b.srtt_last_us
    } else {
        a.srtt_last_us
    };
    // Per-CPU slots of one direction: its last SYN, its first ACK, the newer sample.
    *a = FlowValue {
        seen_on: a.seen_on,
        vlan: if a.vlan != 0 { a.vlan } else { b.vlan },
        syn_ns: a.syn_ns.max(b.syn_ns),
        ack_ns: earliest(a.ack_ns, b.ack_ns),
        srtt_last_us: newer,
        srtt_samples: a.srtt_samples + b.srtt_samples,
        ..sum.value(a.counted_on)
    };
}

/// What one direction counted for the current record: a kernel value without its hook fields
/// (the flow keeps those once, in its hook list).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counts {
    first_ns: u64,
    last_ns: u64,
    bytes: u64,
    packets: u64,
    tcp_flags: u16,
    icmp_type: u8,
    icmp_code: u8,
    flags: u8,
}

impl Counts {
    fn of(v: &FlowValue) -> Self {
        Self {
            first_ns: v.first_ns,
            last_ns: v.last_ns,
            bytes: v.bytes,
            packets: v.packets,
            tcp_flags: v.tcp_flags(),
            icmp_type: v.icmp_type(),
            icmp_code: v.icmp_code(),
            flags: v.val_flags(),
        }
    }

    /// Adds `packets` and `bytes` of `v` (what its entry gained since the last read) and the
    /// rest of `v` (first and last packet, flags, first ICMP type), as [`merge_value`] does.
    fn add(&mut self, v: &FlowValue, packets: u64, bytes: u64) {
        if counts_nothing(v) {
            return;
        }
        let v_is_earlier = self.first_ns == 0 || (v.first_ns != 0 && v.first_ns < self.first_ns);
        if v.val_flags() & VAL_F_ICMP != 0 && (self.flags & VAL_F_ICMP == 0 || v_is_earlier) {
            self.icmp_type = v.icmp_type();
            self.icmp_code = v.icmp_code();
        }
        if v_is_earlier {
            self.first_ns = v.first_ns;
        }
        self.last_ns = self.last_ns.max(v.last_ns);
        self.bytes += bytes;
        self.packets += packets;
        self.tcp_flags |= v.tcp_flags();
        self.flags |= v.val_flags();
    }

    /// As a kernel value counted on `counted_on` (records read counts from kernel values).
    fn value(&self, counted_on: u32) -> FlowValue {
        let mut v = FlowValue {
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            bytes: self.bytes,
            packets: self.packets,
            counted_on,
            ..FlowValue::default()
        };
        v.add_flags(self.tcp_flags, self.flags);
        v.set_icmp(self.icmp_type, self.icmp_code);
        v
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Dir {
    /// The current record's counts: the entries deleted since the last cut plus the last read
    /// of the entry still in the kernel map.
    counts: Counts,
    /// Packets and bytes of the entry still in the kernel map at its last read (`None`: no
    /// entry in the map), so the next read adds only what it gained.
    live: Option<(u64, u64)>,
    /// OR of TCP flags and `VAL_F_*` over the flow's whole life (close and initiator detection).
    pub(super) ever_tcp: u16,
    pub(super) ever_flags: u8,
    /// The interface and hook that counts this direction (the first that saw it; 0: none yet).
    pub(super) counted_on: u32,
    /// Packets and bytes read from the kernel since the traffic metrics last took them.
    pub(super) unreported: (u64, u64),
    /// Its TCP handshake times over the flow's life.
    pub(super) handshake: Handshake,
    /// Its socket's RTT samples since the last record.
    pub(super) samples: Samples,
}

impl Dir {
    pub(super) fn current(&self) -> FlowValue {
        self.counts.value(self.counted_on)
    }

    /// Whether an entry of this direction is in the kernel map (as of the last read).
    pub(super) fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Records a read of this direction's kernel entry: `live` while it stays in the map, or
    /// the value its deletion returned.
    fn observe(&mut self, v: &FlowValue, live: bool) {
        let (p0, b0) = self.live.unwrap_or((0, 0));
        let (p, b) = (v.packets.saturating_sub(p0), v.bytes.saturating_sub(b0));
        self.handshake.observe(v);
        self.samples.observe(v, self.live.is_some(), live);
        self.counts.add(v, p, b);
        self.unreported.0 += p;
        self.unreported.1 += b;
        self.live = live.then_some((v.packets, v.bytes));
        self.ever_tcp |= v.tcp_flags();
        self.ever_flags |= v.val_flags();
        if self.counted_on == 0 {
            self.counted_on = v.counted_on;
        }
    }

    /// The entry is gone from the map: its last read is what it held.
    pub(super) fn end_live(&mut self) {
        self.live = None;
    }
}

#[derive(Clone, Debug)]
pub(super) struct Flow {
    /// Canonical key: `src_*` is the lower endpoint. Direction 0 is this key, 1 its reverse.
    pub(super) key: FlowKey,
    pub(super) dirs: [Dir; 2],
    pub(super) seq: u32,
    /// Fixed when the first record is emitted: the initiator's direction and the flow start.
    pub(super) orient: Option<(u8, u64)>,
    /// Last packet seen in either direction over the flow's life.
    pub(super) last_seen: u64,
    /// Names of the canonical source and destination addresses, taken when the flow is first
    /// seen (and again at emit while unknown).
    pub(super) names: [Option<Arc<str>>; 2],
    /// The Kubernetes objects holding them, taken likewise.
    pub(super) workloads: [Option<Arc<Workload>>; 2],
    pub(super) named: bool,
    /// Every interface and hook that saw the flow, either way (at most [`MAX_HOOKS`]).
    pub(super) hooks: SmallVec<[u32; 4]>,
    /// The last VLAN tag a hook saw on it, as the kernel notes it (`VLAN_SEEN | id`; 0: none).
    pub(super) vlan: u16,
    /// What conntrack said about the flow's connection.
    pub(super) nat: NatState,
    /// Failed lookups of it so far (it is asked again while they are within the retries).
    pub(super) nat_failures: u8,
    /// The translated copy of a flow also in the table: its records are not emitted.
    pub(super) duplicate: bool,
    /// Its start record was emitted (or is not wanted).
    pub(super) started: bool,
    /// Its last record is cut: the scan's closing sweep removes it.
    pub(super) ended: bool,
    /// Drops attributed since its last record (boxed: few flows have any).
    pub(super) drops: Option<Box<FlowDrops>>,
    /// TCP segments the kernel retransmitted since its last record, either way.
    pub(super) retransmits: u64,
    /// RTT samples of its translated copy's sockets (a pod's, behind DNAT) since its last
    /// record.
    pub(super) nat_samples: Option<Srtt>,
    /// What its TLS handshake said (every record carries it).
    pub(super) tls: Option<Arc<TlsInfo>>,
}

/// A flow's translation, as far as it is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum NatState {
    /// Not looked up yet (or no conntrack).
    Unknown,
    /// Looked up: not a translated connection.
    Plain,
    /// Conntrack has no entry under its tuple: plain, unless it is the copy of a translated
    /// flow in the table (seen between DNAT and SNAT), which each scan checks.
    Orphan,
    /// Boxed: few flows are translated, and every flow would carry its size.
    Translated(Box<Nat>),
}

/// Puts a directional key in canonical form; returns it and the direction it had.
pub fn canonical(k: &FlowKey) -> (FlowKey, usize) {
    if (k.src_addr, k.src_port) <= (k.dst_addr, k.dst_port) {
        (*k, 0)
    } else {
        (reverse(k), 1)
    }
}

/// The other direction of `k`.
pub fn reverse(k: &FlowKey) -> FlowKey {
    FlowKey {
        src_addr: k.dst_addr,
        dst_addr: k.src_addr,
        src_port: k.dst_port,
        dst_port: k.src_port,
        ..*k
    }
}

pub(super) fn directional(canon: &FlowKey, dir: usize) -> FlowKey {
    if dir == 0 { *canon } else { reverse(canon) }
}

impl Flow {
    /// Both directions' entries are gone from the map: their last reads are what they held.
    pub(super) fn end_live(&mut self) {
        for d in &mut self.dirs {
            d.end_live();
        }
    }

    /// The type of the current record's first ICMP packet, either way (`None`: none seen).
    pub(super) fn icmp_type(&self) -> Option<u8> {
        self.dirs
            .iter()
            .map(|d| &d.counts)
            .filter(|c| c.flags & VAL_F_ICMP != 0)
            .min_by_key(|c| c.first_ns)
            .map(|c| c.icmp_type)
    }

    pub(super) fn new(key: FlowKey) -> Self {
        Self {
            key,
            dirs: [Dir::default(); 2],
            seq: 0,
            orient: None,
            last_seen: 0,
            names: [None, None],
            workloads: [None, None],
            named: false,
            hooks: SmallVec::new(),
            vlan: 0,
            nat: NatState::Unknown,
            nat_failures: 0,
            duplicate: false,
            started: false,
            ended: false,
            drops: None,
            retransmits: 0,
            tls: None,
            nat_samples: None,
        }
    }

    /// Takes the RTT samples of both directions since the last record (a NAT duplicate's go
    /// to its twin, whose records carry the connection).
    pub(super) fn take_samples(&mut self) -> Option<Srtt> {
        let [a, b] = &mut self.dirs;
        merge_srtt(a.samples.srtt.take(), b.samples.srtt.take())
    }

    /// Adds RTT samples of this flow's translated copy.
    pub(super) fn add_nat_samples(&mut self, s: Srtt) {
        self.nat_samples = Some(self.nat_samples.map_or(s, |old| old.then(s)));
    }

    /// Takes the packets and bytes counted since the last call, by the interface that counted
    /// each direction: `(ifindex, packets, bytes)`.
    pub(super) fn take_traffic(&mut self) -> impl Iterator<Item = (u32, u64, u64)> + '_ {
        let keyed = self.key.ifindex;
        self.dirs.iter_mut().filter_map(move |d| {
            let (p, b) = std::mem::take(&mut d.unreported);
            let ifindex = if keyed != 0 { keyed } else { d.counted_on >> 1 };
            (p != 0 || b != 0).then_some((ifindex, p, b))
        })
    }

    /// Merges hooks (and a VLAN tag) seen by the flow's translated copy into this flow's.
    pub(super) fn add_hooks(&mut self, hooks: &[u32], vlan: u16) {
        if self.vlan == 0 {
            self.vlan = vlan;
        }
        for h in hooks {
            if !self.hooks.contains(h) && self.hooks.len() < MAX_HOOKS {
                self.hooks.push(*h);
            }
        }
    }

    /// The canonical endpoints as records show them: before translation when translated.
    fn record_addrs(&self) -> [std::net::IpAddr; 2] {
        match &self.nat {
            NatState::Translated(n) => [
                endpoint_addr(&self.key, &n.pre[0]),
                endpoint_addr(&self.key, &n.pre[1]),
            ],
            _ => [
                key_addr(&self.key, self.key.src_addr),
                key_addr(&self.key, self.key.dst_addr),
            ],
        }
    }

    /// Lists the hooks an entry names (where it was counted and where else it was seen).
    fn note_hooks(&mut self, v: &FlowValue) {
        let all = std::iter::once(v.counted_on).chain(v.seen_on.iter().copied());
        for h in all.filter(|h| *h != 0) {
            if !self.hooks.contains(&h) && self.hooks.len() < MAX_HOOKS {
                self.hooks.push(h);
            }
        }
    }

    /// The record's interface and hook list: the initiator's counting hook first, then the
    /// responder's, then every other hook in order.
    fn hook_list(&self, src: usize) -> (u32, Vec<u32>) {
        let counting = [self.dirs[src].counted_on, self.dirs[1 - src].counted_on];
        let mut rest: SmallVec<[u32; 4]> = self
            .hooks
            .iter()
            .copied()
            .filter(|h| !counting.contains(h))
            .collect();
        rest.sort_unstable();
        let mut list: Vec<u32> = Vec::with_capacity(self.hooks.len());
        for h in counting.into_iter().filter(|h| *h != 0).chain(rest) {
            if !list.contains(&h) {
                list.push(h);
            }
        }
        let first = counting.into_iter().find(|h| *h != 0).map_or(0, |h| h >> 1);
        (first, list)
    }

    /// Fills in the names still unknown from `names` at `now`.
    pub(super) fn resolve(&mut self, names: &mut dyn Resolver, now: u64) {
        let addrs = self.record_addrs();
        // Each end is named from what the other end resolved.
        let clients = [addrs[1], addrs[0]];
        let ends = self.names.iter_mut().zip(&mut self.workloads).zip(addrs);
        for (((slot, k8s), a), client) in ends.zip(clients) {
            if slot.is_none() {
                *slot = names.name(client, a, now);
            }
            if k8s.is_none() {
                *k8s = names.workload(a);
            }
        }
        self.named = true;
    }

    /// Records the latest read (`live`) or the deleted final value (`!live`) of an entry.
    pub(super) fn observe(&mut self, d: usize, v: &FlowValue, live: bool) {
        self.last_seen = self.last_seen.max(v.last_ns);
        self.note_hooks(v);
        if v.vlan != 0 {
            self.vlan = v.vlan;
        }
        self.dirs[d].observe(v, live);
    }

    pub(super) fn current(&self) -> [FlowValue; 2] {
        [self.dirs[0].current(), self.dirs[1].current()]
    }

    /// First packet of the current record (0 when it has none yet).
    pub(super) fn record_first_ns(&self) -> u64 {
        match (self.dirs[0].counts.first_ns, self.dirs[1].counts.first_ns) {
            (0, f) | (f, 0) => f,
            (x, y) => x.min(y),
        }
    }

    pub(super) fn has_live(&self) -> bool {
        self.dirs.iter().any(Dir::is_live)
    }

    /// The initiator's direction and the flow's start, fixed by its first record.
    fn orientation(&mut self, initiator: usize, first: u64) -> (usize, u64) {
        let (src, start) = *self.orient.get_or_insert((initiator as u8, first));
        (usize::from(src), start)
    }

    pub(super) fn tcp_closed(&self) -> bool {
        let [a, b] = &self.dirs;
        (a.ever_tcp | b.ever_tcp) & TCP_RST != 0 || (a.ever_tcp & b.ever_tcp) & TCP_FIN != 0
    }

    /// The initiator: the only direction that sent a bare SYN, else the first to send.
    pub(super) fn initiator(&self) -> usize {
        let syn = |d: &Dir| d.ever_flags & VAL_F_SYN != 0;
        match (syn(&self.dirs[0]), syn(&self.dirs[1])) {
            (true, false) => 0,
            (false, true) => 1,
            _ => {
                let [a, b] = self.current();
                if a.first_ns == 0 || (b.first_ns != 0 && b.first_ns < a.first_ns) {
                    1
                } else {
                    0
                }
            }
        }
    }

    /// The flow's start record: its endpoints, interfaces, first packet and names so far, zero
    /// counters. Fixes the orientation the flow's records keep.
    pub(super) fn start(&mut self, names: &mut dyn Resolver, now: u64) -> Emitted {
        self.started = true;
        self.resolve(names, now);
        let first = self.record_first_ns();
        let initiator = self.initiator();
        let cur = self.current();
        let (src, start) = self.orientation(initiator, first);
        let mut rec = self.record(src, start, Status::Start);
        rec.first_ns = first;
        rec.last_ns = first;
        // The first ICMP type and code, without counting anything.
        for (side, d) in [(&mut rec.src, src), (&mut rec.dst, 1 - src)] {
            side.marks = 0;
            side.add_flags(0, cur[d].val_flags());
            side.set_icmp(cur[d].icmp_type(), cur[d].icmp_code());
        }
        rec
    }

    /// A record of this flow oriented with `src` as the initiator, counters zero.
    fn record(&self, src: usize, start: u64, status: Status) -> Emitted {
        let dst = 1 - src;
        let (counted_on, hooks) = self.hook_list(src);
        let mut rec = Emitted {
            // Counting per interface, the key names it; once per node, the first that saw it.
            interface: if self.key.ifindex != 0 {
                self.key.ifindex
            } else {
                counted_on
            },
            hooks,
            vlan: (self.vlan & VLAN_SEEN != 0).then_some(self.vlan & 0x0fff),
            key: directional(&self.key, src),
            seq: self.seq,
            flow_start_ns: start,
            first_ns: 0,
            last_ns: 0,
            src: FlowValue::default(),
            dst: FlowValue::default(),
            status,
            src_name: self.names[src].clone(),
            dst_name: self.names[dst].clone(),
            src_k8s: self.workloads[src].clone(),
            dst_k8s: self.workloads[dst].clone(),
            xlat_src: None,
            xlat_dst: None,
            drops: None,
            tcp: None,
            tls: self.tls.clone(),
        };
        if let NatState::Translated(n) = &self.nat {
            // Record endpoints are the pre-translation ones; translated sides go to xlat_*.
            (rec.key.src_addr, rec.key.src_port) = n.pre[src];
            (rec.key.dst_addr, rec.key.dst_port) = n.pre[dst];
            rec.xlat_src = (n.post[src] != n.pre[src]).then_some(n.post[src]);
            rec.xlat_dst = (n.post[dst] != n.pre[dst]).then_some(n.post[dst]);
        }
        rec
    }

    /// The TCP health a record with `src` as the initiator carries: the handshake (once
    /// known), the RTT samples and retransmissions since the last record (taken), and whether
    /// the connection failed.
    fn tcp_health(&mut self, src: usize, status: Status) -> TcpHealth {
        let (c, s) = (&self.dirs[src], &self.dirs[1 - src]);
        let here = |d: &Dir| sent_here(d.counted_on, &crate::kernel::netns::has_peer);
        let local = (here(c), here(s));
        let own = merge_srtt(c.samples.srtt, s.samples.srtt);
        let health = TcpHealth {
            handshake_rtt_ns: handshake_rtt(&c.handshake, &s.handshake, local),
            srtt: match (own, self.nat_samples.take()) {
                (Some(o), Some(n)) => Some(n.then(o)),
                (o, n) => o.or(n),
            },
            retransmits: Some(std::mem::take(&mut self.retransmits)),
            failed: failed(
                (c.ever_flags & VAL_F_SYN != 0, c.ever_tcp),
                s.ever_tcp,
                &s.handshake,
                status == Status::IdleTimeout,
            ),
        };
        for d in &mut self.dirs {
            d.samples.srtt = None;
        }
        health
    }

    /// Builds the record for what the flow holds now and starts the next one.
    pub(super) fn cut(
        &mut self,
        status: Status,
        names: &mut dyn Resolver,
        now: u64,
    ) -> Option<Emitted> {
        let cur = self.current();
        if cur[0].packets == 0 && cur[1].packets == 0 {
            return None;
        }
        self.resolve(names, now);
        let first = self.record_first_ns();
        let initiator = self.initiator();
        let (src, start) = self.orientation(initiator, first);
        let mut rec = self.record(src, start, status);
        rec.first_ns = first;
        rec.last_ns = cur[0].last_ns.max(cur[1].last_ns);
        rec.src = cur[src];
        rec.dst = cur[1 - src];
        rec.drops = self.drops.take().map(|d| *d);
        if self.key.proto == IPPROTO_TCP {
            rec.tcp = Some(self.tcp_health(src, status));
        }
        self.seq += 1;
        for d in &mut self.dirs {
            d.counts = Counts::default();
        }
        Some(rec)
    }
}

/// Both ends' samples (where both sockets are local): the least and greatest of either, the
/// initiator's last.
fn merge_srtt(client: Option<Srtt>, server: Option<Srtt>) -> Option<Srtt> {
    match (client, server) {
        (Some(c), Some(s)) => Some(s.then(c)),
        (one, None) | (None, one) => one,
    }
}
