//! The running proxy: services, the routing snapshot, and the control-plane operations.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use kamal_balancer::{Forwarder, HealthConfig, Pool, RolloutSplit, TargetAddr};
use kamal_buffer::MaybeBuffered;
use kamal_control::{
    DeployRequest, GoDuration, Request as Command, Response as Answer, RolloutDeployRequest,
    ServiceDescription, ServiceOptions, TargetDescription, TargetOptions,
};
use kamal_router::{RouteError, RouteTable, SharedRoutes};

use crate::access_log::{AccessLog, Arrival, ConnInfo};
use crate::body::ResponseBody;
use crate::error_pages::ErrorPages;
use crate::logging::json_list;
use crate::metrics::{DeployOutcome, Metrics, TargetHealth};
use crate::rescue;
use crate::serve::{HttpHandler, RequestBody};
use crate::service::{Begin, Forward, Service, Settings};
use crate::state::{PendingWrite, StateWriter};

/// The body of a request as it is sent to a target: the client's, or its buffered copy.
pub(crate) type UpstreamRequestBody = MaybeBuffered<RequestBody>;
/// The body of a target's response before response buffering.
pub(crate) type UpstreamBody = kamal_balancer::ProxyBody<UpstreamRequestBody>;

/// The whole proxy: what requests read (lock-free) and what the control plane changes.
#[derive(Debug)]
pub struct App {
    /// The routing snapshot requests read with one atomic load.
    routes: SharedRoutes<Arc<Service>>,
    /// Services by name. Only the control plane takes this lock, never a request.
    registry: Mutex<BTreeMap<String, Arc<Service>>>,
    /// Forwards requests to targets (each target keeps its own connections).
    pub(crate) forwarder: Forwarder<UpstreamRequestBody>,
    /// Certificates for the HTTPS listener, per service.
    tls: Arc<crate::tls::Tls>,
    /// Persists the services to the state file, off the runtime's worker threads.
    state: StateWriter,
    /// Request and operator metrics, when `--metrics-port` is set.
    metrics: Option<Arc<Metrics>>,
}

impl App {
    /// An empty proxy persisting its state at `state_path`.
    pub fn new(state_path: PathBuf) -> Arc<Self> {
        Self::with_metrics(state_path, None)
    }

    /// An empty proxy that counts requests in `metrics` (spec §12).
    pub fn with_metrics(state_path: PathBuf, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        Arc::new(App {
            metrics,
            routes: SharedRoutes::new(RouteTable::new()),
            registry: Mutex::new(BTreeMap::new()),
            forwarder: Forwarder::new(),
            tls: crate::tls::Tls::new(),
            state: StateWriter::new(state_path),
        })
    }

    /// The certificate store of the HTTPS listener.
    pub fn tls(&self) -> &Arc<crate::tls::Tls> {
        &self.tls
    }

