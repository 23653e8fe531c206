//! The idle connections to one target, recently used ones taken first.
//!
//! One FIFO queue would rotate every pooled connection, so that each one sits idle as long as
//! possible between requests: the connection a target has most likely closed for idleness
//! (Node's default keep-alive timeout is 5 s), and, measured on loopback, a slower start for
//! a large response (GETs of 1 MiB over 16 client connections: p99 about 50 ms once a burst
//! had left 64 connections pooled, about 14 ms with 16). Go's `http.Transport`, which the
//! Go kamal-proxy forwards with, and nginx's upstream keep-alive cache both reuse the most
//! recently used connection.
//!
//! A lock-free stack needs unsafe memory reclamation; two lock-free queues give the property
//! that matters: a few recently returned connections wait in a small hot queue, the rest in a
//! cold one that is used only when the hot one is empty. A steady load then keeps reusing the
//! same few connections, and the others wait for a burst. Each operation stays one atomic
//! push or pop in the common case.

use crossbeam_queue::ArrayQueue;

/// How many idle connections the hot queue holds.
const HOT: usize = 4;

/// Idle connections: a small hot queue in front of a cold one.
#[derive(Debug)]
pub(crate) struct IdleConns<T> {
    hot: ArrayQueue<T>,
    cold: ArrayQueue<T>,
}

impl<T> IdleConns<T> {
    /// Room for `capacity` idle connections in all (at least two).
    pub(crate) fn new(capacity: usize) -> Self {
        let hot = HOT.min(capacity / 2).max(1);
        Self {
            hot: ArrayQueue::new(hot),
            cold: ArrayQueue::new(capacity.saturating_sub(hot).max(1)),
        }
    }

    /// A hot connection if there is one, else the cold one idle the longest.
    pub(crate) fn pop(&self) -> Option<T> {
        self.hot.pop().or_else(|| self.cold.pop())
    }

    /// Keeps `conn`; gives it back when both queues are full.
    pub(crate) fn push(&self, conn: T) -> Result<(), T> {
        self.hot.push(conn).or_else(|conn| self.cold.push(conn))
    }

    /// How many connections are idle.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.hot.len() + self.cold.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn pooled(n: usize) -> IdleConns<usize> {
        let idle = IdleConns::new(100);
        for id in 0..n {
            idle.push(id).unwrap();
        }
        idle
    }

    #[test]
    fn a_steady_load_keeps_reusing_a_few_connections() {
        let idle = pooled(20);
        let mut used = HashSet::new();
        for _ in 0..200 {
            let conn = idle.pop().unwrap();
            used.insert(conn);
            idle.push(conn).unwrap();
        }
        assert!(
            used.len() <= HOT && used.len() < 20,
            "{} connections in rotation",
            used.len()
        );
        assert_eq!(idle.len(), 20);
    }

    #[test]
    fn a_burst_reaches_every_idle_connection() {
        let idle = pooled(20);
        let taken: HashSet<usize> = std::iter::from_fn(|| idle.pop()).collect();
        assert_eq!(taken, (0..20).collect());
        assert_eq!(idle.pop(), None);
    }

    #[test]
    fn a_full_pool_gives_the_connection_back() {
        let idle = IdleConns::new(6);
        for id in 0..6 {
            idle.push(id).unwrap();
        }
        assert_eq!(idle.push(6), Err(6));
        assert_eq!(idle.len(), 6);
        // The smallest pool still holds two.
        let tiny = IdleConns::new(0);
        assert!(tiny.push(1).is_ok() && tiny.push(2).is_ok());
        assert_eq!(tiny.push(3), Err(3));
    }

    #[test]
    fn concurrent_takers_and_returners_lose_no_connection() {
        let idle = std::sync::Arc::new(pooled(40));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let idle = std::sync::Arc::clone(&idle);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(conn) = idle.pop() {
                            idle.push(conn).unwrap();
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let left: HashSet<usize> = std::iter::from_fn(|| idle.pop()).collect();
        assert_eq!(left, (0..40).collect());
    }
}
