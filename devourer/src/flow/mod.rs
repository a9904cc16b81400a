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

pub mod drops;
mod entry;
mod filter;
pub mod nat;
mod store;
mod table;
pub mod tcp;
pub mod tls;

use std::{io, net::IpAddr, sync::Arc};

use devourer_common::flow::{FlowKey, FlowValue, VAL_F_ICMP};

pub use self::{
    entry::{MAX_HOOKS, canonical, reverse, sum_per_cpu},
    filter::Filters,
    table::{FlowTable, ScanStats},
};
use crate::kernel::maps::KernelFlows;

/// Where the table reads and evicts kernel entries (the BPF map, or a fake in tests).
pub trait FlowSource {
    /// Calls `f` with every entry, its per-CPU values summed.
    fn read_all(&mut self, f: &mut dyn FnMut(FlowKey, FlowValue)) -> io::Result<()>;
    /// Atomically removes an entry and returns its summed value (`None` if absent).
    fn take(&mut self, key: &FlowKey) -> io::Result<Option<FlowValue>>;
    /// How many entries the map holds at most.
    fn capacity(&self) -> usize;
    /// Atomically removes every entry, calling `f` with each and its summed value.
    fn take_all(&mut self, f: &mut dyn FnMut(FlowKey, FlowValue)) -> io::Result<()> {
        let mut keys = Vec::new();
        self.read_all(&mut |k, _| keys.push(k))?;
        for k in keys {
            if let Some(v) = self.take(&k)? {
                f(k, v);
            }
        }
        Ok(())
    }
}

/// What the kernel reported by tuple since the last scan, added to the flows of those tuples:
/// dropped packets, and retransmitted TCP segments.
#[derive(Clone, Debug, Default)]
pub struct Reports {
    pub drops: Vec<drops::Drop>,
    pub retransmits: Vec<crate::kernel::tcp::Retransmit>,
}

/// Where flows get the names of their addresses (the DNS name cache, the Kubernetes objects
/// that hold them, or nothing).
pub trait Resolver {
    /// The name `addr` was resolved from by `client` (the flow's other end), valid at `now`.
    fn name(&mut self, client: IpAddr, addr: IpAddr, now: u64) -> Option<Arc<str>>;
    /// The Kubernetes object holding `addr` now.
    fn workload(&mut self, _addr: IpAddr) -> Option<Arc<Workload>> {
        None
    }
}

/// The Kubernetes object an address belongs to (a pod, a Service's ClusterIP or a node), as
/// records name it: each field `null` where unknown or not applying.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub namespace: Option<Arc<str>>,
    pub pod: Option<Arc<str>>,
    /// The pod's workload: a ReplicaSet's Deployment, a StatefulSet, DaemonSet, Job...
    pub owner_kind: Option<Arc<str>>,
    pub owner: Option<Arc<str>>,
    pub node: Option<Arc<str>>,
    /// A Service selecting the pod, or the Service whose ClusterIP the address is.
    pub service: Option<Arc<str>>,
    /// The zone of the pod's node, or of the node itself (its `topology.kubernetes.io/zone`
    /// label).
    pub zone: Option<Arc<str>>,
}

/// No names at all.
pub struct NoNames;

impl Resolver for NoNames {
    fn name(&mut self, _: IpAddr, _: IpAddr, _: u64) -> Option<Arc<str>> {
        None
    }
}

/// Timeouts, all in nanoseconds of the program's clock.
#[derive(Clone, Copy, Debug)]
pub struct TableConfig {
    pub idle_timeout: u64,
    pub active_timeout: u64,
    pub tcp_linger: u64,
    /// A kernel entry quiet for this long is moved into the table (frees map room early).
    pub evict_after: u64,
    /// Flows the table holds at most; past it the least recently active are emitted early
    /// with [`Status::TableFull`].
    pub max_flows: usize,
    /// Emit a [`Status::Start`] record when a flow is first seen.
    pub start_records: bool,
    /// Every scan takes every entry out of the map it reads (offline replay, which alternates
    /// between two map sets: the one read must be empty before frames go to it again).
    pub drain: bool,
}

