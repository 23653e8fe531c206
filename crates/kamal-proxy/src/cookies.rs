//! Cookie path scoping (`--scope-cookie-paths`, spec §7.10): cookies an application behind a
//! stripped prefix sets for its own host get the prefix in front of their `Path`.
//!
//! Each matching `Set-Cookie` is parsed and re-serialised the way Go's `net/http` does it
//! (canonical attribute order, unknown attributes dropped), because that is what clients of the
//! upstream proxy receive.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::SET_COOKIE;
use http::{HeaderMap, HeaderValue};

/// Rewrites the `Path` of every `Set-Cookie` whose `Domain` is empty or exactly `host` (the
/// request host without port): the new path is `prefix` joined with the cookie's path.
/// Unparsable cookies and cookies for other domains pass through untouched.
pub fn scope_paths(headers: &mut HeaderMap, prefix: &str, host: &str) {
    if !headers.contains_key(SET_COOKIE) {
        return;
    }
    let rewritten: Vec<HeaderValue> = headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|value| rescope(value, prefix, host).unwrap_or_else(|| value.clone()))
        .collect();
    headers.remove(SET_COOKIE);
    for value in rewritten {
        headers.append(SET_COOKIE, value);
    }
}

fn rescope(value: &HeaderValue, prefix: &str, host: &str) -> Option<HeaderValue> {
    let mut cookie = SetCookie::parse(value.to_str().ok()?)?;
    if !(cookie.domain.is_empty() || cookie.domain == host) {
        return None;
    }
    cookie.path = join_path(prefix, cookie.path.trim_matches('/'));
    HeaderValue::from_str(&cookie.to_string()).ok()
}

/// `prefix` + `/` + `rest`, cleaned (`.`/`..` resolved, duplicate slashes merged, no trailing
/// slash), as Go's `url.JoinPath` does for these inputs.
fn join_path(prefix: &str, rest: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in prefix.split('/').chain(rest.split('/')) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(prefix.len() + rest.len() + 1);
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SameSite {
    Default,
    Lax,
    Strict,
    None,
}

/// A `Set-Cookie` value as Go's `http.ParseSetCookie` reads it.
#[derive(Debug, Clone, PartialEq)]
struct SetCookie {
    name: String,
    value: String,
    quoted: bool,
    path: String,
    domain: String,
    expires: Option<SystemTime>,
    /// 0: not set; negative: delete now (`Max-Age=0`); positive: seconds.
    max_age: i64,
    http_only: bool,
    secure: bool,
    same_site: SameSite,
    partitioned: bool,
}

impl SetCookie {
    fn parse(line: &str) -> Option<SetCookie> {
        let mut parts = line.trim().split(';');
        let (name, value) = parts.next()?.trim().split_once('=')?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return None;
        }
        let (value, quoted) = cookie_value(value, true)?;
        let mut cookie = SetCookie {
            name: name.to_owned(),
            value: value.to_owned(),
            quoted,
            path: String::new(),
            domain: String::new(),
            expires: None,
            max_age: 0,
            http_only: false,
            secure: false,
            same_site: SameSite::Default,
            partitioned: false,
        };
        for part in parts {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (attr, raw) = part.split_once('=').unwrap_or((part, ""));
            if !attr.is_ascii() {
                continue;
            }
            // Attributes with a value Go cannot read are kept aside by Go and never written.
            let Some((val, _)) = cookie_value(raw, false) else {
                continue;
            };
            match attr.to_ascii_lowercase().as_str() {
                "samesite" => {
                    cookie.same_site = match val.to_ascii_lowercase().as_str() {
                        "lax" => SameSite::Lax,
                        "strict" => SameSite::Strict,
                        "none" => SameSite::None,
                        _ => SameSite::Default,
                    }
                }
                "secure" => cookie.secure = true,
                "httponly" => cookie.http_only = true,
                "domain" => cookie.domain = val.to_owned(),
                "max-age" => {
                    if let Ok(secs) = val.parse::<i64>() {
                        if secs == 0 || !val.starts_with('0') {
                            cookie.max_age = if secs <= 0 { -1 } else { secs };
                        }
                    }
                }
                "expires" => cookie.expires = parse_expires(val),
                "path" => cookie.path = val.to_owned(),
                "partitioned" => cookie.partitioned = true,
                _ => {}
            }
        }
        Some(cookie)
    }
}

