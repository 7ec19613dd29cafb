//! A trace request read part by part, so that a fault inside one span (an
//! attribute value nested past prost's recursion limit or serde_json's, an
//! id that is not hex, a string that is not UTF-8) costs that span only,
//! and a fault in a resource or a scope costs the spans sent with it; the
//! rest of the request is kept. [`super::decode::traces`] comes here only
//! when the request did not decode whole: a request that does is read in
//! one pass, as before.
//!
//! Protobuf: an envelope of our own, `ResourceSpans` → `ScopeSpans` →
//! spans, whose resource, scope, schema URL and span fields are kept as
//! bytes, so reading it cannot fail on what they hold. Each part is then
//! decoded by the real types inside a request built around it alone, so
//! the levels above it count against prost's recursion limit as they do
//! in the received request: every part kept also decodes when the request
//! it is written in is decoded whole again (WAL replay, the store's reads,
//! a downstream collector).
//!
//! JSON: the same envelope with every part kept as its JSON text
//! (serde_json skips over a value without recursing, whatever its depth),
//! each part then read alone. A span read alone has serde_json's whole
//! depth allowance (128 nested arrays and objects), and what fits in it
//! always fits prost's 100 nested messages inside a request: every
//! `AnyValue` level costs one more JSON level than protobuf levels.
//!
//! Stack and memory stay bounded whatever the depth: prost stops at 100
//! nested messages, serde_json at 128 levels, and the envelopes do not
//! recurse into the parts.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::decode::{self, DecodedTraces, Undecodable};

/// `ExportTraceServiceRequest.resource_spans`.
const RESOURCE_SPANS: u32 = 1;
/// `ResourceSpans.resource` and `ScopeSpans.scope`.
const RESOURCE_OR_SCOPE: u32 = 1;
/// `ResourceSpans.scope_spans` and `ScopeSpans.spans`.
const SCOPE_SPANS_OR_SPANS: u32 = 2;
/// `ResourceSpans.schema_url` and `ScopeSpans.schema_url`.
const SCHEMA_URL: u32 = 3;

/// `ExportTraceServiceRequest` with its resources, scopes and spans left
/// encoded.
#[derive(Clone, PartialEq, prost::Message)]
struct RequestParts {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpansParts>,
}

/// `ResourceSpans` with its resource and schema URL left encoded, each
/// field as often as it came (protobuf merges the occurrences of a message
/// field, and the last string wins): replayed as they are, they decode as
/// in the received request.
#[derive(Clone, PartialEq, prost::Message)]
struct ResourceSpansParts {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    resource: Vec<Bytes>,
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpansParts>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    schema_url: Vec<Bytes>,
}

/// `ScopeSpans` with its scope, schema URL and spans left encoded.
#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpansParts {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    scope: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    spans: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    schema_url: Vec<Bytes>,
}

fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Decodes a request that holds `fields` (field number, value) alone, in
/// the message that `path` leads to (field numbers from the request down,
/// each a one-element list): the levels above the fields count against
/// prost's recursion limit as they do in the received request.
fn alone(
    path: &[u32],
    fields: &[(u32, &Bytes)],
) -> Result<ExportTraceServiceRequest, prost::DecodeError> {
    let mut len: usize = fields
        .iter()
        .map(|(tag, value)| field_len(*tag, value.len()))
        .sum();
    let mut lengths = Vec::with_capacity(path.len());
    for &tag in path.iter().rev() {
        lengths.push(len);
        len = field_len(tag, len);
    }
    let mut buf = Vec::with_capacity(len);
    for (&tag, &len) in path.iter().zip(lengths.iter().rev()) {
        encode_key(tag, WireType::LengthDelimited, &mut buf);
        encode_varint(len as u64, &mut buf);
    }
    for (tag, value) in fields {
        encode_key(*tag, WireType::LengthDelimited, &mut buf);
        encode_varint(value.len() as u64, &mut buf);
        buf.extend_from_slice(value);
    }
    ExportTraceServiceRequest::decode(&buf[..])
}

