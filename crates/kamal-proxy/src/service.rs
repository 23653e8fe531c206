//! A deployed service: its options as the request path needs them, and its target pool.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use http::uri::PathAndQuery;
use http::{HeaderName, Method, Request, Response, StatusCode};
use kamal_balancer::{
    affinity, Admission, ForwardContext, ForwardError, Forwarder, Lease, PauseController, Pool,
    RolloutSplit, Target,
};
use kamal_control::{ServiceOptions, TargetOptions};

use crate::access_log::{AccessLog, ConnInfo, LogHeader};
use crate::app::App;
use crate::app::{UpstreamBody, UpstreamRequestBody};
use crate::body::ResponseBody;
use crate::buffering::{self, Buffering};
use crate::error_pages::ErrorPages;
use crate::metrics::ServiceMetrics;
use crate::serve::RequestBody;
use crate::{cookies, redirect};
use kamal_buffer::MaybeBuffered;

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
    /// `--client-ip-header`, when set to a valid header name.
    pub client_ip_header: Option<HeaderName>,
    /// `--writer-affinity-timeout` (zero turns affinity off).
    pub writer_affinity_timeout: Duration,
    /// Request/response buffering limits (`--buffer-*`, `--max-*-body`).
    pub buffering: Buffering,
    /// Custom error pages (`--error-pages`), loaded at deploy time.
    pub error_pages: Option<Arc<ErrorPages>>,
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
            client_ip_header: HeaderName::from_bytes(options.client_ip_header.as_bytes()).ok(),
            writer_affinity_timeout: options.writer_affinity_timeout.to_std(),
            buffering: Buffering::new(&target_options),
            error_pages: None,
            options,
            target_options,
        }
    }

    /// Attaches the service's custom error pages.
    pub fn with_error_pages(mut self, pages: Option<Arc<ErrorPages>>) -> Self {
        self.error_pages = pages;
        self
    }

    /// The error page for `status`: the service's custom page if it has one, else built-in.
    pub fn page(&self, status: StatusCode, message: Option<&str>) -> Response<ResponseBody> {
        crate::error_pages::page(self.error_pages.as_deref(), status, message)
    }
}

/// What requests read of a service: settings and pools, swapped whole, so that a request
/// costs one atomic load and sees its settings and pools from the same deploy.
#[derive(Debug, Clone)]
pub struct ServiceState {
    /// Request-path settings; replaced on re-deploy and by TLS inheritance.
    pub settings: Arc<Settings>,
    /// The active target pool; replaced on deploy.
    pub active: Arc<Pool>,
    /// The rollout pool (`rollout deploy`), if any.
    pub rollout: Option<Arc<Pool>>,
    /// The rollout split (`rollout set`); traffic goes to the rollout pool only with both.
    pub split: Option<Arc<RolloutSplit>>,
}

/// A deployed service.
#[derive(Debug)]
pub struct Service {
    /// The service name.
    pub name: Arc<str>,
    /// Settings and pools; read with [`Service::state`], changed with [`Service::update`].
    state: ArcSwap<ServiceState>,
    /// Running, paused or stopped (spec §5).
    pub pause: PauseController,
    /// The service's request metrics, when `--metrics-port` is set.
    pub metrics: Option<Arc<ServiceMetrics>>,
}

impl Service {
    /// A new, running service serving `pool`.
    pub fn new(
        name: &str,
        settings: Arc<Settings>,
        pool: Arc<Pool>,
        metrics: Option<Arc<ServiceMetrics>>,
    ) -> Arc<Self> {
        Arc::new(Service {
            name: Arc::from(name),
            state: ArcSwap::from_pointee(ServiceState {
                settings,
                active: pool,
                rollout: None,
                split: None,
            }),
            pause: PauseController::new(),
            metrics,
        })
    }

    /// The current settings and pools, one consistent snapshot.
    pub fn state(&self) -> Guard<Arc<ServiceState>> {
        self.state.load()
    }

