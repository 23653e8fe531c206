//! The live routing snapshot: swapped whole by deploys, read lock-free by requests.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::RouteTable;

/// A loaded snapshot; dereferences to the [`RouteTable`]. Hold it only for one request.
pub type RoutesGuard<T> = Guard<Arc<RouteTable<T>>>;

/// The current routing table behind an atomic pointer.
///
/// Requests call [`load`](Self::load) (one atomic load, no lock, no reference-count traffic
/// in the common case); the control side builds a new table and [`store`](Self::store)s it.
/// Writers must be serialised by the caller, so that two deploys cannot each build from the
/// same old state and lose one another's change.
#[derive(Debug)]
pub struct SharedRoutes<T> {
    current: ArcSwap<RouteTable<T>>,
}

impl<T> Default for SharedRoutes<T> {
    fn default() -> Self {
        Self::new(RouteTable::new())
    }
}

impl<T> SharedRoutes<T> {
    /// Starts with `table` as the current snapshot.
    pub fn new(table: RouteTable<T>) -> Self {
        Self {
            current: ArcSwap::from_pointee(table),
        }
    }

    /// The current snapshot, for the duration of one request.
    pub fn load(&self) -> RoutesGuard<T> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`, for holders that outlive a request.
    pub fn load_full(&self) -> Arc<RouteTable<T>> {
        self.current.load_full()
    }

    /// Replaces the current snapshot; in-flight requests keep the one they loaded.
    pub fn store(&self, table: RouteTable<T>) {
        self.current.store(Arc::new(table));
    }

    /// Replaces the current snapshot and returns the previous one.
    pub fn swap(&self, table: RouteTable<T>) -> Arc<RouteTable<T>> {
        self.current.swap(Arc::new(table))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    fn single(value: u32) -> RouteTable<u32> {
        let mut builder = RouteTable::builder();
        builder
            .insert("svc", &[], &[], value)
            .expect("one service cannot conflict");
        builder.build()
    }

    #[test]
    fn store_is_seen_by_later_loads_and_old_guards_stay_valid() {
        let shared = SharedRoutes::default();
        assert!(shared.load().lookup("", "/").is_none());
        shared.store(single(1));
        let old = shared.load();
        let previous = shared.swap(single(2));
        assert_eq!(previous.lookup("", "/").map(|m| *m.value), Some(1));
        assert_eq!(old.lookup("", "/").map(|m| *m.value), Some(1));
        assert_eq!(shared.load().lookup("", "/").map(|m| *m.value), Some(2));
        assert_eq!(
            shared.load_full().lookup("", "/").map(|m| *m.value),
            Some(2)
        );
    }

    #[test]
    fn readers_see_whole_snapshots_while_a_writer_swaps() {
        const SWAPS: u32 = 200;
        const MAX_READS: u64 = 10_000_000;
        let deadline = Instant::now() + Duration::from_secs(10);
        let shared = Arc::new(SharedRoutes::new(single(0)));
        let done = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let reader = {
            let (shared, done, reads) =
                (Arc::clone(&shared), Arc::clone(&done), Arc::clone(&reads));
            std::thread::spawn(move || {
                let mut last = 0;
                while !done.load(Ordering::Acquire)
                    && Instant::now() < deadline
                    && reads.load(Ordering::Relaxed) < MAX_READS
                {
                    let value = shared.load().lookup("", "/").map(|m| *m.value);
                    let value = value.expect("every snapshot routes the default host");
                    // Snapshots only move forward.
                    assert!(value >= last, "went back from {last} to {value}");
                    last = value;
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        // Start swapping only once the reader is running, so that the two overlap.
        while reads.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        for value in 1..=SWAPS {
            shared.store(single(value));
        }
        done.store(true, Ordering::Release);
        reader.join().expect("reader thread panicked");
        assert!(reads.load(Ordering::Relaxed) > 0);
        assert_eq!(shared.load().lookup("", "/").map(|m| *m.value), Some(SWAPS));
    }
}
