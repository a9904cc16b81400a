//! The flow table: every flow the agent follows, read from and evicted out of the kernel map
//! each scan; decides which records are due and returns them in a deterministic order.

use std::io;

use devourer_common::flow::{FlowKey, FlowValue};

use super::{
    Emitted, FlowSource, Reports, Resolver, Status, TableConfig,
    drops::{DropStats, FlowDrops},
    entry::{Flow, NatState, canonical, counts_nothing, directional},
    nat::{Answer, Endpoint, Nat, NatLookup, NatStats, interpret, may_be_tracked, tuple},
    store::Flows,
    tcp::Srtt,
    tls::{TlsInfo, TlsSeen},
};
use crate::{
    base::hash::FastMap,
    kernel::conntrack::{Entry, Error, Tuple, has_ports},
};

/// Quiet entries from which a scan drains the whole kernel map in one batch (when they are
/// most of it) instead of deleting them one by one.
const DRAIN_MIN: usize = 256;

/// How many due flows ahead of the one being cut are prefetched (they are cut in record order,
/// which is not their order in memory).
const PREFETCH_AHEAD: usize = 8;

/// Scan and emission statistics, for logs and metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanStats {
    pub kernel_entries: usize,
    pub evicted: usize,
    pub emitted: usize,
}

pub struct FlowTable {
    /// Flows emitted early because the table was full, over its life.
    table_full: u64,
    cfg: TableConfig,
    flows: Flows,
    /// Conntrack, when NAT'd connections are joined (live only).
    nat: Option<NatLookup>,
    tally: Tally,
}

/// What the table counts besides records: conntrack lookups, traffic per interface, drops.
#[derive(Default)]
struct Tally {
    nat: NatStats,
    /// Drops are followed: records carry them (zero when there were none).
    drops_on: bool,
    drops: DropStats,
    /// Retransmissions are followed: TCP records carry them (zero when there were none).
    retransmits_on: bool,
    /// Retransmitted segments added to a flow, and of tuples no flow holds.
    retransmits: (u64, u64),
    /// Packets and bytes read since the metrics last took them, by counting interface.
    traffic: FastMap<u32, (u64, u64)>,
    /// What TLS handshakes told since the last scan (bounded by their decoder), and how many
    /// reached a flow or none.
    tls: Vec<TlsSeen>,
    tls_attributed: (u64, u64),
}

impl Tally {
    /// A start record: no drops yet, zero where drops are followed.
    fn with_drops(&self, mut rec: Emitted) -> Emitted {
        if self.drops_on {
            rec.drops = Some(FlowDrops::default());
        }
        rec
    }

    /// Counts a failed conntrack call for `flows` flows (warning at the first); the error
    /// back when it is one that will not go away.
    fn lookup_failed(&mut self, e: Error, flows: usize) -> Option<Error> {
        if self.nat.errors == 0 {
            tracing::warn!("conntrack lookup failed (counted from now on, retried): {e}");
        }
        self.nat.errors += flows as u64;
        is_fatal(&e).then_some(e)
    }

    /// A flow's lookup failed: asked again at the next scan while within `retries`, else
    /// plain from now on (its records unjoined), which counts as given up.
    fn retry_or_give_up(&mut self, f: &mut Flow, retries: u8) -> NatState {
        f.nat_failures = f.nat_failures.saturating_add(1);
        if f.nat_failures > retries {
            self.nat.gave_up += 1;
            NatState::Plain
        } else {
            NatState::Unknown
        }
    }

    /// Moves a flow's new traffic into the per-interface sums (a NAT duplicate's is dropped:
    /// its packets are its twin's).
    fn take_traffic(&mut self, flow: &mut Flow) {
        let dup = flow.duplicate;
        for (ifindex, p, b) in flow.take_traffic() {
            if !dup {
                let t = self.traffic.entry(ifindex).or_default();
                t.0 += p;
                t.1 += b;
            }
        }
    }
}

impl FlowTable {
    pub fn new(cfg: TableConfig) -> Self {
        Self {
            table_full: 0,
            cfg,
            flows: Flows::default(),
            nat: None,
            tally: Tally::default(),
        }
    }

    /// Joins NAT'd connections through `lookup` (conntrack).
    pub fn with_nat(mut self, lookup: NatLookup) -> Self {
        self.nat = Some(lookup);
        self
    }

    /// Records carry drops (the kernel reports them): zero where a flow had none.
    pub fn follow_drops(&mut self) {
        self.tally.drops_on = true;
    }

