//! Forwarding one request to one target over a keep-alive HTTP/1.1 connection (§4.10,
//! §7.2–§7.7).

use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::TrySendError;
use hyper::upgrade::OnUpgrade;
use percent_encoding::percent_decode_str;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::body::{Checkin, ProxyBody, RequestBody};
use crate::conns::{self, ConnSlot, Conns, SendFuture, SendPolicy};
use crate::direct::{self, DirectBody, DirectSend};
use crate::forward_error::{BoxError, ForwardError};
use crate::headers::{self, RequestInfo};
use crate::inflight::Lease;
use crate::upgrade;

/// Where a request goes: a target's address, the label written into `X-Kamal-Target`, and
/// the target's idle keep-alive connections (shared by clones).
#[derive(Debug, Clone)]
pub struct ForwardTarget {
    authority: Authority,
    /// The `Host` sent when the request has none (an HTTP/1.0 request without one).
    host: HeaderValue,
    label: HeaderValue,
    conns: Arc<ConnSlot>,
}

impl ForwardTarget {
    /// A target at `authority` (`host:port`), labelled with its address.
    pub fn new(authority: Authority) -> Self {
        // Every character an authority may hold is allowed in a header value.
        let label = HeaderValue::from_str(authority.as_str())
            .expect("authority characters are valid header value characters");
        Self {
            authority,
            host: label.clone(),
            label,
            conns: Arc::default(),
        }
    }

    /// Replaces the label written into `X-Kamal-Target` and logs.
    pub fn with_label(mut self, label: HeaderValue) -> Self {
        self.label = label;
        self
    }

    /// The target's address.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The target's label.
    pub fn label(&self) -> &HeaderValue {
        &self.label
    }

    fn label_str(&self) -> &str {
        self.label.to_str().unwrap_or(self.authority.as_str())
    }
}

/// What the forwarder needs to know about one request beyond the request itself.
#[derive(Debug, Clone)]
pub struct ForwardContext {
    /// The client's socket address (the TCP peer).
    pub client_addr: SocketAddr,
    /// Whether the request arrived over TLS.
    pub tls: bool,
    /// Whether client-supplied `X-Forwarded-*` and `X-Kamal-Target` values are kept.
    pub forward_headers: bool,
    /// How long to wait for the response headers once the request has been sent.
    pub target_timeout: Duration,
    /// The upstream path and query from routing (prefix stripped); `None` keeps the request's.
    pub upstream_path: Option<PathAndQuery>,
}

/// Forwards requests to targets over their keep-alive connections.
///
/// Cloning is cheap; the connections belong to the targets. Requests whose connection turns
/// out to have been closed by the target before the request was written are retried on
/// another connection.
#[derive(Debug)]
pub struct Forwarder<B> {
    policy: SendPolicy,
    _body: PhantomData<fn(B)>,
}

impl<B> Clone for Forwarder<B> {
    fn clone(&self) -> Self {
        Self {
            policy: self.policy,
            _body: PhantomData,
        }
    }
}

