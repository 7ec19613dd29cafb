//! The bench's load generator. Building and encoding 512 spans per request
//! would cost about as much CPU as the collector spends on them, on the
//! same two cores; so it builds a pool of distinct requests once, encoded,
//! and sends copies with fresh trace ids and shifted timestamps written
//! into the encoded bytes. Every request the collector sees holds new
//! traces, and attribute values vary as in the pool (paths, addresses, body
//! sizes, status codes).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tracemesh_collector::ids::TraceId;
use tracemesh_collector::wire;

/// Distinct requests built up front.
const POOL: usize = 64;
/// Nanoseconds between the timestamps of consecutive requests.
const REQUEST_SPACING_NANOS: u64 = 64_000_000;

/// Spans per request.
pub const BATCH: usize = 512;
/// Spans per trace.
pub const SPANS_PER_TRACE: usize = 8;

fn s(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn i(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

const SERVICES: [&str; 6] = [
    "productpage",
    "reviews",
    "ratings",
    "details",
    "cart",
    "checkout",
];
const ROUTES: [&str; 5] = [
    "/api/v1/products/{id}",
    "/reviews/{id}",
    "/ratings/{id}",
    "/details/{id}",
    "/cart",
];

/// One batch: 64 traces of 8 spans, shaped like the agent's (server/client
/// pairs with the HTTP semantic-convention attributes it sets).
fn batch(seq: u64, now: u64) -> ExportTraceServiceRequest {
    let service = SERVICES[(seq % SERVICES.len() as u64) as usize];
    let mut spans = Vec::with_capacity(BATCH);
    for t in 0..BATCH / SPANS_PER_TRACE {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&fastrand::u64(..).to_be_bytes());
        trace_id[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
        let mut parent = Vec::new();
        for n in 0..SPANS_PER_TRACE {
            let span_id = fastrand::u64(1..).to_be_bytes().to_vec();
            let route = ROUTES[(t + n) % ROUTES.len()];
            let status = if fastrand::u8(..) < 5 { 503 } else { 200 };
            let start = now + (t * 1000 + n * 100) as u64 * 1000;
            let duration = fastrand::u64(200_000..40_000_000);
            let peer = SERVICES[(n + 1) % SERVICES.len()];
            spans.push(Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.clone(),
                parent_span_id: parent.clone(),
                name: format!("GET {route}"),
                kind: if n % 2 == 0 { 2 } else { 3 },
                start_time_unix_nano: start,
                end_time_unix_nano: start + duration,
                attributes: vec![
                    s("http.request.method", "GET"),
                    s("http.route", route),
                    i("http.response.status_code", status),
                    s(
                        "url.path",
                        &route.replace("{id}", &fastrand::u32(..10_000).to_string()),
                    ),
                    s("url.scheme", "http"),
                    s(
                        "server.address",
                        &format!("{peer}.default.svc.cluster.local"),
                    ),
                    i("server.port", 9080),
                    s("network.protocol.version", "1.1"),
                    s("user_agent.original", "curl/8.5.0"),
                    s("peer.service", peer),
                    s(
                        "upstream_cluster",
                        &format!("outbound|9080||{peer}.default.svc.cluster.local"),
                    ),
                    s("tracemesh.response_flags", "-"),
                    i("http.request.body.size", 0),
                    i("http.response.body.size", fastrand::i64(100..5000)),
                    s(
                        "network.peer.address",
                        &format!("10.0.{}.{}", fastrand::u8(..), fastrand::u8(..)),
                    ),
                ],
                status: Some(Status {
                    code: if status >= 500 { 2 } else { 0 },
                    message: String::new(),
                }),
                ..Default::default()
            });
            parent = span_id;
        }
    }
    let resource = Resource {
        attributes: vec![
            s("service.name", service),
            s("service.namespace", "default"),
            s("service.version", "v1"),
            s("service.instance.id", &format!("{service}-v1-7d9c8b-x2x4k")),
            s("k8s.namespace.name", "default"),
            s("tracemesh.workload", &format!("{service}-v1")),
        ],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tracemesh-agent".into(),
                    version: "0.1.0".into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// One encoded request and where its spans' trace ids and times lie.
pub struct Template {
    encoded: Vec<u8>,
    /// Per span, in order (8 consecutive spans per trace).
    trace_ids: Vec<Range<usize>>,
    /// Per span: `start_time_unix_nano` and `end_time_unix_nano` (fixed64).
    times: Vec<[Range<usize>; 2]>,
}

impl Template {
    fn new(seq: u64, now: u64) -> Self {
        let encoded = batch(seq, now).encode_to_vec();
        let mut template = Self {
            encoded,
            trace_ids: Vec::new(),
            times: Vec::new(),
        };
        let buf = &template.encoded;
        let nested = |range: Range<usize>, number: u32| {
            wire::fields_in(buf, range)
                .map(Result::unwrap)
                .filter(move |f| f.number == number)
                .map(|f| f.value)
        };
        for resource_spans in nested(0..buf.len(), 1) {
            for scope_spans in nested(resource_spans, 2) {
                for span in nested(scope_spans, 2) {
                    let mut times = [0..0, 0..0];
                    for field in wire::fields_in(buf, span) {
                        let field = field.unwrap();
                        match field.number {
                            1 => template.trace_ids.push(field.value),
                            7 => times[0] = field.value,
                            8 => times[1] = field.value,
                            _ => {}
                        }
                    }
                    template.times.push(times);
                }
            }
        }
        assert_eq!(template.trace_ids.len(), BATCH);
        template
    }

    /// A copy with fresh trace ids and times shifted by `shift` nanoseconds.
    fn instance(&self, shift: u64) -> (Bytes, Vec<TraceId>) {
        let mut encoded = self.encoded.clone();
        let mut traces = Vec::with_capacity(BATCH / SPANS_PER_TRACE);
        for (n, range) in self.trace_ids.iter().enumerate() {
            if n % SPANS_PER_TRACE == 0 {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&fastrand::u64(..).to_be_bytes());
                id[8..].copy_from_slice(&fastrand::u64(1..).to_be_bytes());
                traces.push(TraceId(id));
            }
            encoded[range.clone()].copy_from_slice(&traces[n / SPANS_PER_TRACE].0);
        }
        for range in self.times.iter().flatten() {
            let field = &mut encoded[range.clone()];
            let time = u64::from_le_bytes(field.try_into().unwrap()) + shift;
            field.copy_from_slice(&time.to_le_bytes());
        }
        (Bytes::from(encoded), traces)
    }
}

/// Sends an already encoded request; ignores the (empty) reply.
#[derive(Clone, Copy)]
struct RawExport;

impl Encoder for RawExport {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawExport {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

impl Codec for RawExport {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        *self
    }

    fn decoder(&mut self) -> Self {
        *self
    }
}

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The distinct requests a run sends copies of, built before the clock
/// starts. Timestamps start at `now`.
pub fn pool(now: u64) -> Arc<Vec<Template>> {
    Arc::new(
        (0..POOL as u64)
            .map(|seq| Template::new(seq, now))
            .collect(),
    )
}

/// Sends `batches` requests made from `pool` over `concurrency` connections
/// to the OTLP/gRPC listener at `grpc`, retrying on RESOURCE_EXHAUSTED;
/// returns one trace id of every request (for the trace-by-id lookups).
pub async fn run(
    pool: Arc<Vec<Template>>,
    grpc: std::net::SocketAddr,
    batches: u64,
    concurrency: usize,
) -> Vec<TraceId> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, pool) = (next.clone(), pool.clone());
        tasks.push(tokio::spawn(async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client = tonic::client::Grpc::new(channel);
            let mut sample = Vec::new();
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= batches {
                    break;
                }
                let template = &pool[seq as usize % POOL];
                let (request, traces) = template.instance(seq * REQUEST_SPACING_NANOS);
                loop {
                    client.ready().await.unwrap();
                    let sent = client
                        .unary(
                            tonic::Request::new(request.clone()),
                            PathAndQuery::from_static(EXPORT),
                            RawExport,
                        )
                        .await;
                    match sent {
                        Ok(_) => break,
                        Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                        Err(status) => panic!("export failed: {status:?}"),
                    }
                }
                sample.push(traces[fastrand::usize(..traces.len())]);
            }
            sample
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}
