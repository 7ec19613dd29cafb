//! Exporters: zero or more destinations for received spans and metrics.
//! Each has its own bounded queue and one sending task that batches, retries
//! retryable failures with backoff (honouring `Retry-After`/`RetryInfo`) and
//! gives up on the rest. Offering never waits: when a queue is full the
//! batch is dropped and counted, so a slow or dead backend never slows ingest.

mod jaeger;
mod otlp_grpc;
mod otlp_http;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;

use crate::config::{ExportProtocol, ExporterConfig};
use crate::metrics::Metrics;
use crate::store::document::span_count;

pub use jaeger::to_jaeger;

/// An exporter that cannot be built from its settings.
#[derive(Debug, thiserror::Error)]
#[error("exporter {name}: {message}")]
pub struct ExportConfigError {
    name: String,
    message: String,
}

/// Why one send failed.
#[derive(Debug)]
pub struct SendError {
    /// Whether sending again may succeed.
    pub retryable: bool,
    /// How long the backend asked us to wait.
    pub retry_after: Option<Duration>,
    /// What happened.
    pub message: String,
}

impl SendError {
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            retry_after: None,
            message: message.into(),
        }
    }

    fn transient(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Self {
            retryable: true,
            retry_after,
            message: message.into(),
        }
    }
}

/// What a backend refused of an export it answered with success: OTLP's
/// partial success (`ExportTracePartialSuccess.rejected_spans`,
/// `ExportMetricsPartialSuccess.rejected_data_points`, and its
/// `error_message`). Those spans or points are lost: counted as failed and
/// logged, not as sent.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Rejected {
    /// Spans (or data points) refused (a negative count on the wire is
    /// none).
    pub count: u64,
    /// The backend's reason, empty when it gave none; with a count of 0, a
    /// warning (logged at DEBUG).
    pub message: String,
}

impl Rejected {
    fn of(count: i64, message: String) -> Self {
        Self {
            count: count.max(0) as u64,
            message,
        }
    }
}

/// Rejections not yet in a log line: one WARN per
/// [`DROP_REPORT_INTERVAL`] at most, with the totals since the last and
/// the latest reason, so a backend that refuses part of every batch is a
/// line per interval, not one per export.
#[derive(Default)]
struct Refusals {
    spans: u64,
    points: u64,
    /// The latest reason, at most [`REASON_BYTES`].
    reason: String,
    logged_at: Option<std::time::Instant>,
}

/// Longest backend reason logged, in bytes (its start kept).
const REASON_BYTES: usize = 200;

impl Refusals {
    /// Counts `rejected` (of spans, or of metric points) and logs the totals
    /// when a line is due at `now`.
    fn add(&mut self, exporter: &str, rejected: &Rejected, spans: bool, now: std::time::Instant) {
        if rejected.count == 0 {
            if !rejected.message.is_empty() {
                tracing::debug!(exporter, message = %rejected.message, "backend warning");
            }
            return;
        }
        if spans {
            self.spans += rejected.count;
        } else {
            self.points += rejected.count;
        }
        let mut end = rejected.message.len().min(REASON_BYTES);
        while !rejected.message.is_char_boundary(end) {
            end -= 1;
        }
        self.reason.clear();
        self.reason.push_str(&rejected.message[..end]);
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < DROP_REPORT_INTERVAL)
        {
            return;
        }
        tracing::warn!(exporter, spans = self.spans, points = self.points, reason = %self.reason, "backend rejected data");
        (self.spans, self.points, self.logged_at) = (0, 0, Some(now));
    }
}

enum Client {
    OtlpGrpc(otlp_grpc::OtlpGrpcClient),
    OtlpHttp(otlp_http::OtlpHttpClient),
    Jaeger(jaeger::JaegerClient),
}

impl Client {
    async fn send_spans(
        &mut self,
        request: &ExportTraceServiceRequest,
    ) -> Result<Rejected, SendError> {
        match self {
            Self::OtlpGrpc(c) => c.send_spans(request.clone()).await,
            Self::OtlpHttp(c) => c.send_spans(request).await,
            // (Jaeger's PostSpans answers nothing of the kind)
            Self::Jaeger(c) => c.send_spans(request).await.map(|()| Rejected::default()),
        }
    }

    async fn send_metrics(
        &mut self,
        request: &ExportMetricsServiceRequest,
    ) -> Result<Rejected, SendError> {
        match self {
            Self::OtlpGrpc(c) => c.send_metrics(request.clone()).await,
            Self::OtlpHttp(c) => c.send_metrics(request).await,
            Self::Jaeger(_) => Ok(Rejected::default()),
        }
    }

    fn takes_metrics(&self) -> bool {
        !matches!(self, Self::Jaeger(_))
    }
}

enum Item {
    Spans(Arc<ExportTraceServiceRequest>, usize),
    Metrics(Arc<ExportMetricsServiceRequest>, usize),
}

