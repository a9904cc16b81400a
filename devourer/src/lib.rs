//! devourer's agent: loads the kernel program, reads and evicts its maps, merges flows and
//! streams records to sinks, live (`devourer capture`) or over a capture file (`devourer read`).
//!
//! Stages, each importing only the ones listed before it:
//!
//! | module | owns |
//! |---|---|
//! | [`base`] | shared vocabulary: clocks and time formats, addresses and protocols, this host |
//! | [`kernel`] | the eBPF object: load, attach, maps, payload rings, replay, its log |
//! | [`flow`] | the flow table: both directions merged, timeouts, eviction, NAT, filters |
//! | [`decode`] | DNS transactions and HTTP messages from payload events |
//! | [`record`] | records as sinks write them: fields, wall time, ids |
//! | [`sink`] | where records go: JSON lines, text logs, BigQuery, fluentd's Forward |
//! | [`ops`] | metrics, health endpoints, capabilities |
//! | [`k8s`] | Kubernetes metadata: the cluster's pods, Services and nodes by address |
//! | [`config`] | the command line, the TOML file, capture-on-request settings |
//! | [`ondemand`] | packet capture on request (Redis, SQS and HTTP triggers; S3, CloudShark) |
//! | [`assembly`] | builds the pipeline from the configuration; runs and stops it |
//! | [`drivers`] | the live loop and the replay loop |

pub mod assembly;
pub mod base;
pub mod config;
pub mod decode;
pub mod drivers;
pub mod flow;
pub mod k8s;
pub mod kernel;
pub mod ondemand;
pub mod ops;
pub mod record;
pub mod sink;