/// The fields of a resource or scope: the message, then the schema URL.
fn header<'a>(message: &'a [Bytes], schema_url: &'a [Bytes]) -> Vec<(u32, &'a Bytes)> {
    let message = message.iter().map(|value| (RESOURCE_OR_SCOPE, value));
    let schema_url = schema_url.iter().map(|value| (SCHEMA_URL, value));
    message.chain(schema_url).collect()
}

/// Reads a protobuf `ExportTraceServiceRequest` part by part; an error
/// only when the envelope itself cannot be read.
pub(super) fn protobuf(body: &Bytes) -> Result<DecodedTraces, prost::DecodeError> {
    let parts = RequestParts::decode(body.clone())?;
    let mut undecodable = Undecodable::default();
    let mut request = ExportTraceServiceRequest {
        resource_spans: Vec::with_capacity(parts.resource_spans.len()),
    };
    for (r, resource_parts) in parts.resource_spans.iter().enumerate() {
        let fields = header(&resource_parts.resource, &resource_parts.schema_url);
        let decoded = alone(&[RESOURCE_SPANS], &fields)
            .map(|mut request| request.resource_spans.pop().unwrap_or_default());
        let mut resource_spans = match decoded {
            Ok(resource_spans) => resource_spans,
            Err(e) => {
                let spans = resource_parts.scope_spans.iter().map(|s| s.spans.len());
                undecodable.add(spans.sum::<usize>() as u64, || {
                    format!("resource {r}: invalid protobuf: {e}")
                });
                continue;
            }
        };
        for (s, scope_parts) in resource_parts.scope_spans.iter().enumerate() {
            let fields = header(&scope_parts.scope, &scope_parts.schema_url);
            let decoded = alone(&[RESOURCE_SPANS, SCOPE_SPANS_OR_SPANS], &fields)
                .map(|mut request| scope_spans(&mut request).unwrap_or_default());
            let mut scope_spans_kept = match decoded {
                Ok(scope_spans) => scope_spans,
                Err(e) => {
                    undecodable.add(scope_parts.spans.len() as u64, || {
                        format!("resource {r} scope {s}: invalid protobuf: {e}")
                    });
                    continue;
                }
            };
            scope_spans_kept.spans.reserve(scope_parts.spans.len());
            for (i, span) in scope_parts.spans.iter().enumerate() {
                let decoded = alone(
                    &[RESOURCE_SPANS, SCOPE_SPANS_OR_SPANS],
                    &[(SCOPE_SPANS_OR_SPANS, span)],
                );
                match decoded {
                    // The request holds one resource, one scope, one span.
                    Ok(mut request) => scope_spans_kept
                        .spans
                        .extend(scope_spans(&mut request).into_iter().flat_map(|s| s.spans)),
                    Err(e) => undecodable.add(1, || {
                        format!("resource {r} scope {s} span {i}: invalid protobuf: {e}")
                    }),
                }
            }
            resource_spans.scope_spans.push(scope_spans_kept);
        }
        request.resource_spans.push(resource_spans);
    }
    Ok(DecodedTraces {
        request,
        encoded: None,
        undecodable,
    })
}

/// The one `ScopeSpans` of a request built by [`alone`].
fn scope_spans(request: &mut ExportTraceServiceRequest) -> Option<ScopeSpans> {
    request.resource_spans.pop()?.scope_spans.pop()
}

/// A value kept as its JSON text, `null` included (an `Option` would read
/// `null` as absent, where the real type may refuse it).
fn raw<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// A repeated field: `null` is empty, its default in proto3's JSON mapping.
fn repeated<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    Option::<Vec<T>>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// `ExportTraceServiceRequest` in JSON with its parts left as text.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct JsonRequest<'a> {
    #[serde(borrow, deserialize_with = "repeated")]
    resource_spans: Vec<JsonResourceSpans<'a>>,
}

