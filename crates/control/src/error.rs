//! Error types of the control crate, each named after the condition it reports.

use std::io;
use std::path::PathBuf;

/// A Go duration string that `time.ParseDuration` would reject; Display is Go's exact message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Malformed text or a value outside the signed 64-bit nanosecond range.
    #[error("time: invalid duration {quoted}")]
    Invalid {
        /// The whole input, quoted the way Go quotes it.
        quoted: String,
    },
    /// A number without a unit (only a bare `0` may omit it).
    #[error("time: missing unit in duration {quoted}")]
    MissingUnit {
        /// The whole input, quoted.
        quoted: String,
    },
    /// A unit other than `ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`.
    #[error("time: unknown unit {unit} in duration {quoted}")]
    UnknownUnit {
        /// The offending unit, quoted.
        unit: String,
        /// The whole input, quoted.
        quoted: String,
    },
}

/// Why a `--tls-on-demand-url` value is unusable (§10.6.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnDemandUrlError {
    /// A scheme-relative `//host/...` value.
    #[error("tls-on-demand-url must be a path or an absolute http(s) URL")]
    NotPathOrAbsoluteUrl,
    /// The URL parser rejected it; `message` is Go's `parse "<url>": <reason>`.
    #[error("unable to parse tls-on-demand-url: {message}")]
    Unparsable {
        /// Go's `*url.Error` text.
        message: String,
    },
    /// A scheme other than `http` or `https`.
    #[error("unsupported scheme \"{scheme}\" in tls-on-demand-url")]
    UnsupportedScheme {
        /// The (lower-cased) scheme.
        scheme: String,
    },
    /// An absolute URL without a host.
    #[error("missing host in tls-on-demand-url")]
    MissingHost,
}

/// Service options that fail validation (§2.3.1); Display carries upstream's full message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// An on-demand URL without `--tls`.
    #[error("service options invalid: TLS must be enabled to use a TLS on-demand URL")]
    OnDemandRequiresTls,
    /// Hosts given together with an on-demand URL.
    #[error("service options invalid: cannot set hosts when using a TLS on-demand URL")]
    OnDemandWithHosts,
    /// A custom certificate or key given together with an on-demand URL.
    #[error(
        "service options invalid: cannot use a custom TLS certificate with a TLS on-demand URL"
    )]
    OnDemandWithCustomCertificate,
    /// A canonical host given together with an on-demand URL.
    #[error("service options invalid: cannot set a canonical host when using a TLS on-demand URL")]
    OnDemandWithCanonicalHost,
    /// The on-demand URL itself is invalid.
    #[error("service options invalid: {0}")]
    OnDemandUrl(#[from] OnDemandUrlError),
    /// TLS without any (non-empty) host.
    #[error("service options invalid: host must be set when using TLS")]
    TlsRequiresHost,
    /// TLS on a service that does not serve the root path.
    #[error("service options invalid: TLS settings must be specified on the root path service")]
    TlsRequiresRootPath,
    /// The canonical host is not one of the service's hosts.
    #[error(
        "service options invalid: canonical-host '{canonical_host}' must be present in the hosts list: [{}]",
        hosts.join(" ")
    )]
    CanonicalHostNotInHosts {
        /// The requested canonical host.
        canonical_host: String,
        /// The service's hosts.
        hosts: Vec<String>,
    },
}

/// Framing or encoding failures on the control socket.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer closed the connection cleanly before a new frame began.
    #[error("connection closed")]
    Closed,
    /// The connection ended in the middle of a frame.
    #[error("unexpected EOF")]
    Truncated,
    /// The announced frame length exceeds the limit; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The frame is not valid JSON for the expected message.
    #[error("malformed message: {0}")]
    MalformedMessage(#[source] serde_json::Error),
    /// Encoding a message failed (should not happen for our types).
    #[error("unable to encode message: {0}")]
    Encode(#[source] serde_json::Error),
    /// Reading or writing the socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Failures of the blocking CLI client; Display mimics Go's `net` error text.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached, e.g. `dial unix /tmp/kamal-proxy.sock: connect: connection refused`.
    #[error("dial unix {}: connect: {}", path.display(), go_errno_text(source))]
    Connect {
        /// The socket path dialled.
        path: PathBuf,
        /// The underlying OS error.
        source: io::Error,
    },
    /// The exchange with the server failed after connecting.
    #[error(transparent)]
    Exchange(#[from] CodecError),
}

/// Failures of the control-socket server.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another process is accepting connections on the socket.
    #[error("another kamal-proxy is already running on {} (the control socket accepts connections)", path.display())]
    AlreadyRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// Creating, securing or placing the socket file failed.
    #[error("unable to create control socket {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Handing the socket to the async runtime failed.
    #[error("unable to listen on control socket {}: {source}", path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Failures reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but cannot be read.
    #[error("unable to read state file {}: {source}", path.display())]
    Unreadable {
        /// The state file path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not a JSON array (nothing can be restored from it).
    #[error("{source}")]
    NotAnArray {
        /// The decoding error.
        source: serde_json::Error,
    },
    /// Encoding the services failed.
    #[error("unable to encode state: {0}")]
    Encode(#[source] serde_json::Error),
    /// Writing, syncing or renaming the new state file failed.
    #[error("unable to write state file {}: {source}", path.display())]
    Write {
        /// The path being written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Renders an OS error as Go does: the C library's text with a lower-case first letter and no
/// `(os error N)` suffix (`connection refused`, `no such file or directory`).
pub(crate) fn go_errno_text(error: &io::Error) -> String {
    let Some(code) = error.raw_os_error() else {
        // std rejects an over-long socket path before the system call; Go reports EINVAL.
        if error.kind() == io::ErrorKind::InvalidInput {
            return "invalid argument".to_owned();
        }
        return error.to_string();
    };
    let text = io::Error::from_raw_os_error(code).to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) => &text[..at],
        None => text.as_str(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_text_is_go_like() {
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(go_errno_text(&refused), "connection refused");
        let missing = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(go_errno_text(&missing), "no such file or directory");
        let custom = io::Error::other("boom");
        assert_eq!(go_errno_text(&custom), "boom");
    }

    #[test]
    fn canonical_host_message_lists_hosts_like_go() {
        let error = OptionsError::CanonicalHostNotInHosts {
            canonical_host: "c.test".into(),
            hosts: vec!["a.test".into(), "b.test".into()],
        };
        assert_eq!(
            error.to_string(),
            "service options invalid: canonical-host 'c.test' must be present in the hosts list: [a.test b.test]"
        );
    }
}
