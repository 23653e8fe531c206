//! Forwarding against real upstream servers on 127.0.0.1.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::*;
use crate::inflight::InFlight;

/// Upper bound for every wait in these tests.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("test step timed out")
}

/// Polls `check` until it holds or the limit passes.
async fn eventually(mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !check() {
        assert!(Instant::now() < deadline, "condition not reached in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A raw TCP upstream: every accepted connection is handed to `handler` in its own task.
async fn raw_upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handler(stream));
        }
    });
    addr
}

/// A hyper HTTP/1.1 upstream (with upgrades) serving `handler`.
async fn hyper_upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Reads an HTTP head (up to the blank line) from a raw stream.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 64 * 1024, "head too large");
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn target(addr: SocketAddr) -> ForwardTarget {
    ForwardTarget::new(addr.to_string().parse().unwrap())
}

fn ctx() -> ForwardContext {
    ForwardContext {
        client_addr: "192.0.2.9:5555".parse().unwrap(),
        tls: false,
        forward_headers: false,
        target_timeout: Duration::from_secs(5),
        upstream_path: None,
    }
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", "app.test")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn body_text<B>(response: Response<ProxyBody<B>>) -> Result<String, ForwardError> {
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// An upstream that echoes the request line and headers it received as its body.
async fn echo_upstream() -> SocketAddr {
    hyper_upstream(|req: Request<Incoming>| async move {
        let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (name, value) in req.headers() {
            text.push_str(&format!("{name}: {}\n", value.to_str().unwrap()));
        }
        Response::builder()
            .header("connection", "x-private")
            .header("x-private", "1")
            .header("keep-alive", "timeout=5")
            .body(Full::new(Bytes::from(text)))
            .unwrap()
    })
    .await
}

/// Compiles only if the forward future can move between threads, as hyper's server needs.
#[allow(dead_code)]
fn forward_future_is_send<'a>(
    forwarder: &'a Forwarder<Incoming>,
    request: Request<Incoming>,
    target: &'a ForwardTarget,
    lease: crate::inflight::Lease,
    context: &'a ForwardContext,
) -> impl Future<Output = Result<Response<ProxyBody<Incoming>>, ForwardError>> + Send + 'a {
    forwarder.forward(request, target, lease, context)
}

#[test]
fn bodies_and_errors_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ProxyBody<Incoming>>();
    send_sync::<ForwardError>();
    send_sync::<Forwarder<Incoming>>();
}

#[tokio::test]
async fn forwards_with_rewritten_headers_and_path() {
    let addr = echo_upstream().await;
    let forwarder = Forwarder::new();
    let tracker = InFlight::new();
    let mut c = ctx();
    c.upstream_path = Some(PathAndQuery::from_static("/users/1?x=1;y=2&z=%zz"));
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/users/1?x=1;y=2&z=%zz")
        .header("host", "app.test:8080")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "gone")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let response = within(forwarder.forward(req, &target(addr), tracker.lease(), &c))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("date"));
    assert!(!response.headers().contains_key("connection"));
    assert!(!response.headers().contains_key("x-private"));
    assert!(!response.headers().contains_key("keep-alive"));
    assert_eq!(tracker.count(), 1, "the body holds the lease");
    let text = within(body_text(response)).await.unwrap();
    assert_eq!(tracker.count(), 0, "the lease ends with the body");

    assert!(
        text.starts_with("POST /users/1?x=1;y=2&z=%zz HTTP/1.1\n"),
        "{text}"
    );
    assert!(text.contains("host: app.test:8080\n"), "{text}");
    assert!(text.contains("x-forwarded-for: 192.0.2.9\n"), "{text}");
    assert!(text.contains("x-forwarded-host: app.test:8080\n"), "{text}");
    assert!(text.contains("x-forwarded-proto: http\n"), "{text}");
    assert!(
        text.contains(&format!("x-kamal-target: {addr}\n")),
        "{text}"
    );
    assert!(!text.contains("x-hop"), "{text}");
    assert!(!text.contains("forwarded: for"), "{text}");
    assert!(!text.contains("user-agent"), "{text}");
}

