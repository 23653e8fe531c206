//! Host handling: stripping the port from an authority and normalising host names.

/// Returns the host part of a `Host` header or `:authority` value, dropping the port.
///
/// Follows upstream exactly: the value is split only when its first `:` is at a position > 0
/// and it splits cleanly as `host:port` (Go's `net.SplitHostPort` rules, bracketed IPv6
/// included). Otherwise the value is returned unchanged, e.g. `[::1]` or `::1`.
///
/// ```
/// use kamal_router::host_without_port;
/// assert_eq!(host_without_port("example.com:8080"), "example.com");
/// assert_eq!(host_without_port("[::1]:80"), "::1");
/// assert_eq!(host_without_port("[::1]"), "[::1]");
/// ```
pub fn host_without_port(authority: &str) -> &str {
    // One pass over the bytes finds every colon and bracket that Go's `net.SplitHostPort`
    // looks at (it runs on every request: five separate searches cost more than the rest of
    // the lookup for a short host).
    let (mut first_colon, mut last_colon) = (None, 0);
    let (mut first_close, mut opens, mut closes) = (0, 0u32, 0u32);
    for (i, b) in authority.bytes().enumerate() {
        match b {
            b':' => {
                first_colon.get_or_insert(i);
                last_colon = i;
            }
            b'[' => opens += 1,
            b']' => {
                if closes == 0 {
                    first_close = i;
                }
                closes += 1;
            }
            _ => {}
        }
    }
    match first_colon {
        Some(colon) if colon > 0 => {
            split_host_port(authority, colon, last_colon, first_close, opens, closes)
                .unwrap_or(authority)
        }
        _ => authority,
    }
}

/// The host of `host:port`, or `None` where Go's `net.SplitHostPort` reports an error; the
/// positions and counts of colons and brackets come from [`host_without_port`]'s scan.
fn split_host_port(
    hostport: &str,
    first_colon: usize,
    last_colon: usize,
    first_close: usize,
    opens: u32,
    closes: u32,
) -> Option<&str> {
    if hostport.starts_with('[') {
        // `[host]:port`: the port separator must follow the closing bracket immediately,
        // and no other bracket may appear.
        if closes == 0 || first_close + 1 != last_colon || opens > 1 || closes > 1 {
            return None;
        }
        Some(&hostport[1..first_close])
    } else {
        // `host:port`: one colon, no brackets.
        if first_colon != last_colon || opens > 0 || closes > 0 {
            return None;
        }
        Some(&hostport[..last_colon])
    }
}

/// Normalises a configured host for storage: one trailing dot removed, ASCII lower-cased.
///
/// Case-insensitivity and the trailing dot are our deliberate difference from upstream
/// (RFC 9110: host names are case-insensitive; `example.com.` is the same name).
pub(crate) fn normalize_host(host: &str) -> String {
    strip_one_dot(host).to_ascii_lowercase()
}

/// Removes a single trailing dot, if any.
pub(crate) fn strip_one_dot(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

/// Longest request host that is lower-cased on the stack; longer ones (beyond DNS's 253
/// characters, so only hostile or broken clients) are lower-cased on the heap.
const STACK_HOST_LEN: usize = 256;

/// Calls `f` with the lookup form of a request host (port already removed): one trailing dot
/// removed and ASCII lower-cased, without allocating for any realistic host.
pub(crate) fn with_lookup_form<R>(host: &str, f: impl FnOnce(&str) -> R) -> R {
    let host = strip_one_dot(host);
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return f(host);
    }
    let len = host.len();
    if len <= STACK_HOST_LEN {
        let mut buf = [0u8; STACK_HOST_LEN];
        buf[..len].copy_from_slice(host.as_bytes());
        buf[..len].make_ascii_lowercase();
        // ASCII lower-casing keeps UTF-8 valid, so this never fails; the fallback is only
        // there to avoid an unwrap.
        if let Ok(lower) = std::str::from_utf8(&buf[..len]) {
            return f(lower);
        }
    }
    f(&host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {

    /// Go's `net.SplitHostPort` as five separate searches (the former implementation), for
    /// the one-pass version to be checked against.
    fn reference(authority: &str) -> &str {
        fn split(hostport: &str) -> Option<&str> {
            let last_colon = hostport.rfind(':')?;
            let (host, open_from, close_from) = if hostport.starts_with('[') {
                let close = hostport.find(']')?;
                if close + 1 != last_colon {
                    return None;
                }
                (&hostport[1..close], 1, close + 1)
            } else {
                let host = &hostport[..last_colon];
                if host.contains(':') {
                    return None;
                }
                (host, 0, 0)
            };
            if hostport[open_from..].contains('[') || hostport[close_from..].contains(']') {
                return None;
            }
            Some(host)
        }
        match authority.find(':') {
            Some(colon) if colon > 0 => split(authority).unwrap_or(authority),
            _ => authority,
        }
    }

    #[test]
    fn one_pass_split_agrees_with_go_semantics() {
        // Every string of up to five characters over the alphabet that matters.
        let alphabet = ['a', ':', '[', ']', '1'];
        let mut inputs = vec![String::new()];
        for _ in 0..5 {
            let longer: Vec<String> = inputs
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            inputs.extend(longer);
            inputs.dedup();
        }
        inputs.extend(
            [
                "[::1]:80",
                "[::1]",
                "a.test:8080",
                "[a]:1]",
                "[a]]:1",
                "[[a]:1",
            ]
            .map(String::from),
        );
        for input in &inputs {
            assert_eq!(host_without_port(input), reference(input), "{input:?}");
        }
    }

    use super::*;

    #[test]
    fn strips_port_like_upstream() {
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("example.com:"), "example.com");
        assert_eq!(host_without_port("[::1]:80"), "::1");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(host_without_port("::1"), "::1");
        assert_eq!(host_without_port(":80"), ":80");
        assert_eq!(host_without_port("a:b:c"), "a:b:c");
        assert_eq!(host_without_port("[::1]x:80"), "[::1]x:80");
        assert_eq!(host_without_port("a[b:80"), "a[b:80");
        assert_eq!(host_without_port("ab]:80"), "ab]:80");
        assert_eq!(host_without_port(""), "");
    }

    #[test]
    fn normalises_case_and_one_trailing_dot() {
        assert_eq!(normalize_host("Example.TEST."), "example.test");
        assert_eq!(normalize_host("example.test.."), "example.test.");
        assert_eq!(normalize_host("*.Wild.Test"), "*.wild.test");
        assert_eq!(normalize_host(""), "");
    }

    #[test]
    fn lookup_form_matches_normalised_form() {
        for host in ["example.test", "EXAMPLE.test.", "x.", ".", "ÄB.test"] {
            with_lookup_form(host, |h| assert_eq!(h, normalize_host(host)));
        }
        let long = "A".repeat(STACK_HOST_LEN + 10);
        with_lookup_form(&long, |h| assert_eq!(h, "a".repeat(STACK_HOST_LEN + 10)));
    }
}
