//! Capabilities: devourer needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (CAP_SYS_ADMIN stands in
//! for BPF and PERFMON on older kernels), plus CAP_NET_RAW when capture on request is on; a
//! missing one is named before anything is loaded.

use std::io;

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

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
