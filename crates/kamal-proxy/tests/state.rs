//! State persistence through the real binary: SIGKILL during deploys loses no acknowledged
//! deploy, an upstream-format state file is restored, SIGTERM stops cleanly (spec §1.5, §1.6,
//! Appendix A, §14 item 5).

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

fn read_state(proxy: &Proxy) -> serde_json::Value {
    let text = std::fs::read_to_string(proxy.state_path()).expect("a state file");
    assert!(text.ends_with('\n'), "the state file ends with a newline");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("state file is not valid JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_deploys_keeps_every_acknowledged_deploy() {
    const ROUNDS: usize = 3;
    let mut proxy = start_proxy();
    let mut upstreams: Vec<Upstream> = Vec::new();
    // service name → name of the upstream its last acknowledged deploy pointed at.
    let mut acknowledged: Vec<(String, String)> = Vec::new();

    for round in 0..ROUNDS {
        // Two new services and a redeploy of the first one to a new target, all acknowledged.
        for i in 0..2 {
            let up = Upstream::start(format!("r{round}-s{i}"));
            let service = format!("svc-{round}-{i}");
            proxy
                .deploy_async(
                    &service,
                    &[
                        "--target",
                        &up.address(),
                        "--host",
                        &format!("{service}.test"),
                    ],
                )
                .await;
            acknowledged.push((service, up.name().to_owned()));
            upstreams.push(up);
        }
        let up = Upstream::start(format!("r{round}-redeploy"));
        proxy
            .deploy_async(
                "svc-0-0",
                &["--target", &up.address(), "--host", "svc-0-0.test"],
            )
            .await;
        acknowledged[0].1 = up.name().to_owned();
        upstreams.push(up);

        // One more deploy is in flight (its target never gets healthy) when the proxy dies.
        let sick = Upstream::builder(format!("r{round}-sick"))
            .healthy(false)
            .start();
        let mut pending = proxy
            .command()
            .args([
                "deploy",
                &format!("pending-{round}"),
                "--target",
                &sick.address(),
                "--host",
                "pending.test",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the pending deploy");
        assert!(
            eventually(Duration::from_secs(5), || async {
                sick.health_checks() >= 1
            })
            .await
        );
        proxy.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        let pending_status = loop {
            if let Some(status) = pending.try_wait().expect("pending deploy status") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the client hung after the server died"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            !pending_status.success(),
            "an unacknowledged deploy reported success"
        );

        let state = read_state(&proxy);
        let names: Vec<&str> = state
            .as_array()
            .expect("a JSON array")
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        for (service, _) in &acknowledged {
            assert!(
                names.contains(&service.as_str()),
                "{service} missing from the state file: {names:?}"
            );
        }

        proxy.restart();
        assert!(proxy
            .wait_for_log(
                |v| v["msg"] == "Restored saved state",
                Duration::from_secs(5)
            )
            .is_some());
        // Restored targets are healthy at once: traffic flows without any redeploy.
        for (service, upstream) in &acknowledged {
            let host = format!("{service}.test");
            assert_eq!(
                who_answers(&proxy, &host, "/").await,
                Ok(upstream.clone()),
                "round {round}: {service}"
            );
        }
        assert_eq!(who_answers(&proxy, "pending.test", "/").await, Err(404));
    }
}

#[tokio::test]
async fn upstream_format_state_file_is_restored() {
    let rw = Upstream::start("rw");
    let legacy = Upstream::start("legacy");
    let state = format!(
        concat!(
            r#"[{{"name":"rw","options":{{"hosts":["rw.test"],"path_prefixes":["/"],"tls_enabled":false,"#,
            r#""tls_certificate_path":"","tls_private_key_path":"","tls_on_demand_url":"","tls_redirect":true,"#,
            r#""canonical_host":"","acme_directory":"","acme_cache_path":"/tmp/certs","error_page_path":"","#,
            r#""strip_prefix":true,"writer_affinity_timeout":1000000000,"read_targets_accept_websockets":false,"#,
            r#""exclude_metrics_paths":null,"client_ip_header":""}},"target_options":{{"health_check_config":"#,
            r#"{{"path":"/up","port":0,"interval":1000000000,"timeout":5000000000,"host":""}},"#,
            r#""response_timeout":30000000000,"buffer_requests":false,"buffer_responses":false,"#,
            r#""max_memory_buffer_size":1048576,"max_request_body_size":0,"max_response_body_size":0,"#,
            r#""log_request_headers":null,"log_response_headers":null,"forward_headers":true,"scope_cookie_paths":false}},"#,
            r#""active_targets":["{rw}"],"active_readers":[],"rollout_targets":null,"rollout_readers":null,"#,
            r#""pause_controller":{{"state":0,"stop_message":"","fail_after":0}},"rollout_controller":null}},"#,
            r#"{{"name":"my-app","hosts":["app.example.com"],"active_target":"{legacy}","rollout_target":"","#,
            r#""options":{{"tls_enabled":false,"tls_redirect":true,"acme_cache_path":"/tmp/certs"}},"#,
            r#""target_options":{{"health_check_config":{{"path":"/up","port":0,"interval":1000000000,"timeout":5000000000}},"#,
            r#""response_timeout":3000000000,"max_memory_buffer_size":1048576,"forward_headers":true}},"#,
            r#""pause_controller":{{"state":0,"stop_message":"","fail_after":0}},"rollout_controller":null}}]"#,
            "\n"
        ),
        rw = rw.address(),
        legacy = legacy.address(),
    );
    let proxy = Proxy::builder(BIN).write_state(&state).start();

    assert!(
        proxy
            .wait_for_log(
                |v| v["msg"] == "Restored saved state",
                Duration::from_secs(5)
            )
            .is_some(),
        "logs: {:?}",
        proxy.logs()
    );
    assert_eq!(who_answers(&proxy, "rw.test", "/").await, Ok("rw".into()));
    assert_eq!(
        who_answers(&proxy, "app.example.com", "/x").await,
        Ok("legacy".into())
    );
    let rows = list_rows(&proxy);
    assert!(
        rows.iter()
            .any(|r| r.first().map(String::as_str) == Some("my-app")
                && r.contains(&"app.example.com".to_owned())),
        "{rows:?}"
    );
    // The legacy target timeout (3 s) was restored: a 4 s request times out.
    let started = Instant::now();
    assert_eq!(
        who_answers(&proxy, "app.example.com", "/slow?ms=4000").await,
        Err(504)
    );
    assert!(started.elapsed() < Duration::from_millis(3900));
}

#[test]
fn sigterm_stops_cleanly_and_restart_keeps_services() {
    let mut proxy = start_proxy();
    let up = Upstream::start("app");
    proxy.deploy("app", &["--target", &up.address(), "--host", "app.test"]);
    proxy.terminate();
    let status = proxy
        .wait_exit(Duration::from_secs(15))
        .expect("exit after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(proxy
        .wait_for_log(|v| v["msg"] == "Server stopped", Duration::from_secs(5))
        .is_some());
    assert!(
        !proxy.socket_path().exists(),
        "the socket file is removed on shutdown"
    );
    proxy.restart();
    let rows = list_rows(&proxy);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1][0], "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_paused_service_can_be_resumed() {
    let mut proxy = start_proxy();
    let up = Upstream::start("app");
    proxy
        .deploy_async("app", &["--target", &up.address(), "--host", "app.test"])
        .await;
    let out = proxy.cli_async(&["pause", "app", "--max-pause=30s"]).await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr_text());
    assert_eq!(read_state(&proxy)[0]["pause_controller"]["state"], 1);
    proxy.kill();
    proxy.restart();
    assert_eq!(list_rows(&proxy)[1][4], "paused");

    // A request waits in the pause gate, and `resume` releases it (upstream crashes here).
    let port = proxy.http_port();
    let waiting = tokio::spawn(async move { client::get(port, "app.test", "/held").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the request was not held while paused"
    );
    let out = proxy.cli_async(&["resume", "app"]).await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr_text());
    let reply = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("resume releases the held request")
        .expect("held request task")
        .expect("held request");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream(), Some("app"));
    assert_eq!(list_rows(&proxy)[1][4], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_rollout_split_and_stop_state_are_restored() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let down = Upstream::start("down");
    let element = |name: &str, active: &str, rest: &str| {
        format!(
            concat!(
                r#"{{"name":"{name}","options":{{"hosts":["{name}.test"],"path_prefixes":["/"],"tls_redirect":true,"#,
                r#""strip_prefix":true,"writer_affinity_timeout":1000000000}},"target_options":{{"health_check_config":"#,
                r#"{{"path":"/up","port":0,"interval":1000000000,"timeout":5000000000,"host":""}},"#,
                r#""response_timeout":30000000000,"max_memory_buffer_size":1048576,"forward_headers":true}},"#,
                r#""active_targets":["{active}"],"active_readers":[],{rest}}}"#
            ),
            name = name,
            active = active,
            rest = rest,
        )
    };
    // The stored split point (everything) wins over the percentage (0), as upstream reads it.
    let rollout = element(
        "ro",
        &blue.address(),
        &format!(
            r#""rollout_targets":["{}"],"rollout_readers":[],"pause_controller":{{"state":0,"stop_message":"","fail_after":0}},"rollout_controller":{{"percentage":0,"percentage_split_point":4294967295,"allowlist":null}}"#,
            green.address()
        ),
    );
    let stopped = element(
        "st",
        &down.address(),
        r#""rollout_targets":null,"rollout_readers":null,"pause_controller":{"state":2,"stop_message":"see you \u003csoon\u003e","fail_after":0},"rollout_controller":null"#,
    );
    let proxy = Proxy::builder(BIN)
        .write_state(&format!("[{rollout},{stopped}]\n"))
        .start();

    let client = Client::new();
    let with_cookie = |value: &'static str| {
        let client = client.clone();
        let port = proxy.http_port();
        async move {
            let cookie = format!("kamal-rollout={value}");
            let reply = client
                .send(
                    port,
                    http::Method::GET,
                    "ro.test",
                    "/",
                    &[("cookie", &cookie)],
                    bytes::Bytes::new(),
                )
                .await
                .expect("request through the proxy");
            reply.upstream().unwrap_or("").to_owned()
        }
    };
    assert_eq!(with_cookie("none").await, "green");
    assert_eq!(with_cookie("anything").await, "green");
    assert_eq!(who_answers(&proxy, "ro.test", "/").await, Ok("blue".into()));

    let reply = get(&proxy, "st.test", "/").await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.text().contains("see you &lt;soon&gt;"),
        "{}",
        reply.text()
    );
    assert_eq!(list_rows(&proxy)[2][4], "stopped");

    // Saved back in the same shape.
    let out = proxy.cli_async(&["rollout", "stop", "nope"]).await;
    assert_eq!(out.code(), Some(1));
    let state = read_state(&proxy);
    let ro = state
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ro")
        .unwrap();
    assert_eq!(
        ro["rollout_controller"]["percentage_split_point"],
        4294967295.0
    );
    assert_eq!(ro["rollout_targets"][0], green.address());
    let st = state
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "st")
        .unwrap();
    assert_eq!(st["pause_controller"]["state"], 2);
    assert_eq!(st["pause_controller"]["stop_message"], "see you <soon>");
}

