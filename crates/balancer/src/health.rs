//! Health checks (§4.2): one periodic HTTP probe per target.
//!
//! A probe is `GET http://<host>:<port><path>` with `User-Agent: kamal-proxy`, following up to
//! ten redirects like Go's default client, bounded as a whole by the check timeout. Any final
//! 2xx is healthy. Every probe goes through one process-wide keep-alive client.

use std::error::Error as StdError;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, HOST, LOCATION, REFERER, USER_AGENT};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::target::TargetAddr;

/// The `User-Agent` every health check sends.
pub const USER_AGENT_VALUE: &str = "kamal-proxy";

/// Go's default client gives up when about to send the eleventh request of a redirect chain.
const MAX_REQUESTS: usize = 10;

/// Go reads at most this much of a redirect response's body so the connection can be reused.
const REDIRECT_BODY_SLURP: usize = 2 << 10;

/// How a pool's targets are health-checked (the `--health-check-*` deploy flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// `--health-check-path`, joined onto the target URL with path cleaning.
    pub path: String,
    /// `--health-check-port`; 0 means the target's own port.
    pub port: u16,
    /// `--health-check-interval`: time between the starts of two checks.
    pub interval: Duration,
    /// `--health-check-timeout`: deadline of one check, redirects and body included.
    pub timeout: Duration,
    /// `--health-check-host`; empty means the target address.
    pub host: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            path: "/up".to_owned(),
            port: 0,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            host: String::new(),
        }
    }
}

type HealthClient = Client<HttpConnector, Empty<Bytes>>;

/// The client all health checks share, so keep-alive connections survive redeploys.
fn shared_client() -> &'static HealthClient {
    static CLIENT: OnceLock<HealthClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        // Go's default transport closes idle connections after 90s.
        Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build_http()
    })
}

/// The path part of a health-check URL, as upstream builds it with Go's `URL.JoinPath`: the
/// configured path is cleaned (`.`/`..` resolved, duplicate slashes merged, a trailing slash
/// kept) and escaped as a path, so `?` becomes `%3F`. Empty means "no path" (the request then
/// goes to `/`).
pub fn health_check_path(configured: &str) -> String {
    let mut path = clean_rooted(configured);
    path.remove(0);
    if configured.ends_with('/') && !path.ends_with('/') {
        path.push('/');
    }
    // An invalid percent escape makes Go drop the joined path altogether.
    let Some(escaped) = escape_path(&path) else {
        return String::new();
    };
    if escaped.is_empty() || escaped.starts_with('/') {
        escaped
    } else {
        format!("/{escaped}")
    }
}

