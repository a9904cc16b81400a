//! The flag groups: flow table and kernel map ([`FlowArgs`]), DNS ([`DnsArgs`]), HTTP
//! ([`HttpArgs`]) and BigQuery ([`BqArgs`]), gathered in [`PipelineArgs`], which `capture` and
//! `read` both flatten. Parsing, defaults and validation only: the assembly builds from them.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use devourer_common::{flow::DEFAULT_FLOW_MAP_ENTRIES, payload::DEFAULT_HTTP_CAP};

use super::{
    filter,
    values::{
        BadValue, LogTz, Output, Ports, parse_bytes, parse_duration, parse_group, parse_ports,
        parse_ring_size,
    },
};
use crate::{
    base::{local::hostname, time::nanos},
    kernel::{
        attach::Mode,
        object::{LIVE_HOOK_HORIZON_NS, LoadOptions, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP},
    },
};

/// The settings of the record pipeline, the same for live capture and replay.
#[derive(Debug, Args, Clone)]
pub struct PipelineArgs {
    /// How long stopping may take to write the last records (and stop captures on request):
    /// one deadline for everything. Default 10s for `capture`, 1h for `read`.
    #[arg(long, env = "DEVOURER_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// A group (name or id) that may read the files the agent writes: records, text logs,
    /// the spool, dead-letter and quarantine files, captures. They are 0640 in directories
    /// 0750 owned by it; without this flag they are 0600 and 0700, for root alone.
    #[arg(long, env = "DEVOURER_FILE_GROUP", value_parser = parse_group)]
    pub file_group: Option<u32>,
    #[command(flatten)]
    pub flow: FlowArgs,
    #[command(flatten)]
    pub dns: DnsArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub bq: BqArgs,
    #[command(flatten)]
    pub fluent: FluentArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub ipfix: IpfixArgs,
    #[command(flatten)]
    pub otlp: OtlpArgs,
}

