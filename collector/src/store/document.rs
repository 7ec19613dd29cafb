//! One span → one tantivy document: the searchable fields, every attribute
//! in the JSON field, and the complete span as stored bytes.

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use prost::Message;
use tantivy::TantivyDocument;

use super::attribute_object::ObjectBuilder;
use super::schema::SpanFields;
use crate::attributes;
use crate::ids::SpanId;

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
    /// store keeps and [`super::read`] decodes. Written field by field, so
    /// the resource and span are not cloned into a message first.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// [`Self::encode`], appended to `out` (a buffer reused across spans).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        use prost::encoding::{self, WireType};
        let scope_len = self
            .scope
            .map_or(0, |s| encoding::message::encoded_len(1, s))
            + encoding::message::encoded_len(2, self.span)
            + if self.scope_schema_url.is_empty() {
                0
            } else {
                encoding::string::encoded_len(3, &self.scope_schema_url.to_owned())
            };
        out.reserve(scope_len + 16 + self.resource.map_or(0, |r| r.encoded_len() + 4));
        if let Some(resource) = self.resource {
            encoding::message::encode(1, resource, out);
        }
        encoding::encode_key(2, WireType::LengthDelimited, out);
        encoding::encode_varint(scope_len as u64, out);
        if let Some(scope) = self.scope {
            encoding::message::encode(1, scope, out);
        }
        encoding::message::encode(2, self.span, out);
        if !self.scope_schema_url.is_empty() {
            encoding::string::encode(3, &self.scope_schema_url.to_owned(), out);
        }
        if !self.resource_schema_url.is_empty() {
            encoding::string::encode(3, &self.resource_schema_url.to_owned(), out);
        }
    }
}

/// Spans in a batch.
pub fn span_count(batch: &[ResourceSpans]) -> u64 {
    batch
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len() as u64)
        .sum()
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

/// Attribute keys with a field of their own: kept out of the JSON field
/// when that field holds them (tag searches on them use the field, see
/// [`super::read`]), which saves five terms per span.
pub const DEDICATED_KEYS: [&str; 5] = [
    "service.name",
    "http.request.method",
    "http.route",
    "http.response.status_code",
    "peer.service",
];

/// Builds the document of one span; `stored` is its one-span `ResourceSpans`
/// encoding (see [`SpanRef::encode`]).
pub fn build(fields: &SpanFields, span: SpanRef<'_>, stored: &[u8]) -> TantivyDocument {
    let s = span.span;
    let mut doc = TantivyDocument::new();
    doc.add_bytes(fields.trace_id, &s.trace_id);
    doc.add_u64(
        fields.span_id,
        SpanId::from_bytes(&s.span_id).map_or(0, SpanId::as_u64),
    );
    doc.add_u64(
        fields.parent_span_id,
        SpanId::from_bytes(&s.parent_span_id).map_or(0, SpanId::as_u64),
    );
    doc.add_text(fields.service, attributes::service_name(span.resource));
    doc.add_text(fields.operation, &s.name);
    doc.add_u64(fields.kind, s.kind.max(0) as u64);
    doc.add_u64(fields.start_seconds, s.start_time_unix_nano / 1_000_000_000);
    doc.add_u64(fields.start, s.start_time_unix_nano);
    doc.add_u64(
        fields.duration,
        s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano),
    );
    doc.add_u64(
        fields.status,
        s.status.as_ref().map_or(0, |st| st.code.max(0) as u64),
    );
    let mut skip: Vec<&str> = Vec::with_capacity(DEDICATED_KEYS.len());
    if let Some(method) = attributes::get_str(&s.attributes, "http.request.method") {
        doc.add_text(fields.http_method, method);
        skip.push("http.request.method");
    }
    if let Some(route) = attributes::get_str(&s.attributes, "http.route") {
        doc.add_text(fields.http_route, route);
        skip.push("http.route");
    }
    if let Some(code) =
        attributes::get_int(&s.attributes, "http.response.status_code").filter(|c| *c >= 0)
    {
        doc.add_u64(fields.http_status, code as u64);
        skip.push("http.response.status_code");
    }
    if let Some(peer) = attributes::get_str(&s.attributes, "peer.service") {
        doc.add_text(fields.peer_service, peer);
        skip.push("peer.service");
    }
    if let Some(flags) = attributes::get_str(&s.attributes, "tracemesh.response_flags") {
        doc.add_text(fields.response_flags, flags);
    }
    let resource_attributes = span.resource.map_or(&[][..], |r| &r.attributes[..]);
    let mut object = ObjectBuilder::with_capacity(s.attributes.len() + resource_attributes.len());
    object.add(&s.attributes, &skip);
    let service_indexed =
        attributes::get_str(resource_attributes, "service.name").is_some_and(|s| !s.is_empty());
    object.add(
        resource_attributes,
        if service_indexed {
            &["service.name"]
        } else {
            &[]
        },
    );
    // Span fields the query service shows as tags (Jaeger's translation),
    // searchable as tags too.
    if let Some(scope) = span.scope {
        object.add_text("otel.scope.name", &scope.name);
        object.add_text("otel.scope.version", &scope.version);
    }
    if let Some(status) = &s.status {
        object.add_text("otel.status_description", &status.message);
    }
    object.add_text("w3c.tracestate", &s.trace_state);
    doc.add_field_value(fields.attributes, &object.build());
    doc.add_bytes(fields.span, stored);
    if let Some(field) = fields.events {
        let events = event_fields(s);
        if !events.is_empty() {
            doc.add_field_value(field, &events.build());
        }
    }
    doc
}

/// The fields of a span's events as Jaeger shows them (its logs): each
/// event's name as `event`, and its attributes. A key several events (or
/// the name and an attribute) give holds every value.
fn event_fields(span: &Span) -> ObjectBuilder<'_> {
    let mut object = ObjectBuilder::with_capacity(
        span.events
            .iter()
            .map(|event| 1 + event.attributes.len())
            .sum(),
    );
    for event in &span.events {
        object.add_value("event", &event.name);
        object.add(&event.attributes, &[]);
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::ScopeSpans;

    #[test]
    fn encodes_exactly_like_a_one_span_resource_spans() {
        let resource = Resource {
            attributes: vec![attributes::string("service.name", "cart")],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "s".into(),
            version: "1".into(),
            ..Default::default()
        };
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "op".into(),
            ..Default::default()
        };
        for (resource_url, scope_url) in [("", ""), ("https://r", "https://s")] {
            let by_hand = SpanRef {
                resource: Some(&resource),
                resource_schema_url: resource_url,
                scope: Some(&scope),
                scope_schema_url: scope_url,
                span: &span,
            }
            .encode();
            let expected = ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans: vec![span.clone()],
                    schema_url: scope_url.into(),
                }],
                schema_url: resource_url.into(),
            };
            assert_eq!(ResourceSpans::decode(&by_hand[..]).unwrap(), expected);
            assert_eq!(by_hand, expected.encode_to_vec());
        }
    }
}
