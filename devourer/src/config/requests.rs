//! Capture-on-request settings: the `[capture]` (limits, interface aliases, `[capture.redis]`,
//! the upload destinations `[capture.s3]` and `[[capture.destination]]`) and `[api]` sections
//! of the TOML file, with pcapdaemon's admin limits under design.md's names, and the flags that
//! override them.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

use super::values::{BadValue, MAX_DURATION, parse_bytes, parse_duration};

/// Where captures go when nothing else is configured (and where failed uploads land).
pub const DEFAULT_LOCAL_DIR: &str = "/var/lib/devourer/captures";
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:9403";

/// The canned ACLs S3 knows (`x-amz-acl`).
pub const CANNED_ACLS: [&str; 7] = [
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
];

/// The name of the `[capture.s3]` destination when it gives none.
pub const DEFAULT_DESTINATION: &str = "default";

/// Where a capture goes besides the local directory: a destination the administrator
/// configured (requests only pick one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Target {
    /// The destination's name (`DEFAULT_DESTINATION` for `[capture.s3]` unless named).
    pub name: String,
    pub bucket: String,
    pub folder: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub acl: Option<String>,
    pub encryption: bool,
    /// A plain `http://` endpoint is allowed (a local S3-compatible store, for instance).
    pub allow_http: bool,
}

impl S3Target {
    /// The endpoint as a URL (`https://` where the configuration gives a bare host), if any.
    pub fn endpoint_url(&self) -> Option<String> {
        self.endpoint.as_deref().map(endpoint_url)
    }
}

/// `host[:port]` or a URL, as a URL without a trailing slash.
pub fn endpoint_url(e: &str) -> String {
    let e = e.trim().trim_end_matches('/');
    if e.contains("://") {
        e.to_owned()
    } else {
        format!("https://{e}")
    }
}

/// The admin's bounds on every request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureLimits {
    pub max_packets: u64,
    pub max_bytes: u64,
    pub max_duration: Duration,
    pub max_timeout: Duration,
    /// Idle timeout of a request that names none.
    pub default_timeout: Duration,
    pub snaplength: u32,
    pub max_concurrent: usize,
    /// Distinct interfaces one request may name.
    pub max_interfaces: usize,
    /// Memory all captures in flight may hold (their packets and socket buffers).
    pub max_memory: u64,
    /// Bytes of one request message (Redis or API body); longer ones are refused unread.
    pub max_request_bytes: usize,
    /// Bytes of a request's filter.
    pub max_filter_bytes: usize,
}

/// Bytes of memory one capture socket's ring buffer takes (counted against `max_memory`).
pub const CAPTURE_RING_BYTES: u64 = 4 << 20;

/// `128M` or a number of bytes.
fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        Count(u64),
        Text(String),
    }
    match V::deserialize(d)? {
        V::Count(0) => Err(serde::de::Error::custom("must be greater than zero")),
        V::Count(n) => Ok(n),
        V::Text(t) => parse_bytes(&t).map_err(serde::de::Error::custom),
    }
}

