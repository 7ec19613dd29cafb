//! Latency quantiles over sliding windows: at every step of a range, the
//! quantile of the spans started in the window of steps ending there. This
//! is what Jaeger's Monitor tab asks for (`/api/metrics/latencies`): Jaeger
//! answers it with PromQL, `histogram_quantile(q, sum(rate(
//! duration_bucket[ratePer])) by (le, …))` at every `step`, so the latency
//! at a point covers the same `ratePer` window as the call and error rates
//! beside it, not the spans of one step.
//!
//! A quantile of a window cannot be put together from the quantiles of its
//! steps, and tantivy's percentiles cannot be merged outside its own
//! aggregation, so the window's distribution is built here from the store's
//! columns ([`SpanReader::scan_durations`](tracemesh_collector::store::SpanReader::scan_durations)):
//! each span's duration counted in a log-scale bucket of its step — the
//! buckets of a DDSketch, [`QUANTILE_RELATIVE_ERROR`] (1%) apart, as every
//! quantile of this engine — and the window slid one step at a time over a
//! Fenwick tree of the buckets, adding the step that enters and taking out
//! the one that leaves. Jaeger's answer interpolates inside the span
//! metrics' fixed histogram buckets (from 2 ms to 15 s by default); this one
//! is within 1% of the true quantile at any duration.
//!
//! Memory is bounded by [`MAX_CELLS`] step-and-bucket cells and
//! [`MAX_POINTS`] points per answer; past either the request is refused
//! (400) and asks for a narrower one, as tantivy's bucket limit refuses an
//! aggregation too large.

use std::collections::HashMap;
use std::sync::Arc;

use tracemesh_collector::store::SpanQuery;

use super::stats::QUANTILE_RELATIVE_ERROR;
use super::{Engine, TimeRange};
use crate::error::QueryError;

/// Most distinct (operation, step, bucket) cells one answer counts (each
/// ~16 bytes, and a hash map's overhead: ~100 MB at most).
pub const MAX_CELLS: usize = 4 << 20;

/// Most points (operations × steps) one answer holds.
pub const MAX_POINTS: usize = 1 << 20;

/// Most steps in a range, as [`Engine::series`] allows.
const MAX_STEPS: u64 = 10_000;

/// The log-scale buckets: bucket 0 holds durations of 0 ns; bucket `k + 1`
/// holds `(γ^(k-1), γ^k]` ns with `γ = (1 + α) / (1 - α)`, so that the
/// bucket's representative `2γ^k / (γ + 1)` is within α of every duration
/// in it (DDSketch's mapping).
#[derive(Debug, Clone, Copy)]
struct LogBuckets {
    gamma: f64,
    ln_gamma: f64,
}

impl LogBuckets {
    fn new(alpha: f64) -> Self {
        let gamma = (1.0 + alpha) / (1.0 - alpha);
        Self {
            gamma,
            ln_gamma: gamma.ln(),
        }
    }

    /// Buckets needed for every u64 duration.
    fn len(self) -> usize {
        self.index(u64::MAX) + 1
    }

    fn index(self, ns: u64) -> usize {
        if ns == 0 {
            return 0;
        }
        ((ns as f64).ln() / self.ln_gamma).ceil().max(0.0) as usize + 1
    }

    /// The duration (ns) a bucket stands for.
    fn value(self, index: usize) -> f64 {
        match index {
            0 => 0.0,
            k => 2.0 * self.gamma.powi(k as i32 - 1) / (self.gamma + 1.0),
        }
    }
}

/// Counts per bucket with prefix sums in O(log n): adding a count and
/// finding the bucket that holds the n-th smallest duration.
#[derive(Debug)]
struct Fenwick {
    tree: Vec<i64>,
    total: i64,
}

impl Fenwick {
    fn new(len: usize) -> Self {
        Self {
            tree: vec![0; len + 1],
            total: 0,
        }
    }

    fn add(&mut self, index: usize, count: i64) {
        self.total += count;
        let mut i = index + 1;
        while i < self.tree.len() {
            self.tree[i] += count;
            i += i & i.wrapping_neg();
        }
    }

    /// The bucket holding the element of 0-based `rank` (`rank < total`).
    fn find(&self, rank: i64) -> usize {
        let mut position = 0;
        let mut remaining = rank;
        let mut step = (self.tree.len() - 1).next_power_of_two();
        while step > 0 {
            let next = position + step;
            if next < self.tree.len() && self.tree[next] <= remaining {
                position = next;
                remaining -= self.tree[next];
            }
            step >>= 1;
        }
        position
    }
}

/// One step of a windowed series.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowPoint {
    /// Start of the step, ns since the epoch.
    pub start: u64,
    /// Spans started in the step itself.
    pub calls: u64,
    /// The quantile (ns) of the spans started in the window ending with
    /// this step; `None` when the window holds none.
    pub quantile: Option<f64>,
}

/// A windowed series, per operation when grouped.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSeries {
    /// The operation, when grouped by operation.
    pub operation: Option<String>,
    /// One point per step of the range, oldest first, empty steps included.
    pub points: Vec<WindowPoint>,
}

