//! The collector's own metric families, declared once and registered into the
//! registry `/metrics` renders. Span-derived metrics live in
//! [`crate::spanmetrics`], re-exposed OTLP metrics in [`crate::otlp_metrics`].

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Buckets for disk and index latencies, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Which receiver spans came in on: the `receiver` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiver {
    /// OTLP over gRPC.
    OtlpGrpc,
    /// OTLP over HTTP.
    OtlpHttp,
    /// Zipkin v2 JSON.
    Zipkin,
}

impl Receiver {
    /// Every value, for series that start at zero.
    pub const ALL: [Self; 3] = [Self::OtlpGrpc, Self::OtlpHttp, Self::Zipkin];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::OtlpGrpc => "otlp_grpc",
            Self::OtlpHttp => "otlp_http",
            Self::Zipkin => "zipkin",
        }
    }
}

/// Why spans were refused: the `reason` label of
/// `tracemesh_collector_spans_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The body is not valid protobuf, JSON or gzip (one per request), or
    /// a span, or its resource or scope, could not be decoded and was left
    /// out of its batch (one per span).
    Malformed,
    /// The body is larger than `max_request_size`.
    TooLarge,
    /// A content type or encoding the endpoint does not speak.
    Unsupported,
    /// The ingest queue is full (the sender retries).
    QueueFull,
    /// The WAL could not take the batch.
    Unavailable,
    /// The request body did not arrive within the body-read timeout.
    Timeout,
    /// A span failed validation (ids) and was left out of its batch.
    Invalid,
    /// A span's times are outside what the store keeps: before retention,
    /// or ahead of the clock by more than `max_clock_skew`.
    OutOfRange,
}

impl Refusal {
    /// Every value, for series that start at zero.
    pub const ALL: [Self; 8] = [
        Self::Malformed,
        Self::TooLarge,
        Self::Unsupported,
        Self::QueueFull,
        Self::Unavailable,
        Self::Timeout,
        Self::Invalid,
        Self::OutOfRange,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::Unsupported => "unsupported",
            Self::QueueFull => "queue_full",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Invalid => "invalid",
            Self::OutOfRange => "out_of_range",
        }
    }
}

/// Which span limit removed or cut something: the `limit` label of
/// `tracemesh_collector_span_limited_total` (see
/// [`crate::ingest::limits::SpanLimits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanLimit {
    /// Attributes past `attribute_count_limit`, dropped.
    AttributeCount,
    /// Attributes with a key past `attribute_key_length_limit`, dropped.
    AttributeKeyLength,
    /// Values past `attribute_value_length_limit`, truncated.
    AttributeValueLength,
    /// Events past `event_count_limit`, dropped.
    EventCount,
    /// Links past `link_count_limit`, dropped.
    LinkCount,
}

impl SpanLimit {
    /// Every value, for series that start at zero.
    pub const ALL: [Self; 5] = [
        Self::AttributeCount,
        Self::AttributeKeyLength,
        Self::AttributeValueLength,
        Self::EventCount,
        Self::LinkCount,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::AttributeCount => "attribute_count",
            Self::AttributeKeyLength => "attribute_key_length",
            Self::AttributeValueLength => "attribute_value_length",
            Self::EventCount => "event_count",
            Self::LinkCount => "link_count",
        }
    }
}

/// Which listener timeout closed a connection: the `timeout` label of
/// `tracemesh_collector_listener_timeouts_total` (a body-read timeout
/// answers its request instead, counted as a refusal with reason
/// `timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerTimeout {
    /// An HTTP/1.1 request head not received in time.
    ReadHeader,
    /// No request in flight for the idle timeout.
    Idle,
}

impl ListenerTimeout {
    /// Every value, for series that start at zero.
    pub const ALL: [Self; 2] = [Self::ReadHeader, Self::Idle];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::ReadHeader => "read_header",
            Self::Idle => "idle",
        }
    }
}

/// Why a partition was dropped: the `reason` label of
/// `tracemesh_collector_partitions_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionDrop {
    /// All of it is older than the retention window.
    Retention,
    /// The store was over `max_disk`.
    MaxDisk,
    /// It starts further ahead of now than clock skew explains (written
    /// before such spans were refused).
    OutOfRange,
}

impl PartitionDrop {
    /// Every value, for series that start at zero.
    pub const ALL: [Self; 3] = [Self::Retention, Self::MaxDisk, Self::OutOfRange];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Retention => "retention",
            Self::MaxDisk => "max_disk",
            Self::OutOfRange => "out_of_range",
        }
    }
}

