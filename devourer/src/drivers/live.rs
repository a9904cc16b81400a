//! The live driver (`devourer capture`): attaches the assembly's program to interfaces
//! (following them with `--all-interfaces`), then runs one loop over what happens: payload
//! rings ready, the scan timer, map-full wake-ups, interface changes, SIGHUP (reopen outputs)
//! and SIGINT/SIGTERM (stop: detach and flush every open flow).

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind, signal},
    time::Interval,
};

use super::{requests, services::Runtime};
use crate::{
    assembly::{self, Assembly, Driver},
    base::time::{Clock, monotonic_ns},
    config::{LiveArgs, requests::resolve, values::MetricsAddr},
    flow::Status,
    kernel::{
        attach::{self, TcLink},
        events::PayloadKind,
        interfaces::{Attached, LinkWatch, Selection},
        object::{Loaded, map_bytes},
    },
    ops::{
        caps,
        endpoint::EndpointLimits,
        health::{self, Health},
        metrics::Metrics,
    },
    sink::QueueLimits,
};

/// How often this host's addresses are re-read (they decide DNS roles).
const LOCAL_REFRESH: Duration = Duration::from_secs(30);
/// Payload events taken from a ring per turn of the loop: under a flood the scan timer,
/// interface changes and signals still get their turns.
const PAYLOAD_TURN: usize = 8192;

pub fn run(args: LiveArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let res = rt.block_on(run_async(args));
    rt.shutdown_timeout(Duration::from_secs(1));
    res
}

