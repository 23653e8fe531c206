//! `cargo xtask bench`: kamal-proxy side by side with nginx and with no proxy at all.
//!
//! One run builds the release binaries, starts the fast upstream (`bench-upstream`), the real
//! `kamal-proxy run` (deployed through its own CLI, JSON access log on) and nginx as an
//! equivalent reverse proxy, pins the proxies to core 0 and the load generator and upstream to
//! core 1, and drives each setup with `wrk` (`h2load` for HTTP/2 over TLS) in interleaved
//! rounds. Every load is bounded in time and connections and goes to 127.0.0.1 only. The report is Markdown: medians per setup, and
//! ratios to nginx and to no proxy measured in the same run.

mod h2load;
mod procs;
mod report;
mod setups;
mod tls;
mod wrk;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use report::{Sample, ScenarioResult};
use setups::{Kamal, Nginx, Upstream};
use tls::TLS_HOST;

/// Host name the buffered-upload service is deployed on.
const UPLOAD_HOST: &str = "upload.bench";
/// Length of the upstream's small answer.
const SMALL_LEN: usize = 13;
/// Length of the large answer and of each upload.
const MIB: usize = 1024 * 1024;
/// Warm-up before the first round of each setup in each scenario (not recorded).
const WARM_UP: Duration = Duration::from_secs(2);
/// Idle keep-alive connections opened to measure what one costs.
const IDLE_CONNECTIONS: usize = 10_000;
/// The longest a single load may run, whatever is asked.
const MAX_DURATION: Duration = Duration::from_secs(120);
/// Concurrent streams on each connection of the HTTP/2 load.
const H2_STREAMS: u32 = 10;

/// One kind of load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Small GETs on kept-alive connections.
    KeepAlive,
    /// Small GETs, a new connection for each (`Connection: close`).
    ConnPerRequest,
    /// Small GETs over HTTPS (HTTP/1.1), a new TLS connection for each (`Connection: close`).
    TlsConnPerRequest,
    /// Small GETs over HTTP/2 and TLS, several streams at once on each connection (h2load).
    H2Tls,
    /// GETs of a 1 MiB body.
    LargeResponse,
    /// POSTs of a 1 MiB body, buffered by the proxy before forwarding.
    LargeUpload,
    /// Memory each idle keep-alive client connection costs the proxy.
    IdleConnections,
    /// Keep-alive load through kamal-proxy while it is redeployed repeatedly.
    DeployUnderLoad,
    /// The keep-alive load through a second kamal-proxy that also serves `--metrics-port`:
    /// what the metrics cost, against the keep-alive kamal-proxy of the same rounds.
    Metrics,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 9] = [
        Scenario::KeepAlive,
        Scenario::Metrics,
        Scenario::ConnPerRequest,
        Scenario::TlsConnPerRequest,
        Scenario::H2Tls,
        Scenario::LargeResponse,
        Scenario::LargeUpload,
        Scenario::DeployUnderLoad,
        // Last: the memory it leaves allocated would inflate later peak RSS figures.
        Scenario::IdleConnections,
    ];

    /// Whether the scenario is a `wrk` load measured in rounds against every setup.
    fn in_rounds(self) -> bool {
        !matches!(self, Scenario::IdleConnections | Scenario::DeployUnderLoad)
    }

    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::KeepAlive => "keep-alive",
            Scenario::ConnPerRequest => "conn-per-request",
            Scenario::TlsConnPerRequest => "tls-conn-per-request",
            Scenario::H2Tls => "h2-tls",
            Scenario::LargeResponse => "1mib-response",
            Scenario::LargeUpload => "1mib-upload",
            Scenario::IdleConnections => "idle-connections",
            Scenario::DeployUnderLoad => "deploy-under-load",
            Scenario::Metrics => "keep-alive-metrics",
        }
    }

    fn connections(self) -> u32 {
        match self {
            Scenario::KeepAlive | Scenario::DeployUnderLoad | Scenario::Metrics => 64,
            Scenario::IdleConnections => IDLE_CONNECTIONS as u32,
            _ => 16,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Scenario::LargeResponse => "/1m",
            Scenario::LargeUpload => "/upload",
            _ => "/",
        }
    }

    fn host(self) -> &'static str {
        match self {
            Scenario::LargeUpload => UPLOAD_HOST,
            Scenario::TlsConnPerRequest | Scenario::H2Tls => TLS_HOST,
            _ => "localhost",
        }
    }

    /// Whether the load goes to the proxies' HTTPS ports (there is no direct setup then: the
    /// upstream speaks plain HTTP).
    fn tls(self) -> bool {
        matches!(self, Scenario::TlsConnPerRequest | Scenario::H2Tls)
    }

    /// Concurrent streams per connection, for the multiplexed load.
    fn streams(self) -> Option<u32> {
        (self == Scenario::H2Tls).then_some(H2_STREAMS)
    }

    fn headers(self) -> Vec<String> {
        match self {
            Scenario::ConnPerRequest | Scenario::TlsConnPerRequest => {
                vec!["Connection: close".into()]
            }
            Scenario::LargeUpload => vec![format!("Host: {UPLOAD_HOST}")],
            _ => Vec::new(),
        }
    }

    fn wrk_setup(self) -> String {
        match self {
            Scenario::LargeUpload => format!(
                "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", {MIB})\n\
                 wrk.headers[\"Content-Type\"] = \"application/octet-stream\""
            ),
            Scenario::TlsConnPerRequest => wrk::LOOPBACK_RESOLVE.into(),
            _ => String::new(),
        }
    }

    /// What a correct answer looks like: status and body length.
    fn expected(self) -> (u16, usize) {
        match self {
            Scenario::LargeResponse => (200, MIB),
            _ => (200, SMALL_LEN),
        }
    }

    fn upload_len(self) -> usize {
        if self == Scenario::LargeUpload {
            MIB
        } else {
            0
        }
    }
}

