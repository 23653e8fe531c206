//! A fake upstream application: a real hyper HTTP/1.1 server on `127.0.0.1:0`.
//!
//! Routes (matched on the exact path the upstream receives):
//!
//! | path | answer |
//! |---|---|
//! | `/up` | health check: `200 OK` or `503` per [`Upstream::set_healthy`]; counted separately |
//! | `/slow?ms=N` | sleeps N ms, then the echo |
//! | `/sse?events=N&interval_ms=M` | `text/event-stream`, event `i` (`id: i`, `data: event i`) every M ms |
//! | `/bytes?n=N[&chunked=1]` | N bytes of `x` streamed in 64 KiB chunks (with `Content-Length` unless `chunked=1`) |
//! | `/ws` | WebSocket echo (text and binary) |
//! | `/status?code=N` | status N with the echo body |
//! | anything else | `200` with the echo body |
//!
//! The **echo body** is the upstream's name on the first line, then one line of JSON describing
//! what the upstream received: `{"name","method","path","query","headers":{lower-case name:
//! [values]},"body_len"}` (see [`Echo`](crate::Echo)). Every response also carries the header
//! `X-Upstream-Name: <name>`.
//!
//! The server runs on its own thread and runtime, so it keeps answering while a test blocks (for
//! example on a CLI call), and dropping it closes the listener and every live connection.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// Response body type of the fake upstream.
type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Size of one chunk of `/bytes`; the chunk is a shared static, so streaming allocates nothing.
const CHUNK_SIZE: usize = 64 * 1024;
static CHUNK: [u8; CHUNK_SIZE] = [b'x'; CHUNK_SIZE];

/// Name of the response header carrying the upstream's name.
pub const NAME_HEADER: &str = "x-upstream-name";

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    /// Request method.
    pub method: Method,
    /// Path and query exactly as received (`/a/b?x=1`).
    pub uri: String,
    /// Request headers as received.
    pub headers: HeaderMap,
}

impl LoggedRequest {
    /// The path part of [`uri`](Self::uri).
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }
}

/// State shared between the [`Upstream`] handle and its server thread.
#[derive(Debug)]
struct Shared {
    name: String,
    healthy: AtomicBool,
    requests: AtomicU64,
    health_checks: AtomicU64,
    open_websockets: AtomicUsize,
    log: Mutex<Vec<LoggedRequest>>,
}

/// Configures an [`Upstream`] before it starts.
#[derive(Debug, Clone)]
pub struct UpstreamBuilder {
    name: String,
    healthy: bool,
}

impl UpstreamBuilder {
    /// Sets the initial answer of `/up` (default: healthy).
    pub fn healthy(mut self, healthy: bool) -> Self {
        self.healthy = healthy;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving on a dedicated thread.
    ///
    /// # Panics
    /// If the loopback listener or the runtime cannot be created (the test cannot run at all).
    pub fn start(self) -> Upstream {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("set the listener non-blocking");
        let addr = listener.local_addr().expect("listener address");
        let shared = Arc::new(Shared {
            name: self.name,
            healthy: AtomicBool::new(self.healthy),
            requests: AtomicU64::new(0),
            health_checks: AtomicU64::new(0),
            open_websockets: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
        });
        let cancel = CancellationToken::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("upstream runtime");
        let thread = {
            let shared = shared.clone();
            let cancel = cancel.clone();
            std::thread::Builder::new()
                .name(format!("upstream-{}", shared.name))
                .spawn(move || {
                    runtime.block_on(serve(listener, shared, cancel));
                    // Dropping the runtime drops every connection task, closing their sockets.
                    runtime.shutdown_timeout(Duration::from_secs(1));
                })
                .expect("spawn the upstream thread")
        };
        Upstream {
            addr,
            shared,
            cancel,
            thread: Some(thread),
        }
    }
}

/// A running fake upstream. Dropping it (or [`shutdown`](Self::shutdown)) closes the listener and
/// every live connection, so a stopped target really refuses.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// A builder for an upstream called `name` (the name appears in every response).
    pub fn builder(name: impl Into<String>) -> UpstreamBuilder {
        UpstreamBuilder {
            name: name.into(),
            healthy: true,
        }
    }

    /// Starts a healthy upstream called `name`.
    pub fn start(name: impl Into<String>) -> Upstream {
        Self::builder(name).start()
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `"127.0.0.1:PORT"`, ready for `--target`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Switches the answer of `/up` between 200 and 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Every request received, health checks included.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests to `/up`.
    pub fn health_checks(&self) -> u64 {
        self.shared.health_checks.load(Ordering::SeqCst)
    }

    /// Requests other than `/up`.
    pub fn app_requests(&self) -> u64 {
        self.requests().saturating_sub(self.health_checks())
    }

    /// WebSocket connections currently open on `/ws`.
    pub fn open_websockets(&self) -> usize {
        self.shared.open_websockets.load(Ordering::SeqCst)
    }

    /// A copy of the request log, oldest first (health checks included).
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        lock_log(&self.shared).clone()
    }

