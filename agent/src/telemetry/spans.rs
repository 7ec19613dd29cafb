//! The span pipeline: the OpenTelemetry SDK's batch processor and the OTLP
//! exporter, bounded so that a slow or absent collector never slows a proxied
//! request — spans beyond the queue are dropped and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanExporter,
    SpanProcessor, Tracer,
};
use prometheus::IntCounter;

use crate::model::Identity;
use crate::model::bootstrap::{OtlpProtocol, Telemetry};
use crate::model::clock::now_ms;

/// Why the span pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpanPipelineError {
    /// The export runtime's thread could not start.
    #[error("cannot start the span export runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// The OTLP exporter refused its settings.
    #[error("invalid OTLP exporter settings: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A header for the exporter is invalid.
    #[error("invalid OTLP header {0:?}")]
    Header(String),
}

/// Counters of the pipeline, shared by the processor and the exporter.
#[derive(Debug)]
pub struct SpanCounters {
    queued: AtomicUsize,
    capacity: usize,
    /// Drops not yet reported in a log line.
    unreported_drops: AtomicU64,
    /// When the last drop line was written ([`now_ms`]).
    reported_at_ms: AtomicU64,
    /// Spans the endpoint accepted.
    pub exported: IntCounter,
    /// Spans whose export failed after retries.
    pub failed: IntCounter,
    /// Spans dropped because the queue was full.
    pub dropped: IntCounter,
}

/// Longest a span drop waits to be reported in a log line.
const DROP_REPORT_INTERVAL_MS: u64 = 10_000;

impl SpanCounters {
    /// A finished span found the export queue full: counted at once, and
    /// logged at WARN (data is lost) at most once per ten seconds with the
    /// number dropped since the last line, so a flood of drops is one line.
    fn span_dropped(&self) {
        self.span_dropped_at(now_ms());
    }

    fn span_dropped_at(&self, now: u64) {
        self.dropped.inc();
        self.unreported_drops.fetch_add(1, Ordering::Relaxed);
        let last = self.reported_at_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < DROP_REPORT_INTERVAL_MS && last != 0 {
            return;
        }
        if self
            .reported_at_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let dropped = self.unreported_drops.swap(0, Ordering::Relaxed);
            tracing::warn!(
                dropped,
                capacity = self.capacity,
                "span export queue full, spans dropped (counted in tracemesh_agent_spans_dropped_total)"
            );
        }
    }
}

/// The running pipeline. Dropping it does not flush; call [`shutdown`](Self::shutdown).
pub struct SpanPipeline {
    provider: SdkTracerProvider,
    tracer: Tracer,
    runtime: Option<tokio::runtime::Runtime>,
}