/// Why a record was emitted (the record's `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// The flow was just seen (`--flow-start-records`): zero counters, its own id.
    Start,
    IdleTimeout,
    ActiveTimeout,
    TcpClosed,
    Shutdown,
    EndOfInput,
    /// Emitted early: the table was at `--max-flows` and this flow was the least recently
    /// active (its next packets start a new record).
    TableFull,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Self::Start,
        Self::IdleTimeout,
        Self::ActiveTimeout,
        Self::TcpClosed,
        Self::Shutdown,
        Self::EndOfInput,
        Self::TableFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::IdleTimeout => "idle_timeout",
            Self::ActiveTimeout => "active_timeout",
            Self::TcpClosed => "tcp_closed",
            Self::Shutdown => "shutdown",
            Self::EndOfInput => "end_of_input",
            Self::TableFull => "table_full",
        }
    }
}

/// One finished record, oriented: `key.src_*` is the initiator, `src` its direction's counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emitted {
    pub key: FlowKey,
    /// The interface that counted the initiator's packets (the first that saw the flow).
    pub interface: u32,
    /// Every interface and hook that saw the flow (`ifindex << 1 | egress`), the counting
    /// ones first.
    pub hooks: Vec<u32>,
    /// The VLAN id a hook saw the flow tagged with (the last seen).
    pub vlan: Option<u16>,
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
    /// The Kubernetes objects of the source and destination.
    pub src_k8s: Option<Arc<Workload>>,
    pub dst_k8s: Option<Arc<Workload>>,
    /// The source's and destination's endpoints after NAT, where they were translated (the
    /// key then holds the endpoints before translation).
    pub xlat_src: Option<nat::Endpoint>,
    pub xlat_dst: Option<nat::Endpoint>,
    /// The drops attributed to the flow since its last record; `None` when drops are not
    /// followed (a kernel without drop reasons, a replay).
    pub drops: Option<drops::FlowDrops>,
    /// A TCP flow's health (`None` for other protocols and start records).
    pub tcp: Option<tcp::TcpHealth>,
    /// What the flow's TLS handshake said, once seen.
    pub tls: Option<Arc<tls::TlsInfo>>,
}

impl Emitted {
    pub fn tcp_flags(&self) -> u16 {
        self.src.tcp_flags() | self.dst.tcp_flags()
    }

    /// Type and code of the record's first ICMP packet.
    pub fn icmp(&self) -> Option<(u8, u8)> {
        let (s, d) = (&self.src, &self.dst);
        let icmp = |v: &FlowValue| v.val_flags() & VAL_F_ICMP != 0;
        let pick = match (icmp(s), icmp(d)) {
            (true, true) if d.first_ns < s.first_ns => d,
            (true, _) => s,
            (false, true) => d,
            (false, false) => return None,
        };
        Some((pick.icmp_type(), pick.icmp_code()))
    }
}

/// The kernel flow map as the table's source: per-CPU slots summed.
impl FlowSource for KernelFlows {
    fn read_all(&mut self, f: &mut dyn FnMut(FlowKey, FlowValue)) -> io::Result<()> {
        self.0.for_each(|k, slots| {
            if let Some(v) = sum_per_cpu(slots.iter().copied()) {
                f(k, v);
            }
        })
    }

    fn take(&mut self, key: &FlowKey) -> io::Result<Option<FlowValue>> {
        Ok(self.0.take(key)?.and_then(sum_per_cpu))
    }

    fn capacity(&self) -> usize {
        self.0.capacity()
    }

    fn take_all(&mut self, f: &mut dyn FnMut(FlowKey, FlowValue)) -> io::Result<()> {
        self.0.drain(|k, slots| {
            if let Some(v) = sum_per_cpu(slots.iter().copied()) {
                f(k, v);
            }
        })
    }
}

#[cfg(test)]
mod tests;