/// What `cargo xtask bench` was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Length of each measured load.
    pub duration: Duration,
    /// Interleaved rounds per setup; the report shows medians.
    pub rounds: u32,
    /// Redeploys during the deploy-under-load scenario.
    pub deploys: u32,
    /// Scenarios to run, in report order.
    pub scenarios: Vec<Scenario>,
    /// Whether to build the release binaries first (`--no-build` uses the ones in `target/`).
    pub build: bool,
    /// kamal-proxy's log to a pipe the bench reads (`--log-pipe`) rather than to a file.
    pub log_pipe: bool,
}

impl Options {
    /// Parses `[--duration SECS] [--rounds N] [--deploys N] [--no-build] [--log-pipe] [SCENARIO…]`.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            duration: Duration::from_secs(10),
            rounds: 3,
            deploys: 20,
            scenarios: Vec::new(),
            build: true,
            log_pipe: false,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut number = |name: &str, max: u64| -> Result<u64, String> {
                args.next()
                    .and_then(|v| v.trim_end_matches('s').parse::<u64>().ok())
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| format!("{name} takes a number from 1 to {max}"))
            };
            match arg.as_str() {
                "--duration" => {
                    options.duration =
                        Duration::from_secs(number("--duration", MAX_DURATION.as_secs())?)
                }
                "--rounds" => options.rounds = number("--rounds", 20)? as u32,
                "--deploys" => options.deploys = number("--deploys", 100)? as u32,
                "--no-build" => options.build = false,
                "--log-pipe" => options.log_pipe = true,
                name => {
                    let scenario = Scenario::ALL
                        .into_iter()
                        .find(|s| s.name() == name)
                        .ok_or_else(|| format!("unknown scenario or option `{name}`"))?;
                    if !options.scenarios.contains(&scenario) {
                        options.scenarios.push(scenario);
                    }
                }
            }
        }
        if options.scenarios.is_empty() {
            options.scenarios = Scenario::ALL.to_vec();
        }
        options
            .scenarios
            .sort_by_key(|s| Scenario::ALL.iter().position(|a| a == s));
        Ok(options)
    }
}

/// Which server a load goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Direct,
    Kamal,
    Nginx,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Direct => "no proxy",
            Kind::Kamal => "kamal-proxy",
            Kind::Nginx => "nginx",
        }
    }
}

/// A server under load: its port and the processes whose CPU and memory count.
#[derive(Debug, Clone)]
struct Setup {
    kind: Kind,
    port: u16,
    /// Empty for the direct setup: the upstream shares the load generator's core.
    pids: Vec<u32>,
    /// kamal-proxy's log, collected after each load.
    log: Option<Arc<setups::Log>>,
}

/// Removes the bench's temporary directory when the run ends (declared first, dropped last,
/// after every process using it has stopped).
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything a measurement needs.
struct Lab {
    wrk: PathBuf,
    /// For h2-tls (the scenario is dropped when h2load is missing).
    h2load: Option<PathBuf>,
    /// h2load's per-request log, rewritten by each h2load run.
    h2_log: PathBuf,
    /// What each setup negotiated in its first h2load run.
    negotiated: RefCell<Vec<(Kind, h2load::Negotiated)>>,
    scripts: Vec<(Scenario, PathBuf)>,
    load_core: Option<&'static str>,
    ticks: u64,
}

impl Lab {
    fn script(&self, scenario: Scenario) -> &Path {
        self.scripts
            .iter()
            .find(|(s, _)| *s == scenario)
            .map_or(Path::new(""), |(_, p)| p.as_path())
    }

    fn load<'a>(&'a self, scenario: Scenario, port: u16, headers: &'a [String]) -> wrk::Load<'a> {
        wrk::Load {
            port,
            path: scenario.path(),
            connections: scenario.connections(),
            headers,
            script: self.script(scenario),
            tls_name: (scenario == Scenario::TlsConnPerRequest).then_some(TLS_HOST),
        }
    }

    /// One h2load run of `scenario` against `setup`.
    fn h2load(
        &self,
        scenario: Scenario,
        setup: &Setup,
        duration: Duration,
    ) -> Result<wrk::WrkResult, String> {
        let bin = self.h2load.as_deref().ok_or("h2load is not installed")?;
        let load = h2load::Load {
            port: setup.port,
            name: TLS_HOST,
            path: scenario.path(),
            connections: scenario.connections(),
            streams: scenario.streams().unwrap_or(1),
            log_file: &self.h2_log,
        };
        let (result, negotiated) = h2load::run(bin, &load, duration, self.load_core)?;
        let mut seen = self.negotiated.borrow_mut();
        if !seen.iter().any(|(kind, _)| *kind == setup.kind) {
            seen.push((setup.kind, negotiated));
        }
        Ok(result)
    }

