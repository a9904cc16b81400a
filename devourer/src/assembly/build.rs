//! From configuration to parts: the kernel program's load options, the flow table's timeouts,
//! the DNS and HTTP trackers, and the sinks, for either driver.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::{Driver, pipeline::Parts};
use crate::{
    base::{local::LocalAddrs, time::nanos},
    config::{
        BqArgs, DnsArgs, FluentArgs, HttpArgs, IpfixArgs, KafkaArgs, OtlpArgs, PipelineArgs,
        TlsArgs,
        values::{LogTz, Output},
    },
    decode::{
        dns::{DnsConfig, DnsTracker, tcp::TcpLimits},
        http::{HttpConfig, HttpTracker},
        tls::{TlsTracker, TlsTrackerConfig},
    },
    flow::{
        FlowTable, TableConfig,
        nat::{KernelConntrack, NatLookup},
    },
    kernel::{conntrack::Conntrack, object::LoadOptions},
    ops::metrics::Metrics,
    sink::{
        QueueLimits, Sink, Sinks,
        fluent::{FluentConfig, FluentSink, TlsConfig},
        ipfix::{IpfixConfig, IpfixSink, Transport, encode},
        jsonl::{JsonLinesSink, Target},
        spool::Limits,
        textlog::TextLog,
    },
};

/// The kernel program's settings.
pub fn load_options(p: &PipelineArgs, driver: &Driver) -> LoadOptions {
    let mut opts = p.load_options(matches!(driver, Driver::Replay { .. }));
    // A capture of one interface shows each packet once: no counting hook to carry over.
    opts.hook_memory = !matches!(
        driver,
        Driver::Replay {
            one_interface: true,
            ..
        }
    );
    opts
}

/// `alternate`: live counting alternates map sets (each scan drains a whole set, as replay's).
fn table_config(p: &PipelineArgs, driver: &Driver, alternate: bool) -> TableConfig {
    let f = &p.flow;
    TableConfig {
        idle_timeout: nanos(f.idle_timeout),
        active_timeout: nanos(f.active_timeout),
        tcp_linger: nanos(f.tcp_linger),
        evict_after: nanos(f.evict_after()),
        max_flows: f.max_flows as usize,
        start_records: f.flow_start_records,
        drain: alternate || matches!(driver, Driver::Replay { .. }),
    }
}

/// The flow table; live, joined to conntrack unless `--no-conntrack` (or it cannot be asked).
fn flow_table(p: &PipelineArgs, driver: &Driver, alternate: bool) -> FlowTable {
    let table = FlowTable::new(table_config(p, driver, alternate));
    if p.flow.no_conntrack || !matches!(driver, Driver::Live { .. }) {
        return table;
    }
    match Conntrack::open(p.flow.conntrack_timeout) {
        Ok(ct) => table.with_nat(NatLookup {
            source: Box::new(KernelConntrack::new(ct)),
            per_scan: p.flow.conntrack_lookups_per_scan as usize,
            walks_per_scan: p.flow.conntrack_walks_per_scan as usize,
            retries: p.flow.conntrack_retries,
        }),
        Err(e) => {
            tracing::warn!("conntrack unavailable, NAT'd connections are not joined: {e}");
            table
        }
    }
}

fn dns_tracker(d: &DnsArgs, local: LocalAddrs) -> Option<DnsTracker> {
    d.enabled().then(|| {
        let cfg = DnsConfig {
            timeout_ns: nanos(d.dns_timeout),
            max_pending: d.dns_max_pending as usize,
            tcp: TcpLimits {
                max_streams: d.dns_max_tcp_streams as usize,
                max_bytes: d.dns_tcp_max_bytes as usize,
                max_message: d.dns_tcp_max_message as usize,
                idle_ns: nanos(d.dns_tcp_idle_timeout),
            },
            name_cache_entries: d.name_cache_entries as usize,
            shared_names: d.dns_names == crate::config::args::DnsNames::Shared,
            text_log: d.dns_log_dir.is_some(),
        };
        DnsTracker::new(cfg, local)
    })
}

fn http_tracker(h: &HttpArgs, local: LocalAddrs) -> Option<HttpTracker> {
    (!h.ports().is_empty()).then(|| {
        let cfg = HttpConfig {
            timeout_ns: nanos(h.http_timeout),
            max_connections: h.http_max_connections as usize,
            max_pending_bytes: h.http_max_pending_bytes as usize,
            text_log: h.http_log_dir.is_some(),
        };
        HttpTracker::new(cfg, local)
    })
}

