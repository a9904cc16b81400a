//! The replay driver (`devourer read FILE`): every recorded frame goes through the assembly's
//! kernel program with BPF_PROG_TEST_RUN, the file's timestamps as its clock, then through the
//! same pipeline as live capture. Timeouts fire on the file's clock. A second thread reads and
//! frames the file ([`reader`], [`pcapfile`]); the frames are fed by one thread per CPU
//! ([`lanes`] says which), which meet after every segment and at every scan boundary. The
//! program counts each scan interval's packets in one of two map sets, alternating, so a scan
//! sees exactly the packets before its boundary, as a single-threaded replay would, while the
//! other threads already feed the next interval's into the other set. The hook that counts
//! each flow direction is remembered by the program across the sets (count once per node).

mod feed;
mod lanes;
pub mod pcapfile;
pub mod pcapng;
mod reader;

use std::{io::IsTerminal, process::ExitCode, sync::Arc, time::Instant};

use anyhow::{Context, Result, anyhow, bail};
use devourer_common::flow::REPLAY_SETS;

use self::{
    feed::{Feeder, Pace, Part},
    lanes::Lanes,
    pcapfile::{FrameSkip, PcapFile},
    reader::{Batch, Framed, Reader},
};
use crate::{
    assembly::{self, Assembly, Driver},
    base::time::nanos,
    config::{PipelineArgs, ReplayArgs},
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
    /// Of `fed`, fed by the other threads.
    fed_elsewhere: u64,
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
    /// The map set packets go to now (0 or 1). The other takes over at every scan boundary,
    /// so that one set is scanned while the next interval's packets fill the other.
    set: u32,
    /// A scan boundary whose map set (the other one) has not been scanned yet.
    pending: Option<u64>,
    lanes: Lanes,
    /// The segment being gathered, and its packets.
    open: Vec<Part>,
    open_len: usize,
    /// Its frames' bytes, and how many a segment holds at most (`--replay-segment-bytes`).
    open_bytes: usize,
    segment_bytes: usize,
    /// With several threads, packets a segment holds at most: half the flow map, so that the
    /// map cannot fill between two meetings of the threads from empty, where the early scans
    /// run (an early scan while other threads feed the map it takes from could lose their
    /// updates).
    segment_packets: usize,
    pace: Pace,
    /// Batches every thread is done with, to hand back to the reader.
    spent: Vec<Batch>,
}

pub fn run(args: ReplayArgs) -> Result<ExitCode> {
    let file = PcapFile::open(&args.file)?;
    let file_len = file.file_len;
    caps::check(false).context("checking capabilities")?;
    let p = &args.pipeline;
    let threads = replay_threads(args.replay_threads);
    let driver = Driver::Replay {
        threads,
        one_interface: file.one_interface(),
    };
    let kernel = assembly::load_kernel(p, driver)?;
    let lanes = Lanes::new(threads, payload_ports(p));
    let mut replayers = (0..lanes.count())
        .map(|_| Replayer::new(&kernel, p.flow.mode))
        .collect::<Result<Vec<_>, _>>()?;
    let mut replayer = replayers.remove(0);
    let mut agent = Assembly::new(kernel, p, driver, None)?;
    let bar = progress_bar(&args, file_len);
    let mut replay = Replay {
        interval: nanos(p.flow.scan_interval),
        next_scan: None,
        last_ts: None,
        stats: ReplayStats::default(),
        warned_link: false,
        set: 0,
        pending: None,
        lanes: lanes.clone(),
        open: Vec::new(),
        open_len: 0,
        open_bytes: 0,
        segment_bytes: usize::try_from(args.replay_segment_bytes).unwrap_or(usize::MAX),
        segment_packets: (p.flow.flow_map_entries as usize / 2).max(1),
        pace: Pace::new(lanes.clone()),
        spent: Vec::new(),
    };
    let threads = lanes.count();
    let reader = Reader::start(file, lanes).context("starting the capture reader thread")?;
    let outcome = std::thread::scope(|scope| -> Result<_> {
        // Dropping `feeders` (on any return) closes the jobs; the threads then end.
        let feeders =
            feed::start(scope, replayers, &replay.lanes).context("starting the replay threads")?;
        loop {
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
            let end = batch.end.take();
            let position = batch.position;
            replay.batch(&mut agent, &mut replayer, &feeders, Arc::new(batch))?;
            if end.is_some() {
                replay.segment(&mut agent, &mut replayer, &feeders)?;
            }
            if let Some(bar) = &bar {
                bar.set_position(position);
                bar.set_message(format!("{} packets", replay.stats.packets));
            }
            if let Some(result) = end {
                break Ok(result);
            }
            for b in replay.spent.drain(..) {
                reader.recycle(b);
            }
        }
    })?;
    drop(reader);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    // The last interval's scan, flows that timed out by the file's last timestamp, then
    // everything still open (both reading the map set fed last).
    replay.finish_pending(&mut agent)?;
    agent.read_set(replay.set);
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
        threads,
        replayed_elsewhere = st.fed_elsewhere,
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

/// Most threads `--replay-threads 0` starts (one per CPU up to this).
const MAX_REPLAY_THREADS: usize = 64;

/// `--replay-threads`, 0 meaning one per CPU.
fn replay_threads(asked: u8) -> usize {
    match asked {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_REPLAY_THREADS)),
        n => usize::from(n),
    }
}

