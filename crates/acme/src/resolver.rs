//! Certificate selection per handshake: a lock-free table from server name to the certificate
//! source of the service that serves `/` for that name (exact host, then one-label wildcard,
//! then the default service), and the default name used when SNI is missing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::TlsError;
use crate::manager::{AcmeHost, AcmeSettings, AcmeTarget};
use crate::on_demand::{HostCheck, OnDemand};

/// Where a service's certificates come from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// TLS is off for the service: handshakes that select it fail.
    Off,
    /// A custom certificate, served for every name that selects the service.
    Static(Arc<CertifiedKey>),
    /// ACME, one certificate per host of the service.
    Acme(Arc<HashMap<String, Arc<AcmeHost>>>),
    /// ACME for any name the on-demand check approves.
    OnDemand(Arc<OnDemand>),
}

impl CertSource {
    fn is_tls(&self) -> bool {
        !matches!(self, CertSource::Off)
    }
}

/// Why a handshake gets no certificate (the texts upstream's handshake errors carry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No SNI and no default TLS host name.
    #[error("no server name provided")]
    NoServerName,
    /// No service for the name, or that service has TLS off.
    #[error("unknown server name")]
    UnknownServerName,
    /// Obtaining the certificate (or the on-demand check) failed.
    #[error("{0}")]
    Certificate(String),
}

/// One service's entry.
#[derive(Debug, Clone)]
struct ServiceCerts {
    hosts: Vec<String>,
    source: CertSource,
}

/// The immutable snapshot handshakes read.
#[derive(Debug, Default)]
struct Table {
    exact: HashMap<String, CertSource>,
    /// `.suffix` of each `*.suffix` host.
    wildcard: HashMap<String, CertSource>,
    /// The service without hosts (the routing default).
    fallback: Option<CertSource>,
    /// The name used when SNI is missing (§10.5, chosen deterministically).
    default_name: Option<String>,
}

impl Table {
    fn lookup(&self, name: &str) -> Option<&CertSource> {
        if let Some(found) = self.exact.get(name) {
            return Some(found);
        }
        // One label is replaced by the wildcard; `*.test` needs a dot after the first character.
        if let Some(dot) = name.get(1..).and_then(|rest| rest.find('.')).map(|i| i + 1) {
            if let Some(found) = self.wildcard.get(&name[dot..]) {
                return Some(found);
            }
        }
        self.fallback.as_ref()
    }
}

/// Lower-case, without one trailing dot: how names are compared (§14.1).
pub fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// All services' certificate sources, and the SNI resolver over them.
#[derive(Debug)]
pub struct CertStore {
    table: ArcSwap<Table>,
    /// Services by name; only the control plane takes this lock.
    services: Mutex<BTreeMap<String, ServiceCerts>>,
    /// Live ACME hosts, so a redeploy with the same settings keeps the same certificate task.
    acme_hosts: Mutex<HashMap<(String, AcmeTarget), Weak<AcmeHost>>>,
    settings: AcmeSettings,
}

impl CertStore {
    /// An empty store; ACME hosts use `settings`.
    pub fn new(settings: AcmeSettings) -> Arc<Self> {
        Arc::new(CertStore {
            table: ArcSwap::from_pointee(Table::default()),
            services: Mutex::new(BTreeMap::new()),
            acme_hosts: Mutex::new(HashMap::new()),
            settings,
        })
    }

    /// The ACME settings in use.
    pub fn settings(&self) -> &AcmeSettings {
        &self.settings
    }

