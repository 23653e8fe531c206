//! Why buffering a body failed.

use std::io;

/// A boxed, thread-safe error (the same type as `tower::BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failure to buffer or replay a body.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// The body is larger than the configured limit (also raised before reading when a
    /// `Content-Length` announces more than the limit).
    #[error("body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The body being buffered failed (client or upstream went away, bad framing…).
    #[error("{source}")]
    Body {
        /// The body's own error.
        source: BoxError,
    },
    /// The spill file could not be created.
    #[error("failed to create spill file: {source}")]
    CreateSpill {
        /// The I/O error.
        source: io::Error,
    },
    /// Writing to or reading back the spill file failed.
    #[error("spill file I/O failed: {source}")]
    SpillIo {
        /// The I/O error.
        source: io::Error,
    },
}

impl BufferError {
    /// Whether this is the size limit being exceeded.
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::TooLarge { .. })
    }

    /// The error of the source body, if that is what failed.
    pub fn body_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            Self::Body { source } => Some(source.as_ref()),
            _ => None,
        }
    }
}
