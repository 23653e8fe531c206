//! The state file against hand-written fixtures in upstream's format (Appendix A), broken
//! elements, and crash safety of saves.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kamal_control::state::{
    self, LoadedState, SavedService, PAUSE_STATE_PAUSED, PAUSE_STATE_STOPPED,
};
use kamal_control::GoDuration;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

fn loaded(path: &Path) -> (Vec<SavedService>, Vec<state::SkippedService>) {
    match state::load(path).expect("state loads") {
        LoadedState::Loaded { services, skipped } => (services, skipped),
        LoadedState::Missing => panic!("{} is missing", path.display()),
    }
}

#[test]
fn upstream_file_is_read_field_by_field() {
    let (services, skipped) = loaded(&fixture("upstream-v0.9.state"));
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(services.len(), 3);

    let rw = &services[0];
    assert_eq!(rw.name, "rw");
    let o = &rw.options;
    assert_eq!(o.hosts, vec!["rw.test", "www.rw.test"]);
    assert_eq!(o.path_prefixes, vec!["/"]);
    assert!(o.tls_enabled);
    assert!(o.tls_redirect);
    assert_eq!(o.canonical_host, "rw.test");
    assert_eq!(
        o.acme_directory,
        "https://acme-staging-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(
        o.acme_cache_path,
        "/home/kamal-proxy/.config/kamal-proxy/certs"
    );
    assert_eq!(
        o.error_page_path,
        "/home/kamal-proxy/.apps-config/rw/error_pages/abc123"
    );
    assert!(o.strip_prefix);
    assert_eq!(o.writer_affinity_timeout, GoDuration::from_secs(1));
    assert!(o.read_targets_accept_websockets);
    assert_eq!(o.exclude_metrics_paths, vec!["/up"]);
    assert_eq!(o.client_ip_header, "CF-Connecting-IP");
    let t = &rw.target_options;
    assert_eq!(t.health_check_config.path, "/health");
    assert_eq!(t.health_check_config.port, 8080);
    assert_eq!(t.health_check_config.interval, GoDuration::from_secs(3));
    assert_eq!(t.health_check_config.timeout, GoDuration::from_secs(5));
    assert_eq!(t.health_check_config.host, "internal.rw.test");
    assert_eq!(t.response_timeout, GoDuration::from_secs(30));
    assert!(t.buffer_requests && t.buffer_responses);
    assert_eq!(t.max_memory_buffer_size, 1_048_576);
    assert_eq!(t.max_request_body_size, 1_073_741_824);
    assert_eq!(t.max_response_body_size, 0);
    assert_eq!(t.log_request_headers, vec!["Cache-Control", "User-Agent"]);
    assert!(t.log_response_headers.is_empty());
    assert!(!t.forward_headers);
    assert!(!t.scope_cookie_paths);
    assert_eq!(
        rw.active_targets,
        vec!["127.0.0.1:28001", "127.0.0.1:28003"]
    );
    assert_eq!(rw.active_readers, vec!["127.0.0.1:28002"]);
    assert_eq!(rw.rollout_targets, Some(vec!["127.0.0.1:29001".to_owned()]));
    assert_eq!(rw.rollout_readers, Some(vec![]));
    let pause = rw.pause_controller.as_ref().expect("pause controller");
    assert_eq!(pause.state, PAUSE_STATE_STOPPED);
    assert_eq!(pause.stop_message, "Back <soon> & \"later\" it+1");
    assert_eq!(pause.fail_after, GoDuration::from_secs(30));
    let rollout = rw.rollout_controller.as_ref().expect("rollout controller");
    assert_eq!(rollout.percentage, 50);
    assert_eq!(rollout.percentage_split_point, 2147483647.5);
    assert_eq!(rollout.allowlist, vec!["vip"]);

    let api = &services[1];
    assert_eq!(api.name, "api");
    assert_eq!(api.options.hosts, vec![""]);
    assert_eq!(api.options.path_prefixes, vec!["/api", "/v2"]);
    assert!(!api.options.strip_prefix);
    assert!(api.options.exclude_metrics_paths.is_empty());
    assert_eq!(
        api.target_options.response_timeout,
        GoDuration::from_secs(3)
    );
    assert!(api.target_options.scope_cookie_paths);
    assert_eq!(api.active_targets, vec!["api-web:3000"]);
    assert!(api.active_readers.is_empty());
    assert_eq!(api.rollout_targets, None);
    assert_eq!(api.rollout_readers, None);
    assert_eq!(api.pause_controller, None, "null means running");
    assert_eq!(api.rollout_controller, None);

    // The legacy element of Appendix A.
    let legacy = &services[2];
    assert_eq!(legacy.name, "my-app");
    assert_eq!(legacy.options.hosts, vec!["app.example.com"]);
    assert_eq!(legacy.options.path_prefixes, vec!["/"]);
    assert_eq!(legacy.active_targets, vec!["localhost:3000"]);
    assert_eq!(
        legacy.rollout_targets, None,
        "an empty legacy rollout target is no pool"
    );
    assert_eq!(
        legacy.target_options.response_timeout,
        GoDuration::from_millis(3000)
    );
    assert_eq!(legacy.target_options.health_check_config.port, 0);
    // Fields the old version did not write take zero values, as upstream reads them.
    assert!(!legacy.options.tls_redirect);
    assert_eq!(legacy.options.writer_affinity_timeout, GoDuration::ZERO);
    assert!(!legacy.target_options.scope_cookie_paths);
    let pause = legacy.pause_controller.as_ref().expect("pause controller");
    assert_eq!(pause.state, PAUSE_STATE_PAUSED);
    assert_eq!(pause.fail_after, GoDuration::from_secs(5));
}

