//! Buffering, body limits and custom error pages through the real binary (spec §8, §9.2,
//! §14 items 2 and 3).
//!
//! Besides the shared fake upstream, these tests use a small upstream of their own
//! ([`Target`]) that checksums uploads, notes when each request arrives, and can die half-way
//! through a response or hang up without answering.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

const HOST: &str = "buffer.test";

/// FNV-1a, 64 bits: enough to tell a corrupted or reordered upload from an intact one.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Byte `i` of the upload pattern (position-dependent, so misordered chunks are caught).
fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8 ^ (i >> 16) as u8
}

/// An upload body generated on the fly in 64 KiB frames, announcing its length (so it is sent
/// with `Content-Length`) unless `chunked`.
struct Upload {
    sent: u64,
    len: u64,
    chunked: bool,
}

impl Upload {
    fn checksum(len: u64) -> u64 {
        let mut fnv = Fnv::new();
        let mut chunk = Vec::with_capacity(64 * 1024);
        let mut i = 0;
        while i < len {
            chunk.clear();
            let n = (len - i).min(64 * 1024);
            chunk.extend((i..i + n).map(pattern_byte));
            fnv.update(&chunk);
            i += n;
        }
        fnv.0
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent >= self.len {
            return Poll::Ready(None);
        }
        let n = (self.len - self.sent).min(64 * 1024);
        let chunk: Vec<u8> = (self.sent..self.sent + n).map(pattern_byte).collect();
        self.sent += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        if self.chunked {
            SizeHint::default()
        } else {
            SizeHint::with_exact(self.len - self.sent)
        }
    }
}

/// Sends `body` as `POST path` through the proxy on a fresh connection; returns the status and
/// the response body.
async fn post<B>(proxy: &Proxy, path: &str, body: B) -> (StatusCode, Bytes)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(("127.0.0.1", proxy.http_port()))
        .await
        .expect("connect to the proxy");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(http::header::HOST, HOST)
        .body(body)
        .expect("request");
    let work = async {
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body)
    };
    tokio::time::timeout(Duration::from_secs(120), work)
        .await
        .expect("the proxy answers in time")
}

/// What [`Target`] saw of one `/sum` request.
#[derive(Debug, Clone)]
struct Seen {
    /// When the request head arrived.
    head_at: Instant,
    /// When the last body byte arrived.
    body_done_at: Instant,
    len: u64,
    chunked: bool,
}

/// A test upstream on `127.0.0.1:0`:
///
/// | path | answer |
/// |---|---|
/// | `/up` | `200` |
/// | `/sum` | reads the body, answers `<len> <fnv64>`; records a [`Seen`] |
/// | `/die` | `200` announcing 100 000 bytes, sends 1 000 of them, then drops the connection |
/// | `/hang-up` | closes the connection without answering |
/// | anything else | `200 ok` |
struct Target {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    heads: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response body that sends `data` and then fails, which makes hyper abort the connection.
struct DiesHalfway {
    data: Option<Bytes>,
}

impl Body for DiesHalfway {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.data.take() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => Poll::Ready(Some(Err(std::io::Error::other("target killed")))),
        }
    }
}

type TargetBody = http_body_util::Either<Full<Bytes>, DiesHalfway>;

