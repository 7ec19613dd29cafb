//! The ingest path shared by every receiver.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;

use super::decode::{DecodedTraces, Undecodable};
use super::limits::SpanLimits;
use super::validate::{self, Rejected};
use crate::error::IngestError;
use crate::events;
use crate::export::Exporters;
use crate::handoff::{IndexItem, IngestQueue};
use crate::metrics::{Metrics, Receiver};
use crate::otlp_metrics::OtlpMetrics;
use crate::store::SpanStore;
use crate::store::document::span_count;
use crate::store::schema::SpanFields;
use crate::wal::WalHandle;

/// What became of an accepted request: OTLP's partial success.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Spans (or data points) not written, with why.
    pub rejected: u64,
    /// Why, empty when nothing was rejected.
    pub message: String,
}

impl Accepted {
    /// The answer for the spans that could not be decoded and those that
    /// validation removed.
    fn of(undecodable: &Undecodable, rejected: Rejected) -> Self {
        let message = match (undecodable.any(), rejected.count > 0) {
            (false, _) => rejected.message,
            (true, false) => undecodable.message(),
            (true, true) => format!("{}; {}", undecodable.message(), rejected.message),
        };
        Self {
            rejected: undecodable.spans + rejected.count,
            message,
        }
    }
}

/// Everything the ingest path is built from.
pub struct IngestParts {
    /// Where accepted batches are made durable (and handed to the indexer).
    pub wal: WalHandle<IndexItem>,
    /// The store's fields, to build each batch's documents on the receiver's thread.
    pub fields: SpanFields,
    /// The partition length, in seconds.
    pub partition_length: u64,
    /// Spans acknowledged and not yet indexed, bounded.
    pub queue: Arc<IngestQueue>,
    /// Where accepted spans and metrics are forwarded.
    pub exporters: Exporters,
    /// Received OTLP metrics, re-exposed on `/metrics`.
    pub otlp_metrics: Arc<OtlpMetrics>,
    /// Self-metrics.
    pub metrics: Metrics,
    /// Spans that started before now minus this are refused.
    pub retention: Duration,
    /// Spans that start or end after now plus this are refused.
    pub max_clock_skew: Duration,
    /// Largest decompressed body, in bytes.
    pub max_request_size: usize,
    /// What one span may carry.
    pub span_limits: SpanLimits,
}

/// The shared ingest path. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    parts: Arc<IngestParts>,
}

impl Ingest {
    /// Assembles the path.
    pub fn new(parts: IngestParts) -> Self {
        Self {
            parts: Arc::new(parts),
        }
    }

    /// Largest decompressed body, in bytes.
    pub fn max_request_size(&self) -> usize {
        self.parts.max_request_size
    }

    /// Counts (and logs) a request refused before it was decoded.
    pub fn refused(&self, receiver: Receiver, error: &IngestError) {
        events::request_refused(&self.parts.metrics, receiver, error);
    }

    /// Counts (and logs) a batch of `spans` spans received and refused
    /// whole before anything of it was written (a Zipkin batch with a bad
    /// span).
    pub fn batch_refused(&self, receiver: Receiver, spans: u64, error: &IngestError) {
        let metrics = &self.parts.metrics;
        metrics
            .spans_received
            .with_label_values(&[receiver.label()])
            .inc_by(spans);
        events::batch_refused(metrics, receiver, spans, error);
    }

    /// The span times the store keeps now: from the retention's start to
    /// the allowed clock skew ahead.
    pub fn time_bounds(&self) -> validate::TimeBounds {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        validate::TimeBounds {
            oldest_start: nanos(now.saturating_sub(self.parts.retention)),
            newest: nanos(now.saturating_add(self.parts.max_clock_skew)),
        }
    }

