//! One ACME certificate for one host name: a rustls-acme `AcmeState` polled in a task that is
//! started by the first handshake that needs it (lazy issuance).
//!
//! rustls-acme answers only one challenge type per state, so the task tries TLS-ALPN-01 first
//! and, if that order fails, HTTP-01 (as upstream's autocert does). A host whose issuance failed
//! fails handshakes fast until `retry_after` has passed; the next handshake then starts again.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures_util::StreamExt as _;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ClientConfig;
use rustls_acme::{AcmeConfig, EventError, EventOk, ResolvesServerCertAcme, UseChallenge};
use tokio::sync::watch;

use crate::cache::UpstreamDirCache;

/// Where certificates come from and where they are kept, for one service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AcmeTarget {
    /// The ACME directory URL.
    pub directory_url: String,
    /// The cache directory (already scoped by directory, see [`crate::cache_dir`]).
    pub cache_dir: PathBuf,
}

/// Settings shared by every ACME host.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// TLS client settings for talking to the CA (roots: system plus `SSL_CERT_FILE`).
    pub client: Arc<ClientConfig>,
    /// How long a handshake may wait for an issuance (upstream: 5 minutes).
    pub issuance_timeout: Duration,
    /// How long a failed issuance is remembered before a handshake may start another.
    pub retry_after: Duration,
}

#[derive(Debug, Clone)]
enum Status {
    Idle,
    Pending,
    Ready,
    Failed { at: Instant, error: Arc<str> },
}

#[derive(Debug)]
struct Shared {
    status: watch::Sender<Status>,
    /// The resolver of the state currently polled; answers TLS-ALPN-01, HTTP-01 and normal
    /// handshakes for this host.
    resolver: ArcSwapOption<ResolvesServerCertAcme>,
}

/// The ACME-managed certificate of one host name.
#[derive(Debug)]
pub struct AcmeHost {
    domain: String,
    target: AcmeTarget,
    settings: AcmeSettings,
    shared: Arc<Shared>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for AcmeHost {
    fn drop(&mut self) {
        // The host left every service: stop renewing its certificate.
        if let Some(task) = self.task.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

impl AcmeHost {
    /// A host whose certificate is obtained on first use. `domain` is already normalised.
    pub fn new(domain: String, target: AcmeTarget, settings: AcmeSettings) -> Self {
        AcmeHost {
            domain,
            target,
            settings,
            shared: Arc::new(Shared {
                status: watch::Sender::new(Status::Idle),
                resolver: ArcSwapOption::empty(),
            }),
            task: Mutex::new(None),
        }
    }

    /// The host name.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Where this host's certificate comes from.
    pub fn target(&self) -> &AcmeTarget {
        &self.target
    }

    /// Makes sure a certificate is available, starting the ACME task if needed and waiting
    /// (with every concurrent caller) for its outcome.
    pub async fn ensure(&self) -> Result<(), String> {
        let mut status = self.shared.status.subscribe();
        let start = self.shared.status.send_if_modified(|s| match s {
            Status::Ready | Status::Pending => false,
            Status::Failed { at, .. } if at.elapsed() < self.settings.retry_after => false,
            _ => {
                *s = Status::Pending;
                true
            }
        });
        if start {
            self.start();
        }
        let outcome = tokio::time::timeout(
            self.settings.issuance_timeout,
            status.wait_for(|s| !matches!(s, Status::Pending | Status::Idle)),
        )
        .await;
        match outcome {
            Ok(Ok(s)) => match &*s {
                Status::Failed { error, .. } => Err(error.to_string()),
                _ => Ok(()),
            },
            Ok(Err(_)) => Err("certificate manager stopped".to_owned()),
            Err(_) => Err(format!(
                "timed out obtaining a certificate for {}",
                self.domain
            )),
        }
    }

    /// The HTTP-01 key authorisation for `token`, while a challenge for it is open.
    pub fn http01_key_authorization(&self, token: &str) -> Option<String> {
        self.shared
            .resolver
            .load()
            .as_ref()
            .and_then(|r| r.get_http_01_key_auth(token))
    }

    /// The certificate for this handshake (the challenge certificate for `acme-tls/1`).
    pub fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.shared.resolver.load().as_ref()?.resolve(hello)
    }

    fn start(&self) {
        let task = tokio::spawn(run(
            Arc::clone(&self.shared),
            self.domain.clone(),
            self.target.clone(),
            Arc::clone(&self.settings.client),
        ));
        let mut slot = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.replace(task.abort_handle()) {
            old.abort();
        }
    }
}

/// Polls ACME states for `domain`: cached certificate or a new order, then renewals.
async fn run(shared: Arc<Shared>, domain: String, target: AcmeTarget, client: Arc<ClientConfig>) {
    let mut last_error = String::new();
    for (challenge, name) in [
        (UseChallenge::TlsAlpn01, "tls-alpn-01"),
        (UseChallenge::Http01, "http-01"),
    ] {
        let mut state = AcmeConfig::new_with_client_config([domain.as_str()], Arc::clone(&client))
            .directory(&target.directory_url)
            .cache(UpstreamDirCache::new(target.cache_dir.clone()))
            .challenge_type(challenge)
            .state();
        shared.resolver.store(Some(state.resolver()));
        let mut deployed = false;
        while let Some(event) = state.next().await {
            match event {
                Ok(EventOk::DeployedCachedCert) => {
                    tracing::debug!(host = %domain, "ACME: using cached certificate");
                    deployed = true;
                    shared.status.send_replace(Status::Ready);
                }
                Ok(EventOk::DeployedNewCert) => {
                    tracing::info!(host = %domain, challenge = name, "ACME: obtained certificate");
                    deployed = true;
                    shared.status.send_replace(Status::Ready);
                }
                Ok(_) => {}
                Err(EventError::Order(error)) if !deployed => {
                    last_error = format!("acme: {error}");
                    tracing::warn!(host = %domain, challenge = name, error = %last_error, "ACME: order failed");
                    break;
                }
                // Renewal failures and cache errors: the state backs off and retries by itself
                // while the current certificate keeps being served.
                Err(error) => {
                    tracing::warn!(host = %domain, error = %error, "ACME: certificate error");
                }
            }
        }
    }
    shared.status.send_replace(Status::Failed {
        at: Instant::now(),
        error: last_error.into(),
    });
}
