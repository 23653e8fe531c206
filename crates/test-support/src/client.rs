//! Test clients: a keep-alive HTTP/1.1 client, a raw TCP client for malformed input, an SSE
//! reader with per-event timestamps and a WebSocket client. All connect to `127.0.0.1` only.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::upstream::NAME_HEADER;
use crate::Error;

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Response status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A response header as text, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The name of the [`Upstream`](crate::Upstream) that answered, from its response header.
    pub fn upstream(&self) -> Option<&str> {
        self.header(NAME_HEADER)
    }

    /// Parses the upstream's echo body (what the upstream received).
    pub fn echo(&self) -> Result<Echo, Error> {
        Echo::parse(&self.body)
    }
}

/// What an [`Upstream`](crate::Upstream) received, as written in its echo body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo {
    /// Upstream name.
    pub name: String,
    /// Request method.
    pub method: String,
    /// Request path (without query) as received by the upstream.
    pub path: String,
    /// Raw query string without `?` ("" if none).
    pub query: String,
    /// Request headers by lower-case name, every value in order.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Length of the request body the upstream read.
    pub body_len: u64,
}

impl Echo {
    /// Parses an echo body: a name line, then one JSON line.
    pub fn parse(body: &[u8]) -> Result<Echo, Error> {
        let text = String::from_utf8_lossy(body);
        let not_echo = || Error::NotAnEcho(text.chars().take(200).collect());
        let (_, json) = text.split_once('\n').ok_or_else(not_echo)?;
        let value: serde_json::Value = serde_json::from_str(json.trim()).map_err(|_| not_echo())?;
        let string = |key: &str| value[key].as_str().map(str::to_owned).ok_or_else(not_echo);
        let mut headers = BTreeMap::new();
        if let Some(map) = value["headers"].as_object() {
            for (name, values) in map {
                let values = values
                    .as_array()
                    .map(|vs| {
                        vs.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                headers.insert(name.clone(), values);
            }
        }
        Ok(Echo {
            name: string("name")?,
            method: string("method")?,
            path: string("path")?,
            query: string("query")?,
            headers,
            body_len: value["body_len"].as_u64().unwrap_or(0),
        })
    }

    /// The path with `?query` appended when there is a query: the upstream request target.
    pub fn uri(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }

    /// All values of a request header (`name` in lower case) joined with `, `.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|values| values.join(", "))
    }
}

/// A keep-alive HTTP/1.1 client (hyper-util's pooled client) for requests to a local port.
#[derive(Debug, Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client with an idle-connection pool (connections are reused between requests).
    pub fn new() -> Client {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Client { inner }
    }

    /// `GET http://127.0.0.1:<port><path>` with `Host: <host>`, whole body collected.
    pub async fn get(&self, port: u16, host: &str, path: &str) -> Result<Reply, Error> {
        self.send(port, Method::GET, host, path, &[], Bytes::new())
            .await
    }

