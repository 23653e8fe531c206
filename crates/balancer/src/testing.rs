//! Test helpers: a scriptable loopback upstream, a log capture and a polling helper.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub method: String,
    /// Path and query as received.
    pub path: String,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub accept_encoding: Option<String>,
    /// The upstream's own address.
    pub local: SocketAddr,
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type BoxReply = Pin<Box<dyn Future<Output = Reply> + Send>>;
type Handler = Arc<dyn Fn(Seen) -> BoxReply + Send + Sync>;

/// An HTTP/1 server on 127.0.0.1 with an OS-chosen port, answering from a script and
/// recording every request. Stops when dropped.
pub(crate) struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Starts a server whose answer depends on the request number (0-based) and request.
    pub fn start<F>(script: F) -> Self
    where
        F: Fn(usize, &Seen) -> Reply + Send + Sync + 'static,
    {
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        Self::start_async(move |seen| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let reply = script(n, &seen);
            async move { reply }
        })
    }

    /// Starts a server with an asynchronous script.
    pub fn start_async<F, Fut>(script: F) -> Self
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(move |s| Box::pin(script(s)));
        let task = tokio::spawn(serve(listener, addr, Arc::clone(&seen), handler));
        Self { addr, seen, task }
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Number of requests received so far.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    local: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    handler: Handler,
) {
    // Connections live in the set so aborting the accept task closes them too.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let seen = Arc::clone(&seen);
        let handler = Arc::clone(&handler);
        connections.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let record = Seen {
                    method: req.method().to_string(),
                    path: req
                        .uri()
                        .path_and_query()
                        .map_or_else(String::new, |p| p.to_string()),
                    host: header("host"),
                    user_agent: header("user-agent"),
                    accept_encoding: header("accept-encoding"),
                    local,
                };
                seen.lock().unwrap().push(record.clone());
                let reply = handler(record);
                async move {
                    let reply = reply.await;
                    tokio::time::sleep(reply.delay).await;
                    let mut response = Response::builder().status(reply.status);
                    for (name, value) in &reply.headers {
                        response = response.header(name, value);
                    }
                    Ok::<_, Infallible>(response.body(Full::new(Bytes::new())).unwrap())
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Polls `condition` every 5 ms for up to 5 s; returns whether it became true.
pub(crate) async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One captured log event: level and fields (`message` first) rendered as text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Captured {
    pub level: tracing::Level,
    pub fields: Vec<(String, String)>,
}

/// Events captured on this thread while the guard lives (only this crate's events).
#[derive(Debug, Clone, Default)]
pub(crate) struct Logs(Arc<Mutex<Vec<Captured>>>);

impl Logs {
    pub fn events(&self) -> Vec<Captured> {
        self.0.lock().unwrap().clone()
    }

    /// Events with the given message.
    pub fn with_message(&self, message: &str) -> Vec<Captured> {
        self.events()
            .into_iter()
            .filter(|e| e.fields.first().is_some_and(|(_, m)| m == message))
            .collect()
    }
}

/// Captures this crate's events on the current thread (use a current-thread runtime).
pub(crate) fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let guard = tracing::subscriber::set_default(Capture(logs.clone()));
    (logs, guard)
}

struct Capture(Logs);

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        if !event.metadata().target().starts_with("kamal_balancer") {
            return;
        }
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        self.0 .0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            fields,
        });
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}
