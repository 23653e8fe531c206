//! TLS test helpers: a throw-away certificate authority and an HTTPS client that reports what
//! the handshake negotiated (ALPN, HTTP version, the server's leaf certificate).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Upper bound for one HTTPS exchange in tests.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// A certificate authority made for one test.
pub struct TestCa {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

/// A leaf certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The leaf certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The leaf in DER, to compare with what a server presented.
    pub cert_der: Vec<u8>,
}

impl IssuedCert {
    /// Writes `<name>.crt` and `<name>.key` into `dir`; returns their paths.
    ///
    /// # Panics
    /// If the files cannot be written.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write certificate");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

impl TestCa {
    /// A new CA with a P-256 key.
    ///
    /// # Panics
    /// If rcgen cannot generate the key or certificate.
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kamal-proxy test CA");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            ca: cert,
            ca_key: key,
        }
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A root store trusting only this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert_der.clone())
            .expect("CA is a valid root");
        roots
    }

    /// A leaf for `names` (DNS names, or IP addresses such as `127.0.0.1`).
    ///
    /// # Panics
    /// If rcgen cannot generate the key or certificate.
    pub fn issue(&self, names: &[&str]) -> IssuedCert {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).expect("leaf params");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("leaf certificate");
        IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// What an HTTPS exchange returned.
#[derive(Debug, Clone)]
pub struct TlsReply {
    /// Response status.
    pub status: u16,
    /// Response body.
    pub body: Bytes,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The HTTP version of the response.
    pub version: http::Version,
    /// The server's leaf certificate (DER).
    pub leaf: Vec<u8>,
}

impl TlsReply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How the client checks the server's certificate.
#[derive(Debug, Clone)]
pub enum Verify {
    /// Against these roots, for the SNI name.
    Roots(Arc<RootCertStore>),
    /// Not at all (the test compares the leaf itself).
    Nothing,
}

/// One HTTPS request. `sni = None` sends no server name. `alpn` lists the protocols offered,
/// e.g. `[b"h2", b"http/1.1"]`; HTTP/2 is spoken when `h2` is negotiated.
pub async fn https_get(
    addr: SocketAddr,
    sni: Option<&str>,
    host: &str,
    path: &str,
    verify: Verify,
    alpn: &[&[u8]],
) -> Result<TlsReply, String> {
    tokio::time::timeout(
        EXCHANGE_TIMEOUT,
        exchange(addr, sni, host, path, verify, alpn),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
}

/// Only the handshake: returns the leaf certificate and the negotiated ALPN.
pub async fn handshake(
    addr: SocketAddr,
    sni: Option<&str>,
    verify: Verify,
    alpn: &[&[u8]],
) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    let stream = tokio::time::timeout(EXCHANGE_TIMEOUT, connect(addr, sni, verify, alpn))
        .await
        .map_err(|_| "timed out".to_owned())??;
    let (_, conn) = stream.get_ref();
    Ok((leaf_of(conn), conn.alpn_protocol().map(<[u8]>::to_vec)))
}

fn leaf_of(conn: &rustls::ClientConnection) -> Vec<u8> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default()
}

async fn connect(
    addr: SocketAddr,
    sni: Option<&str>,
    verify: Verify,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = match verify {
        Verify::Roots(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // An IP address as the server name makes rustls send no SNI.
    let name = match sni {
        Some(name) => ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

async fn exchange(
    addr: SocketAddr,
    sni: Option<&str>,
    host: &str,
    path: &str,
    verify: Verify,
    alpn: &[&[u8]],
) -> Result<TlsReply, String> {
    let stream = connect(addr, sni, verify, alpn).await?;
    let (_, conn) = stream.get_ref();
    let leaf = leaf_of(conn);
    let negotiated = conn.alpn_protocol().map(<[u8]>::to_vec);
    let io = hyper_util::rt::TokioIo::new(stream);
    let response = if negotiated.as_deref() == Some(b"h2") {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(format!("https://{host}{path}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, host)
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = response.status().as_u16();
    let version = response.version();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(TlsReply {
        status,
        body,
        alpn: negotiated,
        version,
        leaf,
    })
}

/// Accepts any server certificate: for tests that compare the presented leaf themselves.
#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