    /// Replaces the state with a copy of the current one changed by `change`, and returns
    /// the state it replaced. The control plane makes every change under the registry lock;
    /// `rcu` still retries on a concurrent change, so no update is ever lost (`change` may
    /// then run more than once).
    pub fn update(&self, mut change: impl FnMut(&mut ServiceState)) -> Arc<ServiceState> {
        self.state.rcu(|current| {
            let mut next = ServiceState::clone(current);
            change(&mut next);
            next
        })
    }

    /// Drains the active and the rollout pool in parallel (pause and stop, spec §5).
    pub async fn drain(&self, timeout: Duration) {
        let state = self.state.load_full();
        let rollout = async {
            if let Some(pool) = &state.rollout {
                pool.drain(timeout).await;
            }
        };
        futures_util::join!(state.active.drain(timeout), rollout);
    }

    /// Stops the health checks of both pools (the service is removed).
    pub fn dispose(&self) {
        let state = self.state();
        state.active.dispose();
        if let Some(pool) = &state.rollout {
            pool.dispose();
        }
    }

    /// Starts serving a request routed to this service at `prefix` without waiting for
    /// anything: the common case (running, no buffering) comes back as a [`Forward`] whose
    /// future the caller awaits; everything else as [`Begin::General`] for
    /// [`Service::serve`], or already answered.
    ///
    /// Split from the async path so that the future every request boxes holds only the
    /// forwarding and what the response needs, not this preparation's locals.
    pub fn begin(
        &self,
        mut req: Request<RequestBody>,
        prefix: &str,
        conn: ConnInfo,
        log: &mut AccessLog,
    ) -> Begin {
        // The one snapshot load of the request: settings and pools from the same deploy.
        let state = self.state();
        let settings = &*state.settings;
        if !self.pause.is_running()
            || settings.buffering.requests.is_some()
            || settings.buffering.responses.is_some()
        {
            return Begin::General(req);
        }
        if let Some(resp) = self.admit(&mut req, prefix, conn, log, settings) {
            return Begin::Answer(resp);
        }
        match self.dispatch(req.map(MaybeBuffered::streaming), prefix, conn, log, state) {
            Dispatch::Forward(forward) => Begin::Forward(forward),
            Dispatch::Answer(resp) => Begin::Answer(resp),
            Dispatch::Paused(req) => Begin::Paused(req),
        }
    }

    /// Serves one request routed to this service at `prefix`, in the order of spec §7.1
    /// steps 8 and 11: client IP, TLS mismatch, redirects, health-check bypass and pause gate,
    /// pool and target choice, forwarding, then response rewrites (cookie scope, writer
    /// affinity). The general path, for what [`Service::begin`] leaves to it.
    pub async fn serve(
        &self,
        app: &App,
        mut req: Request<RequestBody>,
        prefix: &str,
        conn: ConnInfo,
        log: &mut AccessLog,
    ) -> Response<ResponseBody> {
        // The settings only: the pools are looked up after the waits below.
        let settings = Arc::clone(&self.state().settings);
        if let Some(resp) = self.admit(&mut req, prefix, conn, log, &settings) {
            return resp;
        }
        // The paused and buffering paths are boxed: inline, their large futures would make
        // this one large too.
        if !self.pause.is_running() {
            if let Some(resp) = Box::pin(self.held(&req, prefix, &settings)).await {
                return resp;
            }
        }
        // The whole body is read before a target is chosen, so a slow client never holds one.
        let req = match &settings.buffering.requests {
            Some(limits) => match Box::pin(buffering::buffer_request(req, limits)).await {
                Ok(req) => req,
                Err(status) => return settings.page(status, None),
            },
            None => req.map(MaybeBuffered::streaming),
        };
        // A snapshot from before the waits could still name targets that a deploy meanwhile
        // replaced and drained (this request held no lease on them), and are stopped now.
        self.proceed(app, req, prefix, conn, log, self.state())
            .await
    }

