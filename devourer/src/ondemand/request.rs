//! Capture requests: pcapdaemon's JSON message, checked and clamped to the admin limits. A
//! request that cannot be honoured is rejected with a reason, never half-run. A request never
//! chooses where its capture goes: it picks one of the administrator's destinations, by name
//! or by pcapdaemon's `bucket`/`endpoint`/`region`, which must then equal one, and its
//! `folder` only adds below the destination's own. Its filter is only bounded here: compiling
//! it is the service's (in a child process, under a time limit).

use std::{num::NonZeroUsize, sync::Mutex, time::Duration};

use lru::LruCache;
use serde::Deserialize;

use crate::{
    base::text::escape_str,
    config::requests::{CaptureLimits, S3Target, endpoint_url},
};

/// The message as pcapdaemon defined it. Unknown fields are kept to warn about them.
#[derive(Debug, Default, Deserialize)]
pub struct RawRequest {
    pub node: Option<String>,
    pub nodere: Option<String>,
    pub interface: Option<Vec<String>>,
    pub alias: Option<Vec<String>>,
    pub bpf: Option<String>,
    pub snap: Option<u32>,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    /// Seconds.
    pub duration: Option<u64>,
    /// Seconds without a packet (once one was captured).
    pub timeout: Option<u64>,
    pub tags: Option<String>,
    pub customer: Option<String>,
    pub alertid: Option<u64>,
    /// The name of a configured destination.
    pub destination: Option<String>,
    pub folder: Option<String>,
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub acl: Option<String>,
    pub encryption: Option<bool>,
    #[serde(default)]
    pub logrequest: bool,
    #[serde(default)]
    pub packetdebug: bool,
    #[serde(flatten)]
    pub unknown: serde_json::Map<String, serde_json::Value>,
}

/// A capture filter libpcap does not compile, with its message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadFilter(pub String);

/// A request this node will run, every limit within the admin's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub interfaces: Vec<String>,
    pub filter: Option<String>,
    pub snap: u32,
    pub packets: u64,
    pub bytes: u64,
    pub duration: Duration,
    pub timeout: Duration,
    pub alertid: u64,
    pub tags: Option<String>,
    pub customer: Option<String>,
    pub s3: Option<S3Target>,
    pub packetdebug: bool,
    /// Fields the request asked for beyond the limits (for the log).
    pub clamped: Vec<&'static str>,
}

/// What to do with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Run(Box<Plan>),
    /// Addressed to other nodes.
    NotForUs,
}

/// Why a message was rejected; `reason()` is the metric label.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Reject {
    #[error("not a JSON object with pcapdaemon's fields: {0}")]
    Json(String),
    #[error("give exactly one of `node` and `nodere`")]
    Node,
    #[error("`nodere` is not a valid regular expression: {0}")]
    Regex(String),
    #[error("give exactly one of `interface` and `alias`, with at least one name")]
    Interfaces,
    #[error("unknown interface alias \"{0}\" (see [[capture.interface]] in the configuration)")]
    Alias(String),
    #[error("no interface \"{0}\" on this node")]
    NoInterface(String),
    #[error("{0} distinct interfaces named, more than max_interfaces ({1})")]
    TooManyInterfaces(usize, usize),
    #[error("the message has {0} bytes, more than max_request_bytes ({1})")]
    TooLarge(usize, usize),
    #[error("bad `bpf` filter: {0}")]
    Filter(String),
    #[error("`{0}` must be greater than zero")]
    Zero(&'static str),
    #[error("an S3 upload needs a destination, and none is configured ([capture.s3])")]
    NoBucket,
    #[error("{0}")]
    Destination(String),
}

impl Reject {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Json(_) => "bad_json",
            Self::Node | Self::Regex(_) => "bad_node",
            Self::Interfaces
            | Self::Alias(_)
            | Self::NoInterface(_)
            | Self::TooManyInterfaces(..) => "bad_interface",
            Self::TooLarge(..) => "too_large",
            Self::Filter(_) => "bad_filter",
            Self::Zero(_) => "bad_limit",
            Self::NoBucket => "bad_s3",
            Self::Destination(_) => "bad_destination",
        }
    }
}