    /// The ACME source for a service's hosts. Wildcards are refused; live hosts with the same
    /// target are reused so a redeploy neither reloads nor re-orders.
    pub fn acme_source(
        &self,
        hosts: &[String],
        target: &AcmeTarget,
    ) -> Result<CertSource, TlsError> {
        if let Some(host) = hosts.iter().find(|h| h.contains('*')) {
            return Err(TlsError::Wildcard { host: host.clone() });
        }
        let mut live = self.acme_hosts.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, host| host.strong_count() > 0);
        let mut map = HashMap::new();
        for host in hosts
            .iter()
            .map(|h| normalize_name(h))
            .filter(|h| !h.is_empty())
        {
            let key = (host.clone(), target.clone());
            let acme = match live.get(&key).and_then(Weak::upgrade) {
                Some(acme) => acme,
                None => {
                    let acme = Arc::new(AcmeHost::new(
                        host.clone(),
                        target.clone(),
                        self.settings.clone(),
                    ));
                    live.insert(key, Arc::downgrade(&acme));
                    acme
                }
            };
            map.insert(host, acme);
        }
        Ok(CertSource::Acme(Arc::new(map)))
    }

    /// The on-demand source for a service.
    pub fn on_demand_source(&self, target: &AcmeTarget, check: Arc<dyn HostCheck>) -> CertSource {
        CertSource::OnDemand(Arc::new(OnDemand::new(
            target.clone(),
            self.settings.clone(),
            check,
            crate::on_demand::DENY_TTL,
        )))
    }

    /// Sets (adds or replaces) a service's hosts and certificate source.
    pub fn set_service(&self, name: &str, hosts: &[String], source: CertSource) {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        services.insert(
            name.to_owned(),
            ServiceCerts {
                hosts: hosts.iter().map(|h| normalize_name(h)).collect(),
                source,
            },
        );
        self.rebuild(&services);
    }

    /// Forgets a service (its ACME tasks stop when no other service uses the same hosts).
    pub fn remove_service(&self, name: &str) {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if services.remove(name).is_some() {
            self.rebuild(&services);
        }
    }

    fn rebuild(&self, services: &BTreeMap<String, ServiceCerts>) {
        let mut table = Table::default();
        for service in services.values() {
            let hosts: Vec<&String> = service.hosts.iter().filter(|h| !h.is_empty()).collect();
            if hosts.is_empty() {
                table.fallback = Some(service.source.clone());
            }
            for host in hosts {
                match host.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') => {
                        table
                            .wildcard
                            .insert(suffix.to_owned(), service.source.clone());
                    }
                    _ => {
                        table.exact.insert(host.clone(), service.source.clone());
                    }
                }
            }
            // Deterministic default (§13.3.3): the first TLS service by name with a first host.
            if table.default_name.is_none() && service.source.is_tls() {
                if let Some(first) = service.hosts.first().filter(|h| !h.is_empty()) {
                    table.default_name = Some(first.clone());
                }
            }
        }
        self.table.store(Arc::new(table));
    }

    /// The name a handshake is resolved for: its SNI, or the default TLS host name.
    fn server_name(&self, sni: Option<&str>) -> Result<String, Refusal> {
        match sni {
            Some(name) if !name.is_empty() => Ok(normalize_name(name)),
            _ => match &self.table.load().default_name {
                Some(name) => {
                    tracing::warn!(host = %name, "No server name; using default TLS hostname");
                    Ok(name.clone())
                }
                None => {
                    tracing::debug!("ACME: Unable to get certificate (no server name)");
                    Err(Refusal::NoServerName)
                }
            },
        }
    }

    /// The async half of a handshake, run after the ClientHello is read and before rustls asks
    /// [`ResolvesServerCert::resolve`]: refuses unknown names and makes sure an ACME certificate
    /// exists (lazy issuance; concurrent handshakes wait for the same order). Challenge
    /// handshakes (`acme-tls/1` only) skip issuance: they are part of it.
    pub async fn prepare(&self, sni: Option<&str>, challenge: bool) -> Result<(), Refusal> {
        let name = self.server_name(sni)?;
        let source = {
            let table = self.table.load();
            match table.lookup(&name) {
                None => {
                    tracing::debug!("ACME: Unable to get certificate (unknown server name)");
                    return Err(Refusal::UnknownServerName);
                }
                Some(source) => source.clone(),
            }
        };
        let acme = match source {
            CertSource::Off => {
                tracing::debug!("ACME: Unable to get certificate (service does not support TLS)");
                return Err(Refusal::UnknownServerName);
            }
            CertSource::Static(_) => return Ok(()),
            // As autocert: a CA never issues for a single-label name; do not ask.
            _ if !name.contains('.') => {
                return Err(Refusal::Certificate(
                    "acme/autocert: server name component count invalid".to_owned(),
                ))
            }
            CertSource::Acme(hosts) => match hosts.get(&name) {
                Some(acme) => Arc::clone(acme),
                // A name routed here by the default or a wildcard but not one of the hosts:
                // the host policy refuses it.
                None => {
                    return Err(Refusal::Certificate(format!(
                        "acme/autocert: host {name:?} not configured in HostWhitelist"
                    )))
                }
            },
            CertSource::OnDemand(policy) => {
                policy.approve(&name).await.map_err(Refusal::Certificate)?
            }
        };
        if challenge {
            return Ok(());
        }
        acme.ensure().await.map_err(Refusal::Certificate)
    }

    /// Answers an ACME HTTP-01 request (spec §10.4) if `path` is a challenge path and the
    /// service for `host` uses ACME; `None` lets the request through to the service.
    pub fn http01(&self, host: &str, path: &str) -> Option<Http01Answer> {
        let token = path.strip_prefix("/.well-known/acme-challenge/")?;
        // The validation port is not part of the name (a CA may validate on a port other
        // than 80, e.g. a test CA); upstream compares with the port and would refuse.
        let name = normalize_name(host_without_port(host));
        let table = self.table.load();
        match table.lookup(&name)? {
            CertSource::Acme(hosts) => {
                let Some(acme) = hosts.get(&name) else {
                    return Some(Http01Answer::Forbidden(format!(
                        "acme/autocert: host {host:?} not configured in HostWhitelist"
                    )));
                };
                Some(match acme.http01_key_authorization(token) {
                    Some(key) => Http01Answer::KeyAuthorization(key),
                    None => Http01Answer::NotFound,
                })
            }
            CertSource::OnDemand(policy) => Some(match policy.approved(&name) {
                Some(acme) => match acme.http01_key_authorization(token) {
                    Some(key) => Http01Answer::KeyAuthorization(key),
                    None => Http01Answer::NotFound,
                },
                None => Http01Answer::NotFound,
            }),
            _ => None,
        }
    }
}

