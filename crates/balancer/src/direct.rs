//! The direct path for the most common request: a `GET` or `HEAD` without a body and without
//! an upgrade.
//!
//! The request's own task writes the request head to a pooled connection, reads and parses the
//! response head, and later reads the body from the socket as the client's connection takes
//! it. hyper's client instead drives every connection from a task of its own and passes each
//! request, response and body chunk through channels: measured with callgrind, that machinery
//! was about a quarter of the proxy's instructions per keep-alive request. Requests with a
//! body, upgrades and other methods still go through hyper's client ([`crate::conns`]).
//!
//! Framing follows RFC 9112 §6.3: no body for `HEAD`, 1xx, 204 and 304; chunked when the last
//! transfer coding is `chunked` (trailers are relayed); otherwise `Content-Length`; otherwise
//! until the target closes. A connection is reused only when its response was read to its
//! end, nothing followed it, and neither side asked to close.
//!
//! The target timeout runs on a timer kept with each connection and moved forward for each
//! request (one atomic update while it has not fired), not on a timer registered with the
//! runtime and removed again for every request.
//!
//! Idle connections are not watched (no task, no system call per request). A connection the
//! target closed while idle shows when it is next used, before any byte of an answer, and the
//! request (idempotent) is sent again on a new one; so is a `408` found there, which some
//! servers send before closing an idle connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::uri::Authority;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

use crate::conns::{dial, DialError, MAX_IDLE_PER_TARGET};
use crate::forward_error::BoxError;
use crate::headers::{has_token, tokens};
use crate::idle::IdleConns;

/// Largest response head accepted: status line, headers and any 1xx heads before it.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in one response head (hyper's client default).
const MAX_HEADERS: usize = 100;
/// Room asked for before reading a response head.
const HEAD_READ: usize = 4096;
/// Largest read of a body at once.
const BODY_READ: usize = 64 * 1024;
/// Longest chunk-size line (with extensions) and largest trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// A connection's read buffer is dropped, rather than kept while idle, above this size.
const KEEP_BUFFER: usize = 16 * 1024;

/// Whether a request can take the direct path.
pub(crate) fn eligible(method: &Method, has_body: bool, upgrade: bool) -> bool {
    !has_body && !upgrade && (method == Method::GET || method == Method::HEAD)
}

/// One connection to a target and the bytes read from it but not used yet.
#[derive(Debug)]
pub(crate) struct DirectConn {
    stream: TcpStream,
    buf: BytesMut,
    /// Where each header of the last response head was: kept to reuse its allocation.
    spans: Vec<Span>,
    /// The target timeout of the request on this connection. Kept between requests: moving a
    /// registered timer's deadline later is one atomic update, while a new timer is inserted
    /// into and removed from the runtime's timer wheel under its lock. Once it has fired
    /// (the connection sat idle longer than the timeout), it wakes the task that last polled it
    /// once, harmlessly.
    timer: Pin<Box<Sleep>>,
}

/// Offsets in a head of one header's name (start, end) and value (start, end).
type Span = [u32; 4];

/// A target's idle connections for the direct path.
#[derive(Debug)]
pub(crate) struct DirectConns {
    /// Boxed: a connection moves from the queue to the request, its response body and back,
    /// and a pointer moves cheaper than the socket, buffer and spans.
    idle: IdleConns<Box<DirectConn>>,
}

impl DirectConns {
    pub(crate) fn new() -> Self {
        Self {
            idle: IdleConns::new(MAX_IDLE_PER_TARGET),
        }
    }

    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.len()
    }

    fn put_back(&self, mut conn: Box<DirectConn>) {
        if conn.buf.capacity() > KEEP_BUFFER {
            conn.buf = BytesMut::new();
        }
        // A full pool drops (closes) the connection.
        let _ = self.idle.push(conn);
    }
}

