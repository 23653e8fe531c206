//! Prometheus metrics (spec §12): upstream's request counter, duration histogram and in-flight
//! gauge, the `process_*` family, and operator metrics upstream lacks (target health, deploys,
//! certificate expiry), rendered in the text exposition format 0.0.4 on `--metrics-port`.
//!
//! The request path costs a few relaxed atomic operations: each service's series live in a
//! [`ServiceMetrics`] resolved once per deploy (and carried by the access-log entry), and a
//! request finds its (method, status) series by two array indexes. A series is allocated the
//! first time its method and status occur; no lock is ever taken on the request path.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response};

use crate::access_log::ConnInfo;
use crate::app::App;
use crate::body::ResponseBody;
use crate::serve::{HttpHandler, RequestBody};

/// Upper bounds of the request-duration buckets in nanoseconds (Prometheus' defaults:
/// 0.005 … 10 seconds); the `+Inf` bucket is the total count.
const REQUEST_BUCKETS_NS: [u64; 11] = [
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Upper bounds of the deploy-duration buckets in seconds: deploys wait for health checks,
/// so they take seconds to minutes.
const DEPLOY_BUCKETS_S: [f64; 10] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// The method labels upstream uses; everything else is `OTHER`.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "OTHER",
];

/// Status codes hyper can represent: 100 to 999.
const STATUS_MIN: u16 = 100;
const STATUS_SLOTS: usize = 900;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The index of a method's label in [`METHODS`]; compared case-sensitively, as upstream does.
fn method_index(method: &Method) -> usize {
    match method.as_str() {
        "GET" => 0,
        "HEAD" => 1,
        "POST" => 2,
        "PUT" => 3,
        "PATCH" => 4,
        "DELETE" => 5,
        "CONNECT" => 6,
        "OPTIONS" => 7,
        "TRACE" => 8,
        _ => 9,
    }
}

/// One (service, method, status) series: the request count (shared by the counter and the
/// histogram, which are always updated together), the per-bucket counts (not cumulative) and
/// the sum of durations in nanoseconds.
#[derive(Debug, Default)]
struct Series {
    count: AtomicU64,
    buckets: [AtomicU64; REQUEST_BUCKETS_NS.len()],
    sum_ns: AtomicU64,
}

/// The series of one status code for one method, created on first use.
type StatusSlots = Box<[OnceLock<Box<Series>>]>;

/// The request metrics of one service (or of unmatched requests, service `""`).
#[derive(Debug)]
pub struct ServiceMetrics {
    name: Arc<str>,
    in_flight: AtomicI64,
    /// The gauge series appears on the service's first request (as upstream's lazy series).
    in_flight_seen: AtomicBool,
    methods: [OnceLock<StatusSlots>; METHODS.len()],
}

impl ServiceMetrics {
    fn new(name: &str) -> Self {
        ServiceMetrics {
            name: Arc::from(name),
            in_flight: AtomicI64::new(0),
            in_flight_seen: AtomicBool::new(false),
            methods: Default::default(),
        }
    }

