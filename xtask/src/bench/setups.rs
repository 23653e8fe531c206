//! The three servers of a run: the fast upstream, kamal-proxy (run and deployed through its own
//! CLI, as users run it) and nginx (a generated reverse-proxy configuration).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::procs::{self, Guarded};
use super::tls::Certificate;

/// How long a server may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for one CLI call (a deploy waits for a health check and a drain).
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `bench-upstream`.
#[derive(Debug)]
pub struct Upstream {
    /// The process.
    pub process: Guarded,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// Starts `bench-upstream` and waits for its `listening 127.0.0.1:PORT` line.
pub fn start_upstream(bin: &Path, core: Option<&str>) -> Result<Upstream, String> {
    let child = procs::pinned(bin, core)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut process = Guarded::new("bench-upstream", child);
    let stdout = process
        .take_stdout()
        .ok_or("bench-upstream has no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(START_TIMEOUT)
        .map_err(|_| "bench-upstream did not start".to_string())?;
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("bench-upstream said {line:?}, not `listening ADDR`"))?;
    Ok(Upstream { process, port })
}

/// A running `kamal-proxy run` with its own `HOME` and control socket.
#[derive(Debug)]
pub struct Kamal {
    /// The server process.
    pub process: Guarded,
    /// Its plain-HTTP port.
    pub http_port: u16,
    /// Its HTTPS port (asked for as `--https-port 0`, read back from `Server started`).
    pub https_port: u16,
    bin: PathBuf,
    dir: PathBuf,
    /// Where its stdout (the JSON log, one access-log line per request) goes.
    pub log: Arc<Log>,
}

/// The proxy's stdout: a file the proxy appends to (emptied between loads, outside the
/// measured windows), or a pipe that a thread of the bench reads.
///
/// The file is the default: the bench runs on the load generator's core, and a reader woken
/// by every batch of log lines there pre-empts the load generator and the upstream and slows
/// the proxy's pipeline down (the proxy itself then idles). Either way the proxy formats and
/// writes every line, which is the cost that belongs to it.
#[derive(Debug)]
pub struct Log {
    /// The file, when not a pipe.
    file: Option<PathBuf>,
    lines: AtomicU64,
}

impl Log {
    /// Counts the lines written to the file since the last call and empties it (the proxy
    /// appends, so it writes from the start again). A no-op for a pipe, counted as read.
    pub fn collect(&self) {
        let Some(path) = &self.file else { return };
        let Ok(file) = std::fs::File::open(path) else {
            return;
        };
        // Read in pieces: a load leaves a few hundred megabytes of lines.
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut lines = 0u64;
        while let Ok(buf) = reader.fill_buf() {
            if buf.is_empty() {
                break;
            }
            lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
            let n = buf.len();
            reader.consume(n);
        }
        self.lines.fetch_add(lines, Ordering::Relaxed);
        if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
            let _ = file.set_len(0);
        }
    }

    /// Lines counted so far.
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }
}

impl Kamal {
    /// Starts `kamal-proxy run --http-port 0 --https-port 0` with `HOME`, `TMPDIR` and the
    /// socket under `dir`, and waits for `Server started`. Its stdout goes to a file under
    /// `dir`, or with `log_pipe` through a pipe read and thrown away by the bench (see [`Log`]).
    pub fn start(
        bin: &Path,
        dir: &Path,
        core: Option<&str>,
        log_pipe: bool,
    ) -> Result<Kamal, String> {
        Self::start_with(bin, dir, core, &[], log_pipe)
    }