impl Target {
    async fn start() -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let heads = Arc::new(AtomicU64::new(0));
        let (s, h) = (Arc::clone(&seen), Arc::clone(&heads));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, heads) = (Arc::clone(&s), Arc::clone(&h));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        Target::handle(req, Arc::clone(&seen), Arc::clone(&heads))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Target {
            addr,
            seen,
            heads,
            task,
        }
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// `/sum` request heads received so far (counted before the body is read).
    fn sum_heads(&self) -> u64 {
        self.heads.load(Ordering::SeqCst)
    }

    async fn handle(
        req: Request<Incoming>,
        seen: Arc<Mutex<Vec<Seen>>>,
        heads: Arc<AtomicU64>,
    ) -> Result<Response<TargetBody>, std::io::Error> {
        let full = |text: String| {
            Ok(Response::new(http_body_util::Either::Left(Full::new(
                Bytes::from(text),
            ))))
        };
        match req.uri().path() {
            "/sum" => {
                let head_at = Instant::now();
                heads.fetch_add(1, Ordering::SeqCst);
                let chunked = !req.headers().contains_key(http::header::CONTENT_LENGTH);
                let mut body = req.into_body();
                let mut fnv = Fnv::new();
                let mut len = 0u64;
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(std::io::Error::other)?;
                    if let Some(data) = frame.data_ref() {
                        fnv.update(data);
                        len += data.len() as u64;
                    }
                }
                seen.lock().unwrap().push(Seen {
                    head_at,
                    body_done_at: Instant::now(),
                    len,
                    chunked,
                });
                full(format!("{len} {}", fnv.0))
            }
            "/die" => {
                let mut resp = Response::new(http_body_util::Either::Right(DiesHalfway {
                    data: Some(Bytes::from(vec![b'p'; 1000])),
                }));
                resp.headers_mut()
                    .insert(http::header::CONTENT_LENGTH, "100000".parse().unwrap());
                Ok(resp)
            }
            "/hang-up" => Err(std::io::Error::other("hanging up")),
            _ => full("ok".to_owned()),
        }
    }
}

/// Deploys `target` as the service `app` on [`HOST`] with `extra` deploy flags.
async fn deploy(proxy: &Proxy, target: &str, extra: &[&str]) {
    let mut args = vec!["--target", target, "--host", HOST];
    args.extend_from_slice(extra);
    proxy.deploy_async("app", &args).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_upload_reaches_the_target_intact_in_bounded_memory() {
    const SIZE: u64 = 100 * 1024 * 1024;
    const MAX_GROWTH_KIB: u64 = 32 * 1024;

    let proxy = start_proxy();
    let target = Target::start().await;
    deploy(
        &proxy,
        &target.address(),
        &["--buffer-requests", "--buffer-memory=1048576"],
    )
    .await;
    // Warm up connection pools and lazily allocated buffers before the baseline.
    let warm = Upload {
        sent: 0,
        len: 2 << 20,
        chunked: false,
    };
    assert_eq!(post(&proxy, "/sum", warm).await.0, StatusCode::OK);

    let baseline = proxy.rss_kib().expect("proxy RSS");
    assert!(proxy.reset_peak_rss(), "peak RSS can be reset");
    let expected = Upload::checksum(SIZE);
    let upload = Upload {
        sent: 0,
        len: SIZE,
        chunked: false,
    };
    let (status, body) = post(&proxy, "/sum", upload).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        body,
        format!("{SIZE} {expected}"),
        "the upload arrived intact"
    );

    let peak = proxy.peak_rss_kib().expect("proxy peak RSS");
    let growth = peak.saturating_sub(baseline);
    eprintln!("peak RSS growth while buffering {SIZE} bytes: {growth} KiB");
    assert!(
        growth < MAX_GROWTH_KIB,
        "peak RSS grew by {growth} KiB while buffering {SIZE} bytes"
    );
    // The length-framed upload was replayed with its length.
    let last = target.seen().pop().expect("the upload was seen");
    assert_eq!(last.len, SIZE);
    assert!(
        !last.chunked,
        "a Content-Length upload must keep its length"
    );
}

#[tokio::test]
async fn request_body_limit_allows_n_bytes_and_refuses_n_plus_one() {
    let proxy = start_proxy();
    let target = Target::start().await;
    deploy(
        &proxy,
        &target.address(),
        &[
            "--buffer-requests",
            "--max-request-body=1000",
            "--buffer-memory=100",
        ],
    )
    .await;

    let at_limit = Upload {
        sent: 0,
        len: 1000,
        chunked: false,
    };
    let (status, body) = post(&proxy, "/sum", at_limit).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, format!("1000 {}", Upload::checksum(1000)));

    // Announced by Content-Length: refused before the body is read (spec §14 item 2).
    let over = Upload {
        sent: 0,
        len: 1001,
        chunked: false,
    };
    let (status, body) = post(&proxy, "/sum", over).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&body).contains("413"));

    // Without a length: counted while it streams, refused at byte 1001.
    let chunked_over = Upload {
        sent: 0,
        len: 1001,
        chunked: true,
    };
    let (status, _) = post(&proxy, "/sum", chunked_over).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let chunked_ok = Upload {
        sent: 0,
        len: 1000,
        chunked: true,
    };
    assert_eq!(post(&proxy, "/sum", chunked_ok).await.0, StatusCode::OK);

    let seen = target.seen();
    assert_eq!(seen.len(), 2, "refused uploads never reach the target");
    // A chunked request stays chunked after buffering (spec §8.1).
    assert!(seen[1].chunked);
}