/// `5s`, `2m` or a number of seconds (pcapdaemon wrote seconds); at most 30 days either way.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        Secs(u64),
        Text(String),
    }
    match V::deserialize(d)? {
        V::Secs(0) => Err(serde::de::Error::custom("must be greater than zero")),
        V::Secs(s) if s > MAX_DURATION.as_secs() => Err(serde::de::Error::custom(format!(
            "{s} seconds: at most 30 days"
        ))),
        V::Secs(s) => Ok(Duration::from_secs(s)),
        V::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

/// The longest wait between two attempts (`retry_max`), and so the first (`retry_base`).
pub const MAX_RETRY: Duration = Duration::from_secs(3600);

fn d(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSection {
    #[serde(default = "defaults::max_packets")]
    pub max_packets: u64,
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "defaults::max_duration", deserialize_with = "duration")]
    pub max_duration: Duration,
    #[serde(default = "defaults::max_timeout", deserialize_with = "duration")]
    pub max_timeout: Duration,
    #[serde(default = "defaults::default_timeout", deserialize_with = "duration")]
    pub default_timeout: Duration,
    #[serde(default = "defaults::snaplength")]
    pub snaplength: u32,
    #[serde(default = "defaults::max_concurrent")]
    pub max_concurrent: usize,
    /// Distinct interfaces one request may name (more are refused).
    #[serde(default = "defaults::max_interfaces")]
    pub max_interfaces: usize,
    /// Memory held by all captures in flight, packets and socket buffers: a capture that
    /// would pass it stops (`stopped_by: memory`) and keeps what it has.
    #[serde(default = "defaults::max_memory", deserialize_with = "bytes")]
    pub max_memory: u64,
    /// Size of one request message; longer ones are refused (`too_large`) and counted.
    #[serde(default = "defaults::max_request_bytes", deserialize_with = "bytes")]
    pub max_request_bytes: u64,
    pub local_dir: Option<PathBuf>,
    /// First wait before a Redis reconnect or an upload retry; doubles up to `retry_max`.
    #[serde(default = "defaults::retry_base", deserialize_with = "duration")]
    pub retry_base: Duration,
    #[serde(default = "defaults::retry_max", deserialize_with = "duration")]
    pub retry_max: Duration,
    /// Requests taken per second at most, all sources together (Redis, SQS, the API); the
    /// rest are refused unread (`rate_limited`).
    #[serde(default = "defaults::max_requests_per_second")]
    pub max_requests_per_second: u32,
    /// Requests waiting to be checked at most; past it they are refused (`queue_full`).
    #[serde(default = "defaults::max_queued_requests")]
    pub max_queued_requests: usize,
    /// Bytes of a request's `bpf` filter at most (longer ones: `bad_filter`).
    #[serde(default = "defaults::max_filter_bytes", deserialize_with = "bytes")]
    pub max_filter_bytes: u64,
    /// How long libpcap may take to compile a filter (in a child process, one at a time);
    /// past it the request is refused (`bad_filter`).
    #[serde(
        default = "defaults::filter_compile_timeout",
        deserialize_with = "duration"
    )]
    pub filter_compile_timeout: Duration,
    /// Bytes the capture files in `local_dir` may take in all; a capture that would pass it is
    /// refused (`local_full`) or not written (counted).
    #[serde(default = "defaults::max_local_bytes", deserialize_with = "bytes")]
    pub max_local_bytes: u64,
    /// Upload attempts before a capture falls back to the local directory.
    #[serde(default = "defaults::upload_attempts")]
    pub upload_attempts: u32,
    /// Time limit of one upload attempt.
    #[serde(default = "defaults::upload_timeout", deserialize_with = "duration")]
    pub upload_timeout: Duration,
    #[serde(default)]
    pub interface: Vec<InterfaceAlias>,
    pub redis: Option<RedisSection>,
    /// Requests from an SQS queue (pcapdaemon's trigger).
    pub sqs: Option<SqsSection>,
    /// Requests from a Kafka topic (pcapdaemon's `[kafka]` trigger).
    pub kafka: Option<KafkaSection>,
    /// The default upload destination: captures go there unless a request picks another.
    pub s3: Option<S3Section>,
    /// More destinations a request may pick by `"destination": NAME`.
    #[serde(default)]
    pub destination: Vec<S3Section>,
    /// CloudShark, where every capture is uploaded too (pcapdaemon's upload).
    pub cloudshark: Option<CloudsharkSection>,
}

/// `[capture.cloudshark]`: the administrator's CloudShark (a request cannot name another, nor
/// a token). Each capture file is uploaded there, with retries like S3's (`upload_attempts`,
/// `retry_base`, `retry_max`); one that fails for good is kept in the local directory.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudsharkSection {
    /// The service's base URL (`https://www.cloudshark.org`, or an appliance's).
    pub url: String,
    /// A file holding the API token (the configuration never holds the token itself).
    pub token_file: PathBuf,
    /// Time limit of one upload attempt (a number of seconds, or `"90s"`).
    #[serde(
        default = "defaults::cloudshark_timeout",
        deserialize_with = "duration"
    )]
    pub timeout: Duration,
    /// Tags added to every upload's (comma-separated), after the request's.
    #[serde(default)]
    pub tags: String,
    /// Allow a plain `http://` URL (off: only `https://`).
    #[serde(default)]
    pub allow_http: bool,
}

