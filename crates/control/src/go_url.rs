//! The parts of Go's `net/url` parser that decide whether `--tls-on-demand-url` is valid, with
//! Go's error texts (`parse "allow": invalid URI for request`). Only validation is needed, so
//! only the scheme and host are returned.

use crate::quote::quote;

/// What validation needs to know about a parsed URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedUrl {
    /// The scheme, lower-cased; empty for a relative reference.
    pub(crate) scheme: String,
    /// The host (with port), empty when absent.
    pub(crate) host: String,
}

/// Go's `url.Parse`: a URL or a relative reference, with an optional `#fragment`.
pub(crate) fn parse(raw: &str) -> Result<ParsedUrl, String> {
    let (without_fragment, fragment) = match raw.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (raw, None),
    };
    let parsed = parse_inner(without_fragment, false).map_err(|e| wrap(without_fragment, &e))?;
    if let Some(fragment) = fragment {
        check_escapes(fragment, Mode::Other).map_err(|e| wrap(raw, &e))?;
    }
    Ok(parsed)
}

/// Go's `url.ParseRequestURI`: an absolute URI or an absolute path, no fragment handling.
pub(crate) fn parse_request_uri(raw: &str) -> Result<ParsedUrl, String> {
    parse_inner(raw, true).map_err(|e| wrap(raw, &e))
}

/// Go's `*url.Error` text.
fn wrap(url: &str, reason: &str) -> String {
    format!("parse {}: {reason}", quote(url))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Host,
    Other,
}

fn parse_inner(raw: &str, via_request: bool) -> Result<ParsedUrl, String> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("net/url: invalid control character in URL".to_owned());
    }
    if raw.is_empty() && via_request {
        return Err("empty url".to_owned());
    }
    let mut parsed = ParsedUrl {
        scheme: String::new(),
        host: String::new(),
    };
    if raw == "*" {
        return Ok(parsed);
    }
    let (scheme, mut rest) = split_scheme(raw)?;
    parsed.scheme = scheme.to_ascii_lowercase();

    // Only the query's separation matters: Go does not validate the query while parsing.
    if let Some((before, _query)) = rest.split_once('?') {
        rest = before;
    }

    if !rest.starts_with('/') {
        if !parsed.scheme.is_empty() {
            // A rootless path after a scheme is opaque (`mailto:x`), without host.
            return Ok(parsed);
        }
        if via_request {
            return Err("invalid URI for request".to_owned());
        }
        let first_segment = rest.split('/').next().unwrap_or("");
        if first_segment.contains(':') {
            return Err("first path segment in URL cannot contain colon".to_owned());
        }
    }

    if (!parsed.scheme.is_empty() || (!via_request && !rest.starts_with("///")))
        && rest.starts_with("//")
    {
        let after = &rest[2..];
        let (authority, path) = match after.find('/') {
            Some(i) => after.split_at(i),
            None => (after, ""),
        };
        parsed.host = parse_authority(authority)?;
        rest = path;
    }
    check_escapes(rest, Mode::Other)?;
    Ok(parsed)
}

/// Splits a leading `scheme:`; no scheme when the text does not start like one.
fn split_scheme(raw: &str) -> Result<(&str, &str), String> {
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' => {
                if i == 0 {
                    return Ok(("", raw));
                }
            }
            b':' => {
                if i == 0 {
                    return Err("missing protocol scheme".to_owned());
                }
                return Ok((&raw[..i], &raw[i + 1..]));
            }
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

fn parse_authority(authority: &str) -> Result<String, String> {
    let (userinfo, host) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let host = parse_host(host)?;
    if let Some(userinfo) = userinfo {
        let valid = userinfo
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:~!$&'()*+,;=%@".contains(&b));
        if !valid {
            return Err("net/url: invalid userinfo".to_owned());
        }
        check_escapes(userinfo, Mode::Other)?;
    }
    Ok(host)
}

fn parse_host(host: &str) -> Result<String, String> {
    if host.starts_with('[') {
        let Some(close) = host.rfind(']') else {
            return Err("missing ']' in host".to_owned());
        };
        let port = &host[close + 1..];
        if !valid_optional_port(port) {
            return Err(format!("invalid port {} after host", quote(port)));
        }
    } else if let Some(colon) = host.rfind(':') {
        let port = &host[colon..];
        if !valid_optional_port(port) {
            return Err(format!("invalid port {} after host", quote(port)));
        }
    }
    check_escapes(host, Mode::Host)?;
    Ok(host.to_owned())
}