    /// One bounded load against `setup`, with the proxy's CPU time and peak RSS around it.
    fn measure(
        &self,
        scenario: Scenario,
        setup: &Setup,
        duration: Duration,
    ) -> Result<Sample, String> {
        let headers = scenario.headers();
        procs::reset_peak_rss(&setup.pids);
        let cpu_before = procs::cpu_micros(&setup.pids, self.ticks);
        let core_before = self.load_core_ticks();
        let result = if scenario == Scenario::H2Tls {
            self.h2load(scenario, setup, duration)?
        } else {
            wrk::run(
                &self.wrk,
                &self.load(scenario, setup.port, &headers),
                duration,
                self.load_core,
            )?
        };
        let cpu_after = procs::cpu_micros(&setup.pids, self.ticks);
        let load_core_busy = procs::busy_between(core_before, self.load_core_ticks());
        if let Some(log) = &setup.log {
            log.collect();
        }
        let sample = self.sample(setup, &result, cpu_before, cpu_after);
        Ok(Sample {
            load_core_busy,
            ..sample
        })
    }

    /// Busy and total ticks of the load generator's core, when the run is pinned.
    fn load_core_ticks(&self) -> Option<(u64, u64)> {
        self.load_core.and_then(procs::core_ticks)
    }

    fn sample(
        &self,
        setup: &Setup,
        result: &wrk::WrkResult,
        before: Option<u64>,
        after: Option<u64>,
    ) -> Sample {
        let proxied = !setup.pids.is_empty();
        let cpu = match (before, after) {
            (Some(b), Some(a)) if proxied && result.requests > 0 => {
                Some(a.saturating_sub(b) as f64 / result.requests as f64)
            }
            _ => None,
        };
        Sample {
            requests: result.requests,
            rps: result.rps(),
            p50_us: result.p50_us as f64,
            p99_us: result.p99_us as f64,
            errors: result.errors,
            cpu_us_per_request: cpu,
            peak_rss_kib: if proxied {
                procs::peak_rss_kib(&setup.pids)
            } else {
                None
            },
            load_core_busy: None,
        }
    }
}

