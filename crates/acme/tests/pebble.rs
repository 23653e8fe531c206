//! ACME against a real ACME server: pebble on loopback with real challenge validation
//! (`.ci/run` installs Debian's `pebble`). A TLS listener and a plain-HTTP listener serve the
//! challenges from the `CertStore`, exactly as the proxy's listeners do.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kamal_acme::{AcmeSettings, AcmeTarget, BoxFuture, CertStore, HostCheck, TlsAcceptor};
use test_support::pebble::Pebble;
use test_support::tls::{handshake, TestCa, Verify};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;

const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A port nothing listens on (validation of the other challenge type fails there).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// The TLS and HTTP listeners of one "proxy".
struct Listeners {
    tls: TcpListener,
    http: TcpListener,
}

impl Listeners {
    async fn bind() -> Listeners {
        Listeners {
            tls: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn tls_port(&self) -> u16 {
        self.tls.local_addr().unwrap().port()
    }

    fn http_port(&self) -> u16 {
        self.http.local_addr().unwrap().port()
    }

    /// Serves both listeners from `store` in background tasks; returns the TLS address.
    fn serve(self, store: Arc<CertStore>) -> SocketAddr {
        let addr = self.tls.local_addr().unwrap();
        let acceptor = TlsAcceptor::new(Arc::clone(&store), Duration::from_secs(10));
        tokio::spawn(async move {
            while let Ok((stream, _)) = self.tls.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(Some(mut tls)) = acceptor.accept(stream).await {
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                });
            }
        });
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = self.http.accept().await {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let Some(head) = test_support::client::read_request_head(&mut stream).await
                    else {
                        return;
                    };
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let host = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("host").then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default();
                    let (status, body) = match store.http01(&host, &path) {
                        Some(answer) => answer.status_and_body(),
                        None => (404, "not an ACME request".to_owned()),
                    };
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        addr
    }
}

fn settings(pebble: &Pebble) -> AcmeSettings {
    kamal_acme::install_crypto_provider();
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(pebble.api_roots())
        .with_no_client_auth();
    AcmeSettings {
        client: Arc::new(client),
        issuance_timeout: Duration::from_secs(120),
        retry_after: Duration::from_secs(1),
    }
}

fn target(pebble: &Pebble, cache_root: &Path) -> AcmeTarget {
    let directory = pebble.directory_url();
    AcmeTarget {
        cache_dir: kamal_acme::cache_dir(cache_root, &directory),
        directory_url: directory,
    }
}

fn hosts(list: &[&str]) -> Vec<String> {
    list.iter().map(|h| h.to_string()).collect()
}

/// Handshakes for `host` and verifies the certificate against pebble's issuing root.
async fn verified_leaf(pebble: &Pebble, addr: SocketAddr, host: &str) -> Vec<u8> {
    let roots = pebble.issuing_root().await.expect("pebble root");
    let (leaf, alpn) = handshake(addr, Some(host), Verify::Roots(Arc::new(roots)), H2_H1)
        .await
        .unwrap_or_else(|e| panic!("handshake for {host}: {e}\npebble log:\n{}", pebble.log()));
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    leaf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_lazily_and_a_restart_reuses_the_cache() {
    let listeners = Listeners::bind().await;
    let pebble = Pebble::start(closed_port(), listeners.tls_port());
    let cache = tempfile::tempdir().unwrap();
    let store = CertStore::new(settings(&pebble));
    let target = target(&pebble, cache.path());
    let source = store
        .acme_source(&hosts(&["alpn.test", "two.test"]), &target)
        .unwrap();
    store.set_service("web", &hosts(&["alpn.test", "two.test"]), source);
    let addr = listeners.serve(Arc::clone(&store));
    // Lazy: nothing is ordered at deploy time.
    assert_eq!(pebble.orders(), 0);

    // Concurrent first handshakes wait for the same order.
    let (a, b) = tokio::join!(
        verified_leaf(&pebble, addr, "alpn.test"),
        verified_leaf(&pebble, addr, "alpn.test")
    );
    assert_eq!(a, b);
    assert_eq!(pebble.orders(), 1);
    assert!(
        !pebble.log().contains("validate w/ HTTP"),
        "only TLS-ALPN-01 was used"
    );
    let other = verified_leaf(&pebble, addr, "two.test").await;
    assert_ne!(a, other, "one certificate per host name");
    assert_eq!(pebble.orders(), 2);
    let cached = std::fs::read_to_string(target.cache_dir.join("alpn.test")).unwrap();
    assert!(
        cached.starts_with("-----BEGIN EC PRIVATE KEY-----"),
        "{cached}"
    );
    assert!(target.cache_dir.join("acme_account+key").is_file());

    // A new process (new store) over the same cache: same certificate, no new order.
    let listeners = Listeners::bind().await;
    let store = CertStore::new(settings(&pebble));
    let source = store.acme_source(&hosts(&["alpn.test"]), &target).unwrap();
    store.set_service("web", &hosts(&["alpn.test"]), source);
    let addr = listeners.serve(store);
    assert_eq!(verified_leaf(&pebble, addr, "alpn.test").await, a);
    assert_eq!(pebble.orders(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_is_used_when_tls_alpn_01_cannot_succeed() {
    let listeners = Listeners::bind().await;
    // TLS-ALPN-01 validation goes to a closed port; only HTTP-01 can work.
    let pebble = Pebble::start(listeners.http_port(), closed_port());
    let cache = tempfile::tempdir().unwrap();
    let store = CertStore::new(settings(&pebble));
    let target = target(&pebble, cache.path());
    let source = store.acme_source(&hosts(&["http.test"]), &target).unwrap();
    store.set_service("web", &hosts(&["http.test"]), source);
    let addr = listeners.serve(store);
    verified_leaf(&pebble, addr, "http.test").await;
    assert!(target.cache_dir.join("http.test").is_file());
    let log = pebble.log();
    // The TLS-ALPN-01 order failed first, then HTTP-01 validated against our HTTP listener.
    assert!(log.contains("set INVALID by invalid authz"), "{log}");
    assert!(log.contains("Attempting to validate w/ HTTP"), "{log}");
    assert_eq!(pebble.orders(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_in_upstreams_layout_is_used_as_is() {
    // No CA is reachable: the certificate can only come from the cache.
    let cache = tempfile::tempdir().unwrap();
    let target = AcmeTarget {
        directory_url: "https://127.0.0.1:9/dir".into(),
        cache_dir: kamal_acme::cache_dir(cache.path(), ""),
    };
    let ca = TestCa::new();
    let issued = ca.issue(&["cached.test"]);
    std::fs::create_dir_all(&target.cache_dir).unwrap();
    let sec1 = {
        // Upstream writes `EC PRIVATE KEY` (SEC1); openssl converts our PKCS#8 test key.
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, &issued.key_pem).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["ec", "-in"])
            .arg(&key)
            .output()
            .expect("openssl");
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{sec1}");
    std::fs::write(
        target.cache_dir.join("cached.test"),
        format!("{sec1}{}{}", issued.cert_pem, ca.cert_pem()),
    )
    .unwrap();

    kamal_acme::install_crypto_provider();
    let store = CertStore::new(AcmeSettings {
        issuance_timeout: Duration::from_secs(10),
        ..AcmeSettings::from_environment()
    });
    let source = store
        .acme_source(&hosts(&["cached.test"]), &target)
        .unwrap();
    store.set_service("web", &hosts(&["cached.test"]), source);
    let listeners = Listeners::bind().await;
    let addr = listeners.serve(store);
    let (leaf, _) = handshake(
        addr,
        Some("cached.test"),
        Verify::Roots(Arc::new(ca.roots())),
        H2_H1,
    )
    .await
    .unwrap();
    assert_eq!(leaf, issued.cert_der);
}

#[derive(Debug, Default)]
struct AllowOk {
    calls: AtomicUsize,
}

impl HostCheck for AllowOk {
    fn check(&self, host: &str) -> BoxFuture<Result<(), String>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let verdict = if host.starts_with("ok") {
            Ok(())
        } else {
            Err(format!(
                "{host} is not allowed to get a certificate (status: 403, body: \"\")"
            ))
        };
        Box::pin(async move { verdict })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_allows_approved_hosts_and_remembers_denials() {
    let listeners = Listeners::bind().await;
    let pebble = Pebble::start(closed_port(), listeners.tls_port());
    let cache = tempfile::tempdir().unwrap();
    let store = CertStore::new(settings(&pebble));
    let check = Arc::new(AllowOk::default());
    let source = store.on_demand_source(&target(&pebble, cache.path()), check.clone());
    store.set_service("web", &[], source);
    let addr = listeners.serve(store);

    verified_leaf(&pebble, addr, "ok.on-demand.test").await;
    assert_eq!(check.calls.load(Ordering::SeqCst), 1);

    for _ in 0..5 {
        let refused = handshake(addr, Some("no.on-demand.test"), Verify::Nothing, H2_H1).await;
        assert!(refused.is_err());
    }
    // One check for the denied host: the denial is remembered.
    assert_eq!(check.calls.load(Ordering::SeqCst), 2);
    assert_eq!(pebble.orders(), 1);

    // A flood of random names: each is checked once, none is ordered, all are refused.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        set.spawn(async move {
            let name = format!("r{i}.random.test");
            handshake(addr, Some(&name), Verify::Nothing, H2_H1)
                .await
                .is_err()
        });
    }
    while let Some(refused) = set.join_next().await {
        assert!(refused.unwrap());
    }
    assert_eq!(check.calls.load(Ordering::SeqCst), 202);
    assert_eq!(pebble.orders(), 1);
    // The approved host is still served.
    verified_leaf(&pebble, addr, "ok.on-demand.test").await;
}