    /// The service name this series set is labelled with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A request entered the service (spec §7.1 step 7).
    pub fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if !self.in_flight_seen.load(Ordering::Relaxed) {
            self.in_flight_seen.store(true, Ordering::Relaxed);
        }
    }

    /// A request left the service.
    pub fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a finished request (after its access-log line, spec §11.2).
    pub fn observe(&self, method: &Method, status: u16, duration: Duration) {
        let series = self.series(method_index(method), status);
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        if let Some(i) = REQUEST_BUCKETS_NS.iter().position(|&le| ns <= le) {
            series.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        series.sum_ns.fetch_add(ns, Ordering::Relaxed);
        series.count.fetch_add(1, Ordering::Relaxed);
    }

    fn series(&self, method: usize, status: u16) -> &Series {
        let slots = self.methods[method].get_or_init(|| {
            (0..STATUS_SLOTS)
                .map(|_| OnceLock::new())
                .collect::<Vec<_>>()
                .into_boxed_slice()
        });
        let index = usize::from(status.saturating_sub(STATUS_MIN)).min(STATUS_SLOTS - 1);
        slots[index].get_or_init(Box::default)
    }

    /// Every series created so far as (method, status, series), sorted as Go's client sorts
    /// label values (method name, then status as a string).
    fn created(&self) -> Vec<(&'static str, u16, &Series)> {
        let mut out = Vec::new();
        for (m, slots) in self.methods.iter().enumerate() {
            let Some(slots) = slots.get() else { continue };
            for (i, slot) in slots.iter().enumerate() {
                if let Some(series) = slot.get() {
                    out.push((METHODS[m], STATUS_MIN + i as u16, &**series));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(&b.1)));
        out
    }
}

/// How a deploy ended, as the `outcome` label shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeployOutcome {
    /// The new targets serve the service.
    Succeeded,
    /// The targets did not become healthy within the deploy timeout.
    Unhealthy,
    /// Anything else: invalid options, certificate errors, host conflicts.
    Failed,
}

impl DeployOutcome {
    fn label(self) -> &'static str {
        match self {
            DeployOutcome::Succeeded => "succeeded",
            DeployOutcome::Unhealthy => "unhealthy",
            DeployOutcome::Failed => "failed",
        }
    }
}

/// Count, per-bucket counts and sum of one (service, outcome) deploy series.
#[derive(Debug, Default, Clone)]
struct DeployStats {
    count: u64,
    buckets: [u64; DEPLOY_BUCKETS_S.len()],
    sum: f64,
}

/// The health of one target, read at scrape time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetHealth {
    /// Service name.
    pub service: String,
    /// Target address as deployed.
    pub target: String,
    /// `active` or `rollout`.
    pub pool: &'static str,
    /// `writer` or `reader`.
    pub role: &'static str,
    /// `adding`, `healthy`, `unhealthy` or `draining`.
    pub state: &'static str,
}

/// The target states exported as a state set (one series per state, 1 for the current one).
const TARGET_STATES: [&str; 4] = ["adding", "healthy", "unhealthy", "draining"];