/// Runs the comparison and prints the report (also written to `target/bench/report.md`).
pub fn run(options: &Options) -> Result<(), String> {
    if !Path::new("/proc/self/stat").exists() {
        return Err("the bench reads CPU time and memory from /proc: it needs Linux".into());
    }
    let wrk_bin = find_or_install("wrk", "wrk")
        .ok_or("wrk is not installed and could not be installed (Debian: `apt-get install wrk`)")?;
    let nginx_bin = find_or_install("nginx", "nginx");
    if nginx_bin.is_none() {
        eprintln!("xtask: nginx is not installed and could not be installed; its rows are skipped");
    }
    let mut notes = Vec::new();
    // Scenarios whose tools are missing are dropped here, with a note in the report.
    let mut options = options.clone();
    let mut skip = |options: &mut Options, scenarios: &[Scenario], why: &str| {
        for scenario in scenarios {
            if options.scenarios.contains(scenario) {
                eprintln!("xtask: {} skipped: {why}", scenario.name());
                notes.push(format!("{} skipped: {why}.", scenario.name()));
            }
        }
        options.scenarios.retain(|s| !scenarios.contains(s));
    };
    let h2load_bin = if options.scenarios.contains(&Scenario::H2Tls) {
        find_or_install("h2load", "nghttp2-client")
    } else {
        None
    };
    if h2load_bin.is_none() {
        skip(
            &mut options,
            &[Scenario::H2Tls],
            "h2load is not installed and could not be installed (Debian: `apt-get install nghttp2-client`)",
        );
    }
    let tls_scenarios = [Scenario::TlsConnPerRequest, Scenario::H2Tls];
    let wants_tls = options.scenarios.iter().any(|s| s.tls());
    let openssl_bin = if wants_tls {
        find_or_install("openssl", "openssl")
    } else {
        None
    };
    if openssl_bin.is_none() {
        skip(
            &mut options,
            &tls_scenarios,
            "the `openssl` command, which makes the certificate, is not installed",
        );
    }
    let curl_bin = if wants_tls {
        find_or_install("curl", "curl")
    } else {
        None
    };
    let options = &options;

    if options.build {
        crate::cargo(&[
            "build",
            "--release",
            "-p",
            "kamal-proxy",
            "-p",
            "bench-upstream",
        ])?;
    }
    let release = target_dir().join("release");

    // 10,000 idle connections need as many descriptors in this process and in the proxies,
    // which inherit the limit; best effort, the idle scenario reports it if still too low.
    let _ = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            "--nofile=65536:65536",
        ])
        .status();
    let pin = procs::can_pin();
    if pin && procs::pin_self(procs::LOAD_CORE) {
        eprintln!(
            "xtask: proxies on core {}, wrk and the upstream on core {}",
            procs::PROXY_CORE,
            procs::LOAD_CORE
        );
    } else {
        eprintln!(
            "xtask: cannot pin to cores (needs taskset and 2 cores); numbers will be noisier"
        );
    }
    let proxy_core = pin.then_some(procs::PROXY_CORE);
    let load_core = pin.then_some(procs::LOAD_CORE);

    let work = WorkDir(std::env::temp_dir().join(format!("kamal-bench-{}", std::process::id())));
    std::fs::create_dir_all(&work.0)
        .map_err(|e| format!("cannot create {}: {e}", work.0.display()))?;
    // One certificate for kamal-proxy and nginx, so both do the same handshake work.
    let certificate = match &openssl_bin {
        Some(openssl) => Some(tls::make_certificate(openssl, &work.0.join("tls"))?),
        None => None,
    };

    let upstream = setups::start_upstream(&release.join("bench-upstream"), load_core)?;
    let target = format!("127.0.0.1:{}", upstream.port);
    let kamal = Kamal::start(
        &release.join("kamal-proxy"),
        &work.0.join("kamal"),
        proxy_core,
        options.log_pipe,
    )?;
    kamal.deploy("bench", &["--target", &target])?;
    // The same proxy with metrics on, only for the metrics scenario.
    let metered = if options.scenarios.contains(&Scenario::Metrics) {
        let metrics_port = procs::free_port()?.to_string();
        let metered = Kamal::start_with(
            &release.join("kamal-proxy"),
            &work.0.join("kamal-metrics"),
            proxy_core,
            &["--metrics-port", &metrics_port],
            options.log_pipe,
        )?;
        metered.deploy("bench", &["--target", &target])?;
        Some(metered)
    } else {
        None
    };
    let upload_deployed = !options.scenarios.contains(&Scenario::LargeUpload)
        || match kamal.deploy(
            "bench-upload",
            &[
                "--target",
                &target,
                "--host",
                UPLOAD_HOST,
                "--buffer-requests",
            ],
        ) {
            Ok(_) => true,
            Err(e) => {
                notes.push(format!("kamal-proxy skipped in 1mib-upload: {e}"));
                false
            }
        };
    // Through its own CLI with a custom certificate, as users deploy TLS without ACME.
    let tls_deployed = match &certificate {
        Some(certificate) => {
            let (cert, key) = (
                certificate.cert.display().to_string(),
                certificate.key.display().to_string(),
            );
            match kamal.deploy(
                "bench-tls",
                &[
                    "--target",
                    &target,
                    "--host",
                    TLS_HOST,
                    "--tls",
                    "--tls-certificate-path",
                    &cert,
                    "--tls-private-key-path",
                    &key,
                ],
            ) {
                Ok(_) => true,
                Err(e) => {
                    notes.push(format!("kamal-proxy skipped in the TLS scenarios: {e}"));
                    false
                }
            }
        }
        None => false,
    };
    let nginx: Option<Nginx> = match &nginx_bin {
        Some(bin) => Some(setups::start_nginx(
            bin,
            &work.0.join("nginx"),
            upstream.port,
            certificate.as_ref(),
            proxy_core,
        )?),
        None => None,
    };

    let lab = Lab {
        scripts: options
            .scenarios
            .iter()
            .map(|s| Ok((*s, wrk::write_script(&work.0, s.name(), &s.wrk_setup())?)))
            .collect::<Result<_, String>>()?,
        wrk: wrk_bin.clone(),
        h2load: h2load_bin.clone(),
        h2_log: work.0.join("h2load.log"),
        negotiated: RefCell::new(Vec::new()),
        load_core,
        ticks: procs::ticks_per_second(),
    };
    let setups_for = |scenario: Scenario| -> Vec<Setup> {
        let mut list = Vec::new();
        match scenario {
            Scenario::DeployUnderLoad => return list,
            Scenario::Metrics => {
                if let Some(metered) = &metered {
                    list.push(Setup {
                        kind: Kind::Kamal,
                        port: metered.http_port,
                        pids: metered.process.pids(),
                        log: Some(Arc::clone(&metered.log)),
                    });
                }
                return list;
            }
            // Only proxies hold client connections worth measuring.
            Scenario::IdleConnections => {}
            // The upstream speaks plain HTTP only: no direct setup to compare with.
            s if s.tls() => {}
            _ => list.push(Setup {
                kind: Kind::Direct,
                port: upstream.port,
                pids: Vec::new(),
                log: None,
            }),
        }
        let kamal_port = if scenario.tls() {
            tls_deployed.then_some(kamal.https_port)
        } else {
            (scenario != Scenario::LargeUpload || upload_deployed).then_some(kamal.http_port)
        };
        if let Some(port) = kamal_port {
            list.push(Setup {
                kind: Kind::Kamal,
                port,
                pids: kamal.process.pids(),
                log: Some(Arc::clone(&kamal.log)),
            });
        }
        if let Some(nginx) = &nginx {
            let port = if scenario.tls() {
                nginx.tls_port
            } else {
                Some(nginx.port)
            };
            if let Some(port) = port {
                list.push(Setup {
                    kind: Kind::Nginx,
                    port,
                    pids: nginx.process.pids(),
                    log: None,
                });
            }
        }
        list
    };

    // A setup that answers wrongly would make fast nonsense: check each once before loading it.
    if wants_tls && curl_bin.is_none() {
        notes.push("curl is not installed: the TLS setups were not checked before the load (h2load still fails a setup that does not negotiate h2).".into());
    }
    for &scenario in &options.scenarios {
        for setup in setups_for(scenario) {
            let got = match (scenario.tls(), &curl_bin) {
                (true, Some(curl)) => tls::check(
                    curl,
                    setup.port,
                    scenario.path(),
                    scenario == Scenario::H2Tls,
                )
                .map_err(|e| format!("{}: {e}", setup.kind.label()))?,
                (true, None) => continue,
                (false, _) => procs::http_check(
                    setup.port,
                    scenario.path(),
                    scenario.host(),
                    scenario.upload_len(),
                )?,
            };
            if got != scenario.expected() {
                return Err(format!(
                    "{} answered {got:?} in {}, expected {:?}",
                    setup.kind.label(),
                    scenario.name(),
                    scenario.expected()
                ));
            }
        }
    }

    let started = Instant::now();
    let rounds: Vec<Scenario> = options
        .scenarios
        .iter()
        .copied()
        .filter(|s| s.in_rounds())
        .collect();
    // Every request kamal-proxy served under load, to compare with its access-log lines.
    let mut kamal_requests = 0;
    for &scenario in &rounds {
        for setup in setups_for(scenario) {
            eprintln!(
                "xtask: warming up {} in {}",
                setup.kind.label(),
                scenario.name()
            );
            let sample = lab.measure(scenario, &setup, WARM_UP)?;
            if setup.kind == Kind::Kamal && scenario != Scenario::Metrics {
                kamal_requests += sample.requests;
            }
        }
    }
    let mut samples: Vec<(Scenario, Kind, Sample)> = Vec::new();
    for round in 1..=options.rounds {
        for &scenario in &rounds {
            // Every other round in the opposite order: whatever running second costs or gains
            // (sockets left in TIME_WAIT, a warmer cache) falls on each setup alike.
            let mut setups = setups_for(scenario);
            if round % 2 == 0 {
                setups.reverse();
            }
            for setup in setups {
                let sample = lab.measure(scenario, &setup, options.duration)?;
                eprintln!(
                    "xtask: round {round}/{} {} {}: {} req/s, p50 {}, p99 {}, {} errors",
                    options.rounds,
                    scenario.name(),
                    setup.kind.label(),
                    report::thousands(sample.rps),
                    report::latency(sample.p50_us),
                    report::latency(sample.p99_us),
                    sample.errors
                );
                if setup.kind == Kind::Kamal && scenario != Scenario::Metrics {
                    kamal_requests += sample.requests;
                }
                samples.push((scenario, setup.kind, sample));
                alive(&upstream, &kamal, nginx.as_ref())?;
            }
        }
    }

    let picked = |scenario: Scenario, kind: Kind| -> Vec<Sample> {
        samples
            .iter()
            .filter(|(s, k, _)| *s == scenario && *k == kind)
            .map(|(_, _, sample)| *sample)
            .collect()
    };
    let summary = |scenario: Scenario, kind: Kind| report::summarise(&picked(scenario, kind));
    let mut results: Vec<ScenarioResult> = Vec::new();
    for &scenario in &options.scenarios {
        let mut result = ScenarioResult {
            name: scenario.name().into(),
            connections: scenario.connections(),
            streams: scenario.streams(),
            ..Default::default()
        };
        match scenario {
            Scenario::IdleConnections => continue,
            Scenario::Metrics => {
                result.kamal = summary(scenario, Kind::Kamal);
                let plain = summary(Scenario::KeepAlive, Kind::Kamal);
                result.note = match (result.kamal, plain) {
                    (Some(m), Some(p)) => format!(
                        "With --metrics-port: {} the req/s and {} the CPU per request of the same proxy without it (keep-alive rows).",
                        report::ratio(Some(m.rps), Some(p.rps)),
                        report::ratio(m.cpu_us_per_request, p.cpu_us_per_request)
                    ),
                    _ => "Run with keep-alive to compare.".into(),
                };
            }
            Scenario::DeployUnderLoad => {
                // In rounds like the other loads: a single window is decided by whatever else
                // the host did during it. Each round is compared with a steady window of the
                // same proxy right before it, not with the keep-alive rounds minutes earlier:
                // the host's speed drifts by more than the bar's margin in that time.
                let (mut samples, mut steadies, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
                let mut deploys = Deploys::default();
                for round in 1..=options.rounds {
                    let (steady, sample, these) =
                        deploy_under_load(&lab, &kamal, &upstream, &release, options, round)?;
                    kamal_requests += steady.requests + sample.requests;
                    if steady.rps > 0.0 {
                        ratios.push(sample.rps / steady.rps);
                    }
                    steadies.push(steady);
                    samples.push(sample);
                    deploys.add(&these);
                }
                result.kamal = report::summarise(&samples);
                result.steady_rps = report::summarise(&steadies).map(|s| s.rps);
                result.note = deploys.note(options.rounds);
                if let Some(text) = report::median_and_range(ratios) {
                    result.note.push_str(&format!(
                        " Round by round against the steady window right before it, median (range): {text}."
                    ));
                }
            }
            _ => {
                result.direct = summary(scenario, Kind::Direct);
                result.kamal = summary(scenario, Kind::Kamal);
                result.nginx = summary(scenario, Kind::Nginx);
                result.vs_nginx_rounds = report::paired(
                    &picked(scenario, Kind::Kamal),
                    &picked(scenario, Kind::Nginx),
                );
                if scenario.tls() {
                    result.note = tls_note(scenario, &lab.negotiated.borrow());
                }
            }
        }
        results.push(result);
    }
    // After the deploys: the memory this leaves allocated would inflate their peak RSS.
    let mut findings = Vec::new();
    if options.scenarios.contains(&Scenario::IdleConnections) {
        let mut costs = Vec::new();
        for setup in setups_for(Scenario::IdleConnections) {
            match procs::idle_cost_kib(setup.port, &setup.pids, IDLE_CONNECTIONS) {
                Ok(kib) => {
                    eprintln!(
                        "xtask: idle-connections {}: {kib:.1} KiB each",
                        setup.kind.label()
                    );
                    costs.push((setup.kind, kib));
                }
                Err(e) => notes.push(format!("idle-connections, {}: {e}", setup.kind.label())),
            }
            alive(&upstream, &kamal, nginx.as_ref())?;
        }
        findings.push(idle_line(&costs));
    }

    kamal.log.collect();
    notes.push(format!(
        "kamal-proxy wrote {} lines to stdout ({}; its JSON log: one access-log line per request, plus start-up and deploy messages) for {} requests under load, warm-ups included.",
        report::thousands(kamal.log.lines() as f64),
        if options.log_pipe { "a pipe the bench read" } else { "a file" },
        report::thousands(kamal_requests as f64)
    ));

    let text = format!(
        "{}\n{}{}\n{}",
        header(
            options,
            pin,
            &wrk_bin,
            h2load_bin.as_deref(),
            nginx_bin.as_deref(),
            started.elapsed()
        ),
        report::render(&results),
        findings
            .iter()
            .map(|n| format!("- {n}\n"))
            .collect::<String>(),
        notes.iter().map(|n| format!("- {n}\n")).collect::<String>()
    );
    println!("{text}");
    let out = target_dir().join("bench");
    if std::fs::create_dir_all(&out).is_ok() && std::fs::write(out.join("report.md"), &text).is_ok()
    {
        eprintln!(
            "xtask: report written to {}",
            out.join("report.md").display()
        );
    }
    Ok(())
}

