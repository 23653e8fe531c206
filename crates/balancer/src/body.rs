//! The bodies around a forwarded request: the client's request body on its way upstream, and
//! the upstream's response body on its way back, which carries the request's in-flight lease.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;

use crate::conns::Conns;
use crate::direct::DirectBody;
use crate::forward_error::{BoxError, ClientBodyError, ForwardError};
use crate::inflight::Lease;

pin_project! {
    /// The client's request body as sent upstream: marks its errors as the client's, and
    /// reports when it has been sent completely (the target timeout starts then).
    pub(crate) struct RequestBody<B> {
        #[pin]
        inner: B,
        sent: Option<oneshot::Sender<()>>,
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn new(inner: B, sent: Option<oneshot::Sender<()>>) -> Self {
        Self { inner, sent }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            // hyper stops polling once `is_end_stream` is true, so the end is detected here too.
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => signal(this.sent),
            Poll::Ready(None) => signal(this.sent),
            _ => {}
        }
        polled.map(|frame| frame.map(|r| r.map_err(|e| ClientBodyError(e.into()))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn signal(sent: &mut Option<oneshot::Sender<()>>) {
    if let Some(tx) = sent.take() {
        let _ = tx.send(());
    }
}

/// The upstream response body, streamed to the client frame by frame as it arrives.
///
/// It holds the request's in-flight [`Lease`] until the body ends, fails or is dropped, so a
/// drain waits for streamed responses. When the drain deadline cancels the request, the body
/// ends with [`ForwardError::Cancelled`], which makes the server abort the connection (the
/// headers are already sent, so no error page is possible).
///
/// `B` is the type of the request bodies the forwarder sends: the body also holds the
/// upstream connection and returns it to the target's idle connections once read to its end.
pub struct ProxyBody<B> {
    inner: Option<Upstream>,
    lease: Option<Lease>,
    conn: Option<Checkin<B>>,
}

/// Where a response body comes from: hyper's client, or the direct path's connection.
enum Upstream {
    Hyper(Incoming),
    Direct(DirectBody),
}

impl Upstream {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ForwardError>>> {
        match self {
            Upstream::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(ForwardError::from_body))),
            Upstream::Direct(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(ForwardError::from_io))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Upstream::Hyper(body) => body.is_end_stream(),
            Upstream::Direct(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Upstream::Hyper(body) => body.size_hint(),
            Upstream::Direct(body) => body.size_hint(),
        }
    }
}

/// A connection in use by a response, and the idle queue it goes back to.
pub(crate) struct Checkin<B> {
    pub(crate) sender: SendRequest<RequestBody<B>>,
    pub(crate) conns: Arc<Conns<RequestBody<B>>>,
}

impl<B> Checkin<B> {
    pub(crate) fn put_back(self) {
        self.conns.put_back(self.sender);
    }
}

impl<B> std::fmt::Debug for ProxyBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyBody")
            .field("streaming", &self.inner.is_some())
            .field("lease", &self.lease)
            .finish()
    }
}

impl<B> ProxyBody<B> {
    /// An empty body holding nothing (upgrade responses, tests).
    pub fn empty() -> Self {
        Self {
            inner: None,
            lease: None,
            conn: None,
        }
    }

    pub(crate) fn streaming(inner: Incoming, lease: Lease, conn: Option<Checkin<B>>) -> Self {
        Self {
            inner: Some(Upstream::Hyper(inner)),
            lease: Some(lease),
            conn,
        }
    }

    pub(crate) fn direct(inner: DirectBody, lease: Lease) -> Self {
        Self {
            inner: Some(Upstream::Direct(inner)),
            lease: Some(lease),
            conn: None,
        }
    }

    /// Releases the upstream body and the lease now rather than when the server gets around
    /// to dropping us; a completely read response frees its connection for the next request.
    fn finish(&mut self, complete: bool) {
        self.inner = None;
        self.lease = None;
        if let Some(conn) = self.conn.take() {
            if complete {
                conn.put_back();
            }
        }
    }
}

impl<B> Body for ProxyBody<B> {
    type Data = Bytes;
    type Error = ForwardError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ForwardError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        // Cancellation is checked first so that a body that never waits still stops at the
        // drain deadline.
        let cancelled = this
            .lease
            .as_mut()
            .is_some_and(|lease| lease.poll_deadline(cx).is_ready());
        let result = if cancelled {
            Some(Err(ForwardError::Cancelled))
        } else {
            match inner.poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    // The server stops polling once `is_end_stream` is true: finish here.
                    if inner.is_end_stream() {
                        this.finish(true);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => Some(Err(e)),
                Poll::Ready(None) => None,
            }
        };
        this.finish(result.is_none());
        Poll::Ready(result)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Upstream::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Upstream::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn request_body_reports_when_sent() {
        let (tx, mut rx) = oneshot::channel();
        let body = RequestBody::new(Full::new(Bytes::from_static(b"abc")), Some(tx));
        assert!(rx.try_recv().is_err());
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected, "abc");
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn empty_proxy_body_is_at_end() {
        let body = ProxyBody::<Full<Bytes>>::empty();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }
}