    /// Sends any request to `127.0.0.1:<port>` and collects the whole response.
    pub async fn send(
        &self,
        port: u16,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, Error> {
        let response = self
            .inner
            .request(build_request(port, method, host, path, headers, body)?)
            .await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends a request and returns the status, headers and the streaming body (for large or
    /// slow responses).
    pub async fn send_streaming(
        &self,
        port: u16,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<http::Response<hyper::body::Incoming>, Error> {
        Ok(self
            .inner
            .request(build_request(
                port,
                method,
                host,
                path,
                headers,
                Bytes::new(),
            )?)
            .await?)
    }
}

fn build_request(
    port: u16,
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Request<Full<Bytes>>, Error> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header(header::HOST, host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    Ok(builder.body(Full::new(body))?)
}

/// One-shot `GET` through a fresh [`Client`].
pub async fn get(port: u16, host: &str, path: &str) -> Result<Reply, Error> {
    Client::new().get(port, host, path).await
}

/// `GET`s `path` and counts the body bytes as they stream, without keeping them. Returns the
/// status and the byte count; fails if the body is cut or `timeout` passes.
pub async fn get_counting(
    port: u16,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(StatusCode, u64), Error> {
    let work = async {
        let response = Client::new()
            .send_streaming(port, Method::GET, host, path, &[])
            .await?;
        let status = response.status();
        let mut body = response.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                total += data.len() as u64;
            }
        }
        Ok((status, total))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| Error::Timeout(timeout))?
}

/// Sends `bytes` as-is over a new TCP connection to `127.0.0.1:<port>` and returns everything
/// read until the peer closes, `idle` passes without new data, or `timeout` passes overall.
///
/// Writing and reading run concurrently: a server that answers early (431 for oversized
/// headers) and closes is read before its close can turn into a reset that discards the answer.
pub async fn raw_exchange(
    port: u16,
    bytes: &[u8],
    idle: Duration,
    timeout: Duration,
) -> Result<Vec<u8>, Error> {
    let deadline = Instant::now() + timeout;
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut reader, mut writer) = stream.into_split();
    let request = bytes.to_vec();
    let write = tokio::spawn(async move {
        // The peer may answer and close before reading everything: a write error is expected.
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut reply = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, reader.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => reply.extend_from_slice(&buf[..n]),
            // A reset after (part of) the answer arrived still leaves the answer in `reply`.
            Ok(Err(_)) if !reply.is_empty() => break,
            Ok(Err(e)) => {
                write.abort();
                return Err(e.into());
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    write.abort();
    Ok(reply)
}

/// Reads a request head (up to and including the blank line, at most 4 KiB) from a stream a
/// hand-written test server accepted. `None` if the peer closed or failed first.
pub async fn read_request_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
        match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => len += n,
        }
    }
    Some(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// The status code of the first HTTP/1.x status line in `reply`, if any.
pub fn status_of(reply: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(reply.get(..reply.len().min(64))?).ok()?;
    let rest = text.strip_prefix("HTTP/1.")?;
    rest.get(2..5)?.parse().ok()
}

/// One server-sent event and when it was received.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// The `id:` field, if any.
    pub id: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// When the blank line ending the event arrived.
    pub received_at: Instant,
}

/// Reads a `text/event-stream` response event by event until the stream ends or `timeout`
/// passes. Returns the status, the headers and the events with their arrival times.
pub async fn read_sse(
    port: u16,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(StatusCode, HeaderMap, Vec<SseEvent>), Error> {
    let work = async {
        let response = Client::new()
            .send_streaming(
                port,
                Method::GET,
                host,
                path,
                &[("accept", "text/event-stream")],
            )
            .await?;
        let (parts, mut body) = response.into_parts();
        let mut events = Vec::new();
        let mut pending = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = pending.find("\n\n") {
                let block: String = pending.drain(..end + 2).collect();
                events.push(parse_sse_block(&block, Instant::now()));
            }
        }
        Ok((parts.status, parts.headers, events))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| Error::Timeout(timeout))?
}

fn parse_sse_block(block: &str, received_at: Instant) -> SseEvent {
    let mut id = None;
    let mut data = Vec::new();
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("id:") {
            id = Some(value.trim_start().to_owned());
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push(value.trim_start().to_owned());
        }
    }
    SseEvent {
        id,
        data: data.join("\n"),
        received_at,
    }
}

/// A WebSocket client connection.
#[derive(Debug)]
pub struct WsClient {
    stream: WebSocketStream<TcpStream>,
}

/// Opens a WebSocket to `ws://127.0.0.1:<port><path>` with `Host: <host>`.
pub async fn ws_connect(port: u16, host: &str, path: &str) -> Result<WsClient, Error> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut request = format!("ws://127.0.0.1:{port}{path}").into_client_request()?;
    request.headers_mut().insert(
        header::HOST,
        HeaderValue::from_str(host).map_err(http::Error::from)?,
    );
    let (stream, _response) = tokio_tungstenite::client_async(request, tcp).await?;
    Ok(WsClient { stream })
}

impl WsClient {
    /// Sends a text message.
    pub async fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.stream.send(Message::text(text)).await?;
        Ok(())
    }

    /// Waits for the next text or binary message. `Ok(None)` means the connection was closed
    /// (close frame, EOF or reset); [`Error::Timeout`] means nothing arrived in time.
    pub async fn recv_text(&mut self, timeout: Duration) -> Result<Option<String>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(wait, self.stream.next())
                .await
                .map_err(|_| Error::Timeout(timeout))?;
            match next {
                Some(Ok(Message::Text(text))) => return Ok(Some(text.as_str().to_owned())),
                Some(Ok(Message::Binary(data))) => {
                    return Ok(Some(String::from_utf8_lossy(&data).into_owned()))
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(None),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Sends a close frame (errors ignored: the peer may already be gone).
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_parsing() {
        assert_eq!(
            status_of(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            Some(431)
        );
        assert_eq!(status_of(b"HTTP/1.0 400 Bad Request\r\n"), Some(400));
        assert_eq!(status_of(b""), None);
        assert_eq!(status_of(b"garbage"), None);
    }

    #[tokio::test]
    async fn raw_exchange_reads_the_whole_answer() {
        let upstream = crate::Upstream::start("raw");
        let reply = raw_exchange(
            upstream.addr().port(),
            b"GET /raw HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(status_of(&reply), Some(200));
        assert!(String::from_utf8_lossy(&reply).contains("\"path\":\"/raw\""));
        let garbage = raw_exchange(
            upstream.addr().port(),
            b"NOT HTTP AT ALL\r\n\r\n",
            Duration::from_secs(2),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(status_of(&garbage), Some(400));
    }

    #[test]
    fn sse_block_parsing() {
        let event = parse_sse_block("id: 3\ndata: a\ndata: b\n\n", Instant::now());
        assert_eq!(event.id.as_deref(), Some("3"));
        assert_eq!(event.data, "a\nb");
    }

    #[test]
    fn echo_parsing_rejects_other_bodies() {
        assert!(Echo::parse(b"<h1>404</h1>").is_err());
        let echo = Echo::parse(
            b"a\n{\"name\":\"a\",\"method\":\"GET\",\"path\":\"/x\",\"query\":\"q=1\",\"headers\":{\"host\":[\"h\"]},\"body_len\":0}\n",
        )
        .unwrap();
        assert_eq!(echo.uri(), "/x?q=1");
        assert_eq!(echo.header("host").as_deref(), Some("h"));
    }
}