/// All metrics of the process. Only the control plane and scrapes take its locks.
#[derive(Debug)]
pub struct Metrics {
    services: Mutex<BTreeMap<String, Arc<ServiceMetrics>>>,
    unmatched: Arc<ServiceMetrics>,
    deploys: Mutex<BTreeMap<(String, DeployOutcome), DeployStats>>,
    /// Custom certificates' expiry (Unix seconds) per service, per host.
    certificates: Mutex<BTreeMap<String, Vec<(String, i64)>>>,
    scrapes: AtomicU64,
    scrapes_in_flight: AtomicI64,
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics {
            services: Mutex::new(BTreeMap::new()),
            unmatched: Arc::new(ServiceMetrics::new("")),
            deploys: Mutex::new(BTreeMap::new()),
            certificates: Mutex::new(BTreeMap::new()),
            scrapes: AtomicU64::new(0),
            scrapes_in_flight: AtomicI64::new(0),
        })
    }

    /// The series of service `name`, created on first use and kept after the service is
    /// removed (as upstream, whose series are never deleted).
    pub fn service(&self, name: &str) -> Arc<ServiceMetrics> {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            services
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(ServiceMetrics::new(name))),
        )
    }

    /// The series of requests no service matched (`service=""`).
    pub fn unmatched(&self) -> &Arc<ServiceMetrics> {
        &self.unmatched
    }

    /// Records a finished deploy.
    pub fn record_deploy(&self, service: &str, outcome: DeployOutcome, duration: Duration) {
        let secs = duration.as_secs_f64();
        let mut deploys = self.deploys.lock().unwrap_or_else(|e| e.into_inner());
        let stats = deploys.entry((service.to_owned(), outcome)).or_default();
        stats.count += 1;
        stats.sum += secs;
        if let Some(i) = DEPLOY_BUCKETS_S.iter().position(|&le| secs <= le) {
            stats.buckets[i] += 1;
        }
    }

    /// Sets (or with an empty list, clears) the custom-certificate expiry of a service's hosts.
    pub fn set_certificate_expiry(&self, service: &str, hosts: Vec<(String, i64)>) {
        let mut certs = self.certificates.lock().unwrap_or_else(|e| e.into_inner());
        if hosts.is_empty() {
            certs.remove(service);
        } else {
            certs.insert(service.to_owned(), hosts);
        }
    }

    /// The whole exposition; `targets` is the current target health.
    pub fn render(&self, targets: &[TargetHealth]) -> String {
        let mut out = String::with_capacity(4096);
        let services: Vec<Arc<ServiceMetrics>> = {
            let map = self.services.lock().unwrap_or_else(|e| e.into_inner());
            let mut list: Vec<_> = map.values().cloned().collect();
            // `""` sorts first, as Go's client sorts label values.
            if !map.contains_key("") {
                list.insert(0, Arc::clone(&self.unmatched));
            }
            list
        };
        self.render_certificates(&mut out);
        self.render_deploys(&mut out);
        render_in_flight(&mut out, &services);
        render_request_durations(&mut out, &services);
        render_requests_total(&mut out, &services);
        render_targets(&mut out, targets);
        process::render(&mut out);
        self.render_handler(&mut out);
        out
    }

    fn render_certificates(&self, out: &mut String) {
        let certs = self.certificates.lock().unwrap_or_else(|e| e.into_inner());
        let name = "kamal_proxy_certificate_expiry_timestamp_seconds";
        let family = header(
            out,
            name,
            "Expiry time of custom TLS certificates (Unix seconds), labeled by service and host.",
            "gauge",
        );
        let mut rows: Vec<(&str, &str, i64)> = certs
            .iter()
            .flat_map(|(s, hosts)| hosts.iter().map(move |(h, t)| (h.as_str(), s.as_str(), *t)))
            .collect();
        rows.sort();
        for (host, service, at) in rows {
            let _ = writeln!(
                out,
                "{name}{{host=\"{}\",service=\"{}\"}} {}",
                Escaped(host),
                Escaped(service),
                GoFloat(at as f64)
            );
        }
        family.end(out);
    }

    fn render_deploys(&self, out: &mut String) {
        let deploys = self.deploys.lock().unwrap_or_else(|e| e.into_inner());
        let name = "kamal_proxy_deploy_duration_seconds";
        let family = header(
            out,
            name,
            "Duration of deploys, labeled by service and outcome.",
            "histogram",
        );
        for ((service, outcome), stats) in deploys.iter() {
            let labels = format!(
                "outcome=\"{}\",service=\"{}\"",
                outcome.label(),
                Escaped(service)
            );
            let mut cumulative = 0;
            for (le, n) in DEPLOY_BUCKETS_S.iter().zip(stats.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels},le=\"{}\"}} {}",
                    GoFloat(*le),
                    GoFloat(cumulative as f64)
                );
            }
            let count = GoFloat(stats.count as f64);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", GoFloat(stats.sum));
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
        family.end(out);
        let name = "kamal_proxy_deploys_total";
        let family = header(
            out,
            name,
            "Deploys, labeled by service and outcome.",
            "counter",
        );
        for ((service, outcome), stats) in deploys.iter() {
            let _ = writeln!(
                out,
                "{name}{{outcome=\"{}\",service=\"{}\"}} {}",
                outcome.label(),
                Escaped(service),
                GoFloat(stats.count as f64)
            );
        }
        family.end(out);
    }

    fn render_handler(&self, out: &mut String) {
        let name = "promhttp_metric_handler_requests_in_flight";
        let family = header(
            out,
            name,
            "Current number of scrapes being served.",
            "gauge",
        );
        let in_flight = self.scrapes_in_flight.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name} {}", GoFloat(in_flight as f64));
        family.end(out);
        let name = "promhttp_metric_handler_requests_total";
        let family = header(
            out,
            name,
            "Total number of scrapes by HTTP status code.",
            "counter",
        );
        // A scrape cannot fail here, but the series exist as in promhttp.
        let ok = self.scrapes.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}{{code=\"200\"}} {}", GoFloat(ok as f64));
        let _ = writeln!(out, "{name}{{code=\"500\"}} 0");
        let _ = writeln!(out, "{name}{{code=\"503\"}} 0");
        family.end(out);
    }

    /// Serves one scrape: the exposition for every path (spec §12.1).
    fn scrape(&self, targets: &[TargetHealth]) -> Response<ResponseBody> {
        self.scrapes_in_flight.fetch_add(1, Ordering::Relaxed);
        let body = self.render(targets);
        // As promhttp, a scrape counts itself only once it has been rendered.
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        self.scrapes_in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut resp = Response::new(ResponseBody::full(body));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE),
        );
        resp
    }
}

