//! The rollout split (spec §6.1): which requests go to a service's rollout pool.
//!
//! The split key is the request's `kamal-rollout` cookie. A value on the allowlist always goes
//! to the rollout pool; any other value goes there when its 32-bit FNV-1a hash is at or below
//! the split point `4294967295 * (percent / 100)`, exactly as upstream computes it, so a user
//! lands in the same group whichever binary serves them.
//!
//! ```
//! use kamal_balancer::RolloutSplit;
//!
//! let split = RolloutSplit::new(50, vec!["vip".to_owned()]);
//! assert!(split.uses_rollout("vip")); // allowlisted
//! assert!(!split.uses_rollout("none")); // hash 2913447899 > 2147483647.5
//! assert!(split.uses_rollout("00001")); // hash 1231224044
//! ```

use http::header::COOKIE;
use http::HeaderMap;

/// Name of the request cookie that carries the split key.
pub const ROLLOUT_COOKIE: &str = "kamal-rollout";

/// The largest 32-bit hash, as a double (upstream's `float64(uint32(0xFFFFFFFF))`).
const MAX_HASH: f64 = 4294967295.0;

/// A percentage split plus an allowlist, as set by `rollout set`.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSplit {
    percentage: i64,
    split_point: f64,
    allowlist: Vec<String>,
}

impl RolloutSplit {
    /// The split `rollout set --percent <percentage> --list <allowlist>` creates. No range
    /// check, as upstream: negative sends nothing, above 100 sends everything.
    pub fn new(percentage: i64, allowlist: Vec<String>) -> Self {
        Self {
            percentage,
            split_point: MAX_HASH * (percentage as f64 / 100.0),
            allowlist,
        }
    }

    /// A split read back from the state file: the stored split point is used as is, never
    /// recomputed from the percentage.
    pub fn restored(percentage: i64, split_point: f64, allowlist: Vec<String>) -> Self {
        Self {
            percentage,
            split_point,
            allowlist,
        }
    }

    /// The configured percentage.
    pub fn percentage(&self) -> i64 {
        self.percentage
    }

    /// The hash value at or below which a key goes to the rollout pool.
    pub fn split_point(&self) -> f64 {
        self.split_point
    }

    /// Keys that always go to the rollout pool.
    pub fn allowlist(&self) -> &[String] {
        &self.allowlist
    }

    /// Whether a request with these headers goes to the rollout pool: it needs a non-empty
    /// `kamal-rollout` cookie that is allowlisted or hashes into the split.
    pub fn uses_rollout_for(&self, headers: &HeaderMap) -> bool {
        match cookie_value(headers, ROLLOUT_COOKIE) {
            Some(value) if !value.is_empty() => self.uses_rollout(value),
            _ => false,
        }
    }

    /// Whether split key `value` goes to the rollout pool.
    pub fn uses_rollout(&self, value: &str) -> bool {
        self.allowlist.iter().any(|allowed| allowed == value)
            || f64::from(fnv1a_32(value.as_bytes())) <= self.split_point
    }
}

/// The 32-bit FNV-1a hash (offset basis 2166136261, prime 16777619).
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash: u32, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// The value of the first valid request cookie called `name`, across every `Cookie` header,
/// as Go's `Request.Cookie` reads it: surrounding double quotes are removed, and a pair whose
/// value holds a byte outside the cookie-value set is skipped.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|line| line.to_str().ok())
        .flat_map(|line| line.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            if key != name {
                return None;
            }
            let value = unquote(value);
            value.bytes().all(is_cookie_value_byte).then_some(value)
        })
}

fn unquote(value: &str) -> &str {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner,
        None => value,
    }
}

/// Bytes Go accepts in a cookie value.
fn is_cookie_value_byte(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b'"' && b != b';' && b != b'\\'
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cookies(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(COOKIE, HeaderValue::from_str(line).unwrap());
        }
        headers
    }

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a_32(b""), 2166136261);
        assert_eq!(fnv1a_32(b"a"), 0xe40c292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9cf968);
        // The values upstream was verified with (spec §6.1).
        assert_eq!(fnv1a_32(b"none"), 2913447899);
        assert_eq!(fnv1a_32(b"00001"), 1231224044);
    }

    #[test]
    fn split_point_uses_upstream_arithmetic() {
        assert_eq!(RolloutSplit::new(50, vec![]).split_point(), 2147483647.5);
        assert_eq!(RolloutSplit::new(0, vec![]).split_point(), 0.0);
        assert_eq!(RolloutSplit::new(100, vec![]).split_point(), 4294967295.0);
        assert_eq!(
            RolloutSplit::new(30, vec![]).split_point(),
            4294967295.0 * (30.0 / 100.0)
        );
    }

    #[test]
    fn percentage_edges() {
        let values = ["a", "none", "00001", "user-42", "zzz"];
        let all = RolloutSplit::new(100, vec![]);
        let over = RolloutSplit::new(250, vec![]);
        let none = RolloutSplit::new(-5, vec![]);
        let zero = RolloutSplit::new(0, vec![]);
        for v in values {
            assert!(all.uses_rollout(v) && over.uses_rollout(v), "{v}");
            assert!(!none.uses_rollout(v) && !zero.uses_rollout(v), "{v}");
        }
    }

    #[test]
    fn allowlist_overrides_the_percentage() {
        let split = RolloutSplit::new(0, vec!["vip".into(), "staff".into()]);
        assert!(split.uses_rollout("vip"));
        assert!(split.uses_rollout("staff"));
        assert!(!split.uses_rollout("VIP"), "exact, case-sensitive");
        assert_eq!(split.allowlist(), ["vip", "staff"]);
    }

    #[test]
    fn restored_split_point_is_used_as_stored() {
        // A stored point that does not match the percentage still decides.
        let split = RolloutSplit::restored(0, 4294967295.0, vec![]);
        assert_eq!(split.percentage(), 0);
        assert!(split.uses_rollout("none"));
    }

    #[test]
    fn thirty_percent_over_many_keys() {
        let split = RolloutSplit::new(30, vec![]);
        let hits = (0..10_000)
            .filter(|i| split.uses_rollout(&format!("user-{i}")))
            .count();
        assert!((2_700..=3_300).contains(&hits), "{hits}");
    }

    #[test]
    fn reads_the_first_valid_cookie() {
        let split = RolloutSplit::new(50, vec!["vip".into()]);
        assert!(split.uses_rollout_for(&cookies(&["a=1; kamal-rollout=vip"])));
        assert!(!split.uses_rollout_for(&cookies(&["kamal-rollout=none"])));
        assert!(split.uses_rollout_for(&cookies(&["x=y", "kamal-rollout=\"vip\""])));
        // The first cookie of that name wins.
        assert!(!split.uses_rollout_for(&cookies(&["kamal-rollout=none; kamal-rollout=vip"])));
        // Empty or missing: active pool, even with everything sent to the rollout.
        let all = RolloutSplit::new(100, vec![]);
        assert!(!all.uses_rollout_for(&cookies(&["kamal-rollout="])));
        assert!(!all.uses_rollout_for(&HeaderMap::new()));
        assert!(!all.uses_rollout_for(&cookies(&["other-rollout=vip"])));
        // A value with a forbidden byte is skipped, the next one is used.
        assert_eq!(
            cookie_value(
                &cookies(&["kamal-rollout=a\\b; kamal-rollout=ok"]),
                ROLLOUT_COOKIE
            ),
            Some("ok")
        );
    }
}