    /// Like [`Kamal::start`], with extra `run` arguments (e.g. `--metrics-port`).
    pub fn start_with(
        bin: &Path,
        dir: &Path,
        core: Option<&str>,
        extra: &[&str],
        log_pipe: bool,
    ) -> Result<Kamal, String> {
        for sub in ["home", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("cannot create {}: {e}", dir.join(sub).display()))?;
        }
        let stderr = std::fs::File::create(dir.join("stderr.log"))
            .map_err(|e| format!("cannot create the kamal-proxy stderr log: {e}"))?;
        let log_path = dir.join("stdout.log");
        let stdout = if log_pipe {
            Stdio::piped()
        } else {
            // Appending, so that emptying the file between loads makes it start over.
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .append(true)
                .open(&log_path)
                .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?
                .into()
        };
        let mut command = procs::pinned(bin, core);
        environment(&mut command, dir);
        let child = command
            .args(["run", "--http-port", "0", "--https-port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut process = Guarded::new("kamal-proxy", child);
        let log = Arc::new(Log {
            file: (!log_pipe).then(|| log_path.clone()),
            lines: AtomicU64::new(0),
        });
        let not_started = || {
            let stderr = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            format!("kamal-proxy did not log `Server started`:\n{stderr}")
        };
        let (http_port, https_port) = if log_pipe {
            let stdout = process.take_stdout().ok_or("kamal-proxy has no stdout")?;
            let (tx, rx) = mpsc::channel();
            let log = Arc::clone(&log);
            std::thread::spawn(move || drain_log(stdout, &tx, &log.lines));
            rx.recv_timeout(START_TIMEOUT).map_err(|_| not_started())?
        } else {
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                if let Some(ports) = text.lines().find_map(started_ports) {
                    break ports;
                }
                if Instant::now() > deadline {
                    return Err(not_started());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        Ok(Kamal {
            process,
            http_port,
            https_port,
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            log,
        })
    }

    /// Runs `kamal-proxy <args>` as a client of this server.
    pub fn cli(&self, args: &[&str]) -> Result<Output, String> {
        let mut command = Command::new(&self.bin);
        environment(&mut command, &self.dir);
        command.args(args);
        procs::run_bounded(&mut command, CLI_TIMEOUT)
    }

    /// `kamal-proxy deploy <service> <args…>`; returns how long it took.
    pub fn deploy(&self, service: &str, args: &[&str]) -> Result<Duration, String> {
        let started = Instant::now();
        let mut all = vec!["deploy", service];
        all.extend_from_slice(args);
        let output = self.cli(&all)?;
        if output.status.success() {
            Ok(started.elapsed())
        } else {
            Err(format!(
                "kamal-proxy {} failed: {}{}",
                all.join(" "),
                String::from_utf8_lossy(&output.stderr).trim(),
                String::from_utf8_lossy(&output.stdout).trim()
            ))
        }
    }
}

/// The same clean environment for the server and its clients, so the CLI reaches this server.
fn environment(command: &mut Command, dir: &Path) {
    command
        .env_clear()
        .env("HOME", dir.join("home"))
        .env("TMPDIR", dir.join("tmp"))
        .env("KAMAL_PROXY_SOCKET", dir.join("kamal-proxy.sock"))
        .env("TZ", "UTC");
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    // Allocator tuning experiments (`MIMALLOC_PURGE_DELAY=0 cargo xtask bench …`) reach it.
    for (key, value) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MIMALLOC_") {
            command.env(key, value);
        }
    }
}

/// The HTTP and HTTPS ports of a `Server started` log line.
fn started_ports(line: &str) -> Option<(u16, u16)> {
    if !line.contains("\"Server started\"") {
        return None;
    }
    let port = |key| json_u64(line, key).and_then(|p| u16::try_from(p).ok());
    Some((port("http")?, port("https")?))
}

/// Reads the server's stdout: finds the `Server started` line and sends its HTTP and HTTPS
/// ports, then discards everything, counting lines.
fn drain_log(stdout: impl Read, started: &mpsc::Sender<(u16, u16)>, lines: &AtomicU64) {
    let mut reader = BufReader::with_capacity(256 * 1024, stdout);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        lines.fetch_add(1, Ordering::Relaxed);
        if let Some(ports) = started_ports(&line) {
            let _ = started.send(ports);
            break;
        }
    }
    loop {
        let Ok(buf) = reader.fill_buf() else { return };
        if buf.is_empty() {
            return;
        }
        let newlines = buf.iter().filter(|&&b| b == b'\n').count() as u64;
        lines.fetch_add(newlines, Ordering::Relaxed);
        let n = buf.len();
        reader.consume(n);
    }
}

