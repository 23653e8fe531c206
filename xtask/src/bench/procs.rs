//! Processes of a benchmark run: spawning them pinned to a core, stopping them for sure, and
//! reading their CPU time and memory from `/proc`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The core the proxy under test runs on.
pub const PROXY_CORE: &str = "0";
/// The core the load generator and the upstream share.
pub const LOAD_CORE: &str = "1";

/// Whether processes can be pinned (`taskset` exists and there are at least two cores).
pub fn can_pin() -> bool {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores >= 2 && which("taskset").is_some()
}

/// A command for `program`, run under `taskset -c core` when pinning is on.
pub fn pinned(program: impl AsRef<Path>, core: Option<&str>) -> Command {
    match core {
        Some(core) => {
            let mut command = Command::new("taskset");
            command.args(["-c", core]).arg(program.as_ref());
            command
        }
        None => Command::new(program.as_ref()),
    }
}

/// Moves this process (and so the threads and children it starts later) onto `core`, so that
/// the bench's own work (draining the proxy's log pipe, CLI calls) never competes with the proxy.
pub fn pin_self(core: &str) -> bool {
    Command::new("taskset")
        .args(["-a", "-p", "-c", core, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The full path of `program` on `PATH` (also the sbin directories, where nginx lives).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A child process that is stopped (SIGTERM, then SIGKILL after a grace period) when dropped,
/// together with any extra processes it reported (nginx's workers).
#[derive(Debug)]
pub struct Guarded {
    /// What the process is, for messages.
    pub name: String,
    child: Child,
    /// Its worker processes, stopped with it when the parent is killed.
    pub workers: Vec<u32>,
}

impl Guarded {
    /// Wraps a spawned child.
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self {
            name: name.into(),
            child,
            workers: Vec::new(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process and its workers: whose CPU time and memory count as this process's.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        pids.extend(&self.workers);
        pids
    }

    /// Takes the child's stdout pipe, if it was piped.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Whether the process has exited already.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if !self.exited() {
            signal("TERM", self.pid());
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self.exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Workers of a master that died without stopping them would keep serving.
        for &worker in &self.workers {
            signal("KILL", worker);
        }
    }
}

/// Sends `SIG<name>` to `pid` (through `kill(1)`: this crate stays free of `unsafe`).
pub fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `command` to completion within `timeout`, capturing its output; kills it otherwise.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> Result<Output, String> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    wait_bounded(child, timeout).map_err(|e| format!("{command:?}: {e}"))
}

/// Waits for a child started with piped stdout and stderr, up to `timeout`.
pub fn wait_bounded(mut child: Child, timeout: Duration) -> Result<Output, String> {
    // Drained by threads so that a chatty child never blocks on a full pipe.
    let stdout = child.stdout.take().map(drain_to_vec);
    let stderr = child.stderr.take().map(drain_to_vec);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not finish within {timeout:?}"));
            }
        }
    };
    let join = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    })
}

fn drain_to_vec(mut reader: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf);
        buf
    })
}

/// A port that was free on 127.0.0.1 a moment ago (for servers that need a port in a file).
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

/// Polls until `127.0.0.1:port` accepts connections, up to `timeout`.
pub fn wait_listening(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// One `GET` (or a `POST` of `body_len` bytes) to `127.0.0.1:port` with `Connection: close`;
/// returns the status code and the body length. Used to check each setup before measuring it.
pub fn http_check(
    port: u16,
    path: &str,
    host: &str,
    body_len: usize,
) -> Result<(u16, usize), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let fail = |e: std::io::Error| format!("request to 127.0.0.1:{port}{path}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(fail)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(fail)?;
    let method = if body_len > 0 { "POST" } else { "GET" };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).map_err(fail)?;
    stream.write_all(&vec![b'x'; body_len]).map_err(fail)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(fail)?;
    parse_response(&response).ok_or_else(|| format!("127.0.0.1:{port}{path}: not an HTTP response"))
}

