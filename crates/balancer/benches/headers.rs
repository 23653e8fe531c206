//! The header rewrites every forwarded request and response goes through (§7.2–§7.5).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use kamal_balancer::headers::{prepare_request, rewrite_request, rewrite_response, RequestInfo};

/// A browser-like request head as hyper hands it over.
fn request_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "app.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("connection", "keep-alive"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("x-request-id", "5f1c2b8e-6f0a-4a52-9a57-0c1b7b0d3e11"),
        ("x-request-start", "t=1795710827273"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
}

fn response_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("content-type", "text/html; charset=utf-8"),
        ("content-length", "13"),
        ("cache-control", "no-cache"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
}

fn bench(c: &mut Criterion) {
    let label = HeaderValue::from_static("127.0.0.1:3000");
    let request = request_headers();
    let host = request.get("host").cloned();
    for (name, forward_headers) in [
        ("rewrite_request", false),
        ("rewrite_request forward-headers", true),
    ] {
        let info = RequestInfo {
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            tls: false,
            forward_headers,
            target_label: &label,
        };
        c.bench_function(name, |b| {
            b.iter_batched_ref(
                || request.clone(),
                |headers| rewrite_request(headers, host.clone(), true, black_box(&info)),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    // The direct path's share: the map is rewritten but the added headers are only computed
    // (they are written into the request head, not inserted).
    let info = RequestInfo {
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        tls: false,
        forward_headers: false,
        target_label: &label,
    };
    c.bench_function("prepare_request", |b| {
        b.iter_batched_ref(
            || request.clone(),
            |headers| {
                let (upgrade, added) =
                    prepare_request(headers, host.as_ref(), true, black_box(&info));
                black_box(added.lines().count());
                upgrade
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let response = response_headers();
    c.bench_function("rewrite_response", |b| {
        b.iter_batched_ref(
            || response.clone(),
            |headers| rewrite_response(black_box(headers)),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
