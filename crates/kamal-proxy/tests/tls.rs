//! TLS through the real binary (spec §10): custom certificates chosen by SNI (exact, wildcard,
//! default when SNI is missing, refused when unknown), HTTP/2 over TLS, deploy-time key checks,
//! HTTP-01 answers, bad handshakes, and ACME issuance from pebble on loopback.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use test_support::pebble::Pebble;
use test_support::tls::{handshake, https_get, TestCa, Verify};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1: &[&[u8]] = &[b"http/1.1"];

fn https_addr(proxy: &Proxy) -> SocketAddr {
    ([127, 0, 0, 1], proxy.https_port()).into()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[tokio::test]
async fn custom_certificates_are_chosen_by_sni_and_http2_works() {
    let proxy = start_proxy();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let a_cert = ca.issue(&["a.test"]);
    let w_cert = ca.issue(&["*.w.test"]);
    let (a_crt, a_key) = a_cert.write(dir.path(), "a");
    let (w_crt, w_key) = w_cert.write(dir.path(), "w");
    let a = Upstream::start("a");
    let w = Upstream::start("w");
    proxy
        .deploy_tls_async("a", &a.address(), "a.test", &a_crt, &a_key)
        .await;
    proxy
        .deploy_tls_async("w", &w.address(), "*.w.test", &w_crt, &w_key)
        .await;
    let addr = https_addr(&proxy);
    let roots = Verify::Roots(Arc::new(ca.roots()));

    // Exact host, verified against the CA; HTTP/2 negotiated and spoken.
    let reply = https_get(addr, Some("a.test"), "a.test", "/", roots.clone(), H2_H1)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.leaf, a_cert.cert_der);
    // HTTP/1.1 when that is all the client offers.
    let reply = https_get(addr, Some("a.test"), "a.test", "/", roots.clone(), H1)
        .await
        .unwrap();
    assert_eq!(reply.version, http::Version::HTTP_11);
    // Case-insensitive SNI (§14.1), wildcard certificate for one label.
    let reply = https_get(
        addr,
        Some("X.W.test"),
        "x.w.test",
        "/",
        Verify::Nothing,
        H2_H1,
    )
    .await
    .unwrap();
    assert_eq!(reply.leaf, w_cert.cert_der);
    assert_eq!(reply.status, 200);
    // No SNI: the default TLS host name (first TLS service by name: "a").
    let reply = https_get(addr, None, "a.test", "/", Verify::Nothing, H2_H1)
        .await
        .unwrap();
    assert_eq!(reply.leaf, a_cert.cert_der);
    assert_eq!(reply.status, 200);
    // Unknown SNI: refused.
    assert!(handshake(addr, Some("nope.test"), Verify::Nothing, H2_H1)
        .await
        .is_err());

    // A service with TLS off: its SNI is refused, and reaching it over another service's
    // TLS connection is a 503 (spec §7.9).
    let plain = Upstream::start("plain");
    proxy
        .deploy_async(
            "plain",
            &["--target", &plain.address(), "--host", "plain.test"],
        )
        .await;
    assert!(handshake(addr, Some("plain.test"), Verify::Nothing, H1)
        .await
        .is_err());
    let reply = https_get(addr, Some("a.test"), "plain.test", "/", Verify::Nothing, H1)
        .await
        .unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(plain.app_requests(), 0);
}

#[tokio::test]
async fn a_mismatched_key_fails_the_deploy_and_the_old_service_keeps_serving() {
    let proxy = start_proxy();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let good = ca.issue(&["a.test"]);
    let other = ca.issue(&["a.test"]);
    let (crt, key) = good.write(dir.path(), "good");
    let (_, other_key) = other.write(dir.path(), "other");
    let a = Upstream::start("a");
    proxy
        .deploy_tls_async("a", &a.address(), "a.test", &crt, &key)
        .await;
    let b = Upstream::start("b");
    let out = proxy
        .cli_async(&[
            "deploy",
            "a",
            "--target",
            &b.address(),
            "--host",
            "a.test",
            "--tls",
            "--tls-certificate-path",
            path_str(&crt),
            "--tls-private-key-path",
            path_str(&other_key),
        ])
        .await;
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr_text().contains("unable to load certificate"),
        "{}",
        out.stderr_text()
    );
    // The harness reads the log on its own thread: the line may trail the CLI's answer.
    assert!(proxy
        .wait_for_log(
            |l| l["msg"] == "Error loading TLS certificate",
            std::time::Duration::from_secs(5)
        )
        .is_some());
    let reply = https_get(
        https_addr(&proxy),
        Some("a.test"),
        "a.test",
        "/",
        Verify::Nothing,
        H2_H1,
    )
    .await
    .unwrap();
    assert_eq!(reply.leaf, good.cert_der);
    assert_eq!(a.app_requests(), 1, "the old target still serves");
}