#[test]
fn upstream_file_survives_a_round_trip() {
    let (services, _) = loaded(&fixture("upstream-v0.9.state"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kamal-proxy.state");
    state::save(&path, &services).unwrap();
    let (again, skipped) = loaded(&path);
    assert!(skipped.is_empty());
    assert_eq!(again, services);

    // The first two elements have no legacy fields, so our output equals upstream's bytes.
    let original: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(fixture("upstream-v0.9.state")).unwrap()).unwrap();
    let ours = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
    let ours_values: Vec<serde_json::Value> = serde_json::from_str(&ours).unwrap();
    assert_eq!(ours_values[0], original[0]);
    assert_eq!(ours_values[1], original[1]);
    let upstream_text = std::fs::read_to_string(fixture("upstream-v0.9.state")).unwrap();
    let first_element_end = upstream_text.find(r#"},{"name":"api""#).unwrap();
    assert_eq!(
        ours[..first_element_end],
        upstream_text[..first_element_end]
    );
    assert!(ours.ends_with("]\n") && !ours[..ours.len() - 1].contains('\n'));
}

#[test]
fn one_broken_element_does_not_lose_the_others() {
    let (services, skipped) = loaded(&fixture("one-broken-element.state"));
    let names: Vec<_> = services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["first", "third"]);
    assert_eq!(services[1].options.hosts, vec![""]);
    assert_eq!(services[1].options.path_prefixes, vec!["/"]);
    assert!(services[1].active_readers.is_empty());

    assert_eq!(skipped.len(), 2);
    assert_eq!(skipped[0].index, 1);
    assert_eq!(skipped[0].name.as_deref(), Some("broken"));
    assert!(!skipped[0].error.is_empty());
    assert_eq!(skipped[1].index, 3);
    assert_eq!(skipped[1].name, None);
}

#[test]
fn a_torn_temp_file_from_a_crash_never_reaches_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kamal-proxy.state");
    let (services, _) = loaded(&fixture("upstream-v0.9.state"));
    state::save(&path, &services).unwrap();
    let saved = std::fs::read(&path).unwrap();

    // A crash in the middle of the next save leaves half a temp file behind.
    let temp = dir.path().join(".kamal-proxy.state.tmp");
    std::fs::write(&temp, &saved[..saved.len() / 2]).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), saved, "state file untouched");
    assert_eq!(loaded(&path).0, services);

    // The next save replaces the leftover and leaves no temp file.
    state::save(&path, &services[..1]).unwrap();
    assert_eq!(loaded(&path).0, services[..1].to_vec());
    assert!(!temp.exists());
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
}

#[test]
fn readers_never_see_a_torn_file_while_saves_race() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kamal-proxy.state");
    let (services, _) = loaded(&fixture("upstream-v0.9.state"));
    state::save(&path, &services).unwrap();

    let variants: Vec<Vec<SavedService>> = (1..=services.len())
        .map(|n| services[..n].to_vec())
        .collect();
    std::thread::scope(|scope| {
        for variant in &variants {
            let path = &path;
            scope.spawn(move || {
                for _ in 0..25 {
                    state::save(path, variant).unwrap();
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..200 {
            let (seen, skipped) = loaded(&path);
            assert!(skipped.is_empty());
            assert!(variants.contains(&seen), "a torn or unknown state was read");
            if Instant::now() > deadline {
                break;
            }
        }
    });
}

#[test]
fn skipped_elements_describe_themselves() {
    let (_, skipped) = loaded(&fixture("one-broken-element.state"));
    assert!(skipped[0].to_string().starts_with("service #1 (broken): "));
    assert!(skipped[1].to_string().starts_with("service #3: "));
}
