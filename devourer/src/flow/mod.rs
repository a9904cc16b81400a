//! The flow table: merges the kernel's per-direction entries into bidirectional flows, decides
//! when a flow's record is due (idle, active, TCP close, shutdown) and evicts kernel entries
//! without losing a packet.
//!
//! A kernel entry counts one direction since it was created. The table reads live entries each
//! scan (to follow a flow's activity) and removes them with an atomic lookup-and-delete when
//! they go quiet, under map pressure, or when a record is cut, folding what the delete returned
//! into the flow. An entry therefore always belongs to exactly one record: the counts a record
//! carries are the folded entries plus the entries still live at the cut, which are deleted at
//! that moment. The next packet creates a fresh entry whose first timestamp is exact.

use std::{collections::HashMap, io, net::IpAddr, sync::Arc};

/// Seeded per process: keys come off the network, so no fixed hash an attacker could collide.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use devourer_common::flow::{FlowKey, FlowValue, VAL_F_ICMP, VAL_F_SYN};

const TCP_FIN: u16 = 0x01;
const TCP_RST: u16 = 0x04;

/// Where the table reads and evicts kernel entries (the BPF map, or a fake in tests).
pub trait FlowSource {
    /// Appends every entry with its per-CPU values summed.
    fn read_all(&mut self, out: &mut Vec<(FlowKey, FlowValue)>) -> io::Result<()>;
    /// Atomically removes an entry and returns its summed value (`None` if absent).
    fn take(&mut self, key: &FlowKey) -> io::Result<Option<FlowValue>>;
    /// How many entries the map holds at most.
    fn capacity(&self) -> usize;
    /// Atomically removes every entry, appending each with its summed value.
    fn take_all(&mut self, out: &mut Vec<(FlowKey, FlowValue)>) -> io::Result<()> {
        let mut keys = Vec::new();
        self.read_all(&mut keys)?;
        for (k, _) in keys {
            if let Some(v) = self.take(&k)? {
                out.push((k, v));
            }
        }
        Ok(())
    }
}

/// Where flows get the names of their addresses (the DNS name cache, or nothing).
pub trait Resolver {
    fn name(&mut self, addr: IpAddr, now: u64) -> Option<Arc<str>>;
}

/// No names at all.
pub struct NoNames;

impl Resolver for NoNames {
    fn name(&mut self, _: IpAddr, _: u64) -> Option<Arc<str>> {
        None
    }
}

/// Sums one entry's per-CPU slots: counts add up, the first packet is the earliest slot's.
/// Returns `None` when no slot saw a packet.
pub fn sum_per_cpu(slots: impl IntoIterator<Item = FlowValue>) -> Option<FlowValue> {
    let mut total: Option<FlowValue> = None;
    for s in slots {
        if s.packets == 0 && s.first_ns == 0 {
            continue;
        }
        match &mut total {
            None => total = Some(s),
            Some(t) => merge_value(t, &s),
        }
    }
    total
}

/// Adds `b` into `a` (same direction of the same flow).
fn merge_value(a: &mut FlowValue, b: &FlowValue) {
    if b.packets == 0 && b.first_ns == 0 {
        return;
    }
    let b_is_earlier = a.first_ns == 0 || (b.first_ns != 0 && b.first_ns < a.first_ns);
    if b.flags & VAL_F_ICMP != 0 && (a.flags & VAL_F_ICMP == 0 || b_is_earlier) {
        a.icmp_type = b.icmp_type;
        a.icmp_code = b.icmp_code;
    }
    if b_is_earlier {
        a.first_ns = b.first_ns;
    }
    a.last_ns = a.last_ns.max(b.last_ns);
    a.bytes += b.bytes;
    a.packets += b.packets;
    a.tcp_flags |= b.tcp_flags;
    a.flags |= b.flags;
}

/// Timeouts, all in nanoseconds of the program's clock.
#[derive(Clone, Copy, Debug)]
pub struct TableConfig {
    pub idle_timeout: u64,
    pub active_timeout: u64,
    pub tcp_linger: u64,
    /// A kernel entry quiet for this long is moved into the table (frees map room early).
    pub evict_after: u64,
}

