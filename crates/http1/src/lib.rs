//! Plain HTTP/1.1 connections, served without hyper for the common case.
//!
//! hyper's server keeps 16 KiB of buffers for a connection's whole life, arms a header-read
//! timer for every request and passes each request and response through its dispatcher. For
//! the requests most traffic is made of (`GET` and `HEAD` without a body, from an HTTP/1.1
//! client, whose head arrives whole) this crate reads the head, parses it with httparse,
//! calls the handler and writes the response itself, holding no buffer while the connection is
//! idle. Anything else (request bodies, `Expect`, upgrades and h2c, `TE`, HTTP/1.0, other
//! methods, a head that has not fully arrived, input httparse rejects) is handed to a fallback
//! with the bytes read so far (kamal-proxy gives it to hyper, which serves the connection from
//! then on, so its answers to such requests — 400, 431, 414, timeouts — stay as they were).
//!
//! Responses are framed as hyper frames them (the `serve` tests compare both byte for byte):
//! `Content-Length` from the header or the body's exact size, chunked otherwise, no body for
//! `HEAD`, 204 and 304, a `Date` header when the response has none, `connection: close` when
//! the client asked to close or the server is shutting down.

use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;

/// Errors of a response body; they abort the connection.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes asked of the socket when a request starts: more than a typical request head.
const FIRST_READ: usize = 4096;
/// Headers parsed on the stack; a request with more goes to hyper (which allows 100).
const MAX_HEADERS: usize = 64;
/// While a request is in flight the connection is read on (to notice the client leaving) until
/// this much of what it sent next is buffered.
const MAX_AHEAD: usize = 64 * 1024;
/// Response bytes gathered before writing; body chunks at least this large are written from
/// where they are, without copying.
const GATHER: usize = 16 * 1024;

/// What the bytes at the start of the buffer are.
// Returned once per request and matched at once: boxing the request would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// A request this module serves, and whether the client asked to close afterwards.
    Simple(Request<()>, bool),
    /// Anything else: hyper takes the connection. Holds the head when it was already split off
    /// the buffer (its bytes come before the buffer's).
    Hyper(Option<Bytes>),
}

/// Tells connections to close: a flag each connection reads once per request (one atomic load),
/// and a token that wakes the idle ones. (A token alone would take a lock on every check.)
#[derive(Debug, Clone, Default)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    token: CancellationToken,
}

