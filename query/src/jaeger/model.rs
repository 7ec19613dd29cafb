//! Stored OTLP spans in Jaeger's UI JSON model (what `/api/traces` answers,
//! Jaeger UI and Grafana's Jaeger data source read), translated the way
//! Jaeger translates OTLP: the span kind, status and scope become tags,
//! events become logs, the parent and links become references, resources
//! become processes (`p1`, `p2`, ...).

use std::collections::HashMap;

use base64::Engine as _;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde::Serialize;
use serde_json::Value;
use tracemesh_collector::attributes;
use tracemesh_collector::store::{StoredSpan, Trace};

/// A Jaeger trace.
#[derive(Debug, Serialize)]
pub struct JaegerTrace {
    #[serde(rename = "traceID")]
    trace_id: String,
    spans: Vec<JaegerSpan>,
    processes: HashMap<String, Process>,
    warnings: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct JaegerSpan {
    #[serde(rename = "traceID")]
    trace_id: String,
    #[serde(rename = "spanID")]
    span_id: String,
    #[serde(skip_serializing_if = "is_zero")]
    flags: u32,
    operation_name: String,
    references: Vec<Reference>,
    start_time: u64,
    duration: u64,
    tags: Vec<Tag>,
    logs: Vec<Log>,
    #[serde(rename = "processID")]
    process_id: String,
    warnings: Option<Vec<String>>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Reference {
    ref_type: &'static str,
    #[serde(rename = "traceID")]
    trace_id: String,
    #[serde(rename = "spanID")]
    span_id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Process {
    service_name: String,
    tags: Vec<Tag>,
}

#[derive(Debug, Serialize)]
struct Log {
    timestamp: u64,
    fields: Vec<Tag>,
}

/// A Jaeger key-value with its type.
#[derive(Debug, Serialize)]
struct Tag {
    key: String,
    #[serde(rename = "type")]
    kind: &'static str,
    value: Value,
}

/// JavaScript's largest exact integer: larger int64 values are sent as
/// strings, as Jaeger does.
const JS_MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

fn tag(key: &str, value: Option<&AnyValue>) -> Tag {
    let (kind, value) = match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => ("string", Value::from(s.as_str())),
        Some(any_value::Value::BoolValue(b)) => ("bool", Value::from(*b)),
        Some(any_value::Value::IntValue(i)) if i.abs() > JS_MAX_SAFE_INTEGER => {
            ("int64", Value::from(i.to_string()))
        }
        Some(any_value::Value::IntValue(i)) => ("int64", Value::from(*i)),
        Some(any_value::Value::DoubleValue(d)) => ("float64", Value::from(*d)),
        Some(any_value::Value::BytesValue(b)) => (
            "binary",
            Value::from(base64::engine::general_purpose::STANDARD.encode(b)),
        ),
        _ => ("string", Value::from(attributes::text(value).into_owned())),
    };
    Tag {
        key: key.to_owned(),
        kind,
        value,
    }
}

fn string_tag(key: &str, value: &str) -> Tag {
    Tag {
        key: key.to_owned(),
        kind: "string",
        value: Value::from(value),
    }
}

fn tags(attributes: &[KeyValue]) -> Vec<Tag> {
    attributes
        .iter()
        .map(|kv| tag(&kv.key, kv.value.as_ref()))
        .collect()
}

/// Jaeger's span kind names, by OTLP kind.
pub fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "",
    }
}

/// The OTLP kind of a Jaeger span kind name (`None` for an unknown name).
pub fn kind_from_name(name: &str) -> Option<i32> {
    (0..=5).find(|k| kind_name(*k) == name)
}

