//! The capture reader thread of `devourer read`: parses the file and converts frames to
//! Ethernet on the second core, handing batches over in file order with how each frame may
//! be spread over the lanes.

use std::{
    sync::mpsc::{Receiver, SyncSender, sync_channel},
    thread::JoinHandle,
};

use pcap_file::DataLink;

use super::{
    lanes::Lanes,
    pcapfile::{FrameSkip, PcapFile, PcapFileError, to_ethernet},
};
use crate::kernel::replay::MAX_REPLAY_FRAME;

/// Packets per batch: large enough that handing over costs nothing per packet, small enough
/// that the two threads overlap.
const BATCH: usize = 1024;
/// Batches in flight (each way).
const DEPTH: usize = 4;

/// One recorded packet, framed for the kernel program.
pub struct Framed {
    pub ts_ns: u64,
    /// Index into the capture's interfaces.
    pub iface: usize,
    /// Why it cannot be replayed, if so (with the interface's link type for the warning).
    pub skip: Option<(FrameSkip, DataLink)>,
    /// Cut to [`MAX_REPLAY_FRAME`].
    pub cut: bool,
    /// The Ethernet frame's length on the wire, before any cut (the capture's or ours).
    pub wire_len: u32,
    /// Where it may be fed ([`Lanes::spread`]); `None` (lane 0) for frames that are skipped.
    pub spread: Option<u32>,
    /// The frame: `bytes[start..end]` of the batch.
    start: usize,
    end: usize,
}

#[derive(Default)]
pub struct Batch {
    pub packets: Vec<Framed>,
    bytes: Vec<u8>,
    /// Names (pcapng `if_name`) of every interface seen up to the end of this batch.
    pub interfaces: Vec<Option<String>>,
    /// Bytes of the file consumed, for the progress bar.
    pub position: u64,
    /// Set on the last batch: the clean end of the file, or why reading stopped.
    pub end: Option<Result<(), PcapFileError>>,
}

impl Batch {
    pub fn frame(&self, p: &Framed) -> &[u8] {
        &self.bytes[p.start..p.end]
    }

    /// Bytes the frames of packets `from..to` take (they are stored in order).
    pub fn span(&self, from: usize, to: usize) -> usize {
        match (
            self.packets.get(from),
            to.checked_sub(1).and_then(|l| self.packets.get(l)),
        ) {
            (Some(a), Some(b)) if from < to => b.end - a.start,
            _ => 0,
        }
    }
}

/// The reading side: batches arrive on `batches`; spent ones go back on `spent` for reuse.
pub struct Reader {
    pub batches: Receiver<Batch>,
    spent: SyncSender<Batch>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    pub fn start(mut cap: PcapFile, lanes: Lanes) -> std::io::Result<Self> {
        let (tx, batches) = sync_channel::<Batch>(DEPTH);
        let (spent, returned) = sync_channel::<Batch>(DEPTH + 2);
        let thread = std::thread::Builder::new()
            .name("pcap-reader".into())
            .spawn(move || read_loop(&mut cap, &lanes, &tx, &returned))?;
        Ok(Self {
            batches,
            spent,
            thread: Some(thread),
        })
    }

    /// Hands a batch back for reuse.
    pub fn recycle(&self, b: Batch) {
        let _ = self.spent.try_send(b);
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Closing our ends makes the thread's next send fail; it then returns.
        let (_, dead) = sync_channel(0);
        drop(std::mem::replace(&mut self.batches, dead));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_loop(
    cap: &mut PcapFile,
    lanes: &Lanes,
    tx: &SyncSender<Batch>,
    returned: &Receiver<Batch>,
) {
    let mut frame = Vec::with_capacity(MAX_REPLAY_FRAME);
    loop {
        let mut b = returned.try_recv().unwrap_or_default();
        b.packets.clear();
        b.bytes.clear();
        b.end = None;
        while b.packets.len() < BATCH {
            match cap.next_packet() {
                Ok(Some(pkt)) => {
                    let linktype = cap.interfaces[pkt.iface].linktype;
                    let start = b.bytes.len();
                    let mut framed = Framed {
                        ts_ns: pkt.ts_ns,
                        iface: pkt.iface,
                        skip: None,
                        cut: false,
                        wire_len: 0,
                        spread: None,
                        start,
                        end: start,
                    };
                    match to_ethernet(linktype, &pkt.data, &mut frame) {
                        Ok(()) => {
                            let uncaptured = (pkt.orig_len as usize).saturating_sub(pkt.data.len());
                            framed.wire_len =
                                u32::try_from(frame.len() + uncaptured).unwrap_or(u32::MAX);
                            if frame.len() > MAX_REPLAY_FRAME {
                                frame.truncate(MAX_REPLAY_FRAME);
                                framed.cut = true;
                            }
                            framed.spread = lanes.spread(&frame);
                            b.bytes.extend_from_slice(&frame);
                        }
                        Err(e) => framed.skip = Some((e, linktype)),
                    }
                    framed.end = b.bytes.len();
                    b.packets.push(framed);
                }
                Ok(None) => {
                    b.end = Some(Ok(()));
                    break;
                }
                Err(e) => {
                    b.end = Some(Err(e));
                    break;
                }
            }
        }
        b.interfaces.clear();
        b.interfaces
            .extend(cap.interfaces.iter().map(|i| i.name.clone()));
        b.position = cap.position();
        let last = b.end.is_some();
        if tx.send(b).is_err() || last {
            return;
        }
    }
}
