//! Plain-old-data types and constants shared by the kernel program and the agent.
#![no_std]

pub mod dns;
pub mod flow;

#[cfg(feature = "user")]
extern crate std;
