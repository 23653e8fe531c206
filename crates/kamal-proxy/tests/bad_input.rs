//! Bad input through the real binary: oversized headers, garbage request lines, dead and slow
//! upstreams — and the proxy keeps serving afterwards (spec §4.10, §7.6, Appendix D).

mod support;

use std::time::{Duration, Instant};

use support::*;

const HOST: &str = "app.test";

async fn proxy_with_app() -> (Proxy, Upstream) {
    let proxy = start_proxy();
    let up = Upstream::start("app");
    proxy
        .deploy_async("app", &["--target", &up.address(), "--host", HOST])
        .await;
    (proxy, up)
}

async fn still_serving(proxy: &Proxy) {
    assert_eq!(who_answers(proxy, HOST, "/after").await, Ok("app".into()));
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (proxy, up) = proxy_with_app().await;
    // Above Go's 1 MiB + 4 KiB header limit, so any reasonable limit rejects it.
    let big = "a".repeat(2 << 20);
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {big}\r\n\r\n");
    let reply = client::raw_exchange(
        proxy.http_port(),
        request.as_bytes(),
        Duration::from_secs(2),
        Duration::from_secs(10),
    )
    .await
    .expect("an answer to oversized headers");
    assert_eq!(
        client::status_of(&reply),
        Some(431),
        "{}",
        String::from_utf8_lossy(&reply[..reply.len().min(200)])
    );
    assert_eq!(up.app_requests(), 0);
    still_serving(&proxy).await;
}

#[tokio::test]
async fn garbage_request_lines_get_400() {
    let (proxy, up) = proxy_with_app().await;
    let inputs: [&[u8]; 4] = [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app.test\r\nBad Header Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app.test\r\nContent-Length: nope\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    ];
    for input in inputs {
        let reply = client::raw_exchange(
            proxy.http_port(),
            input,
            Duration::from_secs(2),
            Duration::from_secs(5),
        )
        .await
        .expect("an answer to a malformed request");
        assert_eq!(
            client::status_of(&reply),
            Some(400),
            "input {:?} got {:?}",
            String::from_utf8_lossy(input),
            String::from_utf8_lossy(&reply)
        );
    }
    assert_eq!(up.app_requests(), 0);
    still_serving(&proxy).await;
}

#[tokio::test]
async fn dead_upstream_gives_the_502_page() {
    let proxy = start_proxy();
    let up = Upstream::start("doomed");
    let other = Upstream::start("app");
    proxy
        .deploy_async(
            "doomed",
            &["--target", &up.address(), "--host", "doomed.test"],
        )
        .await;
    proxy
        .deploy_async("app", &["--target", &other.address(), "--host", HOST])
        .await;
    let address = up.address();
    up.shutdown();

    // A healthy single target is never checked again, so a dead one gives 502, not 503.
    let reply = get(&proxy, "doomed.test", "/gone").await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        reply.text().contains("502 — Bad Gateway"),
        "{}",
        reply.text()
    );
    let log = proxy.wait_for_log(
        |v| v["msg"] == "Error while proxying",
        Duration::from_secs(5),
    );
    let log = log.expect("an `Error while proxying` log line");
    assert_eq!(log["target"], address);
    assert_eq!(log["path"], "/gone");
    still_serving(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_with_target_timeout_gives_504() {
    let proxy = start_proxy();
    let up = Upstream::start("app");
    proxy
        .deploy_async(
            "app",
            &[
                "--target",
                &up.address(),
                "--host",
                HOST,
                "--target-timeout=1s",
            ],
        )
        .await;

    let started = Instant::now();
    let reply = get(&proxy, HOST, "/slow?ms=3000").await;
    let took = started.elapsed();
    assert_eq!(reply.status, 504);
    assert!(
        reply.text().contains("504 — Gateway Timeout"),
        "{}",
        reply.text()
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "504 after {took:?}"
    );
    // A fast request on the same service is unaffected.
    still_serving(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_do_not_disturb_concurrent_good_ones() {
    let (proxy, _up) = proxy_with_app().await;
    let port = proxy.http_port();
    let good = tokio::spawn(async move {
        let client = Client::new();
        let mut failures = 0;
        for _ in 0..200 {
            match client.get(port, HOST, "/").await {
                Ok(reply) if reply.status == 200 => {}
                _ => failures += 1,
            }
        }
        failures
    });
    for _ in 0..20 {
        let reply = client::raw_exchange(
            port,
            b"\x00\x01garbage\r\n\r\n",
            Duration::from_millis(500),
            Duration::from_secs(2),
        )
        .await
        .expect("raw exchange");
        assert_eq!(client::status_of(&reply), Some(400));
    }
    assert_eq!(good.await.expect("good client"), 0);
}