struct Queue {
    name: String,
    items: Mutex<VecDeque<Item>>,
    spans: AtomicUsize,
    capacity: usize,
    max_batch: usize,
    takes_metrics: bool,
    ready: Notify,
    sent: IntCounter,
    failed: IntCounter,
    dropped: IntCounter,
    /// Spans dropped at a full queue and not yet in a log line.
    unreported_drops: AtomicU64,
    /// When the last drop line was written (ms since `EPOCH`).
    reported_at_ms: AtomicU64,
    sent_points: IntCounter,
    dropped_points: IntCounter,
    depth: IntGauge,
}

/// Longest a drop at a full queue waits to be reported in a log line.
const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(10);

impl Queue {
    /// `n` spans found the queue full: counted at once, and logged at WARN
    /// (data is lost) at most once per ten seconds with the number dropped
    /// since the last line, so a slow backend is one line, not a flood.
    fn spans_dropped(&self, n: usize) {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        self.dropped.inc_by(n as u64);
        self.unreported_drops.fetch_add(n as u64, Ordering::Relaxed);
        let now = EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
            + 1;
        let last = self.reported_at_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= DROP_REPORT_INTERVAL.as_millis() as u64;
        if due
            && self
                .reported_at_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let spans = self.unreported_drops.swap(0, Ordering::Relaxed);
            tracing::warn!(exporter = %self.name, spans, "exporter queue full, spans dropped");
        }
    }
}

/// The configured exporters. Cheap to clone.
#[derive(Clone, Default)]
pub struct Exporters {
    queues: Arc<Vec<Arc<Queue>>>,
}

/// Retry delays: doubling from the first, capped.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Metric requests queued per exporter, at most (they are small and few).
const MAX_METRIC_ITEMS: usize = 1000;

impl Exporters {
    /// Builds every exporter and starts its task on the current runtime.
    pub fn start(configs: &[ExporterConfig], metrics: &Metrics) -> Result<Self, ExportConfigError> {
        let mut queues = Vec::new();
        for config in configs {
            let name = config.display_name();
            let err = |message: String| ExportConfigError {
                name: name.clone(),
                message,
            };
            let client = match config.protocol {
                ExportProtocol::OtlpGrpc => {
                    Client::OtlpGrpc(otlp_grpc::OtlpGrpcClient::new(config).map_err(err)?)
                }
                ExportProtocol::OtlpHttp => {
                    Client::OtlpHttp(otlp_http::OtlpHttpClient::new(config).map_err(err)?)
                }
                ExportProtocol::JaegerGrpc => {
                    Client::Jaeger(jaeger::JaegerClient::new(config).map_err(err)?)
                }
            };
            let label = [name.as_str()];
            let queue = Arc::new(Queue {
                name: name.clone(),
                items: Mutex::new(VecDeque::new()),
                spans: AtomicUsize::new(0),
                capacity: config.queue_spans,
                max_batch: config.max_batch_spans,
                takes_metrics: client.takes_metrics(),
                ready: Notify::new(),
                sent: metrics.exporter_sent_spans.with_label_values(&label),
                failed: metrics.exporter_failed_spans.with_label_values(&label),
                dropped: metrics.exporter_dropped_spans.with_label_values(&label),
                unreported_drops: AtomicU64::new(0),
                reported_at_ms: AtomicU64::new(0),
                sent_points: metrics
                    .exporter_sent_metric_points
                    .with_label_values(&label),
                dropped_points: metrics
                    .exporter_dropped_metric_points
                    .with_label_values(&label),
                depth: metrics.exporter_queue_spans.with_label_values(&label),
            });
            tokio::spawn(run(queue.clone(), client));
            tracing::info!(exporter = %name, "exporter started");
            queues.push(queue);
        }
        Ok(Self {
            queues: Arc::new(queues),
        })
    }

    /// Queues a durable span batch on every exporter (never waits).
    pub fn offer_spans(&self, batch: &Arc<ExportTraceServiceRequest>) {
        if self.queues.is_empty() {
            return;
        }
        let n = span_count(&batch.resource_spans) as usize;
        for queue in self.queues.iter() {
            let admitted = queue
                .spans
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    (used + n <= queue.capacity).then_some(used + n)
                })
                .is_ok();
            if !admitted {
                queue.spans_dropped(n);
                continue;
            }
            if let Ok(mut items) = queue.items.lock() {
                items.push_back(Item::Spans(batch.clone(), n));
            }
            queue.depth.add(n as i64);
            queue.ready.notify_one();
        }
    }

    /// Queues a metrics request on every exporter that takes metrics.
    pub fn offer_metrics(&self, batch: Arc<ExportMetricsServiceRequest>) {
        let points = data_points(&batch);
        for queue in self.queues.iter().filter(|q| q.takes_metrics) {
            let Ok(mut items) = queue.items.lock() else {
                continue;
            };
            if items
                .iter()
                .filter(|i| matches!(i, Item::Metrics(..)))
                .count()
                >= MAX_METRIC_ITEMS
            {
                queue.dropped_points.inc_by(points as u64);
                continue;
            }
            items.push_back(Item::Metrics(batch.clone(), points));
            drop(items);
            queue.ready.notify_one();
        }
    }

    /// Spans waiting in all queues.
    pub fn queued_spans(&self) -> usize {
        self.queues
            .iter()
            .map(|q| q.spans.load(Ordering::Acquire))
            .sum()
    }
}

