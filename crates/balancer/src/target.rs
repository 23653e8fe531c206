//! Target addresses, target states and the [`Target`] a pool balances over (§4.1, §4.3).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;

use crate::error::Error;
use crate::inflight::InFlight;

/// The port used when a target is given without one.
pub const DEFAULT_PORT: u16 = 80;

/// A validated target address: `host[:port]`, kept exactly as given.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TargetAddr {
    raw: Box<str>,
    host_len: usize,
    port: Option<u16>,
    authority: Authority,
}

impl TargetAddr {
    /// Parses a target the way upstream's `^(\w[-_.\w+]+)(:\d+)?$` does: a host of at least
    /// two characters from ASCII letters, digits, `_`, `-`, `.`, `+` (not starting with `-`,
    /// `.` or `+`), optionally followed by `:` and ASCII digits. The port is not range-checked.
    pub fn parse(value: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidTarget {
            value: value.to_owned(),
        };
        // The host class has no `:`, so the host always ends at the first colon.
        let (host, port) = match value.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        };
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let host_bytes = host.as_bytes();
        let host_ok = host_bytes.len() >= 2
            && word(host_bytes[0])
            && host_bytes[1..]
                .iter()
                .all(|&b| word(b) || matches!(b, b'-' | b'.' | b'+'));
        let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !host_ok || !port_ok {
            return Err(invalid());
        }
        let authority = Authority::from_str(value).map_err(|_| invalid())?;
        let port = match port {
            // Out of range (e.g. `web:99999`) is accepted like upstream does; it just never
            // connects.
            Some(p) => p.parse::<u16>().ok(),
            None => Some(DEFAULT_PORT),
        };
        Ok(Self {
            raw: value.into(),
            host_len: host.len(),
            port,
            authority,
        })
    }

    /// The address exactly as given (`web-1:3000`, `localhost`).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The host part, without the port.
    pub fn host(&self) -> &str {
        &self.raw[..self.host_len]
    }

    /// The port to connect to: the given one, or 80 when none was given. `None` when the given
    /// port does not fit in 16 bits (such a target can never be reached).
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The port exactly as written after the colon, if any.
    pub fn port_str(&self) -> Option<&str> {
        self.raw.get(self.host_len + 1..)
    }

    /// The address as a URI authority, ready for building upstream request URIs.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

impl FromStr for TargetAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TargetAddr").field(&&*self.raw).finish()
    }
}

/// The health state of a target (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TargetState {
    /// Initial state: no health check has passed yet.
    Adding = 0,
    /// The last health check passed (or the target was restored from saved state).
    Healthy = 1,
    /// A health check failed after the target had been healthy.
    Unhealthy = 2,
    /// The target is being drained; new claims are refused.
    Draining = 3,
}

impl TargetState {
    /// The lowercase name used in logs and `list` (`adding`, `healthy`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Adding => "adding",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Draining => "draining",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Healthy,
            2 => Self::Unhealthy,
            3 => Self::Draining,
            _ => Self::Adding,
        }
    }
}

impl fmt::Display for TargetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One backend of a pool: its address, its health state and its in-flight requests.
#[derive(Debug)]
pub struct Target {
    addr: TargetAddr,
    reader: bool,
    state: AtomicU8,
    inflight: Arc<InFlight>,
    /// Built once so a request does not re-validate the address into a header value.
    forward: crate::ForwardTarget,
}

impl Target {
    /// Creates a target in the `adding` state; `reader` marks a `--read-target`.
    pub fn new(addr: TargetAddr, reader: bool) -> Self {
        Self {
            forward: crate::ForwardTarget::new(addr.authority().clone()),
            addr,
            reader,
            state: AtomicU8::new(TargetState::Adding as u8),
            inflight: InFlight::new(),
        }
    }

    /// The target's address.
    pub fn addr(&self) -> &TargetAddr {
        &self.addr
    }

    /// Where requests for this target are forwarded, with its `X-Kamal-Target` label.
    pub fn forward_target(&self) -> &crate::ForwardTarget {
        &self.forward
    }

    /// Whether this is a read target (`--read-target`).
    pub fn is_reader(&self) -> bool {
        self.reader
    }

    /// The current state.
    pub fn state(&self) -> TargetState {
        TargetState::from_u8(self.state.load(Ordering::SeqCst))
    }

    /// The in-flight tracker of this target.
    pub fn inflight(&self) -> &Arc<InFlight> {
        &self.inflight
    }

