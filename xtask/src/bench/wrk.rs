//! Driving `wrk`: a Lua script per scenario whose `done` hook prints one machine-readable line,
//! and parsing that line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::procs;

/// The `done` hook shared by every script: one line, all numbers in microseconds.
const REPORT_HOOK: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d bytes=%d p50_us=%d p99_us=%d socket_errors=%d http_errors=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"#;

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WrkResult {
    /// Completed requests.
    pub requests: u64,
    /// Wall time of the run.
    pub duration_us: u64,
    /// Median latency.
    pub p50_us: u64,
    /// 99th-percentile latency.
    pub p99_us: u64,
    /// Connect, read, write errors and timeouts, plus responses with a status ≥ 400.
    pub errors: u64,
}

impl WrkResult {
    /// Requests per second over the run.
    pub fn rps(&self) -> f64 {
        self.requests as f64 * 1e6 / self.duration_us.max(1) as f64
    }
}

/// One load: where to send it, how, and for how long.
#[derive(Debug, Clone)]
pub struct Load<'a> {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Request path.
    pub path: &'a str,
    /// Open connections.
    pub connections: u32,
    /// Extra request headers (`Name: value`).
    pub headers: &'a [String],
    /// The Lua script (see [`write_script`]).
    pub script: &'a Path,
    /// For HTTPS: the name in the URL (SNI and `Host`); the script must then connect to
    /// 127.0.0.1 itself ([`LOOPBACK_RESOLVE`]). None: plain HTTP to 127.0.0.1.
    pub tls_name: Option<&'a str>,
}

/// Lua that makes wrk connect to 127.0.0.1 whatever the URL's host, which stays the SNI name
/// (wrk sends the URL's host as SNI) and the `Host` header, and needs no DNS entry.
pub const LOOPBACK_RESOLVE: &str = r#"
function wrk.resolve(host, service)
  wrk.addrs = wrk.lookup("127.0.0.1", service)
end
"#;

/// Writes a script that sets up the request with `setup` (Lua, may be empty) and reports with
/// the shared hook; returns its path.
pub fn write_script(dir: &Path, name: &str, setup: &str) -> Result<PathBuf, String> {
    let path = dir.join(format!("{name}.lua"));
    std::fs::write(&path, format!("{setup}\n{REPORT_HOOK}"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

fn command(wrk: &Path, load: &Load<'_>, duration: Duration, core: Option<&str>) -> Command {
    let mut command = procs::pinned(wrk, core);
    command
        .arg("--threads=1")
        .arg(format!("--connections={}", load.connections))
        .arg(format!("--duration={}s", duration.as_secs().max(1)))
        .arg("--timeout=5s")
        .arg(format!("--script={}", load.script.display()));
    for header in load.headers {
        command.arg(format!("--header={header}"));
    }
    command.arg(match load.tls_name {
        Some(name) => format!("https://{name}:{}{}", load.port, load.path),
        None => format!("http://127.0.0.1:{}{}", load.port, load.path),
    });
    command
}

/// Runs `wrk` for `duration` (bounded: killed 30 s after it should have finished).
pub fn run(
    wrk: &Path,
    load: &Load<'_>,
    duration: Duration,
    core: Option<&str>,
) -> Result<WrkResult, String> {
    let output = procs::run_bounded(
        &mut command(wrk, load, duration, core),
        duration + Duration::from_secs(30),
    )?;
    finish(&output)
}

/// Starts `wrk` for at most `cap` without waiting; stop it early with [`stop`].
pub fn start(
    wrk: &Path,
    load: &Load<'_>,
    cap: Duration,
    core: Option<&str>,
) -> Result<Child, String> {
    command(wrk, load, cap, core)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start wrk: {e}"))
}

/// Stops a `wrk` started with [`start`] (SIGINT makes it stop and report) and reads its result.
pub fn stop(child: Child) -> Result<WrkResult, String> {
    procs::signal("INT", child.id());
    let output = procs::wait_bounded(child, Duration::from_secs(15))?;
    finish(&output)
}

fn finish(output: &std::process::Output) -> Result<WrkResult, String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse(&stdout).ok_or_else(|| {
        format!(
            "wrk printed no result ({}):\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Parses the `BENCH …` line printed by the report hook.
pub fn parse(stdout: &str) -> Option<WrkResult> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("BENCH "))?;
    let field = |key: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some(WrkResult {
        requests: field("requests")?,
        duration_us: field("duration_us")?,
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
        errors: field("socket_errors")? + field("http_errors")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_report_line_among_wrk_output() {
        let out = "Running 10s test @ http://127.0.0.1:1/\n  1 threads and 64 connections\n\
                   BENCH requests=500000 duration_us=10000000 bytes=1 p50_us=900 p99_us=2500 socket_errors=2 http_errors=3\n";
        let result = parse(out).unwrap();
        assert_eq!(result.requests, 500_000);
        assert_eq!(
            (result.p50_us, result.p99_us, result.errors),
            (900, 2500, 5)
        );
        assert!((result.rps() - 50_000.0).abs() < 1e-6);
        assert_eq!(parse("no result"), None);
        assert_eq!(parse("BENCH requests=1"), None);
    }

    #[test]
    fn script_holds_setup_then_the_hook() {
        let dir = std::env::temp_dir().join(format!("xtask-wrk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = write_script(&dir, "upload", "wrk.method = \"POST\"").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(text.starts_with("wrk.method = \"POST\"\n"));
        assert!(text.contains("latency:percentile(99)"));
    }

    #[test]
    fn https_loads_name_the_host_in_the_url() {
        let headers = ["Connection: close".to_string()];
        let mut load = Load {
            port: 8443,
            path: "/",
            connections: 16,
            headers: &headers,
            script: Path::new("/s.lua"),
            tls_name: Some("tls.bench"),
        };
        let url = |load: &Load<'_>| {
            command(Path::new("wrk"), load, Duration::from_secs(1), None)
                .get_args()
                .last()
                .map(|a| a.to_string_lossy().into_owned())
        };
        assert_eq!(url(&load).as_deref(), Some("https://tls.bench:8443/"));
        load.tls_name = None;
        assert_eq!(url(&load).as_deref(), Some("http://127.0.0.1:8443/"));
        assert!(LOOPBACK_RESOLVE.contains("wrk.lookup(\"127.0.0.1\", service)"));
    }
}
