//! Attaching the loaded program to interfaces: TC (TCX links on 6.6+, else netlink clsact
//! filters) or XDP plus TC egress, detaching, and finding interfaces by name and state.

use std::{fmt, io};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
        xdp::XdpLinkId,
    },
    util::KernelVersion,
};

use super::object::{
    PROG_TC_EGRESS, PROG_TC_EGRESS_L3, PROG_TC_INGRESS, PROG_TC_INGRESS_L3, PROG_XDP,
};

/// Which hooks count packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// TC on ingress and egress (one hook on loopback).
    Tc,
    /// XDP on ingress (native, else generic) and TC on egress.
    Xdp,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tc => "tc",
            Self::Xdp => "xdp",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("unknown interface {0:?} (see `ip link`)")]
    UnknownInterface(String),
    #[error("attaching {prog} to {iface} ({hook}) failed")]
    Attach {
        prog: &'static str,
        iface: String,
        hook: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl AttachError {
    /// The kernel refused with EEXIST (for XDP: a device above this one runs a program).
    fn is_exists(&self) -> bool {
        let Self::Attach { source, .. } = self else {
            return false;
        };
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(e) = cur {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.raw_os_error() == Some(libc::EEXIST))
            {
                return true;
            }
            cur = e.source();
        }
        false
    }
}

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcLink {
    /// TCX links (kernel 6.6+): they go away with the process.
    Tcx,
    /// Netlink clsact filters: leftovers from a crashed run are removed first.
    Netlink,
}

pub fn default_tc_link() -> TcLink {
    match KernelVersion::current() {
        Ok(v) if v >= KernelVersion::new(6, 6, 0) => TcLink::Tcx,
        _ => TcLink::Netlink,
    }
}

/// What was attached where: names for logs, link ids for detaching.
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub hooks: Vec<&'static str>,
    tc: Vec<(&'static str, SchedClassifierLinkId)>,
    xdp: Option<XdpLinkId>,
}

pub fn ifindex(iface: &str) -> Result<u32, AttachError> {
    let c = std::ffi::CString::new(iface)
        .map_err(|_| AttachError::UnknownInterface(iface.to_owned()))?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(AttachError::UnknownInterface(iface.to_owned()))
    } else {
        Ok(idx)
    }
}

fn attach_tc(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    kind: TcAttachType,
    link: TcLink,
) -> Result<(&'static str, SchedClassifierLinkId), AttachError> {
    let hook = match kind {
        TcAttachType::Ingress => "tc ingress",
        _ => "tc egress",
    };
    let err = |source: Box<dyn std::error::Error + Send + Sync>| AttachError::Attach {
        prog: name,
        iface: iface.to_owned(),
        hook,
        source,
    };
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .expect("program in the object")
        .try_into()
        .map_err(|e| err(Box::new(e)))?;
    // The L3 programs are loaded (verified) only once a device needs them.
    if prog.fd().is_err() {
        prog.load().map_err(|e| err(Box::new(e)))?;
    }
    let options = match link {
        // At the head of the chain: a program already there (a CNI's) cannot hide packets
        // from us; ours hands every packet on (TCX_NEXT).
        TcLink::Tcx => TcAttachOptions::TcxOrder(LinkOrder::first()),
        TcLink::Netlink => {
            if let Err(e) = tc::qdisc_add_clsact(iface) {
                // EEXIST: the qdisc is already there, which is what we need.
                tracing::debug!(iface, "clsact qdisc: {e}");
            }
            match tc::qdisc_detach_program(iface, kind, name) {
                Ok(()) => tracing::warn!(iface, hook, "removed a filter left by an earlier run"),
                Err(e) => tracing::debug!(iface, hook, "no leftover filter: {e}"),
            }
            TcAttachOptions::Netlink(NlOptions::default())
        }
    };
    let id = prog
        .attach_with_options(iface, kind, options)
        .map_err(|e| err(Box::new(e)))?;
    Ok((name, id))
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    iface: &str,
    lo: bool,
) -> Result<(&'static str, XdpLinkId), AttachError> {
    let prog: &mut Xdp = ebpf
        .program_mut(PROG_XDP)
        .expect("loaded program")
        .try_into()
        .map_err(|e| AttachError::Attach {
            prog: PROG_XDP,
            iface: iface.to_owned(),
            hook: "xdp",
            source: Box::new(e),
        })?;
    if !lo {
        match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => return Ok(("xdp (native)", id)),
            Err(e) => tracing::warn!(
                iface,
                "native XDP unavailable ({e}); falling back to generic (SKB) mode, which costs more"
            ),
        }
    }
    let id = prog
        .attach(iface, XdpMode::Skb)
        .map_err(|e| AttachError::Attach {
            prog: PROG_XDP,
            iface: iface.to_owned(),
            hook: "xdp (skb)",
            source: Box::new(e),
        })?;
    Ok(("xdp (skb)", id))
}

