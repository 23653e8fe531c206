//! HTTP/3 through the real binary (spec §10.7): an h3 + quinn client fetches through the proxy
//! with a custom certificate; `Alt-Svc` is on HTTPS (HTTP/1.1 and HTTP/2) responses with
//! `--http3` and absent without it and on plain HTTP; shutdown stays graceful.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use http_body_util::BodyExt as _;
use support::*;
use test_support::tls::TestCa;

/// Upper bound of one exchange in these tests.
const EXCHANGE: Duration = Duration::from_secs(15);

fn https_addr(proxy: &Proxy) -> SocketAddr {
    ([127, 0, 0, 1], proxy.https_port()).into()
}

/// Deploys service `a` for `a.test` with TLS and a certificate from `ca`.
fn deploy_tls(proxy: &Proxy, upstream: &Upstream, ca: &TestCa, dir: &Path) {
    let (crt, key) = ca.issue(&["a.test"]).write(dir, "a");
    let out = proxy.deploy_tls("a", &upstream.address(), "a.test", &crt, &key);
    assert_eq!(out.code(), Some(0), "{}", out.stderr_text());
}

fn client_tls(ca: &TestCa, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// What an exchange returned.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

/// One HTTP/3 request to `addr` (SNI `a.test`) for `path`, an absolute URI or a path on
/// `https://a.test`, with `body` when not empty.
async fn h3_request(
    addr: SocketAddr,
    ca: &TestCa,
    method: http::Method,
    path: &str,
    body: &'static [u8],
) -> Result<Answer, String> {
    let tls = client_tls(ca, &[b"h3"]);
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut endpoint =
        quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    // A missing server shows as a handshake that never completes: give up quickly.
    transport.max_idle_timeout(Some(
        Duration::from_secs(3)
            .try_into()
            .map_err(|e| format!("{e:?}"))?,
    ));
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    let exchange = async {
        let conn = endpoint
            .connect(addr, "a.test")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut driver, mut sender) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .map_err(|e| e.to_string())?;
        let drive = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        let req = http::Request::builder()
            .method(method)
            .uri(if path.starts_with('/') {
                format!("https://a.test{path}")
            } else {
                path.to_owned()
            })
            .header("content-length", body.len())
            .body(())
            .map_err(|e| e.to_string())?;
        let mut stream = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if !body.is_empty() {
            stream
                .send_data(Bytes::from_static(body))
                .await
                .map_err(|e| e.to_string())?;
        }
        stream.finish().await.map_err(|e| e.to_string())?;
        let resp = stream.recv_response().await.map_err(|e| e.to_string())?;
        let mut data = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
            let n = chunk.remaining();
            data.extend_from_slice(&chunk.copy_to_bytes(n));
        }
        drop(sender);
        drive.abort();
        Ok::<_, String>(Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: Bytes::from(data),
        })
    };
    let answer = tokio::time::timeout(EXCHANGE, exchange)
        .await
        .map_err(|_| "timed out".to_owned())?;
    endpoint.close(0u32.into(), b"");
    answer
}

/// One HTTPS request over TCP with ALPN `alpn` (HTTP/2 when `h2` is negotiated).
async fn tcp_request(addr: SocketAddr, ca: &TestCa, alpn: &[&[u8]], path: &str) -> Answer {
    let exchange = async {
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client_tls(ca, alpn)));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
        let stream = tls.connect(name, tcp).await.unwrap();
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = hyper_util::rt::TokioIo::new(stream);
        let empty = http_body_util::Empty::<Bytes>::new();
        let resp = if h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = http::Request::get(format!("https://a.test{path}"))
                .body(empty)
                .unwrap();
            sender.send_request(req).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let req = http::Request::get(path)
                .header("host", "a.test")
                .body(empty)
                .unwrap();
            sender.send_request(req).await.unwrap()
        };
        assert_eq!(resp.version() == http::Version::HTTP_2, h2);
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(EXCHANGE, exchange)
        .await
        .expect("HTTPS exchange in time")
}

