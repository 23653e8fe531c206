//! A body that is either streamed through untouched or replayed from a buffer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::error::BoxError;
use crate::spool::Buffered;

pin_project! {
    /// Either the original body, streamed, or its buffered copy. One type for both lets a
    /// client or server that is generic over one body type carry either.
    #[project = MaybeBufferedProj]
    // pin-project-lite accepts no doc comments on enum fields; each variant documents its one.
    #[allow(missing_docs)]
    pub enum MaybeBuffered<B> {
        /// The original body, passed through frame by frame.
        Streaming {
            #[pin]
            body: B,
        },
        /// The completely buffered body. Boxed: it is large, and every streaming body (the
        /// common case) would otherwise be as large and cost as much to move.
        Buffered {
            body: Pin<Box<Buffered>>,
        },
    }
}

impl<B> MaybeBuffered<B> {
    /// Passes `body` through unbuffered.
    pub fn streaming(body: B) -> Self {
        Self::Streaming { body }
    }

    /// Whether this is a buffered body.
    pub fn is_buffered(&self) -> bool {
        matches!(self, Self::Buffered { .. })
    }
}

impl<B> From<Buffered> for MaybeBuffered<B> {
    fn from(body: Buffered) -> Self {
        Self::Buffered {
            body: Box::pin(body),
        }
    }
}

impl<B> Body for MaybeBuffered<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            MaybeBufferedProj::Streaming { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(Into::into))),
            MaybeBufferedProj::Buffered { body } => body
                .as_mut()
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streaming { body } => body.is_end_stream(),
            Self::Buffered { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Streaming { body } => body.size_hint(),
            Self::Buffered { body } => body.size_hint(),
        }
    }
}

impl<B> std::fmt::Debug for MaybeBuffered<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Streaming { .. } => f.write_str("MaybeBuffered::Streaming"),
            Self::Buffered { body } => f
                .debug_tuple("MaybeBuffered::Buffered")
                .field(body)
                .finish(),
        }
    }
}