#[tokio::test]
async fn http2_request_goes_upstream_as_http11_with_host_from_authority() {
    let addr = echo_upstream().await;
    let forwarder = Forwarder::new();
    let tracker = InFlight::new();
    let req = Request::builder()
        .version(Version::HTTP_2)
        .uri("https://h2.test:8443/p?q=1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = within(forwarder.forward(req, &target(addr), tracker.lease(), &ctx()))
        .await
        .unwrap();
    let text = within(body_text(response)).await.unwrap();
    assert!(text.starts_with("GET /p?q=1 HTTP/1.1\n"), "{text}");
    assert!(text.contains("host: h2.test:8443\n"), "{text}");
}

#[tokio::test]
async fn streamed_chunks_arrive_one_by_one() {
    let (next_tx, next_rx) = tokio::sync::mpsc::channel::<()>(1);
    let next_rx = Arc::new(tokio::sync::Mutex::new(next_rx));
    let addr = raw_upstream(move |mut stream| {
        let next_rx = Arc::clone(&next_rx);
        async move {
            read_head(&mut stream).await;
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                      transfer-encoding: chunked\r\n\r\n",
                )
                .await
                .unwrap();
            let mut next_rx = next_rx.lock().await;
            for i in 0..3 {
                let event = format!("data: {i}\n\n");
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                stream.write_all(chunk.as_bytes()).await.unwrap();
                // The next event is only written once the client has seen this one, so
                // buffering anywhere in the forwarder would stall the test.
                if next_rx.recv().await.is_none() {
                    return;
                }
            }
            stream.write_all(b"0\r\n\r\n").await.unwrap();
        }
    })
    .await;
    let forwarder = Forwarder::new();
    let tracker = InFlight::new();
    let response =
        within(forwarder.forward(get("/events"), &target(addr), tracker.lease(), &ctx()))
            .await
            .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(!response.headers().contains_key("transfer-encoding"));
    let mut body = response.into_body();
    for i in 0..3 {
        let frame = within(body.frame()).await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), format!("data: {i}\n\n"));
        next_tx.send(()).await.unwrap();
    }
    assert!(within(body.frame()).await.is_none());
    assert_eq!(tracker.count(), 0);
}

#[tokio::test]
async fn trailers_are_relayed_and_announced() {
    let addr = raw_upstream(|mut stream| async move {
        let head = read_head(&mut stream).await;
        assert!(head.to_lowercase().contains("te: trailers"), "{head}");
        let _ = stream
            .write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: X-Checksum\r\n\r\n\
                  2\r\nok\r\n0\r\nX-Checksum: abc\r\n\r\n",
            )
            .await;
    })
    .await;
    let forwarder = Forwarder::new();
    let req = Request::builder()
        .uri("/")
        .header("host", "app.test")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = within(forwarder.forward(req, &target(addr), InFlight::new().lease(), &ctx()))
        .await
        .unwrap();
    assert_eq!(response.headers()["trailer"], "X-Checksum");
    let collected = within(response.into_body().collect()).await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
    assert_eq!(collected.to_bytes(), "ok");
}

/// An upstream that reads requests and never answers.
async fn silent_upstream() -> SocketAddr {
    raw_upstream(|mut stream| async move {
        read_head(&mut stream).await;
        let mut rest = [0u8; 1024];
        while stream.read(&mut rest).await.is_ok_and(|n| n > 0) {}
    })
    .await
}

#[tokio::test]
async fn response_header_timeout_is_504() {
    let addr = silent_upstream().await;
    let forwarder = Forwarder::new();
    let tracker = InFlight::new();
    let mut c = ctx();
    c.target_timeout = Duration::from_millis(100);
    let started = Instant::now();
    let error = within(forwarder.forward(get("/slow"), &target(addr), tracker.lease(), &c))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ForwardError::ResponseTimeout { .. }),
        "{error:?}"
    );
    assert_eq!(error.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(tracker.count(), 0);
}

#[tokio::test]
async fn target_timeout_starts_after_the_request_body_is_sent() {
    let addr = hyper_upstream(|req: Request<Incoming>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Response::new(Full::new(body))
    })
    .await;
    let forwarder: Forwarder<UnsyncBoxBody<Bytes, Infallible>> = Forwarder::new();
    let tracker = InFlight::new();
    let mut c = ctx();
    c.target_timeout = Duration::from_millis(150);
    // The body takes longer to upload than the target timeout; only the wait for the
    // response after it counts.
    let frames = futures_util::stream::unfold(0u8, |i| async move {
        if i == 3 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'a' + i]))),
            i + 1,
        ))
    });
    let req = Request::builder()
        .method(Method::POST)
        .uri("/upload")
        .header("host", "app.test")
        .body(BodyExt::boxed_unsync(StreamBody::new(frames)))
        .unwrap();
    let response = within(forwarder.forward(req, &target(addr), tracker.lease(), &c))
        .await
        .unwrap();
    assert_eq!(within(body_text(response)).await.unwrap(), "abc");
}

#[tokio::test]
async fn connection_refused_is_502() {
    // Port 1: nothing listens there, and unlike a port just freed, no other test can take it
    // meanwhile and no connect can meet itself on it (it is outside the ephemeral range).
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let forwarder = Forwarder::new();
    let tracker = InFlight::new();
    let error = within(forwarder.forward(get("/"), &target(addr), tracker.lease(), &ctx()))
        .await
        .unwrap_err();
    assert!(matches!(error, ForwardError::Upstream { .. }), "{error:?}");
    assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
    assert!(
        error.to_string().to_lowercase().contains("refused"),
        "{error}"
    );
    assert_eq!(tracker.count(), 0);
}

