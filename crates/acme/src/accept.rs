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
