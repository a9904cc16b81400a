//! TCP retransmissions (live only): where the retransmit programs read a socket's tuple and an
//! skb's segment count, from the running kernel's BTF; the raw tracepoint programs attached
//! (retransmitted segments, and SYN-ACKs of connections not yet accepted), and their map taken
//! each scan.

use std::io;

use aya::Ebpf;
use devourer_common::{
    flow::FlowKey,
    tcp::{
        PROG_TCP_RETRANSMIT, PROG_TCP_RETRANSMIT_SYNACK, RETRANSMITS_ENTRIES, RETRANSMITS_MAP,
        SockOffsets,
    },
};

use super::{
    btf::Btf,
    drops::{attach_raw_tracepoint, reader},
    maps::HashReader,
};

/// The tracepoint the program attaches to.
const TRACEPOINT: &str = "tcp_retransmit_skb";

/// One tuple's retransmitted segments since the last take (local endpoint as source).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retransmit {
    pub key: FlowKey,
    pub segments: u64,
}

/// Reads the retransmit program's offsets from `btf`; an error says why retransmissions are
/// not reported on this kernel.
pub fn probe(btf: &Btf) -> Result<SockOffsets, String> {
    let args = btf
        .tracepoint_args(TRACEPOINT)
        .map_err(|e| format!("no {TRACEPOINT} tracepoint in BTF ({e})"))?;
    if args.len() < 2 || args[0] != "*" || args[1] != "*" {
        return Err(format!("{TRACEPOINT} takes {args:?}, not (sock, sk_buff)"));
    }
    let member = |strukt: &str, name: &str, size: u32| -> Result<u32, String> {
        let m = btf
            .member(strukt, name)
            .map_err(|e| format!("{strukt}.{name}: {e}"))?;
        if m.size != size {
            return Err(format!("{strukt}.{name} is {} bytes, not {size}", m.size));
        }
        Ok(m.offset)
    };
    // `struct sock` starts with its `sock_common`.
    let (v6_daddr, v6_rcv_saddr) = match (
        member("sock_common", "skc_v6_daddr", 16),
        member("sock_common", "skc_v6_rcv_saddr", 16),
    ) {
        (Ok(d), Ok(s)) => (d, s),
        // A kernel without IPv6: IPv4 sockets only.
        _ => (0, 0),
    };
    Ok(SockOffsets {
        family: member("sock_common", "skc_family", 2)?,
        daddr: member("sock_common", "skc_daddr", 4)?,
        rcv_saddr: member("sock_common", "skc_rcv_saddr", 4)?,
        dport: member("sock_common", "skc_dport", 2)?,
        num: member("sock_common", "skc_num", 2)?,
        v6_daddr,
        v6_rcv_saddr,
        gso_segs: member("sk_buff", "cb", 48)? + member("tcp_skb_cb", "tcp_gso_segs", 2)?,
        err_arg: u32::from(args.len() >= 3),
    })
}

/// Probes the running kernel.
pub fn running() -> Result<SockOffsets, String> {
    let btf = Btf::vmlinux().map_err(|e| e.to_string())?;
    probe(&btf)
}

/// The attached retransmit program's map.
pub struct RetransmitProbe {
    map: HashReader<FlowKey, u64>,
}

impl RetransmitProbe {
    /// Loads and attaches the retransmit program of a loaded object (its offsets set at load)
    /// and takes its map.
    pub fn attach(ebpf: &mut Ebpf, ncpus: usize) -> Result<Self, String> {
        attach_raw_tracepoint(ebpf, PROG_TCP_RETRANSMIT, TRACEPOINT)?;
        attach_raw_tracepoint(ebpf, PROG_TCP_RETRANSMIT_SYNACK, "tcp_retransmit_synack")?;
        Ok(Self {
            map: reader(ebpf, RETRANSMITS_MAP, ncpus, RETRANSMITS_ENTRIES)?,
        })
    }

    /// Takes the retransmitted segments by tuple since the last call.
    pub fn take(&mut self) -> io::Result<Vec<Retransmit>> {
        let mut out = Vec::new();
        self.map.drain(|key, slots| {
            let segments: u64 = slots.iter().sum();
            if segments > 0 {
                out.push(Retransmit { key, segments });
            }
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernel_says_where_a_sockets_tuple_and_segments_are() {
        match running() {
            Ok(o) => {
                // sock_common's addresses come first; the segment count is inside cb.
                assert!(o.family > 0 && o.dport > 0 && o.num > 0, "{o:?}");
                assert!(o.gso_segs > 0, "{o:?}");
                assert_ne!(o.daddr, o.rcv_saddr);
            }
            Err(why) if std::path::Path::new(super::super::btf::VMLINUX).exists() => {
                panic!("this kernel has BTF, yet: {why}")
            }
            Err(why) => eprintln!("no kernel BTF here: {why}"),
        }
    }
}