impl Stop {
    /// Makes every connection close once its request in flight is answered.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether [`Stop::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Fires when [`Stop::stop`] is called.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// Serves a plain-HTTP connection until it closes, `stop` fires between requests, or a request
/// needs hyper (`fallback` then serves the connection, starting with the bytes already read).
/// `call` answers a request; it must not panic (the caller catches panics).
///
/// A connection that waits for its next request for between `idle` and twice `idle` is
/// closed (hyper closed one after its header-read timeout). One timer per connection,
/// re-armed only when it fires, keeps that bound without arming a timer for every request.
pub async fn serve<C, Fut, B, F, FFut>(
    mut stream: TcpStream,
    call: C,
    stop: &Stop,
    idle: Duration,
    fallback: F,
) where
    C: Fn(Request<()>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    F: FnOnce(TcpStream, Bytes) -> FFut,
    FFut: Future<Output = ()>,
{
    let mut buf = BytesMut::new();
    let mut out: Vec<u8> = Vec::new();
    let mut spans = Vec::new();
    let mut stopped = pin!(stop.token.cancelled());
    // Whether `stopped` holds this task's waker. A task's waker does not change, so one
    // registration lasts the connection's life and later waits only read the flag.
    let mut watching = false;
    let mut idle_timer = pin!(tokio::time::sleep(idle));
    // Whether `idle_timer` holds this task's waker: like `stopped`, it is polled once and then
    // checked with a load (a poll re-registers the waker, twice per request).
    let mut timing = false;
    // Requests answered, and how many had been when the idle timer was last armed: unchanged
    // when it fires means the connection sat idle the whole time.
    let (mut served, mut served_when_armed) = (0u64, 0u64);
    loop {
        if buf.is_empty() {
            // Between requests: the read buffer is kept for the next request (its allocation is
            // reused once the last request's header values are gone) unless it grew past one
            // read; buffers are given back when the connection sits idle (below).
            if buf.capacity() > FIRST_READ {
                buf = BytesMut::new();
            }
            if out.capacity() > GATHER {
                out = Vec::new();
            }
            let read = poll_fn(|cx| {
                if stop.is_stopped() {
                    return Poll::Ready(Ok(0));
                }
                // Bytes already waiting (a new connection's first request nearly always is) are
                // read without arming the stop watch and the idle timer first: those cost a
                // waiter and a timer-wheel entry, which only a connection that waits needs.
                if !(watching && timing) {
                    if let Poll::Ready(ready) = stream.poll_read_ready(cx) {
                        ready?;
                        buf.reserve(FIRST_READ);
                        if let Poll::Ready(read) =
                            poll_read_buf(Pin::new(&mut stream), cx, &mut buf)
                        {
                            return Poll::Ready(read);
                        }
                    }
                }
                if !watching {
                    if stopped.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Ok(0));
                    }
                    watching = true;
                }
                let fired = if timing {
                    idle_timer.is_elapsed()
                } else {
                    timing = true;
                    idle_timer.as_mut().poll(cx).is_ready()
                };
                if fired {
                    if served == served_when_armed {
                        return Poll::Ready(Ok(0));
                    }
                    served_when_armed = served;
                    // Idle for a while: hold no read buffer until bytes arrive.
                    buf = BytesMut::new();
                    idle_timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + idle);
                    // Registers the re-armed timer with this task.
                    let _ = idle_timer.as_mut().poll(cx);
                }
                std::task::ready!(stream.poll_read_ready(cx))?;
                buf.reserve(FIRST_READ);
                poll_read_buf(Pin::new(&mut stream), cx, &mut buf)
            })
            .await;
            if !matches!(read, Ok(n) if n > 0) {
                return;
            }
        }
        let (req, client_close) = match parse(&mut buf, &mut spans) {
            Parsed::Simple(req, close) => (req, close),
            Parsed::Hyper(head) => {
                let prefix = match head {
                    None => buf.freeze(),
                    Some(head) => {
                        let mut all = BytesMut::with_capacity(head.len() + buf.len());
                        all.extend_from_slice(&head);
                        all.extend_from_slice(&buf);
                        all.freeze()
                    }
                };
                return fallback(stream, prefix).await;
            }
        };
        let head_request = req.method() == Method::HEAD;

        let response = {
            // Pinned in place, not boxed: callers keep a large handler future behind a box of its
            // own (kamal-proxy's does), so this one is small.
            let mut answer = pin!(call(req));
            poll_fn(|cx| {
                if let Poll::Ready(response) = answer.as_mut().poll(cx) {
                    return Poll::Ready(Some(response));
                }
                // The client leaving cancels the request, as hyper does without half-close.
                match watch_client(&mut stream, &mut buf, cx) {
                    Poll::Ready(()) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await
        };
        let Some(response) = response else { return };

        served += 1;
        let keep_alive = !client_close && !stop.is_stopped();
        match respond(
            &mut stream,
            &mut buf,
            &mut out,
            response,
            head_request,
            keep_alive,
        )
        .await
        {
            Ok(true) => {}
            // Dropping the stream closes it, which sends the FIN after the response just as a
            // `shutdown` first would (nothing is read after it either way): one system call
            // less per closed connection.
            Ok(false) => return,
            Err(()) => return,
        }
    }
}

/// Reads on while a request is in flight: `Ready` when the client has closed the connection
/// (or it failed). What the client sends meanwhile (a pipelined request) is kept in `buf`.
fn watch_client(stream: &mut TcpStream, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        if buf.len() >= MAX_AHEAD {
            return Poll::Pending;
        }
        // Readiness first: a client that sends nothing while it waits (nearly all) costs
        // neither a read nor room in the buffer.
        match stream.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
        buf.reserve(FIRST_READ);
        match poll_read_buf(Pin::new(&mut *stream), cx, buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// Headers the proxy adds to a request on its way to the target (`X-Forwarded-*`,
/// `X-Request-ID`, `X-Request-Start`): room is left for them so the map does not grow.
const ADDED_HEADERS: usize = 6;

/// Offsets in a head of one header's name (start, end) and value (start, end).
type Span = [u32; 4];

/// Parses the request head at the start of `buf`, splitting it off when this module serves it.
/// `spans` is scratch space, kept by the caller to reuse its allocation.
fn parse(buf: &mut BytesMut, spans: &mut Vec<Span>) -> Parsed {
    let (len, method, path, close) = {
        // Uninitialised: zeroing them for every request would cost more than the parse.
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            // Incomplete or invalid: hyper reads the rest (with its header timeout) or answers.
            _ => return Parsed::Hyper(None),
        };
        if req.version != Some(1) {
            return Parsed::Hyper(None);
        }
        let method = match req.method {
            Some("GET") => Method::GET,
            Some("HEAD") => Method::HEAD,
            _ => return Parsed::Hyper(None),
        };
        let path = req.path.unwrap_or_default();
        if !path.starts_with('/') {
            return Parsed::Hyper(None);
        }
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let mut close = false;
        spans.clear();
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            if is_hyper_only(name) {
                return Parsed::Hyper(None);
            }
            if name.eq_ignore_ascii_case(b"connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                        // `Connection: upgrade`, `HTTP2-Settings` and the like.
                        return Parsed::Hyper(None);
                    }
                }
            }
            let (n, v) = (offset(name), offset(h.value));
            spans.push([n, n + name.len() as u32, v, v + h.value.len() as u32]);
        }
        let path_start = offset(path.as_bytes());
        let path = path_start as usize..path_start as usize + path.len();
        (len, method, path, close)
    };

    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path)) else {
        return Parsed::Hyper(Some(head));
    };
    let mut headers = HeaderMap::with_capacity(spans.len() + ADDED_HEADERS);
    for &[ns, ne, vs, ve] in spans.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&head[ns as usize..ne as usize]),
            HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize)),
        ) else {
            return Parsed::Hyper(Some(head));
        };
        headers.append(name, value);
    }
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Parsed::Simple(req, close)
}

