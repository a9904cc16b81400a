//! The monitored interfaces: attaches to the ones asked for, and with `--all-interfaces` keeps
//! following the host's interfaces (a netlink link-change subscription wakes a rescan), letting
//! go of removed ones.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use aya::Ebpf;
use tokio::io::{Interest, unix::AsyncFd};

use super::attach::{self, AttachError, Attachment, Mode, TcLink, ifindex};

/// Which of the host's interfaces `--all-interfaces` takes: those matching an include pattern
/// (all when there is none) and no exclude pattern.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub include: Vec<glob::Pattern>,
    pub exclude: Vec<glob::Pattern>,
}

impl Selection {
    pub fn wants(&self, iface: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(iface)))
            && !self.exclude.iter().any(|p| p.matches(iface))
    }

    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

/// What is attached, by interface name.
pub struct Attached {
    mode: Mode,
    link: TcLink,
    map: BTreeMap<String, Attachment>,
}

impl Attached {
    pub fn new(mode: Mode, link: TcLink) -> Self {
        Self {
            mode,
            link,
            map: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// ifindex -> name of everything attached.
    pub fn names(&self) -> HashMap<u32, String> {
        self.map
            .values()
            .map(|a| (a.ifindex, a.iface.clone()))
            .collect()
    }

    pub fn attach(&mut self, ebpf: &mut Ebpf, iface: &str) -> Result<(), AttachError> {
        let a = attach::attach(ebpf, iface, self.mode, self.link)?;
        super::netns::note_peer(ebpf, a.ifindex);
        tracing::info!(interface = %a.iface, ifindex = a.ifindex, hooks = ?a.hooks, "attached");
        self.map.insert(iface.to_owned(), a);
        Ok(())
    }

    /// Detaches from every interface (at shutdown: nothing is counted after the final read).
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) {
        for (_, a) in std::mem::take(&mut self.map) {
            super::netns::forget_peer(ebpf, a.ifindex);
            attach::detach(ebpf, a);
        }
    }

    /// Makes the attached set equal `wanted`: attaches new interfaces (a failure is logged and
    /// retried at the next sync), lets go of the ones that are gone or were re-created.
    /// Returns the names let go of.
    pub fn sync(&mut self, ebpf: &mut Ebpf, wanted: &[String]) -> Vec<String> {
        let gone: Vec<String> = self
            .map
            .iter()
            .filter(|(name, a)| !wanted.contains(name) || ifindex(name).ok() != Some(a.ifindex))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &gone {
            if let Some(a) = self.map.remove(name) {
                tracing::info!(interface = %name, "interface gone: letting go");
                super::netns::forget_peer(ebpf, a.ifindex);
                attach::detach(ebpf, a);
            }
        }
        for name in wanted {
            match self.map.get(name) {
                // A veth created in this namespace has its peer moved out after: asked
                // again while it has none.
                Some(a) if !super::netns::has_peer(a.ifindex) => {
                    super::netns::note_peer(ebpf, a.ifindex);
                }
                Some(_) => {}
                None => {
                    if let Err(e) = self.attach(ebpf, name) {
                        tracing::warn!(interface = %name, "cannot attach yet: {e}");
                    }
                }
            }
        }
        gone
    }
}

/// A netlink socket subscribed to link changes (RTMGRP_LINK).
pub struct LinkWatch {
    fd: AsyncFd<OwnedFd>,
}

const RTMGRP_LINK: u32 = 1;

impl LinkWatch {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain socket/bind with a zeroed sockaddr_nl.
        let fd = unsafe {
            let raw: RawFd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            );
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            addr.nl_groups = RTMGRP_LINK;
            if libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            fd
        };
        Ok(Self {
            // SAFETY: the AsyncFd owns the fd it polls.
            fd: unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?,
        })
    }

    /// Waits for link changes and drains the notifications.
    pub async fn changed(&mut self) -> io::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        let mut buf = [0u8; 16384];
        loop {
            // SAFETY: reading into a local buffer from our socket.
            let n = unsafe {
                libc::recv(
                    guard.get_inner().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                let e = io::Error::last_os_error();
                if n == 0 || e.kind() == io::ErrorKind::WouldBlock {
                    break;
                }
                // ENOBUFS: notifications were lost; a rescan covers them.
                if e.raw_os_error() != Some(libc::ENOBUFS) {
                    return Err(e);
                }
            }
        }
        guard.clear_ready();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_beat_includes_and_no_include_means_all() {
        let p = |v: &[&str]| v.iter().map(|s| glob::Pattern::new(s).unwrap()).collect();
        let all = Selection::default();
        assert!(all.wants("cni0") && all.is_empty());
        let s = Selection {
            include: p(&["veth*", "eth?"]),
            exclude: p(&["veth9*"]),
        };
        assert!(s.wants("veth1234") && s.wants("eth0"));
        assert!(!s.wants("veth9abc") && !s.wants("cni0") && !s.wants("eth10"));
        let cni = Selection {
            include: Vec::new(),
            exclude: p(&["cni0", "flannel.1", "cilium_*"]),
        };
        assert!(cni.wants("eth0") && !cni.wants("cilium_vxlan") && !cni.wants("flannel.1"));
    }
}
