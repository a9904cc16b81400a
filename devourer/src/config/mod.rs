//! Command line: subcommands, flags with their environment variables and defaults, durations.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use devourer_common::{dns::DNS_PORT_SLOTS, flow::DEFAULT_FLOW_MAP_ENTRIES};

use crate::loader::Mode;

#[derive(Debug, Parser)]
#[command(
    name = "devourer",
    version,
    about = "Kernel-assisted network flow monitor: who talks to whom, and how much"
)]
pub struct Cli {
    /// TOML configuration file (keys: long flag names in snake_case); default
    /// /etc/devourer/devourer.toml when it exists. Flags beat DEVOURER_* variables beat the file.
    #[arg(long, global = true, env = "DEVOURER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Count live traffic on interfaces and stream flow records.
    Capture(CaptureArgs),
    /// Replay a pcap/pcapng file through the same kernel program and stream its flow records.
    Read(ReadArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file and print the effective settings (file, environment and
    /// the flags after `--`).
    Check {
        file: PathBuf,
        /// Which command the settings are for.
        #[arg(long = "for", default_value = "capture", value_parser = ["capture", "read"])]
        for_command: String,
        /// Flags as the command would get them (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
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
    /// Write JSON lines here instead of stdout (appended); `none` for no JSON lines (with
    /// BigQuery, for instance).
    #[arg(long, short = 'o', env = "DEVOURER_OUTPUT")]
    pub output: Option<PathBuf>,
    /// TC (default) or XDP on ingress plus TC on egress. Offline: which program replays.
    #[arg(long, env = "DEVOURER_MODE", default_value = "tc")]
    pub mode: Mode,
}

/// A port list from one flag value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ports(pub Vec<u16>);

/// A DNS port list: `53,5353`, or `none` to turn DNS off.
pub fn parse_ports(s: &str) -> Result<Ports, String> {
    parse_port_list(s).map(Ports)
}

fn parse_port_list(s: &str) -> Result<Vec<u16>, String> {
    if s.eq_ignore_ascii_case("none") || s.is_empty() {
        return Ok(Vec::new());
    }
    let ports = s
        .split(',')
        .map(|p| match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
            Ok(n) => Ok(n),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ports.len() > DNS_PORT_SLOTS {
        return Err(format!("at most {DNS_PORT_SLOTS} ports"));
    }
    Ok(ports)
}

/// A byte size: `4096`, `512K`, `4M`, `1G` (binary multiples; `KiB`/`MiB`/`GiB` too).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.trim_end_matches("IB").trim_end_matches('B');
    let (num, mul) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("{s:?}: write sizes like 4M, 512K, 1G or 1048576"))
}

/// Ring sizes: a power of two of at least one page.
pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n = parse_bytes(s)?;
    if n < 4096 || !n.is_power_of_two() || n > (1 << 30) {
        return Err(format!("{s:?}: must be a power of two from 4K to 1G"));
    }
    Ok(n as u32)
}

/// Which clock the text logs use for file names and line times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogTz {
    Utc,
    Local,
}

#[derive(Debug, Args, Clone)]
pub struct DnsArgs {
    /// UDP/TCP ports whose payloads are decoded as DNS (comma-separated, at most 8), or `none`.
    #[arg(long, env = "DEVOURER_DNS_PORTS", default_value = "53", value_parser = parse_ports)]
    pub dns_ports: Ports,
    /// Payload bytes copied per DNS packet (at most 4096).
    #[arg(long, env = "DEVOURER_DNS_CAP", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(12..=4096))]
    pub dns_cap: u32,
    /// Size of the kernel's DNS ring buffer (power of two, e.g. 4M).
    #[arg(long, env = "DEVOURER_DNS_RING_SIZE", default_value = "4M", value_parser = parse_ring_size)]
    pub dns_ring_size: u32,
    /// A query without a response for this long is `lost`.
    #[arg(long, env = "DEVOURER_DNS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub dns_timeout: Duration,
    /// Queries waiting for a response at most; past it the oldest end as lost (counted).
    #[arg(long, env = "DEVOURER_DNS_MAX_PENDING", default_value_t = 65_536)]
    pub dns_max_pending: usize,
    /// TCP connections reassembled at once for DNS over TCP.
    #[arg(long, env = "DEVOURER_DNS_MAX_TCP_STREAMS", default_value_t = 10_000)]
    pub dns_max_tcp_streams: usize,
    /// Addresses remembered with the name they were resolved from.
    #[arg(long, env = "DEVOURER_NAME_CACHE_ENTRIES", default_value_t = 100_000)]
    pub name_cache_entries: usize,
    /// Networks that count as this host's (besides its interfaces' addresses; offline, only
    /// these): decides the role of a DNS transaction or an HTTP message. Repeatable.
    #[arg(long = "local-net", env = "DEVOURER_LOCAL_NET", value_delimiter = ',')]
    pub local_nets: Vec<ipnet::IpNet>,
    /// Write packetlog-compatible DNS text logs here (hourly files).
    #[arg(long, env = "DEVOURER_DNS_LOG_DIR")]
    pub dns_log_dir: Option<PathBuf>,
    /// Four files per hour (CQ, CR, SQ, SR) instead of one.
    #[arg(long, env = "DEVOURER_DNS_LOG_SPLIT")]
    pub dns_log_split: bool,
    /// Time zone of text log file names and line times.
    #[arg(long, env = "DEVOURER_LOG_TZ", default_value = "utc")]
    pub log_tz: LogTz,
}

