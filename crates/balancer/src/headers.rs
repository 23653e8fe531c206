//! Header rewriting for forwarded requests and their responses (hop-by-hop removal,
//! `X-Forwarded-*`, `X-Kamal-Target`, `Date`).

use std::cell::RefCell;
use std::io::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{
    CONNECTION, DATE, FORWARDED, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

/// `Keep-Alive`, hop-by-hop but without a constant in `http`.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `Proxy-Connection`, the non-standard cousin of `Connection`.
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `X-Forwarded-For`: the client address chain.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Host`: the host the client asked for.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Proto`: `http` or `https`, as the client connected.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Kamal-Target`: the address of the target that serves the request.
pub const X_KAMAL_TARGET: HeaderName = HeaderName::from_static("x-kamal-target");

/// Headers that only concern one connection and are never forwarded (RFC 9110 §7.6.1, plus
/// the ones Go's reverse proxy also drops). `Trailer` is handled separately for responses.
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    PROXY_CONNECTION,
    KEEP_ALIVE,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Whether `name` is one of [`HOP_BY_HOP`]. Their lengths are checked first: this runs for
/// every header of every request and response, and ordinary names rarely share one.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(name.as_str().len(), 2 | 7 | 10 | 16..=19) && HOP_BY_HOP.contains(name)
}

/// What the request rewrite needs to know about the client connection and the target.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// The client's IP address (the peer of the TCP connection).
    pub client_ip: IpAddr,
    /// Whether the request arrived over TLS.
    pub tls: bool,
    /// Whether client-supplied `X-Forwarded-*` / `X-Kamal-Target` values are trusted and kept.
    pub forward_headers: bool,
    /// The target's label for `X-Kamal-Target`.
    pub target_label: &'a HeaderValue,
}

/// Rewrites a client request's headers for the upstream (§7.2, §7.3, §4.7).
///
/// `host` is the host the client asked for (the `Host` header, or the URI authority for
/// HTTP/2 and absolute-form requests); it becomes the upstream `Host`. `allow_upgrade` is
/// false for requests that cannot switch protocols (HTTP/2). Returns the requested upgrade
/// protocol when the request asks for one; its `Connection: Upgrade` and `Upgrade` are kept.
pub fn rewrite_request(
    headers: &mut HeaderMap,
    host: Option<HeaderValue>,
    allow_upgrade: bool,
    info: &RequestInfo<'_>,
) -> Option<HeaderValue> {
    let (upgrade, added) = prepare_request(headers, host.as_ref(), allow_upgrade, info);
    added.insert_into(headers);
    if let Some(host) = host {
        headers.insert(HOST, host);
    }
    upgrade
}

/// The headers the request rewrite adds that the client did not send, computed but not yet
/// in the map (the ones the client did send are replaced in the map where they stand). The
/// direct path writes them straight into the request head: inserting them (each insert hashes
/// its name and probes the map) was most of the rewrite's cost.
#[derive(Debug)]
pub struct Added {
    /// `X-Forwarded-For`, `X-Forwarded-Host`, `X-Forwarded-Proto`, `X-Kamal-Target`.
    values: [Option<HeaderValue>; 4],
}

/// The names of [`Added`]'s values, in order (a static, so that [`Added::lines`] can lend
/// their text for as long as the head is written).
static ADDED_NAMES: [HeaderName; 4] = [
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    X_KAMAL_TARGET,
];

impl Added {
    /// The headers as name and value, in the order [`Added::insert_into`] appends them.
    pub fn lines(&self) -> impl Iterator<Item = (&'static str, &HeaderValue)> + Clone {
        ADDED_NAMES
            .iter()
            .zip(&self.values)
            .filter_map(|(name, value)| Some((name.as_str(), value.as_ref()?)))
    }

    /// Appends the headers to `headers`.
    pub fn insert_into(self, headers: &mut HeaderMap) {
        for (name, value) in ADDED_NAMES.iter().zip(self.values) {
            if let Some(value) = value {
                headers.insert(name.clone(), value);
            }
        }
    }
}

/// [`rewrite_request`] up to its inserts: removes what must not be forwarded, and returns the
/// upgrade protocol and the headers to set. The caller sets them and `Host`.
pub fn prepare_request(
    headers: &mut HeaderMap,
    host: Option<&HeaderValue>,
    allow_upgrade: bool,
    info: &RequestInfo<'_>,
) -> (Option<HeaderValue>, Added) {
    // One pass over the names present tells which of the headers below need a lookup or a
    // removal at all; a typical request has none of them, and each lookup hashes its name.
    let mut seen = Seen::default();
    for name in headers.keys() {
        match *name {
            CONNECTION => seen.connection = true,
            TE => seen.te = true,
            FORWARDED => seen.forwarded = true,
            _ if name == X_FORWARDED_FOR => seen.forwarded_for = true,
            _ if name == X_FORWARDED_HOST => seen.forwarded_host = true,
            _ if name == X_FORWARDED_PROTO => seen.forwarded_proto = true,
            _ if name == X_KAMAL_TARGET => seen.kamal_target = true,
            _ if is_hop_by_hop(name) => seen.hop_by_hop = true,
            _ => {}
        }
    }
    let upgrade = if allow_upgrade && seen.connection && has_token(headers, &CONNECTION, "upgrade")
    {
        headers.get(UPGRADE).filter(|v| !v.is_empty()).cloned()
    } else {
        None
    };
    let te_trailers = seen.te && has_token(headers, &TE, "trailers");

    // The forwarded values are computed from the headers as the client sent them, before any
    // of them can be removed as hop-by-hop (Go reads them from the inbound request).
    let trust = info.forward_headers;
    let forwarded_for = forwarded_for(headers, info, trust && seen.forwarded_for);
    let forwarded_host = trusted(headers, &X_FORWARDED_HOST, trust && seen.forwarded_host)
        .or_else(|| host.cloned())
        .unwrap_or_else(|| HeaderValue::from_static(""));
    let forwarded_proto = trusted(headers, &X_FORWARDED_PROTO, trust && seen.forwarded_proto)
        .unwrap_or_else(|| scheme_value(info.tls));
    let kamal_target = if trust && seen.kamal_target {
        joined(headers, &X_KAMAL_TARGET, info.target_label.as_bytes())
    } else {
        info.target_label.clone()
    };

    if seen.hop_by_hop || seen.connection || seen.te {
        remove_present_hop_by_hop(headers);
    }
    if seen.forwarded {
        headers.remove(FORWARDED);
    }

    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if let Some(protocol) = &upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(UPGRADE, protocol.clone());
    }
    let present = [
        seen.forwarded_for,
        seen.forwarded_host,
        seen.forwarded_proto,
        seen.kamal_target,
    ];
    let mut values = [
        Some(forwarded_for),
        Some(forwarded_host),
        Some(forwarded_proto),
        Some(kamal_target),
    ];
    for ((name, value), present) in ADDED_NAMES.iter().zip(&mut values).zip(present) {
        // What the client sent is replaced where it stands (a hop-by-hop removal above may
        // have taken it already; then it is appended like the others).
        if present && headers.contains_key(name) {
            headers.insert(name.clone(), value.take().expect("set above"));
        }
    }
    (upgrade, Added { values })
}

/// Rewrites an upstream response's headers for the client (§7.5): removes hop-by-hop headers
/// (keeping `Trailer`, which announces the trailers that are relayed) and adds `Date` if the
/// upstream sent none.
pub fn rewrite_response(headers: &mut HeaderMap) {
    // One pass over the few names present tells which lookups are needed at all (usually
    // none: each removal and lookup hashes its name).
    let (mut hop_by_hop, mut date) = (false, false);
    for name in headers.keys() {
        if *name == DATE {
            date = true;
        } else if is_hop_by_hop(name) {
            hop_by_hop = true;
        }
    }
    if hop_by_hop {
        let trailer = headers.remove(TRAILER);
        remove_present_hop_by_hop(headers);
        if let Some(trailer) = trailer {
            headers.insert(TRAILER, trailer);
        }
    }
    if !date {
        headers.insert(DATE, http_date_now());
    }
}

/// Whether the response switches to `protocol` as a valid answer to an upgrade request: its
/// `Connection` names `upgrade` and its `Upgrade` equals the requested protocol, ignoring case.
pub fn upgrade_accepted(headers: &HeaderMap, protocol: &HeaderValue) -> bool {
    has_token(headers, &CONNECTION, "upgrade")
        && headers
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(protocol.as_bytes()))
}

/// Whether an upgrade protocol name is printable ASCII, as Go requires before forwarding it.
pub fn is_printable(protocol: &HeaderValue) -> bool {
    protocol.as_bytes().iter().all(|b| (0x20..0x7f).contains(b))
}

/// Which of the headers the request rewrite looks at are present.
#[derive(Default)]
struct Seen {
    connection: bool,
    te: bool,
    forwarded: bool,
    forwarded_for: bool,
    forwarded_host: bool,
    forwarded_proto: bool,
    kamal_target: bool,
    /// Any other hop-by-hop header.
    hop_by_hop: bool,
}

/// Removes the hop-by-hop headers and every header named in `Connection`, once one of them
/// is known to be present.
fn remove_present_hop_by_hop(headers: &mut HeaderMap) {
    // Names are collected first because the map cannot shrink while `Connection` is borrowed.
    // The vector only allocates for names outside the fixed list, which is rare.
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(CONNECTION) {
        for token in tokens(value) {
            if token.eq_ignore_ascii_case(b"close")
                || HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str().as_bytes()))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// `X-Forwarded-For`: the client IP, after the incoming values when they are trusted.
/// `incoming`: whether the client's values are kept (trusted and present).
fn forwarded_for(headers: &HeaderMap, info: &RequestInfo<'_>, incoming: bool) -> HeaderValue {
    // An IPv4 client on a dual-stack socket is reported as plain IPv4, as Go does.
    let ip = info.client_ip.to_canonical();
    let mut buf = BytesMut::with_capacity(64);
    if incoming {
        for value in headers.get_all(&X_FORWARDED_FOR) {
            buf.put_slice(value.as_bytes());
            buf.put_slice(b", ");
        }
    }
    put_ip(&mut buf, ip);
    to_value(buf.freeze())
}

/// Writes an IP address as `Display` does; IPv4 (the common case) without the formatter.
fn put_ip(buf: &mut BytesMut, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.put_u8(b'.');
                }
                if octet >= 100 {
                    buf.put_u8(b'0' + octet / 100);
                }
                if octet >= 10 {
                    buf.put_u8(b'0' + octet / 10 % 10);
                }
                buf.put_u8(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(buf.writer(), "{v6}");
        }
    }
}

/// The first incoming value of `name` when client values are trusted and it is non-empty.
fn trusted(headers: &HeaderMap, name: &HeaderName, trust: bool) -> Option<HeaderValue> {
    if !trust {
        return None;
    }
    headers.get(name).filter(|v| !v.is_empty()).cloned()
}

/// All incoming values of `name` joined with `, `, then `last`; just `last` if there are none.
fn joined(headers: &HeaderMap, name: &HeaderName, last: &[u8]) -> HeaderValue {
    let mut values = headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        return to_value(Bytes::copy_from_slice(last));
    }
    let mut buf = BytesMut::new();
    for value in values {
        buf.put_slice(value.as_bytes());
        buf.put_slice(b", ");
    }
    buf.put_slice(last);
    to_value(buf.freeze())
}

/// Builds a header value from bytes that are known to be valid: joined header values, an IP
/// address, commas and spaces. Falls back to an empty value rather than panicking.
fn to_value(bytes: Bytes) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn scheme_value(tls: bool) -> HeaderValue {
    HeaderValue::from_static(if tls { "https" } else { "http" })
}

/// Whether any value of header `name` contains `token` in its comma-separated list.
pub(crate) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(token.as_bytes())))
}

/// The comma-separated, whitespace-trimmed, non-empty tokens of a header value.
pub(crate) fn tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The current time as an IMF-fixdate `Date` value, formatted at most once a second per thread.
fn http_date_now() -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        match &*cached {
            Some((at, value)) if *at == secs => value.clone(),
            _ => {
                let value = to_value(Bytes::from(httpdate::fmt_http_date(now)));
                *cached = Some((secs, value.clone()));
                value
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    static LABEL: HeaderValue = HeaderValue::from_static("10.0.0.5:3000");

    #[test]
    fn hop_by_hop_check_by_length_misses_none() {
        // The length filter must let every listed name through (a name added to the list
        // with a new length must be added to the filter too).
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
            let upper = HeaderName::from_bytes(name.as_str().to_uppercase().as_bytes()).unwrap();
            assert!(is_hop_by_hop(&upper), "{upper}");
        }
        for name in [
            "content-length",
            "content-type",
            "date",
            "set-cookie",
            "x-request-id",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    fn info(forward_headers: bool, tls: bool) -> RequestInfo<'static> {
        RequestInfo {
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            tls,
            forward_headers,
            target_label: &LABEL,
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    fn rewrite(pairs: &[(&str, &str)], i: &RequestInfo<'_>) -> HeaderMap {
        let mut h = map(pairs);
        let host = h.get(HOST).cloned();
        rewrite_request(&mut h, host, true, i);
        h
    }

    // §7.3 table, row X-Forwarded-For.
    #[test]
    fn xff_untrusted_is_client_ip_only() {
        let h = rewrite(
            &[("host", "a.test"), ("x-forwarded-for", "1.1.1.1")],
            &info(false, false),
        );
        assert_eq!(all(&h, "x-forwarded-for"), ["192.0.2.7"]);
    }

    #[test]
    fn xff_trusted_joins_all_lines_then_client_ip() {
        let h = rewrite(
            &[
                ("host", "a.test"),
                ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
                ("x-forwarded-for", "3.3.3.3"),
            ],
            &info(true, false),
        );
        assert_eq!(
            all(&h, "x-forwarded-for"),
            ["1.1.1.1, 2.2.2.2, 3.3.3.3, 192.0.2.7"]
        );
    }

    #[test]
    fn xff_trusted_without_incoming_is_client_ip() {
        let h = rewrite(&[("host", "a.test")], &info(true, false));
        assert_eq!(all(&h, "x-forwarded-for"), ["192.0.2.7"]);
    }

    #[test]
    fn xff_ipv6_has_no_brackets_and_mapped_ipv4_is_plain() {
        let mut i = info(false, false);
        i.client_ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let h = rewrite(&[("host", "a.test")], &i);
        assert_eq!(all(&h, "x-forwarded-for"), ["::1"]);
        i.client_ip = IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped());
        let h = rewrite(&[("host", "a.test")], &i);
        assert_eq!(all(&h, "x-forwarded-for"), ["10.1.2.3"]);
    }

    #[test]
    fn ip_addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.100.9.255",
            "127.0.0.1",
            "::1",
            "2001:db8::2",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = BytesMut::new();
            put_ip(&mut buf, ip);
            assert_eq!(&buf[..], ip.to_string().as_bytes());
        }
    }

    // §7.3 table, row X-Forwarded-Host.
    #[test]
    fn xfh_untrusted_is_host_with_port() {
        let h = rewrite(
            &[("host", "a.test:8080"), ("x-forwarded-host", "evil.test")],
            &info(false, false),
        );
        assert_eq!(all(&h, "x-forwarded-host"), ["a.test:8080"]);
    }

    #[test]
    fn xfh_trusted_keeps_first_non_empty_incoming() {
        let h = rewrite(
            &[
                ("host", "a.test"),
                ("x-forwarded-host", "orig.test"),
                ("x-forwarded-host", "second.test"),
            ],
            &info(true, false),
        );
        assert_eq!(all(&h, "x-forwarded-host"), ["orig.test"]);
    }

    #[test]
    fn xfh_trusted_but_empty_falls_back_to_host() {
        let h = rewrite(
            &[("host", "a.test"), ("x-forwarded-host", "")],
            &info(true, false),
        );
        assert_eq!(all(&h, "x-forwarded-host"), ["a.test"]);
    }

    // §7.3 table, row X-Forwarded-Proto.
    #[test]
    fn xfp_untrusted_is_computed() {
        let pairs = [("host", "a.test"), ("x-forwarded-proto", "https")];
        assert_eq!(
            all(&rewrite(&pairs, &info(false, false)), "x-forwarded-proto"),
            ["http"]
        );
        let pairs = [("host", "a.test"), ("x-forwarded-proto", "http")];
        assert_eq!(
            all(&rewrite(&pairs, &info(false, true)), "x-forwarded-proto"),
            ["https"]
        );
    }

    #[test]
    fn xfp_trusted_keeps_incoming_else_computed() {
        let pairs = [("host", "a.test"), ("x-forwarded-proto", "https")];
        assert_eq!(
            all(&rewrite(&pairs, &info(true, false)), "x-forwarded-proto"),
            ["https"]
        );
        let pairs = [("host", "a.test"), ("x-forwarded-proto", "")];
        assert_eq!(
            all(&rewrite(&pairs, &info(true, true)), "x-forwarded-proto"),
            ["https"]
        );
    }

    #[test]
    fn forwarded_is_always_removed_and_via_never_added() {
        for trust in [false, true] {
            let h = rewrite(
                &[("host", "a.test"), ("forwarded", "for=1.2.3.4")],
                &info(trust, false),
            );
            assert!(!h.contains_key("forwarded"));
            assert!(!h.contains_key("via"));
        }
    }

    #[test]
    fn kamal_target_replaces_or_appends() {
        let pairs = [("host", "a.test"), ("x-kamal-target", "client-value")];
        let h = rewrite(&pairs, &info(false, false));
        assert_eq!(all(&h, "x-kamal-target"), ["10.0.0.5:3000"]);
        let h = rewrite(&pairs, &info(true, false));
        assert_eq!(all(&h, "x-kamal-target"), ["client-value, 10.0.0.5:3000"]);
        let h = rewrite(&[("host", "a.test")], &info(true, false));
        assert_eq!(all(&h, "x-kamal-target"), ["10.0.0.5:3000"]);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let h = rewrite(
            &[
                ("host", "a.test"),
                ("connection", "keep-alive, X-Foo"),
                ("connection", "x-bar"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("proxy-authenticate", "Basic"),
                ("proxy-authorization", "Basic xyz"),
                ("te", "gzip"),
                ("trailer", "X-Trail"),
                ("transfer-encoding", "chunked"),
                ("upgrade", "websocket"),
                ("x-foo", "1"),
                ("x-bar", "2"),
                ("x-kept", "3"),
            ],
            &info(false, false),
        );
        for gone in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "x-foo",
            "x-bar",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be removed");
        }
        assert_eq!(all(&h, "x-kept"), ["3"]);
        assert_eq!(all(&h, "host"), ["a.test"]);
    }

    #[test]
    fn te_trailers_is_kept_alone() {
        let h = rewrite(
            &[("host", "a.test"), ("te", "gzip, Trailers")],
            &info(false, false),
        );
        assert_eq!(all(&h, "te"), ["trailers"]);
    }

    #[test]
    fn upgrade_request_keeps_connection_and_upgrade() {
        let mut h = map(&[
            ("host", "a.test"),
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        let protocol = rewrite_request(&mut h, None, true, &info(false, false));
        assert_eq!(protocol, Some(HeaderValue::from_static("websocket")));
        assert_eq!(all(&h, "connection"), ["Upgrade"]);
        assert_eq!(all(&h, "upgrade"), ["websocket"]);
        assert_eq!(all(&h, "sec-websocket-key"), ["k"]);
    }

    #[test]
    fn upgrade_needs_connection_token_and_permission() {
        let mut h = map(&[("host", "a.test"), ("upgrade", "websocket")]);
        assert_eq!(
            rewrite_request(&mut h, None, true, &info(false, false)),
            None
        );
        assert!(!h.contains_key("upgrade"));

        let pairs = [("connection", "upgrade"), ("upgrade", "websocket")];
        let mut h = map(&pairs);
        assert_eq!(
            rewrite_request(&mut h, None, false, &info(false, false)),
            None
        );
        assert!(!h.contains_key("upgrade"));
    }

    #[test]
    fn host_is_set_from_argument() {
        let mut h = map(&[]);
        rewrite_request(
            &mut h,
            Some(HeaderValue::from_static("h2.test:8443")),
            false,
            &info(false, true),
        );
        assert_eq!(all(&h, "host"), ["h2.test:8443"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["h2.test:8443"]);
    }

    #[test]
    fn response_hop_by_hop_removed_trailer_kept_date_added() {
        let mut h = map(&[
            ("connection", "close, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("trailer", "X-Checksum"),
            ("x-secret", "s"),
            ("content-type", "text/plain"),
        ]);
        rewrite_response(&mut h);
        for gone in ["connection", "keep-alive", "transfer-encoding", "x-secret"] {
            assert!(!h.contains_key(gone), "{gone} should be removed");
        }
        assert_eq!(all(&h, "trailer"), ["X-Checksum"]);
        assert_eq!(all(&h, "content-type"), ["text/plain"]);
        let date = h.get(DATE).unwrap().to_str().unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
    }

    #[test]
    fn response_date_from_upstream_is_kept() {
        let mut h = map(&[("date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        rewrite_response(&mut h);
        assert_eq!(all(&h, "date"), ["Sun, 06 Nov 1994 08:49:37 GMT"]);
    }

    #[test]
    fn upgrade_acceptance_ignores_case() {
        let ws = HeaderValue::from_static("websocket");
        let ok = map(&[("connection", "Upgrade"), ("upgrade", "WebSocket")]);
        assert!(upgrade_accepted(&ok, &ws));
        let other = map(&[("connection", "Upgrade"), ("upgrade", "h2c")]);
        assert!(!upgrade_accepted(&other, &ws));
        let no_conn = map(&[("upgrade", "websocket")]);
        assert!(!upgrade_accepted(&no_conn, &ws));
        assert!(is_printable(&ws));
        assert!(!is_printable(&HeaderValue::from_bytes(b"a\tb").unwrap()));
    }
}
