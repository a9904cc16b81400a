//! Operating the agent: Prometheus metrics ([`metrics`]), the health endpoints ([`health`])
//! served with bounds ([`endpoint`]), and the capability check at start ([`caps`]).

pub mod caps;
pub mod endpoint;
pub mod health;
pub mod metrics;
