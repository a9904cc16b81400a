//! Packets the kernel dropped, attributed to flows: each drop the drop program keyed by tuple
//! is added to the flow of that tuple (either direction; a NAT'd copy's drops to the flow whose
//! records carry it), and a flow's record carries the drops since its last record. Drops of a
//! tuple no flow holds (a packet no monitored interface counted) never make a flow: they are
//! only counted.

pub use crate::kernel::drops::Drop;

/// Distinct reasons a flow keeps between two records; drops of further reasons still count in
/// its totals (and one more frequent than the rarest kept takes its place).
pub const MAX_REASONS: usize = 8;
/// Reasons a record lists (the most frequent).
pub const TOP_REASONS: usize = 3;

/// A flow's drops since its last record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowDrops {
    pub packets: u64,
    pub bytes: u64,
    /// Packets by reason, at most [`MAX_REASONS`]; a record lists the top [`TOP_REASONS`].
    pub reasons: Vec<(&'static str, u64)>,
}

impl FlowDrops {
    pub fn add(&mut self, d: &Drop) {
        self.packets += d.packets;
        self.bytes += d.bytes;
        if let Some(r) = self.reasons.iter_mut().find(|(n, _)| *n == d.reason) {
            r.1 += d.packets;
        } else if self.reasons.len() < MAX_REASONS {
            self.reasons.push((d.reason, d.packets));
        } else if let Some(least) = self.reasons.iter_mut().min_by_key(|r| r.1)
            && least.1 < d.packets
        {
            // A frequent late reason takes the place of the rarest (whose packets stay in
            // the totals).
            *least = (d.reason, d.packets);
        }
    }

    /// The most frequent reasons, most first (ties by name, so records are deterministic).
    pub fn top(&self) -> Vec<(&'static str, u64)> {
        let mut r = self.reasons.clone();
        r.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        r.truncate(TOP_REASONS);
        r
    }
}

/// What attributing drops did, so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropStats {
    /// Dropped packets added to a flow.
    pub attributed: u64,
    /// Dropped packets of tuples no flow in the table holds.
    pub unattributed: u64,
    /// Dropped packets attributed to a flow that ended before another record of it was due
    /// (the drop was read at the scan after the record that counted the packet).
    pub unrecorded: u64,
}

#[cfg(test)]
mod tests {
    use devourer_common::flow::FlowKey;

    use super::*;

    fn drop(reason: &'static str, packets: u64) -> Drop {
        Drop {
            key: FlowKey::default(),
            reason,
            packets,
            bytes: packets * 100,
        }
    }

    #[test]
    fn a_record_lists_the_three_most_frequent_reasons_and_counts_them_all() {
        let mut f = FlowDrops::default();
        for (r, n) in [("A", 1), ("B", 5), ("C", 3), ("D", 3), ("B", 1)] {
            f.add(&drop(r, n));
        }
        assert_eq!((f.packets, f.bytes), (13, 1300));
        assert_eq!(f.top(), vec![("B", 6), ("C", 3), ("D", 3)]);
    }

    #[test]
    fn reasons_past_the_cap_still_count_in_the_totals() {
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let mut f = FlowDrops::default();
        for n in names {
            f.add(&drop(n, 1));
        }
        assert_eq!(f.reasons.len(), MAX_REASONS);
        assert_eq!(f.packets, names.len() as u64);
        // A late reason more frequent than any kept replaces the rarest and leads the list.
        f.add(&drop("late", 5));
        assert_eq!(f.top()[0], ("late", 5));
        assert_eq!(f.packets, names.len() as u64 + 5);
    }
}
