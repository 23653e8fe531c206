//! Listeners and connections: accepting TCP, serving HTTP/1.1 (the common requests in
//! `kamal_http1`, everything else and h2c with hyper-util), and shutting down gracefully.

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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

use crate::access_log::ConnInfo;
use crate::body::ResponseBody;
use crate::tls::Tls;

/// Largest request head accepted; larger heads get 431 (Go allows 1 MB plus slack).
pub(crate) const MAX_HEAD_BYTES: usize = 1024 * 1024 + 4096;
/// A client must send a complete request head within this time, and an idle keep-alive
/// connection is closed after about this long without a request (hyper's header-read timer runs
/// while it waits for a head; `kamal_http1` closes idle connections after one to two of these),
/// so idle or trickling connections cannot pin memory forever (upstream has no limit at all).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The body of a request from any listener: hyper's (HTTP/1.1, HTTP/2) or an HTTP/3 stream.
#[derive(Debug)]
pub enum RequestBody {
    /// From an HTTP/1.1 or HTTP/2 connection.
    Http(Incoming),
    /// From an HTTP/3 request stream.
    Http3(crate::http3::H3Body),
    /// No body: a `GET` or `HEAD` served by `kamal_http1`.
    Empty,
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
            RequestBody::Empty => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Http(body) => body.is_end_stream(),
            RequestBody::Http3(body) => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            RequestBody::Http(body) => body.size_hint(),
            RequestBody::Http3(body) => body.size_hint(),
            RequestBody::Empty => http_body::SizeHint::with_exact(0),
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

/// Every connection of every TCP listener, so that shutdown can tell them to finish what they
/// are doing and wait until they have.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    stop: kamal_http1::Stop,
    tracker: TaskTracker,
}

impl Connections {
    /// No connections yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs a connection in a task of its own, counted until it ends.
    fn spawn(&self, connection: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(connection);
    }

    /// Asks every connection to close once its request in flight is answered (idle ones close
    /// at once), and waits until all have closed.
    pub async fn shutdown(&self) {
        self.tracker.close();
        self.stop.stop();
        self.tracker.wait().await;
    }
}

/// Accepts connections until `stop` fires; each connection is counted in `connections`.
pub async fn accept_loop<H: HttpHandler>(
    listener: TcpListener,
    tls: bool,
    configured_port: u16,
    handler: Arc<H>,
    connections: Connections,
    stop: CancellationToken,
) {
    let builder = Arc::new(builder());
    let inherited = nodelay_inherited(&listener);
    // One wait for the whole loop: a fresh one per connection would enter and leave the
    // token's waiter list (a lock each way) on every accept.
    let mut stopped = std::pin::pin!(stop.cancelled());
    while let Some((stream, peer)) = next_connection(&listener, inherited, stopped.as_mut()).await {
        let conn = ConnInfo {
            peer: canonical_peer(peer),
            tls,
            port: configured_port,
        };
        let (handler, builder) = (Arc::clone(&handler), Arc::clone(&builder));
        let stop = connections.stop.clone();
        // The task holds only a box: tokio moves a task's future several times on the way
        // into its cell (spawn, bind, and each stage change), and the connection's future is
        // about 1.5 KB, moved once here instead.
        connections.spawn(async move {
            Box::pin(async move {
                let fallback = {
                    let (handler, token) = (Arc::clone(&handler), stop.token().clone());
                    // Boxed: hyper's connection future (about 1.9 KB) would otherwise make every
                    // connection's future that much larger, for the rare connection that is not
                    // plain HTTP/1.1.
                    move |stream, read: bytes::Bytes| {
                        Box::pin(serve_hyper(
                            Prefixed::new(stream, read),
                            conn,
                            handler,
                            builder,
                            token,
                            None,
                        ))
                    }
                };
                let call = |req: Request<()>| {
                    answer(
                        Arc::clone(&handler),
                        req.map(|()| RequestBody::Empty),
                        conn,
                        None,
                    )
                };
                kamal_http1::serve(stream, call, &stop, HEADER_READ_TIMEOUT, fallback).await;
            })
            .await;
        });
    }
}

/// The next connection on `listener`, with Nagle's algorithm off, or `None` once `stopped`
/// completes. A connection that failed before it was accepted is skipped at once; running out
/// of file descriptors or memory is logged and backed off rather than retried in a spin.
async fn next_connection(
    listener: &TcpListener,
    nodelay_inherited: bool,
    mut stopped: Pin<&mut WaitForCancellationFuture<'_>>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stopped.as_mut() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if !nodelay_inherited {
                        let _ = stream.set_nodelay(true);
                    }
                    return Some((stream, peer));
                }
                Err(e) if failed_before_accept(&e) => {}
                Err(e) => {
                    tracing::error!(error = %e, "Error accepting connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Errors `accept` reports for one pending connection rather than for the listener: the client
/// reset it while it waited in the queue, or (Linux passes these on from the new socket) its
/// network failed. Go retries these at once too; backing off would stall every other client.
fn failed_before_accept(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
        || matches!(
            e.raw_os_error(),
            Some(
                libc::EPROTO
                    | libc::ENETDOWN
                    | libc::ENOPROTOOPT
                    | libc::EHOSTDOWN
                    | libc::ENONET
                    | libc::EHOSTUNREACH
                    | libc::EOPNOTSUPP
                    | libc::ENETUNREACH
            )
        )
}

/// Turns off Nagle's algorithm on `listener`, and tells whether its connections inherit that:
/// Linux copies a listening socket's options into each socket it accepts, which saves a system
/// call per connection. Elsewhere, or if the option cannot be set, each connection sets its own.
fn nodelay_inherited(listener: &TcpListener) -> bool {
    cfg!(target_os = "linux")
        && socket2::SockRef::from(listener)
            .set_tcp_nodelay(true)
            .is_ok()
}

/// Answers one request: the handler's response, or a 500 page if it panicked (a bug in one
/// request must not take the connection task, or the process, down). With `alt_svc` (HTTPS with
/// HTTP/3 on) the response advertises HTTP/3 unless the target set its own value (§10.7).
async fn answer<H: HttpHandler>(
    handler: Arc<H>,
    req: Request<RequestBody>,
    conn: ConnInfo,
    alt_svc: Option<HeaderValue>,
) -> Response<ResponseBody> {
    // Boxed: the request's future is large, and callers move the future this one is part of;
    // a pointer moves cheaply.
    let call = Box::pin(handler.call(req, conn));
    let mut response = AssertUnwindSafe(call)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::error!("Request handler panicked");
            crate::rescue::page(StatusCode::INTERNAL_SERVER_ERROR, None)
        });
    if let Some(value) = alt_svc {
        if let http::header::Entry::Vacant(slot) =
            response.headers_mut().entry(http::header::ALT_SVC)
        {
            slot.insert(value);
        }
    }
    response
}

