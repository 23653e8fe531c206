//! The TLS redirect and the canonical-host redirect (spec §7.8), combined into one 301.
//!
//! The `Location` is `<scheme>://<host><request URI>` where the port of the request's host is
//! always dropped (an upstream quirk kept on purpose), and the request URI is the original
//! path (prefix included, original escaping) and raw query.

use http::header::{CONNECTION, CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use kamal_control::ServiceOptions;

use crate::body::ResponseBody;

/// The 301 for a request that needs a different scheme or host, or `None` to carry on.
///
/// `tls` tells whether the request arrived over TLS; `authority` is its host as received
/// (`Host` header or URI authority, port included).
pub fn redirect<B>(
    req: &Request<B>,
    authority: &str,
    tls: bool,
    options: &ServiceOptions,
) -> Option<Response<ResponseBody>> {
    let to_https = !tls && options.tls_enabled && options.tls_redirect;
    let canonical = &options.canonical_host;
    // Most services redirect nothing: decided before the host is looked at (every request
    // passes here).
    if !to_https && canonical.is_empty() {
        return None;
    }
    let host = strip_port(authority);
    let to_canonical = !canonical.is_empty() && canonical != host;
    if !to_https && !to_canonical {
        return None;
    }
    let scheme = if tls || to_https { "https" } else { "http" };
    let host = if to_canonical {
        canonical.as_str()
    } else {
        host
    };
    let uri = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|pq| !pq.is_empty())
        .unwrap_or("/");
    let location = format!("{scheme}://{host}{uri}");
    // Every part comes from a header value or a parsed URI, so this only fails on bytes a
    // `Location` cannot carry; such a request is served without the redirect.
    let location_value = HeaderValue::from_str(&location).ok()?;
    Some(moved_permanently(
        req.method(),
        req.version(),
        &location,
        location_value,
    ))
}

fn moved_permanently(
    method: &Method,
    version: Version,
    location: &str,
    location_value: HeaderValue,
) -> Response<ResponseBody> {
    let body = if method == Method::GET {
        ResponseBody::full(format!(
            "<a href=\"{}\">Moved Permanently</a>.\n\n",
            escape(location)
        ))
    } else {
        ResponseBody::empty()
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    let headers = resp.headers_mut();
    // HTTP/2 has no connection-level headers.
    if version < Version::HTTP_2 {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    headers.insert(LOCATION, location_value);
    if method == Method::GET || method == Method::HEAD {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
    }
    resp
}

/// The host without its port: `a.test:8080` → `a.test`, `[::1]:8080` → `[::1]`.
pub fn strip_port(authority: &str) -> &str {
    if let Some(end) = authority.strip_prefix('[').and_then(|rest| rest.find(']')) {
        return &authority[..end + 2];
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Escapes the characters Go's redirect body escapes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn options(tls: bool, redirect: bool, canonical: &str) -> ServiceOptions {
        ServiceOptions {
            tls_enabled: tls,
            tls_redirect: redirect,
            canonical_host: canonical.to_owned(),
            ..ServiceOptions::default()
        }
    }

    fn request(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    async fn body(resp: Response<ResponseBody>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn tls_redirect_matches_upstream_bytes() {
        let req = request(Method::GET, "/p/a?x=1&y=2");
        let resp = redirect(&req, "tls.test:28080", false, &options(true, true, "")).unwrap();
        assert_eq!(resp.status(), 301);
        let h = resp.headers();
        assert_eq!(h[LOCATION], "https://tls.test/p/a?x=1&y=2");
        assert_eq!(h[CONNECTION], "close");
        assert_eq!(h[CONTENT_TYPE], "text/html; charset=utf-8");
        let text = body(resp).await;
        assert_eq!(
            text,
            "<a href=\"https://tls.test/p/a?x=1&amp;y=2\">Moved Permanently</a>.\n\n"
        );
        assert_eq!(text.len(), 67);
    }

    #[tokio::test]
    async fn one_redirect_combines_scheme_and_host() {
        let req = request(Method::POST, "/");
        let resp = redirect(
            &req,
            "www.example.com",
            false,
            &options(true, true, "example.com"),
        )
        .unwrap();
        assert_eq!(resp.headers()[LOCATION], "https://example.com/");
        assert!(!resp.headers().contains_key(CONTENT_TYPE));
        assert_eq!(body(resp).await, "");
    }

    #[tokio::test]
    async fn head_gets_a_content_type_but_no_body() {
        let req = request(Method::HEAD, "/x");
        let resp = redirect(&req, "a.test", false, &options(false, true, "b.test")).unwrap();
        assert_eq!(resp.headers()[LOCATION], "http://b.test/x");
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(body(resp).await, "");
    }

    #[test]
    fn no_redirect_when_nothing_changes() {
        let req = request(Method::GET, "/");
        // Already TLS, or TLS without redirect, or already canonical (port ignored).
        assert!(redirect(&req, "a.test", true, &options(true, true, "")).is_none());
        assert!(redirect(&req, "a.test", false, &options(true, false, "")).is_none());
        assert!(redirect(&req, "a.test:80", false, &options(false, true, "a.test")).is_none());
        // Canonical compare is exact.
        assert!(redirect(&req, "A.test", true, &options(false, true, "a.test")).is_some());
    }

    #[test]
    fn canonical_redirect_over_tls_stays_https() {
        let req = request(Method::GET, "/a%2Fb?q");
        let resp = redirect(
            &req,
            "www.a.test:8443",
            true,
            &options(true, true, "a.test"),
        )
        .unwrap();
        assert_eq!(resp.headers()[LOCATION], "https://a.test/a%2Fb?q");
        let h2 = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://www.a.test/")
            .body(())
            .unwrap();
        let resp = redirect(&h2, "www.a.test", true, &options(true, true, "a.test")).unwrap();
        assert!(!resp.headers().contains_key(CONNECTION));
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("a.test:8080"), "a.test");
        assert_eq!(strip_port("a.test"), "a.test");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port(""), "");
    }
}