    fn registry(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Service>>> {
        // A panic while holding the lock leaves consistent data (every change is a swap).
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a request that reached no service as `service=""` (404s, HTTP-01 answers).
    fn count_unmatched(&self, log: &mut AccessLog) {
        if let Some(metrics) = &self.metrics {
            log.count_in(metrics.unmatched());
        }
    }

    /// Deploys (creates or updates) a service: health-gated switch, then drain (spec §4.5).
    pub async fn deploy(&self, req: DeployRequest) -> Result<(), String> {
        let Some(metrics) = self.metrics.clone() else {
            return self.deploy_service(req).await;
        };
        let started = Instant::now();
        let name = req.service.clone();
        let result = self.deploy_service(req).await;
        let outcome = match &result {
            Ok(()) => DeployOutcome::Succeeded,
            Err(e) if e.starts_with(UNHEALTHY_PREFIX) => DeployOutcome::Unhealthy,
            Err(_) => DeployOutcome::Failed,
        };
        metrics.record_deploy(&name, outcome, started.elapsed());
        result
    }

    async fn deploy_service(&self, req: DeployRequest) -> Result<(), String> {
        req.service_options.validate().map_err(|e| e.to_string())?;
        let mut options = req.service_options.clone();
        options.normalize();
        let targets = json_list(&req.target_urls);
        let hosts = json_list(&options.hosts);
        let paths = json_list(&options.path_prefixes);
        tracing::info!(
            service = %req.service,
            json.targets = %targets,
            json.hosts = %hosts,
            json.paths = %paths,
            tls = options.tls_enabled,
            "Deploying"
        );

        // Before any pool exists: a bad directory fails the deploy and changes nothing.
        let error_pages = load_error_pages(&req.service, &options)?;
        let prepared = self.tls.prepare(&req.service, &options)?;
        let pool = build_pool(&req.target_urls, &req.reader_urls, &req.target_options)?;
        pool.start_health_checks();
        if !req.force && !pool.wait_healthy(req.deploy_timeout.to_std()).await {
            pool.dispose();
            return Err(unhealthy_message(req.deploy_timeout));
        }

        let settings =
            Settings::new(options, req.target_options.clone()).with_error_pages(error_pages);
        let (installed, saving) = self.install(&req.service, settings, Arc::clone(&pool));
        let replaced = match installed {
            Ok(replaced) => {
                self.tls.install(&req.service, prepared);
                self.record_certificate(&req.service, &req.service_options);
                replaced
            }
            Err(e) => {
                pool.dispose();
                saving.wait().await;
                return Err(e);
            }
        };
        // On disk before the command answers (the client may read it next).
        saving.wait().await;
        if let Some(old) = replaced {
            old.dispose();
            old.drain(req.drain_timeout.to_std()).await;
        }
        tracing::info!(
            service = %req.service,
            json.targets = %targets,
            json.hosts = %hosts,
            json.paths = %paths,
            tls = pool_tls(self, &req.service),
            "Deployed"
        );
        Ok(())
    }

    /// The install step: conflict check, swap the pool in, rebuild routing, save state.
    /// Returns the replaced pool, if any, and the state write to wait for. State is saved
    /// whatever the outcome (as upstream).
    fn install(
        &self,
        name: &str,
        settings: Settings,
        pool: Arc<Pool>,
    ) -> (Result<Option<Arc<Pool>>, String>, PendingWrite) {
        let mut registry = self.registry();
        let result = self.install_locked(&mut registry, name, settings, pool);
        (result, self.save_locked(&registry))
    }

    fn install_locked(
        &self,
        registry: &mut BTreeMap<String, Arc<Service>>,
        name: &str,
        settings: Settings,
        pool: Arc<Pool>,
    ) -> Result<Option<Arc<Pool>>, String> {
        let existing = registry.get(name).cloned();
        let settings = Arc::new(settings);
        // The table is built before anything changes, so a conflict leaves everything as it was.
        let candidate = match &existing {
            Some(service) => Arc::clone(service),
            None => Service::new(
                name,
                Arc::clone(&settings),
                Arc::clone(&pool),
                self.metrics.as_ref().map(|m| m.service(name)),
            ),
        };
        let table = build_table(registry, Some((name, &settings.options, &candidate)))
            .map_err(|e| {
                if let RouteError::Conflict { owner } = &e {
                    tracing::error!(service = %owner, "Host settings conflict with another service");
                }
                e.to_string()
            })?;
        // A new service already holds both; an existing one swaps them in one store, so a
        // request never sees the new settings with the old pool.
        let replaced = existing.map(|service| {
            let previous = service.update(|state| {
                state.settings = Arc::clone(&settings);
                state.active = Arc::clone(&pool);
            });
            Arc::clone(&previous.active)
        });
        registry.insert(name.to_owned(), candidate);
        self.routes.store(table);
        apply_tls_inheritance(registry, &self.routes.load_full());
        Ok(replaced)
    }

    /// Removes a service; its in-flight requests finish on their own.
    pub async fn remove(&self, name: &str) -> Result<(), String> {
        self.change_saved(|registry| {
            match registry.remove(name) {
                Some(service) => {
                    // Removing bindings cannot conflict.
                    if let Ok(table) = build_table(registry, None) {
                        self.routes.store(table);
                    }
                    apply_tls_inheritance(registry, &self.routes.load_full());
                    service.dispose();
                    self.tls.remove(name);
                    if let Some(metrics) = &self.metrics {
                        metrics.set_certificate_expiry(name, Vec::new());
                    }
                    Ok(())
                }
                None => Err(SERVICE_NOT_FOUND.to_owned()),
            }
        })
        .await
    }

    /// The service called `name`, if deployed.
    pub(crate) fn service(&self, name: &str) -> Option<Arc<Service>> {
        self.registry().get(name).cloned()
    }

    /// Saves the state file now; returns once it is on disk.
    async fn save(&self) {
        self.change_saved(|_| ()).await;
    }

    /// `pause`: hold new requests, then drain in-flight ones (spec §5.1).
    pub async fn pause(
        &self,
        name: &str,
        drain_timeout: GoDuration,
        max_pause: GoDuration,
    ) -> Result<(), String> {
        let result = match self.service(name) {
            Some(service) => {
                service.pause.pause(max_pause.to_std());
                tracing::info!(service = %name, "Service paused");
                service.drain(drain_timeout.to_std()).await;
                tracing::info!(service = %name, "Service drained");
                Ok(())
            }
            None => Err(SERVICE_NOT_FOUND.to_owned()),
        };
        // Saved after draining, and even on failure, as upstream does.
        self.save().await;
        result
    }

    /// `stop`: answer 503 with `message` (waiting requests too), then drain (spec §5.2).
    pub async fn stop(
        &self,
        name: &str,
        drain_timeout: GoDuration,
        message: &str,
    ) -> Result<(), String> {
        let result = match self.service(name) {
            Some(service) => {
                service.pause.stop(message);
                tracing::info!(service = %name, "Service stopped");
                service.drain(drain_timeout.to_std()).await;
                tracing::info!(service = %name, "Service drained");
                Ok(())
            }
            None => Err(SERVICE_NOT_FOUND.to_owned()),
        };
        self.save().await;
        result
    }

    /// `resume`: back to running; held requests proceed in arrival order (spec §5.3).
    pub async fn resume(&self, name: &str) -> Result<(), String> {
        let result = match self.service(name) {
            Some(service) => {
                service.pause.resume();
                tracing::info!(service = %name, "Service resumed");
                Ok(())
            }
            None => Err(SERVICE_NOT_FOUND.to_owned()),
        };
        self.save().await;
        result
    }

    /// `rollout deploy`: a second, health-gated pool in the rollout slot; the previous rollout
    /// pool is drained (spec §6). Routing changes only once a split is set.
    pub async fn rollout_deploy(&self, req: RolloutDeployRequest) -> Result<(), String> {
        let service = self
            .service(&req.service)
            .ok_or_else(|| SERVICE_NOT_FOUND.to_owned())?;
        let targets = json_list(&req.target_urls);
        tracing::info!(service = %req.service, json.targets = %targets, "Deploying for rollout");
        // The rollout pool uses the service's current target options.
        let target_options = service.state().settings.target_options.clone();
        let pool = build_pool(&req.target_urls, &req.reader_urls, &target_options)?;
        pool.start_health_checks();
        if !pool.wait_healthy(req.deploy_timeout.to_std()).await {
            pool.dispose();
            return Err(unhealthy_message(req.deploy_timeout));
        }

        let replaced = self
            .change_saved(|registry| {
                // The service may have been removed or replaced while the pool became healthy.
                match registry.get(&req.service) {
                    Some(current) if Arc::ptr_eq(current, &service) => {
                        let previous =
                            current.update(|state| state.rollout = Some(Arc::clone(&pool)));
                        Ok(previous.rollout.clone())
                    }
                    _ => Err(SERVICE_NOT_FOUND.to_owned()),
                }
            })
            .await;
        match replaced {
            Ok(Some(old)) => {
                old.dispose();
                old.drain(req.drain_timeout.to_std()).await;
            }
            Ok(None) => {}
            Err(e) => {
                pool.dispose();
                return Err(e);
            }
        }
        tracing::info!(service = %req.service, json.targets = %targets, "Deployed for rollout");
        Ok(())
    }

    /// `rollout set`: replaces the split; needs a rollout pool (spec §6).
    pub async fn rollout_set(
        &self,
        name: &str,
        percentage: i64,
        allowlist: Vec<String>,
    ) -> Result<(), String> {
        self.change_saved(|registry| {
            match registry.get(name) {
                None => Err(SERVICE_NOT_FOUND.to_owned()),
                Some(service) if service.state().rollout.is_none() => {
                    Err("rollout target not set".to_owned())
                }
                Some(service) => {
                    let list = json_list(&allowlist);
                    let split = Arc::new(RolloutSplit::new(percentage, allowlist));
                    service.update(|state| state.split = Some(Arc::clone(&split)));
                    tracing::info!(service = %name, percentage, json.allowlist = %list, "Set rollout split");
                    Ok(())
                }
            }
        })
        .await
    }

    /// `rollout stop`: all traffic back to the active pool; the rollout pool stays (spec §6).
    pub async fn rollout_stop(&self, name: &str) -> Result<(), String> {
        self.change_saved(|registry| match registry.get(name) {
            None => Err(SERVICE_NOT_FOUND.to_owned()),
            Some(service) => {
                service.update(|state| state.split = None);
                tracing::info!(service = %name, "Stopped rollout");
                Ok(())
            }
        })
        .await
    }

    /// Describes every service for `list`, sorted by name.
    pub fn list(&self) -> Vec<ServiceDescription> {
        let registry = self.registry();
        registry.values().map(|s| describe(s)).collect()
    }

    /// Snapshots the services (the registry lock orders snapshots) and starts writing them on
    /// a blocking thread; the caller releases the lock, then waits for the write.
    fn save_locked(&self, registry: &BTreeMap<String, Arc<Service>>) -> PendingWrite {
        self.state.save(registry)
    }

    /// Runs `change` under the registry lock, snapshots the services before the lock is
    /// released, and returns `change`'s result once that snapshot (or a newer one) is on disk.
    async fn change_saved<R>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, Arc<Service>>) -> R,
    ) -> R {
        let (result, saving) = {
            let mut registry = self.registry();
            let result = change(&mut registry);
            (result, self.save_locked(&registry))
        };
        saving.wait().await;
        result
    }

