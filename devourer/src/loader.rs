//! The capture loader: loads the embedded kernel program with its load-time settings, hands out
//! its maps, and attaches it to interfaces (TC via TCX or netlink, or XDP plus TC egress).

use std::{
    fmt, io,
    os::fd::{AsFd as _, AsRawFd},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
        xdp::XdpLinkId,
    },
    util::KernelVersion,
};
use devourer_common::dns::{
    BPF_RB_NO_WAKEUP, DEFAULT_DNS_RING_BYTES, DNS_CAP_MAX, DNS_PORT_SLOTS, DNS_RING,
    GLOBAL_DNS_CAP, GLOBAL_DNS_PORTS, GLOBAL_DNS_RB_FLAGS, GLOBAL_HTTP_CAP, GLOBAL_HTTP_PORTS,
    HTTP_RING,
};
use devourer_common::flow::{
    COUNTERS_MAP, FLOWS_MAP, GLOBAL_OFFLINE, GLOBAL_WAKE_INTERVAL_NS, OVERFLOW_MAP,
    OVERFLOW_MAP_ENTRIES, WAKEUP_RING,
};

use crate::kmaps::{Counters, KernelFlows, PerCpuHash};

/// The kernel program, built by build.rs for bpfel-unknown-none.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/devourer"));

pub const PROG_TC_INGRESS: &str = "devourer_tc_ingress";
pub const PROG_TC_EGRESS: &str = "devourer_tc_egress";
pub const PROG_XDP: &str = "devourer_xdp";
/// Do-nothing programs of the same types: benchmark baselines, loaded on request only.
pub const PROG_EMPTY_TC: &str = "devourer_empty_tc";
pub const PROG_EMPTY_XDP: &str = "devourer_empty_xdp";
/// TC ingress counting into the shared (not per-CPU) flow map: benchmarks only.
pub const PROG_TC_SHARED: &str = "devourer_tc_shared";
/// The shared flow map of [`PROG_TC_SHARED`].
pub const SHARED_FLOWS_MAP: &str = "FLOWS_SHARED";

/// Oldest kernel devourer runs on: atomic lookup-and-delete on hash maps arrived in 5.14
/// (ring buffers 5.8, batched lookups 5.6, test_run with an `__sk_buff` context 5.x).
pub const MIN_KERNEL: (u8, u8) = (5, 14);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "kernel {found} is too old: devourer needs {}.{} or newer (atomic lookup-and-delete on hash maps)",
        MIN_KERNEL.0, MIN_KERNEL.1
    )]
    KernelTooOld { found: String },
    #[error(
        "not permitted to load eBPF programs: devourer needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or root)"
    )]
    Permission(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("loading the eBPF object failed (map creation or verifier)")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("reading map {0} failed")]
    Map(&'static str, #[source] io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("unknown interface {0:?} (see `ip link`)")]
    UnknownInterface(String),
    #[error("attaching {prog} to {iface} ({hook}) failed")]
    Attach {
        prog: &'static str,
        iface: String,
        hook: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Which hooks count packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// TC on ingress and egress (one hook on loopback).
    Tc,
    /// XDP on ingress (native, else generic) and TC on egress.
    Xdp,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tc => "tc",
            Self::Xdp => "xdp",
        })
    }
}

pub struct LoadOptions {
    pub offline: bool,
    pub flow_map_entries: u32,
    pub wake_interval_ns: u64,
    /// Ports whose payloads go to the DNS ring (empty: none).
    pub dns_ports: Vec<u16>,
    /// Payload bytes copied per DNS packet.
    pub dns_cap: u32,
    pub dns_ring_bytes: u32,
    /// TCP ports whose message-starting segments go to the HTTP ring (empty: HTTP off).
    pub http_ports: Vec<u16>,
    /// Payload bytes copied per HTTP segment.
    pub http_cap: u32,
    pub http_ring_bytes: u32,
    /// Entries of the benchmark-only shared flow map (1 unless benchmarking it).
    pub shared_map_entries: u32,
}

