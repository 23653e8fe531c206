//! Request and response buffering of a service (`--buffer-requests`, `--buffer-responses`,
//! spec §8), on top of the `kamal-buffer` crate: the service's options become limits, and
//! buffering failures become the statuses and log lines of spec §8 and §7.6.

use std::error::Error as StdError;
use std::io;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use kamal_balancer::ForwardError;
use kamal_buffer::{BoxError, BufferError, Limits, MaybeBuffered};
use kamal_control::TargetOptions;
use percent_encoding::percent_decode_str;

/// The buffering limits of one service; `None` where that kind of buffering is off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Buffering {
    /// Limits for request bodies, when `--buffer-requests` is on.
    pub requests: Option<Limits>,
    /// Limits for response bodies, when `--buffer-responses` is on.
    pub responses: Option<Limits>,
}

impl Buffering {
    /// The limits a service's target options ask for. Spill files go to the system temporary
    /// directory (`$TMPDIR`, else `/tmp`), as upstream's do.
    pub fn new(options: &TargetOptions) -> Self {
        // Validation rejects negative sizes; should one slip through, it means "no limit" for
        // the maximum and "no memory" for the threshold, the safe readings.
        let memory = usize::try_from(options.max_memory_buffer_size).unwrap_or(0);
        let max = |size: i64| u64::try_from(size).ok().filter(|&n| n > 0);
        let limits = |size: i64| Limits::new().memory(memory).max_size(max(size));
        Buffering {
            requests: options
                .buffer_requests
                .then(|| limits(options.max_request_body_size)),
            responses: options
                .buffer_responses
                .then(|| limits(options.max_response_body_size)),
        }
    }
}

/// Reads the whole request body (memory, then a spill file) before the request goes on, so a
/// slow client never holds a target connection (spec §8.1).
///
/// Failures, as statuses for the error page:
/// * 413 when the body exceeds the limit, or its `Content-Length` announces more than the limit
///   (refused before reading, our decision in spec §14 item 2);
/// * 400 for malformed chunked framing (INFO `Malformed chunked request`, `path`, `error`);
/// * 500 for any other read error, client disconnects included (ERROR `Error buffering
///   request`, `path`, `error`).
///
/// A request without a body passes through untouched and without allocating.
pub async fn buffer_request<B>(
    req: Request<B>,
    limits: &Limits,
) -> Result<Request<MaybeBuffered<B>>, StatusCode>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if req.body().is_end_stream() {
        return Ok(req.map(MaybeBuffered::streaming));
    }
    let path = req.uri().path().to_owned();
    kamal_buffer::buffer_request(req, limits)
        .await
        .map_err(|error| {
            let path = percent_decode_str(&path).decode_utf8_lossy();
            request_failure(&error, &path)
        })
}

fn request_failure(error: &BufferError, path: &str) -> StatusCode {
    if error.is_too_large() {
        return StatusCode::PAYLOAD_TOO_LARGE;
    }
    if error.body_error().is_some_and(is_malformed) {
        tracing::info!(path = %path, error = %Chain(error), "Malformed chunked request");
        return StatusCode::BAD_REQUEST;
    }
    tracing::error!(path = %path, error = %Chain(error), "Error buffering request");
    StatusCode::INTERNAL_SERVER_ERROR
}

/// Reads the whole response body from the target before anything is sent to the client, so
/// the client gets either the complete response or an error page, never part of a response
/// (spec §8.2). `path` is the request's path, for log lines.
///
/// Server-sent events, `X-Accel-Buffering: no` responses and protocol switches are passed
/// through unbuffered (spec §14 item 3).
///
/// Failures, as statuses for the error page:
/// * 500 when the body exceeds `--max-response-body` (INFO `Response exceeded max response
///   limit`, `path`); the target's response is discarded;
/// * the forwarding status when the target fails mid-body: 502 if it dies, 504 on a timeout or
///   a drain deadline (ERROR `Error while proxying`, `path`, `error`);
/// * 500 if the spill file fails (ERROR `Error buffering response`, `path`, `error`).
pub async fn buffer_response<B>(
    resp: Response<B>,
    limits: &Limits,
    path: &str,
) -> Result<Response<MaybeBuffered<B>>, StatusCode>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    kamal_buffer::buffer_response(resp, limits)
        .await
        .map_err(|error| response_failure(&error, path))
}

fn response_failure(error: &BufferError, path: &str) -> StatusCode {
    let path = percent_decode_str(path).decode_utf8_lossy();
    if error.is_too_large() {
        tracing::info!(path = %path, "Response exceeded max response limit");
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if let Some(source) = error.body_error() {
        let status = chain(source)
            .find_map(|e| e.downcast_ref::<ForwardError>())
            .map_or(StatusCode::BAD_GATEWAY, ForwardError::status);
        tracing::error!(path = %path, error = %Chain(error), "Error while proxying");
        return status;
    }
    tracing::error!(path = %path, error = %Chain(error), "Error buffering response");
    StatusCode::INTERNAL_SERVER_ERROR
}

/// Displays an error with its sources joined by `: ` (each message once), so a log line shows
/// the root cause (`error reading a body from connection: invalid chunk size line`).
struct Chain<'a>(&'a BufferError);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut last = String::new();
        for e in chain(self.0) {
            let text = e.to_string();
            // Wrappers often repeat their source's message; print it once.
            if text.is_empty() || last.ends_with(&text) {
                continue;
            }
            if !last.is_empty() {
                f.write_str(": ")?;
            }
            f.write_str(&text)?;
            last = text;
        }
        Ok(())
    }
}

