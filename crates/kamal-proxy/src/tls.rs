//! TLS for the HTTPS listener: turning a service's options into its certificate source, the
//! two-step handshake (read the ClientHello, obtain the certificate, then finish), HTTP-01
//! answers and the on-demand checks (spec §10).
//!
//! The control plane calls [`Tls::prepare`] before installing a service (so a bad certificate
//! fails the deploy and leaves the old service serving), [`Tls::install`] once it is installed,
//! and [`Tls::remove`] when it is removed.

use std::path::Path;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use kamal_acme::{
    AcmeSettings, AcmeTarget, BoxFuture, CertSource, CertStore, HostCheck, TlsAcceptor,
};
use kamal_control::{OnDemandUrl, ServiceOptions};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use crate::body::ResponseBody;

/// How long a client may take to send its ClientHello, and then to finish the handshake.
/// Waiting for a new ACME certificate is not counted (it is bounded on its own).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a denying on-demand answer that are logged.
const DENY_BODY_LIMIT: usize = 256;

/// A request sent through a service's own handler chain (the path form of
/// `--tls-on-demand-url`, spec §10.6.2 step 4). Implemented by the application.
pub trait LocalCheck: Send + Sync + 'static {
    /// Sends `GET path_and_query` with `Host: host` through service `service`; returns the
    /// status and up to the first 256 bytes of the body.
    fn get(&self, service: &str, path_and_query: &str, host: &str) -> BoxFuture<(u16, Bytes)>;
}

/// A service's certificate source, checked and ready to install.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `None` for services that do not serve `/` (they never choose certificates, §3.7).
    entry: Option<(Vec<String>, CertSource)>,
}

/// The proxy's TLS state: certificate sources of all services and the listener configs.
#[derive(Debug)]
pub struct Tls {
    store: Arc<CertStore>,
    acceptor: TlsAcceptor,
    local: Arc<OnceLock<Weak<dyn LocalCheckDebug>>>,
}

/// [`LocalCheck`] with `Debug`, so [`Tls`] can derive it.
trait LocalCheckDebug: LocalCheck {}
impl<T: LocalCheck> LocalCheckDebug for T {}

impl std::fmt::Debug for dyn LocalCheckDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalCheck")
    }
}

impl Tls {
    /// TLS with ACME settings from the environment (system roots plus `SSL_CERT_FILE`).
    pub fn new() -> Arc<Self> {
        kamal_acme::install_crypto_provider();
        Self::with_settings(AcmeSettings::from_environment())
    }

    /// TLS with the given ACME settings.
    pub fn with_settings(settings: AcmeSettings) -> Arc<Self> {
        kamal_acme::install_crypto_provider();
        let store = CertStore::new(settings);
        Arc::new(Tls {
            acceptor: TlsAcceptor::new(Arc::clone(&store), HANDSHAKE_TIMEOUT),
            store,
            local: Arc::new(OnceLock::new()),
        })
    }

    /// The certificate store (the HTTP/3 listener resolves certificates from it too).
    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    /// Connects the path form of on-demand checks to the application (set once, at start-up).
    pub fn set_local_check<L: LocalCheck>(&self, local: &Arc<L>) {
        let weak: Weak<dyn LocalCheckDebug> = Arc::downgrade(local) as Weak<dyn LocalCheckDebug>;
        let _ = self.local.set(weak);
    }

