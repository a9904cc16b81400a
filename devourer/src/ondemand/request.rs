//! Capture requests: pcapdaemon's JSON message, checked and clamped to the admin limits. A
//! request that cannot be honoured is rejected with a reason, never half-run.

use std::time::Duration;

use serde::Deserialize;

use crate::config::requests::{CaptureLimits, S3Target};

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
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Reject {
    #[error("not a JSON object with pcapdaemon's fields: {0}")]
    Json(String),
    #[error("give exactly one of `node` and `nodere`")]
    Node,
    #[error("`nodere` is not a valid regular expression: {0}")]
    Regex(String),
    #[error("give exactly one of `interface` and `alias`, with at least one name")]
    Interfaces,
    #[error("unknown interface alias {0:?} (see [[capture.interface]] in the configuration)")]
    Alias(String),
    #[error("no interface {0:?} on this node")]
    NoInterface(String),
    #[error("bad `bpf` filter: {0}")]
    Filter(String),
    #[error("`{0}` must be greater than zero")]
    Zero(&'static str),
    #[error("an S3 upload needs a bucket (in the request or [capture.s3])")]
    NoBucket,
}

impl Reject {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Json(_) => "bad_json",
            Self::Node | Self::Regex(_) => "bad_node",
            Self::Interfaces | Self::Alias(_) | Self::NoInterface(_) => "bad_interface",
            Self::Filter(_) => "bad_filter",
            Self::Zero(_) => "bad_limit",
            Self::NoBucket => "bad_s3",
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
    /// Compiles a filter; the error says why it does not.
    pub check_filter: &'a dyn Fn(&str) -> Result<(), BadFilter>,
    /// The configured S3 bucket and its defaults, if any.
    pub s3: Option<&'a S3Target>,
}

pub fn parse(text: &str) -> Result<RawRequest, Reject> {
    serde_json::from_str(text).map_err(|e| Reject::Json(e.to_string()))
}

/// Checks a request against this node and clamps it to the limits.
pub fn plan(r: &RawRequest, cx: &Context<'_>) -> Result<Decision, Reject> {
    let ours = match (&r.node, &r.nodere) {
        (Some(n), None) => n == "any" || n == cx.node,
        (None, Some(re)) => regex::Regex::new(re)
            .map_err(|e| Reject::Regex(e.to_string()))?
            .is_match(cx.node),
        _ => return Err(Reject::Node),
    };
    if !ours {
        return Ok(Decision::NotForUs);
    }
    let interfaces = match (&r.interface, &r.alias) {
        (Some(names), None) if !names.is_empty() => names.clone(),
        (None, Some(aliases)) if !aliases.is_empty() => {
            let mut out = Vec::new();
            for a in aliases {
                let names = (cx.aliases)(a).ok_or_else(|| Reject::Alias(a.clone()))?;
                for n in names {
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
            }
            out
        }
        _ => return Err(Reject::Interfaces),
    };
    if let Some(missing) = interfaces.iter().find(|i| !(cx.interface_exists)(i)) {
        return Err(Reject::NoInterface(missing.clone()));
    }
    let filter = r.bpf.as_ref().map(|f| f.trim()).filter(|f| !f.is_empty());
    if let Some(f) = filter {
        (cx.check_filter)(f).map_err(|e| Reject::Filter(e.0))?;
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
    let s3 = if r.bucket.is_some() || r.folder.is_some() || r.endpoint.is_some() {
        let base = cx.s3.cloned().unwrap_or_default();
        let bucket = r.bucket.clone().unwrap_or(base.bucket);
        if bucket.is_empty() {
            return Err(Reject::NoBucket);
        }
        Some(S3Target {
            bucket,
            folder: r.folder.clone().or(base.folder),
            region: r.region.clone().or(base.region),
            endpoint: r.endpoint.clone().or(base.endpoint),
            acl: r.acl.clone().or(base.acl),
            encryption: r.encryption.unwrap_or(base.encryption),
        })
    } else {
        cx.s3.cloned()
    };
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
        }
    }

    fn decide(json: &str) -> Result<Decision, Reject> {
        let l = limits();
        let aliases = |a: &str| (a == "public").then(|| vec!["eth0".to_owned(), "eth1".to_owned()]);
        let exists = |i: &str| i.starts_with("eth") || i == "lo";
        let filter = |f: &str| {
            if f.contains("bogus") {
                Err(BadFilter("syntax error".to_owned()))
            } else {
                Ok(())
            }
        };
        let cx = Context {
            node: "node-7",
            limits: &l,
            aliases: &aliases,
            interface_exists: &exists,
            check_filter: &filter,
            s3: None,
        };
        plan(&parse(json)?, &cx)
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
    fn bad_messages_are_rejected_with_a_reason() {
        for (json, reason) in [
            ("not json", "bad_json"),
            (r#"{"node":"any","interface":"lo"}"#, "bad_json"),
            (
                r#"{"node":"any","interface":["lo"],"packets":"ten"}"#,
                "bad_json",
            ),
            (
                r#"{"node":"any","interface":["lo"],"bpf":"bogus expr"}"#,
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

    #[test]
    fn unknown_fields_are_kept_for_a_warning() {
        let r = parse(r#"{"node":"any","interface":["lo"],"colour":"blue"}"#).unwrap();
        assert_eq!(r.unknown.keys().collect::<Vec<_>>(), ["colour"]);
    }
}
