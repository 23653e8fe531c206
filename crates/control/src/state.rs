//! The state file (`kamal-proxy.state`, Appendix A): upstream's format read (legacy fields
//! included) and written, service by service, with an atomic replace on save; [`OrderedWriter`]
//! keeps snapshots written in the order they were taken.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::duration::GoDuration;
use crate::error::StateError;
use crate::options::{empty_as_null, null_as_empty, ServiceOptions, TargetOptions};

/// `pause_controller.state` of a running service.
pub const PAUSE_STATE_RUNNING: u8 = 0;
/// `pause_controller.state` of a paused service.
pub const PAUSE_STATE_PAUSED: u8 = 1;
/// `pause_controller.state` of a stopped service.
pub const PAUSE_STATE_STOPPED: u8 = 2;

/// One service as persisted. Field order is the file's key order.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct SavedService {
    /// Service name.
    pub name: String,
    /// Service options; hosts and prefixes normalised (`[""]`, `["/"]` when unset).
    pub options: ServiceOptions,
    /// Target options.
    pub target_options: TargetOptions,
    /// Active writer targets, in order.
    pub active_targets: Vec<String>,
    /// Active reader targets, in order.
    pub active_readers: Vec<String>,
    /// Rollout writer targets; `None` when there is no rollout pool.
    pub rollout_targets: Option<Vec<String>>,
    /// Rollout reader targets; `None` when there is no rollout pool.
    pub rollout_readers: Option<Vec<String>>,
    /// Pause state; `None` (upstream's `null`) means running.
    pub pause_controller: Option<PauseState>,
    /// Rollout split; `None` when no split is set.
    pub rollout_controller: Option<RolloutState>,
}

/// A service's pause controller as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PauseState {
    /// [`PAUSE_STATE_RUNNING`], [`PAUSE_STATE_PAUSED`] or [`PAUSE_STATE_STOPPED`].
    #[serde(default)]
    pub state: u8,
    /// The stop message shown while stopped.
    #[serde(default)]
    pub stop_message: String,
    /// Max-pause: how long a request waits while paused.
    #[serde(default)]
    pub fail_after: GoDuration,
}

/// A service's rollout split as persisted.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RolloutState {
    /// `rollout set --percent`.
    #[serde(default)]
    pub percentage: i64,
    /// `4294967295.0 * (percentage / 100.0)`, used as stored (never recomputed).
    #[serde(default)]
    pub percentage_split_point: f64,
    /// `rollout set --list`.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        serialize_with = "empty_as_null"
    )]
    pub allowlist: Vec<String>,
}

impl RolloutState {
    /// A split as `rollout set` creates it, with upstream's split-point arithmetic.
    pub fn new(percentage: i64, allowlist: Vec<String>) -> RolloutState {
        RolloutState {
            percentage,
            percentage_split_point: 4294967295.0 * (percentage as f64 / 100.0),
            allowlist,
        }
    }
}

/// The on-disk element, with the legacy fields older versions wrote.
#[derive(Deserialize)]
struct RawService {
    #[serde(default)]
    name: String,
    #[serde(default)]
    options: ServiceOptions,
    #[serde(default)]
    target_options: TargetOptions,
    #[serde(default, deserialize_with = "null_as_empty")]
    active_targets: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    active_readers: Vec<String>,
    #[serde(default)]
    rollout_targets: Option<Vec<String>>,
    #[serde(default)]
    rollout_readers: Option<Vec<String>>,
    #[serde(default)]
    pause_controller: Option<PauseState>,
    #[serde(default)]
    rollout_controller: Option<RolloutState>,
    #[serde(default)]
    active_target: Option<String>,
    #[serde(default)]
    rollout_target: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    hosts: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    path_prefixes: Vec<String>,
}

