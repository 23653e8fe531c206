//! Log output in upstream's shape: one JSON object per line on stdout, keys `time`, `level`,
//! `msg`, then the event's fields in the order they were written.
//!
//! Go's `slog` JSON handler defines the shape operators' log pipelines already parse, so we
//! write it by hand instead of using tracing-subscriber's JSON layout (different keys, nested
//! fields). A field named `json.<key>` carries pre-rendered JSON (lists such as `targets`),
//! written raw under `<key>`.
//!
//! The runtime's worker threads buffer their access-log lines and hand them, in batches, to a
//! writer thread: when a buffer passes 32 KiB, when the worker goes idle, and when it stops.
//! The writer waits 10 ms after the first batch arrives and writes everything gathered by
//! then, so under load stdout sees about a hundred large writes a second instead of one per
//! event-loop turn (each of which woke the log reader, a container runtime's log driver), and
//! the event loop never blocks on a log reader that lags, up to 8 MiB of lines queued. Other
//! events (deploys, errors) are written at once, after everything queued before them.
//!
//! On Linux the writer thread runs in the idle scheduling class: it writes when the core has
//! nothing else to do, and a worker that wakes up takes the core back at once instead of
//! waiting for a write to finish (about a hundred a second, each tens of microseconds, which
//! otherwise delay every request in flight). A core that never idles would starve it, so a
//! worker that finds 512 KiB queued writes them itself.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    static PENDING: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Called by each runtime worker whenever it goes idle (`on_thread_park`): hands over the
/// lines it buffered, and from its first call on makes the thread buffer its lines. Only
/// workers park, so threads of the blocking pool keep writing through at once.
pub fn worker_idle() {
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        match pending.as_mut() {
            Some(buf) if !buf.is_empty() => hand_over(buf),
            Some(_) => {}
            None => *pending = Some(Vec::with_capacity(FLUSH_AT * 2)),
        }
    });
}

/// Hands the calling thread's buffered lines to the writer (`on_thread_stop`, and before an
/// event is written, so that lines keep their order).
pub fn flush_thread() {
    PENDING.with(|p| {
        if let Some(buf) = p.borrow_mut().as_mut() {
            if !buf.is_empty() {
                hand_over(buf);
            }
        }
    });
}

/// Writes every line handed over and not yet written, before returning (at exit).
pub fn finish() {
    flush_thread();
    if let Some(handoff) = HANDOFF.get() {
        handoff.write_now(b"");
    }
}

/// Queues one complete log line built by `render` (the access log renders straight into the
/// buffer, so a request allocates nothing for its log line). Busy workers thus hand over
/// batches, with no lock or system call per request.
pub fn write_with(render: impl FnOnce(&mut Vec<u8>)) {
    PENDING.with(|p| match p.borrow_mut().as_mut() {
        Some(buf) => {
            render(buf);
            if buf.len() >= FLUSH_AT {
                hand_over(buf);
            }
        }
        None => {
            let mut line = Vec::with_capacity(512);
            render(&mut line);
            write_event(&line);
        }
    });
}

/// Queues `buf`'s lines for the writer thread; `buf` is left empty (another buffer).
fn hand_over(buf: &mut Vec<u8>) {
    handoff().push(buf);
}

/// Writes `line` now, after everything queued before it.
fn write_event(line: &[u8]) {
    match HANDOFF.get() {
        Some(handoff) => handoff.write_now(line),
        None => write_out(line),
    }
}

fn write_out(bytes: &[u8]) {
    // A closed stdout loses lines; logging must never take the process down.
    let _ = std::io::stdout().lock().write_all(bytes);
}

/// The process's writer thread, started by the first batch handed over.
static HANDOFF: OnceLock<&'static Handoff> = OnceLock::new();

fn handoff() -> &'static Handoff {
    HANDOFF.get_or_init(|| {
        let handoff: &'static Handoff =
            Box::leak(Box::new(Handoff::new(Box::new(std::io::stdout()))));
        handoff.start();
        handoff
    })
}

