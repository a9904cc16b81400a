//! Kernel cost per packet (root): devourer's TC and XDP programs, loaded as the live agent loads
//! them, run with BPF_PROG_TEST_RUN over packets of each kind, against a do-nothing program of
//! the same type measured in the same run. The kernel reports the mean time around the program.
//!
//! - existing flow: one packet repeated (the first run creates the entry, the rest update it);
//! - new flow: distinct packets, one run each (every run inserts), against the empty program
//!   run the same way;
//! - DNS: a port-53 query repeated (each run also copies the payload to the DNS ring).
//!
//! - replay floor: a test_run call of the empty program, timed from userspace (with
//!   `--replay-floor FILE`: every frame of a capture, read and framed as `devourer read` does);
//! - scans of a map holding 100k flows (read, and evict everything).
//!
//! Prints one JSON object per case: {"case", "ns"}. Arguments pick sections (`--per-packet`,
//! `--replay-floor`, `--scan`); none runs all.

use std::time::Instant;

use devourer::{
    flow::{FlowSource, FlowTable, NoNames, ScanStats, Status, TableConfig},
    kernel::{
        object::{
            self as loader, LoadOptions, PROG_EMPTY_TC, PROG_EMPTY_XDP, PROG_TC_INGRESS,
            PROG_TC_SHARED, PROG_XDP,
        },
        sys::test_run_repeat,
    },
};

const REPEAT: u32 = 1_000_000;
const NEW_FLOWS: u16 = 20_000;
const CALLS: u32 = 300_000;
const SCAN_FLOWS: u32 = 100_000;

