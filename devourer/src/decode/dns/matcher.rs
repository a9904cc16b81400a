//! The transaction table: matches each response to its query by endpoints, transport, id and
//! question; retransmitted queries keep the first query's time; unanswered queries expire as
//! lost; the table is bounded (the oldest expire first when it is full). A query seen again
//! moments later from the same client port, with the same id and question, to another server
//! is the copy a DNAT made (a Service address translated to a backend); from this host's own
//! address, the copy a masquerade (SNAT) made, with or without a DNAT (live, a copy comes from
//! another interface than its query).
//! A copy joins the first query (naming the backend as its translated server when the server
//! changed), and whichever copy's response comes first answers the transaction.

use std::{
    collections::{VecDeque, hash_map::Entry},
    hash::BuildHasher,
};

use super::message::Question;
use crate::base::hash::FastMap;

/// (client, server, transport, id): who asked whom, over what, under which id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TxKey {
    pub client: [u8; 16],
    pub server: [u8; 16],
    pub client_port: u16,
    pub server_port: u16,
    pub proto: u8,
    pub id: u16,
}

/// What a DNAT of a query's server and a masquerade of its client leave as it was: the client
/// port (nftables keeps it unless it is taken), the transport and the id.
type PortKey = (u16, u8, u16);

fn port_key(k: &TxKey) -> PortKey {
    (k.client_port, k.proto, k.id)
}

/// Where a query was seen: what tells a translated copy from another client's query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub ifindex: u32,
    /// Its client is one of this host's own addresses (a masquerade writes the node's).
    pub own_client: bool,
    /// Interfaces tell hooks apart (live): a copy comes from another interface than its
    /// query. Offline, a capture of one interface holds a DNAT's copies on that one.
    pub live: bool,
}

/// Pending queries indexed under one [`PortKey`], at most (a resolver asking every
/// nameserver at once from one socket has a few, each its own query live; past it the oldest
/// can no longer be joined).
const MAX_SAME_PORT: usize = 4;

/// How long after a query its translated copy may come: a packet crosses a node's interfaces
/// within microseconds.
const XLAT_JOIN_NS: u64 = 1_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The first query's time (program clock): retransmissions do not restart the clock.
    pub first_ns: u64,
    pub question: Question,
    pub ifindex: u32,
    pub v6: bool,
    /// The translated copy naming its backend (the first whose server is not the one the
    /// client asked; else the first copy, a masquerade's).
    pub xlat: Option<TxKey>,
    /// Every translated copy joined to it (a packet may be seen after a DNAT, then again
    /// after a masquerade too), at most [`MAX_COPIES`].
    copies: Vec<TxKey>,
    seq: u64,
}

