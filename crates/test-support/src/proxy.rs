//! A harness around the real `kamal-proxy` binary.
//!
//! Only integration tests of the `kamal-proxy` crate know where the binary is, so they pass
//! `env!("CARGO_BIN_EXE_kamal-proxy")`. The server runs as `kamal-proxy run --http-port 0
//! --https-port 0` with its own temporary `HOME`, `TMPDIR` and `KAMAL_PROXY_SOCKET`; CLI calls
//! made through the harness use the same environment, so they reach this server only.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the server may take to log `Server started`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for one CLI call (a deploy waits for health checks and draining).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(90);

/// Lines captured from a child's output, with a condition variable to wait for new ones.
#[derive(Debug, Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl Lines {
    fn push(&self, line: String) {
        self.lock().push(line);
        self.changed.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        // Lines are only appended; a poisoned lock still holds a consistent Vec.
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn snapshot(&self) -> Vec<String> {
        self.lock().clone()
    }

    /// Waits until a line at index >= `from` satisfies `pred`, or until `timeout`.
    fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = from;
        let mut lines = self.lock();
        loop {
            if let Some(line) = lines.iter().skip(seen).find(|l| pred(l)) {
                return Some(line.clone());
            }
            seen = lines.len().max(from);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            // Wake up at least every 100 ms so a process exit is noticed by the caller's loop.
            let (guard, _) = self
                .changed
                .wait_timeout(lines, left.min(Duration::from_millis(100)))
                .unwrap_or_else(PoisonError::into_inner);
            lines = guard;
        }
    }
}

fn capture(reader: impl Read + Send + 'static, into: Arc<Lines>) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            match line {
                Ok(line) => into.push(line),
                Err(_) => break,
            }
        }
    });
}

/// Configures a [`Proxy`] before it starts; its temporary `HOME` exists already, so a test can
/// place a state file there first.
#[derive(Debug)]
pub struct ProxyBuilder {
    bin: PathBuf,
    dir: tempfile::TempDir,
    run_args: Vec<String>,
}

impl ProxyBuilder {
    /// Adds an argument to `kamal-proxy run` (after `--http-port 0 --https-port 0`).
    pub fn run_arg(mut self, arg: impl Into<String>) -> Self {
        self.run_args.push(arg.into());
        self
    }

    /// The temporary home directory.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// `<home>/.config/kamal-proxy`.
    pub fn data_dir(&self) -> PathBuf {
        self.home().join(".config").join("kamal-proxy")
    }

    /// Writes `contents` as the state file (`<data dir>/kamal-proxy.state`).
    ///
    /// # Panics
    /// If the file cannot be written.
    pub fn write_state(self, contents: &str) -> Self {
        let dir = self.data_dir();
        std::fs::create_dir_all(&dir).expect("create the data dir");
        std::fs::write(dir.join("kamal-proxy.state"), contents).expect("write the state file");
        self
    }

    /// Starts the server and waits for `Server started`.
    ///
    /// # Panics
    /// If the server does not start within 20 s (the panic shows its stderr and logs).
    pub fn start(self) -> Proxy {
        let mut proxy = Proxy {
            bin: self.bin,
            dir: self.dir,
            run_args: self.run_args,
            child: None,
            stdout: Arc::new(Lines::default()),
            stderr: Arc::new(Lines::default()),
            http_port: 0,
            https_port: 0,
        };
        proxy.spawn();
        proxy
    }
}

/// A running `kamal-proxy run` process. Dropping it kills the process (SIGKILL).
#[derive(Debug)]
pub struct Proxy {
    bin: PathBuf,
    dir: tempfile::TempDir,
    run_args: Vec<String>,
    child: Option<Child>,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    http_port: u16,
    https_port: u16,
}

impl Proxy {
    /// A builder for a proxy running the binary at `bin`, with fresh temporary directories.
    ///
    /// # Panics
    /// If the temporary directories cannot be created.
    pub fn builder(bin: impl AsRef<Path>) -> ProxyBuilder {
        let dir = tempfile::tempdir().expect("create a temp dir");
        std::fs::create_dir_all(dir.path().join("home")).expect("create HOME");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("create TMPDIR");
        ProxyBuilder {
            bin: bin.as_ref().to_path_buf(),
            dir,
            run_args: Vec::new(),
        }
    }

    /// Starts `kamal-proxy run` from `bin` with default settings.
    pub fn start(bin: impl AsRef<Path>) -> Proxy {
        Self::builder(bin).start()
    }

    /// The bound plain-HTTP port (from the `Server started` log line).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The bound HTTPS port.
    pub fn https_port(&self) -> u16 {
        self.https_port
    }