#[tokio::test]
async fn h3_client_fetches_through_the_proxy_with_a_custom_certificate() {
    let proxy = Proxy::builder(BIN).run_arg("--http3").start();
    let upstream = Upstream::start("a");
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    deploy_tls(&proxy, &upstream, &ca, dir.path());

    let answer = h3_request(
        https_addr(&proxy),
        &ca,
        http::Method::GET,
        "/hello?x=1",
        b"",
    )
    .await
    .expect("HTTP/3 exchange");
    assert_eq!(answer.status, 200);
    let echo = test_support::client::Echo::parse(&answer.body).expect("upstream echo");
    assert_eq!(echo.name, "a");
    assert_eq!(echo.uri(), "/hello?x=1");
    assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
    // HTTP/3 responses do not advertise HTTP/3.
    assert!(answer.headers.get("alt-svc").is_none());

    // A request body reaches the target.
    let posted = h3_request(
        https_addr(&proxy),
        &ca,
        http::Method::POST,
        "/form",
        b"0123456789",
    )
    .await
    .expect("HTTP/3 POST");
    assert_eq!(posted.status, 200);
    let echo = test_support::client::Echo::parse(&posted.body).unwrap();
    assert_eq!((echo.method.as_str(), echo.body_len), ("POST", 10));

    // A request for a host no service has: the 404 page, without a body for HEAD (but its
    // bytes are logged, as upstream does).
    let missing = h3_request(
        https_addr(&proxy),
        &ca,
        http::Method::GET,
        "https://nobody.test/x",
        b"",
    )
    .await
    .expect("HTTP/3 GET for an unknown host");
    assert_eq!(missing.status, 404);
    assert!(!missing.body.is_empty());
    let head = h3_request(
        https_addr(&proxy),
        &ca,
        http::Method::HEAD,
        "https://nobody.test/y",
        b"",
    )
    .await
    .expect("HTTP/3 HEAD for an unknown host");
    assert_eq!(head.status, 404);
    assert!(head.body.is_empty(), "HEAD has no body: {:?}", head.body);
    let head_line = proxy
        .wait_for_log(
            |l| l["msg"] == "Request" && l["path"] == "/y",
            Duration::from_secs(5),
        )
        .expect("access log line for the HEAD");
    assert_eq!(head_line["host"], "nobody.test");
    assert_eq!(head_line["service"], "");
    assert!(head_line["resp_content_length"].as_u64().unwrap_or(0) > 0);

    let line = proxy
        .wait_for_log(
            |l| l["msg"] == "Request" && l["path"] == "/hello",
            Duration::from_secs(5),
        )
        .expect("access log line for the HTTP/3 request");
    assert_eq!(line["proto"], "HTTP/3.0");
    assert_eq!(line["scheme"], "https");
    assert_eq!(line["status"], 200);
    assert_eq!(line["service"], "a");
    assert_eq!(line["query"], "x=1");
    assert_eq!(line["client_addr"], "127.0.0.1");
    assert_eq!(line["req_content_length"], 0);
    let post = proxy
        .wait_for_log(
            |l| l["msg"] == "Request" && l["path"] == "/form",
            Duration::from_secs(5),
        )
        .expect("access log line for the HTTP/3 POST");
    assert_eq!(post["req_content_length"], 10);
}

#[tokio::test]
async fn alt_svc_is_advertised_on_https_only_with_http3() {
    let mut proxy = Proxy::builder(BIN).run_arg("--http3").start();
    let upstream = Upstream::start("a");
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    deploy_tls(&proxy, &upstream, &ca, dir.path());
    let expected = format!("h3=\":{}\"; ma=2592000", proxy.https_port());

    for alpn in [&[b"http/1.1".as_slice()][..], &[b"h2".as_slice()][..]] {
        let answer = tcp_request(https_addr(&proxy), &ca, alpn, "/").await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(
            answer.headers.get("alt-svc").and_then(|v| v.to_str().ok()),
            Some(expected.as_str()),
            "ALPN {alpn:?}"
        );
    }
    // Error pages get it too (404 from the target, 503 would need a paused service).
    let missing = tcp_request(https_addr(&proxy), &ca, &[b"http/1.1"], "/status?code=404").await;
    assert_eq!(missing.status, 404);
    assert!(missing.headers.contains_key("alt-svc"));
    // Plain HTTP: redirected to HTTPS, without Alt-Svc.
    let plain = get(&proxy, "a.test", "/").await;
    assert_eq!(plain.status, 301);
    assert!(plain.header("alt-svc").is_none());

    // Graceful stop with HTTP/3 on: exits 0 with the usual lines.
    proxy.terminate();
    let status = proxy.wait_exit(Duration::from_secs(15)).expect("exits");
    assert_eq!(status.code(), Some(0));
    assert!(proxy
        .log_json()
        .iter()
        .any(|l| l["msg"] == "Server stopped"));
}

#[tokio::test]
async fn without_http3_there_is_no_alt_svc_and_no_udp_listener() {
    let proxy = Proxy::builder(BIN).start();
    let upstream = Upstream::start("a");
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    deploy_tls(&proxy, &upstream, &ca, dir.path());

    let answer = tcp_request(https_addr(&proxy), &ca, &[b"h2"], "/").await;
    assert_eq!(answer.status, 200);
    assert!(answer.headers.get("alt-svc").is_none());
    assert!(
        h3_request(https_addr(&proxy), &ca, http::Method::GET, "/", b"")
            .await
            .is_err(),
        "nothing answers QUIC"
    );
}

#[tokio::test]
async fn shutdown_waits_for_an_http3_request_in_flight() {
    let mut proxy = Proxy::builder(BIN).run_arg("--http3").start();
    let upstream = Upstream::start("a");
    let ca = Arc::new(TestCa::new());
    let dir = tempfile::tempdir().unwrap();
    deploy_tls(&proxy, &upstream, &ca, dir.path());

    let addr = https_addr(&proxy);
    let slow = {
        let ca = Arc::clone(&ca);
        tokio::spawn(
            async move { h3_request(addr, &ca, http::Method::GET, "/slow?ms=1500", b"").await },
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            upstream.app_requests() >= 1
        })
        .await,
        "the slow request reached the target"
    );
    proxy.terminate();
    let answer = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(answer.status, 200);
    let status = proxy.wait_exit(Duration::from_secs(15)).expect("exits");
    assert_eq!(status.code(), Some(0));
    assert!(!proxy
        .log_json()
        .iter()
        .any(|l| l["msg"] == "Closing active connections"));
}
