//! TLS certificates for kamal-proxy: the per-handshake SNI resolver over static certificates and
//! per-host ACME states (rustls-acme), the on-demand policy, HTTP-01 answers, and upstream's
//! certificate cache layout.
//!
//! A handshake is served in two steps: [`CertStore::prepare`] (async: refuse unknown names,
//! obtain an ACME certificate on first use) and then [`SniResolver`] (rustls' synchronous
//! certificate choice, one atomic load).
//!
//! ```
//! use std::sync::Arc;
//! use kamal_acme::{CertSource, CertStore, SniResolver};
//!
//! kamal_acme::install_crypto_provider();
//! let store = CertStore::new(kamal_acme::AcmeSettings::from_environment());
//! store.set_service("web", &["app.example.com".to_owned()], CertSource::Off);
//! let resolver = SniResolver::new(Arc::clone(&store));
//! let config = kamal_acme::server_config(resolver, false);
//! assert_eq!(config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
//! ```

mod accept;
mod cache;
mod der;
mod error;
mod manager;
mod on_demand;
mod resolver;
mod static_pem;

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::ResolvesServerCert;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use accept::TlsAcceptor;
pub use cache::{cache_dir, has_certificate, UpstreamDirCache};
pub use error::TlsError;
pub use manager::{AcmeHost, AcmeSettings, AcmeTarget};
pub use on_demand::{BoxFuture, HostCheck, OnDemand, CHECK_TIMEOUT, DENY_TTL};
pub use resolver::{normalize_name, CertSource, CertStore, Http01Answer, Refusal, SniResolver};
pub use static_pem::{certified_key_from_pem, load_certified_key};

/// Let's Encrypt production, used when no directory is configured.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// The ALPN protocol of TLS-ALPN-01 challenges.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The process-wide crypto provider (ring).
pub fn provider() -> Arc<CryptoProvider> {
    match CryptoProvider::get_default() {
        Some(p) => Arc::clone(p),
        None => Arc::new(rustls::crypto::ring::default_provider()),
    }
}

/// Installs ring as rustls' process-wide provider; later calls do nothing.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The server configuration of the HTTPS listener: TLS 1.2 and 1.3, certificates from
/// `resolver`, ALPN `h2` and `http/1.1`, or only `acme-tls/1` for challenge handshakes.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>, challenge: bool) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| {
            // ring supports the default versions; this branch is unreachable in practice.
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(rustls::DEFAULT_VERSIONS)
                .expect("ring supports TLS 1.2 and 1.3")
        });
    let mut config = builder.with_no_client_auth().with_cert_resolver(resolver);
    config.alpn_protocols = if challenge {
        vec![ACME_TLS_ALPN.to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    Arc::new(config)
}

/// Where the system's trusted roots usually are (Debian/Ubuntu, Fedora/RHEL, Alpine, SUSE).
const SYSTEM_ROOTS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// The roots the ACME client trusts: the system bundle plus `SSL_CERT_FILE` when set.
pub fn acme_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let mut add = |path: &str| {
        if let Ok(iter) = CertificateDer::pem_file_iter(path) {
            let certs: Vec<_> = iter.filter_map(Result::ok).collect();
            roots.add_parsable_certificates(certs);
        }
    };
    if let Some(system) = SYSTEM_ROOTS
        .iter()
        .find(|p| std::path::Path::new(p).is_file())
    {
        add(system);
    }
    if let Some(extra) = std::env::var_os("SSL_CERT_FILE") {
        if let Some(extra) = extra.to_str() {
            add(extra);
        }
    }
    roots
}

impl AcmeSettings {
    /// Settings as the proxy runs: roots from [`acme_roots`], 5-minute issuance wait, one
    /// minute before a failed issuance is retried.
    pub fn from_environment() -> Self {
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(acme_roots()).with_no_client_auth());
        let client = match client {
            Ok(c) => c,
            Err(_) => ClientConfig::builder()
                .with_root_certificates(acme_roots())
                .with_no_client_auth(),
        };
        AcmeSettings {
            client: Arc::new(client),
            issuance_timeout: Duration::from_secs(300),
            retry_after: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
fn test_settings() -> AcmeSettings {
    AcmeSettings {
        retry_after: Duration::from_secs(1),
        issuance_timeout: Duration::from_secs(5),
        ..AcmeSettings::from_environment()
    }
}
