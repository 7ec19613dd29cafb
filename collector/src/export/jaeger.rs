//! Jaeger exporter: `jaeger.api_v2.CollectorService/PostSpans`, one request
//! per resource, spans converted as Jaeger's own OTLP receiver does
//! (resource → process, parent and links → references, events → logs,
//! kind and status → `span.kind`, `otel.status_code`, `error` tags).

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue as OtlpKeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use super::SendError;
use super::otlp_grpc::{channel, classify, metadata};
use crate::attributes;
use crate::config::{Compression, ExporterConfig};
use crate::jaeger_proto::collector_service_client::CollectorServiceClient;
use crate::jaeger_proto::{
    Batch, KeyValue, Log, PostSpansRequest, Process, Span, SpanRef, SpanRefType, ValueType,
};

/// Sends spans to a Jaeger collector.
pub struct JaegerClient {
    client: CollectorServiceClient<Channel>,
    metadata: MetadataMap,
}

impl JaegerClient {
    /// A client for `config.endpoint`.
    pub fn new(config: &ExporterConfig) -> Result<Self, String> {
        let mut client = CollectorServiceClient::new(channel(config)?);
        if config.compression == Compression::Gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        Ok(Self {
            client,
            metadata: metadata(config)?,
        })
    }

    /// Posts every resource's spans as one batch.
    pub async fn send_spans(
        &mut self,
        request: &ExportTraceServiceRequest,
    ) -> Result<(), SendError> {
        for batch in to_jaeger(request) {
            let mut call = tonic::Request::new(PostSpansRequest { batch: Some(batch) });
            *call.metadata_mut() = self.metadata.clone();
            self.client.post_spans(call).await.map_err(classify)?;
        }
        Ok(())
    }
}

fn tag(kv: &OtlpKeyValue) -> KeyValue {
    let mut out = KeyValue {
        key: kv.key.clone(),
        ..Default::default()
    };
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::BoolValue(b)) => {
            out.v_type = ValueType::Bool as i32;
            out.v_bool = *b;
        }
        Some(Value::IntValue(i)) => {
            out.v_type = ValueType::Int64 as i32;
            out.v_int64 = *i;
        }
        Some(Value::DoubleValue(d)) => {
            out.v_type = ValueType::Float64 as i32;
            out.v_float64 = *d;
        }
        Some(Value::BytesValue(b)) => {
            out.v_type = ValueType::Binary as i32;
            out.v_binary = b.clone();
        }
        _ => out.v_str = attributes::text(kv.value.as_ref()).into_owned(),
    }
    out
}

fn string_tag(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        v_str: value.to_owned(),
        ..Default::default()
    }
}

fn timestamp(nanos: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (nanos / 1_000_000_000) as i64,
        nanos: (nanos % 1_000_000_000) as i32,
    }
}

fn convert(resource_spans: &ResourceSpans) -> Batch {
    let resource_attrs = resource_spans
        .resource
        .as_ref()
        .map(|r| r.attributes.as_slice())
        .unwrap_or_default();
    let process = Process {
        service_name: attributes::service_name(resource_spans.resource.as_ref()).to_owned(),
        tags: resource_attrs
            .iter()
            .filter(|kv| kv.key != "service.name")
            .map(tag)
            .collect(),
    };
    let mut spans = Vec::new();
    for scope_spans in &resource_spans.scope_spans {
        for s in &scope_spans.spans {
            let mut references = Vec::new();
            if s.parent_span_id.len() == 8 {
                references.push(SpanRef {
                    trace_id: s.trace_id.clone(),
                    span_id: s.parent_span_id.clone(),
                    ref_type: SpanRefType::ChildOf as i32,
                });
            }
            for link in &s.links {
                references.push(SpanRef {
                    trace_id: link.trace_id.clone(),
                    span_id: link.span_id.clone(),
                    ref_type: SpanRefType::FollowsFrom as i32,
                });
            }
            let mut tags: Vec<KeyValue> = s.attributes.iter().map(tag).collect();
            let kind = match s.kind {
                2 => Some("server"),
                3 => Some("client"),
                4 => Some("producer"),
                5 => Some("consumer"),
                1 => Some("internal"),
                _ => None,
            };
            if let Some(kind) = kind {
                tags.push(string_tag("span.kind", kind));
            }
            if let Some(scope) = &scope_spans.scope {
                if !scope.name.is_empty() {
                    tags.push(string_tag("otel.scope.name", &scope.name));
                }
                if !scope.version.is_empty() {
                    tags.push(string_tag("otel.scope.version", &scope.version));
                }
            }
            match s.status.as_ref().map(|st| (st.code, st.message.as_str())) {
                Some((2, message)) => {
                    tags.push(string_tag("otel.status_code", "ERROR"));
                    tags.push(KeyValue {
                        key: "error".into(),
                        v_type: ValueType::Bool as i32,
                        v_bool: true,
                        ..Default::default()
                    });
                    if !message.is_empty() {
                        tags.push(string_tag("otel.status_description", message));
                    }
                }
                Some((1, _)) => tags.push(string_tag("otel.status_code", "OK")),
                _ => {}
            }
            if !s.trace_state.is_empty() {
                tags.push(string_tag("w3c.tracestate", &s.trace_state));
            }
            let logs = s
                .events
                .iter()
                .map(|event| {
                    let mut fields = vec![string_tag("event", &event.name)];
                    fields.extend(event.attributes.iter().map(tag));
                    Log {
                        timestamp: Some(timestamp(event.time_unix_nano)),
                        fields,
                    }
                })
                .collect();
            let duration = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano);
            spans.push(Span {
                trace_id: s.trace_id.clone(),
                span_id: s.span_id.clone(),
                operation_name: s.name.clone(),
                references,
                flags: 1,
                start_time: Some(timestamp(s.start_time_unix_nano)),
                duration: Some(prost_types::Duration {
                    seconds: (duration / 1_000_000_000) as i64,
                    nanos: (duration % 1_000_000_000) as i32,
                }),
                tags,
                logs,
                process: None,
                process_id: String::new(),
                warnings: Vec::new(),
            });
        }
    }
    Batch {
        spans,
        process: Some(process),
    }
}