#[tokio::test]
async fn acme_services_answer_http01_and_refuse_wildcards() {
    let proxy = start_proxy();
    let a = Upstream::start("a");
    proxy
        .deploy_async(
            "a",
            &[
                "--target",
                &a.address(),
                "--host",
                "a.test",
                "--tls",
                "--tls-acme-directory",
                "https://127.0.0.1:9/dir",
            ],
        )
        .await;
    let reply = get(&proxy, "a.test", "/.well-known/acme-challenge/unknown").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.text(), "acme/autocert: certificate cache miss\n");
    assert_eq!(a.app_requests(), 0);

    let out = proxy
        .cli_async(&[
            "deploy",
            "w",
            "--target",
            &a.address(),
            "--host",
            "*.w.test",
            "--tls",
        ])
        .await;
    assert!(
        out.stderr_text()
            .contains("automatic TLS does not support wildcards"),
        "{}",
        out.stderr_text()
    );
}

#[tokio::test]
async fn bad_handshakes_do_not_disturb_other_clients() {
    let proxy = start_proxy();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let cert = ca.issue(&["a.test"]);
    let (crt, key) = cert.write(dir.path(), "a");
    let a = Upstream::start("a");
    proxy
        .deploy_tls_async("a", &a.address(), "a.test", &crt, &key)
        .await;
    let addr = https_addr(&proxy);
    // Garbage instead of a ClientHello: the proxy closes the connection.
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), garbage.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "closed or answered with an alert"
    );
    // A stalled handshake (connected, silent) and 1,000 handshakes for random names.
    let _stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let rss_before = proxy.rss_kib().expect("server RSS");
    let mut set = tokio::task::JoinSet::new();
    for i in 0..1000 {
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
    let reply = https_get(addr, Some("a.test"), "a.test", "/", Verify::Nothing, H2_H1)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let rss_after = proxy.rss_kib().expect("server RSS");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// A `kamal-proxy run` on fixed ports with extra environment (the harness clears it), so the
/// ACME client can trust pebble's own HTTPS certificate through `SSL_CERT_FILE`.
struct Server {
    child: Option<Child>,
    home: tempfile::TempDir,
    http: u16,
    https: u16,
    env: Vec<(String, String)>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Pebble validating against a `kamal-proxy run` on fresh ports that trusts pebble's own
/// HTTPS certificate.
fn pebble_and_server() -> (Pebble, Server) {
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https);
    let server = Server::start(
        tempfile::tempdir().unwrap(),
        http,
        https,
        vec![(
            "SSL_CERT_FILE".into(),
            pebble.api_ca_file().to_string_lossy().into_owned(),
        )],
    );
    (pebble, server)
}

impl Server {
    fn https_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.https).into()
    }

    fn start(home: tempfile::TempDir, http: u16, https: u16, env: Vec<(String, String)>) -> Server {
        let mut server = Server {
            child: None,
            home,
            http,
            https,
            env,
        };
        server.spawn();
        server
    }

    fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("HOME", self.home.path())
            .env("TMPDIR", self.home.path())
            .env("KAMAL_PROXY_SOCKET", self.home.path().join("kp.sock"));
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.home.path().join("server.log")).unwrap();
        self.child = Some(
            self.command()
                .args(["run", "--debug", "--http-port", &self.http.to_string()])
                .args(["--https-port", &self.https.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log().contains("Server started") {
            assert!(
                Instant::now() < deadline,
                "server did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        std::fs::remove_file(self.home.path().join("server.log")).unwrap();
        self.spawn();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("server.log")).unwrap_or_default()
    }

    fn deploy(&self, args: &[&str]) {
        let out = self.command().arg("deploy").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "deploy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn cache_root(&self) -> PathBuf {
        self.home.path().join(".config/kamal-proxy/certs")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_certificates_from_pebble_per_service_and_reused_after_restart() {
    let (pebble, mut server) = pebble_and_server();
    let one = Upstream::start("one");
    let two = Upstream::start("two");
    let directory = pebble.directory_url();
    for (name, upstream, host) in [("one", &one, "one.test"), ("two", &two, "two.test")] {
        server.deploy(&[
            name,
            "--target",
            &upstream.address(),
            "--host",
            host,
            "--tls",
            "--tls-acme-directory",
            &directory,
        ]);
    }
    let addr = server.https_addr();
    let roots = Verify::Roots(Arc::new(pebble.issuing_root().await.unwrap()));
    let mut leaves = Vec::new();
    for (host, name) in [("one.test", "one"), ("two.test", "two")] {
        let reply = https_get(addr, Some(host), host, "/", roots.clone(), H2_H1)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}\n{}\n{}", server.log(), pebble.log()));
        assert_eq!(reply.status, 200);
        assert_eq!(reply.version, http::Version::HTTP_2);
        assert!(reply.text().contains(name), "{}", reply.text());
        leaves.push(reply.leaf);
    }
    assert_ne!(leaves[0], leaves[1]);
    assert_eq!(pebble.orders(), 2);
    let cache = kamal_acme::cache_dir(&server.cache_root(), &directory);
    assert!(cache.join("one.test").is_file());

    // Restart: the state is restored and certificates come from the cache.
    server.restart();
    let reply = https_get(addr, Some("one.test"), "one.test", "/", roots, H2_H1)
        .await
        .unwrap();
    assert_eq!(reply.leaf, leaves[0]);
    assert_eq!(pebble.orders(), 2, "no new order after a restart");
}

/// An on-demand check endpoint: 200 for hosts starting with `ok`, 403 `nope` otherwise;
/// counts the checks per verdict.
async fn check_server() -> (u16, Arc<[std::sync::atomic::AtomicUsize; 2]>) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts: Arc<[std::sync::atomic::AtomicUsize; 2]> = Arc::new(Default::default());
    let seen = Arc::clone(&counts);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let Some(head) = test_support::client::read_request_head(&mut stream).await else {
                    return;
                };
                let allowed = head.contains("host=ok");
                seen[usize::from(!allowed)].fetch_add(1, Ordering::SeqCst);
                let reply: &[u8] = if allowed {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 403 Forbidden\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope"
                };
                let _ = stream.write_all(reply).await;
            });
        }
    });
    (port, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_tls_issues_for_approved_hosts_and_rate_limits_denied_ones() {
    use std::sync::atomic::Ordering;
    let (pebble, server) = pebble_and_server();
    let (check_port, counts) = check_server().await;
    let app = Upstream::start("app");
    let check_url = format!("http://127.0.0.1:{check_port}/check");
    server.deploy(&[
        "od",
        "--target",
        &app.address(),
        "--tls",
        "--tls-on-demand-url",
        &check_url,
        "--tls-acme-directory",
        &pebble.directory_url(),
    ]);
    let addr = server.https_addr();
    let roots = Verify::Roots(Arc::new(pebble.issuing_root().await.unwrap()));
    let reply = https_get(addr, Some("ok.od.test"), "ok.od.test", "/", roots, H2_H1)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_eq!(reply.status, 200);
    assert_eq!(counts[0].load(Ordering::SeqCst), 1);

    for _ in 0..5 {
        assert!(handshake(addr, Some("no.od.test"), Verify::Nothing, H2_H1)
            .await
            .is_err());
    }
    assert_eq!(
        counts[1].load(Ordering::SeqCst),
        1,
        "denials are remembered"
    );
    assert_eq!(pebble.orders(), 1);
    let log = wait_for_log(&server, "TLS on-demand check denied host").await;
    assert!(log.contains("TLS on-demand check denied host"), "{log}");
}

/// The path form of `--tls-on-demand-url` asks the service's own application (spec §10.6.2
/// step 4): `GET <path>?host=<name>` with `Host: <name>` reaches the target; 200 approves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_path_form_asks_the_service_itself() {
    let (pebble, server) = pebble_and_server();
    let app = Upstream::start("app");
    server.deploy(&[
        "pf",
        "--target",
        &app.address(),
        "--tls",
        "--tls-on-demand-url=/status?code=200",
        "--tls-acme-directory",
        &pebble.directory_url(),
    ]);
    let addr = server.https_addr();
    let roots = Verify::Roots(Arc::new(pebble.issuing_root().await.unwrap()));
    let reply = https_get(addr, Some("ok.pf.test"), "ok.pf.test", "/", roots, H2_H1)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_eq!(reply.status, 200);
    let asked = app
        .app_request_log()
        .into_iter()
        .find(|r| r.path() == "/status")
        .expect("the check reached the application");
    assert_eq!(asked.uri, "/status?code=200&host=ok.pf.test");
    assert_eq!(
        asked.headers.get("host").and_then(|h| h.to_str().ok()),
        Some("ok.pf.test")
    );
    assert_eq!(pebble.orders(), 1);

    // The same service answering 403: the host is refused and nothing is ordered.
    server.deploy(&[
        "pf",
        "--target",
        &app.address(),
        "--tls",
        "--tls-on-demand-url=/status?code=403",
        "--tls-acme-directory",
        &pebble.directory_url(),
    ]);
    assert!(handshake(addr, Some("no.pf.test"), Verify::Nothing, H2_H1)
        .await
        .is_err());
    assert_eq!(pebble.orders(), 1);
    let log = wait_for_log(&server, "TLS on-demand check denied host").await;
    assert!(log.contains("TLS on-demand check denied host"), "{log}");
}

/// The server's log once it contains `needle` (log lines reach stdout asynchronously), or as
/// it stands after five seconds.
async fn wait_for_log(server: &Server, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let log = server.log();
        if log.contains(needle) || std::time::Instant::now() >= deadline {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
