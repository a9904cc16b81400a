//! The first bytes of an HTTP segment: request and response heads parsed into escaped,
//! bounded fields.
#![no_main]

use devourer::decode::http::message::{Message, parse_segment};
use libfuzzer_sys::fuzz_target;

fn ok(s: &str, max: usize) -> bool {
    s.len() <= max && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let Ok(msgs) = parse_segment(data) else {
        return;
    };
    for m in msgs {
        match m {
            Message::Request(r) => {
                assert!(ok(&r.method, 64), "{:?}", r.method);
                for v in [&r.target, &r.host, &r.user_agent, &r.version]
                    .into_iter()
                    .flatten()
                {
                    assert!(ok(v, 4 * 1024 + 8), "{v:?}");
                }
            }
            Message::Response(r) => {
                assert!(ok(&r.version, 64));
                for v in [&r.reason, &r.content_type].into_iter().flatten() {
                    assert!(ok(v, 4 * 1024 + 8), "{v:?}");
                }
            }
        }
    }
});