    /// From the choice of a target on: forwards and rewrites the response. Also where a
    /// request continues that found the service paused between the gate and the claim
    /// ([`Begin::Paused`]).
    pub async fn proceed(
        &self,
        app: &App,
        req: Request<MaybeBuffered<RequestBody>>,
        prefix: &str,
        conn: ConnInfo,
        log: &mut AccessLog,
        state: Guard<Arc<ServiceState>>,
    ) -> Response<ResponseBody> {
        // Only response buffering needs the path after the request has been sent (a
        // reference-count bump).
        let uri = state
            .settings
            .buffering
            .responses
            .is_some()
            .then(|| req.uri().clone());
        let settings = Arc::clone(&state.settings);
        let forward = match self.dispatch(req, prefix, conn, log, state) {
            Dispatch::Forward(forward) => forward,
            Dispatch::Answer(resp) => return resp,
            // Paused between the gate and the claim (the targets are draining): wait in the
            // gate like the requests behind this one, then try once more.
            Dispatch::Paused(req) => {
                if let Some(resp) = Box::pin(self.held(&req, prefix, &settings)).await {
                    return resp;
                }
                match self.dispatch(req, prefix, conn, log, self.state()) {
                    Dispatch::Forward(forward) => forward,
                    Dispatch::Answer(resp) => return resp,
                    Dispatch::Paused(_) => {
                        return settings.page(StatusCode::SERVICE_UNAVAILABLE, None)
                    }
                }
            }
        };
        let Forward {
            target,
            sending,
            after,
        } = forward;
        let forwarded = sending.start(&app.forwarder, &target).await;
        let resp = match (forwarded, &after.state.settings.buffering.responses) {
            (Ok(resp), Some(limits)) => {
                let path = uri.as_ref().map_or("/", |u| u.path());
                match Box::pin(buffering::buffer_response(resp, limits, path)).await {
                    Ok(resp) => Ok(resp),
                    Err(status) => return after.state.settings.page(status, None),
                }
            }
            (forwarded, _) => forwarded.map(|resp| resp.map(MaybeBuffered::streaming)),
        };
        after.finish(resp, log)
    }

    /// Spec §7.1 step 8 up to the pause gate: metrics and log scope, client IP, TLS
    /// mismatch, redirects. `Some` is the answer when one of them ends the request.
    fn admit(
        &self,
        req: &mut Request<RequestBody>,
        prefix: &str,
        conn: ConnInfo,
        log: &mut AccessLog,
        settings: &Settings,
    ) -> Option<Response<ResponseBody>> {
        if let Some(series) = &self.metrics {
            let excluded = !settings.options.exclude_metrics_paths.is_empty() && {
                let routed = kamal_router::routed_path(
                    req.uri().path(),
                    prefix,
                    settings.options.strip_prefix,
                );
                settings
                    .options
                    .exclude_metrics_paths
                    .iter()
                    .any(|p| *p == routed)
            };
            log.enter_service((!excluded).then_some(series));
        }
        log.set_service(&self.name);

        if let Some(header) = &settings.client_ip_header {
            apply_client_ip(req, header, log);
        }
        // A service without TLS reached over TLS answers 503 (spec §7.9).
        if conn.tls && !settings.options.tls_enabled {
            return Some(settings.page(StatusCode::SERVICE_UNAVAILABLE, None));
        }
        let authority = crate::app::request_authority(req);
        redirect::redirect(req, authority, conn.tls, &settings.options)
    }