/// How long the writer waits after the first batch arrives, gathering more, before writing.
const COALESCE: Duration = Duration::from_millis(10);
/// Queued bytes that make the writer write without waiting.
const WRITE_AT: usize = 256 * 1024;
/// Queued bytes past which a worker handing over a batch writes the queue itself: the writer
/// thread, at idle priority, has not had the core for a while (about 10 ms of lines at
/// 50,000 requests a second). A writer in the middle of a write is left to finish it.
const WRITE_SELF_AT: usize = 2 * WRITE_AT;
/// Queued bytes past which workers wait for the writer (a log reader that stopped reading
/// cannot grow the queue without bound; upstream blocks on every line in that case).
const MAX_QUEUED: usize = 8 << 20;

/// Lines on their way from the workers to stdout.
struct Handoff {
    queue: Mutex<Queue>,
    /// Signalled when the queue stops being empty, or grows past [`WRITE_AT`].
    queued: Condvar,
    /// Signalled when the writer takes the queue.
    room: Condvar,
    /// Where lines go; held while writing, so that lines keep their order.
    out: Mutex<Box<dyn std::io::Write + Send>>,
}

/// Batches travel as the buffers they were written into: a worker hands over its full buffer
/// and takes an empty one from `free`, so full batches are not copied on their way to the
/// writer; small ones (a worker going idle hands over what it has) are appended to the last
/// queued buffer while it has room.
#[derive(Default)]
struct Queue {
    batches: Vec<Vec<u8>>,
    /// Bytes in `batches`.
    queued: usize,
    /// Memory held by `batches` (their capacity), which bounds the queue.
    held: usize,
    /// Emptied buffers, for workers to take in exchange for full ones.
    free: Vec<Vec<u8>>,
    /// Whether a writer thread runs; without one, batches are written by whoever hands them
    /// over.
    threaded: bool,
}

/// Emptied buffers kept for reuse (up to 1 MiB): the batches of one [`COALESCE`] period at
/// tens of thousands of requests a second; more are allocated (and later dropped) in a burst.
const MAX_FREE: usize = 16;

/// Batches up to this size are appended to the last queued buffer rather than moved.
const APPEND_MAX: usize = 4 * 1024;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave a queue of strings inconsistent.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Handoff {
    fn new(out: Box<dyn std::io::Write + Send>) -> Self {
        Handoff {
            queue: Mutex::new(Queue::default()),
            queued: Condvar::new(),
            room: Condvar::new(),
            out: Mutex::new(out),
        }
    }

    /// Starts the writer thread; without one (the spawn failed) batches are written at once.
    fn start(&'static self) {
        let spawned = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                run_when_idle();
                self.run()
            });
        lock(&self.queue).threaded = spawned.is_ok();
    }

    /// Queues a batch of lines, taking `batch`'s buffer and leaving an empty one in its place.
    fn push(&self, batch: &mut Vec<u8>) {
        let mut queue = lock(&self.queue);
        if !queue.threaded {
            drop(queue);
            self.write_now(batch);
            batch.clear();
            return;
        }
        while queue.held > MAX_QUEUED {
            queue = self.room.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
        let was_empty = queue.batches.is_empty();
        queue.queued += batch.len();
        match queue.batches.last_mut() {
            // A small batch is copied behind the last one: a buffer for each would hold far
            // more memory than lines. A large one moves: copying it would cost more.
            Some(last)
                if batch.len() <= APPEND_MAX && last.capacity() - last.len() >= batch.len() =>
            {
                last.extend_from_slice(batch);
                batch.clear();
            }
            _ => {
                queue.held += batch.capacity();
                let empty = queue
                    .free
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(batch.capacity()));
                queue.batches.push(std::mem::replace(batch, empty));
            }
        }
        let write_soon = queue.queued >= WRITE_AT;
        let behind = queue.queued >= WRITE_SELF_AT;
        drop(queue);
        if behind {
            let out = match self.out.try_lock() {
                Ok(out) => Some(out),
                Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
                // The writer is writing (perhaps to a reader that lags): not our turn.
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(out) = out {
                self.write_locked(out, b"");
                return;
            }
        }
        if was_empty || write_soon {
            self.queued.notify_one();
        }
    }

    /// Writes everything queued, then `extra`, before returning.
    fn write_now(&self, extra: &[u8]) {
        self.write_locked(lock(&self.out), extra);
    }

    /// [`Handoff::write_now`] with the output already locked.
    fn write_locked(&self, mut out: MutexGuard<'_, Box<dyn std::io::Write + Send>>, extra: &[u8]) {
        let mut batches = {
            let mut queue = lock(&self.queue);
            queue.queued = 0;
            queue.held = 0;
            std::mem::take(&mut queue.batches)
        };
        self.room.notify_all();
        // A closed stdout loses lines; logging must never take the process down.
        let _ = write_all_vectored(&mut **out, &batches, extra);
        let _ = out.flush();
        drop(out);
        let mut queue = lock(&self.queue);
        for mut buffer in batches.drain(..) {
            // Buffers that grew past a batch (a long line) are not kept.
            if queue.free.len() < MAX_FREE && buffer.capacity() <= 2 * FLUSH_AT {
                buffer.clear();
                queue.free.push(buffer);
            }
        }
        if queue.batches.is_empty() {
            // The list's own allocation is kept too.
            queue.batches = batches;
        }
    }

    /// The writer thread: waits for a batch, gathers for [`COALESCE`], writes, repeats.
    fn run(&self) {
        loop {
            let mut queue = lock(&self.queue);
            while queue.batches.is_empty() {
                queue = self.queued.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            if queue.queued < WRITE_AT {
                drop(queue);
                std::thread::sleep(COALESCE);
            } else {
                drop(queue);
            }
            self.write_now(b"");
        }
    }
}

/// Moves the calling thread to the idle scheduling class (`SCHED_IDLE`), where it runs only
/// on a core no other thread wants. Best effort: on failure it keeps its priority.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // One system call; neither rustix nor std wraps sched_setscheduler.
fn run_when_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread, and `param` is a valid `sched_param` that lives
    // through the call, which only reads it.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
}