/// Status code and body length of a complete HTTP/1.1 response read until close.
fn parse_response(response: &[u8]) -> Option<(u16, usize)> {
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let status_line = std::str::from_utf8(&response[..head_end])
        .ok()?
        .lines()
        .next()?;
    let code = status_line.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, response.len() - head_end))
}

/// Opens `count` keep-alive connections to `127.0.0.1:port`, makes one small request on each
/// (so the proxy has set the connection up fully) and holds them all open; returns the growth
/// of the `pids`' resident memory divided by `count`, in KiB. Bounded: 120 s overall.
pub fn idle_cost_kib(port: u16, pids: &[u32], count: usize) -> Result<f64, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let rss = || -> Result<u64, String> {
        pids.iter()
            .map(|pid| status_kib(*pid, "VmRSS:"))
            .sum::<Option<u64>>()
            .ok_or_else(|| "cannot read the proxy's RSS".to_string())
    };
    let before = rss()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut held = Vec::with_capacity(count);
    let mut buf = [0u8; 1024];
    for i in 0..count {
        if Instant::now() > deadline {
            return Err(format!("only {i} connections opened within 120 s"));
        }
        let fail = |e: std::io::Error| format!("connection {i} of {count}: {e}");
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(fail)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(fail)?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .map_err(fail)?;
        // The answer ends with the upstream's small body; a few reads at most.
        let mut seen = Vec::new();
        while !seen.ends_with(b"Hello, world\n") {
            let n = stream.read(&mut buf).map_err(fail)?;
            if n == 0 || seen.len() > 64 * 1024 {
                return Err(format!("connection {i}: unexpected answer"));
            }
            seen.extend_from_slice(&buf[..n]);
        }
        held.push(stream);
    }
    let after = rss()?;
    drop(held);
    Ok(after.saturating_sub(before) as f64 / count.max(1) as f64)
}

/// CPU time (user + system) consumed so far by `pids`, in microseconds.
pub fn cpu_micros(pids: &[u32], ticks_per_second: u64) -> Option<u64> {
    let mut ticks = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        ticks += stat_cpu_ticks(&stat)?;
    }
    Some(ticks * 1_000_000 / ticks_per_second.max(1))
}

/// Busy and total ticks of one core so far, from `/proc/stat`.
pub fn core_ticks(core: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    core_ticks_in(&stat, core)
}