    /// Chooses the pool and a target, and prepares the forwarding (spec §7.1 step 11).
    fn dispatch(
        &self,
        req: Request<MaybeBuffered<RequestBody>>,
        prefix: &str,
        conn: ConnInfo,
        log: &mut AccessLog,
        state: Guard<Arc<ServiceState>>,
    ) -> Dispatch {
        let settings = &*state.settings;
        let pool = match (&state.split, &state.rollout) {
            (Some(split), Some(pool)) if split.uses_rollout_for(req.headers()) => {
                tracing::debug!(service = %self.name, path = %decoded_path(&req), "Using rollout for request");
                pool
            }
            _ => &state.active,
        };
        let read = is_read_request(&req, settings.options.read_targets_accept_websockets);
        let affinity = affinity::is_active(pool.has_readers(), settings.writer_affinity_timeout);
        let to_readers = read
            && pool.has_readers()
            && !affinity::has_valid_cookie(req.headers(), SystemTime::now());
        let claim = match pool.claim(to_readers) {
            Ok(claim) => claim,
            Err(_) if !self.pause.is_running() => return Dispatch::Paused(req),
            Err(_) => {
                // A deploy that swapped the pools after this request's snapshot was taken
                // drains the old targets, which refuse it; the new ones take it.
                let current = self.state();
                if !Arc::ptr_eq(&*current, &*state) {
                    return self.dispatch(req, prefix, conn, log, current);
                }
                return Dispatch::Answer(settings.page(StatusCode::SERVICE_UNAVAILABLE, None));
            }
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
        // Scoping needs the host after the request has been handed to the forwarder.
        let cookie_scope = (settings.target_options.scope_cookie_paths
            && settings.options.strip_prefix
            && prefix != "/")
            .then(|| {
                Box::new(CookieScope {
                    host: redirect::strip_port(crate::app::request_authority(&req)).to_owned(),
                    prefix: prefix.to_owned(),
                })
            });
        let ctx = ForwardContext {
            client_addr: conn.peer,
            tls: conn.tls,
            forward_headers: settings.target_options.forward_headers,
            target_timeout: settings.target_timeout,
            upstream_path: upstream_path_and_query(&req, prefix, settings.options.strip_prefix),
        };
        Dispatch::Forward(Forward {
            target: claim.target,
            sending: Sending {
                lease: claim.lease,
                req,
                ctx,
            },
            after: After {
                cookie_scope,
                writer_cookie: affinity && !read,
                state: Guard::into_inner(state),
            },
        })
    }

    /// The answer for a request while the service is not running, or `None` once it may
    /// proceed: health checks are answered 200 (spec §5.4), others wait in the pause gate.
    async fn held<B>(
        &self,
        req: &Request<B>,
        prefix: &str,
        settings: &Settings,
    ) -> Option<Response<ResponseBody>> {
        let method = req.method();
        if (method == Method::GET || method == Method::HEAD)
            && kamal_router::routed_path(req.uri().path(), prefix, settings.options.strip_prefix)
                == settings.target_options.health_check_config.path
        {
            return Some(Response::new(ResponseBody::empty()));
        }
        match self.pause.admit().await {
            Admission::Proceed => None,
            Admission::Stopped { message } => {
                Some(settings.page(StatusCode::SERVICE_UNAVAILABLE, Some(&message)))
            }
            Admission::TimedOut => {
                tracing::warn!(service = %self.name, path = %decoded_path(req), "Rejecting request due to expired pause");
                Some(settings.page(StatusCode::GATEWAY_TIMEOUT, None))
            }
        }
    }
}

/// How a request goes on after [`Service::begin`].
pub enum Begin {
    /// Answered without a target (TLS mismatch, redirect, no target).
    Answer(Response<ResponseBody>),
    /// Ready to forward, with nothing to wait for before or after.
    Forward(Forward),
    /// Paused or buffering: for [`Service::serve`], nothing done yet.
    General(Request<RequestBody>),
    /// Paused between the gate check and the claim: for [`Service::proceed`].
    Paused(Request<MaybeBuffered<RequestBody>>),
}

/// What [`Service::dispatch`] decided.
enum Dispatch {
    Forward(Forward),
    Answer(Response<ResponseBody>),
    /// No target could be claimed because the service is paused.
    Paused(Request<MaybeBuffered<RequestBody>>),
}

/// A request with its target chosen, ready to be forwarded.
pub struct Forward {
    /// The chosen target. The forwarding future borrows it, so the caller keeps it in its
    /// own future rather than this being a future of its own.
    pub target: Arc<Target>,
    /// The request and how it goes; [`Sending::start`] starts it.
    pub sending: Sending,
    /// What the response needs.
    pub after: After,
}

/// What [`Sending::start`] hands to the forwarder.
pub struct Sending {
    /// Keeps the request in flight on the target.
    lease: Lease,
    /// The request for the target.
    req: Request<MaybeBuffered<RequestBody>>,
    /// How it is forwarded.
    ctx: ForwardContext,
}

impl Sending {
    /// The forwarding to `target` (the claimed one). The future borrows only `target`: the
    /// context is used up here and not kept in it.
    pub fn start<'a>(
        self,
        forwarder: &Forwarder<UpstreamRequestBody>,
        target: &'a Target,
    ) -> impl std::future::Future<Output = Result<Response<UpstreamBody>, ForwardError>> + Send + 'a
    {
        forwarder.forward(self.req, target.forward_target(), self.lease, &self.ctx)
    }
}