async fn run_async(args: LiveArgs) -> Result<()> {
    let selection = selection(&args)?;
    let wanted = interfaces(&args, &selection)?;
    let requests_cfg = resolve(
        &args.sections,
        args.capture_redis.as_deref(),
        args.capture_channel.as_deref(),
        args.capture_dir.as_ref(),
    )
    .map_err(|e| anyhow!("capture on request: {e}"))?;
    caps::check(requests_cfg.is_some()).context("checking capabilities")?;
    let p = &args.pipeline;
    let driver = Driver::Live {
        sink_queue: QueueLimits {
            records: args.sink_queue_records,
            bytes: args.sink_queue_bytes,
            lossless: false,
        },
    };
    let mut kernel = assembly::load_kernel(p, driver)?;
    let agent_ncpus = kernel.ncpus;
    // Where the kernel lacks atomic lookup-and-delete, counting alternates two map sets.
    let sets = if kernel.alternation.is_some() { 2 } else { 1 };
    let link = if args.tc_netlink {
        TcLink::Netlink
    } else {
        attach::default_tc_link()
    };
    // Attached before the sinks start (BigQuery's set-up may wait): no packet waits on them.
    let mut attached = Attached::new(p.flow.mode, link);
    for iface in &wanted {
        attached
            .attach(&mut kernel.ebpf, iface)
            .with_context(|| format!("monitoring {iface}"))?;
    }
    drop_capabilities(&args, link, requests_cfg.as_ref())?;
    let metrics = Metrics::new();
    metrics
        .workloads
        .set_max_series(args.metrics_max_series as usize);
    metrics.workloads.set_series_idle(args.metrics_series_idle);
    metrics.map_capacity.set(i64::from(p.flow.flow_map_entries));
    let ncpus = agent_ncpus as u64;
    metrics
        .map_bytes
        .set(map_bytes(&p.load_options(false), ncpus, sets) as i64);
    metrics.interfaces.set(attached.len() as i64);
    for (feature, on) in kernel.features.list() {
        metrics
            .kernel_feature
            .with_label_values(&[feature])
            .set(i64::from(on));
    }
    let mut agent = Assembly::new(kernel, p, driver, Some(metrics.clone()))?;
    agent.pipeline.set_clock(Clock::live());
    agent.pipeline.name_interfaces(attached.names());
    let limits = EndpointLimits {
        max_connections: args.endpoint_max_connections as usize,
        max_per_peer: args.max_connections_per_peer as usize,
        timeout: args.endpoint_timeout,
    };
    // This thread counts; everything else runs beside it.
    let health = Arc::new(Health::new(stall_limit(p.flow.scan_interval)));
    let probes = serve_probes(args.probe_addr, &metrics, &health, limits)?;
    let services = Runtime::start("services", 2)?;
    serve_metrics(&services, args.metrics_addr, &metrics, &health, limits).await?;
    let requests = services
        .run(requests::start(
            requests_cfg,
            p.flow.agent(),
            metrics.clone(),
            limits,
        ))
        .await??;
    let k8s = super::k8s::start(args.k8s.clone(), p.flow.agent(), metrics.clone());
    if let Some(cluster) = services.run(k8s).await?? {
        agent.pipeline.set_cluster(cluster);
        // Bytes by zone and by workload: with the metadata that names them.
        metrics.workloads.follow_zones();
        health.k8s_metadata.store(true, Ordering::Relaxed);
    }
    let mut events = Events::new(&agent.kernel, args.all_interfaces, p.flow.scan_interval)?;
    health.capturing.store(true, Ordering::Relaxed);
    health.sinks_ok.store(true, Ordering::Relaxed);
    tracing::info!(
        mode = %p.flow.mode,
        idle_timeout = ?p.flow.idle_timeout,
        active_timeout = ?p.flow.active_timeout,
        "capturing"
    );
    let mut last_local_refresh = Instant::now();
    let mut last_scan: Option<Instant> = None;
    let reason = loop {
        match events.next().await? {
            Event::Payload(kind) => {
                let more = agent.payloads(kind, PAYLOAD_TURN) == PAYLOAD_TURN;
                events.more(kind, more);
                agent.pipeline.set_clock(Clock::live());
                if !agent.pipeline.emit(kind) {
                    break "output closed";
                }
            }
            Event::Interfaces => follow(&mut agent, &mut attached, &selection, &metrics),
            Event::Reopen => {
                tracing::info!("SIGHUP: reopening outputs");
                agent.pipeline.reopen();
            }
            Event::Scan { pressure } => {
                let started = Instant::now();
                if let Some(last) = last_scan.replace(started) {
                    metrics.scan_gap.observe((started - last).as_secs_f64());
                }
                health.scanned();
                if pressure {
                    agent.woken();
                }
                agent.pipeline.set_clock(Clock::live());
                if args.all_interfaces && !events.following_links() {
                    follow(&mut agent, &mut attached, &selection, &metrics);
                }
                if last_local_refresh.elapsed() >= LOCAL_REFRESH {
                    agent.pipeline.refresh_local_addrs();
                    last_local_refresh = Instant::now();
                }
                let open = agent
                    .scan(monotonic_ns(), pressure)
                    .context("scanning the flow map")?;
                if !open {
                    break "output closed";
                }
                agent.observe()?;
                let alive = agent.pipeline.sinks_alive();
                health.sinks_ok.store(alive, Ordering::Relaxed);
            }
            Event::Stop(why) => break why,
        }
    };
    health.capturing.store(false, Ordering::Relaxed);
    tracing::info!("stopping ({reason}): detaching and flushing open flows");
    let deadline = Instant::now() + p.shutdown_timeout;
    // Running captures stop and store what they hold.
    if let Err(e) = services.run(requests::stop(requests, deadline)).await {
        tracing::warn!("stopping capture on request: {e}");
    }
    drop(events);
    attached.detach_all(&mut agent.kernel.ebpf);
    agent.pipeline.set_clock(Clock::live());
    let done = agent.shutdown(Status::Shutdown, monotonic_ns, deadline)?;
    tracing::info!(records = done.records, dropped = done.dropped, "stopped");
    let grace = Instant::now() + Duration::from_secs(2);
    services.stop(grace);
    if let Some(p) = probes {
        p.stop(grace);
    }
    Ok(())
}

/// How long the counting thread may go without a scan before `/healthz` says it is stuck:
/// ten scan intervals, and never less than 30 s (a scan that emits a large table takes a while).
fn stall_limit(scan_interval: Duration) -> Duration {
    (scan_interval * 10).max(Duration::from_secs(30))
}