impl CloudsharkSection {
    /// The URL is `https://` (or `http://` where allowed) and has a host; the timeout is
    /// not zero.
    fn check(&self) -> Result<(), BadValue> {
        let scheme_ok = self.url.starts_with("https://")
            || (self.allow_http && self.url.starts_with("http://"));
        let host = self.url.split("://").nth(1).unwrap_or_default();
        if !scheme_ok || host.trim_matches('/').is_empty() {
            return Err(BadValue(format!(
                "[capture.cloudshark] url {:?} must be https://HOST (http:// with allow_http = true)",
                self.url
            )));
        }
        if self.timeout.is_zero() {
            return Err(BadValue(
                "[capture.cloudshark] timeout must be greater than zero".into(),
            ));
        }
        Ok(())
    }
}

mod defaults {
    use super::*;
    pub fn kafka_topic() -> String {
        "capture".into()
    }
    pub fn kafka_timeout() -> Duration {
        d(10)
    }
    pub fn kafka_max_wait() -> Duration {
        Duration::from_millis(500)
    }
    pub fn kafka_metadata_interval() -> Duration {
        d(30)
    }
    pub fn max_packets() -> u64 {
        50_000
    }
    pub fn max_bytes() -> u64 {
        100_000_000
    }
    pub fn max_duration() -> Duration {
        d(3600)
    }
    pub fn max_timeout() -> Duration {
        d(3600)
    }
    pub fn default_timeout() -> Duration {
        d(10)
    }
    pub fn snaplength() -> u32 {
        65_535
    }
    pub fn max_concurrent() -> usize {
        4
    }
    pub fn max_interfaces() -> usize {
        16
    }
    pub fn max_memory() -> u64 {
        128 << 20
    }
    pub fn max_request_bytes() -> u64 {
        64 << 10
    }
    pub fn retry_base() -> Duration {
        d(1)
    }
    pub fn retry_max() -> Duration {
        d(60)
    }
    pub fn upload_attempts() -> u32 {
        5
    }
    pub fn upload_timeout() -> Duration {
        d(60)
    }
    pub fn cloudshark_timeout() -> Duration {
        d(60)
    }
    pub fn ping_interval() -> Duration {
        d(30)
    }
    pub fn channel() -> String {
        "capture".into()
    }
    pub fn wait_seconds() -> i32 {
        20
    }
    pub fn chunk_size() -> i32 {
        10
    }
    pub fn max_requests_per_second() -> u32 {
        10
    }
    pub fn max_queued_requests() -> usize {
        64
    }
    pub fn max_filter_bytes() -> u64 {
        4096
    }
    pub fn filter_compile_timeout() -> Duration {
        d(2)
    }
    pub fn max_local_bytes() -> u64 {
        1 << 30
    }
    pub fn auth_failure_delay() -> Duration {
        Duration::from_millis(250)
    }
    pub fn auth_failure_delay_max() -> Duration {
        d(10)
    }
}

impl Default for CaptureSection {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceAlias {
    pub name: String,
    #[serde(default)]
    pub alias: Vec<String>,
}

/// `[capture.sqs]`: SQS hands a message to one consumer only, so each node reads its own
/// queue: `{node}` in `url` is replaced by the agent's name (a sender fans out, with SNS say).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SqsSection {
    pub url: String,
    pub region: Option<String>,
    /// An SQS-compatible service instead of AWS's.
    pub endpoint: Option<String>,
    /// Long polling: how long one receive waits for a message (0-20 s).
    #[serde(default = "defaults::wait_seconds")]
    pub wait_seconds: i32,
    /// Messages one receive takes at most (1-10).
    #[serde(default = "defaults::chunk_size")]
    pub chunk_size: i32,
}

impl SqsSection {
    /// The queue URL for node `node`.
    pub fn queue_url(&self, node: &str) -> String {
        self.url.replace("{node}", node)
    }