    /// Waits for the state writes in flight (at shutdown, so that none is cut short).
    pub async fn finish_state_writes(&self) {
        self.state.finish().await;
    }

    /// Restores the saved state, service by service (spec §1.5, §14.5).
    pub fn restore(&self) {
        let Some(saved) = crate::state::load(self.state.path()) else {
            return;
        };
        let mut registry = self.registry();
        for service in saved {
            let name = service.name.clone();
            let prepared = match self.tls.prepare(&name, &service.options) {
                Ok(prepared) => prepared,
                Err(error) => {
                    tracing::error!(service = %name, error = %error, "Failed to restore service");
                    continue;
                }
            };
            let pool = match build_pool(&service.writers, &service.readers, &service.target_options)
            {
                Ok(pool) => pool,
                Err(error) => {
                    tracing::error!(service = %name, error = %error, "Failed to restore service");
                    continue;
                }
            };
            let rollout = match &service.rollout {
                Some((writers, readers)) if !(writers.is_empty() && readers.is_empty()) => {
                    match build_pool(writers, readers, &service.target_options) {
                        Ok(pool) => Some(pool),
                        Err(error) => {
                            tracing::error!(service = %name, error = %error, "Failed to restore service");
                            continue;
                        }
                    }
                }
                _ => None,
            };
            let error_pages = match load_error_pages(&name, &service.options) {
                Ok(pages) => pages,
                Err(error) => {
                    pool.dispose();
                    tracing::error!(service = %name, error = %error, "Failed to restore service");
                    continue;
                }
            };
            pool.mark_all_healthy();
            pool.start_health_checks();
            let settings = Settings::new(service.options, service.target_options.clone())
                .with_error_pages(error_pages);
            match self.install_locked(&mut registry, &name, settings, pool) {
                Ok(_) => {
                    self.tls.install(&name, prepared);
                    if let Some(s) = registry.get(&name) {
                        self.record_certificate(&name, &s.state().settings.options);
                    }
                    if let Some(s) = registry.get(&name) {
                        if let Some(rollout) = &rollout {
                            rollout.mark_all_healthy();
                            rollout.start_health_checks();
                        }
                        let split = service.split.map(Arc::new);
                        s.update(|state| {
                            if let Some(rollout) = &rollout {
                                state.rollout = Some(Arc::clone(rollout));
                            }
                            state.split = split.clone();
                        });
                        // The same transitions as `pause`/`stop`, so a restored paused
                        // service can be resumed or stopped (upstream crashes, §13.3).
                        s.pause.apply(&service.pause);
                    }
                }
                Err(error) => {
                    tracing::error!(service = %name, error = %error, "Failed to restore service");
                }
            }
        }
    }

