//! Log output in upstream's shape: one JSON object per line on stdout, keys `time`, `level`,
//! `msg`, then the event's fields in the order they were written.
//!
//! Go's `slog` JSON handler defines the shape operators' log pipelines already parse, so we
//! write it by hand instead of using tracing-subscriber's JSON layout (different keys, nested
//! fields). A field named `json.<key>` carries pre-rendered JSON (lists such as `targets`),
//! written raw under `<key>`.
//!
//! The runtime's worker threads buffer their access-log lines and write them in batches: when
//! a buffer passes 32 KiB, when the worker goes idle, and when it stops. Other events are
//! written at once. Under load that is one `write(2)` per few hundred requests instead of one
//! each, with no lock shared between requests; when the proxy is quiet every line is written
//! at once.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the global subscriber: INFO and above, DEBUG too when `debug` is set.
pub fn init(debug: bool) {
    let level = if debug { Level::DEBUG } else { Level::INFO };
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .event_format(GoJson)
        .with_writer(|| LineWriter(Vec::with_capacity(256)))
        .finish();
    // A second init (tests starting the app in-process twice) keeps the first subscriber.
    let _ = tracing::subscriber::set_global_default(subscriber);
    widen_stdout_pipe();
}

/// Room asked for in the stdout pipe: about 2,500 access-log lines.
const PIPE_SIZE: usize = 1 << 20;

/// Log lines are written from the event loop, and a write to a full pipe blocks it: with the
/// default 64 KiB pipe (about 150 lines), a log reader (a container runtime's log driver) that
/// lags for a few milliseconds under load stalls every request. When stdout is a pipe, it is
/// widened to 1 MiB, the limit an unprivileged process may set by default; anything else
/// (a file, a terminal, a refusal) is left as it is.
fn widen_stdout_pipe() {
    widen_pipe(std::io::stdout());
}

/// Widens `fd` to [`PIPE_SIZE`] if it is a smaller pipe; quietly does nothing otherwise.
fn widen_pipe(fd: impl std::os::fd::AsFd) {
    if let Ok(size) = rustix::pipe::fcntl_getpipe_size(&fd) {
        if size < PIPE_SIZE {
            let _ = rustix::pipe::fcntl_setpipe_size(&fd, PIPE_SIZE);
        }
    }
}

/// A worker's buffered lines are written once they pass this size (or when it goes idle).
const FLUSH_AT: usize = 32 * 1024;

thread_local! {
    /// Lines formatted on this thread and not yet written; `None` on threads that write
    /// through at once (everything but the runtime's workers).
    static PENDING: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Called by each runtime worker whenever it goes idle (`on_thread_park`): writes the lines it
/// buffered, and from its first call on makes the thread buffer its lines. Only workers park,
/// so threads of the blocking pool keep writing through at once.
pub fn worker_idle() {
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        match pending.as_mut() {
            Some(buf) if !buf.is_empty() => {
                write_out(buf.as_bytes());
                buf.clear();
            }
            Some(_) => {}
            None => *pending = Some(String::with_capacity(FLUSH_AT * 2)),
        }
    });
}

/// Writes the calling thread's buffered lines to stdout (`on_thread_stop`, and at exit).
pub fn flush_thread() {
    PENDING.with(|p| {
        if let Some(buf) = p.borrow_mut().as_mut() {
            if !buf.is_empty() {
                write_out(buf.as_bytes());
                buf.clear();
            }
        }
    });
}

/// Queues one complete log line built by `render` (the access log renders straight into the
/// buffer, so a request allocates nothing for its log line). Busy workers thus write in
/// batches, with no lock or system call per request.
pub fn write_with(render: impl FnOnce(&mut String)) {
    PENDING.with(|p| match p.borrow_mut().as_mut() {
        Some(buf) => {
            render(buf);
            if buf.len() >= FLUSH_AT {
                write_out(buf.as_bytes());
                buf.clear();
            }
        }
        None => {
            let mut line = String::with_capacity(512);
            render(&mut line);
            write_out(line.as_bytes());
        }
    });
}

fn write_out(bytes: &[u8]) {
    // A closed stdout loses lines; logging must never take the process down.
    let _ = std::io::stdout().lock().write_all(bytes);
}

