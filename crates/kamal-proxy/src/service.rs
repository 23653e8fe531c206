//! A deployed service: its options as the request path needs them, and its target pool.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use kamal_balancer::{ForwardContext, Pool};
use kamal_control::{ServiceOptions, TargetOptions};

use crate::access_log::{AccessLog, ConnInfo, LogHeader};
use crate::app::App;
use crate::body::ResponseBody;
use crate::rescue;

/// Everything the request path reads from a service's options, derived once per deploy.
#[derive(Debug)]
pub struct Settings {
    /// Options as deployed, normalised; `tls_enabled`/`tls_redirect` are the effective values
    /// (inherited from the root service for non-root services).
    pub options: ServiceOptions,
    /// Target options as deployed.
    pub target_options: TargetOptions,
    /// Response-header timeout for requests to targets.
    pub target_timeout: Duration,
    /// `--log-request-header` names with their log keys.
    pub log_request_headers: Vec<LogHeader>,
    /// `--log-response-header` names with their log keys.
    pub log_response_headers: Vec<LogHeader>,
}

impl Settings {
    /// Derives the request-path settings from the protocol options.
    pub fn new(options: ServiceOptions, mut target_options: TargetOptions) -> Self {
        target_options.canonicalize_log_headers();
        let headers = |names: &[String]| names.iter().filter_map(|n| LogHeader::new(n)).collect();
        Settings {
            target_timeout: target_options.response_timeout.to_std(),
            log_request_headers: headers(&target_options.log_request_headers),
            log_response_headers: headers(&target_options.log_response_headers),
            options,
            target_options,
        }
    }
}

/// Whether a service accepts requests (spec §5). Behaviour lands with the traffic-control issue;
/// the state is kept, listed and persisted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PauseState {
    /// Serving normally.
    #[default]
    Running,
    /// Holding new requests.
    Paused,
    /// Answering 503 with the stop message.
    Stopped,
}

impl PauseState {
    /// The name `list` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseState::Running => "running",
            PauseState::Paused => "paused",
            PauseState::Stopped => "stopped",
        }
    }
}

/// Pause state with its message and max-pause, as persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pause {
    /// Current state.
    pub state: PauseState,
    /// Message shown while stopped.
    pub message: String,
    /// How long a paused request may wait.
    pub max_pause: kamal_control::GoDuration,
}

/// A deployed service.
#[derive(Debug)]
pub struct Service {
    /// The service name.
    pub name: Arc<str>,
    /// Request-path settings; swapped whole on re-deploy.
    pub settings: ArcSwap<Settings>,
    /// The active target pool; swapped whole on deploy.
    pub active: ArcSwap<Pool>,
    /// Pause state (control plane only for now).
    pub pause: ArcSwap<Pause>,
}

impl Service {
    /// A new service serving `pool`.
    pub fn new(name: &str, settings: Settings, pool: Arc<Pool>) -> Arc<Self> {
        Arc::new(Service {
            name: Arc::from(name),
            settings: ArcSwap::from_pointee(settings),
            active: ArcSwap::new(pool),
            pause: ArcSwap::from_pointee(Pause::default()),
        })
    }

    /// Serves one request routed to this service at `prefix`.
    pub async fn serve(
        &self,
        app: &App,
        req: Request<Incoming>,
        prefix: &str,
        conn: ConnInfo,
        log: &mut AccessLog,
    ) -> Response<ResponseBody> {
        log.set_service(&self.name);
        let settings = self.settings.load();

        // A service without TLS reached over TLS answers 503 (spec §7.9).
        if conn.tls && !settings.options.tls_enabled {
            return rescue::page(StatusCode::SERVICE_UNAVAILABLE, None);
        }
        {
            let pause = self.pause.load();
            if pause.state == PauseState::Stopped {
                let message = (!pause.message.is_empty()).then_some(pause.message.as_str());
                return rescue::page(StatusCode::SERVICE_UNAVAILABLE, message);
            }
        }

        let pool = self.active.load();
        let claim = match pool.claim(is_read_request(&req)) {
            Ok(claim) => claim,
            Err(_) => return rescue::page(StatusCode::SERVICE_UNAVAILABLE, None),
        };
        let upstream = claim.target.forward_target();
        log.set_target(upstream.label());
        if !settings.log_request_headers.is_empty() {
            log.capture_request_headers(
                &settings.log_request_headers,
                req.headers(),
                upstream.label(),
                settings.target_options.forward_headers,
            );
        }

        let upstream_path = upstream_path_and_query(&req, prefix, settings.options.strip_prefix);
        let ctx = ForwardContext {
            client_addr: conn.peer,
            tls: conn.tls,
            forward_headers: settings.target_options.forward_headers,
            target_timeout: settings.target_timeout,
            upstream_path,
        };
        match app
            .forwarder
            .forward(req, upstream, claim.lease, &ctx)
            .await
        {
            Ok(resp) => {
                log.capture_response_headers(&settings.log_response_headers, resp.headers());
                resp.map(ResponseBody::proxy)
            }
            Err(e) => {
                let resp = rescue::page(e.status(), None);
                log.capture_response_headers(&settings.log_response_headers, resp.headers());
                resp
            }
        }
    }
}

/// GET and HEAD are reads, unless they are WebSocket upgrades (spec §4.7).
fn is_read_request<B>(req: &Request<B>) -> bool {
    (req.method() == http::Method::GET || req.method() == http::Method::HEAD) && !is_websocket(req)
}

fn is_websocket<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    let upgrade = headers
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    upgrade
        && headers.get_all(http::header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.to_ascii_lowercase().contains("upgrade"))
        })
}

/// The path and query the target sees (spec §3.5), or `None` to keep the request's own.
fn upstream_path_and_query<B>(req: &Request<B>, prefix: &str, strip: bool) -> Option<PathAndQuery> {
    let path = req.uri().path();
    match kamal_router::upstream_path(path, prefix, strip) {
        std::borrow::Cow::Borrowed(p) if p == path => None,
        p => {
            let s = match req.uri().query() {
                Some(q) => format!("{p}?{q}"),
                None => p.into_owned(),
            };
            PathAndQuery::from_maybe_shared(bytes::Bytes::from(s)).ok()
        }
    }
}
