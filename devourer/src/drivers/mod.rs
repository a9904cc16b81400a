//! The two drivers of the one assembly: live capture ([`live`], `devourer capture`, with
//! capture on request started by [`requests`]) and replay of a capture file ([`replay`],
//! `devourer read`). Neither imports the other.

mod k8s;
pub mod live;
pub mod replay;
mod requests;
mod services;
