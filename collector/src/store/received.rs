//! Each span's stored bytes cut from the request as it was received (or as
//! it was written to the WAL): the span's own field copied as is, wrapped in
//! its scope's and resource's other fields. Copying bytes instead of
//! encoding the decoded span again saves most of what storing a span costs.
//!
//! The result decodes to the same one-span `ResourceSpans` that
//! [`super::document::SpanRef::encode`] writes: every field other than the
//! spans is copied in its original order, so repeated and merged fields
//! read back alike.

use std::ops::Range;

use prost::encoding::{WireType, encode_key, encode_varint};

use crate::wire::{self, Malformed};

/// `ExportTraceServiceRequest.resource_spans`, `ResourceSpans.scope_spans`
/// and `ScopeSpans.spans`: all field 1 or 2 of their parent.
const RESOURCE_SPANS: u32 = 1;
const SCOPE_SPANS: u32 = 2;
const SPANS: u32 = 2;

/// Where a request's spans and the fields around them lie.
#[derive(Debug)]
pub struct ReceivedSpans<'a> {
    raw: &'a [u8],
    /// Every field of a `ResourceSpans` or `ScopeSpans` but its children,
    /// one list per message, in the order they were received.
    headers: Vec<Vec<Range<usize>>>,
    /// Per span: its resource's header, its scope's header, its field.
    spans: Vec<(usize, usize, Range<usize>)>,
}

impl<'a> ReceivedSpans<'a> {
    /// Walks an encoded `ExportTraceServiceRequest`.
    pub fn parse(raw: &'a [u8]) -> Result<Self, Malformed> {
        let mut found = Self {
            raw,
            headers: Vec::new(),
            spans: Vec::new(),
        };
        for resource_spans in wire::fields(raw) {
            let resource_spans = resource_spans?;
            if resource_spans.number != RESOURCE_SPANS {
                continue;
            }
            let resource = found.headers.len();
            found.headers.push(Vec::new());
            for field in wire::fields_in(raw, resource_spans.value) {
                let field = field?;
                if field.number == SCOPE_SPANS {
                    found.scope(resource, field.value)?;
                } else {
                    found.headers[resource].push(field.encoded);
                }
            }
        }
        Ok(found)
    }

    fn scope(&mut self, resource: usize, scope_spans: Range<usize>) -> Result<(), Malformed> {
        let scope = self.headers.len();
        self.headers.push(Vec::new());
        for field in wire::fields_in(self.raw, scope_spans) {
            let field = field?;
            if field.number == SPANS {
                self.spans.push((resource, scope, field.encoded));
            } else {
                self.headers[scope].push(field.encoded);
            }
        }
        Ok(())
    }

    /// How many spans the request holds.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Writes span `index` (in request order) as a one-span `ResourceSpans`
    /// into `out`, which is cleared first.
    pub fn encode_into(&self, index: usize, out: &mut Vec<u8>) {
        out.clear();
        let Some((resource, scope, span)) = self.spans.get(index) else {
            return;
        };
        let bytes = |ranges: &[Range<usize>]| ranges.iter().map(|r| r.len()).sum::<usize>();
        let scope_len = bytes(&self.headers[*scope]) + span.len();
        for range in &self.headers[*resource] {
            out.extend_from_slice(&self.raw[range.clone()]);
        }
        encode_key(SCOPE_SPANS, WireType::LengthDelimited, out);
        encode_varint(scope_len as u64, out);
        for range in &self.headers[*scope] {
            out.extend_from_slice(&self.raw[range.clone()]);
        }
        out.extend_from_slice(&self.raw[span.clone()]);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    use super::*;
    use crate::attributes;
    use crate::store::document::for_each_span;

    fn span(id: u8, name: &str) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            name: name.into(),
            attributes: vec![attributes::string("k", name)],
            ..Default::default()
        }
    }

    #[test]
    fn each_span_reads_back_as_the_encoder_writes_it() {
        let scope = |name: &str, spans| ScopeSpans {
            scope: Some(InstrumentationScope {
                name: name.into(),
                ..Default::default()
            }),
            spans,
            schema_url: format!("https://{name}"),
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![attributes::string("service.name", "a")],
                        ..Default::default()
                    }),
                    scope_spans: vec![
                        scope("s1", vec![span(1, "x"), span(2, "y")]),
                        scope("empty", vec![]),
                        scope("s2", vec![span(3, "z")]),
                    ],
                    schema_url: "https://r".into(),
                },
                ResourceSpans {
                    resource: None,
                    scope_spans: vec![ScopeSpans {
                        scope: None,
                        spans: vec![span(4, "w")],
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                },
            ],
        };
        let raw = request.encode_to_vec();
        let received = ReceivedSpans::parse(&raw).unwrap();
        assert_eq!(received.len(), 4);
        let mut index = 0;
        let mut out = Vec::new();
        for_each_span(&request.resource_spans, |span| {
            received.encode_into(index, &mut out);
            assert_eq!(
                ResourceSpans::decode(&out[..]).unwrap(),
                ResourceSpans::decode(&span.encode()[..]).unwrap(),
                "span {index}"
            );
            index += 1;
        });
        assert_eq!(index, 4);
    }

    #[test]
    fn a_truncated_request_is_malformed() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span(1, "x")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let raw = request.encode_to_vec();
        assert!(ReceivedSpans::parse(&raw[..raw.len() - 1]).is_err());
    }
}