/// The unsigned number after `"key":` in a one-line JSON object.
fn json_u64(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = line[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A running nginx (master and workers).
#[derive(Debug)]
pub struct Nginx {
    /// The master; its workers are in [`Guarded::workers`].
    pub process: Guarded,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its HTTPS (HTTP/2 and HTTP/1.1) port on 127.0.0.1, when started with a certificate.
    pub tls_port: Option<u16>,
}

/// Starts nginx with [`nginx_config`] in `dir`, in the foreground, and waits for its workers.
/// With a certificate it also serves HTTPS on a second port.
pub fn start_nginx(
    bin: &Path,
    dir: &Path,
    upstream_port: u16,
    certificate: Option<&Certificate>,
    core: Option<&str>,
) -> Result<Nginx, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let port = procs::free_port()?;
    let tls = match certificate {
        Some(certificate) => Some((procs::free_port()?, certificate)),
        None => None,
    };
    let config = dir.join("nginx.conf");
    std::fs::write(
        &config,
        nginx_config(dir, port, upstream_port, tls, is_root()),
    )
    .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let child = procs::pinned(bin, core)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&config)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut process = Guarded::new("nginx", child);
    let tls_port = tls.map(|(p, _)| p);
    for port in [Some(port), tls_port].into_iter().flatten() {
        if !procs::wait_listening(port, START_TIMEOUT) || process.exited() {
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            return Err(format!("nginx did not start on 127.0.0.1:{port}:\n{log}"));
        }
    }
    // Workers are forked before the listener answers; poll briefly in case one is late.
    let deadline = Instant::now() + Duration::from_secs(5);
    while process.workers.is_empty() && Instant::now() < deadline {
        process.workers = procs::children_of(process.pid());
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Nginx {
        process,
        port,
        tls_port,
    })
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// nginx as the same kind of reverse proxy kamal-proxy is: one worker (one core), the same
/// forwarded headers and request id, keep-alive to the upstream, no access log, and no
/// per-connection request cap (its default of 1,000 would force reconnects kamal-proxy does
/// not make). Buffering stays at nginx's defaults, as most deployments leave it; the error log
/// stays at its default level, `error`, because at `warn` nginx would log every 1 MiB body it
/// buffers to a temporary file.
///
/// With `tls` (a port and the certificate kamal-proxy serves), a second server speaks HTTP/2
/// and HTTP/1.1 over TLS on that port with the same location; TLS as rustls offers it in
/// kamal-proxy: versions 1.2 and 1.3, key exchange groups X25519, P-256, P-384 in that order,
/// the client's cipher order, and session resumption left at nginx's defaults (tickets on).
pub fn nginx_config(
    dir: &Path,
    port: u16,
    upstream_port: u16,
    tls: Option<(u16, &Certificate)>,
    as_root: bool,
) -> String {
    let location = "        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Request-ID $request_id;
            proxy_set_header X-Request-Start \"t=${msec}\";
        }";
    let tls_server = tls.map_or(String::new(), |(tls_port, certificate)| {
        format!(
            "    server {{
        listen 127.0.0.1:{tls_port} ssl http2 default_server;
        ssl_certificate {};
        ssl_certificate_key {};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ecdh_curve X25519:prime256v1:secp384r1;
{location}
    }}
",
            certificate.cert.display(),
            certificate.key.display()
        )
    });
    let dir = dir.display();
    // A root master would switch workers to `nobody`, who cannot write the temp dirs here.
    let user = if as_root { "user root;\n" } else { "" };
    format!(
        "{user}worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
worker_rlimit_nofile 65536;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_max_body_size 0;
    upstream app {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} default_server;
{location}
    }}
{tls_server}}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_numbers_in_a_log_line() {
        let line =
            r#"{"time":"x","level":"INFO","msg":"Server started","http":41234,"https": 41235}"#;
        assert_eq!(json_u64(line, "http"), Some(41234));
        assert_eq!(json_u64(line, "https"), Some(41235));
        assert_eq!(json_u64(line, "missing"), None);
        assert_eq!(json_u64(r#"{"http":"x"}"#, "http"), None);
    }

    #[test]
    fn the_drain_reports_the_port_and_counts_every_line() {
        let log =
            "{\"msg\":\"starting\"}\n{\"msg\":\"Server started\",\"http\":8080,\"https\":8443}\n\
                   {\"msg\":\"Request\"}\n{\"msg\":\"Request\"}\n";
        let (tx, rx) = mpsc::channel();
        let lines = AtomicU64::new(0);
        drain_log(log.as_bytes(), &tx, &lines);
        assert_eq!(rx.try_recv(), Ok((8080, 8443)));
        assert_eq!(lines.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn nginx_config_proxies_to_the_upstream_with_keep_alive() {
        let config = nginx_config(Path::new("/tmp/b"), 8080, 9090, None, true);
        assert!(config.starts_with("user root;\nworker_processes 1;\n"));
        assert!(config.contains("listen 127.0.0.1:8080 default_server;"));
        assert!(config.contains("server 127.0.0.1:9090;\n        keepalive 128;"));
        assert!(config.contains("proxy_set_header Connection \"\";"));
        assert!(config.contains("proxy_set_header X-Request-Start \"t=${msec}\";"));
        assert!(config.contains("access_log off;"));
        assert!(config.contains("error.log error;"));
        assert!(config.contains("proxy_temp_path /tmp/b/proxy;"));
        assert!(!config.contains("ssl"));
        assert!(!nginx_config(Path::new("/tmp/b"), 1, 2, None, false).contains("user "));
        // Balanced braces: a typo here would only show when nginx refuses to start.
        assert_eq!(config.matches('{').count(), config.matches('}').count());
    }

    #[test]
    fn nginx_config_adds_an_h2_tls_server_with_the_same_location() {
        let certificate = Certificate {
            cert: "/c/cert.pem".into(),
            key: "/c/key.pem".into(),
        };
        let config = nginx_config(
            Path::new("/tmp/b"),
            8080,
            9090,
            Some((8443, &certificate)),
            false,
        );
        assert!(config.contains("listen 127.0.0.1:8443 ssl http2 default_server;"));
        assert!(config
            .contains("ssl_certificate /c/cert.pem;\n        ssl_certificate_key /c/key.pem;"));
        assert!(config.contains("ssl_ecdh_curve X25519:prime256v1:secp384r1;"));
        assert_eq!(config.matches("location / {").count(), 2);
        assert_eq!(config.matches("proxy_pass http://app;").count(), 2);
        assert_eq!(config.matches('{').count(), config.matches('}').count());
    }

    #[test]
    fn a_log_file_is_counted_and_emptied_and_appending_starts_over() {
        use std::io::Write as _;
        let dir = std::env::temp_dir().join(format!("xtask-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stdout.log");
        let mut writer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let log = Log {
            file: Some(path.clone()),
            lines: AtomicU64::new(0),
        };
        writer.write_all(b"one\ntwo\n").unwrap();
        log.collect();
        assert_eq!(log.lines(), 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // The writer keeps its descriptor, yet writes from the start of the emptied file.
        writer.write_all(b"three\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three\n");
        log.collect();
        assert_eq!(log.lines(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn server_started_lines_give_both_ports() {
        let line = r#"{"time":"t","level":"INFO","msg":"Server started","http":8080,"https":8443}"#;
        assert_eq!(started_ports(line), Some((8080, 8443)));
        assert_eq!(
            started_ports(r#"{"msg":"Request","http":1,"https":2}"#),
            None
        );
    }
}
