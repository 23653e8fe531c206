//! On-demand TLS (spec §10.6): certificates for any server name the operator's check approves.
//!
//! The check itself (an HTTP call, or a request through the service) belongs to the binary and
//! comes in as a [`HostCheck`]. This module remembers approved hosts and, for a short while,
//! denied ones, so a flood of handshakes for random names is not a flood of checks or orders.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::manager::{AcmeHost, AcmeSettings, AcmeTarget};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Asks whether a host may get a certificate. `Err` carries the policy error text.
pub trait HostCheck: Send + Sync + std::fmt::Debug + 'static {
    /// Runs the check for `host` (lower-case, no trailing dot).
    fn check(&self, host: &str) -> BoxFuture<Result<(), String>>;
}

/// How long a denial is remembered.
pub const DENY_TTL: Duration = Duration::from_secs(10);
/// Most denials remembered at once; past this the expired ones are dropped, then all.
const MAX_DENIED: usize = 10_000;
/// Most approved hosts kept (each may hold a certificate task).
const MAX_ALLOWED: usize = 10_000;
/// Upper bound for one check (upstream: 2 seconds).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The on-demand policy and the hosts it approved, for one service.
#[derive(Debug)]
pub struct OnDemand {
    target: AcmeTarget,
    settings: AcmeSettings,
    check: Arc<dyn HostCheck>,
    deny_ttl: Duration,
    /// Read by every handshake (lock-free); written when a host is approved.
    allowed: ArcSwap<HashMap<String, Arc<AcmeHost>>>,
    /// Denied hosts with the time and the reason; only touched on the async accept path.
    denied: Mutex<HashMap<String, (Instant, Arc<str>)>>,
    /// Serialises approvals so one host gets one `AcmeHost`.
    approving: tokio::sync::Mutex<()>,
}

impl OnDemand {
    /// A policy issuing into `target` for hosts that `check` approves.
    pub fn new(
        target: AcmeTarget,
        settings: AcmeSettings,
        check: Arc<dyn HostCheck>,
        deny_ttl: Duration,
    ) -> Self {
        OnDemand {
            target,
            settings,
            check,
            deny_ttl,
            allowed: ArcSwap::from_pointee(HashMap::new()),
            denied: Mutex::new(HashMap::new()),
            approving: tokio::sync::Mutex::new(()),
        }
    }

    /// The approved host's certificate manager, if `host` was approved.
    pub fn approved(&self, host: &str) -> Option<Arc<AcmeHost>> {
        self.allowed.load().get(host).cloned()
    }

    /// Approves or denies `host` (normalised), asking the check at most once per
    /// [`DENY_TTL`] for a denied host.
    pub async fn approve(&self, host: &str) -> Result<Arc<AcmeHost>, String> {
        if let Some(found) = self.approved(host) {
            return Ok(found);
        }
        if let Some(reason) = self.recently_denied(host) {
            return Err(reason.to_string());
        }
        let _one_at_a_time = self.approving.lock().await;
        if let Some(found) = self.approved(host) {
            return Ok(found);
        }
        if let Some(reason) = self.recently_denied(host) {
            return Err(reason.to_string());
        }
        // A certificate already in the cache approves the host without asking (§10.6.2).
        let verdict = if crate::cache::has_certificate(&self.target.cache_dir, host) {
            Ok(())
        } else {
            match tokio::time::timeout(CHECK_TIMEOUT, self.check.check(host)).await {
                Ok(verdict) => verdict,
                Err(_) => Err(format!(
                    "{host} is not allowed to get a certificate (timeout)"
                )),
            }
        };
        match verdict {
            Ok(()) => {
                let acme = Arc::new(AcmeHost::new(
                    host.to_owned(),
                    self.target.clone(),
                    self.settings.clone(),
                ));
                let mut next = HashMap::clone(&self.allowed.load());
                if next.len() >= MAX_ALLOWED {
                    next.clear();
                }
                next.insert(host.to_owned(), Arc::clone(&acme));
                self.allowed.store(Arc::new(next));
                Ok(acme)
            }
            Err(reason) => {
                let mut denied = self.denied.lock().unwrap_or_else(|e| e.into_inner());
                if denied.len() >= MAX_DENIED {
                    let ttl = self.deny_ttl;
                    denied.retain(|_, (at, _)| at.elapsed() < ttl);
                    if denied.len() >= MAX_DENIED {
                        denied.clear();
                    }
                }
                denied.insert(host.to_owned(), (Instant::now(), reason.as_str().into()));
                Err(reason)
            }
        }
    }

    fn recently_denied(&self, host: &str) -> Option<Arc<str>> {
        let denied = self.denied.lock().unwrap_or_else(|e| e.into_inner());
        denied
            .get(host)
            .filter(|(at, _)| at.elapsed() < self.deny_ttl)
            .map(|(_, reason)| Arc::clone(reason))
    }

    /// Number of remembered denials (for tests of the memory bound).
    pub fn denied_len(&self) -> usize {
        self.denied.lock().map(|d| d.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Default)]
    struct Counting {
        calls: AtomicUsize,
    }

    impl HostCheck for Counting {
        fn check(&self, host: &str) -> BoxFuture<Result<(), String>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let host = host.to_owned();
            Box::pin(async move {
                if host.starts_with("ok.") {
                    Ok(())
                } else {
                    Err(format!(
                        "{host} is not allowed to get a certificate (status: 403, body: \"\")"
                    ))
                }
            })
        }
    }

    fn on_demand(dir: &std::path::Path, check: Arc<Counting>, ttl: Duration) -> OnDemand {
        OnDemand::new(
            AcmeTarget {
                directory_url: "https://127.0.0.1:1/dir".into(),
                cache_dir: dir.to_owned(),
            },
            crate::test_settings(),
            check,
            ttl,
        )
    }

    #[tokio::test]
    async fn denials_are_remembered_and_approvals_kept() {
        let dir = tempfile::tempdir().unwrap();
        let check = Arc::new(Counting::default());
        let policy = on_demand(dir.path(), Arc::clone(&check), Duration::from_secs(60));
        for _ in 0..5 {
            let err = policy.approve("no.test").await.unwrap_err();
            assert!(err.contains("not allowed"), "{err}");
        }
        assert_eq!(check.calls.load(Ordering::SeqCst), 1);
        for _ in 0..3 {
            assert!(policy.approve("ok.test").await.is_ok());
        }
        assert_eq!(check.calls.load(Ordering::SeqCst), 2);
        assert!(policy.approved("ok.test").is_some());
    }

    #[tokio::test]
    async fn denials_expire() {
        let dir = tempfile::tempdir().unwrap();
        let check = Arc::new(Counting::default());
        let policy = on_demand(dir.path(), Arc::clone(&check), Duration::ZERO);
        let _ = policy.approve("no.test").await;
        let _ = policy.approve("no.test").await;
        assert_eq!(check.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn cached_certificates_approve_without_asking() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cached.test"), b"x").unwrap();
        let check = Arc::new(Counting::default());
        let policy = on_demand(dir.path(), Arc::clone(&check), DENY_TTL);
        assert!(policy.approve("cached.test").await.is_ok());
        assert_eq!(check.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn many_random_denials_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let check = Arc::new(Counting::default());
        let policy = on_demand(dir.path(), Arc::clone(&check), DENY_TTL);
        for i in 0..(MAX_DENIED + 10) {
            let _ = policy.approve(&format!("r{i}.test")).await;
        }
        assert!(policy.denied_len() <= MAX_DENIED);
    }
}