impl<B> Default for Forwarder<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<B> Forwarder<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// A forwarder with kamal-proxy's upstream settings: HTTP/1.1 only, up to 100 idle
    /// connections per target, no idle timeout, no connect timeout beyond the OS's.
    pub fn new() -> Self {
        Self::with_retry(true)
    }

    fn with_retry(retry_reused: bool) -> Self {
        Self {
            policy: SendPolicy { retry_reused },
            _body: PhantomData,
        }
    }

    /// Forwards `req` to `upstream` and returns the response to send to the client.
    ///
    /// The lease stays held by the returned body until it has been streamed (or by the tunnel
    /// of an upgraded connection). Failures are logged here as §11.3 asks; the caller only
    /// turns them into a response with [`ForwardError::status`].
    ///
    /// Upgrades need the client connection to be served with hyper's `with_upgrades()`; the
    /// returned `101` must reach the server unchanged for the tunnel to start.
    ///
    /// The request is prepared (headers rewritten, connection chosen) before the first poll;
    /// the returned future holds only what the exchange needs.
    pub fn forward<'a>(
        &self,
        req: Request<B>,
        upstream: &'a ForwardTarget,
        lease: Lease,
        ctx: &ForwardContext,
    ) -> impl Future<Output = Result<Response<ProxyBody<B>>, ForwardError>> + Send + 'a {
        let (mut parts, body) = req.into_parts();
        let uri = upstream_uri(&parts.uri, ctx);
        let original_uri = std::mem::replace(&mut parts.uri, uri);

        // HTTP/2 and absolute-form requests name their host in the URI.
        let host = match original_uri.authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => parts.headers.get(HOST).cloned(),
        }
        .or_else(|| Some(upstream.host.clone()));
        let info = RequestInfo {
            client_ip: ctx.client_addr.ip(),
            tls: ctx.tls,
            forward_headers: ctx.forward_headers,
            target_label: upstream.label(),
        };
        let allow_upgrade = parts.version < Version::HTTP_2;
        let (protocol, added) =
            headers::prepare_request(&mut parts.headers, host.as_ref(), allow_upgrade, &info);
        let client_upgrade = match &protocol {
            Some(p) if !headers::is_printable(p) => {
                let error = ForwardError::InvalidUpgrade {
                    protocol: String::from_utf8_lossy(p.as_bytes()).into_owned(),
                };
                return Forwarding::Failed {
                    error: Some((error, original_uri, upstream)),
                };
            }
            Some(_) => parts.extensions.remove::<OnUpgrade>(),
            None => None,
        };
        parts.version = Version::HTTP_11;

        let has_body = !body.is_end_stream();
        let direct = direct::eligible(&parts.method, has_body, protocol.is_some());
        // The target timeout counts from the moment the request body has been sent; a request
        // without a body is sent at once.
        let (sent_tx, sent_rx) = if has_body {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let exchange = Some(Exchange {
            lease,
            sent: sent_rx,
            armed: false,
            timeout: ctx.target_timeout,
            protocol,
            client_upgrade,
            original_uri,
            upstream,
        });

        if direct {
            let head = direct_head(&mut parts, host, &added);
            let send = DirectSend::new(
                upstream.conns.direct(),
                &upstream.authority,
                head,
                parts.method == http::Method::HEAD,
                self.policy.retry_reused,
                // Without a body the request is sent at once.
                Instant::now() + ctx.target_timeout,
            );
            return Forwarding::Direct { send, exchange };
        }
        added.insert_into(&mut parts.headers);
        if let Some(host) = host {
            parts.headers.insert(HOST, host);
        }
        let request = Request::from_parts(parts, RequestBody::new(body, sent_tx));
        let conns = upstream.conns.get::<RequestBody<B>>();
        Forwarding::Running {
            send: conns::send(conns, &upstream.authority, request, self.policy),
            timer: tokio::time::sleep(ctx.target_timeout),
            exchange,
        }
    }
}

pin_project! {
    /// The future of [`Forwarder::forward`]: the send, the drain watch and the target timeout
    /// polled side by side in one hand-written future (no `select!` state or copies of the
    /// request kept by suspended async functions).
    #[project = ForwardingProj]
    enum Forwarding<'a, B, F> {
        Failed {
            error: Option<(ForwardError, Uri, &'a ForwardTarget)>,
        },
        Running {
            #[pin]
            send: SendFuture<'a, RequestBody<B>, F>,
            // Created with the request; only polled (registered) once the body has been sent.
            #[pin]
            timer: Sleep,
            exchange: Option<Exchange<'a>>,
        },
        // The target timeout runs on the connection's own timer (see `direct`).
        Direct {
            send: DirectSend<'a>,
            exchange: Option<Exchange<'a>>,
        },
    }
}

/// What one exchange needs besides the send itself.
struct Exchange<'a> {
    /// Also watches the drain deadline, polled first on every poll.
    lease: Lease,
    /// Fires when the request body has been sent; `None` for a request without a body.
    sent: Option<oneshot::Receiver<()>>,
    /// Whether the timer runs.
    armed: bool,
    timeout: Duration,
    protocol: Option<HeaderValue>,
    client_upgrade: Option<OnUpgrade>,
    /// For the log line of a failure.
    original_uri: Uri,
    upstream: &'a ForwardTarget,
}

impl<B, F> Future for Forwarding<'_, B, F>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
    F: Future<Output = Result<Response<Incoming>, TrySendError<Request<RequestBody<B>>>>>,
{
    type Output = Result<Response<ProxyBody<B>>, ForwardError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ForwardingProj::Failed { error } => {
                let (error, uri, upstream) = error.take().expect("polled after completion");
                Poll::Ready(Err(failed(error, &uri, upstream)))
            }
            ForwardingProj::Running {
                send,
                timer,
                exchange,
            } => poll_exchange(
                cx,
                exchange,
                &mut (send, timer),
                |(send, _), cx| send.as_mut().poll(cx),
                |(_, timer), ex, cx| {
                    if !ex.armed {
                        if let Some(sent) = &mut ex.sent {
                            // A dropped sender means the body failed; the send fails with it.
                            ready!(Pin::new(sent).poll(cx)).ok();
                            ex.sent = None;
                            timer.as_mut().reset(Instant::now() + ex.timeout);
                        }
                        ex.armed = true;
                    }
                    timer.as_mut().poll(cx)
                },
                |ex, sent| {
                    let (response, sender, conns) = sent;
                    ex.respond(response, sender, conns)
                },
            ),
            ForwardingProj::Direct { send, exchange } => poll_exchange(
                cx,
                exchange,
                send,
                |send, cx| Pin::new(send).poll(cx),
                |send, _, cx| send.poll_deadline(cx),
                |ex, response| ex.respond_direct(response),
            ),
        }
    }
}