    /// Records carry retransmitted segments (the kernel reports them).
    pub fn follow_retransmits(&mut self) {
        self.tally.retransmits_on = true;
    }

    /// What TLS handshakes told, for the next scan to give to their flows (a handshake's
    /// segments were counted before they were forwarded: their flow is in the kernel map).
    pub fn note_tls(&mut self, seen: Vec<TlsSeen>) {
        self.tally.tls.extend(seen);
    }

    /// TLS handshake messages that reached a flow, and that found none, so far.
    pub fn tls_stats(&self) -> (u64, u64) {
        self.tally.tls_attributed
    }

    /// Retransmitted segments added to flows, and of tuples no flow held, so far.
    pub fn retransmit_stats(&self) -> (u64, u64) {
        self.tally.retransmits
    }

    /// Dropped packets attributed to flows or not, so far.
    pub fn drop_stats(&self) -> DropStats {
        self.tally.drops
    }

    /// Adds what the kernel reported by tuple to the flows of those tuples (either direction):
    /// a NAT'd copy's to the flow whose records carry the connection. Counting per interface,
    /// a tuple is looked for on every interface's flow (the reporting programs do not know the
    /// interface).
    fn attribute(&mut self, reports: &Reports) {
        if reports.drops.is_empty() && reports.retransmits.is_empty() && self.tally.tls.is_empty() {
            return;
        }
        // Counting per interface, every key names its interface.
        let per_interface: Option<FastMap<FlowKey, FlowKey>> = self
            .flows
            .iter()
            .next()
            .is_some_and(|f| f.key.ifindex != 0)
            .then(|| {
                self.flows
                    .iter()
                    .map(|f| {
                        (
                            FlowKey {
                                ifindex: 0,
                                ..f.key
                            },
                            f.key,
                        )
                    })
                    .collect()
            });
        for d in &reports.drops {
            match self.flow_of(&d.key, per_interface.as_ref()) {
                Some(f) => {
                    f.drops.get_or_insert_default().add(d);
                    self.tally.drops.attributed += d.packets;
                }
                None => self.tally.drops.unattributed += d.packets,
            }
        }
        for r in &reports.retransmits {
            match self.flow_of(&r.key, per_interface.as_ref()) {
                Some(f) => {
                    f.retransmits += r.segments;
                    self.tally.retransmits.0 += r.segments;
                }
                None => self.tally.retransmits.1 += r.segments,
            }
        }
        for t in std::mem::take(&mut self.tally.tls) {
            // A handshake's key names the interface that counted it: the flow's own key when
            // counting per interface, none otherwise.
            let key = if per_interface.is_some() {
                t.key
            } else {
                FlowKey {
                    ifindex: 0,
                    ..t.key
                }
            };
            match self.flow_of(&key, None) {
                Some(f) => {
                    let mut info = f.tls.as_deref().cloned().unwrap_or_else(TlsInfo::default);
                    info.note(&t.what);
                    f.tls = Some(info.into());
                    self.tally.tls_attributed.0 += 1;
                }
                None => self.tally.tls_attributed.1 += 1,
            }
        }
    }

    /// Adds the RTT samples of NAT duplicates (their sockets: a pod's behind DNAT) to their
    /// twins, whose records carry the connection.
    fn add_nat_samples(&mut self, moved: Vec<(FlowKey, Srtt)>) {
        for (twin, s) in moved {
            if let Some(t) = self.flows.get_mut(&twin) {
                t.add_nat_samples(s);
            }
        }
    }

    /// The flow whose records carry the connection of tuple `key` (either direction).
    fn flow_of(
        &mut self,
        key: &FlowKey,
        per_interface: Option<&FastMap<FlowKey, FlowKey>>,
    ) -> Option<&mut Flow> {
        let (ck, _) = canonical(key);
        let ck = match per_interface {
            Some(keys) => *keys.get(&ck)?,
            None => ck,
        };
        // A NAT'd copy's reports go to the flow whose records carry the connection.
        let target = match self.flows.get_mut(&ck)? {
            f if f.duplicate => match &f.nat {
                NatState::Translated(n) => n.twin(&f.key),
                _ => return None,
            },
            _ => ck,
        };
        self.flows.get_mut(&target)
    }

    /// Conntrack lookups and joined records so far.
    pub fn nat_stats(&self) -> NatStats {
        self.tally.nat
    }

