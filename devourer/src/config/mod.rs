//! Configuration as data: the command line (subcommands and flag groups, [`args`]), flag
//! values ([`values`]), the TOML file and its precedence ([`file`]) and the capture-on-request
//! sections ([`requests`]). Parsing, defaults and validation; nothing here builds the agent.

pub mod args;
pub mod file;
pub mod filter;
pub mod requests;
pub mod values;

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

pub use self::args::{
    BqArgs, DnsArgs, FlowArgs, FluentArgs, HttpArgs, IpfixArgs, KafkaArgs, OtlpArgs, OtlpSettings,
    PipelineArgs, TlsArgs,
};
use self::values::{MetricsAddr, parse_metrics_addr};

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
    Capture(Box<LiveArgs>),
    /// Replay a pcap/pcapng file through the same kernel program and stream its flow records.
    Read(Box<ReplayArgs>),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Compiles a capture filter read from stdin, as libpcap would for an Ethernet capture
    /// (capture on request runs this as a child process, which it kills past
    /// `filter_compile_timeout`: libpcap's compiler cannot be cancelled).
    #[command(hide = true)]
    CompileFilter,
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

/// The command line's definition: [`Cli`]'s, with the defaults that differ between commands
/// (a replay may wait an hour for its outputs to drain; a live agent stops in seconds).
pub fn command() -> clap::Command {
    Cli::command().mut_subcommand("read", |s| {
        s.mut_arg("shutdown_timeout", |a| a.default_value("1h"))
    })
}

/// `devourer capture`: live monitoring of interfaces.
#[derive(Debug, Args)]
pub struct LiveArgs {
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
    /// With --all-interfaces: only interfaces whose names match one of these patterns
    /// (comma-separated globs: `eth*,ens*,veth*`); default: every interface.
    #[arg(long, env = "DEVOURER_INTERFACE_INCLUDE", value_delimiter = ',', value_parser = values::parse_glob)]
    pub interface_include: Vec<glob::Pattern>,
    /// With --all-interfaces: never interfaces whose names match one of these patterns
    /// (`cni0,docker0,flannel.1`); beats --interface-include.
    #[arg(long, env = "DEVOURER_INTERFACE_EXCLUDE", value_delimiter = ',', value_parser = values::parse_glob)]
    pub interface_exclude: Vec<glob::Pattern>,
    /// Attach TC programs with netlink clsact filters even where TCX links exist.
    #[arg(long, hide = true)]
    pub tc_netlink: bool,
    /// Connections the metrics endpoint and the capture API each serve at once; past it new
    /// ones are closed at once (counted).
    #[arg(long, env = "DEVOURER_ENDPOINT_MAX_CONNECTIONS", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub endpoint_max_connections: u64,
    /// Time a client of those endpoints has to send a request's head, and the lifetime of one
    /// connection.
    #[arg(long, env = "DEVOURER_ENDPOINT_TIMEOUT", default_value = "10s", value_parser = values::parse_duration)]
    pub endpoint_timeout: std::time::Duration,
    /// Connections one peer address may hold at once on the metrics endpoint and the capture
    /// API (besides --endpoint-max-connections in all); past it new ones are closed (counted).
    #[arg(long, env = "DEVOURER_MAX_CONNECTIONS_PER_PEER", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_connections_per_peer: u64,
    /// Serve the probes /healthz and /readyz here, on a listener of their own (`off` to
    /// disable): loopback by default, where nothing outside the node reaches them.
    #[arg(long, env = "DEVOURER_PROBE_ADDR", default_value = "127.0.0.1:9404", value_parser = parse_metrics_addr)]
    pub probe_addr: MetricsAddr,
    /// Serve /metrics (and the probes) here (`off` to disable).
    #[arg(long, env = "DEVOURER_METRICS_ADDR", default_value = "0.0.0.0:9402", value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,
    /// Series the per-workload metrics (TCP retransmits and RTT, drops by source and
    /// destination workload) may hold together, at most; the label sets past it are added to
    /// the `other` series and counted in `devourer_metrics_series_dropped_total`.
    #[arg(long, env = "DEVOURER_METRICS_MAX_SERIES", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub metrics_max_series: u64,
    /// How long a per-workload label set may go unobserved before a new one may take its room
    /// under --metrics-max-series (its series are then removed).
    #[arg(long, env = "DEVOURER_METRICS_SERIES_IDLE", default_value = "1h", value_parser = values::parse_duration)]
    pub metrics_series_idle: std::time::Duration,
    /// Records that may wait for each sink (each runs on a thread of its own) before new
    /// ones are dropped for that sink and counted (`devourer_sink_dropped_total{sink}`).
    #[arg(long, env = "DEVOURER_SINK_QUEUE_RECORDS", alias = "output-queue", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub sink_queue_records: u64,
    /// Memory the records waiting for each sink may hold, at most (with --sink-queue-records).
    #[arg(long, env = "DEVOURER_SINK_QUEUE_BYTES", alias = "output-queue-bytes", default_value = "64M",
          value_parser = values::parse_bytes)]
    pub sink_queue_bytes: u64,
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
    pub k8s: args::K8sArgs,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// The configuration file's `[capture]` and `[api]` sections (capture on request).
    #[arg(skip)]
    pub sections: Box<requests::Sections>,
}

