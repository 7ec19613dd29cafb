//! The hard cap on series per metric family: however many distinct label
//! sets arrive (hosts, peers, principals, `tagOverrides` values), a family
//! holds at most `maxSeriesPerMetric` of them. The label sets counted are
//! the ones the family serves, after the Telemetry's `tagOverrides`: a
//! label removed makes the sets that differed only in it one series. Each
//! family has its own [`SeriesLimit`], made with its collector, so a reload
//! that makes a family anew (its series start over) gives it a fresh limit.
//! An observation past the cap is not recorded; it is counted in
//! `tracemesh_agent_metric_series_overflow_total` ([`Overflow`]) and logged
//! at WARN at most once per ten seconds, with the number left out since the
//! last line.
//!
//! The label sets admitted are remembered by a 64-bit hash in a fixed table
//! of atomics, sized once from the cap and allocated when the family
//! records its first observation (a family never observed, such as the TCP
//! ones of an HTTP-only workload, holds none): admitting takes no lock, and
//! the memory is what the cap allows, never what the traffic asks for.

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus::IntCounter;

use crate::model::clock::now_ms;

/// The default `spec.telemetry.maxSeriesPerMetric`.
pub const DEFAULT_MAX_SERIES: usize = 10_000;
/// The largest `spec.telemetry.maxSeriesPerMetric` accepted (the table it
/// sizes is 16 bytes a series: 16 MiB at this bound).
pub const MAX_SERIES_BOUND: usize = 1 << 20;

/// Longest an overflow waits to be reported in a log line.
const REPORT_INTERVAL_MS: u64 = 10_000;

/// The label sets one metric family (one collector) has admitted.
pub struct SeriesLimit {
    cap: usize,
    hasher: RandomState,
    /// Hashes of admitted label sets; 0 is an empty slot. Made on the
    /// first admission, `size` slots.
    slots: OnceLock<Box<[AtomicU64]>>,
    size: usize,
    admitted: AtomicUsize,
}

impl SeriesLimit {
    /// A limit of `cap` label sets. `cap` is clamped to
    /// 1..=[`MAX_SERIES_BOUND`].
    pub fn new(cap: usize) -> Self {
        let cap = cap.clamp(1, MAX_SERIES_BOUND);
        // Load factor at most one half, so a probe ends soon.
        let size = (cap * 2).next_power_of_two().max(16);
        Self {
            cap,
            hasher: RandomState::new(),
            slots: OnceLock::new(),
            size,
            admitted: AtomicUsize::new(0),
        }
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Whether the label set `labels` (the values the family serves) may
    /// be recorded: it was admitted before, or there is room for it now. A
    /// refusal is the caller's to count, once per observation, in its
    /// group's [`Overflow`].
    pub fn admit(&self, labels: &impl Hash) -> bool {
        let hash = self.hasher.hash_one(labels).max(1);
        let slots =
            (self.slots).get_or_init(|| (0..self.size).map(|_| AtomicU64::new(0)).collect());
        let mask = slots.len() - 1;
        let mut index = hash as usize & mask;
        loop {
            let slot = &slots[index];
            match slot.load(Ordering::Acquire) {
                h if h == hash => return true,
                0 => {
                    if self.admitted.load(Ordering::Relaxed) >= self.cap {
                        return false;
                    }
                    match slot.compare_exchange(0, hash, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => {
                            self.admitted.fetch_add(1, Ordering::Relaxed);
                            return true;
                        }
                        // Another thread took the slot: look at it again.
                        Err(_) => continue,
                    }
                }
                _ => index = (index + 1) & mask,
            }
        }
    }
}

/// The overflow of one group of families (Istio's request families, its
/// TCP families): observations some family of the group had no room for.
/// It outlives the families, so the count goes on across reloads.
pub struct Overflow {
    /// What the families are called in logs.
    families: &'static str,
    /// The cap, for the log line.
    cap: usize,
    overflow: IntCounter,
    unreported: AtomicU64,
    reported_at_ms: AtomicU64,
}

impl Overflow {
    /// The overflow of `families`, whose cap is `cap` (clamped as
    /// [`SeriesLimit::new`] clamps it), counted in `overflow`.
    pub fn new(families: &'static str, cap: usize, overflow: IntCounter) -> Self {
        Self {
            families,
            cap: cap.clamp(1, MAX_SERIES_BOUND),
            overflow,
            unreported: AtomicU64::new(0),
            reported_at_ms: AtomicU64::new(0),
        }
    }

    /// Counts (and, rate-limited, logs) one observation that a family of
    /// the group did not record.
    pub fn refuse(&self) {
        self.refused(now_ms());
    }

    fn refused(&self, now: u64) {
        self.overflow.inc();
        self.unreported.fetch_add(1, Ordering::Relaxed);
        let last = self.reported_at_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < REPORT_INTERVAL_MS {
            return;
        }
        if self
            .reported_at_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let left_out = self.unreported.swap(0, Ordering::Relaxed);
            tracing::warn!(
                families = self.families,
                cap = self.cap,
                left_out,
                "metric series cap reached, new label sets not recorded (counted in tracemesh_agent_metric_series_overflow_total; raise spec.telemetry.maxSeriesPerMetric if this traffic is legitimate)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(cap: usize) -> SeriesLimit {
        SeriesLimit::new(cap)
    }

    #[test]
    fn admits_up_to_the_cap_and_always_what_it_admitted() {
        let limit = limit(100);
        for i in 0..100 {
            assert!(limit.admit(&i), "label set {i} fits");
        }
        for i in 100..10_000 {
            assert!(!limit.admit(&i), "label set {i} is past the cap");
        }
        for i in 0..100 {
            assert!(limit.admit(&i), "label set {i} was admitted before");
        }
        assert_eq!(limit.admitted.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn the_cap_is_bounded_and_the_table_sized_from_it() {
        assert_eq!(limit(0).cap(), 1);
        let big = limit(usize::MAX);
        assert_eq!(big.cap(), MAX_SERIES_BOUND);
        assert_eq!(big.size, 2 * MAX_SERIES_BOUND);
        assert!(big.slots.get().is_none(), "nothing allocated before use");
        let default = limit(DEFAULT_MAX_SERIES);
        assert!(default.admit(&"first"));
        assert_eq!(default.slots.get().map(|s| s.len()), Some(32_768));
    }

    #[test]
    fn overflow_is_logged_at_most_once_per_interval() {
        let counter = IntCounter::new("overflow", "overflow").unwrap();
        let limit = Overflow::new("test", 1, counter);
        limit.refused(5);
        assert_eq!(
            limit.unreported.load(Ordering::Relaxed),
            0,
            "first line at once"
        );
        for ms in 6..1_000 {
            limit.refused(ms);
        }
        assert_eq!(limit.unreported.load(Ordering::Relaxed), 994);
        limit.refused(10_006);
        assert_eq!(limit.unreported.load(Ordering::Relaxed), 0);
        assert_eq!(limit.overflow.get(), 996);
    }
}
