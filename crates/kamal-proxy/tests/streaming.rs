//! Streaming through the real binary: server-sent events arrive event by event, a 1 GiB
//! response streams in bounded memory, WebSockets echo and are closed when their target is
//! drained by a redeploy (spec §4.8, §7.5, §7.7).

mod support;

use std::time::{Duration, Instant};

use support::*;

const HOST: &str = "stream.test";

#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    let proxy = start_proxy();
    let up = Upstream::start("sse");
    proxy
        .deploy_async("sse", &["--target", &up.address(), "--host", HOST])
        .await;

    let started = Instant::now();
    let (status, headers, events) = client::read_sse(
        proxy.http_port(),
        HOST,
        "/sse?events=5&interval_ms=250",
        Duration::from_secs(10),
    )
    .await
    .expect("SSE through the proxy");
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(
        data,
        ["event 0", "event 1", "event 2", "event 3", "event 4"]
    );
    // The first event is not held back until the stream ends...
    let first = events[0].received_at - started;
    assert!(
        first < Duration::from_millis(600),
        "first event after {first:?}"
    );
    // ...and every later one arrives about one interval after the previous one.
    for pair in events.windows(2) {
        let gap = pair[1].received_at - pair[0].received_at;
        assert!(
            gap >= Duration::from_millis(150),
            "events {:?} and {:?} arrived {gap:?} apart",
            pair[0].id,
            pair[1].id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_response_streams_in_bounded_memory() {
    const SIZE: u64 = 1 << 30;
    const MAX_GROWTH_KIB: u64 = 64 * 1024;

    let proxy = start_proxy();
    let up = Upstream::start("big");
    proxy
        .deploy_async("big", &["--target", &up.address(), "--host", HOST])
        .await;
    // Warm up the connection pools and lazily allocated buffers before the baseline.
    let (status, n) = client::get_counting(
        proxy.http_port(),
        HOST,
        "/bytes?n=1048576",
        Duration::from_secs(10),
    )
    .await
    .expect("warm-up download");
    assert_eq!((status.as_u16(), n), (200, 1 << 20));

    let baseline = proxy.rss_kib().expect("proxy RSS");
    let reset = proxy.reset_peak_rss();
    let peak_before = proxy.peak_rss_kib().expect("proxy peak RSS");
    let started = Instant::now();
    let (status, n) = client::get_counting(
        proxy.http_port(),
        HOST,
        &format!("/bytes?n={SIZE}"),
        Duration::from_secs(60),
    )
    .await
    .expect("1 GiB download within 60 s");
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(n, SIZE);
    let peak_after = proxy.peak_rss_kib().expect("proxy peak RSS");
    eprintln!("1 GiB in {took:?}; RSS baseline {baseline} KiB, peak before {peak_before} KiB (reset: {reset}), peak after {peak_after} KiB");
    // With the peak reset, growth is measured from the current RSS; otherwise from the old peak.
    let growth = peak_after.saturating_sub(if reset { baseline } else { peak_before });
    assert!(
        growth < MAX_GROWTH_KIB,
        "proxy peak RSS grew by {growth} KiB streaming 1 GiB (baseline {baseline} KiB, peak {peak_after} KiB, {took:?})"
    );

    // Also when the upstream sends it chunked (no Content-Length: flushed per chunk).
    let (status, n) = client::get_counting(
        proxy.http_port(),
        HOST,
        "/bytes?n=67108864&chunked=1",
        Duration::from_secs(30),
    )
    .await
    .expect("chunked download");
    assert_eq!((status.as_u16(), n), (200, 64 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echoes_and_closes_when_its_target_drains() {
    let proxy = start_proxy();
    let old = Upstream::start("old");
    let new = Upstream::start("new");
    proxy
        .deploy_async("ws", &["--target", &old.address(), "--host", HOST])
        .await;

    let mut ws = client::ws_connect(proxy.http_port(), HOST, "/ws")
        .await
        .expect("WebSocket through the proxy");
    for i in 0..3 {
        let text = format!("hello {i}");
        ws.send_text(&text).await.expect("send");
        assert_eq!(
            ws.recv_text(Duration::from_secs(5)).await.expect("echo"),
            Some(text)
        );
    }
    assert_eq!(old.open_websockets(), 1);

    // Draining closes upgraded connections at once: the deploy does not wait for the 30 s drain.
    let started = Instant::now();
    proxy
        .deploy_async("ws", &["--target", &new.address(), "--host", HOST])
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "deploy waited {:?} for a WebSocket",
        started.elapsed()
    );
    let closed = ws.recv_text(Duration::from_secs(5)).await;
    assert!(
        matches!(closed, Ok(None)),
        "the drained WebSocket is still open: {closed:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            old.open_websockets() == 0
        })
        .await
    );

    let mut ws = client::ws_connect(proxy.http_port(), HOST, "/ws")
        .await
        .expect("WebSocket to the new target");
    ws.send_text("again").await.expect("send");
    assert_eq!(
        ws.recv_text(Duration::from_secs(5)).await.expect("echo"),
        Some("again".into())
    );
    assert_eq!(new.open_websockets(), 1);
    ws.close().await;
}
