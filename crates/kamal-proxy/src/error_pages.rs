//! Custom error pages (`--error-pages DIR`, spec §9.2).
//!
//! Every `*.html` file directly inside the directory is read once, at deploy time, and parsed
//! as a template named by its file name; the page for status N is `N.html`. The templates use
//! the subset of Go's `html/template` syntax that error pages need, implemented here in a few
//! hundred lines rather than with a template crate: no maintained Rust crate implements Go's
//! template syntax *and* its auto-escaping, and Jinja-style engines would need the files
//! rewritten. Supported:
//!
//! * literal text (HTML), `{{/* comments */}}`, and the `{{-` / `-}}` whitespace trim markers;
//! * `{{ .Message }}`: the stop message of a stopped service, HTML-escaped as Go escapes text;
//!   empty for every other error (the data is nil there, as upstream);
//! * `{{ if COND }}…{{ else if COND }}…{{ else }}…{{ end }}` with COND `.Message`, `.` or
//!   `not` followed by either;
//! * `{{ template "x.html" . }}` (or without the `.`, which passes no data), and
//!   `{{ define "x" }}…{{ end }}` to declare extra templates inside a file.
//!
//! Anything else fails the load, so a deploy never silently serves a half-understood page.
//! Pages are rendered into a buffer before anything is sent (spec §13.3 item 4): a template
//! that fails while rendering yields no page, and the built-in one is used instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;

/// The message a deploy fails with when the pages cannot be loaded (upstream's wording).
pub const LOAD_ERROR: &str = "unable to load error pages";

/// How deeply `{{ template }}` may nest; deeper means a template includes itself.
const MAX_DEPTH: usize = 32;

/// The custom error pages of one service, parsed.
#[derive(Debug)]
pub struct ErrorPages {
    dir: PathBuf,
    templates: HashMap<String, Vec<Node>>,
}

impl ErrorPages {
    /// Reads and parses every `*.html` file directly inside `dir`.
    ///
    /// Fails with [`LOAD_ERROR`] if the directory cannot be read, holds no `*.html` file, or a
    /// file cannot be read or parsed; the cause is logged (ERROR `Failed to parse error page
    /// templates`).
    pub fn load(dir: impl AsRef<Path>) -> Result<ErrorPages, String> {
        let dir = dir.as_ref();
        Self::parse_dir(dir).map_err(|error| {
            tracing::error!(error = %error, "Failed to parse error page templates");
            LOAD_ERROR.to_owned()
        })
    }

    fn parse_dir(dir: &Path) -> Result<ErrorPages, String> {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut templates = HashMap::new();
        let mut files = 0;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str().filter(|n| n.ends_with(".html")) else {
                continue;
            };
            let path = entry.path();
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let parsed = parse(name, &text)?;
            for (defined, nodes) in parsed.defines {
                templates.insert(defined, nodes);
            }
            templates.insert(name.to_owned(), parsed.root);
            files += 1;
        }
        if files == 0 {
            return Err(format!("no *.html files in {}", dir.display()));
        }
        Ok(ErrorPages {
            dir: dir.to_path_buf(),
            templates,
        })
    }

    /// The directory the pages were loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The page for `status`, or `None` when there is no `N.html` or rendering failed (ERROR
    /// `Failed to render error page template`). `message` is a stopped service's stop message:
    /// `Some` makes `.Message` available (even when empty), `None` means no data.
    pub fn render(&self, status: StatusCode, message: Option<&str>) -> Option<Bytes> {
        let name = format!("{}.html", status.as_u16());
        let nodes = self.templates.get(&name)?;
        let mut out = Vec::with_capacity(4096);
        match self.render_nodes(nodes, message, &mut out, 0) {
            Ok(()) => Some(Bytes::from(out)),
            Err(error) => {
                tracing::error!(name = %name, error = %error, "Failed to render error page template");
                None
            }
        }
    }

    fn render_nodes(
        &self,
        nodes: &[Node],
        data: Option<&str>,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<(), String> {
        for node in nodes {
            match node {
                Node::Text(text) => out.extend_from_slice(text.as_bytes()),
                Node::Message => escape_into(data.unwrap_or(""), out),
                Node::If {
                    branches,
                    otherwise,
                } => {
                    let taken = branches.iter().find(|(cond, _)| cond.eval(data));
                    let body = taken.map_or(otherwise.as_slice(), |(_, body)| body.as_slice());
                    self.render_nodes(body, data, out, depth)?;
                }
                Node::Include { name, pass_data } => {
                    if depth >= MAX_DEPTH {
                        return Err(format!("exceeded maximum template depth ({MAX_DEPTH})"));
                    }
                    let included = self
                        .templates
                        .get(name)
                        .ok_or_else(|| format!("no such template {name:?}"))?;
                    let data = if *pass_data { data } else { None };
                    self.render_nodes(included, data, out, depth + 1)?;
                }
            }
        }
        Ok(())
    }
}

