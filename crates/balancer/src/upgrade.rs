//! Protocol switches (WebSockets and other upgrades, §7.7): relaying the target's `101` and
//! splicing bytes between the two upgraded connections.

use http::header::UPGRADE;
use http::{HeaderValue, Response};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use tokio::sync::watch;

use crate::body::ProxyBody;
use crate::forward_error::ForwardError;
use crate::headers;
use crate::inflight::Lease;

/// Accepts the target's `101` answer to an upgrade request for `protocol`: returns the `101`
/// (exactly as the target sent it) for the client and spawns the tunnel, which keeps `lease`
/// until it closes.
///
/// `client` is the client connection's pending upgrade, taken from the request before it was
/// sent; it resolves once the server has written the `101`.
pub(crate) fn tunnel<B>(
    mut response: Response<Incoming>,
    protocol: &HeaderValue,
    client: Option<OnUpgrade>,
    mut lease: Lease,
) -> Result<Response<ProxyBody<B>>, ForwardError> {
    if !headers::upgrade_accepted(response.headers(), protocol) {
        let received = response
            .headers()
            .get(UPGRADE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        return Err(ForwardError::UpgradeMismatch {
            requested: String::from_utf8_lossy(protocol.as_bytes()).into_owned(),
            received,
        });
    }
    let Some(client) = client else {
        return Err(ForwardError::UpgradeFailed {
            source: "the client connection cannot be upgraded".into(),
        });
    };
    let upstream = hyper::upgrade::on(&mut response);
    lease.mark_upgraded();
    // The tunnel task watches the lease through `Lease::cancelled`; the forward's task that
    // registered for the deadline is done with it.
    lease.stop_watching();
    let (closed, on_close) = watch::channel(false);
    tokio::spawn(splice(client, upstream, lease, closed));
    let mut response = response.map(|_| ProxyBody::empty());
    response.extensions_mut().insert(TunnelClosed(on_close));
    Ok(response)
}

/// Found in the extensions of a `101` response from [`Forwarder::forward`](crate::Forwarder):
/// resolves when the tunnel behind it has closed (the request is only over then, e.g. for
/// its access-log line).
#[derive(Debug, Clone)]
pub struct TunnelClosed(watch::Receiver<bool>);

impl TunnelClosed {
    /// Waits until the tunnel has closed.
    pub async fn wait(mut self) {
        // Marked closed, or the sender dropped: either way the tunnel task has finished.
        let _ = self.0.wait_for(|closed| *closed).await;
    }
}

/// Copies bytes both ways until both sides have closed (half-closes are passed on), either
/// side fails, or a drain cancels the lease.
async fn splice(client: OnUpgrade, upstream: OnUpgrade, lease: Lease, closed: watch::Sender<bool>) {
    let tunnel = async {
        let (client, upstream) = tokio::try_join!(client, upstream)?;
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    tokio::select! {
        result = tunnel => {
            if let Err(error) = result {
                tracing::debug!(error = %error, "Upgraded connection closed with an error");
            }
        }
        () = lease.cancelled() => {
            tracing::debug!("Upgraded connection closed by draining");
        }
    }
    // Dropping the halves closes both connections; dropping the lease ends the request.
    drop(lease);
    let _ = closed.send(true);
}