    /// The health of every target of every service, for the metrics endpoint.
    pub fn target_health(&self) -> Vec<TargetHealth> {
        let registry = self.registry();
        let mut out = Vec::new();
        for service in registry.values() {
            let state = service.state();
            let active = Arc::clone(&state.active);
            let rollout = state.rollout.clone();
            let pools = std::iter::once(("active", active)).chain(rollout.map(|p| ("rollout", p)));
            for (pool_name, pool) in pools {
                for t in pool.describe() {
                    out.push(TargetHealth {
                        service: service.name.to_string(),
                        target: t.address,
                        pool: pool_name,
                        role: if t.is_reader { "reader" } else { "writer" },
                        state: t.state.as_str(),
                    });
                }
            }
        }
        out
    }

    /// Records the expiry of a service's custom certificate for the metrics (ACME
    /// certificates live inside the TLS store, which does not expose their dates).
    fn record_certificate(&self, name: &str, options: &ServiceOptions) {
        let Some(metrics) = &self.metrics else { return };
        let expiry = (!options.tls_certificate_path.is_empty())
            .then(|| certificate_not_after(&options.tls_certificate_path))
            .flatten();
        let hosts = match expiry {
            Some(at) => {
                let mut hosts: Vec<(String, i64)> = options
                    .hosts
                    .iter()
                    .filter(|h| !h.is_empty())
                    .map(|h| (h.clone(), at))
                    .collect();
                if hosts.is_empty() {
                    hosts.push((String::new(), at));
                }
                hosts
            }
            None => Vec::new(),
        };
        metrics.set_certificate_expiry(name, hosts);
    }

