//! Prometheus metrics through the real binary (spec §12): after known traffic, the exposition
//! parses with a Prometheus text-format parser and its counters and histogram counts match the
//! requests sent, per service, method and status; excluded paths are logged but not counted;
//! operator metrics (target health, deploys, certificate expiry) are present.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use prometheus_parse::{Sample, Scrape, Value};
use support::*;
use test_support::tls::TestCa;

/// A port nobody listens on right now (bound on 127.0.0.1:0, then released) for
/// `--metrics-port`, whose 0 means "disabled".
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn start_with_metrics() -> (Proxy, u16) {
    let port = free_port();
    let proxy = Proxy::builder(BIN)
        .run_arg("--metrics-port")
        .run_arg(port.to_string())
        .start();
    (proxy, port)
}

async fn scrape(port: u16, path: &str) -> (Reply, Scrape) {
    let reply = client::get(port, "127.0.0.1", path)
        .await
        .unwrap_or_else(|e| panic!("scrape {path}: {e}"));
    assert_eq!(reply.status, 200);
    let text = reply.text();
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("text format");
    (reply, parsed)
}

fn labels_match(sample: &Sample, labels: &[(&str, &str)]) -> bool {
    labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v))
}

/// The value of the one sample of `metric` with `labels` (counter, gauge or untyped).
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels_match(s, labels))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{metric} is not a scalar: {other:?}"),
        })
}

/// The `+Inf` bucket of a histogram series.
fn histogram_total(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels_match(s, labels))
        .map(|s| match &s.value {
            Value::Histogram(buckets) => {
                assert_eq!(buckets.len(), 12, "11 buckets and +Inf: {buckets:?}");
                buckets
                    .iter()
                    .find(|b| b.less_than.is_infinite())
                    .expect("+Inf bucket")
                    .count
            }
            other => panic!("{metric} is not a histogram: {other:?}"),
        })
}

/// Request counts by (service, method, status) as the counter shows them.
fn request_counts(scrape: &Scrape) -> BTreeMap<(String, String, String), f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "kamal_proxy_http_requests_total")
        .map(|s| {
            let l = |k: &str| s.labels.get(k).unwrap_or("").to_owned();
            let v = match s.value {
                Value::Counter(v) => v,
                _ => panic!("requests_total must be a counter"),
            };
            ((l("service"), l("method"), l("status")), v)
        })
        .collect()
}

fn request_lines(proxy: &Proxy) -> usize {
    proxy
        .log_json()
        .iter()
        .filter(|l| l["msg"] == "Request")
        .count()
}

