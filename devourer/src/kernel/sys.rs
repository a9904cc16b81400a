//! Raw `bpf(2)` commands aya 0.14 does not wrap: batched map lookup, atomic lookup-and-delete,
//! BPF_PROG_TEST_RUN, and the few map and program creations the kernel feature probes and the
//! RCU barrier need.

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd, RawFd},
};

use devourer_common::flow::{CB_IFINDEX, CB_MAP, CB_WIRE_LEN};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// `union bpf_attr` is at most this large for the commands used here; the kernel requires the
/// bytes it does not know to be zero, so every call passes a zeroed buffer of this size.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }

    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }

    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
}

fn sys_bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<()> {
    sys_bpf_ret(cmd, attr).map(|_| ())
}

/// A `bpf(2)` command whose return value is a new file descriptor.
fn sys_bpf_fd(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = sys_bpf_ret(cmd, attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn sys_bpf_ret(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, writable, zero-initialised bpf_attr of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            size_of::<Attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;
pub const BPF_PROG_TYPE_XDP: u32 = 6;

/// Creates a map; `inner` is the inner map's fd of a map-in-map.
pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    inner: Option<RawFd>,
) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    // struct { u32 map_type, key_size, value_size, max_entries, map_flags, inner_map_fd; ... }
    attr.put_u32(0, map_type);
    attr.put_u32(4, key_size);
    attr.put_u32(8, value_size);
    attr.put_u32(12, max_entries);
    attr.put_u32(20, inner.map_or(0, |fd| fd as u32));
    sys_bpf_fd(BPF_MAP_CREATE, &mut attr)
}

/// Writes one element (BPF_ANY).
pub fn update(map_fd: RawFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    map_elem_cmd(
        BPF_MAP_UPDATE_ELEM,
        map_fd,
        key.as_ptr() as u64,
        value.as_ptr() as u64,
    )
    .map(|_| ())
}

/// Loads a program of `prog_type` from raw instructions (GPL: some helpers need it).
pub fn prog_load(prog_type: u32, insns: &[u64]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = Attr::new();
    // struct { u32 prog_type, insn_cnt; u64 insns, license; u32 log_level, log_size; ... }
    attr.put_u32(0, prog_type);
    attr.put_u32(4, insns.len() as u32);
    attr.put_u64(8, insns.as_ptr() as u64);
    attr.put_u64(16, license.as_ptr() as u64);
    sys_bpf_fd(BPF_PROG_LOAD, &mut attr)
}

/// Runs a map element command (`{u32 map_fd; u64 key; u64 value_or_next_key; u64 flags}`);
/// `Ok(false)` when the kernel answers ENOENT.
fn map_elem_cmd(cmd: libc::c_long, map_fd: RawFd, key: u64, value: u64) -> io::Result<bool> {
    let mut attr = Attr::new();
    attr.put_u32(0, map_fd as u32);
    attr.put_u64(8, key);
    attr.put_u64(16, value);
    match sys_bpf(cmd, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Copies one element out (all per-CPU slots for per-CPU maps); `Ok(false)` when absent.
pub fn lookup(map_fd: RawFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    map_elem_cmd(
        BPF_MAP_LOOKUP_ELEM,
        map_fd,
        key.as_ptr() as u64,
        value.as_mut_ptr() as u64,
    )
}

/// Writes the key after `key` (the first key for `None`); `Ok(false)` at the end of the map.
pub fn get_next_key(map_fd: RawFd, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    map_elem_cmd(
        BPF_MAP_GET_NEXT_KEY,
        map_fd,
        key.map_or(0, |k| k.as_ptr() as u64),
        next.as_mut_ptr() as u64,
    )
}

/// Atomically copies out and deletes one element. `value` receives all per-CPU slots for per-CPU
/// maps. Returns `Ok(false)` when the key is not in the map.
pub fn lookup_and_delete(map_fd: RawFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    map_elem_cmd(
        BPF_MAP_LOOKUP_AND_DELETE_ELEM,
        map_fd,
        key.as_ptr() as u64,
        value.as_mut_ptr() as u64,
    )
}

/// One step of BPF_MAP_LOOKUP_BATCH, or of BPF_MAP_LOOKUP_AND_DELETE_BATCH with `delete`
/// (each element is copied out and deleted under its bucket's lock). `cursor` is `None` for
/// the first call and is updated for the next. Returns how many elements were written to
/// `keys`/`values` and whether the map has been walked to its end.
pub fn lookup_batch(
    map_fd: RawFd,
    delete: bool,
    cursor: &mut Option<u64>,
    keys: &mut [u8],
    values: &mut [u8],
    max: u32,
) -> io::Result<(u32, bool)> {
    let mut in_batch: u64 = cursor.unwrap_or(0);
    let mut out_batch: u64 = 0;
    let mut attr = Attr::new();
    // struct { u64 in_batch, out_batch, keys, values; u32 count, map_fd; u64 elem_flags, flags; }
    attr.put_u64(
        0,
        if cursor.is_some() {
            &mut in_batch as *mut u64 as u64
        } else {
            0
        },
    );
    attr.put_u64(8, &mut out_batch as *mut u64 as u64);
    attr.put_u64(16, keys.as_mut_ptr() as u64);
    attr.put_u64(24, values.as_mut_ptr() as u64);
    attr.put_u32(32, max);
    attr.put_u32(36, map_fd as u32);
    let cmd = if delete {
        BPF_MAP_LOOKUP_AND_DELETE_BATCH
    } else {
        BPF_MAP_LOOKUP_BATCH
    };
    let res = sys_bpf(cmd, &mut attr);
    let count = attr.get_u32(32);
    match res {
        Ok(()) => {
            *cursor = Some(out_batch);
            Ok((count, false))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((count, true)),
        Err(e) => Err(e),
    }
}

/// Size of `struct __sk_buff` in the UAPI, and the offsets of the fields offline mode sets.
pub const SKB_CTX_LEN: usize = 192;
const SKB_CB: usize = 48;
const SKB_TSTAMP: usize = 152;

/// Builds the `__sk_buff` context a TC program sees in BPF_PROG_TEST_RUN: the packet's time as
/// `tstamp`, the replayed interface, the frame's length on the wire and the map set that counts
/// it (0: the first) in `cb[]` (the only fields test_run lets us set that the program reads).
pub fn skb_ctx(tstamp_ns: u64, ifindex: u32, wire_len: u32, map: u32) -> [u8; SKB_CTX_LEN] {
    let mut ctx = [0u8; SKB_CTX_LEN];
    let cb = |i: usize| SKB_CB + 4 * i;
    ctx[cb(CB_IFINDEX)..cb(CB_IFINDEX) + 4].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[cb(CB_WIRE_LEN)..cb(CB_WIRE_LEN) + 4].copy_from_slice(&wire_len.to_ne_bytes());
    ctx[cb(CB_MAP)..cb(CB_MAP) + 4].copy_from_slice(&map.to_ne_bytes());
    ctx[SKB_TSTAMP..SKB_TSTAMP + 8].copy_from_slice(&tstamp_ns.to_ne_bytes());
    ctx
}

/// Size of `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
/// egress_ifindex (u32 each).
pub const XDP_CTX_LEN: usize = 24;

/// The `xdp_md` for a test run whose input starts with `meta_len` bytes of metadata.
pub fn xdp_ctx(meta_len: u32, total_len: u32) -> [u8; XDP_CTX_LEN] {
    let mut ctx = [0u8; XDP_CTX_LEN];
    ctx[0..4].copy_from_slice(&meta_len.to_ne_bytes());
    ctx[4..8].copy_from_slice(&total_len.to_ne_bytes());
    ctx
}

/// Runs a loaded program once over `data` with context `ctx`; returns the program's return value.
pub fn test_run(prog_fd: RawFd, data: &[u8], ctx: &[u8]) -> io::Result<u32> {
    test_run_repeat(prog_fd, data, ctx, 1).map(|(ret, _)| ret)
}

/// Runs a loaded program `repeat` times over the same input; returns the last return value and
/// the kernel's mean run time in nanoseconds (measured around the program, without the syscall).
pub fn test_run_repeat(
    prog_fd: RawFd,
    data: &[u8],
    ctx: &[u8],
    repeat: u32,
) -> io::Result<(u32, u32)> {
    let mut attr = Attr::new();
    // struct { u32 prog_fd, retval, data_size_in, data_size_out; u64 data_in, data_out;
    //          u32 repeat, duration, ctx_size_in, ctx_size_out; u64 ctx_in, ctx_out; ... }
    attr.put_u32(0, prog_fd as u32);
    attr.put_u32(8, data.len() as u32);
    attr.put_u64(16, data.as_ptr() as u64);
    attr.put_u32(32, repeat.max(1));
    if !ctx.is_empty() {
        attr.put_u32(40, ctx.len() as u32);
        attr.put_u64(48, ctx.as_ptr() as u64);
    }
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok((attr.get_u32(4), attr.get_u32(36)))
}