#[tokio::test]
async fn malformed_upstream_response_is_502() {
    let addr = raw_upstream(|mut stream| async move {
        read_head(&mut stream).await;
        let _ = stream.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
    })
    .await;
    let forwarder = Forwarder::new();
    let error = within(forwarder.forward(get("/"), &target(addr), InFlight::new().lease(), &ctx()))
        .await
        .unwrap_err();
    assert_eq!(error.status(), StatusCode::BAD_GATEWAY, "{error:?}");
}

#[tokio::test]
async fn upstream_closing_mid_body_fails_the_body() {
    let addr = raw_upstream(|mut stream| async move {
        read_head(&mut stream).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten..")
            .await;
    })
    .await;
    let forwarder = Forwarder::new();
    let tracker = InFlight::new();
    let response = within(forwarder.forward(get("/"), &target(addr), tracker.lease(), &ctx()))
        .await
        .unwrap();
    let error = within(body_text(response)).await.unwrap_err();
    assert!(matches!(error, ForwardError::Upstream { .. }), "{error:?}");
    assert_eq!(tracker.count(), 0);
}

#[tokio::test]
async fn drain_deadline_before_headers_is_cancelled_504() {
    let addr = silent_upstream().await;
    let forwarder = Forwarder::new();
    let tracker = InFlight::new();
    let lease = tracker.lease();
    let drainer = Arc::clone(&tracker);
    let drain = tokio::spawn(async move { drainer.drain(Duration::from_millis(50)).await });
    let error = within(forwarder.forward(get("/"), &target(addr), lease, &ctx()))
        .await
        .unwrap_err();
    assert!(matches!(error, ForwardError::Cancelled), "{error:?}");
    assert_eq!(error.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(!within(drain).await.unwrap(), "the drain hit its deadline");
    assert_eq!(tracker.count(), 0);
}

/// An upstream that sends headers and a first chunk, then one more chunk and the end each
/// time the test says so.
async fn gated_upstream() -> (SocketAddr, tokio::sync::mpsc::Sender<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(1);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let addr = raw_upstream(move |mut stream| {
        let rx = Arc::clone(&rx);
        async move {
            read_head(&mut stream).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                .await;
            if rx.lock().await.recv().await.is_some() {
                let _ = stream.write_all(b"4\r\nlast\r\n0\r\n\r\n").await;
            }
            let mut rest = [0u8; 64];
            while stream.read(&mut rest).await.is_ok_and(|n| n > 0) {}
        }
    })
    .await;
    (addr, tx)
}

#[tokio::test]
async fn drain_deadline_during_body_fails_the_body() {
    let (addr, _gate) = gated_upstream().await;
    let forwarder = Forwarder::new();
    let tracker = InFlight::new();
    let response = within(forwarder.forward(get("/"), &target(addr), tracker.lease(), &ctx()))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = within(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    let drainer = Arc::clone(&tracker);
    let drain = tokio::spawn(async move { drainer.drain(Duration::from_millis(50)).await });
    let error = within(body.frame()).await.unwrap().unwrap_err();
    assert!(matches!(error, ForwardError::Cancelled), "{error:?}");
    assert_eq!(tracker.count(), 0, "a cancelled body releases its lease");
    assert!(!within(drain).await.unwrap());
    assert!(within(body.frame()).await.is_none());
}

#[tokio::test]
async fn lease_is_held_until_the_body_ends() {
    let (addr, gate) = gated_upstream().await;
    let forwarder = Forwarder::new();
    let tracker = InFlight::new();
    let response = within(forwarder.forward(get("/"), &target(addr), tracker.lease(), &ctx()))
        .await
        .unwrap();
    let drainer = Arc::clone(&tracker);
    let drain = tokio::spawn(async move { drainer.drain(LIMIT).await });
    let mut body = response.into_body();
    assert_eq!(
        within(body.frame())
            .await
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap(),
        "first"
    );
    assert_eq!(tracker.count(), 1);
    assert!(
        !drain.is_finished(),
        "the drain waits for the streaming body"
    );
    gate.send(()).await.unwrap();
    assert_eq!(
        within(body.frame())
            .await
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap(),
        "last"
    );
    assert!(within(body.frame()).await.is_none());
    assert_eq!(tracker.count(), 0);
    assert!(within(drain).await.unwrap(), "the drain finished in time");
}

#[tokio::test]
async fn dropping_the_body_releases_the_lease() {
    let (addr, _gate) = gated_upstream().await;
    let forwarder = Forwarder::new();
    let tracker = InFlight::new();
    let response = within(forwarder.forward(get("/"), &target(addr), tracker.lease(), &ctx()))
        .await
        .unwrap();
    assert_eq!(tracker.count(), 1);
    drop(response);
    assert_eq!(tracker.count(), 0);
}

type FrontBody = UnsyncBoxBody<Bytes, ForwardError>;

/// A hyper front server whose service forwards every request to `upstream`, the way the
/// proxy's server does, so that request bodies and upgrades are real hyper ones.
async fn front(upstream: SocketAddr, tracker: Arc<InFlight>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let forwarder: Forwarder<Incoming> = Forwarder::new();
    let target = target(upstream);
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let forwarder = forwarder.clone();
            let target = target.clone();
            let tracker = Arc::clone(&tracker);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let forwarder = forwarder.clone();
                    let target = target.clone();
                    let lease = tracker.lease();
                    async move {
                        let mut c = ctx();
                        c.client_addr = peer;
                        let response = match forwarder.forward(req, &target, lease, &c).await {
                            Ok(response) => response.map(BodyExt::boxed_unsync),
                            Err(error) => Response::builder()
                                .status(error.status())
                                .body(Empty::new().map_err(|e| match e {}).boxed_unsync())
                                .unwrap(),
                        };
                        Ok::<Response<FrontBody>, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// An upstream that switches to `protocol` and echoes bytes on the upgraded connection.
async fn echo_upgrade_upstream(protocol: &'static str) -> SocketAddr {
    hyper_upstream(move |mut req: Request<Incoming>| async move {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "Upgrade")
            .header("upgrade", protocol)
            .header("x-upstream", "yes")
            .body(Full::new(Bytes::new()))
            .unwrap()
    })
    .await
}

async fn send_upgrade(front: SocketAddr, protocol: &str) -> (TcpStream, String) {
    let mut client = TcpStream::connect(front).await.unwrap();
    let request = format!(
        "GET /cable HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n"
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let head = within(read_head(&mut client)).await;
    (client, head)
}

#[tokio::test]
async fn upgrade_tunnels_bytes_both_ways_and_drain_closes_it() {
    let upstream = echo_upgrade_upstream("websocket").await;
    let tracker = InFlight::new();
    let front = front(upstream, Arc::clone(&tracker)).await;
    let (mut client, head) = send_upgrade(front, "websocket").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("x-upstream: yes"), "{head}");

    for message in [&b"ping"[..], b"hello tunnel"] {
        client.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        within(client.read_exact(&mut echoed)).await.unwrap();
        assert_eq!(echoed, message);
    }
    assert_eq!(tracker.count(), 1, "the tunnel holds the lease");

    // Draining closes upgraded connections at once instead of waiting for them.
    let started = Instant::now();
    assert!(within(tracker.drain(LIMIT)).await);
    assert!(started.elapsed() < LIMIT);
    let mut rest = [0u8; 16];
    let n = within(client.read(&mut rest)).await.unwrap_or(0);
    assert_eq!(n, 0, "the tunnel is closed");
}

#[tokio::test]
async fn upgrade_tunnel_ends_when_the_client_closes() {
    let upstream = echo_upgrade_upstream("websocket").await;
    let tracker = InFlight::new();
    let front = front(upstream, Arc::clone(&tracker)).await;
    let (mut client, head) = send_upgrade(front, "websocket").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    client.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    within(client.read_exact(&mut one)).await.unwrap();
    drop(client);
    let tracker2 = Arc::clone(&tracker);
    within(eventually(move || tracker2.count() == 0)).await;
}

#[tokio::test]
async fn mismatched_upgrade_is_502() {
    let upstream = echo_upgrade_upstream("h2c").await;
    let tracker = InFlight::new();
    let front = front(upstream, Arc::clone(&tracker)).await;
    let (_client, head) = send_upgrade(front, "websocket").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert_eq!(tracker.count(), 0);
}

#[tokio::test]
async fn malformed_chunked_request_body_is_400() {
    let upstream = hyper_upstream(|req: Request<Incoming>| async move {
        let _ = req.into_body().collect().await;
        Response::new(Full::new(Bytes::from_static(b"read")))
    })
    .await;
    let tracker = InFlight::new();
    let front = front(upstream, Arc::clone(&tracker)).await;
    let mut client = TcpStream::connect(front).await.unwrap();
    client
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\nzz\r\n",
        )
        .await
        .unwrap();
    let head = within(read_head(&mut client)).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let tracker2 = Arc::clone(&tracker);
    within(eventually(move || tracker2.count() == 0)).await;
}

/// Sends one request on a fresh pooled connection, lets the upstream close that connection
/// while it sits idle in the pool, and sends a second request on it.
///
/// The upstream announces the close on a side channel *before* closing, so the test task
/// (woken by the side channel) checks the connection out of the pool before the client's
/// connection task (woken by the FIN) notices it is closed: on a current-thread runtime the
/// wake-ups run in the order the events arrived. The second request is then queued on a dead
/// connection with no byte written, which is exactly the case the retry covers.
/// Returns the second response's body and the number of connections the upstream accepted.
async fn request_after_idle_close(
    forwarder: Forwarder<Full<Bytes>>,
) -> (Result<String, ForwardError>, usize) {
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let (mut side_rx, side_tx) = tokio::net::UnixStream::pair().unwrap();
    // The first connection gets the cue to close; later ones are served normally.
    let cue = Arc::new(Mutex::new(Some((go_rx, side_tx))));
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let addr = raw_upstream(move |mut stream| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let cue = cue.lock().unwrap().take();
        async move {
            read_head(&mut stream).await;
            let body = if cue.is_some() { "first" } else { "second" };
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await.unwrap();
            match cue {
                Some((go, mut side)) => {
                    let _ = go.await;
                    side.write_all(b"x").await.unwrap();
                    drop(stream);
                }
                None => {
                    let mut rest = [0u8; 64];
                    while stream.read(&mut rest).await.is_ok_and(|n| n > 0) {}
                }
            }
        }
    })
    .await;
    let tracker = InFlight::new();
    // One target: its idle connections are the ones reused.
    let target = target(addr);
    let first = within(forwarder.forward(get("/one"), &target, tracker.lease(), &ctx()))
        .await
        .unwrap();
    assert_eq!(within(body_text(first)).await.unwrap(), "first");
    go_tx.send(()).unwrap();
    let mut byte = [0u8; 1];
    within(side_rx.read_exact(&mut byte)).await.unwrap();
    let second =
        match within(forwarder.forward(get("/two"), &target, tracker.lease(), &ctx())).await {
            Ok(response) => within(body_text(response)).await,
            Err(error) => Err(error),
        };
    (second, accepted.load(std::sync::atomic::Ordering::SeqCst))
}

#[tokio::test(flavor = "current_thread")]
async fn request_on_a_reused_connection_closed_by_the_upstream_is_retried() {
    let (text, connections) = request_after_idle_close(Forwarder::new()).await;
    assert_eq!(text.unwrap(), "second");
    assert_eq!(connections, 2, "the retry went out on a new connection");
}

#[tokio::test(flavor = "current_thread")]
async fn without_the_retry_the_same_request_fails() {
    // Shows that the scenario above really exercises the retry: the request was queued on
    // the reused, already closed connection.
    let (result, connections) = request_after_idle_close(Forwarder::without_retry()).await;
    let error = result.unwrap_err();
    assert_eq!(error.status(), StatusCode::BAD_GATEWAY, "{error:?}");
    assert_eq!(connections, 1, "nothing was sent on a new connection");
}

/// One captured log event: target, level, message and the other fields in order.
type Event = (String, tracing::Level, String, Vec<(String, String)>);

/// A tracing layer that records events, to check log lines field by field.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Event>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        #[derive(Default)]
        struct Fields(String, Vec<(String, String)>);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                let value = format!("{value:?}");
                if field.name() == "message" {
                    self.0 = value;
                } else {
                    self.1.push((field.name().to_owned(), value));
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        self.0
            .lock()
            .unwrap()
            .push((meta.target().to_owned(), *meta.level(), fields.0, fields.1));
    }
}