#[cfg(not(target_os = "linux"))]
fn run_when_idle() {}

/// Writes `batches` and then `extra` with as few system calls as the writer allows.
fn write_all_vectored(
    out: &mut dyn std::io::Write,
    batches: &[Vec<u8>],
    extra: &[u8],
) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> = batches
        .iter()
        .map(|b| b.as_slice())
        .chain(std::iter::once(extra))
        .filter(|b| !b.is_empty())
        .map(std::io::IoSlice::new)
        .collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match out.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
            // buffered before them.
            flush_thread();
            write_event(&self.0);
        }
    }
}

/// The `time`, `level` and `msg` prefix of a log line, without the closing brace.
pub fn line_start(out: &mut Vec<u8>, time: SystemTime, level: &str, msg: &str) {
    out.extend_from_slice(b"{\"time\":\"");
    push_time(out, time);
    out.extend_from_slice(b"\",\"level\":\"");
    out.extend_from_slice(level.as_bytes());
    out.extend_from_slice(b"\",\"msg\":");
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
        let mut line = Vec::with_capacity(128 + visitor.fields.len());
        line_start(&mut line, SystemTime::now(), level, &visitor.message);
        line.extend_from_slice(&visitor.fields);
        line.extend_from_slice(b"}\n");
        // Built from `str`s and JSON escapes only: always UTF-8, so this borrows.
        writer.write_str(&String::from_utf8_lossy(&line))
    }
}

#[derive(Default)]
struct FieldVisitor {
    message: String,
    fields: Vec<u8>,
}

