//! A pool of targets (upstream's "load balancer", §4.4): health checking, round-robin
//! selection, the all-healthy latch and draining.
//!
//! The healthy writer and reader lists live in an [`ArcSwap`] snapshot that is rebuilt on every
//! state change, so [`Pool::claim`] takes no lock.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::health::{run_checks, HealthConfig, Probe};
use crate::inflight::Lease;
use crate::target::{Target, TargetAddr, TargetState};

/// A request's hold on a target: the target to forward to and the lease that keeps the request
/// counted as in flight until dropped.
#[derive(Debug)]
pub struct Claim {
    /// The chosen target.
    pub target: Arc<Target>,
    /// Keeps the request in flight on `target`; drop it when the response (or tunnel) is done.
    pub lease: Lease,
}

/// One row of [`Pool::describe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    /// The address as given.
    pub address: String,
    /// The current state.
    pub state: TargetState,
    /// Whether it is a read target.
    pub is_reader: bool,
}

/// The healthy targets, in configuration order.
#[derive(Debug, Default)]
struct Healthy {
    writers: Vec<Arc<Target>>,
    readers: Vec<Arc<Target>>,
}

/// The targets of one deployment, with their health checks and round-robin state.
///
/// ```
/// use kamal_balancer::{HealthConfig, Pool};
///
/// let pool = Pool::parse(&["web-1:3000", "web-2:3000"], &[] as &[&str], HealthConfig::default())
///     .unwrap();
/// // Restored from saved state: healthy without waiting for checks.
/// pool.mark_all_healthy();
/// let claim = pool.claim(false).unwrap();
/// assert_eq!(claim.target.addr().as_str(), "web-2:3000"); // round-robin starts at the second
/// drop(claim.lease); // the request is finished
/// ```
#[derive(Debug)]
pub struct Pool {
    /// Writers then readers, in configuration order.
    targets: Vec<Arc<Target>>,
    has_readers: bool,
    health: HealthConfig,
    healthy: ArcSwap<Healthy>,
    /// Round-robin positions, each the index last used (taken modulo the list length).
    next_writer: AtomicUsize,
    next_reader: AtomicUsize,
    /// Serialises snapshot rebuilds so the last one always reflects the latest states.
    rebuild: Mutex<()>,
    /// Cancelled on dispose, or for ever once a single-target pool is healthy.
    checks: CancellationToken,
    checks_started: AtomicBool,
    /// Becomes `true` the first time every target is healthy at once; never reset.
    all_healthy: watch::Sender<bool>,
}

impl Pool {
    /// Creates a pool from writer targets followed by reader targets. Health checks are not
    /// running until [`Pool::start_health_checks`].
    pub fn new(
        writers: Vec<TargetAddr>,
        readers: Vec<TargetAddr>,
        health: HealthConfig,
    ) -> Arc<Self> {
        let has_readers = !readers.is_empty();
        let targets = writers
            .into_iter()
            .map(|a| (a, false))
            .chain(readers.into_iter().map(|a| (a, true)))
            .map(|(addr, reader)| Arc::new(Target::new(addr, reader)))
            .collect();
        Arc::new(Self {
            targets,
            has_readers,
            health,
            healthy: ArcSwap::from_pointee(Healthy::default()),
            next_writer: AtomicUsize::new(0),
            next_reader: AtomicUsize::new(0),
            rebuild: Mutex::new(()),
            checks: CancellationToken::new(),
            checks_started: AtomicBool::new(false),
            all_healthy: watch::Sender::new(false),
        })
    }

    /// Parses target strings (see [`TargetAddr::parse`]) and creates the pool; the first
    /// invalid one is the error.
    pub fn parse<W, R>(
        writers: &[W],
        readers: &[R],
        health: HealthConfig,
    ) -> Result<Arc<Self>, Error>
    where
        W: AsRef<str>,
        R: AsRef<str>,
    {
        fn parse_all<S: AsRef<str>>(names: &[S]) -> Result<Vec<TargetAddr>, Error> {
            names
                .iter()
                .map(|n| TargetAddr::parse(n.as_ref()))
                .collect()
        }
        Ok(Self::new(parse_all(writers)?, parse_all(readers)?, health))
    }