fn tls_tracker(t: &TlsArgs) -> Option<TlsTracker> {
    (!t.no_tls).then(|| {
        TlsTracker::new(TlsTrackerConfig {
            timeout_ns: nanos(t.tls_timeout),
            max_pending_bytes: t.tls_max_pending_bytes as usize,
        })
    })
}

/// This host's addresses: live, the interfaces' plus `--local-net`; offline, only the latter.
fn local_addrs(d: &DnsArgs, driver: &Driver) -> Result<LocalAddrs> {
    let mut local = LocalAddrs::new(d.local_nets.clone());
    if let Driver::Live { .. } = driver {
        local
            .refresh_from_interfaces()
            .context("listing this host's addresses")?;
    }
    Ok(local)
}

#[cfg(feature = "bigquery")]
pub fn bq_config(b: &BqArgs, project: String, dataset: String) -> crate::sink::bigquery::BqConfig {
    use crate::sink::{bigquery::BqConfig, spool::Limits};
    BqConfig {
        project,
        dataset,
        flow_table: b.bq_table.clone(),
        dns_table: b.bq_dns_table.clone(),
        overflow_table: b.bq_overflow_table.clone(),
        key_file: b.bq_sa_key_file.clone(),
        endpoint: b.bq_endpoint.clone(),
        spool_dir: b.spool_dir.clone(),
        spool_max_bytes: b.spool_max_bytes,
        dead_letter: b
            .bq_dead_letter
            .clone()
            .unwrap_or_else(|| b.spool_dir.join("dead-letter.jsonl")),
        dead_letter_max_bytes: b.bq_dead_letter_max_bytes,
        batch: Limits {
            rows: b.bq_batch_rows as usize,
            bytes: b.bq_batch_bytes,
            age: b.bq_flush_interval,
        },
        backoff_base: b.bq_backoff_base,
        backoff_max: b.bq_backoff_max.max(b.bq_backoff_base),
        timeout: b.bq_timeout,
        setup_wait: b.bq_setup_wait,
        schema_settle: b.bq_schema_settle,
    }
}

#[cfg(feature = "bigquery")]
fn bigquery(
    b: &BqArgs,
    project: String,
    dataset: String,
    metrics: Option<&Arc<Metrics>>,
) -> Result<Box<dyn crate::sink::Sink>> {
    let observer = metrics.map(|m| m.request_observer("bigquery"));
    let bq = crate::sink::bigquery::BqSink::start(bq_config(b, project, dataset), observer)?;
    Ok(Box::new(bq))
}

#[cfg(not(feature = "bigquery"))]
fn bigquery(
    _b: &BqArgs,
    _project: String,
    _dataset: String,
    _metrics: Option<&Arc<Metrics>>,
) -> Result<Box<dyn crate::sink::Sink>> {
    anyhow::bail!(
        "BigQuery is configured, but this build has no BigQuery sink (built without the bigquery feature)"
    )
}

/// A secret (a key, a password) from its file, without surrounding whitespace; an empty
/// one is refused.
pub fn secret(path: &std::path::Path, what: &str) -> Result<String> {
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} {}", path.display()))?
        .trim()
        .to_owned();
    if s.is_empty() {
        anyhow::bail!("the {what} file {} is empty", path.display());
    }
    Ok(s)
}

/// The Forward output to `addr`, its shared key read from its file.
fn fluent(f: &FluentArgs, addr: &str, agent: &str) -> Result<Box<dyn Sink>> {
    let shared_key = f
        .fluent_shared_key_file
        .as_deref()
        .map(|p| secret(p, "Forward shared key"))
        .transpose()?;
    if f.fluent_backoff_base > f.fluent_backoff_max || f.fluent_timeout.is_zero() {
        anyhow::bail!(
            "--fluent-backoff-base must be at most --fluent-backoff-max, and --fluent-timeout above zero"
        );
    }
    let cfg = FluentConfig {
        addr: addr.to_owned(),
        tag_prefix: f.fluent_tag_prefix.clone(),
        shared_key,
        hostname: agent.to_owned(),
        tls: f.fluent_tls.then(|| TlsConfig {
            ca_file: f.fluent_ca_file.clone(),
            server_name: f.fluent_tls_server_name.clone(),
        }),
        spool_dir: f.fluent_spool_dir.clone(),
        spool_max_bytes: f.fluent_spool_max_bytes,
        quarantine_max_bytes: f.fluent_quarantine_max_bytes,
        batch: Limits {
            rows: f.fluent_batch_records as usize,
            bytes: f.fluent_batch_bytes,
            age: f.fluent_flush_interval,
        },
        timeout: f.fluent_timeout,
        backoff_base: f.fluent_backoff_base,
        backoff_max: f.fluent_backoff_max,
    };
    Ok(Box::new(FluentSink::start(cfg)?))
}

