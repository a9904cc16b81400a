//! A DNS message off the wire: decoded (whole or in part) into escaped, printable text for
//! records and log lines.
#![no_main]

use devourer::{
    base::local::Role,
    decode::dns::{logline::line, message::parse},
};
use libfuzzer_sys::fuzz_target;

fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let Ok(m) = parse(data) else {
        return;
    };
    assert!(m.answers.len() <= usize::from(m.counts[1]));
    for a in &m.answers {
        assert!(printable(a.dig()), "{:?}", a.dig());
    }
    if let Some(q) = &m.question {
        assert!(printable(&q.name));
    }
    let l = line(0, "10.0.0.1#1", "10.0.0.2#53", Role::Transit, &m);
    assert!(printable(&l.body), "{:?}", l.body);
});
