//! Why forwarding a request failed, the status each failure maps to, and its log line.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

use http::StatusCode;

/// A boxed, thread-safe error (the same type as `tower::BoxError`).
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A failure to forward a request to its target, or to stream the target's response.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The target sent no response headers within `--target-timeout`.
    #[error("timeout awaiting response headers after {timeout:?}")]
    ResponseTimeout {
        /// The configured target timeout.
        timeout: Duration,
    },
    /// A network operation towards the target reported a timeout.
    #[error("{}", Chain(source.as_ref()))]
    NetworkTimeout {
        /// The underlying error.
        source: BoxError,
    },
    /// The target is being drained and its deadline passed before the request finished.
    #[error("request cancelled due to draining")]
    Cancelled,
    /// The client went away while its request body was being forwarded.
    #[error("client disconnected: {}", Chain(source.as_ref()))]
    ClientDisconnected {
        /// The request body's error.
        source: BoxError,
    },
    /// The client's request body was malformed (bad chunked encoding).
    #[error("{}", Chain(source.as_ref()))]
    MalformedRequest {
        /// The request body's error.
        source: BoxError,
    },
    /// Reading the request body failed for another reason (for example a spooled body).
    #[error("{}", Chain(source.as_ref()))]
    RequestBody {
        /// The request body's error.
        source: BoxError,
    },
    /// Connecting to, writing to or reading from the target failed, or its response was
    /// malformed.
    #[error("{}", Chain(source.as_ref()))]
    Upstream {
        /// The underlying error.
        source: BoxError,
    },
    /// The client asked to switch to a protocol name that is not printable ASCII.
    #[error("client tried to switch to invalid protocol {protocol:?}")]
    InvalidUpgrade {
        /// The requested protocol, lossily decoded.
        protocol: String,
    },
    /// The target accepted an upgrade but the tunnel could not be set up.
    #[error("{}", Chain(source.as_ref()))]
    UpgradeFailed {
        /// Why the tunnel could not be set up.
        source: BoxError,
    },
    /// The target switched protocols, but not to the one the client asked for.
    #[error("backend tried to switch protocol {received:?} when {requested:?} was requested")]
    UpgradeMismatch {
        /// The protocol the client asked for.
        requested: String,
        /// The protocol the target answered with (empty if none).
        received: String,
    },
}

impl ForwardError {
    /// The status the client receives for this failure (§7.6, in the spec's order of checks).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ResponseTimeout { .. } | Self::NetworkTimeout { .. } | Self::Cancelled => {
                StatusCode::GATEWAY_TIMEOUT
            }
            // 499 has no constant; it is in the valid range, so the fallback never applies.
            Self::ClientDisconnected { .. } => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Self::MalformedRequest { .. } => StatusCode::BAD_REQUEST,
            Self::RequestBody { .. }
            | Self::Upstream { .. }
            | Self::InvalidUpgrade { .. }
            | Self::UpgradeFailed { .. }
            | Self::UpgradeMismatch { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Classifies an error of the upstream client call (before response headers arrived).
    pub(crate) fn from_client(error: BoxError) -> Self {
        if is_timeout(error.as_ref()) {
            return Self::NetworkTimeout { source: error };
        }
        if let Some(body) = find::<ClientBodyError>(error.as_ref()) {
            return if body.is_malformed() {
                Self::MalformedRequest { source: error }
            } else if body.is_truncated() {
                Self::ClientDisconnected { source: error }
            } else {
                Self::RequestBody { source: error }
            };
        }
        Self::Upstream { source: error }
    }

    /// Classifies an error while streaming the upstream response body.
    pub(crate) fn from_body(error: hyper::Error) -> Self {
        if is_timeout(&error) {
            Self::NetworkTimeout {
                source: error.into(),
            }
        } else {
            Self::Upstream {
                source: error.into(),
            }
        }
    }

    /// Classifies an error while reading a response body on the direct path.
    pub(crate) fn from_io(error: io::Error) -> Self {
        if error.kind() == io::ErrorKind::TimedOut {
            Self::NetworkTimeout {
                source: error.into(),
            }
        } else {
            Self::Upstream {
                source: error.into(),
            }
        }
    }

    /// Writes the log line the spec asks for (§11.3); 499 and timeouts are silent.
    pub(crate) fn log(&self, target: &str, path: &str) {
        match self {
            Self::Cancelled => {
                tracing::info!(target: "kamal_balancer::forward", target = %target, path = %path, "Request cancelled due to draining");
            }
            Self::MalformedRequest { .. } => {
                tracing::info!(target: "kamal_balancer::forward", target = %target, path = %path, error = %self, "Malformed request");
            }
            Self::RequestBody { .. }
            | Self::Upstream { .. }
            | Self::InvalidUpgrade { .. }
            | Self::UpgradeFailed { .. }
            | Self::UpgradeMismatch { .. } => {
                tracing::error!(target: "kamal_balancer::forward", target = %target, path = %path, error = %self, "Error while proxying");
            }
            Self::ResponseTimeout { .. }
            | Self::NetworkTimeout { .. }
            | Self::ClientDisconnected { .. } => {}
        }
    }
}