/// The error and its sources, outermost first.
fn chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&e| e.source())
}

/// Malformed chunked framing: hyper's decoder reports it as invalid data or input, while a
/// client that goes away shows up as an unexpected EOF or an incomplete message.
fn is_malformed(error: &(dyn StdError + Send + Sync + 'static)) -> bool {
    let error: &(dyn StdError + 'static) = error;
    chain(error).any(|e| {
        e.downcast_ref::<io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty, Full};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body that yields `data` and then fails with `error`.
    struct Failing {
        data: Option<Bytes>,
        error: Option<BoxError>,
    }

    impl Failing {
        fn new(data: &'static [u8], error: impl Into<BoxError>) -> Self {
            Self {
                data: Some(Bytes::from_static(data)),
                error: Some(error.into()),
            }
        }
    }

    impl Body for Failing {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
            if let Some(data) = self.data.take() {
                return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
            }
            Poll::Ready(self.error.take().map(Err))
        }
    }

    fn options(f: impl FnOnce(&mut TargetOptions)) -> TargetOptions {
        let mut options = TargetOptions::default();
        f(&mut options);
        options
    }

    #[test]
    fn limits_follow_the_options() {
        assert_eq!(
            Buffering::new(&TargetOptions::default()),
            Buffering::default()
        );
        let buffering = Buffering::new(&options(|o| {
            o.buffer_requests = true;
            o.buffer_responses = true;
            o.max_memory_buffer_size = 4096;
            o.max_request_body_size = 10;
            o.max_response_body_size = 0;
        }));
        let requests = buffering.requests.unwrap();
        assert_eq!(requests.memory_bytes(), 4096);
        assert_eq!(requests.max_size_bytes(), Some(10));
        let responses = buffering.responses.unwrap();
        assert_eq!(responses.max_size_bytes(), None, "0 means unlimited");
        assert_eq!(responses.spill_dir_path(), std::env::temp_dir());
    }

    #[tokio::test]
    async fn request_within_the_limit_is_replayed_and_keeps_its_framing() {
        let limits = Limits::new().memory(4).max_size(Some(11));
        let req = Request::builder()
            .uri("/upload")
            .header("content-length", "11")
            .body(Full::new(Bytes::from_static(b"hello world")))
            .unwrap();
        let req = buffer_request(req, &limits).await.unwrap();
        assert!(req.body().is_buffered());
        assert_eq!(req.headers()["content-length"], "11");
        assert_eq!(req.body().size_hint().exact(), Some(11));
        let body = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello world");
    }

    #[tokio::test]
    async fn request_without_body_is_not_buffered() {
        let req = Request::new(Empty::<Bytes>::new());
        let req = buffer_request(req, &Limits::new()).await.unwrap();
        assert!(!req.body().is_buffered());
    }

    #[tokio::test]
    async fn request_failures_map_to_413_400_and_500() {
        let limits = Limits::new().max_size(Some(4));
        let over = Request::new(Full::new(Bytes::from_static(b"12345")));
        assert_eq!(
            buffer_request(over, &limits).await.unwrap_err(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let announced = Request::builder()
            .header("content-length", "5")
            .body(Failing::new(b"", "never read"))
            .unwrap();
        assert_eq!(
            buffer_request(announced, &limits).await.unwrap_err(),
            StatusCode::PAYLOAD_TOO_LARGE
        );

        let malformed = io::Error::new(io::ErrorKind::InvalidInput, "invalid chunk size line");
        let req = Request::new(Failing::new(b"ab", malformed));
        assert_eq!(
            buffer_request(req, &limits).await.unwrap_err(),
            StatusCode::BAD_REQUEST
        );
        let gone = io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed");
        let req = Request::new(Failing::new(b"ab", gone));
        assert_eq!(
            buffer_request(req, &limits).await.unwrap_err(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[tokio::test]
    async fn response_failures_map_to_500_502_and_504() {
        let limits = Limits::new().max_size(Some(4));
        let big = Response::new(Full::new(Bytes::from_static(b"12345")));
        assert_eq!(
            buffer_response(big, &limits, "/").await.unwrap_err(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let died = ForwardError::Upstream {
            source: "connection reset".into(),
        };
        let resp = Response::new(Failing::new(b"ab", died));
        assert_eq!(
            buffer_response(resp, &limits, "/").await.unwrap_err(),
            StatusCode::BAD_GATEWAY
        );
        let resp = Response::new(Failing::new(b"ab", ForwardError::Cancelled));
        assert_eq!(
            buffer_response(resp, &limits, "/").await.unwrap_err(),
            StatusCode::GATEWAY_TIMEOUT
        );
        let resp = Response::new(Failing::new(b"ab", "something else"));
        assert_eq!(
            buffer_response(resp, &limits, "/").await.unwrap_err(),
            StatusCode::BAD_GATEWAY
        );
    }

    #[tokio::test]
    async fn event_streams_are_not_buffered() {
        let limits = Limits::new().max_size(Some(1));
        let resp = Response::builder()
            .header("content-type", "text/event-stream")
            .body(Full::new(Bytes::from_static(
                b"data: larger than the limit\n\n",
            )))
            .unwrap();
        let resp = buffer_response(resp, &limits, "/events").await.unwrap();
        assert!(!resp.body().is_buffered());
    }
}
