//! Live capture (`devourer capture`): attaches to interfaces (following them with
//! `--all-interfaces`), scans the flow map on a timer and on map-full wake-ups, reads the DNS
//! ring, serves metrics, reopens outputs on SIGHUP, and on SIGINT/SIGTERM detaches and flushes
//! every open flow.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    bq::BqStats,
    config::CaptureArgs,
    dns::decode_event,
    flow::Status,
    ifaces::{Attached, LinkWatch},
    loader::{self, TcLink},
    local::LocalAddrs,
    metrics::{Health, Metrics},
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
    let res = rt.block_on(run_async(args));
    // Blocking threads (a capture's libpcap reads) must not hold the exit up.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    res
}

/// The interfaces `--all-interfaces` means right now.
fn all_up() -> Vec<String> {
    loader::up_interfaces().unwrap_or_else(|e| {
        tracing::warn!("listing interfaces in /sys/class/net: {e}");
        Vec::new()
    })
}

/// Copies what the pipeline's parts counted into the metrics.
fn update_metrics(m: &Metrics, p: &Pipeline, kernel: &crate::kmaps::KernelCounters) {
    m.kernel(kernel);
    m.flows_active.set(p.table.len() as i64);
    m.map_entries.set(p.scan_stats.kernel_entries as i64);
    if let Some(dns) = &p.dns {
        m.dns(&dns.stats, dns.pending());
    }
    if let Some(s) = &p.sink {
        m.sink("jsonl", "written", s.stats.written.load(Ordering::Relaxed));
        m.sink("jsonl", "dropped", s.stats.dropped.load(Ordering::Relaxed));
    }
    if let Some(bq) = &p.bq {
        let s = &bq.stats;
        m.sink("bigquery", "spooled", BqStats::get(&s.rows_spooled));
        m.sink("bigquery", "sent", BqStats::get(&s.rows_sent));
        m.sink("bigquery", "retried", BqStats::get(&s.rows_retried));
        m.sink(
            "bigquery",
            "dead_lettered",
            BqStats::get(&s.rows_dead_lettered),
        );
        m.sink("bigquery", "dropped", BqStats::get(&s.rows_dropped));
        m.spool_bytes.set(bq.spool_bytes() as i64);
        m.bq_last_success.set(BqStats::get(&s.last_success) as i64);
    }
}

/// Capture on request when configured: the service, its Redis listener and its API.
#[cfg(feature = "capture-requests")]
async fn start_requests(
    cfg: Option<crate::ondemand::config::RequestsConfig>,
    node: String,
    metrics: &Arc<Metrics>,
) -> Result<Option<crate::ondemand::Service>> {
    use crate::ondemand::{Service, api, redis};
    let Some(cfg) = cfg else {
        return Ok(None);
    };
    let svc = Service::new(cfg.clone(), node, Some(metrics.clone()));
    if let Some(url) = cfg.redis_url.clone() {
        let listener = tokio::spawn(redis::listen(
            svc.clone(),
            url,
            cfg.channel.clone(),
            cfg.capture.retry_base,
            cfg.capture.retry_max,
            cfg.redis_ping,
        ));
        // It runs for good; if it ever dies, say so instead of going quiet.
        tokio::spawn(async move {
            if let Err(e) = listener.await {
                tracing::error!(
                    "the Redis capture-request listener died: {e}; no more Redis requests"
                );
            }
        });
    }
    if let Some(a) = &cfg.api {
        let token = match &a.token_file {
            Some(f) => {
                let t = std::fs::read_to_string(f)
                    .with_context(|| format!("reading the API token file {}", f.display()))?;
                let t = t.trim().to_owned();
                if t.is_empty() {
                    bail!("the API token file {} is empty", f.display());
                }
                Some(t)
            }
            None => None,
        };
        let listener = api::bind(a.addr)
            .await
            .with_context(|| format!("binding the capture API on {} ([api] addr)", a.addr))?;
        tracing::info!(addr = %a.addr, auth = token.is_some(), "capture API listening");
        tokio::spawn(api::serve(listener, svc.clone(), token));
    }
    tracing::info!(
        dir = %cfg.local_dir.display(),
        max_concurrent = cfg.capture.limits().max_concurrent,
        "capture on request enabled"
    );
    Ok(Some(svc))
}