    /// All targets: writers then readers, in configuration order.
    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }

    /// The health-check settings the pool was created with.
    pub fn health_config(&self) -> &HealthConfig {
        &self.health
    }

    /// Whether the pool was configured with at least one read target.
    pub fn has_readers(&self) -> bool {
        self.has_readers
    }

    /// Starts one health checker per target (first check at once). Must run inside a tokio
    /// runtime. Does nothing if already started, disposed, or if checks already stopped.
    pub fn start_health_checks(self: &Arc<Self>) {
        if self.checks_started.swap(true, Ordering::SeqCst) || self.checks.is_cancelled() {
            return;
        }
        for (index, target) in self.targets.iter().enumerate() {
            let probe = Probe::new(target.addr(), &self.health);
            // Checkers hold the pool weakly so dropping the last handle disposes it.
            let pool = Arc::downgrade(self);
            let report = move |success: bool| report_check(&pool, index, success);
            tokio::spawn(run_checks(
                probe,
                self.health.interval,
                self.checks.clone(),
                report,
            ));
        }
    }

    /// Marks every target healthy without checking (state restore, §1.5), which also fires the
    /// all-healthy latch and, for a single target, stops its checks.
    pub fn mark_all_healthy(&self) {
        for target in &self.targets {
            target.swap_state(TargetState::Healthy);
        }
        self.rebuild_healthy();
    }

    /// Waits until all targets have been healthy at the same moment, at most `timeout`.
    /// Returns whether that happened (the latch stays set once it fired).
    pub async fn wait_healthy(&self, timeout: Duration) -> bool {
        let mut fired = self.all_healthy.subscribe();
        let waited = tokio::time::timeout(timeout, fired.wait_for(|all| *all)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Picks the next target for a request, round-robin. A read request goes to the readers
    /// when at least one is healthy, otherwise to the writers. The position advances before it
    /// is used, so a fresh pool's first request goes to its second target (quirk §13.2 #1).
    pub fn claim(&self, read: bool) -> Result<Claim, Error> {
        let healthy = self.healthy.load();
        let (list, position) = if read && !healthy.readers.is_empty() {
            (&healthy.readers, &self.next_reader)
        } else {
            (&healthy.writers, &self.next_writer)
        };
        let len = list.len();
        if len == 0 {
            return Err(Error::NoHealthyTarget);
        }
        let advance = |i: usize| Some((i + 1) % len);
        let previous = match position.fetch_update(Ordering::Relaxed, Ordering::Relaxed, advance) {
            Ok(i) | Err(i) => i,
        };
        let target = &list[(previous + 1) % len];
        // Lease before looking at the state: a drain that starts after this check then sees
        // (and may cancel) the lease.
        let lease = target.inflight().lease();
        if target.state() == TargetState::Draining {
            return Err(Error::NoHealthyTarget);
        }
        Ok(Claim {
            target: Arc::clone(target),
            lease,
        })
    }

    /// Drains every target in parallel (§4.8): each is marked draining, its upgraded requests
    /// are cancelled at once and the others waited for up to `timeout`, then cancelled; each
    /// target's previous state is restored afterwards.
    pub async fn drain(&self, timeout: Duration) {
        futures_util::future::join_all(self.targets.iter().map(|t| t.drain(timeout))).await;
        self.rebuild_healthy();
    }

    /// Stops all health checks for good. Idempotent; also happens when the pool is dropped.
    pub fn dispose(&self) {
        self.checks.cancel();
    }

    /// Whether health checks have stopped for good (disposed, or a healthy single target).
    pub fn checks_stopped(&self) -> bool {
        self.checks.is_cancelled()
    }

    /// Address, state and role of every target, writers then readers.
    pub fn describe(&self) -> Vec<TargetInfo> {
        self.targets
            .iter()
            .map(|t| TargetInfo {
                address: t.addr().to_string(),
                state: t.state(),
                is_reader: t.is_reader(),
            })
            .collect()
    }

    /// Applies one health-check result to target `index`, logging and rebuilding on change.
    fn check_completed(&self, index: usize, success: bool) {
        let Some(target) = self.targets.get(index) else {
            return;
        };
        if let Some((was, now)) = target.record_check(success) {
            tracing::info!(
                target = %target.addr(),
                state = now.as_str(),
                was = was.as_str(),
                "Target health updated"
            );
            self.rebuild_healthy();
        }
    }

    /// Recomputes the healthy lists from the current states, then applies the single-target
    /// optimisation and the all-healthy latch (§4.4).
    fn rebuild_healthy(&self) {
        let _serial = self
            .rebuild
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut healthy = Healthy::default();
        for target in &self.targets {
            if target.state() == TargetState::Healthy {
                if target.is_reader() {
                    healthy.readers.push(Arc::clone(target));
                } else {
                    healthy.writers.push(Arc::clone(target));
                }
            }
        }
        let healthy_count = healthy.writers.len() + healthy.readers.len();
        // One target that is healthy gains nothing from further checks: taking it out of
        // rotation would only turn 502s into 503s.
        if self.targets.len() == 1 && healthy.writers.len() == 1 {
            self.checks.cancel();
        }
        self.healthy.store(Arc::new(healthy));
        if healthy_count == self.targets.len() && !self.targets.is_empty() {
            self.all_healthy
                .send_if_modified(|fired| !std::mem::replace(fired, true));
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.checks.cancel();
    }
}

/// Delivers a check result to the pool if it still exists; `false` tells the checker to stop.
fn report_check(pool: &Weak<Pool>, index: usize, success: bool) -> bool {
    match pool.upgrade() {
        Some(pool) => {
            pool.check_completed(index, success);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU16;

    use super::*;
    use crate::testing::{capture_logs, eventually, Reply, Upstream};

    fn fast() -> HealthConfig {
        HealthConfig {
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(1),
            ..HealthConfig::default()
        }
    }

    /// An upstream whose status can be switched at run time.
    fn switchable(initial: u16) -> (Upstream, Arc<AtomicU16>) {
        let status = Arc::new(AtomicU16::new(initial));
        let s = Arc::clone(&status);
        let upstream = Upstream::start(move |_, _| Reply::status(s.load(Ordering::SeqCst)));
        (upstream, status)
    }

    /// A loopback address nothing listens on (bound, then released).
    fn closed_port() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    fn addr(s: &str) -> TargetAddr {
        TargetAddr::parse(s).unwrap()
    }

    fn claim_order(pool: &Pool, read: bool, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| pool.claim(read).unwrap().target.addr().to_string())
            .collect()
    }

    #[tokio::test]
    async fn becomes_healthy_after_failures() {
        let upstream = Upstream::start(|n, _| Reply::status(if n < 3 { 503 } else { 200 }));
        let pool = Pool::new(vec![addr(&upstream.address())], vec![], fast());
        assert!(matches!(pool.claim(false), Err(Error::NoHealthyTarget)));
        pool.start_health_checks();
        assert!(pool.wait_healthy(Duration::from_secs(5)).await);
        assert_eq!(upstream.count(), 4);
        assert_eq!(pool.targets()[0].state(), TargetState::Healthy);
        assert!(pool.claim(false).is_ok());
    }

    #[tokio::test]
    async fn wait_healthy_times_out() {
        let (upstream, _) = switchable(503);
        let pool = Pool::new(vec![addr(&upstream.address())], vec![], fast());
        pool.start_health_checks();
        let started = std::time::Instant::now();
        assert!(!pool.wait_healthy(Duration::from_millis(150)).await);
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(pool.targets()[0].state(), TargetState::Adding);
        assert!(upstream.count() >= 2);
        pool.dispose();
    }

    #[tokio::test]
    async fn latch_needs_all_targets_healthy_at_once() {
        let (a, _) = switchable(200);
        let (b, b_status) = switchable(503);
        let pool = Pool::new(vec![addr(&a.address()), addr(&b.address())], vec![], fast());
        pool.start_health_checks();
        assert!(eventually(|| pool.claim(false).is_ok()).await);
        assert!(!pool.wait_healthy(Duration::from_millis(100)).await);
        b_status.store(200, Ordering::SeqCst);
        assert!(pool.wait_healthy(Duration::from_secs(5)).await);
        // The latch never re-arms.
        b_status.store(503, Ordering::SeqCst);
        assert!(eventually(|| pool.targets()[1].state() == TargetState::Unhealthy).await);
        assert!(pool.wait_healthy(Duration::ZERO).await);
        pool.dispose();
    }

    #[tokio::test]
    async fn single_target_stops_checking_once_healthy() {
        let (upstream, status) = switchable(200);
        let pool = Pool::new(vec![addr(&upstream.address())], vec![], fast());
        pool.start_health_checks();
        assert!(pool.wait_healthy(Duration::from_secs(5)).await);
        assert!(pool.checks_stopped());
        let seen = upstream.count();
        // Even a failing upstream is not noticed any more.
        status.store(503, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(upstream.count(), seen);
        assert_eq!(pool.targets()[0].state(), TargetState::Healthy);
        assert!(pool.claim(false).is_ok());
    }

    #[tokio::test]
    async fn single_reader_target_keeps_checking() {
        // The optimisation needs a healthy *writer*; the checks of a lone reader go on.
        let (upstream, _) = switchable(200);
        let pool = Pool::new(vec![], vec![addr(&upstream.address())], fast());
        pool.start_health_checks();
        assert!(pool.wait_healthy(Duration::from_secs(5)).await);
        let seen = upstream.count();
        assert!(eventually(|| upstream.count() > seen + 1).await);
        assert!(!pool.checks_stopped());
        pool.dispose();
    }

    #[tokio::test]
    async fn restored_single_target_never_checks() {
        let (upstream, _) = switchable(200);
        let pool = Pool::new(vec![addr(&upstream.address())], vec![], fast());
        pool.mark_all_healthy();
        pool.start_health_checks();
        assert!(pool.wait_healthy(Duration::ZERO).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(upstream.count(), 0);
        assert!(pool.claim(false).is_ok());
    }

    #[tokio::test]
    async fn restored_targets_are_healthy_at_once_and_still_checked() {
        let (one, two) = (closed_port(), closed_port());
        let pool = Pool::parse(&[&one, &two], &[] as &[&str], fast()).unwrap();
        pool.mark_all_healthy();
        assert!(pool.wait_healthy(Duration::ZERO).await);
        assert_eq!(claim_order(&pool, false, 2), [two.clone(), one.clone()]);
        // Both ports are closed: the checks take them out of rotation.
        pool.start_health_checks();
        assert!(eventually(|| pool.claim(false).is_err()).await);
        let states: Vec<_> = pool.describe().into_iter().map(|t| t.state).collect();
        assert_eq!(states, [TargetState::Unhealthy, TargetState::Unhealthy]);
        pool.dispose();
    }

    #[tokio::test]
    async fn multi_target_keeps_checking_and_rotates_out_failures() {
        let (a, a_status) = switchable(200);
        let (b, _) = switchable(200);
        let pool = Pool::new(vec![addr(&a.address()), addr(&b.address())], vec![], fast());
        pool.start_health_checks();
        assert!(pool.wait_healthy(Duration::from_secs(5)).await);
        assert!(!pool.checks_stopped());
        a_status.store(503, Ordering::SeqCst);
        assert!(eventually(|| pool.targets()[0].state() == TargetState::Unhealthy).await);
        assert_eq!(claim_order(&pool, false, 3), vec![b.address(); 3]);
        // And back in once it recovers.
        a_status.store(200, Ordering::SeqCst);
        assert!(eventually(|| pool.targets()[0].state() == TargetState::Healthy).await);
        let order = claim_order(&pool, false, 2);
        assert!(order.contains(&a.address()) && order.contains(&b.address()));
        pool.dispose();
    }

    #[test]
    fn round_robin_starts_at_second_target() {
        let pool = Pool::parse(&["web-1:3000", "web-2:3000"], &[] as &[&str], fast()).unwrap();
        pool.mark_all_healthy();
        assert_eq!(
            claim_order(&pool, false, 4),
            ["web-2:3000", "web-1:3000", "web-2:3000", "web-1:3000"]
        );
    }

    #[test]
    fn position_is_kept_when_the_list_changes() {
        let pool = Pool::parse(&["w1:1", "w2:1", "w3:1"], &[] as &[&str], fast()).unwrap();
        pool.mark_all_healthy();
        assert_eq!(claim_order(&pool, false, 2), ["w2:1", "w3:1"]);
        // w3 leaves: position 2 → (2+1) % 2 = 1 → w2.
        pool.targets()[2].record_check(false);
        pool.rebuild_healthy();
        assert_eq!(claim_order(&pool, false, 2), ["w2:1", "w1:1"]);
    }

    #[test]
    fn readers_take_reads_when_healthy() {
        let pool = Pool::parse(&["w1:1", "w2:1"], &["r1:1", "r2:1"], fast()).unwrap();
        assert!(pool.has_readers());
        pool.mark_all_healthy();
        assert_eq!(claim_order(&pool, true, 3), ["r2:1", "r1:1", "r2:1"]);
        assert_eq!(claim_order(&pool, false, 3), ["w2:1", "w1:1", "w2:1"]);
        // No healthy reader: reads fall back to the writers.
        for reader in &pool.targets()[2..] {
            reader.record_check(false);
        }
        pool.rebuild_healthy();
        assert_eq!(claim_order(&pool, true, 2), ["w1:1", "w2:1"]);
        let roles: Vec<_> = pool.describe().into_iter().map(|t| t.is_reader).collect();
        assert_eq!(roles, [false, false, true, true]);
    }

    #[test]
    fn no_writers_means_writes_fail() {
        let pool = Pool::parse(&[] as &[&str], &["r1:1"], fast()).unwrap();
        pool.mark_all_healthy();
        assert!(pool.claim(true).is_ok());
        assert!(matches!(pool.claim(false), Err(Error::NoHealthyTarget)));
        assert!(!pool.checks_stopped());
    }

    #[test]
    fn parse_reports_the_first_bad_target() {
        let err = Pool::parse(&["web:1", "a"], &[] as &[&str], fast()).unwrap_err();
        assert_eq!(err.to_string(), "a :invalid host pattern");
        let err = Pool::parse(&["web:1"], &["http://x"], fast()).unwrap_err();
        assert_eq!(err.to_string(), "http://x :invalid host pattern");
    }

    #[tokio::test]
    async fn dispose_stops_all_checks() {
        let (a, _) = switchable(200);
        let (b, _) = switchable(503);
        let pool = Pool::new(vec![addr(&a.address()), addr(&b.address())], vec![], fast());
        pool.start_health_checks();
        assert!(eventually(|| a.count() >= 2 && b.count() >= 2).await);
        pool.dispose();
        pool.dispose();
        // A check may be in flight at the moment of disposal; let it land, then no more.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (seen_a, seen_b) = (a.count(), b.count());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!((a.count(), b.count()), (seen_a, seen_b));
    }

    #[tokio::test]
    async fn dropping_the_pool_stops_checks() {
        let (a, _) = switchable(503);
        let pool = Pool::new(vec![addr(&a.address())], vec![], fast());
        pool.start_health_checks();
        assert!(eventually(|| a.count() >= 2).await);
        drop(pool);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let seen = a.count();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(a.count(), seen);
    }

    #[tokio::test]
    async fn drain_waits_for_leases() {
        let pool = Pool::parse(&["web:1"], &[] as &[&str], fast()).unwrap();
        pool.mark_all_healthy();
        let claim = pool.claim(false).unwrap();
        let pool2 = Arc::clone(&pool);
        let drain = tokio::spawn(async move { pool2.drain(Duration::from_secs(5)).await });
        assert!(eventually(|| pool.targets()[0].state() == TargetState::Draining).await);
        // A draining target refuses new claims.
        assert!(matches!(pool.claim(false), Err(Error::NoHealthyTarget)));
        assert!(!drain.is_finished());
        drop(claim);
        tokio::time::timeout(Duration::from_secs(2), drain)
            .await
            .expect("drain finishes once the lease is gone")
            .unwrap();
        assert_eq!(pool.targets()[0].state(), TargetState::Healthy);
        assert!(pool.claim(false).is_ok());
    }

    #[tokio::test]
    async fn drain_cancels_at_the_deadline() {
        let pool = Pool::parse(&["web:1", "web:2"], &[] as &[&str], fast()).unwrap();
        pool.mark_all_healthy();
        let first = pool.claim(false).unwrap();
        let second = pool.claim(false).unwrap();
        let started = std::time::Instant::now();
        pool.drain(Duration::from_millis(300)).await;
        let elapsed = started.elapsed();
        // Both targets drain in parallel: one deadline, not two.
        assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(600));
        assert!(first.lease.is_cancelled() && second.lease.is_cancelled());
        let states: Vec<_> = pool.describe().into_iter().map(|t| t.state).collect();
        assert_eq!(states, [TargetState::Healthy, TargetState::Healthy]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn state_changes_are_logged_with_target_state_was() {
        let (logs, _guard) = capture_logs();
        let (upstream, status) = switchable(200);
        let (other, _) = switchable(200);
        let pool = Pool::new(
            vec![addr(&upstream.address()), addr(&other.address())],
            vec![],
            fast(),
        );
        pool.start_health_checks();
        assert!(pool.wait_healthy(Duration::from_secs(5)).await);
        status.store(503, Ordering::SeqCst);
        assert!(eventually(|| pool.targets()[0].state() == TargetState::Unhealthy).await);
        pool.dispose();
        let field = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let updates: Vec<_> = logs
            .with_message("Target health updated")
            .into_iter()
            .filter(|e| e.fields.contains(&field("target", &upstream.address())))
            .collect();
        assert_eq!(updates.len(), 2);
        assert_eq!(updates[0].level, tracing::Level::INFO);
        assert_eq!(
            updates[0].fields,
            [
                field("message", "Target health updated"),
                field("target", &upstream.address()),
                field("state", "healthy"),
                field("was", "adding"),
            ]
        );
        assert_eq!(
            updates[1].fields[2..],
            [field("state", "unhealthy"), field("was", "healthy")]
        );
        let failures = logs.with_message("Healthcheck failed");
        assert!(!failures.is_empty());
        assert_eq!(
            failures[0].fields[1],
            field("url", &format!("http://{}/up", upstream.address()))
        );
    }
}