impl DnsArgs {
    pub fn load_options(&self, offline: bool, flow: &FlowArgs) -> crate::loader::LoadOptions {
        crate::loader::LoadOptions {
            offline,
            flow_map_entries: flow.flow_map_entries,
            wake_interval_ns: flow.wake_interval.as_nanos().min(u64::MAX as u128) as u64,
            dns_ports: self.dns_ports.0.clone(),
            dns_cap: self.dns_cap,
            dns_ring_bytes: self.dns_ring_size,
            // Set by HttpArgs::apply.
            http_ports: Vec::new(),
            http_cap: devourer_common::dns::DEFAULT_HTTP_CAP,
            http_ring_bytes: devourer_common::dns::DEFAULT_HTTP_RING_BYTES,
            shared_map_entries: 1,
        }
    }

    /// The DNS tracker and text log these flags ask for (none when DNS is off).
    pub fn build(
        &self,
        local: crate::local::LocalAddrs,
    ) -> std::io::Result<(
        Option<crate::dns::DnsTracker>,
        Option<crate::textlog::TextLog>,
    )> {
        if !self.enabled() {
            return Ok((None, None));
        }
        let tracker = crate::dns::DnsTracker::new(self.tracker_config(), local);
        let log = match &self.dns_log_dir {
            Some(dir) => Some(crate::textlog::TextLog::new(
                "dns",
                crate::textlog::Period::Hourly,
                dir.clone(),
                self.dns_log_split,
                self.log_tz == LogTz::Local,
            )?),
            None => None,
        };
        Ok((Some(tracker), log))
    }

    pub fn enabled(&self) -> bool {
        !self.dns_ports.0.is_empty()
    }

    pub fn tracker_config(&self) -> crate::dns::DnsConfig {
        crate::dns::DnsConfig {
            timeout_ns: self.dns_timeout.as_nanos().min(u64::MAX as u128) as u64,
            max_pending: self.dns_max_pending.max(1),
            max_tcp_streams: self.dns_max_tcp_streams.max(1),
            name_cache_entries: self.name_cache_entries.max(1),
            text_log: self.dns_log_dir.is_some(),
        }
    }
}

#[derive(Debug, Args, Clone)]
pub struct HttpArgs {
    /// TCP ports whose HTTP requests and responses are logged (comma-separated, at most 8), or
    /// `none`. Default: none, or 80 when --http-log-dir is given.
    #[arg(long, env = "DEVOURER_HTTP_PORTS", value_parser = parse_ports)]
    pub http_ports: Option<Ports>,
    /// Payload bytes copied per HTTP segment (the request line and headers that fit).
    #[arg(long, env = "DEVOURER_HTTP_CAP", default_value_t = devourer_common::dns::DEFAULT_HTTP_CAP,
          value_parser = clap::value_parser!(u32).range(16..=4096))]
    pub http_cap: u32,
    /// Size of the kernel's HTTP ring buffer (power of two, e.g. 4M).
    #[arg(long, env = "DEVOURER_HTTP_RING_SIZE", default_value = "4M", value_parser = parse_ring_size)]
    pub http_ring_size: u32,
    /// A request without a response for this long is forgotten (counted as unanswered).
    #[arg(long, env = "DEVOURER_HTTP_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_timeout: Duration,
    /// Connections with requests awaiting a response, at most.
    #[arg(long, env = "DEVOURER_HTTP_MAX_CONNECTIONS", default_value_t = 65_536)]
    pub http_max_connections: usize,
    /// Write packetlog-compatible HTTP text logs here (daily files).
    #[arg(long, env = "DEVOURER_HTTP_LOG_DIR")]
    pub http_log_dir: Option<PathBuf>,
    /// Four files per day (CQ, CR, SQ, SR) instead of one.
    #[arg(long, env = "DEVOURER_HTTP_LOG_SPLIT")]
    pub http_log_split: bool,
}