/// The request head in HTTP/1.1 wire form: `METHOD target HTTP/1.1`, the headers of the map,
/// then `extra` (headers the proxy sets, written here rather than inserted into the map
/// first), a blank line.
pub(crate) fn encode_head<'n, 'v>(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    extra: impl Iterator<Item = (&'n str, &'v HeaderValue)> + Clone,
) -> Vec<u8> {
    let line = |name: &str, value: &HeaderValue| name.len() + value.len() + 4;
    let size = headers
        .iter()
        .map(|(name, value)| line(name.as_str(), value))
        .sum::<usize>()
        + extra
            .clone()
            .map(|(name, value)| line(name, value))
            .sum::<usize>()
        + method.as_str().len()
        + target.len()
        + 14;
    let mut head = Vec::with_capacity(size);
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut put = |name: &str, value: &HeaderValue| {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    };
    for (name, value) in headers {
        put(name.as_str(), value);
    }
    for (name, value) in extra {
        put(name, value);
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Dialing a new connection, with the timer it will keep.
fn dial_state(authority: &Authority, deadline: Instant) -> SendState<'_> {
    SendState::Dial {
        dialing: Box::pin(dial(authority)),
        timer: Box::pin(tokio::time::sleep_until(deadline)),
    }
}

/// A response the target did not frame as HTTP/1.1 allows.
fn malformed(what: impl Into<BoxError>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn closed_early() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed before message completed",
    )
}

/// Whether an error on a reused connection means the target had closed it while idle, before
/// our request reached it.
fn is_stale(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

enum SendState<'a> {
    Dial {
        dialing: Pin<Box<dyn Future<Output = Result<TcpStream, DialError>> + Send + 'a>>,
        /// Becomes the new connection's timer.
        timer: Pin<Box<Sleep>>,
    },
    Write {
        conn: Box<DirectConn>,
        written: usize,
        reused: bool,
    },
    Read {
        conn: Box<DirectConn>,
        reused: bool,
    },
    Done,
}

/// Sends a request head and reads the response head: the future of the direct path.
pub(crate) struct DirectSend<'a> {
    pool: Arc<DirectConns>,
    authority: &'a Authority,
    head: Vec<u8>,
    head_request: bool,
    retry_reused: bool,
    /// When the target timeout ends.
    deadline: Instant,
    state: SendState<'a>,
}

impl<'a> DirectSend<'a> {
    /// Sends `head` on an idle connection from `pool`, or a new one. `GET` and `HEAD` are
    /// idempotent: when a reused connection turns out to have been closed by the target
    /// before any of the response arrived, the request is sent again on a new connection.
    /// [`DirectSend::poll_deadline`] tells when `deadline` has passed.
    pub(crate) fn new(
        pool: Arc<DirectConns>,
        authority: &'a Authority,
        head: Vec<u8>,
        head_request: bool,
        retry_reused: bool,
        deadline: Instant,
    ) -> Self {
        let state = match pool.idle.pop() {
            Some(conn) => SendState::Write {
                conn,
                written: 0,
                reused: true,
            },
            None => dial_state(authority, deadline),
        };
        Self {
            pool,
            authority,
            head,
            head_request,
            retry_reused,
            deadline,
            state,
        }
    }

    /// Ready once the deadline given to [`DirectSend::new`] has passed, while the request
    /// waits for its connection or its response head.
    pub(crate) fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timer = match &mut self.state {
            SendState::Dial { timer, .. } => timer,
            SendState::Write { conn, .. } | SendState::Read { conn, .. } => &mut conn.timer,
            SendState::Done => return Poll::Pending,
        };
        if timer.deadline() != self.deadline {
            // Later than before (time moved on): tokio only updates the registered entry.
            timer.as_mut().reset(self.deadline);
        }
        timer.as_mut().poll(cx)
    }

    /// Gives up on a reused connection that the target had closed: dials a new one, or fails.
    fn stale(&mut self, reused: bool, error: io::Error) -> Result<(), BoxError> {
        if reused && self.retry_reused && is_stale(&error) {
            tracing::debug!("reused connection was closed; sending again");
            self.state = dial_state(self.authority, self.deadline);
            Ok(())
        } else {
            self.state = SendState::Done;
            Err(error.into())
        }
    }
}

