//! The real kernel program and maps through the library (root only): packets counted on two
//! CPUs meet in the shared flow map's one value, a deleted entry's counts do not come back
//! when its key is reused, lookup-and-delete returns everything, and replay frames up to the
//! cut length are accepted by BPF_PROG_TEST_RUN; replay frames marked for the second map
//! set count only there; the verifier accepts every program, live and offline.

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

/// Runs the XDP program over `frame` replayed at `ts_ns` on ifindex 7 into map set `map`.
fn xdp_run(prog: i32, frame: &[u8], ts_ns: u64, map: u32) -> std::io::Result<u32> {
    let meta = XdpReplayMeta {
        ts_ns,
        ifindex: 7,
        wire_len: 0,
        map,
        _pad: 0,
    };
    let mut input = meta.to_ne_bytes().to_vec();
    input.extend_from_slice(frame);
    let ctx = bpf_sys::xdp_ctx(size_of::<XdpReplayMeta>() as u32, input.len() as u32);
    bpf_sys::test_run(prog, &input, &ctx)
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
        bpf_sys::test_run(prog, &frame, &bpf_sys::skb_ctx(ts, 7, 0, 0)).expect("test run");
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
        bpf_sys::test_run(prog, &f, &bpf_sys::skb_ctx(3_000, 7, 0, 0)).unwrap();
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
fn the_verifier_accepts_every_program_live_and_offline_and_each_runs() {
    if !is_root() {
        eprintln!("SKIP: needs root to load BPF programs");
        return;
    }
    for offline in [false, true] {
        let loaded = loader::load(&LoadOptions::new(offline, 64))
            .unwrap_or_else(|e| panic!("loading, offline {offline}: {e:?}"));
        // How close each program is to the verifier's million-instruction limit.
        for (name, prog) in loaded.ebpf.programs() {
            if let Ok(info) = prog.info() {
                eprintln!(
                    "{name} offline {offline}: {:?} instructions verified",
                    info.verified_instruction_count()
                );
            }
        }
        let tc = loaded.prog_fd(PROG_TC_INGRESS).unwrap();
        bpf_sys::test_run(tc, &udp_frame(20, 0), &bpf_sys::skb_ctx(1, 1, 0, 0)).expect("test run");
    }
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
    bpf_sys::test_run(tc, &big, &bpf_sys::skb_ctx(1, 1, 0, 0)).expect("TC accepts the cut length");
    xdp_run(xdp, &big, 1, 0).expect("XDP accepts the cut length");
    // A page-sized frame is what the cut avoids.
    let huge = udp_frame(4000, 0);
    assert!(bpf_sys::test_run(tc, &huge, &bpf_sys::skb_ctx(1, 1, 0, 0)).is_err());
    // Frames shorter than an Ethernet header are refused by the kernel (userspace skips them).
    assert!(bpf_sys::test_run(tc, &[0u8; 10], &bpf_sys::skb_ctx(1, 1, 0, 0)).is_err());
}

#[test]
fn replay_frames_marked_for_the_second_map_set_count_there_and_nowhere_else() {
    if !is_root() {
        eprintln!("SKIP: needs root to load BPF programs");
        return;
    }
    let mut loaded = loader::load(&LoadOptions::new(true, 1024)).expect("loading");
    assert_eq!(
        loaded.flows_b.capacity(),
        1024,
        "offline: as large as the first"
    );
    let tc = loaded.prog_fd(PROG_TC_INGRESS).unwrap();
    let xdp = loaded.prog_fd(PROG_XDP).unwrap();
    let frame = udp_frame(10, 0);
    bpf_sys::test_run(tc, &frame, &bpf_sys::skb_ctx(1_000, 7, 0, 1)).unwrap();
    xdp_run(xdp, &frame, 2_000, 1).unwrap();
    assert!(slots(&mut loaded).is_empty(), "nothing in the first set");
    let second = take_set(&mut loaded);
    assert_eq!(second.len(), 1);
    let v = second[0].1;
    assert_eq!((v.packets, v.first_ns, v.last_ns), (2, 1_000, 2_000));
    // And unmarked frames still go to the first set.
    bpf_sys::test_run(tc, &frame, &bpf_sys::skb_ctx(3_000, 7, 0, 0)).unwrap();
    assert_eq!(slots(&mut loaded).len(), 1);
    assert!(take_set(&mut loaded).is_empty());

    // The live agent never uses the second set: it takes one entry.
    let live = loader::load(&LoadOptions::new(false, 1024)).expect("loading");
    assert_eq!(live.flows_b.capacity(), 1);
}

#[test]
fn a_copy_just_after_a_replay_scan_boundary_is_not_counted_again() {
    if !is_root() {
        eprintln!("SKIP: needs root to load BPF programs");
        return;
    }
    let mut loaded = loader::load(&LoadOptions::new(true, 1024)).expect("loading");
    let tc = loaded.prog_fd(PROG_TC_INGRESS).unwrap();
    let frame = udp_frame(10, 0);
    // Counted on ifindex 7 (ingress) in set 0, the interval before the boundary.
    bpf_sys::test_run(tc, &frame, &bpf_sys::skb_ctx(1_000, 7, 0, 0)).unwrap();
    // Its copy on ifindex 8 just after the boundary, in set 1: noted, not counted.
    bpf_sys::test_run(tc, &frame, &bpf_sys::skb_ctx(1_001, 8, 0, 1)).unwrap();
    // The next packet on ifindex 7 counts, on 8 it is noted.
    bpf_sys::test_run(tc, &frame, &bpf_sys::skb_ctx(2_000, 7, 0, 1)).unwrap();
    bpf_sys::test_run(tc, &frame, &bpf_sys::skb_ctx(2_001, 8, 0, 1)).unwrap();
    let next = take_set(&mut loaded);
    assert_eq!(next.len(), 1);
    let v = next[0].1;
    assert_eq!(
        (v.packets, v.first_ns, v.last_ns, v.counted_on, v.seen_on[0]),
        (1, 2_000, 2_000, 7 << 1, 8 << 1),
        "counted on the first set's hook, from its first counted packet"
    );
    // Another copy two boundaries later still finds the hook (the program remembers it
    // across the sets), and its entry counts nothing.
    loaded.flows.take_all(&mut |_, _| {}).unwrap();
    bpf_sys::test_run(tc, &frame, &bpf_sys::skb_ctx(3_000, 9, 0, 0)).unwrap();
    let noted = slots(&mut loaded);
    let v = noted[0].1[0];
    assert_eq!(
        (v.packets, v.first_ns, v.last_ns, v.counted_on, v.seen_on[0]),
        (0, 0, 0, 7 << 1, 9 << 1),
        "only noted"
    );
    // Past the horizon (the agent's evict_after, 10 s by default) after the last counted
    // packet that refreshed the hook (the first of its set, at 2,000), the first hook to see
    // the direction counts it, as after an eviction.
    let late = 2_000 + 10_000_000_001;
    bpf_sys::test_run(tc, &frame, &bpf_sys::skb_ctx(late, 8, 0, 1)).unwrap();
    let v = take_set(&mut loaded)[0].1;
    assert_eq!((v.packets, v.first_ns, v.counted_on), (1, late, 8 << 1));
}

/// Takes every entry out of offline replay's second map set.
fn take_set(loaded: &mut loader::Loaded) -> Vec<(FlowKey, FlowValue)> {
    let mut out = Vec::new();
    loaded
        .flows_b
        .take_all(&mut |k, v| out.push((k, v)))
        .unwrap();
    out
}
