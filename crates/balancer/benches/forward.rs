//! One whole forward over loopback: the direct path (`GET`) and hyper's client (`POST` with a
//! body), each against the same tiny keep-alive upstream, so the two paths compare in one run.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kamal_balancer::{ForwardContext, ForwardTarget, Forwarder, InFlight};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

/// A hyper upstream on 127.0.0.1 answering `Hello, world\n` to everything.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"Hello, world\n",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn request(method: Method, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri("/")
        .header("host", "app.example.com")
        .header("user-agent", "bench")
        .body(Full::new(Bytes::from_static(body)))
        .expect("request")
}

fn forward(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr = runtime.block_on(upstream());
    let target = ForwardTarget::new(addr.to_string().parse().expect("authority"));
    let forwarder = Forwarder::<Full<Bytes>>::new();
    let tracker = InFlight::new();
    let ctx = ForwardContext {
        client_addr: "192.0.2.9:5555".parse().expect("address"),
        tls: false,
        forward_headers: false,
        target_timeout: Duration::from_secs(5),
        upstream_path: None,
    };
    let once = |rt: &Runtime, req: Request<Full<Bytes>>| {
        rt.block_on(async {
            let response = forwarder
                .forward(req, &target, tracker.lease(), &ctx)
                .await
                .expect("forwarded");
            response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
        })
    };
    c.bench_function("forward GET (direct path)", |b| {
        b.iter(|| once(&runtime, request(Method::GET, b"")))
    });
    c.bench_function("forward POST (hyper client)", |b| {
        b.iter(|| once(&runtime, request(Method::POST, b"data")))
    });
}

criterion_group! {
    name = benches;
    // Each iteration is a real loopback exchange: a short, bounded measurement is enough.
    config = Criterion::default().measurement_time(Duration::from_secs(3)).sample_size(50);
    targets = forward
}
criterion_main!(benches);
