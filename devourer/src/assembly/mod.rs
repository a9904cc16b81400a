//! The one assembly both drivers run: loads the kernel program from the configuration
//! ([`load_kernel`]), builds the pipeline behind it (flow table, DNS and HTTP trackers, sinks,
//! metrics: [`build`], [`pipeline`]), moves payload events and kernel entries through it, and
//! shuts everything down once, against one deadline ([`Assembly::shutdown`], [`summary`]).

pub mod build;
pub mod pipeline;
pub mod summary;
#[cfg(test)]
mod tests;

use std::{io, sync::Arc, time::Instant};

use anyhow::{Context, Result};
use devourer_common::{
    flow::{OverflowKey, OverflowValue, REPLAY_SETS},
    payload::PayloadHeader,
};

use self::pipeline::Pipeline;
use crate::{
    config::PipelineArgs,
    flow::{FlowSource, Reports, Status, drops::Drop},
    kernel::{
        events::{self, PayloadKind},
        maps::{KernelCounters, take_overflow},
        object::{self, Loaded},
    },
    ops::metrics::Metrics,
};

/// What the assembly needs from the kernel side: the flow map, the payload and wake-up rings,
/// the counters and the overflow aggregates. The loaded program provides them; tests provide
/// fakes.
pub trait Kernel {
    fn flows(&mut self) -> &mut dyn FlowSource;
    /// Hands the events waiting in ring `kind` to `f`, at most `max`; returns how many.
    fn payloads(
        &mut self,
        kind: PayloadKind,
        max: usize,
        f: &mut dyn FnMut(&PayloadHeader, &[u8]),
    ) -> usize;
    /// Empties the wake-up ring; `true` when the program asked for an early eviction.
    fn woken(&mut self) -> bool;
    fn counters(&self) -> io::Result<KernelCounters>;
    /// Takes what the overflow map aggregated since the last call.
    fn take_overflow(&mut self) -> io::Result<Vec<(OverflowKey, OverflowValue)>>;
    /// Forwards the program's own log lines, if it logs.
    fn forward_log(&mut self) {}
    /// Which map set `flows` and `take_overflow` read from now on: 0, or offline replay's 1
    /// (see [`Assembly::read_set`]).
    fn read_set(&mut self, _set: u32) {}
    /// Live counting that alternates map sets (kernels before 5.14): points the program at
    /// the other set and reads the idle one from now on; `Ok(false)` where counting does not
    /// alternate.
    fn flip(&mut self) -> io::Result<bool> {
        Ok(false)
    }
    /// Whether live counting alternates map sets (each scan then drains a whole set).
    fn alternates(&self) -> bool {
        false
    }
    /// Whether the kernel reports drops (records then carry them).
    fn follows_drops(&self) -> bool {
        false
    }
    /// Takes the drops by tuple and reason since the last call.
    fn take_drops(&mut self) -> io::Result<Vec<Drop>> {
        Ok(Vec::new())
    }
    /// Every drop so far by reason: (name, packets, bytes).
    fn drop_totals(&mut self) -> io::Result<Vec<(&'static str, u64, u64)>> {
        Ok(Vec::new())
    }
    /// Whether the kernel reports TCP retransmissions (TCP records then carry them).
    fn follows_retransmits(&self) -> bool {
        false
    }
    /// What the kernel reported by tuple since the last call: drops, then retransmissions.
    fn take_reports(&mut self) -> io::Result<Reports> {
        Ok(Reports {
            drops: self.take_drops()?,
            retransmits: Vec::new(),
        })
    }
}

impl Kernel for Loaded {
    fn flows(&mut self) -> &mut dyn FlowSource {
        if self.reading == 0 {
            &mut self.flows
        } else {
            &mut self.flows_b
        }
    }

    fn payloads(
        &mut self,
        kind: PayloadKind,
        max: usize,
        f: &mut dyn FnMut(&PayloadHeader, &[u8]),
    ) -> usize {
        let ring = match kind {
            PayloadKind::Dns => &mut self.dns,
            PayloadKind::Http => &mut self.http,
            PayloadKind::Tls => &mut self.tls,
        };
        events::drain(kind, ring, max, f)
    }

    fn woken(&mut self) -> bool {
        let mut woken = false;
        while self.wakeup.next().is_some() {
            woken = true;
        }
        woken
    }

