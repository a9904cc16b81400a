//! Datapath overhead on a veth pair: machine CPU per received 64-byte UDP packet at a fixed
//! rate with no program, devourer (TC, XDP), an empty XDP program, tcpdump and softflowd; the
//! highest rate reached; TCP throughput. Rounds are interleaved and medians reported; each
//! ratio is also taken round by round (both sides of a round ran back to back), and its range
//! over the rounds says whether the two setups are told apart or not.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result, bail};

use super::{
    Row, bench_dir,
    net::{Pair, Proc, agent, machine_busy, median, spawn, spread},
    row,
};
use crate::workspace_root;

/// Rounds of the fixed-rate CPU measure: enough that a few-percent difference shows in every
/// round or is seen to come and go.
const CPU_ROUNDS: usize = 7;
/// Rounds of the highest-rate and TCP measures.
const ROUNDS: usize = 3;
/// Seconds per measurement (the whole benchmark stays under two minutes).
const SECS: &str = "2";

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    None,
    DevourerTc,
    DevourerXdp,
    EmptyXdp,
    EmptyTc,
    Tcpdump,
    Softflowd,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::None => "no program",
            Setup::DevourerTc => "devourer (TC)",
            Setup::DevourerXdp => "devourer (XDP)",
            Setup::EmptyXdp => "empty XDP program",
            Setup::EmptyTc => "empty TC programs",
            Setup::Tcpdump => "tcpdump -w /dev/null (libpcap)",
            Setup::Softflowd => "softflowd",
        }
    }

    /// Starts the program watching `vb` in the receiving namespace.
    fn start(self, pair: &Pair) -> Result<Option<Proc>> {
        let log = bench_dir().join(format!("datapath-{}.log", self as u8));
        let p = match self {
            Setup::None => return Ok(None),
            Setup::DevourerTc => agent(&pair.b, &["-i", "vb"], &log)?,
            Setup::DevourerXdp => agent(&pair.b, &["-i", "vb", "--mode", "xdp"], &log)?,
            Setup::EmptyXdp | Setup::EmptyTc => spawn(
                &pair.b,
                &workspace_root().join("target/release/examples/attach_empty"),
                &["vb", if self == Setup::EmptyXdp { "xdp" } else { "tc" }],
                &log,
                Some("attached"),
            )?,
            Setup::Tcpdump => spawn(
                &pair.b,
                "tcpdump".as_ref(),
                &["-i", "vb", "-n", "-w", "/dev/null"],
                &log,
                Some("listening on"),
            )?,
            // -d: stay in the foreground; export to a port nobody listens on.
            Setup::Softflowd => spawn(
                &pair.b,
                "softflowd".as_ref(),
                &["-d", "-i", "vb", "-n", "127.0.0.1:9995"],
                &log,
                None,
            )?,
        };
        Ok(Some(p))
    }
}