    fn check(&self) -> Result<(), BadValue> {
        if self.url.trim().is_empty() {
            return Err(BadValue("[capture.sqs] url is empty".into()));
        }
        if !(0..=20).contains(&self.wait_seconds) {
            return Err(BadValue(format!(
                "[capture.sqs] wait_seconds {} is not 0-20",
                self.wait_seconds
            )));
        }
        if !(1..=10).contains(&self.chunk_size) {
            return Err(BadValue(format!(
                "[capture.sqs] chunk_size {} is not 1-10",
                self.chunk_size
            )));
        }
        Ok(())
    }
}

/// `[capture.kafka]`: every node must see every request, so by default each reads every
/// partition of the topic from its newest offsets, without a consumer group (a group shares
/// the partitions out, one node each). The request is the message value.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// Bootstrap brokers, `HOST:PORT`.
    pub brokers: Vec<String>,
    #[serde(default = "defaults::kafka_topic")]
    pub topic: String,
    /// TLS to the brokers, checked against `ca_file` or the system's CA certificates.
    #[serde(default)]
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, with `sasl_username` and `sasl_password_file`.
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password_file: Option<PathBuf>,
    /// A consumer group, per node (`{agent}` in it): refused by this build, whose Kafka
    /// client has no group protocol; without one every node reads every partition.
    pub group: Option<String>,
    /// Connecting and each request at most this long.
    #[serde(default = "defaults::kafka_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// How long one fetch waits for a new request on a partition.
    #[serde(default = "defaults::kafka_max_wait", deserialize_with = "duration")]
    pub max_wait: Duration,
    /// How often the topic's partitions are listed again (new ones are read from their
    /// start).
    #[serde(
        default = "defaults::kafka_metadata_interval",
        deserialize_with = "duration"
    )]
    pub metadata_interval: Duration,
}

impl KafkaSection {
    fn check(&self) -> Result<(), BadValue> {
        let bad = |m: String| Err(BadValue(format!("[capture.kafka] {m}")));
        if self.brokers.is_empty()
            || self
                .brokers
                .iter()
                .any(|b| b.trim().is_empty() || !b.contains(':'))
        {
            return bad(format!("brokers must be HOST:PORT, got {:?}", self.brokers));
        }
        if self.topic.trim().is_empty() {
            return bad("topic is empty".into());
        }
        if self.ca_file.is_some() && !self.tls {
            return bad("ca_file needs tls = true".into());
        }
        let sasl = [
            self.sasl_mechanism.is_some(),
            self.sasl_username.is_some(),
            self.sasl_password_file.is_some(),
        ];
        if sasl.iter().any(|&b| b) && !sasl.iter().all(|&b| b) {
            return bad(
                "SASL needs sasl_mechanism, sasl_username and sasl_password_file together".into(),
            );
        }
        if let Some(g) = &self.group {
            if !g.contains("{agent}") {
                return bad(format!(
                    "group {g:?} has no {{agent}}: one group for all nodes would hand each request to one node only"
                ));
            }
            return bad(format!(
                "group {g:?}: consumer groups are not supported by this build's Kafka client; leave group out (every node then reads every partition from its newest offsets)"
            ));
        }
        if self.timeout.is_zero() || self.max_wait.is_zero() || self.metadata_interval.is_zero() {
            return bad("timeout, max_wait and metadata_interval must be greater than zero".into());
        }
        if self.max_wait > Duration::from_secs(60) {
            return bad("max_wait must be at most 60s".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]`, `rediss://` for TLS.
    pub url: Option<String>,
    #[serde(default = "defaults::channel")]
    pub channel: String,
    /// How often the subscription is pinged; no answer within it means the connection is
    /// dead (a silent network failure) and the agent reconnects.
    #[serde(default = "defaults::ping_interval", deserialize_with = "duration")]
    pub ping_interval: Duration,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    /// Required in `[[capture.destination]]`; `[capture.s3]` is `default` unless named.
    pub name: Option<String>,
    pub bucket: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub folder: Option<String>,
    pub acl: Option<String>,
    #[serde(default)]
    pub encryption: bool,
    /// Allow a plain `http://` endpoint (off: only `https://`).
    #[serde(default)]
    pub allow_http: bool,
}

impl S3Section {
    fn target(&self, name: &str) -> S3Target {
        S3Target {
            name: name.to_owned(),
            bucket: self.bucket.clone(),
            folder: self.folder.clone(),
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            acl: self.acl.clone(),
            encryption: self.encryption,
            allow_http: self.allow_http,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    #[serde(default = "default_api_addr")]
    pub addr: SocketAddr,
    /// File holding the bearer token (one line, at least 16 bytes). Required: loopback is
    /// shared by every host-network pod of a node.
    pub token_file: Option<PathBuf>,
    /// A wrong token is answered after this, doubled for each failure of the same peer before
    /// it, up to `auth_failure_delay_max`.
    #[serde(
        default = "defaults::auth_failure_delay",
        deserialize_with = "duration"
    )]
    pub auth_failure_delay: Duration,
    #[serde(
        default = "defaults::auth_failure_delay_max",
        deserialize_with = "duration"
    )]
    pub auth_failure_delay_max: Duration,
}

