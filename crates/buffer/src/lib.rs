//! Request and response body buffering: a body is held in memory up to a threshold, then
//! spilled to an anonymous temporary file (deleted by the kernel when closed, even if the
//! process dies), and replayed to the next hop. Size limits fail with a typed error at exactly
//! one byte over the limit.
//!
//! Use [`buffer_body`] / [`buffer_request`] / [`buffer_response`] directly, or the tower layers
//! [`RequestBufferLayer`] and [`ResponseBufferLayer`]. [`MaybeBuffered`] lets one body type carry
//! either a streamed or a buffered body.
//!
//! ```
//! # async fn demo() -> Result<(), kamal_buffer::BufferError> {
//! use http_body_util::{BodyExt, Full};
//! use kamal_buffer::{buffer_body, Limits};
//!
//! let limits = Limits::new().memory(4).max_size(Some(1024));
//! let buffered = buffer_body(Full::new(bytes::Bytes::from("hello world")), &limits).await?;
//! assert!(buffered.is_spilled());
//! let bytes = buffered.collect().await?.to_bytes();
//! assert_eq!(bytes, "hello world");
//! # Ok(())
//! # }
//! ```

mod body;
mod error;
mod layer;
mod limits;
mod spool;

pub use body::MaybeBuffered;
pub use error::{BoxError, BufferError};
pub use layer::{
    buffer_request, buffer_response, must_stream, RequestBuffer, RequestBufferLayer,
    ResponseBuffer, ResponseBufferLayer,
};
pub use limits::{check_content_length, Limits, DEFAULT_MEMORY};
pub use spool::{buffer_body, Buffered};
