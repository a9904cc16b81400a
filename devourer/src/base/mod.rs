//! The shared vocabulary every stage speaks: time and clocks, addresses and protocol names,
//! which addresses are this host's, text from outside made safe, and how the agent's files
//! are created. Imports nothing from the other stages.

pub mod files;
pub mod local;
pub mod net;
pub mod text;
pub mod time;