/// Hex of a trace id as Jaeger prints it: 16 digits when the high half is zero.
pub fn trace_id_hex(bytes: &[u8]) -> String {
    let hex = hex(bytes);
    match hex.strip_prefix("0000000000000000") {
        Some(low) if hex.len() == 32 => low.to_owned(),
        _ => hex,
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn span_tags(stored: &StoredSpan) -> Vec<Tag> {
    let span = &stored.span;
    let mut out = tags(&span.attributes);
    if let Some(scope) = &stored.scope {
        if !scope.name.is_empty() {
            out.push(string_tag("otel.scope.name", &scope.name));
        }
        if !scope.version.is_empty() {
            out.push(string_tag("otel.scope.version", &scope.version));
        }
    }
    let kind = kind_name(span.kind);
    if !kind.is_empty() {
        out.push(string_tag("span.kind", kind));
    }
    if let Some(status) = &span.status {
        match status.code {
            1 => out.push(string_tag("otel.status_code", "OK")),
            2 => {
                out.push(string_tag("otel.status_code", "ERROR"));
                out.push(Tag {
                    key: "error".into(),
                    kind: "bool",
                    value: Value::from(true),
                });
            }
            _ => {}
        }
        if !status.message.is_empty() {
            out.push(string_tag("otel.status_description", &status.message));
        }
    }
    if !span.trace_state.is_empty() {
        out.push(string_tag("w3c.tracestate", &span.trace_state));
    }
    out
}

fn references(stored: &StoredSpan, trace_hex: &str) -> Vec<Reference> {
    let span = &stored.span;
    let mut out = Vec::with_capacity(1 + span.links.len());
    if !span.parent_span_id.is_empty() {
        out.push(Reference {
            ref_type: "CHILD_OF",
            trace_id: trace_hex.to_owned(),
            span_id: hex(&span.parent_span_id),
        });
    }
    for link in &span.links {
        out.push(Reference {
            ref_type: "FOLLOWS_FROM",
            trace_id: trace_id_hex(&link.trace_id),
            span_id: hex(&link.span_id),
        });
    }
    out
}

fn logs(stored: &StoredSpan) -> Vec<Log> {
    stored
        .span
        .events
        .iter()
        .map(|event| {
            let mut fields = Vec::with_capacity(1 + event.attributes.len());
            if !event.name.is_empty() {
                fields.push(string_tag("event", &event.name));
            }
            fields.extend(tags(&event.attributes));
            Log {
                timestamp: event.time_unix_nano / 1000,
                fields,
            }
        })
        .collect()
}

/// Translates a stored trace into Jaeger's model.
pub fn trace(trace: &Trace) -> JaegerTrace {
    let trace_hex = trace_id_hex(&trace.trace_id.0);
    let mut process_ids: HashMap<Vec<u8>, String> = HashMap::new();
    let mut processes = HashMap::new();
    let mut spans = Vec::with_capacity(trace.spans.len());
    for stored in &trace.spans {
        let key = stored
            .resource
            .as_ref()
            .map(|r| r.encode_to_vec())
            .unwrap_or_default();
        let next = process_ids.len() + 1;
        let process_id = process_ids
            .entry(key)
            .or_insert_with(|| {
                let id = format!("p{next}");
                let resource = stored.resource.as_ref();
                processes.insert(
                    id.clone(),
                    Process {
                        service_name: attributes::service_name(resource).to_owned(),
                        tags: resource
                            .map(|r| {
                                r.attributes
                                    .iter()
                                    .filter(|kv| kv.key != "service.name")
                                    .map(|kv| tag(&kv.key, kv.value.as_ref()))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    },
                );
                id
            })
            .clone();
        let span = &stored.span;
        spans.push(JaegerSpan {
            trace_id: trace_hex.clone(),
            span_id: hex(&span.span_id),
            flags: span.flags & 0xff,
            operation_name: span.name.clone(),
            references: references(stored, &trace_hex),
            start_time: span.start_time_unix_nano / 1000,
            duration: span
                .end_time_unix_nano
                .saturating_sub(span.start_time_unix_nano)
                / 1000,
            tags: span_tags(stored),
            logs: logs(stored),
            process_id,
            warnings: None,
        });
    }
    JaegerTrace {
        trace_id: trace_hex,
        spans,
        processes,
        warnings: None,
    }
}