/// Every port whose packets the program may copy to a payload ring.
fn payload_ports(p: &PipelineArgs) -> Vec<u16> {
    let mut ports = p.dns.dns_ports.0.clone();
    ports.extend(p.http.ports());
    ports
}

impl Replay {
    /// One batch of packets, gathered into segments that end at the scan boundaries they
    /// cross (and once long enough, see [`Pace::target`]): each segment is fed on every lane;
    /// at a boundary, the packets after it go to the other map set, and the scan of the set
    /// before it runs at the next segment's start.
    fn batch(
        &mut self,
        agent: &mut Assembly,
        replayer: &mut Replayer,
        feeders: &[Feeder],
        batch: Arc<Batch>,
    ) -> Result<()> {
        let mut from = 0;
        let most = if feeders.is_empty() {
            usize::MAX
        } else {
            self.segment_packets
        };
        for (i, pkt) in batch.packets.iter().enumerate() {
            let crossing = self.crossing(pkt.ts_ns);
            if crossing.is_none() && self.open_len + (i - from) < most {
                continue;
            }
            self.gather(&batch, from, i);
            self.segment(agent, replayer, feeders)?;
            from = i;
            let Some(boundary) = crossing else {
                continue;
            };
            // Every lane is done with the packets before the boundary.
            self.finish_pending(agent)?;
            self.pending = Some(boundary);
            self.set = (self.set + 1) % REPLAY_SETS;
        }
        self.gather(&batch, from, batch.packets.len());
        if self.open_len >= self.pace.target(self.pending.is_some())
            || self.open_bytes >= self.segment_bytes
        {
            self.segment(agent, replayer, feeders)?;
        }
        Ok(())
    }

    fn gather(&mut self, batch: &Arc<Batch>, from: usize, to: usize) {
        if from < to {
            self.open.push(Part {
                batch: Arc::clone(batch),
                from,
                to,
            });
            self.open_len += to - from;
            self.open_bytes += batch.span(from, to);
        }
    }

    /// The scan of the map set the packets before the last boundary went to, if it has not
    /// run yet. It empties that set, the next to be fed.
    fn finish_pending(&mut self, agent: &mut Assembly) -> Result<()> {
        if let Some(boundary) = self.pending.take() {
            agent.read_set((self.set + REPLAY_SETS - 1) % REPLAY_SETS);
            if !agent.scan(boundary, false)? {
                bail!("output closed");
            }
        }
        Ok(())
    }

    /// The program filled the map set being fed: evict early, as the live agent does on the
    /// wake-up.
    fn early_scan(&self, agent: &mut Assembly, now: u64) -> Result<()> {
        agent.read_set(self.set);
        if !agent.scan(now, true)? {
            bail!("output closed");
        }
        Ok(())
    }