fn default_api_addr() -> SocketAddr {
    DEFAULT_API_ADDR.parse().expect("valid")
}

/// The sections as read from the file (both optional).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Sections {
    pub capture: Option<CaptureSection>,
    pub api: Option<ApiSection>,
}

/// Everything capture on request runs with.
#[derive(Clone, Debug)]
pub struct RequestsConfig {
    pub capture: CaptureSection,
    pub redis_url: Option<String>,
    pub channel: String,
    pub redis_ping: Duration,
    pub local_dir: PathBuf,
    /// The directory was configured (flag or `local_dir`): captures uploaded to S3 are kept
    /// there too. Otherwise it only receives captures without S3 and failed uploads.
    pub local_copy: bool,
    pub api: Option<ApiSection>,
}

impl CaptureSection {
    pub fn limits(&self) -> CaptureLimits {
        CaptureLimits {
            max_packets: self.max_packets.max(1),
            max_bytes: self.max_bytes.max(1),
            max_duration: self.max_duration,
            max_timeout: self.max_timeout,
            default_timeout: self.default_timeout,
            snaplength: self.snaplength.clamp(64, 262_144),
            max_concurrent: self.max_concurrent.max(1),
            max_interfaces: self.max_interfaces.max(1),
            max_memory: self.max_memory.max(CAPTURE_RING_BYTES),
            max_request_bytes: self.max_request_bytes.clamp(256, 16 << 20) as usize,
            max_filter_bytes: self.max_filter_bytes.clamp(16, 1 << 20) as usize,
        }
    }

    /// The default destination (`[capture.s3]`), if any.
    pub fn s3_target(&self) -> Option<S3Target> {
        self.s3
            .as_ref()
            .map(|s| s.target(s.name.as_deref().unwrap_or(DEFAULT_DESTINATION)))
    }

    /// Every destination a request may pick: the default first, then `[[capture.destination]]`.
    pub fn destinations(&self) -> Vec<S3Target> {
        let named = self
            .destination
            .iter()
            .map(|s| s.target(s.name.as_deref().unwrap_or_default()));
        self.s3_target().into_iter().chain(named).collect()
    }

