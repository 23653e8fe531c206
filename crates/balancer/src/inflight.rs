//! In-flight request tracking for one target, and the cancellation that draining needs.
//!
//! Every request that claims a target holds a [`Lease`] until its response (or upgraded tunnel)
//! is finished. Draining waits for the leases to go away, cancels upgraded connections at once,
//! and cancels whatever remains when the drain deadline passes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The cancellation tokens of one drain generation. Replaced after each drain so a target that
/// is reused (pause, then resume) serves new requests with fresh tokens.
#[derive(Debug, Default)]
struct Generation {
    /// Cancelled when the drain deadline passes: every remaining request is abandoned.
    all: CancellationToken,
    /// Cancelled as soon as a drain starts: upgraded connections are closed immediately.
    upgraded: CancellationToken,
}

/// Counts the requests in flight on one target and lets a drain wait for or cancel them.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
    generation: ArcSwap<Generation>,
}

impl InFlight {
    /// Creates a tracker with no request in flight.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Number of requests currently in flight.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Registers a request; it stays in flight until the returned lease is dropped.
    pub fn lease(self: &Arc<Self>) -> Lease {
        self.count.fetch_add(1, Ordering::AcqRel);
        Lease {
            tracker: Arc::clone(self),
            generation: self.generation.load_full(),
            upgraded: AtomicBool::new(false),
        }
    }

    /// Drains: cancels upgraded connections now, waits up to `timeout` for the other requests
    /// to finish, then cancels those still running. Returns `true` if everything finished in
    /// time. Leases taken after the drain began belong to the next generation: they are waited
    /// for (a drained target normally receives no new requests) but never cancelled by this drain.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let generation = self.generation.swap(Arc::new(Generation::default()));
        generation.upgraded.cancel();
        let finished = tokio::time::timeout(timeout, self.wait_idle())
            .await
            .is_ok();
        if !finished {
            generation.all.cancel();
        }
        finished
    }

    async fn wait_idle(&self) {
        loop {
            // Register interest before checking, so a release between the check and the await
            // cannot be missed.
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One request's claim on a target. Dropping it marks the request finished.
#[derive(Debug)]
pub struct Lease {
    tracker: Arc<InFlight>,
    generation: Arc<Generation>,
    upgraded: AtomicBool,
}

impl Lease {
    /// Marks the request as an upgraded connection (WebSocket tunnel): a drain closes it at once.
    pub fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    /// Whether the request has been marked as upgraded.
    pub fn is_upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Acquire)
    }

    /// Resolves when this request must be abandoned because its target is being drained.
    pub async fn cancelled(&self) {
        if self.is_upgraded() {
            tokio::select! {
                _ = self.generation.upgraded.cancelled() => {}
                _ = self.generation.all.cancelled() => {}
            }
        } else {
            self.generation.all.cancelled().await
        }
    }

    /// Whether this request has already been cancelled by a drain.
    pub fn is_cancelled(&self) -> bool {
        self.generation.all.is_cancelled()
            || (self.is_upgraded() && self.generation.upgraded.is_cancelled())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.tracker.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.idle.notify_waiters();
        }
    }
}

/// Owned cancellation, for futures and bodies that outlive a borrow of the lease.
impl Lease {
    /// An owned future that resolves when the drain deadline cancels this request (the
    /// cancellation of every remaining request, not the immediate one of upgraded tunnels).
    /// Unlike [`Lease::cancelled`] it borrows nothing, so a response body can keep it pinned
    /// beside the lease it belongs to.
    pub fn deadline_cancelled_owned(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.generation.all.clone().cancelled_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_with_nothing_in_flight_returns_at_once() {
        let t = InFlight::new();
        assert!(t.drain(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn drain_waits_for_leases() {
        let t = InFlight::new();
        let lease = t.lease();
        assert_eq!(t.count(), 1);
        let releaser = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(lease);
        });
        assert!(t.drain(Duration::from_secs(5)).await);
        assert_eq!(t.count(), 0);
        releaser.await.unwrap();
    }

    #[tokio::test]
    async fn drain_cancels_after_deadline() {
        let t = InFlight::new();
        let lease = t.lease();
        assert!(!t.drain(Duration::from_millis(20)).await);
        assert!(lease.is_cancelled());
        lease.cancelled().await;
    }

    #[tokio::test]
    async fn upgraded_leases_are_cancelled_immediately() {
        let t = InFlight::new();
        let lease = t.lease();
        lease.mark_upgraded();
        let t2 = Arc::clone(&t);
        let drain = tokio::spawn(async move { t2.drain(Duration::from_secs(5)).await });
        // The tunnel notices the cancellation and closes, which ends the drain.
        tokio::time::timeout(Duration::from_secs(1), lease.cancelled())
            .await
            .expect("upgraded lease cancelled at drain start");
        drop(lease);
        assert!(drain.await.unwrap());
    }

    #[tokio::test]
    async fn leases_after_a_drain_are_not_cancelled() {
        let t = InFlight::new();
        let old = t.lease();
        assert!(!t.drain(Duration::from_millis(1)).await);
        let new = t.lease();
        assert!(old.is_cancelled());
        assert!(!new.is_cancelled());
    }
}