impl From<RawService> for SavedService {
    fn from(raw: RawService) -> SavedService {
        let mut options = raw.options;
        let mut active_targets = raw.active_targets;
        let mut rollout_targets = raw.rollout_targets;

        // Older versions stored a single target and the routing keys at the top level.
        if active_targets.is_empty() {
            if let Some(target) = raw.active_target.filter(|t| !t.is_empty()) {
                active_targets = vec![target];
            }
        }
        if rollout_targets.as_ref().is_none_or(Vec::is_empty) {
            if let Some(target) = raw.rollout_target.filter(|t| !t.is_empty()) {
                rollout_targets = Some(vec![target]);
            }
        }
        if options.hosts.is_empty() && !raw.hosts.is_empty() {
            options.hosts = raw.hosts;
        }
        if options.path_prefixes.is_empty() && !raw.path_prefixes.is_empty() {
            options.path_prefixes = raw.path_prefixes;
        }
        options.normalize();

        SavedService {
            name: raw.name,
            options,
            target_options: raw.target_options,
            active_targets,
            active_readers: raw.active_readers,
            rollout_targets,
            rollout_readers: raw.rollout_readers,
            pause_controller: raw.pause_controller,
            rollout_controller: raw.rollout_controller,
        }
    }
}

/// An element of the state file that could not be decoded and was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedService {
    /// Position in the file's array, from 0.
    pub index: usize,
    /// The element's `name`, when it has a readable one.
    pub name: Option<String>,
    /// Why it was skipped.
    pub error: String,
}

impl std::fmt::Display for SkippedService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "service #{} ({name}): {}", self.index, self.error),
            None => write!(f, "service #{}: {}", self.index, self.error),
        }
    }
}

/// What [`load`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadedState {
    /// There is no state file (a first start): nothing to restore.
    Missing,
    /// The file was read; broken elements were skipped and are reported.
    Loaded {
        /// The decoded services, in file order.
        services: Vec<SavedService>,
        /// Elements that could not be decoded.
        skipped: Vec<SkippedService>,
    },
}

/// Reads the state file. Each array element is decoded on its own: a broken one is reported
/// in `skipped` and the others are still returned (we differ from upstream's all-or-nothing).
/// Only a file that is not a JSON array at all is an error.
pub fn load(path: &Path) -> Result<LoadedState, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(LoadedState::Missing),
        Err(source) => {
            return Err(StateError::Unreadable {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    // `null` is what Go writes for an empty (nil) service list.
    let elements: Option<Vec<serde_json::Value>> =
        serde_json::from_slice(&bytes).map_err(|source| StateError::NotAnArray { source })?;

    let mut services = Vec::new();
    let mut skipped = Vec::new();
    for (index, element) in elements.unwrap_or_default().into_iter().enumerate() {
        let name = element
            .get("name")
            .and_then(|n| n.as_str())
            .map(str::to_owned);
        match RawService::deserialize(element) {
            Ok(raw) => services.push(SavedService::from(raw)),
            Err(error) => skipped.push(SkippedService {
                index,
                name,
                error: error.to_string(),
            }),
        }
    }
    Ok(LoadedState::Loaded { services, skipped })
}

/// Serialises services exactly as the file holds them: one line of JSON plus `\n`, Go's key
/// order and escaping.
pub fn encode(services: &[SavedService]) -> Result<Vec<u8>, StateError> {
    let mut out = Vec::with_capacity(1024 * services.len().max(1));
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    services
        .serialize(&mut serializer)
        .map_err(StateError::Encode)?;
    out.push(b'\n');
    Ok(out)
}

/// Saves are serialised within the process so concurrent callers never share the temp file;
/// across processes, the control socket already guarantees a single server.
static SAVE_LOCK: Mutex<()> = Mutex::new(());

/// Replaces the state file atomically: write a temporary file in the same directory, fsync it,
/// rename it over `path`, fsync the directory. A crash at any point leaves either the old or
/// the new file, never a torn one. Blocking; call it from a blocking-capable context.
pub fn save(path: &Path, services: &[SavedService]) -> Result<(), StateError> {
    let bytes = encode(services)?;
    let _guard = SAVE_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let temp = temp_path(path);
    let write_error = |target: &Path, source: io::Error| StateError::Write {
        path: target.to_path_buf(),
        source,
    };

    let result = write_and_sync(&temp, &bytes)
        .map_err(|e| write_error(&temp, e))
        .and_then(|()| std::fs::rename(&temp, path).map_err(|e| write_error(path, e)));
    if let Err(error) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(error);
    }
    // Without this the rename itself may not survive a power loss.
    sync_dir(path).map_err(|e| write_error(path, e))
}

/// Saves snapshots of the service list in the order they were taken: a snapshot older than
/// the last one written is skipped, so two changes whose writes finish close together can never
/// leave the older state on disk.
///
/// Blocking, like [`save`]; an async embedder runs [`write`](OrderedWriter::write) on a
/// blocking thread. Share it (e.g. in an `Arc`) between the code that takes snapshots and the
/// threads that write them.
#[derive(Debug)]
pub struct OrderedWriter {
    path: PathBuf,
    /// The sequence number of the next snapshot.
    next: AtomicU64,
    /// The newest snapshot written (or attempted); held for the whole write, which also keeps
    /// writes from overlapping.
    written: Mutex<u64>,
}

/// What became of one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// This snapshot is on disk.
    Written,
    /// A newer snapshot was written first; it includes this one's changes.
    Superseded,
    /// The write failed (logged); the previous file is intact.
    Failed,
}

