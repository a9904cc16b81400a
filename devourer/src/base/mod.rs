//! The shared vocabulary every stage speaks: time and clocks, addresses and protocol names,
//! and which addresses are this host's. Imports nothing from the other stages.

pub mod local;
pub mod net;
pub mod time;
