//! The query service's own metrics, registered into the collector's
//! registry so they appear on the same `/metrics`.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Request counts and latencies per endpoint, and answers cut short.
#[derive(Clone)]
pub struct QueryMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
    truncated: IntCounterVec,
}

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
        })
    }

    /// Records that one answer of `endpoint` left out the calls of the
    /// dependency edges past `bound` (`omitted_calls` of them), counted
    /// and logged at WARN once for the answer. Nothing when none was left
    /// out.
    pub fn edges_cut(&self, endpoint: &str, omitted_calls: u64, bound: u32) {
        if omitted_calls == 0 {
            return;
        }
        self.truncated.with_label_values(&[endpoint]).inc();
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
