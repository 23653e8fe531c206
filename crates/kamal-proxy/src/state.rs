//! Converting between running services and the state file (spec §1.5, Appendix A).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use kamal_balancer::{PauseSnapshot, PauseState, Pool, RolloutSplit};
use kamal_control::state::{
    self, LoadedState, PauseState as SavedPause, RolloutState, SavedService,
};
use kamal_control::{GoDuration, ServiceOptions, TargetOptions};

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

/// Writes every service; failures are logged (the running proxy is unaffected).
pub fn save(path: &Path, registry: &BTreeMap<String, Arc<Service>>) {
    let services: Vec<SavedService> = registry.values().map(|s| to_saved(s)).collect();
    match state::save(path, &services) {
        Ok(()) => tracing::debug!(path = %path.display(), "Saved state"),
        Err(error) => {
            tracing::error!(error = %error, path = %path.display(), "Unable to save state")
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