/// A metric family being written: where it starts and where its samples start.
#[must_use = "call `end` so an empty family is left out"]
struct Family {
    start: usize,
    samples: usize,
}

impl Family {
    /// Leaves the family out when it got no samples, as Go's client does.
    fn end(self, out: &mut String) {
        if out.len() == self.samples {
            out.truncate(self.start);
        }
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) -> Family {
    let start = out.len();
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    Family {
        start,
        samples: out.len(),
    }
}

/// A sample value as Go's client writes it (`strconv.FormatFloat(v, 'g', -1, 64)`): shortest
/// round-trip digits, exponent form below 1e-4 and from 1e6 on (`1e+06`, `1.5e-05`).
struct GoFloat(f64);

impl std::fmt::Display for GoFloat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.is_nan() {
            return f.write_str("NaN");
        }
        if v.is_infinite() {
            return f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" });
        }
        if v == 0.0 {
            return f.write_str(if v.is_sign_negative() { "-0" } else { "0" });
        }
        // Rust's `{:e}` has the same shortest digits; only the exponent is written differently.
        let sci = format!("{v:e}");
        let (mantissa, e) = sci.split_once('e').unwrap_or((&sci, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        if (-4..6).contains(&e) {
            write!(f, "{v}")
        } else {
            let sign = if e < 0 { '-' } else { '+' };
            write!(f, "{mantissa}e{sign}{:02}", e.unsigned_abs())
        }
    }
}

fn render_in_flight(out: &mut String, services: &[Arc<ServiceMetrics>]) {
    let name = "kamal_proxy_http_in_flight_requests";
    let family = header(
        out,
        name,
        "Number of in-flight HTTP requests, labeled by service.",
        "gauge",
    );
    for s in services {
        if s.in_flight_seen.load(Ordering::Relaxed) {
            let _ = writeln!(
                out,
                "{name}{{service=\"{}\"}} {}",
                Escaped(&s.name),
                GoFloat(s.in_flight.load(Ordering::Relaxed) as f64)
            );
        }
    }
    family.end(out);
}

fn render_request_durations(out: &mut String, services: &[Arc<ServiceMetrics>]) {
    let name = "kamal_proxy_http_request_duration_seconds";
    let family = header(
        out,
        name,
        "Duration of HTTP requests, labeled by service, status code and method.",
        "histogram",
    );
    for s in services {
        for (method, status, series) in s.created() {
            // Read the count first: buckets incremented after it only make them larger, and
            // they are capped by it so a scrape never shows a bucket above `+Inf`.
            let count = series.count.load(Ordering::Relaxed);
            let labels = format!(
                "method=\"{method}\",service=\"{}\",status=\"{status}\"",
                Escaped(&s.name)
            );
            let mut cumulative = 0u64;
            for (le, n) in REQUEST_BUCKETS_NS.iter().zip(&series.buckets) {
                cumulative += n.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels},le=\"{}\"}} {}",
                    GoFloat(*le as f64 / 1e9),
                    GoFloat(cumulative.min(count) as f64)
                );
            }
            let total = GoFloat(count as f64);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
            let sum = series.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", GoFloat(sum));
            let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
        }
    }
    family.end(out);
}