/// A custom page for `status` if `pages` has one, otherwise the built-in page: the response
/// the service sends for an error it generates itself.
pub fn page(
    pages: Option<&ErrorPages>,
    status: StatusCode,
    message: Option<&str>,
) -> Response<ResponseBody> {
    let Some(body) = pages.and_then(|p| p.render(status, message)) else {
        return crate::rescue::page(status, message);
    };
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// Escapes `text` for HTML text and quoted attributes, as Go's `html/template` does.
fn escape_into(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '>' => out.extend_from_slice(b"&gt;"),
            '"' => out.extend_from_slice(b"&#34;"),
            '\'' => out.extend_from_slice(b"&#39;"),
            '+' => out.extend_from_slice(b"&#43;"),
            '\0' => out.extend_from_slice("\u{FFFD}".as_bytes()),
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

/// One piece of a parsed template.
#[derive(Debug)]
enum Node {
    Text(String),
    Message,
    If {
        branches: Vec<(Cond, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
    Include {
        name: String,
        pass_data: bool,
    },
}

/// An `if` condition.
#[derive(Debug)]
enum Cond {
    /// `.Message`: a non-empty message.
    Message,
    /// `.`: there is data at all.
    Data,
    Not(Box<Cond>),
}

impl Cond {
    fn eval(&self, data: Option<&str>) -> bool {
        match self {
            Cond::Message => data.is_some_and(|m| !m.is_empty()),
            Cond::Data => data.is_some(),
            Cond::Not(inner) => !inner.eval(data),
        }
    }

    fn parse(text: &str) -> Option<Cond> {
        match text.trim() {
            ".Message" => Some(Cond::Message),
            "." => Some(Cond::Data),
            other => {
                let rest = other.strip_prefix("not")?;
                if !rest.starts_with(char::is_whitespace) {
                    return None;
                }
                Some(Cond::Not(Box::new(Cond::parse(rest)?)))
            }
        }
    }
}

/// A lexed piece of template source: text, or the inside of `{{ }}` with its line number.
#[derive(Debug)]
enum Token<'a> {
    Text(String),
    Action(&'a str, usize),
}

/// Splits `src` into text and actions, applying the `{{-` / `-}}` trim markers.
fn lex<'a>(name: &str, src: &'a str) -> Result<Vec<Token<'a>>, String> {
    let mut tokens = Vec::new();
    let mut rest = src;
    let mut trim_next_text = false;
    let line_of = |s: &str| src[..src.len() - s.len()].matches('\n').count() + 1;
    loop {
        let Some(open) = rest.find("{{") else {
            push_text(&mut tokens, rest, trim_next_text, false);
            return Ok(tokens);
        };
        let after_open = &rest[open + 2..];
        let trim_before = after_open.starts_with("- ")
            || after_open.starts_with("-\t")
            || after_open.starts_with("-\n")
            || after_open.starts_with("-\r");
        push_text(&mut tokens, &rest[..open], trim_next_text, trim_before);
        let line = line_of(rest) + rest[..open].matches('\n').count();
        let inner_start = if trim_before { 1 } else { 0 };
        let Some(close) = find_close(after_open) else {
            return Err(format!("template: {name}:{line}: unclosed action"));
        };
        let mut inner = &after_open[inner_start..close];
        // ` -}}` trims the text that follows; the marker must come after a space.
        trim_next_text = inner.len() >= 2
            && inner.ends_with('-')
            && inner[..inner.len() - 1].ends_with(|c: char| c.is_ascii_whitespace());
        if trim_next_text {
            inner = &inner[..inner.len() - 1];
        }
        tokens.push(Token::Action(inner.trim(), line));
        rest = &after_open[close + 2..];
    }
}

/// The offset of the `}}` closing an action, skipping over quoted strings and comments.
fn find_close(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'`' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = s[i + 2..].find("*/")?;
                i += 2 + end + 1;
            }
            b'}' if bytes.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn push_text(tokens: &mut Vec<Token<'_>>, text: &str, trim_start: bool, trim_end: bool) {
    let mut text = text;
    if trim_start {
        text = text.trim_start_matches(|c: char| c.is_ascii_whitespace());
    }
    if trim_end {
        text = text.trim_end_matches(|c: char| c.is_ascii_whitespace());
    }
    if !text.is_empty() {
        tokens.push(Token::Text(text.to_owned()));
    }
}

/// A parsed file: its own body and the templates it `define`s.
struct Parsed {
    root: Vec<Node>,
    defines: Vec<(String, Vec<Node>)>,
}

/// Parses template `name` from `src`.
fn parse(name: &str, src: &str) -> Result<Parsed, String> {
    let tokens = lex(name, src)?;
    let mut parser = Parser {
        name,
        tokens: tokens.into_iter(),
        defines: Vec::new(),
    };
    let (root, end) = parser.block(false)?;
    match end {
        Stop::Eof => Ok(Parsed {
            root,
            defines: parser.defines,
        }),
        Stop::End(line) | Stop::Else(_, line) => Err(format!(
            "template: {name}:{line}: unexpected {{{{end}}}} or {{{{else}}}}"
        )),
    }
}

/// What ended a block.
enum Stop {
    Eof,
    End(usize),
    /// `else`, with the condition of an `else if`.
    Else(Option<Cond>, usize),
}

struct Parser<'n, 'a> {
    name: &'n str,
    tokens: std::vec::IntoIter<Token<'a>>,
    defines: Vec<(String, Vec<Node>)>,
}

impl Parser<'_, '_> {
    fn error(&self, line: usize, what: impl std::fmt::Display) -> String {
        format!("template: {}:{line}: {what}", self.name)
    }

    /// Parses nodes until the end of input (top level) or an `end` / `else` (nested).
    fn block(&mut self, nested: bool) -> Result<(Vec<Node>, Stop), String> {
        let mut nodes = Vec::new();
        while let Some(token) = self.tokens.next() {
            let (action, line) = match token {
                Token::Text(text) => {
                    nodes.push(Node::Text(text));
                    continue;
                }
                Token::Action(action, line) => (action, line),
            };
            let (keyword, args) = match action.split_once(char::is_whitespace) {
                Some((k, a)) => (k, a.trim()),
                None => (action, ""),
            };
            match keyword {
                _ if action.starts_with("/*") && action.ends_with("*/") => {}
                ".Message" if args.is_empty() => nodes.push(Node::Message),
                "if" => nodes.push(self.if_node(args, line)?),
                "else" if nested => {
                    let cond = match args.strip_prefix("if") {
                        Some(cond) if cond.starts_with(char::is_whitespace) => {
                            Some(Cond::parse(cond).ok_or_else(|| {
                                self.error(line, format!("unsupported condition {cond:?}"))
                            })?)
                        }
                        _ if args.is_empty() => None,
                        _ => return Err(self.error(line, format!("unsupported {action:?}"))),
                    };
                    return Ok((nodes, Stop::Else(cond, line)));
                }
                "end" if nested && args.is_empty() => return Ok((nodes, Stop::End(line))),
                "template" => nodes.push(self.include(args, line)?),
                "define" if !nested => {
                    let name = quoted(args)
                        .ok_or_else(|| self.error(line, "define needs a quoted name"))?;
                    match self.block(true)? {
                        (body, Stop::End(_)) => self.defines.push((name, body)),
                        _ => return Err(self.error(line, "unterminated define")),
                    }
                }
                _ => return Err(self.error(line, format!("unsupported action {action:?}"))),
            }
        }
        if nested {
            return Err(format!("template: {}: unexpected EOF", self.name));
        }
        Ok((nodes, Stop::Eof))
    }

    fn if_node(&mut self, cond: &str, line: usize) -> Result<Node, String> {
        let mut cond = Cond::parse(cond)
            .ok_or_else(|| self.error(line, format!("unsupported condition {cond:?}")))?;
        let mut branches = Vec::new();
        loop {
            let (body, end) = self.block(true)?;
            match end {
                Stop::End(_) => {
                    branches.push((cond, body));
                    return Ok(Node::If {
                        branches,
                        otherwise: Vec::new(),
                    });
                }
                Stop::Else(Some(next), _) => {
                    branches.push((cond, body));
                    cond = next;
                }
                Stop::Else(None, line) => {
                    branches.push((cond, body));
                    let (otherwise, end) = self.block(true)?;
                    return match end {
                        Stop::End(_) => Ok(Node::If {
                            branches,
                            otherwise,
                        }),
                        _ => Err(self.error(line, "expected {{end}} after {{else}}")),
                    };
                }
                Stop::Eof => return Err(self.error(line, "unterminated if")),
            }
        }
    }

    fn include(&self, args: &str, line: usize) -> Result<Node, String> {
        let (name, rest) =
            split_quoted(args).ok_or_else(|| self.error(line, "template needs a quoted name"))?;
        let pass_data = match rest.trim() {
            "" => false,
            "." => true,
            other => {
                return Err(self.error(line, format!("unsupported template argument {other:?}")))
            }
        };
        Ok(Node::Include { name, pass_data })
    }
}

/// A whole argument that is one quoted string.
fn quoted(args: &str) -> Option<String> {
    match split_quoted(args)? {
        (name, rest) if rest.trim().is_empty() => Some(name),
        _ => None,
    }
}

/// A leading `"string"` (with `\"` and `\\` escapes) or `` `raw string` ``, and what follows.
fn split_quoted(args: &str) -> Option<(String, &str)> {
    if let Some(raw) = args.strip_prefix('`') {
        let end = raw.find('`')?;
        return Some((raw[..end].to_owned(), &raw[end + 1..]));
    }
    let body = args.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &body[i + 1..])),
            '\\' => out.push(chars.next()?.1),
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn text(bytes: Option<Bytes>) -> String {
        String::from_utf8(bytes.expect("a page").to_vec()).unwrap()
    }

    const STOPPED: &str = "<p>{{ if .Message }}{{ .Message }}{{ else }}Back soon{{ end }}</p>";

    #[test]
    fn renders_pages_by_status_with_and_without_message() {
        let dir = dir_with(&[("503.html", STOPPED), ("404.html", "<h1>Lost</h1>")]);
        let pages = ErrorPages::load(dir.path()).unwrap();
        assert_eq!(pages.dir(), dir.path());
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            text(pages.render(unavailable, Some("Down & out <b>"))),
            "<p>Down &amp; out &lt;b&gt;</p>"
        );
        assert_eq!(text(pages.render(unavailable, None)), "<p>Back soon</p>");
        assert_eq!(
            text(pages.render(unavailable, Some(""))),
            "<p>Back soon</p>"
        );
        assert_eq!(
            text(pages.render(StatusCode::NOT_FOUND, None)),
            "<h1>Lost</h1>"
        );
        assert!(pages.render(StatusCode::BAD_GATEWAY, None).is_none());
    }

    #[test]
    fn message_is_escaped_as_go_does() {
        let mut out = Vec::new();
        escape_into("a&b<c>d\"e'f+g\0h é", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a&amp;b&lt;c&gt;d&#34;e&#39;f&#43;g\u{FFFD}h é"
        );
    }

    #[test]
    fn templates_include_each_other_and_define_blocks() {
        let dir = dir_with(&[
            (
                "layout.html",
                "{{ define \"head\" }}<head>{{ .Message }}</head>{{ end }}[{{ .Message }}]",
            ),
            (
                "502.html",
                "{{template \"head\" .}}<body>{{ template \"layout.html\" }}</body>",
            ),
            ("504.html", "{{ template `head` . }}"),
        ]);
        let pages = ErrorPages::load(dir.path()).unwrap();
        // Without `.` the included template gets no data.
        assert_eq!(
            text(pages.render(StatusCode::BAD_GATEWAY, Some("m"))),
            "<head>m</head><body>[]</body>"
        );
        assert_eq!(
            text(pages.render(StatusCode::GATEWAY_TIMEOUT, Some("x"))),
            "<head>x</head>"
        );
    }

    #[test]
    fn else_if_not_comments_and_trim_markers() {
        let src = "<a>  {{- /* a comment */ -}}  \n {{ if not .Message -}} none {{- else if . }}some:{{ .Message }}{{ end }}</a>";
        let dir = dir_with(&[("503.html", src)]);
        let pages = ErrorPages::load(dir.path()).unwrap();
        let status = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(text(pages.render(status, None)), "<a>none</a>");
        assert_eq!(text(pages.render(status, Some("x"))), "<a>some:x</a>");
    }

    #[test]
    fn broken_directories_fail_with_upstreams_message() {
        let missing = Path::new("/nonexistent/kamal-proxy-error-pages");
        assert_eq!(ErrorPages::load(missing).unwrap_err(), LOAD_ERROR);
        let empty = dir_with(&[("readme.txt", "not a page")]);
        assert_eq!(ErrorPages::load(empty.path()).unwrap_err(), LOAD_ERROR);
        for broken in [
            "{{ .Message ",
            "{{ if .Message }}open",
            "{{ end }}",
            "{{ range .Items }}{{ end }}",
            "{{ if .Message }}a{{ else }}b{{ else }}c{{ end }}",
            "{{ template x.html }}",
        ] {
            let dir = dir_with(&[("503.html", broken)]);
            assert!(
                ErrorPages::parse_dir(dir.path()).is_err(),
                "{broken:?} should not parse"
            );
            assert_eq!(ErrorPages::load(dir.path()).unwrap_err(), LOAD_ERROR);
        }
    }

    #[test]
    fn failing_render_falls_back_to_the_built_in_page() {
        let dir = dir_with(&[
            ("502.html", "partial {{ template \"missing.html\" }}"),
            ("504.html", "{{ template \"504.html\" }}"),
        ]);
        let pages = ErrorPages::load(dir.path()).unwrap();
        assert!(pages.render(StatusCode::BAD_GATEWAY, None).is_none());
        assert!(pages.render(StatusCode::GATEWAY_TIMEOUT, None).is_none());

        // Nothing of the failed template reaches the client: the whole built-in page is sent.
        let resp = page(Some(&pages), StatusCode::BAD_GATEWAY, None);
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            resp.headers()[CONTENT_TYPE],
            HeaderValue::from_static("text/html; charset=utf-8")
        );
    }

    #[tokio::test]
    async fn page_prefers_the_custom_template() {
        use http_body_util::BodyExt;
        let dir = dir_with(&[("503.html", STOPPED)]);
        let pages = ErrorPages::load(dir.path()).unwrap();
        let resp = page(Some(&pages), StatusCode::SERVICE_UNAVAILABLE, Some("bye"));
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            resp.headers()[CONTENT_TYPE],
            HeaderValue::from_static("text/html; charset=utf-8")
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "<p>bye</p>");

        let builtin = page(None, StatusCode::SERVICE_UNAVAILABLE, Some("bye"));
        let body = builtin.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("bye"));
        assert!(body.len() > 1000, "the built-in page");
    }
}