/// Attaches to one interface so that each packet crossing it is seen once per direction.
/// On loopback a packet is sent and received on the same device: one hook only.
pub fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: Mode,
    link: TcLink,
) -> Result<Attachment, AttachError> {
    let idx = ifindex(iface)?;
    let lo = is_loopback(iface);
    let l3 = is_l3(iface);
    let (ingress, egress) = if l3 {
        (PROG_TC_INGRESS_L3, PROG_TC_EGRESS_L3)
    } else {
        (PROG_TC_INGRESS, PROG_TC_EGRESS)
    };
    let mut a = Attachment {
        iface: iface.to_owned(),
        ifindex: idx,
        hooks: Vec::new(),
        tc: Vec::new(),
        xdp: None,
    };
    let tc_ingress = |ebpf: &mut Ebpf| attach_tc(ebpf, ingress, iface, TcAttachType::Ingress, link);
    match mode {
        Mode::Tc => {
            a.tc.push(tc_ingress(ebpf)?);
            a.hooks
                .push(if l3 { "tc ingress (L3)" } else { "tc ingress" });
        }
        // XDP on a device without a link header (generic only) would hand the program an IP
        // header where it expects Ethernet.
        Mode::Xdp if l3 => {
            a.tc.push(tc_ingress(ebpf)?);
            a.hooks.push("tc ingress (L3: no XDP)");
        }
        // A device with devices under it (a bridge, a bond) and the devices under one cannot
        // both run XDP: the master takes TC ingress (it has no native XDP anyway), and so does
        // a port whose master runs someone's XDP program.
        Mode::Xdp if has_lower_devices(iface) => {
            a.tc.push(tc_ingress(ebpf)?);
            a.hooks.push("tc ingress (XDP is on the devices under it)");
        }
        Mode::Xdp => match attach_xdp(ebpf, iface, lo) {
            Ok((hook, id)) => {
                a.hooks.push(hook);
                a.xdp = Some(id);
            }
            Err(e) if e.is_exists() => {
                tracing::warn!(
                    iface,
                    "XDP is taken above this device ({e}); TC ingress instead"
                );
                a.tc.push(tc_ingress(ebpf)?);
                a.hooks.push("tc ingress (XDP taken above)");
            }
            Err(e) => return Err(e),
        },
    }
    if !lo {
        a.tc.push(attach_tc(ebpf, egress, iface, TcAttachType::Egress, link)?);
        a.hooks
            .push(if l3 { "tc egress (L3)" } else { "tc egress" });
    }
    Ok(a)
}

/// Detaches what [`attach`] attached. Errors are expected when the interface is already gone
/// (the kernel removed its links with it) and only logged.
pub fn detach(ebpf: &mut Ebpf, a: Attachment) {
    for (name, id) in a.tc {
        let res = ebpf
            .program_mut(name)
            .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
            .map(|p| p.detach(id));
        if let Some(Err(e)) = res {
            tracing::debug!(iface = %a.iface, "detaching {name}: {e}");
        }
    }
    if let Some(id) = a.xdp {
        let res = ebpf
            .program_mut(PROG_XDP)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .map(|p| p.detach(id));
        if let Some(Err(e)) = res {
            tracing::debug!(iface = %a.iface, "detaching xdp: {e}");
        }
    }
}

/// An interface's IFF_* flags from sysfs (0 when unreadable).
fn iface_flags(iface: &str) -> u32 {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/flags"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

/// Whether devices are enslaved to `iface` (a bridge's ports, a bond's links).
fn has_lower_devices(iface: &str) -> bool {
    std::fs::read_dir(format!("/sys/class/net/{iface}"))
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("lower_"))
        })
        .unwrap_or(false)
}

/// Link types whose packets start at the IP header (`ARPHRD_*` in `if_arp.h`): PPP, raw IP,
/// IPIP, ip6tnl, SIT, GRE, ip6gre, and none (tun and WireGuard).
const L3_LINK_TYPES: [u32; 8] = [512, 519, 768, 769, 776, 778, 823, 65534];

/// Whether `iface` is an L3 device (by its link type in sysfs).
pub fn is_l3(iface: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/type"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(|t| L3_LINK_TYPES.contains(&t))
}

/// Loopback devices carry IFF_LOOPBACK in their flags.
pub fn is_loopback(iface: &str) -> bool {
    iface_flags(iface) & libc::IFF_LOOPBACK as u32 != 0
}

/// Every interface that is up and not loopback, for `--all-interfaces`.
pub fn up_interfaces() -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/sys/class/net")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let flags = iface_flags(&name);
        if flags & libc::IFF_UP as u32 != 0 && flags & libc::IFF_LOOPBACK as u32 == 0 {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}