impl PipelineArgs {
    /// The kernel program's load-time settings.
    pub fn load_options(&self, offline: bool) -> LoadOptions {
        let mut o = LoadOptions::new(offline, self.flow.flow_map_entries);
        o.wake_interval_ns = nanos(self.flow.wake_interval);
        o.hook_horizon_ns = if offline {
            nanos(self.flow.evict_after())
        } else {
            LIVE_HOOK_HORIZON_NS
        };
        o.dns_ports = self.dns.dns_ports.0.clone();
        o.dns_cap = self.dns.dns_cap;
        o.dns_ring_bytes = self.dns.dns_ring_size;
        o.http_ports = self.http.ports();
        o.http_cap = self.http.http_cap;
        o.http_ring_bytes = self.http.http_ring_size;
        o.tls = !self.tls.no_tls;
        o.tls_ring_bytes = self.tls.tls_ring_size;
        o.per_interface = self.flow.count_per_interface;
        o.sampling = self.flow.sampling;
        // One RTT sample per flow direction per scan at most.
        o.srtt_period_ns = nanos(self.flow.scan_interval);
        // Replay runs the program of its mode alone; live, XDP mode also runs TC (egress, and
        // ingress on bridges), TC mode never XDP.
        o.programs = match (offline, self.flow.mode) {
            (true, Mode::Tc) => vec![PROG_TC_INGRESS],
            (true, Mode::Xdp) => vec![PROG_XDP],
            (false, Mode::Tc) => vec![PROG_TC_INGRESS, PROG_TC_EGRESS],
            (false, Mode::Xdp) => vec![PROG_XDP, PROG_TC_INGRESS, PROG_TC_EGRESS],
        };
        o
    }
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
    /// Flows the agent's table holds at most (memory: about 1 KiB each); past it the least
    /// recently active are emitted early with status `table_full`.
    #[arg(long, env = "DEVOURER_MAX_FLOWS", default_value_t = 50_000,
          value_parser = clap::value_parser!(u64).range(1_000..=100_000_000))]
    pub max_flows: u64,
    /// Interface names remembered for records (interfaces come and go on a node); the least
    /// recently attached are forgotten first.
    #[arg(long, env = "DEVOURER_MAX_INTERFACE_NAMES", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub max_interface_names: u64,
    /// Kernel flow map capacity (entries, one per flow direction). Its memory, whatever the
    /// CPU count: about (entries + CPUs) x 192 bytes plus 16 bytes per bucket (entries rounded
    /// up to a power of two), ~13 MiB at the default, and as many entries of 112 bytes for the
    /// counting hooks' memory, ~8 MiB (`devourer_kernel_map_bytes`).
    #[arg(long, env = "DEVOURER_FLOW_MAP_ENTRIES", default_value_t = DEFAULT_FLOW_MAP_ENTRIES,
          value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    pub flow_map_entries: u32,
    /// Count a packet on every monitored interface it crosses, each interface its own flow
    /// records (the default counts it once per node, on the first interface that saw its
    /// flow, and lists the others in the record's `interfaces`).
    #[arg(long, env = "DEVOURER_COUNT_PER_INTERFACE")]
    pub count_per_interface: bool,
    /// Live: do not join NAT'd connections through conntrack (by default a connection through
    /// SNAT, masquerade or a service DNAT is one record with the pre-translation endpoints and
    /// the translated ones in `xlat_*`; keeps CAP_NET_ADMIN to ask conntrack).
    #[arg(long, env = "DEVOURER_NO_CONNTRACK")]
    pub no_conntrack: bool,
    /// Flows looked up in conntrack per scan at most (new flows past it wait for the next scan;
    /// those emitted first count in `devourer_conntrack_lookups_total{result="skipped"}`).
    #[arg(long, env = "DEVOURER_CONNTRACK_LOOKUPS_PER_SCAN", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub conntrack_lookups_per_scan: u64,
    /// Filtered walks of the kernel's whole conntrack table per scan at most: ICMP query flows
    /// (echo, timestamp, ...), whose identifier is not in the flow key, share one walk per scan
    /// and IP version, or need up to 4 each when the table holds more than 4096 translated ICMP
    /// connections; TCP, UDP and other ICMP types (which conntrack keeps no connection for)
    /// need none. ICMP flows past it wait for the next scan.
    #[arg(long, env = "DEVOURER_CONNTRACK_WALKS_PER_SCAN", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub conntrack_walks_per_scan: u64,
    /// How long one conntrack answer may take before the lookup counts as failed.
    #[arg(long, env = "DEVOURER_CONNTRACK_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub conntrack_timeout: Duration,
    /// How many times a failed conntrack lookup is asked again, a scan apart, before its flow
    /// is emitted unjoined (`devourer_conntrack_lookups_total{result="gave_up"}`); its records
    /// wait for the answer meanwhile.
    #[arg(long, env = "DEVOURER_CONNTRACK_RETRIES", default_value_t = 3,
          value_parser = clap::value_parser!(u8).range(0..=20))]
    pub conntrack_retries: u8,
    /// A rule deciding which conversations are recorded (repeatable, in order; the first that
    /// matches decides, no match keeps): `keep` or `drop`, then any of `proto P` (tcp, udp,
    /// icmp, icmpv6), `net CIDR` (either address), `port N` or `port N-M` (either port); at
    /// most 16.
    /// Decided once per conversation on the tuple its client sent (before NAT); what each
    /// rule matched is counted, dropped conversations are never recorded and still reach the
    /// host.
    #[arg(long = "filter", env = "DEVOURER_FILTER", value_delimiter = ';', value_parser = filter::parse_rule)]
    pub filters: Vec<filter::Rule>,
    /// Count one packet in N in the kernel, picked by a keyed hash of the packet so that every
    /// interface decides alike (flow records carry `sampling`: N, to scale by); DNS and HTTP
    /// payloads are not sampled. 1: every packet.
    #[arg(long, env = "DEVOURER_SAMPLING", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub sampling: u32,
    /// Emit a record with status `start` (zero counters, its own id) when a flow is first
    /// seen: live within one scan of its first packet, offline at that packet's file time.
    #[arg(long, env = "DEVOURER_FLOW_START_RECORDS")]
    pub flow_start_records: bool,
    /// Seed of the records' Community ID (`community_id`); 0, the standard default, joins
    /// other tools' logs that kept theirs.
    #[arg(long, env = "DEVOURER_COMMUNITY_ID_SEED", default_value_t = 0)]
    pub community_id_seed: u16,
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

impl FlowArgs {
    pub fn agent(&self) -> String {
        self.agent_name.clone().unwrap_or_else(hostname)
    }

    /// Where JSON lines go.
    pub fn output(&self) -> Output {
        Output::from_flag(self.output.as_ref())
    }

    /// Kernel entries quiet this long move to the agent: never later than the idle timeout.
    pub fn evict_after(&self) -> Duration {
        self.evict_after.min(self.idle_timeout)
    }
}

/// `--dns-names`: whose answers name a flow's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DnsNames {
    /// The client's own resolutions (the other end of the flow; this host counts as one).
    PerClient,
    /// Any client's.
    Shared,
}

