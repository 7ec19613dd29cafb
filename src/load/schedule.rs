//! When each request should start. At a fixed rate the run is one global
//! schedule of evenly spaced slots (`j / qps`), dealt round-robin to the
//! connections, so each connection paces itself at `qps / c` and the
//! connections' requests interleave instead of arriving in bursts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// When the run stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// After this many requests over all connections.
    Count(u64),
    /// When this much time has passed since the start; no request starts later.
    Until(Duration),
}

/// One worker's share of the run.
#[derive(Debug, Clone)]
pub enum Pace {
    /// Fixed rate: the worker owns slots `worker, worker + c, worker + 2c, ...`.
    Fixed {
        /// Requests per second over all connections.
        qps: f64,
        /// This worker's index.
        worker: u64,
        /// Number of workers.
        connections: u64,
        /// When to stop.
        limit: Limit,
    },
    /// As fast as possible: the next request starts when the last one ends.
    Max {
        /// When to stop.
        limit: Limit,
        /// Requests claimed so far over all workers (for [`Limit::Count`]).
        claimed: Arc<AtomicU64>,
    },
}

impl Pace {
    /// One pace per worker.
    pub fn for_workers(qps: f64, connections: u64, limit: Limit) -> Vec<Pace> {
        let claimed = Arc::new(AtomicU64::new(0));
        (0..connections)
            .map(|worker| {
                if qps > 0.0 {
                    Pace::Fixed {
                        qps,
                        worker,
                        connections,
                        limit,
                    }
                } else {
                    Pace::Max {
                        limit,
                        claimed: claimed.clone(),
                    }
                }
            })
            .collect()
    }

    /// The offset from the start of the run at which this worker's `k`-th
    /// request is due (`Some(None)` for "now", at max rate), or `None` once
    /// the worker is done. `elapsed` is the time since the start.
    pub fn next(&self, k: u64, elapsed: Duration) -> Option<Option<Duration>> {
        match self {
            Pace::Fixed {
                qps,
                worker,
                connections,
                limit,
            } => {
                let slot = k.checked_mul(*connections)?.checked_add(*worker)?;
                let due = Duration::from_secs_f64(slot as f64 / qps);
                let within = match limit {
                    Limit::Count(n) => slot < *n,
                    Limit::Until(end) => due < *end,
                };
                within.then_some(Some(due))
            }
            Pace::Max { limit, claimed } => {
                let within = match limit {
                    Limit::Count(n) => claimed.fetch_add(1, Ordering::Relaxed) < *n,
                    Limit::Until(end) => elapsed < *end,
                };
                within.then_some(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(pace: &Pace) -> Vec<Duration> {
        (0..)
            .map_while(|k| pace.next(k, Duration::ZERO))
            .map(|due| due.expect("fixed rate has due times"))
            .collect()
    }

    #[test]
    fn fixed_rate_interleaves_connections_evenly() {
        let paces = Pace::for_workers(100.0, 4, Limit::Count(10));
        let all: Vec<Vec<Duration>> = paces.iter().map(slots).collect();
        assert_eq!(all.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 2, 2]);
        // Worker 1 owns slots 1, 5, 9: 10 ms, 50 ms, 90 ms.
        assert_eq!(all[1], [10, 50, 90].map(Duration::from_millis).to_vec());
        let mut merged: Vec<Duration> = all.concat();
        merged.sort();
        let expected: Vec<Duration> = (0..10).map(|j| Duration::from_millis(10 * j)).collect();
        assert_eq!(merged, expected);
    }

    #[test]
    fn fixed_rate_for_a_duration_fills_it_exactly() {
        let paces = Pace::for_workers(200.0, 8, Limit::Until(Duration::from_secs(5)));
        let total: usize = paces.iter().map(|p| slots(p).len()).sum();
        assert_eq!(total, 1000);
        assert!(
            paces
                .iter()
                .flat_map(slots)
                .all(|due| due < Duration::from_secs(5))
        );
    }

    #[test]
    fn max_rate_shares_a_count_and_stops_at_the_deadline() {
        let paces = Pace::for_workers(0.0, 3, Limit::Count(5));
        let started = (0..10)
            .filter(|i| paces[i % 3].next(0, Duration::ZERO).is_some())
            .count();
        assert_eq!(started, 5);
        let pace = &Pace::for_workers(0.0, 1, Limit::Until(Duration::from_secs(1)))[0];
        assert_eq!(pace.next(0, Duration::from_millis(999)), Some(None));
        assert_eq!(pace.next(1, Duration::from_secs(1)), None);
    }
}