/// How to reach Kafka brokers: TLS and SASL as asked (the password read from its file).
#[cfg(feature = "kafka")]
pub fn kafka_connect(
    brokers: &[String],
    tls: Option<Option<std::path::PathBuf>>,
    sasl: Option<(&str, &str, &std::path::Path)>,
    agent: &str,
    timeout: std::time::Duration,
) -> Result<crate::sink::kafka::client::Connect> {
    use crate::sink::kafka::client::{Connect, Sasl};
    if brokers
        .iter()
        .any(|b| b.trim().is_empty() || !b.contains(':'))
    {
        anyhow::bail!("Kafka brokers must be HOST:PORT, got {brokers:?}");
    }
    if timeout.is_zero() {
        anyhow::bail!("the Kafka timeout must be above zero");
    }
    let sasl = match sasl {
        Some((mechanism, username, password)) => Some(Sasl {
            mechanism: mechanism.parse().map_err(anyhow::Error::msg)?,
            username: username.to_owned(),
            password: secret(password, "Kafka SASL password")?,
        }),
        None => None,
    };
    Ok(Connect {
        brokers: brokers.iter().map(|b| b.trim().to_owned()).collect(),
        tls,
        sasl,
        client_id: format!("devourer-{agent}"),
        timeout,
    })
}

/// The Kafka export.
#[cfg(feature = "kafka")]
fn kafka(k: &KafkaArgs, agent: &str) -> Result<Box<dyn Sink>> {
    use crate::sink::{
        kafka::{KafkaConfig, KafkaSink},
        spool::Limits,
    };
    if k.kafka_backoff_base > k.kafka_backoff_max {
        anyhow::bail!("--kafka-backoff-base must be at most --kafka-backoff-max");
    }
    let sasl = match (
        &k.kafka_sasl_mechanism,
        &k.kafka_sasl_username,
        &k.kafka_sasl_password_file,
    ) {
        (Some(m), Some(u), Some(p)) => Some((m.as_str(), u.as_str(), p.as_path())),
        _ => None,
    };
    let connect = kafka_connect(
        &k.kafka_brokers,
        k.kafka_tls.then(|| k.kafka_ca_file.clone()),
        sasl,
        agent,
        k.kafka_timeout,
    )?;
    let cfg = KafkaConfig {
        connect,
        topics: [
            k.kafka_topic_flows.clone(),
            k.kafka_topic_dns.clone(),
            k.kafka_topic_http.clone(),
            k.kafka_topic_overflow.clone(),
        ],
        compression: k
            .kafka_compression
            .parse()
            .map_err(|e| anyhow::anyhow!("--kafka-compression: {e}"))?,
        spool_dir: k.kafka_spool_dir.clone(),
        spool_max_bytes: k.kafka_spool_max_bytes,
        quarantine_max_bytes: k.kafka_quarantine_max_bytes,
        batch: Limits {
            rows: k.kafka_batch_records as usize,
            bytes: k.kafka_batch_bytes,
            age: k.kafka_flush_interval,
        },
        backoff_base: k.kafka_backoff_base,
        backoff_max: k.kafka_backoff_max,
    };
    Ok(Box::new(KafkaSink::start(cfg)?))
}

#[cfg(not(feature = "kafka"))]
fn kafka(_k: &KafkaArgs, _agent: &str) -> Result<Box<dyn Sink>> {
    anyhow::bail!(
        "Kafka is configured, but this build has no Kafka sink (built without the kafka feature)"
    )
}

