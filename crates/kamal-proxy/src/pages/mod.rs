//! The built-in error pages (spec §9.1).
//!
//! Five statuses have a page of their own (404, 413, 502, 503, 504): one standalone HTML5
//! layout beside this module (`layout.html`), filled in once per status at first use.
//! The 503 page of a stopped service carries the operator's stop message, HTML-escaped, instead
//! of its default paragraph, so that one is rendered per request. Every other status gets the
//! minimal `<h1>{code} {reason}</h1>` body upstream sends.

use std::borrow::Cow;
use std::sync::OnceLock;

use bytes::Bytes;
use http::StatusCode;

/// The page design shared by every status; `{{…}}` marks what each status fills in.
const LAYOUT: &str = include_str!("layout.html");
/// Where each page takes its paragraph (filled last: it may be a stop message).
const PLACEHOLDER: &str = "{{paragraph}}";

/// A status with a page of its own: its title, illustration caption and default paragraph.
struct Page {
    status: StatusCode,
    title: &'static str,
    caption: &'static str,
    paragraph: &'static str,
}

/// The five pages; the paragraphs are the exact HTML of spec §9.1 (em dashes and the curly
/// apostrophe in "doesn’t" included).
const PAGES: [Page; 5] = [
    Page {
        status: StatusCode::NOT_FOUND,
        title: "404 — Not Found",
        caption: "Page not found",
        paragraph: "<strong>The page you were looking for doesn\u{2019}t exist.</strong> You may \
                    have mistyped the address or the page may have moved. If you are the \
                    application owner check the logs for more information.",
    },
    Page {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        title: "413 — Content Too Large",
        caption: "Content too large",
        paragraph: "<strong>The file or data you are trying to upload exceeds the allowed \
                    size.</strong> Please try again<br> with a smaller file. If you continue to \
                    see this error, contact the application owner.",
    },
    Page {
        status: StatusCode::BAD_GATEWAY,
        title: "502 — Bad Gateway",
        caption: "Bad gateway",
        paragraph: "<strong>The server received an invalid response.</strong> Please try again \
                    later.<br> If you continue to see this error, please contact the application \
                    owner.",
    },
    Page {
        status: StatusCode::SERVICE_UNAVAILABLE,
        title: "503 — Service Temporarily Unavailable",
        caption: "Service unavailable",
        paragraph: "<strong>The service is temporarily unavailable.</strong> It may be \
                    overloaded,<br> or undergoing scheduled maintenance. Please try again later.",
    },
    Page {
        status: StatusCode::GATEWAY_TIMEOUT,
        title: "504 — Gateway Timeout",
        caption: "Gateway timeout",
        paragraph: "<strong>The service did not respond within the allowed time limit.</strong> \
                    It may be overloaded,<br> or there may be a temporary technical issue. Please \
                    try again later.",
    },
];

/// The body for an error response with `status`.
///
/// `message` is a stopped service's stop message: when present and non-empty it replaces the
/// 503 page's paragraph (HTML-escaped); it is ignored for every other status, as upstream only
/// passes it with 503. The five pages are rendered once and then shared without copying.
pub fn render(status: StatusCode, message: Option<&str>) -> Bytes {
    let Some(index) = PAGES.iter().position(|page| page.status == status) else {
        return fallback(status);
    };
    match message {
        Some(message) if !message.is_empty() && status == StatusCode::SERVICE_UNAVAILABLE => {
            Bytes::from(fill(&PAGES[index], &html_escape(message)))
        }
        _ => rendered()[index].clone(),
    }
}

/// The five pages with their default paragraphs, in `PAGES` order.
fn rendered() -> &'static [Bytes; 5] {
    static RENDERED: OnceLock<[Bytes; 5]> = OnceLock::new();
    RENDERED.get_or_init(|| {
        PAGES
            .each_ref()
            .map(|page| Bytes::from(fill(page, page.paragraph)))
    })
}

/// The layout filled in for `page`, with `paragraph` in place of the placeholder.
fn fill(page: &Page, paragraph: &str) -> String {
    LAYOUT
        .replacen("{{title}}", page.title, 1)
        .replace("{{code}}", page.status.as_str())
        .replacen("{{label}}", &page.caption.to_ascii_lowercase(), 1)
        .replacen("{{caption}}", page.caption, 1)
        .replacen(PLACEHOLDER, paragraph, 1)
}

/// `<h1>{code} {reason}</h1>` for statuses without a page of their own.
fn fallback(status: StatusCode) -> Bytes {
    Bytes::from(format!("<h1>{} {}</h1>", status.as_u16(), reason(status)))
}

/// Go's reason phrase for `status` (`net/http.StatusText`), which differs from the `http`
/// crate's in a few places (413, 414, 416); empty for codes Go does not know (such as 499).
fn reason(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Request Entity Too Large",
        414 => "Request URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Requested Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Entity",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "",
    }
}