fn render_requests_total(out: &mut String, services: &[Arc<ServiceMetrics>]) {
    let name = "kamal_proxy_http_requests_total";
    let family = header(
        out,
        name,
        "HTTP requests processed, labeled by service, status code and method.",
        "counter",
    );
    for s in services {
        for (method, status, series) in s.created() {
            let _ = writeln!(
                out,
                "{name}{{method=\"{method}\",service=\"{}\",status=\"{status}\"}} {}",
                Escaped(&s.name),
                GoFloat(series.count.load(Ordering::Relaxed) as f64)
            );
        }
    }
    family.end(out);
}

fn render_targets(out: &mut String, targets: &[TargetHealth]) {
    let name = "kamal_proxy_target_state";
    let family = header(
        out,
        name,
        "Health state of each target (1 for its current state), labeled by service, target, pool and role.",
        "gauge",
    );
    let mut sorted: Vec<&TargetHealth> = targets.iter().collect();
    sorted.sort_by(|a, b| {
        (a.pool, a.role, &a.service, &a.target).cmp(&(b.pool, b.role, &b.service, &b.target))
    });
    for t in sorted {
        for state in TARGET_STATES {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{}\",role=\"{}\",service=\"{}\",state=\"{state}\",target=\"{}\"}} {}",
                t.pool,
                t.role,
                Escaped(&t.service),
                Escaped(&t.target),
                u8::from(t.state == state)
            );
        }
    }
    family.end(out);
}

/// A label value escaped as the text format requires (`\`, `"`, newline).
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The metrics listener's handler: every path answers with the exposition (spec §12.1).
#[derive(Debug)]
pub struct Endpoint {
    metrics: Arc<Metrics>,
    app: Arc<App>,
}

impl Endpoint {
    /// The endpoint for `app`'s metrics.
    pub fn new(metrics: Arc<Metrics>, app: Arc<App>) -> Arc<Self> {
        Arc::new(Endpoint { metrics, app })
    }
}

impl HttpHandler for Endpoint {
    async fn call(
        self: Arc<Self>,
        _req: Request<RequestBody>,
        _conn: ConnInfo,
    ) -> Response<ResponseBody> {
        let targets = self.app.target_health();
        self.metrics.scrape(&targets)
    }
}

/// The `process_*` family, read from `/proc/self` on Linux (absent elsewhere).
mod process {
    use std::fmt::Write as _;

    /// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on every Linux ABI).
    const TICKS_PER_SECOND: f64 = 100.0;