    /// Runs one control command.
    pub async fn command(&self, command: Command) -> Answer {
        let result = match command {
            Command::Deploy(req) => self.deploy(req).await,
            Command::Remove { service } => self.remove(&service).await,
            Command::Pause {
                service,
                drain_timeout,
                pause_timeout,
            } => self.pause(&service, drain_timeout, pause_timeout).await,
            Command::Stop {
                service,
                drain_timeout,
                message,
            } => self.stop(&service, drain_timeout, &message).await,
            Command::Resume { service } => self.resume(&service).await,
            Command::List => {
                return Answer::List {
                    services: self.list(),
                }
            }
            Command::RolloutDeploy(req) => self.rollout_deploy(req).await,
            Command::RolloutSet {
                service,
                percentage,
                allowlist,
            } => self.rollout_set(&service, percentage, allowlist).await,
            Command::RolloutStop { service } => self.rollout_stop(&service).await,
        };
        match result {
            Ok(()) => Answer::Ok,
            Err(message) => Answer::error(message),
        }
    }
}

/// The error of every command naming a service that does not exist.
const SERVICE_NOT_FOUND: &str = "service not found";

/// The error of a deploy whose targets did not all become healthy in time (spec §4.5).
fn unhealthy_message(timeout: GoDuration) -> String {
    format!("{UNHEALTHY_PREFIX} ({timeout})")
}

/// The start of [`unhealthy_message`], which tells the deploy outcome apart in metrics.
const UNHEALTHY_PREFIX: &str = "target failed to become healthy within configured timeout";