/// Polls one exchange: the drain deadline first, then the answer, then the target timeout.
fn poll_exchange<'a, S, T, R>(
    cx: &mut Context<'_>,
    exchange: &mut Option<Exchange<'a>>,
    sending: &mut S,
    send: impl FnOnce(&mut S, &mut Context<'_>) -> Poll<Result<T, BoxError>>,
    timeout: impl FnOnce(&mut S, &mut Exchange<'a>, &mut Context<'_>) -> Poll<()>,
    respond: impl FnOnce(Exchange<'a>, T) -> Result<R, ForwardError>,
) -> Poll<Result<R, ForwardError>> {
    let ex = exchange.as_mut().expect("polled after completion");
    if ex.lease.poll_deadline(cx).is_ready() {
        let ex = exchange.take().expect("checked above");
        return Poll::Ready(Err(failed(
            ForwardError::Cancelled,
            &ex.original_uri,
            ex.upstream,
        )));
    }
    if let Poll::Ready(result) = send(sending, cx) {
        let ex = exchange.take().expect("checked above");
        return Poll::Ready(match result {
            Ok(sent) => respond(ex, sent),
            Err(error) => Err(failed(
                ForwardError::from_client(error),
                &ex.original_uri,
                ex.upstream,
            )),
        });
    }
    ready!(timeout(sending, ex, cx));
    let ex = exchange.take().expect("checked above");
    let error = ForwardError::ResponseTimeout {
        timeout: ex.timeout,
    };
    Poll::Ready(Err(failed(error, &ex.original_uri, ex.upstream)))
}

impl Exchange<'_> {
    /// The response for the client: a tunnel for an accepted upgrade, otherwise the target's
    /// response with its headers rewritten and a body that returns the connection at its end.
    fn respond<B>(
        self,
        mut response: Response<Incoming>,
        sender: SendRequest<RequestBody<B>>,
        conns: Arc<Conns<RequestBody<B>>>,
    ) -> Result<Response<ProxyBody<B>>, ForwardError> {
        if let Some(protocol) = &self.protocol {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                return upgrade::tunnel(response, protocol, self.client_upgrade, self.lease)
                    .map_err(|error| failed(error, &self.original_uri, self.upstream));
            }
        }
        headers::rewrite_response(response.headers_mut());
        let conn = Checkin { sender, conns };
        let conn = if response.body().is_end_stream() {
            // Nothing will poll an empty body: the connection is free already.
            conn.put_back();
            None
        } else {
            Some(conn)
        };
        let lease = self.lease;
        Ok(response.map(|incoming| ProxyBody::streaming(incoming, lease, conn)))
    }
}

impl Exchange<'_> {
    /// The response of the direct path, with its headers rewritten for the client.
    fn respond_direct<B>(
        self,
        mut response: Response<DirectBody>,
    ) -> Result<Response<ProxyBody<B>>, ForwardError> {
        headers::rewrite_response(response.headers_mut());
        let lease = self.lease;
        Ok(response.map(|body| ProxyBody::direct(body, lease)))
    }
}

/// The direct path's request head: what [`headers::rewrite_request`] would leave in the map,
/// encoded, with the added headers written straight into the head and `Host` set only when it
/// differs from the client's single `Host` (usually it is that value).
fn direct_head(
    parts: &mut http::request::Parts,
    host: Option<HeaderValue>,
    added: &headers::Added,
) -> Vec<u8> {
    let mut last = None;
    if let Some(host) = host {
        let mut present = parts.headers.get_all(HOST).iter();
        let (first, more) = (present.next(), present.next().is_some());
        match first {
            Some(value) if *value == host && !more => {}
            // Replaced where it stands, as an insert after the added headers would.
            Some(_) => {
                parts.headers.insert(HOST, host);
            }
            // Inserted after the added headers, so it is written last.
            None => last = Some(host),
        }
    }
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let extra = added
        .lines()
        .chain(last.as_ref().map(|host| ("host", host)));
    direct::encode_head(&parts.method, target, &parts.headers, extra)
}

/// Logs a failure as §11.3 asks and returns it.
fn failed(error: ForwardError, original_uri: &Uri, upstream: &ForwardTarget) -> ForwardError {
    let path = percent_decode_str(original_uri.path()).decode_utf8_lossy();
    error.log(upstream.label_str(), &path);
    error
}

/// The request target sent upstream: origin-form, the routed path and query.
fn upstream_uri(original: &Uri, ctx: &ForwardContext) -> Uri {
    let path_and_query = match &ctx.upstream_path {
        Some(p) => p.clone(),
        None => original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    Uri::from(path_and_query)
}

#[cfg(test)]
impl<B> Forwarder<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// A forwarder that does not retry on reused connections, to show the retry matters.
    pub(crate) fn without_retry() -> Self {
        Self::with_retry(false)
    }
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
