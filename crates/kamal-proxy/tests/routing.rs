//! Routing through the real binary: hosts, wildcards, default service, path prefixes with and
//! without stripping, the 404 page, case-insensitive hosts and host conflicts (spec §3, §14).

mod support;

use support::*;

#[tokio::test]
async fn two_services_are_routed_by_host() {
    let proxy = start_proxy();
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    proxy
        .deploy_async("svc-a", &["--target", &a.address(), "--host", "a.test"])
        .await;
    proxy
        .deploy_async(
            "svc-b",
            &[&format!("--target={}", b.address()), "--host=b.test"],
        )
        .await;

    assert_eq!(who_answers(&proxy, "a.test", "/").await, Ok("a".into()));
    assert_eq!(who_answers(&proxy, "b.test", "/x").await, Ok("b".into()));
    // A port in Host is ignored for routing, and Host is forwarded exactly.
    let reply = get(&proxy, "a.test:8080", "/").await;
    assert_eq!(reply.upstream(), Some("a"));
    assert_eq!(
        reply.echo().unwrap().header("host").as_deref(),
        Some("a.test:8080")
    );
    // No default service: an unknown host is a 404.
    assert_eq!(who_answers(&proxy, "c.test", "/").await, Err(404));
    assert_eq!(a.app_requests(), 2);
    assert_eq!(b.app_requests(), 1);
}

#[tokio::test]
async fn wildcard_replaces_one_label_and_default_catches_the_rest() {
    let proxy = start_proxy();
    let exact = Upstream::start("exact");
    let wild = Upstream::start("wild");
    let default = Upstream::start("default");
    proxy
        .deploy_async(
            "wild",
            &["--target", &wild.address(), "--host", "*.wild.test"],
        )
        .await;
    proxy
        .deploy_async(
            "exact",
            &["--target", &exact.address(), "--host", "www.wild.test"],
        )
        .await;
    proxy
        .deploy_async("default", &["--target", &default.address()])
        .await;

    assert_eq!(
        who_answers(&proxy, "a.wild.test", "/").await,
        Ok("wild".into())
    );
    assert_eq!(
        who_answers(&proxy, "www.wild.test", "/").await,
        Ok("exact".into())
    );
    assert_eq!(
        who_answers(&proxy, "a.b.wild.test", "/").await,
        Ok("default".into())
    );
    assert_eq!(
        who_answers(&proxy, "wild.test", "/").await,
        Ok("default".into())
    );
    assert_eq!(
        who_answers(&proxy, "other.test", "/").await,
        Ok("default".into())
    );
    assert_eq!(
        who_answers(&proxy, "127.0.0.1", "/").await,
        Ok("default".into())
    );
}

#[tokio::test]
async fn path_prefixes_with_and_without_strip() {
    let proxy = start_proxy();
    let strip = Upstream::start("strip");
    let keep = Upstream::start("keep");
    let special = Upstream::start("special");
    let default = Upstream::start("default");
    proxy
        .deploy_async(
            "strip",
            &[
                "--target",
                &strip.address(),
                "--host",
                "app.test",
                "--path-prefix",
                "/api",
            ],
        )
        .await;
    proxy
        .deploy_async(
            "special",
            &[
                "--target",
                &special.address(),
                "--host",
                "app.test",
                "--path-prefix",
                "api/special/",
            ],
        )
        .await;
    proxy
        .deploy_async(
            "keep",
            &[
                "--target",
                &keep.address(),
                "--host",
                "raw.test",
                "--path-prefix",
                "/api",
                "--strip-path-prefix=false",
            ],
        )
        .await;
    proxy
        .deploy_async("default", &["--target", &default.address()])
        .await;

    // Spec §3.5 table: client request → (strip=true, strip=false).
    let table = [
        ("/api", "/", "/api"),
        ("/api/", "/", "/api/"),
        ("/api?x=1", "/?x=1", "/api?x=1"),
        ("/api/users/1", "/users/1", "/api/users/1"),
        ("/api/users/", "/users/", "/api/users/"),
        ("/api//x", "//x", "/api//x"),
        ("/api/a%2Fb/c%41", "/a/b/cA", "/api/a%2Fb/c%41"),
        (
            "/api/q?x=1;y=2&z=%zz",
            "/q?x=1;y=2&z=%zz",
            "/api/q?x=1;y=2&z=%zz",
        ),
    ];
    for (request, stripped, kept) in table {
        assert_eq!(
            upstream_sees(&proxy, "app.test", request).await,
            stripped,
            "strip {request}"
        );
        assert_eq!(
            upstream_sees(&proxy, "raw.test", request).await,
            kept,
            "keep {request}"
        );
    }

    // Longest prefix wins.
    assert_eq!(
        who_answers(&proxy, "app.test", "/api/special/x").await,
        Ok("special".into())
    );
    assert_eq!(
        upstream_sees(&proxy, "app.test", "/api/special/x").await,
        "/x"
    );
    assert_eq!(
        who_answers(&proxy, "app.test", "/api/specialx").await,
        Ok("strip".into())
    );
    // A host whose bindings do not match the path is a 404: no fall-back to the default service.
    assert_eq!(who_answers(&proxy, "app.test", "/apix").await, Err(404));
    assert_eq!(who_answers(&proxy, "app.test", "/").await, Err(404));
    assert_eq!(
        who_answers(&proxy, "elsewhere.test", "/apix").await,
        Ok("default".into())
    );
}

