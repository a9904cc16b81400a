//! Hash tables keyed by what comes off the network: seeded per process (no fixed hash an
//! attacker could collide), and fast (foldhash rather than SipHash, on every packet's path).

use std::{collections::HashMap, num::NonZeroUsize};

use lru::LruCache;

/// The per-process seeded hasher.
pub type Seeded = foldhash::fast::RandomState;

/// A hash map with the seeded hasher.
pub type FastMap<K, V> = HashMap<K, V, Seeded>;

/// A least-recently-used cache with the seeded hasher.
pub type FastLru<K, V> = LruCache<K, V, Seeded>;

/// An empty [`FastLru`] holding at most `cap` entries (at least one).
pub fn lru<K: std::hash::Hash + Eq, V>(cap: usize) -> FastLru<K, V> {
    LruCache::with_hasher(
        NonZeroUsize::new(cap.max(1)).expect("non-zero"),
        Seeded::default(),
    )
}
