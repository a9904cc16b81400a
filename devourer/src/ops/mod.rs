//! Operating the agent: Prometheus metrics ([`metrics`], per-workload ones under a series
//! budget in [`workloads`]), the health endpoints ([`health`]) served with bounds
//! ([`endpoint`]), and the capability check at start ([`caps`]).

pub mod caps;
pub mod endpoint;
pub mod health;
pub mod metrics;
pub mod workloads;
