//! Feeding recorded frames to the loaded program (BPF_PROG_TEST_RUN), with the frame's time
//! and interface in the context the program reads offline (TC: `skb->tstamp` and `cb[0]`;
//! XDP: metadata in front of the frame).

use std::io;

use devourer_common::flow::XdpReplayMeta;

use super::{
    attach::Mode,
    object::{LoadError, Loaded, PROG_TC_INGRESS, PROG_XDP},
    sys,
};

/// Frames longer than this are replayed cut to this length: BPF_PROG_TEST_RUN refuses frames
/// that do not fit in a page with its head- and tailroom (about 3.5 KiB for XDP). Bytes come
/// from the IP length fields, so cutting changes no count.
pub const MAX_REPLAY_FRAME: usize = 3072;

/// Runs one of the loaded programs over frames.
pub struct Replayer {
    prog: i32,
    mode: Mode,
    input: Vec<u8>,
}

impl Replayer {
    /// The program `mode` replays with: TC ingress, or XDP (TC where the kernel's test run
    /// takes no XDP context, before 5.15: the loader said so).
    pub fn new(loaded: &Loaded, mode: Mode) -> Result<Self, LoadError> {
        let mode = match mode {
            Mode::Xdp if !loaded.features.xdp_test_run_ctx => Mode::Tc,
            m => m,
        };
        let prog = loaded.prog_fd(match mode {
            Mode::Tc => PROG_TC_INGRESS,
            Mode::Xdp => PROG_XDP,
        })?;
        Ok(Self {
            prog,
            mode,
            input: Vec::with_capacity(MAX_REPLAY_FRAME + size_of::<XdpReplayMeta>()),
        })
    }

    /// Runs the program once over `frame` (maybe cut: `wire_len` was its length on the wire),
    /// seen at `ts_ns` on interface `ifindex`, counted in map set `map` (0 or 1).
    pub fn feed(
        &mut self,
        frame: &[u8],
        wire_len: u32,
        (ts_ns, ifindex): (u64, u32),
        map: u32,
    ) -> io::Result<()> {
        match self.mode {
            Mode::Tc => sys::test_run(
                self.prog,
                frame,
                &sys::skb_ctx(ts_ns, ifindex, wire_len, map),
            ),
            Mode::Xdp => {
                let meta = XdpReplayMeta {
                    ts_ns,
                    ifindex,
                    wire_len,
                    map,
                    _pad: 0,
                };
                self.input.clear();
                self.input.extend_from_slice(&meta.to_ne_bytes());
                self.input.extend_from_slice(frame);
                let ctx = sys::xdp_ctx(size_of::<XdpReplayMeta>() as u32, self.input.len() as u32);
                sys::test_run(self.prog, &self.input, &ctx)
            }
        }
        .map(|_| ())
    }
}
