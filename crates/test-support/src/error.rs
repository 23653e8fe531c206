//! The error type of the test clients.

/// Why a test client call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket operation failed (connect refused, reset, …).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP client failed before a response arrived (connect error, reset, malformed reply).
    #[error("http client error: {0}")]
    Client(#[from] hyper_util::client::legacy::Error),
    /// Reading a response body failed (the connection was aborted mid-stream).
    #[error("http body error: {0}")]
    Body(#[from] hyper::Error),
    /// Building the request failed (invalid header value, URI, …).
    #[error("invalid request: {0}")]
    Request(#[from] http::Error),
    /// The WebSocket handshake or a frame failed.
    #[error("websocket error: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The operation did not finish within its deadline.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The body was not the JSON echo an [`Upstream`](crate::Upstream) writes.
    #[error("not an upstream echo: {0}")]
    NotAnEcho(String),
}
