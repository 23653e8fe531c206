//! Listeners and connections: accepting TCP, serving HTTP/1.1 and h2c with hyper-util, and
//! shutting down gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt as _;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
    serve_io(
        ReadAhead::new(stream),
        conn,
        handler,
        builder,
        graceful,
        None,
    );
}

/// Size of the first read on a plain-HTTP connection: enough for a typical request head.
const FIRST_READ: usize = 4096;

/// A connection whose first read asks the socket for up to [`FIRST_READ`] bytes and hands them
/// out from memory.
///
/// hyper-util's protocol detection reads the first 24 bytes alone (to tell an HTTP/2 preface
/// from an HTTP/1.1 request), which would cost every connection one extra `read(2)`: reading
/// ahead turns the detection read and hyper's first read of the head into one system call.
struct ReadAhead<IO> {
    io: IO,
    /// Bytes read from the socket but not yet handed out, from `pos` on; `None` once drained.
    ahead: Option<(Box<[u8]>, usize, usize)>,
    /// Whether the first read has happened.
    started: bool,
}

impl<IO> ReadAhead<IO> {
    fn new(io: IO) -> Self {
        Self {
            io,
            ahead: None,
            started: false,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ReadAhead<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some((data, pos, end)) = &mut this.ahead {
            let n = buf.remaining().min(*end - *pos);
            buf.put_slice(&data[*pos..*pos + n]);
            *pos += n;
            if *pos == *end {
                this.ahead = None;
            }
            return Poll::Ready(Ok(()));
        }
        if this.started || buf.remaining() >= FIRST_READ {
            this.started = true;
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let mut data = vec![0; FIRST_READ].into_boxed_slice();
        let mut first = ReadBuf::new(&mut data);
        std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut first))?;
        this.started = true;
        let end = first.filled().len();
        let n = buf.remaining().min(end);
        buf.put_slice(&data[..n]);
        if n < end {
            this.ahead = Some((data, n, end));
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ReadAhead<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
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
            // Boxed: the request's future is large, and hyper moves the service's future
            // into its connection state; a pointer moves cheaply.
            let call = Box::pin(handler.call(req.map(RequestBody::Http), conn));
            let mut response = AssertUnwindSafe(call)
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
    let watcher = graceful.watcher();
    // The connection future (about 2 KiB) is built inside its task, so it is moved once, into
    // the task's state, rather than through every layer on the way to `spawn`.
    tokio::spawn(async move {
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        // Connection errors (resets, malformed requests already answered by hyper) are the
        // client's business; there is nothing useful to log at info level.
        if let Err(e) = watcher.watch(connection).await {
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

    #[tokio::test]
    async fn read_ahead_serves_the_first_read_from_one_larger_read() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut server = ReadAhead::new(server);
        let head = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
        client.write_all(head).await.unwrap();
        // The protocol sniffer's small read, then the rest from memory: nothing else was sent.
        let mut sniff = [0u8; 24];
        server.read_exact(&mut sniff).await.unwrap();
        assert_eq!(&sniff[..], &head[..24]);
        let mut rest = vec![0u8; 8192];
        let n = server.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], &head[24..]);
        assert!(server.ahead.is_none());
        // Later reads go straight to the connection, and writes always do.
        client.write_all(b"more").await.unwrap();
        let n = server.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], b"more");
        server.write_all(b"reply").await.unwrap();
        let mut reply = [0u8; 5];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"reply");
    }

    #[tokio::test]
    async fn read_ahead_reports_end_of_stream() {
        use tokio::io::AsyncReadExt as _;
        let (client, server) = tokio::io::duplex(1024);
        drop(client);
        let mut server = ReadAhead::new(server);
        let mut sniff = [0u8; 24];
        assert_eq!(server.read(&mut sniff).await.unwrap(), 0);
    }

    #[test]
    fn io_errors_read_like_go() {
        let e = std::io::Error::from_raw_os_error(98);
        assert_eq!(io_message(&e), "address already in use");
    }
}