/// Translated copies joined to one query, at most.
const MAX_COPIES: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseMatch {
    /// The query it answers, under the key the client sent it with.
    Matched(TxKey, Pending),
    /// A second copy of a response already matched (seen twice, or on two interfaces).
    Duplicate,
    /// No query was seen for it.
    Unmatched,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatcherStats {
    pub retransmits: u64,
    pub id_reuse: u64,
    /// Queries expired early (as lost) because the table was full.
    pub overflow: u64,
    pub duplicates: u64,
    /// Queries that were a translated copy of one seen just before (a Service's DNAT).
    pub xlat_joined: u64,
}

pub struct Matcher {
    timeout_ns: u64,
    max_pending: usize,
    pending: FastMap<TxKey, Pending>,
    /// The pending queries under each [`PortKey`] (each at most once, at most
    /// [`MAX_SAME_PORT`]).
    by_port: FastMap<PortKey, Vec<TxKey>>,
    /// A translated copy's key -> its query's (at most one per pending query).
    copies: FastMap<TxKey, TxKey>,
    /// (first_ns, seq, key) in arrival order, for expiry; stale items are skipped.
    order: VecDeque<(u64, u64, TxKey)>,
    /// Recently matched transactions, to tell duplicate responses from unmatched ones.
    answered: Recent,
    next_seq: u64,
    pub stats: MatcherStats,
}

impl Matcher {
    pub fn new(timeout_ns: u64, max_pending: usize) -> Self {
        let max_pending = max_pending.max(1);
        Self {
            timeout_ns,
            max_pending,
            pending: FastMap::default(),
            by_port: FastMap::default(),
            copies: FastMap::default(),
            order: VecDeque::new(),
            answered: Recent::new(max_pending),
            next_seq: 0,
            stats: MatcherStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// A query. Returns transactions that end as lost because of it: the previous query
    /// under the same id with another question, or the oldest one when the table is full.
    pub fn query(
        &mut self,
        key: TxKey,
        question: Question,
        ts: u64,
        at: impl Into<Seen>,
        v6: bool,
    ) -> Vec<(TxKey, Pending)> {
        let at = at.into();
        let ifindex = at.ifindex;
        let mut lost = Vec::new();
        if let Some(&orig) = self.copies.get(&key)
            && self
                .pending
                .get(&orig)
                .is_some_and(|p| p.question.same(&question))
        {
            // The copy of a retransmission.
            self.stats.retransmits += 1;
            return lost;
        }
        if self
            .pending
            .get(&key)
            .is_some_and(|p| p.question.same(&question))
        {
            // A retransmission (or the query seen again on another interface), never a copy
            // of another query.
            self.stats.retransmits += 1;
            return lost;
        }
        if let Some(orig) = self.original_of(&key, &question, ts, at)
            && let Some(p) = self.pending.get_mut(&orig)
        {
            let asked = (orig.server, orig.server_port);
            if p.xlat.is_none_or(|x| (x.server, x.server_port) == asked) {
                p.xlat = Some(key);
            }
            p.copies.push(key);
            self.copies.insert(key, orig);
            self.stats.xlat_joined += 1;
            return lost;
        }
        // The same key with the same question returned above as a retransmission.
        if let Entry::Occupied(e) = self.pending.entry(key) {
            self.stats.id_reuse += 1;
            let p = e.remove();
            self.unlink(&key, &p);
            lost.push((key, p));
        }
        while self.pending.len() >= self.max_pending {
            match self.pop_oldest() {
                Some(old) => {
                    self.stats.overflow += 1;
                    lost.push(old);
                }
                None => break,
            }
        }
        self.answered.forget(self.pending.hasher().hash_one(key));
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(
            key,
            Pending {
                first_ns: ts,
                question,
                ifindex,
                v6,
                xlat: None,
                copies: Vec::new(),
                seq,
            },
        );
        let same_port = self.by_port.entry(port_key(&key)).or_default();
        if same_port.len() >= MAX_SAME_PORT {
            same_port.remove(0);
        }
        same_port.push(key);
        self.order.push_back((ts, seq, key));
        if self.order.len() > 4 * self.max_pending + 1024 {
            let pending = &self.pending;
            self.order
                .retain(|(_, seq, k)| pending.get(k).is_some_and(|p| p.seq == *seq));
        }
        lost
    }

    /// The pending query `key` (asked at `ts`, seen on `ifindex`) is a translated copy of, if
    /// any: one asked just before under the same client port, id and question (a copy of it
    /// may have joined already: a DNAT's, then a masquerade's), to another server from the same client (a DNAT), or from another client address on
    /// another interface (a masquerade). The likeliest first: the same server (a masquerade
    /// alone), then the same client (a DNAT alone), then both translated.
    fn original_of(&self, key: &TxKey, question: &Question, ts: u64, at: Seen) -> Option<TxKey> {
        let candidates = self.by_port.get(&port_key(key))?;
        candidates
            .iter()
            .filter(|orig| *orig != key)
            .filter_map(|orig| {
                let p = self.pending.get(orig)?;
                let fits = p.copies.len() < MAX_COPIES
                    && p.question.same(question)
                    && ts.saturating_sub(p.first_ns) <= XLAT_JOIN_NS;
                let same_server = (orig.server, orig.server_port) == (key.server, key.server_port);
                let other_interface = p.ifindex != at.ifindex;
                let rank = match (orig.client == key.client, same_server) {
                    (true, _) if at.live && !other_interface => return None,
                    (true, _) => 1,
                    (false, _) if !other_interface || !at.own_client => return None,
                    (false, true) => 0,
                    (false, false) => 2,
                };
                fits.then_some((rank, *orig))
            })
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, orig)| orig)
    }

    /// A response; `question` is its question, if it has one. A translated copy's response
    /// answers its query (the other copy's is then a duplicate).
    pub fn response(&mut self, key: TxKey, question: Option<&Question>) -> ResponseMatch {
        let hash = self.pending.hasher().hash_one(key);
        let orig = self.copies.get(&key).copied().unwrap_or(key);
        if let Entry::Occupied(e) = self.pending.entry(orig)
            && question.is_none_or(|q| e.get().question.same(q))
        {
            let p = e.remove();
            self.unlink(&orig, &p);
            self.answered.remember(self.pending.hasher().hash_one(orig));
            for copy in &p.copies {
                self.answered.remember(self.pending.hasher().hash_one(copy));
            }
            return ResponseMatch::Matched(orig, p);
        }
        if self.answered.contains(hash) {
            self.stats.duplicates += 1;
            return ResponseMatch::Duplicate;
        }
        ResponseMatch::Unmatched
    }

    fn pop_oldest(&mut self) -> Option<(TxKey, Pending)> {
        while let Some((_, seq, key)) = self.order.pop_front() {
            if self.pending.get(&key).is_some_and(|p| p.seq == seq) {
                return self.take(&key);
            }
        }
        None
    }

    /// Takes a pending query out, with its links.
    fn take(&mut self, key: &TxKey) -> Option<(TxKey, Pending)> {
        let p = self.pending.remove(key)?;
        self.unlink(key, &p);
        Some((*key, p))
    }

    /// Forgets the index and copy links of a query taken out.
    fn unlink(&mut self, key: &TxKey, p: &Pending) {
        let pk = port_key(key);
        if let Some(same_port) = self.by_port.get_mut(&pk) {
            same_port.retain(|k| k != key);
            if same_port.is_empty() {
                self.by_port.remove(&pk);
            }
        }
        for copy in &p.copies {
            self.copies.remove(copy);
        }
    }

    /// Queries unanswered for the timeout at `now`.
    pub fn expire(&mut self, now: u64) -> Vec<(TxKey, Pending)> {
        let mut lost = Vec::new();
        while let Some(&(first, seq, key)) = self.order.front() {
            if now.saturating_sub(first) < self.timeout_ns {
                break;
            }
            self.order.pop_front();
            if self.pending.get(&key).is_some_and(|p| p.seq == seq)
                && let Some(taken) = self.take(&key)
            {
                lost.push(taken);
            }
        }
        lost
    }

    /// Every query still waiting (shutdown, end of input), oldest first.
    pub fn drain(&mut self) -> Vec<(TxKey, Pending)> {
        let mut all = Vec::new();
        while let Some(p) = self.pop_oldest() {
            all.push(p);
        }
        all
    }
}

/// Transactions matched recently, as the hashes of their keys in a direct-mapped table of
/// about twice `max_pending` slots: a newer one takes an older one's slot, so a transaction is
/// remembered until a later one hashes to its slot (a duplicate response comes within
/// moments, so it is rarely forgotten), and two keys share a 64-bit hash too rarely to matter.
/// Cheaper on every response than an LRU (no list to relink, no node to free).
struct Recent {
    slots: Box<[u64]>,
}

impl Recent {
    fn new(max_pending: usize) -> Self {
        let n = max_pending.saturating_mul(2).next_power_of_two().max(2);
        Self {
            slots: vec![0; n].into_boxed_slice(),
        }
    }

    /// The slot for `hash` and the value it holds there (never 0, which marks an empty slot).
    fn slot(&self, hash: u64) -> (usize, u64) {
        // High bits pick the slot: foldhash's low bits are the ones hashbrown uses too.
        let at = (hash >> 32) as usize & (self.slots.len() - 1);
        (at, hash.max(1))
    }

    fn remember(&mut self, hash: u64) {
        let (at, v) = self.slot(hash);
        self.slots[at] = v;
    }

    fn contains(&self, hash: u64) -> bool {
        let (at, v) = self.slot(hash);
        self.slots[at] == v
    }

    fn forget(&mut self, hash: u64) {
        let (at, v) = self.slot(hash);
        if self.slots[at] == v {
            self.slots[at] = 0;
        }
    }
}

/// A query seen on `ifindex` in a replay of one interface, its client this host's when it is
/// the tests' masqueraded address.
#[cfg(test)]
impl From<u32> for Seen {
    fn from(ifindex: u32) -> Self {
        Self {
            ifindex,
            own_client: true,
            live: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn key(id: u16) -> TxKey {
        TxKey {
            client: [1; 16],
            server: [2; 16],
            client_port: 40000,
            server_port: 53,
            proto: 17,
            id,
        }
    }

    fn q(name: &str, qtype: u16) -> Question {
        Question {
            name: name.into(),
            qtype,
            qclass: 1,
        }
    }

    #[test]
    fn a_response_matches_its_query_and_retransmissions_keep_the_first_time() {
        let mut m = Matcher::new(5 * S, 100);
        assert!(m.query(key(1), q("a.example", 1), S, 1, false).is_empty());
        assert!(
            m.query(key(1), q("a.example", 1), 2 * S, 1, false)
                .is_empty()
        );
        assert_eq!(m.stats.retransmits, 1);
        match m.response(key(1), Some(&q("A.EXAMPLE", 1))) {
            ResponseMatch::Matched(_, p) => assert_eq!(p.first_ns, S),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            m.response(key(1), Some(&q("a.example", 1))),
            ResponseMatch::Duplicate
        );
        assert_eq!(
            m.response(key(2), Some(&q("a.example", 1))),
            ResponseMatch::Unmatched
        );
        assert!(m.is_empty());
    }

    #[test]
    fn a_duplicate_is_known_after_other_answers_and_a_new_query_under_its_key_is_not_one() {
        // A large table: the few answers between share a slot with the first one's too rarely
        // to matter (about 1 in 100,000).
        let mut m = Matcher::new(5 * S, 100_000);
        m.query(key(1), q("a.example", 1), S, 1, false);
        assert!(matches!(
            m.response(key(1), None),
            ResponseMatch::Matched(..)
        ));
        for id in 2..5 {
            m.query(key(id), q("a.example", 1), S, 1, false);
            assert!(matches!(
                m.response(key(id), None),
                ResponseMatch::Matched(..)
            ));
        }
        assert_eq!(m.response(key(1), None), ResponseMatch::Duplicate);
        // The id used again for a new query: its response is an answer, then a duplicate.
        m.query(key(1), q("b.example", 1), 2 * S, 1, false);
        assert!(matches!(
            m.response(key(1), None),
            ResponseMatch::Matched(..)
        ));
        assert_eq!(m.response(key(1), None), ResponseMatch::Duplicate);
        assert_eq!(m.stats.duplicates, 2);
    }

    #[test]
    fn the_question_must_match_too() {
        let mut m = Matcher::new(5 * S, 100);
        m.query(key(1), q("a.example", 1), S, 1, false);
        assert_eq!(
            m.response(key(1), Some(&q("a.example", 28))),
            ResponseMatch::Unmatched
        );
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn id_reuse_with_another_question_ends_the_first_as_lost() {
        let mut m = Matcher::new(5 * S, 100);
        m.query(key(7), q("a.example", 1), S, 1, false);
        let lost = m.query(key(7), q("b.example", 1), 2 * S, 1, false);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].1.question.name, "a.example");
        assert_eq!(m.stats.id_reuse, 1);
    }

    #[test]
    fn unanswered_queries_expire_after_the_timeout() {
        let mut m = Matcher::new(5 * S, 100);
        m.query(key(1), q("a.example", 1), S, 1, false);
        m.query(key(2), q("b.example", 1), 3 * S, 1, false);
        assert!(m.expire(5 * S).is_empty());
        let lost = m.expire(6 * S);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].0.id, 1);
        assert_eq!(m.expire(8 * S).len(), 1);
        assert!(m.is_empty());
    }

    #[test]
    fn a_full_table_loses_its_oldest_query() {
        let mut m = Matcher::new(5 * S, 3);
        for id in 0..3 {
            assert!(
                m.query(key(id), q("x.example", 1), S + u64::from(id), 1, false)
                    .is_empty()
            );
        }
        let lost = m.query(key(9), q("x.example", 1), 2 * S, 1, false);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].0.id, 0);
        assert_eq!((m.len(), m.stats.overflow), (3, 1));
        // Answered ones leave room without being lost.
        assert!(matches!(
            m.response(key(1), None),
            ResponseMatch::Matched(..)
        ));
        assert!(
            m.query(key(10), q("x.example", 1), 2 * S, 1, false)
                .is_empty()
        );
        assert_eq!(m.drain().len(), 3);
    }

    /// `key(id)` as its DNAT'd copy: the same client port, another server.
    fn copy(id: u16) -> TxKey {
        TxKey {
            server: [9; 16],
            server_port: 5353,
            ..key(id)
        }
    }

    #[test]
    fn a_dnat_copy_of_a_query_joins_it_and_either_response_answers_it_once() {
        let mut m = Matcher::new(5 * S, 100);
        m.query(key(1), q("a.example", 1), S, 1, false);
        m.query(copy(1), q("a.example", 1), S + 5_000, 2, false);
        assert_eq!((m.len(), m.stats.xlat_joined), (1, 1));
        // The backend's response (the copy's) comes first: it answers the client's query.
        match m.response(copy(1), Some(&q("a.example", 1))) {
            ResponseMatch::Matched(k, p) => {
                assert_eq!((k, p.xlat, p.first_ns), (key(1), Some(copy(1)), S));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.response(key(1), None), ResponseMatch::Duplicate);
        // Unanswered, the pair is one lost query.
        m.query(key(2), q("b.example", 1), 2 * S, 1, false);
        m.query(copy(2), q("b.example", 1), 2 * S + 1, 2, false);
        let lost = m.expire(8 * S);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].1.xlat, Some(copy(2)));
        // Another question, or too late after it, is no copy.
        m.query(key(3), q("c.example", 1), 10 * S, 1, false);
        m.query(copy(3), q("d.example", 1), 10 * S, 1, false);
        m.query(key(4), q("e.example", 1), 10 * S, 1, false);
        m.query(copy(4), q("e.example", 1), 12 * S, 1, false);
        assert_eq!((m.len(), m.stats.xlat_joined), (4, 2));
        assert!(m.by_port.len() <= m.len() && m.copies.is_empty());
    }

    /// `key(id)` as the uplink saw it after a masquerade: the node's address, the same port.
    fn masqueraded(k: TxKey) -> TxKey {
        TxKey {
            client: [7; 16],
            ..k
        }
    }

    #[test]
    fn a_masqueraded_copy_joins_its_query_only_from_another_interface() {
        let mut m = Matcher::new(5 * S, 100);
        // A pod's query, then its copy leaving the uplink under the node's address.
        m.query(key(1), q("a.example", 1), S, 1, false);
        m.query(masqueraded(key(1)), q("a.example", 1), S + 5_000, 2, false);
        assert_eq!((m.len(), m.stats.xlat_joined), (1, 1));
        match m.response(masqueraded(key(1)), None) {
            ResponseMatch::Matched(k, p) => {
                assert_eq!((k, p.xlat), (key(1), Some(masqueraded(key(1)))))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.response(key(1), None), ResponseMatch::Duplicate);
        // A Service's DNAT and the masquerade together: both ends translated.
        m.query(key(2), q("b.example", 1), 2 * S, 1, false);
        m.query(masqueraded(copy(2)), q("b.example", 1), 2 * S + 1, 2, false);
        assert_eq!((m.len(), m.stats.xlat_joined), (1, 2));
        // Seen after the DNAT (the bridge), then after the masquerade too (the uplink): both
        // copies join the one query, which names the DNAT's backend.
        m.query(key(4), q("d.example", 1), 4 * S, 1, false);
        m.query(copy(4), q("d.example", 1), 4 * S + 1, 3, false);
        m.query(masqueraded(copy(4)), q("d.example", 1), 4 * S + 2, 2, false);
        assert_eq!((m.len(), m.stats.xlat_joined), (2, 4));
        match m.response(masqueraded(copy(4)), None) {
            ResponseMatch::Matched(k, p) => assert_eq!((k, p.xlat), (key(4), Some(copy(4)))),
            other => panic!("{other:?}"),
        }
        assert_eq!(m.response(copy(4), None), ResponseMatch::Duplicate);
        assert_eq!(m.response(key(4), None), ResponseMatch::Duplicate);
        // Live, one client asking two servers from one socket on one interface (a resolver
        // asking every nameserver at once) is no DNAT.
        let live = |ifindex| Seen {
            ifindex,
            own_client: false,
            live: true,
        };
        m.query(key(5), q("e.example", 1), 5 * S, live(1), false);
        m.query(copy(5), q("e.example", 1), 5 * S + 1, live(1), false);
        assert_eq!((m.len(), m.stats.xlat_joined), (3, 4));
        // A query seen again on another interface (counting per interface) is that query
        // again, not a DNAT copy of the other one its socket sent.
        m.query(key(5), q("e.example", 1), 5 * S + 2, live(2), false);
        assert_eq!((m.len(), m.stats.xlat_joined), (3, 4));
        // Nor is another client on another interface whose address is not this host's.
        m.query(
            masqueraded(key(6)),
            q("f.example", 1),
            6 * S,
            live(2),
            false,
        );
        m.query(key(6), q("f.example", 1), 6 * S + 1, live(1), false);
        assert_eq!((m.len(), m.stats.xlat_joined), (5, 4));
        // Another client on the same interface with the same port and id is someone else.
        m.query(masqueraded(key(3)), q("c.example", 1), 3 * S, 1, false);
        m.query(key(3), q("c.example", 1), 3 * S + 1, 1, false);
        assert_eq!((m.len(), m.stats.xlat_joined), (7, 4));
    }
}