impl std::fmt::Display for SetCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value: String = self
            .value
            .chars()
            .filter(|&c| c.is_ascii() && is_cookie_value_byte(c as u8))
            .collect();
        if !value.is_empty() && (self.quoted || value.contains([' ', ','])) {
            write!(f, "{}=\"{value}\"", self.name)?;
        } else {
            write!(f, "{}={value}", self.name)?;
        }
        if !self.path.is_empty() {
            let path: String = self
                .path
                .chars()
                .filter(|&c| (' '..='~').contains(&c) && c != ';')
                .collect();
            write!(f, "; Path={path}")?;
        }
        if is_valid_domain(&self.domain) {
            let domain = self.domain.strip_prefix('.').unwrap_or(&self.domain);
            write!(f, "; Domain={domain}")?;
        }
        if let Some(expires) = self.expires {
            write!(f, "; Expires={}", httpdate::fmt_http_date(expires))?;
        }
        if self.max_age > 0 {
            write!(f, "; Max-Age={}", self.max_age)?;
        } else if self.max_age < 0 {
            f.write_str("; Max-Age=0")?;
        }
        if self.http_only {
            f.write_str("; HttpOnly")?;
        }
        if self.secure {
            f.write_str("; Secure")?;
        }
        match self.same_site {
            SameSite::Default => {}
            SameSite::Lax => f.write_str("; SameSite=Lax")?,
            SameSite::Strict => f.write_str("; SameSite=Strict")?,
            SameSite::None => f.write_str("; SameSite=None")?,
        }
        if self.partitioned {
            f.write_str("; Partitioned")?;
        }
        Ok(())
    }
}

/// A cookie value with optional surrounding quotes removed, if every byte is allowed.
fn cookie_value(raw: &str, allow_quotes: bool) -> Option<(&str, bool)> {
    let (value, quoted) = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) if allow_quotes && raw.len() > 1 => (inner, true),
        _ => (raw, false),
    };
    value
        .bytes()
        .all(is_cookie_value_byte)
        .then_some((value, quoted))
}

fn is_cookie_value_byte(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b'"' && b != b';' && b != b'\\'
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A domain Go writes back: a host name (a leading dot allowed) or an IP address.
fn is_valid_domain(domain: &str) -> bool {
    let name = domain.strip_prefix('.').unwrap_or(domain);
    !name.is_empty()
        && name.len() <= 255
        && (name.parse::<std::net::IpAddr>().is_ok()
            || name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }))
}

/// `Expires` in RFC 1123 form, also with dashes in the date (`Mon, 02-Jan-2006 …`). Dates
/// before 1970 cannot be represented and are dropped (Go keeps those after 1601).
fn parse_expires(value: &str) -> Option<SystemTime> {
    let parsed = httpdate::parse_http_date(value)
        .ok()
        .or_else(|| httpdate::parse_http_date(&value.replacen('-', " ", 2)).ok())?;
    // Whole seconds, as written back.
    let secs = parsed.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoped(cookies: &[&str], prefix: &str, host: &str) -> Vec<String> {
        let mut headers = HeaderMap::new();
        headers.insert("x-other", HeaderValue::from_static("kept"));
        for c in cookies {
            headers.append(SET_COOKIE, HeaderValue::from_str(c).unwrap());
        }
        scope_paths(&mut headers, prefix, host);
        assert_eq!(headers["x-other"], "kept");
        headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn paths_get_the_prefix() {
        assert_eq!(
            scoped(
                &["a=1; Path=/", "b=2; Path=/admin", "c=3", "d=4; Path=/x/"],
                "/app",
                "example.test"
            ),
            [
                "a=1; Path=/app",
                "b=2; Path=/app/admin",
                "c=3; Path=/app",
                "d=4; Path=/app/x"
            ]
        );
    }

    #[test]
    fn reserialised_canonically_with_unknown_attributes_dropped() {
        assert_eq!(
            scoped(&["a=1; Path=/x/; Priority=High; Secure"], "/app", "h"),
            ["a=1; Path=/app/x; Secure"]
        );
        assert_eq!(
            scoped(
                &["s=v; samesite=strict; HTTPONLY; max-age=60; expires=Wed, 21 Oct 2015 07:28:00 GMT; Domain=h; partitioned"],
                "/app",
                "h"
            ),
            ["s=v; Path=/app; Domain=h; Expires=Wed, 21 Oct 2015 07:28:00 GMT; Max-Age=60; HttpOnly; SameSite=Strict; Partitioned"]
        );
        assert_eq!(
            scoped(&["gone=; Max-Age=0", "q=\"a b\"", "sp=a b"], "/app", "h"),
            [
                "gone=; Path=/app; Max-Age=0",
                "q=\"a b\"; Path=/app",
                "sp=\"a b\"; Path=/app"
            ]
        );
    }

    #[test]
    fn other_domains_and_broken_cookies_pass_through() {
        let untouched = [
            "a=1; Domain=other.test; Path=/",
            "b=2; Domain=.example.test",
            "no equals sign",
            "bad name=1",
        ];
        assert_eq!(scoped(&untouched, "/app", "example.test"), untouched);
        // Domain equal to the host (case-sensitive) is scoped, and kept.
        assert_eq!(
            scoped(&["a=1; Domain=example.test"], "/app", "example.test"),
            ["a=1; Path=/app; Domain=example.test"]
        );
        assert_eq!(
            scoped(&["a=1; Domain=Example.test"], "/app", "example.test"),
            ["a=1; Domain=Example.test"]
        );
    }

    #[test]
    fn joins_and_cleans() {
        assert_eq!(join_path("/app", ""), "/app");
        assert_eq!(join_path("/app", "a/../b/./c"), "/app/b/c");
        assert_eq!(join_path("/a/b", "x//y"), "/a/b/x/y");
        assert_eq!(join_path("/", ""), "/");
    }
}
