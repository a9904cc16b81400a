//! Operating the agent: Prometheus metrics ([`metrics`]), the health endpoints ([`health`])
//! and the capability check at start ([`caps`]).

pub mod caps;
pub mod health;
pub mod metrics;