/// `--k8s-metadata`: which Kubernetes objects name records' addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum K8sMetadata {
    Off,
    /// The pods on this node (`spec.nodeName` = --agent-name), Services and nodes.
    Node,
    /// Every pod of the cluster (names remote peers too).
    Cluster,
}

/// Kubernetes metadata on records (live only).
#[derive(Debug, Args, Clone)]
pub struct K8sArgs {
    /// Name records' addresses with Kubernetes pods, workloads, Services and nodes. Default:
    /// `node` in a pod with its ServiceAccount token mounted, else `off`.
    #[arg(long, env = "DEVOURER_K8S_METADATA", value_enum)]
    pub k8s_metadata: Option<K8sMetadata>,
    /// The API server and credentials, for an agent outside the cluster (default: the pod's
    /// in-cluster configuration).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Memory for Kubernetes metadata, at most (estimate; about 0.8 KiB a pod): past it new
    /// objects are not kept (`devourer_k8s_objects_refused_total`).
    #[arg(long, env = "DEVOURER_K8S_MAX_BYTES", default_value = "64M", value_parser = parse_bytes)]
    pub k8s_max_bytes: u64,
    /// Longest wait between two attempts of a watch after an error (the API server away).
    #[arg(long, env = "DEVOURER_K8S_BACKOFF_MAX", default_value = "30s", value_parser = parse_duration)]
    pub k8s_backoff_max: Duration,
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
    /// Queries waiting for a response at most; past it the oldest end as lost (counted). Also
    /// sizes the table of recent answers that tells duplicate responses (16 bytes per query).
    #[arg(long, env = "DEVOURER_DNS_MAX_PENDING", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub dns_max_pending: u64,
    /// TCP connections reassembled at once for DNS over TCP.
    #[arg(long, env = "DEVOURER_DNS_MAX_TCP_STREAMS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub dns_max_tcp_streams: u64,
    /// Bytes held for DNS-over-TCP messages in progress, all connections together; past it
    /// the least recently active connections are forgotten (counted).
    #[arg(long, env = "DEVOURER_DNS_TCP_MAX_BYTES", default_value = "16M", value_parser = parse_bytes)]
    pub dns_tcp_max_bytes: u64,
    /// Bytes kept of one DNS message over TCP; a longer one is decoded from what was kept
    /// (records say `cut`).
    #[arg(long, env = "DEVOURER_DNS_TCP_MAX_MESSAGE", default_value_t = 65_535,
          value_parser = clap::value_parser!(u64).range(512..=65_535))]
    pub dns_tcp_max_message: u64,
    /// A DNS-over-TCP connection quiet this long is forgotten.
    #[arg(long, env = "DEVOURER_DNS_TCP_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub dns_tcp_idle_timeout: Duration,
    /// Addresses remembered with the name they were resolved from.
    #[arg(long, env = "DEVOURER_NAME_CACHE_ENTRIES", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub name_cache_entries: u64,
    /// Whose DNS answers name a flow's address: `per-client` (the flow's other end resolved
    /// it; this host's addresses count as one client, so a local caching resolver still
    /// names its processes' flows) or `shared` (any client's answer names every flow).
    #[arg(long, env = "DEVOURER_DNS_NAMES", value_enum, default_value_t = DnsNames::PerClient)]
    pub dns_names: DnsNames,
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
    pub fn enabled(&self) -> bool {
        !self.dns_ports.0.is_empty()
    }
}

#[derive(Debug, Args, Clone)]
pub struct HttpArgs {
    /// TCP ports whose HTTP requests and responses are logged (comma-separated, at most 8), or
    /// `none`. Default: none, or 80 when --http-log-dir is given.
    #[arg(long, env = "DEVOURER_HTTP_PORTS", value_parser = parse_ports)]
    pub http_ports: Option<Ports>,
    /// Payload bytes copied per HTTP segment (the request line and headers that fit).
    #[arg(long, env = "DEVOURER_HTTP_CAP", default_value_t = DEFAULT_HTTP_CAP,
          value_parser = clap::value_parser!(u32).range(16..=4096))]
    pub http_cap: u32,
    /// Size of the kernel's HTTP ring buffer (power of two, e.g. 4M).
    #[arg(long, env = "DEVOURER_HTTP_RING_SIZE", default_value = "4M", value_parser = parse_ring_size)]
    pub http_ring_size: u32,
    /// A request without a response for this long is forgotten (counted as unanswered).
    #[arg(long, env = "DEVOURER_HTTP_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_timeout: Duration,
    /// Connections with requests awaiting a response, at most.
    #[arg(long, env = "DEVOURER_HTTP_MAX_CONNECTIONS", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub http_max_connections: u64,
    /// Bytes of the requests awaiting a response (method and target), at most; past it the
    /// least recently active connections' requests are forgotten (counted as unanswered).
    #[arg(long, env = "DEVOURER_HTTP_MAX_PENDING_BYTES", default_value = "16M", value_parser = parse_bytes)]
    pub http_max_pending_bytes: u64,
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
}