/// `ResourceSpans` in JSON with its resource and schema URL left as text.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct JsonResourceSpans<'a> {
    #[serde(borrow, deserialize_with = "raw")]
    resource: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "repeated")]
    scope_spans: Vec<JsonScopeSpans<'a>>,
    #[serde(borrow, deserialize_with = "raw")]
    schema_url: Option<&'a RawValue>,
}

/// `ScopeSpans` in JSON with its scope, schema URL and spans left as text.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct JsonScopeSpans<'a> {
    #[serde(borrow, deserialize_with = "raw")]
    scope: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "repeated")]
    spans: Vec<&'a RawValue>,
    #[serde(borrow, deserialize_with = "raw")]
    schema_url: Option<&'a RawValue>,
}

/// An object with the fields given (name, JSON text), to read a resource
/// or a scope with its schema URL through the real type.
fn object(fields: &[(&str, Option<&RawValue>)]) -> String {
    let mut out = String::from("{");
    for (name, value) in fields {
        if let Some(value) = value {
            if out.len() > 1 {
                out.push(',');
            }
            out.push('"');
            out.push_str(name);
            out.push_str("\":");
            out.push_str(value.get());
        }
    }
    out.push('}');
    out
}

/// Reads `text` as a `T` and names the faulty field from `at`, the part's
/// place in the request.
fn read_json<T: serde::de::DeserializeOwned>(text: &str, at: &str) -> Result<T, String> {
    decode::json(text.as_bytes()).map_err(|e| {
        let path = e.path().to_string();
        let path = match path.as_str() {
            "." => String::new(),
            inner => format!(".{inner}"),
        };
        format!("invalid JSON at {at}{path}: {}", e.inner())
    })
}

