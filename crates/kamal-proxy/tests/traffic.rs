//! Traffic control through the real binary: pause, stop and resume (spec §5), rollouts (§6),
//! read targets and writer affinity (§4.9), redirects (§7.8), cookie path scoping (§7.10) and
//! the client-IP header (§7.4).

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use support::*;

const HOST: &str = "app.test";

/// A proxy with one service `app` on `app.test` served by an upstream called `app`.
async fn proxy_with_app(extra: &[&str]) -> (Proxy, Upstream) {
    let proxy = start_proxy();
    let up = Upstream::start("app");
    let target = up.address();
    let mut args = vec!["--target", target.as_str(), "--host", HOST];
    args.extend_from_slice(extra);
    proxy.deploy_async("app", &args).await;
    (proxy, up)
}

async fn cli_ok(proxy: &Proxy, args: &[&str]) {
    let out = proxy.cli_async(args).await;
    assert_eq!(
        out.code(),
        Some(0),
        "kamal-proxy {args:?}: {}",
        out.stderr_text()
    );
}

async fn send(
    proxy: &Proxy,
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    Client::new()
        .send(proxy.http_port(), method, host, path, headers, Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("{path} through the proxy failed: {e}"))
}

/// Starts `GET host path` in the background.
fn spawn_get(proxy: &Proxy, path: &str) -> tokio::task::JoinHandle<Reply> {
    let (port, path) = (proxy.http_port(), path.to_owned());
    tokio::spawn(async move {
        client::get(port, HOST, &path)
            .await
            .unwrap_or_else(|e| panic!("held GET {path} failed: {e}"))
    })
}

fn state_column(proxy: &Proxy, service: &str) -> String {
    let rows = list_rows(proxy);
    let row = rows
        .iter()
        .find(|r| r.first().map(String::as_str) == Some(service))
        .unwrap_or_else(|| panic!("{service} not listed: {rows:?}"));
    row[row.len() - 2].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_under_load_loses_nothing_and_resume_releases_held_requests() {
    let (proxy, up) = proxy_with_app(&[]).await;
    let port = proxy.http_port();

    // Steady load from four clients before, during and after the pause.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            tokio::spawn(async move {
                let client = Client::new();
                let mut statuses = Vec::new();
                for i in 0..10_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let reply = client.get(port, HOST, &format!("/load-{w}-{i}")).await;
                    sent.fetch_add(1, Ordering::SeqCst);
                    statuses.push(reply.map(|r| r.status.as_u16()).unwrap_or(0));
                }
                statuses
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || async {
            sent.load(Ordering::SeqCst) >= 40
        })
        .await
    );

    cli_ok(&proxy, &["pause", "app", "--max-pause", "30s"]).await;
    assert_eq!(state_column(&proxy, "app"), "paused");

    // Requests that arrive now are held, in order.
    let mut held = Vec::new();
    for i in 0..8 {
        held.push(spawn_get(&proxy, &format!("/held-{i}")));
        // Spaced out so they arrive in this order (nothing observable says "queued").
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let upstream_seen = up.app_requests();
    // A negative check: nothing may reach the upstream while paused.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        up.app_requests(),
        upstream_seen,
        "a request passed the pause"
    );
    assert!(
        held.iter().all(|t| !t.is_finished()),
        "a held request finished while paused"
    );

    cli_ok(&proxy, &["resume", "app"]).await;
    let resumed = Instant::now();
    for (i, task) in held.into_iter().enumerate() {
        let reply = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("resume releases held requests")
            .expect("held request task");
        assert_eq!(reply.status, 200, "held request {i}");
        assert_eq!(reply.echo().unwrap().path, format!("/held-{i}"));
    }
    assert!(resumed.elapsed() < Duration::from_secs(5));
    assert_eq!(state_column(&proxy, "app"), "running");

    // Let the load run on a little after the resume, then stop it.
    let after = sent.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || async {
            sent.load(Ordering::SeqCst) >= after + 20
        })
        .await
    );
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for worker in workers {
        let statuses = worker.await.unwrap();
        total += statuses.len();
        assert!(
            statuses.iter().all(|s| *s == 200),
            "non-200 under load: {statuses:?}"
        );
    }
    // Every request reached the upstream exactly once: the load, plus the eight held ones.
    let log = up.app_request_log();
    assert_eq!(log.len(), total + 8);
    for i in 0..8 {
        let path = format!("/held-{i}");
        assert_eq!(log.iter().filter(|r| r.path() == path).count(), 1, "{path}");
    }
    let logs = proxy.log_json();
    for msg in ["Service paused", "Service drained", "Service resumed"] {
        assert!(
            logs.iter()
                .any(|v| v["msg"] == msg && v["service"] == "app"),
            "no {msg} log"
        );
    }
}