/// The answer to an HTTP-01 challenge request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Http01Answer {
    /// 200 with the key authorisation as body.
    KeyAuthorization(String),
    /// 403 with the policy error.
    Forbidden(String),
    /// 404 `acme/autocert: certificate cache miss`.
    NotFound,
}

impl Http01Answer {
    /// The status code and `text/plain` body to send.
    pub fn status_and_body(&self) -> (u16, String) {
        match self {
            Http01Answer::KeyAuthorization(key) => (200, key.clone()),
            Http01Answer::Forbidden(error) => (403, format!("{error}\n")),
            Http01Answer::NotFound => (404, "acme/autocert: certificate cache miss\n".to_owned()),
        }
    }
}

/// `host` without a `:port` (IPv6 literals keep their brackets).
fn host_without_port(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => &authority[..i],
        _ => authority,
    }
}

/// The rustls side: picks the certificate for a handshake from the current snapshot.
#[derive(Debug)]
pub struct SniResolver {
    store: Arc<CertStore>,
}

impl SniResolver {
    /// A resolver over `store`.
    pub fn new(store: Arc<CertStore>) -> Arc<Self> {
        Arc::new(SniResolver { store })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.store.table.load();
        let name = match hello.server_name() {
            Some(name) if !name.is_empty() => normalize_name(name),
            _ => table.default_name.clone()?,
        };
        match table.lookup(&name)? {
            CertSource::Off => None,
            CertSource::Static(key) => Some(Arc::clone(key)),
            CertSource::Acme(hosts) => hosts.get(&name)?.resolve(hello),
            CertSource::OnDemand(policy) => policy.approved(&name)?.resolve(hello),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn static_source(host: &str) -> (CertSource, Arc<CertifiedKey>) {
        let issued = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
        let key = crate::certified_key_from_pem(
            issued.cert.pem().as_bytes(),
            issued.key_pair.serialize_pem().as_bytes(),
        )
        .unwrap();
        (CertSource::Static(Arc::clone(&key)), key)
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn picked(store: &CertStore, name: &str) -> Option<Arc<CertifiedKey>> {
        match store.table.load().lookup(&normalize_name(name))? {
            CertSource::Static(k) => Some(Arc::clone(k)),
            _ => None,
        }
    }

    #[tokio::test]
    async fn exact_then_wildcard_then_default_case_insensitive() {
        let store = CertStore::new(crate::test_settings());
        let (a, a_key) = static_source("a.test");
        let (w, w_key) = static_source("*.w.test");
        let (d, d_key) = static_source("d.test");
        store.set_service("a", &names(&["a.test"]), a);
        store.set_service("w", &names(&["*.w.test"]), w);
        assert!(Arc::ptr_eq(&picked(&store, "A.Test.").unwrap(), &a_key));
        assert!(Arc::ptr_eq(&picked(&store, "x.W.test").unwrap(), &w_key));
        assert!(picked(&store, "x.y.w.test").is_none());
        assert_eq!(
            store.prepare(Some("nope.test"), false).await,
            Err(Refusal::UnknownServerName)
        );
        store.set_service("d", &[], d);
        assert!(Arc::ptr_eq(&picked(&store, "nope.test").unwrap(), &d_key));
        assert!(store.prepare(Some("NOPE.test"), false).await.is_ok());
    }

    #[tokio::test]
    async fn default_name_is_the_first_tls_service_by_name_and_is_cleared() {
        let store = CertStore::new(crate::test_settings());
        assert_eq!(store.prepare(None, false).await, Err(Refusal::NoServerName));
        let (b, _) = static_source("b.test");
        let (a, _) = static_source("a.test");
        store.set_service("b", &names(&["b.test"]), b);
        store.set_service("off", &names(&["off.test"]), CertSource::Off);
        store.set_service("a", &names(&["a.test", "a2.test"]), a);
        assert_eq!(store.table.load().default_name.as_deref(), Some("a.test"));
        assert!(store.prepare(None, false).await.is_ok());
        store.remove_service("a");
        assert_eq!(store.table.load().default_name.as_deref(), Some("b.test"));
        store.remove_service("b");
        assert_eq!(store.table.load().default_name, None);
        assert_eq!(
            store.prepare(Some("off.test"), false).await,
            Err(Refusal::UnknownServerName)
        );
    }

    #[tokio::test]
    async fn acme_refuses_wildcards_and_reuses_live_hosts() {
        let store = CertStore::new(crate::test_settings());
        let target = AcmeTarget {
            directory_url: "https://127.0.0.1:1/dir".into(),
            cache_dir: "/nonexistent".into(),
        };
        let err = store
            .acme_source(&names(&["*.w.test"]), &target)
            .unwrap_err();
        assert_eq!(err.to_string(), "automatic TLS does not support wildcards");
        let CertSource::Acme(first) = store.acme_source(&names(&["A.test"]), &target).unwrap()
        else {
            panic!("acme source expected");
        };
        let CertSource::Acme(second) = store.acme_source(&names(&["a.test"]), &target).unwrap()
        else {
            panic!("acme source expected");
        };
        assert!(Arc::ptr_eq(&first["a.test"], &second["a.test"]));
        let CertSource::Acme(dotless) = store.acme_source(&names(&["localhost"]), &target).unwrap()
        else {
            panic!("acme source expected");
        };
        store.set_service("local", &names(&["localhost"]), CertSource::Acme(dotless));
        assert_eq!(
            store.prepare(Some("localhost"), false).await,
            Err(Refusal::Certificate(
                "acme/autocert: server name component count invalid".into()
            ))
        );
        store.set_service("a", &names(&["a.test"]), CertSource::Acme(first));
        assert_eq!(
            store.http01("a.test:8080", "/.well-known/acme-challenge/tok"),
            Some(Http01Answer::NotFound)
        );
        assert_eq!(store.http01("a.test", "/other"), None);
        assert_eq!(
            store.http01("b.test", "/.well-known/acme-challenge/tok"),
            None
        );
        assert_eq!(
            Http01Answer::NotFound.status_and_body(),
            (404, "acme/autocert: certificate cache miss\n".to_owned())
        );
    }
}