#[tokio::test]
async fn slow_client_does_not_occupy_the_target_while_uploading() {
    const LEN: usize = 100;
    let proxy = start_proxy();
    let target = Target::start().await;
    deploy(&proxy, &target.address(), &["--buffer-requests"]).await;

    let mut stream = TcpStream::connect(("127.0.0.1", proxy.http_port()))
        .await
        .expect("connect");
    let head = format!(
        "POST /sum HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {LEN}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    // One byte every 10 ms: about one second for the whole body.
    for i in 0..LEN {
        assert_eq!(
            target.sum_heads(),
            0,
            "the target was contacted after {i} of {LEN} bytes"
        );
        stream
            .write_all(&[pattern_byte(i as u64)])
            .await
            .expect("drip");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await;
    assert!(
        read.is_ok(),
        "no reply: {}",
        String::from_utf8_lossy(&reply)
    );
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen = target.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].len, LEN as u64);
    // The target received the whole body at once, not at the client's pace.
    let upload_time = seen[0].body_done_at - seen[0].head_at;
    assert!(
        upload_time < Duration::from_millis(300),
        "the target spent {upload_time:?} receiving the body"
    );
}

#[tokio::test]
async fn target_dying_mid_body_gives_502_and_nothing_partial() {
    let proxy = start_proxy();
    let target = Target::start().await;
    deploy(&proxy, &target.address(), &["--buffer-responses"]).await;

    let reply = get(&proxy, HOST, "/die").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let text = reply.text();
    assert!(text.contains("502"), "the 502 page: {text}");
    assert!(!text.contains("ppppp"), "part of the target's body leaked");
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
}

#[tokio::test]
async fn response_over_the_limit_is_500_and_at_the_limit_is_sent() {
    let proxy = start_proxy();
    let up = Upstream::start("web");
    deploy(
        &proxy,
        &up.address(),
        &[
            "--buffer-responses",
            "--max-response-body=100000",
            "--buffer-memory=1000",
        ],
    )
    .await;
    let reply = get(&proxy, HOST, "/bytes?n=100000").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), 100_000);
    assert_eq!(reply.header("content-length"), Some("100000"));

    let reply = get(&proxy, HOST, "/bytes?n=100001").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.text(), "<h1>500 Internal Server Error</h1>");
    let logged = proxy.wait_for_log(
        |l| l["msg"] == "Response exceeded max response limit" && l["path"] == "/bytes",
        Duration::from_secs(5),
    );
    assert!(
        logged.is_some(),
        "INFO Response exceeded max response limit"
    );
}

#[tokio::test]
async fn sse_still_streams_event_by_event_with_buffered_responses() {
    let proxy = start_proxy();
    let up = Upstream::start("sse");
    deploy(
        &proxy,
        &up.address(),
        &["--buffer-responses", "--max-response-body=10"],
    )
    .await;
    let started = Instant::now();
    let (status, _, events) = client::read_sse(
        proxy.http_port(),
        HOST,
        "/sse?events=4&interval_ms=250",
        Duration::from_secs(10),
    )
    .await
    .expect("SSE through the proxy");
    assert_eq!(status, 200);
    assert_eq!(events.len(), 4, "the size limit does not apply to a stream");
    let first = events[0].received_at - started;
    assert!(
        first < Duration::from_millis(600),
        "first event after {first:?}"
    );
    for pair in events.windows(2) {
        let gap = pair[1].received_at - pair[0].received_at;
        assert!(gap >= Duration::from_millis(150), "events {gap:?} apart");
    }
}