    /// The temporary home directory.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// `<home>/.config/kamal-proxy`.
    pub fn data_dir(&self) -> PathBuf {
        self.home().join(".config").join("kamal-proxy")
    }

    /// `<data dir>/kamal-proxy.state`.
    pub fn state_path(&self) -> PathBuf {
        self.data_dir().join("kamal-proxy.state")
    }

    /// The control socket path (`KAMAL_PROXY_SOCKET`).
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("kamal-proxy.sock")
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A command for the binary with this proxy's environment and nothing inherited that could
    /// change its behaviour (ports, debug, proxies for health checks).
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .env_clear()
            .env("HOME", self.home())
            .env("TMPDIR", self.dir.path().join("tmp"))
            .env("KAMAL_PROXY_SOCKET", self.socket_path())
            .env("TZ", "UTC")
            .env("RUST_BACKTRACE", "1");
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command
    }

    fn spawn(&mut self) {
        let mut command = self.command();
        command
            .args(["run", "--http-port", "0", "--https-port", "0"])
            .args(&self.run_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", self.bin.display()));
        let from = self.stdout.snapshot().len();
        if let Some(out) = child.stdout.take() {
            capture(out, self.stdout.clone());
        }
        if let Some(err) = child.stderr.take() {
            capture(err, self.stderr.clone());
        }
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        let started = loop {
            let line = self
                .stdout
                .wait_for(from, Duration::from_millis(200), |line| {
                    parse(line).is_some_and(|v| v["msg"] == "Server started")
                });
            if let Some(line) = line {
                break parse(&line);
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                // Give the capture threads a moment to collect the last output for the message.
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "kamal-proxy run did not start (exit: {exited:?})\nstderr:\n{}\nstdout:\n{}",
                    self.stderr.snapshot().join("\n"),
                    self.stdout.snapshot().join("\n")
                );
            }
        };
        let port = |key: &str| {
            started
                .as_ref()
                .and_then(|v| v[key].as_u64())
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or_else(|| panic!("Server started line without a valid `{key}` port"))
        };
        self.http_port = port("http");
        self.https_port = port("https");
    }

    /// Runs the binary as a client (`kamal-proxy <args>`) against this server and returns its
    /// output. Blocking; bounded by [`CLI_TIMEOUT`].
    ///
    /// # Panics
    /// If the client cannot be spawned or does not finish in time.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the kamal-proxy client");
        let deadline = Instant::now() + CLI_TIMEOUT;
        // Pipes are drained by threads so a chatty client cannot block on a full pipe.
        let stdout = child.stdout.take().map(read_all);
        let stderr = child.stderr.take().map(read_all);
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kamal-proxy {args:?} did not finish within {CLI_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let join = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
            h.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        Output {
            status,
            stdout: join(stdout),
            stderr: join(stderr),
        }
    }

    /// [`cli`](Self::cli) for async tests: runs the client without blocking the runtime.
    ///
    /// # Panics
    /// If the client cannot be spawned or does not finish within [`CLI_TIMEOUT`].
    pub async fn cli_async(&self, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::from(self.command());
        command.args(args).stdin(Stdio::null()).kill_on_drop(true);
        match tokio::time::timeout(CLI_TIMEOUT, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => panic!("cannot run the kamal-proxy client: {e}"),
            Err(_) => panic!("kamal-proxy {args:?} did not finish within {CLI_TIMEOUT:?}"),
        }
    }

    /// `kamal-proxy deploy <service> <args…>`; panics with the client's stderr unless it succeeds.
    pub fn deploy(&self, service: &str, args: &[&str]) -> Output {
        let mut all = vec!["deploy", service];
        all.extend_from_slice(args);
        expect_success(&all, self.cli(&all))
    }

    /// Async [`deploy`](Self::deploy).
    pub async fn deploy_async(&self, service: &str, args: &[&str]) -> Output {
        let mut all = vec!["deploy", service];
        all.extend_from_slice(args);
        expect_success(&all, self.cli_async(&all).await)
    }

    /// Deploys `service` on `host` with TLS from a custom certificate and key (PEM files).
    pub fn deploy_tls(
        &self,
        service: &str,
        target: &str,
        host: &str,
        certificate: &Path,
        key: &Path,
    ) -> Output {
        self.deploy(service, &tls_args(target, host, certificate, key))
    }

    /// Async [`deploy_tls`](Self::deploy_tls).
    pub async fn deploy_tls_async(
        &self,
        service: &str,
        target: &str,
        host: &str,
        certificate: &Path,
        key: &Path,
    ) -> Output {
        self.deploy_async(service, &tls_args(target, host, certificate, key))
            .await
    }

    /// Every stdout line so far (across restarts).
    pub fn logs(&self) -> Vec<String> {
        self.stdout.snapshot()
    }

    /// Every stdout line that parses as JSON.
    pub fn log_json(&self) -> Vec<Value> {
        self.logs().iter().filter_map(|l| parse(l)).collect()
    }

    /// Every stderr line so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.snapshot()
    }

    /// Waits (blocking) for a JSON log line satisfying `pred`, looking at all lines so far and
    /// new ones until `timeout`.
    pub fn wait_for_log(
        &self,
        mut pred: impl FnMut(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        self.stdout
            .wait_for(0, timeout, |line| parse(line).is_some_and(|v| pred(&v)))
            .and_then(|line| parse(&line))
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM (graceful stop) without waiting; see [`wait_exit`](Self::wait_exit).
    pub fn terminate(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }

    /// Waits for the process to exit, up to `timeout`; returns its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the server again with the same `HOME` (and so the same state file). A still
    /// running server is stopped first with SIGTERM (SIGKILL after 15 s). Ports change.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.terminate();
            if self.wait_exit(Duration::from_secs(15)).is_none() {
                self.kill();
            }
        }
        self.spawn();
    }

    /// Peak resident set size in KiB (`VmHWM`), while the process runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.status_field("VmHWM:")
    }

    /// Current resident set size in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> Option<u64> {
        self.status_field("VmRSS:")
    }

    /// Resets the peak RSS to the current RSS (Linux `clear_refs` 5); returns whether it worked.
    pub fn reset_peak_rss(&self) -> bool {
        self.pid()
            .is_some_and(|pid| std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok())
    }

    fn status_field(&self, key: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
    }
}