impl Future for DirectSend<'_> {
    type Output = Result<Response<DirectBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                SendState::Dial { dialing, .. } => {
                    let stream = match ready!(dialing.as_mut().poll(cx)) {
                        Ok(stream) => stream,
                        Err(error) => {
                            this.state = SendState::Done;
                            return Poll::Ready(Err(error.into()));
                        }
                    };
                    let SendState::Dial { timer, .. } =
                        std::mem::replace(&mut this.state, SendState::Done)
                    else {
                        unreachable!("matched above");
                    };
                    this.state = SendState::Write {
                        conn: Box::new(DirectConn {
                            stream,
                            buf: BytesMut::new(),
                            spans: Vec::new(),
                            timer,
                        }),
                        written: 0,
                        reused: false,
                    };
                }
                SendState::Write {
                    conn,
                    written,
                    reused,
                } => {
                    let reused = *reused;
                    let result = loop {
                        if *written == this.head.len() {
                            break Ok(());
                        }
                        let polled =
                            Pin::new(&mut conn.stream).poll_write(cx, &this.head[*written..]);
                        match ready!(polled) {
                            Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                            Ok(n) => *written += n,
                            Err(error) => break Err(error),
                        }
                    };
                    match result {
                        Ok(()) => {
                            let SendState::Write { conn, .. } =
                                std::mem::replace(&mut this.state, SendState::Done)
                            else {
                                unreachable!("matched above");
                            };
                            this.state = SendState::Read { conn, reused };
                        }
                        Err(error) => {
                            if let Err(e) = this.stale(reused, error) {
                                return Poll::Ready(Err(e));
                            }
                        }
                    }
                }
                SendState::Read { conn, reused } => {
                    // Nothing read yet (just after the write, and at each wake until the
                    // answer comes): nothing to parse.
                    let parsed = if conn.buf.is_empty() {
                        Ok(None)
                    } else {
                        parse_head(&mut conn.buf, &mut conn.spans, this.head_request)
                    };
                    match parsed {
                        // Some servers send a 408 on a keep-alive connection before closing
                        // it for idleness; found on a reused connection it answers no request
                        // of ours (Go's transport treats it the same way).
                        Ok(Some(head))
                            if *reused && head.response.status() == StatusCode::REQUEST_TIMEOUT =>
                        {
                            let error = io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                "408 on an idle connection",
                            );
                            if let Err(e) = this.stale(true, error) {
                                return Poll::Ready(Err(e));
                            }
                            continue;
                        }
                        Ok(Some(head)) => {
                            let SendState::Read { conn, .. } =
                                std::mem::replace(&mut this.state, SendState::Done)
                            else {
                                unreachable!("matched above");
                            };
                            let pool = head.reusable.then(|| Arc::clone(&this.pool));
                            let body = DirectBody::new(conn, head.framing, pool);
                            return Poll::Ready(Ok(head.response.map(|()| body)));
                        }
                        Ok(None) => {}
                        Err(error) => {
                            this.state = SendState::Done;
                            return Poll::Ready(Err(error.into()));
                        }
                    }
                    if conn.buf.len() >= MAX_HEAD {
                        this.state = SendState::Done;
                        return Poll::Ready(Err(malformed("response head too large").into()));
                    }
                    conn.buf.reserve(HEAD_READ);
                    let read = ready!(poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf));
                    let nothing_yet = conn.buf.is_empty();
                    let error = match read {
                        Ok(0) if nothing_yet => closed_early(),
                        Ok(0) => malformed("connection closed in the middle of the response head"),
                        Ok(_) => continue,
                        Err(error) => error,
                    };
                    // Only a connection that sent nothing at all may have been stale.
                    let reused = *reused && nothing_yet;
                    if let Err(e) = this.stale(reused, error) {
                        return Poll::Ready(Err(e));
                    }
                }
                SendState::Done => panic!("DirectSend polled after completion"),
            }
        }
    }
}

/// How the body of a response is delimited.
#[derive(Debug)]
enum Framing {
    /// `Content-Length`: this many bytes are still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunked),
    /// Until the target closes the connection.
    Close,
    /// Finished.
    Done,
}

/// A parsed response head and how its body is delimited.
struct Head {
    response: Response<()>,
    framing: Framing,
    /// Whether the connection can serve another request once the body has been read.
    reusable: bool,
}

