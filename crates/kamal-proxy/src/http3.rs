//! HTTP/3 (`run --http3`, spec §10.7): QUIC with quinn and h3 on UDP at the HTTPS port, the same
//! certificates (TLS 1.3, ALPN `h3`) and the same request path as the TCP listeners.
//!
//! Each request stream is split: the receiving half becomes the request body ([`H3Body`]), the
//! sending half writes the handler's response. On shutdown every connection gets a GOAWAY, its
//! in-flight requests finish, and then it is closed.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes};
use futures_util::FutureExt as _;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use kamal_acme::{CertStore, SniResolver};
use quinn::crypto::rustls::QuicServerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::ConnInfo;
use crate::body::{BoxError, ResponseBody};
use crate::serve::{canonical_peer, HttpHandler, RequestBody};

/// The ALPN protocol of HTTP/3.
const ALPN_H3: &[u8] = b"h3";

/// How long a connection told to go away may stay open for its client to close it.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// `Alt-Svc` max-age in seconds (30 days), as upstream advertises.
const ALT_SVC_MAX_AGE: u32 = 2_592_000;

/// The `Alt-Svc` value the TCP HTTPS listener advertises when HTTP/3 is on.
pub fn alt_svc(port: u16) -> http::HeaderValue {
    let value = format!("h3=\":{port}\"; ma={ALT_SVC_MAX_AGE}");
    // Digits, quotes and ASCII only: always a valid header value.
    http::HeaderValue::from_str(&value).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

/// The QUIC server configuration: TLS 1.3 only, ALPN `h3`, certificates chosen per handshake
/// by the same resolver as the TCP listener.
///
/// Certificates are chosen synchronously here: a name whose ACME certificate has not been
/// obtained yet (normally by a first HTTPS request over TCP, which is how clients discover
/// HTTP/3) fails the QUIC handshake and the client falls back to TCP.
pub fn server_config(store: Arc<CertStore>) -> Result<quinn::ServerConfig, String> {
    let mut tls = rustls::ServerConfig::builder_with_provider(kamal_acme::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(SniResolver::new(store));
    tls.alpn_protocols = vec![ALPN_H3.to_vec()];
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// A bound HTTP/3 endpoint, not yet serving.
#[derive(Debug)]
pub struct Http3Listener {
    endpoint: quinn::Endpoint,
}

impl Http3Listener {
    /// Binds UDP `port` on all interfaces (IPv6 and IPv4 where available), like the TCP
    /// listeners. The error reads like Go's (`listen udp :443: bind: …`).
    pub fn bind(port: u16, config: quinn::ServerConfig) -> Result<Self, String> {
        let v6: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, port).into();
        let endpoint = match quinn::Endpoint::server(config.clone(), v6) {
            Ok(e) => e,
            Err(_) => {
                let v4: SocketAddr = (std::net::Ipv4Addr::UNSPECIFIED, port).into();
                quinn::Endpoint::server(config, v4).map_err(|e| {
                    format!("listen udp :{port}: bind: {}", crate::serve::io_message(&e))
                })?
            }
        };
        Ok(Http3Listener { endpoint })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Serves until `stop` fires; returns the handle that finishes the shutdown.
    pub fn serve<H: HttpHandler>(
        self,
        configured_port: u16,
        handler: Arc<H>,
        stop: CancellationToken,
    ) -> Http3Server {
        let tracker = TaskTracker::new();
        let endpoint = self.endpoint.clone();
        tracker.spawn(accept_loop(
            self.endpoint,
            configured_port,
            handler,
            stop,
            tracker.clone(),
        ));
        Http3Server { endpoint, tracker }
    }
}

/// A serving HTTP/3 endpoint.
#[derive(Debug)]
pub struct Http3Server {
    endpoint: quinn::Endpoint,
    tracker: TaskTracker,
}

impl Http3Server {
    /// Waits for in-flight requests (after `stop` fired), then closes the endpoint. The caller
    /// bounds the wait; dropping this future leaves the remaining connections to be dropped.
    pub async fn shutdown(self) {
        self.tracker.close();
        self.tracker.wait().await;
        self.endpoint.close(0u32.into(), b"");
        self.endpoint.wait_idle().await;
    }
}

async fn accept_loop<H: HttpHandler>(
    endpoint: quinn::Endpoint,
    port: u16,
    handler: Arc<H>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            _ = stop.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let (handler, stop) = (Arc::clone(&handler), stop.clone());
        tracker.spawn(async move {
            let peer = canonical_peer(incoming.remote_address());
            let connecting = async {
                let quic = incoming.await.map_err(|e| e.to_string())?;
                let h3 = h3::server::builder()
                    .max_field_section_size(crate::serve::MAX_HEAD_BYTES as u64)
                    .build(h3_quinn::Connection::new(quic.clone()))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((quic, h3))
            };
            let conn = tokio::select! {
                _ = stop.cancelled() => return,
                c = tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, connecting) => c,
            };
            match conn {
                Ok(Ok((quic, conn))) => {
                    let info = ConnInfo {
                        peer,
                        tls: true,
                        port,
                    };
                    serve_connection(quic, conn, info, handler, stop).await;
                }
                Ok(Err(reason)) => {
                    tracing::debug!("http3: handshake error from {peer}: {reason}");
                }
                Err(_) => tracing::debug!("http3: handshake timeout from {peer}"),
            }
        });
    }
    // No new connections: refuse further handshakes while the current ones finish.
    endpoint.set_server_config(None);
}

type H3Conn = h3::server::Connection<h3_quinn::Connection, Bytes>;
type H3Send = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type H3Recv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

async fn serve_connection<H: HttpHandler>(
    quic: quinn::Connection,
    mut conn: H3Conn,
    info: ConnInfo,
    handler: Arc<H>,
    stop: CancellationToken,
) {
    let mut requests = tokio::task::JoinSet::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                // GOAWAY: the client sends nothing new; requests already accepted finish.
                let _ = conn.shutdown(0).await;
                stopping = true;
                break;
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            accepted = conn.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let handler = Arc::clone(&handler);
                    requests.spawn(async move {
                        match resolver.resolve_request().await {
                            Ok((req, stream)) => serve_request(req, stream, info, handler).await,
                            Err(e) => tracing::debug!(error = %e, "http3: bad request stream"),
                        }
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "http3: connection closed");
                    break;
                }
            },
        }
    }
    while requests.join_next().await.is_some() {}
    if stopping {
        // A finished response may still be unacknowledged, and closing the connection would
        // throw it away: let the client, which got the GOAWAY, close first.
        let _ = tokio::time::timeout(CLOSE_LINGER, quic.closed()).await;
    }
    // Dropping `conn` closes the QUIC connection.
}

