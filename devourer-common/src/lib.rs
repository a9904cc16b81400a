//! Plain-old-data types and constants shared by the kernel program and the agent.
#![no_std]

pub mod drop;
pub mod filter;
pub mod flow;
pub mod payload;
pub mod tcp;
pub mod tunnel;

#[cfg(feature = "user")]
extern crate std;