/// What tracing-subscriber writes one formatted event into; queued as one line when dropped.
struct LineWriter(Vec<u8>);

impl std::io::Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            // Events (deploys, health, errors) are rare and callers rely on them being out
            // when a command returns, so they are written at once, after the access-log lines
            // this thread buffered before them.
            flush_thread();
            write_out(&self.0);
        }
    }
}

/// The `time`, `level` and `msg` prefix of a log line, without the closing brace.
pub fn line_start(out: &mut String, level: &str, msg: &str) {
    out.push_str("{\"time\":\"");
    push_time(out, SystemTime::now());
    out.push_str("\",\"level\":\"");
    out.push_str(level);
    out.push_str("\",\"msg\":");
    push_json_str(out, msg);
}

/// Event formatter producing upstream's JSON lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct GoJson;

impl<S, N> FormatEvent<S, N> for GoJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARN",
            Level::INFO => "INFO",
            // slog has no TRACE; anything below INFO is DEBUG.
            _ => "DEBUG",
        };
        let mut visitor = FieldVisitor::default();
        event.record(&mut visitor);
        let mut line = String::with_capacity(128 + visitor.fields.len());
        line_start(&mut line, level, &visitor.message);
        line.push_str(&visitor.fields);
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

#[derive(Default)]
struct FieldVisitor {
    message: String,
    fields: String,
}

impl FieldVisitor {
    fn key(&mut self, field: &Field) {
        let name = field.name();
        let name = name.strip_prefix("json.").unwrap_or(name);
        self.fields.push(',');
        push_json_str(&mut self.fields, name);
        self.fields.push(':');
    }
}

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else if field.name().starts_with("json.") {
            self.key(field);
            self.fields.push_str(value);
        } else {
            self.key(field);
            push_json_str(&mut self.fields, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.fields, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.fields, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.fields, "{value}");
        } else {
            push_json_str(&mut self.fields, &value.to_string());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.fields.push_str(if value { "true" } else { "false" });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here too, wrapped so that Debug prints their Display.
        self.record_str(field, &format!("{value:?}"));
    }
}

/// Whether any byte of `bytes` must be escaped in a JSON string: a control character, `"`,
/// `\\`, or 0xE2, the lead byte of U+2028/U+2029 (checked exactly by the slow path). Written
/// without an early exit so that the compiler vectorises it: log values are short.
fn needs_escaping(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |found, &b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\') | (b == 0xE2)
    })
}

