//! Capture-on-request settings: the `[capture]` (limits, interface aliases, `[capture.redis]`,
//! `[capture.s3]`) and `[api]` sections of the TOML file, with pcapdaemon's admin limits under
//! design.md's names, and the flags that override them.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

use super::values::{BadValue, parse_duration};

/// Where captures go when nothing else is configured (and where failed uploads land).
pub const DEFAULT_LOCAL_DIR: &str = "/var/lib/devourer/captures";
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:9403";

/// Where a capture goes besides the local directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Target {
    pub bucket: String,
    pub folder: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub acl: Option<String>,
    pub encryption: bool,
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
}

/// `5s`, `2m` or a number of seconds (pcapdaemon wrote seconds).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        Secs(u64),
        Text(String),
    }
    match V::deserialize(d)? {
        V::Secs(0) => Err(serde::de::Error::custom("must be greater than zero")),
        V::Secs(s) => Ok(Duration::from_secs(s)),
        V::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

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
    pub local_dir: Option<PathBuf>,
    /// First wait before a Redis reconnect or an upload retry; doubles up to `retry_max`.
    #[serde(default = "defaults::retry_base", deserialize_with = "duration")]
    pub retry_base: Duration,
    #[serde(default = "defaults::retry_max", deserialize_with = "duration")]
    pub retry_max: Duration,
    /// Upload attempts before a capture falls back to the local directory.
    #[serde(default = "defaults::upload_attempts")]
    pub upload_attempts: u32,
    /// Time limit of one upload attempt.
    #[serde(default = "defaults::upload_timeout", deserialize_with = "duration")]
    pub upload_timeout: Duration,
    #[serde(default)]
    pub interface: Vec<InterfaceAlias>,
    pub redis: Option<RedisSection>,
    pub s3: Option<S3Section>,
}

mod defaults {
    use super::*;
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
    pub fn ping_interval() -> Duration {
        d(30)
    }
    pub fn channel() -> String {
        "capture".into()
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
    pub bucket: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub folder: Option<String>,
    pub acl: Option<String>,
    #[serde(default)]
    pub encryption: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    #[serde(default = "default_api_addr")]
    pub addr: SocketAddr,
    /// File holding the bearer token (one line). Required unless `addr` is loopback.
    pub token_file: Option<PathBuf>,
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
        }
    }

    pub fn s3_target(&self) -> Option<S3Target> {
        self.s3.as_ref().map(|s| S3Target {
            bucket: s.bucket.clone(),
            folder: s.folder.clone(),
            region: s.region.clone(),
            endpoint: s.endpoint.clone(),
            acl: s.acl.clone(),
            encryption: s.encryption,
        })
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
    if redis_url.is_none() && sections.api.is_none() {
        return Ok(None);
    }
    if let Some(api) = &sections.api
        && api.token_file.is_none()
        && !api.addr.ip().is_loopback()
    {
        return Err(BadValue(format!(
            "[api] addr {} is not a loopback address: set [api] token_file",
            api.addr
        )));
    }
    if capture.max_duration.is_zero() || capture.max_timeout.is_zero() {
        return Err(BadValue(
            "[capture] durations must be greater than zero".into(),
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
        let open = read_sections("[api]\naddr = \"0.0.0.0:9403\"\n").unwrap();
        assert!(
            resolve(&open, None, None, None)
                .unwrap_err()
                .0
                .contains("token_file")
        );
    }
}