/// The `notAfter` time (Unix seconds) of the first certificate in a PEM file.
fn certificate_not_after(path: &str) -> Option<i64> {
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_file(path).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

impl kamal_control::server::Handler for App {
    fn handle(&self, req: Command) -> impl std::future::Future<Output = Answer> + Send {
        self.command(req)
    }
}

impl HttpHandler for App {
    fn call(
        self: Arc<Self>,
        mut req: Request<RequestBody>,
        conn: ConnInfo,
    ) -> impl std::future::Future<Output = Response<ResponseBody>> + Send + 'static {
        let arrival = Arrival::now();
        stamp_request(&mut req, arrival.wall);
        // Boxed once here, so neither this future nor the response body carries it inline.
        let log = Box::new(AccessLog::begin(&req, conn, arrival));
        // One async block, routing included: every level of async function would keep its
        // own copy of the request in the future that each request moves into place.
        async move {
            let mut log = log;
            // ACME HTTP-01 challenges are answered before routing (spec §10.4).
            let resp = match self.tls.http01(&req) {
                Some(answer) => {
                    self.count_unmatched(&mut log);
                    answer
                }
                None => {
                    let routes = self.routes.load();
                    match routes.lookup(request_authority(&req), req.uri().path()) {
                        Some(route) => {
                            let service = Arc::clone(route.value);
                            match service.begin(req, route.prefix, conn, &mut log) {
                                Begin::Answer(resp) => resp,
                                Begin::Forward(Forward {
                                    target,
                                    sending,
                                    after,
                                }) => {
                                    // No snapshot is held while the target answers: guards
                                    // kept across waits use up arc-swap's fast slots.
                                    drop(routes);
                                    let forwarded = sending.start(&self.forwarder, &target).await;
                                    after.finish(
                                        forwarded.map(|r| r.map(MaybeBuffered::streaming)),
                                        &mut log,
                                    )
                                }
                                // Boxed: only this pointer is kept in every request's future.
                                Begin::General(req) => {
                                    Box::pin(service.serve(
                                        &self,
                                        req,
                                        route.prefix,
                                        conn,
                                        &mut log,
                                    ))
                                    .await
                                }
                                Begin::Paused(req) => {
                                    let state = service.state();
                                    Box::pin(service.proceed(
                                        &self,
                                        req,
                                        route.prefix,
                                        conn,
                                        &mut log,
                                        state,
                                    ))
                                    .await
                                }
                            }
                        }
                        None => {
                            self.count_unmatched(&mut log);
                            rescue::page(StatusCode::NOT_FOUND, None)
                        }
                    }
                }
            };
            log.set_response(&resp);
            let mut resp = resp;
            if let Some(closed) = resp
                .extensions_mut()
                .remove::<kamal_balancer::TunnelClosed>()
            {
                // An upgraded connection's request ends when its tunnel closes (spec §11.2).
                tokio::spawn(async move {
                    closed.wait().await;
                    drop(log);
                });
                return resp;
            }
            resp.map(|body| body.with_log(log))
        }
    }
}

/// `X-Request-Start`: when the proxy received the request, as `t=<unix milliseconds>`.
const X_REQUEST_START: HeaderName = HeaderName::from_static("x-request-start");
/// `X-Request-ID`: a UUID identifying the request in logs, unless the client sent one.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Sets `X-Request-Start` and `X-Request-ID`, unless the client sent non-empty ones (spec
/// §7.1). Both values are formatted on the stack; each header costs one lookup and one copy
/// into the map.
pub fn stamp_request<B>(req: &mut Request<B>, arrived: SystemTime) {
    let headers = req.headers_mut();
    stamp_unless_set(headers, X_REQUEST_START, || request_start(arrived));
    stamp_unless_set(headers, X_REQUEST_ID, new_request_id);
}

/// Sets `name` to `value()` unless the request carries a non-empty one (one hashed lookup).
fn stamp_unless_set(
    headers: &mut http::HeaderMap,
    name: HeaderName,
    value: impl FnOnce() -> HeaderValue,
) {
    use http::header::Entry;
    match headers.entry(name) {
        Entry::Occupied(e) if !e.get().is_empty() => {}
        Entry::Occupied(mut e) => {
            e.insert(value());
        }
        Entry::Vacant(e) => {
            e.insert(value());
        }
    }
}

/// `t=<unix milliseconds>`. Requests arrive many to a millisecond, so each thread keeps the
/// last value it made: the next request of the same millisecond gets a clone (a reference
/// count) instead of formatting and allocating its own.
fn request_start(arrived: SystemTime) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u64, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    // u64 milliseconds last 584 million years; formatting a u128 costs a slow division.
    let ms = u64::try_from(
        arrived
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX);
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((at, value)) if *at == ms => value.clone(),
            _ => {
                let mut digits = itoa::Buffer::new();
                let digits = digits.format(ms).as_bytes();
                let mut buf = [0u8; 22];
                buf[..2].copy_from_slice(b"t=");
                buf[2..2 + digits.len()].copy_from_slice(digits);
                let value = HeaderValue::from_bytes(&buf[..2 + digits.len()])
                    .expect("digits are a valid header value");
                *last = Some((ms, value.clone()));
                value
            }
        }
    })
}

