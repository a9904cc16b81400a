//! The real kernel program and maps through the library (root only): packets counted on two
//! CPUs meet in the shared flow map's one value, a deleted entry's counts do not come back
//! when its key is reused, lookup-and-delete returns everything, and replay frames up to the
//! cut length are accepted by BPF_PROG_TEST_RUN.

use devourer::{
    flow::FlowSource,
    kernel::{
        object::{self as loader, LoadOptions, PROG_TC_INGRESS, PROG_XDP},
        replay::MAX_REPLAY_FRAME,
        sys as bpf_sys,
    },
};
use devourer_common::flow::{FlowKey, FlowValue, XdpReplayMeta};

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning to CPU {cpu}"
        );
    }
}

/// Ethernet + IPv4 + UDP 10.0.0.1:1111 -> 10.0.0.2:53 with `payload` bytes, `len` bytes long
/// at least (zero-padded after the IP packet).
fn udp_frame(payload: usize, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    let tot = (20 + 8 + payload) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&tot.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&1111u16.to_be_bytes());
    f.extend_from_slice(&53u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(f.len() + payload, 0xab);
    if f.len() < len {
        f.resize(len, 0);
    }
    f
}

fn slots(loaded: &mut loader::Loaded) -> Vec<(FlowKey, Vec<FlowValue>)> {
    let mut out = Vec::new();
    loaded
        .flows
        .0
        .for_each(|k, s| out.push((k, s.to_vec())))
        .expect("reading the flow map");
    out
}

#[test]
fn counts_from_every_cpu_meet_in_one_value_and_a_reused_key_starts_from_zero() {
    if !is_root() {
        eprintln!("SKIP: needs root to load BPF programs");
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("SKIP: needs two CPUs");
        return;
    }
    let mut loaded = loader::load(&LoadOptions::new(true, 1024)).expect("loading");
    let prog = loaded.prog_fd(PROG_TC_INGRESS).unwrap();
    let frame = udp_frame(10, 0);
    let run = |cpu: usize, ts: u64| {
        pin_to_cpu(cpu);
        bpf_sys::test_run(prog, &frame, &bpf_sys::skb_ctx(ts, 7, 0)).expect("test run");
    };
    for i in 0..3 {
        run(0, 1_000 + i);
    }
    run(1, 1_003);
    let s = slots(&mut loaded);
    assert_eq!(s.len(), 1);
    let (key, values) = &s[0];
    assert_eq!(
        key.ifindex, 0,
        "counted once per node: no interface in the key"
    );
    assert_eq!(values.len(), 1, "one value for all CPUs");
    assert_eq!(
        values[0].packets, 4,
        "both CPUs' packets in the shared value"
    );
    assert_eq!(
        values[0].counted_on,
        7 << 1,
        "offline interface from cb[0], ingress"
    );

    let taken = loaded.flows.take(key).unwrap().expect("entry present");
    assert_eq!((taken.packets, taken.bytes), (4, 4 * 38));
    assert_eq!((taken.first_ns, taken.last_ns), (1_000, 1_003));
    assert!(loaded.flows.take(key).unwrap().is_none(), "deleted");

    // The same key again, from the other CPU: nothing of the deleted entry comes back.
    run(1, 2_000);
    let s = slots(&mut loaded);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].1[0].packets, 1, "no stale counts on a reused key");
    assert_eq!(s[0].1[0].first_ns, 2_000);

    // Draining (batched lookup-and-delete) returns everything and leaves the map empty.
    for port in 0..300u16 {
        let mut f = frame.clone();
        f[34..36].copy_from_slice(&(2000 + port).to_be_bytes());
        bpf_sys::test_run(prog, &f, &bpf_sys::skb_ctx(3_000, 7, 0)).unwrap();
    }
    let mut drained = Vec::new();
    loaded
        .flows
        .take_all(&mut |k, v| drained.push((k, v)))
        .unwrap();
    assert_eq!(drained.len(), 301);
    assert_eq!(drained.iter().map(|(_, v)| v.packets).sum::<u64>(), 301);
    let mut rest = Vec::new();
    loaded
        .flows
        .read_all(&mut |k, v| rest.push((k, v)))
        .unwrap();
    assert!(rest.is_empty());
}

#[test]
fn replay_frames_up_to_the_cut_length_are_accepted() {
    if !is_root() {
        eprintln!("SKIP: needs root to load BPF programs");
        return;
    }
    let loaded = loader::load(&LoadOptions::new(true, 64)).expect("loading");
    let tc = loaded.prog_fd(PROG_TC_INGRESS).unwrap();
    let xdp = loaded.prog_fd(PROG_XDP).unwrap();
    let big = udp_frame(MAX_REPLAY_FRAME - 42, MAX_REPLAY_FRAME);
    assert_eq!(big.len(), MAX_REPLAY_FRAME);
    bpf_sys::test_run(tc, &big, &bpf_sys::skb_ctx(1, 1, 0)).expect("TC accepts the cut length");
    let meta = XdpReplayMeta {
        ts_ns: 1,
        ifindex: 1,
        wire_len: 0,
    };
    let mut input = meta.to_ne_bytes().to_vec();
    input.extend_from_slice(&big);
    let ctx = bpf_sys::xdp_ctx(16, input.len() as u32);
    bpf_sys::test_run(xdp, &input, &ctx).expect("XDP accepts the cut length");
    // A page-sized frame is what the cut avoids.
    let huge = udp_frame(4000, 0);
    assert!(bpf_sys::test_run(tc, &huge, &bpf_sys::skb_ctx(1, 1, 0)).is_err());
    // Frames shorter than an Ethernet header are refused by the kernel (userspace skips them).
    assert!(bpf_sys::test_run(tc, &[0u8; 10], &bpf_sys::skb_ctx(1, 1, 0)).is_err());
}