    /// Checks a service's TLS options and builds its certificate source. Errors are the deploy
    /// errors upstream gives: `unable to load certificate`, `automatic TLS does not support
    /// wildcards`.
    pub fn prepare(&self, service: &str, options: &ServiceOptions) -> Result<Prepared, String> {
        if !options.serves_root_path() {
            return Ok(Prepared { entry: None });
        }
        let hosts = options.hosts.clone();
        if !options.tls_enabled {
            return Ok(Prepared {
                entry: Some((hosts, CertSource::Off)),
            });
        }
        if !options.tls_certificate_path.is_empty() {
            let key = kamal_acme::load_certified_key(
                Path::new(&options.tls_certificate_path),
                Path::new(&options.tls_private_key_path),
            )
            .map_err(|error| {
                tracing::error!(error = %error, "Error loading TLS certificate");
                "unable to load certificate".to_owned()
            })?;
            return Ok(Prepared {
                entry: Some((hosts, CertSource::Static(key))),
            });
        }
        let directory_url = if options.acme_directory.is_empty() {
            kamal_acme::LETS_ENCRYPT_PRODUCTION.to_owned()
        } else {
            options.acme_directory.clone()
        };
        // The client always sends a cache path; an empty one (hand-written state) gets the
        // default rather than a directory relative to wherever the server was started.
        let cache_root = if options.acme_cache_path.is_empty() {
            kamal_control::paths::default_acme_cache_path(&kamal_control::paths::ProcessEnv)
        } else {
            options.acme_cache_path.clone().into()
        };
        let target = AcmeTarget {
            directory_url,
            cache_dir: kamal_acme::cache_dir(&cache_root, &options.acme_directory),
        };
        if !options.tls_on_demand_url.is_empty() {
            let url = kamal_control::parse_on_demand_url(&options.tls_on_demand_url)
                .map_err(|e| e.to_string())?;
            let check = Arc::new(OnDemandCheck {
                url,
                service: service.to_owned(),
                local: Arc::clone(&self.local),
            });
            return Ok(Prepared {
                entry: Some((hosts, self.store.on_demand_source(&target, check))),
            });
        }
        let source = self
            .store
            .acme_source(&hosts, &target)
            .map_err(|e| e.to_string())?;
        Ok(Prepared {
            entry: Some((hosts, source)),
        })
    }

    /// Makes a prepared source live for `service` (after the service itself is installed).
    pub fn install(&self, service: &str, prepared: Prepared) {
        match prepared.entry {
            Some((hosts, source)) => self.store.set_service(service, &hosts, source),
            None => self.store.remove_service(service),
        }
    }

    /// Forgets a removed service's certificates.
    pub fn remove(&self, service: &str) {
        self.store.remove_service(service);
    }

    /// The HTTP-01 answer for a request to `/.well-known/acme-challenge/…` of an ACME service
    /// (spec §10.4), or `None` to serve the request normally.
    pub fn http01<B>(&self, req: &Request<B>) -> Option<Response<ResponseBody>> {
        let path = req.uri().path();
        if !path.starts_with("/.well-known/acme-challenge/") {
            return None;
        }
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok())
            .unwrap_or("");
        let answer = self.store.http01(host, path)?;
        let (status, body) = answer.status_and_body();
        let mut resp = Response::new(ResponseBody::full(body));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND);
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if status != 200 {
            headers.insert(
                "x-content-type-options",
                HeaderValue::from_static("nosniff"),
            );
        }
        Some(resp)
    }

    /// Runs the server side of a TLS handshake. `Ok(None)` for a completed TLS-ALPN-01
    /// challenge handshake (nothing to serve). The error text is for the debug log.
    pub async fn accept<IO>(&self, io: IO) -> Result<Option<TlsStream<IO>>, String>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.acceptor.accept(io).await
    }
}

/// The on-demand check of one service (spec §10.6.2).
struct OnDemandCheck {
    url: OnDemandUrl,
    service: String,
    local: Arc<OnceLock<Weak<dyn LocalCheckDebug>>>,
}

impl std::fmt::Debug for OnDemandCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDemandCheck")
            .field("url", &self.url)
            .field("service", &self.service)
            .finish()
    }
}

