//! Flag values: durations, byte and ring sizes, port lists, addresses, where records go, and
//! the one error type their parsers return.

use std::{path::PathBuf, time::Duration};

use devourer_common::payload::PORT_SLOTS;

/// A value that does not parse or is out of range; the message says what is expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(pub String);

fn bad(msg: impl Into<String>) -> BadValue {
    BadValue(msg.into())
}

/// The longest duration any setting takes: far beyond any sensible timeout, and small enough
/// that clock arithmetic in nanoseconds never overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A duration flag: `500ms`, `5s`, `2m`, `1h`; more than zero, at most 30 days.
pub fn parse_duration(s: &str) -> Result<Duration, BadValue> {
    let d = humantime::parse_duration(s)
        .map_err(|e| bad(format!("{e} (write durations like 500ms, 5s, 2m, 1h)")))?;
    if d.is_zero() {
        return Err(bad("must be greater than zero"));
    }
    if d > MAX_DURATION {
        return Err(bad(format!("{s:?}: at most 30 days")));
    }
    Ok(d)
}

/// A port list from one flag value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ports(pub Vec<u16>);

/// A port list: `53,5353`, or `none` for no port (the decoder off).
pub fn parse_ports(s: &str) -> Result<Ports, BadValue> {
    if s.eq_ignore_ascii_case("none") || s.is_empty() {
        return Ok(Ports(Vec::new()));
    }
    let ports = s
        .split(',')
        .map(|p| match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(bad(format!("{p:?} is not a port (1-65535)"))),
            Ok(n) => Ok(n),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ports.len() > PORT_SLOTS {
        return Err(bad(format!("at most {PORT_SLOTS} ports")));
    }
    Ok(Ports(ports))
}

/// A byte size: `4096`, `512K`, `4M`, `1G` (binary multiples; `KiB`/`MiB`/`GiB` too); more
/// than zero, at most 1T.
pub fn parse_bytes(s: &str) -> Result<u64, BadValue> {
    let n = parse_size(s)?;
    if n == 0 || n > 1 << 40 {
        return Err(bad(format!("{s:?}: must be from 1 byte to 1T")));
    }
    Ok(n)
}

fn parse_size(s: &str) -> Result<u64, BadValue> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.trim_end_matches("IB").trim_end_matches('B');
    let (num, mul) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| bad(format!("{s:?}: write sizes like 4M, 512K, 1G or 1048576")))
}

/// Ring sizes: a power of two of at least one page.
pub fn parse_ring_size(s: &str) -> Result<u32, BadValue> {
    let n = parse_bytes(s)?;
    if n < 4096 || !n.is_power_of_two() || n > (1 << 30) {
        return Err(bad(format!("{s:?}: must be a power of two from 4K to 1G")));
    }
    Ok(n as u32)
}

/// Which clock the text logs use for file names and line times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogTz {
    Utc,
    Local,
}

/// `--metrics-addr`: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<std::net::SocketAddr>);

pub fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, BadValue> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(MetricsAddr(None));
    }
    s.parse()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(|e| bad(format!("{s:?}: {e} (write ADDRESS:PORT, or off)")))
}

/// Where JSON lines go (`--output`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout,
    File(PathBuf),
    /// `--output none`: no JSON lines (BigQuery only, for instance).
    None,
}

impl Output {
    /// `-` or absent: stdout; `none`: nothing; else a file.
    pub fn from_flag(flag: Option<&PathBuf>) -> Self {
        match flag {
            Some(p) if p.as_os_str() == "none" => Self::None,
            Some(p) if p.as_os_str() != "-" => Self::File(p.clone()),
            _ => Self::Stdout,
        }
    }
}

/// An interface name pattern (`veth*`, `cali?*`, `eth[0-3]`).
pub fn parse_glob(s: &str) -> Result<glob::Pattern, BadValue> {
    glob::Pattern::new(s.trim()).map_err(|e| bad(format!("{s:?} is not a name pattern: {e}")))
}

/// A group that may read the agent's files: a numeric id, or a name from the group database.
pub fn parse_group(s: &str) -> Result<u32, BadValue> {
    if let Ok(gid) = s.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(s).map_err(|_| bad("not a group name"))?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives its use by `grp`.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(bad(format!(
            "{s:?}: no such group (give a name or a numeric id)"
        )));
    }
    Ok(grp.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_refuse_garbage() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("31days").is_err());
        assert!(parse_duration("18446744073709551615s").is_err());
    }

    #[test]
    fn groups_are_ids_or_names_that_exist() {
        assert_eq!(parse_group("1234"), Ok(1234));
        assert_eq!(parse_group("root"), Ok(0));
        assert!(parse_group("no-such-group-here").is_err());
        assert!(parse_group("a\0b").is_err());
    }

    #[test]
    fn ports_and_ring_sizes_parse() {
        assert_eq!(parse_ports("53"), Ok(Ports(vec![53])));
        assert_eq!(parse_ports("53, 5353"), Ok(Ports(vec![53, 5353])));
        assert_eq!(parse_ports("none"), Ok(Ports(vec![])));
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("1,2,3,4,5,6,7,8,9").is_err());
        assert_eq!(parse_ring_size("4M"), Ok(4 << 20));
        assert_eq!(parse_ring_size("64k"), Ok(64 << 10));
        assert_eq!(parse_ring_size("8192"), Ok(8192));
        assert!(parse_ring_size("3M").is_err());
        assert!(parse_ring_size("1K").is_err());
        assert_eq!(parse_bytes("1T"), Ok(1 << 40));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("2T").is_err());
        assert!(parse_bytes("99999999999999999999G").is_err());
    }

    #[test]
    fn output_names_stdout_a_file_or_nothing() {
        assert_eq!(Output::from_flag(None), Output::Stdout);
        assert_eq!(Output::from_flag(Some(&"-".into())), Output::Stdout);
        assert_eq!(Output::from_flag(Some(&"none".into())), Output::None);
        assert_eq!(
            Output::from_flag(Some(&"/x.jsonl".into())),
            Output::File("/x.jsonl".into())
        );
    }
}
