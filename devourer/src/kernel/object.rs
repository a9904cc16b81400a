//! The kernel object: loads the embedded program with its load-time settings (the flow map's
//! size, payload ports and caps, the replay switch) and hands out the maps the agent reads.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{SchedClassifier, Xdp},
    util::KernelVersion,
};
use devourer_common::{
    drop::{
        DROP_REASONS_ENTRIES, DROP_REASONS_MAP, DROPS_MAP, DROPS_MAP_ENTRIES, GLOBAL_SKB_OFFSETS,
        SkbOffsets,
    },
    filter::{GLOBAL_SAMPLING, GLOBAL_SAMPLING_SEED, OFFLINE_SAMPLING_SEED},
    flow::{
        COUNTERS_MAP, FLOWS_B_MAP, FLOWS_MAP, GLOBAL_ALTERNATE, GLOBAL_HOOK_HORIZON_NS,
        GLOBAL_HOOK_MEMORY, GLOBAL_HOOK_REFRESH_SHIFT, GLOBAL_OFFLINE, GLOBAL_PER_INTERFACE,
        GLOBAL_WAKE_INTERVAL_NS, GLOBAL_XDP_LOAD_BYTES, HOOKS_MAP, OVERFLOW_B_MAP, OVERFLOW_MAP,
        OVERFLOW_MAP_ENTRIES, OverflowKey, OverflowValue, SET_MAP, WAKEUP_RING,
    },
    payload::{
        BPF_RB_NO_WAKEUP, DEFAULT_DNS_RING_BYTES, DEFAULT_HTTP_CAP, DEFAULT_HTTP_RING_BYTES,
        DEFAULT_TLS_RING_BYTES, DNS_RING, GLOBAL_DNS_CAP, GLOBAL_DNS_PORTS, GLOBAL_HTTP_CAP,
        GLOBAL_HTTP_PORTS, GLOBAL_RB_FLAGS, GLOBAL_TLS, HTTP_RING, PAYLOAD_CAP_MAX, PORT_SLOTS,
        TLS_RING,
    },
    tcp::{
        GLOBAL_SOCK_OFFSETS, GLOBAL_SRTT_SHIFT, PEER_NETNS_ENTRIES, PEER_NETNS_MAP,
        RETRANSMITS_ENTRIES, RETRANSMITS_MAP, SockOffsets,
    },
};

use super::{
    drops::{DropProbe, Support},
    features::{Features, MIN_KERNEL},
    log::KernelLog,
    maps::{Counters, HashReader, KernelFlows},
    sets::Alternation,
    tcp::RetransmitProbe,
};

/// The agent's kernel program, built by build.rs for bpfel-unknown-none.
static AGENT_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/devourer"));
/// The benchmarks' object: the agent's programs plus baselines (never in a shipped agent).
#[cfg(feature = "bench-programs")]
static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/devourer-bench"));

/// The live agent's hook horizon: a packet crosses a node's interfaces within microseconds
/// (milliseconds behind a busy backlog), so a short horizon covers it, and keeps short the time
/// a direction whose first interface changed (a re-created veth) is taken for copies.
pub const LIVE_HOOK_HORIZON_NS: u64 = 1 << 31;

pub const PROG_TC_INGRESS: &str = "devourer_tc_ingress";
pub const PROG_TC_EGRESS: &str = "devourer_tc_egress";
pub const PROG_XDP: &str = "devourer_xdp";
/// The TC programs for L3 devices (packets start at the IP header), loaded when the first such
/// device is attached.
pub const PROG_TC_INGRESS_L3: &str = "devourer_tc_ingress_l3";
pub const PROG_TC_EGRESS_L3: &str = "devourer_tc_egress_l3";
/// Do-nothing programs of the same types: benchmark baselines (bench object only).
pub const PROG_EMPTY_TC: &str = "devourer_empty_tc";
pub const PROG_EMPTY_XDP: &str = "devourer_empty_xdp";
/// TC ingress counting into a per-CPU flow map, every hook counting (bench object only).
pub const PROG_TC_PERCPU: &str = "devourer_tc_percpu";
/// The existing-flow path's breakdown, a step at a time (bench object only): an empty program
/// that reads the clock; the agent's program up to a parsed packet; and up to the flow map
/// lookup.
pub const PROG_CLOCK_TC: &str = "devourer_clock_tc";
pub const PROG_TC_PARSE: &str = "devourer_tc_parse";
pub const PROG_TC_LOOKUP: &str = "devourer_tc_lookup";
/// The per-CPU flow map of [`PROG_TC_PERCPU`].
pub const PERCPU_FLOWS_MAP: &str = "FLOWS_PERCPU";

