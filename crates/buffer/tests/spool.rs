//! Buffering through the public API: memory threshold, spilling, limits, aborted bodies,
//! concurrent spills, replay framing, and the tower layers.

use std::collections::VecDeque;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use kamal_buffer::{
    buffer_body, buffer_request, must_stream, BoxError, BufferError, Buffered, Limits,
    MaybeBuffered, RequestBufferLayer, ResponseBufferLayer,
};
use tokio::sync::mpsc;
use tower::{service_fn, Layer, ServiceExt};

/// A body fed chunk by chunk through a channel; an `Err` item makes it fail like an aborted
/// client. Announces no size, like a chunked body.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, &'static str>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data).map_err(Into::into)))
    }
}

fn channel_body() -> (mpsc::Sender<Result<Bytes, &'static str>>, ChannelBody) {
    let (tx, rx) = mpsc::channel(8);
    (tx, ChannelBody { rx })
}

/// A body made of fixed frames (data, then optional trailers), announcing its exact size when
/// `exact` is set, as a `Content-Length` body does.
struct Frames {
    frames: VecDeque<Frame<Bytes>>,
    remaining: u64,
    exact: bool,
}

impl Frames {
    fn new(chunks: &[&[u8]], exact: bool) -> Self {
        let frames: VecDeque<_> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::copy_from_slice(c)))
            .collect();
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Self {
            frames,
            remaining,
            exact,
        }
    }

    fn with_trailers(mut self, trailers: HeaderMap) -> Self {
        self.frames.push_back(Frame::trailers(trailers));
        self
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = self.frames.pop_front();
        if let Some(data) = frame.as_ref().and_then(Frame::data_ref) {
            self.remaining -= data.len() as u64;
        }
        Poll::Ready(frame.map(Ok))
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::new()
        }
    }
}

/// `n` bytes of a repeating, position-dependent pattern (so misordered chunks are caught).
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(31))
        .collect()
}

/// Open file descriptors of this process whose target lies inside `dir` (an anonymous spill
/// file shows as `<dir>/#<inode> (deleted)` or `<dir>/.tmpXXXX (deleted)`).
fn open_files_in(dir: &Path) -> usize {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc/self/fd")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with(&dir))
                .count()
        })
        .unwrap_or(0)
}

fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

/// Polls `check` every 5 ms until it holds or `timeout` passes.
async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn collect(body: impl Body<Data = Bytes, Error = impl std::fmt::Debug>) -> Vec<u8> {
    body.collect().await.unwrap().to_bytes().to_vec()
}

#[tokio::test]
async fn under_and_at_the_memory_threshold_stays_in_memory() {
    let spill = tempfile::tempdir().unwrap();
    let limits = Limits::new().memory(16).spill_dir(spill.path());
    for n in [0, 1, 15, 16] {
        let data = pattern(n, 1);
        let buffered = buffer_body(Frames::new(&[&data], true), &limits)
            .await
            .unwrap();
        assert!(!buffered.is_spilled(), "{n} bytes spilled");
        assert_eq!(buffered.len(), n as u64);
        assert_eq!(collect(buffered).await, data);
    }
    assert!(dir_is_empty(spill.path()));
}

#[tokio::test]
async fn one_byte_over_the_threshold_spills_and_replays_in_order() {
    let spill = tempfile::tempdir().unwrap();
    let limits = Limits::new().memory(16).spill_dir(spill.path());
    let data = pattern(17, 2);
    // The chunk that crosses the threshold is split: 10 + 6 bytes stay in memory.
    let buffered = buffer_body(Frames::new(&[&data[..10], &data[10..]], false), &limits)
        .await
        .unwrap();
    assert!(buffered.is_spilled());
    assert_eq!(open_files_in(spill.path()), 1);
    // The spill file never has a name in the directory.
    assert!(dir_is_empty(spill.path()));

    let mut body = std::pin::pin!(buffered);
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        frames.push(frame.unwrap().into_data().unwrap());
    }
    let sizes: Vec<usize> = frames.iter().map(Bytes::len).collect();
    assert_eq!(
        sizes,
        [10, 6, 1],
        "memory part first, exactly up to the threshold"
    );
    assert_eq!(frames.concat(), data);
    // Read back completely: the file is closed before the body is even dropped.
    assert_eq!(open_files_in(spill.path()), 0);
}

#[tokio::test]
async fn large_body_spills_to_disk_intact() {
    let spill = tempfile::tempdir().unwrap();
    let limits = Limits::new().memory(64 * 1024).spill_dir(spill.path());
    let data = pattern(5 * 1024 * 1024 + 123, 3);
    let chunks: Vec<&[u8]> = data.chunks(16 * 1024 + 7).collect();
    let buffered = buffer_body(Frames::new(&chunks, true), &limits)
        .await
        .unwrap();
    assert!(buffered.is_spilled());
    assert_eq!(buffered.size_hint().exact(), Some(data.len() as u64));
    assert_eq!(collect(buffered).await, data);
    assert_eq!(open_files_in(spill.path()), 0);
}