#[derive(Debug, Args, Clone)]
pub struct TlsArgs {
    /// Do not read TLS handshakes: flows carry no `tls_*` fields and are not named from their
    /// server name.
    #[arg(long, env = "DEVOURER_NO_TLS")]
    pub no_tls: bool,
    /// Size of the kernel's TLS ring buffer (power of two, e.g. 4M): ClientHello and
    /// ServerHello segments on any TCP port.
    #[arg(long, env = "DEVOURER_TLS_RING_SIZE", default_value = "4M", value_parser = parse_ring_size)]
    pub tls_ring_size: u32,
    /// A ClientHello still missing segments this long after its first is given up (counted).
    #[arg(long, env = "DEVOURER_TLS_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub tls_timeout: Duration,
    /// Bytes of ClientHellos being reassembled (16 KiB each at most), at most; past it the
    /// oldest is given up (counted).
    #[arg(long, env = "DEVOURER_TLS_MAX_PENDING_BYTES", default_value = "16M", value_parser = parse_bytes)]
    pub tls_max_pending_bytes: u64,
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
    /// Table for overflow records: what a full flow map could not hold (partitioned by time).
    #[arg(
        long,
        env = "DEVOURER_BQ_OVERFLOW_TABLE",
        default_value = "overflow_logs"
    )]
    pub bq_overflow_table: String,
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
    /// Rows BigQuery refuses as invalid, with the reason (default: in the spool directory);
    /// spool lines that are not rows (torn by a crash) go to quarantine.jsonl beside it.
    #[arg(long, env = "DEVOURER_BQ_DEAD_LETTER")]
    pub bq_dead_letter: Option<PathBuf>,
    /// Cap of the dead-letter file and of the quarantine file, each; past it rejected rows
    /// are dropped and counted.
    #[arg(long, env = "DEVOURER_BQ_DEAD_LETTER_MAX_BYTES", default_value = "100M", value_parser = parse_bytes)]
    pub bq_dead_letter_max_bytes: u64,
}

/// fluentd's Forward output.
#[derive(Debug, Args, Clone)]
pub struct FluentArgs {
    /// Send records to a fluentd Forward receiver at HOST:PORT (fluentd's in_forward, Fluent
    /// Bit's forward input), each message acknowledged, through a durable spool.
    #[arg(long, env = "DEVOURER_FLUENT")]
    pub fluent: Option<String>,
    /// Prepended to every tag with a dot (`devourer` gives `devourer.flow.log`).
    #[arg(long, env = "DEVOURER_FLUENT_TAG_PREFIX", default_value = "")]
    pub fluent_tag_prefix: String,
    /// A file holding the receiver's `<security> shared_key`: the handshake (HELO, PING,
    /// PONG) proves both ends hold it.
    #[arg(long, env = "DEVOURER_FLUENT_SHARED_KEY_FILE")]
    pub fluent_shared_key_file: Option<PathBuf>,
    /// TLS to the receiver (fluentd's `<transport tls>`), its certificate checked against
    /// --fluent-ca-file or the system's CA certificates.
    #[arg(long, env = "DEVOURER_FLUENT_TLS")]
    pub fluent_tls: bool,
    /// CA certificates (PEM) the receiver's certificate must chain to (with --fluent-tls).
    #[arg(long, env = "DEVOURER_FLUENT_CA_FILE", requires = "fluent_tls")]
    pub fluent_ca_file: Option<PathBuf>,
    /// The name the receiver's certificate must carry (default: the host of --fluent).
    #[arg(long, env = "DEVOURER_FLUENT_TLS_SERVER_NAME", requires = "fluent_tls")]
    pub fluent_tls_server_name: Option<String>,
    /// Events wait here until the receiver acknowledges them (kept across restarts).
    #[arg(
        long,
        env = "DEVOURER_FLUENT_SPOOL_DIR",
        default_value = "/var/lib/devourer/spool-fluent"
    )]
    pub fluent_spool_dir: PathBuf,
    /// The Forward spool's size cap; past it new events are dropped and counted.
    #[arg(long, env = "DEVOURER_FLUENT_SPOOL_MAX_BYTES", default_value = "1G", value_parser = parse_bytes)]
    pub fluent_spool_max_bytes: u64,
    /// Cap of the quarantine file in the Forward spool directory (spool lines that are not
    /// events: torn by a crash, corrupt); past it they are dropped and counted.
    #[arg(long, env = "DEVOURER_FLUENT_QUARANTINE_MAX_BYTES", default_value = "100M", value_parser = parse_bytes)]
    pub fluent_quarantine_max_bytes: u64,
    /// Send a message at least this often.
    #[arg(long, env = "DEVOURER_FLUENT_FLUSH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub fluent_flush_interval: Duration,
    /// Events per message at most.
    #[arg(long, env = "DEVOURER_FLUENT_BATCH_RECORDS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub fluent_batch_records: u64,
    /// Bytes per message at most (of the spooled events).
    #[arg(long, env = "DEVOURER_FLUENT_BATCH_BYTES", default_value = "4M", value_parser = parse_bytes)]
    pub fluent_batch_bytes: u64,
    /// Connecting, writing a message and waiting for its ack: each at most this long.
    #[arg(long, env = "DEVOURER_FLUENT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub fluent_timeout: Duration,
    /// First wait after a failure; doubles up to --fluent-backoff-max (with jitter).
    #[arg(long, env = "DEVOURER_FLUENT_BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    pub fluent_backoff_base: Duration,
    #[arg(long, env = "DEVOURER_FLUENT_BACKOFF_MAX", default_value = "60s", value_parser = parse_duration)]
    pub fluent_backoff_max: Duration,
}