/// Request headers that only hyper handles: bodies, `100-continue`, upgrades, trailers.
fn is_hyper_only(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 6] = [
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"upgrade",
        b"te",
        b"http2-settings",
    ];
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes (extra ones are dropped, as hyper does).
    Length(u64),
    Chunked,
    /// Until the connection closes.
    Close,
}

/// What the response body says about its length before it is read.
#[derive(Debug, Clone, Copy)]
enum BodyLength {
    Empty,
    Known(u64),
    Unknown,
}

/// Writes the response. `Ok(true)`: the connection stays open for the next request;
/// `Ok(false)`: it should be shut down; `Err`: it broke (or the body failed) and is dropped.
async fn respond<B>(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    response: Response<B>,
    head_request: bool,
    keep_alive: bool,
) -> Result<bool, ()>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let length = if body.is_end_stream() {
        BodyLength::Empty
    } else {
        match body.size_hint().exact() {
            Some(n) => BodyLength::Known(n),
            None => BodyLength::Unknown,
        }
    };
    out.clear();
    let (framing, keep_alive) = encode_head(out, &parts, length, head_request, keep_alive)?;
    if framing == Framing::Length(0) {
        // Nothing of the body goes out (HEAD, 204, 304, empty): it is dropped unread.
        drop(body);
        stream.write_all(out).await.map_err(drop)?;
        return Ok(keep_alive);
    }

    let mut body = pin!(body);
    let mut remaining = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        // `Err(None)`: the client left.
        let frame = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame.map(|f| f.map_err(Some)))),
            // Send what is gathered before waiting for more.
            Poll::Pending if !out.is_empty() => Poll::Ready(None),
            Poll::Pending => match watch_client(stream, buf, cx) {
                Poll::Ready(()) => Poll::Ready(Some(Some(Err(None)))),
                Poll::Pending => Poll::Pending,
            },
        })
        .await;
        match frame {
            None => {
                stream.write_all(out).await.map_err(drop)?;
                out.clear();
            }
            Some(Some(Ok(frame))) => {
                let Ok(mut data) = frame.into_data() else {
                    // Trailers: only sent to clients that asked with `TE`, which go to hyper.
                    continue;
                };
                if let Framing::Length(_) = framing {
                    if remaining < data.len() as u64 {
                        data.truncate(remaining as usize);
                    }
                    remaining -= data.len() as u64;
                }
                if data.is_empty() {
                    continue;
                }
                if framing == Framing::Chunked {
                    push_chunk_size(out, data.len());
                }
                if data.len() < GATHER {
                    out.extend_from_slice(&data);
                } else {
                    write_two(stream, out, &data).await.map_err(drop)?;
                    out.clear();
                }
                if framing == Framing::Chunked {
                    out.extend_from_slice(b"\r\n");
                }
                if remaining == 0 {
                    // All the announced length is out; whatever more the body has is dropped
                    // unread, as hyper does.
                    stream.write_all(out).await.map_err(drop)?;
                    return Ok(keep_alive);
                }
                if out.len() >= GATHER {
                    stream.write_all(out).await.map_err(drop)?;
                    out.clear();
                }
            }
            Some(None) => {
                return match framing {
                    Framing::Length(_) if remaining > 0 => {
                        // The body ended short of its length: the client can only tell by the
                        // connection closing. What was gathered still goes out first.
                        let _ = stream.write_all(out).await;
                        Err(())
                    }
                    Framing::Length(_) => {
                        stream.write_all(out).await.map_err(drop)?;
                        Ok(keep_alive)
                    }
                    Framing::Chunked => {
                        out.extend_from_slice(b"0\r\n\r\n");
                        stream.write_all(out).await.map_err(drop)?;
                        Ok(keep_alive)
                    }
                    Framing::Close => {
                        stream.write_all(out).await.map_err(drop)?;
                        Ok(false)
                    }
                };
            }
            // The body failed (or the client left): abort, as hyper does.
            Some(Some(Err(_))) => return Err(()),
        }
    }
}