    fn counters(&self) -> io::Result<KernelCounters> {
        self.counters.read()
    }

    fn take_overflow(&mut self) -> io::Result<Vec<(OverflowKey, OverflowValue)>> {
        take_overflow(if self.reading == 0 {
            &mut self.overflow
        } else {
            &mut self.overflow_b
        })
    }

    fn read_set(&mut self, set: u32) {
        self.reading = set % REPLAY_SETS;
    }

    fn flip(&mut self) -> io::Result<bool> {
        let Some(a) = &mut self.alternation else {
            return Ok(false);
        };
        self.reading = a.flip()?;
        Ok(true)
    }

    fn alternates(&self) -> bool {
        self.alternation.is_some()
    }

    fn forward_log(&mut self) {
        if let Some(log) = &mut self.log {
            log.flush();
        }
    }

    fn follows_drops(&self) -> bool {
        self.drops.is_some()
    }

    fn take_drops(&mut self) -> io::Result<Vec<Drop>> {
        self.drops.as_mut().map_or(Ok(Vec::new()), |d| d.take())
    }

    fn drop_totals(&mut self) -> io::Result<Vec<(&'static str, u64, u64)>> {
        self.drops.as_mut().map_or(Ok(Vec::new()), |d| d.totals())
    }

    fn follows_retransmits(&self) -> bool {
        self.retransmits.is_some()
    }

    fn take_reports(&mut self) -> io::Result<Reports> {
        Ok(Reports {
            drops: self.take_drops()?,
            retransmits: self
                .retransmits
                .as_mut()
                .map_or(Ok(Vec::new()), |r| r.take())?,
        })
    }
}

/// Which driver runs the assembly; the parts that differ between them follow from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// Live capture: the program's clock is the kernel's, each sink drops (and counts)
    /// records past its queue's bounds, this host's addresses come from its interfaces too.
    Live {
        sink_queue: crate::sink::QueueLimits,
    },
    /// Replay of a capture file: the file's clock, an output that waits rather than drops,
    /// only `--local-net` for this host's addresses; thousands of flow records due at once
    /// (the last flush above all, when the feeding threads are idle) are built and
    /// serialised on `threads` threads. `one_interface`: the capture has one interface (a
    /// classic pcap), so the kernel need not remember counting hooks across map sets.
    Replay { threads: usize, one_interface: bool },
}

/// Loads the kernel program with the settings `p` asks for (replay: the offline variant).
pub fn load_kernel(p: &PipelineArgs, driver: Driver) -> Result<Loaded> {
    crate::config::filter::check_count(&p.flow.filters).map_err(|e| anyhow::anyhow!(e.0))?;
    let opts = build::load_options(p, &driver);
    object::load(&opts).context("loading the kernel program")
}

/// The kernel side and the pipeline that reads it.
pub struct Assembly<K: Kernel = Loaded> {
    pub kernel: K,
    pub pipeline: Pipeline,
    last_map_full: u64,
}

/// What a finished run counted.
#[derive(Debug)]
pub struct Finished {
    pub counters: KernelCounters,
    /// Records emitted (flows, DNS, HTTP).
    pub records: u64,
    /// Records the sinks dropped.
    pub dropped: u64,
}

