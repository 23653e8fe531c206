//! Converting between running services and the state file (spec §1.5, Appendix A).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kamal_balancer::{PauseSnapshot, PauseState, Pool, RolloutSplit};
pub use kamal_control::state::WriteOutcome;
use kamal_control::state::{
    self, LoadedState, OrderedWriter, PauseState as SavedPause, RolloutState, SavedService,
};
use kamal_control::{GoDuration, ServiceOptions, TargetOptions};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::service::Service;

/// A service as read back from the state file, ready to be instantiated.
#[derive(Debug)]
pub struct Restored {
    /// Service name.
    pub name: String,
    /// Options (effective TLS values as saved).
    pub options: ServiceOptions,
    /// Target options.
    pub target_options: TargetOptions,
    /// Writer targets.
    pub writers: Vec<String>,
    /// Reader targets.
    pub readers: Vec<String>,
    /// Rollout pool targets (writers, readers), when there was a rollout pool.
    pub rollout: Option<(Vec<String>, Vec<String>)>,
    /// The rollout split, with its stored split point.
    pub split: Option<RolloutSplit>,
    /// Pause state.
    pub pause: PauseSnapshot,
}

/// Writes the state file off the runtime's worker threads, newest snapshot wins.
///
/// Serialising, writing and fsyncing can take tens of milliseconds on a cloud volume; on a
/// single-threaded runtime that would stall all traffic, so the file work runs on a blocking
/// thread. The ordering (an older snapshot is never written after a newer one) is
/// [`OrderedWriter`]'s; this adds the snapshot of the running services and the tokio side.
#[derive(Debug)]
pub struct StateWriter {
    file: Arc<OrderedWriter>,
    /// Writes in flight, so that shutdown can wait for them.
    writes: TaskTracker,
}

impl StateWriter {
    /// A writer for the state file at `path`.
    pub fn new(path: PathBuf) -> StateWriter {
        StateWriter {
            file: Arc::new(OrderedWriter::new(path)),
            writes: TaskTracker::new(),
        }
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Snapshots every service and starts writing them. Call it with the registry locked:
    /// the snapshot's number must follow the order of the changes it captures. The write
    /// continues even if the returned handle is dropped.
    pub fn save(&self, registry: &BTreeMap<String, Arc<Service>>) -> PendingWrite {
        let services: Vec<SavedService> = registry.values().map(|s| to_saved(s)).collect();
        let seq = self.file.next_seq();
        self.write(seq, services)
    }

    fn write(&self, seq: u64, services: Vec<SavedService>) -> PendingWrite {
        let file = Arc::clone(&self.file);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => PendingWrite(Pending::Running(
                self.writes
                    .spawn_blocking_on(move || file.write(seq, &services), &runtime),
            )),
            // Outside a runtime the caller's thread is not serving traffic.
            Err(_) => PendingWrite(Pending::Done(file.write(seq, &services))),
        }
    }

    /// Waits for every write started so far (at shutdown, so that none is cut short).
    pub async fn finish(&self) {
        self.writes.close();
        self.writes.wait().await;
    }
}

/// A state write in progress; [`wait`](PendingWrite::wait) for it to be on disk.
#[derive(Debug)]
#[must_use = "a command answers only once its state is saved"]
pub struct PendingWrite(Pending);

#[derive(Debug)]
enum Pending {
    Running(JoinHandle<WriteOutcome>),
    Done(WriteOutcome),
}

impl PendingWrite {
    /// Waits until this snapshot, or a newer one, is on disk (or the write failed; a failure
    /// is logged and leaves the running proxy unaffected).
    pub async fn wait(self) -> WriteOutcome {
        match self.0 {
            Pending::Done(outcome) => outcome,
            Pending::Running(handle) => handle.await.unwrap_or_else(|error| {
                tracing::error!(error = %error, "Unable to save state");
                WriteOutcome::Failed
            }),
        }
    }

    /// Whether the write is over (the snapshot, or a newer one, is on disk, or it failed).
    pub fn is_finished(&self) -> bool {
        match &self.0 {
            Pending::Done(_) => true,
            Pending::Running(handle) => handle.is_finished(),
        }
    }
}

/// Reads the state file, logging what upstream logs. `None` when there is nothing to restore.
pub fn load(path: &Path) -> Option<Vec<Restored>> {
    match state::load(path) {
        Ok(LoadedState::Missing) => {
            tracing::info!(path = %path.display(), "No previous state to restore");
            None
        }
        Err(error) => {
            tracing::error!(path = %path.display(), error = %error, "Failed to restore saved state");
            None
        }
        Ok(LoadedState::Loaded { services, skipped }) => {
            for s in &skipped {
                tracing::error!(
                    path = %path.display(),
                    error = %format!("service {} ({}): {}", s.index, s.name.as_deref().unwrap_or("?"), s.error),
                    "Failed to decode saved state"
                );
            }
            tracing::info!(path = %path.display(), "Restored saved state");
            Some(services.into_iter().map(from_saved).collect())
        }
    }
}

