//! Live counting on kernels without an atomic lookup-and-delete of hash entries (before 5.14):
//! the program counts into one of the two map sets offline replay uses, the one the `SET` map
//! names; at each scan the agent points it at the other set, waits out an RCU grace period
//! (after which no program still writes to the first), and drains that set whole. The map
//! sets take twice the memory; records are what one set gives (the counting hooks are
//! remembered across the sets, as in replay).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

use aya::maps::{Map, MapData};

use super::sys;

/// The switch between the two sets, and what forces a grace period.
pub struct Alternation {
    set: MapData,
    /// The set the program writes to now.
    writing: u32,
    /// An array of maps: updating one waits for every running program to finish
    /// (`synchronize_rcu`), whatever uses it.
    barrier: OwnedFd,
    inner: OwnedFd,
}

impl Alternation {
    pub fn new(set: Map) -> io::Result<Self> {
        let Map::Array(set) = set else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "SET is not an array",
            ));
        };
        let inner = sys::map_create(sys::BPF_MAP_TYPE_ARRAY, 4, 4, 1, None)?;
        let barrier = sys::map_create(
            sys::BPF_MAP_TYPE_ARRAY_OF_MAPS,
            4,
            4,
            1,
            Some(inner.as_fd().as_raw_fd()),
        )?;
        let mut a = Self {
            set,
            writing: 0,
            barrier,
            inner,
        };
        a.write(0)?;
        Ok(a)
    }

    fn write(&mut self, n: u32) -> io::Result<()> {
        sys::update(
            self.set.fd().as_fd().as_raw_fd(),
            &0u32.to_ne_bytes(),
            &n.to_ne_bytes(),
        )?;
        self.writing = n;
        Ok(())
    }

    /// Points the program at the other set and waits until no program writes to the one it
    /// used; returns that set, now idle, for the agent to drain.
    pub fn flip(&mut self) -> io::Result<u32> {
        let idle = self.writing;
        self.write(1 - idle)?;
        // BPF programs run inside RCU read-side sections: once a grace period has passed,
        // every program that read the old set number has returned.
        let inner = (self.inner.as_fd().as_raw_fd() as u32).to_ne_bytes();
        sys::update(
            self.barrier.as_fd().as_raw_fd(),
            &0u32.to_ne_bytes(),
            &inner,
        )?;
        Ok(idle)
    }
}