/// Parses a response head from the start of `buf`, skipping 1xx heads. `None`: more bytes
/// are needed. On success the head has been consumed from `buf`.
fn parse_head(
    buf: &mut BytesMut,
    spans: &mut Vec<Span>,
    head_request: bool,
) -> io::Result<Option<Head>> {
    loop {
        // Uninitialised, and the spans in a reused vector: zeroing a hundred headers' worth of
        // stack on every response cost more than parsing it.
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(error) => return Err(malformed(error)),
        };
        let code = parsed.code.unwrap_or_default();
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        if (100..200).contains(&code) {
            if code == 101 {
                return Err(malformed("unexpected 101 Switching Protocols"));
            }
            // Informational answers (100 Continue, 103 Early Hints) are not relayed.
            buf.advance(len);
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(malformed)?;
        // Header values are slices of the head's bytes, as hyper does: no copy per header.
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        spans.clear();
        spans.extend(parsed.headers.iter().map(|h| {
            let (name, value) = (offset(h.name.as_bytes()), offset(h.value));
            [
                name,
                name + h.name.len() as u32,
                value,
                value + h.value.len() as u32,
            ]
        }));
        let head = buf.split_to(len).freeze();
        let mut map = HeaderMap::with_capacity(spans.len());
        // Noted while building the map: most responses have neither, and a lookup of each
        // would hash its name.
        let (mut transfer_encoding, mut connection) = (false, false);
        for &[name_start, name_end, value_start, value_end] in spans.iter() {
            let name = HeaderName::from_bytes(&head[name_start as usize..name_end as usize])
                .map_err(malformed)?;
            if name == TRANSFER_ENCODING {
                transfer_encoding = true;
            } else if name == CONNECTION {
                connection = true;
            }
            let value = HeaderValue::from_maybe_shared(
                head.slice(value_start as usize..value_end as usize),
            )
            .map_err(malformed)?;
            map.append(name, value);
        }
        let framing = framing(&map, status, head_request, transfer_encoding)?;
        let keep_alive = match version {
            Version::HTTP_11 => !(connection && has_token(&map, &CONNECTION, "close")),
            _ => connection && has_token(&map, &CONNECTION, "keep-alive"),
        };
        let reusable = keep_alive && !matches!(framing, Framing::Close);
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = map;
        return Ok(Some(Head {
            response,
            framing,
            reusable,
        }));
    }
}

/// How the body of a response with `headers` is delimited; `transfer_encoding`: whether the
/// head has a `Transfer-Encoding` header.
fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    head_request: bool,
    transfer_encoding: bool,
) -> io::Result<Framing> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Done);
    }
    if transfer_encoding {
        let chunked = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| tokens(v).last())
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked {
            Framing::Chunked(Chunked::default())
        } else {
            Framing::Close
        });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let n = std::str::from_utf8(part.trim_ascii())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| malformed("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(malformed("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => Framing::Done,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// The state of a chunked body's decoder.
#[derive(Debug, Default)]
enum Chunked {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk: this many data bytes are still to come.
    Data(u64),
    /// After a chunk's data: expecting its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields until a blank line. Boxed when there are any
    /// (rarely): inline, the map would make every response body larger.
    Trailers(Option<Box<HeaderMap>>),
}

/// What the chunked decoder produced from the buffered bytes.
enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    NeedMore,
}

/// The position of the first `\n` in `buf`.
fn line_end(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|b| *b == b'\n')
}