/// What the checks need from the node.
pub struct Context<'a> {
    pub node: &'a str,
    pub limits: &'a CaptureLimits,
    /// alias -> interface names.
    pub aliases: &'a dyn Fn(&str) -> Option<Vec<String>>,
    pub interface_exists: &'a dyn Fn(&str) -> bool,
    /// `nodere` patterns compiled before.
    pub nodes: &'a NodePatterns,
    /// The configured destinations, the default (`[capture.s3]`) first if there is one.
    pub destinations: &'a [S3Target],
    /// Whether the first destination is the default.
    pub has_default: bool,
}

/// Reads a message of at most `max` bytes.
pub fn parse(text: &str, max: usize) -> Result<RawRequest, Reject> {
    if text.len() > max {
        return Err(Reject::TooLarge(text.len(), max));
    }
    serde_json::from_str(text).map_err(|e| Reject::Json(shown(&e.to_string())))
}

/// A request's string (or a message quoting one) as logs and answers show it: escaped, cut
/// to 256 bytes. Every rejection's text goes through it, so none can forge a log line.
fn shown(s: &str) -> String {
    escape_str(s, 256)
}

/// `names` without repeats, in order (one name, one capture: repeats must not multiply it).
fn distinct(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// The longest `nodere`, in bytes, and the most it may compile to. Node patterns are short
/// (an alternation of a hundred node names fits, and `\w{20}`); under the regex crate's own
/// limit (10 MiB compiled) one message cost 70-100 ms of CPU to compile, under these about a
/// tenth of that.
pub const NODERE_MAX_BYTES: usize = 4096;
const NODERE_COMPILED_BYTES: usize = 1 << 20;

/// `nodere` patterns kept compiled (the same pattern usually goes to every node, again and
/// again), least recently used out; refusals are kept too.
pub struct NodePatterns(Mutex<LruCache<String, Result<regex::Regex, Reject>>>);

/// Patterns kept compiled at most (a few MiB at worst: each is bounded in compiled size).
const NODE_PATTERNS: usize = 64;

impl Default for NodePatterns {
    fn default() -> Self {
        Self(Mutex::new(LruCache::new(
            NonZeroUsize::new(NODE_PATTERNS).expect("non-zero"),
        )))
    }
}

impl NodePatterns {
    /// Whether pattern `re` matches `node` (compiled once).
    fn is_match(&self, re: &str, node: &str) -> Result<bool, Reject> {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = cache.get(re) {
            return r.as_ref().map(|r| r.is_match(node)).map_err(Clone::clone);
        }
        // Too long to keep as a key: refused before it is compiled, and not kept.
        let compiled = node_regex(re);
        let out = compiled
            .as_ref()
            .map(|r| r.is_match(node))
            .map_err(Clone::clone);
        if re.len() <= NODERE_MAX_BYTES {
            cache.put(re.to_owned(), compiled);
        }
        out
    }
}

/// A request's `nodere`, compiled within [`NODERE_MAX_BYTES`] and the compiled-size bound.
fn node_regex(re: &str) -> Result<regex::Regex, Reject> {
    if re.len() > NODERE_MAX_BYTES {
        return Err(Reject::Regex(format!(
            "too long ({} bytes, more than {NODERE_MAX_BYTES})",
            re.len()
        )));
    }
    regex::RegexBuilder::new(re)
        .size_limit(NODERE_COMPILED_BYTES)
        .dfa_size_limit(NODERE_COMPILED_BYTES)
        .build()
        .map_err(|e| Reject::Regex(shown(&e.to_string())))
}

/// Checks a request against this node and clamps it to the limits.
pub fn plan(r: &RawRequest, cx: &Context<'_>) -> Result<Decision, Reject> {
    let ours = match (&r.node, &r.nodere) {
        (Some(n), None) => n == "any" || n == cx.node,
        (None, Some(re)) => cx.nodes.is_match(re, cx.node)?,
        _ => return Err(Reject::Node),
    };
    if !ours {
        return Ok(Decision::NotForUs);
    }
    let max = cx.limits.max_interfaces;
    let interfaces = match (&r.interface, &r.alias) {
        (Some(names), None) if !names.is_empty() => distinct(names.iter().cloned()),
        (None, Some(aliases)) if !aliases.is_empty() => {
            let mut out = Vec::new();
            for a in distinct(aliases.iter().cloned()) {
                out.extend((cx.aliases)(&a).ok_or_else(|| Reject::Alias(shown(&a)))?);
                // Checked as it grows, so a long list is not expanded first.
                if out.len() > max * 2 {
                    out = distinct(out);
                }
            }
            distinct(out)
        }
        _ => return Err(Reject::Interfaces),
    };
    if interfaces.len() > max {
        return Err(Reject::TooManyInterfaces(interfaces.len(), max));
    }
    if let Some(missing) = interfaces.iter().find(|i| !(cx.interface_exists)(i)) {
        return Err(Reject::NoInterface(shown(missing)));
    }
    let filter = r.bpf.as_ref().map(|f| f.trim()).filter(|f| !f.is_empty());
    if let Some(f) = filter
        && f.len() > cx.limits.max_filter_bytes
    {
        return Err(Reject::Filter(format!(
            "{} bytes, more than max_filter_bytes ({})",
            f.len(),
            cx.limits.max_filter_bytes
        )));
    }
    let l = cx.limits;
    let mut clamped = Vec::new();
    let mut count = |name: &'static str, asked: Option<u64>, max: u64| match asked {
        Some(0) => Err(Reject::Zero(name)),
        Some(v) if v > max => {
            clamped.push(name);
            Ok(max)
        }
        Some(v) => Ok(v),
        None => Ok(max),
    };
    let packets = count("packets", r.packets, l.max_packets)?;
    let bytes = count("bytes", r.bytes, l.max_bytes)?;
    let snap = count("snap", r.snap.map(u64::from), u64::from(l.snaplength))? as u32;
    // Seconds in the request; the configured limits may be finer.
    let mut secs =
        |name: &'static str, asked: Option<u64>, default: Duration, max: Duration| match asked {
            Some(0) => Err(Reject::Zero(name)),
            Some(v) if Duration::from_secs(v) > max => {
                clamped.push(name);
                Ok(max)
            }
            Some(v) => Ok(Duration::from_secs(v)),
            None => Ok(default.min(max)),
        };
    let duration = secs("duration", r.duration, l.max_duration, l.max_duration)?;
    let timeout = secs("timeout", r.timeout, l.default_timeout, l.max_timeout)?;
    let below = r.folder.as_deref().map(folder).transpose()?;
    let s3 = destination(r, cx)?.map(|d| {
        let mut t = d.clone();
        // A folder only adds below the administrator's prefix; encryption may be asked
        // for, never turned off; the ACL is the administrator's alone.
        if let Some(f) = below.filter(|f| !f.is_empty()) {
            t.folder = Some(match t.folder.as_deref().map(|p| p.trim_matches('/')) {
                Some(p) if !p.is_empty() => format!("{p}/{f}"),
                _ => f,
            });
        }
        t.encryption |= r.encryption == Some(true);
        if r.acl.is_some() && r.acl != t.acl {
            clamped.push("acl");
        }
        t
    });
    Ok(Decision::Run(Box::new(Plan {
        interfaces,
        filter: filter.map(str::to_owned),
        snap,
        packets,
        bytes,
        duration,
        timeout,
        alertid: r.alertid.unwrap_or(0),
        tags: r.tags.clone(),
        customer: r.customer.clone(),
        s3,
        packetdebug: r.packetdebug,
        clamped,
    })))
}