fn names(fields: &[(String, String)]) -> Vec<&str> {
    fields.iter().map(|(name, _)| name.as_str()).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn failures_are_logged_with_spec_fields() {
    use tracing_subscriber::layer::SubscriberExt;
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    // Port 1: nothing listens there (see connection_refused_is_502).
    let refused: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let forwarder = Forwarder::new();
    let tracker = InFlight::new();
    let error = within(forwarder.forward(get("/a%20b"), &target(refused), tracker.lease(), &ctx()))
        .await
        .unwrap_err();
    assert_eq!(error.status(), StatusCode::BAD_GATEWAY);

    let silent = silent_upstream().await;
    let lease = tracker.lease();
    let drainer = Arc::clone(&tracker);
    let drain = tokio::spawn(async move { drainer.drain(Duration::from_millis(20)).await });
    let error = within(forwarder.forward(get("/slow"), &target(silent), lease, &ctx()))
        .await
        .unwrap_err();
    assert!(matches!(error, ForwardError::Cancelled));
    within(drain).await.unwrap();

    let events = capture.0.lock().unwrap().clone();
    let ours: Vec<_> = events
        .iter()
        .filter(|(target, ..)| target == "kamal_balancer::forward")
        .collect();
    assert_eq!(ours.len(), 2, "{events:?}");

    let (_, level, message, fields) = ours[0];
    assert_eq!(*level, tracing::Level::ERROR);
    assert_eq!(message, "Error while proxying");
    assert_eq!(names(fields), ["target", "path", "error"]);
    assert_eq!(fields[0].1, refused.to_string());
    assert_eq!(fields[1].1, "/a b", "the path is logged decoded");
    assert!(fields[2].1.to_lowercase().contains("refused"), "{fields:?}");

    let (_, level, message, fields) = ours[1];
    assert_eq!(*level, tracing::Level::INFO);
    assert_eq!(message, "Request cancelled due to draining");
    assert_eq!(names(fields), ["target", "path"]);
    assert_eq!(fields[0].1, silent.to_string());
    assert_eq!(fields[1].1, "/slow");
}

/// A hyper upstream answering `size` bytes at every path, counting the connections it accepts.
async fn counting_upstream(size: usize) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    counting_hyper_upstream(move |_req| async move {
        Response::new(Full::new(Bytes::from(vec![b'x'; size])))
    })
    .await
}

