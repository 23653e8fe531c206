//! The path form of `--tls-on-demand-url` (spec §10.6.2 step 4): the question "may this host
//! get a certificate?" is asked of the service's own application.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kamal_acme::BoxFuture;
use kamal_balancer::Admission;

use crate::app::App;
use crate::service::Service;
use crate::tls::LocalCheck;

/// Upstream's timeout for the whole check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Only this much of a denial's body is logged, so no more is read.
const BODY_LIMIT: usize = 256;

impl LocalCheck for App {
    fn get(&self, service: &str, path_and_query: &str, host: &str) -> BoxFuture<(u16, Bytes)> {
        let service = self.service(service);
        let path_and_query = path_and_query.to_owned();
        let host = host.to_owned();
        Box::pin(async move {
            let Some(service) = service else {
                return (StatusCode::NOT_FOUND.as_u16(), Bytes::new());
            };
            tokio::time::timeout(CHECK_TIMEOUT, ask(&service, &path_and_query, &host))
                .await
                .unwrap_or((StatusCode::GATEWAY_TIMEOUT.as_u16(), Bytes::new()))
        })
    }
}

/// `GET path_and_query` with `Host: host` to one of the service's targets, as the service's
/// handler would route it: pause and stop apply, no redirects, no access log.
async fn ask(service: &Service, path_and_query: &str, host: &str) -> (u16, Bytes) {
    if !service.pause.is_running() {
        match service.pause.admit().await {
            Admission::Proceed => {}
            Admission::Stopped { .. } => return (503, Bytes::new()),
            Admission::TimedOut => return (504, Bytes::new()),
        }
    }
    let pool = Arc::clone(&service.state().active);
    let Ok(claim) = pool.claim(true) else {
        return (503, Bytes::new());
    };
    let uri = format!(
        "http://{}{}",
        claim.target.addr().authority(),
        path_and_query
    );
    let request = Request::get(uri)
        .header(http::header::HOST, host)
        .header("x-forwarded-proto", "http")
        .body(Empty::<Bytes>::new());
    let Ok(request) = request else {
        return (400, Bytes::new());
    };
    let Ok(response) = client().request(request).await else {
        return (502, Bytes::new());
    };
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut head = BytesMut::new();
    while head.len() < BODY_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    head.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    head.truncate(BODY_LIMIT);
    drop(claim);
    (status, head.freeze())
}

fn client() -> &'static Client<HttpConnector, Empty<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Empty<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| Client::builder(TokioExecutor::new()).build_http())
}

/// Lets the TLS store route path-form on-demand checks through `app`.
pub fn install(app: &Arc<App>) {
    app.tls().set_local_check(app);
}
