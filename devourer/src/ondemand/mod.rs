//! Packet capture on request (pcapdaemon): requests arrive over Redis pub/sub, SQS, Kafka or the HTTP API,
//! are checked and clamped to the admin limits, capture into memory on each named interface,
//! and end as pcap files in a local directory, an S3 bucket and/or CloudShark. A bad request is rejected
//! and counted; the agent keeps running. Request checks build everywhere (the settings are in
//! `config::requests`); the capture itself needs the `capture-requests` feature (libpcap).

pub mod request;

#[cfg(feature = "capture-requests")]
pub mod api;
#[cfg(feature = "capture-requests")]
pub mod cloudshark;
#[cfg(all(feature = "capture-requests", feature = "kafka"))]
pub mod kafka;
#[cfg(feature = "capture-requests")]
pub mod redis;
#[cfg(feature = "capture-requests")]
mod service;
#[cfg(feature = "capture-requests")]
pub mod sniff;
#[cfg(feature = "capture-requests")]
pub mod sqs;
#[cfg(feature = "capture-requests")]
pub mod store;

#[cfg(feature = "capture-requests")]
pub use service::{CaptureStatus, FileStatus, Refused, Service};
