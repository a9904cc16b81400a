//! Kernel cost per packet (root): devourer's TC and XDP programs, loaded as the live agent loads
//! them, run with BPF_PROG_TEST_RUN over packets of each kind, against a do-nothing program of
//! the same type measured in the same run. The kernel reports the mean time around the program.
//!
//! - existing flow: one packet repeated (the first run creates the entry, the rest update it);
//! - new flow: distinct packets, one run each (every run inserts), against the empty program
//!   run the same way;
//! - DNS: a port-53 query repeated (each run also copies the payload to the DNS ring);
//! - TLS: new flows whose first segment is a ClientHello (each run inserts, looks at the hello
//!   and copies it to the TLS ring), beside new flows of plain segments run the same way.
//!
//! - replay floor: a test_run call of the empty program, timed from userspace (with
//!   `--replay-floor FILE`: every frame of a capture, read and framed as `devourer read` does);
//! - scans of a map holding 100k flows (read, and evict everything);
//! - the candidates for the flow map side by side on the same frames and contexts: the agent's
//!   shared map (counting once per node), the per-CPU map the agent used before, and the
//!   closest peer's program (netobserv-ebpf-agent's `tc_ingress_flow_parse`, its prebuilt
//!   object from `../shared/peers/`), each existing-flow, new-flow and two-CPU case
//!   interleaved over three rounds.
//!
//! - the drop and retransmit programs, per event, from the kernel's own run-time statistics
//!   (BPF_STATS_RUN_TIME) while real events happen: datagrams to a closed loopback port (each
//!   freed as dropped), and a TCP transfer in a namespace of its own whose nftables rule drops
//!   data segments (each retransmitted). They run only on these events: nothing on the
//!   counting path.
//!
//! Prints one JSON object per case: {"case", "ns"}. Arguments pick sections (`--per-packet`,
//! `--events`, `--replay-floor`, `--scan`); none runs all.

use std::time::Instant;