impl LoadOptions {
    /// Defaults for tests and tools: DNS on port 53, design.md's sizes.
    pub fn new(offline: bool, flow_map_entries: u32) -> Self {
        Self {
            offline,
            flow_map_entries,
            wake_interval_ns: devourer_common::flow::DEFAULT_WAKE_INTERVAL_NS,
            dns_ports: vec![53],
            dns_cap: DNS_CAP_MAX as u32,
            dns_ring_bytes: DEFAULT_DNS_RING_BYTES,
            http_ports: Vec::new(),
            http_cap: devourer_common::dns::DEFAULT_HTTP_CAP,
            http_ring_bytes: devourer_common::dns::DEFAULT_HTTP_RING_BYTES,
            shared_map_entries: 1,
        }
    }
}

/// The loaded program and the maps the agent reads.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub flows: KernelFlows,
    pub overflow:
        PerCpuHash<devourer_common::flow::OverflowKey, devourer_common::flow::OverflowValue>,
    pub counters: Counters,
    pub wakeup: RingBuf<MapData>,
    pub dns: RingBuf<MapData>,
    pub http: RingBuf<MapData>,
    pub ncpus: usize,
}

fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && io.raw_os_error() == Some(libc::EPERM)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn classify(e: impl std::error::Error + Send + Sync + 'static) -> LoadError {
    if is_eperm(&e) {
        LoadError::Permission(Box::new(e))
    } else {
        LoadError::Load(Box::new(e))
    }
}

pub fn check_kernel() -> Result<KernelVersion, LoadError> {
    let v = KernelVersion::current().map_err(|e| LoadError::KernelTooOld {
        found: format!("(unknown: {e})"),
    })?;
    if v < KernelVersion::new(MIN_KERNEL.0, MIN_KERNEL.1, 0) {
        return Err(LoadError::KernelTooOld {
            found: format!("{v:?}"),
        });
    }
    Ok(v)
}

/// Loads the object: creates the maps (flow map sized as asked) and loads the programs used by
/// `mode` (all three for offline use, which picks one).
pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    check_kernel()?;
    raise_memlock();
    let offline: u8 = opts.offline.into();
    let mut ports = [0u16; DNS_PORT_SLOTS];
    for (slot, p) in ports.iter_mut().zip(&opts.dns_ports) {
        *slot = *p;
    }
    let dns_cap = opts.dns_cap.min(DNS_CAP_MAX as u32);
    let mut http_ports = [0u16; DNS_PORT_SLOTS];
    for (slot, p) in http_ports.iter_mut().zip(&opts.http_ports) {
        *slot = *p;
    }
    let http_cap = opts.http_cap.min(DNS_CAP_MAX as u32);
    // Offline, the reader drains the ring after every frame: wake-ups would only cost.
    let rb_flags: u64 = if opts.offline { BPF_RB_NO_WAKEUP } else { 0 };
    let mut ebpf = EbpfLoader::new()
        .override_global(GLOBAL_OFFLINE, &offline, true)
        .override_global(GLOBAL_WAKE_INTERVAL_NS, &opts.wake_interval_ns, true)
        .override_global(GLOBAL_DNS_PORTS, &ports, true)
        .override_global(GLOBAL_DNS_CAP, &dns_cap, true)
        .override_global(GLOBAL_DNS_RB_FLAGS, &rb_flags, true)
        .override_global(GLOBAL_HTTP_PORTS, &http_ports, true)
        .override_global(GLOBAL_HTTP_CAP, &http_cap, true)
        .map_max_entries(FLOWS_MAP, opts.flow_map_entries)
        .map_max_entries(DNS_RING, opts.dns_ring_bytes)
        // Without HTTP ports the ring stays at its smallest (one page): nothing is sent to it.
        .map_max_entries(
            HTTP_RING,
            if opts.http_ports.is_empty() {
                page_size()
            } else {
                opts.http_ring_bytes
            },
        )
        .map_max_entries(SHARED_FLOWS_MAP, opts.shared_map_entries.max(1))
        .load(EBPF_OBJECT)
        .map_err(classify)?;
    for name in [PROG_TC_INGRESS, PROG_TC_EGRESS] {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(LoadError::Missing(name))?
            .try_into()
            .map_err(classify)?;
        prog.load().map_err(classify)?;
    }
    let xdp: &mut Xdp = ebpf
        .program_mut(PROG_XDP)
        .ok_or(LoadError::Missing(PROG_XDP))?
        .try_into()
        .map_err(classify)?;
    xdp.load().map_err(classify)?;

    let ncpus = aya::util::nr_cpus().map_err(|(_, e)| LoadError::Map("possible cpus", e))?;
    let take =
        |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(LoadError::Missing(name));
    let flows = PerCpuHash::new(
        take(&mut ebpf, FLOWS_MAP)?,
        ncpus,
        opts.flow_map_entries as usize,
    )
    .map_err(|e| LoadError::Map(FLOWS_MAP, e))?;
    let overflow = PerCpuHash::new(
        take(&mut ebpf, OVERFLOW_MAP)?,
        ncpus,
        OVERFLOW_MAP_ENTRIES as usize,
    )
    .map_err(|e| LoadError::Map(OVERFLOW_MAP, e))?;
    let counters = Counters::new(take(&mut ebpf, COUNTERS_MAP)?, ncpus)
        .map_err(|e| LoadError::Map(COUNTERS_MAP, e))?;
    let wakeup = RingBuf::try_from(take(&mut ebpf, WAKEUP_RING)?).map_err(classify)?;
    let dns = RingBuf::try_from(take(&mut ebpf, DNS_RING)?).map_err(classify)?;
    let http = RingBuf::try_from(take(&mut ebpf, HTTP_RING)?).map_err(classify)?;
    Ok(Loaded {
        ebpf,
        flows: KernelFlows(flows),
        overflow,
        counters,
        wakeup,
        dns,
        http,
        ncpus,
    })
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u32 } else { 4096 }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it where we may.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain setrlimit with a valid struct.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        tracing::debug!(
            "could not lift RLIMIT_MEMLOCK ({}); fine on kernels >= 5.11",
            io::Error::last_os_error()
        );
    }
}

