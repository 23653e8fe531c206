//! Driving `h2load` (Debian's `nghttp2-client`) for the HTTP/2-over-TLS scenario: one bounded,
//! multiplexed load; throughput and errors from its summary, p50 and p99 computed from its
//! per-request `--log-file` (its summary only gives min, mean, max and standard deviation).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::procs;
use super::wrk::WrkResult;

/// One h2load load against `https://<name>:<port><path>`, connecting to 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Load<'a> {
    /// The port on 127.0.0.1.
    pub port: u16,
    /// The name in the URL: SNI and `:authority` (h2load has no separate SNI option).
    pub name: &'a str,
    /// Request path.
    pub path: &'a str,
    /// Connections (h2load's "clients").
    pub connections: u32,
    /// Concurrent streams on each connection.
    pub streams: u32,
    /// Where h2load writes one line per request.
    pub log_file: &'a Path,
}

/// What h2load reports beyond the numbers: the negotiated protocols.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Negotiated {
    /// `TLSv1.3`.
    pub tls: String,
    /// `TLS_AES_128_GCM_SHA256`.
    pub cipher: String,
    /// `X25519 253 bits`.
    pub key_exchange: String,
    /// `h2`.
    pub application: String,
}

fn command(h2load: &Path, load: &Load<'_>, duration: Duration, core: Option<&str>) -> Command {
    let mut command = procs::pinned(h2load, core);
    command
        .arg("--threads=1")
        .arg(format!("--clients={}", load.connections))
        .arg(format!("--max-concurrent-streams={}", load.streams))
        .arg(format!("--duration={}", duration.as_secs().max(1)))
        // The URL's name stays the SNI name and `:authority`; the socket goes to loopback.
        .arg(format!("--connect-to=127.0.0.1:{}", load.port))
        .arg(format!("--log-file={}", load.log_file.display()))
        .arg(format!("https://{}:{}{}", load.name, load.port, load.path));
    command
}

