//! Tower layers: buffer every request body before the inner service sees it, or every response
//! body before the caller sees it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use tower::{Layer, Service};

use crate::body::MaybeBuffered;
use crate::error::{BoxError, BufferError};
use crate::limits::{check_content_length, Limits};
use crate::spool::{buffer_body, Buffered};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Whether a response must stream even when responses are buffered: protocol switches,
/// server-sent events (`Content-Type: text/event-stream`, media type compared exactly) and
/// responses that opt out with `X-Accel-Buffering: no` (the nginx convention).
pub fn must_stream(status: StatusCode, headers: &HeaderMap) -> bool {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return true;
    }
    let event_stream = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next() == Some("text/event-stream"));
    let opted_out = headers
        .get("x-accel-buffering")
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"no"));
    event_stream || opted_out
}

/// Buffers a whole request body (see [`buffer_body`]) before calling the inner service, which
/// receives a `Request<Buffered>`. A `Content-Length` above the size limit is refused before
/// anything is read. Failures are [`BufferError`]s, boxed.
#[derive(Debug, Clone)]
pub struct RequestBufferLayer {
    limits: Limits,
}

impl RequestBufferLayer {
    /// A layer buffering with `limits`.
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }
}

impl<S> Layer<S> for RequestBufferLayer {
    type Service = RequestBuffer<S>;

    fn layer(&self, inner: S) -> RequestBuffer<S> {
        RequestBuffer {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// The service made by [`RequestBufferLayer`].
#[derive(Debug, Clone)]
pub struct RequestBuffer<S> {
    inner: S,
    limits: Limits,
}

impl<S, B> Service<Request<B>> for RequestBuffer<S>
where
    S: Service<Request<Buffered>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone is the one that was not polled ready; swap so the ready one is used.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limits = self.limits.clone();
        Box::pin(async move {
            check_content_length(req.headers(), &limits)?;
            let (parts, body) = req.into_parts();
            let body = buffer_body(body, &limits).await?;
            inner
                .call(Request::from_parts(parts, body))
                .await
                .map_err(Into::into)
        })
    }
}

/// Buffers a whole response body (see [`buffer_body`]) before handing the response on, unless
/// [`must_stream`] says it streams. Failures are [`BufferError`]s, boxed.
#[derive(Debug, Clone)]
pub struct ResponseBufferLayer {
    limits: Limits,
}

impl ResponseBufferLayer {
    /// A layer buffering with `limits`.
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }
}

impl<S> Layer<S> for ResponseBufferLayer {
    type Service = ResponseBuffer<S>;

    fn layer(&self, inner: S) -> ResponseBuffer<S> {
        ResponseBuffer {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// The service made by [`ResponseBufferLayer`].
#[derive(Debug, Clone)]
pub struct ResponseBuffer<S> {
    inner: S,
    limits: Limits,
}

impl<S, Req, B> Service<Req> for ResponseBuffer<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<MaybeBuffered<B>>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<MaybeBuffered<B>>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let future = self.inner.call(req);
        let limits = self.limits.clone();
        Box::pin(async move {
            let resp = future.await.map_err(Into::into)?;
            Ok(buffer_response(resp, &limits).await?)
        })
    }
}

/// Buffers `resp`'s body unless [`must_stream`] says it streams.
pub async fn buffer_response<B>(
    resp: Response<B>,
    limits: &Limits,
) -> Result<Response<MaybeBuffered<B>>, BufferError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if must_stream(resp.status(), resp.headers()) {
        return Ok(resp.map(MaybeBuffered::streaming));
    }
    let (parts, body) = resp.into_parts();
    let body = buffer_body(body, limits).await?;
    Ok(Response::from_parts(parts, body.into()))
}

/// Buffers `req`'s body, refusing a `Content-Length` above the limit before reading.
pub async fn buffer_request<B>(
    req: Request<B>,
    limits: &Limits,
) -> Result<Request<MaybeBuffered<B>>, BufferError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    check_content_length(req.headers(), limits)?;
    let (parts, body) = req.into_parts();
    let body = buffer_body(body, limits).await?;
    Ok(Request::from_parts(parts, body.into()))
}