/// Why a record was emitted (the record's `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    IdleTimeout,
    ActiveTimeout,
    TcpClosed,
    Shutdown,
    EndOfInput,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdleTimeout => "idle_timeout",
            Self::ActiveTimeout => "active_timeout",
            Self::TcpClosed => "tcp_closed",
            Self::Shutdown => "shutdown",
            Self::EndOfInput => "end_of_input",
        }
    }
}

/// One finished record, oriented: `key.src_*` is the initiator, `src` its direction's counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emitted {
    pub key: FlowKey,
    pub seq: u32,
    /// First packet of the flow (its seq 0 record): part of the record id.
    pub flow_start_ns: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub src: FlowValue,
    pub dst: FlowValue,
    pub status: Status,
    pub src_name: Option<Arc<str>>,
    pub dst_name: Option<Arc<str>>,
}

impl Emitted {
    pub fn tcp_flags(&self) -> u16 {
        self.src.tcp_flags | self.dst.tcp_flags
    }

    /// Type and code of the record's first ICMP packet.
    pub fn icmp(&self) -> Option<(u8, u8)> {
        let (s, d) = (&self.src, &self.dst);
        let pick = match (s.flags & VAL_F_ICMP != 0, d.flags & VAL_F_ICMP != 0) {
            (true, true) if d.first_ns < s.first_ns => d,
            (true, _) => s,
            (false, true) => d,
            (false, false) => return None,
        };
        Some((pick.icmp_type, pick.icmp_code))
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Dir {
    /// Entries already deleted from the kernel map, for the current record.
    folded: FlowValue,
    /// The last read of the entry still in the kernel map, if any.
    live: Option<FlowValue>,
    /// OR of TCP flags and `VAL_F_*` over the flow's whole life (close and initiator detection).
    ever_tcp: u16,
    ever_flags: u8,
}

impl Dir {
    fn current(&self) -> FlowValue {
        let mut v = self.folded;
        if let Some(l) = &self.live {
            merge_value(&mut v, l);
        }
        v
    }

    fn fold(&mut self, v: &FlowValue) {
        merge_value(&mut self.folded, v);
        self.live = None;
        self.note(v);
    }

    fn note(&mut self, v: &FlowValue) {
        self.ever_tcp |= v.tcp_flags;
        self.ever_flags |= v.flags;
    }
}

#[derive(Clone, Debug)]
struct Flow {
    /// Canonical key: `src_*` is the lower endpoint. Direction 0 is this key, 1 its reverse.
    key: FlowKey,
    dirs: [Dir; 2],
    seq: u32,
    /// Fixed when the first record is emitted: the initiator's direction and the flow start.
    orient: Option<(usize, u64)>,
    /// Last packet seen in either direction over the flow's life.
    last_seen: u64,
    /// Names of the canonical source and destination addresses, taken when the flow is first
    /// seen (and again at emit while unknown).
    names: [Option<Arc<str>>; 2],
    named: bool,
}

/// Puts a directional key in canonical form; returns it and the direction it had.
pub fn canonical(k: &FlowKey) -> (FlowKey, usize) {
    if (k.src_addr, k.src_port) <= (k.dst_addr, k.dst_port) {
        (*k, 0)
    } else {
        (reverse(k), 1)
    }
}

fn reverse(k: &FlowKey) -> FlowKey {
    FlowKey {
        src_addr: k.dst_addr,
        dst_addr: k.src_addr,
        src_port: k.dst_port,
        dst_port: k.src_port,
        ..*k
    }
}

fn directional(canon: &FlowKey, dir: usize) -> FlowKey {
    if dir == 0 { *canon } else { reverse(canon) }
}

impl Flow {
    fn new(key: FlowKey) -> Self {
        Self {
            key,
            dirs: [Dir::default(); 2],
            seq: 0,
            orient: None,
            last_seen: 0,
            names: [None, None],
            named: false,
        }
    }

    /// Fills in the names still unknown from `names` at `now`.
    fn resolve(&mut self, names: &mut dyn Resolver, now: u64) {
        let addrs = [
            crate::record::addr(&self.key, self.key.src_addr),
            crate::record::addr(&self.key, self.key.dst_addr),
        ];
        for (slot, a) in self.names.iter_mut().zip(addrs) {
            if slot.is_none() {
                *slot = names.name(a, now);
            }
        }
        self.named = true;
    }

    /// Records the latest read (`live`) or the deleted final value (`!live`) of an entry.
    fn observe(&mut self, d: usize, v: &FlowValue, live: bool) {
        self.last_seen = self.last_seen.max(v.last_ns);
        if live {
            self.dirs[d].live = Some(*v);
            self.dirs[d].note(v);
        } else {
            self.dirs[d].fold(v);
        }
    }

    fn current(&self) -> [FlowValue; 2] {
        [self.dirs[0].current(), self.dirs[1].current()]
    }

    /// First packet of the current record (0 when it has none yet).
    fn record_first_ns(&self) -> u64 {
        let [a, b] = self.current();
        match (a.first_ns, b.first_ns) {
            (0, f) | (f, 0) => f,
            (x, y) => x.min(y),
        }
    }

    fn has_live(&self) -> bool {
        self.dirs.iter().any(|d| d.live.is_some())
    }

    fn tcp_closed(&self) -> bool {
        let [a, b] = &self.dirs;
        (a.ever_tcp | b.ever_tcp) & TCP_RST != 0 || (a.ever_tcp & b.ever_tcp) & TCP_FIN != 0
    }

    /// The initiator: the only direction that sent a bare SYN, else the first to send.
    fn initiator(&self) -> usize {
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

    /// Builds the record for what the flow holds now and starts the next one.
    fn cut(&mut self, status: Status, names: &mut dyn Resolver, now: u64) -> Option<Emitted> {
        let cur = self.current();
        if cur[0].packets == 0 && cur[1].packets == 0 {
            return None;
        }
        self.resolve(names, now);
        let first = self.record_first_ns();
        let initiator = self.initiator();
        let (src, start) = *self.orient.get_or_insert((initiator, first));
        let dst = 1 - src;
        let rec = Emitted {
            key: directional(&self.key, src),
            seq: self.seq,
            flow_start_ns: start,
            first_ns: first,
            last_ns: cur[0].last_ns.max(cur[1].last_ns),
            src: cur[src],
            dst: cur[dst],
            status,
            src_name: self.names[src].clone(),
            dst_name: self.names[dst].clone(),
        };
        self.seq += 1;
        for d in &mut self.dirs {
            d.folded = FlowValue::default();
        }
        Some(rec)
    }
}

/// Scan and emission statistics, for logs and metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanStats {
    pub kernel_entries: usize,
    pub evicted: usize,
    pub emitted: usize,
}

pub struct FlowTable {
    cfg: TableConfig,
    flows: FastMap<FlowKey, Flow>,
    scratch: Vec<(FlowKey, FlowValue)>,
}

impl FlowTable {
    pub fn new(cfg: TableConfig) -> Self {
        Self {
            cfg,
            flows: FastMap::default(),
            scratch: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Deletes one kernel entry and folds what it held into its flow.
    fn take_into(&mut self, src: &mut dyn FlowSource, key: &FlowKey) -> io::Result<bool> {
        let Some(v) = src.take(key)? else {
            return Ok(false);
        };
        self.fold_deleted(key, &v);
        Ok(true)
    }

    /// Folds what deleting a kernel entry returned into its flow.
    fn fold_deleted(&mut self, key: &FlowKey, v: &FlowValue) {
        let (ck, d) = canonical(key);
        self.flows
            .entry(ck)
            .or_insert_with(|| Flow::new(ck))
            .observe(d, v, false);
    }

    fn take_flow(&mut self, src: &mut dyn FlowSource, ck: &FlowKey) -> io::Result<()> {
        for d in 0..2 {
            let live = self.flows.get(ck).is_some_and(|f| f.dirs[d].live.is_some());
            if live {
                let key = directional(ck, d);
                if !self.take_into(src, &key)? {
                    // Gone from the map (nothing else deletes, but never count it twice).
                    if let Some(f) = self.flows.get_mut(ck) {
                        let dir = &mut f.dirs[d];
                        if let Some(l) = dir.live.take() {
                            dir.fold(&l);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One scan at time `now`: read the kernel map, evict quiet entries (and, under `pressure`
    /// or when the map is nearly full, the least recently active half), and return the records
    /// that are due, in a deterministic order.
    pub fn scan(
        &mut self,
        src: &mut dyn FlowSource,
        now: u64,
        pressure: bool,
        stats: &mut ScanStats,
        names: &mut dyn Resolver,
    ) -> io::Result<Vec<Emitted>> {
        let mut entries = std::mem::take(&mut self.scratch);
        entries.clear();
        src.read_all(&mut entries)?;
        stats.kernel_entries = entries.len();
        let mut evict: Vec<(u64, FlowKey)> = Vec::new();
        let mut keep: Vec<(u64, FlowKey)> = Vec::new();
        for (k, v) in &entries {
            let (ck, d) = canonical(k);
            self.flows
                .entry(ck)
                .or_insert_with(|| Flow::new(ck))
                .observe(d, v, true);
            if now.saturating_sub(v.last_ns) >= self.cfg.evict_after {
                evict.push((v.last_ns, *k));
            } else {
                keep.push((v.last_ns, *k));
            }
        }
        let capacity = src.capacity();
        if pressure || entries.len() * 10 >= capacity * 9 {
            // Free room down to half the map, oldest activity first. Evicting an active entry
            // loses nothing: its counts move to the table and the next packet starts a new one.
            let target = capacity / 2;
            let remaining = keep.len();
            if remaining > target {
                keep.sort_unstable();
                evict.extend_from_slice(&keep[..remaining - target]);
            }
        }
        self.scratch = entries;
        for (_, k) in &evict {
            if self.take_into(src, k)? {
                stats.evicted += 1;
            }
        }
        for flow in self.flows.values_mut().filter(|f| !f.named) {
            flow.resolve(names, now);
        }
        let mut out = Vec::new();
        let due: Vec<(FlowKey, Status)> = self
            .flows
            .iter()
            .filter_map(|(ck, f)| Some((*ck, self.due(f, now)?)))
            .collect();
        for (ck, status) in due {
            self.take_flow(src, &ck)?;
            let flow = self.flows.get_mut(&ck).expect("flow exists");
            let status = match status {
                // A packet may have arrived between the read and the delete.
                Status::IdleTimeout
                    if now.saturating_sub(flow.last_seen) < self.cfg.idle_timeout =>
                {
                    continue;
                }
                s => s,
            };
            if let Some(rec) = flow.cut(status, names, now) {
                out.push(rec);
            }
            if status != Status::ActiveTimeout {
                self.flows.remove(&ck);
            }
        }
        // Flows whose record was cut at an active timeout and that went quiet afterwards.
        let idle = self.cfg.idle_timeout;
        self.flows.retain(|_, f| {
            f.has_live() || f.record_first_ns() != 0 || now.saturating_sub(f.last_seen) < idle
        });
        sort_records(&mut out);
        stats.emitted += out.len();
        Ok(out)
    }

    fn due(&self, f: &Flow, now: u64) -> Option<Status> {
        let first = f.record_first_ns();
        if first == 0 {
            return None;
        }
        let idle = now.saturating_sub(f.last_seen);
        if idle >= self.cfg.idle_timeout {
            Some(Status::IdleTimeout)
        } else if f.tcp_closed() && idle >= self.cfg.tcp_linger {
            Some(Status::TcpClosed)
        } else if now.saturating_sub(first) >= self.cfg.active_timeout {
            Some(Status::ActiveTimeout)
        } else {
            None
        }
    }

    /// Empties the kernel map and the table: every open flow is emitted with `status`.
    pub fn flush(
        &mut self,
        src: &mut dyn FlowSource,
        status: Status,
        names: &mut dyn Resolver,
        now: u64,
    ) -> io::Result<Vec<Emitted>> {
        let mut entries = Vec::new();
        src.take_all(&mut entries)?;
        for (k, v) in &entries {
            self.fold_deleted(k, v);
        }
        let mut out = Vec::new();
        for mut flow in std::mem::take(&mut self.flows).into_values() {
            // An entry read earlier but gone from the map now: its last read is what it held.
            for d in &mut flow.dirs {
                if let Some(l) = d.live.take() {
                    d.fold(&l);
                }
            }
            if let Some(rec) = flow.cut(status, names, now) {
                out.push(rec);
            }
        }
        sort_records(&mut out);
        Ok(out)
    }
}

fn sort_records(out: &mut [Emitted]) {
    out.sort_unstable_by_key(|r| (r.first_ns, r.key, r.seq));
}

#[cfg(test)]
mod tests;