/// A random (v4) UUID, lower-case and hyphenated.
fn new_request_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).expect("a UUID is a valid header value")
}

/// The request's host: the URI authority (HTTP/2, absolute-form) or the `Host` header.
pub(crate) fn request_authority<B>(req: &Request<B>) -> &str {
    if let Some(a) = req.uri().authority() {
        return a.as_str();
    }
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
}

fn build_pool(
    writers: &[String],
    readers: &[String],
    target_options: &TargetOptions,
) -> Result<Arc<Pool>, String> {
    let parse = |list: &[String]| -> Result<Vec<TargetAddr>, String> {
        list.iter()
            .map(|t| TargetAddr::parse(t).map_err(|e| e.to_string()))
            .collect()
    };
    let hc = &target_options.health_check_config;
    let health = HealthConfig {
        path: hc.path.clone(),
        port: hc.port,
        interval: hc.interval.to_std(),
        timeout: hc.timeout.to_std(),
        host: hc.host.clone(),
    };
    Ok(Pool::new(parse(writers)?, parse(readers)?, health))
}

/// Builds the routing table from the registry, with `candidate` (re)placed under its name.
fn build_table(
    registry: &BTreeMap<String, Arc<Service>>,
    candidate: Option<(&str, &ServiceOptions, &Arc<Service>)>,
) -> Result<RouteTable<Arc<Service>>, RouteError> {
    let mut builder = RouteTable::builder();
    for (name, service) in registry {
        if candidate.is_some_and(|(n, _, _)| n == name) {
            continue;
        }
        let state = service.state();
        let settings = &state.settings;
        builder.insert(
            name,
            &settings.options.hosts,
            &settings.options.path_prefixes,
            Arc::clone(service),
        )?;
    }
    if let Some((name, options, service)) = candidate {
        builder.insert(
            name,
            &options.hosts,
            &options.path_prefixes,
            Arc::clone(service),
        )?;
    }
    Ok(builder.build())
}

/// Non-root services take `tls`/`tls_redirect` from their first host's root service (§3.7).
fn apply_tls_inheritance(
    registry: &BTreeMap<String, Arc<Service>>,
    table: &RouteTable<Arc<Service>>,
) {
    for service in registry.values() {
        let state = service.state();
        let settings = &state.settings;
        if settings.options.serves_root_path() {
            continue;
        }
        let host = settings
            .options
            .hosts
            .first()
            .map(String::as_str)
            .unwrap_or("");
        let (tls, redirect) = match table.lookup_host(host, "/") {
            Some(root) => {
                let root = root.value.state();
                let options = &root.settings.options;
                (options.tls_enabled, options.tls_redirect)
            }
            None => (false, true),
        };
        if settings.options.tls_enabled != tls || settings.options.tls_redirect != redirect {
            let mut options = settings.options.clone();
            options.tls_enabled = tls;
            options.tls_redirect = redirect;
            let settings = Arc::new(
                Settings::new(options, settings.target_options.clone())
                    .with_error_pages(settings.error_pages.clone()),
            );
            service.update(|state| state.settings = Arc::clone(&settings));
        }
    }
}

/// Loads `--error-pages` (spec §9.2); `None` when the service has none.
fn load_error_pages(
    service: &str,
    options: &ServiceOptions,
) -> Result<Option<Arc<ErrorPages>>, String> {
    let path = &options.error_page_path;
    if path.is_empty() {
        return Ok(None);
    }
    match ErrorPages::load(path) {
        Ok(pages) => {
            tracing::debug!(service = %service, path = %path, "Using custom error pages");
            Ok(Some(Arc::new(pages)))
        }
        Err(error) => {
            tracing::error!(service = %service, path = %path, error = %error, "Unable to parse custom error pages");
            Err(error)
        }
    }
}

fn pool_tls(app: &App, name: &str) -> bool {
    app.registry()
        .get(name)
        .is_some_and(|s| s.state().settings.options.tls_enabled)
}