/// Reads an OTLP/JSON `ExportTraceServiceRequest` part by part; an error
/// only when the envelope itself cannot be read.
pub(super) fn json(body: &[u8]) -> Result<DecodedTraces, serde_json::Error> {
    let parts: JsonRequest<'_> = serde_json::from_slice(body)?;
    let mut undecodable = Undecodable::default();
    let mut request = ExportTraceServiceRequest {
        resource_spans: Vec::with_capacity(parts.resource_spans.len()),
    };
    for (r, resource_parts) in parts.resource_spans.iter().enumerate() {
        let text = object(&[
            ("resource", resource_parts.resource),
            ("schemaUrl", resource_parts.schema_url),
        ]);
        let mut resource_spans =
            match read_json::<ResourceSpans>(&text, &format!("resourceSpans[{r}]")) {
                Ok(resource_spans) => resource_spans,
                Err(why) => {
                    let spans = resource_parts.scope_spans.iter().map(|s| s.spans.len());
                    undecodable.add(spans.sum::<usize>() as u64, || why);
                    continue;
                }
            };
        for (s, scope_parts) in resource_parts.scope_spans.iter().enumerate() {
            let text = object(&[
                ("scope", scope_parts.scope),
                ("schemaUrl", scope_parts.schema_url),
            ]);
            let at = format!("resourceSpans[{r}].scopeSpans[{s}]");
            let mut scope_spans = match read_json::<ScopeSpans>(&text, &at) {
                Ok(scope_spans) => scope_spans,
                Err(why) => {
                    undecodable.add(scope_parts.spans.len() as u64, || why);
                    continue;
                }
            };
            scope_spans.spans.reserve(scope_parts.spans.len());
            for (i, span) in scope_parts.spans.iter().enumerate() {
                match read_json::<Span>(span.get(), &format!("{at}.spans[{i}]")) {
                    Ok(span) => scope_spans.spans.push(span),
                    Err(why) => undecodable.add(1, || why),
                }
            }
            resource_spans.scope_spans.push(scope_spans);
        }
        request.resource_spans.push(resource_spans);
    }
    Ok(DecodedTraces {
        request,
        encoded: None,
        undecodable,
    })
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, ArrayValue, InstrumentationScope, KeyValue,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::Event;

    use super::*;
    use crate::attributes;
    use crate::ingest::decode::{Encoding, traces};

    fn span(id: u8) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            name: format!("op-{id}"),
            attributes: vec![attributes::string("k", "v")],
            ..Default::default()
        }
    }

    fn with_attribute(mut span: Span, value: AnyValue) -> Span {
        span.attributes.push(KeyValue {
            key: "deep".into(),
            value: Some(value),
            ..Default::default()
        });
        span
    }

    /// `levels` arrays nested in one another, the innermost empty: the
    /// `AnyValue` has messages `2 * levels + 1` deep below it.
    fn arrays(levels: usize) -> AnyValue {
        let mut value = AnyValue {
            value: Some(Value::ArrayValue(ArrayValue::default())),
        };
        for _ in 0..levels {
            value = AnyValue {
                value: Some(Value::ArrayValue(ArrayValue {
                    values: vec![value],
                })),
            };
        }
        value
    }

    /// A key-value list nested `levels` deep, encoded without recursing
    /// (the value would overflow the stack as a prost message).
    fn kvlists_encoded(levels: usize) -> Vec<u8> {
        let leaf = AnyValue {
            value: Some(Value::StringValue("leaf".into())),
        }
        .encode_to_vec();
        // Each level: AnyValue.kvlist_value (6) → KeyValueList.values (1)
        // → KeyValue { key (1): "k", value (2): the level below }.
        let mut lengths = Vec::with_capacity(levels);
        let mut len = leaf.len();
        for _ in 0..levels {
            let key_value = 3 + field_len(2, len);
            let list = field_len(1, key_value);
            lengths.push((len, key_value, list));
            len = field_len(6, list);
        }
        let mut out = Vec::with_capacity(len);
        for &(inner, key_value, list) in lengths.iter().rev() {
            encode_key(6, WireType::LengthDelimited, &mut out);
            encode_varint(list as u64, &mut out);
            encode_key(1, WireType::LengthDelimited, &mut out);
            encode_varint(key_value as u64, &mut out);
            out.extend_from_slice(&[0x0a, 1, b'k']);
            encode_key(2, WireType::LengthDelimited, &mut out);
            encode_varint(inner as u64, &mut out);
        }
        out.extend_from_slice(&leaf);
        out
    }

    fn field(tag: u32, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(field_len(tag, content.len()));
        encode_key(tag, WireType::LengthDelimited, &mut out);
        encode_varint(content.len() as u64, &mut out);
        out.extend_from_slice(content);
        out
    }

    /// A request of one resource and one scope holding `spans`, encoded.
    fn request_of(resource: &Resource, spans: &[Vec<u8>]) -> Bytes {
        let spans: Vec<u8> = spans.iter().flat_map(|s| field(2, s)).collect();
        let mut resource_spans = field(1, &resource.encode_to_vec());
        resource_spans.extend(field(2, &spans));
        field(1, &resource_spans).into()
    }

    fn resource() -> Resource {
        Resource {
            attributes: vec![attributes::string("service.name", "cart")],
            ..Default::default()
        }
    }

    fn ids(request: &ExportTraceServiceRequest) -> Vec<u8> {
        let mut ids = Vec::new();
        crate::store::document::for_each_span(&request.resource_spans, |s| {
            ids.push(s.span.span_id[0])
        });
        ids
    }

    #[test]
    fn a_request_that_reads_part_by_part_reads_as_it_does_whole() {
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
                    resource: Some(resource()),
                    scope_spans: vec![scope("a", vec![span(1), span(2)]), scope("empty", vec![])],
                    schema_url: "https://r".into(),
                },
                ResourceSpans {
                    resource: None,
                    scope_spans: vec![ScopeSpans {
                        spans: vec![span(3)],
                        ..Default::default()
                    }],
                    schema_url: String::new(),
                },
            ],
        };
        let mut body = request.encode_to_vec();
        // A second occurrence of the first resource, merged into it, and a
        // field unknown to the request, skipped.
        let extra = Resource {
            attributes: vec![attributes::string("host.name", "h")],
            ..Default::default()
        };
        body.extend(field(1, &field(1, &extra.encode_to_vec())));
        body.extend(field(15, b"unknown"));
        let body = Bytes::from(body);
        let whole = ExportTraceServiceRequest::decode(body.clone()).unwrap();
        let parts = protobuf(&body).unwrap();
        assert_eq!(parts.request, whole);
        assert!(!parts.undecodable.any());

        let json = serde_json::to_vec(&request).unwrap();
        let parts = super::json(&json).unwrap();
        assert_eq!(parts.request, request);
        assert!(!parts.undecodable.any());
    }

    #[test]
    fn a_span_too_deep_costs_that_span_only_at_any_depth() {
        let deep_40 = with_attribute(span(2), {
            let mut value = AnyValue {
                value: Some(Value::StringValue("leaf".into())),
            };
            for _ in 0..40 {
                value = AnyValue {
                    value: Some(Value::KvlistValue(
                        opentelemetry_proto::tonic::common::v1::KeyValueList {
                            values: vec![KeyValue {
                                key: "k".into(),
                                value: Some(value),
                                ..Default::default()
                            }],
                        },
                    )),
                };
            }
            value
        });
        let mut deep_100k = span(4).encode_to_vec();
        let mut attribute = field(1, b"deep");
        attribute.extend(field(2, &kvlists_encoded(100_000)));
        deep_100k.extend(field(9, &attribute));
        let body = request_of(
            &resource(),
            &[
                span(1).encode_to_vec(),
                deep_40.encode_to_vec(),
                span(3).encode_to_vec(),
                deep_100k,
                span(5).encode_to_vec(),
            ],
        );
        assert!(ExportTraceServiceRequest::decode(body.clone()).is_err());
        let decoded = traces(Encoding::Protobuf, &body).unwrap();
        assert_eq!(ids(&decoded.request), [1, 3, 5]);
        assert!(decoded.encoded.is_none(), "the body is not what is kept");
        assert_eq!(decoded.undecodable.spans, 2);
        let message = decoded.undecodable.message();
        assert!(
            message.starts_with("2 span(s) could not be decoded; resource 0 scope 0 span 1: "),
            "{message}"
        );
        assert!(message.contains("recursion limit"), "{message}");
        assert!(message.contains("resource 0 scope 0 span 3: "), "{message}");
        assert_eq!(
            decoded.request.resource_spans[0].resource,
            Some(resource()),
            "the spans kept keep their resource"
        );
    }

    #[test]
    fn a_span_kept_decodes_inside_the_request_again() {
        // A span has 97 levels below it inside a request (the request, its
        // resource and scope take 3 of prost's 100): arrays(47) under an
        // attribute reach exactly 97, arrays(48) reach 99, which the span
        // read alone would take.
        let fits = with_attribute(span(2), arrays(47));
        let too_deep = with_attribute(span(3), arrays(48));
        assert!(Span::decode(&too_deep.encode_to_vec()[..]).is_ok());
        let body = request_of(
            &resource(),
            &[
                span(1).encode_to_vec(),
                fits.encode_to_vec(),
                too_deep.encode_to_vec(),
            ],
        );
        let decoded = traces(Encoding::Protobuf, &body).unwrap();
        assert_eq!(ids(&decoded.request), [1, 2]);
        assert_eq!(decoded.undecodable.spans, 1);
        let again = ExportTraceServiceRequest::decode(&decoded.request.encode_to_vec()[..]);
        assert_eq!(again.unwrap(), decoded.request);
        // An event's attributes are one level further down.
        let mut event_too_deep = span(4);
        event_too_deep.events.push(Event {
            attributes: vec![KeyValue {
                key: "deep".into(),
                value: Some(arrays(47)),
                ..Default::default()
            }],
            ..Default::default()
        });
        let body = request_of(&resource(), &[event_too_deep.encode_to_vec()]);
        let decoded = traces(Encoding::Protobuf, &body).unwrap();
        assert_eq!(decoded.undecodable.spans, 1);
    }

    #[test]
    fn a_resource_or_scope_that_cannot_be_decoded_costs_its_spans() {
        let deep = Resource {
            attributes: vec![KeyValue {
                key: "deep".into(),
                value: Some(arrays(60)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut body =
            request_of(&deep, &[span(1).encode_to_vec(), span(2).encode_to_vec()]).to_vec();
        body.extend_from_slice(&request_of(&resource(), &[span(3).encode_to_vec()]));
        // A scope whose name is not UTF-8.
        let mut scope_spans = field(1, &field(1, &[0xff, 0xfe]));
        scope_spans.extend(field(2, &span(4).encode_to_vec()));
        body.extend(field(1, &field(2, &scope_spans)));
        let decoded = traces(Encoding::Protobuf, &Bytes::from(body)).unwrap();
        assert_eq!(ids(&decoded.request), [3]);
        assert_eq!(decoded.undecodable.spans, 3);
        let message = decoded.undecodable.message();
        assert!(
            message.contains("resource 0: invalid protobuf"),
            "{message}"
        );
        assert!(
            message.contains("resource 2 scope 0: invalid protobuf"),
            "{message}"
        );
    }

    #[test]
    fn a_broken_envelope_is_still_refused_whole() {
        let body = request_of(&resource(), &[span(1).encode_to_vec()]);
        let cut = body.slice(..body.len() - 3);
        let error = traces(Encoding::Protobuf, &cut).unwrap_err();
        assert!(error.to_string().contains("invalid protobuf"), "{error}");
        let error =
            traces(Encoding::Json, &Bytes::from_static(b"{\"resourceSpans\":[")).unwrap_err();
        assert!(error.to_string().contains("invalid JSON"), "{error}");
    }

    /// A span in OTLP/JSON with an attribute of `levels` nested key-value
    /// lists (arrays when `arrays`), in an event's attributes when `event`.
    fn json_span(id: u8, levels: usize, arrays: bool, event: bool) -> String {
        let (open, close) = if arrays {
            (r#"{"arrayValue":{"values":["#, "]}}")
        } else {
            (r#"{"kvlistValue":{"values":[{"key":"k","value":"#, "}]}}")
        };
        let value = format!(
            "{}{{\"stringValue\":\"leaf\"}}{}",
            open.repeat(levels),
            close.repeat(levels)
        );
        let attributes = format!(r#"[{{"key":"deep","value":{value}}}]"#);
        let (attributes, events) = match event {
            false => (attributes, "[]".to_owned()),
            true => (
                "[]".to_owned(),
                format!(r#"[{{"name":"e","attributes":{attributes}}}]"#),
            ),
        };
        format!(
            r#"{{"traceId":"01010101010101010101010101010101","spanId":"{id:02x}{id:02x}{id:02x}{id:02x}{id:02x}{id:02x}{id:02x}{id:02x}","name":"op","attributes":{attributes},"events":{events}}}"#
        )
    }

    fn json_request(spans: &[String]) -> Bytes {
        format!(
            r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"cart"}}}}]}},"scopeSpans":[{{"scope":{{"name":"s"}},"spans":[{}]}}]}}]}}"#,
            spans.join(",")
        )
        .into()
    }

    #[test]
    fn json_spans_too_deep_or_malformed_cost_themselves_only() {
        let body = json_request(&[
            json_span(1, 0, false, false),
            json_span(2, 40, false, false),
            json_span(3, 0, false, false).replace("0101010101", "zz01010101"),
            json_span(4, 100_000, false, false),
            json_span(5, 100_000, true, true),
            json_span(6, 2, true, false),
        ]);
        let decoded = traces(Encoding::Json, &body).unwrap();
        assert_eq!(ids(&decoded.request), [1, 6]);
        assert_eq!(decoded.undecodable.spans, 4);
        let message = decoded.undecodable.message();
        assert!(
            message.contains("invalid JSON at resourceSpans[0].scopeSpans[0].spans[1]"),
            "{message}"
        );
        assert!(message.contains("recursion limit"), "{message}");
        assert!(
            message.contains("resourceSpans[0].scopeSpans[0].spans[2].traceId"),
            "{message}"
        );
        let resource = decoded.request.resource_spans[0].resource.as_ref();
        assert_eq!(attributes::service_name(resource), "cart");
    }

    #[test]
    fn the_deepest_json_span_kept_decodes_inside_a_protobuf_request() {
        for arrays in [false, true] {
            for event in [false, true] {
                let deepest = (0..64)
                    .take_while(|&levels| {
                        read_json::<Span>(&json_span(1, levels, arrays, event), "").is_ok()
                    })
                    .last()
                    .unwrap();
                assert!(deepest > 20, "{deepest}");
                let body = json_request(&[json_span(1, deepest, arrays, event)]);
                let parts = super::json(&body).unwrap();
                assert!(!parts.undecodable.any());
                let encoded = parts.request.encode_to_vec();
                let again = ExportTraceServiceRequest::decode(&encoded[..]);
                assert_eq!(again.unwrap(), parts.request, "{deepest} levels");
            }
        }
    }

    /// 512 spans shaped like the agent's (15 attributes, 6 resource
    /// attributes), as `bench/collector` sends them.
    fn agent_batch() -> ExportTraceServiceRequest {
        let spans = (0..512u64)
            .map(|n| {
                let mut span = span((n % 250) as u8 + 1);
                span.attributes = (0..15)
                    .map(|a| match a % 3 {
                        0 => attributes::int(&format!("http.attribute.{a}"), (n * a) as i64),
                        _ => attributes::string(
                            &format!("http.attribute.{a}"),
                            format!("outbound|9080||service-{n}.default.svc.cluster.local"),
                        ),
                    })
                    .collect();
                span.start_time_unix_nano = 1_700_000_000_000_000_000 + n;
                span.end_time_unix_nano = span.start_time_unix_nano + 1_000_000;
                span
            })
            .collect();
        let resource = Resource {
            attributes: (0..6)
                .map(|a| attributes::string(&format!("service.attribute.{a}"), "cart-v1-7d9c8b"))
                .collect(),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "tracemesh-agent".into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    /// The median time of `run`, in microseconds, over `rounds` rounds.
    fn median_micros(rounds: usize, mut run: impl FnMut()) -> f64 {
        let mut times: Vec<f64> = (0..rounds)
            .map(|_| {
                let started = std::time::Instant::now();
                run();
                started.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[rounds / 2]
    }

    /// What reading a normal batch part by part would cost against reading
    /// it whole (the receive path reads whole, and part by part only a
    /// batch that failed whole). Run in release:
    /// `cargo test --release -p tracemesh-collector --lib decode_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a timing, run by hand in release"]
    fn decode_cost_whole_and_part_by_part() {
        let request = agent_batch();
        let body = Bytes::from(request.encode_to_vec());
        let json = Bytes::from(serde_json::to_vec(&request).unwrap());
        let rounds = 300;
        let whole = median_micros(rounds, || {
            std::hint::black_box(ExportTraceServiceRequest::decode(body.clone()).unwrap());
        });
        let traces_protobuf = median_micros(rounds, || {
            std::hint::black_box(traces(Encoding::Protobuf, &body).unwrap());
        });
        let parts = median_micros(rounds, || {
            std::hint::black_box(protobuf(&body).unwrap());
        });
        let whole_json = median_micros(rounds / 3, || {
            std::hint::black_box(decode::json::<ExportTraceServiceRequest>(&json).unwrap());
        });
        let parts_json = median_micros(rounds / 3, || {
            std::hint::black_box(super::json(&json).unwrap());
        });
        println!(
            "512 spans, {} bytes protobuf, {} bytes JSON (median µs per batch):\n\
             protobuf whole {whole:.0}, decode::traces {traces_protobuf:.0}, part by part {parts:.0} ({:+.0}%)\n\
             JSON whole {whole_json:.0}, part by part {parts_json:.0} ({:+.0}%)",
            body.len(),
            json.len(),
            (parts / whole - 1.0) * 100.0,
            (parts_json / whole_json - 1.0) * 100.0,
        );
    }
}