/// The remark under a TLS scenario: why there is no direct row, and for h2-tls what each
/// setup negotiated (from h2load).
fn tls_note(scenario: Scenario, negotiated: &[(Kind, h2load::Negotiated)]) -> String {
    let mut note = String::from("No no-proxy row: the upstream speaks plain HTTP.");
    if scenario == Scenario::H2Tls {
        for (kind, n) in negotiated {
            note.push_str(&format!(
                " {}: {}, {}, {}, {}.",
                kind.label(),
                n.tls,
                n.cipher,
                n.key_exchange,
                n.application
            ));
        }
    }
    note
}

/// `idle-connections: 10,000 idle keep-alive client connections add 12.0 KiB each to …`.
fn idle_line(costs: &[(Kind, f64)]) -> String {
    let cost = |kind: Kind| costs.iter().find(|(k, _)| *k == kind).map(|(_, kib)| *kib);
    let mut line = format!(
        "idle-connections: {} idle keep-alive client connections add",
        report::thousands(IDLE_CONNECTIONS as f64)
    );
    let parts: Vec<String> = costs
        .iter()
        .map(|(kind, kib)| format!(" {kib:.1} KiB each to {}'s RSS", kind.label()))
        .collect();
    line.push_str(&parts.join(","));
    if costs.is_empty() {
        line.push_str(" nothing measurable (no setup could be measured)");
    }
    line.push_str(&format!(
        " (kamal-proxy {} nginx).",
        report::ratio(cost(Kind::Kamal), cost(Kind::Nginx))
    ));
    line
}

