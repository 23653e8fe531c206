//! Access log, client cancellation, control-socket robustness and graceful shutdown, through
//! the real binary.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;
use support::*;

fn request_logs(proxy: &Proxy) -> Vec<Value> {
    proxy
        .log_json()
        .into_iter()
        .filter(|v| v["msg"] == "Request")
        .collect()
}

#[tokio::test]
async fn access_log_has_every_field_in_order() {
    let proxy = start_proxy();
    let app = Upstream::start("app");
    proxy.deploy(
        "svc",
        &[
            "--target",
            &app.address(),
            "--host",
            "log.test",
            "--log-request-header=X-Custom,X-Kamal-Target",
            "--log-response-header=X-Upstream-Name",
        ],
    );
    let reply = Client::new()
        .send(
            proxy.http_port(),
            Method::GET,
            "log.test",
            "/a%20b?x=1",
            &[
                ("user-agent", "probe/1"),
                ("x-custom", "one"),
                ("x-request-id", "rid-1"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200);

    let line = proxy
        .wait_for_log(
            |v| v["msg"] == "Request" && v["request_id"] == "rid-1",
            Duration::from_secs(5),
        )
        .expect("an access log line");
    let raw = proxy
        .logs()
        .into_iter()
        .find(|l| l.contains("\"rid-1\""))
        .unwrap();
    let keys: Vec<&str> = [
        "time",
        "level",
        "msg",
        "host",
        "port",
        "path",
        "request_id",
        "status",
        "service",
        "target",
        "duration",
        "method",
        "req_content_length",
        "req_content_type",
        "resp_content_length",
        "resp_content_type",
        "client_addr",
        "client_port",
        "remote_addr",
        "user_agent",
        "proto",
        "scheme",
        "query",
        "req_x_custom",
        "req_x_kamal_target",
        "resp_x_upstream_name",
    ]
    .to_vec();
    let mut at = 0;
    for key in &keys {
        let needle = format!("\"{key}\":");
        let pos = raw[at..]
            .find(&needle)
            .unwrap_or_else(|| panic!("{key} missing or out of order in {raw}"));
        at += pos + needle.len();
    }
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["host"], "log.test");
    assert_eq!(line["path"], "/a b");
    assert_eq!(line["status"], 200);
    assert_eq!(line["service"], "svc");
    assert_eq!(line["target"], app.address());
    assert_eq!(line["method"], "GET");
    assert_eq!(line["req_content_length"], 0);
    assert!(line["duration"].as_u64().unwrap() > 0);
    assert!(line["resp_content_length"].as_u64().unwrap() > 0);
    assert_eq!(line["client_addr"], "127.0.0.1");
    assert!(line["client_port"].as_str().unwrap().parse::<u16>().is_ok());
    assert_eq!(line["remote_addr"], "203.0.113.9");
    assert_eq!(line["user_agent"], "probe/1");
    assert_eq!(line["proto"], "HTTP/1.1");
    assert_eq!(line["scheme"], "http");
    assert_eq!(line["query"], "x=1");
    assert_eq!(line["req_x_custom"], "one");
    assert_eq!(line["req_x_kamal_target"], app.address());
    assert_eq!(line["resp_x_upstream_name"], "app");
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn generated_request_id_and_start_reach_the_target_but_not_the_client() {
    let proxy = start_proxy();
    let app = Upstream::start("app");
    proxy.deploy("svc", &["--target", &app.address()]);
    let reply = get(&proxy, "any.test", "/").await;
    let echo = reply.echo().unwrap();
    let id = echo.header("x-request-id").expect("x-request-id upstream");
    assert_eq!(id.len(), 36, "a hyphenated UUID: {id}");
    assert_eq!(id.chars().nth(14), Some('4'), "a version 4 UUID: {id}");
    let start = echo
        .header("x-request-start")
        .expect("x-request-start upstream");
    let ms: u128 = start.strip_prefix("t=").unwrap().parse().unwrap();
    assert!(ms > 1_700_000_000_000);
    assert!(reply.header("x-request-id").is_none());
    let logged = proxy
        .wait_for_log(|v| v["msg"] == "Request", Duration::from_secs(5))
        .unwrap();
    assert_eq!(logged["request_id"], id);
}

#[tokio::test]
async fn client_that_leaves_before_the_response_is_logged_as_499() {
    let proxy = start_proxy();
    let app = Upstream::start("app");
    proxy.deploy("svc", &["--target", &app.address()]);
    // A raw connection, closed after 300 ms, as a browser or curl with a timeout would.
    let reply = client::raw_exchange(
        proxy.http_port(),
        b"GET /slow?ms=3000 HTTP/1.1\r\nHost: any.test\r\n\r\n",
        Duration::from_millis(300),
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    assert!(reply.is_empty(), "the client gave up before any answer");
    let line = proxy
        .wait_for_log(
            |v| v["msg"] == "Request" && v["path"] == "/slow",
            Duration::from_secs(5),
        )
        .expect("an access log line for the abandoned request");
    assert_eq!(line["status"], 499);
    assert_eq!(line["service"], "svc");
}

#[tokio::test]
async fn no_match_is_logged_with_an_empty_service() {
    let proxy = start_proxy();
    let reply = get(&proxy, "nobody.test", "/x").await;
    assert_eq!(reply.status, 404);
    let line = proxy
        .wait_for_log(|v| v["msg"] == "Request", Duration::from_secs(5))
        .unwrap();
    assert_eq!(line["status"], 404);
    assert_eq!(line["service"], "");
    assert_eq!(line["target"], "");
    assert_eq!(line["resp_content_type"], "text/html; charset=utf-8");
    assert_eq!(request_logs(&proxy).len(), 1);
}

/// Garbage, truncated and oversized control frames, sent while a slow deploy is waiting for
/// its target to become healthy: the deploy still succeeds and the proxy keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_control_messages_do_not_disturb_a_concurrent_deploy() {
    let proxy = start_proxy();
    let app = Upstream::builder("app").healthy(false).start();
    let deploy = {
        let args = [
            "deploy",
            "svc",
            "--target",
            &app.address(),
            "--deploy-timeout=20s",
        ];
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let proxy_cmd = proxy.command();
        tokio::task::spawn_blocking(move || {
            let mut cmd = proxy_cmd;
            cmd.args(&args).output().unwrap()
        })
    };
    // Let the deploy reach its health wait.
    assert!(proxy
        .wait_for_log(|v| v["msg"] == "Deploying", Duration::from_secs(10))
        .is_some());

    let socket = proxy.socket_path();
    let frames: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        {
            let mut f = 20u32.to_be_bytes().to_vec();
            f.extend_from_slice(b"{not json at all!!!}");
            f
        },
        {
            let mut f = 1000u32.to_be_bytes().to_vec();
            f.extend_from_slice(b"{\"version\":1");
            f
        },
        u32::MAX.to_be_bytes().to_vec(),
    ];
    for frame in frames {
        let mut s = UnixStream::connect(&socket).expect("control socket accepts");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&frame);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        // Either an error answer or a closed connection; never a hang.
        let _ = s.read_to_end(&mut answer);
    }
    // A well-formed command on another connection is served meanwhile.
    let list = proxy.cli(&["list"]);
    assert_eq!(list.code(), Some(0), "{}", list.stderr_text());

    app.set_healthy(true);
    let out = deploy.await.unwrap();
    assert_eq!(out.code(), Some(0), "deploy failed: {}", out.stderr_text());
    assert!(wait_until_served_by(&proxy, "any.test", "/", "app", Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let mut proxy = start_proxy();
    let app = Upstream::start("app");
    proxy.deploy("svc", &["--target", &app.address()]);
    let port = proxy.http_port();
    let slow = tokio::spawn(async move { client::get(port, "any.test", "/slow?ms=1000").await });
    assert!(
        eventually(Duration::from_secs(5), || async { app.app_requests() >= 1 }).await,
        "the slow request reached the target"
    );
    let started = Instant::now();
    proxy.terminate();
    let reply = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(reply.status, 200);
    let status = proxy
        .wait_exit(Duration::from_secs(15))
        .expect("the proxy exits");
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        !proxy.socket_path().exists(),
        "the control socket is removed"
    );
    let logs = proxy.log_json();
    assert!(logs.iter().any(|v| v["msg"] == "Server stopped"));
}

/// An upgraded connection is one request that lasts as long as its tunnel: its access-log
/// line (status 101) is written when the tunnel closes, with the whole tunnel's duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_is_logged_when_its_tunnel_closes() {
    let proxy = start_proxy();
    let app = Upstream::start("app");
    proxy.deploy("svc", &["--target", &app.address()]);
    let mut ws = client::ws_connect(proxy.http_port(), "any.test", "/ws")
        .await
        .expect("websocket through the proxy");
    ws.send_text("hello").await.unwrap();
    assert_eq!(
        ws.recv_text(Duration::from_secs(5))
            .await
            .unwrap()
            .as_deref(),
        Some("hello")
    );
    // Open for a while: no line yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !request_logs(&proxy).iter().any(|v| v["path"] == "/ws"),
        "logged before the tunnel closed"
    );
    ws.close().await;
    let line = proxy
        .wait_for_log(
            |v| v["msg"] == "Request" && v["path"] == "/ws",
            Duration::from_secs(5),
        )
        .expect("the tunnel's access-log line");
    assert_eq!(line["status"], 101);
    assert_eq!(line["service"], "svc");
    assert!(
        line["duration"].as_u64().unwrap() >= 300_000_000,
        "the duration covers the tunnel: {line}"
    );
}

/// The log goes to a pipe here, as to a container runtime's log driver: the proxy widens it so
/// a reader that lags for a moment does not stall requests after the default 64 KiB.
#[tokio::test]
async fn a_stdout_pipe_is_widened_to_one_mebibyte() {
    let proxy = start_proxy();
    let pid = proxy.pid().expect("the proxy runs");
    // The same pipe, reached through the proxy's own descriptor 1.
    let stdout = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/fd/1"))
        .expect("open the proxy's stdout");
    let size = rustix::pipe::fcntl_getpipe_size(&stdout).expect("stdout is a pipe");
    let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    assert!(size >= (1 << 20).min(max), "pipe size {size}");
}