#[tokio::test]
async fn max_pause_gives_504_and_health_checks_stay_green() {
    let (proxy, _up) = proxy_with_app(&[]).await;
    cli_ok(&proxy, &["pause", "app", "--max-pause", "1s"]).await;

    let started = Instant::now();
    let reply = send(&proxy, Method::GET, HOST, "/waits", &[]).await;
    let waited = started.elapsed();
    assert_eq!(reply.status, 504);
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let warn = proxy
        .wait_for_log(
            |v| v["msg"] == "Rejecting request due to expired pause",
            Duration::from_secs(5),
        )
        .expect("a WARN line for the expired pause");
    assert_eq!(warn["level"], "WARN");
    assert_eq!(warn["service"], "app");
    assert_eq!(warn["path"], "/waits");

    // Health checks from outside keep answering 200 with an empty body, at once.
    for (method, path) in [(Method::GET, "/up?foo"), (Method::HEAD, "/up")] {
        let started = Instant::now();
        let reply = send(&proxy, method.clone(), HOST, path, &[]).await;
        assert_eq!(reply.status, 200, "{method} {path}");
        assert!(reply.body.is_empty());
        assert!(reply.header("content-type").is_none());
        assert!(started.elapsed() < Duration::from_millis(900));
    }
    // A POST to the health path is not a health check.
    let reply = send(&proxy, Method::POST, HOST, "/up", &[]).await;
    assert_eq!(reply.status, 504);

    // --max-pause 0 rejects at once.
    cli_ok(&proxy, &["pause", "app", "--max-pause", "0s"]).await;
    let started = Instant::now();
    assert_eq!(send(&proxy, Method::GET, HOST, "/", &[]).await.status, 504);
    assert!(started.elapsed() < Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_answers_503_with_the_escaped_message_then_resume() {
    let (proxy, up) = proxy_with_app(&[]).await;
    cli_ok(&proxy, &["pause", "app"]).await;
    let held = spawn_get(&proxy, "/held");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished());

    let message = r#"Back <soon> & "later" it+1"#;
    cli_ok(
        &proxy,
        &["stop", "app", "--drain-timeout", "1s", "--message", message],
    )
    .await;
    let escaped = "Back &lt;soon&gt; &amp; &#34;later&#34; it&#43;1";
    // The held request is released with the stop answer.
    let reply = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("stop releases held requests")
        .unwrap();
    assert_eq!(reply.status, 503);
    assert!(reply.text().contains(escaped), "{}", reply.text());

    let reply = send(&proxy, Method::GET, HOST, "/", &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(reply.text().contains(escaped), "{}", reply.text());
    assert!(!reply.text().contains(message));
    assert_eq!(
        send(&proxy, Method::GET, HOST, "/up", &[]).await.status,
        200
    );
    assert_eq!(state_column(&proxy, "app"), "stopped");
    assert_eq!(up.app_requests(), 0);

    cli_ok(&proxy, &["resume", "app"]).await;
    assert_eq!(who_answers(&proxy, HOST, "/").await, Ok("app".into()));
    // Resuming a running service is a no-op success; unknown services are errors.
    cli_ok(&proxy, &["resume", "app"]).await;
    let out = proxy.cli_async(&["stop", "nope"]).await;
    assert_eq!(out.code(), Some(1));
    assert_eq!(out.stderr_text().trim(), "Error: service not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_paused_then_stop_and_resume() {
    let (mut proxy, _up) = proxy_with_app(&[]).await;
    cli_ok(&proxy, &["pause", "app", "--max-pause", "20s"]).await;
    proxy.restart();
    assert_eq!(state_column(&proxy, "app"), "paused");

    // Restored paused service: requests wait, `stop` releases them with 503 (upstream crashes).
    let held = spawn_get(&proxy, "/held");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "not held after the restart");
    cli_ok(&proxy, &["stop", "app", "--message", "maintenance"]).await;
    let reply = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("stop releases the held request")
        .unwrap();
    assert_eq!(reply.status, 503);
    assert!(reply.text().contains("maintenance"));

    // Stopped survives a restart too, message included.
    proxy.restart();
    assert_eq!(state_column(&proxy, "app"), "stopped");
    let reply = send(&proxy, Method::GET, HOST, "/", &[]).await;
    assert_eq!(reply.status, 503);
    assert!(reply.text().contains("maintenance"));
    cli_ok(&proxy, &["resume", "app"]).await;
    assert_eq!(who_answers(&proxy, HOST, "/").await, Ok("app".into()));
    assert!(proxy.pid().is_some());
}

/// The upstream that answered a request carrying `kamal-rollout=<value>`.
async fn rollout_pick(client: &Client, proxy: &Proxy, value: &str) -> String {
    let cookie = format!("kamal-rollout={value}");
    let reply = client
        .send(
            proxy.http_port(),
            Method::GET,
            HOST,
            "/",
            &[("cookie", &cookie)],
            Bytes::new(),
        )
        .await
        .expect("request through the proxy");
    assert_eq!(reply.status, 200);
    reply.upstream().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_split_allowlist_and_stop() {
    let proxy = start_proxy();
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    proxy
        .deploy_async("app", &["--target", &blue.address(), "--host", HOST])
        .await;
    let client = Client::new();

    let out = proxy
        .cli_async(&["rollout", "set", "app", "--percent", "50"])
        .await;
    assert_eq!(out.code(), Some(1));
    assert_eq!(out.stderr_text().trim(), "Error: rollout target not set");

    cli_ok(
        &proxy,
        &["rollout", "deploy", "app", "--target", &green.address()],
    )
    .await;
    // Deployed but no split yet: everything stays on the active pool.
    assert_eq!(rollout_pick(&client, &proxy, "00001").await, "blue");

    // The values upstream was verified with (spec §6.1).
    cli_ok(
        &proxy,
        &["rollout", "set", "app", "--percent", "50", "--list", "vip"],
    )
    .await;
    assert_eq!(rollout_pick(&client, &proxy, "vip").await, "green");
    assert_eq!(rollout_pick(&client, &proxy, "none").await, "blue");
    assert_eq!(rollout_pick(&client, &proxy, "00001").await, "green");
    assert_eq!(who_answers(&proxy, HOST, "/").await, Ok("blue".into()));

    // 30 % over 1,000 distinct values, each value sticky.
    cli_ok(&proxy, &["rollout", "set", "app", "--percent", "30"]).await;
    let mut green_values = Vec::new();
    for i in 0..1000 {
        let value = format!("user-{i}");
        if rollout_pick(&client, &proxy, &value).await == "green" {
            green_values.push(value);
        }
    }
    let share = green_values.len();
    assert!(
        (250..=350).contains(&share),
        "{share} of 1000 went to the rollout"
    );
    for value in green_values.iter().take(10) {
        for _ in 0..5 {
            assert_eq!(
                rollout_pick(&client, &proxy, value).await,
                "green",
                "{value}"
            );
        }
    }
    // The allowlist beats a zero percentage.
    cli_ok(
        &proxy,
        &[
            "rollout",
            "set",
            "app",
            "--percent",
            "0",
            "--list",
            "vip,staff",
        ],
    )
    .await;
    assert_eq!(rollout_pick(&client, &proxy, "staff").await, "green");
    assert_eq!(
        rollout_pick(&client, &proxy, &green_values[0]).await,
        "blue"
    );

    // The split and the rollout targets are listed and saved.
    let out = proxy.cli_async(&["list", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["rollout_targets"][0]["address"], green.address());
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(proxy.state_path()).unwrap()).unwrap();
    assert_eq!(state[0]["rollout_targets"][0], green.address());
    assert_eq!(state[0]["rollout_controller"]["percentage"], 0);
    assert_eq!(state[0]["rollout_controller"]["allowlist"][1], "staff");

    // A failed rollout deploy leaves routing as it was.
    let sick = Upstream::builder("sick").healthy(false).start();
    let out = proxy
        .cli_async(&[
            "rollout",
            "deploy",
            "app",
            "--target",
            &sick.address(),
            "--deploy-timeout",
            "500ms",
        ])
        .await;
    assert_eq!(out.code(), Some(1));
    assert_eq!(
        out.stderr_text().trim(),
        "Error: target failed to become healthy within configured timeout (500ms)"
    );
    assert_eq!(rollout_pick(&client, &proxy, "vip").await, "green");
    assert_eq!(rollout_pick(&client, &proxy, "none").await, "blue");
    assert_eq!(sick.app_requests(), 0);

    // `rollout stop` sends everything back to the active pool; the rollout pool stays.
    cli_ok(&proxy, &["rollout", "stop", "app"]).await;
    for value in ["vip", "staff", "00001", "none"] {
        assert_eq!(
            rollout_pick(&client, &proxy, value).await,
            "blue",
            "{value}"
        );
    }
    let out = proxy.cli_async(&["list", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["rollout_targets"][0]["address"], green.address());
    let logs = proxy.log_json();
    for msg in [
        "Deploying for rollout",
        "Deployed for rollout",
        "Set rollout split",
        "Stopped rollout",
    ] {
        assert!(logs.iter().any(|v| v["msg"] == msg), "no {msg} log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_survives_a_restart_and_a_redeploy() {
    let mut proxy = start_proxy();
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let blue2 = Upstream::start("blue2");
    proxy
        .deploy_async("app", &["--target", &blue.address(), "--host", HOST])
        .await;
    cli_ok(
        &proxy,
        &["rollout", "deploy", "app", "--target", &green.address()],
    )
    .await;
    cli_ok(
        &proxy,
        &["rollout", "set", "app", "--percent", "50", "--list", "vip"],
    )
    .await;
    proxy.restart();
    let client = Client::new();
    assert_eq!(rollout_pick(&client, &proxy, "vip").await, "green");
    assert_eq!(rollout_pick(&client, &proxy, "00001").await, "green");
    assert_eq!(rollout_pick(&client, &proxy, "none").await, "blue");
    // A normal deploy replaces only the active pool.
    proxy
        .deploy_async("app", &["--target", &blue2.address(), "--host", HOST])
        .await;
    assert_eq!(rollout_pick(&client, &proxy, "vip").await, "green");
    assert_eq!(rollout_pick(&client, &proxy, "none").await, "blue2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_affinity_sends_reads_to_the_writer_after_a_write() {
    let proxy = start_proxy();
    let writer = Upstream::start("writer");
    let reader = Upstream::start("reader");
    proxy
        .deploy_async(
            "app",
            &[
                "--target",
                &writer.address(),
                "--read-target",
                &reader.address(),
                "--host",
                HOST,
                "--writer-affinity-timeout",
                "1500ms",
            ],
        )
        .await;
    let client = Client::new();
    let port = proxy.http_port();
    let get = |cookie: Option<String>| {
        let client = client.clone();
        async move {
            let headers: Vec<(&str, &str)> = match &cookie {
                Some(c) => vec![("cookie", c.as_str())],
                None => vec![],
            };
            let reply = client
                .send(port, Method::GET, HOST, "/read", &headers, Bytes::new())
                .await
                .expect("GET through the proxy");
            assert!(
                reply.header("set-cookie").is_none(),
                "reads never get the cookie"
            );
            reply.upstream().unwrap_or("").to_owned()
        }
    };
    assert_eq!(get(None).await, "reader");

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let reply = client
        .send(
            port,
            Method::POST,
            HOST,
            "/write",
            &[],
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap();
    assert_eq!(reply.upstream(), Some("writer"));
    let set_cookie = reply
        .header("set-cookie")
        .expect("a writer cookie")
        .to_owned();
    let (pair, attributes) = set_cookie.split_once("; ").unwrap();
    let expires: i64 = pair.strip_prefix("kamal-writer=").unwrap().parse().unwrap();
    assert!(
        expires >= before + 1500 && expires < before + 3000,
        "{set_cookie}"
    );
    assert!(attributes.starts_with("Path=/; Expires="), "{set_cookie}");
    assert!(attributes.ends_with(" GMT; HttpOnly"), "{set_cookie}");

    // Within the window reads follow the writer, afterwards the readers again.
    let cookie = Some(pair.to_owned());
    assert_eq!(get(cookie.clone()).await, "writer");
    assert_eq!(get(cookie.clone()).await, "writer");
    assert!(
        eventually(Duration::from_secs(5), || {
            let get = &get;
            let cookie = cookie.clone();
            async move { get(cookie).await == "reader" }
        })
        .await,
        "the affinity never expired"
    );
}

#[tokio::test]
async fn tls_and_canonical_host_redirects() {
    let proxy = start_proxy();
    let up = Upstream::start("app");
    proxy
        .deploy_async(
            "tls",
            &["--target", &up.address(), "--host", "tls.test", "--tls"],
        )
        .await;
    let reply = send(&proxy, Method::GET, "tls.test:28080", "/p/a?x=1&y=2", &[]).await;
    assert_eq!(reply.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        reply.header("location"),
        Some("https://tls.test/p/a?x=1&y=2")
    );
    assert_eq!(reply.header("connection"), Some("close"));
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(reply.header("content-length"), Some("67"));
    assert_eq!(
        reply.text(),
        "<a href=\"https://tls.test/p/a?x=1&amp;y=2\">Moved Permanently</a>.\n\n"
    );
    let post = send(&proxy, Method::POST, "tls.test", "/form", &[]).await;
    assert_eq!(post.status, 301);
    assert!(post.body.is_empty());
    assert!(post.header("content-type").is_none());
    // Redirects come before the health-check bypass of a paused service.
    cli_ok(&proxy, &["pause", "tls"]).await;
    assert_eq!(
        send(&proxy, Method::GET, "tls.test", "/up", &[])
            .await
            .status,
        301
    );
    assert_eq!(up.app_requests(), 0);

    let canon = Upstream::start("canon");
    proxy
        .deploy_async(
            "canon",
            &[
                "--target",
                &canon.address(),
                "--host",
                "www.c.test",
                "--host",
                "c.test",
                "--canonical-host",
                "c.test",
            ],
        )
        .await;
    let reply = send(&proxy, Method::GET, "www.c.test:8080", "/x?y=1", &[]).await;
    assert_eq!(reply.status, 301);
    assert_eq!(reply.header("location"), Some("http://c.test/x?y=1"));
    assert_eq!(
        who_answers(&proxy, "c.test", "/x").await,
        Ok("canon".into())
    );
    let logged = proxy
        .wait_for_log(
            |v| v["msg"] == "Request" && v["status"] == 301 && v["host"] == "www.c.test:8080",
            Duration::from_secs(5),
        )
        .expect("the redirect is logged");
    assert_eq!(logged["service"], "canon");
    assert_eq!(logged["target"], "");
}

/// An upstream that sets cookies: healthy on `/up`, and every other path answers with the
/// `Set-Cookie` lines given.
struct CookieUpstream {
    addr: std::net::SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

async fn cookie_upstream(cookies: &'static [&'static str]) -> CookieUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        for _ in 0..1000 {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<_>| async move {
                    let _: &hyper::body::Incoming = req.body();
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                    if req.uri().path() != "/up" {
                        for c in cookies {
                            resp.headers_mut()
                                .append("set-cookie", http::HeaderValue::from_static(c));
                        }
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    CookieUpstream { addr, _task: task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_paths_are_scoped_to_the_prefix() {
    let up = cookie_upstream(&[
        "a=1; Path=/",
        "b=2; Path=/admin/; Priority=High; Secure",
        "c=3",
        "o=4; Domain=other.test; Path=/",
    ])
    .await;
    let proxy = start_proxy();
    let target = up.addr.to_string();
    proxy
        .deploy_async(
            "scoped",
            &[
                "--target",
                &target,
                "--host",
                HOST,
                "--path-prefix",
                "/app",
                "--scope-cookie-paths",
            ],
        )
        .await;
    proxy
        .deploy_async(
            "plain",
            &[
                "--target",
                &target,
                "--host",
                HOST,
                "--path-prefix",
                "/plain",
            ],
        )
        .await;
    let reply = send(&proxy, Method::GET, "app.test:9000", "/app/login", &[]).await;
    assert_eq!(reply.status, 200);
    let cookies: Vec<&str> = reply
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        cookies,
        [
            "a=1; Path=/app",
            "b=2; Path=/app/admin; Secure",
            "c=3; Path=/app",
            "o=4; Domain=other.test; Path=/"
        ]
    );
    // Without the option cookies pass untouched.
    let reply = send(&proxy, Method::GET, HOST, "/plain/login", &[]).await;
    let first = reply.headers.get("set-cookie").unwrap();
    assert_eq!(first, "a=1; Path=/");
}

#[tokio::test]
async fn client_ip_header_rewrites_forwarded_for_and_the_log() {
    let (proxy, up) = proxy_with_app(&["--client-ip-header", "X-Real-IP"]).await;
    let reply = send(
        &proxy,
        Method::GET,
        HOST,
        "/ip",
        &[("x-real-ip", "203.0.113.9")],
    )
    .await;
    let echo = reply.echo().unwrap();
    // forward-headers is on by default without TLS: the rewritten value is trusted.
    assert_eq!(
        echo.header("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(echo.header("x-real-ip").as_deref(), Some("203.0.113.9"));
    let line = proxy
        .wait_for_log(
            |v| v["msg"] == "Request" && v["path"] == "/ip",
            Duration::from_secs(5),
        )
        .expect("access log line");
    assert_eq!(line["remote_addr"], "203.0.113.9");
    assert_eq!(line["client_addr"], "127.0.0.1");

    // With forward-headers off the upstream sees only the peer, the log still the header.
    let target = up.address();
    proxy
        .deploy_async(
            "app",
            &[
                "--target",
                &target,
                "--host",
                HOST,
                "--client-ip-header",
                "X-Real-IP",
                "--forward-headers=false",
            ],
        )
        .await;
    let reply = send(
        &proxy,
        Method::GET,
        HOST,
        "/ip2",
        &[("x-real-ip", "198.51.100.7")],
    )
    .await;
    assert_eq!(
        reply.echo().unwrap().header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    let line = proxy
        .wait_for_log(
            |v| v["msg"] == "Request" && v["path"] == "/ip2",
            Duration::from_secs(5),
        )
        .expect("access log line");
    assert_eq!(line["remote_addr"], "198.51.100.7");
}

/// Plain HTTP/1.1 connections serve bodiless `GET`/`HEAD` outside hyper and hand everything
/// else to it mid-connection: pipelined requests of both kinds on one connection are all
/// answered, in order, and the connection closes after the one that asked.
#[tokio::test]
async fn pipelined_requests_of_every_kind_share_one_connection() {
    let (proxy, up) = proxy_with_app(&[]).await;
    let request = format!(
        "GET /1 HTTP/1.1\r\nHost: {HOST}\r\n\r\n\
         HEAD /2 HTTP/1.1\r\nHost: {HOST}\r\n\r\n\
         POST /3 HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\r\nhello\
         GET /4 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    );
    let started = Instant::now();
    let reply = client::raw_exchange(
        proxy.http_port(),
        request.as_bytes(),
        Duration::from_secs(5),
        Duration::from_secs(10),
    )
    .await
    .expect("answers");
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(reply.matches("HTTP/1.1 200 OK\r\n").count(), 4, "{reply}");
    // The last answer says the connection closes, and it does (no idle timeout waited for).
    assert!(reply.contains("connection: close\r\n"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(up.app_requests(), 4);
}