impl FieldVisitor {
    fn key(&mut self, field: &Field) {
        let name = field.name();
        let name = name.strip_prefix("json.").unwrap_or(name);
        self.fields.push(b',');
        push_json_str(&mut self.fields, name);
        self.fields.push(b':');
    }
}

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else if field.name().starts_with("json.") {
            self.key(field);
            self.fields.extend_from_slice(value.as_bytes());
        } else {
            self.key(field);
            push_json_str(&mut self.fields, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        push_i64(&mut self.fields, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        push_u64(&mut self.fields, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            self.fields.extend_from_slice(value.to_string().as_bytes());
        } else {
            push_json_str(&mut self.fields, &value.to_string());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.fields
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here too, wrapped so that Debug prints their Display.
        self.record_str(field, &format!("{value:?}"));
    }
}

/// Whether `check` finds anything in any eight bytes of `bytes` read as one word (SWAR). The
/// last word overlaps the one before it; a string shorter than a word is padded with `a`,
/// which no check looks for.
#[inline(always)]
fn any_word(bytes: &[u8], check: impl Fn(u64) -> u64) -> bool {
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"));
    let n = bytes.len();
    if n < 8 {
        let mut padded = [b'a'; 8];
        for (p, b) in padded.iter_mut().zip(bytes) {
            *p = *b;
        }
        return check(u64::from_le_bytes(padded)) != 0;
    }
    let mut at = 0;
    while at + 8 <= n {
        if check(word(at)) != 0 {
            return true;
        }
        at += 8;
    }
    at != n && check(word(n - 8)) != 0
}

const ONES: u64 = u64::from_ne_bytes([1; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Non-zero if any byte of `x` is below `n` (exact for `n <= 128`).
const fn any_below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * n as u64) & !x & HIGHS
}

/// Non-zero if any byte of `x` equals `b`.
const fn any_equal(x: u64, b: u8) -> u64 {
    any_below(x ^ (ONES * b as u64), 1)
}

/// Whether any byte of `bytes` must be escaped in a JSON string: a control character, `"`,
/// `\\`, or 0xE2, the lead byte of U+2028/U+2029 (checked exactly by the slow path).
fn needs_escaping(bytes: &[u8]) -> bool {
    any_word(bytes, |x| {
        any_below(x, 0x20) | any_equal(x, b'"') | any_equal(x, b'\\') | any_equal(x, 0xE2)
    })
}

/// Whether `bytes` is printable ASCII without `"` and `\\`: a header value that goes into a
/// JSON string as it is (`HeaderValue::to_str` accepts it, and nothing needs escaping).
fn plain_ascii(bytes: &[u8]) -> bool {
    !any_word(bytes, |x| {
        any_below(x, 0x20)
            | (x & HIGHS)
            | any_equal(x, 0x7F)
            | any_equal(x, b'"')
            | any_equal(x, b'\\')
    })
}

/// Appends a header value as a JSON string, or `""` if it is not visible ASCII (as
/// `HeaderValue::to_str` decides), checking and copying it in one pass when it needs no escape.
pub fn push_json_header(out: &mut Vec<u8>, value: Option<&http::HeaderValue>) {
    let bytes = value.map_or(&b""[..], |v| v.as_bytes());
    if plain_ascii(bytes) {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    } else {
        push_json_str(out, value.and_then(|v| v.to_str().ok()).unwrap_or(""));
    }
}

/// Appends an unsigned integer in decimal (itoa: two digits per step from a table, without
/// the formatter's machinery).
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends a signed integer in decimal.
pub fn push_i64(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// The decimal text of every octet, padded to three bytes, with its length in the fourth.
static OCTETS: [[u8; 4]; 256] = {
    let mut table = [[0u8; 4]; 256];
    let mut n = 0;
    while n < 256 {
        let (hundreds, tens, ones) = ((n / 100) as u8, (n / 10 % 10) as u8, (n % 10) as u8);
        table[n] = if n >= 100 {
            [b'0' + hundreds, b'0' + tens, b'0' + ones, 3]
        } else if n >= 10 {
            [b'0' + tens, b'0' + ones, 0, 2]
        } else {
            [b'0' + ones, 0, 0, 1]
        };
        n += 1;
    }
    table
};

/// Appends an IP address as Go prints it (dotted quad for IPv4, RFC 5952 for IPv6).
pub fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            // Each octet's text from a table, gathered on the stack and appended at once (the
            // log writes two addresses per request). One spare byte: every octet copies three.
            let mut text = [0u8; 16];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                let digits = &OCTETS[usize::from(octet)];
                text[len..len + 3].copy_from_slice(&digits[..3]);
                len += usize::from(digits[3]);
            }
            out.extend_from_slice(&text[..len]);
        }
        std::net::IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

/// Appends `s` as a JSON string. Unlike many encoders, `<`, `>` and `&` stay literal (as Go's
/// slog writes them); U+2028 and U+2029 are escaped.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Fast path: most values (hosts, paths, ids) need no escaping at all. 0xE2 starts the
    // UTF-8 encoding of U+2028/U+2029.
    if !needs_escaping(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    out.push(b'"');
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
        out.extend_from_slice(&s.as_bytes()[start..i]);
        match escape {
            Some(e) => out.extend_from_slice(e.as_bytes()),
            None => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let c = c as usize; // below 0x20
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[c >> 4], HEX[c & 15]]);
            }
        }
        start = i + c.len_utf8();
    }
    out.extend_from_slice(&s.as_bytes()[start..]);
    out.push(b'"');
}

