//! Command line: subcommands, flags with their environment variables and defaults, durations.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use devourer_common::flow::DEFAULT_FLOW_MAP_ENTRIES;

use crate::loader::Mode;

#[derive(Debug, Parser)]
#[command(
    name = "devourer",
    version,
    about = "Kernel-assisted network flow monitor: who talks to whom, and how much"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Count live traffic on interfaces and stream flow records.
    Capture(CaptureArgs),
    /// Replay a pcap/pcapng file through the same kernel program and stream its flow records.
    Read(ReadArgs),
}

/// A duration flag: `500ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e} (write durations like 500ms, 5s, 2m, 1h)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

#[derive(Debug, Args, Clone)]
pub struct FlowArgs {
    /// Emit a flow after this long without packets.
    #[arg(long, env = "DEVOURER_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Emit a continuation record (seq + 1, deltas) for flows open this long.
    #[arg(long, env = "DEVOURER_ACTIVE_TIMEOUT", default_value = "600s", value_parser = parse_duration)]
    pub active_timeout: Duration,
    /// After a TCP FIN from both sides or a RST, emit the flow once it has been quiet this long.
    #[arg(long, env = "DEVOURER_TCP_LINGER", default_value = "5s", value_parser = parse_duration)]
    pub tcp_linger: Duration,
    /// How often the kernel flow map is read (offline: on the capture's clock).
    #[arg(long, env = "DEVOURER_SCAN_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub scan_interval: Duration,
    /// Move a kernel map entry quiet this long into the agent's table (frees map room early;
    /// records are the same either way). Capped at the idle timeout.
    #[arg(long, env = "DEVOURER_EVICT_AFTER", default_value = "10s", value_parser = parse_duration)]
    pub evict_after: Duration,
    /// Kernel flow map capacity (entries, one per flow direction).
    #[arg(long, env = "DEVOURER_FLOW_MAP_ENTRIES", default_value_t = DEFAULT_FLOW_MAP_ENTRIES,
          value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    pub flow_map_entries: u32,
    /// Least time between two map-full wake-ups from one CPU.
    #[arg(long, env = "DEVOURER_WAKE_INTERVAL", default_value = "100ms", value_parser = parse_duration)]
    pub wake_interval: Duration,
    /// Name of this node in records (default: the host name; on Kubernetes pass the node name).
    #[arg(long, env = "DEVOURER_AGENT_NAME")]
    pub agent_name: Option<String>,
    /// Write JSON lines here instead of stdout (appended).
    #[arg(long, short = 'o', env = "DEVOURER_OUTPUT")]
    pub output: Option<PathBuf>,
    /// TC (default) or XDP on ingress plus TC on egress. Offline: which program replays.
    #[arg(long, env = "DEVOURER_MODE", default_value = "tc")]
    pub mode: Mode,
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Interface to monitor (repeatable).
    #[arg(
        short = 'i',
        long = "interface",
        env = "DEVOURER_INTERFACE",
        value_delimiter = ','
    )]
    pub interfaces: Vec<String>,
    /// Monitor every interface that is up, except loopback.
    #[arg(long, conflicts_with = "interfaces")]
    pub all_interfaces: bool,
    /// Attach TC programs with netlink clsact filters even where TCX links exist.
    #[arg(long, hide = true)]
    pub tc_netlink: bool,
    /// How long shutdown may take to write the last records.
    #[arg(long, env = "DEVOURER_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Records waiting for a slow output before new ones are dropped (and counted).
    #[arg(long, env = "DEVOURER_OUTPUT_QUEUE", default_value_t = 100_000)]
    pub output_queue: usize,
    #[command(flatten)]
    pub flow: FlowArgs,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// The pcap or pcapng file.
    pub file: PathBuf,
    /// Progress bar on stderr (default: when stderr is a terminal).
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,
    #[arg(long, overrides_with = "progress")]
    pub no_progress: bool,
    #[command(flatten)]
    pub flow: FlowArgs,
}

impl FlowArgs {
    pub fn table_config(&self) -> crate::flow::TableConfig {
        let ns = |d: Duration| d.as_nanos().min(u64::MAX as u128) as u64;
        crate::flow::TableConfig {
            idle_timeout: ns(self.idle_timeout),
            active_timeout: ns(self.active_timeout),
            tcp_linger: ns(self.tcp_linger),
            evict_after: ns(self.evict_after.min(self.idle_timeout)),
        }
    }

    pub fn agent(&self) -> String {
        self.agent_name.clone().unwrap_or_else(hostname)
    }

    pub fn target(&self) -> crate::sink::Target {
        match &self.output {
            Some(p) if p.as_os_str() != "-" => crate::sink::Target::File(p.clone()),
            _ => crate::sink::Target::Stdout,
        }
    }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length.
    let ret = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if ret != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_accept_units_and_refuse_garbage() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn capture_flags_parse() {
        let cli = Cli::try_parse_from([
            "devourer",
            "capture",
            "-i",
            "eth0",
            "-i",
            "eth1",
            "--idle-timeout",
            "10s",
            "--mode",
            "xdp",
        ])
        .unwrap();
        let Command::Capture(c) = cli.command else {
            panic!("capture")
        };
        assert_eq!(c.interfaces, ["eth0", "eth1"]);
        assert_eq!(c.flow.idle_timeout, Duration::from_secs(10));
        assert_eq!(c.flow.mode, Mode::Xdp);
        assert_eq!(c.flow.table_config().evict_after, 10_000_000_000);
    }
}
