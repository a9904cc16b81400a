//! The name cache: addresses seen in A/AAAA answers mapped to the name the client asked for,
//! kept for the record's TTL (at least a minute, at most a day), least recently used out. By
//! default a name is kept for the client that resolved it ([`Asker`]): one pod's answers never
//! name another pod's connections (`--dns-names per-client`; `shared` names for everyone).

use std::{net::IpAddr, sync::Arc};

use crate::base::hash::{FastLru, lru};

const MIN_TTL_NS: u64 = 60 * 1_000_000_000;
const MAX_TTL_NS: u64 = 24 * 3600 * 1_000_000_000;

/// Whose resolutions a name serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Asker {
    /// This host: every one of its own addresses, loopback included, counts as one client (a
    /// local caching resolver asks for the host's processes).
    Host,
    /// One client, by its address before NAT.
    Client(IpAddr),
    /// Anyone (`--dns-names shared`).
    Anyone,
}

pub struct NameCache {
    entries: FastLru<(Asker, IpAddr), (Arc<str>, u64)>,
}

impl NameCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: lru(capacity),
        }
    }

    /// Remembers that `addr` answered `asker`'s question for `name` at `now` (program clock,
    /// ns) for `ttl_s`.
    pub fn learn(&mut self, asker: Asker, addr: IpAddr, name: &str, ttl_s: u32, now: u64) {
        if name.is_empty() {
            return;
        }
        let ttl = (u64::from(ttl_s) * 1_000_000_000).clamp(MIN_TTL_NS, MAX_TTL_NS);
        let expires = now.saturating_add(ttl);
        // One lookup for an address already known (the usual case: answers repeat).
        if let Some((n, e)) = self.entries.get_mut(&(asker, addr)) {
            if **n != *name {
                *n = name.into();
            }
            *e = expires;
            return;
        }
        self.entries.put((asker, addr), (name.into(), expires));
    }

    /// The name `asker` resolved `addr` from, if it has not expired at `now`.
    pub fn lookup(&mut self, asker: Asker, addr: &IpAddr, now: u64) -> Option<Arc<str>> {
        let key = (asker, *addr);
        match self.entries.get(&key) {
            Some((name, expires)) if *expires > now => Some(name.clone()),
            Some(_) => {
                self.entries.pop(&key);
                None
            }
            None => None,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn names_live_for_their_ttl_but_at_least_a_minute() {
        let mut c = NameCache::new(10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let me = Asker::Host;
        c.learn(me, ip, "www.example.com", 5, 100 * S);
        assert_eq!(
            c.lookup(me, &ip, 150 * S).as_deref(),
            Some("www.example.com")
        );
        assert_eq!(c.lookup(me, &ip, 161 * S), None, "60 s minimum has passed");
        c.learn(me, ip, "api.example.com", 3600, 200 * S);
        assert_eq!(
            c.lookup(me, &ip, 3000 * S).as_deref(),
            Some("api.example.com")
        );
    }

    #[test]
    fn the_least_recently_used_address_goes_first() {
        let mut c = NameCache::new(2);
        let ips: Vec<IpAddr> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let me = Asker::Anyone;
        c.learn(me, ips[0], "a", 300, 0);
        c.learn(me, ips[1], "b", 300, 0);
        assert!(c.lookup(me, &ips[0], 1).is_some());
        c.learn(me, ips[2], "c", 300, 0);
        assert!(c.lookup(me, &ips[1], 1).is_none());
        assert!(c.lookup(me, &ips[0], 1).is_some());
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_name_serves_only_the_client_that_resolved_it() {
        let mut c = NameCache::new(10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let (a, b) = (
            Asker::Client("198.18.40.2".parse().unwrap()),
            Asker::Client("198.18.40.3".parse().unwrap()),
        );
        c.learn(a, ip, "evil.example", 300, 0);
        assert_eq!(c.lookup(a, &ip, 1).as_deref(), Some("evil.example"));
        assert_eq!(c.lookup(b, &ip, 1), None);
        assert_eq!(c.lookup(Asker::Host, &ip, 1), None);
        c.learn(b, ip, "good.example", 300, 0);
        assert_eq!(c.lookup(b, &ip, 1).as_deref(), Some("good.example"));
        assert_eq!(c.lookup(a, &ip, 1).as_deref(), Some("evil.example"));
    }
}