/// Appends an unsigned integer in decimal (itoa: two digits per step from a table, without
/// the formatter's machinery).
pub fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends a signed integer in decimal.
pub fn push_i64(out: &mut String, n: i64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends an IP address as Go prints it (dotted quad for IPv4, RFC 5952 for IPv6).
pub fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            push_u64(out, a.into());
            for octet in [b, c, d] {
                out.push('.');
                push_u64(out, octet.into());
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends `s` as a JSON string. Unlike many encoders, `<`, `>` and `&` stay literal (as Go's
/// slog writes them); U+2028 and U+2029 are escaped.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    // Fast path: most values (hosts, paths, ids) need no escaping at all. 0xE2 starts the
    // UTF-8 encoding of U+2028/U+2029.
    if !needs_escaping(s.as_bytes()) {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape: Option<&str> = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{2028}' => Some("\\u2028"),
            '\u{2029}' => Some("\\u2029"),
            c if (c as u32) < 0x20 => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Renders a list of strings as a JSON array (for `json.<key>` fields).
pub fn json_list<S: AsRef<str>>(items: &[S]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, item.as_ref());
    }
    out.push(']');
    out
}

/// Appends `t` in RFC 3339 UTC with up to nine fractional digits, trailing zeros trimmed (Go's
/// `time.RFC3339Nano`).
pub fn push_time(out: &mut String, t: SystemTime) {
    thread_local! {
        /// The seconds part of the last time written on this thread, formatted: log lines
        /// come many to a second, so the calendar arithmetic runs about once a second.
        static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let nanos = since.subsec_nanos();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != secs {
            let days = secs.div_euclid(86_400);
            let rem = secs.rem_euclid(86_400);
            let (year, month, day) = civil_from_days(days);
            second.1.clear();
            let _ = write!(
                second.1,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            );
            second.0 = secs;
        }
        out.push_str(&second.1);
    });
    if nanos != 0 {
        // Nine digits on the stack, trailing zeros trimmed.
        let mut digits = [b'0'; 9];
        let mut n = nanos;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        let len = 9 - digits.iter().rev().take_while(|d| **d == b'0').count();
        out.push('.');
        out.extend(digits[..len].iter().map(|d| char::from(*d)));
    }
    out.push('Z');
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pipes_are_widened_and_other_files_left_alone() {
        let (reader, writer) = std::io::pipe().unwrap();
        widen_pipe(&writer);
        let size = rustix::pipe::fcntl_getpipe_size(&writer).unwrap();
        let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(PIPE_SIZE);
        assert!(size >= PIPE_SIZE.min(max), "pipe size {size}");
        drop(reader);
        // Not a pipe: nothing to do, and no panic.
        let file = tempfile::tempfile().unwrap();
        widen_pipe(&file);
        assert!(rustix::pipe::fcntl_getpipe_size(&file).is_err());
    }

    use super::*;
    use std::time::Duration;

    #[test]
    fn time_is_rfc3339_with_trimmed_nanos() {
        let mut s = String::new();
        push_time(
            &mut s,
            UNIX_EPOCH + Duration::new(1_795_710_827, 273_061_310),
        );
        assert_eq!(s, "2026-11-26T16:33:47.27306131Z");
        let mut s = String::new();
        push_time(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400)); // leap day 2000
        assert_eq!(s, "2000-02-29T00:00:00Z");
    }

    #[test]
    fn numbers_and_addresses_print_like_display() {
        for n in [0, 7, 10, 499, 65_535, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        for n in [-1, 0, 1_048_576, i64::MIN, i64::MAX] {
            let mut s = String::new();
            push_i64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut s = String::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string());
        }
    }

    #[test]
    fn escaping_is_detected_anywhere_in_a_value() {
        assert!(!needs_escaping(b"GET /products/42 Mozilla/5.0 <&>"));
        for special in [b'"', b'\\', b'\n', 0x01, 0x1f, 0xE2] {
            let mut value = vec![b'a'; 40];
            value[33] = special;
            assert!(needs_escaping(&value), "{special:#x}");
        }
        let mut s = String::new();
        push_json_str(&mut s, "a\u{2028}b\u{2029}\"\\\t\u{1}é");
        assert_eq!(s, r#""a\u2028b\u2029\"\\\t\u0001é""#);
    }

    #[test]
    fn cached_second_is_replaced_when_the_second_changes() {
        let at = |secs, nanos| {
            let mut s = String::new();
            push_time(&mut s, UNIX_EPOCH + Duration::new(secs, nanos));
            s
        };
        assert_eq!(at(1_795_710_827, 5), "2026-11-26T16:33:47.000000005Z");
        assert_eq!(at(1_795_710_827, 100_000_000), "2026-11-26T16:33:47.1Z");
        assert_eq!(at(1_795_710_828, 0), "2026-11-26T16:33:48Z");
        assert_eq!(at(0, 999_999_999), "1970-01-01T00:00:00.999999999Z");
    }

    #[test]
    fn strings_are_escaped_without_html_escaping() {
        let mut s = String::new();
        push_json_str(&mut s, "/a<b>&c \"q\" \\ \n \u{1} \u{2028}");
        assert_eq!(s, r#""/a<b>&c \"q\" \\ \n \u0001 \u2028""#);
    }

    #[test]
    fn lists_render_as_json_arrays() {
        assert_eq!(json_list(&["a", "b\""]), r#"["a","b\""]"#);
        assert_eq!(json_list::<&str>(&[]), "[]");
    }

    #[test]
    fn events_keep_field_order_and_types() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(GoJson)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let targets = json_list(&["web:3000"]);
            tracing::info!(service = "app", json.targets = %targets, tls = false, http = 80u16, "Deploying");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let rest = out.split_once("\",\"level\"").unwrap().1;
        assert_eq!(
            rest,
            ":\"INFO\",\"msg\":\"Deploying\",\"service\":\"app\",\"targets\":[\"web:3000\"],\"tls\":false,\"http\":80}\n"
        );
    }
}
