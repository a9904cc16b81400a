//! Benchmark helper: attaches devourer's do-nothing programs to an interface and holds them
//! until SIGTERM or SIGINT, as baselines for the datapath benchmark.
//!
//! - `attach_empty IFACE xdp`: the empty XDP program (native, else generic, as the agent does).
//!   Native XDP changes the veth datapath itself, so XDP mode is compared with this.
//! - `attach_empty IFACE tc`: the empty TC program on ingress and egress, attached the way the
//!   agent attaches its own (TCX on 6.6+, else netlink): the cost of the hooks alone.

use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, tc};
use devourer::kernel::{
    attach::{TcLink, default_tc_link},
    object::{self as loader, LoadOptions, PROG_EMPTY_TC, PROG_EMPTY_XDP},
};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(iface), Some(kind)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: attach_empty IFACE xdp|tc");
    };
    let mut loaded = loader::load_bench(&LoadOptions::new(false, 1024))?;
    let what = match kind.as_str() {
        "xdp" => {
            loaded.load_bench_program(PROG_EMPTY_XDP)?;
            let prog: &mut Xdp = loaded
                .ebpf
                .program_mut(PROG_EMPTY_XDP)
                .expect("loaded above")
                .try_into()?;
            match prog.attach(&iface, XdpMode::Driver) {
                Ok(_) => "empty XDP (native)",
                Err(_) => {
                    prog.attach(&iface, XdpMode::Skb)?;
                    "empty XDP (generic)"
                }
            }
        }
        "tc" => {
            loaded.load_bench_program(PROG_EMPTY_TC)?;
            let prog: &mut SchedClassifier = loaded
                .ebpf
                .program_mut(PROG_EMPTY_TC)
                .expect("loaded above")
                .try_into()?;
            if default_tc_link() == TcLink::Netlink {
                let _ = tc::qdisc_add_clsact(&iface);
            }
            for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
                prog.attach(&iface, hook)?;
            }
            "empty TC (ingress and egress)"
        }
        other => anyhow::bail!("unknown kind {other:?}: xdp or tc"),
    };
    eprintln!("attached {what} to {iface}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })?;
    // Dropping the programs detaches them.
    Ok(())
}
