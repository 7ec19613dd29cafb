//! The ingest path shared by every receiver.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::validate;
use crate::error::IngestError;
use crate::export::Exporters;
use crate::indexer::IndexItem;
use crate::metrics::Metrics;
use crate::otlp_metrics::OtlpMetrics;
use crate::store::SpanStore;
use crate::store::schema::SpanFields;
use crate::wal::WalHandle;

/// Which receiver a request came in on (the `receiver` metric label).
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
    fn label(self) -> &'static str {
        match self {
            Self::OtlpGrpc => "otlp_grpc",
            Self::OtlpHttp => "otlp_http",
            Self::Zipkin => "zipkin",
        }
    }
}

/// What became of an accepted request: OTLP's partial success.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Spans (or data points) not written, with why.
    pub rejected: u64,
    /// Why, empty when nothing was rejected.
    pub message: String,
}

/// The ingest queue: spans acknowledged but not yet in the index. A batch
/// is admitted only if it fits, so memory stays bounded whatever senders do.
#[derive(Debug)]
pub struct IngestQueue {
    spans: AtomicUsize,
    capacity: usize,
}

impl IngestQueue {
    /// A queue of `capacity` spans.
    pub fn new(capacity: usize) -> Self {
        Self {
            spans: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Takes room for `n` spans; a batch larger than the whole queue is
    /// admitted only when the queue is empty.
    fn try_admit(&self, n: usize) -> bool {
        self.spans
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used == 0 || used + n <= self.capacity).then_some(used + n)
            })
            .is_ok()
    }

    /// Gives back room for `n` spans (they are in the index now).
    pub fn release(&self, n: usize) -> usize {
        self.spans.fetch_sub(n, Ordering::AcqRel) - n
    }

    fn used(&self) -> usize {
        self.spans.load(Ordering::Acquire)
    }
}

/// The shared ingest path. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    wal: WalHandle<IndexItem>,
    fields: SpanFields,
    partition_length: u64,
    queue: Arc<IngestQueue>,
    exporters: Exporters,
    otlp_metrics: Arc<OtlpMetrics>,
    metrics: Metrics,
    retention: Duration,
    /// Largest decompressed body, in bytes.
    pub max_request_size: usize,
}

impl Ingest {
    /// Assembles the path.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        wal: WalHandle<IndexItem>,
        fields: SpanFields,
        partition_length: u64,
        queue: Arc<IngestQueue>,
        exporters: Exporters,
        otlp_metrics: Arc<OtlpMetrics>,
        metrics: Metrics,
        retention: Duration,
        max_request_size: usize,
    ) -> Self {
        Self {
            wal,
            fields,
            partition_length,
            queue,
            exporters,
            otlp_metrics,
            metrics,
            retention,
            max_request_size,
        }
    }

    /// Counts a request refused before it was decoded.
    pub fn refused(&self, receiver: Receiver, error: &IngestError) {
        self.metrics
            .spans_refused
            .with_label_values(&[receiver.label(), error.reason()])
            .inc();
    }

    /// Validates, admits and durably appends a trace request; returns once
    /// it is in the WAL (the sender may then be acknowledged). `raw` is the
    /// request's protobuf encoding when the receiver has it: written as is
    /// when no span was removed.
    pub async fn traces(
        &self,
        receiver: Receiver,
        mut request: ExportTraceServiceRequest,
        raw: Option<bytes::Bytes>,
    ) -> Result<Accepted, IngestError> {
        let label = receiver.label();
        let received = validate::span_count(&request.resource_spans);
        self.metrics
            .spans_received
            .with_label_values(&[label])
            .inc_by(received);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let oldest = now.saturating_sub(self.retention).as_nanos() as u64;
        let rejected = validate::retain_valid(&mut request.resource_spans, oldest);
        if rejected.count > 0 {
            self.metrics
                .spans_refused
                .with_label_values(&[label, "invalid"])
                .inc_by(rejected.count);
        }
        let accepted = received - rejected.count;
        if accepted == 0 {
            return Ok(Accepted {
                rejected: rejected.count,
                message: rejected.message,
            });
        }
        if !self.queue.try_admit(accepted as usize) {
            self.metrics
                .spans_refused
                .with_label_values(&[label, "queue_full"])
                .inc_by(accepted);
            return Err(IngestError::QueueFull);
        }
        self.metrics
            .ingest_queue_spans
            .set(self.queue.used() as i64);
        // Encoding and document building take milliseconds for a large
        // batch: off the async workers, and in parallel across requests.
        let (fields, length) = (self.fields, self.partition_length);
        let prepared = tokio::task::spawn_blocking(move || {
            let payload = match raw {
                Some(raw) if rejected.count == 0 => raw,
                _ => request.encode_to_vec().into(),
            };
            let docs = SpanStore::prepare(&fields, &request.resource_spans, Some(&payload), length);
            (payload, docs, request)
        })
        .await;
        let (payload, docs, request) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                self.metrics
                    .ingest_queue_spans
                    .set(self.queue.release(accepted as usize) as i64);
                return Err(IngestError::Unavailable(format!(
                    "batch preparation failed: {error}"
                )));
            }
        };
        let batch = Arc::new(request);
        let item = IndexItem {
            batch: batch.clone(),
            docs,
            spans: accepted as usize,
        };
        if let Err(error) = self.wal.append(payload, item).await {
            self.metrics
                .ingest_queue_spans
                .set(self.queue.release(accepted as usize) as i64);
            self.metrics
                .spans_refused
                .with_label_values(&[label, "unavailable"])
                .inc_by(accepted);
            return Err(IngestError::Unavailable(error.to_string()));
        }
        self.metrics
            .spans_accepted
            .with_label_values(&[label])
            .inc_by(accepted);
        self.exporters.offer_spans(&batch);
        Ok(Accepted {
            rejected: rejected.count,
            message: rejected.message,
        })
    }

    /// Takes a metrics request: re-exposed on `/metrics` and handed to the
    /// exporters (metrics are not written to the WAL).
    pub fn metrics(&self, receiver: Receiver, request: ExportMetricsServiceRequest) -> Accepted {
        let points = self.otlp_metrics.ingest(&request);
        self.metrics
            .metric_points_received
            .with_label_values(&[receiver.label()])
            .inc_by(points);
        self.exporters.offer_metrics(Arc::new(request));
        Accepted::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_admits_what_fits() {
        let queue = IngestQueue::new(1000);
        assert!(queue.try_admit(600));
        assert!(!queue.try_admit(600), "over capacity");
        assert!(queue.try_admit(400));
        assert_eq!(queue.release(1000), 0);
        assert!(
            queue.try_admit(5000),
            "an empty queue takes one oversized batch"
        );
        assert!(!queue.try_admit(1));
    }
}
