//! Request paths: percent-decoding, prefix matching on segment boundaries, strip-prefix.

use std::borrow::Cow;

use percent_encoding::{percent_decode_str, percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::RouteError;

/// Bytes left alone when a stripped path is re-encoded. This mirrors Go's path escaping
/// (`url.URL.EscapedPath` with no raw path), which is what upstream sends after stripping:
/// unreserved characters plus `$ & + , / : ; = @`. Everything else, including `! ' ( ) *`,
/// `%` and every non-ASCII byte, is written as `%XX` with upper-case hex digits.
const GO_PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b',')
    .remove(b'/')
    .remove(b':')
    .remove(b';')
    .remove(b'=')
    .remove(b'@');

/// The percent-decoded bytes of a raw path; borrowed when it holds no valid escape.
///
/// Invalid escapes (`%zz`) are kept literally; [`validate_escapes`] reports them.
pub(crate) fn decode(raw_path: &str) -> Cow<'_, [u8]> {
    percent_decode_str(raw_path).into()
}

/// Whether a decoded request path matches a prefix already given its trailing slash.
///
/// Equivalent to upstream's `ensure_trailing_slash(path).starts_with(ensure_trailing_slash(prefix))`
/// without building either string: `/api` matches `/api`, `/api/`, `/api/x`, not `/apiary`.
pub(crate) fn matches_prefix(path: &[u8], prefix_with_slash: &[u8]) -> bool {
    if path.starts_with(prefix_with_slash) {
        return true;
    }
    // Otherwise only `path + "/" == prefix_with_slash` can still match.
    path.len() + 1 == prefix_with_slash.len()
        && path.last() != Some(&b'/')
        && prefix_with_slash.starts_with(path)
}

/// `prefix` with a trailing slash, the form [`matches_prefix`] compares against.
pub(crate) fn with_trailing_slash(prefix: &str) -> Box<str> {
    if prefix.ends_with('/') {
        prefix.into()
    } else {
        format!("{prefix}/").into_boxed_str()
    }
}

/// The decoded path with `prefix` removed once from the front (Go's `strings.TrimPrefix`).
fn trim_prefix<'p>(decoded: &'p [u8], prefix: &str) -> &'p [u8] {
    decoded.strip_prefix(prefix.as_bytes()).unwrap_or(decoded)
}

/// Whether the routed service strips `prefix` (upstream's "routing context").
fn strips(prefix: &str, strip: bool) -> bool {
    strip && prefix != "/"
}

/// The path (without query) to send upstream, per spec §3.5.
///
/// * `strip` off, or `prefix` is `/`: the raw path exactly as the client sent it (an empty path
///   becomes `/`), so its original percent-encoding is kept.
/// * otherwise: the decoded path with `prefix` removed once, an empty result becoming `/`,
///   re-encoded the way upstream (Go) encodes paths, so encoded slashes and needless escapes
///   are lost: `/api/a%2Fb/c%41` → `/a/b/cA`.
///
/// `raw_path` is the still percent-encoded request path and `prefix` the matched one
/// ([`RouteMatch::prefix`](crate::RouteMatch::prefix)). The query string is the caller's to
/// append unchanged. Borrows from `raw_path` whenever the result is a slice of it.
///
/// ```
/// use kamal_router::upstream_path;
/// assert_eq!(upstream_path("/api/users/1", "/api", true), "/users/1");
/// assert_eq!(upstream_path("/api", "/api", true), "/");
/// assert_eq!(upstream_path("/api/a%2Fb/c%41", "/api", true), "/a/b/cA");
/// assert_eq!(upstream_path("/api/a%2Fb/c%41", "/api", false), "/api/a%2Fb/c%41");
/// ```
pub fn upstream_path<'a>(raw_path: &'a str, prefix: &str, strip: bool) -> Cow<'a, str> {
    if !strips(prefix, strip) {
        return Cow::Borrowed(if raw_path.is_empty() { "/" } else { raw_path });
    }
    match decode(raw_path) {
        Cow::Borrowed(decoded) => match trim_prefix(decoded, prefix) {
            [] => Cow::Borrowed("/"),
            rest => percent_encode(rest, GO_PATH).into(),
        },
        Cow::Owned(decoded) => match trim_prefix(&decoded, prefix) {
            [] => Cow::Borrowed("/"),
            rest => Cow::Owned(percent_encode(rest, GO_PATH).to_string()),
        },
    }
}