    /// Validates, admits and durably appends a trace request; returns once
    /// it is in the WAL (the sender may then be acknowledged). The spans
    /// that could not be decoded count as received and rejected, and so do
    /// the spans validation removes: the rest is written, and the answer
    /// says what was not (OTLP's partial success). The request's protobuf
    /// encoding, when the receiver has it, is written as is when no span
    /// was removed.
    pub async fn traces(
        &self,
        receiver: Receiver,
        decoded: DecodedTraces,
    ) -> Result<Accepted, IngestError> {
        self.traces_within(receiver, decoded, self.time_bounds())
            .await
    }

    /// As [`Self::traces`], with the span times kept read earlier: a
    /// receiver whose protocol has no partial success (Zipkin) refuses a
    /// batch with a span outside `bounds` itself, and then validation
    /// removes nothing of it.
    pub async fn traces_within(
        &self,
        receiver: Receiver,
        decoded: DecodedTraces,
        bounds: validate::TimeBounds,
    ) -> Result<Accepted, IngestError> {
        let DecodedTraces {
            mut request,
            encoded: raw,
            undecodable,
        } = decoded;
        let parts = &*self.parts;
        let label = receiver.label();
        let received = span_count(&request.resource_spans) + undecodable.spans;
        parts
            .metrics
            .spans_received
            .with_label_values(&[label])
            .inc_by(received);
        let rejected = validate::retain_valid(&mut request.resource_spans, bounds);
        events::spans_undecodable(&parts.metrics, receiver, &undecodable);
        events::spans_rejected(&parts.metrics, receiver, &rejected);
        let limited = parts.span_limits.apply(&mut request.resource_spans);
        events::span_limits_applied(&parts.metrics, receiver, &limited);
        // The bytes as received hold exactly the accepted spans only if
        // nothing was removed or cut.
        let raw = raw.filter(|_| rejected.count == 0 && !limited.any());
        let answer = Accepted::of(&undecodable, rejected);
        let accepted = received - answer.rejected;
        if accepted == 0 {
            return Ok(answer);
        }
        let refuse = |error: IngestError| {
            events::batch_refused(&parts.metrics, receiver, accepted, &error);
            error
        };
        if !parts.queue.try_admit(accepted as usize) {
            return Err(refuse(IngestError::QueueFull));
        }
        parts
            .metrics
            .ingest_queue_spans
            .set(parts.queue.used() as i64);
        let release = || {
            let left = parts.queue.release(accepted as usize);
            parts.metrics.ingest_queue_spans.set(left as i64);
        };
        // Encoding and document building take milliseconds for a large
        // batch: off the async workers, and in parallel across requests.
        let (fields, length) = (parts.fields, parts.partition_length);
        let prepared = tokio::task::spawn_blocking(move || {
            let payload = raw.unwrap_or_else(|| request.encode_to_vec().into());
            let prepared =
                SpanStore::prepare(&fields, &request.resource_spans, Some(&payload), length);
            (payload, prepared, request)
        })
        .await;
        let (payload, prepared, request) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                release();
                return Err(refuse(IngestError::Unavailable(format!(
                    "batch preparation failed: {error}"
                ))));
            }
        };
        let batch = Arc::new(request);
        let item = IndexItem {
            batch: batch.clone(),
            docs: prepared.docs,
            fingerprints: prepared.fingerprints,
            spans: accepted as usize,
        };
        if let Err(error) = parts.wal.append(payload, item).await {
            release();
            return Err(refuse(IngestError::Unavailable(error.to_string())));
        }
        parts
            .metrics
            .spans_accepted
            .with_label_values(&[label])
            .inc_by(accepted);
        parts.exporters.offer_spans(&batch);
        Ok(answer)
    }

    /// Takes a metrics request: re-exposed on `/metrics` and handed to the
    /// exporters (metrics are not written to the WAL).
    pub fn metrics(&self, receiver: Receiver, request: ExportMetricsServiceRequest) -> Accepted {
        let parts = &*self.parts;
        let points = parts.otlp_metrics.ingest(&request);
        parts
            .metrics
            .metric_points_received
            .with_label_values(&[receiver.label()])
            .inc_by(points);
        parts.exporters.offer_metrics(Arc::new(request));
        Accepted::default()
    }
}
