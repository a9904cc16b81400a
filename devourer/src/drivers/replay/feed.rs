//! The replay's feeding threads and its segments: the packets between two meetings of the
//! threads, handed to every thread as one job, each feeding its lane's packets. A scan waiting
//! at a segment's start runs on the main thread while the others feed, so [`Pace`] makes that
//! segment longer and gives lane 0 (the main thread's) a smaller share of the spread flows.

use std::{
    sync::{
        Arc,
        mpsc::{Receiver, SyncSender, sync_channel},
    },
    thread::Scope,
    time::{Duration, Instant},
};

use super::{
    lanes::{Lanes, WHOLE},
    reader::Batch,
};
use crate::kernel::replay::Replayer;

/// Packets of a segment without a scan: the threads meet this often.
const SEGMENT_MIN: usize = 4096;
/// Most packets one segment gathers (with a long scan); `--replay-segment-bytes` bounds the
/// bytes of their frames.
const SEGMENT_MAX: usize = 262_144;
/// How much work the other threads get beyond what covers the scan.
const SCAN_MARGIN: f64 = 1.5;
/// Weight of the newest figure in the running estimates.
const NEWEST: f64 = 0.25;

/// Packets `from..to` of a batch.
pub(super) struct Part {
    pub batch: Arc<Batch>,
    pub from: usize,
    pub to: usize,
}

/// One segment for one feeding thread: the packets of its lane, counted in map set `set`, with
/// lane 0 taking `share` of the spread flows.
struct Job {
    parts: Arc<Vec<Part>>,
    set: u32,
    share: u32,
}

/// What a feeding thread did with one job.
#[derive(Default)]
pub(super) struct Fed {
    pub fed: u64,
    pub run_errors: u64,
    /// How long it took.
    busy: Duration,
}

/// The main thread's ends of one feeding thread.
pub(super) struct Feeder {
    jobs: SyncSender<Job>,
    done: Receiver<Fed>,
}

/// Starts a feeding thread for each of `replayers`, lanes 1 and up, in `scope`.
pub(super) fn start<'s>(
    scope: &'s Scope<'s, '_>,
    replayers: Vec<Replayer>,
    lanes: &Lanes,
) -> std::io::Result<Vec<Feeder>> {
    replayers
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let (jobs, job_rx) = sync_channel(1);
            let (done_tx, done) = sync_channel(1);
            let lane = u8::try_from(i + 1).expect("lanes fit in u8");
            let lanes = lanes.clone();
            std::thread::Builder::new()
                .name(format!("replay-{lane}"))
                .spawn_scoped(scope, move || feed_lane(lane, r, &lanes, &job_rx, &done_tx))?;
            Ok(Feeder { jobs, done })
        })
        .collect()
}

/// Hands a segment to every feeding thread; false when one of them stopped.
pub(super) fn send(feeders: &[Feeder], parts: &Arc<Vec<Part>>, set: u32, share: u32) -> bool {
    feeders.iter().all(|f| {
        f.jobs
            .send(Job {
                parts: Arc::clone(parts),
                set,
                share,
            })
            .is_ok()
    })
}

/// Waits for one feeding thread to finish its segment; `None` when it stopped.
pub(super) fn finished(feeder: &Feeder) -> Option<Fed> {
    feeder.done.recv().ok()
}

/// A feeding thread: runs the program over the packets of `lane` in each job, in order.
fn feed_lane(
    lane: u8,
    mut replayer: Replayer,
    lanes: &Lanes,
    jobs: &Receiver<Job>,
    done: &SyncSender<Fed>,
) {
    for job in jobs {
        let started = Instant::now();
        let mut fed = Fed::default();
        for part in job.parts.iter() {
            for pkt in &part.batch.packets[part.from..part.to] {
                if pkt.skip.is_some() || lanes.lane(pkt.spread, job.share) != lane {
                    continue;
                }
                let frame = part.batch.frame(pkt);
                let seen = (pkt.ts_ns, pkt.iface as u32 + 1);
                match replayer.feed(frame, pkt.wire_len, seen, job.set) {
                    Ok(()) => fed.fed += 1,
                    Err(e) => {
                        fed.run_errors += 1;
                        tracing::debug!(len = frame.len(), "test run refused the frame: {e}");
                    }
                }
            }
        }
        drop(job);
        fed.busy = started.elapsed();
        if done.send(fed).is_err() {
            return;
        }
    }
}

