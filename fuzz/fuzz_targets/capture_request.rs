//! A capture request (pcapdaemon's JSON) from Redis or the API: parsed and planned against
//! the admin's limits; whatever it asks, the plan stays within them, names each interface
//! once, and uploads only to a configured destination.
#![no_main]

use std::time::Duration;

use devourer::{
    config::requests::{CaptureLimits, S3Target},
    ondemand::request::{Context, Decision, NodePatterns, parse, plan},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(raw) = parse(text, 4096) else {
        return;
    };
    let limits = CaptureLimits {
        max_packets: 100,
        max_bytes: 1_000_000,
        max_duration: Duration::from_secs(60),
        max_timeout: Duration::from_secs(30),
        default_timeout: Duration::from_secs(10),
        snaplength: 1500,
        max_concurrent: 2,
        max_interfaces: 4,
        max_memory: 1 << 30,
        max_request_bytes: 4096,
        max_filter_bytes: 64,
    };
    let destinations = [
        S3Target {
            name: "default".into(),
            bucket: "pcaps".into(),
            ..S3Target::default()
        },
        S3Target {
            name: "lab".into(),
            bucket: "lab".into(),
            endpoint: Some("http://10.0.0.5:9000".into()),
            allow_http: true,
            ..S3Target::default()
        },
    ];
    let aliases = |a: &str| (a == "public").then(|| vec!["eth0".to_owned()]);
    let exists = |i: &str| i.starts_with("eth");
    let nodes = NodePatterns::default();
    let cx = Context {
        node: "node-1",
        limits: &limits,
        aliases: &aliases,
        interface_exists: &exists,
        nodes: &nodes,
        destinations: &destinations,
        has_default: true,
    };
    if let Ok(Decision::Run(p)) = plan(&raw, &cx) {
        assert!(p.packets <= limits.max_packets && p.bytes <= limits.max_bytes);
        assert!(p.duration <= limits.max_duration && p.timeout <= limits.max_timeout);
        assert!(p.snap <= limits.snaplength);
        assert!(!p.interfaces.is_empty() && p.interfaces.len() <= limits.max_interfaces);
        let mut names = p.interfaces.clone();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), p.interfaces.len(), "each interface once");
        assert!(
            p.filter
                .as_ref()
                .is_none_or(|f| f.len() <= limits.max_filter_bytes)
        );
        let s3 = p.s3.expect("the default destination at least");
        // A folder only adds below the destination's (here: none), never climbs out of it.
        assert!(
            s3.folder
                .as_deref()
                .is_none_or(|f| f.split('/').all(|seg| seg != ".." && seg != ".")),
            "{s3:?}"
        );
        assert!(
            destinations
                .iter()
                .any(|d| d.name == s3.name && d.bucket == s3.bucket && d.endpoint == s3.endpoint),
            "{s3:?}"
        );
    }
});
