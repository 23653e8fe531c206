//! The crate's single error type.

/// Everything that can go wrong while building a routing table or checking a request path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A (host, path prefix) pair is already bound to a different owner (service).
    ///
    /// The message is the one kamal-proxy's clients expect verbatim.
    #[error("host settings conflict with another service")]
    Conflict {
        /// Name of the owner that already holds the pair.
        owner: String,
    },
    /// A `%` in a request path is not followed by two hexadecimal digits.
    #[error("invalid URL escape {escape:?}")]
    InvalidEscape {
        /// The offending escape: the `%` and at most two following characters.
        escape: String,
    },
}