/// Fails the run when a server died under load (its numbers would be meaningless).
fn alive(upstream: &Upstream, kamal: &Kamal, nginx: Option<&Nginx>) -> Result<(), String> {
    let mut processes = vec![&upstream.process, &kamal.process];
    processes.extend(nginx.map(|n| &n.process));
    for process in processes {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", process.pid()));
        if stat.map_or(true, |s| s.contains(") Z")) {
            return Err(format!("{} exited during the run", process.name));
        }
    }
    Ok(())
}

/// How the deploys of one or more deploy-under-load rounds went.
#[derive(Debug, Default, Clone, PartialEq)]
struct Deploys {
    succeeded: u32,
    attempted: u32,
    /// The longest round's window.
    longest: Duration,
    slowest: Duration,
}

impl Deploys {
    fn add(&mut self, other: &Deploys) {
        self.succeeded += other.succeeded;
        self.attempted += other.attempted;
        self.longest = self.longest.max(other.longest);
        self.slowest = self.slowest.max(other.slowest);
    }

    fn note(&self, rounds: u32) -> String {
        let rounds = match rounds {
            1 => String::new(),
            n => format!(" over {n} rounds"),
        };
        format!(
            "{}/{} deploys succeeded{rounds}, each round within {:.1} s (slowest deploy {:.2} s).",
            self.succeeded,
            self.attempted,
            self.longest.as_secs_f64(),
            self.slowest.as_secs_f64()
        )
    }
}

