//! Where the table keeps its flows: one dense `Vec` (scans walk it in order, no holes) and a
//! hash table of indices into it, so a flow costs its own size plus a few bytes of index.

use std::hash::{BuildHasher, Hasher as _};

use devourer_common::flow::FlowKey;
use hashbrown::{HashTable, hash_table::Entry};

use super::entry::Flow;

/// Seeded per process: keys come off the network, so no fixed hash an attacker could collide.
type Hasher = foldhash::fast::RandomState;

#[derive(Default)]
pub(super) struct Flows {
    flows: Vec<Flow>,
    /// Index of each flow in `flows`, hashed by its canonical key.
    index: HashTable<u32>,
    hasher: Hasher,
}

/// A key's hash: its fields as four words (the derived `Hash` writes ten pieces).
fn hash(hasher: &Hasher, k: &FlowKey) -> u64 {
    let mut h = hasher.build_hasher();
    h.write_u128(u128::from_ne_bytes(k.src_addr));
    h.write_u128(u128::from_ne_bytes(k.dst_addr));
    h.write_u64(u64::from(k.src_port) | u64::from(k.dst_port) << 16 | u64::from(k.ifindex) << 32);
    h.write_u32(u32::from(k.vlan) | u32::from(k.proto) << 16 | u32::from(k.flags) << 24);
    h.finish()
}

impl Flows {
    pub(super) fn len(&self) -> usize {
        self.flows.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    fn position(&self, key: &FlowKey) -> Option<usize> {
        let flows = &self.flows;
        self.index
            .find(hash(&self.hasher, key), |&i| flows[i as usize].key == *key)
            .map(|&i| i as usize)
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

    /// The flow of canonical key `key`, created empty if the table has none.
    pub(super) fn get_or_insert(&mut self, key: FlowKey) -> &mut Flow {
        let (flows, hasher) = (&mut self.flows, &self.hasher);
        let slot = self.index.entry(
            hash(hasher, &key),
            |&i| flows[i as usize].key == key,
            |&i| hash(hasher, &flows[i as usize].key),
        );
        let i = match slot {
            Entry::Occupied(e) => *e.get() as usize,
            Entry::Vacant(e) => {
                let i = flows.len();
                // Each flow takes hundreds of bytes: memory runs out long before 2^32 of them.
                e.insert(u32::try_from(i).expect("fewer than 2^32 flows"));
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
        let hasher = &self.hasher;
        let flows = &self.flows;
        if let Ok(e) = self
            .index
            .find_entry(hash(hasher, &flows[i].key), |&j| j as usize == i)
        {
            e.remove();
        }
        let last = self.flows.len() - 1;
        if i != last {
            let moved = self.flows[last].key;
            if let Some(slot) = self
                .index
                .find_mut(hash(hasher, &moved), |&j| j as usize == last)
            {
                *slot = i as u32;
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

    /// Keeps the flows `keep` says yes to.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&mut Flow) -> bool) {
        // From the end: a removal moves the last flow, which has been looked at already.
        for i in (0..self.flows.len()).rev() {
            if !keep(&mut self.flows[i]) {
                self.remove_at(i);
            }
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
        f.retain(|x| x.seq % 3 != 0);
        for p in 0..100u16 {
            let want = p % 3 != 0;
            assert_eq!(f.contains_key(&key(p)), want, "port {p}");
            if want {
                assert_eq!(f.get(&key(p)).map(|x| x.seq), Some(u32::from(p)));
            }
        }
        assert_eq!(f.len(), f.iter().count());
        let all = f.take_all();
        assert_eq!(all.len(), 66);
        assert!(f.is_empty() && f.get(&key(1)).is_none());
    }
}
