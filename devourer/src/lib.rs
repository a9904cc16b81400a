//! devourer's agent: loads the kernel program, reads and evicts its maps, merges flows and
//! streams records to sinks, live (`capture`) or over a capture file (`read`).

pub mod bpf_sys;
pub mod bq;
pub mod caps;
pub mod capture;
pub mod config;
pub mod config_file;
pub mod dns;
pub mod flow;
pub mod http;
pub mod ifaces;
pub mod kmaps;
pub mod loader;
pub mod local;
pub mod metrics;
pub mod offline;
pub mod ondemand;
pub mod pcap;
pub mod pipeline;
pub mod record;
pub mod sink;
pub mod textlog;
