//! What the agent knows of the cluster: pods, Services, nodes and ReplicaSets reduced to what
//! records name, indexed by address, within a byte cap. Plain data in, [`Workload`]s out: the
//! watches ([`super::watch`]) feed it.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use crate::{base::hash::FastMap, flow::Workload};

/// The kinds of object watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Pod,
    Service,
    Node,
    ReplicaSet,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Pod, Kind::Service, Kind::Node, Kind::ReplicaSet];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pod => "pods",
            Self::Service => "services",
            Self::Node => "nodes",
            Self::ReplicaSet => "replicasets",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// Namespace and name (a node's namespace is empty).
pub type ObjKey = (String, String);

/// A controller reference: kind and name.
pub type Owner = (String, String);

/// What a watch reports of a pod. (stored interned, see [`Index`])
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub ips: Vec<IpAddr>,
    /// Shares the node's addresses: named by the node alone.
    pub host_network: bool,
    /// Not Succeeded or Failed: it holds its addresses.
    pub running: bool,
    /// Being deleted (`deletionTimestamp` set): a pod that is not keeps the address.
    pub terminating: bool,
    /// `creationTimestamp`, milliseconds since the epoch: among pods claiming one address, the
    /// newest holds it.
    pub created_ms: i64,
    pub labels: Vec<(String, String)>,
    pub owner: Option<Owner>,
}

/// What a watch reports of a Service. (stored interned, see [`Index`])
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    pub selector: Vec<(String, String)>,
    pub cluster_ips: Vec<IpAddr>,
}

/// What a watch reports of a node. (stored interned, see [`Index`])
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub addrs: Vec<IpAddr>,
    /// Its `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
}

/// What a watch reports of a ReplicaSet: its controller (a Deployment, usually).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaSetInfo {
    pub namespace: String,
    pub name: String,
    pub owner: Option<Owner>,
}

/// An interned or shared string.
type Str = Arc<str>;

/// Bytes a heap allocation of `n` bytes takes (malloc's header and rounding).
fn heap(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (n + 8).max(32).next_multiple_of(16)
    }
}

/// Bytes the index holds for one entry of a map or tree beyond its key and value.
const ENTRY: usize = 64;
/// An `Arc<str>`: its pointer and, when it is not shared, its allocation.
const ARC_STR: usize = 16;

/// Strings many objects repeat (namespaces, nodes, owners, labels), kept once. Strings no
/// object uses any more are dropped when the set has doubled since the last sweep.
#[derive(Default)]
struct Interner {
    set: std::collections::HashSet<Str, foldhash::fast::RandomState>,
    swept_at: usize,
    /// Bytes of the strings held.
    bytes: usize,
}

impl Interner {
    fn get(&mut self, s: &str) -> Str {
        if let Some(x) = self.set.get(s) {
            return x.clone();
        }
        let x: Str = s.into();
        self.bytes += heap(s.len() + 16) + ENTRY;
        self.set.insert(x.clone());
        if self.set.len() > 2 * self.swept_at + 1024 {
            self.sweep();
        }
        x
    }

    fn sweep(&mut self) {
        self.set.retain(|x| Arc::strong_count(x) > 1);
        self.bytes = self.set.iter().map(|x| heap(x.len() + 16) + ENTRY).sum();
        self.swept_at = self.set.len();
    }
}

struct Pod {
    node: Option<Str>,
    ips: Box<[IpAddr]>,
    indexed: bool,
    /// Which pod holds an address several claim: one not terminating, then the newest.
    rank: (bool, i64),
    labels: Box<[(Str, Str)]>,
    owner: Option<(Str, Str)>,
    workload: Arc<Workload>,
    bytes: usize,
}

struct Service {
    selector: Box<[(Str, Str)]>,
    cluster_ips: Box<[IpAddr]>,
    workload: Arc<Workload>,
    bytes: usize,
}

