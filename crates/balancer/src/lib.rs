//! Targets, health checks, in-flight tracking, draining, load balancing and request forwarding.

pub mod affinity;
pub mod body;
mod conns;
mod direct;
pub mod error;
pub mod forward;
pub mod forward_error;
pub mod headers;
pub mod health;
mod idle;
pub mod inflight;
pub mod pause;
pub mod pool;
pub mod rollout;
pub mod target;
#[cfg(test)]
mod testing;
mod upgrade;

pub use body::ProxyBody;
pub use error::Error;
pub use forward::{ForwardContext, ForwardTarget, Forwarder};
pub use forward_error::ForwardError;
pub use health::HealthConfig;
pub use inflight::{InFlight, Lease};
pub use pause::{Admission, PauseController, PauseSnapshot, PauseState};
pub use pool::{Claim, Pool, TargetInfo};
pub use rollout::RolloutSplit;
pub use target::{Target, TargetAddr, TargetState};
pub use upgrade::TunnelClosed;