use devourer::{
    flow::{FlowSource, FlowTable, NoNames, Reports, ScanStats, Status, TableConfig},
    kernel::{
        object::{
            self as loader, LoadOptions, PROG_CLOCK_TC, PROG_EMPTY_TC, PROG_EMPTY_XDP,
            PROG_TC_INGRESS, PROG_TC_LOOKUP, PROG_TC_PARSE, PROG_TC_PERCPU, PROG_XDP,
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
    tcp_with(sport, dport, &[0u8; 40])
}

fn tcp_with(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = sport.to_be_bytes().to_vec();
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

/// A ClientHello's record of 512 bytes, whole in one segment (its body zeros: the kernel reads
/// only the headers).
fn client_hello() -> Vec<u8> {
    let mut h = vec![0x16, 3, 1, 0x01, 0xfb, 1, 0, 0x01, 0xf7];
    h.resize(512, 0);
    h
}

/// Flows a TLS case opens: their hellos (about 600 bytes each in the ring) stay below the 4 MiB
/// ring.
const TLS_FLOWS: u16 = 6_000;

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
    opts.percpu_map_entries = 131_072;
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
        loaded
            .flows
            .take_all(&mut |_, _| {})
            .expect("emptying the flow map");
        // New flows whose first segment is a ClientHello, beside new flows of as long plain
        // segments, interleaved; each hello goes to the ring, emptied after.
        let hello = client_hello();
        let plain = vec![0u8; hello.len()];
        let (mut with_hello, mut without) = (0.0, 0.0);
        for i in 0..TLS_FLOWS {
            let a = eth(0x0800, &[], &ipv4(6, &tcp_with(1024 + i, 8443, &hello)));
            let b = eth(0x0800, &[], &ipv4(6, &tcp_with(1024 + i, 9443, &plain)));
            with_hello += run(prog, &a, 1);
            without += run(prog, &b, 1);
        }
        let k = f64::from(TLS_FLOWS);
        report(&format!("{hook} new flow, plain segment"), without / k);
        report(
            &format!("{hook} new flow, a ClientHello to the ring"),
            with_hello / k,
        );
        while loaded.tls.next().is_some() {}
        loaded
            .flows
            .take_all(&mut |_, _| {})
            .expect("emptying the flow map");
    }
    if want("--per-packet") {
        breakdown(&mut loaded, &v4);
        candidates(&mut loaded, &v4);
        rtt_sample(&opts, &v4);
    }

    if want("--events") {
        event_costs(&loaded);
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

/// What one smoothed-RTT sample costs the counting path: the agent's TC program loaded to
/// sample at every packet (the live agent samples a flow direction at most once per scan
/// interval), its socket lookup missing as test runs have no socket, beside the same program
/// sampling as the agent does.
fn rtt_sample(opts: &LoadOptions, v4: &[u8]) {
    let mut every = opts.clone();
    every.srtt_period_ns = 2;
    let sampling = loader::load_bench(&every).expect("loading (root?)");
    let fd = sampling.prog_fd(PROG_TC_INGRESS).unwrap();
    let ns = test_run_repeat(fd, v4, &[], REPEAT).expect("test run").1 as f64;
    report("tc existing flow, IPv4 TCP, RTT sampled every packet", ns);
}

/// (run time, runs) of a loaded program so far, as the kernel counts them.
fn runs(loaded: &loader::Loaded, name: &str) -> Option<(u64, u64)> {
    let info = loaded.ebpf.program(name)?.info().ok()?;
    Some((info.run_time().as_nanos() as u64, info.run_count()))
}

/// Mean ns per run of `name` over what `events` makes happen.
fn per_event(loaded: &loader::Loaded, name: &str, events: impl FnOnce()) -> Option<f64> {
    let (t0, n0) = runs(loaded, name)?;
    events();
    let (t1, n1) = runs(loaded, name)?;
    (n1 > n0).then(|| (t1 - t0) as f64 / (n1 - n0) as f64)
}

fn event_costs(loaded: &loader::Loaded) {
    // Run-time statistics are on while the fd is held.
    let Ok(_stats) = aya::sys::enable_stats(aya::sys::Stats::RunTime) else {
        eprintln!("no BPF run-time statistics on this kernel: event costs skipped");
        return;
    };
    let drops = per_event(loaded, "devourer_kfree_skb", || {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free port")
            .port();
        for _ in 0..20_000 {
            let _ = sock.send_to(&[0u8; 64], ("127.0.0.1", closed));
        }
    });
    if let Some(ns) = drops {
        report("drop program, per dropped packet", ns);
    }
    let retransmits = per_event(loaded, "devourer_tcp_retransmit", || {
        let ns = "dvbench-rtx";
        let script = format!(
            "ip netns add {ns} && ip -n {ns} link set lo up
             ip netns exec {ns} nft add table inet b
             ip netns exec {ns} nft add chain inet b in '{{ type filter hook input priority 0; }}'
             ip netns exec {ns} nft add rule inet b in tcp dport 7100 meta length gt 200 numgen random mod 10 == 0 drop
             ip netns exec {ns} timeout 60 python3 -c \"
import socket, threading
l = socket.socket(); l.bind(('127.0.0.1', 7100)); l.listen(1)
def serve():
    c, _ = l.accept()
    while c.recv(65536):
        pass
    c.close()
t = threading.Thread(target=serve); t.start()
s = socket.create_connection(('127.0.0.1', 7100))
s.sendall(b'x' * 3000000)
s.close()
t.join()
\"
             ip netns del {ns}"
        );
        let _ = std::process::Command::new("bash")
            .args(["-c", &script])
            .status();
    });
    if let Some(ns) = retransmits {
        report("retransmit program, per retransmission", ns);
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

/// What each step of the existing-flow path costs: programs that stop a step further each
/// (empty; reading the clock; parsing; looking the flow up; the agent's full program), on the
/// same frame and zeroed context, interleaved over three rounds (medians reported). The full
/// program runs once first so that the lookup finds its entry.
fn breakdown(loaded: &mut loader::Loaded, v4: &[u8]) {
    let mut steps = Vec::new();
    for (name, prog) in [
        ("empty", PROG_EMPTY_TC),
        ("clock", PROG_CLOCK_TC),
        ("parse", PROG_TC_PARSE),
        ("lookup", PROG_TC_LOOKUP),
        ("full", PROG_TC_INGRESS),
    ] {
        let fd = match loaded.prog_fd(prog) {
            Ok(fd) => fd,
            Err(_) => loaded.load_bench_program(prog).expect("breakdown program"),
        };
        steps.push((name, fd, Vec::new()));
    }
    let full = steps.last().map(|s| s.1).expect("full program");
    ns_per_run(full, v4, 1);
    for _ in 0..3 {
        for (_, fd, runs) in &mut steps {
            runs.push(ns_per_run(*fd, v4, REPEAT));
        }
    }
    for (name, _, mut runs) in steps {
        runs.sort_by(f64::total_cmp);
        report(&format!("breakdown {name}: existing flow"), runs[1]);
    }
    loaded
        .flows
        .take_all(&mut |_, _| {})
        .expect("emptying the flow map");
}

/// The closest peer's object, kept beside the repository (see its README).
const PEER_OBJECT: &str = "../../shared/peers/netobserv-ebpf-agent-56a7d35f.bpfel.o";
const PEER_PROGRAM: &str = "tc_ingress_flow_parse";

/// The peer's flow program, loaded as its README says (bpffs mounted, its pins removed before
/// and after), or why not.
struct Peer {
    _ebpf: aya::Ebpf,
    fd: i32,
    pins: Vec<std::path::PathBuf>,
}

impl Peer {
    fn load() -> Result<Self, String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(PEER_OBJECT);
        if !path.exists() {
            return Err(format!("{} not found", path.display()));
        }
        let bpffs = std::path::Path::new("/sys/fs/bpf");
        let mounted = std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf"))
        });
        if !mounted {
            let ok = std::process::Command::new("mount")
                .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err("cannot mount bpffs at /sys/fs/bpf".into());
            }
        }
        let before: Vec<_> = std::fs::read_dir(bpffs)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        let mut ebpf = aya::EbpfLoader::new()
            .allow_unsupported_maps()
            .load_file(&path)
            .map_err(|e| format!("loading the peer object: {e}"))?;
        let pins = std::fs::read_dir(bpffs)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| !before.contains(p))
                    .collect()
            })
            .unwrap_or_default();
        let prog: &mut aya::programs::SchedClassifier = ebpf
            .program_mut(PEER_PROGRAM)
            .ok_or("no tc_ingress_flow_parse")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        prog.load()
            .map_err(|e| format!("loading {PEER_PROGRAM}: {e}"))?;
        let fd = {
            use std::os::fd::{AsFd, AsRawFd};
            prog.fd().map_err(|e| format!("{e}"))?.as_fd().as_raw_fd()
        };
        Ok(Self {
            _ebpf: ebpf,
            fd,
            pins,
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        for p in &self.pins {
            let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir_all(p));
        }
    }
}