/// OpenTelemetry (OTLP) export. Each setting left unset falls back to its standard
/// `OTEL_EXPORTER_OTLP_*` variable, then to the default named here.
#[derive(Debug, Args, Clone)]
pub struct OtlpArgs {
    /// Export records as OTLP log records and the agent's metrics as OTLP metrics to this
    /// collector URL (http:// or https://), at least once through a spool. HTTP/protobuf
    /// appends /v1/logs and /v1/metrics; gRPC uses it as is. Else OTEL_EXPORTER_OTLP_ENDPOINT
    /// (OTEL_EXPORTER_OTLP_LOGS_ENDPOINT and _METRICS_ENDPOINT, used as they are, for one
    /// signal each).
    #[arg(long, env = "DEVOURER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// grpc or http/protobuf (else OTEL_EXPORTER_OTLP_PROTOCOL; default http/protobuf).
    #[arg(long, env = "DEVOURER_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// Headers of every request, key=value,... percent-encoded (else
    /// OTEL_EXPORTER_OTLP_HEADERS). Never logged.
    #[arg(long, env = "DEVOURER_OTLP_HEADERS")]
    pub otlp_headers: Option<String>,
    /// CA certificates (PEM) an https:// collector's certificate must chain to (else
    /// OTEL_EXPORTER_OTLP_CERTIFICATE, else the system's).
    #[arg(long, env = "DEVOURER_OTLP_CA_FILE")]
    pub otlp_ca_file: Option<PathBuf>,
    /// gzip or none (else OTEL_EXPORTER_OTLP_COMPRESSION; default none).
    #[arg(long, env = "DEVOURER_OTLP_COMPRESSION")]
    pub otlp_compression: Option<String>,
    /// Connecting and each request, at most this long (else OTEL_EXPORTER_OTLP_TIMEOUT in
    /// milliseconds; default 10s).
    #[arg(long, env = "DEVOURER_OTLP_TIMEOUT", value_parser = parse_duration)]
    pub otlp_timeout: Option<Duration>,
    /// The agent's metrics are exported this often, cumulative (else
    /// OTEL_METRIC_EXPORT_INTERVAL in milliseconds; default 60s).
    #[arg(long, env = "DEVOURER_OTLP_METRICS_INTERVAL", value_parser = parse_duration)]
    pub otlp_metrics_interval: Option<Duration>,
    /// Records wait here until the collector accepts them (kept across restarts).
    #[arg(
        long,
        env = "DEVOURER_OTLP_SPOOL_DIR",
        default_value = "/var/lib/devourer/spool-otlp"
    )]
    pub otlp_spool_dir: PathBuf,
    /// The OTLP spool's size cap; past it new records are dropped and counted.
    #[arg(long, env = "DEVOURER_OTLP_SPOOL_MAX_BYTES", default_value = "1G", value_parser = parse_bytes)]
    pub otlp_spool_max_bytes: u64,
    /// Cap of the dead-letter and quarantine files in the OTLP spool directory (records the
    /// collector refused; spool lines that are not records).
    #[arg(long, env = "DEVOURER_OTLP_QUARANTINE_MAX_BYTES", default_value = "100M", value_parser = parse_bytes)]
    pub otlp_quarantine_max_bytes: u64,
    /// Send a request at least this often.
    #[arg(long, env = "DEVOURER_OTLP_FLUSH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub otlp_flush_interval: Duration,
    /// Log records per request at most.
    #[arg(long, env = "DEVOURER_OTLP_BATCH_RECORDS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub otlp_batch_records: u64,
    /// Bytes per request at most (of the spooled records; gRPC receivers take 4 MiB).
    #[arg(long, env = "DEVOURER_OTLP_BATCH_BYTES", default_value = "3M", value_parser = parse_bytes)]
    pub otlp_batch_bytes: u64,
    /// First wait after a failure; doubles up to --otlp-backoff-max (with jitter).
    #[arg(long, env = "DEVOURER_OTLP_BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    pub otlp_backoff_base: Duration,
    #[arg(long, env = "DEVOURER_OTLP_BACKOFF_MAX", default_value = "60s", value_parser = parse_duration)]
    pub otlp_backoff_max: Duration,
}

