//! Polling with a deadline instead of sleeping.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long to wait between two polls.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `true` or `timeout` has passed; returns whether it succeeded.
/// `check` always runs at least once.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_some(timeout, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
    .is_some()
}

/// Polls `check` until it returns `Some` or `timeout` has passed; returns the value, if any.
pub async fn eventually_some<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_true_once_the_condition_holds() {
        let calls = AtomicU32::new(0);
        let ok = eventually(Duration::from_secs(2), || async {
            calls.fetch_add(1, Ordering::SeqCst) >= 2
        })
        .await;
        assert!(ok);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let started = Instant::now();
        let ok = eventually(Duration::from_millis(100), || async { false }).await;
        assert!(!ok);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn eventually_some_returns_the_value() {
        let mut n = 0;
        let value = eventually_some(Duration::from_secs(2), || {
            n += 1;
            let current = n;
            async move { (current == 3).then_some(current * 10) }
        })
        .await;
        assert_eq!(value, Some(30));
    }
}
