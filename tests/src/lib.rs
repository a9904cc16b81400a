//! Helpers for devourer's end-to-end tests: root checks, network namespaces joined by veth
//! pairs (cleaned up on drop), background processes, the devourer binary, and the oracle that
//! sums tshark's view of a capture per flow direction.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod bigquery;
pub mod frames;
pub mod k8s;
pub mod kafka;
pub mod node;
pub mod vm;

/// True when running as root; otherwise prints why the calling test skips.
pub fn require_root(test: &str) -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!(
        "SKIP {test}: needs root (loads BPF programs, creates network namespaces); run `cargo xtask test` as root"
    );
    false
}

/// The agent binary: $DEVOURER_BIN, else the one cargo built beside this test.
pub fn devourer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DEVOURER_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let bin = dir.join("devourer");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p devourer` first (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn sh(script: &str) -> Output {
    run(Command::new("bash").args(["-euo", "pipefail", "-c", script]))
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique, short name for namespaces and interfaces of this test process.
pub fn unique(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// A network namespace, deleted on drop (even when the test fails).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    pub fn sh(&self, script: &str) -> Output {
        run(self.cmd("bash").args(["-euo", "pipefail", "-c", script]))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill anything left running inside, then delete.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces joined by a veth pair, with IPv4 and IPv6 addresses, static neighbours (no
/// ARP/NDP chatter) and offloads off (every frame on the wire is one packet).
pub struct Link {
    pub a: Netns,
    pub b: Netns,
    pub if_a: String,
    pub if_b: String,
    pub ip4_a: String,
    pub ip4_b: String,
    pub ip6_a: String,
    pub ip6_b: String,
}

impl Link {
    pub fn new() -> Self {
        let a = Netns::new("dva");
        let b = Netns::new("dvb");
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 200 + 20;
        let if_a = format!("va{n}");
        let if_b = format!("vb{n}");
        let (ip4_a, ip4_b) = (format!("10.{n}.0.1"), format!("10.{n}.0.2"));
        let (ip6_a, ip6_b) = (format!("fd00:{n}::1"), format!("fd00:{n}::2"));
        sh(&format!(
            "ip link add {if_a} netns {na} type veth peer name {if_b} netns {nb}",
            na = a.name,
            nb = b.name
        ));
        for (ns, ifc, me4, me6) in [(&a, &if_a, &ip4_a, &ip6_a), (&b, &if_b, &ip4_b, &ip6_b)] {
            ns.sh(&format!(
                "sysctl -qw net.ipv6.conf.{ifc}.accept_ra=0 net.ipv6.conf.{ifc}.router_solicitations=0 \
                   net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.{ifc}.accept_dad=0
                 ip addr add {me4}/24 dev {ifc}
                 ip addr add {me6}/64 dev {ifc} nodad
                 ethtool -K {ifc} tso off gso off gro off tx off rx off >/dev/null 2>&1 || true
                 ip link set {ifc} up"
            ));
        }
        let mac = |ns: &Netns, ifc: &str| {
            let out = ns.sh(&format!("cat /sys/class/net/{ifc}/address"));
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let (mac_a, mac_b) = (mac(&a, &if_a), mac(&b, &if_b));
        a.sh(&format!(
            "ip neigh replace {ip4_b} lladdr {mac_b} dev {if_a} nud permanent
             ip neigh replace {ip6_b} lladdr {mac_b} dev {if_a} nud permanent"
        ));
        b.sh(&format!(
            "ip neigh replace {ip4_a} lladdr {mac_a} dev {if_b} nud permanent
             ip neigh replace {ip6_a} lladdr {mac_a} dev {if_b} nud permanent"
        ));
        Self {
            a,
            b,
            if_a,
            if_b,
            ip4_a,
            ip4_b,
            ip6_a,
            ip6_b,
        }
    }

    /// The four test addresses: flows between them are what tests compare.
    pub fn addrs(&self) -> Vec<String> {
        vec![
            self.ip4_a.clone(),
            self.ip4_b.clone(),
            self.ip6_a.clone(),
            self.ip6_b.clone(),
        ]
    }
}

impl Default for Link {
    fn default() -> Self {
        Self::new()
    }
}

/// A background process, killed on drop.
pub struct Bg {
    pub child: Option<Child>,
    pub what: String,
}

impl Bg {
    pub fn spawn(mut cmd: Command, what: &str) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        Self {
            child: Some(child),
            what: what.into(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Sends `sig` and waits up to `timeout` for the exit; returns its output.
    pub fn stop(mut self, sig: i32, timeout: Duration) -> Output {
        self.signal(sig);
        let child = self.child.take().expect("running");
        let (tx, rx) = std::sync::mpsc::channel();
        let pid = child.id() as i32;
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(timeout) {
            Ok(out) => out.unwrap_or_else(|e| panic!("waiting for {}: {e}", self.what)),
            Err(_) => {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!(
                    "{} did not exit within {timeout:?} after signal {sig}",
                    self.what
                )
            }
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits up to `timeout` until a socket listens on `port` (`transport` `tcp` or `udp`) in `ns`
/// (`None`: this namespace); panics naming `what` when none does.
pub fn await_listener(
    ns: Option<&Netns>,
    transport: &str,
    port: u16,
    timeout: Duration,
    what: &str,
) {
    let flag = if transport == "udp" { "u" } else { "t" };
    let query = format!("ss -Hl{flag}n 'sport = :{port}'");
    let bound = wait_for(timeout, || {
        !ns.map_or_else(|| sh(&query), |n| n.sh(&query))
            .stdout
            .is_empty()
    });
    assert!(bound, "{what} listening on {port}");
}

/// Starts tcpdump writing `file` in `ns` and waits until it is capturing.
pub fn tcpdump(ns: &Netns, iface: &str, file: &Path) -> Bg {
    let mut cmd = ns.cmd("tcpdump");
    cmd.args([
        "-i",
        iface,
        "-n",
        "-U",
        "--immediate-mode",
        "-B",
        "65536",
        "-s",
        "0",
        "-w",
    ])
    .arg(file)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut bg = Bg::spawn(cmd, "tcpdump");
    let stderr = bg
        .child
        .as_mut()
        .and_then(|c| c.stderr.take())
        .expect("tcpdump stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("tcpdump started listening");
    bg
}

/// Starts a web server (`python3 -m http.server`, port 8000) and an iperf3 server (port 5201)
/// in `ns` and waits until both listen. They stop when the returned guards drop.
pub fn start_servers(ns: &Netns) -> [Bg; 2] {
    let quiet = |mut c: Command| {
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c
    };
    let mut web = ns.cmd("python3");
    web.args(["-m", "http.server", "8000", "--bind", "::"])
        .current_dir(std::env::temp_dir());
    let mut iperf = ns.cmd("iperf3");
    iperf.args(["-s", "-p", "5201"]);
    let servers = [
        Bg::spawn(quiet(web), "http.server"),
        Bg::spawn(quiet(iperf), "iperf3 -s"),
    ];
    let listening = wait_for(Duration::from_secs(10), || {
        ns.cmd("bash")
            .args([
                "-c",
                "ss -ltn | grep -q ':8000 ' && ss -ltn | grep -q ':5201 '",
            ])
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(listening, "servers did not start listening");
    servers
}

/// Runs `devourer capture ARGS` in `ns`, records to `out` (or nowhere), logs to `log`; returns
/// once the agent says it is capturing.
pub fn start_capture(ns: &Netns, args: &[&str], out: Option<&Path>, log: &Path) -> Bg {
    start_capture_env(ns, args, out, log, &[])
}

/// Timeouts short enough that a test sees idle flows within about a second.
pub const QUICK_TIMEOUTS: [&str; 6] = [
    "--idle-timeout",
    "1s",
    "--evict-after",
    "300ms",
    "--scan-interval",
    "200ms",
];

/// How long an agent may take to load its programs and attach: 20 s, or
/// `DEVOURER_START_TIMEOUT_SECS` (the kernel matrix's VMs emulate their CPU, and an old
/// kernel's verifier takes its time there).
pub fn start_timeout() -> Duration {
    let secs = std::env::var("DEVOURER_START_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

/// [`start_capture`] with extra environment variables.
pub fn start_capture_env(
    ns: &Netns,
    args: &[&str],
    out: Option<&Path>,
    log: &Path,
    env: &[(&str, &str)],
) -> Bg {
    let mut cmd = ns.cmd(devourer_bin());
    cmd.arg("capture")
        .args(args)
        .env("DEVOURER_LOG", "info")
        .envs(env.iter().copied())
        .stdout(match out {
            Some(p) => Stdio::from(std::fs::File::create(p).expect("stdout file")),
            None => Stdio::null(),
        })
        .stderr(std::fs::File::create(log).expect("log file"));
    let bg = Bg::spawn(cmd, "devourer capture");
    let ready = wait_for(start_timeout(), || {
        std::fs::read_to_string(log).is_ok_and(|l| l.contains("capturing"))
    });
    assert!(
        ready,
        "agent did not start:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    bg
}

/// The value of the series of `/metrics` text named exactly `series` (labels included).
pub fn series(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A GET in `ns` with a 1 s limit (a kubelet probe's): the status code (0: no answer) and body.
pub fn http_get(ns: &Netns, url: &str) -> (u16, String) {
    http_get_in(&ns.name, url)
}

fn http_get_in(ns: &str, url: &str) -> (u16, String) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-m",
            "1",
            "-w",
            "\n%{http_code}",
            url,
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Probes a URL as kubelet does (every 0.5 s, 1 s to answer) on a thread, until stopped.
pub struct Prober {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u32, u32)>,
}

impl Prober {
    pub fn start(ns: &Netns, url: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, ns, url) = (stop.clone(), ns.name.clone(), url.to_owned());
        let thread = std::thread::spawn(move || {
            let (mut probes, mut answered) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                probes += 1;
                if http_get_in(&ns, &url).0 == 200 {
                    answered += 1;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            (probes, answered)
        });
        Self { stop, thread }
    }

    /// Probes sent and probes answered with 200.
    pub fn stop(self) -> (u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("prober")
    }
}

/// About 500 new UDP flows and 500 DNS queries (unanswered: `lost` records) a second from
/// `ns` to `server`, for `secs` seconds.
pub fn udp_and_dns_load(ns: &Netns, server: &str, secs: u32) -> Bg {
    let script = format!(
        r#"
import socket, struct, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.time() + {secs}
n = 0
while time.time() < end:
    for _ in range(5):
        u.sendto(b'x', ('{server}', 10000 + n % 50000))
        q = struct.pack('>HHHHHH', n % 65536, 0x0100, 1, 0, 0, 0)
        for label in (b'q%d' % n, b'stall', b'test'):
            q += bytes([len(label)]) + label
        q += b'\x00\x00\x01\x00\x01'
        d.sendto(q, ('{server}', 53))
        n += 1
    time.sleep(0.01)
"#
    );
    let mut cmd = ns.cmd("python3");
    cmd.args(["-c", &script]);
    Bg::spawn(cmd, "traffic")
}

/// Waits until `f` is true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// One direction of a flow as both sides can name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DirKey {
    pub src: String,
    pub dst: String,
    pub sport: u16,
    pub dport: u16,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub bytes: u64,
    pub packets: u64,
}

pub type Sums = BTreeMap<DirKey, Counts>;

/// The oracle: tshark's per-direction sums of IP-layer bytes (`ip.len`, `ipv6.plen` + 40) and
/// packets, with IP reassembly off. Ports only for TCP/UDP right after the IP header (not the
/// quoted header inside ICMP errors, not non-first fragments). Only flows whose both addresses
/// are in `addrs` (when given) are kept. Also returns the L4 protocol tshark saw per key.
pub fn tshark_sums(pcap: &Path, addrs: Option<&[String]>) -> (Sums, BTreeMap<DirKey, String>) {
    let fields = [
        "frame.protocols",
        "vlan.id",
        "ip.src",
        "ip.dst",
        "ip.len",
        "ip.proto",
        "ipv6.src",
        "ipv6.dst",
        "ipv6.plen",
        "tcp.srcport",
        "tcp.dstport",
        "udp.srcport",
        "udp.dstport",
        "ieee8021ad.id",
    ];
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(pcap)
        .args([
            "-n",
            "-o",
            "ip.defragment:FALSE",
            "-o",
            "ipv6.defragment:FALSE",
        ])
        .args(["-T", "fields", "-E", "separator=\t", "-E", "occurrence=f"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = run(&mut cmd);
    let mut sums = Sums::new();
    let mut protos = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let c: Vec<&str> = line.split('\t').collect();
        let get = |i: usize| c.get(i).copied().unwrap_or("");
        let layers: Vec<&str> = get(0).split(':').collect();
        let Some(ip_at) = layers.iter().position(|l| *l == "ip" || *l == "ipv6") else {
            continue;
        };
        let v6 = layers[ip_at] == "ipv6";
        // The first layer after the IP header and its extension headers.
        let l4 = layers[ip_at + 1..]
            .iter()
            .find(|l| !l.starts_with("ipv6."))
            .copied()
            .unwrap_or("");
        let (src, dst, bytes) = if v6 {
            let plen: u64 = get(8).parse().unwrap_or(0);
            (get(6), get(7), plen + 40)
        } else {
            (get(2), get(3), get(4).parse().unwrap_or(0))
        };
        if let Some(a) = addrs
            && !(a.iter().any(|x| x == src) && a.iter().any(|x| x == dst))
        {
            continue;
        }
        let (sport, dport) = match l4 {
            "tcp" => (get(9).parse().unwrap_or(0), get(10).parse().unwrap_or(0)),
            "udp" => (get(11).parse().unwrap_or(0), get(12).parse().unwrap_or(0)),
            _ => (0, 0),
        };
        let key = DirKey {
            src: src.into(),
            dst: dst.into(),
            sport,
            dport,
        };
        let e = sums.entry(key.clone()).or_default();
        e.bytes += bytes;
        e.packets += 1;
        let proto = match l4 {
            "tcp" | "udp" | "icmp" | "icmpv6" => l4.to_owned(),
            _ if !v6 => get(5).to_owned(),
            _ => String::new(),
        };
        protos.entry(key).or_insert(proto);
    }
    (sums, protos)
}

/// Parses devourer's JSON lines.
pub fn records(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// devourer's per-direction sums over all records (continuations included).
pub fn devourer_sums(recs: &[Value], addrs: Option<&[String]>) -> Sums {
    let mut sums = Sums::new();
    for r in recs.iter().filter(|r| r["type"] == "flow") {
        let s = |f: &str| {
            r[f].as_str()
                .unwrap_or_else(|| panic!("{f} in {r}"))
                .to_owned()
        };
        let n = |f: &str| r[f].as_u64().unwrap_or_else(|| panic!("{f} in {r}"));
        let (src, dst) = (s("src_addr"), s("dst_addr"));
        if let Some(a) = addrs
            && !(a.contains(&src) && a.contains(&dst))
        {
            continue;
        }
        let (sp, dp) = (n("src_port") as u16, n("dst_port") as u16);
        for (k, b, p) in [
            (
                DirKey {
                    src: src.clone(),
                    dst: dst.clone(),
                    sport: sp,
                    dport: dp,
                },
                n("src_bytes"),
                n("src_packets"),
            ),
            (
                DirKey {
                    src: dst.clone(),
                    dst: src.clone(),
                    sport: dp,
                    dport: sp,
                },
                n("dst_bytes"),
                n("dst_packets"),
            ),
        ] {
            if p > 0 {
                let e = sums.entry(k).or_default();
                e.bytes += b;
                e.packets += p;
            }
        }
    }
    sums
}

/// Asserts two per-direction sums are equal, listing every difference.
pub fn assert_same_sums(devourer: &Sums, oracle: &Sums, what: &str) {
    let mut diffs = Vec::new();
    for (k, o) in oracle {
        match devourer.get(k) {
            Some(d) if d == o => {}
            other => diffs.push(format!("  {k:?}: tshark {o:?}, devourer {other:?}")),
        }
    }
    for (k, d) in devourer {
        if !oracle.contains_key(k) {
            diffs.push(format!("  {k:?}: tshark none, devourer {d:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} of {} directions differ:\n{}",
        diffs.len(),
        oracle.len(),
        diffs.join("\n")
    );
    assert!(
        !oracle.is_empty(),
        "{what}: the oracle saw no traffic at all"
    );
}

/// A scratch directory under the target dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        let p = std::env::temp_dir().join(unique(&format!("devourer-{what}-")));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("DEVOURER_KEEP_TEST_FILES").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs `devourer read FILE ARGS...`; returns (exit status, stdout, stderr).
pub fn devourer_read(file: &Path, args: &[&str]) -> (std::process::ExitStatus, Vec<u8>, String) {
    devourer_read_env(file, args, &[])
}

/// [`devourer_read`] with extra environment variables.
pub fn devourer_read_env(
    file: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, Vec<u8>, String) {
    let out = Command::new(devourer_bin())
        .arg("read")
        .arg(file)
        .args(["--agent-name", "test-agent"])
        .args(args)
        .env("DEVOURER_LOG", "info")
        .envs(env.iter().copied())
        .output()
        .expect("running devourer read");
    (
        out.status,
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// JSON lines sorted: the set of records of a run (a replay on several threads fills the
/// kernel's map in another order, and records of one scan come out in the map's order).
pub fn sorted_lines(out: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(out)
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

/// `devourer read` on one feeding thread and on `threads`: the same records, ids included.
/// Returns how many packets the other threads fed in the second run.
pub fn assert_threads_agree(file: &Path, args: &[&str], threads: u8) -> u64 {
    let run = |n: u8| {
        let n = n.to_string();
        let all: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--replay-threads", &n])
            .collect();
        let (status, stdout, stderr) = devourer_read(file, &all);
        assert!(status.success(), "{all:?}: {status}\n{stderr}");
        (sorted_lines(&stdout), stderr)
    };
    let (one, _) = run(1);
    let (many, stderr) = run(threads);
    assert!(!one.is_empty(), "{} gave records", file.display());
    assert_eq!(
        one.len(),
        many.len(),
        "{} on 1 and {threads} threads",
        file.display()
    );
    for (a, b) in one.iter().zip(&many) {
        assert_eq!(a, b, "{} on 1 and {threads} threads", file.display());
    }
    log_number(&stderr, "replayed_elsewhere").expect("the replay summary")
}

/// A `key=value` number from devourer's summary log lines (stderr).
pub fn log_number(stderr: &str, key: &str) -> Option<u64> {
    let needle = format!("{key}=");
    stderr.lines().rev().find_map(|l| {
        let plain = strip_ansi(l);
        let at = plain.find(&format!(" {needle}"))?;
        let rest = &plain[at + 1 + needle.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A conversation: protocol and both endpoints (address, port), in order.
pub type Conversation = (String, [(String, u64); 2]);

/// tshark's Community ID of each conversation (TCP, UDP, ICMP and ICMPv6 echo).
pub fn tshark_community_ids(
    pcap: &Path,
) -> std::collections::BTreeMap<Conversation, std::collections::BTreeSet<String>> {
    let out = run(Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-n", "--enable-protocol", "communityid"])
        .args(["-T", "fields", "-E", "separator=\t", "-E", "occurrence=f"])
        .args([
            "-e",
            "communityid",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.src",
        ])
        .args(["-e", "ipv6.dst", "-e", "tcp.srcport", "-e", "tcp.dstport"])
        .args(["-e", "udp.srcport", "-e", "udp.dstport", "-e", "icmp.type"])
        .args(["-e", "icmpv6.type"]));
    let mut ids: std::collections::BTreeMap<_, std::collections::BTreeSet<String>> =
        Default::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 11 || f[0].is_empty() {
            continue;
        }
        let (src, dst) = if f[1].is_empty() {
            (f[3], f[4])
        } else {
            (f[1], f[2])
        };
        let port = |s: &str| s.parse::<u64>().unwrap_or(0);
        let (proto, sp, dp) = if !f[5].is_empty() {
            ("tcp", port(f[5]), port(f[6]))
        } else if !f[7].is_empty() {
            ("udp", port(f[7]), port(f[8]))
        } else if matches!(f[9], "0" | "8") {
            ("icmp", 0, 0)
        } else if matches!(f[10], "128" | "129") {
            ("icmpv6", 0, 0)
        } else {
            continue;
        };
        let mut ends = [(src.to_owned(), sp), (dst.to_owned(), dp)];
        ends.sort();
        ids.entry((proto.to_owned(), ends))
            .or_default()
            .insert(f[0].to_owned());
    }
    ids
}

/// Every TCP, UDP and echo record's `community_id` is the one tshark gives its packets.
pub fn community_ids_match_tshark(pcap: &Path, recs: &[Value]) {
    let oracle = tshark_community_ids(pcap);
    let mut checked = std::collections::BTreeSet::new();
    for r in recs.iter().filter(|r| r["type"] == "flow") {
        let proto = r["protocol"].as_str().unwrap();
        let echo = matches!(r["icmp_type"].as_u64(), Some(0 | 8 | 128 | 129));
        if !(matches!(proto, "tcp" | "udp") || echo) {
            continue;
        }
        let end = |a: &str, p: &str| (r[a].as_str().unwrap().to_owned(), r[p].as_u64().unwrap());
        let mut ends = [end("src_addr", "src_port"), end("dst_addr", "dst_port")];
        ends.sort();
        let want = oracle
            .get(&(proto.to_owned(), ends.clone()))
            .unwrap_or_else(|| panic!("tshark has no Community ID for {r}"));
        assert_eq!(want.len(), 1, "one conversation, one id: {want:?}");
        assert_eq!(
            r["community_id"].as_str(),
            want.iter().next().map(String::as_str),
            "{r}"
        );
        checked.insert(proto.to_owned());
    }
    for p in ["tcp", "udp", "icmp", "icmpv6"] {
        assert!(checked.contains(p), "no {p} record checked: {checked:?}");
    }
}

/// Generates the real traffic mix from namespace A to B (ping over IPv4 and IPv6, curl to a
/// web server, iperf3, UDP to many ports), with a capture (tcpdump, or dumpcap for pcapng)
/// running on B's side.
pub fn capture_mix(link: &Link, pcap: &std::path::Path, pcapng: bool) {
    let b = &link.b;
    let servers = start_servers(b);
    let (ip4b, ip6b) = (&link.ip4_b, &link.ip6_b);
    let cap = if pcapng {
        let mut c = b.cmd("dumpcap");
        c.args(["-q", "-i", &link.if_b, "-w"])
            .arg(pcap)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let bg = Bg::spawn(c, "dumpcap");
        assert!(
            wait_for(Duration::from_secs(10), || pcap
                .metadata()
                .is_ok_and(|m| m.len() > 0)),
            "dumpcap writing"
        );
        std::thread::sleep(Duration::from_millis(500));
        bg
    } else {
        tcpdump(b, &link.if_b, pcap)
    };
    link.a.sh(&format!(
        "ping -c 4 -i 0.2 -s 200 {ip4b} >/dev/null
         ping -6 -c 3 -i 0.2 {ip6b} >/dev/null
         curl -sf -o /dev/null http://{ip4b}:8000/
         curl -sf -o /dev/null 'http://[{ip6b}]:8000/'
         iperf3 -c {ip4b} -p 5201 -n 2M -l 16K >/dev/null
         python3 - <<'EOF'
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in range(20000, 20120):
    s.sendto(b'x' * (port % 97), ('{ip4b}', port))
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for port in range(21000, 21030):
    s6.sendto(b'y' * 40, ('{ip6b}', port))
EOF
         sleep 0.5"
    ));
    // SIGINT lets both capture tools flush their files.
    cap.stop(libc::SIGINT, Duration::from_secs(10));
    drop(servers);
}
