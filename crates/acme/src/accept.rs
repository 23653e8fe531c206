//! The server side of a TLS handshake in two steps: read the ClientHello, let the
//! [`CertStore`] refuse the name or obtain its certificate (async), then let rustls finish with
//! the [`SniResolver`](crate::SniResolver) choosing the certificate.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::{CertStore, SniResolver, ACME_TLS_ALPN};

/// Accepts TLS connections with certificates from a [`CertStore`].
#[derive(Debug, Clone)]
pub struct TlsAcceptor {
    store: Arc<CertStore>,
    normal: Arc<ServerConfig>,
    challenge: Arc<ServerConfig>,
    handshake_timeout: Duration,
}

impl TlsAcceptor {
    /// An acceptor over `store`; each of the two handshake halves must finish within
    /// `handshake_timeout` (waiting for a new ACME certificate is bounded separately).
    pub fn new(store: Arc<CertStore>, handshake_timeout: Duration) -> Self {
        let resolver = SniResolver::new(Arc::clone(&store));
        TlsAcceptor {
            normal: crate::server_config(resolver.clone(), false),
            challenge: crate::server_config(resolver, true),
            store,
            handshake_timeout,
        }
    }

    /// The certificate store.
    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    /// Runs the handshake. `Ok(None)` for a completed TLS-ALPN-01 challenge handshake (nothing
    /// to serve). The error text is for the debug log.
    pub async fn accept<IO>(&self, io: IO) -> Result<Option<TlsStream<IO>>, String>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
        let start = tokio::time::timeout(self.handshake_timeout, acceptor)
            .await
            .map_err(|_| "timed out waiting for the ClientHello".to_owned())?
            .map_err(|e| e.to_string())?;
        let hello = start.client_hello();
        let sni = hello.server_name().map(str::to_owned);
        // Exactly `acme-tls/1`, as RFC 8737 and rustls-acme define a challenge handshake.
        let challenge = hello.alpn().is_some_and(|mut protocols| {
            protocols.next() == Some(ACME_TLS_ALPN) && protocols.next().is_none()
        });
        let refused = self.store.prepare(sni.as_deref(), challenge).await.err();
        let config = if challenge {
            Arc::clone(&self.challenge)
        } else {
            Arc::clone(&self.normal)
        };
        // A refused name still goes through rustls, whose resolver finds no certificate and
        // sends the client an alert instead of a bare close.
        let finished = tokio::time::timeout(self.handshake_timeout, start.into_stream(config))
            .await
            .map_err(|_| "timed out finishing the handshake".to_owned())?;
        if let Some(refusal) = refused {
            return Err(refusal.to_string());
        }
        let mut stream = finished.map_err(|e| e.to_string())?;
        if challenge {
            // The CA only needed the certificate; close politely.
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            return Ok(None);
        }
        Ok(Some(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test]
    async fn stalled_and_garbage_handshakes_end_in_errors() {
        crate::install_crypto_provider();
        let store = CertStore::new(crate::test_settings());
        let acceptor = TlsAcceptor::new(store, Duration::from_millis(200));

        // Silent client: the ClientHello wait times out.
        let (server, _client) = tokio::io::duplex(1024);
        let started = std::time::Instant::now();
        let err = acceptor.accept(server).await.unwrap_err();
        assert_eq!(err, "timed out waiting for the ClientHello");
        assert!(started.elapsed() < Duration::from_secs(5));

        // Plain HTTP instead of a ClientHello.
        let (server, mut client) = tokio::io::duplex(1024);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .unwrap();
        assert!(acceptor.accept(server).await.is_err());
    }
}