/// Renders a list of strings as a JSON array (for `json.<key>` fields).
pub fn json_list<S: AsRef<str>>(items: &[S]) -> String {
    let mut out = vec![b'['];
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(&mut out, item.as_ref());
    }
    out.push(b']');
    // Built from `str`s and JSON escapes only: always UTF-8.
    String::from_utf8_lossy(&out).into_owned()
}

/// Appends `t` in RFC 3339 UTC with up to nine fractional digits, trailing zeros trimmed (Go's
/// `time.RFC3339Nano`).
pub fn push_time(out: &mut Vec<u8>, t: SystemTime) {
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
        out.extend_from_slice(second.1.as_bytes());
    });
    // The point and nine digits on the stack, trailing zeros trimmed, appended at once.
    let mut fraction = [b'0'; 11];
    fraction[0] = b'.';
    let mut n = nanos;
    for d in fraction[1..10].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let mut len = 10
        - fraction[1..10]
            .iter()
            .rev()
            .take_while(|d| **d == b'0')
            .count();
    if nanos == 0 {
        len = 0;
    }
    fraction[len] = b'Z';
    out.extend_from_slice(&fraction[..=len]);
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
    use std::sync::Arc;
    use std::time::Duration;

    /// A sink the tests read back; with `gate` closed, writes wait until it opens.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (closed, opened) = &*self.gate;
            let mut closed = lock(closed);
            while *closed {
                closed = opened.wait(closed).unwrap();
            }
            lock(&self.bytes).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(lock(&self.bytes).clone()).unwrap()
        }
        fn set_closed(&self, closed: bool) {
            *lock(&self.gate.0) = closed;
            self.gate.1.notify_all();
        }
        /// Waits (up to 5 s) until the sink holds `expected`.
        fn wait_for(&self, expected: &str) {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while self.text() != expected && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(self.text(), expected);
        }
    }

    fn started(sink: &Sink) -> &'static Handoff {
        let handoff: &'static Handoff = Box::leak(Box::new(Handoff::new(Box::new(sink.clone()))));
        handoff.start();
        handoff
    }

    #[test]
    fn batches_are_written_by_the_writer_thread_in_order() {
        let sink = Sink::default();
        let handoff = started(&sink);
        let mut batch = b"one\n".to_vec();
        handoff.push(&mut batch);
        assert!(batch.is_empty(), "the worker gets an empty buffer back");
        batch.extend_from_slice(b"two\n");
        handoff.push(&mut batch);
        sink.wait_for("one\ntwo\n");
        // Written buffers come back emptied, for workers to take in exchange for full ones.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while lock(&handoff.queue).free.len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(lock(&handoff.queue).free.len(), 2);
        batch.extend_from_slice(b"three\n");
        handoff.push(&mut batch);
        assert!(batch.capacity() >= 4, "a reused buffer");
        sink.wait_for("one\ntwo\nthree\n");
    }

    #[test]
    fn small_batches_share_the_last_buffer_and_full_ones_move() {
        let sink = Sink::default();
        // No writer thread: the queue is inspected, then written by hand.
        let handoff = Handoff::new(Box::new(sink.clone()));
        lock(&handoff.queue).threaded = true;
        let mut batch = Vec::with_capacity(64);
        batch.extend_from_slice(b"full\n");
        handoff.push(&mut batch);
        for line in [&b"a\n"[..], b"b\n", b"c\n"] {
            handoff.push(&mut line.to_vec());
        }
        {
            let queue = lock(&handoff.queue);
            assert_eq!(queue.batches.len(), 1, "small batches appended");
            assert_eq!(queue.queued, 11);
        }
        batch.extend_from_slice(&[b'x'; 63]);
        batch.push(b'\n');
        handoff.push(&mut batch);
        assert_eq!(
            lock(&handoff.queue).batches.len(),
            2,
            "no room: the buffer moves"
        );
        handoff.write_now(b"event\n");
        assert_eq!(
            sink.text(),
            format!("full\na\nb\nc\n{}\nevent\n", "x".repeat(63))
        );
        assert_eq!(lock(&handoff.queue).free.len(), 2);
    }

    #[test]
    fn an_event_goes_out_at_once_after_the_lines_queued_before_it() {
        let sink = Sink::default();
        let handoff = started(&sink);
        handoff.push(&mut b"access\n".to_vec());
        // Well inside the writer's 10 ms wait.
        handoff.write_now(b"event\n");
        assert_eq!(sink.text(), "access\nevent\n");
        std::thread::sleep(COALESCE * 3);
        assert_eq!(sink.text(), "access\nevent\n", "nothing written twice");
    }

    #[test]
    fn workers_wait_once_too_much_is_queued_for_a_stuck_reader() {
        let sink = Sink::default();
        sink.set_closed(true);
        let handoff = started(&sink);
        let line = "x".repeat(1 << 20) + "\n";
        let pusher = {
            let line = line.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    handoff.push(&mut line.as_bytes().to_vec());
                }
            })
        };
        // Whoever wrote first (the writer thread, or the pusher finding the queue behind) is
        // stuck in a write with what was queued then (at most the cap); the queue fills to
        // its cap again and the rest must wait.
        std::thread::sleep(Duration::from_millis(300));
        assert!(!pusher.is_finished(), "the pusher waits for room");
        assert!(lock(&handoff.queue).held <= MAX_QUEUED + 2 * line.len());
        sink.set_closed(false);
        pusher.join().unwrap();
        handoff.write_now(b"");
        assert_eq!(sink.text().len(), 20 * line.len());
    }

    #[test]
    fn a_worker_writes_the_queue_itself_when_the_writer_thread_falls_behind() {
        let sink = Sink::default();
        // A writer thread that never gets the core: none runs.
        let handoff = Handoff::new(Box::new(sink.clone()));
        lock(&handoff.queue).threaded = true;
        let line = "x".repeat(FLUSH_AT - 1) + "\n";
        let mut pushed = 0;
        while pushed + line.len() < WRITE_SELF_AT {
            handoff.push(&mut line.as_bytes().to_vec());
            pushed += line.len();
        }
        assert_eq!(
            sink.text().len(),
            0,
            "below the mark the writer thread's turn"
        );
        handoff.push(&mut line.as_bytes().to_vec());
        assert_eq!(
            sink.text().len(),
            pushed + line.len(),
            "written by the worker"
        );
        assert_eq!(lock(&handoff.queue).queued, 0);
        // With the output held by a writer in the middle of a write, the worker only queues.
        let written = sink.text().len();
        let out = lock(&handoff.out);
        let more = WRITE_SELF_AT / line.len() + 1;
        for _ in 0..more {
            handoff.push(&mut line.as_bytes().to_vec());
        }
        assert_eq!(lock(&handoff.queue).queued, more * line.len());
        drop(out);
        handoff.write_now(b"");
        assert_eq!(sink.text().len(), written + more * line.len());
    }

    /// The scheduling policy in a `/proc/.../stat` file: the 41st field (proc(5)); fields
    /// after the parenthesised name start at the third.
    #[cfg(target_os = "linux")]
    fn policy(stat: &str) -> u32 {
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        fields[41 - 3].parse().unwrap()
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_writer_thread_runs_in_the_idle_scheduling_class() {
        let sink = Sink::default();
        let handoff = started(&sink);
        handoff.push(&mut b"line\n".to_vec());
        sink.wait_for("line\n");
        let mut writers = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let path = task.unwrap().path();
            // Threads of other tests may end meanwhile.
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(path.join("comm")),
                std::fs::read_to_string(path.join("stat")),
            ) else {
                continue;
            };
            if comm.trim_end() == "log-writer" {
                writers.push(policy(&stat));
            }
        }
        assert!(!writers.is_empty(), "a writer thread runs");
        // Every test's writer thread has the same name; all of them run at idle priority.
        let idle = libc::SCHED_IDLE as u32;
        assert!(writers.iter().all(|&p| p == idle), "{writers:?}");
        // The thread that started it keeps its class.
        let own = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        assert_eq!(policy(&own), libc::SCHED_OTHER as u32);
    }

    #[test]
    fn time_is_rfc3339_with_trimmed_nanos() {
        let mut s = Vec::new();
        push_time(
            &mut s,
            UNIX_EPOCH + Duration::new(1_795_710_827, 273_061_310),
        );
        assert_eq!(
            String::from_utf8(s).unwrap(),
            "2026-11-26T16:33:47.27306131Z"
        );
        let mut s = Vec::new();
        push_time(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400)); // leap day 2000
        assert_eq!(String::from_utf8(s).unwrap(), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn numbers_and_addresses_print_like_display() {
        for n in [0, 7, 10, 499, 65_535, u64::MAX] {
            let mut s = Vec::new();
            push_u64(&mut s, n);
            assert_eq!(String::from_utf8(s).unwrap(), n.to_string());
        }
        for n in [-1, 0, 1_048_576, i64::MIN, i64::MAX] {
            let mut s = Vec::new();
            push_i64(&mut s, n);
            assert_eq!(String::from_utf8(s).unwrap(), n.to_string());
        }
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "10.9.99.100",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut s = Vec::new();
            push_ip(&mut s, ip);
            assert_eq!(String::from_utf8(s).unwrap(), ip.to_string());
        }
        // Every octet value, in every position and next to short and long neighbours.
        for n in 0..=255u8 {
            for ip in [
                std::net::Ipv4Addr::new(n, 255 - n, n / 2, 9),
                std::net::Ipv4Addr::new(9, n, 100, n),
            ] {
                let mut s = Vec::new();
                push_ip(&mut s, ip.into());
                assert_eq!(String::from_utf8(s).unwrap(), ip.to_string());
            }
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
        let mut s = Vec::new();
        push_json_str(&mut s, "a\u{2028}b\u{2029}\"\\\t\u{1}é");
        assert_eq!(
            String::from_utf8(s).unwrap(),
            r#""a\u2028b\u2029\"\\\t\u0001é""#
        );
    }

    #[test]
    fn word_checks_agree_with_byte_checks() {
        // Every byte value at every offset of every length up to 17 (two words and a tail),
        // in a run of other bytes that need nothing: the eight-byte checks must match the
        // plain definitions, including across word boundaries and in the padded tail.
        let escape = |b: u8| b < 0x20 || b == b'"' || b == b'\\' || b == 0xE2;
        let plain = |b: u8| (0x20..0x7F).contains(&b) && b != b'"' && b != b'\\';
        for len in 1..=17 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut value = vec![b'z'; len];
                    value[at] = byte;
                    assert_eq!(needs_escaping(&value), escape(byte), "{len} {at} {byte:#x}");
                    assert_eq!(plain_ascii(&value), plain(byte), "{len} {at} {byte:#x}");
                }
            }
        }
        assert!(!needs_escaping(b"") && plain_ascii(b""));
    }

    #[test]
    fn header_values_are_written_as_to_str_reads_them() {
        let render = |v: Option<&http::HeaderValue>| {
            let mut s = Vec::new();
            push_json_header(&mut s, v);
            String::from_utf8(s).unwrap()
        };
        let value = |b: &[u8]| http::HeaderValue::from_bytes(b).unwrap();
        assert_eq!(render(None), r#""""#);
        assert_eq!(render(Some(&value(b"text/html"))), r#""text/html""#);
        assert_eq!(render(Some(&value(b"a \"q\" \\"))), r#""a \"q\" \\""#);
        assert_eq!(render(Some(&value(b"a\tb"))), r#""a\tb""#);
        // Not visible ASCII: `to_str` refuses it, so the log shows an empty string.
        assert_eq!(render(Some(&value("é".as_bytes()))), r#""""#);
    }

    #[test]
    fn cached_second_is_replaced_when_the_second_changes() {
        let at = |secs, nanos| {
            let mut s = Vec::new();
            push_time(&mut s, UNIX_EPOCH + Duration::new(secs, nanos));
            String::from_utf8(s).unwrap()
        };
        assert_eq!(at(1_795_710_827, 5), "2026-11-26T16:33:47.000000005Z");
        assert_eq!(at(1_795_710_827, 100_000_000), "2026-11-26T16:33:47.1Z");
        assert_eq!(at(1_795_710_828, 0), "2026-11-26T16:33:48Z");
        assert_eq!(at(0, 999_999_999), "1970-01-01T00:00:00.999999999Z");
    }

    #[test]
    fn strings_are_escaped_without_html_escaping() {
        let mut s = Vec::new();
        push_json_str(&mut s, "/a<b>&c \"q\" \\ \n \u{1} \u{2028}");
        assert_eq!(
            String::from_utf8(s).unwrap(),
            r#""/a<b>&c \"q\" \\ \n \u0001 \u2028""#
        );
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
