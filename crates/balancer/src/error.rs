//! The crate's error type.

/// Everything that can go wrong in the balancer crate, one variant per condition.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A target (or read target) string does not match the accepted address pattern (§4.1).
    /// The odd spacing before the colon is upstream's wording, kept on purpose.
    #[error("{value} :invalid host pattern")]
    InvalidTarget {
        /// The rejected string, exactly as given.
        value: String,
    },

    /// No healthy target is available for a request (answered with 503), or the chosen target
    /// is being drained.
    #[error("no healthy targets")]
    NoHealthyTarget,

    /// A health check did not finish within its timeout.
    #[error("request timed out")]
    HealthCheckTimedOut,

    /// A health check got a final response outside 200–299.
    #[error("unexpected status ({status})")]
    HealthCheckStatus {
        /// The status code of the final response.
        status: u16,
    },

    /// A health check request failed before a response arrived (connect error, reset, bad
    /// redirect). The message follows Go's client wording: `Get "<url>": <cause>`.
    #[error("{message}")]
    HealthCheckRequest {
        /// The rendered failure.
        message: String,
    },
}
