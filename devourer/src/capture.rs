//! Live capture (`devourer capture`): attaches to interfaces, scans the flow map on a timer and
//! on map-full wake-ups, and on SIGINT/SIGTERM detaches and flushes every open flow.

use std::{collections::HashMap, time::Duration};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    config::CaptureArgs,
    dns::decode_event,
    flow::Status,
    loader::{self, TcLink},
    local::LocalAddrs,
    pipeline::{Pipeline, report_kernel},
    record::Clock,
    sink::JsonLinesSink,
};

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and a writable timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel program stamps packets with `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Maps CLOCK_MONOTONIC to wall time; re-read each scan so clock steps are followed.
fn wall_clock() -> Clock {
    let real = clock_ns(libc::CLOCK_REALTIME) as i128;
    let mono = monotonic_ns() as i128;
    Clock {
        offset_ns: real - mono,
    }
}

/// How often this host's addresses are re-read (they decide DNS roles).
const LOCAL_REFRESH: Duration = Duration::from_secs(30);

/// The BigQuery sink when `--bq-project-id`/`--bq-dataset` ask for one.
pub fn start_bq(args: &crate::config::BqArgs) -> Result<Option<crate::bq::BqSink>> {
    match args.config().map_err(anyhow::Error::msg)? {
        Some(cfg) => Ok(Some(crate::bq::BqSink::start(cfg)?)),
        None => Ok(None),
    }
}

pub fn run(args: CaptureArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: CaptureArgs) -> Result<()> {
    let ifaces = if args.all_interfaces {
        let up = loader::up_interfaces().context("listing interfaces in /sys/class/net")?;
        if up.is_empty() {
            bail!("--all-interfaces: no interface other than loopback is up");
        }
        up
    } else if args.interfaces.is_empty() {
        bail!("no interface to monitor: pass -i IFACE (repeatable) or --all-interfaces");
    } else {
        args.interfaces.clone()
    };
    for iface in &ifaces {
        loader::ifindex(iface)?;
    }
    let flow = &args.flow;
    let mut loaded =
        loader::load(&args.dns.load_options(false, flow)).context("loading the kernel program")?;

    let link = if args.tc_netlink {
        TcLink::Netlink
    } else {
        loader::default_tc_link()
    };
    let mut names = HashMap::new();
    for iface in &ifaces {
        let a = loader::attach(&mut loaded.ebpf, iface, flow.mode, link)
            .with_context(|| format!("monitoring {iface}"))?;
        tracing::info!(interface = %a.iface, ifindex = a.ifindex, hooks = ?a.hooks, "attached");
        names.insert(a.ifindex, a.iface);
    }

    let sink = match flow.target() {
        Some(t) => Some(
            JsonLinesSink::start(
                &t,
                (args.output_queue / 256).max(4),
                false,
                Duration::from_secs(1),
            )
            .with_context(|| format!("opening output {t:?}"))?,
        ),
        None => None,
    };
    let mut pipeline = Pipeline::new(flow.table_config(), sink, flow.agent(), wall_clock());
    pipeline.bq = start_bq(&args.bq)?;
    pipeline.names = names;
    let mut local = LocalAddrs::new(args.dns.local_nets.clone());
    local
        .refresh_from_interfaces()
        .context("listing this host's addresses")?;
    let (dns, dns_log) = args
        .dns
        .build(local)
        .context("opening the DNS log directory")?;
    pipeline.dns = dns;
    pipeline.dns_log = dns_log;
    let mut last_local_refresh = std::time::Instant::now();

    // SAFETY (both): each ring buffer owns its map fd for as long as its AsyncFd owns it.
    let mut wake = unsafe { AsyncFd::register_with_interest(loaded.wakeup, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("polling the wake-up ring")?;
    let mut dns_ring = unsafe { AsyncFd::register_with_interest(loaded.dns, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("polling the DNS ring")?;
    let mut tick = tokio::time::interval(flow.scan_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut last_map_full = 0;
    tracing::info!(
        mode = %flow.mode,
        idle_timeout = ?flow.idle_timeout,
        active_timeout = ?flow.active_timeout,
        "capturing"
    );

    let reason = loop {
        let pressure = tokio::select! {
            guard = dns_ring.readable_mut() => {
                let mut guard = guard.context("waiting on the DNS ring")?;
                let ring = guard.get_inner_mut();
                // Drain everything before clearing readiness, or a wake-up could be missed.
                while let Some(item) = ring.next() {
                    match decode_event(&item) {
                        Some((h, payload)) => pipeline.dns_event(&h, payload),
                        None => tracing::debug!(len = item.len(), "short DNS ring record"),
                    }
                }
                guard.clear_ready();
                pipeline.clock = wall_clock();
                if !pipeline.emit_dns() {
                    break "output closed";
                }
                continue;
            }
            _ = tick.tick() => false,
            guard = wake.readable_mut() => {
                let mut guard = guard.context("waiting on the wake-up ring")?;
                let ring = guard.get_inner_mut();
                while ring.next().is_some() {}
                guard.clear_ready();
                true
            }
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
        };
        pipeline.clock = wall_clock();
        if last_local_refresh.elapsed() >= LOCAL_REFRESH
            && let Some(dns) = &mut pipeline.dns
        {
            if let Err(e) = dns.local.refresh_from_interfaces() {
                tracing::warn!("re-reading this host's addresses failed: {e}");
            }
            last_local_refresh = std::time::Instant::now();
        }
        let open = pipeline
            .scan(&mut loaded.flows, monotonic_ns(), pressure)
            .context("scanning the flow map")?;
        if !open {
            break "output closed";
        }
        let counters = loaded.counters.read().context("reading kernel counters")?;
        if counters.map_full > last_map_full {
            tracing::warn!(
                packets = counters.map_full - last_map_full,
                kernel_entries = pipeline.scan_stats.kernel_entries,
                "flow map full: packets went to the overflow map; evicting early"
            );
            last_map_full = counters.map_full;
        }
    };
    tracing::info!("stopping ({reason}): detaching and flushing open flows");
    // Detach first so that nothing is counted after the final read.
    drop(loaded.ebpf);
    pipeline.clock = wall_clock();
    let ring = dns_ring.get_mut();
    while let Some(item) = ring.next() {
        if let Some((h, payload)) = decode_event(&item) {
            pipeline.dns_event(&h, payload);
        }
    }
    pipeline
        .flush(&mut loaded.flows, Status::Shutdown, monotonic_ns())
        .context("flushing the flow map")?;
    pipeline.report_dns();
    let counters = loaded.counters.read().context("reading kernel counters")?;
    let names = pipeline.names.clone();
    let name = |i: u32| names.get(&i).cloned().unwrap_or_else(|| i.to_string());
    report_kernel(&counters, &mut loaded.overflow, &name).context("reading the overflow map")?;
    let (records, dropped) = pipeline.finish(args.shutdown_timeout);
    tracing::info!(records, dropped, "stopped");
    Ok(())
}
