//! Where the table keeps its flows: one dense `Vec` (scans walk it in order, no holes) and a
//! hash table of indices into it, so a flow costs its own size plus a few bytes of index.

use std::hash::{BuildHasher, Hasher as _};

use devourer_common::flow::FlowKey;
use hashbrown::{HashTable, hash_table::Entry};

use super::entry::Flow;
use crate::base::hash::Seeded;

#[derive(Default)]
pub(super) struct Flows {
    flows: Vec<Flow>,
    /// Each flow's place in `flows`, hashed by its canonical key.
    index: HashTable<Slot>,
    hasher: Seeded,
}

/// An index entry: where the flow is and 32 bits of its key's hash, so that growing the index
/// or moving a slot never reads the flow itself (a random access into megabytes of flows).
#[derive(Clone, Copy)]
struct Slot {
    at: u32,
    hash: u32,
}

/// A key's 32-bit hash: its fields as four words (the derived `Hash` writes ten pieces).
fn hash(hasher: &Seeded, k: &FlowKey) -> u32 {
    let mut h = hasher.build_hasher();
    h.write_u128(u128::from_ne_bytes(k.src_addr));
    h.write_u128(u128::from_ne_bytes(k.dst_addr));
    h.write_u64(u64::from(k.src_port) | u64::from(k.dst_port) << 16 | u64::from(k.ifindex) << 32);
    h.write_u32(u32::from(k.proto) << 16 | u32::from(k.flags) << 24);
    let h = h.finish();
    (h ^ h >> 32) as u32
}

/// The index's hash of a slot: the table picks a bucket from the low bits and a tag from the
/// top seven, both from the 32 stored (independent below 2^25 buckets).
fn spread(h: u32) -> u64 {
    u64::from(h) | u64::from(h) << 32
}

/// Past this share of the flows removed in one sweep, the index is rebuilt instead of each
/// flow's slot being found and removed (a scan after a burst of short flows ends most of them).
const REBUILD_SHARE: usize = 4;

impl Flows {
    pub(super) fn len(&self) -> usize {
        self.flows.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    fn position(&self, key: &FlowKey) -> Option<usize> {
        let flows = &self.flows;
        let h = hash(&self.hasher, key);
        self.index
            .find(spread(h), |s| {
                s.hash == h && flows[s.at as usize].key == *key
            })
            .map(|s| s.at as usize)
    }

    pub(super) fn contains_key(&self, key: &FlowKey) -> bool {
        self.position(key).is_some()
    }

    #[cfg(test)]
    pub(super) fn get(&self, key: &FlowKey) -> Option<&Flow> {
        self.position(key).map(|i| &self.flows[i])
    }

    pub(super) fn get_mut(&mut self, key: &FlowKey) -> Option<&mut Flow> {
        self.position(key).map(|i| &mut self.flows[i])
    }

    /// The flow at `i` (a position from [`Self::iter`]'s order, valid until a removal).
    pub(super) fn at_mut(&mut self, i: usize) -> &mut Flow {
        &mut self.flows[i]
    }

    /// Asks the CPU to start loading the flow at `i` (a loop that visits flows out of memory
    /// order calls this a few flows ahead, so the loads overlap instead of each waiting).
    pub(super) fn prefetch(&self, i: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(f) = self.flows.get(i) {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let base = (f as *const Flow).cast::<i8>();
            for line in (0..size_of::<Flow>()).step_by(64) {
                // SAFETY: a prefetch never faults, and the address is inside the flow.
                #[allow(unused_unsafe)]
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(line))
                };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    /// The flow of canonical key `key`, created empty if the table has none.
    pub(super) fn get_or_insert(&mut self, key: FlowKey) -> &mut Flow {
        let flows = &mut self.flows;
        let h = hash(&self.hasher, &key);
        let slot = self.index.entry(
            spread(h),
            |s| s.hash == h && flows[s.at as usize].key == key,
            |s| spread(s.hash),
        );
        let i = match slot {
            Entry::Occupied(e) => e.get().at as usize,
            Entry::Vacant(e) => {
                let i = flows.len();
                // Each flow takes hundreds of bytes: memory runs out long before 2^32 of them.
                let at = u32::try_from(i).expect("fewer than 2^32 flows");
                e.insert(Slot { at, hash: h });
                flows.push(Flow::new(key));
                i
            }
        };
        &mut flows[i]
    }

    /// Removes the flow of `key`; the last flow moves into its place.
    pub(super) fn remove(&mut self, key: &FlowKey) -> Option<Flow> {
        let i = self.position(key)?;
        Some(self.remove_at(i))
    }

    fn remove_at(&mut self, i: usize) -> Flow {
        let h = hash(&self.hasher, &self.flows[i].key);
        if let Ok(e) = self.index.find_entry(spread(h), |s| s.at as usize == i) {
            e.remove();
        }
        let last = self.flows.len() - 1;
        if i != last {
            let moved = hash(&self.hasher, &self.flows[last].key);
            if let Some(slot) = self
                .index
                .find_mut(spread(moved), |s| s.at as usize == last)
            {
                slot.at = i as u32;
            }
        }
        self.flows.swap_remove(i)
    }

    pub(super) fn iter(&self) -> std::slice::Iter<'_, Flow> {
        self.flows.iter()
    }

    pub(super) fn iter_mut(&mut self) -> std::slice::IterMut<'_, Flow> {
        self.flows.iter_mut()
    }