/// The "routed path" of spec §3.5: the decoded path, minus `prefix` when the service strips
/// it (`strip` on and `prefix` not `/`), an empty result becoming `/`.
///
/// Used for the paused/stopped health-check bypass, `--exclude-metrics-path` and cookie path
/// scoping. Decoded bytes that are not UTF-8 become U+FFFD.
///
/// ```
/// use kamal_router::routed_path;
/// assert_eq!(routed_path("/api/up", "/api", true), "/up");
/// assert_eq!(routed_path("/api/up", "/api", false), "/api/up");
/// assert_eq!(routed_path("/api/c%41", "/api", true), "/cA");
/// ```
pub fn routed_path<'a>(raw_path: &'a str, prefix: &str, strip: bool) -> Cow<'a, str> {
    let strip = strips(prefix, strip);
    let cut = |decoded: &[u8]| -> usize {
        if strip {
            decoded.len() - trim_prefix(decoded, prefix).len()
        } else {
            0
        }
    };
    match decode(raw_path) {
        Cow::Borrowed(decoded) => match &decoded[cut(decoded)..] {
            [] => Cow::Borrowed("/"),
            rest => String::from_utf8_lossy(rest),
        },
        Cow::Owned(mut decoded) => {
            decoded.drain(..cut(&decoded));
            if decoded.is_empty() {
                return Cow::Borrowed("/");
            }
            match String::from_utf8(decoded) {
                Ok(path) => Cow::Owned(path),
                Err(err) => Cow::Owned(String::from_utf8_lossy(err.as_bytes()).into_owned()),
            }
        }
    }
}