/// A connection whose first bytes were already read: they are handed out before the
/// connection's own.
struct Prefixed<IO> {
    io: IO,
    read: bytes::Bytes,
}

impl<IO> Prefixed<IO> {
    fn new(io: IO, read: bytes::Bytes) -> Self {
        Self { io, read }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let n = buf.remaining().min(this.read.len());
            buf.put_slice(&this.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
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

/// Serves HTTP/1.1 and HTTP/2 with hyper-util on an established byte stream (TLS, or plain TCP
/// that `kamal_http1` handed over) until it closes; `stop` makes it finish gracefully.
async fn serve_hyper<H, IO>(
    io: IO,
    conn: ConnInfo,
    handler: Arc<H>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: CancellationToken,
    alt_svc: Option<HeaderValue>,
) where
    H: HttpHandler,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let response = answer(
            Arc::clone(&handler),
            req.map(RequestBody::Http),
            conn,
            alt_svc.clone(),
        );
        async move { Ok::<_, Infallible>(response.await) }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    // Connection errors (resets, malformed requests already answered by hyper) are the
    // client's business; there is nothing useful to log at info level.
    if let Err(e) = result {
        tracing::debug!(error = %e, "Connection error");
    }
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
    connections: Connections,
    stop: CancellationToken,
    alt_svc: Option<HeaderValue>,
) {
    let builder = Arc::new(builder());
    let inherited = nodelay_inherited(&listener);
    let mut stopped = std::pin::pin!(stop.cancelled());
    while let Some((stream, peer)) = next_connection(&listener, inherited, stopped.as_mut()).await {
        let peer = canonical_peer(peer);
        let conn = ConnInfo {
            peer,
            tls: true,
            port: configured_port,
        };
        let (tls, handler, builder) =
            (Arc::clone(&tls), Arc::clone(&handler), Arc::clone(&builder));
        let shutdown = connections.stop.token().clone();
        let alt_svc = alt_svc.clone();
        // Handshakes are counted too: shutdown waits for them, and they end at once on `stop`.
        // Boxed for the same reason as in `accept_loop`.
        connections.spawn(async move {
            Box::pin(async move {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = tls.accept(stream) => accepted,
                };
                match accepted {
                    Ok(Some(stream)) => {
                        serve_hyper(stream, conn, handler, builder, shutdown, alt_svc).await;
                    }
                    Ok(None) => {}
                    Err(reason) => {
                        tracing::debug!("http: TLS handshake error from {peer}: {reason}");
                    }
                }
            })
            .await;
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
    async fn prefixed_hands_out_what_was_read_then_the_connection() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut server = Prefixed::new(server, bytes::Bytes::from_static(b"GET / HTTP/1.1\r\n"));
        client.write_all(b"Host: a\r\n\r\n").await.unwrap();
        // Small reads are served from the prefix first, in order.
        let mut first = [0u8; 4];
        server.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"GET ");
        let mut rest = vec![0u8; 1024];
        let n = server.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], b"/ HTTP/1.1\r\n");
        let n = server.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], b"Host: a\r\n\r\n");
        // Writes always go to the connection.
        server.write_all(b"reply").await.unwrap();
        let mut reply = [0u8; 5];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"reply");
        drop(client);
        assert_eq!(server.read(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inherited = nodelay_inherited(&listener);
        assert_eq!(inherited, cfg!(target_os = "linux"));
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        if !inherited {
            stream.set_nodelay(true).unwrap();
        }
        // What the accept loops rely on: no per-connection call needed where inherited.
        assert!(stream.nodelay().unwrap());
    }

    #[test]
    fn accept_skips_a_failed_connection_and_backs_off_when_out_of_resources() {
        let os = std::io::Error::from_raw_os_error;
        for code in [
            libc::ECONNABORTED,
            libc::ECONNRESET,
            libc::EINTR,
            libc::EPROTO,
        ] {
            assert!(failed_before_accept(&os(code)), "{code}");
        }
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(!failed_before_accept(&os(code)), "{code}");
        }
    }

    #[test]
    fn io_errors_read_like_go() {
        let e = std::io::Error::from_raw_os_error(98);
        assert_eq!(io_message(&e), "address already in use");
    }
}