    /// Names unique and present, buckets given, endpoints `https://` unless `allow_http`.
    fn check_destinations(&self) -> Result<(), BadValue> {
        if self
            .destination
            .iter()
            .any(|d| d.name.as_deref().is_none_or(str::is_empty))
        {
            return Err(BadValue("[[capture.destination]] needs a `name`".into()));
        }
        let all = self.destinations();
        for (i, d) in all.iter().enumerate() {
            let which = format!("capture destination {:?}", d.name);
            if all[..i].iter().any(|o| o.name == d.name) {
                return Err(BadValue(format!("{which}: the name is used twice")));
            }
            if d.bucket.is_empty() {
                return Err(BadValue(format!("{which}: `bucket` is empty")));
            }
            if let Some(acl) = d.acl.as_deref()
                && !CANNED_ACLS.contains(&acl)
            {
                return Err(BadValue(format!(
                    "{which}: acl {acl:?} is not a canned S3 ACL (one of {})",
                    CANNED_ACLS.join(", ")
                )));
            }
            match d.endpoint_url() {
                Some(u) if u.starts_with("http://") && !d.allow_http => {
                    return Err(BadValue(format!(
                        "{which}: endpoint {u} is plain http: set allow_http = true to allow it"
                    )));
                }
                Some(u) if !u.starts_with("http://") && !u.starts_with("https://") => {
                    return Err(BadValue(format!(
                        "{which}: endpoint {u} is neither https:// nor http://"
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn aliases(&self, alias: &str) -> Option<Vec<String>> {
        let names: Vec<String> = self
            .interface
            .iter()
            .filter(|i| i.alias.iter().any(|a| a == alias) || i.name == alias)
            .map(|i| i.name.clone())
            .collect();
        (!names.is_empty()).then_some(names)
    }
}

/// Reads the `[capture]` and `[api]` sections of a configuration file; errors name the key.
pub fn read_sections(text: &str) -> Result<Sections, BadValue> {
    let table: toml::Table = toml::from_str(text).map_err(|e| BadValue(e.to_string()))?;
    let mut only = toml::Table::new();
    for key in ["capture", "api"] {
        if let Some(v) = table.get(key) {
            only.insert(key.into(), v.clone());
        }
    }
    toml::Value::Table(only)
        .try_into::<Sections>()
        .map_err(|e| BadValue(e.to_string().trim().to_owned()))
}

/// The settings from the file's sections and the flags; `None` when capture on request is off
/// (neither Redis nor the API configured).
pub fn resolve(
    sections: &Sections,
    redis_flag: Option<&str>,
    channel_flag: Option<&str>,
    dir_flag: Option<&PathBuf>,
) -> Result<Option<RequestsConfig>, BadValue> {
    let capture = sections.capture.clone().unwrap_or_default();
    let redis_url = redis_flag
        .map(str::to_owned)
        .or_else(|| capture.redis.as_ref().and_then(|r| r.url.clone()));
    let channel = channel_flag
        .map(str::to_owned)
        .or_else(|| capture.redis.as_ref().map(|r| r.channel.clone()))
        .unwrap_or_else(defaults::channel);
    if redis_url.is_none()
        && sections.api.is_none()
        && capture.sqs.is_none()
        && capture.kafka.is_none()
    {
        return Ok(None);
    }
    if let Some(sqs) = &capture.sqs {
        sqs.check()?;
    }
    if let Some(k) = &capture.kafka {
        k.check()?;
    }
    // On loopback too: every host-network pod of a node shares it.
    if let Some(api) = &sections.api
        && api.token_file.is_none()
    {
        return Err(BadValue(format!(
            "[api] (addr {}) needs token_file: the capture API always requires a bearer token",
            api.addr
        )));
    }
    capture.check_destinations()?;
    if let Some(c) = &capture.cloudshark {
        c.check()?;
    }
    if capture.max_duration.is_zero() || capture.max_timeout.is_zero() {
        return Err(BadValue(
            "[capture] durations must be greater than zero".into(),
        ));
    }
    if capture.retry_max > MAX_RETRY || capture.retry_base > capture.retry_max {
        return Err(BadValue(format!(
            "[capture] retry_base ({:?}) must be at most retry_max ({:?}), and retry_max at most 1h",
            capture.retry_base, capture.retry_max
        )));
    }
    if capture.max_requests_per_second == 0 || capture.max_queued_requests == 0 {
        return Err(BadValue(
            "[capture] max_requests_per_second and max_queued_requests must be greater than zero"
                .into(),
        ));
    }
    let local_dir = dir_flag
        .cloned()
        .or_else(|| capture.local_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LOCAL_DIR));
    let local_copy = dir_flag.is_some() || capture.local_dir.is_some();
    let redis_ping = capture
        .redis
        .as_ref()
        .map_or_else(defaults::ping_interval, |r| r.ping_interval);
    Ok(Some(RequestsConfig {
        capture,
        redis_url,
        channel,
        redis_ping,
        local_dir,
        local_copy,
        api: sections.api.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kafka_topic_alone_turns_requests_on_and_a_group_shared_by_nodes_is_refused() {
        let cfg = |k: &str| {
            let s = read_sections(&format!("[capture.kafka]\n{k}\n")).map_err(|e| e.0)?;
            resolve(&s, None, None, None).map_err(|e| e.0)
        };
        let r = cfg(r#"brokers = ["127.0.0.1:9092"]"#).unwrap().unwrap();
        let k = r.capture.kafka.unwrap();
        assert_eq!((k.topic.as_str(), k.group), ("capture", None));
        let shared = cfg("brokers = [\"b:9092\"]\ngroup = \"capture\"").unwrap_err();
        assert!(shared.contains("{agent}"), "{shared}");
        let per_node = cfg("brokers = [\"b:9092\"]\ngroup = \"devourer-{agent}\"").unwrap_err();
        assert!(per_node.contains("not supported"), "{per_node}");
        assert!(cfg(r#"brokers = ["nohost"]"#).is_err());
        assert!(cfg("brokers = [\"b:9092\"]\nsasl_mechanism = \"PLAIN\"").is_err());
        assert!(cfg("brokers = [\"b:9092\"]\nca_file = \"/ca.pem\"").is_err());
    }

    #[test]
    fn an_sqs_queue_alone_turns_requests_on_and_its_bounds_are_checked() {
        let cfg = |sqs: &str| {
            let s = read_sections(&format!("[capture.sqs]\n{sqs}\n")).map_err(|e| e.0)?;
            resolve(&s, None, None, None).map_err(|e| e.0)
        };
        let r = cfg("url = \"https://sqs.eu-west-1.amazonaws.com/1/capture-{node}\"")
            .unwrap()
            .expect("requests on");
        let q = r.capture.sqs.unwrap();
        assert_eq!(
            q.queue_url("node-7"),
            "https://sqs.eu-west-1.amazonaws.com/1/capture-node-7"
        );
        assert_eq!((q.wait_seconds, q.chunk_size), (20, 10));
        for (extra, says) in [
            ("wait_seconds = 21", "0-20"),
            ("chunk_size = 0", "1-10"),
            ("chunk_size = 11", "1-10"),
        ] {
            let e = cfg(&format!("url = \"u\"\n{extra}")).unwrap_err();
            assert!(e.contains(says), "{extra}: {e}");
        }
        assert!(cfg("url = \" \"").unwrap_err().contains("empty"));
    }

    #[test]
    fn sections_read_with_defaults_and_name_bad_keys() {
        let s = read_sections(
            r#"
idle_timeout = "60s"
[capture]
max_packets = 10
max_duration = 30
default_timeout = "2s"
[[capture.interface]]
name = "eth0"
alias = ["main", "public"]
[capture.redis]
url = "redis://127.0.0.1:6379"
[capture.s3]
bucket = "pcaps"
folder = "node-1"
[api]
token_file = "/etc/devourer/token"
"#,
        )
        .unwrap();
        let c = s.capture.as_ref().unwrap();
        let l = c.limits();
        assert_eq!((l.max_packets, l.max_bytes), (10, 100_000_000));
        assert_eq!((l.max_duration, l.default_timeout), (d(30), d(2)));
        assert_eq!(c.aliases("public").unwrap(), ["eth0"]);
        assert_eq!(c.redis.as_ref().unwrap().channel, "capture");
        assert_eq!(s.api.as_ref().unwrap().addr, default_api_addr());
        let r = resolve(&s, None, Some("alerts"), None).unwrap().unwrap();
        assert_eq!(r.channel, "alerts");
        assert_eq!(r.local_dir, PathBuf::from(DEFAULT_LOCAL_DIR));
        assert!(!r.local_copy);
        let dir = PathBuf::from("/srv/caps");
        assert!(
            resolve(&s, None, None, Some(&dir))
                .unwrap()
                .unwrap()
                .local_copy
        );

        let e = read_sections("[capture]\nmax_pakets = 3\n").unwrap_err().0;
        assert!(e.contains("max_pakets"), "{e}");
        let e = read_sections("[capture]\nmax_timeout = \"soon\"\n")
            .unwrap_err()
            .0;
        assert!(e.contains("max_timeout"), "{e}");
        assert!(
            resolve(&Sections::default(), None, None, None)
                .unwrap()
                .is_none()
        );
        for api in ["[api]\naddr = \"0.0.0.0:9403\"\n", "[api]\n"] {
            let open = read_sections(api).unwrap();
            let e = resolve(&open, None, None, None).unwrap_err().0;
            assert!(e.contains("token_file"), "{e}");
        }
    }

    #[test]
    fn every_duration_is_at_most_30_days_and_retries_stay_in_order() {
        let cfg = |capture: &str| {
            let s = read_sections(&format!(
                "[capture]\n{capture}\n[api]\ntoken_file = \"/t\"\n"
            ))
            .map_err(|e| e.0)?;
            resolve(&s, None, None, None).map_err(|e| e.0)
        };
        // Seconds as pcapdaemon wrote them are bounded like the text form.
        for key in [
            "max_duration",
            "retry_max",
            "upload_timeout",
            "filter_compile_timeout",
        ] {
            let e = cfg(&format!("{key} = 9223372036854775807")).unwrap_err();
            assert!(
                e.contains("at most 30 days") && e.contains(key),
                "{key}: {e}"
            );
            let e = cfg(&format!("{key} = \"31d\"")).unwrap_err();
            assert!(e.contains("at most 30 days"), "{key}: {e}");
        }
        assert!(cfg("max_duration = 2592000").is_ok(), "30 days exactly");
        for (text, ok) in [
            ("retry_base = \"2s\"\nretry_max = \"1s\"", false),
            ("retry_base = \"1s\"\nretry_max = \"2h\"", false),
            ("retry_base = 3600\nretry_max = 3600", true),
            ("max_requests_per_second = 0", false),
        ] {
            assert_eq!(cfg(text).is_ok(), ok, "{text}");
        }
        let c = cfg("").unwrap().unwrap().capture;
        assert_eq!(
            (
                c.max_requests_per_second,
                c.max_queued_requests,
                c.max_filter_bytes
            ),
            (10, 64, 4096)
        );
        assert_eq!(
            (c.filter_compile_timeout, c.max_local_bytes),
            (d(2), 1 << 30)
        );
    }

    fn destinations(text: &str) -> Result<Vec<S3Target>, String> {
        let s = read_sections(&format!("{text}\n[api]\ntoken_file = \"/t\"\n")).map_err(|e| e.0)?;
        let r = resolve(&s, None, None, None).map_err(|e| e.0)?.unwrap();
        Ok(r.capture.destinations())
    }

    #[test]
    fn destinations_are_named_and_plain_http_only_where_allowed() {
        let d = destinations(
            r#"
[capture.s3]
bucket = "pcaps"
[[capture.destination]]
name = "lab"
bucket = "lab-pcaps"
endpoint = "http://10.0.0.5:9000/"
allow_http = true
acl = "private"
"#,
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].name.as_str(), d[0].bucket.as_str()),
            ("default", "pcaps")
        );
        assert_eq!(d[1].name, "lab");
        assert_eq!(d[1].endpoint_url().as_deref(), Some("http://10.0.0.5:9000"));
        assert!(d[1].allow_http && !d[0].allow_http);

        for (text, says) in [
            (
                "[capture.s3]\nbucket = \"b\"\nendpoint = \"http://x:9000\"",
                "allow_http",
            ),
            ("[[capture.destination]]\nbucket = \"b\"", "needs a `name`"),
            (
                "[capture.s3]\nbucket = \"b\"\n[[capture.destination]]\nname = \"default\"\nbucket = \"c\"",
                "used twice",
            ),
            (
                "[[capture.destination]]\nname = \"x\"\nbucket = \"\"",
                "empty",
            ),
            (
                "[capture.s3]\nbucket = \"b\"\nendpoint = \"ftp://x\"",
                "neither",
            ),
            (
                "[capture.s3]\nbucket = \"b\"\nacl = \"public\"",
                "not a canned S3 ACL",
            ),
        ] {
            let e = destinations(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