    /// Packets and bytes counted since the last call, by the interface that counted them:
    /// `(ifindex, packets, bytes)`. Current within one scan, and summed over time equal to
    /// what the records carry.
    pub fn take_traffic(&mut self) -> Vec<(u32, u64, u64)> {
        self.tally
            .traffic
            .drain()
            .map(|(i, (p, b))| (i, p, b))
            .collect()
    }

    /// Looks up flows not asked about yet (at most `per_scan` new ones, and every retry of a
    /// failed one: at most `per_scan` times `retries` more), and marks the translated copy of
    /// a flow also in the table as its duplicate (its hooks join the twin's list). Flows with
    /// ports are asked about together, in batches; ICMP flows one by one after them.
    fn translate(&mut self) {
        let Some(nat) = &mut self.nat else {
            return;
        };
        nat.source.new_scan();
        let mut budget = nat.per_scan;
        let mut walks = nat.walks_per_scan;
        let retries = nat.retries;
        let mut stalled = false;
        let mut fatal = None;
        let (mut batch, mut tuples): (Vec<u32>, Vec<Tuple>) = (Vec::new(), Vec::new());
        for (i, f) in self.flows.iter_mut().enumerate() {
            if f.nat == NatState::Unknown && !may_be_tracked(f.key.proto, f.icmp_type()) {
                // No connection of its own to find, and finding that out costs table walks.
                f.nat = NatState::Plain;
            }
            let retry = f.nat_failures > 0;
            if f.nat == NatState::Unknown && has_ports(f.key.proto) && (budget > 0 || retry) {
                if !retry {
                    budget -= 1;
                }
                batch.push(i as u32);
                tuples.push(tuple(&f.key));
            }
        }
        let asked = if tuples.is_empty() {
            Ok(Vec::new())
        } else {
            nat.source.entries(&tuples)
        };
        let answers = match asked {
            Ok(found) => Some(found),
            Err(e) => {
                fatal = self.tally.lookup_failed(e, batch.len());
                // No more lookups this scan, retries included: one stall (a timeout) at most
                // per scan.
                stalled = true;
                None
            }
        };
        for (k, &i) in batch.iter().enumerate() {
            let f = self.flows.at_mut(i as usize);
            f.nat = match &answers {
                Some(found) => settle(
                    &mut self.tally,
                    f,
                    found[k].map_or(Answer::None, Answer::Entry),
                ),
                // Flows of a failed batch are asked again next scan, up to the retries.
                None => self.tally.retry_or_give_up(f, retries),
            };
            self.tally.nat.lookups += 1;
        }
        let (mut twins, mut orphans, mut originals) = (Vec::new(), Vec::new(), Vec::new());
        for f in self.flows.iter_mut() {
            let retry = f.nat_failures > 0;
            if f.nat == NatState::Unknown && (budget > 0 || retry) && !stalled && fatal.is_none() {
                if !retry {
                    budget = budget.saturating_sub(1);
                }
                match nat.source.entry(&tuple(&f.key), &mut walks) {
                    // Asked again next scan, when there are walks to spend.
                    Ok(Answer::Later) => {}
                    Ok(a) => {
                        f.nat = settle(&mut self.tally, f, a);
                        self.tally.nat.lookups += 1;
                    }
                    Err(e) => {
                        fatal = self.tally.lookup_failed(e, 1);
                        stalled = true;
                        f.nat = self.tally.retry_or_give_up(f, retries);
                        self.tally.nat.lookups += 1;
                    }
                }
            }
            match &f.nat {
                NatState::Translated(n) if !n.translated_view => originals.push((f.key.proto, **n)),
                NatState::Translated(n) if !f.duplicate => twins.push((f.key, n.twin(&f.key))),
                NatState::Orphan => orphans.push(f.key),
                _ => {}
            }
        }
        self.tally.nat.walks += nat.walks_per_scan.saturating_sub(walks) as u64;
        twins.extend(self.adopt_orphans(orphans, originals));
        if let Some(e) = fatal {
            tracing::warn!("NAT'd connections are no longer joined: {e}");
            self.nat = None;
        }
        for (ck, twin) in twins {
            if ck == twin || !self.flows.contains_key(&twin) {
                continue;
            }
            let Some(copy) = self.flows.get_mut(&ck) else {
                continue;
            };
            copy.duplicate = true;
            let (hooks, vlan) = (copy.hooks.clone(), copy.vlan);
            if let Some(t) = self.flows.get_mut(&twin) {
                t.add_hooks(&hooks, vlan);
            }
        }
    }

