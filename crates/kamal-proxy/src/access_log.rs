//! The access log: one JSON line (msg `Request`) per request, in upstream's key order.
//!
//! An [`AccessLog`] is created when a request enters the stack and travels with the response
//! body; the line is written when it is dropped, i.e. when the body has been sent, the stream
//! was aborted, or the client went away first (then the status is 499).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use kamal_balancer::headers::X_FORWARDED_FOR;
use percent_encoding::percent_decode_str;

use crate::app::X_REQUEST_ID;
use crate::logging::{
    line_start, push_i64, push_ip, push_json_header, push_json_str, push_u64, write_with,
};
use crate::metrics::ServiceMetrics;

/// Status recorded when the client disappears before the response started (nginx's 499).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Where a request came in: peer address, TLS, and the configured port of the listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The configured (not bound) port of the listener, as upstream logs it.
    pub port: u16,
}

/// When a request arrived, on both clocks: read once, so that the request stamp, the duration
/// and the log line's time (arrival plus duration) need no further clock reads.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// For the duration.
    pub at: Instant,
    /// For `X-Request-Start` and the log line's time.
    pub wall: SystemTime,
}

impl Arrival {
    /// Now.
    pub fn now() -> Self {
        Arrival {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// What the access log remembers of one request. Header values and the URI are cheap
/// reference-counted clones of hyper's parse buffers, so capturing them does not copy.
#[derive(Debug)]
pub struct AccessLog {
    start: Arrival,
    conn: ConnInfo,
    method: Method,
    uri: Uri,
    version: Version,
    host: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    req_content_length: i64,
    req_content_type: Option<HeaderValue>,
    remote_addr: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    status: u16,
    service: Option<Arc<str>>,
    target: Option<HeaderValue>,
    resp_content_length: u64,
    resp_content_type: Option<HeaderValue>,
    extra: Vec<(String, String)>,
    /// Where the request is counted after its line is written; `None` when metrics are off
    /// or the path is excluded (spec §12.3).
    metrics: Option<Arc<ServiceMetrics>>,
    /// Whether the request holds a place in the service's in-flight gauge.
    in_flight: bool,
}

impl AccessLog {
    /// Starts the log entry for `req` (after the request id has been assigned).
    pub fn begin<B: http_body::Body>(req: &Request<B>, conn: ConnInfo, start: Arrival) -> Self {
        let req_content_length = match req.body().size_hint().exact() {
            Some(n) => n as i64,
            None => -1,
        };
        // One pass over the request's few headers instead of a hashed lookup for each of the
        // five logged (the first value of each, as `get` returns).
        let (mut host, mut request_id, mut req_content_type, mut remote_addr, mut user_agent) =
            (None, None, None, None, None);
        for (name, value) in req.headers() {
            let slot = match *name {
                HOST => &mut host,
                CONTENT_TYPE => &mut req_content_type,
                USER_AGENT => &mut user_agent,
                _ if name == X_REQUEST_ID => &mut request_id,
                _ if name == X_FORWARDED_FOR => &mut remote_addr,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.clone());
            }
        }
        AccessLog {
            start,
            conn,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            host,
            request_id,
            req_content_length,
            req_content_type,
            remote_addr,
            user_agent,
            status: CLIENT_CLOSED_REQUEST,
            service: None,
            target: None,
            resp_content_length: 0,
            resp_content_type: None,
            extra: Vec::new(),
            metrics: None,
            in_flight: false,
        }
    }

    /// Counts the request in `series` (without the in-flight gauge: unmatched requests).
    pub fn count_in(&mut self, series: &Arc<ServiceMetrics>) {
        self.metrics = Some(Arc::clone(series));
    }

    /// The request entered a service (spec §7.1 step 7): counted in its series, and in its
    /// in-flight gauge until the log entry is written; `None` excludes it from metrics.
    pub fn enter_service(&mut self, series: Option<&Arc<ServiceMetrics>>) {
        self.leave_service();
        self.metrics = series.map(|s| {
            s.enter();
            Arc::clone(s)
        });
        self.in_flight = self.metrics.is_some();
    }

    fn leave_service(&mut self) {
        if std::mem::take(&mut self.in_flight) {
            if let Some(series) = &self.metrics {
                series.leave();
            }
        }
    }

    /// Records the service that handled the request.
    pub fn set_service(&mut self, name: &Arc<str>) {
        self.service = Some(Arc::clone(name));
    }

    /// Replaces `remote_addr` (the `--client-ip-header` rewrite of `X-Forwarded-For`).
    pub fn set_remote_addr(&mut self, value: HeaderValue) {
        self.remote_addr = Some(value);
    }

    /// Records the target the request was sent to.
    pub fn set_target(&mut self, label: &HeaderValue) {
        self.target = Some(label.clone());
    }

    /// Records `--log-request-header` values as the target sees them: `X-Kamal-Target` is
    /// shown as the forwarder writes it (the target label, appended to the client's values
    /// when forwarded headers are trusted).
    pub fn capture_request_headers(
        &mut self,
        names: &[LogHeader],
        headers: &HeaderMap,
        target: &HeaderValue,
        forward_headers: bool,
    ) {
        for name in names {
            let value = if name.name == "x-kamal-target" {
                let label = String::from_utf8_lossy(target.as_bytes());
                let existing = joined(headers, &name.name);
                if forward_headers && !existing.is_empty() {
                    format!("{existing}, {label}")
                } else {
                    label.into_owned()
                }
            } else {
                joined(headers, &name.name)
            };
            self.extra.push((name.req_key.clone(), value));
        }
    }

    /// Records `--log-response-header` values; call after [`AccessLog::set_response`].
    pub fn capture_response_headers(&mut self, names: &[LogHeader], headers: &HeaderMap) {
        for name in names {
            self.extra
                .push((name.resp_key.clone(), joined(headers, &name.name)));
        }
    }

    /// Records the status and content type of the response about to be sent.
    pub fn set_response<B>(&mut self, resp: &Response<B>) {
        self.status = resp.status().as_u16();
        self.resp_content_type = resp.headers().get(CONTENT_TYPE).cloned();
    }

    /// Counts body bytes written to the client.
    pub fn add_body_bytes(&mut self, n: usize) {
        self.resp_content_length += n as u64;
    }

    /// Appends the log line to `out` (a worker's log buffer: no allocation per request).
    pub fn render_into(&self, out: &mut Vec<u8>, duration: std::time::Duration) {
        // Written now: arrival plus duration, on the wall clock.
        line_start(out, self.start.wall + duration, "INFO", "Request");
        // HTTP/2 requests carry the host in the URI authority, not in a Host header.
        let host = match value_str(&self.host) {
            "" => self.uri.authority().map_or("", |a| a.as_str()),
            host => host,
        };
        str_field(out, ",\"host\":", host);
        out.extend_from_slice(b",\"port\":");
        push_u64(out, self.conn.port.into());
        let path = self.uri.path();
        if path.contains('%') {
            str_field(
                out,
                ",\"path\":",
                &percent_decode_str(path).decode_utf8_lossy(),
            );
        } else {
            str_field(out, ",\"path\":", path);
        }
        header_field(out, ",\"request_id\":", &self.request_id);
        out.extend_from_slice(b",\"status\":");
        push_u64(out, self.status.into());
        str_field(out, ",\"service\":", self.service.as_deref().unwrap_or(""));
        header_field(out, ",\"target\":", &self.target);
        out.extend_from_slice(b",\"duration\":");
        // Over u64 nanoseconds is over 584 years.
        push_u64(out, u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
        str_field(out, ",\"method\":", self.method.as_str());
        out.extend_from_slice(b",\"req_content_length\":");
        push_i64(out, self.req_content_length);
        header_field(out, ",\"req_content_type\":", &self.req_content_type);
        out.extend_from_slice(b",\"resp_content_length\":");
        push_u64(out, self.resp_content_length);
        header_field(out, ",\"resp_content_type\":", &self.resp_content_type);
        // IP addresses and ports need no JSON escaping: written straight into the line.
        let ip = self.conn.peer.ip();
        out.extend_from_slice(b",\"client_addr\":\"");
        push_ip(out, ip);
        out.extend_from_slice(b"\",\"client_port\":\"");
        push_u64(out, self.conn.peer.port().into());
        out.push(b'"');
        match value_str(&self.remote_addr) {
            "" => {
                out.extend_from_slice(b",\"remote_addr\":\"");
                push_ip(out, ip);
                out.push(b'"');
            }
            remote => str_field(out, ",\"remote_addr\":", remote),
        }
        header_field(out, ",\"user_agent\":", &self.user_agent);
        out.extend_from_slice(match (self.version, self.conn.tls) {
            (Version::HTTP_10, false) => b",\"proto\":\"HTTP/1.0\",\"scheme\":\"http\"",
            (Version::HTTP_10, true) => b",\"proto\":\"HTTP/1.0\",\"scheme\":\"https\"",
            (Version::HTTP_2, false) => b",\"proto\":\"HTTP/2.0\",\"scheme\":\"http\"",
            (Version::HTTP_2, true) => b",\"proto\":\"HTTP/2.0\",\"scheme\":\"https\"",
            (Version::HTTP_3, false) => b",\"proto\":\"HTTP/3.0\",\"scheme\":\"http\"",
            (Version::HTTP_3, true) => b",\"proto\":\"HTTP/3.0\",\"scheme\":\"https\"",
            (Version::HTTP_09, false) => b",\"proto\":\"HTTP/0.9\",\"scheme\":\"http\"",
            (Version::HTTP_09, true) => b",\"proto\":\"HTTP/0.9\",\"scheme\":\"https\"",
            (_, false) => b",\"proto\":\"HTTP/1.1\",\"scheme\":\"http\"",
            (_, true) => b",\"proto\":\"HTTP/1.1\",\"scheme\":\"https\"",
        });
        str_field(out, ",\"query\":", self.uri.query().unwrap_or(""));
        for (key, value) in &self.extra {
            extra_field(out, key, value);
        }
        out.extend_from_slice(b"}\n");
    }

    #[cfg(test)]
    fn render(&self, duration: std::time::Duration) -> String {
        let mut out = Vec::new();
        self.render_into(&mut out, duration);
        String::from_utf8(out).expect("log lines are UTF-8")
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let duration = self.start.at.elapsed();
        write_with(|out| self.render_into(out, duration));
        // Counted after the line is written, as upstream (spec §11.2).
        self.leave_service();
        if let Some(series) = self.metrics.take() {
            series.observe(&self.method, self.status, duration);
        }
    }
}

/// A header to log, with its two log keys computed once at deploy time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHeader {
    name: http::HeaderName,
    req_key: String,
    resp_key: String,
}

impl LogHeader {
    /// Parses a header name given with `--log-request-header` / `--log-response-header`.
    pub fn new(name: &str) -> Option<Self> {
        let name = http::HeaderName::from_bytes(name.as_bytes()).ok()?;
        let key = name.as_str().replace('-', "_");
        Some(LogHeader {
            req_key: format!("req_{key}"),
            resp_key: format!("resp_{key}"),
            name,
        })
    }
}

fn joined(headers: &HeaderMap, name: &http::HeaderName) -> String {
    let mut out = String::new();
    for (i, v) in headers.get_all(name).iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    out
}

fn value_str(v: &Option<HeaderValue>) -> &str {
    v.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// A string field: `key` is the comma, the quoted key and the colon (constant, so the
/// copy is inlined).
#[inline(always)]
fn str_field(out: &mut Vec<u8>, key: &'static str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    push_json_str(out, value);
}

/// A header value's field (`""` when absent or not visible ASCII, as `to_str` decides).
#[inline(always)]
fn header_field(out: &mut Vec<u8>, key: &'static str, value: &Option<HeaderValue>) {
    out.extend_from_slice(key.as_bytes());
    push_json_header(out, value.as_ref());
}

/// A string field under a key derived from a header name given by the operator.
fn extra_field(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(b',');
    push_json_str(out, key);
    out.push(b':');
    push_json_str(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fields_in_upstream_order() {
        let req = Request::builder()
            .uri("/a%20b?x=1")
            .header("host", "a.test:8080")
            .header("x-request-id", "rid")
            .header("user-agent", "curl")
            .header("x-custom", "one")
            .header("x-custom", "two")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let conn = ConnInfo {
            peer: "127.0.0.1:4000".parse().unwrap(),
            tls: false,
            port: 80,
        };
        let mut log = AccessLog::begin(&req, conn, Arrival::now());
        log.set_service(&Arc::from("svc"));
        log.set_target(&HeaderValue::from_static("web:3000"));
        log.capture_request_headers(
            &[
                LogHeader::new("X-Custom").unwrap(),
                LogHeader::new("X-Kamal-Target").unwrap(),
            ],
            req.headers(),
            &HeaderValue::from_static("web:3000"),
            true,
        );
        let resp = Response::builder()
            .status(201)
            .header("content-type", "text/plain")
            .body(())
            .unwrap();
        log.set_response(&resp);
        log.add_body_bytes(5);
        let line = log.render(std::time::Duration::from_nanos(7));
        std::mem::forget(log);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys.len(), 25);
        assert!(line.contains(r#""msg":"Request","host":"a.test:8080","port":80,"path":"/a b","request_id":"rid","status":201,"service":"svc","target":"web:3000","duration":"#));
        assert!(line.contains(r#""method":"GET","req_content_length":0,"req_content_type":"","resp_content_length":5,"resp_content_type":"text/plain","client_addr":"127.0.0.1","client_port":"4000","remote_addr":"127.0.0.1","user_agent":"curl","proto":"HTTP/1.1","scheme":"http","query":"x=1","req_x_custom":"one,two","req_x_kamal_target":"web:3000"}"#));
    }
}