/// A keep-alive hyper upstream serving `handler`, counting the connections it accepts.
async fn counting_hyper_upstream<F, Fut>(
    handler: F,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let svc =
                    service_fn(move |req| async move { Ok::<_, Infallible>(handler(req).await) });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let (addr, accepted) = counting_upstream(13).await;
    let forwarder = Forwarder::new();
    let target = target(addr);
    for _ in 0..5 {
        let response =
            within(forwarder.forward(get("/"), &target, InFlight::new().lease(), &ctx()))
                .await
                .unwrap();
        assert_eq!(within(body_text(response)).await.unwrap().len(), 13);
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Clones of a target share its connections; another target at the same address does not.
    let clone = target.clone();
    let response = within(forwarder.forward(get("/"), &clone, InFlight::new().lease(), &ctx()))
        .await
        .unwrap();
    within(body_text(response)).await.unwrap();
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A keep-alive upstream answering `/slow` after a second and everything else at once,
/// counting the connections it accepts.
async fn slow_path_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    counting_hyper_upstream(|req: Request<Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Response::new(Full::new(Bytes::from_static(b"ok")))
    })
    .await
}

fn assert_response_timeout(result: Result<String, ForwardError>) {
    let error = result.unwrap_err();
    assert!(
        matches!(error, ForwardError::ResponseTimeout { .. }),
        "{error:?}"
    );
}