/// Go's `path.Clean("/" + p)`: always rooted, no trailing slash except for the root itself.
fn clean_rooted(p: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in p.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(p.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Go's path escaping of an already-joined path: kept as written when it is validly encoded,
/// otherwise decoded and re-encoded. `None` when it holds an invalid `%` escape.
fn escape_path(p: &str) -> Option<String> {
    let decoded = percent_decode(p)?;
    if p.bytes().all(valid_encoded_byte) {
        return Some(p.to_owned());
    }
    let mut out = String::with_capacity(decoded.len() * 3);
    for b in decoded {
        if escape_in_path(b) {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        } else {
            out.push(char::from(b));
        }
    }
    Some(out)
}

fn percent_decode(p: &str) -> Option<Vec<u8>> {
    let bytes = p.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hi = char::from(hex[0]).to_digit(16)?;
            let lo = char::from(hex[1]).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Whether Go escapes this byte when encoding a path.
fn escape_in_path(b: u8) -> bool {
    !(b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'_'
                | b'.'
                | b'~'
                | b'$'
                | b'&'
                | b'+'
                | b','
                | b'/'
                | b':'
                | b';'
                | b'='
                | b'@'
        ))
}

/// Whether Go accepts this byte in an already-encoded path.
fn valid_encoded_byte(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b';'
            | b'='
            | b':'
            | b'@'
            | b'['
            | b']'
            | b'%'
    ) || !escape_in_path(b)
}

/// One target's health-check request, built once when its checker starts.
#[derive(Debug)]
pub(crate) struct Probe {
    /// The full check URL, as logged in `Healthcheck failed`.
    url: String,
    /// The parsed URL, or why it cannot be requested.
    uri: Result<Uri, String>,
    /// `Host` of the first request.
    host: Result<HeaderValue, String>,
    /// Whether `Host` came from `--health-check-host` (kept on relative redirects).
    custom_host: bool,
    /// `host:port` as dialled, for Go-style connect errors.
    dial: String,
    /// The bare host, for Go-style lookup errors.
    lookup: String,
    timeout: Duration,
}

impl Probe {
    /// Builds the probe of `addr` under `config`.
    pub(crate) fn new(addr: &TargetAddr, config: &HealthConfig) -> Self {
        let (authority, port) = if config.port > 0 {
            (
                format!("{}:{}", addr.host(), config.port),
                Some(config.port),
            )
        } else {
            (addr.as_str().to_owned(), addr.port())
        };
        let url = format!("http://{authority}{}", health_check_path(&config.path));
        let uri = match port {
            Some(_) => Uri::try_from(url.as_str()).map_err(|e| e.to_string()),
            None => Err(format!(
                "dial tcp: address {}: invalid port",
                addr.port_str().unwrap_or_default()
            )),
        };
        let custom_host = !config.host.is_empty();
        let host_text = if custom_host {
            config.host.as_str()
        } else {
            authority.as_str()
        };
        let host = HeaderValue::from_str(host_text).map_err(|_| "http: invalid Host header".into());
        Self {
            url,
            uri,
            host,
            custom_host,
            dial: format!("{}:{}", addr.host(), port.unwrap_or_default()),
            lookup: addr.host().to_owned(),
            timeout: config.timeout,
        }
    }

    /// The full check URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Runs one check against the shared client.
    pub(crate) async fn check(&self) -> Result<(), Error> {
        self.check_with(shared_client()).await
    }

    async fn check_with(&self, client: &HealthClient) -> Result<(), Error> {
        let deadline = Instant::now() + self.timeout;
        let (status, body) = match tokio::time::timeout_at(deadline, self.fetch(client)).await {
            Err(_) => return Err(Error::HealthCheckTimedOut),
            Ok(result) => result?,
        };
        // Like upstream, the body is read to the end (so the connection can be reused) and a
        // failure while reading it does not change the verdict, which the status decides.
        let _ = tokio::time::timeout_at(deadline, discard(body, usize::MAX)).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(Error::HealthCheckStatus {
                status: status.as_u16(),
            })
        }
    }

    /// Sends the request, following redirects; returns the final status and its unread body.
    async fn fetch(&self, client: &HealthClient) -> Result<(StatusCode, Incoming), Error> {
        let fail = |url: &str, cause: &str| Error::HealthCheckRequest {
            message: format!("Get \"{url}\": {cause}"),
        };
        let mut uri = self.uri.clone().map_err(|e| fail(&self.url, &e))?;
        let mut host = self.host.clone().map_err(|e| fail(&self.url, &e))?;
        let mut url = self.url.clone();
        let mut referer: Option<HeaderValue> = None;
        let mut sent = 0;
        loop {
            let mut request = Request::get(uri.clone())
                .header(HOST, host.clone())
                .header(USER_AGENT, USER_AGENT_VALUE)
                .header(ACCEPT_ENCODING, "gzip");
            if let Some(referer) = &referer {
                request = request.header(REFERER, referer.clone());
            }
            let request = request
                .body(Empty::new())
                .map_err(|e| fail(&url, &e.to_string()))?;
            sent += 1;
            let response = client
                .request(request)
                .await
                .map_err(|e| fail(&url, &self.describe(&e)))?;
            let status = response.status();
            let location = match response.headers().get(LOCATION) {
                Some(loc) if is_redirect(status) => loc.to_str().ok().map(str::to_owned),
                _ => None,
            };
            let Some(location) = location else {
                return Ok((status, response.into_body()));
            };
            let _ = discard(response.into_body(), REDIRECT_BODY_SLURP).await;
            let (next, absolute) = resolve_location(&uri, &location).map_err(|e| {
                fail(
                    &url,
                    &format!("failed to parse Location header \"{location}\": {e}"),
                )
            })?;
            if sent >= MAX_REQUESTS {
                return Err(fail(&location, "stopped after 10 redirects"));
            }
            // Go keeps a custom Host only when the redirect is relative (no scheme).
            if !self.custom_host || absolute {
                host = next
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                    .ok_or_else(|| fail(&location, "http: no Host in request URL"))?;
            }
            referer = HeaderValue::from_str(&url).ok();
            url = next.to_string();
            uri = next;
        }
    }

    /// Renders a client error the way Go's client words it (after the `Get "<url>": ` prefix).
    fn describe(&self, err: &hyper_util::client::legacy::Error) -> String {
        let mut chain: Vec<&(dyn StdError + 'static)> = Vec::new();
        let mut source = err.source();
        while let Some(e) = source {
            chain.push(e);
            source = e.source();
        }
        let io = chain
            .iter()
            .find_map(|e| e.downcast_ref::<std::io::Error>())
            .map(go_io_text);
        if err.is_connect() {
            if chain.iter().any(|e| e.to_string() == "dns error") {
                return format!("dial tcp: lookup {}: no such host", self.lookup);
            }
            return match io {
                Some(io) => format!("dial tcp {}: connect: {io}", self.dial),
                None => format!("dial tcp {}: {err}", self.dial),
            };
        }
        let incomplete = chain
            .iter()
            .filter_map(|e| e.downcast_ref::<hyper::Error>())
            .any(hyper::Error::is_incomplete_message);
        if incomplete {
            return "EOF".to_owned();
        }
        match (io, chain.last()) {
            (Some(io), _) => io,
            (None, Some(last)) => last.to_string(),
            (None, None) => err.to_string(),
        }
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Reads and drops up to `limit` bytes of a body (stopping at the first error).
async fn discard(mut body: Incoming, limit: usize) {
    let mut read = 0usize;
    while read < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                read = read.saturating_add(frame.data_ref().map_or(0, Bytes::len));
            }
            _ => return,
        }
    }
}