    pub(super) fn render(out: &mut String) {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return;
        };
        // Fields after the parenthesised command name (which may itself contain spaces).
        let fields: Vec<&str> = match stat.rfind(')') {
            Some(i) => stat[i + 1..].split_whitespace().collect(),
            None => return,
        };
        // `fields[0]` is field 3 (state): field N is at N - 3.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();

        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            family(
                out,
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                "counter",
                (utime + stime) / TICKS_PER_SECOND,
            );
        }
        if let Some(max) = limit(&limits, "Max open files") {
            family(
                out,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                "gauge",
                max,
            );
        }
        let (rx, tx) = network_bytes();
        family(
            out,
            "process_network_receive_bytes_total",
            "Number of bytes received by the process over the network.",
            "counter",
            rx,
        );
        family(
            out,
            "process_network_transmit_bytes_total",
            "Number of bytes sent by the process over the network.",
            "counter",
            tx,
        );
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // Bounded by the descriptor limit; the directory handle itself is not counted.
            let open = dir.count().saturating_sub(1);
            family(
                out,
                "process_open_fds",
                "Number of open file descriptors.",
                "gauge",
                open as f64,
            );
        }
        if let Some(kb) = status_kb(&status, "VmRSS:") {
            family(
                out,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                "gauge",
                kb * 1024.0,
            );
        }
        if let Some(start) = start_time(field(22)) {
            family(
                out,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                "gauge",
                start,
            );
        }
        if let Some(kb) = status_kb(&status, "VmSize:") {
            family(
                out,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                "gauge",
                kb * 1024.0,
            );
        }
        if let Some(max) = limit(&limits, "Max address space") {
            family(
                out,
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes.",
                "gauge",
                max,
            );
        }
    }

    fn family(out: &mut String, name: &str, help: &str, kind: &str, value: f64) {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
            super::GoFloat(value)
        );
    }

    /// The soft limit of a `/proc/self/limits` row; `unlimited` is reported as Go does
    /// (the largest 64-bit value, as a float).
    fn limit(limits: &str, row: &str) -> Option<f64> {
        let line = limits.lines().find(|l| l.starts_with(row))?;
        let soft = line[row.len()..].split_whitespace().next()?;
        if soft == "unlimited" {
            return Some(u64::MAX as f64);
        }
        soft.parse().ok()
    }

    fn status_kb(status: &str, key: &str) -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse().ok()
    }

    /// Boot time plus the process' start offset in ticks.
    fn start_time(ticks: Option<f64>) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let btime: f64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(btime + ticks? / TICKS_PER_SECOND)
    }

    /// Bytes received and sent over all interfaces of the process' network namespace.
    fn network_bytes() -> (f64, f64) {
        let dev = std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default();
        let (mut rx, mut tx) = (0.0, 0.0);
        // Two header lines, then `iface: rx_bytes … (8 rx fields) tx_bytes …`.
        for line in dev.lines().skip(2) {
            let Some((_, counters)) = line.split_once(':') else {
                continue;
            };
            let cols: Vec<&str> = counters.split_whitespace().collect();
            if let (Some(r), Some(t)) = (cols.first(), cols.get(8)) {
                rx += r.parse::<f64>().unwrap_or(0.0);
                tx += t.parse::<f64>().unwrap_or(0.0);
            }
        }
        (rx, tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_as_go_writes_them() {
        let go = |v: f64| GoFloat(v).to_string();
        assert_eq!(go(0.0), "0");
        assert_eq!(go(0.005), "0.005");
        assert_eq!(go(2.5), "2.5");
        assert_eq!(go(10.0), "10");
        assert_eq!(go(999_999.0), "999999");
        assert_eq!(go(1_000_000.0), "1e+06");
        assert_eq!(go(1_795_717_630.34), "1.79571763034e+09");
        assert_eq!(go(0.0001), "0.0001");
        assert_eq!(go(0.000_015), "1.5e-05");
        assert_eq!(go(u64::MAX as f64), "1.8446744073709552e+19");
        assert_eq!(go(f64::INFINITY), "+Inf");
    }

    #[test]
    fn empty_families_are_left_out() {
        let text = Metrics::new().render(&[]);
        assert!(!text.contains("kamal_proxy_http_requests_total"));
        assert!(!text.contains("kamal_proxy_deploys_total"));
        assert!(text.contains("# TYPE promhttp_metric_handler_requests_total counter\n"));
    }

    #[test]
    fn methods_map_to_upstream_labels() {
        assert_eq!(METHODS[method_index(&Method::GET)], "GET");
        assert_eq!(METHODS[method_index(&Method::TRACE)], "TRACE");
        let lower = Method::from_bytes(b"get").unwrap();
        assert_eq!(METHODS[method_index(&lower)], "OTHER");
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(METHODS[method_index(&custom)], "OTHER");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_match_the_counter() {
        let metrics = Metrics::new();
        let svc = metrics.service("web");
        svc.observe(&Method::GET, 200, Duration::from_millis(3));
        svc.observe(&Method::GET, 200, Duration::from_millis(30));
        svc.observe(&Method::GET, 200, Duration::from_secs(20));
        svc.observe(&Method::POST, 503, Duration::from_millis(5));
        let text = metrics.render(&[]);
        let l = "method=\"GET\",service=\"web\",status=\"200\"";
        for (le, n) in [
            ("0.005", 1),
            ("0.025", 1),
            ("0.05", 2),
            ("10", 2),
            ("+Inf", 3),
        ] {
            let line = format!(
                "kamal_proxy_http_request_duration_seconds_bucket{{{l},le=\"{le}\"}} {n}\n"
            );
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        assert!(text.contains(&format!("kamal_proxy_http_requests_total{{{l}}} 3\n")));
        assert!(text.contains(&format!(
            "kamal_proxy_http_request_duration_seconds_sum{{{l}}} 20.033\n"
        )));
        // Exactly 5 ms falls in the 0.005 bucket (upper bounds are inclusive).
        assert!(text.contains("kamal_proxy_http_request_duration_seconds_bucket{method=\"POST\",service=\"web\",status=\"503\",le=\"0.005\"} 1\n"));
    }

    #[test]
    fn gauge_appears_on_first_request_and_stays_at_zero() {
        let metrics = Metrics::new();
        let svc = metrics.service("web");
        assert!(!metrics
            .render(&[])
            .contains("kamal_proxy_http_in_flight_requests{"));
        svc.enter();
        assert!(metrics
            .render(&[])
            .contains("kamal_proxy_http_in_flight_requests{service=\"web\"} 1\n"));
        svc.leave();
        assert!(metrics
            .render(&[])
            .contains("kamal_proxy_http_in_flight_requests{service=\"web\"} 0\n"));
        // The same series object is handed out again after a remove and re-deploy.
        assert!(Arc::ptr_eq(&svc, &metrics.service("web")));
    }

    #[test]
    fn label_values_are_escaped_and_unmatched_sorts_first() {
        let metrics = Metrics::new();
        metrics
            .unmatched()
            .observe(&Method::GET, 404, Duration::ZERO);
        metrics
            .service("a\"b\\c")
            .observe(&Method::GET, 200, Duration::ZERO);
        let text = metrics.render(&[]);
        let unmatched = text
            .find("kamal_proxy_http_requests_total{method=\"GET\",service=\"\",status=\"404\"} 1")
            .unwrap();
        let named = text
            .find("kamal_proxy_http_requests_total{method=\"GET\",service=\"a\\\"b\\\\c\",status=\"200\"} 1")
            .unwrap();
        assert!(unmatched < named);
    }

    #[test]
    fn operator_metrics_render() {
        let metrics = Metrics::new();
        metrics.record_deploy("web", DeployOutcome::Succeeded, Duration::from_millis(700));
        metrics.record_deploy("web", DeployOutcome::Unhealthy, Duration::from_secs(31));
        metrics.set_certificate_expiry("web", vec![("a.test".into(), 1_900_000_000)]);
        let targets = [TargetHealth {
            service: "web".into(),
            target: "127.0.0.1:3000".into(),
            pool: "active",
            role: "writer",
            state: "healthy",
        }];
        let text = metrics.render(&targets);
        assert!(
            text.contains("kamal_proxy_deploys_total{outcome=\"succeeded\",service=\"web\"} 1\n")
        );
        assert!(text.contains("kamal_proxy_deploy_duration_seconds_bucket{outcome=\"unhealthy\",service=\"web\",le=\"30\"} 0\n"));
        assert!(text.contains("kamal_proxy_deploy_duration_seconds_bucket{outcome=\"unhealthy\",service=\"web\",le=\"60\"} 1\n"));
        assert!(text.contains("kamal_proxy_certificate_expiry_timestamp_seconds{host=\"a.test\",service=\"web\"} 1.9e+09\n"));
        assert!(text.contains("kamal_proxy_target_state{pool=\"active\",role=\"writer\",service=\"web\",state=\"healthy\",target=\"127.0.0.1:3000\"} 1\n"));
        assert!(text.contains("kamal_proxy_target_state{pool=\"active\",role=\"writer\",service=\"web\",state=\"unhealthy\",target=\"127.0.0.1:3000\"} 0\n"));
        if cfg!(target_os = "linux") {
            assert!(text.contains("\nprocess_open_fds "));
            assert!(text.contains("\nprocess_start_time_seconds "));
        }
    }
}