impl HttpArgs {
    /// The ports in effect: the flag, else 80 when a log directory is given, else none.
    pub fn ports(&self) -> Vec<u16> {
        match &self.http_ports {
            Some(p) => p.0.clone(),
            None if self.http_log_dir.is_some() => vec![80],
            None => Vec::new(),
        }
    }

    /// Adds the HTTP settings to the kernel program's load options.
    pub fn apply(&self, o: &mut crate::loader::LoadOptions) {
        o.http_ports = self.ports();
        o.http_cap = self.http_cap;
        o.http_ring_bytes = self.http_ring_size;
    }

    /// The HTTP tracker and text log these flags ask for (none when HTTP is off).
    pub fn build(
        &self,
        local: crate::local::LocalAddrs,
        log_tz: LogTz,
    ) -> std::io::Result<(
        Option<crate::http::HttpTracker>,
        Option<crate::textlog::TextLog>,
    )> {
        if self.ports().is_empty() {
            return Ok((None, None));
        }
        let cfg = crate::http::HttpConfig {
            timeout_ns: self.http_timeout.as_nanos().min(u64::MAX as u128) as u64,
            max_connections: self.http_max_connections.max(1),
            text_log: self.http_log_dir.is_some(),
        };
        let log = match &self.http_log_dir {
            Some(dir) => Some(crate::textlog::TextLog::new(
                "http",
                crate::textlog::Period::Daily,
                dir.clone(),
                self.http_log_split,
                log_tz == LogTz::Local,
            )?),
            None => None,
        };
        Ok((Some(crate::http::HttpTracker::new(cfg, local)), log))
    }
}

#[derive(Debug, Args, Clone)]
pub struct BqArgs {
    /// Stream records to BigQuery in this project (with --bq-dataset).
    #[arg(long, env = "DEVOURER_BQ_PROJECT_ID")]
    pub bq_project_id: Option<String>,
    /// The dataset (it must exist; tables are created in it).
    #[arg(long, env = "DEVOURER_BQ_DATASET")]
    pub bq_dataset: Option<String>,
    /// Table for flow records (partitioned by first_seen_at).
    #[arg(long, env = "DEVOURER_BQ_TABLE", default_value = "flow_logs")]
    pub bq_table: String,
    /// Table for DNS transactions (partitioned by time).
    #[arg(long, env = "DEVOURER_BQ_DNS_TABLE", default_value = "dns_logs")]
    pub bq_dns_table: String,
    /// Service-account key file; without it, Application Default Credentials (the GCE/GKE
    /// metadata server, workload identity, GOOGLE_APPLICATION_CREDENTIALS).
    #[arg(long, env = "DEVOURER_BQ_SA_KEY_FILE")]
    pub bq_sa_key_file: Option<PathBuf>,
    /// BigQuery v2 API root, for emulators and private endpoints.
    #[arg(long, env = "DEVOURER_BQ_ENDPOINT")]
    pub bq_endpoint: Option<String>,
    /// Send a batch at least this often.
    #[arg(long, env = "DEVOURER_BQ_FLUSH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub bq_flush_interval: Duration,
    /// Rows per insertAll request at most (BigQuery allows 50,000).
    #[arg(long, env = "DEVOURER_BQ_BATCH_ROWS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=50_000))]
    pub bq_batch_rows: u64,
    /// Bytes per request at most (BigQuery allows 10 MB).
    #[arg(long, env = "DEVOURER_BQ_BATCH_BYTES", default_value = "5M", value_parser = parse_bytes)]
    pub bq_batch_bytes: u64,
    /// Timeout of one request.
    #[arg(long, env = "DEVOURER_BQ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub bq_timeout: Duration,
    /// First wait after a failed request; doubles up to --bq-backoff-max (with jitter).
    #[arg(long, env = "DEVOURER_BQ_BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    pub bq_backoff_base: Duration,
    #[arg(long, env = "DEVOURER_BQ_BACKOFF_MAX", default_value = "60s", value_parser = parse_duration)]
    pub bq_backoff_max: Duration,
    /// How long start-up waits for the tables to be checked.
    #[arg(long, env = "DEVOURER_BQ_SETUP_WAIT", default_value = "10s", value_parser = parse_duration)]
    pub bq_setup_wait: Duration,
    /// After creating or changing a table, retry rows BigQuery refuses for this long.
    #[arg(long, env = "DEVOURER_BQ_SCHEMA_SETTLE", default_value = "5m", value_parser = parse_duration)]
    pub bq_schema_settle: Duration,
    /// Rows wait here until BigQuery acknowledges them (kept across restarts).
    #[arg(
        long,
        env = "DEVOURER_SPOOL_DIR",
        default_value = "/var/lib/devourer/spool"
    )]
    pub spool_dir: PathBuf,
    /// Spool size cap; past it new rows are dropped and counted.
    #[arg(long, env = "DEVOURER_SPOOL_MAX_BYTES", default_value = "1G", value_parser = parse_bytes)]
    pub spool_max_bytes: u64,
    /// Rows BigQuery refuses as invalid, with the reason (default: in the spool directory).
    #[arg(long, env = "DEVOURER_BQ_DEAD_LETTER")]
    pub bq_dead_letter: Option<PathBuf>,
}

