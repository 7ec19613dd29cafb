//! The span pipeline. Each worker appends its finished spans, already
//! encoded as OTLP protobuf, to a batch of its own ([`WorkerSpans`]); a full
//! batch, or one that has waited the flush interval, goes whole to the
//! export thread, which only wraps it in the `ExportTraceServiceRequest`
//! envelope (resource and scope encoded once) and sends the bytes
//! ([`super::otlp_export`]). Memory is bounded: past the queue's capacity
//! spans are dropped before they are encoded, and counted; a slow or absent
//! collector never slows a proxied request.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use super::otlp_export::{ExportError, Exporter, Payload};
use super::otlp_wire as wire;
use crate::model::Identity;
use crate::model::bootstrap::Telemetry;
use crate::model::clock::now_ms;

/// Why the span pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpanPipelineError {
    /// The export thread or its runtime could not start.
    #[error("cannot start the span export thread: {0}")]
    Runtime(#[from] std::io::Error),
    /// The OTLP endpoint is not a valid URI.
    #[error("invalid OTLP endpoint {0:?}: {1}")]
    Endpoint(String, String),
    /// A header for the exporter is invalid: its name (never its value,
    /// often a credential).
    #[error("invalid OTLP header {0:?} (its value is not shown)")]
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

/// Spans per export request at most (the OpenTelemetry SDK's default batch).
const MAX_BATCH_SPANS: usize = 512;

/// Encoded bytes per batch, and per export request, at most (give or take
/// one span): a batch ships when it reaches either bound. A request is
/// held whole until its export ends (it may be sent again), each export
/// in flight its own, so the byte bound is what keeps the export side's
/// memory small and flat: with the cost bench's spans (~1.3 KiB: 17
/// attributes and the hop's names), a batch is ~100 spans.
const MAX_BATCH_BYTES: usize = 128 << 10;

/// Shipped batches whose sizes a worker's next batch is sized by. At a
/// rate where the byte bound ships one batch and the flush timer the next
/// (two or three a second), the largest of the last four is always a full
/// one, so no batch is regrown; when the rate falls, the room goes back
/// after four smaller batches.
const RECENT_BATCHES: usize = 4;

/// Export requests sent at once, at most. One at a time, a collector's
/// round trip bounds the spans a second that can be delivered (under
/// saturation, with ~13 ms round trips to a sink on a busy core, 64 KiB
/// requests delivered under half the spans); four keep the queue short,
/// and with it the memory it holds, while bounding what is in flight to
/// four requests.
const MAX_EXPORTS_IN_FLIGHT: usize = 4;

/// What every worker's batch shares: the sampling ratio, the batch limits,
/// the counters and the way to the export thread.
#[derive(Debug)]
pub struct SpanSink {
    ratio: f64,
    batch_spans: usize,
    /// A batch ships once it holds this many encoded bytes.
    batch_bytes: usize,
    flush_interval: Duration,
    counters: Arc<SpanCounters>,
    batches: mpsc::UnboundedSender<Batch>,
}

/// Spans encoded as consecutive `ScopeSpans.spans` fields.
#[derive(Debug, Default)]
struct Batch {
    spans: Vec<u8>,
    count: usize,
}

/// One worker's batch of finished spans. Only its own thread touches it.
pub struct WorkerSpans {
    sink: Arc<SpanSink>,
    batch: RefCell<Batch>,
    /// The lengths in bytes of the last [`RECENT_BATCHES`] shipped batches,
    /// newest first: a batch starts with a little over the largest, so it
    /// is rarely regrown span by span (copying what it holds at every
    /// doubling), and a rate that falls gives the room back within a few
    /// batches. A queued batch keeps its spare capacity until its export
    /// ends: bounded by the batch byte limit.
    recent: Cell<[usize; RECENT_BATCHES]>,
    /// A flush is scheduled.
    timer: Cell<bool>,
    this: Weak<WorkerSpans>,
}

impl WorkerSpans {
    /// A worker's batch, empty.
    pub fn new(sink: Arc<SpanSink>) -> Rc<Self> {
        Rc::new_cyclic(|this| Self {
            sink,
            batch: RefCell::default(),
            recent: Cell::new([0; RECENT_BATCHES]),
            timer: Cell::new(false),
            this: this.clone(),
        })
    }

    /// The share of new traces recorded (0.0–1.0).
    pub fn ratio(&self) -> f64 {
        self.sink.ratio
    }

    /// Appends one finished span, encoded by `encode`, unless the queue is
    /// full (then it is dropped, counted, and never encoded). A full batch
    /// goes to the export thread at once; the first span of a batch
    /// schedules its flush, so an idle worker has no timer at all.
    pub fn push(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        let counters = &self.sink.counters;
        let mut batch = self.batch.borrow_mut();
        if counters.queued.load(Ordering::Relaxed) + batch.count >= counters.capacity {
            counters.span_dropped();
            return;
        }
        if batch.spans.capacity() == 0 {
            let largest = self.recent.get().into_iter().max().unwrap_or(0);
            batch.spans.reserve(largest + largest / 16);
        }
        encode(&mut batch.spans);
        batch.count += 1;
        if batch.count >= self.sink.batch_spans || batch.spans.len() >= self.sink.batch_bytes {
            let full = std::mem::take(&mut *batch);
            drop(batch);
            self.ship(full);
        } else if batch.count == 1 && !self.timer.replace(true) {
            let this = self.this.clone();
            let interval = self.sink.flush_interval;
            tokio::task::spawn_local(async move {
                tokio::time::sleep(interval).await;
                if let Some(this) = this.upgrade() {
                    this.timer.set(false);
                    this.flush();
                }
            });
        }
    }

    /// Sends what the batch holds to the export thread.
    pub fn flush(&self) {
        let batch = std::mem::take(&mut *self.batch.borrow_mut());
        if batch.count > 0 {
            self.ship(batch);
        }
    }

    fn ship(&self, batch: Batch) {
        let mut recent = self.recent.get();
        recent.rotate_right(1);
        recent[0] = batch.spans.len();
        self.recent.set(recent);
        let counters = &self.sink.counters;
        let count = batch.count;
        counters.queued.fetch_add(count, Ordering::Relaxed);
        if self.sink.batches.send(batch).is_err() {
            // The pipeline has shut down.
            counters.queued.fetch_sub(count, Ordering::Relaxed);
            counters.failed.inc_by(count as u64);
        }
    }
}

impl Drop for WorkerSpans {
    /// A stopping worker hands over what it holds.
    fn drop(&mut self) {
        self.flush();
    }
}

/// The running pipeline. Dropping it does not flush; call [`shutdown`](Self::shutdown).
pub struct SpanPipeline {
    sink: Arc<SpanSink>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SpanPipeline {
    /// Starts the export thread (below the workers' CPU priority) with its OTLP
    /// client; the endpoint and headers are checked here.
    pub fn start(
        spec: &Telemetry,
        identity: &Identity,
        counters: SpanCounterHandles,
    ) -> Result<Self, SpanPipelineError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let exporter = {
            let _entered = runtime.enter();
            Exporter::new(&spec.otlp)?
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
        let (batches, queue) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let sink = Arc::new(SpanSink {
            ratio: spec.sampling,
            batch_spans: MAX_BATCH_SPANS.min(spec.max_queued_spans).max(1),
            batch_bytes: MAX_BATCH_BYTES,
            flush_interval: spec.flush_interval,
            counters: counters.clone(),
            batches,
        });
        let export = Export {
            envelope: Envelope::new(&resource(identity)),
            exporter,
            counters,
            batch_spans: sink.batch_spans,
            batch_bytes: sink.batch_bytes,
            drain_for: spec.otlp.timeout,
            failures_logged_at: None,
        };
        let thread = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                super::background::lower_current_thread();
                runtime.block_on(export.run(queue, stopped));
            })?;
        Ok(Self {
            sink,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// What the workers' batches share.
    pub fn sink(&self) -> &Arc<SpanSink> {
        &self.sink
    }

    /// Exports what is queued (for at most the export timeout) and stops.
    /// Call it after the workers have stopped: they hand over their batches
    /// as they go.
    pub fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("span export thread panicked");
        }
    }
}

/// The export thread's state.
struct Export {
    envelope: Envelope,
    exporter: Exporter,
    counters: Arc<SpanCounters>,
    batch_spans: usize,
    batch_bytes: usize,
    drain_for: Duration,
    failures_logged_at: Option<Instant>,
}

impl Export {
    /// Takes batches off the queue and sends them, up to
    /// [`MAX_EXPORTS_IN_FLIGHT`] requests at once, until `stop`; then sends
    /// what is left within the export timeout.
    async fn run(
        mut self,
        mut queue: mpsc::UnboundedReceiver<Batch>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut in_flight = FuturesUnordered::new();
        let mut open = true;
        while open || !in_flight.is_empty() {
            tokio::select! {
                batch = queue.recv(), if open && in_flight.len() < MAX_EXPORTS_IN_FLIGHT => match batch {
                    Some(batch) => in_flight.push(self.send(batch, &mut queue)),
                    None => open = false,
                },
                Some((count, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                    self.account(count, outcome);
                }
                _ = &mut stop, if open => break,
            }
        }
        // Shutting down: what is in flight, then what the workers handed
        // over, within the timeout.
        let deadline = tokio::time::Instant::now() + self.drain_for;
        let drain = async {
            while let Some((count, outcome)) = in_flight.next().await {
                self.account(count, outcome);
            }
            while let Ok(batch) = queue.try_recv() {
                let (count, outcome) = self.send(batch, &mut queue).await;
                self.account(count, outcome);
            }
        };
        if tokio::time::timeout_at(deadline, drain).await.is_err() {
            tracing::warn!("span export did not finish before shutdown");
        }
    }

    /// The request for `first` with whatever else is waiting, up to a
    /// batch's worth of spans and of bytes, as a future of its own that
    /// sends it (retries included): how many spans, and the outcome. The
    /// batches are wrapped as they are, never first copied into one.
    fn send(
        &self,
        first: Batch,
        queue: &mut mpsc::UnboundedReceiver<Batch>,
    ) -> impl Future<Output = (usize, Result<u64, ExportError>)> + use<> {
        let mut count = first.count;
        let mut bytes = first.spans.len();
        let mut batches = vec![first.spans];
        while count < self.batch_spans && bytes < self.batch_bytes {
            let Ok(more) = queue.try_recv() else { break };
            bytes += more.spans.len();
            batches.push(more.spans);
            count += more.count;
        }
        let request = self.envelope.wrap(batches);
        let exporter = self.exporter.clone();
        async move { (count, exporter.export(request).await) }
    }

    /// Counts what one request did: exported, rejected, or failed (and
    /// logged).
    fn account(&mut self, count: usize, outcome: Result<u64, ExportError>) {
        let counters = &self.counters;
        counters.queued.fetch_sub(count, Ordering::Relaxed);
        match outcome {
            Ok(rejected) => {
                let rejected = (rejected as usize).min(count);
                counters.exported.inc_by((count - rejected) as u64);
                counters.failed.inc_by(rejected as u64);
            }
            Err(error) => {
                counters.failed.inc_by(count as u64);
                self.log_failure(&error, count);
            }
        }
    }

    /// Failed exports lose spans: logged at WARN, at most every ten seconds.
    fn log_failure(&mut self, error: &ExportError, spans: usize) {
        let now = Instant::now();
        if self.failures_logged_at.is_some_and(|at| {
            now.duration_since(at) < Duration::from_millis(DROP_REPORT_INTERVAL_MS)
        }) {
            return;
        }
        self.failures_logged_at = Some(now);
        tracing::warn!(%error, spans, "span export failed, spans lost (counted in tracemesh_agent_spans_export_failed_total)");
    }
}

/// The `ExportTraceServiceRequest` around a batch: one `ResourceSpans` with
/// this agent's resource and one `ScopeSpans` of scope `tracemesh-agent`,
/// as the OpenTelemetry SDK's exporter groups them.
struct Envelope {
    resource: Vec<u8>,
    schema_url: String,
    scope: Vec<u8>,
}

impl Envelope {
    fn new(resource: &Resource) -> Self {
        use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
        let attributes = resource
            .iter()
            .map(|(key, value)| KeyValue {
                key: key.to_string(),
                value: Some(AnyValue::from(value.clone())),
                ..Default::default()
            })
            .collect();
        let resource_message = opentelemetry_proto::tonic::resource::v1::Resource {
            attributes,
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "tracemesh-agent".to_owned(),
            ..Default::default()
        };
        Self {
            resource: resource_message.encode_to_vec(),
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
            scope: scope.encode_to_vec(),
        }
    }

    /// The request: the envelope's fields around the spans of every part,
    /// in order, as they are (not copied: each part is one chunk).
    fn wrap(&self, parts: Vec<Vec<u8>>) -> Payload {
        let spans_len: usize = parts.iter().map(Vec::len).sum();
        let scope_spans = wire::field_len(wire::SCOPE_SPANS_SCOPE, self.scope.len()) + spans_len;
        let mut resource_spans =
            wire::field_len(wire::RESOURCE_SPANS_RESOURCE, self.resource.len())
                + wire::field_len(wire::RESOURCE_SPANS_SCOPE_SPANS, scope_spans);
        if !self.schema_url.is_empty() {
            resource_spans +=
                wire::field_len(wire::RESOURCE_SPANS_SCHEMA_URL, self.schema_url.len());
        }
        // Four keys and lengths: at most 24 bytes besides the two messages.
        let mut head = Vec::with_capacity(32 + self.resource.len() + self.scope.len());
        wire::len_prefix(&mut head, wire::REQUEST_RESOURCE_SPANS, resource_spans);
        wire::bytes(&mut head, wire::RESOURCE_SPANS_RESOURCE, &self.resource);
        wire::len_prefix(&mut head, wire::RESOURCE_SPANS_SCOPE_SPANS, scope_spans);
        wire::bytes(&mut head, wire::SCOPE_SPANS_SCOPE, &self.scope);
        let mut payload = Payload::from(head);
        for part in parts {
            payload.push(part);
        }
        if !self.schema_url.is_empty() {
            let mut tail = Vec::new();
            wire::bytes(
                &mut tail,
                wire::RESOURCE_SPANS_SCHEMA_URL,
                self.schema_url.as_bytes(),
            );
            payload.push(tail);
        }
        payload
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

/// `service.name` is the canonical service (`reviews`), as Jaeger and Tempo
/// users expect; namespace, version and workload ride alongside, with the
/// tags Istio's `enableIstioTags` puts on every span (`istio.*`: the
/// canonical service and revision, the namespace, the mesh id — the trust
/// domain, Istio's default — and the cluster id), here once per batch, not
/// per span; the query searches them as span tags.
pub(crate) fn resource(identity: &Identity) -> Resource {
    Resource::builder()
        .with_service_name(identity.canonical_service.clone())
        .with_attributes([
            KeyValue::new("service.namespace", identity.namespace.clone()),
            KeyValue::new("service.version", identity.canonical_revision.clone()),
            KeyValue::new("service.instance.id", identity.workload.clone()),
            KeyValue::new("k8s.namespace.name", identity.namespace.clone()),
            KeyValue::new("tracemesh.workload", identity.workload.clone()),
            KeyValue::new(
                "istio.canonical_service",
                identity.canonical_service.clone(),
            ),
            KeyValue::new(
                "istio.canonical_revision",
                identity.canonical_revision.clone(),
            ),
            KeyValue::new("istio.namespace", identity.namespace.clone()),
            KeyValue::new("istio.mesh_id", identity.spiffe.trust_domain.clone()),
            KeyValue::new("istio.cluster_id", identity.cluster_id.clone()),
        ])
        .build()
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::SystemTime;

    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{InstrumentationScope, KeyValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as ProtoSpan};
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

    use super::*;
    use crate::telemetry::otlp_wire::Value;
    use crate::telemetry::span::{Kind, Parent, Span};

    fn counters(capacity: usize) -> Arc<SpanCounters> {
        let counter = |name: &str| IntCounter::new(name, "spans").expect("a counter");
        Arc::new(SpanCounters {
            queued: AtomicUsize::new(0),
            capacity,
            unreported_drops: AtomicU64::new(0),
            reported_at_ms: AtomicU64::new(0),
            exported: counter("exported"),
            failed: counter("failed"),
            dropped: counter("dropped"),
        })
    }

    fn worker(capacity: usize) -> (Rc<WorkerSpans>, mpsc::UnboundedReceiver<Batch>) {
        worker_with(capacity, 2, usize::MAX)
    }

    fn worker_with(
        capacity: usize,
        batch_spans: usize,
        batch_bytes: usize,
    ) -> (Rc<WorkerSpans>, mpsc::UnboundedReceiver<Batch>) {
        let (batches, queue) = mpsc::unbounded_channel();
        let sink = Arc::new(SpanSink {
            ratio: 1.0,
            batch_spans,
            batch_bytes,
            flush_interval: Duration::from_secs(3600),
            counters: counters(capacity),
            batches,
        });
        (WorkerSpans::new(sink), queue)
    }

    /// Runs `test` on a worker's kind of thread (a `LocalSet`).
    fn on_worker(test: impl FnOnce()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        tokio::task::LocalSet::new().block_on(&runtime, async { test() });
    }

    /// A span recorded through the new path decodes to exactly what the
    /// OpenTelemetry SDK's exporter made of the same span.
    #[test]
    fn encoded_spans_decode_to_what_the_sdk_exported() {
        on_worker(encoded_spans_decode_to_what_the_sdk_exported_on_a_worker);
    }

    fn encoded_spans_decode_to_what_the_sdk_exported_on_a_worker() {
        let (spans, mut queue) = worker(100);
        let caller = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "x")]).unwrap(),
        );
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let end = start + Duration::from_micros(1234);
        let parent = Parent {
            context: Some(&caller),
            decision: None,
        };
        let mut span = Span::start(&spans, Kind::Client, parent, start);
        span.set_name_str("reviews.default.svc.cluster.local:9080/*");
        span.set("http.request.method", Value::Str("GET"));
        span.set("server.port", Value::Int(9080));
        span.add_event("retry", &[("reason", Value::Str("5xx"))]);
        span.set("tracemesh.authz.audit", Value::Bool(true));
        span.set_error("503");
        span.set_error("UF");
        let context = span.context().clone();
        span.end(end);
        // A root span in the same batch: the batch of two ships at once.
        let root = Span::start(
            &spans,
            Kind::Server,
            Parent {
                context: None,
                decision: None,
            },
            start,
        );
        let root_context = root.context().clone();
        root.end(end);
        let batch = queue.try_recv().expect("a full batch ships");
        assert_eq!(batch.count, 2);

        let resource = Resource::builder_empty()
            .with_service_name("reviews")
            .build();
        let envelope = Envelope::new(&resource);
        let decoded =
            ExportTraceServiceRequest::decode(envelope.wrap(vec![batch.spans])).expect("decodes");
        let [ResourceSpans { scope_spans, .. }] = decoded.resource_spans.as_slice() else {
            panic!("one resource: {decoded:?}");
        };
        let [
            ScopeSpans {
                spans: got, scope, ..
            },
        ] = scope_spans.as_slice()
        else {
            panic!("one scope");
        };
        assert_eq!(
            scope.as_ref().map(|s| s.name.as_str()),
            Some("tracemesh-agent")
        );
        let event_time = got[0].events[0].time_unix_nano;

        let sdk = |context: SpanContext, parent: SpanId, remote: bool, kind, name: &'static str| {
            SpanData {
                span_context: context,
                parent_span_id: parent,
                parent_span_is_remote: remote,
                span_kind: kind,
                name: Cow::Borrowed(name),
                start_time: start,
                end_time: end,
                attributes: Vec::new(),
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: Status::Unset,
                instrumentation_scope: InstrumentationScope::builder("tracemesh-agent").build(),
            }
        };
        let mut client = sdk(
            context,
            caller.span_id(),
            true,
            SpanKind::Client,
            "reviews.default.svc.cluster.local:9080/*",
        );
        client.attributes = vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("server.port", 9080),
            KeyValue::new("tracemesh.authz.audit", true),
        ];
        client.events.events.push(opentelemetry::trace::Event::new(
            "retry",
            SystemTime::UNIX_EPOCH + Duration::from_nanos(event_time),
            vec![KeyValue::new("reason", "5xx")],
            0,
        ));
        client.status = Status::error("UF");
        let root = sdk(root_context, SpanId::INVALID, false, SpanKind::Server, "");
        let want: Vec<ProtoSpan> = vec![client.into(), root.into()];
        assert_eq!(got, &want);
    }

    /// A span's length is written ahead of it: spans with the optional
    /// fields at their edges (events past the limit, a status message of a
    /// two-byte length, an empty one) decode whole, one after another.
    #[test]
    fn spans_with_dropped_events_and_long_or_empty_errors_decode() {
        on_worker(spans_with_dropped_events_and_long_or_empty_errors_decode_on_a_worker);
    }

    fn spans_with_dropped_events_and_long_or_empty_errors_decode_on_a_worker() {
        use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

        let (spans, mut queue) = worker_with(100, 3, usize::MAX);
        let root = || Parent {
            context: None,
            decision: None,
        };
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let long_error = "e".repeat(200);
        let mut busy = Span::start(&spans, Kind::Server, root(), start);
        for _ in 0..130 {
            busy.add_event("retry", &[("reason", Value::Str("5xx"))]);
        }
        busy.set_error(long_error.clone());
        busy.end(start);
        let mut quiet = Span::start(&spans, Kind::Client, root(), start);
        quiet.set_error("");
        quiet.end(start);
        let plain = Span::start(&spans, Kind::Client, root(), start);
        plain.end(start);
        let batch = queue.try_recv().expect("a full batch ships");

        let envelope = Envelope::new(&Resource::builder_empty().build());
        let decoded =
            ExportTraceServiceRequest::decode(envelope.wrap(vec![batch.spans])).expect("decodes");
        let got = &decoded.resource_spans[0].scope_spans[0].spans;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].events.len(), 128);
        assert_eq!(got[0].dropped_events_count, 2);
        let status = got[0].status.as_ref().expect("a status");
        assert_eq!(status.message, long_error);
        assert_eq!(status.code, StatusCode::Error as i32);
        let status = got[1].status.as_ref().expect("a status");
        assert_eq!(
            (status.message.as_str(), status.code),
            ("", StatusCode::Error as i32)
        );
        assert_eq!(got[1].dropped_events_count, 0);
        let status = got[2].status.as_ref().expect("a status");
        assert_eq!(status.code, StatusCode::Unset as i32);
    }

    #[test]
    fn spans_past_the_queues_capacity_are_dropped_and_counted() {
        on_worker(spans_past_the_queues_capacity_are_dropped_and_counted_on_a_worker);
    }

    fn spans_past_the_queues_capacity_are_dropped_and_counted_on_a_worker() {
        let (spans, mut queue) = worker(3);
        for _ in 0..5 {
            let parent = Parent {
                context: None,
                decision: None,
            };
            Span::start(&spans, Kind::Server, parent, SystemTime::now()).end(SystemTime::now());
        }
        let counters = &spans.sink.counters;
        assert_eq!(
            counters.queued.load(Ordering::Relaxed),
            2,
            "one batch of two shipped"
        );
        assert_eq!(queue.try_recv().expect("a batch").count, 2);
        // The third span fits (2 queued + 0 waiting < 3), the rest do not.
        assert_eq!(counters.dropped.get(), 2);
        drop(spans);
        assert_eq!(queue.try_recv().expect("the rest on drop").count, 1);
    }

    /// Batches that alternate between the byte bound and a timer's flush
    /// of a smaller batch (a rate of two or three batches a second) are
    /// never regrown: every span of a batch is written into the capacity its
    /// first span found. Four small batches give the room back.
    #[test]
    fn batches_alternating_between_the_bound_and_the_timer_are_not_regrown() {
        on_worker(batches_alternating_between_the_bound_and_the_timer_on_a_worker);
    }

    fn batches_alternating_between_the_bound_and_the_timer_on_a_worker() {
        // 40-byte spans, 1000 bytes a batch: the bound ships at 25 spans.
        let (spans, mut queue) = worker_with(1 << 20, 1 << 20, 1000);
        let capacities = RefCell::new(Vec::new());
        // Pushes n spans; the capacity the batch had at each of them.
        let push = |n: usize| {
            capacities.borrow_mut().clear();
            for _ in 0..n {
                spans.push(|buf| {
                    capacities.borrow_mut().push(buf.capacity());
                    buf.extend_from_slice(&[0; 40]);
                });
            }
        };
        let not_regrown = |round: usize, shipped: &Batch| {
            let first = capacities.borrow()[0];
            assert_eq!(
                shipped.spans.capacity(),
                first,
                "round {round}: a batch of {} bytes regrown from {first}",
                shipped.spans.len()
            );
        };
        // The first batch grows from nothing; none after it does.
        push(25);
        queue.try_recv().expect("the bound ships the batch");
        for round in 0..4 {
            // A timer's flush half way to the bound, then near it.
            for spans_flushed in [12, 22] {
                push(spans_flushed);
                spans.flush();
                let flushed = queue.try_recv().expect("the flush ships");
                assert_eq!(flushed.spans.len(), spans_flushed * 40);
                not_regrown(round, &flushed);
                push(25);
                let full = queue.try_recv().expect("the bound ships the batch");
                assert_eq!(full.spans.len(), 1000);
                not_regrown(round, &full);
            }
        }
        for _ in 0..RECENT_BATCHES {
            push(1);
            spans.flush();
            queue.try_recv().expect("the flush ships");
        }
        push(1);
        assert!(capacities.borrow()[0] < 100, "{:?}", capacities.borrow());
    }

    #[test]
    fn a_batch_ships_once_it_holds_its_bytes_whatever_its_span_count() {
        on_worker(a_batch_ships_once_it_holds_its_bytes_on_a_worker);
    }

    fn a_batch_ships_once_it_holds_its_bytes_on_a_worker() {
        // Room for 512 spans, but only 100 bytes: a span is 40.
        let (spans, mut queue) = worker_with(8192, 512, 100);
        for _ in 0..7 {
            spans.push(|out| out.extend_from_slice(&[0u8; 40]));
        }
        let first = queue.try_recv().expect("a batch past 100 bytes ships");
        assert_eq!((first.count, first.spans.len()), (3, 120));
        let second = queue.try_recv().expect("and the next");
        assert_eq!(second.count, 3);
        assert!(queue.try_recv().is_err(), "the seventh span waits");
        drop(spans);
        assert_eq!(queue.try_recv().expect("the rest on drop").count, 1);
    }

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