/// Names of the services in the state file, in file order.
fn saved_names(proxy: &Proxy) -> Vec<String> {
    read_state(proxy)
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|s| s["name"].as_str().expect("a service name").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_file_is_complete_and_current_when_each_command_returns() {
    let proxy = start_proxy();
    let ups: Vec<Upstream> = (0..3).map(|i| Upstream::start(format!("u{i}"))).collect();
    let deploy_args = |i: usize| {
        vec![
            "--target".to_owned(),
            ups[i].address(),
            "--host".to_owned(),
            format!("s{i}.test"),
        ]
    };
    let deploy = |i: usize| {
        let args = deploy_args(i);
        let proxy = &proxy;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            proxy.deploy_async(&format!("s{i}"), &args).await;
        }
    };
    let cli = |args: &'static [&'static str]| {
        let proxy = &proxy;
        async move {
            let out = proxy.cli_async(args).await;
            assert_eq!(out.code(), Some(0), "{args:?}: {}", out.stderr_text());
        }
    };

    // Quick successive commands: the file shows each one as soon as it returns.
    deploy(0).await;
    assert_eq!(saved_names(&proxy), ["s0"]);
    cli(&["remove", "s0"]).await;
    assert!(saved_names(&proxy).is_empty());
    deploy(0).await;
    assert_eq!(saved_names(&proxy), ["s0"]);
    cli(&["pause", "s0"]).await;
    assert_eq!(read_state(&proxy)[0]["pause_controller"]["state"], 1);
    cli(&["resume", "s0"]).await;
    assert_eq!(read_state(&proxy)[0]["pause_controller"]["state"], 0);

    // Concurrent commands on different services: once all have returned, the file holds the
    // newest state, the same the running proxy reports.
    tokio::join!(deploy(1), deploy(2), cli(&["remove", "s0"]));
    assert_eq!(saved_names(&proxy), ["s1", "s2"]);
    tokio::join!(
        cli(&["stop", "s1", "--message", "later"]),
        cli(&["remove", "s2"]),
        deploy(0)
    );
    let state = read_state(&proxy);
    let names: Vec<&str> = state
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["s0", "s1"]);
    assert_eq!(state[1]["pause_controller"]["state"], 2);
    assert_eq!(state[1]["pause_controller"]["stop_message"], "later");
    let listed: Vec<String> = list_rows(&proxy)
        .iter()
        .skip(1)
        .map(|row| row[0].clone())
        .collect();
    assert_eq!(listed, ["s0", "s1"]);
}
