//! Keep-alive HTTP/1.1 connections to one target.
//!
//! Each target keeps its idle connections (hyper's `http1::SendRequest` handles) in lock-free
//! queues, recently used ones first (see [`IdleConns`]). A request takes one out (or dials a
//! new one), and the response body puts it back once the response has been read to its end.
//! Compared with a general-purpose pooled client this costs one atomic pop and one push per
//! request in the common case: no pool key to hash, no shared map behind a lock, no boxed
//! futures and no task spawned per request to watch for readiness.

use std::any::Any;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::net::TcpStream;

use crate::direct::DirectConns;
use crate::forward_error::BoxError;
use crate::idle::IdleConns;

/// Idle keep-alive connections kept per target (Go's `MaxIdleConnsPerHost` in kamal-proxy).
pub(crate) const MAX_IDLE_PER_TARGET: usize = 100;
/// TCP keep-alive probe interval on upstream connections (Go's dialer default).
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// The idle connections to one target, for request bodies of type `B`.
pub(crate) struct Conns<B> {
    idle: IdleConns<SendRequest<B>>,
}

impl<B> Conns<B> {
    fn new() -> Self {
        Self {
            idle: IdleConns::new(MAX_IDLE_PER_TARGET),
        }
    }

    /// An idle connection that is not known to be closed, if there is one.
    fn take_idle(&self) -> Option<SendRequest<B>> {
        std::iter::from_fn(|| self.idle.pop()).find(|sender| !sender.is_closed())
    }

    /// Returns a connection whose last response has been read completely. A full pool drops
    /// it, which closes it once its connection task sees the handle gone.
    pub(crate) fn put_back(&self, sender: SendRequest<B>) {
        if !sender.is_closed() {
            let _ = self.idle.push(sender);
        }
    }
}

/// The slot a target keeps its connections in. The body type is chosen by the forwarder that
/// first uses the target, so the slot stores the pool type-erased and checks the type on use.
#[derive(Default)]
pub(crate) struct ConnSlot {
    hyper: OnceLock<Arc<dyn Any + Send + Sync>>,
    direct: OnceLock<Arc<DirectConns>>,
}

impl std::fmt::Debug for ConnSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnSlot")
            .field("hyper", &self.hyper.get().is_some())
            .field("direct", &self.direct.get().is_some())
            .finish()
    }
}

impl ConnSlot {
    /// The target's pool for bodies of type `B`. A forwarder with another body type than
    /// the first one (not something kamal-proxy does) gets a pool of its own each time,
    /// so its connections are simply not reused.
    pub(crate) fn get<B: Send + 'static>(&self) -> Arc<Conns<B>> {
        let erased = self.hyper.get_or_init(|| Arc::new(Conns::<B>::new()));
        match Arc::clone(erased).downcast::<Conns<B>>() {
            Ok(conns) => conns,
            Err(_) => Arc::new(Conns::new()),
        }
    }
}

impl ConnSlot {
    /// The target's connections for the direct path ([`crate::direct`]).
    pub(crate) fn direct(&self) -> Arc<DirectConns> {
        Arc::clone(self.direct.get_or_init(|| Arc::new(DirectConns::new())))
    }
}

/// How a request goes out: whether to retry on a reused connection that had been closed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendPolicy {
    pub(crate) retry_reused: bool,
}

/// A response, the connection it came on, and the idle queue that connection goes back to.
pub(crate) type Sent<B> = (Response<Incoming>, SendRequest<B>, Arc<Conns<B>>);

type SendOutput<B> = Result<Sent<B>, BoxError>;

pin_project! {
    /// The future of [`send`]. Hand-written rather than `async` so that the request is moved
    /// once, into hyper's send future, and not also kept in a suspended function's arguments:
    /// this future is polled inline by every request's (and moved with it).
    #[project = SendProj]
    pub(crate) enum SendFuture<'a, B, F> {
        /// On an idle connection that was ready: hyper is sending the request.
        Fast {
            #[pin]
            sending: F,
            sender: Option<SendRequest<B>>,
            conns: Option<Arc<Conns<B>>>,
            authority: &'a Authority,
            policy: SendPolicy,
        },
        /// Dialling, waiting for a connection to become ready, or retrying.
        Slow {
            fut: Pin<Box<dyn Future<Output = SendOutput<B>> + Send + 'a>>,
        },
    }
}

/// Sends `req` to the target at `authority` over an idle connection from `conns`, or a new
/// one. A request that a reused connection rejected before writing any of it (the target had
/// closed it while idle) is sent again, on the next idle connection or a new one.
///
/// Resolves to the response and the connection, to be put back once the body has been read.
pub(crate) fn send<B>(
    conns: Arc<Conns<B>>,
    authority: &Authority,
    req: Request<B>,
    policy: SendPolicy,
) -> SendFuture<'_, B, impl Future<Output = Result<Response<Incoming>, TrySendError<Request<B>>>>>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    match conns.take_idle() {
        Some(mut sender) if sender.is_ready() => {
            let sending = sender.try_send_request(req);
            SendFuture::Fast {
                sending,
                sender: Some(sender),
                conns: Some(conns),
                authority,
                policy,
            }
        }
        idle => SendFuture::Slow {
            fut: Box::pin(send_slow(conns, authority, req, policy, idle)),
        },
    }
}