/// Loaded and attached: keeps only the capabilities the running agent needs (see
/// [`caps::Keep`]). Runs before any other thread starts, so every thread has just these.
fn drop_capabilities(
    args: &LiveArgs,
    link: TcLink,
    requests: Option<&crate::config::requests::RequestsConfig>,
) -> Result<()> {
    let low = |a: Option<std::net::SocketAddr>| a.is_some_and(|a| a.port() < 1024);
    let keep = caps::Keep {
        attach_later: args.all_interfaces
            || link == TcLink::Netlink
            || args.pipeline.flow.mode == attach::Mode::Xdp,
        conntrack: !args.pipeline.flow.no_conntrack,
        raw_sockets: requests.is_some(),
        chown: args.pipeline.file_group.is_some(),
        low_port: low(args.metrics_addr.0)
            || low(args.probe_addr.0)
            || low(requests.and_then(|r| r.api.as_ref()).map(|a| a.addr)),
    };
    let kept = caps::drop_all_but(&keep).context("dropping capabilities after start-up")?;
    tracing::info!(
        kept = ?caps::names(kept),
        "capabilities not needed after start-up dropped"
    );
    Ok(())
}

/// Which interfaces `--all-interfaces` takes (patterns are refused without it).
fn selection(args: &LiveArgs) -> Result<Selection> {
    let s = Selection {
        include: args.interface_include.clone(),
        exclude: args.interface_exclude.clone(),
    };
    if !s.is_empty() && !args.all_interfaces {
        bail!(
            "--interface-include and --interface-exclude choose among --all-interfaces: add it, or name interfaces with -i"
        );
    }
    Ok(s)
}

/// The interfaces to attach to at start.
fn interfaces(args: &LiveArgs, selection: &Selection) -> Result<Vec<String>> {
    let wanted = if args.all_interfaces {
        let up = all_up(selection);
        if up.is_empty() {
            bail!("--all-interfaces: no interface other than loopback is up (and selected)");
        }
        up
    } else if args.interfaces.is_empty() {
        bail!("no interface to monitor: pass -i IFACE (repeatable) or --all-interfaces");
    } else {
        args.interfaces.clone()
    };
    for iface in &wanted {
        attach::ifindex(iface)?;
    }
    Ok(wanted)
}

/// The interfaces `--all-interfaces` means right now.
fn all_up(selection: &Selection) -> Vec<String> {
    let mut up = attach::up_interfaces().unwrap_or_else(|e| {
        tracing::warn!("listing interfaces in /sys/class/net: {e}");
        Vec::new()
    });
    up.retain(|i| selection.wants(i));
    up
}

/// `--all-interfaces`: attaches to interfaces that came up, lets go of those that went.
fn follow(agent: &mut Assembly, attached: &mut Attached, selection: &Selection, metrics: &Metrics) {
    let gone = attached.sync(&mut agent.kernel.ebpf, &all_up(selection));
    agent.pipeline.interfaces_gone(gone);
    agent.pipeline.name_interfaces(attached.names());
    metrics.interfaces.set(attached.len() as i64);
}