/// Writes the custom pages used below into a fresh directory.
fn error_pages_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("layout.html", "<footer>custom</footer>");
    write("404.html", "<h1>custom 404</h1>");
    write(
        "502.html",
        "<h1>custom 502</h1>{{ template \"layout.html\" }}",
    );
    write(
        "503.html",
        "<h1>custom 503</h1><p>{{ if .Message }}{{ .Message }}{{ else }}no message{{ end }}</p>",
    );
    write("504.html", "<h1>custom 504</h1>");
    dir
}

#[tokio::test]
async fn custom_error_pages_are_served_for_service_errors() {
    let proxy = start_proxy();
    let target = Target::start().await;
    let up = Upstream::start("web");
    let pages = error_pages_dir();
    let pages_path = pages.path().to_str().unwrap().to_owned();
    deploy(
        &proxy,
        &target.address(),
        &["--error-pages", &pages_path, "--target-timeout=300ms"],
    )
    .await;

    let reply = get(&proxy, HOST, "/hang-up").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.text(), "<h1>custom 502</h1><footer>custom</footer>");
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );

    // 504: the shared upstream answers /slow after the target timeout.
    proxy
        .deploy_async(
            "slow",
            &[
                "--target",
                &up.address(),
                "--host",
                "slow.test",
                "--error-pages",
                &pages_path,
                "--target-timeout=300ms",
            ],
        )
        .await;
    let reply = get(&proxy, "slow.test", "/slow?ms=2000").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.text(), "<h1>custom 504</h1>");

    // 503 with the stop message, escaped.
    let out = proxy
        .cli_async(&["stop", "app", "--message", "Back at 5 <soon>"])
        .await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr_text());
    let reply = get(&proxy, HOST, "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        reply.text(),
        "<h1>custom 503</h1><p>Back at 5 &lt;soon&gt;</p>"
    );

    // The router's 404 is not the service's: the built-in page (spec §9.2).
    let reply = get(&proxy, "unknown.test", "/").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(!reply.text().contains("custom"));
}

#[tokio::test]
async fn deploy_with_bad_error_pages_fails_and_the_old_service_answers() {
    let proxy = start_proxy();
    let up = Upstream::start("old");
    deploy(&proxy, &up.address(), &[]).await;
    let empty = tempfile::tempdir().expect("temp dir");

    for bad in [
        "/nonexistent/kamal-proxy-pages",
        empty.path().to_str().unwrap(),
    ] {
        let target = up.address();
        let out = proxy
            .cli_async(&[
                "deploy",
                "app",
                "--target",
                &target,
                "--host",
                HOST,
                "--error-pages",
                bad,
            ])
            .await;
        assert_ne!(out.code(), Some(0), "deploy with {bad} succeeded");
        assert!(
            out.stderr_text().contains("unable to load error pages"),
            "{}",
            out.stderr_text()
        );
        let reply = get(&proxy, HOST, "/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.upstream(), Some("old"));
    }
}

#[tokio::test]
async fn malformed_chunked_upload_is_400_before_the_target_is_contacted() {
    let proxy = start_proxy();
    let target = Target::start().await;
    deploy(&proxy, &target.address(), &["--buffer-requests"]).await;

    let request = format!(
        "POST /sum HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
    );
    let reply = client::raw_exchange(
        proxy.http_port(),
        request.as_bytes(),
        Duration::from_secs(2),
        Duration::from_secs(10),
    )
    .await
    .expect("an answer");
    assert_eq!(
        client::status_of(&reply),
        Some(400),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert!(String::from_utf8_lossy(&reply).contains("<h1>400 Bad Request</h1>"));
    assert_eq!(target.sum_heads(), 0, "the target was never contacted");
    let logged = proxy.wait_for_log(
        |l| l["msg"] == "Malformed chunked request" && l["path"] == "/sum",
        Duration::from_secs(5),
    );
    let logged = logged.expect("INFO Malformed chunked request");
    assert!(
        logged["error"].as_str().unwrap_or("").contains("chunk"),
        "the cause is logged: {logged}"
    );
}
