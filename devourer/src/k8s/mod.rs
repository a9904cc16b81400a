//! Kubernetes metadata on records: the objects of the cluster indexed by address
//! ([`index`]), kept current by watches of the API server ([`watch`]), and what the rest of
//! the agent asks of them ([`Cluster`]).

pub mod index;
#[cfg(feature = "k8s")]
pub mod watch;

use std::{
    net::IpAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use prometheus::IntCounter;

use self::index::{Index, Kind};
use crate::flow::Workload;

/// Pods renamed under one hold of the index's lock at most.
const RENAME_CHUNK: usize = 256;

/// Which pods are watched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The pods scheduled on this node (by name), plus Services and nodes.
    Node(String),
    /// Every pod of the cluster.
    Cluster,
}

/// The cluster as the agent knows it, shared by the watches (writers) and the pipeline.
pub struct Cluster {
    index: RwLock<Index>,
    /// Each kind's watch has listed everything and is following changes.
    synced: [AtomicBool; 4],
    /// Lookups that found no pod.
    missed: Option<IntCounter>,
}

impl Cluster {
    /// An empty cluster holding at most about `cap_bytes` of metadata.
    pub fn new(cap_bytes: usize, missed: Option<IntCounter>) -> Self {
        Self {
            index: RwLock::new(Index::new(cap_bytes)),
            synced: Default::default(),
            missed,
        }
    }

    /// The object holding `addr` now.
    pub fn lookup(&self, addr: IpAddr) -> Option<Arc<Workload>> {
        let found = self.read().lookup(addr);
        if found.as_ref().is_none_or(|w| w.pod.is_none())
            && let Some(m) = &self.missed
        {
            m.inc();
        }
        found
    }

    /// Changes the index (the watches). Pods a change renames are renamed a few at a time,
    /// each under a lock of its own, so that lookups (the counting thread) never wait long.
    pub fn update<T>(&self, f: impl FnOnce(&mut Index) -> T) -> T {
        let write = || self.index.write().unwrap_or_else(|e| e.into_inner());
        let (out, mut more) = {
            let mut guard = write();
            let out = f(&mut guard);
            (out, guard.rename_pending(RENAME_CHUNK))
        };
        while more {
            std::thread::yield_now();
            more = write().rename_pending(RENAME_CHUNK);
        }
        out
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_synced(&self, kind: Kind, synced: bool) {
        self.synced[kind as usize].store(synced, Ordering::Relaxed);
    }

    /// Some watch is not following its objects (not yet listed, or lost): names may be
    /// missing or out of date.
    pub fn stale(&self) -> bool {
        self.synced.iter().any(|s| !s.load(Ordering::Relaxed))
    }
}