/// How long segments are and how lane 0 shares them, from running estimates of a scan's and
/// a packet's cost.
pub(super) struct Pace {
    lanes: Lanes,
    /// Seconds the last scans took.
    scan_s: f64,
    /// Seconds a feeding thread takes per packet.
    packet_s: f64,
}

impl Pace {
    pub fn new(lanes: Lanes) -> Self {
        Self {
            lanes,
            scan_s: 0.0,
            packet_s: 3e-6,
        }
    }

    /// Other threads beside the main one.
    fn others(&self) -> f64 {
        (self.lanes.count() - 1) as f64
    }

    /// Packets a segment gathers before it runs: while a scan waits, enough that the other
    /// threads feed for as long as it takes.
    pub fn target(&self, scan: bool) -> usize {
        if !scan || self.lanes.count() == 1 {
            return SEGMENT_MIN;
        }
        let cover = self.others() * self.scan_s / self.packet_s * SCAN_MARGIN;
        (cover as usize).clamp(SEGMENT_MIN, SEGMENT_MAX)
    }

    /// Lane 0's share of a segment of `n` packets (with the scan waiting, if `scan`): the
    /// main thread's scan plus its packets take about as long as each other thread's.
    pub fn share(&self, n: usize, scan: bool) -> u32 {
        let even = self.lanes.even_share();
        if !scan || self.lanes.count() == 1 {
            return even;
        }
        let m = self.others();
        let feed = n as f64 * self.packet_s;
        let x = (feed - m * self.scan_s) / (feed * (m + 1.0));
        (x.clamp(0.0, 1.0 / (m + 1.0)) * f64::from(WHOLE)) as u32
    }

    pub fn scanned(&mut self, took: Duration) {
        self.scan_s += NEWEST * (took.as_secs_f64() - self.scan_s);
    }

    /// Notes what a feeding thread did (segments of a few packets say little).
    pub fn fed(&mut self, fed: &Fed) {
        if fed.fed >= 256 {
            let per = fed.busy.as_secs_f64() / fed.fed as f64;
            self.packet_s += NEWEST * (per - self.packet_s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_scan_lengthens_the_segment_and_moves_spread_flows_off_lane_0() {
        let mut pace = Pace::new(Lanes::new(2, vec![53]));
        assert_eq!(pace.target(false), SEGMENT_MIN);
        assert_eq!(pace.share(SEGMENT_MIN, false), WHOLE / 2);
        // Before any scan was timed, a waiting scan changes nothing.
        assert_eq!(pace.target(true), SEGMENT_MIN);
        assert_eq!(pace.share(SEGMENT_MIN, true), WHOLE / 2);
        // 3 µs a packet; scans of 6 ms: 2,000 packets of the other thread's time each.
        for _ in 0..50 {
            pace.fed(&Fed {
                fed: 1000,
                run_errors: 0,
                busy: Duration::from_millis(3),
            });
            pace.scanned(Duration::from_millis(6));
        }
        assert_eq!(pace.target(true), SEGMENT_MIN, "3,000 packets cover it");
        // 8,000 packets: 24 ms on one thread; the main thread scans 6 and feeds 3 more.
        let share = f64::from(pace.share(8000, true)) / f64::from(WHOLE);
        assert!((share - 0.375).abs() < 0.01, "{share}");
        // A scan longer than the whole segment: lane 0 feeds nothing spread.
        for _ in 0..50 {
            pace.scanned(Duration::from_secs(1));
        }
        assert_eq!(pace.share(SEGMENT_MIN, true), 0);
        assert_eq!(pace.target(true), SEGMENT_MAX, "bounded");
        // One thread: nothing to balance.
        let mut one = Pace::new(Lanes::new(1, vec![]));
        one.scanned(Duration::from_secs(1));
        assert_eq!(
            (one.target(true), one.share(10, true)),
            (SEGMENT_MIN, WHOLE)
        );
    }
}