/// Serves /metrics (and the probes) on the services runtime unless `--metrics-addr off`.
async fn serve_metrics(
    services: &Runtime,
    addr: MetricsAddr,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    limits: EndpointLimits,
) -> Result<()> {
    let Some(addr) = addr.0 else {
        return Ok(());
    };
    let listener = services
        .run(tokio::net::TcpListener::bind(addr))
        .await?
        .with_context(|| format!("binding the metrics endpoint {addr} (--metrics-addr)"))?;
    let (m, h) = (metrics.clone(), health.clone());
    services.handle().spawn(async move {
        if let Err(e) = health::serve_metrics(listener, m, h, limits).await {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    });
    Ok(())
}

/// Serves /healthz and /readyz on a thread of their own unless `--probe-addr off`.
fn serve_probes(
    addr: MetricsAddr,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    limits: EndpointLimits,
) -> Result<Option<Runtime>> {
    let Some(addr) = addr.0 else {
        return Ok(None);
    };
    let rt = Runtime::start("probes", 1)?;
    let listener = {
        let _guard = rt.handle().enter();
        let std = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the probe endpoint {addr} (--probe-addr)"))?;
        std.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(std)?
    };
    // Probes are short: a client that is slow to send its head is cut off soon.
    let limits = EndpointLimits {
        timeout: limits.timeout.min(Duration::from_secs(2)),
        ..limits
    };
    let (m, h) = (metrics.clone(), health.clone());
    rt.handle().spawn(async move {
        if let Err(e) = health::serve_probes(listener, m, h, limits).await {
            tracing::error!("probe endpoint stopped: {e}");
        }
    });
    Ok(Some(rt))
}

/// What the loop reacts to.
enum Event {
    /// A payload ring has events.
    Payload(PayloadKind),
    /// Time to scan the flow map; `pressure` when the program woke the agent (map full).
    Scan {
        pressure: bool,
    },
    /// The host's interfaces changed.
    Interfaces,
    /// SIGHUP.
    Reopen,
    Stop(&'static str),
}

/// A ring's fd, polled for readiness; the ring itself stays in the assembly.
struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Everything the loop waits on. Dropped before the assembly shuts down (it polls its fds).
struct Events {
    dns: AsyncFd<RingFd>,
    http: AsyncFd<RingFd>,
    tls: AsyncFd<RingFd>,
    /// A ring's last turn stopped at its bound: events wait without a new wake-up coming, so
    /// the ring counts as ready (beside whatever else is).
    more: [bool; 3],
    wake: AsyncFd<RingFd>,
    links: Option<LinkWatch>,
    tick: Interval,
    term: Signal,
    int: Signal,
    hup: Signal,
}

/// Waits until a ring is readable and clears its readiness before the caller drains it (an
/// event written during the drain is read by it, or sets readiness again). With `more`, the
/// ring still holds events from its last turn: ready now.
async fn ready(fd: &AsyncFd<RingFd>, more: bool) -> io::Result<()> {
    if more {
        // Let the runtime's other tasks (the endpoints, capture on request) run between
        // turns: a ready ring alone never yields.
        tokio::task::yield_now().await;
        return Ok(());
    }
    fd.readable().await?.clear_ready();
    Ok(())
}

impl Events {
    fn new(kernel: &Loaded, all_interfaces: bool, scan_interval: Duration) -> Result<Self> {
        let fd = |raw: RawFd, what: &str| {
            // SAFETY: the rings (in the assembly) outlive `Events`, which the driver drops
            // before the assembly shuts down, so each fd stays open while it is registered.
            unsafe { AsyncFd::register_with_interest(RingFd(raw), Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
                .with_context(|| format!("polling the {what} ring"))
        };
        let links = if all_interfaces {
            Some(LinkWatch::new().context("watching interfaces (netlink)")?)
        } else {
            None
        };
        let mut tick = tokio::time::interval(scan_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            dns: fd(kernel.dns.as_raw_fd(), "DNS")?,
            http: fd(kernel.http.as_raw_fd(), "HTTP")?,
            tls: fd(kernel.tls.as_raw_fd(), "TLS")?,
            more: [false; 3],
            wake: fd(kernel.wakeup.as_raw_fd(), "wake-up")?,
            links,
            tick,
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        })
    }

    /// Whether ring `kind` still holds events after its last turn.
    fn more(&mut self, kind: PayloadKind, more: bool) {
        self.more[kind as usize] = more;
    }

    /// Whether netlink tells about interface changes (else every scan rescans).
    fn following_links(&self) -> bool {
        self.links.is_some()
    }

    async fn next(&mut self) -> Result<Event> {
        let links = self.links.as_mut();
        let following = links.is_some();
        let [dns_more, http_more, tls_more] = self.more;
        tokio::select! {
            r = ready(&self.dns, dns_more) => r.map(|()| Event::Payload(PayloadKind::Dns)).context("waiting on the DNS ring"),
            r = ready(&self.http, http_more) => r.map(|()| Event::Payload(PayloadKind::Http)).context("waiting on the HTTP ring"),
            r = ready(&self.tls, tls_more) => r.map(|()| Event::Payload(PayloadKind::Tls)).context("waiting on the TLS ring"),
            changed = async { links.expect("guarded").changed().await }, if following => {
                if let Err(e) = changed {
                    tracing::warn!("netlink: {e}; interfaces are rescanned on every scan instead");
                    self.links = None;
                }
                Ok(Event::Interfaces)
            }
            _ = self.hup.recv() => Ok(Event::Reopen),
            _ = self.tick.tick() => Ok(Event::Scan { pressure: false }),
            r = ready(&self.wake, false) => r.map(|()| Event::Scan { pressure: true }).context("waiting on the wake-up ring"),
            _ = self.term.recv() => Ok(Event::Stop("SIGTERM")),
            _ = self.int.recv() => Ok(Event::Stop("SIGINT")),
        }
    }
}