    /// Flows conntrack does not know by their tuple that are a translated flow's copy seen
    /// between DNAT and SNAT (a bridge with br_netfilter sees the pod's source and the
    /// service's backend): matched against the translated flows of the table by endpoint,
    /// without asking the kernel. Returns (copy, twin) pairs.
    /// `originals` are the table's translated original flows: (protocol, their NAT).
    fn adopt_orphans(
        &mut self,
        orphans: Vec<FlowKey>,
        originals: Vec<(u8, Nat)>,
    ) -> Vec<(FlowKey, FlowKey)> {
        if orphans.is_empty() || originals.is_empty() {
            return Vec::new();
        }
        // Translated original flows by (protocol, either endpoint).
        let mut by_end: FastMap<(u8, Endpoint), Vec<Entry>> = FastMap::default();
        for (proto, n) in originals {
            for end in n.pre {
                by_end.entry((proto, end)).or_default().push(n.entry);
            }
        }
        let mut twins = Vec::new();
        for ck in orphans {
            let ends = [(ck.src_addr, ck.src_port), (ck.dst_addr, ck.dst_port)];
            let found = ends
                .iter()
                .filter_map(|e| by_end.get(&(ck.proto, *e)))
                .flatten()
                .find_map(|e| interpret(&ck, e).filter(|n| n.translated_view));
            if let (Some(n), Some(f)) = (found, self.flows.get_mut(&ck)) {
                twins.push((ck, n.twin(&ck)));
                f.nat = translated(&mut self.tally, f, n);
            }
        }
        twins
    }

