//! What a crash, a full disk or a corruption can leave in the spool: an open and a sealed
//! segment of any bytes. Opening recovers them (a torn tail cut off and handed back), every
//! line is either a row or not, and the byte accounting matches the files.
#![no_main]

use std::{path::PathBuf, time::Duration};

use devourer::sink::spool::{Limits, Spool, rejects::is_row};
use libfuzzer_sys::fuzz_target;

/// On tmpfs where there is one: the spool fsyncs every file and directory it writes, which
/// on a disk made each run wait for the device (about 150 runs a second).
fn dir() -> PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("devourer-fuzz-spool-{}", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("flow")).unwrap();
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    std::fs::write(dir.join("flow/00000000000000000001.jsonl"), &data[..cut]).unwrap();
    std::fs::write(dir.join("flow/00000000000000000002.open"), &data[cut..]).unwrap();
    let limits = Limits {
        rows: 3,
        bytes: 512,
        age: Duration::from_secs(60),
    };
    let Ok(spool) = Spool::open(&dir, 1 << 20, limits, &["flow", "dns"]) else {
        return;
    };
    let torn: usize = spool.take_torn().iter().map(|t| t.bytes.len()).sum();
    let mut held = 0;
    while let Some(seg) = spool.next() {
        let bytes = std::fs::read(&seg.path).unwrap();
        let sealed_as_given = seg
            .path
            .file_name()
            .is_some_and(|n| n == "00000000000000000001.jsonl");
        assert!(bytes.is_empty() || bytes.ends_with(b"\n") || sealed_as_given);
        held += bytes.len();
        for line in String::from_utf8_lossy(&bytes).lines() {
            let _ = is_row(line);
        }
        spool.done(&seg).unwrap();
    }
    assert_eq!(held + torn, data.len(), "nothing vanished");
    assert_eq!(spool.bytes(), 0);
    // New rows still append after a recovery.
    assert!(spool.append("dns", b"{\"id\":\"x\"}\n").unwrap());
});
