//! Spans made by the OpenTelemetry SDK and sent by its OTLP exporter (gRPC,
//! HTTP/protobuf, HTTP/JSON) read back from the store field for field.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState,
    Tracer, TracerProvider as _,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracemesh_collector::ids::TraceId;

use crate::harness::{Collector, runtime, wait_for_trace};

/// Runs the OTLP exporter's futures on a tokio runtime (the SDK's simple
/// processor calls export from the thread that ends the span).
#[derive(Debug)]
struct OnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        let result = self
            .runtime
            .spawn(async move { inner.export(batch).await })
            .await;
        let result = result.unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())));
        assert!(result.is_ok(), "export failed: {result:?}");
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

fn at(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn value(trace_span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> any_value::Value {
    let kv = trace_span
        .attributes
        .iter()
        .find(|kv| kv.key == key)
        .unwrap_or_else(|| panic!("attribute {key} missing"));
    kv.value
        .clone()
        .and_then(|v| v.value)
        .expect("attribute value")
}

fn round_trip(protocol: Protocol) {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let rt = runtime();
    let exporter = {
        let _entered = rt.enter();
        let builder = opentelemetry_otlp::SpanExporter::builder();
        match protocol {
            Protocol::Grpc => builder
                .with_tonic()
                .with_endpoint(collector.grpc_url())
                .build(),
            other => builder
                .with_http()
                .with_protocol(other)
                .with_endpoint(format!("http://{}/v1/traces", collector.otlp_http))
                .build(),
        }
        .unwrap()
    };
    let resource = Resource::builder()
        .with_service_name("checkout")
        .with_attributes([
            KeyValue::new("service.version", "1.4.2"),
            KeyValue::new("host.cpu.count", 8i64),
        ])
        .build();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(OnRuntime {
            inner: Arc::new(exporter),
            runtime: rt.handle().clone(),
        })
        .with_resource(resource)
        .build();
    let scope = InstrumentationScope::builder("tracemesh-tests")
        .with_version("0.9.1")
        .build();
    let tracer = provider.tracer_with_scope(scope);

    let t0 = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64)
        - 5_000_000_000;
    let linked = SpanContext::new(
        opentelemetry::trace::TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
        opentelemetry::trace::SpanId::from_hex("b7ad6b7169203331").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let root = tracer
        .span_builder("POST /checkout")
        .with_kind(SpanKind::Server)
        .with_start_time(at(t0))
        .with_attributes(vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.response.status_code", 502i64),
            KeyValue::new("retry.ratio", 0.25f64),
            KeyValue::new("cache.hit", false),
            KeyValue::new(
                "tags",
                Value::Array(Array::String(vec![
                    StringValue::from("a"),
                    StringValue::from("b"),
                ])),
            ),
            KeyValue::new("ports", Value::Array(Array::I64(vec![80, 443]))),
        ])
        .start(&tracer);
    let root_context = root.span_context().clone();
    let cx = opentelemetry::Context::current_with_span(root);
    let mut child = tracer
        .span_builder("charge card")
        .with_kind(SpanKind::Client)
        .with_start_time(at(t0 + 1_000_123))
        .with_links(vec![Link::new(
            linked.clone(),
            vec![KeyValue::new("link.reason", "retry")],
            0,
        )])
        .start_with_context(&tracer, &cx);
    child.add_event_with_timestamp(
        "card declined",
        at(t0 + 2_000_000),
        vec![KeyValue::new("decline.code", 51i64)],
    );
    child.set_status(Status::error("payment provider said no"));
    let child_context = child.span_context().clone();
    child.end_with_timestamp(at(t0 + 3_000_456));
    cx.span().end_with_timestamp(at(t0 + 9_000_000));
    provider.shutdown().unwrap();

    let trace_id = TraceId(root_context.trace_id().to_bytes());
    let trace = wait_for_trace(&collector.data_dir, trace_id, 2);
    let root_span = trace
        .spans
        .iter()
        .find(|s| s.span.name == "POST /checkout")
        .expect("root stored");
    let child_span = trace
        .spans
        .iter()
        .find(|s| s.span.name == "charge card")
        .expect("child stored");

    // ids and parent
    assert_eq!(
        root_span.span.span_id,
        root_context.span_id().to_bytes().to_vec()
    );
    assert!(root_span.span.parent_span_id.is_empty());
    assert_eq!(
        child_span.span.span_id,
        child_context.span_id().to_bytes().to_vec()
    );
    assert_eq!(
        child_span.span.parent_span_id,
        root_context.span_id().to_bytes().to_vec()
    );
    assert_eq!(child_span.span.trace_id, trace_id.0.to_vec());
    // times, kinds
    assert_eq!(root_span.span.start_time_unix_nano, nanos(at(t0)));
    assert_eq!(root_span.span.end_time_unix_nano, nanos(at(t0 + 9_000_000)));
    assert_eq!(
        child_span.span.start_time_unix_nano,
        nanos(at(t0 + 1_000_123))
    );
    assert_eq!(
        child_span.span.end_time_unix_nano,
        nanos(at(t0 + 3_000_456))
    );
    assert_eq!(root_span.span.kind, 2);
    assert_eq!(child_span.span.kind, 3);
    // attributes of every type
    use any_value::Value as V;
    assert_eq!(
        value(&root_span.span, "http.request.method"),
        V::StringValue("POST".into())
    );
    assert_eq!(
        value(&root_span.span, "http.response.status_code"),
        V::IntValue(502)
    );
    assert_eq!(value(&root_span.span, "retry.ratio"), V::DoubleValue(0.25));
    assert_eq!(value(&root_span.span, "cache.hit"), V::BoolValue(false));
    let V::ArrayValue(tags) = value(&root_span.span, "tags") else {
        panic!("tags is not an array")
    };
    assert_eq!(
        tags.values
            .iter()
            .map(|v| v.value.clone().unwrap())
            .collect::<Vec<_>>(),
        vec![V::StringValue("a".into()), V::StringValue("b".into())]
    );
    let V::ArrayValue(ports) = value(&root_span.span, "ports") else {
        panic!("ports is not an array")
    };
    assert_eq!(
        ports
            .values
            .iter()
            .map(|v| v.value.clone().unwrap())
            .collect::<Vec<_>>(),
        vec![V::IntValue(80), V::IntValue(443)]
    );
    // events, links, status
    let event = &child_span.span.events[0];
    assert_eq!(event.name, "card declined");
    assert_eq!(event.time_unix_nano, nanos(at(t0 + 2_000_000)));
    assert_eq!(event.attributes[0].key, "decline.code");
    let link = &child_span.span.links[0];
    assert_eq!(link.trace_id, linked.trace_id().to_bytes().to_vec());
    assert_eq!(link.span_id, linked.span_id().to_bytes().to_vec());
    assert_eq!(link.attributes[0].key, "link.reason");
    let status = child_span.span.status.as_ref().unwrap();
    assert_eq!(status.code, 2);
    assert_eq!(status.message, "payment provider said no");
    // resource and scope
    let resource = child_span.resource.as_ref().unwrap();
    let service = resource
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .unwrap();
    assert_eq!(
        service.value.as_ref().unwrap().value,
        Some(V::StringValue("checkout".into()))
    );
    assert!(
        resource
            .attributes
            .iter()
            .any(|kv| kv.key == "host.cpu.count"
                && kv.value.as_ref().unwrap().value == Some(V::IntValue(8)))
    );
    let scope = child_span.scope.as_ref().unwrap();
    assert_eq!(
        (scope.name.as_str(), scope.version.as_str()),
        ("tracemesh-tests", "0.9.1")
    );

    // searchable by the indexed fields and tags
    let reader = tracemesh_collector::store::SpanReader::open(&collector.data_dir).unwrap();
    let query = tracemesh_collector::store::SpanQuery {
        service: Some("checkout".into()),
        tags: vec![
            ("cache.hit".into(), "false".into()),
            ("service.version".into(), "1.4.2".into()),
        ],
        http_status_code: Some(502),
        ..Default::default()
    };
    assert_eq!(
        reader.find_traces(&query, 10).unwrap()[0].trace_id,
        trace_id
    );
    let metrics = collector.metrics();
    assert!(metrics.contains("traces_span_metrics_calls_total{service_name=\"checkout\",span_kind=\"SPAN_KIND_CLIENT\",span_name=\"charge card\",status_code=\"STATUS_CODE_ERROR\"} 1"), "{metrics}");
    collector.stop();
}

#[test]
fn otlp_grpc_spans_read_back_field_for_field() {
    round_trip(Protocol::Grpc);
}

#[test]
fn otlp_http_protobuf_spans_read_back_field_for_field() {
    round_trip(Protocol::HttpBinary);
}

#[test]
fn otlp_http_json_spans_read_back_field_for_field() {
    round_trip(Protocol::HttpJson);
}
