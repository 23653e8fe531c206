//! Targets, health checks, in-flight tracking, draining, load balancing and request forwarding.

pub mod inflight;

pub use inflight::{InFlight, Lease};