/// The OTLP settings after the `OTEL_*` fallbacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpSettings {
    pub protocol: String,
    pub logs_url: String,
    /// `None`: no endpoint for metrics could be told (they are not exported).
    pub metrics_url: Option<String>,
    pub headers: String,
    pub ca_file: Option<PathBuf>,
    pub gzip: bool,
    pub timeout: Duration,
    pub metrics_interval: Duration,
}

impl OtlpArgs {
    /// The settings when OTLP export is asked for (`None`: it is not), reading the standard
    /// variables through `env` for what flags, `DEVOURER_*` and the file leave unset.
    pub fn settings(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OtlpSettings>, BadValue> {
        let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        // The flag (or DEVOURER_OTLP_ENDPOINT, or the file) sets both signals' endpoints: the
        // per-signal variables apply only without it.
        let flag = self.otlp_endpoint.clone();
        let (logs_var, metrics_var) = match flag {
            Some(_) => (None, None),
            None => (
                var("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"),
                var("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
            ),
        };
        let base = flag.or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
        if base.is_none() && logs_var.is_none() {
            if metrics_var.is_some() {
                // Perhaps set for other software on the host: not a request to export.
                tracing::warn!(
                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is set without an endpoint for logs \
                     (--otlp-endpoint, OTEL_EXPORTER_OTLP_ENDPOINT or \
                     OTEL_EXPORTER_OTLP_LOGS_ENDPOINT): no OTLP export"
                );
            }
            return Ok(None);
        }
        let protocol = self
            .otlp_protocol
            .clone()
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into());
        if !matches!(protocol.as_str(), "grpc" | "http/protobuf") {
            return Err(BadValue(format!(
                "--otlp-protocol {protocol:?}: expected grpc or http/protobuf"
            )));
        }
        let http = protocol == "http/protobuf";
        let signal = |explicit: Option<String>, path: &str| -> Option<String> {
            explicit.or_else(|| {
                base.as_ref().map(|b| {
                    if http {
                        format!("{}/{path}", b.trim_end_matches('/'))
                    } else {
                        b.clone()
                    }
                })
            })
        };
        let logs_url = signal(logs_var, "v1/logs").unwrap_or_default();
        // Only a logs endpoint given: over gRPC the same, over HTTP its /v1/metrics sibling
        // when it ends in /v1/logs, else no metrics.
        let metrics_url = signal(metrics_var, "v1/metrics").or_else(|| {
            if http {
                logs_url
                    .strip_suffix("/v1/logs")
                    .map(|b| format!("{b}/v1/metrics"))
            } else {
                Some(logs_url.clone())
            }
        });
        for u in std::iter::once(&logs_url).chain(&metrics_url) {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(BadValue(format!(
                    "the OTLP endpoint {u:?}: expected an http:// or https:// URL"
                )));
            }
        }
        let compression = self
            .otlp_compression
            .clone()
            .or_else(|| var("OTEL_EXPORTER_OTLP_COMPRESSION"))
            .unwrap_or_else(|| "none".into());
        let gzip = match compression.as_str() {
            "gzip" => true,
            "none" => false,
            c => {
                return Err(BadValue(format!(
                    "--otlp-compression {c:?}: expected gzip or none"
                )));
            }
        };
        let millis = |k: &str, default: Duration| -> Result<Duration, BadValue> {
            match var(k) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis)
                    .ok_or_else(|| BadValue(format!("{k}={v:?}: expected milliseconds above 0"))),
            }
        };
        let timeout = match self.otlp_timeout {
            Some(t) => t,
            None => millis("OTEL_EXPORTER_OTLP_TIMEOUT", Duration::from_secs(10))?,
        };
        let metrics_interval = match self.otlp_metrics_interval {
            Some(t) => t,
            None => millis("OTEL_METRIC_EXPORT_INTERVAL", Duration::from_secs(60))?,
        };
        Ok(Some(OtlpSettings {
            protocol,
            logs_url,
            metrics_url,
            headers: self
                .otlp_headers
                .clone()
                .or_else(|| var("OTEL_EXPORTER_OTLP_HEADERS"))
                .unwrap_or_default(),
            ca_file: self
                .otlp_ca_file
                .clone()
                .or_else(|| var("OTEL_EXPORTER_OTLP_CERTIFICATE").map(PathBuf::from)),
            gzip,
            timeout,
            metrics_interval,
        }))
    }
}

