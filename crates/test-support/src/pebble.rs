//! Pebble, Let's Encrypt's test ACME server, started on loopback for one test with real
//! challenge validation. Validation connects to the ports given (the proxy's HTTP and HTTPS
//! ports) and resolves every name to 127.0.0.1 through a [`LoopbackDns`].

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dns::LoopbackDns;
use crate::tls::TestCa;

/// How long pebble may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running pebble; killed when dropped.
#[derive(Debug)]
pub struct Pebble {
    child: Child,
    dir: tempfile::TempDir,
    ca: TestCa,
    addr: SocketAddr,
    management: SocketAddr,
    _dns: LoopbackDns,
}

/// Whether the pebble binary is installed (`.ci/run` installs Debian's package).
pub fn available() -> bool {
    Command::new("pebble")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn free_port() -> u16 {
    // Pebble cannot report a port it chose itself, so pick one and hand it over.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`.
    ///
    /// # Panics
    /// If pebble cannot be started or does not listen within 20 s.
    pub fn start(http_port: u16, tls_port: u16) -> Pebble {
        let dir = tempfile::tempdir().expect("pebble dir");
        let ca = TestCa::new();
        let (cert, key) = ca
            .issue(&["localhost", "127.0.0.1"])
            .write(dir.path(), "pebble");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let management: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": addr.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).expect("write pebble config");
        let dns = LoopbackDns::start();
        let log = std::fs::File::create(dir.path().join("pebble.log")).expect("pebble log");
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(dns.addr().to_string())
            // Validate at once, never reject a good nonce, never reuse an authorisation: each
            // test sees exactly the challenge it set up.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("pebble log"))
            .stderr(log)
            .spawn()
            .expect("spawn pebble (is the pebble package installed?)");
        let pebble = Pebble {
            child,
            dir,
            ca,
            addr,
            management,
            _dns: dns,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(pebble.addr).is_err()
            || TcpStream::connect(pebble.management).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "pebble did not start:\n{}",
                pebble.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pebble
    }

    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://localhost:{}/dir", self.addr.port())
    }

    /// A PEM file with the CA that signed pebble's own HTTPS certificate (for `SSL_CERT_FILE`).
    pub fn api_ca_file(&self) -> PathBuf {
        let path = self.dir.path().join("pebble-api-ca.pem");
        std::fs::write(&path, self.ca.cert_pem()).expect("write CA file");
        path
    }

    /// Roots trusting pebble's own HTTPS listener.
    pub fn api_roots(&self) -> rustls::RootCertStore {
        self.ca.roots()
    }

    /// Pebble's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// How many orders pebble created (counted from its log).
    pub fn orders(&self) -> usize {
        self.log().matches("Added order").count()
    }

    /// The root that issues this pebble's certificates (from the management interface).
    pub async fn issuing_root(&self) -> Result<rustls::RootCertStore, String> {
        let reply = crate::tls::https_get(
            self.management,
            Some("localhost"),
            "localhost",
            "/roots/0",
            crate::tls::Verify::Roots(Arc::new(self.ca.roots())),
            &[b"http/1.1"],
        )
        .await?;
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject as _;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&reply.body) {
            roots
                .add(cert.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        Ok(roots)
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
