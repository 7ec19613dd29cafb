//! Zipkin v2 JSON → OTLP spans, following OpenTelemetry's Zipkin mapping
//! (the reverse of the spec's OTLP→Zipkin table): `localEndpoint.serviceName`
//! becomes the resource's `service.name`, tags become string attributes,
//! annotations become events, `otel.status_code`/`error` tags become the
//! status, `remoteEndpoint` becomes `peer.service` and `network.peer.*`.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde::Deserialize;

use crate::attributes::{self, UNKNOWN_SERVICE};
use crate::error::IngestError;
use crate::ids::{SpanId, TraceId};

/// One Zipkin v2 span as JSON.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinSpan {
    trace_id: String,
    id: String,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    timestamp: Option<u64>,
    #[serde(default)]
    duration: Option<u64>,
    #[serde(default)]
    local_endpoint: Option<Endpoint>,
    #[serde(default)]
    remote_endpoint: Option<Endpoint>,
    #[serde(default)]
    annotations: Vec<Annotation>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Endpoint {
    #[serde(default)]
    service_name: Option<String>,
    #[serde(default)]
    ipv4: Option<String>,
    #[serde(default)]
    ipv6: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
struct Annotation {
    timestamp: u64,
    value: String,
}

fn malformed(index: usize, what: impl std::fmt::Display) -> IngestError {
    IngestError::Malformed(format!("zipkin span [{index}]: {what}"))
}

fn kind(kind: Option<&str>) -> SpanKind {
    match kind {
        Some("CLIENT") => SpanKind::Client,
        Some("SERVER") => SpanKind::Server,
        Some("PRODUCER") => SpanKind::Producer,
        Some("CONSUMER") => SpanKind::Consumer,
        _ => SpanKind::Unspecified,
    }
}

fn endpoint_attributes(endpoint: &Endpoint, prefix: &str, out: &mut Vec<KeyValue>) {
    if let Some(address) = endpoint.ipv4.as_ref().or(endpoint.ipv6.as_ref()) {
        out.push(attributes::string(
            &format!("{prefix}.address"),
            address.clone(),
        ));
    }
    if let Some(port) = endpoint.port {
        out.push(attributes::int(&format!("{prefix}.port"), i64::from(port)));
    }
}

/// Converts one span; `received` (ns) stands in for a missing `timestamp`
/// when no annotation gives a time either.
fn convert(
    index: usize,
    zipkin: ZipkinSpan,
    received: u64,
) -> Result<(String, InstrumentationScope, Span), IngestError> {
    let trace_id = TraceId::parse_lenient(&zipkin.trace_id)
        .map_err(|e| malformed(index, format_args!("traceId: {e}")))?;
    let span_id: SpanId = zipkin
        .id
        .parse()
        .map_err(|e| malformed(index, format_args!("id: {e}")))?;
    let parent = match zipkin.parent_id.as_deref() {
        None | Some("") => Vec::new(),
        Some(text) => text
            .parse::<SpanId>()
            .map_err(|e| malformed(index, format_args!("parentId: {e}")))?
            .0
            .to_vec(),
    };
    let mut tags = zipkin.tags;
    let mut scope = InstrumentationScope::default();
    if let Some(name) = tags
        .remove("otel.scope.name")
        .or_else(|| tags.remove("otel.library.name"))
    {
        scope.name = name;
    }
    if let Some(version) = tags
        .remove("otel.scope.version")
        .or_else(|| tags.remove("otel.library.version"))
    {
        scope.version = version;
    }
    let status_code = tags.remove("otel.status_code");
    let description = tags.remove("otel.status_description");
    // Zipkin's `error` tag is the span's error status, its value the
    // message, as OpenTelemetry's Zipkin translator reads it; the tag then
    // goes (kept, a Jaeger reader saw `error` twice: the string and the
    // status's `error=true`).
    let error = match status_code.as_deref() {
        Some("ERROR" | "OK") => None,
        _ => tags.remove("error"),
    };
    let status = match (status_code.as_deref(), error) {
        (Some("ERROR"), _) => Status {
            code: StatusCode::Error as i32,
            message: description.unwrap_or_default(),
        },
        (Some("OK"), _) => Status {
            code: StatusCode::Ok as i32,
            message: String::new(),
        },
        (_, Some(error)) => Status {
            code: StatusCode::Error as i32,
            message: error,
        },
        _ => Status::default(),
    };
    let mut attributes: Vec<KeyValue> = tags
        .into_iter()
        .map(|(k, v)| attributes::string(&k, v))
        .collect();
    if let Some(remote) = &zipkin.remote_endpoint {
        if let Some(peer) = remote.service_name.as_ref().filter(|s| !s.is_empty()) {
            attributes.push(attributes::string("peer.service", peer.clone()));
        }
        endpoint_attributes(remote, "network.peer", &mut attributes);
    }
    if let Some(local) = &zipkin.local_endpoint {
        endpoint_attributes(local, "network.local", &mut attributes);
    }
    let service = zipkin
        .local_endpoint
        .as_ref()
        .and_then(|e| e.service_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| UNKNOWN_SERVICE.to_owned());
    // Zipkin allows a span without `timestamp` (a late half, an annotation
    // sent alone) and stores it: the first annotation's time stands in,
    // else the time it was received.
    let start = zipkin
        .timestamp
        .filter(|t| *t > 0)
        .or_else(|| zipkin.annotations.iter().map(|a| a.timestamp).min())
        .map_or(received, |micros| micros.saturating_mul(1000));
    let span = Span {
        trace_id: trace_id.0.to_vec(),
        span_id: span_id.0.to_vec(),
        parent_span_id: parent,
        name: zipkin.name.unwrap_or_default(),
        kind: kind(zipkin.kind.as_deref()) as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start.saturating_add(zipkin.duration.unwrap_or(0).saturating_mul(1000)),
        attributes,
        events: zipkin
            .annotations
            .into_iter()
            .map(|a| Event {
                time_unix_nano: a.timestamp.saturating_mul(1000),
                name: a.value,
                ..Default::default()
            })
            .collect(),
        status: Some(status),
        ..Default::default()
    };
    Ok((service, scope, span))
}

/// Parses a `POST /api/v2/spans` JSON body into OTLP resource spans, one
/// resource per local service.
pub fn decode(body: &[u8]) -> Result<Vec<ResourceSpans>, IngestError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let spans: Vec<ZipkinSpan> =
        serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            IngestError::Malformed(format!(
                "zipkin spans: invalid JSON at {}: {}",
                e.path(),
                e.inner()
            ))
        })?;
    let received = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut by_service: BTreeMap<String, BTreeMap<(String, String), Vec<Span>>> = BTreeMap::new();
    for (index, zipkin) in spans.into_iter().enumerate() {
        let (service, scope, span) = convert(index, zipkin, received)?;
        by_service
            .entry(service)
            .or_default()
            .entry((scope.name, scope.version))
            .or_default()
            .push(span);
    }
    Ok(by_service
        .into_iter()
        .map(|(service, scopes)| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attributes::string("service.name", service)],
                ..Default::default()
            }),
            scope_spans: scopes
                .into_iter()
                .map(|((name, version), spans)| ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name,
                        version,
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                })
                .collect(),
            schema_url: String::new(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_like_opentelemetry() {
        let body = br#"[{"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010db","parentId":"5b4185666d50f68b","name":"get /api",
            "kind":"CLIENT","timestamp":1472470996199000,"duration":207000,
            "localEndpoint":{"serviceName":"frontend","ipv4":"10.0.0.1"},
            "remoteEndpoint":{"serviceName":"backend","ipv4":"10.0.0.2","port":8080},
            "annotations":[{"timestamp":1472470996238000,"value":"ws"}],
            "tags":{"http.method":"GET","error":"boom","otel.scope.name":"brave"}}]"#;
        let batch = decode(body).unwrap();
        assert_eq!(
            attributes::service_name(batch[0].resource.as_ref()),
            "frontend"
        );
        let scope_spans = &batch[0].scope_spans[0];
        assert_eq!(scope_spans.scope.as_ref().unwrap().name, "brave");
        let span = &scope_spans.spans[0];
        assert_eq!(hex(&span.trace_id), "000000000000000086154a4ba6e91385");
        assert_eq!(span.kind, SpanKind::Client as i32);
        assert_eq!(span.start_time_unix_nano, 1_472_470_996_199_000_000);
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            207_000_000
        );
        assert_eq!(
            attributes::get_str(&span.attributes, "peer.service"),
            Some("backend")
        );
        assert_eq!(
            attributes::get_int(&span.attributes, "network.peer.port"),
            Some(8080)
        );
        assert_eq!(
            attributes::get_str(&span.attributes, "http.method"),
            Some("GET")
        );
        assert_eq!(span.status.as_ref().unwrap().code, StatusCode::Error as i32);
        assert_eq!(span.status.as_ref().unwrap().message, "boom");
        assert_eq!(
            attributes::get_str(&span.attributes, "error"),
            None,
            "the tag became the status"
        );
        assert_eq!(span.events[0].name, "ws");
    }

    #[test]
    fn a_span_without_timestamp_is_kept_at_its_annotation_or_arrival() {
        let body = br#"[{"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010db","name":"late","duration":5,
            "localEndpoint":{"serviceName":"frontend"},"annotations":[{"timestamp":1472470996238000,"value":"ws"}]},
            {"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010dc","localEndpoint":{"serviceName":"frontend"}}]"#;
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let batch = decode(body).unwrap();
        let spans = &batch[0].scope_spans[0].spans;
        assert_eq!(spans[0].start_time_unix_nano, 1_472_470_996_238_000_000);
        assert_eq!(
            spans[0].end_time_unix_nano - spans[0].start_time_unix_nano,
            5_000
        );
        assert!(spans[1].start_time_unix_nano >= before, "received now");
    }

    #[test]
    fn bad_ids_are_named() {
        let err = decode(br#"[{"traceId":"xyz","id":"4d1e00c0db9010db"}]"#).unwrap_err();
        assert!(
            err.to_string().contains("zipkin span [0]: traceId"),
            "{err}"
        );
        let err = decode(br#"{"not":"a list"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid JSON"), "{err}");
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
