//! Benchmark plumbing: a veth pair between two namespaces, the agent and other processes in
//! them, generated captures, tcpreplay, and CPU and memory read from /proc.

use std::{
    io::Write,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::devourer_bin;

pub fn sh(script: &str) -> Result<()> {
    let st = Command::new("bash").args(["-euc", script]).status()?;
    if !st.success() {
        bail!("{script}: {st}");
    }
    Ok(())
}

/// Namespaces `a` (sender, 10.99.0.1, fd99::1) and `b` (receiver, 10.99.0.2, fd99::2) joined
/// by veth `va`/`vb`; removed on drop.
pub struct Pair {
    pub a: String,
    pub b: String,
}

impl Pair {
    pub fn new() -> Result<Self> {
        let pid = std::process::id();
        let p = Self {
            a: format!("dvbench-a{pid}"),
            b: format!("dvbench-b{pid}"),
        };
        let (a, b) = (&p.a, &p.b);
        sh(&format!(
            "ip netns add {a}; ip netns add {b}
             ip link add va netns {a} type veth peer name vb netns {b}
             ip -n {a} addr add 10.99.0.1/24 dev va; ip -n {b} addr add 10.99.0.2/24 dev vb
             ip -n {a} addr add fd99::1/64 dev va nodad; ip -n {b} addr add fd99::2/64 dev vb nodad
             ip -n {a} link set va up; ip -n {b} link set vb up
             ip -n {a} link set lo up; ip -n {b} link set lo up
             ip -n {a} neigh replace 10.99.0.2 lladdr $(ip netns exec {b} cat /sys/class/net/vb/address) dev va
             ip -n {b} neigh replace 10.99.0.1 lladdr $(ip netns exec {a} cat /sys/class/net/va/address) dev vb"
        ))?;
        Ok(p)
    }

    pub fn cmd(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Packets received on `vb` so far.
    pub fn rx_packets(&self) -> u64 {
        self.cmd(&self.b, "cat")
            .arg("/sys/class/net/vb/statistics/rx_packets")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A process started for a benchmark, killed on drop.
pub struct Proc {
    pub child: Child,
    pub log: std::path::PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, wait (up to 30 s), return the log.
    pub fn stop(mut self) -> Result<String> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let start = Instant::now();
        while self.child.try_wait()?.is_none() {
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program args` in namespace `ns`, logging to `log`; waits until the log shows
/// `ready` (when given) or a moment passes.
pub fn spawn(
    ns: &str,
    program: &Path,
    args: &[&str],
    log: &Path,
    ready: Option<&str>,
) -> Result<Proc> {
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .env("DEVOURER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let p = Proc {
        child,
        log: log.to_path_buf(),
    };
    match ready {
        Some(word) => {
            let start = Instant::now();
            while !std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains(word)
            {
                if start.elapsed() > Duration::from_secs(30) {
                    bail!(
                        "{} did not start: {}",
                        program.display(),
                        std::fs::read_to_string(log)?
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        None => std::thread::sleep(Duration::from_millis(700)),
    }
    Ok(p)
}

/// The agent in `ns`; `args` come after `capture`. Records go to /dev/null unless `args`
/// name an `--output`.
pub fn agent(ns: &str, args: &[&str], log: &Path) -> Result<Proc> {
    let mut all = vec!["capture", "--metrics-addr", "off"];
    if !args.contains(&"--output") {
        all.extend(["--output", "/dev/null"]);
    }
    all.extend(args);
    spawn(ns, &devourer_bin(), &all, log, Some("capturing"))
}

/// CPU seconds the threads of a process have run: the scheduler's own nanosecond counts in
/// /proc/PID/task/*/schedstat (tick-sampled utime/stime are unreliable on these VMs).
pub fn proc_cpu_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// Resident memory of a process, KiB.
pub fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Busy CPU seconds of the whole machine so far: wall time × CPUs − idle time, both from
/// /proc/uptime. On these VMs the user/system tick counts of /proc/stat swing by 2-4× between
/// identical runs, while idle time is steady.
pub fn machine_busy() -> f64 {
    let up = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let mut f = up.split_whitespace().filter_map(|v| v.parse::<f64>().ok());
    let (wall, idle) = (f.next().unwrap_or(0.0), f.next().unwrap_or(0.0));
    let cpus = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    wall * cpus as f64 - idle
}

/// An Ethernet/IPv4/UDP frame (checksums zero).
pub fn udp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let udp_len = 8 + payload;
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00, 0x45, 0];
    f.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(f.len() + payload, 0);
    f
}

/// Writes frames as a pcap, `gap_us` apart from 1.7e9 s.
pub fn write_pcap(path: &Path, frames: impl Iterator<Item = Vec<u8>>, gap_us: u64) -> Result<u64> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    f.write_all(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0])?;
    f.write_all(&65_535u32.to_le_bytes())?;
    f.write_all(&1u32.to_le_bytes())?;
    let mut n = 0u64;
    for frame in frames {
        let us = 1_700_000_000_000_000 + n * gap_us;
        f.write_all(&((us / 1_000_000) as u32).to_le_bytes())?;
        f.write_all(&((us % 1_000_000) as u32).to_le_bytes())?;
        f.write_all(&(frame.len() as u32).to_le_bytes())?;
        f.write_all(&(frame.len() as u32).to_le_bytes())?;
        f.write_all(&frame)?;
        n += 1;
    }
    f.flush()?;
    Ok(n)
}

/// UDP flows `first..first + count` from 10.99.0.1 to 10.99.0.2, one packet each (distinct
/// source and destination ports). The MAC addresses are made up: TC and XDP see the frames
/// before the receiver discards them.
pub fn unique_flows(first: u32, count: u32) -> impl Iterator<Item = Vec<u8>> {
    (first..first + count).map(|i| {
        udp_frame(
            [10, 99, 0, 1],
            [10, 99, 0, 2],
            (1024 + i % 60_000) as u16,
            (10_000 + i / 60_000) as u16,
            18,
        )
    })
}

/// tcpreplay of `pcap` out of `va` (so `vb` receives it); returns (packets sent, achieved pps).
pub fn tcpreplay(pair: &Pair, pcap: &Path, pps: Option<u64>) -> Result<(u64, f64)> {
    let speed = match pps {
        Some(p) => format!("--pps={p}"),
        None => "--topspeed".into(),
    };
    let out = pair
        .cmd(&pair.a, "tcpreplay")
        .args(["-i", "va", &speed])
        .arg(pcap)
        .output()
        .context("running tcpreplay (Debian package tcpreplay)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |needle: &str, unit: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split(',').find(|p| p.contains(unit)))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let sent = text
        .lines()
        .find(|l| l.trim_start().starts_with("Actual:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok((sent, field("Rated:", "pps").unwrap_or(0.0)))
}

/// The range of one setup's figures over the rounds.
pub fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    format!("rounds {lo:.2}–{hi:.2}")
}

/// The median of three or more samples.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