    /// The request log without health checks.
    pub fn app_request_log(&self) -> Vec<LoggedRequest> {
        lock_log(&self.shared)
            .iter()
            .filter(|r| r.path() != "/up")
            .cloned()
            .collect()
    }

    /// The most recent request that was not a health check.
    pub fn last_request(&self) -> Option<LoggedRequest> {
        lock_log(&self.shared)
            .iter()
            .rev()
            .find(|r| r.path() != "/up")
            .cloned()
    }

    /// Stops the server: the listener and every live connection are closed when this returns.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(thread) = self.thread.take() {
            // The thread only panics if a test-support bug does; surface it in the test.
            if thread.join().is_err() && !std::thread::panicking() {
                panic!("upstream {} thread panicked", self.shared.name);
            }
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock_log(shared: &Shared) -> std::sync::MutexGuard<'_, Vec<LoggedRequest>> {
    // A panic while holding the lock cannot leave the Vec inconsistent; keep using it.
    shared.log.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn serve(listener: StdTcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _peer)) = accepted else {
            continue;
        };
        let shared = shared.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let service = {
                let cancel = cancel.clone();
                service_fn(move |req| handle(shared.clone(), cancel.clone(), req))
            };
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn query_u64(query: &str, key: &str, default: u64) -> u64 {
    query_param(query, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

fn response(shared: &Shared, status: StatusCode, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Ok(name) = HeaderValue::from_str(&shared.name) {
        response.headers_mut().insert(NAME_HEADER, name);
    }
    response
}

async fn handle(
    shared: Arc<Shared>,
    cancel: CancellationToken,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    shared.requests.fetch_add(1, Ordering::SeqCst);
    lock_log(&shared).push(LoggedRequest {
        method: req.method().clone(),
        uri: req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| path.clone()),
        headers: req.headers().clone(),
    });

    match path.as_str() {
        "/up" => {
            shared.health_checks.fetch_add(1, Ordering::SeqCst);
            Ok(if shared.healthy.load(Ordering::SeqCst) {
                response(&shared, StatusCode::OK, full("OK"))
            } else {
                response(&shared, StatusCode::SERVICE_UNAVAILABLE, full("unhealthy"))
            })
        }
        "/ws" => Ok(websocket(shared, cancel, req)),
        "/sse" => Ok(sse(&shared, &query)),
        "/bytes" => Ok(bytes_stream(&shared, &query)),
        "/slow" => {
            let ms = query_u64(&query, "ms", 1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(echo(&shared, StatusCode::OK, req).await)
        }
        "/status" => {
            let status = u16::try_from(query_u64(&query, "code", 200))
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
            Ok(echo(&shared, status, req).await)
        }
        _ => Ok(echo(&shared, StatusCode::OK, req).await),
    }
}

/// Answers with the upstream's name and a JSON description of the request.
async fn echo(shared: &Shared, status: StatusCode, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    // Reading the body keeps the connection reusable; its length is part of the echo.
    let body_len = match body.collect().await {
        Ok(collected) => collected.to_bytes().len(),
        Err(_) => 0,
    };
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let json = serde_json::json!({
        "name": shared.name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query().unwrap_or(""),
        "headers": headers,
        "body_len": body_len,
    });
    let mut response = response(shared, status, full(format!("{}\n{}\n", shared.name, json)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn sse(shared: &Shared, query: &str) -> Response<Body> {
    let events = query_u64(query, "events", 5);
    let interval = Duration::from_millis(query_u64(query, "interval_ms", 100));
    let stream = futures_util::stream::unfold(0u64, move |i| async move {
        if i >= events {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let event = format!("id: {i}\ndata: event {i}\n\n");
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(event))), i + 1))
    });
    let mut response = response(
        shared,
        StatusCode::OK,
        StreamBody::new(stream).boxed_unsync(),
    );
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn bytes_stream(shared: &Shared, query: &str) -> Response<Body> {
    let total = query_u64(query, "n", 0);
    let chunked = query_param(query, "chunked") == Some("1");
    let stream = futures_util::stream::unfold(total, |remaining| async move {
        if remaining == 0 {
            return None;
        }
        let len = usize::try_from(remaining).map_or(CHUNK_SIZE, |r| r.min(CHUNK_SIZE));
        let chunk = Bytes::from_static(&CHUNK).slice(..len);
        Some((
            Ok::<_, Infallible>(Frame::data(chunk)),
            remaining - len as u64,
        ))
    });
    let mut response = response(
        shared,
        StatusCode::OK,
        StreamBody::new(stream).boxed_unsync(),
    );
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if !chunked {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    }
    response
}

fn websocket(
    shared: Arc<Shared>,
    cancel: CancellationToken,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (is_upgrade, key) else {
        return response(
            &shared,
            StatusCode::BAD_REQUEST,
            full("websocket upgrade required"),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let task_shared = shared.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        task_shared.open_websockets.fetch_add(1, Ordering::SeqCst);
        loop {
            let message = tokio::select! {
                _ = cancel.cancelled() => break,
                message = ws.next() => message,
            };
            match message {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(message).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
        task_shared.open_websockets.fetch_sub(1, Ordering::SeqCst);
    });
    let mut response = response(&shared, StatusCode::SWITCHING_PROTOCOLS, full(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{self, Client};

    #[tokio::test]
    async fn answers_echo_and_counts() {
        let upstream = Upstream::start("alpha");
        let port = upstream.addr().port();
        assert_eq!(upstream.address(), format!("127.0.0.1:{port}"));
        let client = Client::new();
        let reply = client
            .send(
                port,
                Method::POST,
                "app.test",
                "/some/path?x=1&y=%zz",
                &[("x-custom", "one")],
                Bytes::from_static(b"hello"),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.upstream(), Some("alpha"));
        assert!(reply.text().starts_with("alpha\n"));
        let echo = reply.echo().unwrap();
        assert_eq!(echo.name, "alpha");
        assert_eq!(echo.method, "POST");
        assert_eq!(echo.uri(), "/some/path?x=1&y=%zz");
        assert_eq!(echo.header("host").as_deref(), Some("app.test"));
        assert_eq!(echo.header("x-custom").as_deref(), Some("one"));
        assert_eq!(echo.body_len, 5);

        client.get(port, "app.test", "/up").await.unwrap();
        assert_eq!(upstream.requests(), 2);
        assert_eq!(upstream.health_checks(), 1);
        assert_eq!(upstream.app_requests(), 1);
        let last = upstream.last_request().unwrap();
        assert_eq!(last.method, Method::POST);
        assert_eq!(last.uri, "/some/path?x=1&y=%zz");
        assert_eq!(upstream.request_log().len(), 2);
        assert_eq!(upstream.app_request_log().len(), 1);
    }

    #[tokio::test]
    async fn health_is_switchable_and_status_route_works() {
        let upstream = Upstream::builder("beta").healthy(false).start();
        let port = upstream.addr().port();
        let client = Client::new();
        assert_eq!(client.get(port, "h", "/up").await.unwrap().status, 503);
        upstream.set_healthy(true);
        assert_eq!(client.get(port, "h", "/up").await.unwrap().status, 200);
        let reply = client.get(port, "h", "/status?code=418").await.unwrap();
        assert_eq!(reply.status, 418);
        assert_eq!(reply.echo().unwrap().path, "/status");
    }

    #[tokio::test]
    async fn slow_waits() {
        let upstream = Upstream::start("slow");
        let started = std::time::Instant::now();
        let reply = client::get(upstream.addr().port(), "h", "/slow?ms=200")
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn sse_sends_events_one_per_interval() {
        let upstream = Upstream::start("sse");
        let (status, headers, events) = client::read_sse(
            upstream.addr().port(),
            "h",
            "/sse?events=3&interval_ms=100",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");
        assert_eq!(events.len(), 3);
        assert_eq!(events[2].data, "event 2");
        assert_eq!(events[1].id.as_deref(), Some("1"));
        let gap = events[2].received_at - events[0].received_at;
        assert!(
            gap >= Duration::from_millis(180),
            "events arrived together: {gap:?}"
        );
    }

    #[tokio::test]
    async fn bytes_streams_the_requested_length() {
        let upstream = Upstream::start("bytes");
        let port = upstream.addr().port();
        let n = 3 * CHUNK_SIZE as u64 + 7;
        for path in [format!("/bytes?n={n}"), format!("/bytes?n={n}&chunked=1")] {
            let (status, total) = client::get_counting(port, "h", &path, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!((status.as_u16(), total), (200, n), "{path}");
        }
    }

    #[tokio::test]
    async fn websocket_echoes_and_shutdown_closes_it() {
        let upstream = Upstream::start("ws");
        let port = upstream.addr().port();
        let mut ws = client::ws_connect(port, "h", "/ws").await.unwrap();
        ws.send_text("ping").await.unwrap();
        assert_eq!(
            ws.recv_text(Duration::from_secs(5))
                .await
                .unwrap()
                .as_deref(),
            Some("ping")
        );
        assert_eq!(upstream.open_websockets(), 1);
        upstream.shutdown();
        assert_eq!(ws.recv_text(Duration::from_secs(5)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn shutdown_refuses_new_connections_and_drops_live_ones() {
        let upstream = Upstream::start("gone");
        let port = upstream.addr().port();
        let client = Client::new();
        // A keep-alive connection exists in the pool before the shutdown.
        assert_eq!(client.get(port, "h", "/").await.unwrap().status, 200);
        let slow = tokio::spawn({
            let client = client.clone();
            async move { client.get(port, "h", "/slow?ms=5000").await }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while upstream.app_requests() < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(upstream);
        assert!(
            slow.await.unwrap().is_err(),
            "in-flight request survived shutdown"
        );
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err());
    }
}