impl Engine {
    /// The `quantile` (0–1) of span durations over windows of
    /// `window_steps` steps of `step_ns`, at every step of `range` (the
    /// steps on the grid of multiples of `step_ns`, as [`Engine::series`]
    /// lays them), overall or per operation. The n-th smallest duration
    /// with n = ⌊quantile × (count − 1)⌋, within 1% (the module's doc).
    ///
    /// Errors: a zero step or window, more than 10,000 steps, or an answer
    /// past [`MAX_CELLS`] or [`MAX_POINTS`] (400); the store's (500).
    pub fn windowed_quantiles(
        &self,
        query: &SpanQuery,
        range: TimeRange,
        step_ns: u64,
        window_steps: usize,
        quantile: f64,
        by_operation: bool,
    ) -> Result<Vec<WindowSeries>, QueryError> {
        if step_ns == 0 {
            return Err(QueryError::param("step", "must be positive"));
        }
        if window_steps == 0 {
            return Err(QueryError::param("ratePer", "must be positive"));
        }
        let first = range.from - range.from % step_ns;
        let steps = (range.to - range.to % step_ns - first) / step_ns + 1;
        if steps > MAX_STEPS {
            return Err(QueryError::param(
                "step",
                format!("{steps} steps in the range, at most {MAX_STEPS}"),
            ));
        }
        let steps = steps as usize;
        let buckets = LogBuckets::new(QUANTILE_RELATIVE_ERROR);

        // One pass over the spans' columns: counts per (operation, step,
        // bucket), and spans per (operation, step).
        let mut operations: HashMap<Arc<str>, u32> = HashMap::new();
        let mut cells: HashMap<(u32, u32, u16), u32> = HashMap::new();
        let mut too_many = false;
        self.reader().scan_durations(
            &range.apply(query.clone()),
            by_operation,
            |start, duration, name| {
                if too_many || start < first {
                    return;
                }
                let step = (start - first) / step_ns;
                if step >= steps as u64 {
                    return;
                }
                let operation = match name {
                    Some(name) => match operations.get(name) {
                        Some(&index) => index,
                        None => {
                            let index = operations.len() as u32;
                            operations.insert(name.clone(), index);
                            index
                        }
                    },
                    None => 0,
                };
                let bucket = buckets.index(duration) as u16;
                *cells.entry((operation, step as u32, bucket)).or_insert(0) += 1;
                too_many =
                    cells.len() > MAX_CELLS || operations.len().saturating_mul(steps) > MAX_POINTS;
            },
        )?;
        if too_many {
            return Err(QueryError::BadRequest(format!(
                "too many points to answer (more than {MAX_CELLS} duration cells or \
                 {MAX_POINTS} operation-steps): narrow the lookback, raise the step, \
                 or do not group by operation"
            )));
        }

        let mut cells: Vec<_> = cells.into_iter().collect();
        cells.sort_unstable();
        let mut names: Vec<Option<String>> = if by_operation {
            let mut names = vec![None; operations.len()];
            for (name, index) in operations {
                names[index as usize] = Some(name.to_string());
            }
            names
        } else {
            vec![None]
        };
        let mut all = Vec::with_capacity(names.len());
        for (index, operation) in names.iter_mut().enumerate() {
            let index = index as u32;
            let lo = cells.partition_point(|((op, _, _), _)| *op < index);
            let hi = cells.partition_point(|((op, _, _), _)| *op <= index);
            let mine = &cells[lo..hi];
            // Where each step's cells begin in `mine` (sorted by step).
            let mut begins = Vec::with_capacity(steps + 1);
            let mut at = 0;
            for step in 0..=steps as u32 {
                while at < mine.len() && mine[at].0.1 < step {
                    at += 1;
                }
                begins.push(at);
            }
            let cells_of = |step: usize| &mine[begins[step]..begins[step + 1]];
            let mut window = Fenwick::new(buckets.len());
            let mut points = Vec::with_capacity(steps);
            for step in 0..steps {
                for &((_, _, bucket), count) in cells_of(step) {
                    window.add(usize::from(bucket), i64::from(count));
                }
                if step >= window_steps {
                    for &((_, _, bucket), count) in cells_of(step - window_steps) {
                        window.add(usize::from(bucket), -i64::from(count));
                    }
                }
                let quantile = (window.total > 0).then(|| {
                    let rank = (quantile * (window.total - 1) as f64).floor() as i64;
                    buckets.value(window.find(rank))
                });
                points.push(WindowPoint {
                    start: first + step as u64 * step_ns,
                    calls: cells_of(step).iter().map(|&(_, n)| u64::from(n)).sum(),
                    quantile,
                });
            }
            all.push(WindowSeries {
                operation: operation.take(),
                points,
            });
        }
        all.sort_by(|a, b| a.operation.cmp(&b.operation));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_duration_is_within_alpha_of_its_bucket() {
        let buckets = LogBuckets::new(QUANTILE_RELATIVE_ERROR);
        for ns in [
            1u64,
            2,
            3,
            7,
            999,
            1_000,
            1_234_567,
            15_000_000_000,
            u64::MAX / 3,
        ] {
            let value = buckets.value(buckets.index(ns));
            let error = (value - ns as f64).abs() / ns as f64;
            assert!(error <= QUANTILE_RELATIVE_ERROR + 1e-12, "{ns}: {value}");
        }
        assert_eq!(buckets.value(buckets.index(0)), 0.0);
        assert!(buckets.len() < u16::MAX as usize);
    }

    #[test]
    fn fenwick_finds_the_bucket_of_a_rank_as_counts_come_and_go() {
        let mut f = Fenwick::new(10);
        f.add(2, 3); // ranks 0..=2
        f.add(7, 1); // rank 3
        assert_eq!(f.find(0), 2);
        assert_eq!(f.find(2), 2);
        assert_eq!(f.find(3), 7);
        f.add(2, -3);
        assert_eq!(f.total, 1);
        assert_eq!(f.find(0), 7);
        f.add(0, 1);
        assert_eq!(f.find(0), 0);
        assert_eq!(f.find(1), 7);
    }
}