#[tokio::test]
async fn requests_are_counted_per_service_method_and_status() {
    let (proxy, metrics_port) = start_with_metrics();
    let enabled = proxy
        .wait_for_log(|l| l["msg"] == "Metrics enabled", Duration::from_secs(5))
        .expect("Metrics enabled is logged");
    assert_eq!(enabled["level"], "INFO");
    assert_eq!(enabled["address"], format!(":{metrics_port}"));

    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let out = proxy.deploy(
        "a",
        &[
            "--target",
            &a.address(),
            "--host",
            "a.test",
            "--exclude-metrics-path",
            "/skip",
        ],
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr_text());
    let out = proxy.deploy(
        "b",
        &[
            "--target",
            &b.address(),
            "--host",
            "b.test",
            "--path-prefix",
            "/api",
            "--exclude-metrics-path",
            "/x",
        ],
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr_text());

    let client = Client::new();
    let port = proxy.http_port();
    for _ in 0..3 {
        assert_eq!(get(&proxy, "a.test", "/").await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(&proxy, "a.test", "/status?code=418").await.status, 418);
    }
    let posted = client
        .send(
            port,
            Method::POST,
            "a.test",
            "/form",
            &[],
            Bytes::from_static(b"x=1"),
        )
        .await
        .unwrap();
    assert_eq!(posted.status, 200);
    let purge = Method::from_bytes(b"PURGE").unwrap();
    let purged = client
        .send(port, purge, "a.test", "/", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(purged.status, 200);
    // Excluded: exact routed path only; `/skip/more` is counted.
    for _ in 0..2 {
        assert_eq!(get(&proxy, "a.test", "/skip").await.status, 200);
    }
    assert_eq!(get(&proxy, "a.test", "/skip/more").await.status, 200);
    // With the prefix stripped, `/api/x` reaches the target as `/x` and is excluded.
    assert_eq!(get(&proxy, "b.test", "/api/x").await.status, 200);
    assert_eq!(get(&proxy, "b.test", "/api/y").await.status, 200);
    for _ in 0..2 {
        assert_eq!(get(&proxy, "nobody.test", "/").await.status, 404);
    }
    let sent = 3 + 2 + 1 + 1 + 2 + 1 + 1 + 1 + 2;

    // Every request is logged, the excluded ones too.
    assert!(
        eventually(Duration::from_secs(5), || async {
            request_lines(&proxy) >= sent
        })
        .await,
        "access log lines: {}",
        request_lines(&proxy)
    );
    let logged_paths: Vec<String> = proxy
        .log_json()
        .iter()
        .filter(|l| l["msg"] == "Request")
        .map(|l| l["path"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(logged_paths.iter().filter(|p| *p == "/skip").count(), 2);
    assert_eq!(logged_paths.iter().filter(|p| *p == "/api/x").count(), 1);

    let s = |x: &str| x.to_owned();
    let expected: BTreeMap<(String, String, String), f64> = [
        ((s(""), s("GET"), s("404")), 2.0),
        ((s("a"), s("GET"), s("200")), 4.0),
        ((s("a"), s("GET"), s("418")), 2.0),
        ((s("a"), s("OTHER"), s("200")), 1.0),
        ((s("a"), s("POST"), s("200")), 1.0),
        ((s("b"), s("GET"), s("200")), 1.0),
    ]
    .into_iter()
    .collect();
    // Counting happens right after the log line; poll briefly rather than race it.
    let last = std::sync::Mutex::new(BTreeMap::new());
    let matched = eventually(Duration::from_secs(5), || {
        let (last, expected) = (&last, &expected);
        async move {
            let (_, parsed) = scrape(metrics_port, "/metrics").await;
            let counts = request_counts(&parsed);
            let same = counts == *expected;
            *last.lock().unwrap() = counts;
            same
        }
    })
    .await;
    assert!(matched, "counters: {last:?}");

    let (reply, parsed) = scrape(metrics_port, "/metrics").await;
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    // Histogram counts equal the counters, series by series.
    for ((service, method, status), n) in &expected {
        let labels = [
            ("service", service.as_str()),
            ("method", method.as_str()),
            ("status", status.as_str()),
        ];
        let hist = "kamal_proxy_http_request_duration_seconds";
        assert_eq!(
            histogram_total(&parsed, hist, &labels),
            Some(*n),
            "{labels:?}"
        );
        assert_eq!(
            value(&parsed, &format!("{hist}_count"), &labels),
            Some(*n),
            "{labels:?}"
        );
        assert!(value(&parsed, &format!("{hist}_sum"), &labels).is_some_and(|v| v >= 0.0));
    }
    // In-flight gauges exist for the services that had requests, back at zero.
    for service in ["a", "b"] {
        assert_eq!(
            value(
                &parsed,
                "kamal_proxy_http_in_flight_requests",
                &[("service", service)]
            ),
            Some(0.0)
        );
    }
    assert!(
        value(&parsed, "process_start_time_seconds", &[]).is_some_and(|v| v > 1.0e9),
        "process metrics are exported"
    );
    assert!(value(&parsed, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));
    assert!(parsed.docs.contains_key("kamal_proxy_http_requests_total"));

    // Every path of the metrics port answers with the exposition.
    let (_, other) = scrape(metrics_port, "/anything").await;
    assert_eq!(request_counts(&other), expected);
    assert!(value(
        &other,
        "promhttp_metric_handler_requests_total",
        &[("code", "200")]
    )
    .is_some_and(|v| v >= 2.0));
}

#[tokio::test]
async fn in_flight_gauge_counts_streaming_requests() {
    let (proxy, metrics_port) = start_with_metrics();
    let a = Upstream::start("a");
    let out = proxy.deploy("a", &["--target", &a.address(), "--host", "a.test"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr_text());

    let port = proxy.http_port();
    let slow = tokio::spawn(async move { client::get(port, "a.test", "/slow?ms=1500").await });
    let gauge = |n: f64| async move {
        let (_, parsed) = scrape(metrics_port, "/").await;
        value(
            &parsed,
            "kamal_proxy_http_in_flight_requests",
            &[("service", "a")],
        ) == Some(n)
    };
    assert!(eventually(Duration::from_secs(5), || gauge(1.0)).await);
    assert_eq!(slow.await.unwrap().unwrap().status, 200);
    assert!(eventually(Duration::from_secs(5), || gauge(0.0)).await);
}

#[tokio::test]
async fn operator_metrics_show_targets_deploys_and_certificates() {
    let (proxy, metrics_port) = start_with_metrics();
    let a = Upstream::start("a");
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (crt, key) = ca.issue(&["a.test"]).write(dir.path(), "a");
    let out = proxy.deploy_tls("a", &a.address(), "a.test", &crt, &key);
    assert_eq!(out.code(), Some(0), "{}", out.stderr_text());
    let sick = Upstream::builder("sick").healthy(false).start();
    let out = proxy.cli(&[
        "deploy",
        "b",
        "--target",
        &sick.address(),
        "--host",
        "b.test",
        "--deploy-timeout",
        "1s",
    ]);
    assert_eq!(out.code(), Some(1));

    let (_, parsed) = scrape(metrics_port, "/metrics").await;
    let target = a.address();
    assert_eq!(
        value(
            &parsed,
            "kamal_proxy_target_state",
            &[
                ("service", "a"),
                ("target", target.as_str()),
                ("pool", "active"),
                ("role", "writer"),
                ("state", "healthy"),
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &parsed,
            "kamal_proxy_target_state",
            &[("service", "a"), ("state", "unhealthy")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &parsed,
            "kamal_proxy_deploys_total",
            &[("service", "a"), ("outcome", "succeeded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &parsed,
            "kamal_proxy_deploys_total",
            &[("service", "b"), ("outcome", "unhealthy")]
        ),
        Some(1.0)
    );
    assert_eq!(
        histogram_total_any(
            &parsed,
            "kamal_proxy_deploy_duration_seconds",
            &[("service", "b"), ("outcome", "unhealthy")]
        ),
        Some(1.0)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expiry = value(
        &parsed,
        "kamal_proxy_certificate_expiry_timestamp_seconds",
        &[("service", "a"), ("host", "a.test")],
    )
    .expect("custom certificate expiry");
    assert!(expiry > now, "expiry {expiry} is in the future");

    // Removing the service drops its certificate and targets, not its request series.
    let out = proxy.cli(&["remove", "a"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr_text());
    let (_, parsed) = scrape(metrics_port, "/metrics").await;
    assert!(value(
        &parsed,
        "kamal_proxy_certificate_expiry_timestamp_seconds",
        &[("service", "a")]
    )
    .is_none());
    assert!(value(&parsed, "kamal_proxy_target_state", &[("service", "a")]).is_none());
}

/// The `+Inf` bucket of a histogram with any number of buckets.
fn histogram_total_any(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels_match(s, labels))
        .and_then(|s| match &s.value {
            Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map(|b| b.count),
            _ => None,
        })
}