/// Every self-metric of the collector.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders (span-derived metrics register here too).
    pub registry: Registry,
    /// Spans received, by receiver (`otlp_grpc`, `otlp_http`, `zipkin`).
    pub spans_received: IntCounterVec,
    /// Spans acknowledged (durable in the WAL), by receiver.
    pub spans_accepted: IntCounterVec,
    /// Spans refused, by receiver and reason.
    pub spans_refused: IntCounterVec,
    /// Attributes, events and links dropped, and values cut, by span limit.
    pub span_limited: IntCounterVec,
    /// Connections closed by a listener timeout, by timeout.
    pub listener_timeouts: IntCounterVec,
    /// OTLP metric data points received, by receiver.
    pub metric_points_received: IntCounterVec,
    /// Spans acknowledged and not yet handed to the index (the ingest queue).
    pub ingest_queue_spans: IntGauge,
    /// Bytes appended to the WAL.
    pub wal_bytes: IntCounter,
    /// Records appended to the WAL.
    pub wal_records: IntCounter,
    /// Time taken by one WAL fsync (one group commit).
    pub wal_fsync_seconds: Histogram,
    /// WAL files on disk.
    pub wal_segments: IntGauge,
    /// Bytes cut from a torn or corrupt WAL on recovery.
    pub wal_cut_bytes: IntCounter,
    /// Acknowledged records lost to WAL damage or a missing WAL file.
    pub wal_lost_records: IntCounter,
    /// Records replayed from the WAL on start.
    pub wal_replayed_records: IntCounter,
    /// Spans added to the index.
    pub index_spans: IntCounter,
    /// Spans indexed that are exact copies of a span indexed shortly
    /// before (a client's resend, see [`crate::resends`]): stored, marked,
    /// and left out of statistics and span-derived metrics.
    pub index_duplicate_spans: IntCounter,
    /// Dependency edges not written because a remembered span's service
    /// name had been forgotten (see [`crate::edges`]).
    pub dependency_edges_dropped: IntCounter,
    /// Time taken by one index commit (all partitions written since the last).
    pub index_commit_seconds: Histogram,
    /// Index writes that failed (spans stay in the WAL and are retried on restart).
    pub index_errors: IntCounter,
    /// Partitions in the store.
    pub partitions: IntGauge,
    /// Bytes the data directory takes on disk (as `du` counts them).
    pub disk_bytes: IntGauge,
    /// Partitions dropped, by reason (`retention`, `max_disk`).
    pub partitions_dropped: IntCounterVec,
    /// Spans delivered by each exporter.
    pub exporter_sent_spans: IntCounterVec,
    /// Spans an exporter gave up on (non-retryable error).
    pub exporter_failed_spans: IntCounterVec,
    /// Spans dropped because an exporter's queue was full.
    pub exporter_dropped_spans: IntCounterVec,
    /// Metric data points sent by each exporter.
    pub exporter_sent_metric_points: IntCounterVec,
    /// Metric data points dropped or failed by each exporter.
    pub exporter_dropped_metric_points: IntCounterVec,
    /// Spans waiting in each exporter's queue.
    pub exporter_queue_spans: IntGaugeVec,
    /// Measurements of a span-derived metric folded into its overflow
    /// series (`otel_metric_overflow="true"`), by metric: their label set
    /// was new when the metric held `max_series_per_metric` series (see
    /// [`crate::spanmetrics`]). Its series start at zero when the
    /// span-derived metrics are created.
    pub metric_series_overflow: IntCounterVec,
}