    /// Keeps the flows `keep` says yes to. When a large share goes, the survivors close up in
    /// order and the index is rebuilt from them; otherwise each leaver's slot is removed.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&mut Flow) -> bool) {
        let gone: Vec<u32> = (0..self.flows.len())
            .filter(|&i| !keep(&mut self.flows[i]))
            .map(|i| i as u32)
            .collect();
        if gone.is_empty() {
            return;
        }
        if gone.len() * REBUILD_SHARE >= self.flows.len() {
            let (mut i, mut next) = (0u32, gone.iter().peekable());
            self.flows.retain(|_| {
                let leaves = next.next_if_eq(&&i).is_some();
                i += 1;
                !leaves
            });
            self.reindex();
            return;
        }
        // From the end: a removal moves the last flow, which is not one still to remove.
        for &i in gone.iter().rev() {
            self.remove_at(i as usize);
        }
    }

    /// Builds the index afresh from `flows` (keeping its allocation).
    fn reindex(&mut self) {
        self.index.clear();
        let hasher = &self.hasher;
        for (i, f) in self.flows.iter().enumerate() {
            let h = hash(hasher, &f.key);
            self.index.insert_unique(
                spread(h),
                Slot {
                    at: i as u32,
                    hash: h,
                },
                |s| spread(s.hash),
            );
        }
    }

    /// Takes every flow out, leaving the table empty.
    pub(super) fn take_all(&mut self) -> Vec<Flow> {
        self.index.clear();
        std::mem::take(&mut self.flows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            src_port: port,
            ..FlowKey::default()
        }
    }

    #[test]
    fn removals_keep_every_other_flow_findable() {
        let mut f = Flows::default();
        for p in 0..100 {
            f.get_or_insert(key(p)).seq = u32::from(p);
        }
        assert_eq!(f.len(), 100);
        assert_eq!(
            f.get_or_insert(key(7)).seq,
            7,
            "an existing flow is returned, not replaced"
        );
        assert_eq!(f.remove(&key(0)).map(|x| x.seq), Some(0));
        assert!(f.remove(&key(0)).is_none());
        // A third leaves (the index is rebuilt), then a few (each slot is removed).
        f.retain(|x| x.seq % 3 != 0);
        f.retain(|x| x.seq % 10 != 1);
        for p in 0..100u16 {
            let want = p % 3 != 0 && p % 10 != 1;
            assert_eq!(f.contains_key(&key(p)), want, "port {p}");
            if want {
                assert_eq!(f.get(&key(p)).map(|x| x.seq), Some(u32::from(p)));
            }
        }
        assert_eq!(f.len(), f.iter().count());
        let all = f.take_all();
        assert_eq!(all.len(), 59);
        assert!(f.is_empty() && f.get(&key(1)).is_none());
    }
}