impl OrderedWriter {
    /// A writer for the state file at `path`. Nothing is read or written yet.
    pub fn new(path: PathBuf) -> OrderedWriter {
        OrderedWriter {
            path,
            next: AtomicU64::new(1),
            written: Mutex::new(0),
        }
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Numbers a snapshot. Call it under the lock that orders your changes, together with
    /// taking the snapshot: the numbers are what decides which snapshot is newer.
    pub fn next_seq(&self) -> u64 {
        // Relaxed is enough: the caller's lock already orders the callers.
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Writes snapshot `seq` (from [`next_seq`](OrderedWriter::next_seq)) unless a newer one
    /// already was. Failures are logged, not returned: the previous file stays intact and the
    /// next change writes the whole list again.
    pub fn write(&self, seq: u64, services: &[SavedService]) -> WriteOutcome {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if *written >= seq {
            tracing::debug!(path = %self.path.display(), "State already saved by a later change");
            return WriteOutcome::Superseded;
        }
        // Recorded even if the write fails: an older snapshot must not replace what a failed
        // newer one meant to write.
        *written = seq;
        match save(&self.path, services) {
            Ok(()) => {
                tracing::debug!(path = %self.path.display(), "Saved state");
                WriteOutcome::Written
            }
            Err(error) => {
                tracing::error!(error = %error, path = %self.path.display(), "Unable to save state");
                WriteOutcome::Failed
            }
        }
    }
}

/// `<dir>/.<file name>.tmp`: hidden, same directory (so rename is atomic), fixed so that a
/// leftover from a crash is simply overwritten by the next save.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_owned());
    path.with_file_name(format!(".{name}.tmp"))
}

fn write_and_sync(temp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(temp)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Go's `encoding/json` output details: `<`, `>`, `&`, U+2028 and U+2029 escaped, and
/// integral floats written without a fraction (`4294967295`, not `4294967295.0`).
struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escape.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_f64<W: ?Sized + Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        // Exact integers below 2^53 print as integers, as Go's 'f' format does.
        if value.is_finite() && value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 {
            write!(writer, "{}", value as i64)
        } else {
            serde_json::ser::CompactFormatter.write_f64(writer, value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> SavedService {
        let mut options = ServiceOptions {
            hosts: vec![format!("{name}.test")],
            acme_cache_path: "/home/kamal-proxy/.config/kamal-proxy/certs".into(),
            ..ServiceOptions::default()
        };
        options.normalize();
        SavedService {
            name: name.into(),
            options,
            target_options: TargetOptions::default(),
            active_targets: vec!["127.0.0.1:28001".into()],
            active_readers: vec![],
            rollout_targets: None,
            rollout_readers: None,
            pause_controller: Some(PauseState::default()),
            rollout_controller: None,
        }
    }

    fn named(names: &[&str]) -> Vec<SavedService> {
        names.iter().map(|name| service(name)).collect()
    }

    fn names_on_disk(path: &Path) -> Vec<String> {
        match load(path).expect("a readable state file") {
            LoadedState::Loaded { services, skipped } => {
                assert!(skipped.is_empty(), "{skipped:?}");
                services.into_iter().map(|s| s.name).collect()
            }
            LoadedState::Missing => panic!("no state file"),
        }
    }

    #[test]
    fn sequence_numbers_increase_from_one() {
        let dir = tempfile::tempdir().unwrap();
        let writer = OrderedWriter::new(dir.path().join("kamal-proxy.state"));
        let seqs: Vec<u64> = (0..3).map(|_| writer.next_seq()).collect();
        assert_eq!(seqs, [1, 2, 3]);
        // The first snapshot numbered is newer than the nothing written yet.
        assert_eq!(writer.write(seqs[0], &named(&["a"])), WriteOutcome::Written);
        assert_eq!(names_on_disk(writer.path()), ["a"]);
    }

    #[test]
    fn an_older_snapshot_is_never_written_after_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let writer = OrderedWriter::new(dir.path().join("kamal-proxy.state"));
        let (older, newer) = (writer.next_seq(), writer.next_seq());

        // The newer snapshot reaches the disk first; the older, finishing late, must not
        // replace it.
        assert_eq!(
            writer.write(newer, &named(&["a", "b"])),
            WriteOutcome::Written
        );
        assert_eq!(
            writer.write(older, &named(&["a"])),
            WriteOutcome::Superseded
        );
        assert_eq!(names_on_disk(writer.path()), ["a", "b"]);
        // The same snapshot twice is written once.
        std::fs::remove_file(writer.path()).unwrap();
        assert_eq!(
            writer.write(newer, &named(&["a", "b"])),
            WriteOutcome::Superseded
        );
        assert!(!writer.path().exists());
        // A newer one still goes through.
        assert_eq!(writer.write(writer.next_seq(), &[]), WriteOutcome::Written);
        assert!(names_on_disk(writer.path()).is_empty());
    }

    #[test]
    fn a_failed_write_still_orders_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("missing");
        let writer = OrderedWriter::new(parent.join("kamal-proxy.state"));
        let (older, newer) = (writer.next_seq(), writer.next_seq());
        assert_eq!(writer.write(newer, &named(&["new"])), WriteOutcome::Failed);

        // Now the write could succeed, but the older snapshot must still not replace what the
        // failed newer one meant to write.
        std::fs::create_dir(&parent).unwrap();
        assert_eq!(
            writer.write(older, &named(&["old"])),
            WriteOutcome::Superseded
        );
        assert!(!writer.path().exists());
        // The next change writes the whole list again.
        assert_eq!(
            writer.write(writer.next_seq(), &named(&["newest"])),
            WriteOutcome::Written
        );
        assert_eq!(names_on_disk(writer.path()), ["newest"]);
    }

    #[test]
    fn concurrent_writes_leave_the_newest_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let writer = OrderedWriter::new(dir.path().join("kamal-proxy.state"));
        let snapshots: Vec<(u64, String)> = (0..8)
            .map(|_| {
                let seq = writer.next_seq();
                (seq, format!("s{seq}"))
            })
            .collect();
        let newest = snapshots.last().unwrap().0;
        let outcomes: Vec<(u64, WriteOutcome)> = std::thread::scope(|scope| {
            // Spawned newest first, so that older ones tend to arrive late.
            let handles: Vec<_> = snapshots
                .iter()
                .rev()
                .map(|(seq, name)| {
                    let writer = &writer;
                    scope.spawn(move || (*seq, writer.write(*seq, &named(&[name]))))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (seq, outcome) in outcomes {
            let expected: &[WriteOutcome] = if seq == newest {
                &[WriteOutcome::Written]
            } else {
                &[WriteOutcome::Written, WriteOutcome::Superseded]
            };
            assert!(expected.contains(&outcome), "{seq}: {outcome:?}");
        }
        assert_eq!(names_on_disk(writer.path()), [format!("s{newest}")]);
    }

    #[test]
    fn encoding_matches_upstream_shape() {
        let text = String::from_utf8(encode(&[service("rw")]).unwrap()).unwrap();
        let want = concat!(
            r#"[{"name":"rw","options":{"hosts":["rw.test"],"path_prefixes":["/"],"tls_enabled":false,"#,
            r#""tls_certificate_path":"","tls_private_key_path":"","tls_on_demand_url":"","tls_redirect":true,"#,
            r#""canonical_host":"","acme_directory":"","acme_cache_path":"/home/kamal-proxy/.config/kamal-proxy/certs","#,
            r#""error_page_path":"","strip_prefix":true,"writer_affinity_timeout":1000000000,"#,
            r#""read_targets_accept_websockets":false,"exclude_metrics_paths":null,"client_ip_header":""},"#,
            r#""target_options":{"health_check_config":{"path":"/up","port":0,"interval":1000000000,"timeout":5000000000,"host":""},"#,
            r#""response_timeout":30000000000,"buffer_requests":false,"buffer_responses":false,"#,
            r#""max_memory_buffer_size":1048576,"max_request_body_size":0,"max_response_body_size":0,"#,
            r#""log_request_headers":null,"log_response_headers":null,"forward_headers":true,"scope_cookie_paths":false},"#,
            r#""active_targets":["127.0.0.1:28001"],"active_readers":[],"rollout_targets":null,"rollout_readers":null,"#,
            r#""pause_controller":{"state":0,"stop_message":"","fail_after":0},"rollout_controller":null}]"#,
            "\n"
        );
        assert_eq!(text, want);
    }

    #[test]
    fn go_escaping_and_floats() {
        let mut s = service("esc");
        s.pause_controller = Some(PauseState {
            state: PAUSE_STATE_STOPPED,
            stop_message: "Back <soon> & \"later\"\u{2028}".into(),
            fail_after: GoDuration::from_secs(30),
        });
        s.rollout_controller = Some(RolloutState::new(100, vec![]));
        let text = String::from_utf8(encode(&[s.clone()]).unwrap()).unwrap();
        assert!(
            text.contains(r#""stop_message":"Back \u003csoon\u003e \u0026 \"later\"\u2028""#),
            "{text}"
        );
        assert!(
            text.contains(r#""rollout_controller":{"percentage":100,"percentage_split_point":4294967295,"allowlist":null}"#),
            "{text}"
        );
        s.rollout_controller = Some(RolloutState::new(50, vec!["vip".into()]));
        let text = String::from_utf8(encode(&[s]).unwrap()).unwrap();
        assert!(
            text.contains(r#""percentage_split_point":2147483647.5"#),
            "{text}"
        );
    }

    #[test]
    fn split_point_uses_upstream_arithmetic() {
        assert_eq!(
            RolloutState::new(50, vec![]).percentage_split_point,
            2147483647.5
        );
        assert_eq!(RolloutState::new(0, vec![]).percentage_split_point, 0.0);
        assert!(RolloutState::new(-1, vec![]).percentage_split_point < 0.0);
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kamal-proxy.state");
        let mut second = service("two");
        second.rollout_targets = Some(vec!["127.0.0.1:29001".into()]);
        second.rollout_readers = Some(vec![]);
        second.rollout_controller = Some(RolloutState::new(33, vec!["vip".into()]));
        second.target_options.log_request_headers = vec!["X-Custom".into()];
        let services = vec![service("one"), second];
        save(&path, &services).unwrap();
        match load(&path).unwrap() {
            LoadedState::Loaded {
                services: back,
                skipped,
            } => {
                assert!(skipped.is_empty());
                assert_eq!(back, services);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Saving an empty list gives a loadable file too.
        save(&path, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[]\n");
        assert_eq!(
            load(&path).unwrap(),
            LoadedState::Loaded {
                services: vec![],
                skipped: vec![]
            }
        );
    }

    #[test]
    fn missing_file_is_distinguishable() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            load(&dir.path().join("nope.state")).unwrap(),
            LoadedState::Missing
        );
    }

    #[test]
    fn a_file_that_is_not_an_array_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kamal-proxy.state");
        for content in ["invalid", "", "{\"name\":\"x\"}", "[{\"name\":\"x\"}"] {
            std::fs::write(&path, content).unwrap();
            assert!(
                matches!(load(&path), Err(StateError::NotAnArray { .. })),
                "{content:?}"
            );
        }
        std::fs::write(&path, "null\n").unwrap();
        assert_eq!(
            load(&path).unwrap(),
            LoadedState::Loaded {
                services: vec![],
                skipped: vec![]
            }
        );
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be cannot be read as one.
        let path = dir.path().join("kamal-proxy.state");
        std::fs::create_dir(&path).unwrap();
        assert!(matches!(load(&path), Err(StateError::Unreadable { .. })));
    }

    #[test]
    fn save_into_a_missing_directory_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("kamal-proxy.state");
        assert!(matches!(
            save(&path, &[service("x")]),
            Err(StateError::Write { .. })
        ));
    }
}