fn eth(ethertype: u16, tags: &[u16], payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    for t in tags {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&t.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    p.extend_from_slice(l4);
    p
}

fn ipv6(next: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p.extend_from_slice(l4);
    p
}

fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = sport.to_be_bytes().to_vec();
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(&[0u8; 40]);
    t
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn dns_query() -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in ["www", "example", "com"] {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

fn report(case: &str, ns: f64) {
    println!("{{\"case\":\"{case}\",\"ns\":{ns:.1}}}");
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let mut opts = LoadOptions::new(false, 131_072);
    opts.shared_map_entries = 131_072;
    let mut loaded = loader::load_bench(&opts).expect("loading (root?)");
    let progs = [
        (
            "tc",
            loaded.prog_fd(PROG_TC_INGRESS).unwrap(),
            loaded.load_bench_program(PROG_EMPTY_TC).unwrap(),
        ),
        (
            "xdp",
            loaded.prog_fd(PROG_XDP).unwrap(),
            loaded.load_bench_program(PROG_EMPTY_XDP).unwrap(),
        ),
    ];
    let v4 = eth(0x0800, &[], &ipv4(6, &tcp(40000, 443)));
    let v6 = eth(0x86dd, &[], &ipv6(17, &udp(5000, 6000, &[0; 40])));
    let vlan = eth(0x0800, &[100], &ipv4(17, &udp(5001, 6001, &[0; 40])));
    let dns = eth(0x0800, &[], &ipv4(17, &udp(5353, 53, &dns_query())));
    let mut drained = Vec::new();
    for (hook, prog, empty) in progs.into_iter().filter(|_| want("--per-packet")) {
        let run = |fd: i32, pkt: &[u8], n: u32| {
            test_run_repeat(fd, pkt, &[], n).expect("test run").1 as f64
        };
        report(
            &format!("{hook} empty, same packet"),
            run(empty, &v4, REPEAT),
        );
        report(
            &format!("{hook} existing flow, IPv4 TCP"),
            run(prog, &v4, REPEAT),
        );
        report(
            &format!("{hook} existing flow, IPv6 UDP"),
            run(prog, &v6, REPEAT),
        );
        report(
            &format!("{hook} existing flow, VLAN"),
            run(prog, &vlan, REPEAT),
        );
        // The DNS ring holds ~30k small events: stay below, then empty it.
        report(
            &format!("{hook} DNS query to the ring"),
            run(prog, &dns, 20_000),
        );
        while loaded.dns.next().is_some() {}
        // New flows: a distinct packet per run, one run each, against the empty program; then
        // the same packets again (now existing flows), one run each, for a like-for-like ratio.
        let (empty1, new, again) =
            one_run_each(&|pkt| run(empty, pkt, 1), &|pkt| run(prog, pkt, 1));
        report(&format!("{hook} empty, one run per packet"), empty1);
        report(&format!("{hook} new flow"), new);
        report(&format!("{hook} existing flow, one run per packet"), again);
        drained.clear();
        loaded
            .flows
            .take_all(&mut drained)
            .expect("emptying the flow map");
    }
    if want("--per-packet") {
        shared_vs_per_cpu(&mut loaded, &v4);
    }

    if want("--replay-floor") {
        let file = args
            .iter()
            .position(|a| a == "--replay-floor")
            .and_then(|i| args.get(i + 1));
        match file {
            Some(f) => replay_floor_file(&mut loaded, std::path::Path::new(f)),
            None => replay_floor(&mut loaded, &v4),
        }
    }
    if want("--scan") {
        scan(&mut loaded);
    }
}

/// Runs `NEW_FLOWS` distinct packets once each through `empty` and `prog`, then again through
/// `prog`: mean ns of the empty runs, the new-flow runs and the existing-flow runs.
fn one_run_each(empty: &dyn Fn(&[u8]) -> f64, prog: &dyn Fn(&[u8]) -> f64) -> (f64, f64, f64) {
    let pkts: Vec<Vec<u8>> = (0..NEW_FLOWS)
        .map(|i| eth(0x0800, &[], &ipv4(6, &tcp(1024 + i, 443))))
        .collect();
    let (mut e, mut n, mut a) = (0.0, 0.0, 0.0);
    for p in &pkts {
        e += empty(p);
        n += prog(p);
    }
    for p in &pkts {
        a += prog(p);
    }
    let k = f64::from(NEW_FLOWS);
    (e / k, n / k, a / k)
}

/// The per-CPU flow map against one shared map with atomic adds (design.md asks for both):
/// one CPU, then two CPUs counting the same flow at once (where a shared value's cache line
/// moves between CPUs on every packet).
fn shared_vs_per_cpu(loaded: &mut loader::Loaded, v4: &[u8]) {
    let per_cpu = loaded.prog_fd(PROG_TC_INGRESS).expect("tc program");
    let shared = loaded
        .load_bench_program(PROG_TC_SHARED)
        .expect("shared-map program");
    let run =
        |fd: i32, pkt: &[u8], n: u32| test_run_repeat(fd, pkt, &[], n).expect("test run").1 as f64;
    report(
        "tc shared map: existing flow, IPv4 TCP",
        run(shared, v4, REPEAT),
    );
    let (_, new, again) = one_run_each(&|_| 0.0, &|pkt| run(shared, pkt, 1));
    report("tc shared map: new flow", new);
    report("tc shared map: existing flow, one run per packet", again);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return;
    }
    for (name, fd) in [("per-CPU map", per_cpu), ("shared map", shared)] {
        let per: Vec<f64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|cpu| {
                    s.spawn(move || {
                        pin_to(cpu);
                        run(fd, v4, REPEAT)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        report(
            &format!("tc {name}: same flow on 2 CPUs at once"),
            per.iter().sum::<f64>() / per.len() as f64,
        );
    }
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn replay_floor(loaded: &mut loader::Loaded, v4: &[u8]) {
    // The offline replay floor: one BPF_PROG_TEST_RUN call (repeat 1) of an empty TC program,
    // timed from userspace, syscall included.
    let empty = loaded.prog_fd(PROG_EMPTY_TC).expect("empty program");
    let ctx = devourer::kernel::sys::skb_ctx(1, 1, 0);
    let start = Instant::now();
    for _ in 0..CALLS {
        devourer::kernel::sys::test_run(empty, v4, &ctx).expect("test run");
    }
    let per = start.elapsed().as_nanos() as f64 / f64::from(CALLS);
    report("replay floor: empty TC test_run call", per);
}

/// The floor for replaying a capture: its frames, read and converted as `devourer read` does,
/// each fed once to the empty TC program with the same context.
fn replay_floor_file(loaded: &mut loader::Loaded, path: &std::path::Path) {
    use devourer::drivers::replay::pcapfile::{PcapFile, to_ethernet};
    let empty = loaded.prog_fd(PROG_EMPTY_TC).expect("empty program");
    let mut cap = PcapFile::open(path).expect("opening the capture");
    let mut frame = Vec::new();
    let mut n = 0u64;
    let start = Instant::now();
    while let Some(pkt) = cap.next_packet().expect("reading the capture") {
        let lt = cap.interfaces[pkt.iface].linktype;
        if to_ethernet(lt, &pkt.data, &mut frame).is_ok() {
            let ctx = devourer::kernel::sys::skb_ctx(pkt.ts_ns, pkt.iface as u32 + 1, 0);
            devourer::kernel::sys::test_run(empty, &frame, &ctx).expect("test run");
            n += 1;
        }
    }
    let per = start.elapsed().as_nanos() as f64 / n as f64;
    report("replay floor: empty TC test_run call", per);
}

fn scan(loaded: &mut loader::Loaded) {
    // Scanning the flow map with 100k entries: read only (all active), then evicting all.
    let tc = loaded.prog_fd(PROG_TC_INGRESS).unwrap();
    for i in 0..SCAN_FLOWS {
        let sport = (i % 60_000) as u16 + 1024;
        let dport = 443 + (i / 60_000) as u16;
        let pkt = eth(0x0800, &[], &ipv4(6, &tcp(sport, dport)));
        test_run_repeat(tc, &pkt, &[], 1).expect("test run");
    }
    let forever = u64::MAX / 4;
    let mut table = FlowTable::new(TableConfig {
        idle_timeout: forever,
        active_timeout: forever,
        tcp_linger: forever,
        evict_after: forever,
        max_flows: usize::MAX,
    });
    let now = devourer::base::time::monotonic_ns();
    let mut st = ScanStats::default();
    let start = Instant::now();
    table
        .scan(&mut loaded.flows, now, false, &mut st, &mut NoNames)
        .expect("scan");
    report("scan 100k flows: read", start.elapsed().as_nanos() as f64);
    assert_eq!(st.kernel_entries, SCAN_FLOWS as usize);
    let start = Instant::now();
    let out = table
        .flush(&mut loaded.flows, Status::Shutdown, &mut NoNames, now)
        .expect("flush");
    report(
        "scan 100k flows: evict all",
        start.elapsed().as_nanos() as f64,
    );
    assert_eq!(out.len(), SCAN_FLOWS as usize);
}