/// One round: a steady window of keep-alive load through kamal-proxy, then the very same load
/// while it is redeployed `options.deploys` times, alternating between two upstreams. Returns
/// the two loads' samples and how the deploys went.
fn deploy_under_load(
    lab: &Lab,
    kamal: &Kamal,
    first: &Upstream,
    release: &Path,
    options: &Options,
    round: u32,
) -> Result<(Sample, Sample, Deploys), String> {
    let setup = Setup {
        kind: Kind::Kamal,
        port: kamal.http_port,
        pids: kamal.process.pids(),
        log: Some(Arc::clone(&kamal.log)),
    };
    let steady = lab.measure(Scenario::DeployUnderLoad, &setup, options.duration)?;
    eprintln!(
        "xtask: round {round}/{} deploy-under-load, steady window before it: {} req/s, {} errors",
        options.rounds,
        report::thousands(steady.rps),
        steady.errors
    );
    let second = setups::start_upstream(&release.join("bench-upstream"), lab.load_core)?;
    let targets = [second.port, first.port].map(|p| format!("127.0.0.1:{p}"));
    let headers = Scenario::DeployUnderLoad.headers();
    // wrk is stopped (SIGINT) once the deploys are done; the cap only bounds a stuck run.
    let cap =
        Duration::from_secs(30 * u64::from(options.deploys) + 30).min(Duration::from_secs(600));
    procs::reset_peak_rss(&setup.pids);
    let cpu_before = procs::cpu_micros(&setup.pids, lab.ticks);
    let load = wrk::start(
        &lab.wrk,
        &lab.load(Scenario::DeployUnderLoad, setup.port, &headers),
        cap,
        lab.load_core,
    )?;
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    // Deploys are spread evenly over the same window as the steady measurement, so the
    // throughput compared is over the same length of time, with a deploy every so often.
    let spacing = options.duration / options.deploys;
    for i in 0..options.deploys {
        pace(started + spacing * i);
        let target = &targets[i as usize % 2];
        match kamal.deploy("bench", &["--target", target]) {
            Ok(took) => slowest = slowest.max(took),
            Err(e) => failures.push(e),
        }
    }
    pace(started + options.duration);
    let elapsed = started.elapsed();
    let result = wrk::stop(load)?;
    let cpu_after = procs::cpu_micros(&setup.pids, lab.ticks);
    kamal.log.collect();
    if options.deploys % 2 == 1 {
        // Back to the first upstream: the second one stops when this function returns.
        kamal.deploy("bench", &["--target", &targets[1]])?;
    }
    eprintln!(
        "xtask: round {round}/{} deploy-under-load: {} deploys in {:.1} s, {} req/s, {} errors",
        options.rounds,
        options.deploys,
        elapsed.as_secs_f64(),
        report::thousands(result.rps()),
        result.errors
    );
    for failure in &failures {
        eprintln!("xtask: {failure}");
    }
    let deploys = Deploys {
        succeeded: options.deploys - failures.len() as u32,
        attempted: options.deploys,
        longest: elapsed,
        slowest,
    };
    Ok((
        steady,
        lab.sample(&setup, &result, cpu_before, cpu_after),
        deploys,
    ))
}