/// aya-log's load-time level global in the program (0: off; 4: debug).
const AYA_LOG_LEVEL: &str = "AYA_LOG_LEVEL";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "kernel {found} is too old: devourer needs {}.{} or newer (BPF ring buffers, 5.8; bounded loops and batched map reads)",
        MIN_KERNEL.0, MIN_KERNEL.1
    )]
    KernelTooOld { found: String },
    #[error(
        "not permitted to load eBPF programs: devourer needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or root)"
    )]
    Permission(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "loading the eBPF object failed on kernel {kernel} (map creation or the verifier; devourer supports {}.{} and newer, README's kernel table lists each feature it needs)",
        MIN_KERNEL.0, MIN_KERNEL.1
    )]
    Load {
        kernel: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("reading map {0} failed")]
    Map(&'static str, #[source] io::Error),
}

/// The program's load-time settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Replay recorded packets (BPF_PROG_TEST_RUN) instead of counting live ones.
    pub offline: bool,
    pub flow_map_entries: u32,
    pub wake_interval_ns: u64,
    /// How long a flow direction's counting hook carries over to a new entry after its last
    /// counted packet (offline: between map sets, the agent's eviction delay; live: across an
    /// entry the agent took out, [`LIVE_HOOK_HORIZON_NS`]).
    pub hook_horizon_ns: u64,
    /// Remember counting hooks across entries' lives (off for a capture of one interface,
    /// where it would only cost a lookup per new entry; unused counting per interface).
    pub hook_memory: bool,
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
    /// Forward TLS handshakes (on any TCP port) to the TLS ring.
    pub tls: bool,
    pub tls_ring_bytes: u32,
    /// Entries of the bench object's per-CPU flow map (ignored by the agent's object).
    pub percpu_map_entries: u32,
    /// Count on every interface (the interface in the flow key) instead of once per node.
    pub per_interface: bool,
    /// `--sampling N` (1: every packet).
    pub sampling: u32,
    /// The key of the hash that picks the packets sampling counts: random per agent, fixed
    /// offline.
    pub sampling_seed: u64,
    /// The programs to load: only those the run uses (each costs its verification, and one
    /// a run does not use may need what an older kernel lacks).
    pub programs: Vec<&'static str>,
    /// Report the kernel's drops with their reasons where it has them (live only).
    pub drops: bool,
    /// Report TCP retransmissions and sample sockets' smoothed RTT (live only).
    pub tcp_health: bool,
    /// The least time between two smoothed-RTT samples of one flow direction (the scan
    /// interval: at most one sample per flow per scan).
    pub srtt_period_ns: u64,
}

impl LoadOptions {
    /// Defaults for tests and tools: DNS on port 53, design.md's sizes.
    pub fn new(offline: bool, flow_map_entries: u32) -> Self {
        Self {
            offline,
            flow_map_entries,
            wake_interval_ns: devourer_common::flow::DEFAULT_WAKE_INTERVAL_NS,
            hook_horizon_ns: devourer_common::flow::DEFAULT_HOOK_HORIZON_NS,
            hook_memory: true,
            dns_ports: vec![53],
            dns_cap: PAYLOAD_CAP_MAX as u32,
            dns_ring_bytes: DEFAULT_DNS_RING_BYTES,
            http_ports: Vec::new(),
            http_cap: DEFAULT_HTTP_CAP,
            http_ring_bytes: DEFAULT_HTTP_RING_BYTES,
            tls: true,
            tls_ring_bytes: DEFAULT_TLS_RING_BYTES,
            percpu_map_entries: 1,
            per_interface: false,
            sampling: 1,
            sampling_seed: if offline {
                OFFLINE_SAMPLING_SEED
            } else {
                fastrand::u64(..)
            },
            programs: vec![PROG_TC_INGRESS, PROG_TC_EGRESS, PROG_XDP],
            drops: !offline,
            tcp_health: !offline,
            srtt_period_ns: 1_000_000_000,
        }
    }
}