    /// The scan boundary a packet at `ts` crosses, if any (the next one is then due).
    fn crossing(&mut self, ts: u64) -> Option<u64> {
        let due = *self
            .next_scan
            .get_or_insert(ts.saturating_add(self.interval));
        let (boundary, next) = scan_boundary(due, ts, self.interval)?;
        self.next_scan = Some(next);
        Some(boundary)
    }

    /// The gathered segment, all before the next scan boundary: the other lanes' packets on
    /// their threads, lane 0's here, each followed by the payloads and wake-ups it produced.
    /// The scan of the previous interval's map set runs here while the other lanes feed this
    /// one's (it reads nothing they write), before lane 0's packets, whose payloads must
    /// meet the DNS and HTTP trackers after that scan's expiries.
    fn segment(
        &mut self,
        agent: &mut Assembly,
        replayer: &mut Replayer,
        feeders: &[Feeder],
    ) -> Result<()> {
        if self.open.is_empty() {
            return Ok(());
        }
        let parts = Arc::new(std::mem::take(&mut self.open));
        let scan = self.pending.is_some() && !feeders.is_empty();
        let share = self.pace.share(std::mem::take(&mut self.open_len), scan);
        self.open_bytes = 0;
        if !feed::send(feeders, &parts, self.set, share) {
            bail!("a replay thread stopped");
        }
        let started = Instant::now();
        if self.pending.is_some() {
            self.finish_pending(agent)?;
            self.pace.scanned(started.elapsed());
        }
        for part in parts.iter() {
            for pkt in &part.batch.packets[part.from..part.to] {
                self.packet(agent, replayer, &part.batch, pkt, share)?;
            }
        }
        for f in feeders {
            let fed = feed::finished(f).ok_or_else(|| anyhow!("a replay thread stopped"))?;
            self.stats.fed += fed.fed;
            self.stats.fed_elsewhere += fed.fed;
            self.stats.run_errors += fed.run_errors;
            self.pace.fed(&fed);
        }
        // Any lane may have filled the map: evict early, now that none feeds it.
        let last = parts.last().map(|p| p.batch.packets[p.to - 1].ts_ns);
        if let Some(now) = last
            && !feeders.is_empty()
            && agent.woken()
        {
            self.early_scan(agent, now)?;
        }
        // Every thread is done with these packets: batches no later segment holds go back.
        if let Ok(parts) = Arc::try_unwrap(parts) {
            self.spent.extend(
                parts
                    .into_iter()
                    .filter_map(|p| Arc::try_unwrap(p.batch).ok()),
            );
        }
        Ok(())
    }

    /// One recorded packet: counted, and when it is lane 0's, the program over its frame, then
    /// the payloads and wake-ups that run produced.
    fn packet(
        &mut self,
        agent: &mut Assembly,
        replayer: &mut Replayer,
        batch: &Batch,
        pkt: &Framed,
        share: u32,
    ) -> Result<()> {
        let st = &mut self.stats;
        st.packets += 1;
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
        if self.lanes.lane(pkt.spread, share) != 0 {
            return Ok(());
        }
        let frame = batch.frame(pkt);
        let seen = (pkt.ts_ns, pkt.iface as u32 + 1);
        if let Err(e) = replayer.feed(frame, pkt.wire_len, seen, self.set) {
            st.run_errors += 1;
            tracing::debug!(
                packet = st.packets,
                len = frame.len(),
                "test run refused the frame: {e}"
            );
            return Ok(());
        }
        st.fed += 1;
        for kind in PayloadKind::ALL {
            agent.payloads(kind, usize::MAX);
            if agent.pipeline.backlog(kind) >= EMIT_BATCH && !agent.pipeline.emit(kind) {
                bail!("output closed");
            }
        }
        // Alone, evict as soon as the program asks; beside other threads, at the segment's
        // end, when none of them feeds.
        if self.lanes.count() == 1 && agent.woken() {
            self.early_scan(agent, pkt.ts_ns)?;
        }
        Ok(())
    }
}