fn with_timeout(timeout: Duration) -> ForwardContext {
    ForwardContext {
        target_timeout: timeout,
        ..ctx()
    }
}

async fn forward_text(
    forwarder: &Forwarder<Full<Bytes>>,
    target: &ForwardTarget,
    path: &str,
    c: &ForwardContext,
) -> Result<String, ForwardError> {
    let response = within(forwarder.forward(get(path), target, InFlight::new().lease(), c)).await?;
    within(body_text(response)).await
}

// The direct path keeps the target-timeout timer with the connection and moves its deadline
// for each request: a later request must get its own, later deadline…
#[tokio::test]
async fn each_request_on_a_reused_connection_gets_its_own_target_timeout() {
    let (addr, accepted) = slow_path_upstream().await;
    let forwarder = Forwarder::new();
    let target = target(addr);
    let c = with_timeout(Duration::from_millis(100));
    // Together these take longer than one timeout: a deadline left from the first request
    // would fail a later one.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(300) {
        assert_eq!(
            forward_text(&forwarder, &target, "/", &c).await.unwrap(),
            "ok"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    let started = Instant::now();
    assert_response_timeout(forward_text(&forwarder, &target, "/slow", &c).await);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert!(waited < Duration::from_millis(900), "{waited:?}");
}

// …an earlier one than the connection's last request (a redeploy shortened the timeout)…
#[tokio::test]
async fn a_shorter_target_timeout_applies_on_a_reused_connection() {
    let (addr, accepted) = slow_path_upstream().await;
    let forwarder = Forwarder::new();
    let target = target(addr);
    let long = with_timeout(Duration::from_secs(30));
    assert_eq!(
        forward_text(&forwarder, &target, "/", &long).await.unwrap(),
        "ok"
    );
    let started = Instant::now();
    let short = with_timeout(Duration::from_millis(100));
    assert_response_timeout(forward_text(&forwarder, &target, "/slow", &short).await);
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

// …and one after the timer fired while the connection sat idle.
#[tokio::test]
async fn the_target_timeout_works_after_firing_on_an_idle_connection() {
    let (addr, accepted) = slow_path_upstream().await;
    let forwarder = Forwarder::new();
    let target = target(addr);
    let c = with_timeout(Duration::from_millis(50));
    assert_eq!(
        forward_text(&forwarder, &target, "/", &c).await.unwrap(),
        "ok"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        forward_text(&forwarder, &target, "/", &c).await.unwrap(),
        "ok"
    );
    assert_response_timeout(forward_text(&forwarder, &target, "/slow", &c).await);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_requests_open_connections_that_are_then_reused() {
    let (addr, accepted) = counting_upstream(13).await;
    let forwarder = Forwarder::new();
    let target = target(addr);
    // Three responses held open at once need three connections…
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            within(forwarder.forward(get("/"), &target, InFlight::new().lease(), &ctx()))
                .await
                .unwrap(),
        );
    }
    for response in held {
        within(body_text(response)).await.unwrap();
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    // …and once read, all three serve later requests.
    for _ in 0..6 {
        let response =
            within(forwarder.forward(get("/"), &target, InFlight::new().lease(), &ctx()))
                .await
                .unwrap();
        within(body_text(response)).await.unwrap();
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_response_dropped_before_its_end_does_not_return_its_connection() {
    // Large enough that the body cannot have arrived whole with the headers.
    let (addr, accepted) = counting_upstream(4 << 20).await;
    let forwarder = Forwarder::new();
    let target = target(addr);
    let response = within(forwarder.forward(get("/"), &target, InFlight::new().lease(), &ctx()))
        .await
        .unwrap();
    let mut body = response.into_body();
    within(body.frame()).await.unwrap().unwrap();
    drop(body);
    // The half-read connection is not reused: the next request gets a whole body on a new one.
    let response = within(forwarder.forward(get("/"), &target, InFlight::new().lease(), &ctx()))
        .await
        .unwrap();
    assert_eq!(within(body_text(response)).await.unwrap().len(), 4 << 20);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_without_host_names_the_target() {
    let addr = echo_upstream().await;
    let forwarder = Forwarder::new();
    let req = Request::builder()
        .version(Version::HTTP_10)
        .uri("/plain")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = within(forwarder.forward(req, &target(addr), InFlight::new().lease(), &ctx()))
        .await
        .unwrap();
    let text = within(body_text(response)).await.unwrap();
    assert!(text.starts_with("GET /plain HTTP/1.1\n"), "{text}");
    assert!(text.contains(&format!("host: {addr}\n")), "{text}");
}

#[tokio::test]
async fn bodiless_gets_take_the_direct_path_and_the_rest_hyper() {
    let (addr, accepted) = counting_upstream(13).await;
    let forwarder = Forwarder::new();
    let target = target(addr);
    let response = within(forwarder.forward(get("/"), &target, InFlight::new().lease(), &ctx()))
        .await
        .unwrap();
    assert_eq!(within(body_text(response)).await.unwrap().len(), 13);
    assert_eq!(
        target.conns.direct().idle_count(),
        1,
        "the GET's connection is idle again"
    );
    let post = Request::builder()
        .method(Method::POST)
        .uri("/")
        .header("host", "app.test")
        .body(Full::new(Bytes::from_static(b"data")))
        .unwrap();
    let response = within(forwarder.forward(post, &target, InFlight::new().lease(), &ctx()))
        .await
        .unwrap();
    assert_eq!(within(body_text(response)).await.unwrap().len(), 13);
    assert_eq!(
        target.conns.direct().idle_count(),
        1,
        "the POST went through hyper"
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn head_responses_have_no_body_and_keep_the_connection() {
    let addr = raw_upstream(|mut stream| async move {
        loop {
            let head = read_head(&mut stream).await;
            if head.is_empty() {
                return;
            }
            let answer = if head.starts_with("HEAD ") {
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
            } else {
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
            };
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let forwarder = Forwarder::new();
    let target = target(addr);
    let head = Request::builder()
        .method(Method::HEAD)
        .uri("/")
        .header("host", "app.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = within(forwarder.forward(head, &target, InFlight::new().lease(), &ctx()))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-length"], "5");
    assert!(response.body().is_end_stream());
    assert_eq!(within(body_text(response)).await.unwrap(), "");
    // The same connection then serves a GET with its body.
    let response = within(forwarder.forward(get("/"), &target, InFlight::new().lease(), &ctx()))
        .await
        .unwrap();
    assert_eq!(within(body_text(response)).await.unwrap(), "hello");
}

#[tokio::test]
async fn bodies_delimited_by_close_are_read_to_the_end_and_not_reused() {
    let (addr, accepted) = {
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let addr = raw_upstream(move |mut stream| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                read_head(&mut stream).await;
                let _ = stream
                    .write_all(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close")
                    .await;
            }
        })
        .await;
        (addr, accepted)
    };
    let forwarder = Forwarder::new();
    let target = target(addr);
    for _ in 0..2 {
        let response =
            within(forwarder.forward(get("/"), &target, InFlight::new().lease(), &ctx()))
                .await
                .unwrap();
        assert_eq!(within(body_text(response)).await.unwrap(), "until close");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(target.conns.direct().idle_count(), 0);
}

#[tokio::test]
async fn informational_answers_are_skipped() {
    let addr = raw_upstream(|mut stream| async move {
        read_head(&mut stream).await;
        let _ = stream
            .write_all(
                b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
                  HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            )
            .await;
    })
    .await;
    let forwarder = Forwarder::new();
    let response =
        within(forwarder.forward(get("/"), &target(addr), InFlight::new().lease(), &ctx()))
            .await
            .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(within(body_text(response)).await.unwrap(), "ok");
}

#[tokio::test]
async fn a_408_left_on_an_idle_connection_is_not_taken_for_the_answer() {
    // The first connection answers once, then announces its idle timeout with a 408 and
    // closes; later connections answer normally.
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let (idle_tx, idle_rx) = oneshot::channel::<()>();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let cue = Arc::new(Mutex::new(Some((go_rx, idle_tx))));
    let addr = raw_upstream(move |mut stream| {
        let first = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        let cue = if first { cue.lock().unwrap().take() } else { None };
        async move {
            read_head(&mut stream).await;
            let body = if first { "first" } else { "second" };
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            stream.write_all(answer.as_bytes()).await.unwrap();
            if let Some((go, idle_tx)) = cue {
                // Sent once the first answer has been read, so it waits alone on the idle
                // connection rather than arriving with that answer.
                let _ = go.await;
                let _ = stream
                    .write_all(b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                    .await;
                let _ = idle_tx.send(());
                // Keep the connection open for a while so the stale answer is all it holds.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    })
    .await;
    let forwarder = Forwarder::new();
    let target = target(addr);
    let response = within(forwarder.forward(get("/one"), &target, InFlight::new().lease(), &ctx()))
        .await
        .unwrap();
    assert_eq!(within(body_text(response)).await.unwrap(), "first");
    assert_eq!(target.conns.direct().idle_count(), 1);
    go_tx.send(()).unwrap();
    within(idle_rx).await.unwrap();
    let response = within(forwarder.forward(get("/two"), &target, InFlight::new().lease(), &ctx()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(within(body_text(response)).await.unwrap(), "second");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

// The direct path writes the added headers straight into the head instead of inserting them:
// its head must be byte for byte the one the map rewrite gives, whatever the client sent.
#[test]
fn direct_heads_equal_the_encoded_map_rewrite() {
    let maps: &[&[(&str, &str)]] = &[
        &[("host", "app.test")],
        &[],
        &[("host", "app.test"), ("host", "other.test")],
        &[
            ("host", "app.test"),
            ("user-agent", "t"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "front.test"),
            ("accept", "*/*"),
            ("x-forwarded-proto", "https"),
            ("x-kamal-target", "elsewhere:80"),
            ("x-forwarded-for", "5.6.7.8"),
        ],
        &[
            ("host", "app.test"),
            ("connection", "x-forwarded-for, keep-alive"),
            ("keep-alive", "timeout=5"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
        ],
        &[
            ("connection", "host"),
            ("host", "app.test"),
            ("cookie", "a=1"),
        ],
        &[
            ("forwarded", "for=1.2.3.4"),
            ("host", "app.test"),
            ("te", "trailers"),
        ],
    ];
    let label = HeaderValue::from_static("127.0.0.1:3000");
    for pairs in maps {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs.iter() {
            map.append(
                http::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let hosts = [
            None,
            Some(HeaderValue::from_static("app.test")),
            Some(HeaderValue::from_static("authority.test")),
        ];
        for host in hosts {
            for trust in [false, true] {
                let info = headers::RequestInfo {
                    client_ip: "192.0.2.9".parse().unwrap(),
                    tls: trust,
                    forward_headers: trust,
                    target_label: &label,
                };
                let mut rewritten = map.clone();
                headers::rewrite_request(&mut rewritten, host.clone(), true, &info);
                let expected =
                    direct::encode_head(&Method::GET, "/x?y", &rewritten, std::iter::empty());

                let mut req = Request::get("/x?y").body(()).unwrap();
                *req.headers_mut() = map.clone();
                let (mut parts, ()) = req.into_parts();
                let (_, added) =
                    headers::prepare_request(&mut parts.headers, host.as_ref(), true, &info);
                let got = direct_head(&mut parts, host.clone(), &added);
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&expected),
                    "{pairs:?}, host {host:?}, trusted {trust}"
                );
            }
        }
    }
}

/// A keep-alive upstream answering each request with the port its connection came from.
async fn peer_port_upstream() -> SocketAddr {
    raw_upstream(|stream| async move {
        let port = stream.peer_addr().unwrap().port();
        let svc = service_fn(move |_req| async move {
            let port = Bytes::from(port.to_string());
            Ok::<_, Infallible>(Response::new(Full::new(port)))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    })
    .await
}

/// After a burst has left many connections idle, one request at a time keeps reusing a few of
/// them instead of rotating through all: on the direct path (GET) and through hyper (POST).
#[tokio::test]
async fn a_steady_load_after_a_burst_reuses_a_few_recent_connections() {
    let addr = peer_port_upstream().await;
    let forwarder = Forwarder::new();
    let target = target(addr);
    let request = |method: &Method| {
        let body = if method == Method::POST { "data" } else { "" };
        Request::builder()
            .method(method.clone())
            .uri("/")
            .header("host", "app.test")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    for method in [Method::GET, Method::POST] {
        let mut held = Vec::new();
        for _ in 0..12 {
            let sent =
                forwarder.forward(request(&method), &target, InFlight::new().lease(), &ctx());
            held.push(within(sent).await.unwrap());
        }
        let mut burst = std::collections::HashSet::new();
        for response in held {
            burst.insert(within(body_text(response)).await.unwrap());
        }
        assert_eq!(burst.len(), 12, "{method}: twelve connections held at once");
        let mut steady = std::collections::HashSet::new();
        for _ in 0..40 {
            let sent =
                forwarder.forward(request(&method), &target, InFlight::new().lease(), &ctx());
            let port = within(body_text(within(sent).await.unwrap()))
                .await
                .unwrap();
            assert!(
                burst.contains(&port),
                "{method}: a pooled connection was reused"
            );
            steady.insert(port);
        }
        assert!(
            steady.len() <= 4,
            "{method}: {} connections in rotation for one request at a time",
            steady.len()
        );
    }
}