/// iperf3 from `a` to the server in `b`; returns the client's JSON report.
fn iperf(pair: &Pair, args: &[&str]) -> Result<serde_json::Value> {
    let out = pair
        .cmd(&pair.a, "iperf3")
        .args(["-c", "10.99.0.2", "-J", "-t", SECS])
        .args(args)
        .output()
        .context("running iperf3")?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("iperf3 -J printed no JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    Ok(v)
}

/// One measurement: (machine busy µs per received packet, received packets per second).
fn udp_round(pair: &Pair, setup: Setup, rate: &str) -> Result<(f64, f64)> {
    let p = setup.start(pair)?;
    std::thread::sleep(Duration::from_millis(300));
    let busy0 = machine_busy();
    let rx0 = pair.rx_packets();
    let t0 = std::time::Instant::now();
    iperf(pair, &["-u", "-l", "64", "-b", rate])?;
    let secs = t0.elapsed().as_secs_f64();
    let busy1 = machine_busy();
    let rx = (pair.rx_packets() - rx0) as f64;
    if let Some(p) = p {
        p.stop()?;
    }
    Ok(((busy1 - busy0) * 1e6 / rx.max(1.0), rx / secs))
}

pub fn run() -> Result<Vec<Row>> {
    if Command::new("softflowd").arg("-h").output().is_err() {
        bail!("softflowd is not installed (apt-get install softflowd)");
    }
    let pair = Pair::new()?;
    let _server = spawn(
        &pair.b,
        "iperf3".as_ref(),
        &["-s", "-B", "10.99.0.2"],
        &bench_dir().join("iperf3-server.log"),
        None,
    )?;
    let setups = [
        Setup::None,
        Setup::DevourerTc,
        Setup::DevourerXdp,
        Setup::EmptyXdp,
        Setup::EmptyTc,
        Setup::Tcpdump,
        Setup::Softflowd,
    ];
    let mut rows = Vec::new();

    // (a) Fixed rate: busy CPU of the whole machine per received packet.
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    let mut pps: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    for _ in 0..CPU_ROUNDS {
        for (i, s) in setups.iter().enumerate() {
            let (c, r) = udp_round(&pair, *s, "60M")?;
            cpu[i].push(c);
            pps[i].push(r);
        }
    }
    let med: Vec<f64> = cpu.iter().cloned().map(median).collect();
    let name = |i: usize| format!("{}, 60 Mbit/s UDP", setups[i].name());
    // (setup, baseline setup, what the comparison says)
    let (none, tc, xdp, empty_xdp, empty_tc) = (0, 1, 2, 3, 4);
    let compared = [
        (tc, none, "goal ≤ 1.05×"),
        (
            xdp,
            empty_xdp,
            "native XDP changes the veth datapath: compared with an empty XDP program",
        ),
        (empty_xdp, none, "native XDP on veth by itself"),
        (empty_tc, none, "the TC hooks alone (ingress and egress)"),
        (5, none, "what users would otherwise run"),
        (6, none, "what users would otherwise run"),
    ];
    rows.push(row(
        &name(none),
        med[none],
        "µs CPU/pkt",
        None,
        &format!(
            "baseline; {:.0} pkt/s received; {}",
            median(pps[none].clone()),
            spread(&cpu[none])
        ),
    ));
    for (i, b, note) in compared {
        rows.push(row(
            &name(i),
            med[i],
            "µs CPU/pkt",
            Some((&name(b), med[b])),
            &format!("{note}; {}", per_round(&cpu[i], &cpu[b])),
        ));
    }
    for (b, note) in [
        (empty_tc, "what counting adds to the hooks"),
        (5, "below 1 = devourer costs less"),
        (6, "below 1 = devourer costs less"),
    ] {
        rows.push(row(
            &format!("devourer (TC) vs {}", setups[b].name()),
            med[tc],
            "µs CPU/pkt",
            Some((setups[b].name(), med[b])),
            &format!("{note}; {}", per_round(&cpu[tc], &cpu[b])),
        ));
    }

    // (b) The highest rate the sender reaches, with and without devourer.
    let mut max: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (i, s) in [Setup::None, Setup::DevourerTc].into_iter().enumerate() {
            max[i].push(udp_round(&pair, s, "0")?.1);
        }
    }
    let (m0, m1) = (median(max[0].clone()), median(max[1].clone()));
    rows.push(row(
        "highest UDP rate, no program",
        m0,
        "pkt/s",
        None,
        "baseline; 64-byte packets",
    ));
    rows.push(row(
        "highest UDP rate, devourer (TC)",
        m1,
        "pkt/s",
        Some(("highest UDP rate, no program", m0)),
        "sender-bound here: expect ~1.0",
    ));

    // (c) TCP throughput.
    let mut tcp: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (i, s) in [Setup::None, Setup::DevourerTc, Setup::EmptyTc]
            .into_iter()
            .enumerate()
        {
            let p = s.start(&pair)?;
            let v = iperf(&pair, &[])?;
            if let Some(p) = p {
                p.stop()?;
            }
            let bps = v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .context("iperf3 TCP report without sum_received")?;
            tcp[i].push(bps / 1e9);
        }
    }
    let [t0, t1, t2] = tcp.map(median);
    rows.push(row(
        "TCP throughput, no program",
        t0,
        "Gbit/s",
        None,
        "baseline; one stream",
    ));
    rows.push(row(
        "TCP throughput, devourer (TC)",
        t1,
        "Gbit/s",
        Some(("TCP throughput, no program", t0)),
        "goal ~1.0",
    ));
    rows.push(row(
        "TCP throughput, empty TC programs",
        t2,
        "Gbit/s",
        Some(("TCP throughput, no program", t0)),
        "the TC hooks alone",
    ));
    Ok(rows)
}

/// Round-by-round ratios of `a` to `b` (measured back to back in each round): their range, and
/// whether it leaves 1 on one side.
fn per_round(a: &[f64], b: &[f64]) -> String {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = r.iter().copied().fold(0.0, f64::max);
    let verdict = if lo > 1.0 {
        "higher in every round"
    } else if hi < 1.0 {
        "lower in every round"
    } else {
        "not separable over these rounds"
    };
    format!(
        "per-round ratio {lo:.2}–{hi:.2} over {} rounds: {verdict}",
        r.len()
    )
}