/// Loads one of the programs only benchmarks use (the empty ones, the shared-map variant) and
/// returns its fd.
pub fn load_bench_program(loaded: &mut Loaded, name: &'static str) -> Result<i32, LoadError> {
    let prog = loaded
        .ebpf
        .program_mut(name)
        .ok_or(LoadError::Missing(name))?;
    match name {
        PROG_EMPTY_XDP => {
            let p: &mut Xdp = prog.try_into().map_err(classify)?;
            p.load().map_err(classify)?;
        }
        _ => {
            let p: &mut SchedClassifier = prog.try_into().map_err(classify)?;
            p.load().map_err(classify)?;
        }
    }
    loaded.prog_fd(name)
}

impl Loaded {
    /// The raw fd of a loaded program, for BPF_PROG_TEST_RUN.
    pub fn prog_fd(&self, name: &'static str) -> Result<i32, LoadError> {
        let prog = self.ebpf.program(name).ok_or(LoadError::Missing(name))?;
        let fd = prog.fd().map_err(classify)?;
        Ok(fd.as_fd().as_raw_fd())
    }
}

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcLink {
    /// TCX links (kernel 6.6+): they go away with the process.
    Tcx,
    /// Netlink clsact filters: leftovers from a crashed run are removed first.
    Netlink,
}

pub fn default_tc_link() -> TcLink {
    match KernelVersion::current() {
        Ok(v) if v >= KernelVersion::new(6, 6, 0) => TcLink::Tcx,
        _ => TcLink::Netlink,
    }
}

/// What was attached where: names for logs, link ids for detaching.
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub hooks: Vec<&'static str>,
    tc: Vec<(&'static str, SchedClassifierLinkId)>,
    xdp: Option<XdpLinkId>,
}

pub fn ifindex(iface: &str) -> Result<u32, AttachError> {
    let c = std::ffi::CString::new(iface)
        .map_err(|_| AttachError::UnknownInterface(iface.to_owned()))?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(AttachError::UnknownInterface(iface.to_owned()))
    } else {
        Ok(idx)
    }
}

