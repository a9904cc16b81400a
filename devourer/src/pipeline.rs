//! The userspace pipeline shared by live capture and offline replay: scans the flow table,
//! turns due flows into records and hands them to the sink; reports what the kernel counted
//! outside flows.

use std::{collections::HashMap, io};

use devourer_common::flow::{OverflowKey, OverflowValue};

use crate::{
    flow::{Emitted, FlowSource, FlowTable, ScanStats, Status, TableConfig},
    kmaps::{KernelCounters, PerCpuHash, read_overflow},
    record::{Clock, FlowRecord, RecordContext, protocol_name},
    sink::JsonLinesSink,
};

pub struct Pipeline {
    pub table: FlowTable,
    pub sink: JsonLinesSink,
    pub agent: String,
    pub clock: Clock,
    /// ifindex -> interface name for records.
    pub names: HashMap<u32, String>,
    /// Name for interfaces not in `names`.
    pub default_name: String,
    pub scan_stats: ScanStats,
    pub records: u64,
}

impl Pipeline {
    pub fn new(cfg: TableConfig, sink: JsonLinesSink, agent: String, clock: Clock) -> Self {
        Self {
            table: FlowTable::new(cfg),
            sink,
            agent,
            clock,
            names: HashMap::new(),
            default_name: "unknown".into(),
            scan_stats: ScanStats::default(),
            records: 0,
        }
    }

    fn emit(&mut self, emitted: &[Emitted]) -> bool {
        let names = &self.names;
        let default = &self.default_name;
        let name = |idx: u32| names.get(&idx).cloned().unwrap_or_else(|| default.clone());
        let cx = RecordContext {
            agent: &self.agent,
            clock: self.clock,
            interface_name: &name,
        };
        let records: Vec<FlowRecord> = emitted.iter().map(|e| FlowRecord::new(e, &cx)).collect();
        self.records += records.len() as u64;
        self.sink.send(&records)
    }

    /// One scan at `now`; returns `Ok(false)` when the output has closed.
    pub fn scan(&mut self, src: &mut dyn FlowSource, now: u64, pressure: bool) -> io::Result<bool> {
        let mut stats = self.scan_stats;
        let out = self.table.scan(src, now, pressure, &mut stats)?;
        self.scan_stats = stats;
        Ok(self.emit(&out))
    }

    /// Stops the sink, waiting up to `deadline`; returns (records emitted, records dropped).
    pub fn finish(self, deadline: std::time::Duration) -> (u64, u64) {
        let stats = self.sink.stats.clone();
        self.sink.finish(deadline);
        (
            self.records,
            stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Emits every open flow with `status` and empties the kernel map.
    pub fn flush(&mut self, src: &mut dyn FlowSource, status: Status) -> io::Result<bool> {
        let out = self.table.flush(src, status)?;
        Ok(self.emit(&out))
    }
}

/// What the kernel counted outside flow records, for the closing summary and warnings.
pub fn report_kernel(
    counters: &KernelCounters,
    overflow: &mut PerCpuHash<OverflowKey, OverflowValue>,
    names: &dyn Fn(u32) -> String,
) -> io::Result<()> {
    tracing::info!(
        packets = counters.packets,
        non_ip = counters.non_ip,
        malformed = counters.malformed,
        map_full = counters.map_full,
        overflow_full_packets = counters.overflow_full_packets,
        "kernel counters"
    );
    for (k, v) in read_overflow(overflow)? {
        tracing::warn!(
            interface = %names(k.ifindex),
            protocol = %protocol_name(k.proto),
            packets = v.packets,
            bytes = v.bytes,
            "counted in the overflow map, not in flow records (the flow map was full; raise --flow-map-entries)"
        );
    }
    if counters.overflow_full_packets > 0 {
        tracing::error!(
            packets = counters.overflow_full_packets,
            bytes = counters.overflow_full_bytes,
            "the overflow map was full too: these were counted only in totals"
        );
    }
    Ok(())
}
