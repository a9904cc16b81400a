//! The shared vocabulary every stage speaks: time and clocks, addresses and protocol names,
//! which addresses are this host's, text from outside made safe, how the agent's files are
//! created, and large batches split over threads. Imports nothing from the other stages.

pub mod files;
pub mod hash;
pub mod inline;
pub mod local;
pub mod net;
pub mod par;
pub mod text;
pub mod time;
pub mod tls;