impl HostCheck for OnDemandCheck {
    fn check(&self, host: &str) -> BoxFuture<Result<(), String>> {
        let host = host.to_owned();
        match &self.url {
            OnDemandUrl::External { url } => {
                let url = with_host_param(url, &host);
                Box::pin(async move {
                    let (status, body) = external_get(&url)
                        .await
                        .map_err(|e| format!("Get {:?}: {e}", url))?;
                    verdict(&host, status, &body)
                })
            }
            OnDemandUrl::Local { path_and_query } => {
                let target = with_host_param(path_and_query, &host);
                let local = self.local.get().and_then(Weak::upgrade);
                let service = self.service.clone();
                Box::pin(async move {
                    let Some(local) = local else {
                        return Err(format!(
                            "{host} is not allowed to get a certificate (local check unavailable)"
                        ));
                    };
                    let (status, body) = local.get(&service, &target, &host).await;
                    verdict(&host, status, &body)
                })
            }
        }
    }
}

/// 200 approves; anything else denies with upstream's log line and message.
fn verdict(host: &str, status: u16, body: &[u8]) -> Result<(), String> {
    if status == 200 {
        return Ok(());
    }
    let body = &body[..body.len().min(DENY_BODY_LIMIT)];
    let text = String::from_utf8_lossy(body);
    tracing::warn!(host = %host, status = status, body = %text, "TLS on-demand check denied host");
    Err(format!(
        "{host} is not allowed to get a certificate (status: {status}, body: {text:?})"
    ))
}