/// Go's wording of an OS error: the C library text in lower case, without `(os error N)`.
fn go_io_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Resolves a `Location` against the URL it came from (RFC 3986 §5.2, as Go does). Returns the
/// new URI and whether the location was absolute (had a scheme).
fn resolve_location(base: &Uri, location: &str) -> Result<(Uri, bool), String> {
    let location = location.split('#').next().unwrap_or_default();
    let scheme_len = location
        .find(':')
        .filter(|&i| {
            let scheme = &location[..i];
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        })
        .filter(|&i| !location[..i].contains(['/', '?']));
    let (absolute, rest) = match scheme_len {
        Some(i) => {
            let scheme = &location[..i];
            if !scheme.eq_ignore_ascii_case("http") {
                return Err(format!("unsupported protocol scheme \"{scheme}\""));
            }
            (true, &location[i + 1..])
        }
        None => (false, location),
    };
    let base_authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    let (authority, reference) = match rest.strip_prefix("//") {
        Some(net) => {
            let end = net.find(['/', '?']).unwrap_or(net.len());
            (&net[..end], &net[end..])
        }
        None if absolute => return Err("missing host".to_owned()),
        None => (base_authority, rest),
    };
    let (ref_path, ref_query) = match reference.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (reference, None),
    };
    let relative_to_base = scheme_len.is_none() && !rest.starts_with("//");
    let (path, query) = if relative_to_base && ref_path.is_empty() {
        (base.path().to_owned(), ref_query.or(base.query()))
    } else if relative_to_base && !ref_path.starts_with('/') {
        let dir = base.path().rfind('/').map_or("", |i| &base.path()[..=i]);
        (format!("{dir}{ref_path}"), ref_query)
    } else {
        (ref_path.to_owned(), ref_query)
    };
    let path = remove_dot_segments(&path);
    let url = match query {
        Some(q) => format!("http://{authority}{path}?{q}"),
        None => format!("http://{authority}{path}"),
    };
    let uri = Uri::try_from(url).map_err(|e| e.to_string())?;
    Ok((uri, absolute))
}