/// The `cpu<core>` line of `/proc/stat`: busy is everything but idle and iowait (user, nice,
/// system, irq, softirq, steal); the total counts all eight.
fn core_ticks_in(stat: &str, core: &str) -> Option<(u64, u64)> {
    let label = format!("cpu{core}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = ticks.iter().sum();
    Some((total - ticks.get(3)? - ticks.get(4)?, total))
}

/// The share of the time a core was busy between two [`core_ticks`] readings.
pub fn busy_between(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (before?, after?);
    let total = t1.checked_sub(t0).filter(|&t| t > 0)?;
    Some(b1.saturating_sub(b0) as f64 / total as f64)
}

/// `utime + stime` from a `/proc/<pid>/stat` line (fields 14 and 15; the name in field 2 may
/// contain spaces, so fields are counted from its closing parenthesis).
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The parent pid (field 4) from a `/proc/<pid>/stat` line.
fn stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The processes whose parent is `parent` (nginx's workers).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| stat_ppid(&s))
                == Some(parent)
        })
        .collect()
}

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 on Linux).
pub fn ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Resets each process's peak RSS to its current RSS (`clear_refs` 5).
pub fn reset_peak_rss(pids: &[u32]) {
    for pid in pids {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
}

/// The sum of the processes' peak RSS (`VmHWM`), in KiB.
pub fn peak_rss_kib(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|pid| status_kib(*pid, "VmHWM:")).sum()
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_is_busy_for_all_but_its_idle_and_iowait_ticks() {
        let stat = "cpu  10 0 10 100 0 0 0 0 0 0\n\
                    cpu0 1 2 3 40 5 6 7 8 0 0\n\
                    cpu1 90 0 5 4 1 0 0 0 0 0\n\
                    intr 12345\n";
        assert_eq!(core_ticks_in(stat, "0"), Some((27, 72)));
        assert_eq!(core_ticks_in(stat, "1"), Some((95, 100)));
        assert_eq!(core_ticks_in(stat, "2"), None);
        // `cpu1` must not be taken for `cpu` (the sum line) or `cpu10`.
        assert_eq!(core_ticks_in("cpu10 1 1 1 1 1 1 1 1\n", "1"), None);
        let busy = busy_between(Some((27, 72)), Some((117, 172)));
        assert_eq!(busy, Some(0.9));
        assert_eq!(busy_between(Some((1, 5)), Some((1, 5))), None);
        assert_eq!(busy_between(None, Some((1, 5))), None);
    }

    #[test]
    fn reads_cpu_ticks_and_parent_from_stat_lines_with_odd_names() {
        let stat = "4439 (kamal proxy) S 1 4439 4439 0 -1 4194560 1 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(stat_cpu_ticks(stat), Some(325));
        assert_eq!(stat_ppid(stat), Some(1));
        assert_eq!(stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_this_process_from_proc() {
        let me = std::process::id();
        assert!(cpu_micros(&[me], ticks_per_second()).is_some());
        assert!(peak_rss_kib(&[me]).is_some_and(|kib| kib > 0));
        assert!(peak_rss_kib(&[me, u32::MAX]).is_none());
    }

    #[test]
    fn parses_status_and_body_length() {
        assert_eq!(
            parse_response(b"HTTP/1.1 503 Service Unavailable\r\nA: b\r\n\r\nbody"),
            Some((503, 4))
        );
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n"), None);
    }

    #[test]
    fn checks_a_real_server_on_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            // The check sends `Content-Length: 3` and three bytes after the head.
            while !request.ends_with(b"\r\n\r\nxxx") {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                request.extend_from_slice(&buf[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello")
                .unwrap();
            String::from_utf8(request).unwrap()
        });
        assert_eq!(http_check(port, "/x", "h.test", 3), Ok((201, 5)));
        let request = server.join().unwrap();
        assert!(
            request.starts_with("POST /x HTTP/1.1\r\nHost: h.test\r\n"),
            "{request}"
        );
    }

    #[test]
    fn waits_for_a_listener_and_gives_up_on_a_closed_port() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(wait_listening(port, Duration::from_secs(5)));
        drop(listener);
        // Not the port just freed: another test may bind it meanwhile, and a connect to a
        // closed port in the ephemeral range can even meet itself (TCP simultaneous open).
        // Port 1 is outside that range and nothing here listens on it.
        assert!(!wait_listening(1, Duration::from_millis(100)));
    }

    #[test]
    fn idle_cost_holds_every_connection_after_one_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut held = Vec::new();
            for _ in 0..20 {
                let (mut stream, _) = listener.accept().unwrap();
                let mut buf = [0u8; 256];
                let n = stream.read(&mut buf).unwrap();
                assert!(buf[..n].starts_with(b"GET / HTTP/1.1\r\n"));
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, world\n")
                    .unwrap();
                held.push(stream);
            }
            // Every connection is still open here: the client holds them until it measured.
            held.len()
        });
        let cost = idle_cost_kib(port, &[std::process::id()], 20).unwrap();
        assert!(cost >= 0.0);
        assert_eq!(server.join().unwrap(), 20);
        assert!(idle_cost_kib(port, &[u32::MAX], 1).is_err());
    }

    #[test]
    fn guarded_children_are_stopped_on_drop() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        drop(Guarded::new("sleep", child));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        // Reaped by the drop: gone, or at most a zombie on a kernel that keeps it briefly.
        assert!(stat.map_or(true, |s| s.contains(") Z")));
    }
}
