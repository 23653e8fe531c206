//! The response body type every request path produces, without boxing: a small in-memory body
//! (error pages, redirects) or a body streamed from a target. It carries the access log entry,
//! which is written when the body is finished or dropped.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use crate::app::UpstreamBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use kamal_buffer::MaybeBuffered;
use pin_project_lite::pin_project;

use crate::access_log::AccessLog;

/// Errors while streaming a response body; they abort the client connection or stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    #[project = KindProj]
    enum Kind {
        Full { #[pin] body: Full<Bytes> },
        Proxy { #[pin] body: MaybeBuffered<UpstreamBody> },
    }
}

pin_project! {
    /// A response body plus the access log entry of its request.
    pub struct ResponseBody {
        #[pin]
        kind: Kind,
        // Boxed: the response is moved through several layers, and the entry is large.
        log: Option<Box<AccessLog>>,
    }
}

impl ResponseBody {
    /// A complete in-memory body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Full {
                body: Full::new(bytes.into()),
            },
            log: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// A body from a target: streamed, or buffered with `--buffer-responses`.
    pub fn proxy(body: MaybeBuffered<UpstreamBody>) -> Self {
        ResponseBody {
            kind: Kind::Proxy { body },
            log: None,
        }
    }

    /// Attaches the access log entry, written when this body ends or is dropped.
    pub fn with_log(mut self, log: Box<AccessLog>) -> Self {
        self.log = Some(log);
        self
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = match this.kind.project() {
            KindProj::Full { body } => ready!(body.poll_frame(cx)).map(|r| r.map_err(Into::into)),
            KindProj::Proxy { body } => ready!(body.poll_frame(cx)),
        };
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(log)) = (f.data_ref(), this.log.as_mut()) {
                    log.add_body_bytes(data.len());
                }
            }
            // End of body or aborted stream: the request is over, write its log line now.
            _ => drop(this.log.take()),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { body } => body.is_end_stream(),
            Kind::Proxy { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { body } => body.size_hint(),
            Kind::Proxy { body } => body.size_hint(),
        }
    }
}