/// The longest `folder` a request may give.
const FOLDER_MAX_BYTES: usize = 256;

/// A request's `folder` as the path it adds below the destination's prefix: segments of
/// `[A-Za-z0-9._-]`, none `.` or `..`, joined by single slashes.
fn folder(f: &str) -> Result<String, Reject> {
    let bad = |why: &str| Reject::Destination(format!("folder \"{}\": {why}", shown(f)));
    if f.len() > FOLDER_MAX_BYTES {
        return Err(bad("longer than 256 bytes"));
    }
    let mut parts = Vec::new();
    for seg in f.split('/').filter(|s| !s.is_empty()) {
        if seg == "." || seg == ".." {
            return Err(bad("may only add below the destination's folder"));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(bad("only letters, digits, '.', '_', '-' and '/'"));
        }
        parts.push(seg);
    }
    Ok(parts.join("/"))
}

/// The configured destination a request picks: by `destination`, by pcapdaemon's fields
/// (each one given must equal the destination's), or the default; `None`: local only.
fn destination<'a>(r: &RawRequest, cx: &Context<'a>) -> Result<Option<&'a S3Target>, Reject> {
    let asks_where = r.bucket.is_some() || r.endpoint.is_some() || r.region.is_some();
    let equal = |d: &S3Target| {
        r.bucket.as_ref().is_none_or(|b| *b == d.bucket)
            && r.endpoint
                .as_deref()
                .is_none_or(|e| Some(endpoint_url(e)) == d.endpoint_url())
            && r.region
                .as_deref()
                .is_none_or(|g| g == d.region.as_deref().unwrap_or("us-east-1"))
    };
    if let Some(name) = &r.destination {
        let d = cx
            .destinations
            .iter()
            .find(|d| d.name == *name)
            .ok_or_else(|| {
                Reject::Destination(format!(
                    "no destination named \"{}\" is configured",
                    shown(name)
                ))
            })?;
        if !equal(d) {
            return Err(Reject::Destination(format!(
                "bucket, endpoint or region differ from destination \"{}\"",
                shown(name)
            )));
        }
        return Ok(Some(d));
    }
    if asks_where {
        return cx.destinations.iter().find(|d| equal(d)).map(Some).ok_or_else(|| {
            Reject::Destination(format!(
                "bucket \"{}\", endpoint \"{}\", region \"{}\" are not a configured destination",
                shown(r.bucket.as_deref().unwrap_or("")),
                shown(r.endpoint.as_deref().unwrap_or("")),
                shown(r.region.as_deref().unwrap_or("")),
            ))
        });
    }
    let default = cx.destinations.first().filter(|_| cx.has_default);
    if r.folder.is_some() && default.is_none() {
        return Err(Reject::NoBucket);
    }
    Ok(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> CaptureLimits {
        CaptureLimits {
            max_packets: 100,
            max_bytes: 1_000_000,
            max_duration: Duration::from_secs(60),
            max_timeout: Duration::from_secs(30),
            default_timeout: Duration::from_secs(10),
            snaplength: 1500,
            max_concurrent: 2,
            max_interfaces: 3,
            max_memory: 1 << 30,
            max_request_bytes: 4096,
            max_filter_bytes: 64,
        }
    }

    fn decide(json: &str) -> Result<Decision, Reject> {
        decide_in(json, &[], false)
    }

    fn decide_in(
        json: &str,
        destinations: &[S3Target],
        has_default: bool,
    ) -> Result<Decision, Reject> {
        let l = limits();
        let aliases = |a: &str| (a == "public").then(|| vec!["eth0".to_owned(), "eth1".to_owned()]);
        let exists = |i: &str| i.starts_with("eth") || i == "lo";
        let nodes = NodePatterns::default();
        let cx = Context {
            node: "node-7",
            limits: &l,
            aliases: &aliases,
            interface_exists: &exists,
            nodes: &nodes,
            destinations,
            has_default,
        };
        plan(&parse(json, l.max_request_bytes)?, &cx)
    }

    fn run(json: &str) -> Plan {
        match decide(json) {
            Ok(Decision::Run(p)) => *p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_clamp_what_a_request_asks_for() {
        let p = run(
            r#"{"node":"any","interface":["lo"],"packets":1000000,"bytes":5,"snap":9000,"duration":7200,"timeout":3}"#,
        );
        assert_eq!((p.packets, p.bytes, p.snap), (100, 5, 1500));
        assert_eq!(p.duration, Duration::from_secs(60));
        assert_eq!(p.timeout, Duration::from_secs(3));
        assert_eq!(p.clamped, ["packets", "snap", "duration"]);
        let d = run(r#"{"node":"node-7","interface":["eth0"]}"#);
        assert_eq!((d.packets, d.bytes), (100, 1_000_000));
        assert_eq!(d.timeout, Duration::from_secs(10), "the default timeout");
    }

    #[test]
    fn node_and_nodere_pick_the_nodes() {
        assert!(matches!(
            decide(r#"{"node":"other","interface":["lo"]}"#),
            Ok(Decision::NotForUs)
        ));
        assert!(matches!(
            decide(r#"{"nodere":"^node-[0-9]+$","interface":["lo"]}"#),
            Ok(Decision::Run(_))
        ));
        assert!(matches!(
            decide(r#"{"nodere":"^web","interface":["lo"]}"#),
            Ok(Decision::NotForUs)
        ));
        assert_eq!(
            decide(r#"{"node":"any","nodere":"x","interface":["lo"]}"#).unwrap_err(),
            Reject::Node
        );
        assert_eq!(decide(r#"{"interface":["lo"]}"#).unwrap_err(), Reject::Node);
        assert!(matches!(
            decide(r#"{"nodere":"(","interface":["lo"]}"#),
            Err(Reject::Regex(_))
        ));
    }

    #[test]
    fn node_patterns_are_compiled_once_and_kept_bounded() {
        let n = NodePatterns::default();
        assert_eq!(n.is_match("^node-[0-9]+$", "node-7"), Ok(true));
        assert_eq!(n.is_match("^node-[0-9]+$", "web"), Ok(false));
        assert!(n.is_match("(", "node-7").is_err());
        assert!(n.is_match("(", "node-7").is_err(), "a refusal is kept too");
        assert_eq!(n.0.lock().unwrap().len(), 2);
        for i in 0..(NODE_PATTERNS + 10) {
            n.is_match(&format!("^n{i}$"), "x").unwrap();
        }
        assert_eq!(n.0.lock().unwrap().len(), NODE_PATTERNS);
        let long = "x".repeat(NODERE_MAX_BYTES + 1);
        assert!(n.is_match(&long, "x").is_err());
        assert!(
            !n.0.lock().unwrap().contains(&long),
            "an over-long pattern is not kept"
        );
    }

    #[test]
    fn nodere_is_bounded_in_length_and_compiled_size() {
        let req = |re: &str| {
            format!(
                r#"{{"nodere":{},"interface":["lo"]}}"#,
                serde_json::json!(re)
            )
        };
        // A hundred node names in one alternation: a real pattern, accepted.
        let names: Vec<String> = (0..100).map(|i| format!("node-{i}")).collect();
        let many = format!("^({})$", names.join("|"));
        assert!(matches!(decide(&req(&many)), Ok(Decision::Run(_))));
        // Compiles past the bound (the regex crate's default, 10 MiB, would take it).
        let Err(Reject::Regex(why)) = decide(&req(r"\w{200}")) else {
            panic!("a pattern that compiles to megabytes is refused");
        };
        assert!(why.contains("size limit"), "{why}");
        // Longer than the bound (here longer than the test's whole message may be, so the
        // check is called directly): refused before it is compiled.
        let long = "x".repeat(NODERE_MAX_BYTES + 1);
        let Err(Reject::Regex(why)) = node_regex(&long) else {
            panic!("an over-long pattern is refused");
        };
        assert!(node_regex(&long[1..]).is_ok());
        assert!(why.contains("more than 4096"), "{why}");
        assert_eq!(Reject::Regex(why).reason(), "bad_node");
    }

    #[test]
    fn interfaces_come_from_names_or_aliases() {
        assert_eq!(
            run(r#"{"node":"any","alias":["public"]}"#).interfaces,
            ["eth0", "eth1"]
        );
        assert_eq!(
            decide(r#"{"node":"any","alias":["nope"]}"#).unwrap_err(),
            Reject::Alias("nope".into())
        );
        assert_eq!(
            decide(r#"{"node":"any","interface":["wlan9"]}"#).unwrap_err(),
            Reject::NoInterface("wlan9".into())
        );
        assert_eq!(
            decide(r#"{"node":"any","interface":["lo"],"alias":["public"]}"#).unwrap_err(),
            Reject::Interfaces
        );
        assert_eq!(
            decide(r#"{"node":"any","interface":[]}"#).unwrap_err(),
            Reject::Interfaces
        );
    }

    #[test]
    fn repeated_interfaces_are_one_and_their_number_is_capped() {
        let many = vec!["lo"; 64];
        let p = run(&format!(
            r#"{{"node":"any","interface":{}}}"#,
            serde_json::json!(many)
        ));
        assert_eq!(p.interfaces, ["lo"]);
        let p = run(r#"{"node":"any","alias":["public","public","public"]}"#);
        assert_eq!(p.interfaces, ["eth0", "eth1"]);
        assert_eq!(
            decide(r#"{"node":"any","interface":["eth0","eth1","eth2","eth3"]}"#).unwrap_err(),
            Reject::TooManyInterfaces(4, 3)
        );
        let big = format!(
            r#"{{"node":"any","interface":["lo"],"tags":"{}"}}"#,
            "x".repeat(5000)
        );
        let e = decide(&big).unwrap_err();
        assert_eq!(e.reason(), "too_large", "{e}");
    }

    #[test]
    fn bad_messages_are_rejected_with_a_reason() {
        for (json, reason) in [
            ("not json", "bad_json"),
            (r#"{"node":"any","interface":"lo"}"#, "bad_json"),
            (
                r#"{"node":"any","interface":["lo"],"packets":"ten"}"#,
                "bad_json",
            ),
            (
                r#"{"node":"any","interface":["lo"],"bpf":"host 10.0.0.1 or host 10.0.0.2 or host 10.0.0.3 or host 10.0.0.4 or host 10.0.0.5"}"#,
                "bad_filter",
            ),
            (
                r#"{"node":"any","interface":["lo"],"packets":0}"#,
                "bad_limit",
            ),
            (
                r#"{"node":"any","interface":["lo"],"folder":"x"}"#,
                "bad_s3",
            ),
        ] {
            assert_eq!(decide(json).unwrap_err().reason(), reason, "{json}");
        }
    }

    fn dest(name: &str, bucket: &str, endpoint: Option<&str>) -> S3Target {
        S3Target {
            name: name.into(),
            bucket: bucket.into(),
            endpoint: endpoint.map(Into::into),
            acl: Some("private".into()),
            ..S3Target::default()
        }
    }

    #[test]
    fn a_request_only_picks_a_configured_destination() {
        let ds = [
            dest("default", "pcaps", None),
            dest("lab", "lab-pcaps", Some("http://10.0.0.5:9000")),
        ];
        let s3 = |json: &str, has_default: bool| match decide_in(json, &ds, has_default) {
            Ok(Decision::Run(p)) => {
                let p = *p;
                Ok(p.s3.map(|t| (t.name, t.folder, t.acl, p.clamped)))
            }
            Ok(Decision::NotForUs) => panic!("{json}"),
            Err(e) => Err(e),
        };
        let base = r#""node":"any","interface":["lo"]"#;
        // Nothing asked: the default, or local only without one.
        assert_eq!(
            s3(&format!("{{{base}}}"), true).unwrap().unwrap().0,
            "default"
        );
        assert_eq!(s3(&format!("{{{base}}}"), false).unwrap(), None);
        // By name, or by pcapdaemon's fields equal to a destination's (the folder is the
        // request's, the ACL stays the administrator's).
        let (name, folder, acl, clamped) = s3(
            &format!(r#"{{{base},"bucket":"lab-pcaps","endpoint":"http://10.0.0.5:9000/","folder":"f","acl":"public-read"}}"#),
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!((name.as_str(), folder.as_deref()), ("lab", Some("f")));
        // Below the administrator's prefix, never instead of it or above it.
        let mut prefixed = ds.clone();
        prefixed[0].folder = Some("/node-7/".into());
        let folder_of = |json: &str| match decide_in(json, &prefixed, true) {
            Ok(Decision::Run(p)) => Ok(p.s3.and_then(|t| t.folder)),
            Ok(Decision::NotForUs) => panic!("{json}"),
            Err(e) => Err(e),
        };
        assert_eq!(
            folder_of(&format!(r#"{{{base},"folder":"/alerts//42/"}}"#))
                .unwrap()
                .as_deref(),
            Some("node-7/alerts/42")
        );
        assert_eq!(
            folder_of(&format!("{{{base}}}")).unwrap().as_deref(),
            Some("/node-7/"),
            "no folder: the destination's own"
        );
        for f in ["../other-node", "a/../../b", "x y", "./a"] {
            let e =
                folder_of(&format!(r#"{{{base},"folder":{}}}"#, serde_json::json!(f))).unwrap_err();
            assert_eq!(e.reason(), "bad_destination", "{f}: {e}");
        }
        assert_eq!((acl.as_deref(), clamped), (Some("private"), vec!["acl"]));
        assert_eq!(
            s3(&format!(r#"{{{base},"destination":"lab"}}"#), true)
                .unwrap()
                .unwrap()
                .0,
            "lab"
        );
        // Anything else is refused, with the reason.
        for (json, says) in [
            (
                r#""endpoint":"http://127.0.0.1:8080""#,
                "not a configured destination",
            ),
            (r#""bucket":"attacker""#, "not a configured destination"),
            (
                r#""bucket":"pcaps","region":"eu-west-1""#,
                "not a configured destination",
            ),
            (r#""destination":"elsewhere""#, "no destination named"),
            (
                r#""destination":"lab","bucket":"pcaps""#,
                "differ from destination",
            ),
            (r#""destination":"x\ny""#, "x\\010y"),
        ] {
            let e = s3(&format!("{{{base},{json}}}"), true).unwrap_err();
            assert_eq!(e.reason(), "bad_destination", "{json}");
            assert!(e.to_string().contains(says), "{json}: {e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn unknown_fields_are_kept_for_a_warning() {
        let r = parse(r#"{"node":"any","interface":["lo"],"colour":"blue"}"#, 4096).unwrap();
        assert_eq!(r.unknown.keys().collect::<Vec<_>>(), ["colour"]);
    }
}