    /// Cuts a record from `flow` into `out`, unless the flow is a NAT duplicate (its packets
    /// are its twin's, already in that flow's records).
    #[allow(clippy::too_many_arguments)]
    fn cut_into(
        tally: &mut Tally,
        (nat_on, start_records): (bool, bool),
        flow: &mut Flow,
        status: Status,
        names: &mut dyn Resolver,
        now: u64,
        out: &mut Vec<Emitted>,
    ) {
        if start_records && !flow.started && !flow.duplicate {
            out.push(tally.with_drops(flow.start(names, now)));
        }
        tally.take_traffic(flow);
        let Some(mut rec) = flow.cut(status, names, now) else {
            return;
        };
        if tally.drops_on {
            rec.drops.get_or_insert_default();
        }
        if !tally.retransmits_on
            && let Some(t) = &mut rec.tcp
        {
            t.retransmits = None;
        }
        if flow.duplicate {
            tally.nat.merged += 1;
            tally.nat.merged_packets += rec.src.packets + rec.dst.packets;
            return;
        }
        if nat_on && flow.nat == NatState::Unknown {
            tally.nat.skipped += 1;
        }
        out.push(rec);
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Flows emitted early (`table_full`) to keep within `max_flows`, so far.
    pub fn table_full(&self) -> u64 {
        self.table_full
    }

    /// Deletes one kernel entry and folds what it held into its flow.
    fn take_into(&mut self, src: &mut dyn FlowSource, key: &FlowKey) -> io::Result<bool> {
        let Some(v) = src.take(key)? else {
            return Ok(false);
        };
        fold_deleted(&mut self.flows, key, &v);
        Ok(true)
    }

    fn take_flow(&mut self, src: &mut dyn FlowSource, ck: &FlowKey) -> io::Result<()> {
        match self.flows.get_mut(ck) {
            Some(flow) => take_live(src, flow),
            None => Ok(()),
        }
    }

    /// Takes every entry out of the map into its flow; how many there were.
    fn take_all(&mut self, src: &mut dyn FlowSource, stats: &mut ScanStats) -> io::Result<usize> {
        let flows = &mut self.flows;
        let mut taken = 0;
        src.take_all(&mut |k, v| {
            fold_deleted(flows, &k, &v);
            taken += 1;
        })?;
        stats.evicted += taken;
        Ok(taken)
    }

    /// Whether the kernel entries known from the last read are, by what they held then,
    /// mostly quiet now (the proportion at which a scan drains the whole map). An entry
    /// counts as quiet when its whole flow is (`last_seen` survives record cuts).
    fn quiet_at_last_read(&self, now: u64) -> bool {
        let (mut live, mut quiet) = (0usize, 0usize);
        for f in self.flows.iter() {
            let n = f.dirs.iter().filter(|d| d.is_live()).count();
            live += n;
            if now.saturating_sub(f.last_seen) >= self.cfg.evict_after {
                quiet += n;
            }
        }
        quiet >= DRAIN_MIN && quiet * 4 >= live * 3
    }

    /// Reads every entry of the live map into its flow and evicts the quiet ones (and, under
    /// `pressure` or when the map is nearly full, the least recently active half).
    fn read_and_evict(
        &mut self,
        src: &mut dyn FlowSource,
        now: u64,
        pressure: bool,
        stats: &mut ScanStats,
    ) -> io::Result<()> {
        if self.quiet_at_last_read(now) {
            // The entries read last time have been quiet since: a read now would only be
            // followed by the drain below. Entries created since go with the batch, like the
            // few active ones the drain takes anyway.
            stats.kernel_entries = self.take_all(src, stats)?;
            return Ok(());
        }
        let mut evict: Vec<(u64, FlowKey)> = Vec::new();
        let mut keep: Vec<(u64, FlowKey)> = Vec::new();
        let (flows, evict_after) = (&mut self.flows, self.cfg.evict_after);
        src.read_all(&mut |k, v| {
            let (ck, d) = canonical(&k);
            flows.get_or_insert(ck).observe(d, &v, true);
            if now.saturating_sub(v.last_ns) >= evict_after {
                evict.push((v.last_ns, k));
            } else {
                keep.push((v.last_ns, k));
            }
        })?;
        let read = evict.len() + keep.len();
        stats.kernel_entries = read;
        let capacity = src.capacity();
        if pressure || read * 10 >= capacity * 9 {
            // Free room down to half the map, oldest activity first. Evicting an active entry
            // loses nothing: its counts move to the table and the next packet starts a new one.
            let target = capacity / 2;
            let remaining = keep.len();
            if remaining > target {
                keep.sort_unstable();
                evict.extend_from_slice(&keep[..remaining - target]);
            }
        }
        if evict.len() >= DRAIN_MIN && evict.len() * 4 >= read * 3 {
            // Most of the map is quiet (after a burst of short flows): one batched drain costs
            // far less than a delete per entry. The few active entries it takes too fold into
            // their flows like evicted ones, and their next packets start fresh entries.
            self.take_all(src, stats)?;
        } else {
            for (_, k) in &evict {
                if self.take_into(src, k)? {
                    stats.evicted += 1;
                }
            }
        }
        Ok(())
    }

    /// One scan at time `now`: read the kernel map, evict quiet entries (and, under `pressure`
    /// or when the map is nearly full, the least recently active half) or, with
    /// [`TableConfig::drain`], take every entry, and return the records that are due, in a
    /// deterministic order.
    /// `reports`: what the kernel dropped and retransmitted since the last scan, read before
    /// the flow map (so a dropped packet's flow, counted before it was dropped, is in the
    /// table).
    pub fn scan(
        &mut self,
        src: &mut dyn FlowSource,
        now: u64,
        pressure: bool,
        stats: &mut ScanStats,
        names: &mut dyn Resolver,
        reports: &Reports,
    ) -> io::Result<Vec<Emitted>> {
        if self.cfg.drain {
            stats.kernel_entries = self.take_all(src, stats)?;
        } else {
            self.read_and_evict(src, now, pressure, stats)?;
        }
        self.translate();
        self.attribute(reports);
        // One walk for what each flow needs every scan (the flows are megabytes: every walk
        // over them costs): its new traffic into the sums (after `translate`, so a NAT
        // duplicate found this scan adds nothing; one whose lookup waits adds its packets
        // meanwhile: counters that follow the traffic over exact ones for a scan or two), its
        // names, its start record, and whether a record is due.
        let (cfg, nat_on) = (self.cfg, self.nat.is_some());
        let mut out = Vec::new();
        let mut due: Vec<(u64, FlowKey, Status, u32)> = Vec::new();
        let mut nat_samples = Vec::new();
        for (i, flow) in self.flows.iter_mut().enumerate() {
            self.tally.take_traffic(flow);
            if flow.duplicate {
                nat_samples.extend(duplicate_samples(flow));
            }
            if !flow.named {
                flow.resolve(names, now);
            }
            // Once its translation is known: a NAT duplicate has no records at all.
            let settled = !(nat_on && flow.nat == NatState::Unknown);
            // A flow whose lookup failed waits for its retries (a scan each), to be emitted
            // joined when the answer comes.
            if nat_on && flow.nat == NatState::Unknown && flow.nat_failures > 0 {
                continue;
            }
            if cfg.start_records && !flow.started && settled && !flow.duplicate {
                out.push(self.tally.with_drops(flow.start(names, now)));
            }
            if let Some(status) = cfg.due(flow, now) {
                due.push((flow.record_first_ns(), flow.key, status, i as u32));
            }
        }
        self.add_nat_samples(nat_samples);
        // Cut in about the order records are sorted in, so that sorting them (a few hundred
        // bytes each) usually finds them in order already.
        due.sort_unstable_by_key(|&(first, ck, ..)| (first, ck));
        // Room for every due record at once: grown by doubling, a burst's records (hundreds
        // of bytes each) would be copied and their fresh pages touched again at every step.
        out.reserve(due.len());
        // Positions hold: ended flows leave in the sweep below, not one by one.
        for k in 0..due.len() {
            if let Some(&(.., ahead)) = due.get(k + PREFETCH_AHEAD) {
                self.flows.prefetch(ahead as usize);
            }
            let (.., status, i) = due[k];
            let flow = self.flows.at_mut(i as usize);
            take_live(src, flow)?;
            let status = match status {
                // A packet may have arrived between the read and the delete.
                Status::IdleTimeout
                    if now.saturating_sub(flow.last_seen) < self.cfg.idle_timeout =>
                {
                    continue;
                }
                s => s,
            };
            let modes = (self.nat.is_some(), self.cfg.start_records);
            Self::cut_into(&mut self.tally, modes, flow, status, names, now, &mut out);
            flow.ended = status != Status::ActiveTimeout;
        }
        // Ended flows, and those whose record was cut at an active timeout and that went quiet
        // afterwards.
        let idle = self.cfg.idle_timeout;
        let keep = |f: &Flow| {
            !f.ended
                && (f.has_live()
                    || f.record_first_ns() != 0
                    || now.saturating_sub(f.last_seen) < idle)
        };
        // Drops read after a flow's last record (its packet counted in that record, its drop
        // read at the next scan) leave with it: counted, not silent.
        for f in self.flows.iter() {
            if let Some(d) = &f.drops
                && !keep(f)
            {
                self.tally.drops.unrecorded += d.packets;
            }
        }
        self.flows.retain(|f| keep(f));
        self.cap(src, names, now, &mut out)?;
        sort_records(&mut out);
        stats.emitted += out.len();
        Ok(out)
    }

    /// Past `max_flows`: emits the least recently active flows (their live kernel entries
    /// deleted and folded in) with `table_full`, so the table stays bounded and every packet
    /// still lands in a record.
    fn cap(
        &mut self,
        src: &mut dyn FlowSource,
        names: &mut dyn Resolver,
        now: u64,
        out: &mut Vec<Emitted>,
    ) -> io::Result<()> {
        let over = self.flows.len().saturating_sub(self.cfg.max_flows);
        if over == 0 {
            return Ok(());
        }
        let mut by_age: Vec<(u64, FlowKey)> =
            self.flows.iter().map(|f| (f.last_seen, f.key)).collect();
        by_age.select_nth_unstable(over - 1);
        self.table_full += over as u64;
        for (_, ck) in &by_age[..over] {
            self.take_flow(src, ck)?;
            if let Some(mut flow) = self.flows.remove(ck) {
                flow.end_live();
                let modes = (self.nat.is_some(), self.cfg.start_records);
                Self::cut_into(
                    &mut self.tally,
                    modes,
                    &mut flow,
                    Status::TableFull,
                    names,
                    now,
                    out,
                );
            }
        }
        Ok(())
    }

    /// Empties the kernel map and the table: every open flow is emitted with `status`.
    pub fn flush(
        &mut self,
        src: &mut dyn FlowSource,
        status: Status,
        names: &mut dyn Resolver,
        now: u64,
        reports: &Reports,
    ) -> io::Result<Vec<Emitted>> {
        let flows = &mut self.flows;
        src.take_all(&mut |k, v| fold_deleted(flows, &k, &v))?;
        self.translate();
        // After the last read and the NAT join, as in a scan.
        self.attribute(reports);
        let nat_samples: Vec<_> = self
            .flows
            .iter_mut()
            .filter(|f| f.duplicate)
            .filter_map(duplicate_samples)
            .collect();
        self.add_nat_samples(nat_samples);
        let mut out = Vec::new();
        let modes = (self.nat.is_some(), self.cfg.start_records);
        for mut flow in self.flows.take_all() {
            // An entry read earlier but gone from the map now: its last read is what it held.
            flow.end_live();
            if flow.drops.is_some() && flow.current().iter().all(|c| c.packets == 0) {
                self.tally.drops.unrecorded += flow.drops.as_ref().map_or(0, |d| d.packets);
            }
            Self::cut_into(
                &mut self.tally,
                modes,
                &mut flow,
                status,
                names,
                now,
                &mut out,
            );
        }
        sort_records(&mut out);
        Ok(out)
    }
}

/// A NAT duplicate's RTT samples since the last scan, with its twin's key.
fn duplicate_samples(f: &mut Flow) -> Option<(FlowKey, Srtt)> {
    let twin = match &f.nat {
        NatState::Translated(n) => n.twin(&f.key),
        _ => return None,
    };
    f.take_samples().map(|s| (twin, s))
}

/// A flow's translation from what conntrack answered (never `Later`).
fn settle(tally: &mut Tally, f: &mut Flow, a: Answer) -> NatState {
    match a {
        Answer::Entry(e) => match interpret(&f.key, &e) {
            Some(n) => translated(tally, f, n),
            None => NatState::Plain,
        },
        Answer::None if has_ports(f.key.proto) => NatState::Orphan,
        Answer::None | Answer::Later => NatState::Plain,
    }
}

impl TableConfig {
    /// Which record of `f` is due at `now`, if any.
    fn due(&self, f: &Flow, now: u64) -> Option<Status> {
        let first = f.record_first_ns();
        if first == 0 {
            return None;
        }
        let idle = now.saturating_sub(f.last_seen);
        if idle >= self.idle_timeout {
            Some(Status::IdleTimeout)
        } else if f.tcp_closed() && idle >= self.tcp_linger {
            Some(Status::TcpClosed)
        } else if now.saturating_sub(first) >= self.active_timeout {
            Some(Status::ActiveTimeout)
        } else {
            None
        }
    }
}

/// `f` is a view of the translated connection `n`: counted, and named afresh.
fn translated(tally: &mut Tally, f: &mut Flow, n: Nat) -> NatState {
    tally.nat.translated += 1;
    // Names belong to the endpoints records show (before NAT).
    f.names = [None, None];
    f.workloads = [None, None];
    f.named = false;
    NatState::Translated(Box::new(n))
}

/// Deletes the live kernel entries of `flow` and folds what they held into it.
fn take_live(src: &mut dyn FlowSource, flow: &mut Flow) -> io::Result<()> {
    for d in 0..2 {
        if flow.dirs[d].is_live() {
            match src.take(&directional(&flow.key, d))? {
                Some(v) => flow.observe(d, &v, false),
                // Gone from the map (nothing else deletes, but never count it twice).
                None => flow.dirs[d].end_live(),
            }
        }
    }
    Ok(())
}

/// Folds what deleting a kernel entry returned into its flow.
fn fold_deleted(flows: &mut Flows, key: &FlowKey, v: &FlowValue) {
    let (ck, d) = canonical(key);
    if counts_nothing(v) {
        // Offline, an entry that only noted a copy at another hook: it adds hooks to a flow
        // the agent still holds, and makes none.
        if let Some(flow) = flows.get_mut(&ck) {
            flow.observe(d, v, false);
        }
        return;
    }
    flows.get_or_insert(ck).observe(d, v, false);
}

/// A lookup error that will not go away: no permission, no conntrack netlink in this kernel.
fn is_fatal(e: &crate::kernel::conntrack::Error) -> bool {
    use crate::kernel::conntrack::Error;
    match e {
        Error::Io(io) => matches!(
            io.raw_os_error(),
            Some(libc::EPERM | libc::EACCES | libc::EPROTONOSUPPORT | libc::EOPNOTSUPP)
        ),
        Error::Malformed(_) => false,
    }
}

fn sort_records(out: &mut [Emitted]) {
    // A flow's start record before its first record (same first packet, key and seq).
    let key = |r: &Emitted| (r.first_ns, r.key, r.seq, r.status);
    if out.is_sorted_by_key(key) {
        return;
    }
    // The keys are sorted beside their positions and each record moved once: a record is a
    // few hundred bytes, which a sort in place would move at every step.
    out.sort_by_cached_key(key);
}
