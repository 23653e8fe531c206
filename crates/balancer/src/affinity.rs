//! Writer affinity (spec §4.9): after a write, the client's reads go to the writers for a
//! while, so it reads its own writes even when read targets lag behind.
//!
//! A write response gets a `kamal-writer=<expiry ms>` cookie unless the application opts out
//! with `X-Writer-Affinity: false`; a read carrying an unexpired cookie is sent to a writer.
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use http::HeaderMap;
//! use kamal_balancer::affinity;
//!
//! let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
//! let mut response = HeaderMap::new();
//! affinity::apply_to_response(&mut response, Duration::from_secs(1), now);
//! assert_eq!(
//!     response["set-cookie"],
//!     "kamal-writer=1700000001000; Path=/; Expires=Tue, 14 Nov 2023 22:13:22 GMT; HttpOnly"
//! );
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::SET_COOKIE;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::rollout::cookie_value;

/// Name of the cookie that pins a client's reads to the writers.
pub const WRITER_COOKIE: &str = "kamal-writer";

/// Response header an application sets to `false` to skip the affinity cookie.
pub const X_WRITER_AFFINITY: HeaderName = HeaderName::from_static("x-writer-affinity");

/// Whether writer affinity applies to a pool: it needs read targets and a positive timeout.
pub fn is_active(has_readers: bool, timeout: Duration) -> bool {
    has_readers && !timeout.is_zero()
}

/// Whether the request carries a writer cookie that has not expired at `now`: a signed
/// decimal of Unix milliseconds greater than now.
pub fn has_valid_cookie(headers: &HeaderMap, now: SystemTime) -> bool {
    cookie_value(headers, WRITER_COOKIE)
        .and_then(|value| value.parse::<i64>().ok())
        .is_some_and(|expires| unix_millis(now) < expires)
}

/// Post-processes the response to a write (non-read) request when affinity is active: adds the
/// writer cookie unless the application answered `X-Writer-Affinity: false`, and removes that
/// header either way.
pub fn apply_to_response(headers: &mut HeaderMap, timeout: Duration, now: SystemTime) {
    let opted_out = headers
        .get(X_WRITER_AFFINITY)
        .is_some_and(|v| v.as_bytes() == b"false");
    headers.remove(X_WRITER_AFFINITY);
    if !opted_out {
        headers.append(SET_COOKIE, writer_cookie(timeout, now));
    }
}

/// `kamal-writer=<E>; Path=/; Expires=<E + 1 s>; HttpOnly` with `E` = now + timeout in Unix ms.
pub fn writer_cookie(timeout: Duration, now: SystemTime) -> HeaderValue {
    let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    let expires = unix_millis(now).saturating_add(timeout_ms);
    // The cookie outlives the affinity window by a second so the browser still sends it.
    let expiry_date = u64::try_from(expires)
        .ok()
        .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms) + Duration::from_secs(1)))
        .unwrap_or(UNIX_EPOCH);
    let text = format!(
        "{WRITER_COOKIE}={expires}; Path=/; Expires={}; HttpOnly",
        httpdate::fmt_http_date(expiry_date)
    );
    // Digits, ASCII punctuation and an HTTP date: always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("kamal-writer=0"))
}

fn unix_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::COOKIE;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn active_only_with_readers_and_a_timeout() {
        assert!(is_active(true, Duration::from_secs(1)));
        assert!(!is_active(false, Duration::from_secs(1)));
        assert!(!is_active(true, Duration::ZERO));
    }

    #[test]
    fn cookie_is_valid_until_its_expiry() {
        let headers = cookie("a=b; kamal-writer=5000");
        assert!(has_valid_cookie(&headers, at(4999)));
        assert!(!has_valid_cookie(&headers, at(5000)));
        assert!(!has_valid_cookie(&cookie("kamal-writer=soon"), at(0)));
        assert!(has_valid_cookie(&cookie("kamal-writer=+7"), at(6)));
        assert!(!has_valid_cookie(&cookie("kamal-writer=-7"), at(0)));
        assert!(!has_valid_cookie(&HeaderMap::new(), at(0)));
    }

    #[test]
    fn write_response_gets_the_cookie_and_loses_the_header() {
        let mut headers = HeaderMap::new();
        headers.insert(X_WRITER_AFFINITY, HeaderValue::from_static("true"));
        headers.append(SET_COOKIE, HeaderValue::from_static("app=1"));
        apply_to_response(&mut headers, Duration::from_millis(1500), at(1_000_000));
        let cookies: Vec<_> = headers.get_all(SET_COOKIE).iter().collect();
        assert_eq!(cookies.len(), 2);
        assert_eq!(cookies[0], "app=1");
        assert_eq!(
            cookies[1],
            "kamal-writer=1001500; Path=/; Expires=Thu, 01 Jan 1970 00:16:42 GMT; HttpOnly"
        );
        assert!(!headers.contains_key(X_WRITER_AFFINITY));
    }

    #[test]
    fn application_can_opt_out() {
        let mut headers = HeaderMap::new();
        headers.insert(X_WRITER_AFFINITY, HeaderValue::from_static("false"));
        apply_to_response(&mut headers, Duration::from_secs(1), at(0));
        assert!(headers.is_empty());
        // Only the exact value `false` opts out.
        headers.insert(X_WRITER_AFFINITY, HeaderValue::from_static("FALSE"));
        apply_to_response(&mut headers, Duration::from_secs(1), at(0));
        assert!(headers.contains_key(SET_COOKIE));
        assert!(!headers.contains_key(X_WRITER_AFFINITY));
    }
}
