//! The crate's error type.

use std::path::PathBuf;

/// Why a certificate could not be loaded or configured.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("unable to read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM `CERTIFICATE` block.
    #[error("no certificate found in {path}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no PEM private key (PKCS#8, SEC1 or PKCS#1).
    #[error("no private key found in {path}")]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key is of a type or curve rustls cannot sign with.
    #[error("unsupported private key: {0}")]
    UnsupportedKey(rustls::Error),
    /// The private key does not belong to the leaf certificate.
    #[error("private key does not match the certificate")]
    KeyMismatch,
    /// Automatic certificates were asked for a wildcard host.
    #[error("automatic TLS does not support wildcards")]
    Wildcard {
        /// The offending host.
        host: String,
    },
}
