//! Listeners and connections: accepting TCP, serving HTTP/1.1 and h2c with hyper-util, and
//! shutting down gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::access_log::ConnInfo;
use crate::body::ResponseBody;
use crate::tls::Tls;

/// Largest request head accepted; larger heads get 431 (Go allows 1 MB plus slack).
pub(crate) const MAX_HEAD_BYTES: usize = 1024 * 1024 + 4096;
/// A client must send a complete request head within this time once it starts one, so idle or
/// trickling connections cannot pin memory forever (upstream has no limit at all).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The body of a request from any listener: hyper's (HTTP/1.1, HTTP/2) or an HTTP/3 stream.
#[derive(Debug)]
pub enum RequestBody {
    /// From an HTTP/1.1 or HTTP/2 connection.
    Http(Incoming),
    /// From an HTTP/3 request stream.
    Http3(crate::http3::H3Body),
}

impl http_body::Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        // Both bodies are `Unpin`.
        match self.get_mut() {
            RequestBody::Http(body) => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            RequestBody::Http3(body) => std::pin::Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Http(body) => body.is_end_stream(),
            RequestBody::Http3(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            RequestBody::Http(body) => body.size_hint(),
            RequestBody::Http3(body) => body.size_hint(),
        }
    }
}

/// What serves each request: the whole proxy stack.
pub trait HttpHandler: Send + Sync + 'static {
    /// Answers one request. Never fails: errors are already turned into responses.
    fn call(
        self: Arc<Self>,
        req: Request<RequestBody>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static;
}

/// Binds a TCP listener on all interfaces (IPv6 and IPv4 where available), like Go's `:port`.
pub async fn bind(port: u16) -> Result<TcpListener, String> {
    let v6: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, port).into();
    match TcpListener::bind(v6).await {
        Ok(l) => Ok(l),
        // No IPv6 on this host: fall back to IPv4 only.
        Err(_) => {
            let v4: SocketAddr = (std::net::Ipv4Addr::UNSPECIFIED, port).into();
            TcpListener::bind(v4)
                .await
                .map_err(|e| format!("listen tcp :{port}: bind: {}", io_message(&e)))
        }
    }
}

/// Go-style text of an OS error, e.g. `address already in use`.
pub fn io_message(e: &std::io::Error) -> String {
    let s = e.to_string();
    // std renders "Address already in use (os error 98)"; Go writes the lower-case strerror.
    let s = s.split(" (os error").next().unwrap_or(&s).to_string();
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => s,
    }
}

/// The hyper-util connection builder with our limits and timers.
pub fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .half_close(false)
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(250)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    builder
}

/// Accepts connections until `stop` fires; each connection is watched by `graceful`.
pub async fn accept_loop<H: HttpHandler>(
    listener: TcpListener,
    tls: bool,
    configured_port: u16,
    handler: Arc<H>,
    graceful: Arc<GracefulShutdown>,
    stop: CancellationToken,
) {
    let builder = Arc::new(builder());
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::error!(error = %e, "Error accepting connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let conn = ConnInfo {
            peer: canonical_peer(peer),
            tls,
            port: configured_port,
        };
        serve_connection(
            stream,
            conn,
            Arc::clone(&handler),
            Arc::clone(&builder),
            &graceful,
        );
    }
}

fn serve_connection<H: HttpHandler>(
    stream: TcpStream,
    conn: ConnInfo,
    handler: Arc<H>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
) {
    let _ = stream.set_nodelay(true);
    serve_io(stream, conn, handler, builder, graceful, None);
}

/// Serves HTTP/1.1 and HTTP/2 on an established byte stream (plain TCP or TLS).
fn serve_io<H, IO>(
    io: IO,
    conn: ConnInfo,
    handler: Arc<H>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
    alt_svc: Option<HeaderValue>,
) where
    H: HttpHandler,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let handler = Arc::clone(&handler);
        let alt_svc = alt_svc.clone();
        async move {
            // A bug in one request must not take the connection task (or the process) down.
            let mut response = AssertUnwindSafe(handler.call(req.map(RequestBody::Http), conn))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    tracing::error!("Request handler panicked");
                    crate::rescue::page(StatusCode::INTERNAL_SERVER_ERROR, None)
                });
            // HTTP/3 is advertised on every HTTPS response; a target's own value wins (§10.7).
            if let Some(value) = alt_svc {
                if let http::header::Entry::Vacant(slot) =
                    response.headers_mut().entry(http::header::ALT_SVC)
                {
                    slot.insert(value);
                }
            }
            Ok::<_, Infallible>(response)
        }
    });
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    let watched = graceful.watch(connection);
    tokio::spawn(async move {
        // Connection errors (resets, malformed requests already answered by hyper) are the
        // client's business; there is nothing useful to log at info level.
        if let Err(e) = watched.await {
            tracing::debug!(error = %e, "Connection error");
        }
    });
}

/// Accepts TLS connections until `stop` fires. Each handshake runs in its own task (a slow or
/// stalled client never holds up the others); failures are logged at DEBUG only, because
/// scanners cause a steady stream of them (upstream logs them at INFO). With `alt_svc` (HTTP/3
/// on), every response advertises it.
pub async fn tls_accept_loop<H: HttpHandler>(
    listener: TcpListener,
    configured_port: u16,
    tls: Arc<Tls>,
    handler: Arc<H>,
    graceful: &Arc<GracefulShutdown>,
    stop: CancellationToken,
    alt_svc: Option<HeaderValue>,
) {
    let builder = Arc::new(builder());
    // Handshake tasks hold the shutdown watcher weakly, so shutdown can take it back.
    let weak_graceful = Arc::downgrade(graceful);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::error!(error = %e, "Error accepting connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let peer = canonical_peer(peer);
        let conn = ConnInfo {
            peer,
            tls: true,
            port: configured_port,
        };
        let (tls, handler, builder) =
            (Arc::clone(&tls), Arc::clone(&handler), Arc::clone(&builder));
        let graceful = weak_graceful.clone();
        let stop = stop.clone();
        let alt_svc = alt_svc.clone();
        tokio::spawn(async move {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = tls.accept(stream) => accepted,
            };
            match accepted {
                Ok(Some(stream)) => {
                    if let Some(graceful) = graceful.upgrade() {
                        serve_io(stream, conn, handler, builder, &graceful, alt_svc);
                    }
                }
                Ok(None) => {}
                Err(reason) => {
                    tracing::debug!("http: TLS handshake error from {peer}: {reason}");
                }
            }
        });
    }
}

/// IPv4 clients arrive on the dual-stack socket as `::ffff:a.b.c.d`; log them as IPv4.
pub(crate) fn canonical_peer(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => peer,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv4_peers_are_unwrapped() {
        let p: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();
        assert_eq!(
            canonical_peer(p),
            "127.0.0.1:80".parse::<SocketAddr>().unwrap()
        );
        let p: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(canonical_peer(p), p);
    }

    #[test]
    fn io_errors_read_like_go() {
        let e = std::io::Error::from_raw_os_error(98);
        assert_eq!(io_message(&e), "address already in use");
    }
}