/// Runs h2load for `duration` (bounded: killed 30 s after it should have finished). Fails
/// when the connection did not negotiate `h2`, so a misconfigured setup cannot pass as HTTP/2.
pub fn run(
    h2load: &Path,
    load: &Load<'_>,
    duration: Duration,
    core: Option<&str>,
) -> Result<(WrkResult, Negotiated), String> {
    // A log left from an earlier round would be appended to.
    let _ = std::fs::remove_file(load.log_file);
    let output = procs::run_bounded(
        &mut command(h2load, load, duration, core),
        duration + Duration::from_secs(30),
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let fail = |what: &str| {
        format!(
            "h2load {what} ({}):\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    };
    let (mut result, negotiated) = parse(&stdout).ok_or_else(|| fail("printed no result"))?;
    if negotiated.application != "h2" {
        return Err(fail("did not negotiate h2"));
    }
    let log = std::fs::read_to_string(load.log_file)
        .map_err(|e| format!("cannot read {}: {e}", load.log_file.display()))?;
    let (p50, p99) = percentiles(&log).ok_or_else(|| fail("logged no request"))?;
    result.p50_us = p50;
    result.p99_us = p99;
    Ok((result, negotiated))
}

/// Parses h2load's summary: `finished in 3.00s, 32929.33 req/s, …`, `requests: … N done, …
/// N failed, …` and the TLS lines. Latencies are left at zero (see [`percentiles`]).
pub fn parse(stdout: &str) -> Option<(WrkResult, Negotiated)> {
    let line = |prefix: &str| stdout.lines().find_map(|l| l.strip_prefix(prefix));
    let rps: f64 = line("finished in ")?
        .split(", ")
        .find_map(|part| part.strip_suffix(" req/s"))?
        .parse()
        .ok()?;
    let requests = line("requests: ")?;
    // `N done`, `N failed`: the number before a word in the comma-separated list.
    let count = |word: &str| -> Option<u64> {
        requests
            .split(", ")
            .find_map(|part| part.strip_suffix(word)?.trim().parse().ok())
    };
    let done = count(" done")?;
    // `failed` counts stream errors (including `errored` and timed-out ones) and statuses
    // outside 2xx and 3xx: the same things wrk's socket and status errors count.
    let failed = count(" failed")?;
    let text = |prefix: &str| line(prefix).map_or(String::new(), |v| v.trim().to_string());
    let negotiated = Negotiated {
        tls: text("TLS Protocol: "),
        cipher: text("Cipher: "),
        key_exchange: text("Server Temp Key: "),
        application: text("Application protocol: "),
    };
    let duration_us = if rps > 0.0 {
        (done as f64 / rps * 1e6).round() as u64
    } else {
        0
    };
    Some((
        WrkResult {
            requests: done,
            duration_us,
            p50_us: 0,
            p99_us: 0,
            errors: failed,
        },
        negotiated,
    ))
}

/// p50 and p99 (nearest rank) of the third column of h2load's `--log-file`: microseconds from
/// a request's start to the end of its response. None when no line parses.
pub fn percentiles(log: &str) -> Option<(u64, u64)> {
    let mut times: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    if times.is_empty() {
        return None;
    }
    times.sort_unstable();
    let rank = |p: usize| times[(times.len() * p).div_ceil(100).max(1) - 1];
    Some((rank(50), rank(99)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 0s of warm-up time and 3s of main duration for measurements.
TLS Protocol: TLSv1.3
Cipher: TLS_AES_128_GCM_SHA256
Server Temp Key: X25519 253 bits
Application protocol: h2

finished in 3.00s, 20000.00 req/s, 1.23MB/s
requests: 60100 total, 60260 started, 60000 done, 59990 succeeded, 10 failed, 4 errored, 0 timeout
status codes: 59990 2xx, 0 3xx, 0 4xx, 6 5xx
                     min         max         mean         sd        +/- sd
time for request:      204us     18.02ms      4.74ms      1.29ms    74.17%
";

    #[test]
    fn parses_the_summary_and_the_negotiated_protocols() {
        let (result, negotiated) = parse(OUTPUT).unwrap();
        assert_eq!(
            (result.requests, result.errors, result.duration_us),
            (60_000, 10, 3_000_000)
        );
        assert!((result.rps() - 20_000.0).abs() < 1e-6);
        assert_eq!(
            negotiated,
            Negotiated {
                tls: "TLSv1.3".into(),
                cipher: "TLS_AES_128_GCM_SHA256".into(),
                key_exchange: "X25519 253 bits".into(),
                application: "h2".into(),
            }
        );
        assert_eq!(parse("no result"), None);
        assert_eq!(parse("finished in 3.00s, 1.00 req/s, 1MB/s\n"), None);
    }

    #[test]
    fn computes_nearest_rank_percentiles_from_the_log() {
        // 100 requests taking 1..=100 µs, out of order, plus a line that does not parse.
        let log: String = (1..=100u64)
            .rev()
            .map(|us| format!("1700000000{us:06}\t200\t{us}\n"))
            .chain(["garbage\n".to_string()])
            .collect();
        assert_eq!(percentiles(&log), Some((50, 99)));
        assert_eq!(percentiles("1\t200\t7\n"), Some((7, 7)));
        assert_eq!(percentiles(""), None);
    }

    #[test]
    fn command_connects_to_loopback_with_the_name_in_the_url() {
        let load = Load {
            port: 8443,
            name: "tls.bench",
            path: "/",
            connections: 16,
            streams: 10,
            log_file: Path::new("/tmp/h2.log"),
        };
        let command = command(Path::new("h2load"), &load, Duration::from_secs(3), None);
        let args: Vec<_> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--threads=1",
                "--clients=16",
                "--max-concurrent-streams=10",
                "--duration=3",
                "--connect-to=127.0.0.1:8443",
                "--log-file=/tmp/h2.log",
                "https://tls.bench:8443/",
            ]
        );
    }
}