/// IPFIX export.
#[derive(Debug, Args, Clone)]
pub struct IpfixArgs {
    /// Export flow records as IPFIX (RFC 7011) biflows to a collector: udp://HOST:PORT or
    /// tcp://HOST:PORT (nfcapd, nfacctd, ...). Best effort: nothing is spooled.
    #[arg(long, env = "DEVOURER_IPFIX")]
    pub ipfix: Option<String>,
    /// The observation domain id in every message header.
    #[arg(long, env = "DEVOURER_IPFIX_DOMAIN_ID", default_value_t = 0)]
    pub ipfix_domain_id: u32,
    /// Over UDP, the templates are sent again this often (over TCP, once per connection).
    #[arg(long, env = "DEVOURER_IPFIX_TEMPLATE_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub ipfix_template_interval: Duration,
    /// The most bytes of one IPFIX message (a record that alone is larger goes alone).
    #[arg(long, env = "DEVOURER_IPFIX_MTU", default_value_t = 1400,
          value_parser = clap::value_parser!(u64).range(512..=65_535))]
    pub ipfix_mtu: u64,
    /// The private enterprise number of devourer's own elements (names, Kubernetes fields,
    /// Community ID). The default is IANA's number for documentation (RFC 5612): devourer has
    /// none registered.
    #[arg(long, env = "DEVOURER_IPFIX_ENTERPRISE_NUMBER", default_value_t = 32473,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub ipfix_enterprise_number: u32,
    /// Connecting (TCP) and writing one message, each at most this long.
    #[arg(long, env = "DEVOURER_IPFIX_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub ipfix_timeout: Duration,
    /// First wait before connecting again after a failure; doubles up to
    /// --ipfix-backoff-max (with jitter). Records meanwhile are dropped and counted.
    #[arg(long, env = "DEVOURER_IPFIX_BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    pub ipfix_backoff_base: Duration,
    #[arg(long, env = "DEVOURER_IPFIX_BACKOFF_MAX", default_value = "60s", value_parser = parse_duration)]
    pub ipfix_backoff_max: Duration,
}