#[tokio::test]
async fn nothing_matches_gives_the_404_page() {
    let proxy = start_proxy();
    let reply = get(&proxy, "nobody.test", "/missing").await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let body = reply.text();
    assert!(body.contains("<title>404 — Not Found</title>"), "{body}");
    assert!(
        body.contains("The page you were looking for doesn’t exist."),
        "{body}"
    );
    let line = proxy.wait_for_log(
        |v| v["msg"] == "Request" && v["path"] == "/missing",
        std::time::Duration::from_secs(5),
    );
    let line = line.expect("an access log line for the 404");
    assert_eq!(line["status"], 404);
    assert_eq!(line["service"], "");
}

#[tokio::test]
async fn host_matching_is_case_insensitive_and_ignores_a_trailing_dot() {
    let proxy = start_proxy();
    let up = Upstream::start("app");
    proxy
        .deploy_async(
            "app",
            &["--target", &up.address(), "--host", "example.test"],
        )
        .await;
    for host in [
        "example.test",
        "EXAMPLE.test",
        "Example.Test:80",
        "example.test.",
    ] {
        assert_eq!(
            who_answers(&proxy, host, "/").await,
            Ok("app".into()),
            "{host}"
        );
    }
    // Hosts given in upper case on the command line match too.
    let up2 = Upstream::start("upper");
    proxy
        .deploy_async(
            "upper",
            &["--target", &up2.address(), "--host", "UPPER.test"],
        )
        .await;
    assert_eq!(
        who_answers(&proxy, "upper.test", "/").await,
        Ok("upper".into())
    );
}

#[tokio::test]
async fn identical_host_and_prefix_conflict() {
    let proxy = start_proxy();
    let one = Upstream::start("one");
    let two = Upstream::start("two");
    proxy
        .deploy_async("one", &["--target", &one.address(), "--host", "c.test"])
        .await;

    let out = proxy
        .cli_async(&[
            "deploy",
            "two",
            "--target",
            &two.address(),
            "--host",
            "c.test",
        ])
        .await;
    assert_eq!(out.code(), Some(1));
    assert_eq!(
        out.stderr_text(),
        "Error: host settings conflict with another service\n"
    );
    assert_eq!(who_answers(&proxy, "c.test", "/").await, Ok("one".into()));
    let log = proxy.wait_for_log(
        |v| v["msg"] == "Host settings conflict with another service",
        std::time::Duration::from_secs(5),
    );
    assert_eq!(log.expect("conflict log line")["service"], "one");

    // Same host at another prefix is fine; two default services at `/` conflict.
    proxy
        .deploy_async(
            "two",
            &[
                "--target",
                &two.address(),
                "--host",
                "c.test",
                "--path-prefix",
                "/two",
            ],
        )
        .await;
    assert_eq!(
        who_answers(&proxy, "c.test", "/two/x").await,
        Ok("two".into())
    );
    proxy
        .deploy_async("d1", &["--target", &one.address()])
        .await;
    let out = proxy
        .cli_async(&["deploy", "d2", "--target", &two.address()])
        .await;
    assert_eq!(out.code(), Some(1));
    assert_eq!(
        out.stderr_text(),
        "Error: host settings conflict with another service\n"
    );
    // Re-deploying a service with different hosts frees its old bindings.
    proxy
        .deploy_async("one", &["--target", &one.address(), "--host", "moved.test"])
        .await;
    proxy
        .deploy_async("three", &["--target", &two.address(), "--host", "c.test"])
        .await;
    assert_eq!(who_answers(&proxy, "c.test", "/").await, Ok("two".into()));
    assert_eq!(
        who_answers(&proxy, "moved.test", "/").await,
        Ok("one".into())
    );
}

#[tokio::test]
async fn http10_request_without_host_reaches_the_default_service() {
    let proxy = start_proxy();
    let up = Upstream::start("default");
    let named = Upstream::start("named");
    proxy
        .deploy_async("default", &["--target", &up.address()])
        .await;
    proxy
        .deploy_async(
            "named",
            &["--target", &named.address(), "--host", "named.test"],
        )
        .await;
    let reply = client::raw_exchange(
        proxy.http_port(),
        b"GET /old HTTP/1.0\r\n\r\n",
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(5),
    )
    .await
    .expect("an answer");
    assert_eq!(
        client::status_of(&reply),
        Some(200),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(up.app_requests(), 1);
    assert_eq!(named.app_requests(), 0);
}