impl Chunked {
    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Decoded> {
        loop {
            match self {
                Chunked::Size => {
                    let Some(end) = line_end(buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(malformed("chunk size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let line = &buf[..end];
                    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                    let rest = line[digits..].trim_ascii_start();
                    if digits == 0 || !(rest.is_empty() || rest == b"\r" || rest[0] == b';') {
                        return Err(malformed("invalid chunk size line"));
                    }
                    let mut size: u64 = 0;
                    for digit in &line[..digits] {
                        let value = u64::from((*digit as char).to_digit(16).unwrap_or(0));
                        size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(value))
                            .ok_or_else(|| malformed("chunk size too large"))?;
                    }
                    buf.advance(end + 1);
                    *self = if size == 0 {
                        Chunked::Trailers(None)
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    let data = buf.split_to(n).freeze();
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        *self = Chunked::DataEnd;
                    }
                    return Ok(Decoded::Data(data));
                }
                Chunked::DataEnd => {
                    match buf.first() {
                        None => return Ok(Decoded::NeedMore),
                        Some(b'\n') => buf.advance(1),
                        Some(b'\r') if buf.len() < 2 => return Ok(Decoded::NeedMore),
                        Some(b'\r') if buf[1] == b'\n' => buf.advance(2),
                        Some(_) => return Err(malformed("missing CRLF after chunk data")),
                    }
                    *self = Chunked::Size;
                }
                Chunked::Trailers(trailers) => {
                    let Some(end) = line_end(buf) else {
                        if buf.len() > MAX_TRAILERS {
                            return Err(malformed("trailer section too large"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let line = buf.split_to(end + 1);
                    let line = line.strip_suffix(b"\n").unwrap_or(&line);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if line.is_empty() {
                        return Ok(match trailers.take() {
                            Some(trailers) if !trailers.is_empty() => Decoded::Trailers(*trailers),
                            _ => Decoded::End,
                        });
                    }
                    let colon = line
                        .iter()
                        .position(|b| *b == b':')
                        .ok_or_else(|| malformed("invalid trailer field"))?;
                    let name = HeaderName::from_bytes(&line[..colon]).map_err(malformed)?;
                    let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii())
                        .map_err(malformed)?;
                    let trailers = trailers.get_or_insert_with(Box::default);
                    if trailers.len() >= MAX_HEADERS {
                        return Err(malformed("too many trailer fields"));
                    }
                    trailers.append(name, value);
                }
            }
        }
    }
}

/// A response body read straight from the target's connection, which goes back to the
/// target's idle connections once the body has been read to its end.
#[derive(Debug)]
pub(crate) struct DirectBody {
    conn: Option<Box<DirectConn>>,
    framing: Framing,
    /// Where the connection goes at the end; `None` when it cannot be reused.
    pool: Option<Arc<DirectConns>>,
}

impl DirectBody {
    fn new(conn: Box<DirectConn>, framing: Framing, pool: Option<Arc<DirectConns>>) -> Self {
        let mut body = Self {
            conn: Some(conn),
            framing,
            pool,
        };
        if let Framing::Done = body.framing {
            body.finish();
        }
        body
    }

    /// The body has ended: the connection goes back if it can serve another request.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take()) {
            // Bytes beyond the response would be read as the next response's: close instead.
            if conn.buf.is_empty() {
                pool.put_back(conn);
            }
        }
    }

    /// Fails the body; the connection is closed.
    fn fail(&mut self, error: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.framing = Framing::Done;
        self.conn = None;
        self.pool = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for DirectBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let want = match &mut this.framing {
                Framing::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(remaining) => {
                    if !conn.buf.is_empty() {
                        let n = usize::try_from(*remaining)
                            .unwrap_or(usize::MAX)
                            .min(conn.buf.len());
                        let data = conn.buf.split_to(n).freeze();
                        *remaining -= n as u64;
                        if *remaining == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    usize::try_from(*remaining)
                        .unwrap_or(BODY_READ)
                        .min(BODY_READ)
                }
                Framing::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    BODY_READ
                }
                Framing::Chunked(chunked) => match chunked.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(trailers)) => {
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => BODY_READ,
                    Err(error) => return this.fail(error),
                },
            };
            conn.buf.reserve(want);
            match ready!(poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf)) {
                Ok(0) if matches!(this.framing, Framing::Close) => {
                    // The end of a close-delimited body; the connection is done too.
                    this.pool = None;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(closed_early()),
                Ok(_) => {}
                Err(error) => return this.fail(error),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;

    /// The head's response, framing and reusability; `None` when incomplete.
    fn parse(
        bytes: &[u8],
        head_request: bool,
    ) -> io::Result<Option<(Response<()>, (Framing, bool))>> {
        let mut buf = BytesMut::from(bytes);
        parse_head(&mut buf, &mut Vec::new(), head_request)
            .map(|head| head.map(|h| (h.response, (h.framing, h.reusable))))
    }

    #[test]
    fn heads_are_parsed_and_framed() {
        let (resp, (framing, reusable)) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-a"], "b");
        assert!(matches!(framing, Framing::Length(5)));
        assert!(reusable);

        let (_, (framing, reusable)) = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(framing, Framing::Chunked(_)));
        assert!(reusable);

        let (_, (framing, reusable)) = parse(b"HTTP/1.0 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert!(matches!(framing, Framing::Close));
        assert!(!reusable);

        let (_, (framing, reusable)) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(framing, Framing::Length(5)));
        assert!(!reusable, "the target asked to close");

        // Names are matched whatever their case; HTTP/1.0 keeps the connection on request.
        let (_, (framing, reusable)) = parse(
            b"HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: chunked\r\nCONNECTION: Close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(framing, Framing::Chunked(_)));
        assert!(!reusable);
        let (_, (framing, reusable)) = parse(
            b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: Keep-Alive\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(framing, Framing::Length(5)));
        assert!(reusable);

        // HEAD, 204 and 304 have no body whatever their headers say.
        let (_, (framing, _)) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert!(matches!(framing, Framing::Done));
        let (_, (framing, _)) = parse(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(framing, Framing::Done));
    }

    #[test]
    fn informational_heads_are_skipped() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"[..]);
        let head = parse_head(&mut buf, &mut Vec::new(), false)
            .unwrap()
            .unwrap();
        assert_eq!(head.response.status(), 204);
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_and_bad_heads() {
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Le", false)
            .unwrap()
            .is_none());
        assert!(parse(b"NOT HTTP AT ALL\r\n\r\n", false).is_err());
        assert!(parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            false
        )
        .is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false).is_err());
        assert!(parse(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false).is_err());
    }

    /// Decodes `input` fed in pieces of `step` bytes; returns the data and the trailers.
    fn dechunk(input: &[u8], step: usize) -> io::Result<(Vec<u8>, Option<HeaderMap>)> {
        let mut chunked = Chunked::default();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut pieces = input.chunks(step);
        loop {
            match chunked.decode(&mut buf)? {
                Decoded::Data(bytes) => data.extend_from_slice(&bytes),
                Decoded::Trailers(trailers) => return Ok((data, Some(trailers))),
                Decoded::End => return Ok((data, None)),
                Decoded::NeedMore => match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => return Err(closed_early()),
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_in_any_pieces() {
        let input = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Checksum: abc\r\n\r\n";
        for step in [1, 2, 3, 7, input.len()] {
            let (data, trailers) = dechunk(input, step).unwrap();
            assert_eq!(data, b"hello, world", "step {step}");
            assert_eq!(trailers.unwrap()["x-checksum"], "abc", "step {step}");
        }
        let (data, trailers) = dechunk(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!(data, b"abc");
        assert!(trailers.is_none());
        assert!(dechunk(b"zz\r\n", 4).is_err());
        assert!(dechunk(b"3\r\nabcX", 7).is_err());
        assert!(dechunk(b"3\r\nab", 5).is_err(), "truncated");
        assert!(dechunk(b"ffffffffffffffffff\r\n", 64).is_err(), "overflow");
    }

    #[test]
    fn requests_are_encoded_in_wire_form() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("app.test"));
        headers.append("x-a", HeaderValue::from_static("1"));
        let head = encode_head(&Method::GET, "/p?q=1", &headers, std::iter::empty());
        assert_eq!(
            head,
            b"GET /p?q=1 HTTP/1.1\r\nhost: app.test\r\nx-a: 1\r\n\r\n"
        );
        assert!(eligible(&Method::GET, false, false));
        assert!(eligible(&Method::HEAD, false, false));
        assert!(!eligible(&Method::POST, false, false));
        assert!(!eligible(&Method::GET, true, false));
        assert!(!eligible(&Method::GET, false, true));
    }
}