/// Checks that every `%` in a raw path starts a valid `%XX` escape.
///
/// Upstream (Go's HTTP server) answers such requests with 400 before routing; this crate's
/// lookup itself is lenient and matches an invalid escape literally.
///
/// ```
/// use kamal_router::validate_escapes;
/// assert!(validate_escapes("/a%2Fb").is_ok());
/// assert!(validate_escapes("/a%zz").is_err());
/// ```
pub fn validate_escapes(raw_path: &str) -> Result<(), RouteError> {
    let bytes = raw_path.as_bytes();
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|&b| b == b'%') {
        let at = i + offset;
        let valid = bytes.len() >= at + 3
            && bytes[at + 1].is_ascii_hexdigit()
            && bytes[at + 2].is_ascii_hexdigit();
        if !valid {
            let end = (at + 3).min(bytes.len());
            let escape = String::from_utf8_lossy(&bytes[at..end]).into_owned();
            return Err(RouteError::InvalidEscape { escape });
        }
        i = at + 3;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(path: &str, prefix: &str) -> bool {
        matches_prefix(path.as_bytes(), with_trailing_slash(prefix).as_bytes())
    }

    #[test]
    fn prefix_matching_respects_segment_boundaries() {
        for path in [
            "/api",
            "/api/",
            "/api/x",
            "/api/x/y",
            "/api//x",
            "/api/../x",
        ] {
            assert!(matches(path, "/api"), "{path} should match /api");
        }
        for path in [
            "/apiary",
            "/api.json",
            "/ap",
            "/",
            "//api",
            "/API",
            "/x/api",
        ] {
            assert!(!matches(path, "/api"), "{path} should not match /api");
        }
        for path in ["/", "/x", "//api", "/api"] {
            assert!(matches(path, "/"), "{path} should match /");
        }
        assert!(matches("/a/b", "/a/b"));
        assert!(matches("/a/b/c", "/a/b"));
        assert!(!matches("/a/bc", "/a/b"));
        assert!(!matches("/a", "/a/b"));
        assert!(!matches("/a/", "/a/b"));
    }

    #[test]
    fn upstream_path_table_with_strip() {
        let cases = [
            ("/api", "/"),
            ("/api/", "/"),
            ("/api/users/1", "/users/1"),
            ("/api/users/", "/users/"),
            ("/api//x", "//x"),
            ("/api/a%2Fb/c%41", "/a/b/cA"),
            ("/api/a%2Fb", "/a/b"),
        ];
        for (raw, want) in cases {
            assert_eq!(upstream_path(raw, "/api", true), want, "{raw}");
        }
    }

    #[test]
    fn upstream_path_table_without_strip() {
        for raw in [
            "/api",
            "/api/",
            "/api/users/1",
            "/api/users/",
            "/api//x",
            "/api/a%2Fb/c%41",
            "/a%2Fb/c",
        ] {
            assert_eq!(upstream_path(raw, "/api", false), raw);
        }
    }

    #[test]
    fn upstream_path_root_prefix_keeps_raw_path() {
        assert_eq!(upstream_path("/a%2Fb/c", "/", true), "/a%2Fb/c");
        assert_eq!(upstream_path("", "/", true), "/");
        assert_eq!(upstream_path("", "/api", false), "/");
    }

    #[test]
    fn upstream_path_borrows_when_nothing_changes() {
        assert!(matches!(
            upstream_path("/api/users/1", "/api", true),
            Cow::Borrowed("/users/1")
        ));
        assert!(matches!(
            upstream_path("/api", "/api", true),
            Cow::Borrowed("/")
        ));
        assert!(matches!(
            upstream_path("/x/y", "/api", false),
            Cow::Borrowed("/x/y")
        ));
    }

    #[test]
    fn upstream_path_reencodes_like_go() {
        // Characters Go keeps unescaped in paths survive; the rest are escaped upper-case.
        assert_eq!(
            upstream_path("/api/a$&+,:;=@-_.~b", "/api", true),
            "/a$&+,:;=@-_.~b"
        );
        assert_eq!(
            upstream_path("/api/it's(1)!*", "/api", true),
            "/it%27s%281%29%21%2A"
        );
        assert_eq!(
            upstream_path("/api/a%20b%3Fc%25d", "/api", true),
            "/a%20b%3Fc%25d"
        );
        assert_eq!(upstream_path("/api/caf%c3%a9", "/api", true), "/caf%C3%A9");
        assert_eq!(upstream_path("/api/%ff", "/api", true), "/%FF");
    }

    #[test]
    fn upstream_path_unmatched_prefix_is_not_trimmed() {
        assert_eq!(upstream_path("/other/c%41", "/api", true), "/other/cA");
    }

    #[test]
    fn routed_path_strips_once_and_decodes() {
        assert_eq!(routed_path("/api/up", "/api", true), "/up");
        assert_eq!(routed_path("/api", "/api", true), "/");
        assert_eq!(routed_path("/api/", "/api", true), "/");
        assert_eq!(routed_path("/api/api/x", "/api", true), "/api/x");
        assert_eq!(routed_path("/api/a%2Fb/c%41", "/api", true), "/a/b/cA");
        assert_eq!(routed_path("/api/a%2Fb/c%41", "/api", false), "/api/a/b/cA");
        assert_eq!(routed_path("/up", "/", true), "/up");
        assert_eq!(routed_path("", "/", true), "/");
        assert_eq!(routed_path("/api/%ff", "/api", true), "/\u{fffd}");
        assert!(matches!(
            routed_path("/api/up", "/api", true),
            Cow::Borrowed("/up")
        ));
    }

    #[test]
    fn escapes_are_validated() {
        assert_eq!(validate_escapes("/a%2Fb%41"), Ok(()));
        assert_eq!(validate_escapes("/plain"), Ok(()));
        assert_eq!(validate_escapes(""), Ok(()));
        for (raw, escape) in [
            ("/a%zz", "%zz"),
            ("/a%2", "%2"),
            ("/a%", "%"),
            ("/%4g/x", "%4g"),
        ] {
            let err = validate_escapes(raw).unwrap_err();
            assert_eq!(
                err,
                RouteError::InvalidEscape {
                    escape: escape.into()
                }
            );
        }
        assert_eq!(
            validate_escapes("/a%zz").unwrap_err().to_string(),
            r#"invalid URL escape "%zz""#
        );
    }
}