fn valid_optional_port(port: &str) -> bool {
    match port.strip_prefix(':') {
        Some(digits) => digits.bytes().all(|b| b.is_ascii_digit()),
        None => port.is_empty(),
    }
}

/// Go's `unescape` error checks: every `%` needs two hex digits; hosts allow escapes only of
/// non-ASCII bytes (or `%25`) and only the sub-delimiters among ASCII punctuation.
fn check_escapes(s: &str, mode: Mode) -> Result<(), String> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let well_formed = i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !well_formed {
                let end = (i + 3).min(bytes.len());
                return Err(format!(
                    "invalid URL escape {}",
                    quote(&String::from_utf8_lossy(&bytes[i..end]))
                ));
            }
            let escape = &s[i..i + 3];
            if mode == Mode::Host && hex_value(bytes[i + 1]) < 8 && escape != "%25" {
                return Err(format!("invalid URL escape {}", quote(escape)));
            }
            i += 3;
            continue;
        }
        if mode == Mode::Host && b < 0x80 && !host_byte_allowed(b) {
            return Err(format!(
                "invalid character {} in host name",
                quote(&char::from(b).to_string())
            ));
        }
        i += 1;
    }
    Ok(())
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

fn host_byte_allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!$&'()*+,;=:[]<>\"-_.~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_error(raw: &str) -> String {
        parse_request_uri(raw).unwrap_err()
    }

    #[test]
    fn request_uri_errors_match_go() {
        assert_eq!(
            request_error("allow"),
            r#"parse "allow": invalid URI for request"#
        );
        assert_eq!(
            request_error("://bad"),
            r#"parse "://bad": missing protocol scheme"#
        );
        assert_eq!(request_error(""), r#"parse "": empty url"#);
        assert_eq!(
            request_error("http://a b.test/"),
            r#"parse "http://a b.test/": invalid character " " in host name"#
        );
        assert_eq!(
            request_error("http://a.test:80x/"),
            r#"parse "http://a.test:80x/": invalid port ":80x" after host"#
        );
        assert_eq!(
            request_error("http://[::1/"),
            r#"parse "http://[::1/": missing ']' in host"#
        );
        assert_eq!(
            request_error("http://a.test/%g1"),
            r#"parse "http://a.test/%g1": invalid URL escape "%g1""#
        );
        assert_eq!(
            request_error("http://a.test/x%"),
            r#"parse "http://a.test/x%": invalid URL escape "%""#
        );
        assert_eq!(
            request_error("http://a.test/\n"),
            r#"parse "http://a.test/\n": net/url: invalid control character in URL"#
        );
        assert_eq!(
            request_error("http://us er@a.test/"),
            r#"parse "http://us er@a.test/": net/url: invalid userinfo"#
        );
    }

    #[test]
    fn request_uri_accepts_usual_forms() {
        let parsed = parse_request_uri("HTTPS://User:pw@Check.test:8443/a?b=%zz").unwrap();
        assert_eq!(parsed.scheme, "https");
        assert_eq!(parsed.host, "Check.test:8443");
        assert_eq!(
            parse_request_uri("http://[::1]:80/").unwrap().host,
            "[::1]:80"
        );
        assert_eq!(parse_request_uri("/just/a/path").unwrap().host, "");
        assert_eq!(parse_request_uri("mailto:x@y").unwrap().scheme, "mailto");
    }

    #[test]
    fn relative_parse() {
        assert!(parse("/check?x=1#frag").is_ok());
        assert_eq!(
            parse("/check#%zz").unwrap_err(),
            r#"parse "/check#%zz": invalid URL escape "%zz""#
        );
        assert_eq!(
            parse("a:b").map(|p| p.scheme),
            Ok("a".to_owned()),
            "a scheme, opaque"
        );
        assert_eq!(
            parse("1a:b").unwrap_err(),
            r#"parse "1a:b": first path segment in URL cannot contain colon"#
        );
    }

    #[test]
    fn quoting_matches_strconv() {
        assert_eq!(quote("a\"b\\c\td\u{1}é"), r#""a\"b\\c\td\x01é""#);
    }
}