/// The error of a client's request body, marked so that it can be told apart from upstream
/// failures once hyper has wrapped it.
#[derive(Debug)]
pub(crate) struct ClientBodyError(pub(crate) BoxError);

impl fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for ClientBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.0.as_ref())
    }
}

impl ClientBodyError {
    /// Malformed chunked framing: hyper's decoder reports it as invalid data or input.
    fn is_malformed(&self) -> bool {
        chain(self.0.as_ref()).any(|e| {
            e.downcast_ref::<io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
                )
            })
        })
    }

    /// The body ended early: the client closed its connection mid-request.
    fn is_truncated(&self) -> bool {
        chain(self.0.as_ref()).any(|e| {
            e.downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::UnexpectedEof)
                || e.downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_incomplete_message)
        })
    }
}

/// The error and its sources, outermost first.
fn chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&e| e.source())
}

fn find<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    chain(error).find_map(|e| e.downcast_ref::<T>())
}

/// Whether any error in the chain reports itself as a timeout.
fn is_timeout(error: &(dyn StdError + 'static)) -> bool {
    chain(error).any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
            || e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout)
    })
}

/// Displays an error with its sources joined by `: `, so logs show the root cause
/// (`... tcp connect error: Connection refused (os error 111)`).
struct Chain<'a>(&'a (dyn StdError + Send + Sync + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut last = String::new();
        for e in chain(self.0) {
            let text = e.to_string();
            // Some errors repeat their source's message in their own; print it once.
            if text.is_empty() || last.ends_with(&text) {
                continue;
            }
            if !first {
                f.write_str(": ")?;
            }
            f.write_str(&text)?;
            first = false;
            last = text;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_spec() {
        let boxed = || -> BoxError { "x".into() };
        let cases = [
            (
                ForwardError::ResponseTimeout {
                    timeout: Duration::from_secs(1),
                },
                504,
            ),
            (ForwardError::NetworkTimeout { source: boxed() }, 504),
            (ForwardError::Cancelled, 504),
            (ForwardError::ClientDisconnected { source: boxed() }, 499),
            (ForwardError::MalformedRequest { source: boxed() }, 400),
            (ForwardError::RequestBody { source: boxed() }, 502),
            (ForwardError::Upstream { source: boxed() }, 502),
            (
                ForwardError::InvalidUpgrade {
                    protocol: "\t".into(),
                },
                502,
            ),
            (
                ForwardError::UpgradeMismatch {
                    requested: "websocket".into(),
                    received: "h2c".into(),
                },
                502,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
        }
    }

    #[test]
    fn io_timeouts_anywhere_in_the_chain_are_timeouts() {
        let inner = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
        let outer: BoxError = Box::new(Wrapper(inner));
        let e = ForwardError::from_client(outer);
        assert!(matches!(e, ForwardError::NetworkTimeout { .. }), "{e:?}");
    }

    #[test]
    fn client_body_errors_are_classified() {
        let malformed: BoxError = Box::new(ClientBodyError(Box::new(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid chunk size line",
        ))));
        assert!(matches!(
            ForwardError::from_client(malformed),
            ForwardError::MalformedRequest { .. }
        ));
        let truncated: BoxError = Box::new(ClientBodyError(Box::new(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "unexpected EOF during chunk size line",
        ))));
        assert!(matches!(
            ForwardError::from_client(truncated),
            ForwardError::ClientDisconnected { .. }
        ));
        let other: BoxError = Box::new(ClientBodyError("spool read failed".into()));
        assert!(matches!(
            ForwardError::from_client(other),
            ForwardError::RequestBody { .. }
        ));
        let upstream: BoxError = Box::new(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(matches!(
            ForwardError::from_client(upstream),
            ForwardError::Upstream { .. }
        ));
    }

    /// An error that wraps another as its source, like hyper-util's client error.
    #[derive(Debug)]
    struct Wrapper(io::Error);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("client error (Connect)")
        }
    }
    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn chain_display_joins_sources() {
        let e = ForwardError::Upstream {
            source: Box::new(Wrapper(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "connection refused",
            ))),
        };
        assert_eq!(e.to_string(), "client error (Connect): connection refused");
    }
}
