//! End-to-end tests of the command line: the real binary, a temporary HOME, and (where a command
//! reaches the server) a real control server on a temporary socket that records what it receives.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kamal_control::{
    ControlListener, DeployRequest, GoDuration, Handler, Request, Response, ServiceDescription,
    TargetDescription,
};

const BIN: &str = env!("CARGO_BIN_EXE_kamal-proxy");

/// A control server answering every request with `reply` and recording the requests.
struct Server {
    requests: Arc<Mutex<Vec<Request>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

struct Recorder {
    requests: Arc<Mutex<Vec<Request>>>,
    reply: Response,
}

impl Handler for Recorder {
    async fn handle(&self, req: Request) -> Response {
        self.requests.lock().unwrap().push(req);
        self.reply.clone()
    }
}

impl Server {
    fn start(socket: &Path, reply: Response) -> Server {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(Recorder {
            requests: requests.clone(),
            reply,
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let socket = socket.to_path_buf();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = ControlListener::bind(&socket).expect("bind control socket");
                ready_tx.send(()).unwrap();
                let shutdown = async {
                    let _ = shutdown_rx.await;
                };
                listener.serve(handler, shutdown).await.expect("serve");
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("control server ready");
        Server {
            requests,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn only_request(&self) -> Request {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        requests.into_iter().next().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A temporary HOME and socket path, and a way to run the binary in that environment only.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("kamal-proxy.sock")
    }

    fn certs(&self) -> String {
        format!("{}/.config/kamal-proxy/certs", self.home().display())
    }

    fn server(&self, reply: Response) -> Server {
        Server::start(&self.socket(), reply)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env_clear()
            .env("HOME", self.home())
            .env("KAMAL_PROXY_SOCKET", self.socket())
            .env("TMPDIR", self.dir.path());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run kamal-proxy")
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[track_caller]
fn assert_fails(o: &Output, want_stderr: &str) {
    assert_eq!(stderr(o), want_stderr);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(o), "");
}

#[track_caller]
fn assert_succeeds(o: &Output) {
    assert_eq!(stderr(o), "");
    assert_eq!(o.status.code(), Some(0));
}

fn deploy_of(request: Request) -> DeployRequest {
    match request {
        Request::Deploy(d) => d,
        other => panic!("not a deploy: {other:?}"),
    }
}

fn secs(s: i64) -> GoDuration {
    GoDuration::from_secs(s)
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Errors: exact text on stderr, exit 1, nothing on stdout, nothing sent to the server.

#[test]
fn parse_and_validation_errors_have_upstreams_texts() {
    let env = Env::new();
    let server = env.server(Response::Ok);
    let cases: &[(&[&str], &str)] = &[
        (&["deploy", "svc", "--bogus"], "unknown flag: --bogus"),
        (&["deploy", "svc", "--target"], "flag needs an argument: --target"),
        (
            &["deploy", "svc", "--target=t", "--deploy-timeout", "5"],
            r#"invalid argument "5" for "--deploy-timeout" flag: time: missing unit in duration "5""#,
        ),
        (
            &["deploy", "svc", "--target=t", "--buffer-memory", "1k"],
            r#"invalid argument "1k" for "--buffer-memory" flag: strconv.ParseInt: parsing "1k": invalid syntax"#,
        ),
        (
            &["deploy", "svc", "--tls=maybe"],
            r#"invalid argument "maybe" for "--tls" flag: strconv.ParseBool: parsing "maybe": invalid syntax"#,
        ),
        (
            &["deploy", "svc", "--target=t", "--buffer-memory=1e2"],
            r#"invalid argument "1e2" for "--buffer-memory" flag: strconv.ParseInt: parsing "1e2": invalid syntax"#,
        ),
        (&["deploy"], "accepts 1 arg(s), received 0"),
        (&["deploy", "a", "b", "--target=t"], "accepts 1 arg(s), received 2"),
        (&["deploy", "svc", "--target=t", "--tls", "false"], "accepts 1 arg(s), received 2"),
        (&["remove"], "accepts 1 arg(s), received 0"),
        (&["pause", "a", "b"], "accepts 1 arg(s), received 2"),
        (
            &["deploy", "svc", "--target=t", "--max-request-body=10"],
            "max-request-body can only be set when request buffering is enabled",
        ),
        (
            &["deploy", "svc", "--target=t", "--buffer-requests", "--max-response-body=10"],
            "max-response-body can only be set when response buffering is enabled",
        ),
        // Pre-run validation comes before the required-flag check.
        (&["deploy", "svc", "--tls"], "service options invalid: host must be set when using TLS"),
        (&["deploy", "svc", "--host=a.test,", "--tls", "--target=t"], "service options invalid: host must be set when using TLS"),
        (
            &["deploy", "svc", "--target=t", "--host=a.test", "--tls", "--path-prefix=/api"],
            "service options invalid: TLS settings must be specified on the root path service",
        ),
        (
            &["deploy", "svc", "--target=t", "--tls-on-demand-url=/check"],
            "service options invalid: TLS must be enabled to use a TLS on-demand URL",
        ),
        (
            &["deploy", "svc", "--target=t", "--host=a.test,b.test", "--canonical-host=c.test"],
            "service options invalid: canonical-host 'c.test' must be present in the hosts list: [a.test b.test]",
        ),
        (&["deploy", "svc"], r#"required flag(s) "target" not set"#),
        (
            &["deploy", "svc", "--target=t", "--tls-certificate-path=/c.pem"],
            "if any flags in the group [tls-certificate-path tls-private-key-path] are set they must all be set; missing [tls-private-key-path]",
        ),
        (
            &["deploy", "svc", "--target=t", "--tls-private-key-path=/k.pem"],
            "if any flags in the group [tls-certificate-path tls-private-key-path] are set they must all be set; missing [tls-certificate-path]",
        ),
        (&["rollout", "deploy", "svc"], r#"required flag(s) "target" not set"#),
        (&["rollout", "set", "svc"], "at least one of the flags in the group [percent list] is required"),
        (
            &["rollout", "set", "svc", "--percent=half"],
            r#"invalid argument "half" for "--percent" flag: strconv.ParseInt: parsing "half": invalid syntax"#,
        ),
        (&["list", "extra"], r#"unknown command "extra" for "kamal-proxy list""#),
        (&["stop", "svc", "--drain-timeout=abc"], r#"invalid argument "abc" for "--drain-timeout" flag: time: invalid duration "abc""#),
        (&["pause", "svc", "--max-pause=5x"], r#"invalid argument "5x" for "--max-pause" flag: time: unknown unit "x" in duration "5x""#),
        (&["run", "--http-port=70000"], "listen tcp: address 70000: invalid port"),
        (&["run", "--metrics-port=-1"], "listen tcp: address -1: invalid port"),
    ];
    for (args, message) in cases {
        let o = env.run(args);
        assert_eq!(stderr(&o), format!("Error: {message}\n"), "{args:?}");
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(stdout(&o), "", "{args:?}");
    }
    assert!(server.requests().is_empty(), "{:?}", server.requests());
}

#[test]
fn unknown_command_suggests_help() {
    let env = Env::new();
    let o = env.run(&["foo"]);
    assert_fails(
        &o,
        "Error: unknown command \"foo\" for \"kamal-proxy\"\nRun 'kamal-proxy --help' for usage.\n",
    );
    let o = env.run(&["deplyo", "svc"]);
    assert_fails(
        &o,
        "Error: unknown command \"deplyo\" for \"kamal-proxy\"\n\nDid you mean this?\n\tdeploy\n\n\
         Run 'kamal-proxy --help' for usage.\n",
    );
}

#[test]
fn dial_errors_read_like_go() {
    let env = Env::new();
    let socket = env.socket();
    let o = env.run(&["resume", "svc"]);
    assert_fails(
        &o,
        &format!(
            "Error: dial unix {}: connect: no such file or directory\n",
            socket.display()
        ),
    );

    // A socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let o = env.run(&["list"]);
    assert_fails(
        &o,
        &format!(
            "Error: dial unix {}: connect: connection refused\n",
            socket.display()
        ),
    );
}

#[test]
fn server_errors_are_printed() {
    let env = Env::new();
    let server = env.server(Response::Error {
        message: "service not found".into(),
    });
    let o = env.run(&["remove", "nope"]);
    assert_fails(&o, "Error: service not found\n");
    assert_eq!(
        server.only_request(),
        Request::Remove {
            service: "nope".into()
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Help, version, data directory.

#[test]
fn help_and_no_arguments_exit_zero() {
    let env = Env::new();
    let root = env.run(&[]);
    assert_succeeds(&root);
    let text = stdout(&root);
    assert!(text.starts_with(
        "HTTP proxy for zero downtime deployments\n\nUsage:\n  kamal-proxy [command]\n"
    ));
    for args in [&["--help"][..], &["-h"], &["help"]] {
        let o = env.run(args);
        assert_succeeds(&o);
        assert_eq!(stdout(&o), text, "{args:?}");
    }
    let rollout = env.run(&["rollout"]);
    assert_succeeds(&rollout);
    assert!(stdout(&rollout)
        .starts_with("Manage rollout settings\n\nUsage:\n  kamal-proxy rollout [command]\n"));
    for args in [
        &["rollout", "nope"][..],
        &["help", "rollout"],
        &["rollout", "-h"],
    ] {
        let o = env.run(args);
        assert_succeeds(&o);
        assert_eq!(stdout(&o), stdout(&rollout), "{args:?}");
    }
    let o = env.run(&["help", "deploy"]);
    assert_succeeds(&o);
    assert!(stdout(&o).starts_with(
        "Deploy a target host\n\nUsage:\n  kamal-proxy deploy <service> [flags]\n\nFlags:\n"
    ));
    assert!(stdout(&o).contains(&format!(
        "Location to store ACME assets (default \"{}\")",
        env.certs()
    )));
    let o = env.run(&["stop", "--help"]);
    assert_succeeds(&o);
    assert_eq!(
        stdout(&o),
        "Stop a service\n\nUsage:\n  kamal-proxy stop <service> [flags]\n\nFlags:\n      \
         --drain-timeout duration   How long to allow in-flight requests to complete (default 30s)\n  \
         -h, --help                     help for stop\n      \
         --message string           Message to display to clients while stopped\n"
    );
}

#[test]
fn version_flag_prints_the_version() {
    let env = Env::new();
    let o = env.run(&["--version"]);
    assert_succeeds(&o);
    assert_eq!(
        stdout(&o),
        format!("kamal-proxy version {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn run_help_shows_environment_defaults() {
    let env = Env::new();
    let o = env
        .command(&["run", "--help"])
        .env("HTTP_PORT", "1234")
        .env("KAMAL_PROXY_DEBUG", "true")
        .output()
        .unwrap();
    assert_succeeds(&o);
    let text = stdout(&o);
    assert!(
        text.contains("      --http-port int      Port to serve HTTP traffic on (default 1234)\n"),
        "{text}"
    );
    assert!(
        text.contains("      --debug              Include debugging logs (default true)\n"),
        "{text}"
    );
    // A present but invalid prefixed variable hides the bare one and yields the built-in default.
    let o = env
        .command(&["run", "--help"])
        .env("KAMAL_PROXY_HTTP_PORT", "abc")
        .env("HTTP_PORT", "1234")
        .env("METRICS_PORT", "9090")
        .output()
        .unwrap();
    let text = stdout(&o);
    assert!(
        text.contains("Port to serve HTTP traffic on (default 80)\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "Publish metrics on the specified port (default zero to disable) (default 9090)\n"
        ),
        "{text}"
    );
    // An explicit flag wins over the environment (and is then validated).
    let o = env
        .command(&["run", "--http-port=99999"])
        .env("HTTP_PORT", "8080")
        .output()
        .unwrap();
    assert_fails(&o, "Error: listen tcp: address 99999: invalid port\n");
}

#[test]
fn every_invocation_creates_the_data_dir() {
    for args in [&["--help"][..], &["foo"], &["deploy"], &["list"]] {
        let env = Env::new();
        let _ = env.run(args);
        let dir = env.home().join(".config/kamal-proxy");
        let mode = std::fs::metadata(&dir)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{args:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Requests sent to the server.

#[test]
fn kamal_deploy_command_line_is_accepted() {
    let env = Env::new();
    let server = env.server(Response::Ok);
    let o = env.run(&[
        "deploy",
        "app-web",
        "--target=172.1.0.2:80",
        "--host=example.com",
        "--host=anotherexample.com",
        "--tls",
        "--deploy-timeout=30s",
        "--drain-timeout=30s",
        "--buffer-requests",
        "--buffer-responses",
        "--log-request-header=Cache-Control",
        "--log-request-header=Last-Modified",
        "--log-request-header=User-Agent",
    ]);
    assert_succeeds(&o);
    assert_eq!(stdout(&o), "");
    let d = deploy_of(server.only_request());
    assert_eq!(d.service, "app-web");
    assert_eq!(d.target_urls, strings(&["172.1.0.2:80"]));
    assert!(d.reader_urls.is_empty());
    assert_eq!(d.deploy_timeout, secs(30));
    assert_eq!(d.drain_timeout, secs(30));
    assert!(!d.force);
    let s = &d.service_options;
    assert_eq!(s.hosts, strings(&["example.com", "anotherexample.com"]));
    assert!(s.path_prefixes.is_empty());
    assert!(s.tls_enabled);
    assert!(s.tls_redirect);
    assert!(s.strip_prefix);
    assert_eq!(s.acme_directory, "");
    assert_eq!(s.acme_cache_path, env.certs());
    assert_eq!(s.writer_affinity_timeout, secs(1));
    let t = &d.target_options;
    assert!(t.buffer_requests && t.buffer_responses);
    assert_eq!(
        t.log_request_headers,
        strings(&["Cache-Control", "Last-Modified", "User-Agent"])
    );
    assert!(t.log_response_headers.is_empty());
    assert!(!t.forward_headers, "forward-headers defaults to !tls");
    assert_eq!(t.health_check_config.path, "/up");
    assert_eq!(t.health_check_config.port, 0);
    assert_eq!(t.health_check_config.interval, secs(1));
    assert_eq!(t.health_check_config.timeout, secs(5));
    assert_eq!(t.response_timeout, secs(30));
    assert_eq!(t.max_memory_buffer_size, 1_048_576);
    assert_eq!((t.max_request_body_size, t.max_response_body_size), (0, 0));
}

#[test]
fn every_deploy_flag_reaches_the_server() {
    let env = Env::new();
    let server = env.server(Response::Ok);
    let o = env.run(&[
        "--target",
        "a:1", // flags may come before the command and the positional
        "deploy",
        "--target=b:2,c:3",
        "--read-target",
        "r:1",
        "--host",
        "x.test",
        "--path-prefix=/api",
        "--path-prefix=app",
        "--strip-path-prefix=false",
        "--tls-redirect=false",
        "--canonical-host=x.test",
        "--deploy-timeout",
        "1m30s",
        "--drain-timeout=500ms",
        "--force",
        "--health-check-interval=3s",
        "--health-check-timeout=2s",
        "--health-check-path=/healthz",
        "--health-check-port=0x1F90",
        "--health-check-host=internal",
        "--writer-affinity-timeout=2s",
        "--read-target-websockets",
        "--target-timeout=10s",
        "--buffer-requests=false",
        "--buffer-responses=1",
        "--buffer-memory=0b1000",
        "--max-request-body=010",
        "--max-response-body=1_000",
        "--error-pages=/pages",
        "--log-response-header=x-a,x-b",
        "--exclude-metrics-path=/up",
        "--exclude-metrics-path=/health",
        "--forward-headers",
        "--client-ip-header=CF-Connecting-IP",
        "--scope-cookie-paths",
        "--tls-acme-cache-path=/acme",
        "--tls-staging",
        "svc",
    ]);
    assert_succeeds(&o);
    let d = deploy_of(server.only_request());
    assert_eq!(d.service, "svc");
    assert_eq!(
        d.target_urls,
        strings(&["a:1", "b:2", "c:3"]),
        "occurrences before the command count too"
    );
    assert_eq!(d.reader_urls, strings(&["r:1"]));
    assert_eq!(d.deploy_timeout, secs(90));
    assert_eq!(d.drain_timeout, GoDuration::from_millis(500));
    assert!(d.force);
    let s = &d.service_options;
    assert_eq!(s.hosts, strings(&["x.test"]));
    assert_eq!(s.path_prefixes, strings(&["/api", "app"]));
    assert!(!s.strip_prefix && !s.tls_redirect && !s.tls_enabled);
    assert_eq!(s.canonical_host, "x.test");
    assert_eq!(s.acme_cache_path, "/acme");
    assert_eq!(
        s.acme_directory,
        "https://acme-staging-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(s.error_page_path, "/pages");
    assert_eq!(s.writer_affinity_timeout, secs(2));
    assert!(s.read_targets_accept_websockets);
    assert_eq!(s.exclude_metrics_paths, strings(&["/up", "/health"]));
    assert_eq!(s.client_ip_header, "CF-Connecting-IP");
    let t = &d.target_options;
    assert_eq!(t.health_check_config.interval, secs(3));
    assert_eq!(t.health_check_config.timeout, secs(2));
    assert_eq!(t.health_check_config.path, "/healthz");
    assert_eq!(t.health_check_config.port, 8080);
    assert_eq!(t.health_check_config.host, "internal");
    assert_eq!(t.response_timeout, secs(10));
    assert!(!t.buffer_requests && t.buffer_responses);
    assert_eq!(t.max_memory_buffer_size, 8);
    assert_eq!(t.max_request_body_size, 8);
    assert_eq!(t.max_response_body_size, 1000);
    assert_eq!(t.log_response_headers, strings(&["x-a", "x-b"]));
    assert!(t.forward_headers && t.scope_cookie_paths);
}

#[test]
fn kamal_option_spellings_are_accepted() {
    let env = Env::new();
    let server = env.server(Response::Ok);
    let o = env.run(&[
        "deploy",
        "app-web",
        "--target=172.1.0.2:80",
        "--host=",
        "--strip-path-prefix=false",
        "--forward-headers=false",
        "--tls-redirect=false",
        "--tls-certificate-path=/c.pem",
        "--tls-private-key-path=/k.pem",
        "--host=a.test",
        "--tls",
        "--health-check-interval=3s",
        r#"--log-request-header="Quoted,Value""#,
    ]);
    assert_succeeds(&o);
    let d = deploy_of(server.only_request());
    assert_eq!(
        d.service_options.hosts,
        strings(&["a.test"]),
        "--host=\"\" adds nothing"
    );
    assert!(!d.service_options.strip_prefix);
    assert!(!d.service_options.tls_redirect);
    assert!(!d.target_options.forward_headers);
    assert_eq!(d.service_options.tls_certificate_path, "/c.pem");
    assert_eq!(d.service_options.tls_private_key_path, "/k.pem");
    assert_eq!(
        d.target_options.log_request_headers,
        strings(&["Quoted,Value"])
    );
    assert_eq!(d.target_options.health_check_config.interval, secs(3));
}

#[test]
fn forward_headers_default_is_not_tls() {
    let env = Env::new();
    let server = env.server(Response::Ok);
    assert_succeeds(&env.run(&["deploy", "a", "--target=t"]));
    assert_succeeds(&env.run(&[
        "deploy",
        "b",
        "--target=t",
        "--host=b.test",
        "--tls",
        "--forward-headers",
    ]));
    assert_succeeds(&env.run(&["deploy", "c", "--target=t", "--forward-headers=false"]));
    let got: Vec<bool> = server
        .requests()
        .into_iter()
        .map(|r| deploy_of(r).target_options.forward_headers)
        .collect();
    assert_eq!(got, [true, true, false]);
}

#[test]
fn buffer_flags_presence_is_what_counts() {
    let env = Env::new();
    let server = env.server(Response::Ok);
    let o = env.run(&[
        "deploy",
        "svc",
        "--target=t",
        "--buffer-requests=false",
        "--max-request-body=10",
    ]);
    assert_succeeds(&o);
    let d = deploy_of(server.only_request());
    assert!(!d.target_options.buffer_requests);
    assert_eq!(d.target_options.max_request_body_size, 10);
}

#[test]
fn service_commands_send_their_requests() {
    let env = Env::new();
    let server = env.server(Response::Ok);
    let lines: &[&[&str]] = &[
        &["stop", "app-web", "--drain-timeout=10s", "--message=Hi"],
        &["stop", "app-web"],
        &["resume", "app-web"],
        &["remove", "app-web"],
        &["rm", "other"],
        &["pause", "app-web", "--drain-timeout=5s", "--max-pause=1m"],
        &["pause", "app-web"],
        &[
            "rollout",
            "deploy",
            "app-web",
            "--target=n:1,n:2",
            "--read-target=r:1",
            "--deploy-timeout=1s",
            "--drain-timeout=2s",
        ],
        &["rollout", "deploy", "app-web", "--target=n:1"],
        &[
            "rollout",
            "set",
            "app-web",
            "--percent=0x32",
            "--list=vip,\"a,b\"",
        ],
        &["rollout", "set", "app-web", "--percent=-5"],
        &["rollout", "stop", "app-web"],
    ];
    for args in lines {
        let o = env.run(args);
        assert_succeeds(&o);
        assert_eq!(stdout(&o), "", "{args:?}");
    }
    let s = |name: &str| name.to_string();
    let want = vec![
        Request::Stop {
            service: s("app-web"),
            drain_timeout: secs(10),
            message: s("Hi"),
        },
        Request::Stop {
            service: s("app-web"),
            drain_timeout: secs(30),
            message: s(""),
        },
        Request::Resume {
            service: s("app-web"),
        },
        Request::Remove {
            service: s("app-web"),
        },
        Request::Remove {
            service: s("other"),
        },
        Request::Pause {
            service: s("app-web"),
            drain_timeout: secs(5),
            pause_timeout: secs(60),
        },
        Request::Pause {
            service: s("app-web"),
            drain_timeout: secs(30),
            pause_timeout: secs(30),
        },
        Request::RolloutDeploy(kamal_control::RolloutDeployRequest {
            service: s("app-web"),
            target_urls: strings(&["n:1", "n:2"]),
            reader_urls: strings(&["r:1"]),
            deploy_timeout: secs(1),
            drain_timeout: secs(2),
        }),
        Request::RolloutDeploy(kamal_control::RolloutDeployRequest {
            service: s("app-web"),
            target_urls: strings(&["n:1"]),
            reader_urls: vec![],
            deploy_timeout: secs(30),
            drain_timeout: secs(30),
        }),
        Request::RolloutSet {
            service: s("app-web"),
            percentage: 50,
            allowlist: strings(&["vip", "a,b"]),
        },
        Request::RolloutSet {
            service: s("app-web"),
            percentage: -5,
            allowlist: vec![],
        },
        Request::RolloutStop {
            service: s("app-web"),
        },
    ];
    assert_eq!(server.requests(), want);
}

// ---------------------------------------------------------------------------------------------
// list

fn described(
    name: &str,
    hosts: &[&str],
    paths: &[&str],
    targets: &[&str],
    state: &str,
    tls: bool,
) -> ServiceDescription {
    let targets = targets
        .iter()
        .map(|a| TargetDescription {
            address: a.to_string(),
            state: "healthy".into(),
        })
        .collect();
    ServiceDescription {
        name: name.into(),
        hosts: strings(hosts),
        paths: strings(paths),
        targets,
        state: state.into(),
        tls,
        ..Default::default()
    }
}

#[test]
fn list_prints_upstreams_table() {
    let env = Env::new();
    let mut web = described(
        "web",
        &["a.test", "b.test"],
        &["/"],
        &["10.0.0.1:80"],
        "running",
        true,
    );
    web.readers = vec![TargetDescription {
        address: "10.0.0.2:80".into(),
        state: "healthy".into(),
    }];
    let services = vec![
        web,
        described(
            "api",
            &[""],
            &["/api", "/v2"],
            &["127.0.0.1:3000"],
            "paused",
            false,
        ),
    ];
    let server = env.server(Response::List { services });
    let o = env.run(&["list"]);
    assert_succeeds(&o);
    let want = concat!(
        "\x1b[3;94mService\x1b[0m  \x1b[3;94mHost\x1b[0m           \x1b[3;94mPath\x1b[0m      ",
        "\x1b[3;94mTarget\x1b[0m                   \x1b[3;94mState\x1b[0m    \x1b[3;94mTLS\x1b[0m  \n",
        "\x1b[1;34mapi\x1b[0m      \x1b[m*\x1b[0m              \x1b[m/api,/v2\x1b[0m  ",
        "\x1b[m127.0.0.1:3000\x1b[0m           \x1b[mpaused\x1b[0m   \x1b[mno\x1b[0m   \n",
        "\x1b[1;34mweb\x1b[0m      \x1b[ma.test,b.test\x1b[0m  \x1b[m/\x1b[0m         ",
        "\x1b[m10.0.0.1:80,10.0.0.2:80\x1b[0m  \x1b[mrunning\x1b[0m  \x1b[myes\x1b[0m  \n",
    );
    assert_eq!(stdout(&o), want);
    assert_eq!(server.only_request(), Request::List);
    assert_succeeds(&env.run(&["ls"]));
}

#[test]
fn list_json_has_every_field() {
    let env = Env::new();
    let mut svc = described("svc", &["a.test"], &["/"], &["t:1"], "stopped", false);
    svc.stop_message = "back soon".into();
    svc.rollout_targets = vec![TargetDescription {
        address: "n:1".into(),
        state: "adding".into(),
    }];
    let _server = env.server(Response::List {
        services: vec![svc.clone()],
    });
    let o = env.run(&["list", "--json"]);
    assert_succeeds(&o);
    let parsed: Vec<ServiceDescription> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(parsed, vec![svc]);
}

#[test]
fn list_with_no_services_prints_the_header() {
    let env = Env::new();
    let _server = env.server(Response::List { services: vec![] });
    let o = env.run(&["list"]);
    assert_succeeds(&o);
    assert_eq!(
        stdout(&o),
        "\x1b[3;94mService\x1b[0m  \x1b[3;94mHost\x1b[0m  \x1b[3;94mPath\x1b[0m  \x1b[3;94mTarget\x1b[0m  \
         \x1b[3;94mState\x1b[0m  \x1b[3;94mTLS\x1b[0m  \n"
    );
}

// ---------------------------------------------------------------------------------------------
// `run` wiring: the CLI starts the real server, and the client commands reach it.

/// Polls `done` every 20 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

#[test]
fn run_serves_the_client_commands() {
    let env = Env::new();
    let mut server = env
        .command(&["run", "--http-port", "0", "--https-port=0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let socket = env.socket();
    let up = eventually(Duration::from_secs(20), || socket.exists());
    if !up {
        let _ = server.kill();
        let output = server.wait_with_output().unwrap();
        panic!(
            "server did not create its socket: {}{}",
            stdout(&output),
            stderr(&output)
        );
    }

    let listed = env.run(&["list"]);
    let removed = env.run(&["remove", "nope"]);

    // Graceful stop on SIGTERM (sent with kill(1): signals need unsafe code otherwise).
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exited = eventually(Duration::from_secs(20), || {
        matches!(server.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = server.kill();
    }
    let output = server.wait_with_output().unwrap();
    assert!(exited, "server did not stop on SIGTERM");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    assert_succeeds(&listed);
    assert_eq!(
        stdout(&listed),
        "\x1b[3;94mService\x1b[0m  \x1b[3;94mHost\x1b[0m  \x1b[3;94mPath\x1b[0m  \x1b[3;94mTarget\x1b[0m  \
         \x1b[3;94mState\x1b[0m  \x1b[3;94mTLS\x1b[0m  \n"
    );
    assert_fails(&removed, "Error: service not found\n");
    assert!(
        stdout(&output).contains(r#""msg":"Server started""#),
        "{}",
        stdout(&output)
    );
}
