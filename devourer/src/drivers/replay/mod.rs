//! The replay driver (`devourer read FILE`): every recorded frame goes through the assembly's
//! kernel program with BPF_PROG_TEST_RUN, the file's timestamps as its clock, then through the
//! same pipeline as live capture. Timeouts fire on the file's clock. A second thread reads and
//! frames the file ([`reader`], [`pcapfile`]), so the replaying thread only feeds the program.

pub mod pcapfile;
pub mod pcapng;
mod reader;

use std::{io::IsTerminal, process::ExitCode, time::Instant};

use anyhow::{Context, Result, bail};

use self::{
    pcapfile::{FrameSkip, PcapFile},
    reader::{Batch, Framed, Reader},
};
use crate::{
    assembly::{self, Assembly, Driver},
    base::time::nanos,
    config::ReplayArgs,
    flow::Status,
    kernel::{events::PayloadKind, replay::Replayer},
    ops::caps,
};

/// DNS and HTTP records are handed to the sinks in batches of about this many.
const EMIT_BATCH: usize = 1024;

/// What happened to the file's packets before the kernel program saw them.
#[derive(Debug, Default)]
struct ReplayStats {
    packets: u64,
    fed: u64,
    short: u64,
    unsupported_link: u64,
    cut: u64,
    run_errors: u64,
}

/// The replay's position on the file's clock.
struct Replay {
    /// Scan interval, ns of file time.
    interval: u64,
    next_scan: Option<u64>,
    last_ts: Option<u64>,
    stats: ReplayStats,
    warned_link: bool,
}

pub fn run(args: ReplayArgs) -> Result<ExitCode> {
    let file = PcapFile::open(&args.file)?;
    let file_len = file.file_len;
    caps::check(false).context("checking capabilities")?;
    let p = &args.pipeline;
    let kernel = assembly::load_kernel(p, Driver::Replay)?;
    let mut replayer = Replayer::new(&kernel, p.flow.mode)?;
    let mut agent = Assembly::new(kernel, p, Driver::Replay, None)?;
    let bar = progress_bar(&args, file_len);
    let mut replay = Replay {
        interval: nanos(p.flow.scan_interval),
        next_scan: None,
        last_ts: None,
        stats: ReplayStats::default(),
        warned_link: false,
    };
    let reader = Reader::start(file).context("starting the capture reader thread")?;
    let outcome = loop {
        let Ok(mut batch) = reader.batches.recv() else {
            bail!("the capture reader thread stopped before the end of the file");
        };
        // Interface `i` of the file is replayed as ifindex `i + 1` (0 would collide with
        // "unset"), named by its pcapng `if_name`, else `pcap`.
        let known = agent.pipeline.named_interfaces();
        agent.pipeline.name_interfaces(
            batch
                .interfaces
                .iter()
                .enumerate()
                .skip(known)
                .map(|(i, n)| (i as u32 + 1, n.clone().unwrap_or_else(|| "pcap".into()))),
        );
        for pkt in &batch.packets {
            replay.packet(&mut agent, &mut replayer, &batch, pkt)?;
            if let Some(bar) = &bar
                && replay.stats.packets.is_multiple_of(4096)
            {
                bar.set_position(batch.position);
                bar.set_message(format!("{} packets", replay.stats.packets));
            }
        }
        if let Some(result) = batch.end.take() {
            break result;
        }
        reader.recycle(batch);
    };
    drop(reader);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    // Flows that timed out by the file's last timestamp, then everything still open.
    let last_ts = replay.last_ts;
    if let Some(t) = last_ts {
        agent.scan(t, false)?;
    }
    let deadline = Instant::now() + p.shutdown_timeout;
    let done = agent.shutdown(Status::EndOfInput, || last_ts.unwrap_or(0), deadline)?;
    let st = &replay.stats;
    let counters = &done.counters;
    use devourer_common::flow::{C_MALFORMED, C_NON_IP};
    tracing::info!(
        packets = st.packets,
        replayed = st.fed,
        malformed = counters.get(C_MALFORMED) + st.short + st.run_errors,
        non_ip = counters.get(C_NON_IP),
        unsupported_link = st.unsupported_link,
        cut = st.cut,
        records = done.records,
        dropped = done.dropped,
        "replay finished"
    );
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!("{:#}", anyhow::Error::new(e));
            Ok(ExitCode::from(2))
        }
    }
}

fn progress_bar(args: &ReplayArgs, file_len: u64) -> Option<indicatif::ProgressBar> {
    let show = args.progress || (!args.no_progress && std::io::stderr().is_terminal());
    show.then(|| {
        let bar = indicatif::ProgressBar::new(file_len);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} eta {eta} {msg}",
            )
            .expect("progress template")
            .progress_chars("=> "),
        );
        bar
    })
}

/// The replay clock: with the next scan due at `due` (file time) and a packet at `ts`, the
/// scan boundary that packet crosses and when the one after is due; `None` before `due`.
/// Saturating: a corrupt timestamp near `u64::MAX` must not overflow.
pub fn scan_boundary(due: u64, ts: u64, interval: u64) -> Option<(u64, u64)> {
    if ts < due {
        return None;
    }
    let interval = interval.max(1);
    let boundary = due + (ts - due) / interval * interval;
    Some((boundary, boundary.saturating_add(interval)))
}

impl Replay {
    /// One recorded packet: the scans its time crosses, then the program over its frame, then
    /// the payloads and wake-ups that run produced.
    fn packet(
        &mut self,
        agent: &mut Assembly,
        replayer: &mut Replayer,
        batch: &Batch,
        pkt: &Framed,
    ) -> Result<()> {
        let st = &mut self.stats;
        st.packets += 1;
        // Scans at interval boundaries of the file's clock, before the packet that crosses one.
        let due = *self
            .next_scan
            .get_or_insert(pkt.ts_ns.saturating_add(self.interval));
        if let Some((boundary, next)) = scan_boundary(due, pkt.ts_ns, self.interval) {
            if !agent.scan(boundary, false)? {
                bail!("output closed");
            }
            self.next_scan = Some(next);
        }
        self.last_ts = Some(self.last_ts.map_or(pkt.ts_ns, |t| t.max(pkt.ts_ns)));
        match pkt.skip {
            None => {}
            Some((FrameSkip::Short, _)) => {
                st.short += 1;
                return Ok(());
            }
            Some((FrameSkip::UnsupportedLink, linktype)) => {
                if !self.warned_link {
                    tracing::warn!(
                        ?linktype,
                        "skipping packets of an unsupported link type (Ethernet, raw IP, Linux SLL/SLL2 and BSD loopback are replayed)"
                    );
                    self.warned_link = true;
                }
                st.unsupported_link += 1;
                return Ok(());
            }
        }
        st.cut += u64::from(pkt.cut);
        let frame = batch.frame(pkt);
        if let Err(e) = replayer.feed(frame, pkt.wire_len, pkt.ts_ns, pkt.iface as u32 + 1) {
            st.run_errors += 1;
            tracing::debug!(
                packet = st.packets,
                len = frame.len(),
                "test run refused the frame: {e}"
            );
            return Ok(());
        }
        st.fed += 1;
        for kind in [PayloadKind::Dns, PayloadKind::Http] {
            agent.payloads(kind, usize::MAX);
            if agent.pipeline.backlog(kind) >= EMIT_BATCH && !agent.pipeline.emit(kind) {
                bail!("output closed");
            }
        }
        // The map filled up: evict early, as the live agent does on the wake-up.
        if agent.woken() && !agent.scan(pkt.ts_ns, true)? {
            bail!("output closed");
        }
        Ok(())
    }
}