fn parse(line: &str) -> Option<Value> {
    serde_json::from_str(line).ok()
}

fn read_all(mut reader: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf);
        buf
    })
}

fn expect_success(args: &[&str], output: Output) -> Output {
    assert!(
        output.status.success(),
        "kamal-proxy {args:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    output
}

/// Helpers to read a CLI [`Output`].
pub trait OutputExt {
    /// stdout as text.
    fn stdout_text(&self) -> String;
    /// stderr as text.
    fn stderr_text(&self) -> String;
    /// The exit code (`None` if killed by a signal).
    fn code(&self) -> Option<i32>;
}

impl OutputExt for Output {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// The deploy flags of a service with a custom certificate.
fn tls_args<'a>(
    target: &'a str,
    host: &'a str,
    certificate: &'a Path,
    key: &'a Path,
) -> [&'a str; 9] {
    [
        "--target",
        target,
        "--host",
        host,
        "--tls",
        "--tls-certificate-path",
        certificate.to_str().expect("UTF-8 certificate path"),
        "--tls-private-key-path",
        key.to_str().expect("UTF-8 key path"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_matching_lines_only_after_the_start_index() {
        let lines = Arc::new(Lines::default());
        lines.push("old match".into());
        let writer = lines.clone();
        let handle = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            writer.push("new match".into());
        });
        let found = lines.wait_for(1, Duration::from_secs(5), |l| l.contains("match"));
        assert_eq!(found.as_deref(), Some("new match"));
        handle.join().unwrap();
        assert!(lines
            .wait_for(2, Duration::from_millis(50), |l| l.contains("match"))
            .is_none());
    }

    #[test]
    fn fake_binary_harness() {
        // A shell script stands in for the binary: it logs the start line and then waits.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-proxy");
        std::fs::write(
            &script,
            "#!/bin/sh\nif [ \"$1\" = run ]; then\n  echo '{\"msg\":\"Server started\",\"http\":1234,\"https\":5678}'\n  echo \"home=$HOME\"\n  exec sleep 30\nfi\necho \"client $*\"\necho oops >&2\nexit 3\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

        let mut proxy = Proxy::start(&script);
        assert_eq!((proxy.http_port(), proxy.https_port()), (1234, 5678));
        let home = proxy.home();
        let line = proxy
            .stdout
            .wait_for(0, Duration::from_secs(5), |l| l.starts_with("home="));
        assert_eq!(line, Some(format!("home={}", home.display())));
        assert!(proxy.peak_rss_kib().is_some());
        assert!(proxy.rss_kib().is_some());

        let out = proxy.cli(&["list", "x"]);
        assert_eq!(out.code(), Some(3));
        assert_eq!(out.stdout_text(), "client list x\n");
        assert_eq!(out.stderr_text(), "oops\n");

        proxy.terminate();
        assert!(proxy.wait_exit(Duration::from_secs(5)).is_some());
        proxy.restart();
        assert_eq!(proxy.home(), home);
        assert!(proxy.pid().is_some());
        proxy.kill();
        assert!(proxy.pid().is_none());
    }
}