/// `devourer read`: replay of a capture file.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The pcap or pcapng file.
    pub file: PathBuf,
    /// Progress bar on stderr (default: when stderr is a terminal).
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,
    #[arg(long, overrides_with = "progress")]
    pub no_progress: bool,
    /// Threads that feed the kernel program, at most 64 (0: one per CPU, up to 64). Records
    /// do not depend on it:
    /// each flow stays on one thread and DNS and HTTP packets keep file order on the first,
    /// except that where the flow map fills, early evictions fall at other packets.
    #[arg(long, env = "DEVOURER_REPLAY_THREADS", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=64))]
    pub replay_threads: u8,
    /// Frame bytes one replay segment holds at most: the packets every thread feeds between
    /// two of their meetings. A scan runs while the other threads feed one segment, so a long
    /// scan (many flows) wants long segments; this bounds the memory they hold.
    #[arg(long, env = "DEVOURER_REPLAY_SEGMENT_BYTES", default_value = "32M",
          value_parser = values::parse_bytes)]
    pub replay_segment_bytes: u64,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::FromArgMatches;

    use super::*;
    use crate::kernel::attach::Mode;

    #[test]
    fn cli_is_well_formed() {
        command().debug_assert();
    }

    fn parse(argv: &[&str]) -> Command {
        let m = command().try_get_matches_from(argv).unwrap();
        Cli::from_arg_matches(&m).unwrap().command
    }

    #[test]
    fn capture_flags_parse() {
        let Command::Capture(c) = parse(&[
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
        ]) else {
            panic!("capture")
        };
        assert_eq!(c.interfaces, ["eth0", "eth1"]);
        let flow = &c.pipeline.flow;
        assert_eq!(flow.idle_timeout, Duration::from_secs(10));
        assert_eq!(flow.mode, Mode::Xdp);
        assert_eq!(flow.evict_after(), Duration::from_secs(10));
        assert_eq!(c.pipeline.shutdown_timeout, Duration::from_secs(10));
    }

    #[test]
    fn otlp_flags_win_over_the_standard_variables_which_win_over_the_defaults() {
        let otlp = |argv: &[&str]| {
            let mut a = vec!["devourer", "read", "x.pcap"];
            a.extend_from_slice(argv);
            let Command::Read(r) = parse(&a) else {
                panic!("read")
            };
            r.pipeline.otlp
        };
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            otlp(&[]).settings(env(&[])).unwrap(),
            None,
            "off unless asked for"
        );
        let s = otlp(&[])
            .settings(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:9/x"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=b"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(s.protocol, "http/protobuf");
        assert_eq!(
            (s.logs_url.as_str(), s.metrics_url.as_deref()),
            ("http://c:4318/v1/logs", Some("http://m:9/x"))
        );
        assert_eq!(
            (s.headers.as_str(), s.gzip, s.timeout),
            ("a=b", true, Duration::from_millis(2500))
        );
        assert_eq!(s.metrics_interval, Duration::from_secs(60));
        let s = otlp(&[
            "--otlp-endpoint",
            "https://g:4317",
            "--otlp-protocol",
            "grpc",
            "--otlp-timeout",
            "3s",
        ])
        .settings(env(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1"),
            // The flag sets both signals' endpoints: these do not apply.
            (
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                "http://elsewhere:1/v1/logs",
            ),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://elsewhere:1/v1/metrics",
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.protocol.as_str(), s.logs_url.as_str()),
            ("grpc", "https://g:4317")
        );
        assert_eq!(
            (s.metrics_url.as_deref(), s.timeout),
            (Some("https://g:4317"), Duration::from_secs(3))
        );
        // A logs endpoint alone: over HTTP its /v1/metrics sibling, or no metrics.
        let only_logs = |url: &'static str| {
            otlp(&[])
                .settings(move |k: &str| {
                    (k == "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT").then(|| url.to_owned())
                })
                .unwrap()
                .unwrap()
                .metrics_url
        };
        assert_eq!(
            only_logs("http://l:1/v1/logs").as_deref(),
            Some("http://l:1/v1/metrics")
        );
        assert_eq!(only_logs("http://l:1/ingest"), None);
        assert_eq!(
            otlp(&[])
                .settings(env(&[(
                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                    "http://m:1"
                )]))
                .unwrap(),
            None,
            "metrics alone (set for other software): no export, and a warning"
        );
        for bad in [
            &["--otlp-endpoint", "c:4317"][..],
            &["--otlp-endpoint", "http://c", "--otlp-protocol", "json"],
            &["--otlp-endpoint", "http://c", "--otlp-compression", "zstd"],
        ] {
            assert!(otlp(bad).settings(env(&[])).is_err(), "{bad:?}");
        }
        assert!(
            otlp(&[])
                .settings(env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                    ("OTEL_METRIC_EXPORT_INTERVAL", "soon")
                ]))
                .is_err()
        );
    }

    #[test]
    fn the_shutdown_deadline_defaults_per_command_and_the_flag_wins() {
        let Command::Read(r) = parse(&["devourer", "read", "x.pcap"]) else {
            panic!("read")
        };
        assert_eq!(r.pipeline.shutdown_timeout, Duration::from_secs(3600));
        let Command::Read(r) = parse(&["devourer", "read", "x.pcap", "--shutdown-timeout", "3s"])
        else {
            panic!("read")
        };
        assert_eq!(r.pipeline.shutdown_timeout, Duration::from_secs(3));
    }
}