#[cfg(not(feature = "capture-requests"))]
async fn start_requests(
    cfg: Option<crate::ondemand::config::RequestsConfig>,
    _node: String,
    _metrics: &Arc<Metrics>,
) -> Result<Option<()>> {
    if cfg.is_some() {
        bail!(
            "capture on request is configured, but this build has no libpcap (built without the capture-requests feature)"
        );
    }
    Ok(None)
}

async fn run_async(args: CaptureArgs) -> Result<()> {
    let wanted = if args.all_interfaces {
        let up = all_up();
        if up.is_empty() {
            bail!("--all-interfaces: no interface other than loopback is up");
        }
        up
    } else if args.interfaces.is_empty() {
        bail!("no interface to monitor: pass -i IFACE (repeatable) or --all-interfaces");
    } else {
        args.interfaces.clone()
    };
    for iface in &wanted {
        loader::ifindex(iface)?;
    }
    let requests_cfg = crate::ondemand::config::resolve(
        &args.sections,
        args.capture_redis.as_deref(),
        args.capture_channel.as_deref(),
        args.capture_dir.as_ref(),
    )
    .map_err(|e| anyhow::anyhow!("capture on request: {e}"))?;
    crate::caps::check(requests_cfg.is_some()).context("checking capabilities")?;
    let flow = &args.flow;
    let mut opts = args.dns.load_options(false, flow);
    args.http.apply(&mut opts);
    let mut loaded = loader::load(&opts).context("loading the kernel program")?;

    let link = if args.tc_netlink {
        TcLink::Netlink
    } else {
        loader::default_tc_link()
    };
    let mut attached = Attached::new(flow.mode, link);
    for iface in &wanted {
        attached
            .attach(&mut loaded.ebpf, iface)
            .with_context(|| format!("monitoring {iface}"))?;
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
    pipeline.names = attached.names();
    let mut local = LocalAddrs::new(args.dns.local_nets.clone());
    local
        .refresh_from_interfaces()
        .context("listing this host's addresses")?;
    let (http, http_log) = args
        .http
        .build(local.clone(), args.dns.log_tz)
        .context("opening the HTTP log directory")?;
    pipeline.http = http;
    pipeline.http_log = http_log;
    let (dns, dns_log) = args
        .dns
        .build(local)
        .context("opening the DNS log directory")?;
    pipeline.dns = dns;
    pipeline.dns_log = dns_log;
    let mut last_local_refresh = Instant::now();

    let metrics = Metrics::new();
    metrics.map_capacity.set(i64::from(flow.flow_map_entries));
    metrics.interfaces.set(attached.len() as i64);
    pipeline.metrics = Some(metrics.clone());
    let health = Arc::new(Health::default());
    if let Some(addr) = args.metrics_addr.0 {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint {addr} (--metrics-addr)"))?;
        let (m, h) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, m, h).await {
                tracing::error!("metrics endpoint stopped: {e}");
            }
        });
    }

    let requests = start_requests(requests_cfg, flow.agent(), &metrics).await?;

    // SAFETY (both): each ring buffer owns its map fd for as long as its AsyncFd owns it.
    let mut wake = unsafe { AsyncFd::register_with_interest(loaded.wakeup, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("polling the wake-up ring")?;
    let mut dns_ring = unsafe { AsyncFd::register_with_interest(loaded.dns, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("polling the DNS ring")?;
    let mut http_ring = unsafe { AsyncFd::register_with_interest(loaded.http, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("polling the HTTP ring")?;
    let mut links = if args.all_interfaces {
        Some(LinkWatch::new().context("watching interfaces (netlink)")?)
    } else {
        None
    };
    let mut tick = tokio::time::interval(flow.scan_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut last_map_full = 0;
    health.capturing.store(true, Ordering::Relaxed);
    health.sinks_ok.store(true, Ordering::Relaxed);
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
            guard = http_ring.readable_mut() => {
                let mut guard = guard.context("waiting on the HTTP ring")?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    match decode_event(&item) {
                        Some((h, payload)) => pipeline.http_event(&h, payload),
                        None => tracing::debug!(len = item.len(), "short HTTP ring record"),
                    }
                }
                guard.clear_ready();
                pipeline.clock = wall_clock();
                if !pipeline.emit_http() {
                    break "output closed";
                }
                continue;
            }
            changed = async { links.as_mut().expect("guarded").changed().await }, if links.is_some() => {
                if let Err(e) = changed {
                    tracing::warn!("netlink: {e}; interfaces are rescanned on every scan instead");
                    links = None;
                }
                attached.sync(&mut loaded.ebpf, &all_up());
                pipeline.names.extend(attached.names());
                metrics.interfaces.set(attached.len() as i64);
                continue;
            }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reopening outputs");
                pipeline.reopen();
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
        if args.all_interfaces && links.is_none() {
            attached.sync(&mut loaded.ebpf, &all_up());
            pipeline.names.extend(attached.names());
        }
        if last_local_refresh.elapsed() >= LOCAL_REFRESH {
            let locals = [
                pipeline.dns.as_mut().map(|d| &mut d.local),
                pipeline.http.as_mut().map(|h| &mut h.local),
            ];
            for local in locals.into_iter().flatten() {
                if let Err(e) = local.refresh_from_interfaces() {
                    tracing::warn!("re-reading this host's addresses failed: {e}");
                }
            }
            last_local_refresh = Instant::now();
        }
        let started = Instant::now();
        let open = pipeline
            .scan(&mut loaded.flows, monotonic_ns(), pressure)
            .context("scanning the flow map")?;
        metrics
            .scan_seconds
            .observe(started.elapsed().as_secs_f64());
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
        update_metrics(&metrics, &pipeline, &counters);
        health
            .sinks_ok
            .store(pipeline.sinks_alive(), Ordering::Relaxed);
    };
    health.capturing.store(false, Ordering::Relaxed);
    tracing::info!("stopping ({reason}): detaching and flushing open flows");
    // Running captures stop and store what they hold.
    #[cfg(feature = "capture-requests")]
    if let Some(svc) = &requests {
        svc.shutdown(args.shutdown_timeout).await;
    }
    #[cfg(not(feature = "capture-requests"))]
    let _ = requests;
    // Detach first so that nothing is counted after the final read.
    drop(attached);
    drop(loaded.ebpf);
    pipeline.clock = wall_clock();
    let ring = dns_ring.get_mut();
    while let Some(item) = ring.next() {
        if let Some((h, payload)) = decode_event(&item) {
            pipeline.dns_event(&h, payload);
        }
    }
    let ring = http_ring.get_mut();
    while let Some(item) = ring.next() {
        if let Some((h, payload)) = decode_event(&item) {
            pipeline.http_event(&h, payload);
        }
    }
    pipeline
        .flush(&mut loaded.flows, Status::Shutdown, monotonic_ns())
        .context("flushing the flow map")?;
    pipeline.report_dns();
    pipeline.report_http();
    let counters = loaded.counters.read().context("reading kernel counters")?;
    let names = pipeline.names.clone();
    let name = |i: u32| names.get(&i).cloned().unwrap_or_else(|| i.to_string());
    report_kernel(&counters, &mut loaded.overflow, &name).context("reading the overflow map")?;
    let (records, dropped) = pipeline.finish(args.shutdown_timeout);
    tracing::info!(records, dropped, "stopped");
    Ok(())
}