fn data_points(request: &ExportMetricsServiceRequest) -> usize {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
            None => 0,
        })
        .sum()
}

enum Work {
    Spans(ExportTraceServiceRequest, usize),
    Metrics(Arc<ExportMetricsServiceRequest>, usize),
}

/// Takes the next request: consecutive span batches merged up to the batch size.
fn next_work(queue: &Queue) -> Option<Work> {
    let mut items = queue.items.lock().ok()?;
    match items.pop_front()? {
        Item::Metrics(batch, points) => Some(Work::Metrics(batch, points)),
        Item::Spans(batch, n) => {
            let mut merged = ExportTraceServiceRequest {
                resource_spans: batch.resource_spans.clone(),
            };
            let mut total = n;
            while let Some(Item::Spans(next, m)) = items.front() {
                if total + m > queue.max_batch {
                    break;
                }
                merged
                    .resource_spans
                    .extend(next.resource_spans.iter().cloned());
                total += m;
                items.pop_front();
            }
            Some(Work::Spans(merged, total))
        }
    }
}

async fn run(queue: Arc<Queue>, mut client: Client) {
    let mut refusals = Refusals::default();
    loop {
        let Some(work) = next_work(&queue) else {
            queue.ready.notified().await;
            continue;
        };
        let mut delay = BACKOFF_FIRST;
        loop {
            let result = match &work {
                Work::Spans(request, _) => client.send_spans(request).await,
                Work::Metrics(request, _) => client.send_metrics(request).await,
            };
            match (result, &work) {
                (Ok(mut rejected), Work::Spans(_, n)) => {
                    rejected.count = rejected.count.min(*n as u64);
                    queue.sent.inc_by(*n as u64 - rejected.count);
                    queue.failed.inc_by(rejected.count);
                    refusals.add(&queue.name, &rejected, true, std::time::Instant::now());
                }
                (Ok(mut rejected), Work::Metrics(_, points)) => {
                    rejected.count = rejected.count.min(*points as u64);
                    queue.sent_points.inc_by(*points as u64 - rejected.count);
                    queue.dropped_points.inc_by(rejected.count);
                    refusals.add(&queue.name, &rejected, false, std::time::Instant::now());
                }
                (Err(error), _) if error.retryable => {
                    let wait = error
                        .retry_after
                        .unwrap_or(delay)
                        .min(Duration::from_secs(60));
                    tracing::debug!(exporter = %queue.name, error = %error.message, ?wait, "export failed, retrying");
                    tokio::time::sleep(wait + jitter(wait)).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                    continue;
                }
                (Err(error), Work::Spans(_, n)) => {
                    queue.failed.inc_by(*n as u64);
                    tracing::warn!(exporter = %queue.name, error = %error.message, spans = n, "export failed, spans dropped");
                }
                (Err(error), Work::Metrics(_, points)) => {
                    queue.dropped_points.inc_by(*points as u64);
                    tracing::warn!(exporter = %queue.name, error = %error.message, points, "metric export failed, points dropped");
                }
            }
            break;
        }
        if let Work::Spans(_, n) = work {
            queue.spans.fetch_sub(n, Ordering::AcqRel);
            queue.depth.sub(n as i64);
        }
    }
}

fn jitter(wait: Duration) -> Duration {
    wait.mul_f64(fastrand::f64() * 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rejections are logged once per interval with the totals since the
    /// last line, and a reason at most `REASON_BYTES` long, cut on a
    /// character.
    #[test]
    fn rejections_are_summed_between_log_lines() {
        let mut refusals = Refusals::default();
        let long = "é".repeat(150);
        let now = std::time::Instant::now();
        refusals.add("a", &Rejected::of(3, long.clone()), true, now);
        assert_eq!(
            (refusals.spans, refusals.points),
            (0, 0),
            "the first is logged"
        );
        assert_eq!(refusals.reason.len(), REASON_BYTES);
        refusals.add("a", &Rejected::of(2, "x".into()), true, now);
        refusals.add("a", &Rejected::of(4, "y".into()), false, now);
        refusals.add("a", &Rejected::of(0, "a warning".into()), true, now);
        assert_eq!(
            (refusals.spans, refusals.points),
            (2, 4),
            "held for the next line"
        );
        assert_eq!(refusals.reason, "y");
        refusals.add(
            "a",
            &Rejected::of(1, long),
            true,
            now + DROP_REPORT_INTERVAL,
        );
        assert_eq!(
            (refusals.spans, refusals.points),
            (0, 0),
            "logged with the totals"
        );
    }
}
