//! The replay driver (`devourer read FILE`): every recorded frame goes through the assembly's
//! kernel program with BPF_PROG_TEST_RUN, the file's timestamps as its clock, then through the
//! same pipeline as live capture. Timeouts fire on the file's clock. A second thread reads and
//! frames the file ([`reader`], [`pcapfile`]); the frames are fed by one thread per CPU
//! ([`lanes`] says which), which meet at every scan boundary so that a scan sees exactly the
//! packets before it, as a single-threaded replay would.

mod lanes;
pub mod pcapfile;
pub mod pcapng;
mod reader;

use std::{
    io::IsTerminal,
    process::ExitCode,
    sync::{
        Arc,
        mpsc::{Receiver, SyncSender, sync_channel},
    },
    time::Instant,
};

use anyhow::{Context, Result, anyhow, bail};

use self::{
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
}

/// A part of a batch (packets `from..to`) for one feeding thread: the packets of its lane.
struct Job {
    batch: Arc<Batch>,
    from: usize,
    to: usize,
}

/// What a feeding thread did with one job.
#[derive(Default)]
struct Fed {
    fed: u64,
    run_errors: u64,
}

/// The main thread's ends of one feeding thread.
struct Feeder {
    jobs: SyncSender<Job>,
    done: Receiver<Fed>,
}

pub fn run(args: ReplayArgs) -> Result<ExitCode> {
    let file = PcapFile::open(&args.file)?;
    let file_len = file.file_len;
    caps::check(false).context("checking capabilities")?;
    let p = &args.pipeline;
    let kernel = assembly::load_kernel(p, Driver::Replay)?;
    let lanes = Lanes::new(replay_threads(args.replay_threads), payload_ports(p));
    let mut replayers = (0..lanes.count())
        .map(|_| Replayer::new(&kernel, p.flow.mode))
        .collect::<Result<Vec<_>, _>>()?;
    let mut replayer = replayers.remove(0);
    let mut agent = Assembly::new(kernel, p, Driver::Replay, None)?;
    let bar = progress_bar(&args, file_len);
    let mut replay = Replay {
        interval: nanos(p.flow.scan_interval),
        next_scan: None,
        last_ts: None,
        stats: ReplayStats::default(),
        warned_link: false,
    };
    let threads = lanes.count();
    let reader = Reader::start(file, lanes).context("starting the capture reader thread")?;
    let outcome = std::thread::scope(|scope| -> Result<_> {
        // Dropping `feeders` (on any return) closes the jobs; the threads then end.
        let feeders = replayers
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let (jobs, job_rx) = sync_channel(1);
                let (done_tx, done) = sync_channel(1);
                let lane = u8::try_from(i + 1).expect("lanes fit in u8");
                std::thread::Builder::new()
                    .name(format!("replay-{lane}"))
                    .spawn_scoped(scope, move || feed_lane(lane, r, &job_rx, &done_tx))?;
                Ok(Feeder { jobs, done })
            })
            .collect::<std::io::Result<Vec<_>>>()
            .context("starting the replay threads")?;
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
            let batch = Arc::new(batch);
            replay.batch(&mut agent, &mut replayer, &feeders, &batch)?;
            if let Some(bar) = &bar {
                bar.set_position(batch.position);
                bar.set_message(format!("{} packets", replay.stats.packets));
            }
            if let Some(result) = end {
                break Ok(result);
            }
            // Every feeding thread has dropped its reference by now.
            if let Ok(b) = Arc::try_unwrap(batch) {
                reader.recycle(b);
            }
        }
    })?;
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

/// A feeding thread: runs the program over the packets of `lane` in each job, in order.
fn feed_lane(lane: u8, mut replayer: Replayer, jobs: &Receiver<Job>, done: &SyncSender<Fed>) {
    for job in jobs {
        let mut fed = Fed::default();
        for pkt in &job.batch.packets[job.from..job.to] {
            if pkt.lane != lane || pkt.skip.is_some() {
                continue;
            }
            let frame = job.batch.frame(pkt);
            match replayer.feed(frame, pkt.wire_len, pkt.ts_ns, pkt.iface as u32 + 1) {
                Ok(()) => fed.fed += 1,
                Err(e) => {
                    fed.run_errors += 1;
                    tracing::debug!(len = frame.len(), "test run refused the frame: {e}");
                }
            }
        }
        drop(job);
        if done.send(fed).is_err() {
            return;
        }
    }
}

impl Replay {
    /// One batch of packets, cut into segments at the scan boundaries they cross: each segment
    /// is fed on every lane, then the scan runs once every lane is done with it.
    fn batch(
        &mut self,
        agent: &mut Assembly,
        replayer: &mut Replayer,
        feeders: &[Feeder],
        batch: &Arc<Batch>,
    ) -> Result<()> {
        let mut from = 0;
        for (i, pkt) in batch.packets.iter().enumerate() {
            let Some(boundary) = self.crossing(pkt.ts_ns) else {
                continue;
            };
            self.segment(agent, replayer, feeders, batch, from, i)?;
            from = i;
            if !agent.scan(boundary, false)? {
                bail!("output closed");
            }
        }
        self.segment(agent, replayer, feeders, batch, from, batch.packets.len())
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

    /// Packets `from..to` of a batch, all before the next scan boundary: the other lanes' on
    /// their threads, lane 0's here, each followed by the payloads and wake-ups it produced.
    fn segment(
        &mut self,
        agent: &mut Assembly,
        replayer: &mut Replayer,
        feeders: &[Feeder],
        batch: &Arc<Batch>,
        from: usize,
        to: usize,
    ) -> Result<()> {
        if from == to {
            return Ok(());
        }
        for f in feeders {
            let job = Job {
                batch: Arc::clone(batch),
                from,
                to,
            };
            f.jobs
                .send(job)
                .map_err(|_| anyhow!("a replay thread stopped"))?;
        }
        for pkt in &batch.packets[from..to] {
            self.packet(agent, replayer, batch, pkt)?;
        }
        for f in feeders {
            let fed = f
                .done
                .recv()
                .map_err(|_| anyhow!("a replay thread stopped"))?;
            self.stats.fed += fed.fed;
            self.stats.fed_elsewhere += fed.fed;
            self.stats.run_errors += fed.run_errors;
        }
        // The other lanes may have filled the map: evict early, as below.
        if !feeders.is_empty() && agent.woken() && !agent.scan(batch.packets[to - 1].ts_ns, true)? {
            bail!("output closed");
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
        if pkt.lane != 0 {
            return Ok(());
        }
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
