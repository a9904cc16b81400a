//! A capture request (pcapdaemon's JSON) from Redis or the API: parsed and planned against
//! the admin's limits; whatever it asks, the plan stays within them.
#![no_main]

use std::time::Duration;

use devourer::{
    config::requests::CaptureLimits,
    ondemand::request::{BadFilter, Context, Decision, parse, plan},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(raw) = parse(text) else {
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
    };
    let aliases = |a: &str| (a == "public").then(|| vec!["eth0".to_owned()]);
    let exists = |i: &str| i.starts_with("eth");
    let filter = |f: &str| {
        if f.len() > 64 {
            Err(BadFilter("too long".into()))
        } else {
            Ok(())
        }
    };
    let cx = Context {
        node: "node-1",
        limits: &limits,
        aliases: &aliases,
        interface_exists: &exists,
        check_filter: &filter,
        s3: None,
    };
    if let Ok(Decision::Run(p)) = plan(&raw, &cx) {
        assert!(p.packets <= limits.max_packets && p.bytes <= limits.max_bytes);
        assert!(p.duration <= limits.max_duration && p.timeout <= limits.max_timeout);
        assert!(p.snap <= limits.snaplength);
        assert!(!p.interfaces.is_empty());
    }
});