#[tokio::test]
async fn zero_memory_sends_every_non_empty_body_to_disk() {
    let spill = tempfile::tempdir().unwrap();
    let limits = Limits::new().memory(0).spill_dir(spill.path());
    let empty = buffer_body(Frames::new(&[b""], true), &limits)
        .await
        .unwrap();
    assert!(!empty.is_spilled());
    assert!(empty.is_end_stream());
    let one = buffer_body(Frames::new(&[b"x"], true), &limits)
        .await
        .unwrap();
    assert!(one.is_spilled());
    assert_eq!(collect(one).await, b"x");
}

#[tokio::test]
async fn limit_allows_exactly_n_bytes_and_fails_at_n_plus_one() {
    let spill = tempfile::tempdir().unwrap();
    // In memory and spilled alike.
    for memory in [1024, 4] {
        let limits = Limits::new()
            .memory(memory)
            .max_size(Some(100))
            .spill_dir(spill.path());
        let data = pattern(100, 4);
        let ok = buffer_body(Frames::new(&[&data[..50], &data[50..]], false), &limits)
            .await
            .unwrap();
        assert_eq!(collect(ok).await, data);

        let over = pattern(101, 4);
        let err = buffer_body(Frames::new(&[&over[..100], &over[100..]], false), &limits)
            .await
            .unwrap_err();
        assert!(
            matches!(err, BufferError::TooLarge { limit: 100 }),
            "{err:?}"
        );
        assert!(err.is_too_large());
    }
    assert_eq!(open_files_in(spill.path()), 0);
    assert!(dir_is_empty(spill.path()));
}

#[tokio::test]
async fn aborted_body_releases_its_spill_file() {
    let spill = tempfile::tempdir().unwrap();
    let limits = Limits::new().memory(1024).spill_dir(spill.path());
    let (tx, body) = channel_body();
    let task = tokio::spawn(async move { buffer_body(body, &limits).await });

    tx.send(Ok(Bytes::from(pattern(4096, 5)))).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || open_files_in(spill.path()) == 1).await,
        "the body spilled to a file"
    );
    tx.send(Err("connection reset by peer")).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, BufferError::Body { .. }), "{err:?}");
    assert_eq!(
        err.body_error().unwrap().to_string(),
        "connection reset by peer"
    );
    assert_eq!(open_files_in(spill.path()), 0, "spill file still open");
    assert!(dir_is_empty(spill.path()));
}

#[tokio::test]
async fn body_ending_early_without_error_is_just_shorter_and_dropped_replay_frees_file() {
    let spill = tempfile::tempdir().unwrap();
    let limits = Limits::new().memory(8).spill_dir(spill.path());
    let (tx, body) = channel_body();
    let task = tokio::spawn(async move { buffer_body(body, &limits).await });
    tx.send(Ok(Bytes::from(pattern(200_000, 6)))).await.unwrap();
    drop(tx);
    let buffered = task.await.unwrap().unwrap();
    assert_eq!(buffered.len(), 200_000);
    // No exact size announced by the source, none by the replay.
    assert_eq!(buffered.size_hint().exact(), None);
    // Read part of it, then drop it, as a client that goes away mid-response would.
    let mut body = Box::pin(buffered);
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.data_ref().unwrap().len(), 8);
    let second = body.frame().await.unwrap().unwrap();
    assert!(!second.data_ref().unwrap().is_empty());
    assert_eq!(open_files_in(spill.path()), 1);
    drop(body);
    assert_eq!(open_files_in(spill.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_spills_stay_separate() {
    const BODIES: u8 = 48;
    let spill = tempfile::tempdir().unwrap();
    let limits = Limits::new().memory(1000).spill_dir(spill.path());
    let mut tasks = Vec::new();
    for seed in 0..BODIES {
        let limits = limits.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(300_000 + usize::from(seed) * 17, seed);
            let chunks: Vec<&[u8]> = data.chunks(8 * 1024).collect();
            let buffered = buffer_body(Frames::new(&chunks, true), &limits)
                .await
                .unwrap();
            assert!(buffered.is_spilled());
            let replayed = collect(buffered).await;
            assert!(replayed == data, "body {seed} replayed wrongly");
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("spills finish")
            .unwrap();
    }
    assert_eq!(open_files_in(spill.path()), 0);
    assert!(dir_is_empty(spill.path()));
}

#[tokio::test]
async fn trailers_and_exact_size_are_replayed() {
    let spill = tempfile::tempdir().unwrap();
    let limits = Limits::new().memory(2).spill_dir(spill.path());
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    let body = Frames::new(&[b"hello", b" world"], false).with_trailers(trailers.clone());
    let buffered = buffer_body(body, &limits).await.unwrap();
    assert_eq!(buffered.size_hint().exact(), None);
    assert_eq!(buffered.size_hint().lower(), 11);
    let collected = buffered.collect().await.unwrap();
    assert_eq!(collected.trailers(), Some(&trailers));
    assert_eq!(collected.to_bytes(), "hello world");
}

#[tokio::test]
async fn buffer_request_refuses_a_large_content_length_before_reading() {
    let limits = Limits::new().max_size(Some(10));
    let (_tx, body) = channel_body();
    // The body would never end: only the pre-check can answer.
    let req = Request::builder()
        .header("content-length", "11")
        .body(body)
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), buffer_request(req, &limits))
        .await
        .expect("refused without reading")
        .unwrap_err();
    assert!(matches!(err, BufferError::TooLarge { limit: 10 }));

    let req = Request::builder()
        .header("content-length", "10")
        .body(Full::new(Bytes::from_static(b"0123456789")))
        .unwrap();
    let req = buffer_request(req, &limits).await.unwrap();
    assert!(req.body().is_buffered());
    assert_eq!(req.body().size_hint().exact(), Some(10));
}

