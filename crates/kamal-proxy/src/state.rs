//! Converting between running services and the state file (spec §1.5, Appendix A).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use kamal_control::state::{self, LoadedState, PauseState as SavedPause, SavedService};
use kamal_control::{ServiceOptions, TargetOptions};

use crate::service::{Pause, PauseState, Service};

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
    /// Pause state.
    pub pause: Pause,
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

fn to_saved(service: &Service) -> SavedService {
    let settings = service.settings.load();
    let pool = service.active.load();
    let (mut writers, mut readers) = (Vec::new(), Vec::new());
    for t in pool.describe() {
        if t.is_reader {
            readers.push(t.address);
        } else {
            writers.push(t.address);
        }
    }
    let pause = service.pause.load();
    SavedService {
        name: service.name.to_string(),
        options: settings.options.clone(),
        target_options: settings.target_options.clone(),
        active_targets: writers,
        active_readers: readers,
        rollout_targets: None,
        rollout_readers: None,
        pause_controller: Some(SavedPause {
            state: match pause.state {
                PauseState::Running => 0,
                PauseState::Paused => 1,
                PauseState::Stopped => 2,
            },
            stop_message: pause.message.clone(),
            fail_after: pause.max_pause,
        }),
        rollout_controller: None,
    }
}

fn from_saved(saved: SavedService) -> Restored {
    let pause = match saved.pause_controller {
        // A null controller means running (upstream would crash on it).
        None => Pause::default(),
        Some(p) => Pause {
            state: match p.state {
                1 => PauseState::Paused,
                2 => PauseState::Stopped,
                _ => PauseState::Running,
            },
            message: p.stop_message,
            max_pause: p.fail_after,
        },
    };
    let mut options = saved.options;
    options.normalize();
    Restored {
        name: saved.name,
        options,
        target_options: saved.target_options,
        writers: saved.active_targets,
        readers: saved.active_readers,
        pause,
    }
}
