//! Which network namespace is at the other end of an interface (a veth's peer: a pod's), as
//! the interface's own namespace numbers it (`IFLA_LINK_NETNSID`): where the counting program
//! looks up the sockets behind the flows it counts there, for their smoothed RTT. Kept in the
//! program's peer map as interfaces are attached and let go of.

use std::{
    collections::BTreeSet,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::{Ebpf, maps::HashMap};
use devourer_common::tcp::PEER_NETNS_MAP;

use super::conntrack::{attrs, messages};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
/// `struct ifinfomsg`: family, pad, type, index, flags, change.
const IFINFOMSG_LEN: usize = 16;

/// The namespace id of `ifindex`'s peer, `None` for an interface whose other end (if any) is
/// in this namespace.
pub fn peer_netnsid(ifindex: u32) -> io::Result<Option<u32>> {
    // SAFETY: a plain netlink socket; the fd is owned at once.
    let fd = unsafe {
        let raw = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(raw)
    };
    // A bounded wait: the kernel answers at once, and nothing may hang the caller.
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: tv is a valid timeval of the size passed.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    let mut req = [0u8; 16 + IFINFOMSG_LEN];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16 + 4..16 + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    // SAFETY: sending a local buffer on our socket (to the kernel: no address needed).
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 32 * 1024];
    // SAFETY: reading into a local buffer from our socket.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_link(&buf[..n as usize])
}

/// `IFLA_LINK_NETNSID` of the `RTM_NEWLINK` answer in `datagram`.
fn parse_link(datagram: &[u8]) -> io::Result<Option<u32>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("rtnetlink: {what}"));
    for m in messages(datagram) {
        let (kind, _, body) = m.map_err(|e| bad(&e.to_string()))?;
        match kind {
            NLMSG_ERROR => {
                let code = body
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("4")))
                    .ok_or_else(|| bad("short error"))?;
                return Err(io::Error::from_raw_os_error(-code));
            }
            RTM_NEWLINK => {
                let a = body.get(IFINFOMSG_LEN..).ok_or_else(|| bad("short link"))?;
                return Ok(attrs(a)
                    .find(|(t, _)| *t == IFLA_LINK_NETNSID)
                    .and_then(|(_, v)| v.get(..4))
                    .map(|v| i32::from_ne_bytes(v.try_into().expect("4")))
                    .filter(|id| *id >= 0)
                    .map(|id| id as u32));
            }
            _ => {}
        }
    }
    Err(bad("no link in the answer"))
}

/// The attached interfaces with a peer namespace (pods' veths): a flow direction first seen
/// entering one was sent by a pod (see the flow table's TCP health).
static PEERS: RwLock<BTreeSet<u32>> = RwLock::new(BTreeSet::new());

/// Whether attached interface `ifindex` has a peer namespace.
pub fn has_peer(ifindex: u32) -> bool {
    PEERS.read().map(|p| p.contains(&ifindex)).unwrap_or(false)
}

fn set_peer(ifindex: u32, on: bool) {
    if let Ok(mut p) = PEERS.write() {
        if on {
            p.insert(ifindex);
        } else {
            p.remove(&ifindex);
        }
    }
}

/// Interfaces whose peer the full map refused, over the agent's life
/// (`devourer_limit_hits_total{limit="peer_netns_entries"}`).
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Interfaces whose peer namespace the full map refused, so far.
pub fn refused() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// Notes `ifindex`'s peer namespace in the program's map (or that it has none); a failure is
/// logged: the interface's flows then sample no RTT from its peer's sockets.
pub fn note_peer(ebpf: &mut Ebpf, ifindex: u32) {
    let peer = peer_netnsid(ifindex);
    set_peer(ifindex, matches!(peer, Ok(Some(_))));
    let Some(map) = ebpf.map_mut(PEER_NETNS_MAP) else {
        return;
    };
    let Ok(mut peers) = HashMap::<_, u32, u32>::try_from(map) else {
        return;
    };
    match peer {
        Ok(Some(id)) => {
            if let Err(e) = peers.insert(ifindex, id, 0) {
                tracing::warn!(
                    ifindex,
                    "peer namespace not noted (no RTT from its sockets): {e}"
                );
            }
        }
        Ok(None) => {
            let _ = peers.remove(&ifindex);
        }
        Err(e) => tracing::warn!(
            ifindex,
            "peer namespace unknown (no RTT from its sockets): {e}"
        ),
    }
}

/// Forgets a let-go interface's peer (its index may be reused).
pub fn forget_peer(ebpf: &mut Ebpf, ifindex: u32) {
    set_peer(ifindex, false);
    if let Some(map) = ebpf.map_mut(PEER_NETNS_MAP)
        && let Ok(mut peers) = HashMap::<_, u32, u32>::try_from(map)
    {
        let _ = peers.remove(&ifindex);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_peer_namespace_and_a_missing_interface_is_an_error() {
        assert_eq!(peer_netnsid(1).unwrap(), None);
        assert!(peer_netnsid(0x7fff_fff0).is_err());
    }

    #[test]
    fn the_peer_id_is_read_from_the_link_attribute() {
        let mut m = vec![0u8; 16 + IFINFOMSG_LEN];
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&IFLA_LINK_NETNSID.to_ne_bytes());
        m.extend_from_slice(&3i32.to_ne_bytes());
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        assert_eq!(parse_link(&m).unwrap(), Some(3));
        assert!(parse_link(&m[..10]).is_err());
    }
}