/// One Jaeger batch per resource.
pub fn to_jaeger(request: &ExportTraceServiceRequest) -> Vec<Batch> {
    request
        .resource_spans
        .iter()
        .map(convert)
        .filter(|b| !b.spans.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::config::{ExportProtocol, ExporterConfig};
    use crate::jaeger_proto::PostSpansResponse;
    use crate::jaeger_proto::collector_service_server::{CollectorService, CollectorServiceServer};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span as OtlpSpan, Status};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Batch>>>);

    #[tonic::async_trait]
    impl CollectorService for Capture {
        async fn post_spans(
            &self,
            request: tonic::Request<PostSpansRequest>,
        ) -> Result<tonic::Response<PostSpansResponse>, tonic::Status> {
            assert_eq!(
                request
                    .metadata()
                    .get("x-tenant")
                    .map(|v| v.to_str().unwrap()),
                Some("acme")
            );
            self.0.lock().unwrap().extend(request.into_inner().batch);
            Ok(tonic::Response::new(PostSpansResponse {}))
        }
    }

    #[tokio::test]
    async fn posts_converted_spans_to_a_jaeger_collector() {
        let capture = Capture::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = CollectorServiceServer::new(capture.clone())
            .accept_compressed(CompressionEncoding::Gzip);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );

        let mut config = ExporterConfig::new(ExportProtocol::JaegerGrpc, format!("http://{addr}"));
        config.headers.insert("x-tenant".into(), "acme".into());
        let mut client = JaegerClient::new(&config).unwrap();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        attributes::string("service.name", "cart"),
                        attributes::string("host.name", "h1"),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![OtlpSpan {
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        parent_span_id: vec![3; 8],
                        name: "GET /cart".into(),
                        kind: 2,
                        start_time_unix_nano: 1_700_000_000_500_000_000,
                        end_time_unix_nano: 1_700_000_001_000_000_000,
                        attributes: vec![attributes::int("http.response.status_code", 500)],
                        status: Some(Status {
                            code: 2,
                            message: "boom".into(),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        client.send_spans(&request).await.unwrap();
        let batches = capture.0.lock().unwrap().clone();
        let batch = &batches[0];
        assert_eq!(batch.process.as_ref().unwrap().service_name, "cart");
        assert_eq!(batch.process.as_ref().unwrap().tags[0].key, "host.name");
        let span = &batch.spans[0];
        assert_eq!(span.operation_name, "GET /cart");
        assert_eq!(span.references[0].span_id, vec![3; 8]);
        assert_eq!(span.start_time.unwrap().nanos, 500_000_000);
        assert_eq!(span.duration.unwrap().nanos, 500_000_000);
        let find = |k: &str| span.tags.iter().find(|t| t.key == k).cloned().unwrap();
        assert_eq!(find("http.response.status_code").v_int64, 500);
        assert_eq!(find("span.kind").v_str, "server");
        assert!(find("error").v_bool);
        assert_eq!(find("otel.status_description").v_str, "boom");
    }
}
