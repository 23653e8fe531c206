//! A deliberately fast upstream for `cargo xtask bench`: an HTTP/1.1 hyper server with fixed
//! answers, so that what a benchmark measures is the proxy in front of it, not the app.
//!
//! | request | answer |
//! |---|---|
//! | `GET /up` | `200`, `OK` (health check) |
//! | `GET /1m` | `200`, 1 MiB of `x` with `Content-Length` (one static buffer, no copy) |
//! | any request with a body | the body is read and dropped, then the small answer |
//! | anything else | `200`, the 13 bytes `Hello, world\n` |
//!
//! ```no_run
//! # async fn example() -> Result<(), bench_upstream::Error> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! bench_upstream::serve(listener).await
//! # }
//! ```

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// The small answer: 13 bytes, like the upstream of the reference measurements.
pub const SMALL_BODY: &[u8] = b"Hello, world\n";
/// Size of the large answer served at `/1m`.
pub const LARGE_SIZE: usize = 1024 * 1024;

/// The large answer lives in the binary, so each response hands hyper the same static buffer.
static LARGE_BODY: [u8; LARGE_SIZE] = [b'x'; LARGE_SIZE];

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding or accepting on the listening socket failed.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
}

/// Accepts connections on `listener` forever, one task per connection.
///
/// # Errors
/// Only when accepting fails for a reason other than a transient per-connection error.
pub async fn serve(listener: TcpListener) -> Result<(), Error> {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // A client that went away between SYN and accept, or a momentary fd shortage
            // under a connection storm, must not stop the benchmark's upstream.
            Err(e) if is_transient(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        // Small answers go out in one segment without waiting for an ACK.
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(answer));
            // A client closing mid-request is normal under load (wrk stops abruptly).
            let _ = connection.await;
        });
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error() == Some(24) // EMFILE
        || e.raw_os_error() == Some(23) // ENFILE
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    // Uploads are consumed frame by frame and dropped; nothing is kept or copied.
    let mut body = body;
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    let response = match parts.uri.path() {
        "/up" => fixed(Bytes::from_static(b"OK")),
        "/1m" => fixed(Bytes::from_static(&LARGE_BODY)),
        _ => fixed(Bytes::from_static(SMALL_BODY)),
    };
    Ok(response)
}

fn fixed(body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener));
        addr
    }

    /// Reads one response with a `Content-Length` from `stream`; returns (head, body length).
    async fn read_response(stream: &mut TcpStream) -> (String, usize) {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the response head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("content-length");
        let mut have = buf.len() - head_end;
        while have < length {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-body");
            have += n;
        }
        assert_eq!(have, length, "no bytes beyond the body");
        (head, length)
    }

    #[tokio::test]
    async fn answers_small_large_health_and_uploads_on_one_connection() {
        let addr = start().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let exchange = async {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            let (head, len) = read_response(&mut stream).await;
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert_eq!(len, SMALL_BODY.len());
            assert_eq!(len, 13);

            stream
                .write_all(b"GET /up HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            let (head, len) = read_response(&mut stream).await;
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert_eq!(len, 2);

            stream
                .write_all(b"GET /1m HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(read_response(&mut stream).await.1, LARGE_SIZE);

            // A 256 KiB upload is consumed before the answer.
            let upload = vec![b'u'; 256 * 1024];
            let head = format!(
                "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
                upload.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(&upload).await.unwrap();
            let (head, len) = read_response(&mut stream).await;
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert_eq!(len, 13);
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("exchange within 10 s");
    }
}