    /// Applies a health-check result (§4.3): success → `healthy` from any state; failure turns
    /// `healthy` into `unhealthy` and leaves `adding`/`draining` alone. Returns `(was, now)` if
    /// the state changed.
    pub(crate) fn record_check(&self, success: bool) -> Option<(TargetState, TargetState)> {
        let mut current = self.state.load(Ordering::SeqCst);
        loop {
            let was = TargetState::from_u8(current);
            let now = match (success, was) {
                (true, _) => TargetState::Healthy,
                (false, TargetState::Healthy) => TargetState::Unhealthy,
                (false, other) => other,
            };
            if now == was {
                return None;
            }
            match self.state.compare_exchange(
                current,
                now as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some((was, now)),
                Err(actual) => current = actual,
            }
        }
    }

    /// Sets the state and returns the previous one.
    pub(crate) fn swap_state(&self, state: TargetState) -> TargetState {
        TargetState::from_u8(self.state.swap(state as u8, Ordering::SeqCst))
    }

    /// Drains this target (§4.8): marks it draining, waits for (then cancels) its in-flight
    /// requests, and restores the previous state. A target already draining returns at once.
    pub(crate) async fn drain(&self, timeout: Duration) {
        let previous = self.swap_state(TargetState::Draining);
        if previous == TargetState::Draining {
            return;
        }
        self.inflight.drain(timeout).await;
        self.swap_state(previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_upstream_forms() {
        let cases: &[(&str, &str, Option<u16>)] = &[
            ("web-1:3000", "web-1", Some(3000)),
            ("172.1.0.2:80", "172.1.0.2", Some(80)),
            ("localhost", "localhost", Some(80)),
            ("app_web", "app_web", Some(80)),
            ("_x", "_x", Some(80)),
            ("9a+b.c_d-e:0", "9a+b.c_d-e", Some(0)),
            ("ab:007", "ab", Some(7)),
            ("web:99999", "web", None),
        ];
        for &(input, host, port) in cases {
            let addr = TargetAddr::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(addr.as_str(), input);
            assert_eq!(addr.to_string(), input);
            assert_eq!(addr.host(), host, "{input}");
            assert_eq!(addr.port(), port, "{input}");
            assert_eq!(addr.authority().as_str(), input);
        }
    }

    #[test]
    fn rejects_everything_else() {
        let cases = [
            "",
            "a",
            "a:80",
            "http://x:80",
            "[::1]:3000",
            "-web",
            ".web",
            "+web",
            "web:",
            "web:8o",
            "web:80:81",
            "web/x",
            "we b",
            "wéb",
            "web:80\n",
            ":80",
            "web:-1",
        ];
        for input in cases {
            assert!(TargetAddr::parse(input).is_err(), "{input:?} accepted");
        }
    }

    #[test]
    fn error_message_keeps_upstream_spacing() {
        let err = TargetAddr::parse("http://x:80").unwrap_err();
        assert_eq!(err.to_string(), "http://x:80 :invalid host pattern");
        let err = TargetAddr::parse("").unwrap_err();
        assert_eq!(err.to_string(), " :invalid host pattern");
    }

    #[test]
    fn port_str_is_as_written() {
        assert_eq!(TargetAddr::parse("ab:007").unwrap().port_str(), Some("007"));
        assert_eq!(TargetAddr::parse("ab").unwrap().port_str(), None);
    }

    #[test]
    fn check_results_follow_the_state_machine() {
        let t = Target::new(TargetAddr::parse("web:1").unwrap(), false);
        assert_eq!(t.state(), TargetState::Adding);
        // A target that never passed stays adding.
        assert_eq!(t.record_check(false), None);
        assert_eq!(
            t.record_check(true),
            Some((TargetState::Adding, TargetState::Healthy))
        );
        assert_eq!(t.record_check(true), None);
        assert_eq!(
            t.record_check(false),
            Some((TargetState::Healthy, TargetState::Unhealthy))
        );
        assert_eq!(t.record_check(false), None);
        t.swap_state(TargetState::Draining);
        assert_eq!(t.record_check(false), None);
        assert_eq!(
            t.record_check(true),
            Some((TargetState::Draining, TargetState::Healthy))
        );
    }

    #[test]
    fn state_names() {
        let names: Vec<_> = [
            TargetState::Adding,
            TargetState::Healthy,
            TargetState::Unhealthy,
            TargetState::Draining,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(names, ["adding", "healthy", "unhealthy", "draining"]);
    }

    #[tokio::test]
    async fn drain_restores_previous_state() {
        let t = Target::new(TargetAddr::parse("web:1").unwrap(), false);
        t.record_check(true);
        t.drain(Duration::from_millis(10)).await;
        assert_eq!(t.state(), TargetState::Healthy);
    }
}