#[test]
fn streaming_responses_bypass_buffering() {
    let headers = |pairs: &[(&'static str, &'static str)]| {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    };
    let ok = StatusCode::OK;
    assert!(must_stream(
        ok,
        &headers(&[("content-type", "text/event-stream")])
    ));
    assert!(must_stream(
        ok,
        &headers(&[("content-type", "text/event-stream; charset=utf-8")])
    ));
    assert!(must_stream(ok, &headers(&[("x-accel-buffering", "no")])));
    assert!(must_stream(ok, &headers(&[("x-accel-buffering", "No")])));
    assert!(must_stream(
        StatusCode::SWITCHING_PROTOCOLS,
        &HeaderMap::new()
    ));
    // The media type is compared exactly, as upstream does.
    assert!(!must_stream(
        ok,
        &headers(&[("content-type", "Text/Event-Stream")])
    ));
    assert!(!must_stream(ok, &headers(&[("content-type", "text/html")])));
    assert!(!must_stream(ok, &headers(&[("x-accel-buffering", "yes")])));
    assert!(!must_stream(ok, &HeaderMap::new()));
}

#[tokio::test]
async fn request_layer_hands_the_inner_service_a_buffered_body() {
    let spill = tempfile::tempdir().unwrap();
    let limits = Limits::new()
        .memory(4)
        .max_size(Some(64))
        .spill_dir(spill.path());
    let inner = service_fn(|req: Request<Buffered>| async move {
        let spilled = req.body().is_spilled();
        let body = req.into_body().collect().await?.to_bytes();
        Ok::<_, BoxError>((spilled, body))
    });
    let svc = RequestBufferLayer::new(limits).layer(inner);

    let req = Request::new(Full::new(Bytes::from_static(b"buffered body")));
    let (spilled, body) = svc.clone().oneshot(req).await.unwrap();
    assert!(spilled);
    assert_eq!(body, "buffered body");

    let req = Request::new(Full::new(Bytes::from(vec![b'a'; 65])));
    let err = svc.oneshot(req).await.unwrap_err();
    let err = err.downcast_ref::<BufferError>().expect("a BufferError");
    assert!(err.is_too_large());
}

#[tokio::test]
async fn response_layer_buffers_unless_the_response_streams() {
    let limits = Limits::new().max_size(Some(8));
    let inner = service_fn(|kind: &'static str| async move {
        let resp = match kind {
            "sse" => Response::builder()
                .header("content-type", "text/event-stream")
                .body(Full::new(Bytes::from(
                    "data: far more than eight bytes\n\n",
                ))),
            "big" => Response::builder().body(Full::new(Bytes::from("nine bytes"))),
            _ => Response::builder().body(Full::new(Bytes::from("small"))),
        };
        Ok::<_, BoxError>(resp.unwrap())
    });
    let svc = ResponseBufferLayer::new(limits).layer(inner);

    let resp: Response<MaybeBuffered<Full<Bytes>>> = svc.clone().oneshot("small").await.unwrap();
    assert!(resp.body().is_buffered());
    assert_eq!(collect(resp.into_body()).await, b"small");

    let resp = svc.clone().oneshot("sse").await.unwrap();
    assert!(!resp.body().is_buffered(), "SSE must stream");

    let err = svc.oneshot("big").await.unwrap_err();
    assert!(err.downcast_ref::<BufferError>().unwrap().is_too_large());
}
