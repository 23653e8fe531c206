//! Forwarding one request to one target over a pooled HTTP/1.1 client (§4.10, §7.2–§7.7).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{self, Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::percent_decode_str;
use tokio::sync::oneshot;

use crate::body::{DrainWatch, ProxyBody, RequestBody};
use crate::forward_error::{BoxError, ForwardError};
use crate::headers::{self, RequestInfo};
use crate::inflight::Lease;
use crate::upgrade;

/// Idle keep-alive connections kept per target (Go's `MaxIdleConnsPerHost` in kamal-proxy).
const MAX_IDLE_PER_TARGET: usize = 100;
/// TCP keep-alive probe interval on upstream connections (Go's dialer default).
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// Where a request goes: a target's address and the label written into `X-Kamal-Target`.
#[derive(Debug, Clone)]
pub struct ForwardTarget {
    authority: Authority,
    label: HeaderValue,
}

impl ForwardTarget {
    /// A target at `authority` (`host:port`), labelled with its address.
    pub fn new(authority: Authority) -> Self {
        // Every character an authority may hold is allowed in a header value.
        let label = HeaderValue::from_str(authority.as_str())
            .expect("authority characters are valid header value characters");
        Self { authority, label }
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

/// Forwards requests to targets over a shared pool of HTTP/1.1 keep-alive connections.
///
/// Cloning is cheap and clones share the pool. Requests whose connection turns out to have
/// been closed by the target before the request was written are retried on a new connection.
#[derive(Debug)]
pub struct Forwarder<B> {
    client: Client<HttpConnector, RequestBody<B>>,
}

impl<B> Clone for Forwarder<B> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
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
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_keepalive(Some(TCP_KEEPALIVE));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IDLE_PER_TARGET)
            .pool_idle_timeout(None)
            // On by default; stated because the behaviour matters: a request that failed on a
            // reused connection before any of it was written is sent again on a new one.
            .retry_canceled_requests(retry_reused)
            .build(connector);
        Self { client }
    }

    /// Forwards `req` to `upstream` and returns the response to send to the client.
    ///
    /// The lease stays held by the returned body until it has been streamed (or by the tunnel
    /// of an upgraded connection). Failures are logged here as §11.3 asks; the caller only
    /// turns them into a response with [`ForwardError::status`].
    ///
    /// Upgrades need the client connection to be served with hyper's `with_upgrades()`; the
    /// returned `101` must reach the server unchanged for the tunnel to start.
    pub async fn forward(
        &self,
        req: Request<B>,
        upstream: &ForwardTarget,
        lease: Lease,
        ctx: &ForwardContext,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        let (mut parts, body) = req.into_parts();
        let (result, original_uri) = match upstream_uri(&parts.uri, upstream, ctx) {
            Ok(uri) => {
                let original_uri = std::mem::replace(&mut parts.uri, uri);
                let result = self
                    .send(parts, body, &original_uri, upstream, lease, ctx)
                    .await;
                (result, original_uri)
            }
            Err(error) => (Err(error), parts.uri),
        };
        if let Err(error) = &result {
            let path = percent_decode_str(original_uri.path()).decode_utf8_lossy();
            error.log(upstream.label_str(), &path);
        }
        result
    }

    async fn send(
        &self,
        mut parts: http::request::Parts,
        body: B,
        original_uri: &Uri,
        upstream: &ForwardTarget,
        lease: Lease,
        ctx: &ForwardContext,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        // HTTP/2 and absolute-form requests name their host in the URI.
        let host = match original_uri.authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => parts.headers.get(HOST).cloned(),
        };
        let info = RequestInfo {
            client_ip: ctx.client_addr.ip(),
            tls: ctx.tls,
            forward_headers: ctx.forward_headers,
            target_label: upstream.label(),
        };
        let allow_upgrade = parts.version < Version::HTTP_2;
        let protocol = headers::rewrite_request(&mut parts.headers, host, allow_upgrade, &info);
        let client_upgrade = match &protocol {
            Some(p) if !headers::is_printable(p) => {
                return Err(ForwardError::InvalidUpgrade {
                    protocol: String::from_utf8_lossy(p.as_bytes()).into_owned(),
                })
            }
            Some(_) => parts.extensions.remove::<OnUpgrade>(),
            None => None,
        };
        parts.version = Version::HTTP_11;

        // The target timeout counts from the moment the request body has been sent; a request
        // without a body is sent at once.
        let (sent_tx, sent_rx) = if body.is_end_stream() {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        let request = Request::from_parts(parts, RequestBody::new(body, sent_tx));

        let mut watch = DrainWatch::new(&lease);
        let timeout = ctx.target_timeout;
        let timer = async move {
            if let Some(rx) = sent_rx {
                // A dropped sender means the body failed; the request is about to fail too.
                let _ = rx.await;
            }
            tokio::time::sleep(timeout).await;
        };
        let response = tokio::select! {
            biased;
            () = poll_fn(|cx| watch.poll_cancelled(cx)) => return Err(ForwardError::Cancelled),
            response = self.client.request(request) => response,
            () = timer => return Err(ForwardError::ResponseTimeout { timeout }),
        };
        let mut response = response.map_err(|e| ForwardError::from_client(e.into()))?;

        if let Some(protocol) = protocol {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                return upgrade::tunnel(response, &protocol, client_upgrade, lease);
            }
        }
        headers::rewrite_response(response.headers_mut());
        Ok(response.map(|incoming| ProxyBody::streaming(incoming, lease, watch)))
    }
}

/// `http://<target><path and query>`, assembled from parts rather than formatted.
fn upstream_uri(
    original: &Uri,
    upstream: &ForwardTarget,
    ctx: &ForwardContext,
) -> Result<Uri, ForwardError> {
    let path_and_query = match &ctx.upstream_path {
        Some(p) => p.clone(),
        None => original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    let mut parts = uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(upstream.authority.clone());
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).map_err(|e| ForwardError::Upstream { source: e.into() })
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