impl SpanPipeline {
    /// Starts the export runtime, the OTLP exporter and the batch processor.
    pub fn start(
        spec: &Telemetry,
        identity: &Identity,
        counters: SpanCounterHandles,
    ) -> Result<Self, SpanPipelineError> {
        // tonic's channel and the HTTP client live on this runtime; the batch
        // processor's thread hands each export to it.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .on_thread_start(super::background::lower_current_thread)
            .enable_all()
            .build()?;
        let exporter = {
            let _entered = runtime.enter();
            build_exporter(spec)?
        };
        let counters = Arc::new(SpanCounters {
            queued: AtomicUsize::new(0),
            capacity: spec.max_queued_spans,
            unreported_drops: AtomicU64::new(0),
            reported_at_ms: AtomicU64::new(0),
            exported: counters.exported,
            failed: counters.failed,
            dropped: counters.dropped,
        });
        let exporter = CountingExporter {
            inner: Arc::new(exporter),
            runtime: runtime.handle().clone(),
            counters: counters.clone(),
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(counters.capacity + 64)
            .with_max_export_batch_size(512.min(counters.capacity))
            .with_scheduled_delay(spec.flush_interval)
            .build();
        let processor = BoundedProcessor {
            inner: BatchSpanProcessor::new(exporter, batch),
            counters,
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(super::sampler::CallerFirst::new(spec.sampling))
            .with_resource(resource(identity))
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "tracemesh-agent");
        Ok(Self {
            provider,
            tracer,
            runtime: Some(runtime),
        })
    }

    /// The tracer the request path starts spans with.
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// Exports what is queued (bounded by the export timeout) and stops.
    pub fn shutdown(mut self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "span pipeline did not flush cleanly");
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The metric handles the pipeline counts into.
#[derive(Debug, Clone)]
pub struct SpanCounterHandles {
    /// Spans exported.
    pub exported: IntCounter,
    /// Spans that failed to export.
    pub failed: IntCounter,
    /// Spans dropped at the queue.
    pub dropped: IntCounter,
}

fn build_exporter(spec: &Telemetry) -> Result<opentelemetry_otlp::SpanExporter, SpanPipelineError> {
    let otlp = &spec.otlp;
    if otlp.protocol == OtlpProtocol::HttpProtobuf {
        let endpoint = if otlp.endpoint.ends_with("/v1/traces") {
            otlp.endpoint.clone()
        } else {
            format!("{}/v1/traces", otlp.endpoint.trim_end_matches('/'))
        };
        let headers = otlp
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        return Ok(opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(otlp.timeout)
            .with_headers(headers)
            .build()?);
    }
    let mut metadata = tonic::metadata::MetadataMap::new();
    for (key, value) in &otlp.headers {
        let key = tonic::metadata::MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
            .map_err(|_| SpanPipelineError::Header(key.clone()))?;
        let value = value
            .parse()
            .map_err(|_| SpanPipelineError::Header(value.clone()))?;
        metadata.insert(key, value);
    }
    Ok(opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(otlp.endpoint.clone())
        .with_timeout(otlp.timeout)
        .with_metadata(metadata)
        .build()?)
}

/// `service.name` is the canonical service (`reviews`), as Jaeger and Tempo
/// users expect; namespace, version and workload ride alongside.
fn resource(identity: &Identity) -> Resource {
    Resource::builder()
        .with_service_name(identity.canonical_service.clone())
        .with_attributes([
            KeyValue::new("service.namespace", identity.namespace.clone()),
            KeyValue::new("service.version", identity.canonical_revision.clone()),
            KeyValue::new("service.instance.id", identity.workload.clone()),
            KeyValue::new("k8s.namespace.name", identity.namespace.clone()),
            KeyValue::new("tracemesh.workload", identity.workload.clone()),
        ])
        .build()
}

/// Refuses spans beyond the queue's capacity (counting them) before they
/// reach the SDK's queue, which is sized so it never overflows itself.
#[derive(Debug)]
struct BoundedProcessor {
    inner: BatchSpanProcessor,
    counters: Arc<SpanCounters>,
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let c = &self.counters;
        if c.queued.fetch_add(1, Ordering::Relaxed) >= c.capacity {
            c.queued.fetch_sub(1, Ordering::Relaxed);
            c.span_dropped();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Runs each export on the export runtime and counts its outcome.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: Arc<E>,
    runtime: tokio::runtime::Handle,
    counters: Arc<SpanCounters>,
}

impl<E: SpanExporter + 'static> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        // This runs on the SDK's batch thread, which encodes nothing but
        // still wakes per batch: it yields to the workers too.
        super::background::lower_current_thread();
        let count = batch.len();
        let inner = self.inner.clone();
        let result = self
            .runtime
            .spawn(async move { inner.export(batch).await })
            .await
            .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())));
        self.counters.queued.fetch_sub(count, Ordering::Relaxed);
        let outcome = if result.is_ok() {
            &self.counters.exported
        } else {
            &self.counters.failed
        };
        outcome.inc_by(count as u64);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_at_once_and_reported_at_most_every_ten_seconds() {
        let counter = |name: &str| IntCounter::new(name, "spans").expect("a counter");
        let counters = SpanCounters {
            queued: AtomicUsize::new(0),
            capacity: 1,
            unreported_drops: AtomicU64::new(0),
            reported_at_ms: AtomicU64::new(0),
            exported: counter("exported"),
            failed: counter("failed"),
            dropped: counter("dropped"),
        };
        counters.span_dropped_at(5);
        assert_eq!(counters.dropped.get(), 1);
        assert_eq!(
            counters.unreported_drops.load(Ordering::Relaxed),
            0,
            "the first drop is reported at once"
        );
        for ms in 6..105 {
            counters.span_dropped_at(ms);
        }
        assert_eq!(counters.dropped.get(), 100);
        assert_eq!(
            counters.unreported_drops.load(Ordering::Relaxed),
            99,
            "the rest wait for the next line"
        );
        // Ten seconds after the first line the next drop reports them all.
        counters.span_dropped_at(9_999);
        assert_eq!(counters.unreported_drops.load(Ordering::Relaxed), 100);
        counters.span_dropped_at(10_005);
        assert_eq!(counters.unreported_drops.load(Ordering::Relaxed), 0);
        assert_eq!(counters.dropped.get(), 102);
    }
}