/// The loaded program and the maps the agent reads.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub flows: KernelFlows,
    pub overflow: HashReader<OverflowKey, OverflowValue>,
    /// Offline replay's second map set, 1 (one entry each in the live agent).
    pub flows_b: KernelFlows,
    pub overflow_b: HashReader<OverflowKey, OverflowValue>,
    /// Which set the agent reads: 0 (`flows`, `overflow`) or offline replay's 1.
    pub reading: u32,
    pub counters: Counters,
    pub wakeup: RingBuf<MapData>,
    pub dns: RingBuf<MapData>,
    pub http: RingBuf<MapData>,
    pub tls: RingBuf<MapData>,
    /// The program's own log lines, when the agent logs `devourer::kernel` at debug.
    pub log: Option<KernelLog>,
    pub ncpus: usize,
    /// What the kernel can do (and what the program was loaded to do without).
    pub features: Features,
    /// Live counting alternates the map sets (kernels without atomic lookup-and-delete).
    pub alternation: Option<Alternation>,
    /// The drop program, attached where the kernel reports drop reasons.
    pub drops: Option<DropProbe>,
    /// The retransmit program, attached where the kernel has the tracepoint and BTF.
    pub retransmits: Option<RetransmitProbe>,
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

pub(super) fn classify(e: impl std::error::Error + Send + Sync + 'static) -> LoadError {
    if is_eperm(&e) {
        LoadError::Permission(Box::new(e))
    } else {
        LoadError::Load {
            kernel: running_kernel(),
            source: Box::new(e),
        }
    }
}

/// The running kernel's release, as `uname -r` prints it.
fn running_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|e| format!("(unknown: {e})"), |r| r.trim().to_owned())
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

/// Ports as the program's fixed slots (0 = unused).
fn slots(ports: &[u16]) -> [u16; PORT_SLOTS] {
    let mut out = [0u16; PORT_SLOTS];
    for (slot, p) in out.iter_mut().zip(ports) {
        *slot = *p;
    }
    out
}

/// Loads the agent's object: creates the maps (flow map sized as asked) and loads the TC and
/// XDP programs (attaching picks the ones a mode uses; replay runs one).
pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    load_object(AGENT_OBJECT, opts)
}

/// Loads the benchmarks' object, with the same settings as the agent's.
#[cfg(feature = "bench-programs")]
pub fn load_bench(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    load_object(BENCH_OBJECT, opts)
}

