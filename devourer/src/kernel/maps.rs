//! The map reader: batched reads and atomic deletes of hash maps, shared (the flow map) or
//! per-CPU (the overflow aggregates), and the kernel's counters.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, RawFd},
};

use aya::{
    Pod,
    maps::{Map, MapData},
};
use devourer_common::flow::{
    C_MAP_FULL, COUNTERS, COUNTERS_LEN, Counter, CounterBlock, FlowKey, FlowValue, OverflowKey,
    OverflowValue,
};

use super::sys as bpf_sys;

/// Elements fetched per BPF_MAP_LOOKUP_BATCH call.
const BATCH: usize = 4096;

/// Bytes one value takes in lookup buffers (the kernel rounds per-CPU values to 8; the shared
/// map's values are multiples of 8 already).
fn value_stride<V>() -> usize {
    size_of::<V>().next_multiple_of(8)
}

fn read_pod<T: Copy>(bytes: &[u8]) -> T {
    assert!(bytes.len() >= size_of::<T>());
    // SAFETY: length checked; T is a plain-old-data repr(C) type shared with the kernel.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is plain-old-data without padding holes that matter for a key lookup
    // (the shared types have explicit padding fields).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

/// A hash map read through its fd: per-CPU (a value per CPU per entry) or shared (one).
pub struct HashReader<K, V> {
    /// Kept open (not a dup): programs loaded later were relocated against this very fd.
    data: MapData,
    /// Values per entry: the CPU count for a per-CPU map, 1 for a shared one.
    ncpus: usize,
    capacity: usize,
    batch_ok: bool,
    keys: Vec<u8>,
    values: Vec<u8>,
    _kv: std::marker::PhantomData<(K, V)>,
}

impl<K: Copy, V: Copy> HashReader<K, V> {
    pub fn new(map: Map, ncpus: usize, capacity: usize) -> io::Result<Self> {
        let (data, ncpus): (MapData, usize) = match map {
            Map::PerCpuHashMap(d) => (d, ncpus),
            Map::HashMap(d) => (d, 1),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "expected a hash map",
                ));
            }
        };
        Ok(Self {
            data,
            ncpus,
            capacity,
            batch_ok: true,
            keys: Vec::new(),
            values: Vec::new(),
            _kv: std::marker::PhantomData,
        })
    }

    fn raw(&self) -> RawFd {
        self.data.fd().as_fd().as_raw_fd()
    }

    fn slots(&self, values: &[u8]) -> Vec<V> {
        let stride = value_stride::<V>();
        (0..self.ncpus)
            .map(|c| read_pod::<V>(&values[c * stride..]))
            .collect()
    }

    /// Calls `f` with every key and its per-CPU slots.
    pub fn for_each(&mut self, mut f: impl FnMut(K, &[V])) -> io::Result<()> {
        if self.batch_ok {
            match self.batched(false, &mut f) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!("BPF_MAP_LOOKUP_BATCH unsupported ({e}); reading key by key");
                    self.batch_ok = false;
                }
                Err(e) => return Err(e),
            }
        }
        self.for_each_by_key(&mut f)
    }

    /// Atomically removes every entry, calling `f` with each key and its per-CPU slots.
    pub fn drain(&mut self, mut f: impl FnMut(K, &[V])) -> io::Result<()> {
        if self.batch_ok {
            match self.batched(true, &mut f) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(
                        "batched lookup-and-delete unsupported ({e}); deleting key by key"
                    );
                    self.batch_ok = false;
                }
                Err(e) => return Err(e),
            }
        }
        let mut keys = Vec::new();
        self.for_each_by_key(&mut |k, _: &[V]| keys.push(k))?;
        for k in keys {
            if let Some(slots) = self.take(&k)? {
                f(k, &slots);
            }
        }
        Ok(())
    }

    fn batched(&mut self, delete: bool, f: &mut impl FnMut(K, &[V])) -> io::Result<()> {
        let vsize = value_stride::<V>() * self.ncpus;
        self.keys.resize(BATCH * size_of::<K>(), 0);
        self.values.resize(BATCH * vsize, 0);
        let mut cursor = None;
        loop {
            let (n, done) = bpf_sys::lookup_batch(
                self.raw(),
                delete,
                &mut cursor,
                &mut self.keys,
                &mut self.values,
                BATCH as u32,
            )?;
            for i in 0..n as usize {
                let k = read_pod::<K>(&self.keys[i * size_of::<K>()..]);
                let slots = self.slots(&self.values[i * vsize..(i + 1) * vsize]);
                f(k, &slots);
            }
            if done {
                return Ok(());
            }
        }
    }

    fn for_each_by_key(&mut self, f: &mut impl FnMut(K, &[V])) -> io::Result<()> {
        let mut keys = Vec::new();
        let mut prev: Option<K> = None;
        loop {
            let mut next = vec![0u8; size_of::<K>()];
            let prev_bytes = prev.map(|k| as_bytes(&k).to_vec());
            if !bpf_sys::get_next_key(self.raw(), prev_bytes.as_deref(), &mut next)? {
                break;
            }
            let k = read_pod::<K>(&next);
            keys.push(k);
            prev = Some(k);
        }
        let mut buf = vec![0u8; value_stride::<V>() * self.ncpus];
        for k in keys {
            if bpf_sys::lookup(self.raw(), as_bytes(&k), &mut buf)? {
                let slots = self.slots(&buf);
                f(k, &slots);
            }
        }
        Ok(())
    }

    /// Atomically removes `key`, returning its per-CPU slots.
    pub fn take(&mut self, key: &K) -> io::Result<Option<Vec<V>>> {
        let mut buf = vec![0u8; value_stride::<V>() * self.ncpus];
        if bpf_sys::lookup_and_delete(self.raw(), as_bytes(key), &mut buf)? {
            Ok(Some(self.slots(&buf)))
        } else {
            Ok(None)
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// The kernel flow map (the flow stage reads and evicts it as its source of entries).
pub struct KernelFlows(pub HashReader<FlowKey, FlowValue>);

/// What the kernel program counted besides flows, summed over CPUs, indexed like
/// [`COUNTERS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters(pub [u64; COUNTERS_LEN as usize]);

impl KernelCounters {
    pub fn get(&self, index: u32) -> u64 {
        self.0[index as usize]
    }

    /// Every counter with its description.
    pub fn iter(&self) -> impl Iterator<Item = (&'static Counter, u64)> + '_ {
        COUNTERS.iter().map(|c| (c, self.get(c.index)))
    }

    /// Packets the full flow map refused (in the overflow map instead).
    pub fn map_full(&self) -> u64 {
        self.get(C_MAP_FULL)
    }
}

/// A one-slot per-CPU array read as every CPU's value (the counters).
pub struct Counters {
    data: MapData,
    ncpus: usize,
}

impl Counters {
    /// Every CPU's value of slot 0 (none when the slot is missing).
    pub fn per_cpu<T: Pod>(&self) -> io::Result<Vec<T>> {
        let stride = value_stride::<T>();
        let mut buf = vec![0u8; stride * self.ncpus];
        let fd = self.data.fd().as_fd().as_raw_fd();
        if !bpf_sys::lookup(fd, &0u32.to_ne_bytes(), &mut buf)? {
            return Ok(Vec::new());
        }
        Ok(buf.chunks_exact(stride).map(read_pod::<T>).collect())
    }

    pub fn new(map: Map, ncpus: usize) -> io::Result<Self> {
        let data = match map {
            Map::PerCpuArray(d) => d,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "expected a per-CPU array",
                ));
            }
        };
        Ok(Self { data, ncpus })
    }

    pub fn read(&self) -> io::Result<KernelCounters> {
        let mut sums = [0u64; COUNTERS_LEN as usize];
        for block in self.per_cpu::<CounterBlock>()? {
            for (sum, v) in sums.iter_mut().zip(block.c) {
                *sum += v;
            }
        }
        Ok(KernelCounters(sums))
    }
}

/// Takes the overflow aggregates out of the map (atomic lookup-and-delete: a packet counted
/// meanwhile starts a new entry): (ifindex, protocol) -> (bytes, packets), summed over CPUs,
/// in key order.
pub fn take_overflow(
    map: &mut HashReader<OverflowKey, OverflowValue>,
) -> io::Result<Vec<(OverflowKey, OverflowValue)>> {
    let mut out = Vec::new();
    map.drain(|k, slots| {
        let mut total = OverflowValue::default();
        for s in slots {
            total.bytes += s.bytes;
            total.packets += s.packets;
        }
        if total.packets > 0 {
            out.push((k, total));
        }
    })?;
    out.sort_by_key(|(k, _)| *k);
    Ok(out)
}