fn describe(service: &Service) -> ServiceDescription {
    let state = service.state();
    let settings = &state.settings;
    let pool = &state.active;
    let (mut targets, mut readers) = (Vec::new(), Vec::new());
    for t in pool.describe() {
        let d = TargetDescription {
            address: t.address,
            state: t.state.as_str().to_owned(),
        };
        if t.is_reader {
            readers.push(d);
        } else {
            targets.push(d);
        }
    }
    let (mut rollout_targets, mut rollout_readers) = (Vec::new(), Vec::new());
    if let Some(pool) = &state.rollout {
        for t in pool.describe() {
            let d = TargetDescription {
                address: t.address,
                state: t.state.as_str().to_owned(),
            };
            if t.is_reader {
                rollout_readers.push(d);
            } else {
                rollout_targets.push(d);
            }
        }
    }
    let pause = service.pause.snapshot();
    ServiceDescription {
        name: service.name.to_string(),
        hosts: settings
            .options
            .hosts
            .iter()
            .filter(|h| !h.is_empty())
            .cloned()
            .collect(),
        paths: settings.options.path_prefixes.clone(),
        targets,
        readers,
        rollout_targets,
        rollout_readers,
        state: pause.state.as_str().to_owned(),
        tls: settings.options.tls_enabled,
        stop_message: pause.message,
    }
}

#[cfg(test)]
mod stamp_tests {
    use super::*;
    use std::time::Duration;

    fn stamped(headers: &[(&str, &str)], arrived: SystemTime) -> http::HeaderMap {
        let mut req = Request::builder();
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let mut req = req.body(()).unwrap();
        stamp_request(&mut req, arrived);
        req.into_parts().0.headers
    }

    #[test]
    fn generated_stamps_are_the_arrival_milliseconds_and_a_v4_uuid() {
        let arrived = UNIX_EPOCH + Duration::from_millis(1_764_000_000_123);
        let headers = stamped(&[], arrived);
        assert_eq!(headers["x-request-start"], "t=1764000000123");
        let id = headers["x-request-id"].to_str().unwrap();
        let parsed = uuid::Uuid::parse_str(id).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(
            id,
            parsed.hyphenated().to_string(),
            "lower-case, hyphenated"
        );
        // Each request gets its own id.
        assert_ne!(
            stamped(&[], arrived)["x-request-id"],
            headers["x-request-id"]
        );
    }

    #[test]
    fn the_start_stamp_follows_each_millisecond_on_one_thread() {
        // Each thread reuses its last value within a millisecond; a new millisecond, or an
        // earlier one (the wall clock can step back), gets its own.
        let at =
            |ms| stamped(&[], UNIX_EPOCH + Duration::from_millis(ms))["x-request-start"].clone();
        assert_eq!(at(1_000), "t=1000");
        assert_eq!(at(1_000), "t=1000");
        assert_eq!(at(1_001), "t=1001");
        assert_eq!(at(999), "t=999");
        assert_eq!(at(1_001), "t=1001");
    }

    #[test]
    fn a_clock_past_u64_milliseconds_is_stamped_with_the_largest() {
        // The first stamp on this test's thread: no cached value stands in for it.
        let beyond = UNIX_EPOCH + Duration::from_secs(u64::MAX / 100);
        assert_eq!(
            stamped(&[], beyond)["x-request-start"],
            "t=18446744073709551615"
        );
    }

    #[test]
    fn client_values_are_kept_and_empty_ones_replaced() {
        let arrived = UNIX_EPOCH + Duration::from_millis(5);
        let headers = stamped(
            &[("x-request-id", "client-id"), ("x-request-start", "")],
            arrived,
        );
        assert_eq!(headers["x-request-id"], "client-id");
        assert_eq!(headers["x-request-start"], "t=5");
        let headers = stamped(&[("x-request-id", ""), ("x-request-start", "t=1")], arrived);
        assert_eq!(headers["x-request-start"], "t=1");
        assert_eq!(headers["x-request-id"].len(), 36);
        assert_eq!(headers.get_all("x-request-id").iter().count(), 1);
    }

    #[test]
    fn a_clock_before_the_epoch_or_far_ahead_still_gives_valid_values() {
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(stamped(&[], before)["x-request-start"], "t=0");
        let far = UNIX_EPOCH + Duration::from_secs(u64::MAX / 1000);
        let start = stamped(&[], far)["x-request-start"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(start.starts_with("t=18446744073709551"), "{start}");
        assert_eq!(stamped(&[], far)["x-request-id"].len(), 36);
    }
}
