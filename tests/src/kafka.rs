//! Kafka for the tests: Tansu (a Kafka-protocol broker, memory storage) in a namespace, and
//! tests/kafka_tool.py (kafka-python) to read what the agent produced and to publish requests.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{Bg, Netns, run, wait_for};

fn tool() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka_tool.py")
}

/// Tansu on `ns`'s loopback at `port`, answering; its log (memory storage) is lost when it
/// stops.
pub fn tansu(ns: &Netns, port: u16) -> Bg {
    let out = run(Command::new("python3").arg(tool()).arg("tansu"));
    let bin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = ns.cmd(&bin);
    cmd.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ])
    .args(["--storage-engine", "memory://tansu/"])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let bg = Bg::spawn(cmd, "tansu");
    let check = format!("ss -ltn | grep -q '127.0.0.1:{port} '");
    let up = wait_for(Duration::from_secs(10), || {
        ns.cmd("bash")
            .args(["-c", &check])
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(up, "tansu listens on {port}");
    bg
}

/// Every record of `topics` on the broker at 127.0.0.1:`port` in `ns`: topic, partition,
/// offset, key, value, and `partitioner` (the partition Kafka's default partitioner picks
/// for the key).
pub fn dump(ns: &Netns, port: u16, topics: &[&str], scratch: &Path) -> Vec<Value> {
    let _ = std::fs::remove_file(scratch);
    run(ns
        .cmd("python3")
        .arg(tool())
        .args(["dump", &format!("127.0.0.1:{port}")])
        .arg(scratch)
        .args(topics));
    std::fs::read_to_string(scratch)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Publishes `value` to `partition` of `topic`.
pub fn publish(ns: &Netns, port: u16, topic: &str, partition: u32, value: &[u8]) {
    let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
    run(ns
        .cmd("python3")
        .arg(tool())
        .args(["publish", &format!("127.0.0.1:{port}"), topic])
        .arg(partition.to_string())
        .arg(hex));
}