fn attach_tc(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    kind: TcAttachType,
    link: TcLink,
) -> Result<(&'static str, SchedClassifierLinkId), AttachError> {
    let hook = match kind {
        TcAttachType::Ingress => "tc ingress",
        _ => "tc egress",
    };
    let err = |source: Box<dyn std::error::Error + Send + Sync>| AttachError::Attach {
        prog: name,
        iface: iface.to_owned(),
        hook,
        source,
    };
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .expect("loaded program")
        .try_into()
        .map_err(|e| err(Box::new(e)))?;
    let options = match link {
        TcLink::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
        TcLink::Netlink => {
            if let Err(e) = tc::qdisc_add_clsact(iface) {
                // EEXIST: the qdisc is already there, which is what we need.
                tracing::debug!(iface, "clsact qdisc: {e}");
            }
            match tc::qdisc_detach_program(iface, kind, name) {
                Ok(()) => tracing::warn!(iface, hook, "removed a filter left by an earlier run"),
                Err(e) => tracing::debug!(iface, hook, "no leftover filter: {e}"),
            }
            TcAttachOptions::Netlink(NlOptions::default())
        }
    };
    let id = prog
        .attach_with_options(iface, kind, options)
        .map_err(|e| err(Box::new(e)))?;
    Ok((name, id))
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    iface: &str,
    lo: bool,
) -> Result<(&'static str, XdpLinkId), AttachError> {
    let prog: &mut Xdp = ebpf
        .program_mut(PROG_XDP)
        .expect("loaded program")
        .try_into()
        .map_err(|e| AttachError::Attach {
            prog: PROG_XDP,
            iface: iface.to_owned(),
            hook: "xdp",
            source: Box::new(e),
        })?;
    if !lo {
        match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => return Ok(("xdp (native)", id)),
            Err(e) => tracing::warn!(
                iface,
                "native XDP unavailable ({e}); falling back to generic (SKB) mode, which costs more"
            ),
        }
    }
    let id = prog
        .attach(iface, XdpMode::Skb)
        .map_err(|e| AttachError::Attach {
            prog: PROG_XDP,
            iface: iface.to_owned(),
            hook: "xdp (skb)",
            source: Box::new(e),
        })?;
    Ok(("xdp (skb)", id))
}

/// Attaches to one interface so that each packet crossing it is seen once per direction.
/// On loopback a packet is sent and received on the same device: one hook only.
pub fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: Mode,
    link: TcLink,
) -> Result<Attachment, AttachError> {
    let idx = ifindex(iface)?;
    let lo = is_loopback(iface);
    let mut a = Attachment {
        iface: iface.to_owned(),
        ifindex: idx,
        hooks: Vec::new(),
        tc: Vec::new(),
        xdp: None,
    };
    match mode {
        Mode::Tc => {
            a.tc.push(attach_tc(
                ebpf,
                PROG_TC_INGRESS,
                iface,
                TcAttachType::Ingress,
                link,
            )?);
            a.hooks.push("tc ingress");
        }
        Mode::Xdp => {
            let (hook, id) = attach_xdp(ebpf, iface, lo)?;
            a.hooks.push(hook);
            a.xdp = Some(id);
        }
    }
    if !lo {
        a.tc.push(attach_tc(
            ebpf,
            PROG_TC_EGRESS,
            iface,
            TcAttachType::Egress,
            link,
        )?);
        a.hooks.push("tc egress");
    }
    Ok(a)
}

/// Detaches what [`attach`] attached. Errors are expected when the interface is already gone
/// (the kernel removed its links with it) and only logged.
pub fn detach(ebpf: &mut Ebpf, a: Attachment) {
    for (name, id) in a.tc {
        let res = ebpf
            .program_mut(name)
            .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
            .map(|p| p.detach(id));
        if let Some(Err(e)) = res {
            tracing::debug!(iface = %a.iface, "detaching {name}: {e}");
        }
    }
    if let Some(id) = a.xdp {
        let res = ebpf
            .program_mut(PROG_XDP)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .map(|p| p.detach(id));
        if let Some(Err(e)) = res {
            tracing::debug!(iface = %a.iface, "detaching xdp: {e}");
        }
    }
}

/// An interface's IFF_* flags from sysfs (0 when unreadable).
fn iface_flags(iface: &str) -> u32 {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/flags"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

/// Loopback devices carry IFF_LOOPBACK in their flags.
pub fn is_loopback(iface: &str) -> bool {
    iface_flags(iface) & libc::IFF_LOOPBACK as u32 != 0
}

/// Every interface that is up and not loopback, for `--all-interfaces`.
pub fn up_interfaces() -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/sys/class/net")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let flags = iface_flags(&name);
        if flags & libc::IFF_UP as u32 != 0 && flags & libc::IFF_LOOPBACK as u32 == 0 {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}