impl BqArgs {
    /// The BigQuery sink configuration, if one was asked for.
    pub fn config(&self) -> Result<Option<crate::bq::BqConfig>, String> {
        let (project, dataset) = match (&self.bq_project_id, &self.bq_dataset) {
            (None, None) => return Ok(None),
            (Some(p), Some(d)) => (p.clone(), d.clone()),
            (Some(_), None) => return Err("--bq-project-id needs --bq-dataset".into()),
            (None, Some(_)) => return Err("--bq-dataset needs --bq-project-id".into()),
        };
        if self.bq_batch_bytes > 9 << 20 {
            return Err(
                "--bq-batch-bytes: at most 9M (BigQuery refuses requests over 10 MB)".into(),
            );
        }
        Ok(Some(crate::bq::BqConfig {
            project,
            dataset,
            flow_table: self.bq_table.clone(),
            dns_table: self.bq_dns_table.clone(),
            key_file: self.bq_sa_key_file.clone(),
            endpoint: self.bq_endpoint.clone(),
            spool_dir: self.spool_dir.clone(),
            spool_max_bytes: self.spool_max_bytes,
            dead_letter: self
                .bq_dead_letter
                .clone()
                .unwrap_or_else(|| self.spool_dir.join("dead-letter.jsonl")),
            batch: crate::bq::spool::Limits {
                rows: self.bq_batch_rows as usize,
                bytes: self.bq_batch_bytes,
                age: self.bq_flush_interval,
            },
            backoff_base: self.bq_backoff_base,
            backoff_max: self.bq_backoff_max.max(self.bq_backoff_base),
            timeout: self.bq_timeout,
            setup_wait: self.bq_setup_wait,
            schema_settle: self.bq_schema_settle,
        }))
    }
}

/// `--metrics-addr`: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<std::net::SocketAddr>);

pub fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(MetricsAddr(None));
    }
    s.parse()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(|e| format!("{s:?}: {e} (write ADDRESS:PORT, or off)"))
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
    /// Serve /metrics, /healthz and /readyz here (`off` to disable).
    #[arg(long, env = "DEVOURER_METRICS_ADDR", default_value = "0.0.0.0:9402", value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,
    /// Records waiting for a slow output before new ones are dropped (and counted).
    #[arg(long, env = "DEVOURER_OUTPUT_QUEUE", default_value_t = 100_000)]
    pub output_queue: usize,
    /// Take packet captures on request from this Redis pub/sub server
    /// (`redis://[:PASSWORD@]HOST:PORT[/DB]`); also `[capture.redis] url` in the file.
    #[arg(long, env = "DEVOURER_CAPTURE_REDIS")]
    pub capture_redis: Option<String>,
    /// The Redis channel capture requests arrive on (default `capture`).
    #[arg(long, env = "DEVOURER_CAPTURE_CHANNEL")]
    pub capture_channel: Option<String>,
    /// Write captures here (default /var/lib/devourer/captures; failed uploads land here too).
    #[arg(long, env = "DEVOURER_CAPTURE_DIR")]
    pub capture_dir: Option<PathBuf>,
    #[command(flatten)]
    pub flow: FlowArgs,
    #[command(flatten)]
    pub dns: DnsArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub bq: BqArgs,
    /// The configuration file's `[capture]` and `[api]` sections (capture on request).
    #[arg(skip)]
    pub sections: Box<crate::ondemand::config::Sections>,
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
    /// How long the end of the replay may wait for outputs (JSON lines, BigQuery) to drain.
    #[arg(long, env = "DEVOURER_SHUTDOWN_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    #[command(flatten)]
    pub flow: FlowArgs,
    #[command(flatten)]
    pub dns: DnsArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub bq: BqArgs,
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

    /// Where JSON lines go, or `None` with `--output none`.
    pub fn target(&self) -> Option<crate::sink::Target> {
        match &self.output {
            Some(p) if p.as_os_str() == "none" => None,
            Some(p) if p.as_os_str() != "-" => Some(crate::sink::Target::File(p.clone())),
            _ => Some(crate::sink::Target::Stdout),
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
    fn dns_ports_and_ring_sizes_parse() {
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