fn ipfix(a: &IpfixArgs, url: &str) -> Result<Box<dyn Sink>> {
    let (transport, addr) =
        IpfixConfig::parse_url(url).map_err(|e| anyhow::anyhow!("--ipfix: {e}"))?;
    if a.ipfix_backoff_base > a.ipfix_backoff_max || a.ipfix_timeout.is_zero() {
        anyhow::bail!(
            "--ipfix-backoff-base must be at most --ipfix-backoff-max, and --ipfix-timeout above zero"
        );
    }
    if transport == Transport::Udp && a.ipfix_mtu > 65_507 {
        anyhow::bail!("--ipfix-mtu: at most 65507 over UDP (a datagram's largest payload)");
    }
    if a.ipfix_enterprise_number == encode::REVERSE_PEN {
        anyhow::bail!(
            "--ipfix-enterprise-number: 29305 is RFC 5103's number of reverse elements, not one of devourer's"
        );
    }
    Ok(Box::new(IpfixSink::new(IpfixConfig {
        transport,
        addr,
        domain_id: a.ipfix_domain_id,
        template_interval: a.ipfix_template_interval,
        mtu: a.ipfix_mtu as usize,
        enterprise_number: a.ipfix_enterprise_number,
        timeout: a.ipfix_timeout,
        backoff_base: a.ipfix_backoff_base,
        backoff_max: a.ipfix_backoff_max,
    })))
}

#[cfg(feature = "otlp")]
fn otlp(
    a: &OtlpArgs,
    s: crate::config::OtlpSettings,
    agent: &str,
    metrics: Option<&Arc<Metrics>>,
) -> Result<Box<dyn Sink>> {
    use crate::sink::otlp::{
        OtlpConfig, OtlpSink,
        client::{ClientConfig, Protocol},
        parse_pairs, resource,
    };
    if a.otlp_backoff_base > a.otlp_backoff_max {
        anyhow::bail!("--otlp-backoff-base must be at most --otlp-backoff-max");
    }
    // Spooled as base64: 4M of it is 3 MB of protobuf, under gRPC receivers' 4 MiB.
    if a.otlp_batch_bytes > 4 << 20 {
        anyhow::bail!("--otlp-batch-bytes: at most 4M (gRPC receivers refuse requests over 4 MiB)");
    }
    let ca_pem = match &s.ca_file {
        Some(f) => Some(
            std::fs::read(f)
                .with_context(|| format!("reading the OTLP CA file {}", f.display()))?,
        ),
        None => None,
    };
    if s.metrics_url.is_none() && metrics.is_some() {
        tracing::warn!(
            "the OTLP logs endpoint {} does not end in /v1/logs: no endpoint for metrics can be told, so they are not exported (set OTEL_EXPORTER_OTLP_METRICS_ENDPOINT)",
            s.logs_url
        );
    }
    let gather: Option<crate::sink::otlp::Gather> =
        metrics.filter(|_| s.metrics_url.is_some()).map(|m| {
            let m = m.clone();
            Arc::new(move || m.registry.gather()) as crate::sink::otlp::Gather
        });
    let cfg = OtlpConfig {
        client: ClientConfig {
            protocol: Protocol::parse(&s.protocol).map_err(anyhow::Error::msg)?,
            // Without a metrics endpoint nothing asks for one (`gather` is `None`).
            metrics_url: s.metrics_url.clone().unwrap_or_else(|| s.logs_url.clone()),
            logs_url: s.logs_url,
            headers: parse_pairs(&s.headers),
            ca_pem,
            gzip: s.gzip,
            timeout: s.timeout,
        },
        resource: resource(
            agent,
            &crate::base::local::hostname(),
            std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        ),
        spool_dir: a.otlp_spool_dir.clone(),
        spool_max_bytes: a.otlp_spool_max_bytes,
        quarantine_max_bytes: a.otlp_quarantine_max_bytes,
        batch: Limits {
            rows: a.otlp_batch_records as usize,
            bytes: a.otlp_batch_bytes,
            age: a.otlp_flush_interval,
        },
        backoff_base: a.otlp_backoff_base,
        backoff_max: a.otlp_backoff_max,
        metrics_interval: s.metrics_interval,
        metrics: gather,
    };
    Ok(Box::new(OtlpSink::start(cfg)?))
}

#[cfg(not(feature = "otlp"))]
fn otlp(
    _a: &OtlpArgs,
    _s: crate::config::OtlpSettings,
    _agent: &str,
    _metrics: Option<&Arc<Metrics>>,
) -> Result<Box<dyn Sink>> {
    anyhow::bail!(
        "OTLP export is configured, but this build has no OTLP sink (built without the otlp feature)"
    )
}