impl Metrics {
    /// Creates every family and registers it in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
        };
        let metrics = Self {
            spans_received: counter(
                "tracemesh_collector_spans_received_total",
                "Spans received, by receiver.",
                &["receiver"],
            )?,
            spans_accepted: counter(
                "tracemesh_collector_spans_accepted_total",
                "Spans acknowledged after the WAL append, by receiver.",
                &["receiver"],
            )?,
            spans_refused: counter(
                "tracemesh_collector_spans_refused_total",
                "Spans refused, by receiver and reason.",
                &["receiver", "reason"],
            )?,
            span_limited: counter(
                "tracemesh_collector_span_limited_total",
                "Attributes, events and links dropped, and attribute values truncated, by the span limit that applied.",
                &["limit"],
            )?,
            listener_timeouts: counter(
                "tracemesh_collector_listener_timeouts_total",
                "Connections closed by a listener timeout (read_header, idle).",
                &["timeout"],
            )?,
            metric_points_received: counter(
                "tracemesh_collector_metric_points_received_total",
                "OTLP metric data points received, by receiver.",
                &["receiver"],
            )?,
            ingest_queue_spans: IntGauge::new(
                "tracemesh_collector_ingest_queue_spans",
                "Spans acknowledged and not yet in the index.",
            )?,
            wal_bytes: IntCounter::new(
                "tracemesh_collector_wal_bytes_total",
                "Bytes appended to the write-ahead log.",
            )?,
            wal_records: IntCounter::new(
                "tracemesh_collector_wal_records_total",
                "Records appended to the write-ahead log.",
            )?,
            wal_fsync_seconds: histogram(
                "tracemesh_collector_wal_fsync_seconds",
                "Duration of one write-ahead log fsync (one group commit).",
            )?,
            wal_segments: IntGauge::new(
                "tracemesh_collector_wal_segments",
                "Write-ahead log files on disk.",
            )?,
            wal_cut_bytes: IntCounter::new(
                "tracemesh_collector_wal_cut_bytes_total",
                "Bytes cut from a torn or corrupt write-ahead log on recovery.",
            )?,
            wal_lost_records: IntCounter::new(
                "tracemesh_collector_wal_lost_records_total",
                "Acknowledged write-ahead log records lost to damage or a missing file, found on recovery.",
            )?,
            wal_replayed_records: IntCounter::new(
                "tracemesh_collector_wal_replayed_records_total",
                "Write-ahead log records replayed on start.",
            )?,
            index_spans: IntCounter::new(
                "tracemesh_collector_index_spans_total",
                "Spans added to the index.",
            )?,
            index_duplicate_spans: IntCounter::new(
                "tracemesh_collector_index_duplicate_spans_total",
                "Spans that are exact copies of a span indexed shortly before (a client's resend): stored, but left out of query statistics, dependency edges and span-derived metrics.",
            )?,
            dependency_edges_dropped: IntCounter::new(
                "tracemesh_collector_dependency_edges_dropped_total",
                format!(
                    "Dependency edges not written because the service of the span remembered for them had been forgotten (more than {} new service names arrived since it was last seen).",
                    crate::edges::SERVICE_GENERATION
                ),
            )?,
            index_commit_seconds: histogram(
                "tracemesh_collector_index_commit_seconds",
                "Duration of one index commit.",
            )?,
            index_errors: IntCounter::new(
                "tracemesh_collector_index_errors_total",
                "Index writes or commits that failed.",
            )?,
            partitions: IntGauge::new(
                "tracemesh_collector_partitions",
                "Time partitions in the span store.",
            )?,
            disk_bytes: IntGauge::new(
                "tracemesh_collector_disk_bytes",
                "Bytes the data directory (span store and write-ahead log) takes on disk, as du counts them.",
            )?,
            partitions_dropped: counter(
                "tracemesh_collector_partitions_dropped_total",
                "Partitions dropped, by reason.",
                &["reason"],
            )?,
            exporter_sent_spans: counter(
                "tracemesh_collector_exporter_sent_spans_total",
                "Spans delivered by each exporter.",
                &["exporter"],
            )?,
            exporter_failed_spans: counter(
                "tracemesh_collector_exporter_failed_spans_total",
                "Spans an exporter gave up on after a non-retryable error, or that its backend rejected (OTLP partial success).",
                &["exporter"],
            )?,
            exporter_dropped_spans: counter(
                "tracemesh_collector_exporter_dropped_spans_total",
                "Spans dropped because an exporter's queue was full.",
                &["exporter"],
            )?,
            exporter_sent_metric_points: counter(
                "tracemesh_collector_exporter_sent_metric_points_total",
                "Metric data points delivered by each exporter.",
                &["exporter"],
            )?,
            exporter_dropped_metric_points: counter(
                "tracemesh_collector_exporter_dropped_metric_points_total",
                "Metric data points an exporter dropped or gave up on, or that its backend rejected (OTLP partial success).",
                &["exporter"],
            )?,
            exporter_queue_spans: IntGaugeVec::new(
                Opts::new(
                    "tracemesh_collector_exporter_queue_spans",
                    "Spans waiting in each exporter's queue.",
                ),
                &["exporter"],
            )?,
            metric_series_overflow: counter(
                "tracemesh_collector_metric_series_overflow_total",
                "Measurements of a span-derived metric folded into its overflow series (otel_metric_overflow=\"true\") because their label set was new when the metric held max_series_per_metric series, by metric.",
                &["metric"],
            )?,
            registry,
        };
        metrics.register_all()?;
        metrics.start_at_zero();
        Ok(metrics)
    }

    /// Creates the series of every known label value at zero, as Prometheus'
    /// instrumentation guide asks: a counter that appears only on its first
    /// event hides that event from `rate()` and makes dashboards and alerts
    /// on a healthy collector show no data instead of 0.
    fn start_at_zero(&self) {
        for receiver in Receiver::ALL.map(Receiver::label) {
            self.spans_received.with_label_values(&[receiver]);
            self.spans_accepted.with_label_values(&[receiver]);
            self.metric_points_received.with_label_values(&[receiver]);
            for reason in Refusal::ALL {
                self.spans_refused
                    .with_label_values(&[receiver, reason.label()]);
            }
        }
        for limit in SpanLimit::ALL {
            self.span_limited.with_label_values(&[limit.label()]);
        }
        for timeout in ListenerTimeout::ALL {
            self.listener_timeouts.with_label_values(&[timeout.label()]);
        }
        for reason in PartitionDrop::ALL {
            self.partitions_dropped.with_label_values(&[reason.label()]);
        }
    }

    fn register_all(&self) -> Result<(), prometheus::Error> {
        let r = &self.registry;
        r.register(Box::new(self.spans_received.clone()))?;
        r.register(Box::new(self.spans_accepted.clone()))?;
        r.register(Box::new(self.spans_refused.clone()))?;
        r.register(Box::new(self.span_limited.clone()))?;
        r.register(Box::new(self.listener_timeouts.clone()))?;
        r.register(Box::new(self.metric_points_received.clone()))?;
        r.register(Box::new(self.ingest_queue_spans.clone()))?;
        r.register(Box::new(self.wal_bytes.clone()))?;
        r.register(Box::new(self.wal_records.clone()))?;
        r.register(Box::new(self.wal_fsync_seconds.clone()))?;
        r.register(Box::new(self.wal_segments.clone()))?;
        r.register(Box::new(self.wal_cut_bytes.clone()))?;
        r.register(Box::new(self.wal_lost_records.clone()))?;
        r.register(Box::new(self.wal_replayed_records.clone()))?;
        r.register(Box::new(self.index_spans.clone()))?;
        r.register(Box::new(self.index_duplicate_spans.clone()))?;
        r.register(Box::new(self.dependency_edges_dropped.clone()))?;
        r.register(Box::new(self.index_commit_seconds.clone()))?;
        r.register(Box::new(self.index_errors.clone()))?;
        r.register(Box::new(self.partitions.clone()))?;
        r.register(Box::new(self.disk_bytes.clone()))?;
        r.register(Box::new(self.partitions_dropped.clone()))?;
        r.register(Box::new(self.exporter_sent_spans.clone()))?;
        r.register(Box::new(self.exporter_failed_spans.clone()))?;
        r.register(Box::new(self.exporter_dropped_spans.clone()))?;
        r.register(Box::new(self.exporter_sent_metric_points.clone()))?;
        r.register(Box::new(self.exporter_dropped_metric_points.clone()))?;
        r.register(Box::new(self.exporter_queue_spans.clone()))?;
        r.register(Box::new(self.metric_series_overflow.clone()))
    }

    /// The registry's families in Prometheus text format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

/// A histogram family with the given labels and buckets.
pub fn histogram_vec(
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<HistogramVec, prometheus::Error> {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::IngestError;

    #[test]
    fn every_refusal_reason_starts_at_zero() {
        let errors = [
            IngestError::Malformed("x".into()),
            IngestError::TooLarge { limit: 1 },
            IngestError::UnsupportedMediaType("x".into()),
            IngestError::QueueFull,
            IngestError::Unavailable("x".into()),
            IngestError::Timeout(std::time::Duration::from_secs(1)),
        ];
        for error in errors {
            assert!(Refusal::ALL.contains(&error.reason()), "{error}");
        }
        let text = Metrics::new().unwrap().render();
        assert!(text.contains(
            "tracemesh_collector_spans_refused_total{reason=\"queue_full\",receiver=\"zipkin\"} 0"
        ));
        assert!(
            text.contains("tracemesh_collector_partitions_dropped_total{reason=\"max_disk\"} 0")
        );
        assert!(text.contains("tracemesh_collector_dependency_edges_dropped_total 0"));
    }
}