/// Sets `host=<host>` in the URL's query and re-encodes the query sorted by key with form
/// encoding, as Go's `url.Values.Encode` does.
fn with_host_param(url: &str, host: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let (base, query) = base.split_once('?').unwrap_or((base, ""));
    let mut pairs: Vec<(String, String)> = query
        .split(['&', ';'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .filter(|(k, _)| k != "host")
        .collect();
    pairs.push(("host".to_owned(), host.to_owned()));
    // Stable sort: values of one key keep their order.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let encoded: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect();
    let mut out = format!("{base}?{}", encoded.join("&"));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

fn form_decode(s: &str) -> String {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8_lossy()
        .into_owned()
}

/// Go's `url.QueryEscape`: everything but letters, digits and `-_.~` is escaped; space is `+`.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One `GET` without following redirects, bounded by the on-demand timeout; returns the status
/// and at most the first 256 bytes of the body.
async fn external_get(url: &str) -> Result<(u16, Bytes), String> {
    tokio::time::timeout(kamal_acme::CHECK_TIMEOUT, external_get_inner(url))
        .await
        .map_err(|_| {
            "context deadline exceeded (Client.Timeout exceeded while awaiting headers)".to_owned()
        })?
}

async fn external_get_inner(url: &str) -> Result<(u16, Bytes), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or("missing host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| host.clone());
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = tokio::net::TcpStream::connect((bare_host.as_str(), port))
        .await
        .map_err(|e| crate::serve::io_message(&e))?;
    let request = Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "Go-http-client/1.1")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    if https {
        let config = rustls::ClientConfig::builder_with_provider(kamal_acme::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(kamal_acme::acme_roots())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(bare_host).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        send(tls, request).await
    } else {
        send(tcp, request).await
    }
}

async fn send<IO>(
    io: IO,
    request: Request<http_body_util::Empty<Bytes>>,
) -> Result<(u16, Bytes), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let result = async {
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut collected = Vec::new();
        while collected.len() < DENY_BODY_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        collected.extend_from_slice(data);
                    }
                }
                _ => break,
            }
        }
        collected.truncate(DENY_BODY_LIMIT);
        Ok((status, Bytes::from(collected)))
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parameter_is_set_and_the_query_sorted_like_go() {
        assert_eq!(
            with_host_param("http://127.0.0.1:28006/check?token=a b&z=1", "foo.test"),
            "http://127.0.0.1:28006/check?host=foo.test&token=a+b&z=1"
        );
        assert_eq!(
            with_host_param("/allow-host", "test.example.com:8080"),
            "/allow-host?host=test.example.com%3A8080"
        );
        assert_eq!(
            with_host_param("/a?host=old&b=2", "new.test"),
            "/a?b=2&host=new.test"
        );
    }

    #[test]
    fn denials_quote_the_body_like_go() {
        let err = verdict("foo.test", 403, b"nope \"quoted\"\n").unwrap_err();
        assert_eq!(
            err,
            "foo.test is not allowed to get a certificate (status: 403, body: \"nope \\\"quoted\\\"\\n\")"
        );
        assert!(verdict("foo.test", 200, b"").is_ok());
    }

    /// A one-shot HTTP server answering `reply`; returns its port and the request it saw.
    async fn one_shot(reply: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf[len..]).await.unwrap();
                assert!(n > 0, "request head incomplete");
                len += n;
            }
            stream.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..len]).into_owned()
        });
        (port, seen)
    }

    fn external(port: u16, path: &str) -> OnDemandCheck {
        OnDemandCheck {
            url: OnDemandUrl::External {
                url: format!("http://127.0.0.1:{port}{path}"),
            },
            service: "s".into(),
            local: Arc::new(OnceLock::new()),
        }
    }

    #[tokio::test]
    async fn external_checks_ask_the_url_with_the_host_parameter() {
        let (port, seen) =
            one_shot("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
        let check = external(port, "/allow?token=a b");
        assert_eq!(check.check("foo.test").await, Ok(()));
        let seen = seen.await.unwrap();
        assert!(
            seen.starts_with("GET /allow?host=foo.test&token=a+b HTTP/1.1\r\n"),
            "{seen}"
        );
        // Host is the URL's own host, not the checked one (spec §10.6.2).
        assert!(
            seen.to_ascii_lowercase()
                .contains(&format!("host: 127.0.0.1:{port}\r\n")),
            "{seen}"
        );
        assert!(seen.contains("Go-http-client/1.1"), "{seen}");
    }

    #[tokio::test]
    async fn redirects_and_errors_deny() {
        let (port, _seen) = one_shot(
            "HTTP/1.1 302 Found\r\nlocation: /ok\r\ncontent-length: 4\r\nconnection: close\r\n\r\nmove",
        )
        .await;
        let err = external(port, "/allow")
            .check("foo.test")
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "foo.test is not allowed to get a certificate (status: 302, body: \"move\")"
        );
        // Nothing listening: a transport error denies.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(external(closed, "/allow").check("foo.test").await.is_err());
    }

    fn options(hosts: &[&str]) -> ServiceOptions {
        ServiceOptions {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            tls_enabled: true,
            acme_cache_path: "/tmp/unused".into(),
            ..ServiceOptions::default()
        }
    }

    #[test]
    fn deploy_errors_are_upstreams() {
        let tls = Tls::new();
        let err = tls.prepare("w", &options(&["*.w.test"])).unwrap_err();
        assert_eq!(err, "automatic TLS does not support wildcards");
        let mut custom = options(&["a.test"]);
        custom.tls_certificate_path = "/nonexistent/cert.pem".into();
        custom.tls_private_key_path = "/nonexistent/key.pem".into();
        assert_eq!(
            tls.prepare("a", &custom).unwrap_err(),
            "unable to load certificate"
        );
        let mut non_root = options(&["a.test"]);
        non_root.path_prefixes = vec!["/api".into()];
        assert!(tls.prepare("api", &non_root).unwrap().entry.is_none());
    }

    #[tokio::test]
    async fn http01_answers_only_for_acme_services() {
        let tls = Tls::new();
        let prepared = tls.prepare("a", &options(&["a.test"])).unwrap();
        tls.install("a", prepared);
        let req = Request::get("/.well-known/acme-challenge/unknown")
            .header("host", "a.test")
            .body(())
            .unwrap();
        let resp = tls.http01(&req).expect("answered by ACME");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let req = Request::get("/.well-known/acme-challenge/x")
            .header("host", "other.test")
            .body(())
            .unwrap();
        assert!(tls.http01(&req).is_none());
        tls.remove("a");
        let req = Request::get("/.well-known/acme-challenge/x")
            .header("host", "a.test")
            .body(())
            .unwrap();
        assert!(tls.http01(&req).is_none());
    }
}