/// What the response needs from the request once the request has been forwarded.
pub struct After {
    /// Settings of the deploy that chose the target.
    state: Arc<ServiceState>,
    /// Set-Cookie paths to scope under the prefix (rarely on: boxed).
    cookie_scope: Option<Box<CookieScope>>,
    /// Whether the response sets the writer-affinity cookie.
    writer_cookie: bool,
}

struct CookieScope {
    host: String,
    prefix: String,
}

impl After {
    /// The response for the client (spec §7.1 step 11, after forwarding): cookie scoping,
    /// the writer-affinity cookie and logged response headers, or the error page.
    pub fn finish(
        self,
        forwarded: Result<Response<MaybeBuffered<UpstreamBody>>, ForwardError>,
        log: &mut AccessLog,
    ) -> Response<ResponseBody> {
        let settings = &*self.state.settings;
        match forwarded {
            Ok(mut resp) => {
                // Tunnels keep the upstream's 101 untouched.
                if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(scope) = &self.cookie_scope {
                        cookies::scope_paths(resp.headers_mut(), &scope.prefix, &scope.host);
                    }
                    // Added after scoping: the writer cookie always keeps `Path=/`.
                    if self.writer_cookie {
                        affinity::apply_to_response(
                            resp.headers_mut(),
                            settings.writer_affinity_timeout,
                            SystemTime::now(),
                        );
                    }
                }
                log.capture_response_headers(&settings.log_response_headers, resp.headers());
                resp.map(ResponseBody::proxy)
            }
            Err(e) => {
                let resp = settings.page(e.status(), None);
                log.capture_response_headers(&settings.log_response_headers, resp.headers());
                resp
            }
        }
    }
}

/// `--client-ip-header` (spec §7.4): a non-empty value of that header replaces
/// `X-Forwarded-For`, which the access log shows as `remote_addr`.
fn apply_client_ip<B>(req: &mut Request<B>, header: &HeaderName, log: &mut AccessLog) {
    let Some(value) = req.headers().get(header).filter(|v| !v.is_empty()).cloned() else {
        return;
    };
    req.headers_mut()
        .insert(kamal_balancer::headers::X_FORWARDED_FOR, value.clone());
    log.set_remote_addr(value);
}

/// The decoded request path, as log lines show it.
fn decoded_path<B>(req: &Request<B>) -> std::borrow::Cow<'_, str> {
    percent_encoding::percent_decode_str(req.uri().path()).decode_utf8_lossy()
}