/// RFC 3986 §5.2.4 on a path, always returning a rooted path (`/` when empty).
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    out.pop();
                }
                // A trailing dot segment leaves the path ending in a slash.
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// Runs one target's checks until `stop` is cancelled: the first check at once, then one per
/// `interval` tick; ticks missed while a check runs are skipped, so checks never overlap.
/// `report` receives each result (after failures are logged) and returns `false` when its owner
/// is gone, which also ends the loop. A check interrupted by `stop` is not reported.
pub(crate) async fn run_checks<F>(
    probe: Probe,
    interval: Duration,
    stop: CancellationToken,
    report: F,
) where
    F: Fn(bool) -> bool,
{
    // tokio panics on a zero period; Go would too, so the CLI never sends one.
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let result = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            result = probe.check() => result,
        };
        if stop.is_cancelled() {
            return;
        }
        if let Err(error) = &result {
            tracing::info!(url = %probe.url(), error = %error, "Healthcheck failed");
        }
        if !report(result.is_ok()) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::testing::{capture_logs, Reply, Upstream};

    fn probe_for(upstream: &Upstream, config: HealthConfig) -> Probe {
        Probe::new(&TargetAddr::parse(&upstream.address()).unwrap(), &config)
    }

    fn config(path: &str) -> HealthConfig {
        HealthConfig {
            path: path.to_owned(),
            timeout: Duration::from_secs(2),
            ..HealthConfig::default()
        }
    }

    #[test]
    fn path_cleaning_matches_go_join_path() {
        let cases = [
            ("/up", "/up"),
            ("up", "/up"),
            ("//up", "/up"),
            ("/nocontent//a/../", "/nocontent/"),
            ("/a/./b/", "/a/b/"),
            ("/../up", "/up"),
            ("../../up", "/up"),
            ("/up?x=1", "/up%3Fx=1"),
            ("/a b", "/a%20b"),
            ("/a%20b", "/a%20b"),
            ("/a!b'(c)*", "/a!b'(c)*"),
            ("/a\"b", "/a%22b"),
            ("/é", "/%C3%A9"),
            ("/", "/"),
            ("//", "/"),
            ("/.", ""),
            ("", ""),
            ("/%zz", ""),
            ("/a/..", ""),
            ("/a/../", "/"),
        ];
        for (configured, expected) in cases {
            assert_eq!(health_check_path(configured), expected, "{configured:?}");
        }
    }

    #[test]
    fn probe_url_uses_health_port_and_keeps_target_host() {
        let addr = TargetAddr::parse("web-1:3000").unwrap();
        let config = HealthConfig {
            port: 4000,
            ..HealthConfig::default()
        };
        assert_eq!(Probe::new(&addr, &config).url(), "http://web-1:4000/up");
        let bare = TargetAddr::parse("web-1").unwrap();
        assert_eq!(
            Probe::new(&bare, &HealthConfig::default()).url(),
            "http://web-1/up"
        );
        assert_eq!(Probe::new(&bare, &config).url(), "http://web-1:4000/up");
    }

    #[tokio::test]
    async fn sends_expected_request() {
        let upstream = Upstream::start(|_, _| Reply::status(200));
        let probe = probe_for(&upstream, config("up?x=1"));
        probe.check().await.unwrap();
        let seen = upstream.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, "GET");
        assert_eq!(seen[0].path, "/up%3Fx=1");
        assert_eq!(seen[0].host.as_deref(), Some(upstream.address().as_str()));
        assert_eq!(seen[0].user_agent.as_deref(), Some("kamal-proxy"));
        assert_eq!(seen[0].accept_encoding.as_deref(), Some("gzip"));
    }

    #[tokio::test]
    async fn custom_host_header() {
        let upstream = Upstream::start(|_, _| Reply::status(200));
        let probe = probe_for(
            &upstream,
            HealthConfig {
                host: "app.example".into(),
                ..config("/up")
            },
        );
        probe.check().await.unwrap();
        assert_eq!(upstream.requests()[0].host.as_deref(), Some("app.example"));
    }

    #[tokio::test]
    async fn health_port_override_is_used() {
        let upstream = Upstream::start(|_, _| Reply::status(200));
        let addr = TargetAddr::parse("127.0.0.1:1").unwrap();
        let probe = Probe::new(
            &addr,
            &HealthConfig {
                port: upstream.addr.port(),
                ..config("/up")
            },
        );
        probe.check().await.unwrap();
        assert_eq!(upstream.requests().len(), 1);
    }

    #[tokio::test]
    async fn any_2xx_is_healthy_and_others_fail() {
        let upstream = Upstream::start(|_, req| {
            let status = req.path.trim_start_matches('/').parse().unwrap_or(500);
            Reply::status(status)
        });
        for ok in [200, 204, 299] {
            probe_for(&upstream, config(&ok.to_string()))
                .check()
                .await
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [304, 404, 503] {
            let err = probe_for(&upstream, config(&bad.to_string()))
                .check()
                .await
                .unwrap_err();
            assert_eq!(err.to_string(), format!("unexpected status ({bad})"));
        }
    }

    #[tokio::test]
    async fn timeout_covers_slow_headers() {
        let upstream = Upstream::start(|_, _| Reply::status(200).delay(Duration::from_secs(5)));
        let probe = probe_for(
            &upstream,
            HealthConfig {
                timeout: Duration::from_millis(100),
                ..config("/up")
            },
        );
        let started = std::time::Instant::now();
        let err = probe.check().await.unwrap_err();
        assert_eq!(err.to_string(), "request timed out");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn connection_refused_is_worded_like_go() {
        // Port 1: nothing listens there, and unlike a port just freed, no other test can take
        // it meanwhile and no connect can meet itself on it (outside the ephemeral range).
        let port = 1;
        let addr = TargetAddr::parse(&format!("127.0.0.1:{port}")).unwrap();
        let err = Probe::new(&addr, &config("/up")).check().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "Get \"http://127.0.0.1:{port}/up\": dial tcp 127.0.0.1:{port}: connect: connection refused"
            )
        );
    }

    #[tokio::test]
    async fn out_of_range_port_never_connects() {
        let addr = TargetAddr::parse("127.0.0.1:99999").unwrap();
        let err = Probe::new(&addr, &config("/up")).check().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "Get \"http://127.0.0.1:99999/up\": dial tcp: address 99999: invalid port"
        );
    }

    #[tokio::test]
    async fn follows_redirects_keeping_custom_host_on_relative_ones() {
        let upstream = Upstream::start(|_, req| match req.path.as_str() {
            "/up" => Reply::status(302).header("location", "next/../final"),
            "/final" => Reply::status(301).header("location", "/done?x=1"),
            "/done?x=1" => Reply::status(204),
            _ => Reply::status(404),
        });
        let probe = probe_for(
            &upstream,
            HealthConfig {
                host: "app.example".into(),
                ..config("/up")
            },
        );
        probe.check().await.unwrap();
        let seen = upstream.requests();
        let paths: Vec<_> = seen.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/up", "/final", "/done?x=1"]);
        assert!(seen
            .iter()
            .all(|r| r.host.as_deref() == Some("app.example")));
        assert!(seen
            .iter()
            .all(|r| r.user_agent.as_deref() == Some("kamal-proxy")));
    }

    #[tokio::test]
    async fn absolute_redirect_uses_the_new_host() {
        let upstream = Upstream::start(|_, req| match req.path.as_str() {
            "/up" => {
                let to = format!("http://{}/ok", req.local);
                Reply::status(307).header("location", &to)
            }
            _ => Reply::status(200),
        });
        let probe = probe_for(
            &upstream,
            HealthConfig {
                host: "app.example".into(),
                ..config("/up")
            },
        );
        probe.check().await.unwrap();
        let seen = upstream.requests();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].host.as_deref(), Some(upstream.address().as_str()));
    }

    #[tokio::test]
    async fn redirect_loop_stops_after_ten_requests() {
        let upstream = Upstream::start(|_, _| Reply::status(302).header("location", "/up"));
        let err = probe_for(&upstream, config("/up"))
            .check()
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "Get \"/up\": stopped after 10 redirects");
        assert_eq!(upstream.requests().len(), 10);
    }

    #[tokio::test]
    async fn redirect_without_location_is_final() {
        let upstream = Upstream::start(|_, _| Reply::status(302));
        let err = probe_for(&upstream, config("/up"))
            .check()
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "unexpected status (302)");
    }

    #[test]
    fn location_resolution() {
        let base: Uri = "http://h:1/a/b?q=1".parse().unwrap();
        let cases = [
            ("c", "http://h:1/a/c", false),
            ("../c", "http://h:1/c", false),
            ("/x/./y/..", "http://h:1/x/", false),
            ("?z=2", "http://h:1/a/b?z=2", false),
            ("", "http://h:1/a/b?q=1", false),
            ("//other:2/p", "http://other:2/p", false),
            ("http://other:2", "http://other:2/", true),
            ("HTTP://other:2/p?x#frag", "http://other:2/p?x", true),
        ];
        for (loc, expected, absolute) in cases {
            let (uri, abs) = resolve_location(&base, loc).unwrap();
            assert_eq!(uri.to_string(), expected, "{loc:?}");
            assert_eq!(abs, absolute, "{loc:?}");
        }
        assert_eq!(
            resolve_location(&base, "https://x/").unwrap_err(),
            "unsupported protocol scheme \"https\""
        );
    }

    #[tokio::test]
    async fn checker_runs_at_once_then_per_interval_and_stops() {
        let upstream = Upstream::start(|_, _| Reply::status(200));
        let probe = probe_for(&upstream, config("/up"));
        let stop = CancellationToken::new();
        let reports = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&reports);
        let task = tokio::spawn(run_checks(
            probe,
            Duration::from_millis(30),
            stop.clone(),
            move |ok| {
                assert!(ok);
                counted.fetch_add(1, Ordering::SeqCst);
                true
            },
        ));
        assert!(crate::testing::eventually(|| reports.load(Ordering::SeqCst) >= 3).await);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("checker stops")
            .unwrap();
    }

    #[tokio::test]
    async fn slow_checks_never_overlap() {
        let concurrent = Arc::new(AtomicUsize::new(0));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let (c, m) = (Arc::clone(&concurrent), Arc::clone(&max_seen));
        let upstream = Upstream::start_async(move |_| {
            let (c, m) = (Arc::clone(&c), Arc::clone(&m));
            async move {
                let now = c.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(60)).await;
                c.fetch_sub(1, Ordering::SeqCst);
                Reply::status(200)
            }
        });
        let probe = probe_for(&upstream, config("/up"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_checks(
            probe,
            Duration::from_millis(10),
            stop.clone(),
            |_| true,
        ));
        assert!(crate::testing::eventually(|| upstream.requests().len() >= 4).await);
        stop.cancel();
        task.await.unwrap();
        assert_eq!(max_seen.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn cancelled_check_is_not_reported_or_logged() {
        let upstream = Upstream::start(|_, _| Reply::status(500).delay(Duration::from_secs(5)));
        let probe = probe_for(&upstream, config("/up"));
        let stop = CancellationToken::new();
        let (logs, _guard) = capture_logs();
        let task = tokio::spawn(run_checks(
            probe,
            Duration::from_secs(60),
            stop.clone(),
            |_| panic!("a cancelled check was reported"),
        ));
        assert!(crate::testing::eventually(|| upstream.requests().len() == 1).await);
        stop.cancel();
        task.await.unwrap();
        assert!(logs.events().is_empty());
    }

    #[tokio::test]
    async fn failures_are_logged_with_url_and_error() {
        let upstream = Upstream::start(|_, _| Reply::status(503));
        let probe = probe_for(&upstream, config("/up"));
        let url = probe.url().to_owned();
        let stop = CancellationToken::new();
        let (logs, _guard) = capture_logs();
        let stopper = stop.clone();
        run_checks(probe, Duration::from_millis(10), stop, move |ok| {
            assert!(!ok);
            stopper.cancel();
            true
        })
        .await;
        let events = logs.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].level, tracing::Level::INFO);
        assert_eq!(
            events[0].fields,
            [
                ("message".to_owned(), "Healthcheck failed".to_owned()),
                ("url".to_owned(), url),
                ("error".to_owned(), "unexpected status (503)".to_owned()),
            ]
        );
    }
}