fn load_object(object: &[u8], opts: &LoadOptions) -> Result<Loaded, LoadError> {
    check_kernel()?;
    raise_memlock();
    let features = Features::probe();
    features.log();
    // Live counting cannot take entries out of a map packets update without an atomic
    // lookup-and-delete: it alternates the two map sets as offline replay does.
    let alternate = !opts.offline && !features.lookup_and_delete;
    let mut programs = opts.programs.clone();
    if opts.offline && !features.xdp_test_run_ctx && programs.contains(&PROG_XDP) {
        tracing::info!(
            "this kernel's BPF_PROG_TEST_RUN takes no XDP context (5.15): replaying with the TC program"
        );
        programs.retain(|p| *p != PROG_XDP);
        if !programs.contains(&PROG_TC_INGRESS) {
            programs.push(PROG_TC_INGRESS);
        }
    }
    let offline: u8 = opts.offline.into();
    let dns_cap = opts.dns_cap.min(PAYLOAD_CAP_MAX as u32);
    let http_cap = opts.http_cap.min(PAYLOAD_CAP_MAX as u32);
    // Offline, the reader drains the rings after every frame: wake-ups would only cost.
    let rb_flags: u64 = if opts.offline { BPF_RB_NO_WAKEUP } else { 0 };
    let log_level: u8 = if KernelLog::wanted() { 4 } else { 0 };
    let per_interface: u8 = opts.per_interface.into();
    let hook_memory: u8 = (opts.hook_memory && !opts.per_interface).into();
    // The memory is refreshed at least twice per horizon.
    let refresh_shift: u32 = 63 - (opts.hook_horizon_ns / 2).max(2).leading_zeros();
    let alternate_flag: u8 = alternate.into();
    let xdp_load_bytes: u8 = features.xdp_load_bytes.into();
    // Only offline replay, and live counting that alternates, count in the other map sets.
    let (second_entries, second_overflow) = if opts.offline || alternate {
        (opts.flow_map_entries, OVERFLOW_MAP_ENTRIES)
    } else {
        (1, 1)
    };
    // Drops: where this kernel's kfree_skb carries a reason, the drop program's offsets from
    // its BTF; elsewhere the program stays unloaded and its maps at one entry.
    let drop_support = if opts.drops && !opts.offline {
        match Support::running() {
            Ok(s) => Some(s),
            Err(why) => {
                tracing::info!("kernel drops are not reported: {why}");
                None
            }
        }
    } else {
        None
    };
    let skb_offsets = drop_support
        .as_ref()
        .map_or(SkbOffsets::ZERO, |s| s.offsets);
    let (drop_entries, reason_entries) = if drop_support.is_some() {
        (DROPS_MAP_ENTRIES, DROP_REASONS_ENTRIES)
    } else {
        (1, 1)
    };
    // TCP health: the retransmit program's offsets from BTF (else it stays unloaded), and the
    // counting program's RTT sampling period as a power of two at least the period.
    let tcp_health = opts.tcp_health && !opts.offline;
    let sock_offsets = if tcp_health {
        super::tcp::running()
            .inspect_err(|why| tracing::info!("TCP retransmits are not reported: {why}"))
            .ok()
    } else {
        None
    };
    let srtt_shift: u32 = if tcp_health {
        64 - opts.srtt_period_ns.max(2).saturating_sub(1).leading_zeros()
    } else {
        0
    };
    let mut ebpf = EbpfLoader::new()
        // Only the agent's object has the drop program.
        .override_global(GLOBAL_SKB_OFFSETS, &skb_offsets, false)
        .override_global(
            GLOBAL_SOCK_OFFSETS,
            &sock_offsets.unwrap_or(SockOffsets::ZERO),
            false,
        )
        .override_global(GLOBAL_SRTT_SHIFT, &srtt_shift, false)
        .map_max_entries(
            RETRANSMITS_MAP,
            if sock_offsets.is_some() {
                RETRANSMITS_ENTRIES
            } else {
                1
            },
        )
        .map_max_entries(
            PEER_NETNS_MAP,
            if tcp_health { PEER_NETNS_ENTRIES } else { 1 },
        )
        .map_max_entries(DROPS_MAP, drop_entries)
        .map_max_entries(DROP_REASONS_MAP, reason_entries)
        .override_global(GLOBAL_SAMPLING, &opts.sampling, true)
        .override_global(GLOBAL_SAMPLING_SEED, &opts.sampling_seed, true)
        .override_global(GLOBAL_OFFLINE, &offline, true)
        .override_global(GLOBAL_WAKE_INTERVAL_NS, &opts.wake_interval_ns, true)
        .override_global(GLOBAL_HOOK_HORIZON_NS, &opts.hook_horizon_ns, true)
        .override_global(GLOBAL_HOOK_REFRESH_SHIFT, &refresh_shift, true)
        .override_global(GLOBAL_HOOK_MEMORY, &hook_memory, true)
        .override_global(GLOBAL_PER_INTERFACE, &per_interface, true)
        .override_global(GLOBAL_ALTERNATE, &alternate_flag, true)
        .override_global(GLOBAL_XDP_LOAD_BYTES, &xdp_load_bytes, true)
        .override_global(GLOBAL_DNS_PORTS, &slots(&opts.dns_ports), true)
        .override_global(GLOBAL_DNS_CAP, &dns_cap, true)
        .override_global(GLOBAL_RB_FLAGS, &rb_flags, true)
        .override_global(GLOBAL_HTTP_PORTS, &slots(&opts.http_ports), true)
        .override_global(GLOBAL_HTTP_CAP, &http_cap, true)
        .override_global(GLOBAL_TLS, &u8::from(opts.tls), true)
        .override_global(AYA_LOG_LEVEL, &log_level, true)
        .map_max_entries(FLOWS_MAP, opts.flow_map_entries)
        .map_max_entries(FLOWS_B_MAP, second_entries)
        .map_max_entries(OVERFLOW_B_MAP, second_overflow)
        .map_max_entries(
            HOOKS_MAP,
            if hook_memory != 0 {
                opts.flow_map_entries
            } else {
                1
            },
        )
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
        .map_max_entries(TLS_RING, tls_ring_bytes(opts))
        .map_max_entries(PERCPU_FLOWS_MAP, opts.percpu_map_entries.max(1))
        .load(object)
        .map_err(classify)?;
    let wanted = |name: &str| programs.contains(&name);
    for name in [PROG_TC_INGRESS, PROG_TC_EGRESS]
        .into_iter()
        .filter(|n| wanted(n))
    {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(LoadError::Missing(name))?
            .try_into()
            .map_err(classify)?;
        prog.load().map_err(classify)?;
    }
    if wanted(PROG_XDP) {
        let xdp: &mut Xdp = ebpf
            .program_mut(PROG_XDP)
            .ok_or(LoadError::Missing(PROG_XDP))?
            .try_into()
            .map_err(classify)?;
        xdp.load().map_err(classify)?;
    }

    let ncpus = aya::util::nr_cpus().map_err(|(_, e)| LoadError::Map("possible cpus", e))?;
    let drops = drop_support.and_then(|s| {
        DropProbe::attach(&mut ebpf, ncpus, s.names)
            .inspect_err(|why| tracing::warn!("kernel drops are not reported: {why}"))
            .ok()
    });
    let retransmits = sock_offsets.and_then(|_| {
        RetransmitProbe::attach(&mut ebpf, ncpus)
            .inspect_err(|why| tracing::warn!("TCP retransmits are not reported: {why}"))
            .ok()
    });
    let mut features = features;
    features.drop_reason = drops.is_some();
    features.tcp_retransmits = retransmits.is_some();
    let take =
        |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(LoadError::Missing(name));
    let flows = hash_reader(&mut ebpf, FLOWS_MAP, ncpus, opts.flow_map_entries)?;
    let overflow = hash_reader(&mut ebpf, OVERFLOW_MAP, ncpus, OVERFLOW_MAP_ENTRIES)?;
    let flows_b = hash_reader(&mut ebpf, FLOWS_B_MAP, ncpus, second_entries)?;
    let overflow_b = hash_reader(&mut ebpf, OVERFLOW_B_MAP, ncpus, second_overflow)?;
    let counters = Counters::new(take(&mut ebpf, COUNTERS_MAP)?, ncpus)
        .map_err(|e| LoadError::Map(COUNTERS_MAP, e))?;
    let wakeup = RingBuf::try_from(take(&mut ebpf, WAKEUP_RING)?).map_err(classify)?;
    let dns = RingBuf::try_from(take(&mut ebpf, DNS_RING)?).map_err(classify)?;
    let http = RingBuf::try_from(take(&mut ebpf, HTTP_RING)?).map_err(classify)?;
    let tls = RingBuf::try_from(take(&mut ebpf, TLS_RING)?).map_err(classify)?;
    let log = if log_level > 0 {
        KernelLog::start(&mut ebpf)
    } else {
        None
    };
    // Without alternation the set map stays in `ebpf`: programs loaded later (the L3 ones)
    // are relocated against its fd, which must stay open.
    let alternation = if alternate {
        let set = take(&mut ebpf, SET_MAP)?;
        Some(Alternation::new(set).map_err(|e| LoadError::Map(SET_MAP, e))?)
    } else {
        None
    };
    Ok(Loaded {
        ebpf,
        flows: KernelFlows(flows),
        overflow,
        flows_b: KernelFlows(flows_b),
        overflow_b,
        reading: 0,
        counters,
        wakeup,
        dns,
        http,
        tls,
        log,
        ncpus,
        features,
        alternation,
        drops,
        retransmits,
    })
}