/// Writer and reader addresses of a pool, in order.
fn addresses(pool: &Pool) -> (Vec<String>, Vec<String>) {
    let (mut writers, mut readers) = (Vec::new(), Vec::new());
    for t in pool.describe() {
        if t.is_reader {
            readers.push(t.address);
        } else {
            writers.push(t.address);
        }
    }
    (writers, readers)
}

fn to_saved(service: &Service) -> SavedService {
    let state = service.state();
    let settings = &state.settings;
    let (writers, readers) = addresses(&state.active);
    let (rollout_targets, rollout_readers) = match &state.rollout {
        Some(pool) => {
            let (w, r) = addresses(pool);
            (Some(w), Some(r))
        }
        None => (None, None),
    };
    let pause = service.pause.snapshot();
    SavedService {
        name: service.name.to_string(),
        options: settings.options.clone(),
        target_options: settings.target_options.clone(),
        active_targets: writers,
        active_readers: readers,
        rollout_targets,
        rollout_readers,
        pause_controller: Some(SavedPause {
            state: pause.state.code(),
            stop_message: pause.message,
            fail_after: GoDuration::from_std(pause.max_pause),
        }),
        rollout_controller: state.split.as_ref().map(|split| RolloutState {
            percentage: split.percentage(),
            percentage_split_point: split.split_point(),
            allowlist: split.allowlist().to_vec(),
        }),
    }
}

fn from_saved(saved: SavedService) -> Restored {
    let pause = match saved.pause_controller {
        // A null controller means running (upstream would crash on it).
        None => PauseSnapshot::default(),
        Some(p) => PauseSnapshot {
            state: PauseState::from_code(p.state),
            message: p.stop_message,
            // A negative max-pause rejects at once, like zero.
            max_pause: p.fail_after.to_std(),
        },
    };
    let rollout = match (saved.rollout_targets, saved.rollout_readers) {
        (None, None) => None,
        (writers, readers) => Some((writers.unwrap_or_default(), readers.unwrap_or_default())),
    };
    let split = saved
        .rollout_controller
        .map(|r| RolloutSplit::restored(r.percentage, r.percentage_split_point, r.allowlist));
    let mut options = saved.options;
    options.normalize();
    Restored {
        name: saved.name,
        options,
        target_options: saved.target_options,
        writers: saved.active_targets,
        readers: saved.active_readers,
        rollout,
        split,
        pause,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::time::Duration;

    const DEADLINE: Duration = Duration::from_secs(10);

    fn named(names: &[&str]) -> Vec<SavedService> {
        names
            .iter()
            .map(|name| SavedService {
                name: (*name).to_owned(),
                ..SavedService::default()
            })
            .collect()
    }

    fn names_on_disk(path: &Path) -> Vec<String> {
        match state::load(path).expect("a readable state file") {
            LoadedState::Loaded { services, skipped } => {
                assert!(skipped.is_empty(), "{skipped:?}");
                services.into_iter().map(|s| s.name).collect()
            }
            LoadedState::Missing => panic!("no state file"),
        }
    }

    #[test]
    fn writes_run_off_a_single_threaded_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let writer = StateWriter::new(dir.path().join("kamal-proxy.state"));
        // One blocking thread, kept busy below, stands in for a disk that takes long to sync.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let slow_disk = runtime.spawn_blocking(move || {
            started_tx.send(()).unwrap();
            let _ = release_rx.recv();
        });
        // Only once it runs is the blocking thread surely taken, so the writes must queue.
        started_rx.recv_timeout(DEADLINE).unwrap();
        let (first, second, mut finish) = runtime.block_on(async {
            let first = writer.write(1, named(&["a"]));
            let second = writer.write(2, named(&["a", "b"]));
            // The only worker thread is free: a timer fires while both writes are blocked.
            let timer =
                tokio::time::timeout(DEADLINE, tokio::time::sleep(Duration::from_millis(1)));
            assert!(timer.await.is_ok());
            assert!(!first.is_finished() && !second.is_finished());
            // Shutdown waits for them.
            let mut finish = Box::pin(writer.finish());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(finish.as_mut().poll(&mut cx).is_pending());
            (first, second, finish)
        });
        drop(release_tx);

        runtime.block_on(async {
            tokio::time::timeout(DEADLINE, slow_disk)
                .await
                .expect("the blocker ends once released")
                .unwrap();
        });

        runtime.block_on(async {
            let outcomes = tokio::time::timeout(DEADLINE, async {
                (first.wait().await, second.wait().await)
            })
            .await
            .expect("writes finish once the disk answers");
            // Whichever ran first, snapshot 2 is what the file holds.
            assert!(
                matches!(
                    outcomes,
                    (WriteOutcome::Written, WriteOutcome::Written)
                        | (WriteOutcome::Superseded, WriteOutcome::Written)
                ),
                "{outcomes:?}"
            );
            tokio::time::timeout(DEADLINE, finish.as_mut())
                .await
                .expect("finish returns once the writes are done");
        });
        assert_eq!(names_on_disk(writer.path()), ["a", "b"]);
    }

    #[test]
    fn outside_a_runtime_the_write_is_done_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let writer = StateWriter::new(dir.path().join("kamal-proxy.state"));
        let pending = writer.write(1, named(&["a"]));
        assert!(pending.is_finished());
        assert_eq!(names_on_disk(writer.path()), ["a"]);
    }
}
