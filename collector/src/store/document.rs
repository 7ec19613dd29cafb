//! One span → one tantivy document: the searchable fields, every attribute
//! in the JSON field, and the complete span as stored bytes.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tantivy::TantivyDocument;
use tantivy::schema::OwnedValue;

use super::schema::SpanFields;
use crate::attributes;
use crate::ids::SpanId;

/// Attribute values longer than this are indexed by their first bytes only
/// (the stored span keeps them whole).
const MAX_INDEXED_VALUE: usize = 256;

/// A span with the resource and scope it was sent with.
#[derive(Debug, Clone, Copy)]
pub struct SpanRef<'a> {
    /// The resource (`service.name` and the rest).
    pub resource: Option<&'a Resource>,
    /// The resource's schema URL.
    pub resource_schema_url: &'a str,
    /// The instrumentation scope.
    pub scope: Option<&'a InstrumentationScope>,
    /// The scope's schema URL.
    pub scope_schema_url: &'a str,
    /// The span.
    pub span: &'a Span,
}

impl SpanRef<'_> {
    /// The span alone in an OTLP `ResourceSpans`, protobuf-encoded: what the
    /// store keeps and [`super::read`] decodes.
    pub fn encode(&self) -> Vec<u8> {
        let resource_spans = ResourceSpans {
            resource: self.resource.cloned(),
            scope_spans: vec![ScopeSpans {
                scope: self.scope.cloned(),
                spans: vec![self.span.clone()],
                schema_url: self.scope_schema_url.to_owned(),
            }],
            schema_url: self.resource_schema_url.to_owned(),
        };
        resource_spans.encode_to_vec()
    }
}

/// Calls `visit` with every span of a batch.
pub fn for_each_span<'a>(batch: &'a [ResourceSpans], mut visit: impl FnMut(SpanRef<'a>)) {
    for resource_spans in batch {
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                visit(SpanRef {
                    resource: resource_spans.resource.as_ref(),
                    resource_schema_url: &resource_spans.schema_url,
                    scope: scope_spans.scope.as_ref(),
                    scope_schema_url: &scope_spans.schema_url,
                    span,
                });
            }
        }
    }
}

fn truncated(text: &str) -> &str {
    if text.len() <= MAX_INDEXED_VALUE {
        return text;
    }
    let mut end = MAX_INDEXED_VALUE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn add_attributes(object: &mut BTreeMap<String, OwnedValue>, attributes: &[KeyValue]) {
    for kv in attributes {
        let value = OwnedValue::Str(truncated(&attributes::text(kv.value.as_ref())).to_owned());
        match object.get_mut(&kv.key) {
            None => {
                object.insert(kv.key.clone(), value);
            }
            Some(OwnedValue::Array(values)) => values.push(value),
            Some(existing) => {
                let first = std::mem::replace(existing, OwnedValue::Null);
                *existing = OwnedValue::Array(vec![first, value]);
            }
        }
    }
}

/// Builds the document of one span.
pub fn build(fields: &SpanFields, span: SpanRef<'_>) -> TantivyDocument {
    let s = span.span;
    let mut doc = TantivyDocument::new();
    doc.add_bytes(fields.trace_id, &s.trace_id);
    doc.add_u64(fields.span_id, SpanId::from_bytes(&s.span_id).map_or(0, SpanId::as_u64));
    doc.add_u64(fields.parent_span_id, SpanId::from_bytes(&s.parent_span_id).map_or(0, SpanId::as_u64));
    doc.add_text(fields.service, attributes::service_name(span.resource));
    doc.add_text(fields.operation, &s.name);
    doc.add_u64(fields.kind, s.kind.max(0) as u64);
    doc.add_u64(fields.start_seconds, s.start_time_unix_nano / 1_000_000_000);
    doc.add_u64(fields.start, s.start_time_unix_nano);
    doc.add_u64(fields.duration, s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano));
    doc.add_u64(fields.status, s.status.as_ref().map_or(0, |st| st.code.max(0) as u64));
    if let Some(method) = attributes::get_str(&s.attributes, "http.request.method") {
        doc.add_text(fields.http_method, method);
    }
    if let Some(route) = attributes::get_str(&s.attributes, "http.route") {
        doc.add_text(fields.http_route, route);
    }
    if let Some(code) = attributes::get_int(&s.attributes, "http.response.status_code") {
        doc.add_u64(fields.http_status, code.max(0) as u64);
    }
    if let Some(peer) = attributes::get_str(&s.attributes, "peer.service") {
        doc.add_text(fields.peer_service, peer);
    }
    let mut object = BTreeMap::new();
    add_attributes(&mut object, &s.attributes);
    if let Some(resource) = span.resource {
        add_attributes(&mut object, &resource.attributes);
    }
    doc.add_object(fields.attributes, object);
    doc.add_bytes(fields.span, &span.encode());
    doc
}