async fn serve_request<H: HttpHandler>(
    req: Request<()>,
    stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    info: ConnInfo,
    handler: Arc<H>,
) {
    let (mut send, recv) = stream.split();
    let head = req.method() == Method::HEAD;
    let body = H3Body::new(&req, recv);
    let mut req = req.map(|()| RequestBody::Http3(body));
    *req.version_mut() = http::Version::HTTP_3;
    let resp = AssertUnwindSafe(handler.call(req, info))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::error!("Request handler panicked");
            crate::rescue::page(StatusCode::INTERNAL_SERVER_ERROR, None)
        });
    if let Err(e) = send_response(&mut send, resp, head).await {
        tracing::debug!(error = %e, "http3: error sending response");
    }
}

/// Headers HTTP/3 forbids (RFC 9114 §4.2): connection-specific fields.
const CONNECTION_HEADERS: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Sends `resp` on the stream. The body of a HEAD response is read (the access log counts its
/// bytes, as upstream) but not sent, as HTTP/1.1 and HTTP/2 do.
async fn send_response(
    send: &mut H3Send,
    resp: Response<ResponseBody>,
    head: bool,
) -> Result<(), BoxError> {
    let (mut parts, body) = resp.into_parts();
    for name in CONNECTION_HEADERS {
        parts.headers.remove(name);
    }
    send.send_response(Response::from_parts(parts, ())).await?;
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => {
                if !head && !data.is_empty() {
                    send.send_data(data).await?;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}

/// The body of an HTTP/3 request: the receiving half of its stream.
pub struct H3Body {
    recv: Box<H3Recv>,
    /// Declared length; `None` when unknown.
    length: Option<u64>,
    done: bool,
}

impl std::fmt::Debug for H3Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Body")
            .field("length", &self.length)
            .field("done", &self.done)
            .finish()
    }
}

impl H3Body {
    fn new(req: &Request<()>, recv: H3Recv) -> Self {
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // HTTP/3 has no end-of-stream flag on the headers, so a GET or HEAD without a length
        // is taken as bodiless: forwarding it with a chunked body would surprise targets.
        let bodiless = declared.is_none() && matches!(*req.method(), Method::GET | Method::HEAD);
        let length = if bodiless { Some(0) } else { declared };
        H3Body {
            recv: Box::new(recv),
            length,
            done: length == Some(0),
        }
    }
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.recv.poll_recv_data(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(mut buf))) => {
                let bytes = buf.copy_to_bytes(buf.remaining());
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Poll::Ready(Ok(None)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                self.done = true;
                Poll::Ready(Some(Err(Box::new(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_svc_reads_like_upstream() {
        assert_eq!(alt_svc(443), "h3=\":443\"; ma=2592000");
    }

    #[test]
    fn server_config_offers_h3_over_tls13_only() {
        kamal_acme::install_crypto_provider();
        let store = CertStore::new(kamal_acme::AcmeSettings::from_environment());
        assert!(server_config(store).is_ok());
    }
}