/// GET and HEAD are reads, unless they are WebSocket upgrades and read targets do not take
/// WebSockets (spec §4.7).
fn is_read_request<B>(req: &Request<B>, websockets_read: bool) -> bool {
    (req.method() == Method::GET || req.method() == Method::HEAD)
        && (websockets_read || !is_websocket(req))
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

#[cfg(test)]
mod tests {
    use super::*;
    use kamal_balancer::HealthConfig;

    fn settings() -> Arc<Settings> {
        Arc::new(Settings::new(
            ServiceOptions::default(),
            TargetOptions::default(),
        ))
    }

    fn pool(target: &str) -> Arc<Pool> {
        Pool::parse(&[target], &[] as &[&str], HealthConfig::default()).unwrap()
    }

    #[test]
    fn update_changes_one_field_and_returns_the_replaced_state() {
        let (first, active) = (settings(), pool("web-1:3000"));
        let service = Service::new("app", Arc::clone(&first), Arc::clone(&active), None);
        // A snapshot taken before an update keeps seeing the whole old state.
        let before = service.state();
        let rollout = pool("web-2:3000");
        let previous = service.update(|state| state.rollout = Some(Arc::clone(&rollout)));
        assert!(Arc::ptr_eq(&previous, &*before));
        assert!(before.rollout.is_none());

        let now = service.state();
        assert!(Arc::ptr_eq(now.rollout.as_ref().unwrap(), &rollout));
        assert!(Arc::ptr_eq(&now.settings, &first));
        assert!(Arc::ptr_eq(&now.active, &active));
        assert!(now.split.is_none());
    }

    #[tokio::test]
    async fn a_request_whose_snapshot_predates_a_deploy_goes_to_the_new_targets() {
        let old = pool("127.0.0.1:3001");
        old.mark_all_healthy();
        let service = Service::new("app", settings(), Arc::clone(&old), None);
        // The request's snapshot is taken; then a deploy installs the new pool...
        let snapshot = service.state();
        let new = pool("127.0.0.1:3002");
        new.mark_all_healthy();
        service.update(|state| state.active = Arc::clone(&new));
        // ...and drains the old one, kept draining here by a request still in flight.
        let in_flight = old.claim(false).unwrap();
        let draining = tokio::spawn({
            let old = Arc::clone(&old);
            async move { old.drain(Duration::from_secs(10)).await }
        });
        let began = test_support::eventually(Duration::from_secs(5), || async {
            old.targets()[0].state() == kamal_balancer::TargetState::Draining
        })
        .await;
        assert!(began, "the drain never began");

        let req = Request::builder()
            .uri("/")
            .header("host", "app.example.com")
            .body(MaybeBuffered::streaming(crate::serve::RequestBody::Empty))
            .unwrap();
        let conn = ConnInfo {
            peer: ([127, 0, 0, 1], 40000).into(),
            tls: false,
            port: 80,
        };
        let mut log = AccessLog::begin(&req, conn, crate::access_log::Arrival::now());
        match service.dispatch(req, "/", conn, &mut log, snapshot) {
            Dispatch::Forward(forward) => {
                assert_eq!(forward.target.addr().to_string(), "127.0.0.1:3002");
            }
            Dispatch::Answer(resp) => panic!("answered {}", resp.status()),
            Dispatch::Paused(_) => panic!("held as if paused"),
        }
        drop(in_flight);
        draining.await.unwrap();
    }

    #[test]
    fn concurrent_updates_of_different_fields_are_not_lost() {
        const ROUNDS: usize = 300;
        let service = Service::new("app", settings(), pool("web-1:3000"), None);
        let last_settings = settings();
        let last_split = Arc::new(RolloutSplit::new(50, Vec::new()));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for _ in 0..ROUNDS {
                    let next = settings();
                    service.update(|state| state.settings = Arc::clone(&next));
                }
                service.update(|state| state.settings = Arc::clone(&last_settings));
            });
            scope.spawn(|| {
                for i in 0..ROUNDS {
                    let next = Arc::new(RolloutSplit::new((i % 100) as i64, Vec::new()));
                    service.update(|state| state.split = Some(Arc::clone(&next)));
                }
                service.update(|state| state.split = Some(Arc::clone(&last_split)));
            });
        });
        // A plain load-then-store could put back a stale copy of the other thread's field.
        let state = service.state();
        assert!(Arc::ptr_eq(&state.settings, &last_settings));
        assert!(Arc::ptr_eq(state.split.as_ref().unwrap(), &last_split));
    }
}