/// One test_run of `fd` over `pkt`, `n` times, with a zeroed `__sk_buff` context (the same
/// for every program here); the first call after a load may answer EINVAL.
fn ns_per_run(fd: i32, pkt: &[u8], n: u32) -> f64 {
    let ctx = [0u8; 192];
    match test_run_repeat(fd, pkt, &ctx, n) {
        Ok((_, ns)) => f64::from(ns),
        Err(_) => f64::from(test_run_repeat(fd, pkt, &ctx, n).expect("test run").1),
    }
}

/// The flow map's candidates side by side on the same frames and contexts, interleaved over
/// three rounds (design.md asks for both maps; issue: the peer in the same run): the agent's
/// shared map, the per-CPU map, the peer. Existing flow, new flow, and the same flow on two
/// CPUs at once (where a shared value's cache line moves between CPUs).
fn candidates(loaded: &mut loader::Loaded, v4: &[u8]) {
    let shared = loaded.prog_fd(PROG_TC_INGRESS).expect("tc program");
    let per_cpu = loaded
        .load_bench_program(PROG_TC_PERCPU)
        .expect("per-CPU-map program");
    let empty = loaded.prog_fd(PROG_EMPTY_TC).expect("empty program");
    let peer = Peer::load();
    if let Err(e) = &peer {
        eprintln!("the peer is not measured: {e}");
    }
    let mut progs = vec![("shared map", shared), ("per-CPU map", per_cpu)];
    if let Ok(p) = &peer {
        progs.push(("peer", p.fd));
    }
    progs.push(("empty", empty));
    for round in 1..=3 {
        for (name, fd) in &progs {
            report(
                &format!("candidates {name}: existing flow, round {round}"),
                ns_per_run(*fd, v4, REPEAT),
            );
        }
    }
    for (name, fd) in &progs {
        let (_, new, again) = one_run_each(&|_| 0.0, &|pkt| ns_per_run(*fd, pkt, 1));
        report(&format!("candidates {name}: new flow"), new);
        report(
            &format!("candidates {name}: existing flow, one run per packet"),
            again,
        );
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return;
    }
    for (name, fd) in &progs {
        let fd = *fd;
        let per: Vec<f64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|cpu| {
                    s.spawn(move || {
                        pin_to(cpu);
                        ns_per_run(fd, v4, REPEAT)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        report(
            &format!("candidates {name}: same flow on 2 CPUs at once"),
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
    let ctx = devourer::kernel::sys::skb_ctx(1, 1, 0, 0);
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
            let ctx = devourer::kernel::sys::skb_ctx(pkt.ts_ns, pkt.iface as u32 + 1, 0, 0);
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
        start_records: false,
        drain: false,
    });
    let now = devourer::base::time::monotonic_ns();
    let mut st = ScanStats::default();
    let start = Instant::now();
    table
        .scan(
            &mut loaded.flows,
            now,
            false,
            &mut st,
            &mut NoNames,
            &Reports::default(),
        )
        .expect("scan");
    report("scan 100k flows: read", start.elapsed().as_nanos() as f64);
    assert_eq!(st.kernel_entries, SCAN_FLOWS as usize);
    let start = Instant::now();
    let out = table
        .flush(
            &mut loaded.flows,
            Status::Shutdown,
            &mut NoNames,
            now,
            &Reports::default(),
        )
        .expect("flush");
    report(
        "scan 100k flows: evict all",
        start.elapsed().as_nanos() as f64,
    );
    assert_eq!(out.len(), SCAN_FLOWS as usize);
}
