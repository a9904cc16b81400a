//! Capabilities: devourer needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (CAP_SYS_ADMIN stands in
//! for BPF and PERFMON on older kernels), plus CAP_NET_RAW when capture on request is on; a
//! missing one is named before anything is loaded. Once the programs are loaded and attached
//! (and before any other thread starts: capabilities belong to threads) every capability the
//! running agent does not need is dropped, from the bounding set too; [`Keep`] says which stay.

use std::io;

const CAP_CHOWN: u32 = 0;
const CAP_SETPCAP: u32 = 8;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

const NAMES: &[(u32, &str)] = &[
    (CAP_CHOWN, "CAP_CHOWN"),
    (CAP_NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"),
    (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    (CAP_NET_RAW, "CAP_NET_RAW"),
    (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    (CAP_BPF, "CAP_BPF"),
];

/// What the running agent still does that needs a capability.
#[derive(Clone, Copy, Debug, Default)]
pub struct Keep {
    /// Attaches to interfaces after start (`--all-interfaces`) or detaches through netlink
    /// (TC filters on kernels without TCX, XDP on kernels without XDP links): CAP_NET_ADMIN.
    pub attach_later: bool,
    /// Asks conntrack about NAT'd connections: CAP_NET_ADMIN.
    pub conntrack: bool,
    /// Opens capture sockets on request: CAP_NET_RAW.
    pub raw_sockets: bool,
    /// Gives new files to `--file-group`: CAP_CHOWN.
    pub chown: bool,
    /// Binds a port below 1024 after the drop (the metrics or API address): CAP_NET_BIND_SERVICE.
    pub low_port: bool,
}

impl Keep {
    /// The capability mask to keep, given the effective set at start: CAP_BPF always (every
    /// bpf() call, map reads included, needs it while unprivileged BPF is off), or
    /// CAP_SYS_ADMIN on kernels that predate CAP_BPF.
    pub fn mask(&self, eff: u64) -> u64 {
        let bit = |c: u32| 1u64 << c;
        let mut m = if eff & bit(CAP_BPF) != 0 {
            bit(CAP_BPF)
        } else {
            bit(CAP_SYS_ADMIN)
        };
        for (on, cap) in [
            (self.attach_later, CAP_NET_ADMIN),
            (self.conntrack, CAP_NET_ADMIN),
            (self.raw_sockets, CAP_NET_RAW),
            (self.chown, CAP_CHOWN),
            (self.low_port, CAP_NET_BIND_SERVICE),
        ] {
            if on {
                m |= bit(cap);
            }
        }
        m & eff
    }
}

/// The names of the capabilities in `mask` (those the agent may keep).
pub fn names(mask: u64) -> Vec<&'static str> {
    NAMES
        .iter()
        .filter(|(c, _)| mask & (1u64 << c) != 0)
        .map(|(_, n)| *n)
        .collect()
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops every capability outside `keep` from this thread's effective, permitted, inheritable
/// and ambient sets and from the bounding set (threads started later inherit that). Returns
/// what is kept.
pub fn drop_all_but(keep: &Keep) -> io::Result<u64> {
    let eff = effective()?;
    let mask = keep.mask(eff);
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        if eff & (1u64 << CAP_SETPCAP) != 0 {
            for cap in (0..=last.min(63)).filter(|c| mask & (1u64 << c) == 0) {
                libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
            }
        }
        // Nothing gained through exec either (libpcap and the rest exec nothing).
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: mask as u32,
            permitted: mask as u32,
            inheritable: 0,
        },
        CapData {
            effective: (mask >> 32) as u32,
            permitted: (mask >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: a v3 header and the two data words it asks for, both on the stack.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(mask)
}

#[derive(Debug, thiserror::Error)]
#[error(
    "missing {}: devourer needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, and CAP_NET_RAW for capture on request (run as root, or grant exactly these)",
    .0.join(", ")
)]
pub struct Missing(pub Vec<&'static str>);

/// The effective capability set of this process (`CapEff` in /proc/self/status).
pub fn effective() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapEff in /proc/self/status"))
}

/// Which of the needed capabilities `eff` lacks (`raw`: capture on request is on).
pub fn missing(eff: u64, raw: bool) -> Vec<&'static str> {
    let has = |c: u32| eff & (1u64 << c) != 0;
    let mut out = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        out.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        out.push("CAP_NET_ADMIN");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        out.push("CAP_PERFMON");
    }
    if raw && !has(CAP_NET_RAW) {
        out.push("CAP_NET_RAW");
    }
    out
}

/// Fails with the missing capabilities named (`raw`: capture on request is on).
pub fn check(raw: bool) -> Result<(), Missing> {
    match effective() {
        Ok(eff) => {
            let m = missing(eff, raw);
            if m.is_empty() {
                Ok(())
            } else {
                Err(Missing(m))
            }
        }
        // Cannot tell (no procfs): let the kernel decide.
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_kept_follows_the_features_in_use() {
        let bit = |c: u32| 1u64 << c;
        let root = u64::MAX >> 23;
        assert_eq!(names(Keep::default().mask(root)), ["CAP_BPF"]);
        let conntrack = Keep {
            conntrack: true,
            ..Keep::default()
        };
        assert_eq!(names(conntrack.mask(root)), ["CAP_NET_ADMIN", "CAP_BPF"]);
        let all = Keep {
            attach_later: true,
            conntrack: true,
            raw_sockets: true,
            chown: true,
            low_port: true,
        };
        assert_eq!(
            names(all.mask(root)),
            [
                "CAP_CHOWN",
                "CAP_NET_BIND_SERVICE",
                "CAP_NET_ADMIN",
                "CAP_NET_RAW",
                "CAP_BPF"
            ]
        );
        // A kernel before CAP_BPF: CAP_SYS_ADMIN stands in.
        let old = bit(CAP_SYS_ADMIN) | bit(CAP_NET_ADMIN);
        assert_eq!(names(Keep::default().mask(old)), ["CAP_SYS_ADMIN"]);
        // Never more than the process had.
        assert_eq!(all.mask(bit(CAP_BPF)), bit(CAP_BPF));
    }

    #[test]
    fn the_three_capabilities_or_sys_admin_suffice() {
        let bit = |c: u32| 1u64 << c;
        let three = bit(CAP_BPF) | bit(CAP_NET_ADMIN) | bit(CAP_PERFMON);
        assert!(missing(three, false).is_empty());
        assert!(missing(bit(CAP_SYS_ADMIN) | bit(CAP_NET_ADMIN), false).is_empty());
        assert_eq!(
            missing(bit(CAP_NET_ADMIN), false),
            ["CAP_BPF", "CAP_PERFMON"]
        );
        assert_eq!(
            missing(0, false),
            ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]
        );
        // Capture on request needs raw sockets as well.
        assert_eq!(missing(three, true), ["CAP_NET_RAW"]);
        assert!(missing(three | bit(CAP_NET_RAW), true).is_empty());
        let e = Missing(missing(bit(CAP_BPF) | bit(CAP_PERFMON), false)).to_string();
        assert!(
            e.starts_with("missing CAP_NET_ADMIN: devourer needs"),
            "{e}"
        );
    }
}