/// How much may wait for each sink: live, a bounded queue that drops (and counts) when the
/// sink stalls; a replay waits for its sinks instead, so that no record of a file is lost.
fn queue_limits(driver: &Driver) -> QueueLimits {
    match *driver {
        Driver::Live { sink_queue } => sink_queue,
        Driver::Replay { .. } => QueueLimits {
            records: 16_384,
            bytes: 32 << 20,
            lossless: true,
        },
    }
}

/// Every sink the configuration asks for: JSON lines, BigQuery, the DNS and HTTP text logs,
/// each started on its own thread.
fn sinks(p: &PipelineArgs, driver: &Driver, metrics: Option<&Arc<Metrics>>) -> Result<Sinks> {
    let mut wanted: Vec<Box<dyn Sink>> = Vec::new();
    let target = match p.flow.output() {
        Output::Stdout => Some(Target::Stdout),
        Output::File(path) => Some(Target::File(path)),
        Output::None => None,
    };
    if let Some(t) = target {
        let jsonl = JsonLinesSink::start(&t, std::time::Duration::from_secs(1))
            .with_context(|| format!("opening output {t:?}"))?
            .serialise_on(record_threads(driver));
        wanted.push(Box::new(jsonl));
    }
    if let Some((project, dataset)) = p.bq.destination()? {
        wanted.push(bigquery(&p.bq, project, dataset, metrics)?);
    }
    if let Some(addr) = &p.fluent.fluent {
        wanted.push(fluent(&p.fluent, addr, &p.flow.agent())?);
    }
    if !p.kafka.kafka_brokers.is_empty() {
        wanted.push(kafka(&p.kafka, &p.flow.agent())?);
    }
    if let Some(url) = &p.ipfix.ipfix {
        wanted.push(ipfix(&p.ipfix, url)?);
    }
    if let Some(s) = p.otlp.settings(|k| std::env::var(k).ok())? {
        wanted.push(otlp(&p.otlp, s, &p.flow.agent(), metrics)?);
    }
    let local_tz = p.dns.log_tz == LogTz::Local;
    if !p.http.ports().is_empty()
        && let Some(dir) = &p.http.http_log_dir
    {
        let log = TextLog::http(dir.clone(), p.http.http_log_split, local_tz)
            .context("opening the HTTP log directory")?;
        wanted.push(Box::new(log));
    }
    if p.dns.enabled()
        && let Some(dir) = &p.dns.dns_log_dir
    {
        let log = TextLog::dns(dir.clone(), p.dns.dns_log_split, local_tz)
            .context("opening the DNS log directory")?;
        wanted.push(Box::new(log));
    }
    let mut sinks = Sinks::default();
    for sink in wanted {
        let name = sink.name();
        sinks
            .push(sink, queue_limits(driver))
            .with_context(|| format!("starting the {name} sink's thread"))?;
    }
    Ok(sinks)
}

/// Threads that build and serialise a large batch of flow records: as many as a replay feeds
/// on (idle by its last flush, which emits every flow); one live, where the agent shares the
/// node with its workloads.
fn record_threads(driver: &Driver) -> usize {
    match *driver {
        Driver::Live { .. } => 1,
        Driver::Replay { threads, .. } => threads,
    }
}

/// The pipeline's parts for `driver`; `alternate`: the kernel side alternates map sets.
pub fn parts(
    p: &PipelineArgs,
    driver: &Driver,
    metrics: Option<Arc<Metrics>>,
    alternate: bool,
) -> Result<Parts> {
    crate::base::files::set_group(p.file_group);
    let local = local_addrs(&p.dns, driver)?;
    Ok(Parts {
        table: flow_table(p, driver, alternate),
        record_threads: record_threads(driver),
        sinks: sinks(p, driver, metrics.as_ref())?,
        http: http_tracker(&p.http, local.clone()),
        tls: tls_tracker(&p.tls),
        dns: dns_tracker(&p.dns, local),
        metrics,
        agent: p.flow.agent(),
        community_seed: p.flow.community_id_seed,
        sampling: p.flow.sampling,
        filters: p.flow.filters.iter().map(|r| r.rule).collect(),
        filter_actions: p.flow.filters.iter().map(|r| r.action()).collect(),
        max_interface_names: p.flow.max_interface_names as usize,
        // No packets after detach: its flows are idle by then and out after a scan.
        interface_linger: p.flow.idle_timeout + p.flow.evict_after() + p.flow.scan_interval * 2,
        default_interface: match driver {
            Driver::Live { .. } => "unknown",
            Driver::Replay { .. } => "pcap",
        },
    })
}
