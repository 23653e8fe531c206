//! Deploys through the real binary: zero downtime under load, draining of slow requests,
//! drain timeouts, unhealthy targets, remove, and the list round trip (spec §2.3–§2.8, §4).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const HOST: &str = "app.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_request_still_uploading_during_a_deploy_goes_to_the_new_target() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = start_proxy();
    let old = Upstream::start("old");
    let options = ["--host", HOST, "--buffer-requests"];
    proxy
        .deploy_async(
            "app",
            &[&["--target", &old.address()][..], &options].concat(),
        )
        .await;
    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", proxy.http_port()))
        .await
        .unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    // The proxy is buffering the body when the deploy replaces (and drains) the target.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let new = Upstream::start("new");
    proxy
        .deploy_async(
            "app",
            &[&["--target", &new.address()][..], &options].concat(),
        )
        .await;
    client.write_all(b"world").await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        client.read_to_string(&mut response),
    )
    .await
    .expect("an answer")
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(
        (old.app_requests(), new.app_requests()),
        (0, 1),
        "the request goes to the target deployed when its body was complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_downtime_under_load_across_redeploys() {
    const CLIENTS: usize = 8;
    const DEPLOYS: usize = 10;
    const MAX_DEPLOYS: usize = 100;
    const MIN_CHURN: Duration = Duration::from_secs(3);
    const LOAD_CAP: Duration = Duration::from_secs(20);
    const MAX_REQUESTS_PER_CLIENT: u64 = 200_000;

    let proxy = Arc::new(start_proxy());
    let mut current = Upstream::start("v0");
    proxy
        .deploy_async("app", &["--target", &current.address(), "--host", HOST])
        .await;
    let port = proxy.http_port();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..CLIENTS {
        let (stop, ok) = (stop.clone(), ok.clone());
        workers.push(tokio::spawn(async move {
            let client = Client::new();
            let started = Instant::now();
            let mut failures = Vec::new();
            for _ in 0..MAX_REQUESTS_PER_CLIENT {
                if stop.load(Ordering::SeqCst) || started.elapsed() > LOAD_CAP {
                    break;
                }
                match client.get(port, HOST, "/load").await {
                    Ok(reply) if reply.status == 200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(reply) => failures.push(format!("status {}", reply.status)),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }));
    }

    // At least DEPLOYS redeploys; more (up to MAX_DEPLOYS) while they are quicker than
    // MIN_CHURN, so the swaps overlap a meaningful amount of traffic.
    let deploys_started = Instant::now();
    let mut deploys = 0;
    while deploys < DEPLOYS || (deploys < MAX_DEPLOYS && deploys_started.elapsed() < MIN_CHURN) {
        deploys += 1;
        let next = Upstream::start(format!("v{deploys}"));
        proxy
            .deploy_async("app", &["--target", &next.address(), "--host", HOST])
            .await;
        // The old target is drained once deploy returns: stop it for real right away.
        std::mem::replace(&mut current, next).shutdown();
    }
    let deploy_time = deploys_started.elapsed();
    // Keep the load going a little after the last deploy, so traffic provably ends on it.
    let ok_before = ok.load(Ordering::SeqCst);
    let more = eventually(Duration::from_secs(5), || async {
        ok.load(Ordering::SeqCst) >= ok_before + 100
    })
    .await;
    stop.store(true, Ordering::SeqCst);

    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.expect("load worker"));
    }
    let total = ok.load(Ordering::SeqCst);
    eprintln!(
        "{total} requests ok, {deploys} deploys in {deploy_time:?}, last target served {}",
        current.app_requests()
    );
    assert!(
        failures.is_empty(),
        "{} failed requests out of {}: {:?}",
        failures.len(),
        total + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    assert!(more, "traffic stalled after the last deploy");
    assert!(
        total > 100,
        "too little load to prove anything: {total} requests in {deploy_time:?}"
    );
    assert!(current.app_requests() > 0, "the last target got no traffic");
    assert_eq!(
        who_answers(&proxy, HOST, "/").await,
        Ok(format!("v{deploys}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_on_the_old_target_completes_before_deploy_returns() {
    let proxy = Arc::new(start_proxy());
    let old = Upstream::start("old");
    let new = Upstream::start("new");
    proxy
        .deploy_async("app", &["--target", &old.address(), "--host", HOST])
        .await;

    let port = proxy.http_port();
    let slow = tokio::spawn(async move {
        let reply = client::get(port, HOST, "/slow?ms=2000").await;
        (reply, Instant::now())
    });
    assert!(eventually(Duration::from_secs(5), || async { old.app_requests() >= 1 }).await);

    let started = Instant::now();
    proxy
        .deploy_async("app", &["--target", &new.address(), "--host", HOST])
        .await;
    let deploy_done = Instant::now();
    let (reply, slow_done) = slow.await.expect("slow request task");
    let reply = reply.expect("the slow request must not fail");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream(), Some("old"));
    assert!(
        slow_done <= deploy_done + Duration::from_millis(250),
        "deploy returned {:?} before the slow request finished",
        slow_done.saturating_duration_since(deploy_done)
    );
    assert!(
        deploy_done - started >= Duration::from_millis(1500),
        "deploy did not wait for draining"
    );
    assert_eq!(who_answers(&proxy, HOST, "/").await, Ok("new".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_drain_timeout_cuts_the_slow_request() {
    let proxy = Arc::new(start_proxy());
    let old = Upstream::start("old");
    let new = Upstream::start("new");
    proxy
        .deploy_async("app", &["--target", &old.address(), "--host", HOST])
        .await;

    let port = proxy.http_port();
    let slow = tokio::spawn(async move { client::get(port, HOST, "/slow?ms=8000").await });
    assert!(eventually(Duration::from_secs(5), || async { old.app_requests() >= 1 }).await);

    let started = Instant::now();
    proxy
        .deploy_async(
            "app",
            &[
                "--target",
                &new.address(),
                "--host",
                HOST,
                "--drain-timeout=1s",
            ],
        )
        .await;
    let deploy_time = started.elapsed();
    assert!(
        deploy_time < Duration::from_secs(4),
        "deploy took {deploy_time:?} with --drain-timeout=1s"
    );
    assert!(
        deploy_time >= Duration::from_millis(900),
        "deploy did not drain at all: {deploy_time:?}"
    );

    let reply = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .expect("the cut request must end soon after the drain timeout")
        .expect("slow request task");
    match reply {
        Ok(reply) => assert_eq!(reply.status, 504, "cut request: {}", reply.text()),
        Err(_reset) => {}
    }
    assert_eq!(who_answers(&proxy, HOST, "/").await, Ok("new".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_healthy_target_fails_and_old_target_keeps_serving() {
    let proxy = start_proxy();
    let old = Upstream::start("old");
    let sick = Upstream::builder("sick").healthy(false).start();
    proxy
        .deploy_async("app", &["--target", &old.address(), "--host", HOST])
        .await;

    let started = Instant::now();
    let out = proxy
        .cli_async(&[
            "deploy",
            "app",
            "--target",
            &sick.address(),
            "--host",
            HOST,
            "--deploy-timeout=1500ms",
            "--health-check-interval=100ms",
        ])
        .await;
    let took = started.elapsed();
    assert_eq!(out.code(), Some(1));
    assert_eq!(
        out.stderr_text(),
        "Error: target failed to become healthy within configured timeout (1.5s)\n"
    );
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        sick.health_checks() >= 2,
        "the new target was never checked"
    );
    assert_eq!(sick.app_requests(), 0);
    assert_eq!(who_answers(&proxy, HOST, "/").await, Ok("old".into()));

    // The failed pool's health checks stop: checking for an absence needs a wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = sick.health_checks();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        sick.health_checks(),
        settled,
        "health checks continued after the failed deploy"
    );

    let list = list_rows(&proxy);
    assert!(
        list.iter()
            .any(|row| row.first().map(String::as_str) == Some("app")
                && row.contains(&old.address())),
        "{list:?}"
    );
}

#[tokio::test]
async fn remove_makes_the_service_404() {
    let proxy = start_proxy();
    let up = Upstream::start("app");
    proxy
        .deploy_async("app", &["--target", &up.address(), "--host", HOST])
        .await;
    assert_eq!(who_answers(&proxy, HOST, "/").await, Ok("app".into()));

    let out = proxy.cli_async(&["remove", "app"]).await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr_text());
    assert_eq!(who_answers(&proxy, HOST, "/").await, Err(404));

    let out = proxy.cli_async(&["rm", "app"]).await;
    assert_eq!(out.code(), Some(1));
    assert_eq!(out.stderr_text(), "Error: service not found\n");
}

#[test]
fn run_deploy_list_json_remove_round_trip() {
    let proxy = start_proxy();
    let web = Upstream::start("web");
    let api = Upstream::start("api");
    proxy.deploy(
        "web",
        &["--target", &web.address(), "--host", "web.test,www.test"],
    );
    proxy.deploy(
        "api",
        &["--target", &api.address(), "--path-prefix", "/api"],
    );

    let rows = list_rows(&proxy);
    assert_eq!(
        rows[0],
        ["Service", "Host", "Path", "Target", "State", "TLS"]
    );
    assert_eq!(
        rows[1],
        ["api", "*", "/api", &api.address(), "running", "no"]
    );
    assert_eq!(
        rows[2],
        [
            "web",
            "web.test,www.test",
            "/",
            &web.address(),
            "running",
            "no"
        ]
    );
    assert_eq!(rows.len(), 3);
    // Styles are emitted even though stdout is a pipe.
    let raw = proxy.cli(&["ls"]).stdout_text();
    assert!(raw.starts_with("\u{1b}[3;94mService\u{1b}[0m"), "{raw:?}");
    assert!(raw.contains("\u{1b}[1;34mapi\u{1b}[0m"), "{raw:?}");

    let out = proxy.cli(&["list", "--json"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr_text());
    let json: serde_json::Value =
        serde_json::from_str(&out.stdout_text()).expect("list --json is JSON");
    let services = json
        .as_array()
        .or_else(|| json["services"].as_array())
        .expect("a list of services")
        .clone();
    assert_eq!(services.len(), 2);
    let web_json = services
        .iter()
        .find(|s| s["name"] == "web")
        .expect("web in list --json");
    assert_eq!(
        web_json["hosts"],
        serde_json::json!(["web.test", "www.test"])
    );
    assert_eq!(web_json["paths"], serde_json::json!(["/"]));
    assert_eq!(web_json["state"], "running");
    assert_eq!(web_json["tls"], false);
    assert_eq!(web_json["targets"][0]["address"], web.address());
    assert_eq!(web_json["targets"][0]["state"], "healthy");

    assert_eq!(proxy.cli(&["remove", "web"]).code(), Some(0));
    assert_eq!(proxy.cli(&["remove", "api"]).code(), Some(0));
    let rows = list_rows(&proxy);
    assert_eq!(rows.len(), 1, "{rows:?}");
}

#[tokio::test]
async fn two_targets_are_used_round_robin_starting_with_the_second() {
    let proxy = start_proxy();
    let first = Upstream::start("first");
    let second = Upstream::start("second");
    let targets = format!("{},{}", first.address(), second.address());
    proxy
        .deploy_async("app", &["--target", &targets, "--host", HOST])
        .await;
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(who_answers(&proxy, HOST, "/").await.expect("a 200"));
    }
    assert_eq!(order, ["second", "first", "second", "first"]);
}

#[tokio::test]
async fn forced_deploy_to_a_closed_port_gives_503() {
    let proxy = start_proxy();
    // Bind and drop a listener to get a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let started = Instant::now();
    proxy
        .deploy_async(
            "app",
            &["--target", &closed.to_string(), "--host", HOST, "--force"],
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "--force waited for health checks"
    );
    let reply = get(&proxy, HOST, "/").await;
    assert_eq!(reply.status, 503);
    assert!(
        reply
            .text()
            .contains("503 — Service Temporarily Unavailable"),
        "{}",
        reply.text()
    );
}
