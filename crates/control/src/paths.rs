//! Where things live (§1.3, §1.4): the control socket, the data directory, the state file and
//! the default ACME cache. The environment is passed in so tests never touch the process's.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

/// Socket file name inside the runtime directory.
pub const SOCKET_FILE_NAME: &str = "kamal-proxy.sock";
/// State file name inside the data directory.
pub const STATE_FILE_NAME: &str = "kamal-proxy.state";
/// Environment variable naming the socket path verbatim.
pub const SOCKET_ENV: &str = "KAMAL_PROXY_SOCKET";

/// A source of environment variables.
pub trait Env {
    /// The variable's value, `None` when unset (or not valid UTF-8).
    fn var(&self, name: &str) -> Option<String>;

    /// The value when set and non-empty.
    fn non_empty(&self, name: &str) -> Option<String> {
        self.var(name).filter(|v| !v.is_empty())
    }
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Go's `os.TempDir()`: `$TMPDIR` if non-empty, else `/tmp`.
pub fn temp_dir(env: &impl Env) -> PathBuf {
    PathBuf::from(env.non_empty("TMPDIR").unwrap_or_else(|| "/tmp".to_owned()))
}

/// The control socket path: `$KAMAL_PROXY_SOCKET` verbatim, else
/// `$XDG_RUNTIME_DIR/kamal-proxy.sock`, else `<temp dir>/kamal-proxy.sock` (lexically cleaned).
pub fn socket_path(env: &impl Env) -> PathBuf {
    if let Some(path) = env.non_empty(SOCKET_ENV) {
        return PathBuf::from(path);
    }
    let dir = env
        .non_empty("XDG_RUNTIME_DIR")
        .unwrap_or_else(|| temp_dir(env).to_string_lossy().into_owned());
    PathBuf::from(join_clean(&[&dir, SOCKET_FILE_NAME]))
}

/// The data directory `<home>/.config/kamal-proxy`, created (mode 0700, with parents) on every
/// call as upstream does. `$HOME` unset or empty uses the temp dir as home; if creation fails
/// the temp dir itself is returned.
pub fn data_dir(env: &impl Env) -> PathBuf {
    let home = env
        .non_empty("HOME")
        .unwrap_or_else(|| temp_dir(env).to_string_lossy().into_owned());
    let dir = PathBuf::from(join_clean(&[&home, ".config", "kamal-proxy"]));
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
    {
        Ok(()) => dir,
        Err(_) => temp_dir(env),
    }
}

/// `<data dir>/kamal-proxy.state`.
pub fn state_file_path(env: &impl Env) -> PathBuf {
    data_dir(env).join(STATE_FILE_NAME)
}

/// The default `--tls-acme-cache-path`: `<data dir>/certs`.
pub fn default_acme_cache_path(env: &impl Env) -> PathBuf {
    data_dir(env).join("certs")
}

/// Joins path elements and cleans the result lexically, like Go's `path.Join`.
pub fn join_clean(parts: &[&str]) -> String {
    let joined = parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    if joined.is_empty() {
        return String::new();
    }
    clean(&joined)
}

/// Go's `path.Clean`: collapse repeated slashes, drop `.` elements, resolve `..` lexically,
/// remove a trailing slash; the empty path becomes `.`.
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let body = parts.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_owned(),
        (false, false) => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    fn env(pairs: &[(&str, &str)]) -> impl Env {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    #[test]
    fn socket_path_precedence() {
        assert_eq!(
            socket_path(&env(&[])),
            PathBuf::from("/tmp/kamal-proxy.sock")
        );
        assert_eq!(
            socket_path(&env(&[("TMPDIR", "/var/tmp//")])),
            PathBuf::from("/var/tmp/kamal-proxy.sock")
        );
        assert_eq!(
            socket_path(&env(&[("XDG_RUNTIME_DIR", "/x/xdg/"), ("TMPDIR", "/t")])),
            PathBuf::from("/x/xdg/kamal-proxy.sock")
        );
        assert_eq!(
            socket_path(&env(&[("XDG_RUNTIME_DIR", ""), ("TMPDIR", "/t")])),
            PathBuf::from("/t/kamal-proxy.sock")
        );
        assert_eq!(
            socket_path(&env(&[
                ("KAMAL_PROXY_SOCKET", "/run//my.sock"),
                ("XDG_RUNTIME_DIR", "/x")
            ])),
            PathBuf::from("/run//my.sock"),
            "used verbatim"
        );
        assert_eq!(
            socket_path(&env(&[
                ("KAMAL_PROXY_SOCKET", ""),
                ("XDG_RUNTIME_DIR", "/x")
            ])),
            PathBuf::from("/x/kamal-proxy.sock")
        );
    }

    #[test]
    fn clean_matches_go() {
        for (input, want) in [
            ("", "."),
            ("/", "/"),
            ("//a//b/", "/a/b"),
            ("a/./b/../c", "a/c"),
            ("/../a", "/a"),
            ("../../a", "../../a"),
            ("a/..", "."),
            ("./", "."),
        ] {
            assert_eq!(clean(input), want, "{input:?}");
        }
        assert_eq!(
            join_clean(&["/x/xdg/", "kamal-proxy.sock"]),
            "/x/xdg/kamal-proxy.sock"
        );
        assert_eq!(join_clean(&["", "a"]), "a");
    }

    #[test]
    fn data_dir_is_created_0700() {
        let home = tempfile::tempdir().unwrap();
        let home_str = home.path().to_str().unwrap().to_owned();
        let e = env(&[("HOME", &home_str)]);
        let dir = data_dir(&e);
        assert_eq!(dir, home.path().join(".config").join("kamal-proxy"));
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(state_file_path(&e), dir.join("kamal-proxy.state"));
        assert_eq!(default_acme_cache_path(&e), dir.join("certs"));
    }

    #[test]
    fn data_dir_without_home_uses_temp_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let tmp_str = tmp.path().to_str().unwrap().to_owned();
        let dir = data_dir(&env(&[("HOME", ""), ("TMPDIR", &tmp_str)]));
        assert_eq!(dir, tmp.path().join(".config").join("kamal-proxy"));
        assert!(dir.is_dir());
    }

    #[test]
    fn data_dir_falls_back_to_temp_dir_when_uncreatable() {
        let tmp = tempfile::tempdir().unwrap();
        // A file where a directory is needed makes creation fail.
        let blocker = tmp.path().join("home-is-a-file");
        std::fs::write(&blocker, b"").unwrap();
        let tmp_str = tmp.path().to_str().unwrap().to_owned();
        let blocker_str = blocker.to_str().unwrap().to_owned();
        let dir = data_dir(&env(&[("HOME", &blocker_str), ("TMPDIR", &tmp_str)]));
        assert_eq!(dir, tmp.path());
    }
}
