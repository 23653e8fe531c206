//! In-flight request tracking for one target, and the cancellation that draining needs.
//!
//! Every request that claims a target holds a [`Lease`] until its response (or upgraded tunnel)
//! is finished. Draining waits for the leases to go away, cancels upgraded connections at once,
//! and cancels whatever remains when the drain deadline passes.
//!
//! Cancellation is by generation (epoch): a lease records the epoch current when it was taken,
//! each drain starts a new epoch, and cancelling a drain's leases raises a watermark below which
//! every epoch counts as cancelled. A request checks two atomics on every poll; only a request
//! that has to wait puts its waker into the tracker's registry, so the drain can wake it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;

/// Counts the requests in flight on one target and lets a drain wait for or cancel them.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
    /// The current generation; a lease keeps the one it was taken in.
    epoch: AtomicU64,
    /// Every lease of an epoch below this is cancelled (the drain deadline has passed).
    cancelled_before: AtomicU64,
    /// Every upgraded lease of an epoch below this is cancelled (its drain has started).
    upgraded_cancelled_before: AtomicU64,
    /// The wakers of the requests waiting for a cancellation.
    waiters: Mutex<Waiters>,
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
            // SeqCst orders this before the caller's SeqCst read of the target's state: a lease
            // that sees the target not yet draining is of the epoch the drain will cancel.
            epoch: self.epoch.load(Ordering::SeqCst),
            upgraded: AtomicBool::new(false),
            waiter: None,
        }
    }

    /// Drains: cancels upgraded connections now, waits up to `timeout` for the other requests
    /// to finish, then cancels those still running. Returns `true` if everything finished in
    /// time. Leases taken after the drain began belong to the next generation: they are waited
    /// for (a drained target normally receives no new requests) but never cancelled by this drain.
    ///
    /// Should two drains of one tracker overlap (a target's own drain prevents it), the later
    /// one's deadline cancels the earlier one's leases as well.
    pub async fn drain(&self, timeout: Duration) -> bool {
        // This drain's leases, and any older ones, are those of epochs below `before`.
        let before = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.upgraded_cancelled_before
            .fetch_max(before, Ordering::SeqCst);
        self.wake_cancelled(before, true);
        let finished = tokio::time::timeout(timeout, self.wait_idle())
            .await
            .is_ok();
        if !finished {
            self.cancelled_before.fetch_max(before, Ordering::SeqCst);
            self.wake_cancelled(before, false);
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

    fn is_cancelled(&self, epoch: u64, upgraded: bool) -> bool {
        epoch < self.cancelled_before.load(Ordering::Acquire)
            || (upgraded && epoch < self.upgraded_cancelled_before.load(Ordering::Acquire))
    }

    /// Wakes the waiters of epochs below `before` (only the upgraded ones if `upgraded_only`),
    /// whose cancellation has just been published.
    fn wake_cancelled(&self, before: u64, upgraded_only: bool) {
        let wakers: Vec<Waker> = self
            .waiters()
            .slots
            .iter_mut()
            .flatten()
            .filter(|slot| slot.epoch < before && (slot.upgraded || !upgraded_only))
            // Taken: the cancellation they wait for has happened, so they never wait again.
            .filter_map(|slot| slot.waker.take())
            .collect();
        // Woken outside the lock, so the woken tasks do not contend for it with this loop.
        for waker in wakers {
            waker.wake();
        }
    }

    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        // Nothing panics while the lock is held; a poisoned registry is still consistent.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ready once a lease of `epoch` is cancelled; otherwise makes sure `cx`'s task is woken
    /// when it is. `upgraded` waits for the immediate cancellation of upgraded leases too.
    fn poll_cancelled(
        &self,
        epoch: u64,
        upgraded: bool,
        registration: &mut Option<Registration>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if self.is_cancelled(epoch, upgraded) {
            return Poll::Ready(());
        }
        if let Some(registered) = registration {
            if registered.waker.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        let mut waiters = self.waiters();
        // Checked again under the lock: a drain publishes the cancellation before taking the
        // lock to collect wakers, so it either is visible here or finds the waker stored below.
        if self.is_cancelled(epoch, upgraded) {
            return Poll::Ready(());
        }
        let waker = cx.waker().clone();
        let slot = Slot {
            waker: Some(waker.clone()),
            epoch,
            upgraded,
        };
        let replaced = match registration {
            Some(registered) => {
                let old = waiters.slots[registered.key].replace(slot);
                registered.waker = waker;
                old
            }
            None => {
                *registration = Some(Registration {
                    key: waiters.insert(slot),
                    waker,
                });
                None
            }
        };
        drop(waiters);
        // A waker's drop may run task code: not under the lock.
        drop(replaced);
        Poll::Pending
    }

    fn deregister(&self, registration: Registration) {
        let removed = self.waiters().remove(registration.key);
        drop(removed);
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        let waiters = self.waiters();
        waiters.slots.len() - waiters.free.len()
    }
}

/// The wakers of waiting requests, in slots reused through a free list so that registering
/// does not allocate once the registry has grown to the target's concurrency.
#[derive(Debug, Default)]
struct Waiters {
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
}

impl Waiters {
    fn insert(&mut self, slot: Slot) -> usize {
        match self.free.pop() {
            Some(key) => {
                self.slots[key] = Some(slot);
                key
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, key: usize) -> Option<Slot> {
        let slot = self.slots[key].take();
        self.free.push(key);
        slot
    }
}

/// One waiting request.
#[derive(Debug)]
struct Slot {
    /// `None` once the drain has woken it.
    waker: Option<Waker>,
    epoch: u64,
    /// Whether it waits for the cancellation of upgraded leases at drain start.
    upgraded: bool,
}

/// Where a waiting request's waker is, and a copy to tell whether a poll brings a new one
/// without taking the lock.
#[derive(Debug)]
struct Registration {
    key: usize,
    waker: Waker,
}

/// One request's claim on a target. Dropping it marks the request finished.
#[derive(Debug)]
pub struct Lease {
    tracker: Arc<InFlight>,
    epoch: u64,
    upgraded: AtomicBool,
    /// The waker of the task polling [`Lease::poll_deadline`], once it had to wait.
    waiter: Option<Registration>,
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
        Cancelled {
            lease: self,
            upgraded: self.is_upgraded(),
            registration: None,
        }
        .await
    }

    /// Whether this request has already been cancelled by a drain.
    pub fn is_cancelled(&self) -> bool {
        self.tracker.is_cancelled(self.epoch, self.is_upgraded())
    }

    /// Ready once the drain deadline has cancelled this request (the cancellation of every
    /// remaining request, not the immediate one of upgraded tunnels). A pending poll arranges
    /// for the task to be woken then; that costs a lock only on the first pending poll and
    /// when the task's waker changes.
    pub(crate) fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.tracker
            .poll_cancelled(self.epoch, false, &mut self.waiter, cx)
    }

    /// Forgets the waker registered by [`Lease::poll_deadline`], for a lease that moves on to
    /// a task that will not poll it (an upgraded tunnel).
    pub(crate) fn stop_watching(&mut self) {
        if let Some(registration) = self.waiter.take() {
            self.tracker.deregister(registration);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop_watching();
        if self.tracker.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.idle.notify_waiters();
        }
    }
}

/// The future of [`Lease::cancelled`].
struct Cancelled<'a> {
    lease: &'a Lease,
    upgraded: bool,
    registration: Option<Registration>,
}

impl std::future::Future for Cancelled<'_> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let lease = this.lease;
        lease
            .tracker
            .poll_cancelled(lease.epoch, this.upgraded, &mut this.registration, cx)
    }
}

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        if let Some(registration) = self.registration.take() {
            self.lease.tracker.deregister(registration);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{poll_fn, Future};
    use std::pin::pin;
    use std::task::Wake;

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
        assert_eq!(t.waiting(), 0, "the finished wait left the registry");
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

    #[tokio::test]
    async fn leases_taken_during_a_drain_are_not_cancelled_by_it() {
        let t = InFlight::new();
        let old = t.lease();
        let mut drain = pin!(t.drain(Duration::from_millis(20)));
        // One poll starts the drain: the generation changes, and the drain waits.
        assert!(poll_fn(|cx| Poll::Ready(drain.as_mut().poll(cx)))
            .await
            .is_pending());
        let mut plain = t.lease();
        let upgraded = t.lease();
        upgraded.mark_upgraded();
        let plain_watch = tokio::spawn(async move {
            let deadline = poll_fn(|cx| plain.poll_deadline(cx));
            tokio::time::timeout(Duration::from_millis(100), deadline).await
        });
        assert!(!drain.await, "the old lease outlived the deadline");
        assert!(old.is_cancelled());
        assert!(!upgraded.is_cancelled());
        let tunnel = tokio::time::timeout(Duration::from_millis(50), upgraded.cancelled()).await;
        assert!(
            tunnel.is_err(),
            "an upgraded lease of the next generation stays open"
        );
        assert!(
            plain_watch.await.unwrap().is_err(),
            "a lease of the next generation is not cancelled by the deadline"
        );
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_deadline_wakes_the_latest_waker_and_the_lease_deregisters() {
        let t = InFlight::new();
        let mut lease = t.lease();
        let (first, second) = (Arc::new(Counter::default()), Arc::new(Counter::default()));
        let (first_waker, second_waker) = (Waker::from(first.clone()), Waker::from(second.clone()));
        let mut first_cx = Context::from_waker(&first_waker);
        assert!(lease.poll_deadline(&mut first_cx).is_pending());
        assert!(lease.poll_deadline(&mut first_cx).is_pending());
        assert_eq!(t.waiting(), 1);
        // The task moved: the registration follows it rather than adding a slot.
        assert!(lease
            .poll_deadline(&mut Context::from_waker(&second_waker))
            .is_pending());
        assert_eq!(t.waiting(), 1);

        assert!(!t.drain(Duration::from_millis(1)).await);
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert!(lease.poll_deadline(&mut first_cx).is_ready());
        drop(lease);
        assert_eq!(t.waiting(), 0);
        assert_eq!(t.count(), 0);
    }

    #[tokio::test]
    async fn drain_start_wakes_only_upgraded_waiters() {
        let t = InFlight::new();
        let mut plain = t.lease();
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(counter.clone());
        assert!(plain
            .poll_deadline(&mut Context::from_waker(&waker))
            .is_pending());
        let upgraded = t.lease();
        upgraded.mark_upgraded();
        let tunnel = upgraded.cancelled();
        let t2 = Arc::clone(&t);
        let drain = tokio::spawn(async move { t2.drain(Duration::from_secs(5)).await });
        tokio::time::timeout(Duration::from_secs(5), tunnel)
            .await
            .expect("the tunnel is woken at drain start");
        assert_eq!(counter.0.load(Ordering::SeqCst), 0, "no spurious wake-up");
        assert!(!plain.is_cancelled());
        drop((plain, upgraded));
        assert!(drain.await.unwrap());
    }

    /// The lost-wake window itself: the waiter has found the lease not cancelled and waits for
    /// the registry while the drain publishes the cancellation and finds no waker to wake. The
    /// check under the lock must see the cancellation.
    #[test]
    fn a_cancellation_published_before_the_registration_is_seen_under_the_lock() {
        let t = InFlight::new();
        let mut lease = t.lease();
        let registry = t.waiters();
        let waiter = std::thread::spawn(move || {
            let waker = Waker::from(Arc::new(Counter::default()));
            let polled = lease.poll_deadline(&mut Context::from_waker(&waker));
            (polled, lease)
        });
        // Time for the waiter to pass its first check and block on the lock (if it is slower,
        // it sees the cancellation at the first check, which passes too).
        std::thread::sleep(Duration::from_millis(50));
        // What the drain does at its deadline, here with no registered waker to collect.
        t.cancelled_before.store(1, Ordering::SeqCst);
        drop(registry);
        let (polled, lease) = waiter.join().unwrap();
        assert!(
            polled.is_ready(),
            "the waiter would sleep through its cancellation"
        );
        drop(lease);
        assert_eq!(t.waiting(), 0);
    }

    /// The drain may publish its cancellation at any point of a waiter's registration, from
    /// another thread: the waiter must still be woken, not left parked until its next I/O.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancellation_racing_a_registration_still_wakes_the_waiter() {
        for round in 0..200 {
            let t = InFlight::new();
            let mut lease = t.lease();
            let upgraded = round % 2 == 1;
            if upgraded {
                lease.mark_upgraded();
            }
            let waiter = tokio::spawn(async move {
                if upgraded {
                    lease.cancelled().await;
                } else {
                    poll_fn(|cx| lease.poll_deadline(cx)).await;
                }
            });
            let t2 = Arc::clone(&t);
            let drain = tokio::spawn(async move { t2.drain(Duration::ZERO).await });
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .unwrap_or_else(|_| panic!("round {round}: the waiter was not woken"))
                .unwrap();
            assert!(tokio::time::timeout(Duration::from_secs(5), drain)
                .await
                .expect("the drain finishes")
                .is_ok());
            assert_eq!((t.count(), t.waiting()), (0, 0));
        }
    }
}