/// Takes hash map `name` out of `ebpf`, to be read as one of `entries` entries.
fn hash_reader<K: Copy, V: Copy>(
    ebpf: &mut Ebpf,
    name: &'static str,
    ncpus: usize,
    entries: u32,
) -> Result<HashReader<K, V>, LoadError> {
    let map = ebpf.take_map(name).ok_or(LoadError::Missing(name))?;
    HashReader::new(map, ncpus, entries as usize).map_err(|e| LoadError::Map(name, e))
}

/// Bytes a preallocated BPF hash map element takes besides its key and value (the kernel's
/// `htab_elem` header), and a bucket.
const HTAB_ELEM_HEADER: u64 = 48;
const HTAB_BUCKET: u64 = 16;

/// Estimated kernel memory of a preallocated hash map: its elements (the kernel adds one spare
/// per CPU) and buckets (entries rounded up to a power of two).
fn hash_map_bytes(entries: u64, ncpus: u64, key: u64, value: u64) -> u64 {
    let elem = HTAB_ELEM_HEADER + key.next_multiple_of(8) + value.next_multiple_of(8);
    (entries + ncpus) * elem + entries.next_power_of_two() * HTAB_BUCKET
}

/// Estimated kernel memory of the maps `opts` loads with on `ncpus` CPUs: the shared flow map
/// (flat in the CPU count), the rings, and what is per CPU (the small overflow map's values,
/// counters and scratch space); `sets` flow and overflow maps of that size (2 where counting
/// alternates them); the counting hooks' memory. `devourer_kernel_map_bytes`, and
/// `config check`.
pub fn map_bytes(opts: &LoadOptions, ncpus: u64, sets: u64) -> u64 {
    use devourer_common::{
        flow::{CounterBlock, FlowKey, FlowValue},
        payload::PayloadScratch,
    };
    let size = |n: usize| n as u64;
    let flows = hash_map_bytes(
        u64::from(opts.flow_map_entries),
        ncpus,
        size(size_of::<FlowKey>()),
        size(size_of::<FlowValue>()),
    );
    // Per-CPU values live apart from the element, which holds a pointer to them.
    let overflow = hash_map_bytes(u64::from(OVERFLOW_MAP_ENTRIES), ncpus, 8, 8)
        + u64::from(OVERFLOW_MAP_ENTRIES) * ncpus * size(size_of::<OverflowValue>());
    let http_ring = if opts.http_ports.is_empty() {
        page_size()
    } else {
        opts.http_ring_bytes
    };
    let rings = u64::from(opts.dns_ring_bytes)
        + u64::from(http_ring)
        + u64::from(tls_ring_bytes(opts))
        + 4096;
    let per_cpu = size(size_of::<CounterBlock>() + size_of::<PayloadScratch>()) + 512;
    // The counting hooks' memory: a key and 16 bytes per flow map entry, in an LRU hash.
    let hooks = if opts.hook_memory && !opts.per_interface {
        hash_map_bytes(
            u64::from(opts.flow_map_entries),
            ncpus,
            size(size_of::<FlowKey>()),
            16,
        )
    } else {
        0
    };
    // The drop maps (where the kernel reports drops: live, 5.17 and newer), per-CPU values.
    let drops = if opts.drops && !opts.offline {
        let value = size(size_of::<devourer_common::drop::DropValue>());
        let key = size(size_of::<devourer_common::drop::DropKey>());
        let (tuples, reasons) = (
            u64::from(DROPS_MAP_ENTRIES),
            u64::from(DROP_REASONS_ENTRIES),
        );
        hash_map_bytes(tuples, ncpus, key, 8)
            + tuples * ncpus * value
            + hash_map_bytes(reasons, ncpus, 4, 8)
            + reasons * ncpus * value
    } else {
        0
    };
    // The retransmit map (shared values) and the peer namespaces, where TCP health is on.
    let tcp = if opts.tcp_health && !opts.offline {
        hash_map_bytes(
            u64::from(RETRANSMITS_ENTRIES),
            ncpus,
            size(size_of::<FlowKey>()),
            8,
        ) + hash_map_bytes(u64::from(PEER_NETNS_ENTRIES), ncpus, 4, 4)
    } else {
        0
    };
    (flows + overflow) * sets.max(1) + hooks + rings + per_cpu * ncpus + drops + tcp
}

/// The TLS ring's size: its smallest (one page) when TLS is off, nothing being sent to it.
fn tls_ring_bytes(opts: &LoadOptions) -> u32 {
    if opts.tls {
        opts.tls_ring_bytes
    } else {
        page_size()
    }
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

impl Loaded {
    /// Loads one of the bench object's extra programs (an empty one, the shared-map variant)
    /// and returns its fd.
    #[cfg(feature = "bench-programs")]
    pub fn load_bench_program(&mut self, name: &'static str) -> Result<i32, LoadError> {
        let prog = self
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
        self.prog_fd(name)
    }

    /// The raw fd of a loaded program, for BPF_PROG_TEST_RUN.
    pub fn prog_fd(&self, name: &'static str) -> Result<i32, LoadError> {
        let prog = self.ebpf.program(name).ok_or(LoadError::Missing(name))?;
        let fd = prog.fd().map_err(classify)?;
        Ok(fd.as_fd().as_raw_fd())
    }
}
