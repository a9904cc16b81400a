//! The name cache: addresses seen in A/AAAA answers mapped to the name the client asked for,
//! kept for the record's TTL (at least a minute, at most a day), least recently used out.

use std::{net::IpAddr, sync::Arc};

use crate::{
    base::hash::{FastLru, lru},
    flow::Resolver,
};

const MIN_TTL_NS: u64 = 60 * 1_000_000_000;
const MAX_TTL_NS: u64 = 24 * 3600 * 1_000_000_000;

pub struct NameCache {
    entries: FastLru<IpAddr, (Arc<str>, u64)>,
}

impl NameCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: lru(capacity),
        }
    }

    /// Remembers that `addr` answered for `name` at `now` (program clock, ns) for `ttl_s`.
    pub fn learn(&mut self, addr: IpAddr, name: &str, ttl_s: u32, now: u64) {
        if name.is_empty() {
            return;
        }
        let ttl = (u64::from(ttl_s) * 1_000_000_000).clamp(MIN_TTL_NS, MAX_TTL_NS);
        let expires = now.saturating_add(ttl);
        // One lookup for an address already known (the usual case: answers repeat).
        if let Some((n, e)) = self.entries.get_mut(&addr) {
            if **n != *name {
                *n = name.into();
            }
            *e = expires;
            return;
        }
        self.entries.put(addr, (name.into(), expires));
    }

    /// The name for `addr` if it has not expired at `now`.
    pub fn lookup(&mut self, addr: &IpAddr, now: u64) -> Option<Arc<str>> {
        match self.entries.get(addr) {
            Some((name, expires)) if *expires > now => Some(name.clone()),
            Some(_) => {
                self.entries.pop(addr);
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

impl Resolver for NameCache {
    fn name(&mut self, addr: IpAddr, now: u64) -> Option<Arc<str>> {
        self.lookup(&addr, now)
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
        c.learn(ip, "www.example.com", 5, 100 * S);
        assert_eq!(c.lookup(&ip, 150 * S).as_deref(), Some("www.example.com"));
        assert_eq!(c.lookup(&ip, 161 * S), None, "60 s minimum has passed");
        c.learn(ip, "api.example.com", 3600, 200 * S);
        assert_eq!(c.lookup(&ip, 3000 * S).as_deref(), Some("api.example.com"));
    }

    #[test]
    fn the_least_recently_used_address_goes_first() {
        let mut c = NameCache::new(2);
        let ips: Vec<IpAddr> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        c.learn(ips[0], "a", 300, 0);
        c.learn(ips[1], "b", 300, 0);
        assert!(c.lookup(&ips[0], 1).is_some());
        c.learn(ips[2], "c", 300, 0);
        assert!(c.lookup(&ips[1], 1).is_none());
        assert!(c.lookup(&ips[0], 1).is_some());
        assert_eq!(c.len(), 2);
    }
}