impl<K: Kernel> Assembly<K> {
    /// Builds the pipeline for `kernel` (sinks start here: BigQuery's set-up may wait).
    pub fn new(
        kernel: K,
        p: &PipelineArgs,
        driver: Driver,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self> {
        let parts = build::parts(p, &driver, metrics, kernel.alternates())?;
        let mut pipeline = Pipeline::new(parts);
        if kernel.follows_drops() {
            pipeline.follow_drops();
        }
        if kernel.follows_retransmits() {
            pipeline.follow_retransmits();
        }
        Ok(Self {
            kernel,
            pipeline,
            last_map_full: 0,
        })
    }

    /// Moves the events waiting in ring `kind` into its tracker, at most `max` (a live turn
    /// takes a bounded share so that a flood cannot starve scans and signals); returns how
    /// many. Their records wait for [`Pipeline::emit`] (or the next scan).
    pub fn payloads(&mut self, kind: PayloadKind, max: usize) -> usize {
        let pipeline = &mut self.pipeline;
        self.kernel.payloads(kind, max, &mut |h, payload| {
            pipeline.payload(kind, h, payload)
        })
    }

    /// Empties the wake-up ring; `true` when the program asked for an early eviction (its
    /// flow map filled up).
    pub fn woken(&mut self) -> bool {
        self.kernel.woken()
    }

    /// Offline replay: the scans and the final flush from now on read map set `set` (0 or 1).
    /// Replay takes every entry out of a set at its scan (see
    /// [`crate::flow::TableConfig::drain`]), so a set holds one scan interval's packets.
    pub fn read_set(&mut self, set: u32) {
        self.kernel.read_set(set);
    }

    /// One scan of the flow map at `now` (program clock), then what the overflow map holds
    /// as overflow records; `Ok(false)` when an output closed.
    pub fn scan(&mut self, now: u64, pressure: bool) -> io::Result<bool> {
        self.kernel.forward_log();
        // The handshakes waiting in their ring first (a few MiB at most): a hello was counted
        // before it was forwarded, so its flow is in the map read after, and a flow cut in
        // this scan still carries what its hello said.
        self.payloads(PayloadKind::Tls, usize::MAX);
        // Where counting alternates map sets, the scan reads the set it just left, whole.
        self.kernel.flip()?;
        // Drops first: a dropped packet was counted before it was dropped, so its flow is in
        // the flow map read after (a retransmitted segment likewise).
        let reports = self.kernel.take_reports()?;
        let open = self
            .pipeline
            .scan(self.kernel.flows(), now, pressure, &reports)?;
        let overflow = self.kernel.take_overflow()?;
        Ok(self.pipeline.emit_overflow(&overflow, now) && open)
    }

    /// Reads the kernel counters into the metrics, warning when the flow map filled up since
    /// the last call.
    pub fn observe(&mut self) -> Result<()> {
        let counters = self.kernel.counters().context("reading kernel counters")?;
        if counters.map_full() > self.last_map_full {
            tracing::warn!(
                packets = counters.map_full() - self.last_map_full,
                kernel_entries = self.pipeline.kernel_entries(),
                "flow map full: packets went to the overflow map; evicting early"
            );
            self.last_map_full = counters.map_full();
        }
        self.pipeline.update_metrics(&counters);
        let drops = self.kernel.drop_totals().context("reading the drop map")?;
        self.pipeline.update_drop_metrics(&drops);
        self.pipeline
            .forget_gone_interfaces(std::time::Instant::now());
        Ok(())
    }

    /// Stops once, after the driver detached the program (nothing is counted after the final
    /// read): takes the events still in the rings, emits every open flow with `status` at
    /// `now()` (program clock, read after the rings), logs the summary, and lets the sinks
    /// deliver until `deadline`.
    pub fn shutdown(
        mut self,
        status: Status,
        now: impl FnOnce() -> u64,
        deadline: Instant,
    ) -> Result<Finished> {
        for kind in PayloadKind::ALL {
            self.payloads(kind, usize::MAX);
        }
        let Self {
            mut kernel,
            mut pipeline,
            ..
        } = self;
        let now = now();
        let reports = kernel
            .take_reports()
            .context("reading the drop and retransmit maps")?;
        if kernel.flip().context("switching map sets")? {
            // The set counted in since the last scan, then every open flow.
            pipeline
                .scan(kernel.flows(), now, false, &reports)
                .context("reading the last map set")?;
            pipeline
                .flush(kernel.flows(), status, now, &Reports::default())
                .context("flushing the flow map")?;
        } else {
            pipeline
                .flush(kernel.flows(), status, now, &reports)
                .context("flushing the flow map")?;
        }
        let overflow = kernel.take_overflow().context("reading the overflow map")?;
        pipeline.emit_overflow(&overflow, now);
        if let Some(dns) = pipeline.dns() {
            summary::dns(dns);
        }
        if let Some(http) = pipeline.http() {
            summary::http(http);
        }
        kernel.forward_log();
        let counters = kernel.counters().context("reading kernel counters")?;
        let counters = pipeline.with_filtered(&counters);
        summary::kernel(&counters, pipeline.overflow_totals());
        let (records, dropped) = pipeline.finish(deadline);
        Ok(Finished {
            counters,
            records,
            dropped,
        })
    }
}
