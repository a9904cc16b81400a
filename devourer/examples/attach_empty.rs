//! Benchmark helper: attaches devourer's do-nothing XDP program to an interface (native mode,
//! else generic, as the agent does) and holds it until SIGTERM or SIGINT. Native XDP changes
//! the veth datapath itself, so XDP mode is compared with this rather than with no program.
//!
//! Usage: attach_empty IFACE

use aya::programs::{Xdp, XdpMode};
use devourer::loader::{self, LoadOptions, PROG_EMPTY_XDP};

fn main() -> anyhow::Result<()> {
    let iface = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: attach_empty IFACE"))?;
    let mut loaded = loader::load(&LoadOptions::new(false, 1024))?;
    loader::load_empty(&mut loaded, PROG_EMPTY_XDP)?;
    let prog: &mut Xdp = loaded
        .ebpf
        .program_mut(PROG_EMPTY_XDP)
        .expect("loaded above")
        .try_into()?;
    let mode = match prog.attach(&iface, XdpMode::Driver) {
        Ok(_) => "native",
        Err(_) => {
            prog.attach(&iface, XdpMode::Skb)?;
            "generic"
        }
    };
    eprintln!("attached empty XDP ({mode}) to {iface}");
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
    // Dropping the program detaches it.
    Ok(())
}