/// Kafka export.
#[derive(Debug, Args, Clone)]
pub struct KafkaArgs {
    /// Send records to Kafka: bootstrap brokers as HOST:PORT, comma-separated. Each record's
    /// JSON line is a record value in its kind's topic, keyed by community_id, through a
    /// durable spool (at least once).
    #[arg(long, env = "DEVOURER_KAFKA_BROKERS", value_delimiter = ',')]
    pub kafka_brokers: Vec<String>,
    #[arg(
        long,
        env = "DEVOURER_KAFKA_TOPIC_FLOWS",
        default_value = "devourer-flows"
    )]
    pub kafka_topic_flows: String,
    #[arg(long, env = "DEVOURER_KAFKA_TOPIC_DNS", default_value = "devourer-dns")]
    pub kafka_topic_dns: String,
    #[arg(
        long,
        env = "DEVOURER_KAFKA_TOPIC_HTTP",
        default_value = "devourer-http"
    )]
    pub kafka_topic_http: String,
    #[arg(
        long,
        env = "DEVOURER_KAFKA_TOPIC_OVERFLOW",
        default_value = "devourer-overflow"
    )]
    pub kafka_topic_overflow: String,
    /// TLS to the brokers, their certificates checked against --kafka-ca-file or the
    /// system's CA certificates.
    #[arg(long, env = "DEVOURER_KAFKA_TLS")]
    pub kafka_tls: bool,
    /// CA certificates (PEM) the brokers' certificates must chain to (with --kafka-tls).
    #[arg(long, env = "DEVOURER_KAFKA_CA_FILE", requires = "kafka_tls")]
    pub kafka_ca_file: Option<PathBuf>,
    /// SASL: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with --kafka-sasl-username and
    /// --kafka-sasl-password-file).
    #[arg(long, env = "DEVOURER_KAFKA_SASL_MECHANISM", requires_all = ["kafka_sasl_username", "kafka_sasl_password_file"])]
    pub kafka_sasl_mechanism: Option<String>,
    #[arg(
        long,
        env = "DEVOURER_KAFKA_SASL_USERNAME",
        requires = "kafka_sasl_mechanism"
    )]
    pub kafka_sasl_username: Option<String>,
    /// A file holding the SASL password.
    #[arg(
        long,
        env = "DEVOURER_KAFKA_SASL_PASSWORD_FILE",
        requires = "kafka_sasl_mechanism"
    )]
    pub kafka_sasl_password_file: Option<PathBuf>,
    /// Compression of record batches: lz4, gzip or none.
    #[arg(long, env = "DEVOURER_KAFKA_COMPRESSION", default_value = "lz4")]
    pub kafka_compression: String,
    /// Records wait here until the brokers acknowledge them (kept across restarts).
    #[arg(
        long,
        env = "DEVOURER_KAFKA_SPOOL_DIR",
        default_value = "/var/lib/devourer/spool-kafka"
    )]
    pub kafka_spool_dir: PathBuf,
    /// The Kafka spool's size cap; past it new records are dropped and counted.
    #[arg(long, env = "DEVOURER_KAFKA_SPOOL_MAX_BYTES", default_value = "1G", value_parser = parse_bytes)]
    pub kafka_spool_max_bytes: u64,
    /// Cap of the quarantine file in the Kafka spool directory (spool lines that are not
    /// records: torn by a crash, corrupt); past it they are dropped and counted.
    #[arg(long, env = "DEVOURER_KAFKA_QUARANTINE_MAX_BYTES", default_value = "100M", value_parser = parse_bytes)]
    pub kafka_quarantine_max_bytes: u64,
    /// Produce at least this often.
    #[arg(long, env = "DEVOURER_KAFKA_FLUSH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub kafka_flush_interval: Duration,
    /// Records per batch at most (split over the partitions).
    #[arg(long, env = "DEVOURER_KAFKA_BATCH_RECORDS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub kafka_batch_records: u64,
    /// Bytes of JSON per batch at most, before compression (keep it under the brokers'
    /// message.max.bytes, 1 MiB by default, for records that do not compress).
    #[arg(long, env = "DEVOURER_KAFKA_BATCH_BYTES", default_value = "900K", value_parser = parse_bytes)]
    pub kafka_batch_bytes: u64,
    /// Connecting, each metadata lookup and each produce request: at most this long.
    #[arg(long, env = "DEVOURER_KAFKA_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub kafka_timeout: Duration,
    /// First wait after a failure; doubles up to --kafka-backoff-max (with jitter).
    #[arg(long, env = "DEVOURER_KAFKA_BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    pub kafka_backoff_base: Duration,
    #[arg(long, env = "DEVOURER_KAFKA_BACKOFF_MAX", default_value = "60s", value_parser = parse_duration)]
    pub kafka_backoff_max: Duration,
}

impl BqArgs {
    /// The project and dataset when BigQuery is asked for (`None`: it is not); refuses half a
    /// destination and batches BigQuery would refuse.
    pub fn destination(&self) -> Result<Option<(String, String)>, BadValue> {
        let dest = match (&self.bq_project_id, &self.bq_dataset) {
            (None, None) => return Ok(None),
            (Some(p), Some(d)) => (p.clone(), d.clone()),
            (Some(_), None) => return Err(BadValue("--bq-project-id needs --bq-dataset".into())),
            (None, Some(_)) => return Err(BadValue("--bq-dataset needs --bq-project-id".into())),
        };
        if self.bq_batch_bytes > 9 << 20 {
            return Err(BadValue(
                "--bq-batch-bytes: at most 9M (BigQuery refuses requests over 10 MB)".into(),
            ));
        }
        Ok(Some(dest))
    }
}
