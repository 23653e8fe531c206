//! How much of a body is kept in memory, how large it may grow, and where it spills.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::header::CONTENT_LENGTH;
use http::HeaderMap;

use crate::error::BufferError;

/// Default bytes kept in memory before a body spills to disk (1 MiB).
pub const DEFAULT_MEMORY: usize = 1024 * 1024;

/// Buffering limits. Cheap to clone (the spill directory is shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    memory: usize,
    max_size: Option<u64>,
    spill_dir: Option<Arc<Path>>,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new()
    }
}

impl Limits {
    /// 1 MiB in memory, no size limit, spill files in the system temporary directory.
    pub fn new() -> Self {
        Self {
            memory: DEFAULT_MEMORY,
            max_size: None,
            spill_dir: None,
        }
    }

    /// Keeps at most `bytes` in memory; the rest goes to a spill file (0: everything does).
    pub fn memory(mut self, bytes: usize) -> Self {
        self.memory = bytes;
        self
    }

    /// Fails bodies larger than `bytes` (exactly `bytes` is allowed); `None` means unlimited.
    pub fn max_size(mut self, bytes: Option<u64>) -> Self {
        self.max_size = bytes;
        self
    }

    /// Creates spill files in `dir` instead of the system temporary directory.
    pub fn spill_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spill_dir = Some(Arc::from(dir.into()));
        self
    }

    /// Bytes kept in memory before spilling.
    pub fn memory_bytes(&self) -> usize {
        self.memory
    }

    /// The size limit, if any.
    pub fn max_size_bytes(&self) -> Option<u64> {
        self.max_size
    }

    /// Where spill files are created (the system temporary directory unless set).
    pub fn spill_dir_path(&self) -> PathBuf {
        match &self.spill_dir {
            Some(dir) => dir.to_path_buf(),
            None => std::env::temp_dir(),
        }
    }

    /// Fails with [`BufferError::TooLarge`] when `total` bytes would exceed the limit.
    pub(crate) fn check(&self, total: u64) -> Result<(), BufferError> {
        match self.max_size {
            Some(limit) if total > limit => Err(BufferError::TooLarge { limit }),
            _ => Ok(()),
        }
    }
}

/// Refuses a message whose `Content-Length` announces more than the limit, before any of its
/// body is read. Messages without a (valid) `Content-Length` pass: they are counted as they
/// stream instead.
pub fn check_content_length(headers: &HeaderMap, limits: &Limits) -> Result<(), BufferError> {
    let Some(limit) = limits.max_size else {
        return Ok(());
    };
    let announced = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match announced {
        Some(length) if length > limit => Err(BufferError::TooLarge { limit }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_length(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn content_length_at_limit_passes_and_one_more_fails() {
        let limits = Limits::new().max_size(Some(10));
        assert!(check_content_length(&with_length("10"), &limits).is_ok());
        let err = check_content_length(&with_length("11"), &limits).unwrap_err();
        assert!(matches!(err, BufferError::TooLarge { limit: 10 }));
    }

    #[test]
    fn missing_or_invalid_length_or_no_limit_passes() {
        let limits = Limits::new().max_size(Some(10));
        assert!(check_content_length(&HeaderMap::new(), &limits).is_ok());
        assert!(check_content_length(&with_length("abc"), &limits).is_ok());
        assert!(check_content_length(&with_length("99999"), &Limits::new()).is_ok());
    }

    #[test]
    fn defaults() {
        let limits = Limits::default();
        assert_eq!(limits.memory_bytes(), DEFAULT_MEMORY);
        assert_eq!(limits.max_size_bytes(), None);
        assert_eq!(limits.spill_dir_path(), std::env::temp_dir());
        let limits = limits.spill_dir("/var/tmp").memory(0);
        assert_eq!(limits.spill_dir_path(), PathBuf::from("/var/tmp"));
        assert_eq!(limits.memory_bytes(), 0);
    }
}
