//! The query service's own metrics, registered into the collector's
//! registry so they appear on the same `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Request counts and latencies per endpoint, and answers cut short.
#[derive(Clone)]
pub struct QueryMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
    truncated: IntCounterVec,
    /// When a cut answer was last logged (seconds since the Unix epoch).
    cut_logged: Arc<AtomicU64>,
}

/// Least time between two WARN lines about cut answers (every cut is
/// counted).
const CUT_LOG_INTERVAL_S: u64 = 60;

impl QueryMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "tracemesh_query_requests_total",
                "Query API requests, by endpoint and HTTP status code.",
            ),
            &["endpoint", "code"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "tracemesh_query_request_duration_seconds",
                "Time to answer a query API request, by endpoint.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["endpoint"],
        )?;
        let truncated = IntCounterVec::new(
            Opts::new(
                "tracemesh_query_truncated_answers_total",
                "Answers that left out part of what matched, past a bound on their size \
                 (the dependency graph's edges), by endpoint.",
            ),
            &["endpoint"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(truncated.clone()))?;
        Ok(Self {
            requests,
            seconds,
            truncated,
            cut_logged: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Records that one answer of `endpoint` left out the calls of the
    /// dependency edges past `bound` (`omitted_calls` of them): counted,
    /// and logged at WARN at most once a minute (a large mesh's graph is
    /// cut on every load). Nothing when none was left out.
    pub fn edges_cut(&self, endpoint: &str, omitted_calls: u64, bound: u32) {
        if omitted_calls == 0 {
            return;
        }
        self.truncated.with_label_values(&[endpoint]).inc();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.cut_logged.load(Ordering::Relaxed);
        if now.saturating_sub(last) < CUT_LOG_INTERVAL_S
            || self
                .cut_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        tracing::warn!(
            endpoint,
            omitted_calls,
            max_edges = bound,
            "dependency graph cut: the most called edges are answered, the calls of the rest left out"
        );
    }

    /// Records one answered request.
    pub fn observe(&self, endpoint: &str, code: u16, elapsed: Duration) {
        self.requests
            .with_label_values(&[endpoint, &code.to_string()])
            .inc();
        self.seconds
            .with_label_values(&[endpoint])
            .observe(elapsed.as_secs_f64());
    }
}