struct Node {
    addrs: Box<[IpAddr]>,
    zone: Option<Str>,
    workload: Arc<Workload>,
    bytes: usize,
}

/// An object's key as stored.
type Key = (Str, Str);

/// The cluster as records name it.
pub struct Index {
    strings: Interner,
    pods: BTreeMap<Key, Pod>,
    /// A running pod's address, its key and names (one lookup per record end).
    pod_ips: FastMap<IpAddr, (Key, Arc<Workload>)>,
    /// Every running pod that claims an address (usually one; two while a pod is replaced
    /// by another with its address), to pick the holder whatever the order of events.
    claims: FastMap<IpAddr, Vec<Key>>,
    /// The pods on each node (to give them their node's zone when it changes).
    node_pods: FastMap<Str, Vec<Key>>,
    services: BTreeMap<Key, Service>,
    service_ips: FastMap<IpAddr, Key>,
    nodes: BTreeMap<Str, Node>,
    node_ips: FastMap<IpAddr, Str>,
    replicasets: HashMap<Key, Option<(Str, Str)>>,
    /// Estimated bytes held by the objects, by kind (the strings they share apart).
    bytes: [usize; 4],
    cap: usize,
    /// New objects refused at the cap, by kind.
    refused: [u64; 4],
    /// A relist in progress, by kind: the objects it listed so far.
    relisting: [Option<HashSet<ObjKey>>; 4],
    /// Pods whose names a Service or ReplicaSet change touched, renamed a few at a time
    /// ([`Index::rename_pending`]) so that no change holds the index for long.
    pending: VecDeque<Key>,
}

/// Counts for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub objects: [usize; 4],
    pub bytes: usize,
    pub refused: [u64; 4],
}

/// The fixed part of a stored object of each kind, its map entries included.
const POD_FIXED: usize = ENTRY * 2 + 32 + 4 * ARC_STR + std::mem::size_of::<Pod>();
const SERVICE_FIXED: usize = ENTRY + 32 + 2 * ARC_STR + std::mem::size_of::<Service>();
const NODE_FIXED: usize = ENTRY + ARC_STR + std::mem::size_of::<Node>();
const RS_FIXED: usize = ENTRY + 4 * ARC_STR + 8;
/// A workload's allocation.
const WORKLOAD: usize = 16 + std::mem::size_of::<Workload>();
/// An address in an object and in the address maps.
const ADDR: usize = 2 * (std::mem::size_of::<IpAddr>() + ENTRY) + 4 * ARC_STR + 8;