/// Escapes text for an HTML text context the way Go's `html/template` does: `&` `<` `>` `"`
/// `'` `+` become entities and NUL becomes U+FFFD. Borrows when nothing needs escaping.
pub fn html_escape(text: &str) -> Cow<'_, str> {
    let needs = |c: char| matches!(c, '&' | '<' | '>' | '"' | '\'' | '+' | '\0');
    let Some(first) = text.find(needs) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 16);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '+' => out.push_str("&#43;"),
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(status: StatusCode, message: Option<&str>) -> String {
        String::from_utf8(render(status, message).to_vec()).expect("pages are UTF-8")
    }

    #[test]
    fn pages_have_exact_titles() {
        let titles = [
            (StatusCode::NOT_FOUND, "404 — Not Found"),
            (StatusCode::PAYLOAD_TOO_LARGE, "413 — Content Too Large"),
            (StatusCode::BAD_GATEWAY, "502 — Bad Gateway"),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "503 — Service Temporarily Unavailable",
            ),
            (StatusCode::GATEWAY_TIMEOUT, "504 — Gateway Timeout"),
        ];
        for (status, title) in titles {
            let html = page(status, None);
            assert!(
                html.contains(&format!("<title>{title}</title>")),
                "{status}"
            );
            assert!(
                html.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"),
                "{status}"
            );
            assert!(html.contains(r#"<meta name="robots" content="noindex, nofollow">"#));
            assert!(html.contains(r#"<meta name="viewport""#));
            assert!(html.contains("#0971D5"));
            assert!(html.contains("clamp(1rem, 2.5vw, 2rem)"));
            assert!(html.contains("<svg"));
            assert!(!html.contains(PLACEHOLDER), "{status}");
            // Standalone: nothing loaded from elsewhere.
            assert!(
                !html.contains("src=") && !html.contains("<link"),
                "{status}"
            );
        }
    }

    #[test]
    fn pages_have_exact_paragraphs() {
        let paragraphs = [
            (
                StatusCode::NOT_FOUND,
                "<strong>The page you were looking for doesn’t exist.</strong> You may have mistyped the address or the page may have moved. If you are the application owner check the logs for more information.",
            ),
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "<strong>The file or data you are trying to upload exceeds the allowed size.</strong> Please try again<br> with a smaller file. If you continue to see this error, contact the application owner.",
            ),
            (
                StatusCode::BAD_GATEWAY,
                "<strong>The server received an invalid response.</strong> Please try again later.<br> If you continue to see this error, please contact the application owner.",
            ),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "<strong>The service is temporarily unavailable.</strong> It may be overloaded,<br> or undergoing scheduled maintenance. Please try again later.",
            ),
            (
                StatusCode::GATEWAY_TIMEOUT,
                "<strong>The service did not respond within the allowed time limit.</strong> It may be overloaded,<br> or there may be a temporary technical issue. Please try again later.",
            ),
        ];
        for (status, paragraph) in paragraphs {
            assert!(
                page(status, None).contains(&format!("<p>{paragraph}</p>")),
                "{status}"
            );
        }
    }

    #[test]
    fn stop_message_replaces_the_503_paragraph_escaped() {
        let html = page(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(r#"Back <soon> & "later" it+1"#),
        );
        assert!(html.contains("<p>Back &lt;soon&gt; &amp; &#34;later&#34; it&#43;1</p>"));
        assert!(!html.contains("temporarily unavailable.</strong>"));
        assert!(html.contains("<title>503 — Service Temporarily Unavailable</title>"));
    }

    #[test]
    fn empty_or_misplaced_message_keeps_the_default_page() {
        assert_eq!(
            render(StatusCode::SERVICE_UNAVAILABLE, Some("")),
            render(StatusCode::SERVICE_UNAVAILABLE, None)
        );
        assert_eq!(
            render(StatusCode::GATEWAY_TIMEOUT, Some("ignored")),
            render(StatusCode::GATEWAY_TIMEOUT, None)
        );
    }

    #[test]
    fn fallback_bodies() {
        assert_eq!(
            render(StatusCode::BAD_REQUEST, None),
            "<h1>400 Bad Request</h1>"
        );
        assert_eq!(render(StatusCode::BAD_REQUEST, None).len(), 24);
        assert_eq!(
            render(StatusCode::INTERNAL_SERVER_ERROR, Some("ignored")),
            "<h1>500 Internal Server Error</h1>"
        );
        assert_eq!(
            render(StatusCode::FORBIDDEN, None),
            "<h1>403 Forbidden</h1>"
        );
        assert_eq!(
            render(StatusCode::URI_TOO_LONG, None),
            "<h1>414 Request URI Too Long</h1>"
        );
        let client_closed = StatusCode::from_u16(499).expect("valid status");
        assert_eq!(render(client_closed, None), "<h1>499 </h1>");
    }

    #[test]
    fn escaping_matches_go_html_template() {
        assert_eq!(
            html_escape(r#"Back <soon> & "later" it+1"#),
            "Back &lt;soon&gt; &amp; &#34;later&#34; it&#43;1"
        );
        assert_eq!(html_escape("it's\0ok"), "it&#39;s\u{FFFD}ok");
        assert_eq!(html_escape("plain — text"), "plain — text");
        assert!(matches!(html_escape("plain"), Cow::Borrowed("plain")));
    }
}
