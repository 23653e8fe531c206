//! Per-request work of the application layer: stamping the request id and start time, the
//! redirect check, and rendering the JSON access-log line.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use kamal_proxy::access_log::{AccessLog, Arrival, ConnInfo};
use kamal_proxy::app::stamp_request;

fn request() -> Request<String> {
    Request::builder()
        .uri("/products/42?page=2")
        .header("host", "app.example.com")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101",
        )
        .header("accept", "text/html")
        .body(String::new())
        .expect("a valid request")
}

fn bench(c: &mut Criterion) {
    c.bench_function("stamp_request", |b| {
        b.iter_batched_ref(
            request,
            |req| stamp_request(black_box(req), SystemTime::now()),
            criterion::BatchSize::SmallInput,
        )
    });

    // Every request to a service passes the redirect check; most services redirect nothing.
    let options = kamal_control::ServiceOptions::default();
    let req = request();
    c.bench_function("redirect check, nothing to redirect", |b| {
        b.iter(|| {
            kamal_proxy::redirect::redirect(
                black_box(&req),
                black_box("app.example.com:8080"),
                false,
                &options,
            )
            .is_none()
        })
    });

    let mut req = request();
    stamp_request(&mut req, SystemTime::now());
    let conn = ConnInfo {
        peer: SocketAddr::from(([192, 0, 2, 7], 51234)),
        tls: false,
        port: 80,
    };
    let mut log = AccessLog::begin(&req, conn, Arrival::now());
    log.set_service(&Arc::from("app"));
    log.set_target(&http::HeaderValue::from_static("127.0.0.1:3000"));
    let resp = Response::builder()
        .header("content-type", "text/html; charset=utf-8")
        .body(())
        .expect("a valid response");
    log.set_response(&resp);
    log.add_body_bytes(13);
    let mut out = Vec::with_capacity(64 * 1024);
    c.bench_function("access_log render", |b| {
        b.iter(|| {
            out.clear();
            log.render_into(&mut out, black_box(Duration::from_micros(321)));
            black_box(out.len())
        })
    });
    // Dropping writes the line; the bench's stdout can take one.
    drop(log);
}

criterion_group!(benches, bench);
criterion_main!(benches);