impl Index {
    /// An empty index holding at most about `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            strings: Interner::default(),
            pods: BTreeMap::new(),
            pod_ips: FastMap::default(),
            claims: FastMap::default(),
            node_pods: FastMap::default(),
            services: BTreeMap::new(),
            service_ips: FastMap::default(),
            nodes: BTreeMap::new(),
            node_ips: FastMap::default(),
            replicasets: HashMap::new(),
            bytes: [0; 4],
            cap,
            refused: [0; 4],
            relisting: [None, None, None, None],
            pending: VecDeque::new(),
        }
    }

    fn total(&self) -> usize {
        self.bytes.iter().sum::<usize>() + self.strings.bytes
    }

    pub fn stats(&self) -> IndexStats {
        IndexStats {
            objects: [
                self.pods.len(),
                self.services.len(),
                self.nodes.len(),
                self.replicasets.len(),
            ],
            bytes: self.total(),
            refused: self.refused,
        }
    }

    /// The object holding `addr`: a running pod's address, a Service's ClusterIP, a node's.
    pub fn lookup(&self, addr: IpAddr) -> Option<Arc<Workload>> {
        if let Some((_, w)) = self.pod_ips.get(&addr) {
            return Some(w.clone());
        }
        if let Some(k) = self.service_ips.get(&addr) {
            return self.services.get(k).map(|s| s.workload.clone());
        }
        let node = self.node_ips.get(&addr)?;
        self.nodes.get(node).map(|n| n.workload.clone())
    }

    /// Whether an object of `kind` taking `new` bytes fits under the cap, `old` being what its
    /// known version takes; counts the refusal when it does not. A new object is kept while
    /// the index is under its cap; an update that does not grow always fits, one that grows
    /// fits if the index stays under its cap with it.
    fn admit(&mut self, kind: Kind, old: Option<usize>, new: usize) -> bool {
        let fits = match old {
            None => self.total() < self.cap,
            Some(old) => new <= old || self.total() - old.min(self.total()) + new <= self.cap,
        };
        if !fits {
            self.refused[kind.slot()] += 1;
        }
        fits
    }

    fn account(&mut self, kind: Kind, old: usize, new: usize) {
        let b = &mut self.bytes[kind.slot()];
        *b = b.saturating_sub(old) + new;
    }

    fn key(&mut self, namespace: &str, name: &str) -> Key {
        (self.strings.get(namespace), name.into())
    }

    /// A relist of `kind` begins: objects it does not list are removed when it ends.
    pub fn begin_relist(&mut self, kind: Kind) {
        self.relisting[kind.slot()] = Some(HashSet::new());
    }

    /// The relist of `kind` ended: what it did not list is gone.
    pub fn end_relist(&mut self, kind: Kind) {
        let Some(seen) = self.relisting[kind.slot()].take() else {
            return;
        };
        let unseen = |(ns, n): &Key| !seen.contains(&(ns.to_string(), n.to_string()));
        let gone: Vec<Key> = match kind {
            Kind::Pod => self.pods.keys().filter(|k| unseen(k)).cloned().collect(),
            Kind::Service => self
                .services
                .keys()
                .filter(|k| unseen(k))
                .cloned()
                .collect(),
            Kind::Node => (self.nodes.keys())
                .map(|n| (Str::from(""), n.clone()))
                .filter(|k| unseen(k))
                .collect(),
            Kind::ReplicaSet => (self.replicasets.keys())
                .filter(|k| unseen(k))
                .cloned()
                .collect(),
        };
        for (ns, name) in gone {
            self.remove(kind, &ns, &name);
        }
        self.strings.sweep();
    }

    fn listed(&mut self, kind: Kind, namespace: &str, name: &str) {
        if let Some(seen) = &mut self.relisting[kind.slot()] {
            seen.insert((namespace.to_owned(), name.to_owned()));
        }
    }

    /// An object of `kind` deleted.
    pub fn remove(&mut self, kind: Kind, namespace: &str, name: &str) {
        let key: Key = (namespace.into(), name.into());
        match kind {
            Kind::Pod => {
                if let Some(p) = self.pods.remove(&key) {
                    self.unclaim(&key, &p);
                    self.leave_node(&key, &p);
                    self.account(kind, p.bytes, 0);
                }
            }
            Kind::Service => {
                if let Some(s) = self.services.remove(&key) {
                    unindex(&mut self.service_ips, &key, &s.cluster_ips);
                    self.account(kind, s.bytes, 0);
                    self.rename_pods(namespace, |p| selects(&s.selector, &p.labels));
                }
            }
            Kind::Node => {
                if let Some(n) = self.nodes.remove(name) {
                    unindex(&mut self.node_ips, &key.1, &n.addrs);
                    self.account(kind, n.bytes, 0);
                    if n.zone.is_some() {
                        self.rename_node_pods(name);
                    }
                }
            }
            Kind::ReplicaSet => {
                if self.replicasets.remove(&key).is_some() {
                    self.account(kind, RS_FIXED, 0);
                    self.rename_pods(namespace, |p| owned_by(p, "ReplicaSet", name));
                }
            }
        }
    }

    fn owner(&mut self, o: Option<Owner>) -> Option<(Str, Str)> {
        o.map(|(k, n)| (self.strings.get(&k), self.strings.get(&n)))
    }

    fn pairs(&mut self, p: Vec<(String, String)>) -> Box<[(Str, Str)]> {
        p.into_iter()
            .map(|(k, v)| (self.strings.get(&k), self.strings.get(&v)))
            .collect()
    }

    /// A pod added or changed. A running pod claims its addresses, one that ended lets them go;
    /// an address several pods claim is held by one that is not terminating, and among those
    /// the newest by creation, whatever the order its pods' updates and deletes arrive in.
    pub fn apply_pod(&mut self, info: PodInfo) {
        self.listed(Kind::Pod, &info.namespace, &info.name);
        let key = self.key(&info.namespace, &info.name);
        let old = self.pods.get(&key).map(|p| p.bytes);
        let indexed = info.running && !info.host_network;
        let bytes = POD_FIXED
            + heap(info.name.len() + 16)
            + heap(info.ips.len() * std::mem::size_of::<IpAddr>())
            + info.ips.len() * if indexed { ADDR } else { 0 }
            + heap(info.labels.len() * 2 * ARC_STR)
            + WORKLOAD;
        if !self.admit(Kind::Pod, old, bytes) {
            // An update past the cap: the old version goes too (never kept stale).
            if old.is_some() {
                self.remove(Kind::Pod, &info.namespace, &info.name);
            }
            return;
        }
        if let Some(prev) = self.pods.remove(&key) {
            self.unclaim(&key, &prev);
            self.leave_node(&key, &prev);
        }
        let pod = Pod {
            node: info.node.as_deref().map(|n| self.strings.get(n)),
            ips: info.ips.into(),
            indexed,
            rank: (!info.terminating, info.created_ms),
            labels: self.pairs(info.labels),
            owner: self.owner(info.owner),
            workload: Arc::default(),
            bytes,
        };
        let workload = Arc::new(self.pod_workload(&key, &pod));
        let ips = pod.ips.clone();
        if let Some(node) = &pod.node {
            self.node_pods
                .entry(node.clone())
                .or_default()
                .push(key.clone());
        }
        self.account(Kind::Pod, old.unwrap_or(0), bytes);
        self.pods.insert(key.clone(), Pod { workload, ..pod });
        if indexed {
            for ip in ips.iter() {
                let claims = self.claims.entry(*ip).or_default();
                if !claims.contains(&key) {
                    claims.push(key.clone());
                }
                self.elect(*ip);
            }
        }
    }

    /// Takes `key` (`p` as it was) off its node's list.
    fn leave_node(&mut self, key: &Key, p: &Pod) {
        if let Some(node) = &p.node
            && let Some(list) = self.node_pods.get_mut(node)
        {
            list.retain(|k| k != key);
            if list.is_empty() {
                self.node_pods.remove(node);
            }
        }
    }

    /// Drops `key`'s claims on its addresses (`p` as it was) and elects their new holders.
    fn unclaim(&mut self, key: &Key, p: &Pod) {
        for ip in p.ips.iter() {
            if let Some(c) = self.claims.get_mut(ip) {
                c.retain(|k| k != key);
                if c.is_empty() {
                    self.claims.remove(ip);
                }
            }
            self.elect(*ip);
        }
    }

    /// Gives `ip` to the best of the pods claiming it: not terminating, then the newest (and
    /// the holder it has when they tie).
    fn elect(&mut self, ip: IpAddr) {
        let holder = self.pod_ips.get(&ip).map(|(k, _)| k.clone());
        let best = self.claims.get(&ip).and_then(|c| {
            c.iter()
                .filter_map(|k| self.pods.get(k).map(|p| (k, p)))
                .max_by_key(|(k, p)| (p.rank, holder.as_ref() == Some(*k)))
                .map(|(k, p)| (k.clone(), p.workload.clone()))
        });
        match best {
            Some(b) => {
                self.pod_ips.insert(ip, b);
            }
            None => {
                self.pod_ips.remove(&ip);
            }
        }
    }

    pub fn apply_service(&mut self, info: ServiceInfo) {
        self.listed(Kind::Service, &info.namespace, &info.name);
        let key = self.key(&info.namespace, &info.name);
        let bytes = SERVICE_FIXED
            + heap(info.name.len() + 16)
            + heap(info.selector.len() * 2 * ARC_STR)
            + info.cluster_ips.len() * ADDR
            + WORKLOAD;
        let old_bytes = self.services.get(&key).map(|s| s.bytes);
        if !self.admit(Kind::Service, old_bytes, bytes) {
            if old_bytes.is_some() {
                self.remove(Kind::Service, &info.namespace, &info.name);
            }
            return;
        }
        let old = self.services.remove(&key);
        if let Some(prev) = &old {
            unindex(&mut self.service_ips, &key, &prev.cluster_ips);
        }
        for ip in &info.cluster_ips {
            self.service_ips.insert(*ip, key.clone());
        }
        let selector = self.pairs(info.selector);
        let workload = Arc::new(Workload {
            namespace: Some(key.0.clone()),
            service: Some(key.1.clone()),
            ..Workload::default()
        });
        let old_selector = old.as_ref().map(|o| o.selector.clone());
        self.account(Kind::Service, old.map_or(0, |o| o.bytes), bytes);
        let ns = key.0.clone();
        if old_selector.as_ref() != Some(&selector) {
            // Only the pods it selected or selects now can change Service.
            let before = old_selector.unwrap_or_default();
            self.rename_pods(&ns, |p| {
                selects(&before, &p.labels) || selects(&selector, &p.labels)
            });
        }
        self.services.insert(
            key,
            Service {
                selector,
                cluster_ips: info.cluster_ips.into(),
                workload,
                bytes,
            },
        );
    }

    pub fn apply_node(&mut self, info: NodeInfo) {
        self.listed(Kind::Node, "", &info.name);
        let name = self.strings.get(&info.name);
        let bytes = NODE_FIXED + info.addrs.len() * ADDR + WORKLOAD + ARC_STR;
        let old_bytes = self.nodes.get(&name).map(|n| n.bytes);
        if !self.admit(Kind::Node, old_bytes, bytes) {
            if old_bytes.is_some() {
                self.remove(Kind::Node, "", &info.name);
            }
            return;
        }
        let old = self.nodes.remove(&name);
        if let Some(prev) = &old {
            unindex(&mut self.node_ips, &name, &prev.addrs);
        }
        for a in &info.addrs {
            self.node_ips.insert(*a, name.clone());
        }
        let zone = info.zone.as_deref().map(|z| self.strings.get(z));
        // Pods on a node whose zone changed (or that came before their node) carry the new one.
        let rezoned = old.as_ref().map_or(zone.is_some(), |o| o.zone != zone);
        self.account(Kind::Node, old.map_or(0, |o| o.bytes), bytes);
        let workload = Arc::new(Workload {
            node: Some(name.clone()),
            zone: zone.clone(),
            ..Workload::default()
        });
        self.nodes.insert(
            name.clone(),
            Node {
                addrs: info.addrs.into(),
                zone,
                workload,
                bytes,
            },
        );
        if rezoned {
            self.rename_node_pods(&name);
        }
    }

    pub fn apply_replicaset(&mut self, info: ReplicaSetInfo) {
        self.listed(Kind::ReplicaSet, &info.namespace, &info.name);
        let key = self.key(&info.namespace, &info.name);
        let old = self.replicasets.get(&key).cloned();
        if !self.admit(Kind::ReplicaSet, old.as_ref().map(|_| RS_FIXED), RS_FIXED) {
            return;
        }
        let owner = self.owner(info.owner);
        let changed = old.as_ref().is_none_or(|o| *o != owner);
        self.account(Kind::ReplicaSet, old.map_or(0, |_| RS_FIXED), RS_FIXED);
        let (ns, name) = key.clone();
        self.replicasets.insert(key, owner);
        if changed {
            self.rename_pods(&ns, |p| owned_by(p, "ReplicaSet", &name));
        }
    }

    /// Queues the pods of `namespace` that `which` picks for renaming (a Service or a
    /// ReplicaSet changed): [`Index::rename_pending`] rebuilds their workloads.
    fn rename_pods(&mut self, namespace: &str, which: impl Fn(&Pod) -> bool) {
        let ns: Str = namespace.into();
        let keys = self
            .pods
            .range((ns.clone(), Str::from(""))..)
            .take_while(|((n, _), _)| *n == ns)
            .filter(|(_, p)| which(p))
            .map(|(k, _)| k.clone());
        self.pending.extend(keys);
    }

    /// Queues the pods on node `name` for renaming (its zone changed).
    fn rename_node_pods(&mut self, name: &str) {
        if let Some(keys) = self.node_pods.get(name) {
            self.pending.extend(keys.iter().cloned());
        }
    }

    /// Rebuilds the workloads of up to `max` queued pods; whether more wait.
    pub fn rename_pending(&mut self, max: usize) -> bool {
        for _ in 0..max {
            let Some(k) = self.pending.pop_front() else {
                break;
            };
            let Some(p) = self.pods.get(&k) else {
                continue;
            };
            let w = Arc::new(self.pod_workload(&k, p));
            let Some(p) = self.pods.get_mut(&k) else {
                continue;
            };
            p.workload = w.clone();
            if p.indexed {
                for ip in &p.ips {
                    if let Some(e) = self.pod_ips.get_mut(ip)
                        && e.0 == k
                    {
                        e.1 = w.clone();
                    }
                }
            }
        }
        !self.pending.is_empty()
    }

    fn pod_workload(&self, (ns, name): &Key, p: &Pod) -> Workload {
        let (owner_kind, owner) = match &p.owner {
            Some((kind, rs)) if &**kind == "ReplicaSet" => {
                match self
                    .replicasets
                    .get(&(ns.clone(), rs.clone()))
                    .cloned()
                    .flatten()
                {
                    Some((k, n)) => (Some(k), Some(n)),
                    None => (Some(kind.clone()), Some(rs.clone())),
                }
            }
            Some((kind, n)) => (Some(kind.clone()), Some(n.clone())),
            None => (None, None),
        };
        let service = self
            .services
            .range((ns.clone(), Str::from(""))..)
            .take_while(|((n, _), _)| n == ns)
            .find(|(_, s)| selects(&s.selector, &p.labels))
            .map(|((_, name), _)| name.clone());
        let zone = p
            .node
            .as_ref()
            .and_then(|n| self.nodes.get(n))
            .and_then(|n| n.zone.clone());
        Workload {
            namespace: Some(ns.clone()),
            pod: Some(name.clone()),
            owner_kind,
            owner,
            node: p.node.clone(),
            service,
            zone,
        }
    }
}

fn owned_by(p: &Pod, kind: &str, name: &str) -> bool {
    p.owner
        .as_ref()
        .is_some_and(|(k, n)| &**k == kind && &**n == name)
}

/// A Service's selector picks pods carrying all its labels; an empty one picks none.
fn selects(selector: &[(Str, Str)], labels: &[(Str, Str)]) -> bool {
    !selector.is_empty() && selector.iter().all(|s| labels.contains(s))
}

/// Drops `addrs` from `index` where they still point at `key`.
fn unindex<K: PartialEq>(index: &mut FastMap<IpAddr, K>, key: &K, addrs: &[IpAddr]) {
    for a in addrs {
        if index.get(a) == Some(key) {
            index.remove(a);
        }
    }
}

#[cfg(test)]
mod tests;