impl<B, F> Future for SendFuture<'_, B, F>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    F: Future<Output = Result<Response<Incoming>, TrySendError<Request<B>>>>,
{
    type Output = SendOutput<B>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SendOutput<B>> {
        let retry = match self.as_mut().project() {
            SendProj::Slow { fut } => return fut.as_mut().poll(cx),
            SendProj::Fast {
                sending,
                sender,
                conns,
                authority,
                policy,
            } => match ready!(sending.poll(cx)) {
                Ok(response) => {
                    let (Some(sender), Some(conns)) = (sender.take(), conns.take()) else {
                        panic!("SendFuture polled after completion");
                    };
                    return Poll::Ready(Ok((response, sender, conns)));
                }
                Err(mut error) => match (error.take_message(), conns.take()) {
                    (Some(unsent), Some(conns)) if policy.retry_reused => {
                        tracing::debug!("reused connection was closed; sending again");
                        send_slow(conns, authority, unsent, *policy, None)
                    }
                    _ => return Poll::Ready(Err(error.into_error().into())),
                },
            },
        };
        self.set(SendFuture::Slow {
            fut: Box::pin(retry),
        });
        self.poll(cx)
    }
}

/// Everything but the fast path: waits for `idle` (a connection not marked ready yet) or the
/// next idle one, dials when there is none, and retries on reused connections found closed.
async fn send_slow<B>(
    conns: Arc<Conns<B>>,
    authority: &Authority,
    mut req: Request<B>,
    policy: SendPolicy,
    mut idle: Option<SendRequest<B>>,
) -> SendOutput<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    loop {
        let (mut sender, reused) = match idle.take().or_else(|| conns.take_idle()) {
            Some(sender) => (sender, true),
            None => (connect(authority).await?, false),
        };
        // A connection put back at the end of a body may not have been marked ready by its
        // task yet; that follows at once, unless the connection is closing.
        if reused && !sender.is_ready() && sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(response) => return Ok((response, sender, conns)),
            Err(mut error) => match error.take_message() {
                Some(unsent) if reused && policy.retry_reused => {
                    tracing::debug!("reused connection was closed; sending again");
                    req = unsent;
                }
                _ => return Err(error.into_error().into()),
            },
        }
    }
}

/// A connection to a target failed to open.
#[derive(Debug, thiserror::Error)]
#[error("dial tcp {address}: {source}")]
pub(crate) struct DialError {
    address: String,
    #[source]
    source: io::Error,
}

/// Opens a connection and spawns the task that drives it (with upgrades, for WebSockets).
async fn connect<B>(authority: &Authority) -> Result<SendRequest<B>, BoxError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = dial(authority).await?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(error = %error, "upstream connection closed with an error");
        }
    });
    Ok(sender)
}

/// Connects to each address the target's host resolves to, in order, until one answers.
pub(crate) async fn dial(authority: &Authority) -> Result<TcpStream, DialError> {
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host();
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse::<IpAddr>();
    let failed = |source| DialError {
        address: authority.to_string(),
        source,
    };
    let addresses: Vec<SocketAddr> = match literal {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(failed)?
            .collect(),
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses found");
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                configure(&stream).map_err(failed)?;
                return Ok(stream);
            }
            Err(error) => last = error,
        }
    }
    Err(failed(last))
}

/// No Nagle delay (requests and responses are written whole) and Go's keep-alive probes.
fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(TCP_KEEPALIVE);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_keeps_one_pool_per_body_type() {
        let slot = ConnSlot::default();
        let a = slot.get::<String>();
        let b = slot.get::<String>();
        assert!(Arc::ptr_eq(&a, &b));
        let other = slot.get::<Vec<u8>>();
        let again = slot.get::<Vec<u8>>();
        assert!(
            !Arc::ptr_eq(&other, &again),
            "a second body type is not pooled"
        );
    }

    #[tokio::test]
    async fn dial_error_names_the_address() {
        // Port 1: nothing listens there, and no other test can take it meanwhile.
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let authority: Authority = addr.to_string().parse().unwrap();
        let error = dial(&authority).await.unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with(&format!("dial tcp {addr}: ")), "{text}");
        assert_eq!(error.source.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn dial_resolves_names() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let authority: Authority = format!("localhost:{port}").parse().unwrap();
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        // localhost may resolve to ::1 first, where nothing listens: the next address is tried.
        let stream = dial(&authority).await.unwrap();
        assert!(stream.peer_addr().unwrap().ip().is_loopback());
        accept.await.unwrap().unwrap();
    }
}