/// Writes `a` then `b` with as few system calls as the socket allows.
async fn write_two<W: AsyncWrite + Unpin>(io: &mut W, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() {
        let slices = [IoSlice::new(a), IoSlice::new(b)];
        let n = poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, &slices)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if n >= a.len() {
            b = &b[n - a.len()..];
            a = &[];
        } else {
            a = &a[n..];
        }
    }
    io.write_all(b).await
}

fn push_chunk_size(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Writes the status line and headers the way hyper's server does for an HTTP/1.1 client
/// (lower-case names, framing headers, `Date`), and returns the body's framing and whether the
/// connection stays open after it. `Err` when the response cannot be framed (conflicting
/// `Content-Length` values), where hyper closes the connection without answering.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    length: BodyLength,
    head_request: bool,
    mut keep_alive: bool,
) -> Result<(Framing, bool), ()> {
    let status = parts.status;
    if status.is_informational() {
        // A 1xx cannot be the response to a request hyper would let through here.
        // hyper answers 500 with no headers of the response and closes the connection.
        out.extend_from_slice(b"HTTP/1.1 500 Internal Server Error\r\n");
        if !head_request {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        push_date_header(out);
        out.extend_from_slice(b"\r\n");
        return Ok((Framing::Length(0), false));
    }
    let http10 = parts.version == Version::HTTP_10;
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if !http10 && status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        match reason {
            Some(reason) => out.extend_from_slice(reason.as_bytes()),
            None => out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }

    let no_length_status = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let can_chunk = !head_request && !no_length_status;
    let mut framing = Framing::Length(0);
    let mut wrote_len = false;
    let mut wrote_date = false;
    let mut content_length: Option<u64> = None;
    // A framing or connection header line is left open so that more values of the same name
    // join it, comma-separated, as hyper writes them.
    let mut open: Option<&HeaderName> = None;
    let mut chunked_last = true;
    let mut has_connection = false;
    let mut has_close = false;

    let close_line = |out: &mut Vec<u8>,
                      open: &mut Option<&HeaderName>,
                      chunked_last: bool,
                      has_close: bool,
                      keep_alive: bool| {
        match open.take() {
            Some(name) if name == header::TRANSFER_ENCODING && !chunked_last => {
                out.extend_from_slice(b", chunked\r\n")
            }
            Some(name) if name == header::CONNECTION && !keep_alive && !has_close => {
                out.extend_from_slice(b", close\r\n")
            }
            Some(_) => out.extend_from_slice(b"\r\n"),
            None => {}
        }
    };

    for (name, value) in &parts.headers {
        if open.is_some_and(|open| open == name) {
            // Another value of the open line's header.
            match *name {
                header::CONTENT_LENGTH => {
                    if let BodyLength::Unknown = length {
                        if parse_content_length(value) != content_length {
                            return Err(());
                        }
                    }
                }
                header::TRANSFER_ENCODING => {
                    chunked_last = is_chunked(value);
                    out.extend_from_slice(b", ");
                    out.extend_from_slice(value.as_bytes());
                }
                header::CONNECTION => {
                    has_close |= has_token(value, "close");
                    out.extend_from_slice(b", ");
                    out.extend_from_slice(value.as_bytes());
                }
                _ => {
                    out.extend_from_slice(b", ");
                    out.extend_from_slice(value.as_bytes());
                }
            }
            continue;
        }
        close_line(out, &mut open, chunked_last, has_close, keep_alive);
        match *name {
            header::CONTENT_LENGTH => match length {
                BodyLength::Known(n) => {
                    framing = Framing::Length(n);
                    wrote_len = true;
                    push_open(out, "content-length: ", value);
                    open = Some(name);
                }
                BodyLength::Unknown => {
                    let Some(n) = parse_content_length(value) else {
                        return Err(());
                    };
                    framing = Framing::Length(n);
                    content_length = Some(n);
                    wrote_len = true;
                    push_open(out, "content-length: ", value);
                    open = Some(name);
                }
                // No body, yet a length: kept for HEAD (it describes the GET), else dropped.
                BodyLength::Empty if head_request => {
                    wrote_len = true;
                    push_line(out, name, value);
                }
                BodyLength::Empty => {}
            },
            header::TRANSFER_ENCODING => {
                if http10 || !can_chunk {
                    continue;
                }
                framing = Framing::Chunked;
                wrote_len = true;
                chunked_last = is_chunked(value);
                push_open(out, "transfer-encoding: ", value);
                open = Some(name);
            }
            header::CONNECTION => {
                has_connection = true;
                has_close = has_token(value, "close");
                push_open(out, "connection: ", value);
                open = Some(name);
            }
            header::TRAILER => {
                if http10 || !can_chunk {
                    continue;
                }
                push_open(out, "trailer: ", value);
                open = Some(name);
            }
            header::DATE => {
                wrote_date = true;
                push_line(out, name, value);
            }
            _ => push_line(out, name, value),
        }
    }
    close_line(out, &mut open, chunked_last, has_close, keep_alive);
    if has_close {
        keep_alive = false;
    }
    if !keep_alive && !has_connection {
        out.extend_from_slice(b"connection: close\r\n");
    }

    if !wrote_len {
        framing = match length {
            BodyLength::Unknown if http10 || !can_chunk => Framing::Close,
            BodyLength::Unknown => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            BodyLength::Empty | BodyLength::Known(0) => {
                if !no_length_status && !head_request {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            BodyLength::Known(n) => {
                if no_length_status {
                    Framing::Length(0)
                } else {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    out.extend_from_slice(b"\r\n");
                    Framing::Length(n)
                }
            }
        };
    }
    if !can_chunk {
        framing = Framing::Length(0);
    }
    if framing == Framing::Close {
        keep_alive = false;
    }
    if !wrote_date {
        push_date_header(out);
    }
    out.extend_from_slice(b"\r\n");
    Ok((framing, keep_alive))
}

fn push_open(out: &mut Vec<u8>, name: &str, value: &HeaderValue) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(value.as_bytes());
}

fn push_line(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn parse_content_length(value: &HeaderValue) -> Option<u64> {
    let s = value.to_str().ok()?.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn is_chunked(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// `date: <IMF-fixdate>\r\n`, formatted once a second per thread.
fn push_date_header(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            cached.1.clear();
            cached.1.extend_from_slice(b"date: ");
            cached
                .1
                .extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
            cached.1.extend_from_slice(b"\r\n");
            cached.0 = secs;
        }
        out.extend_from_slice(&cached.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    use http_body::Frame;
    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;

    type TestBody = BoxBody<Bytes, BoxError>;

    /// An idle timeout no test waits for.
    const LONG: Duration = Duration::from_secs(600);

    fn full(bytes: &'static [u8]) -> TestBody {
        Full::new(Bytes::from_static(bytes))
            .map_err(|e| match e {})
            .boxed()
    }

    fn empty() -> TestBody {
        Empty::new().map_err(|e| match e {}).boxed()
    }

    /// A body of unknown length.
    fn stream(frames: Vec<Frame<Bytes>>) -> TestBody {
        StreamBody::new(futures_util::stream::iter(
            frames.into_iter().map(Ok::<_, BoxError>),
        ))
        .boxed()
    }

    fn data(bytes: &'static [u8]) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(bytes))
    }

    fn response(
        status: u16,
        headers: &[(&'static str, &'static str)],
        body: TestBody,
    ) -> Response<TestBody> {
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            response
                .headers_mut()
                .append(*name, HeaderValue::from_static(value));
        }
        response
    }

    /// Accepts one connection on a fresh loopback port and runs `handle` on it.
    async fn accept_one<F, Fut>(
        handle: F,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Fut::Output>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            handle(stream).await
        });
        (addr, server)
    }

    /// Everything the server sends until it closes the connection; fails if it has not
    /// closed within 5 s.
    async fn until_closed(client: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
            .await
            .expect("closed by the server")
            .unwrap();
        got
    }

    /// Sends a `GET` and checks that the answer is the one-byte body `x`.
    async fn get_x(client: &mut TcpStream) {
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 512];
        let n = client.read(&mut answer).await.unwrap();
        assert!(answer[..n].ends_with(b"\r\n\r\nx"));
    }

    /// Everything a server sends back for `request` until it closes, `date` lines removed (they
    /// differ between two servers a second apart). `fast`: this module; otherwise hyper's
    /// HTTP/1.1 server as kamal-proxy configured it before.
    async fn exchange(request: &[u8], fast: bool, make: fn() -> Response<TestBody>) -> String {
        let (addr, server) = accept_one(move |stream| async move {
            if fast {
                let call = |_req| async move { make() };
                let fallback = |_, _| async { panic!("handed to hyper") };
                serve(stream, call, &Stop::default(), LONG, fallback).await;
            } else {
                let service =
                    hyper::service::service_fn(
                        move |_req| async move { Ok::<_, Infallible>(make()) },
                    );
                let _ = hyper::server::conn::http1::Builder::new()
                    .half_close(false)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        })
        .await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(request).await.unwrap();
        let got = until_closed(&mut client).await;
        server.await.unwrap();
        String::from_utf8(got)
            .unwrap()
            .split_inclusive("\r\n")
            .filter(|line| !line.starts_with("date: "))
            .collect()
    }

    /// Two pipelined requests, the second asking to close: the first answer shows keep-alive
    /// framing, the second the closing one.
    async fn assert_same_as_hyper(method: &str, make: fn() -> Response<TestBody>) {
        let request = format!(
            "{method} /a HTTP/1.1\r\nhost: x\r\n\r\n{method} /b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        );
        let ours = exchange(request.as_bytes(), true, make).await;
        let hypers = exchange(request.as_bytes(), false, make).await;
        assert_eq!(ours, hypers, "{method}: ours, then hyper's");
        assert!(ours.starts_with("HTTP/1."), "{ours}");
    }

    #[tokio::test]
    async fn responses_are_framed_byte_for_byte_as_hyper_frames_them() {
        let cases: &[fn() -> Response<TestBody>] = &[
            || response(200, &[], full(b"hello")),
            || response(200, &[], empty()),
            || {
                response(
                    200,
                    &[
                        ("content-type", "text/plain"),
                        ("set-cookie", "a=1"),
                        ("set-cookie", "b=2"),
                        ("x-empty", ""),
                    ],
                    full(b"hi"),
                )
            },
            || response(200, &[("content-length", "5")], full(b"hello")),
            || {
                response(
                    200,
                    &[("content-length", "5")],
                    stream(vec![data(b"he"), data(b"llo")]),
                )
            },
            || {
                response(
                    200,
                    &[],
                    stream(vec![data(b"one"), data(b""), data(b"two three")]),
                )
            },
            || response(200, &[], stream(vec![])),
            || {
                response(
                    200,
                    &[("transfer-encoding", "chunked")],
                    stream(vec![data(b"zz")]),
                )
            },
            || {
                let mut trailers = HeaderMap::new();
                trailers.insert("x-sum", HeaderValue::from_static("1"));
                response(
                    200,
                    &[("trailer", "x-sum")],
                    stream(vec![data(b"body"), Frame::trailers(trailers)]),
                )
            },
            || response(200, &[("connection", "close")], full(b"bye")),
            || response(200, &[("connection", "keep-alive")], full(b"stay")),
            || {
                response(
                    200,
                    &[("date", "Thu, 01 Jan 1970 00:00:00 GMT")],
                    full(b"old"),
                )
            },
            || response(204, &[], empty()),
            || response(204, &[("content-length", "0")], empty()),
            || response(304, &[("etag", "\"x\"")], empty()),
            || response(304, &[("content-length", "10")], empty()),
            || {
                response(
                    404,
                    &[("content-type", "text/html")],
                    full(b"<h1>not found</h1>"),
                )
            },
            || response(502, &[], stream(vec![data(b"bad")])),
            || response(599, &[], full(b"odd")),
            || response(103, &[("link", "</a.css>")], empty()),
            || response(200, &[("content-length", "3")], empty()),
            || {
                let mut r = response(200, &[], stream(vec![data(b"old protocol")]));
                *r.version_mut() = Version::HTTP_10;
                r
            },
            || {
                let mut r = response(200, &[], full(b"old but sized"));
                *r.version_mut() = Version::HTTP_10;
                r
            },
            || {
                response(
                    200,
                    &[],
                    stream(vec![
                        Frame::data(Bytes::from(vec![b'x'; 100_000])),
                        data(b"tail"),
                    ]),
                )
            },
            || {
                response(
                    200,
                    &[],
                    Full::new(Bytes::from(vec![b'y'; 70_000]))
                        .map_err(|e| match e {})
                        .boxed(),
                )
            },
        ];
        for (i, make) in cases.iter().enumerate() {
            for method in ["GET", "HEAD"] {
                eprintln!("case {i} {method}");
                assert_same_as_hyper(method, *make).await;
            }
        }
    }

    #[tokio::test]
    async fn chunked_is_added_to_another_transfer_coding() {
        // hyper 1.12 also appends ", chunked" to the header after (here `connection`): a bug
        // not copied.
        let make = || {
            response(
                200,
                &[("transfer-encoding", "gzip")],
                stream(vec![data(b"zz")]),
            )
        };
        let request = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        assert_eq!(
            exchange(request, true, make).await,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n2\r\nzz\r\n0\r\n\r\n"
        );
    }

    /// Feeds `request` to `serve` and returns what it handed to hyper, if anything.
    async fn handed_over(request: &'static [u8]) -> (Option<Bytes>, usize) {
        let (addr, server) = accept_one(move |stream| async move {
            let (tx, rx) = std::sync::mpsc::channel();
            let calls = std::sync::atomic::AtomicUsize::new(0);
            let call = |_req| {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async { response(200, &[], full(b"fast")) }
            };
            let fallback = |_stream, read: Bytes| {
                tx.send(read).unwrap();
                async {}
            };
            serve(stream, call, &Stop::default(), LONG, fallback).await;
            (rx.try_recv().ok(), calls.into_inner())
        })
        .await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got)).await;
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn only_simple_requests_are_served_here() {
        let simple: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
            b"HEAD /x?y=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\nhost: a\r\nconnection: Close\r\n\r\n",
        ];
        for request in simple {
            assert_eq!(handed_over(request).await, (None, 1), "{request:?}");
        }
        let for_hyper: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nhi",
            b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.0\r\nhost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nhost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nhost: a\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\n",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00",
        ];
        for request in for_hyper {
            let (read, calls) = handed_over(request).await;
            assert_eq!(calls, 0, "{request:?}");
            assert_eq!(
                read.as_deref(),
                Some(*request),
                "hyper gets every byte read"
            );
        }
    }

    #[tokio::test]
    async fn a_connection_moves_to_hyper_at_the_first_request_it_needs() {
        let request: &[u8] =
            b"GET /1 HTTP/1.1\r\nhost: a\r\n\r\nPOST /2 HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nhi";
        let (read, calls) = handed_over(request).await;
        assert_eq!(calls, 1);
        assert_eq!(read.as_deref(), Some(&request[28..]));
    }

    #[tokio::test]
    async fn more_headers_than_fit_on_the_stack_go_to_hyper() {
        let mut request = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS + 1 {
            request.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        let request: &'static [u8] = Vec::leak(request);
        assert_eq!(
            handed_over(request).await,
            (Some(Bytes::from_static(request)), 0)
        );
    }

    #[test]
    fn parsed_requests_keep_every_header_and_leave_the_next_request() {
        let mut buf = BytesMut::from(
            &b"GET /p?q=1 HTTP/1.1\r\nHost: example.com\r\nX-Two: a\r\nx-two: b\r\n\r\nGET /next"[..],
        );
        let Parsed::Simple(req, close) = parse(&mut buf, &mut Vec::new()) else {
            panic!("simple request")
        };
        assert!(!close);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/p?q=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "example.com");
        let twos: Vec<_> = req.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["a", "b"]);
        assert_eq!(&buf[..], b"GET /next");
    }

    #[tokio::test]
    async fn a_client_that_leaves_cancels_its_request() {
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr, server) = accept_one(move |stream| async move {
            let guard = std::sync::Mutex::new(Some(dropped_tx));
            let call = |_req| {
                // Dropped (and so sends) when the request's future is dropped.
                let sender = guard.lock().unwrap().take();
                async move {
                    let _sender = sender;
                    std::future::pending::<Response<TestBody>>().await
                }
            };
            let fallback = |_, _| async { panic!("handed to hyper") };
            serve(stream, call, &Stop::default(), LONG, fallback).await;
        })
        .await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(client);
        let dropped = tokio::time::timeout(Duration::from_secs(5), dropped_rx).await;
        assert!(
            matches!(dropped, Ok(Err(_))),
            "the request future was dropped"
        );
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn stop_closes_idle_connections_and_the_next_answer_says_close() {
        let stop = Stop::default();
        let (addr, server) = {
            let stop = stop.clone();
            accept_one(move |stream| async move {
                let call = |_req| {
                    let stop = stop.clone();
                    async move {
                        // Shutdown begins while this request is in flight.
                        stop.stop();
                        response(200, &[], full(b"last"))
                    }
                };
                let fallback = |_, _| async { panic!("handed to hyper") };
                serve(stream, call, &stop, LONG, fallback).await;
            })
            .await
        };
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let got = String::from_utf8(until_closed(&mut client).await).unwrap();
        assert!(got.contains("connection: close\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\nlast"), "{got}");
        server.await.unwrap();

        // An idle connection closes as soon as shutdown begins.
        let stop = Stop::default();
        let (addr, server) = {
            let stop = stop.clone();
            accept_one(move |stream| async move {
                let call = |_req| async { response(200, &[], full(b"x")) };
                let fallback = |_, _| async { panic!("handed to hyper") };
                serve(stream, call, &stop, LONG, fallback).await;
            })
            .await
        };
        let mut client = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.stop();
        assert!(until_closed(&mut client).await.is_empty());
        server.await.unwrap();
    }

    #[test]
    fn chunk_sizes_are_upper_case_hex() {
        let mut out = Vec::new();
        for n in [0, 9, 10, 255, 4096, 1 << 20] {
            push_chunk_size(&mut out, n);
        }
        assert_eq!(out, b"0\r\n9\r\nA\r\nFF\r\n1000\r\n100000\r\n");
    }

    #[tokio::test]
    async fn a_connection_whose_first_request_was_waiting_still_closes_when_idle_or_stopped() {
        // The first request is read before the stop watch and the idle timer are armed; both
        // must still apply once the connection waits.
        for stopped in [false, true] {
            let idle = Duration::from_millis(300);
            let stop = Stop::default();
            let (addr, server) = {
                let stop = stop.clone();
                accept_one(move |stream| async move {
                    // The request arrives before serving starts.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let call = |_req| async { response(200, &[], full(b"x")) };
                    let fallback = |_, _| async { panic!("handed to hyper") };
                    let idle = if stopped { LONG } else { idle };
                    serve(stream, call, &stop, idle, fallback).await;
                })
                .await
            };
            let mut client = TcpStream::connect(addr).await.unwrap();
            get_x(&mut client).await;
            if stopped {
                tokio::time::sleep(Duration::from_millis(50)).await;
                stop.stop();
            }
            assert!(until_closed(&mut client).await.is_empty());
            server.await.unwrap();
        }
    }

    #[tokio::test]
    async fn idle_connections_close_after_one_to_two_idle_periods() {
        let idle = Duration::from_millis(300);
        let (addr, server) = accept_one(move |stream| async move {
            let call = |_req| async { response(200, &[], full(b"x")) };
            let fallback = |_, _| async { panic!("handed to hyper") };
            serve(stream, call, &Stop::default(), idle, fallback).await;
        })
        .await;
        let started = std::time::Instant::now();
        let mut client = TcpStream::connect(addr).await.unwrap();
        // Requests keep it open past the first period...
        for _ in 0..4 {
            get_x(&mut client).await;
            tokio::time::sleep(idle / 3).await;
        }
        let active_until = started.elapsed();
        assert!(active_until > idle);
        // ...then, idle, it closes within two periods.
        assert!(until_closed(&mut client).await.is_empty());
        let idle_for = started.elapsed() - active_until;
        assert!(
            idle_for < idle * 2 + Duration::from_millis(200),
            "{idle_for:?}"
        );
        server.await.unwrap();
    }
}