/// Waits until `at` (pacing a schedule, not synchronising: nothing signals that moment).
fn pace(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// The report's preamble: when, where, with what, how.
fn header(
    options: &Options,
    pinned: bool,
    wrk: &Path,
    h2load: Option<&Path>,
    nginx: Option<&Path>,
    took: Duration,
) -> String {
    let first_line = |program: &Path, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let text = [o.stdout, o.stderr].concat();
                let text = String::from_utf8_lossy(&text);
                let line = text.lines().next().unwrap_or("");
                // `nginx version: nginx/1.22.1`, `wrk debian/4.1.0 [epoll] Copyright …`
                let line = line.strip_prefix("nginx version: ").unwrap_or(line);
                line.split("Copyright")
                    .next()
                    .unwrap_or(line)
                    .trim()
                    .to_string()
            })
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(String::new(), |kib| {
            format!(", {:.0} GiB", kib / 1024.0 / 1024.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::fs::read_to_string("/proc/cpuinfo").map_or(0, |s| {
        s.lines().filter(|l| l.starts_with("processor")).count()
    });
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let mut commit = git(&["rev-parse", "--short", "HEAD"]);
    if !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        commit.push_str(" + uncommitted changes");
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "## cargo xtask bench — {date}\n\n\
         - machine: {cpu}, {cores} cores{memory}, Linux {}; load average before the report: {}\n\
         - {}\n\
         - kamal-proxy {commit} (release build, JSON access log to {}), {}, {}{}, upstream `bench-upstream` (hyper, 13-byte and 1 MiB answers)\n\
         - each figure: median of {} interleaved rounds of {} s after a {} s warm-up (the setups' order reversed every other round); errors summed; peak RSS is the largest VmHWM of the proxy's processes in a round; proxy CPU from /proc (user + system)\n\
         - took {:.0} s\n",
        kernel.trim(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        if pinned {
            "pinned: proxy on core 0, the load generator (wrk or h2load, 1 thread) and the upstream on core 1"
        } else {
            "not pinned (needs taskset and 2 cores)"
        },
        if options.log_pipe {
            "a pipe the bench reads"
        } else {
            "a file"
        },
        nginx.map_or("nginx missing".into(), |n| first_line(n, "-v")),
        first_line(wrk, "-v"),
        h2load.map_or(String::new(), |h| format!(", {}", first_line(h, "--version"))),
        options.rounds,
        options.duration.as_secs(),
        WARM_UP.as_secs(),
        took.as_secs_f64()
    )
}

/// The program on `PATH`, or after installing Debian's `package` when this is a Debian-like
/// system and we are root (the bench machines are).
fn find_or_install(program: &str, package: &str) -> Option<PathBuf> {
    if let Some(found) = procs::which(program) {
        return Some(found);
    }
    if procs::which("apt-get").is_none() || !setups::is_root() {
        return None;
    }
    eprintln!("xtask: {program} not found; installing Debian's `{package}` with apt-get");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        // A fresh machine has no package lists yet.
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        install();
    }
    procs::which(program)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_rounds_add_up_in_the_note() {
        let round = |succeeded, longest_ms, slowest_ms| Deploys {
            succeeded,
            attempted: 20,
            longest: Duration::from_millis(longest_ms),
            slowest: Duration::from_millis(slowest_ms),
        };
        let mut all = Deploys::default();
        all.add(&round(20, 8_010, 30));
        all.add(&round(19, 8_040, 120));
        all.add(&round(20, 8_000, 40));
        assert_eq!(
            all.note(3),
            "59/60 deploys succeeded over 3 rounds, each round within 8.0 s (slowest deploy 0.12 s)."
        );
        assert_eq!(
            round(20, 8_000, 30).note(1),
            "20/20 deploys succeeded, each round within 8.0 s (slowest deploy 0.03 s)."
        );
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_run_every_scenario_for_ten_seconds_three_times() {
        let options = Options::parse(&[]).unwrap();
        assert_eq!(options.duration, Duration::from_secs(10));
        assert_eq!((options.rounds, options.deploys), (3, 20));
        assert!(options.build);
        assert!(!Options::parse(&args(&["--no-build"])).unwrap().build);
        assert!(!options.log_pipe);
        assert!(Options::parse(&args(&["--log-pipe"])).unwrap().log_pipe);
        assert_eq!(options.scenarios, Scenario::ALL.to_vec());
    }

    #[test]
    fn parses_options_and_keeps_scenarios_in_report_order() {
        let options = Options::parse(&args(&[
            "1mib-response",
            "--duration",
            "5s",
            "keep-alive",
            "--rounds",
            "5",
            "keep-alive",
        ]))
        .unwrap();
        assert_eq!(options.duration, Duration::from_secs(5));
        assert_eq!(options.rounds, 5);
        assert_eq!(
            options.scenarios,
            vec![Scenario::KeepAlive, Scenario::LargeResponse]
        );
    }

    #[test]
    fn rejects_unbounded_or_unknown_input() {
        assert!(Options::parse(&args(&["--duration", "0"])).is_err());
        assert!(Options::parse(&args(&["--duration", "9999"])).is_err());
        assert!(Options::parse(&args(&["--rounds"])).is_err());
        assert!(Options::parse(&args(&["http3"])).is_err());
    }

    #[test]
    fn tls_scenarios_go_to_the_tls_name_on_loopback() {
        for scenario in [Scenario::TlsConnPerRequest, Scenario::H2Tls] {
            assert!(scenario.tls());
            assert_eq!(scenario.host(), TLS_HOST);
            assert_eq!(scenario.connections(), 16);
            assert_eq!(scenario.expected(), (200, SMALL_LEN));
        }
        assert!(!Scenario::ConnPerRequest.tls());
        assert_eq!(
            Scenario::TlsConnPerRequest.headers(),
            vec!["Connection: close".to_string()]
        );
        assert!(Scenario::TlsConnPerRequest
            .wrk_setup()
            .contains("wrk.lookup(\"127.0.0.1\", service)"));
        assert_eq!(Scenario::H2Tls.streams(), Some(H2_STREAMS));
        assert_eq!(Scenario::TlsConnPerRequest.streams(), None);
    }

    #[test]
    fn tls_note_says_why_there_is_no_direct_row_and_what_was_negotiated() {
        let negotiated = [(
            Kind::Nginx,
            h2load::Negotiated {
                tls: "TLSv1.3".into(),
                cipher: "TLS_AES_128_GCM_SHA256".into(),
                key_exchange: "X25519 253 bits".into(),
                application: "h2".into(),
            },
        )];
        assert_eq!(
            tls_note(Scenario::H2Tls, &negotiated),
            "No no-proxy row: the upstream speaks plain HTTP. nginx: TLSv1.3, TLS_AES_128_GCM_SHA256, X25519 253 bits, h2."
        );
        assert_eq!(
            tls_note(Scenario::TlsConnPerRequest, &negotiated),
            "No no-proxy row: the upstream speaks plain HTTP."
        );
    }

    #[test]
    fn idle_line_compares_with_nginx() {
        assert_eq!(
            idle_line(&[(Kind::Kamal, 12.0), (Kind::Nginx, 4.0)]),
            "idle-connections: 10,000 idle keep-alive client connections add 12.0 KiB each to kamal-proxy's RSS, 4.0 KiB each to nginx's RSS (kamal-proxy 3.00× nginx)."
        );
        assert!(idle_line(&[]).contains("no setup could be measured"));
    }

    #[test]
    fn scenarios_describe_their_load() {
        assert_eq!(Scenario::KeepAlive.connections(), 64);
        assert_eq!(
            Scenario::ConnPerRequest.headers(),
            vec!["Connection: close".to_string()]
        );
        assert_eq!(Scenario::LargeResponse.expected(), (200, MIB));
        assert!(Scenario::LargeUpload
            .wrk_setup()
            .contains("string.rep(\"x\", 1048576)"));
        assert_eq!(Scenario::LargeUpload.host(), UPLOAD_HOST);
        for scenario in Scenario::ALL {
            assert_eq!(
                Options::parse(&args(&[scenario.name()])).unwrap().scenarios,
                vec![scenario]
            );
        }
    }
}
