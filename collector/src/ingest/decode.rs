//! Request bodies → OTLP messages: protobuf or the OTLP/JSON mapping (hex
//! ids, lowerCamelCase, enums as integers or names, `null` as a field's
//! default), chosen by `Content-Type`, after gzip is undone within the
//! size limit.

use std::io::Read;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::de::DeserializeOwned;

use super::confine;
use super::lenient::{Lenient, nulls_as_defaults};
use crate::error::IngestError;

/// The two OTLP/HTTP encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json`.
    Json,
}

impl Encoding {
    /// The encoding named by a `Content-Type` header.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self, IngestError> {
        let media = content_type
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Self::Protobuf),
            "application/json" => Ok(Self::Json),
            other => Err(IngestError::UnsupportedMediaType(format!(
                "content-type {other:?} is not supported: use application/x-protobuf or application/json"
            ))),
        }
    }

    /// The `Content-Type` of answers in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        }
    }
}

/// Undoes `Content-Encoding` (none, `identity` or `gzip`), refusing output
/// larger than `limit` bytes.
pub fn decompress(
    content_encoding: Option<&str>,
    body: bytes::Bytes,
    limit: usize,
) -> Result<bytes::Bytes, IngestError> {
    match content_encoding
        .map(|e| e.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => Ok(body),
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::with_capacity((body.len() * 4).min(limit));
            let mut decoder = flate2::read::GzDecoder::new(&body[..]).take(limit as u64 + 1);
            decoder.read_to_end(&mut out).map_err(|e| {
                IngestError::Malformed(format!("gzip body could not be decompressed: {e}"))
            })?;
            if out.len() > limit {
                return Err(IngestError::TooLarge { limit });
            }
            Ok(out.into())
        }
        Some(other) => Err(IngestError::UnsupportedMediaType(format!(
            "content-encoding {other:?} is not supported: use gzip"
        ))),
    }
}

/// Decodes an OTLP message in `encoding`; `what` names it in errors.
pub fn decode<T: Message + Default + DeserializeOwned>(
    encoding: Encoding,
    body: &[u8],
    what: &str,
) -> Result<T, IngestError> {
    match encoding {
        Encoding::Protobuf => T::decode(body)
            .map_err(|e| IngestError::Malformed(format!("{what}: invalid protobuf: {e}"))),
        Encoding::Json => json(body).map_err(|e| {
            IngestError::Malformed(format!(
                "{what}: invalid JSON at {}: {}",
                e.path(),
                e.inner()
            ))
        }),
    }
}

/// Reads an OTLP message from JSON as protobuf's JSON mapping allows
/// writing it: doubles also as strings ("1.5", "NaN"), enums by name, and
/// `null` for any field's default (see [`super::lenient`]).
pub(super) fn json<T: DeserializeOwned>(
    body: &[u8],
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    let body = nulls_as_defaults(body);
    let mut deserializer = serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(Lenient(&mut deserializer))
}

/// A trace request as read from a body, less the spans that could not be.
#[derive(Debug, Default)]
pub struct DecodedTraces {
    /// The spans that decoded, with their resources and scopes.
    pub request: ExportTraceServiceRequest,
    /// The body, when it is `request`'s protobuf encoding exactly (it then
    /// may be stored as received): a protobuf body that decoded whole.
    pub encoded: Option<Bytes>,
    /// The spans left out of `request` because they, or the resource or
    /// scope they came with, could not be decoded.
    pub undecodable: Undecodable,
}

impl From<ExportTraceServiceRequest> for DecodedTraces {
    fn from(request: ExportTraceServiceRequest) -> Self {
        Self {
            request,
            ..Self::default()
        }
    }
}

/// Spans left out of a request because they could not be decoded: OTLP's
/// partial success (`ExportTracePartialSuccess.rejected_spans` and
/// `error_message`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Undecodable {
    /// How many spans.
    pub spans: u64,
    /// Why, for the first [`SHOWN`] faults.
    reasons: Vec<String>,
}

/// Faults named in [`Undecodable::message`], at most.
pub const SHOWN: usize = 3;

/// Longest reason kept, in bytes: a decoder's error names every level it
/// went through, and a hostile value has a hundred. A longer one keeps its
/// start (where) and its end (what went wrong).
const REASON_BYTES: usize = 320;

/// `text` cut to about [`REASON_BYTES`] by leaving out its middle.
fn shortened(text: String) -> String {
    if text.len() <= REASON_BYTES {
        return text;
    }
    let mut head = REASON_BYTES / 2;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - REASON_BYTES / 2;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{} … {}", &text[..head], &text[tail..])
}

impl Undecodable {
    /// Records `spans` spans left out for one fault; `why` is called only
    /// for the first [`SHOWN`] faults.
    pub fn add(&mut self, spans: u64, why: impl FnOnce() -> String) {
        self.spans += spans;
        if self.reasons.len() < SHOWN {
            self.reasons.push(shortened(why()));
        }
    }

    /// Whether any span was left out.
    pub fn any(&self) -> bool {
        self.spans > 0
    }

    /// Why, for the first [`SHOWN`] faults, joined by `; `.
    pub fn reasons(&self) -> String {
        self.reasons.join("; ")
    }

    /// What was left out and why, in English (OTLP's `error_message`);
    /// empty when nothing was.
    pub fn message(&self) -> String {
        if self.spans == 0 {
            return String::new();
        }
        format!(
            "{} span(s) could not be decoded; {}",
            self.spans,
            self.reasons()
        )
    }
}

/// Decodes an OTLP trace request. A request that decodes whole is read in
/// one pass. One that does not is read again part by part
/// ([`super::confine`]): a span that cannot be decoded, or whose resource
/// or scope cannot, is left out and counted in
/// [`DecodedTraces::undecodable`], and the rest is kept. Only a body whose
/// outer structure (resources, scopes, the list of spans) cannot be read is
/// an error.
pub fn traces(encoding: Encoding, body: &Bytes) -> Result<DecodedTraces, IngestError> {
    match encoding {
        Encoding::Protobuf => match ExportTraceServiceRequest::decode(body.clone()) {
            Ok(request) => Ok(DecodedTraces {
                request,
                encoded: Some(body.clone()),
                undecodable: Undecodable::default(),
            }),
            Err(whole) => confine::protobuf(body)
                .map_err(|_| IngestError::Malformed(format!("traces: invalid protobuf: {whole}"))),
        },
        Encoding::Json => match json::<ExportTraceServiceRequest>(body) {
            Ok(request) => Ok(request.into()),
            Err(whole) => confine::json(body).map_err(|_| {
                IngestError::Malformed(format!(
                    "traces: invalid JSON at {}: {}",
                    whole.path(),
                    whole.inner()
                ))
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_follows_the_otlp_mapping() {
        let body = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},
            "scopeSpans":[{"scope":{"name":"s"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
            "name":"GET /","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
            "attributes":[{"key":"n","value":{"intValue":"7"}}],"unknownField":1}]}]}]}"#;
        let request: ExportTraceServiceRequest = decode(Encoding::Json, body, "traces").unwrap();
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.kind, 2);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
    }

    #[test]
    fn doubles_may_be_strings_as_the_protobuf_json_mapping_allows() {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",
            "spanId":"eee19b7ec3c1b174","name":"x","attributes":[
            {"key":"a","value":{"doubleValue":"1.5"}},{"key":"b","value":{"doubleValue":"NaN"}},
            {"key":"c","value":{"doubleValue":"-Infinity"}},{"key":"d","value":{"doubleValue":2}},
            {"key":"e","value":{"intValue":"7"}}]}]}]}]}"#;
        let request: ExportTraceServiceRequest = decode(Encoding::Json, body, "traces").unwrap();
        let values: Vec<Option<Value>> = request.resource_spans[0].scope_spans[0].spans[0]
            .attributes
            .iter()
            .map(|kv| kv.value.clone().and_then(|v| v.value))
            .collect();
        assert_eq!(values[0], Some(Value::DoubleValue(1.5)));
        assert!(matches!(values[1], Some(Value::DoubleValue(d)) if d.is_nan()));
        assert_eq!(values[2], Some(Value::DoubleValue(f64::NEG_INFINITY)));
        assert_eq!(values[3], Some(Value::DoubleValue(2.0)));
        assert_eq!(values[4], Some(Value::IntValue(7)));
        let err = decode::<ExportTraceServiceRequest>(
            Encoding::Json,
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":[{"key":"a","value":{"doubleValue":"lots"}}]}]}]}]}"#,
            "traces",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(r#"invalid double "lots""#),
            "{err}"
        );
    }

    #[test]
    fn enums_by_name_and_null_defaults_as_the_proto3_json_mapping_allows() {
        let body = Bytes::from_static(
            br#"{"resourceSpans":[{"resource":{"attributes":null},"scopeSpans":[{"scope":null,"spans":[
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"a",
             "kind":"SPAN_KIND_CLIENT","status":{"code":"STATUS_CODE_ERROR","message":"boom"},
             "attributes":null,"events":null,"links":null},
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b175","name":"b",
             "kind":null,"status":{"code":null},"events":[{"name":"e","attributes":null}]},
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b176","name":"c",
             "kind":"SPAN_KIND_SERVER","status":{"code":1}}]}]}]}"#,
        );
        let decoded = traces(Encoding::Json, &body).unwrap();
        assert_eq!(decoded.undecodable, Undecodable::default());
        let spans = &decoded.request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0].kind, 3);
        assert_eq!(spans[0].status.as_ref().map(|s| s.code), Some(2));
        assert!(spans[0].attributes.is_empty() && spans[0].events.is_empty());
        assert_eq!(spans[1].kind, 0);
        assert_eq!(spans[1].status.as_ref().map(|s| s.code), Some(0));
        assert_eq!(spans[1].events[0].name, "e");
        assert_eq!(spans[2].kind, 2);
        assert_eq!(spans[2].status.as_ref().map(|s| s.code), Some(1));

        // An unknown name costs its span only, and says why.
        let body = Bytes::from(
            std::str::from_utf8(&body)
                .unwrap()
                .replace("SPAN_KIND_SERVER", "SPAN_KIND_SIDEWAYS"),
        );
        let decoded = traces(Encoding::Json, &body).unwrap();
        assert_eq!(decoded.undecodable.spans, 1);
        assert_eq!(
            decoded.request.resource_spans[0].scope_spans[0].spans.len(),
            2
        );
        assert!(
            decoded.undecodable.message().contains("SPAN_KIND_SIDEWAYS"),
            "{}",
            decoded.undecodable.message()
        );

        // A null envelope list, when the request is read part by part.
        let body = Bytes::from_static(
            br#"{"resourceSpans":[{"scopeSpans":null},{"scopeSpans":[{"spans":null},{"spans":[
            {"traceId":"zz","spanId":"eee19b7ec3c1b174"},
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","kind":"SPAN_KIND_PRODUCER"}]}]}]}"#,
        );
        let decoded = traces(Encoding::Json, &body).unwrap();
        assert_eq!(decoded.undecodable.spans, 1);
        let spans: Vec<i32> = decoded
            .request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.kind)
            .collect();
        assert_eq!(spans, [4]);
    }

    /// `null` is every field's default, as protobuf's JSON mapping says
    /// (and protobuf's parser reads it: as if the member were absent):
    /// strings, bytes, 32- and 64-bit integers, doubles, bools, enums and
    /// oneof members alike. `null` inside a list stays refused.
    #[test]
    fn null_is_the_default_of_every_field_type() {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let body = Bytes::from_static(
            br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}],
              "droppedAttributesCount":null},"schemaUrl":null,
              "scopeSpans":[{"scope":{"name":null,"version":null,"attributes":null,"droppedAttributesCount":null},
              "schemaUrl":null,"spans":[
              {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","parentSpanId":null,
               "traceState":null,"flags":null,"name":null,"kind":null,
               "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":null,
               "attributes":[{"key":"s","value":{"stringValue":null}},{"key":"i","value":{"intValue":null}},
                 {"key":"b","value":{"boolValue":null}},{"key":"d","value":{"doubleValue":null}},
                 {"key":"x","value":{"bytesValue":null}},{"key":"a","value":{"arrayValue":null}},
                 {"key":"n","value":null},{"key":null,"value":{"stringValue":"v"}}],
               "droppedAttributesCount":null,"droppedEventsCount":null,"droppedLinksCount":null,
               "events":[{"timeUnixNano":null,"name":null,"attributes":null,"droppedAttributesCount":null}],
               "links":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b175",
                 "traceState":null,"flags":null,"attributes":null,"droppedAttributesCount":null}],
               "status":{"message":null,"code":null}}]}]}]}"#,
        );
        let decoded = traces(Encoding::Json, &body).unwrap();
        assert_eq!(decoded.undecodable, Undecodable::default());
        let resource_spans = &decoded.request.resource_spans[0];
        assert_eq!(resource_spans.schema_url, "");
        let scope_spans = &resource_spans.scope_spans[0];
        assert_eq!(scope_spans.scope, Some(Default::default()));
        let span = &scope_spans.spans[0];
        assert_eq!(span.trace_id.len(), 16);
        assert!(span.parent_span_id.is_empty());
        assert_eq!((span.trace_state.as_str(), span.flags), ("", 0));
        assert_eq!((span.name.as_str(), span.kind), ("", 0));
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 0);
        let values: Vec<(&str, Option<&Value>)> = span
            .attributes
            .iter()
            .map(|kv| {
                (
                    kv.key.as_str(),
                    kv.value.as_ref().and_then(|v| v.value.as_ref()),
                )
            })
            .collect();
        assert_eq!(
            values,
            [
                ("s", None),
                ("i", None),
                ("b", None),
                ("d", None),
                ("x", None),
                ("a", None),
                ("n", None),
                ("", Some(&Value::StringValue("v".into()))),
            ]
        );
        assert_eq!(span.events, [Default::default()]);
        assert_eq!(span.links[0].trace_state, "");
        assert_eq!(span.status, Some(Default::default()));

        // Inside a list, null is no value: refused, the span only.
        let body = Bytes::from(
            std::str::from_utf8(&body)
                .unwrap()
                .replace(r#""events":[{"#, r#""events":[null,{"#),
        );
        let decoded = traces(Encoding::Json, &body).unwrap();
        assert_eq!(decoded.undecodable.spans, 1);
        assert!(
            decoded.undecodable.message().contains("spans[0].events[0]"),
            "{}",
            decoded.undecodable.message()
        );
    }

    #[test]
    fn null_is_the_default_of_every_metric_field_type() {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        use opentelemetry_proto::tonic::metrics::v1::number_data_point;
        let body = br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[
            {"name":"requests","description":null,"unit":null,"sum":{"aggregationTemporality":null,
             "isMonotonic":null,"dataPoints":[{"startTimeUnixNano":null,"timeUnixNano":"5","asInt":null,
             "flags":null}]}},
            {"name":"latency","histogram":{"dataPoints":[{"count":null,"sum":null,"min":null,"max":null,
             "bucketCounts":null,"explicitBounds":null,"timeUnixNano":"5"}]}},
            {"name":"sizes","exponentialHistogram":{"dataPoints":[{"scale":null,"zeroCount":null,
             "zeroThreshold":null,"positive":{"offset":null,"bucketCounts":null},"negative":null}]}},
            {"name":"q","summary":{"dataPoints":[{"sum":null,"count":null,
             "quantileValues":[{"quantile":null,"value":null}]}]}},
            {"name":"g","gauge":{"dataPoints":[{"asDouble":null,"timeUnixNano":"5"}]}}]}]}]}"#;
        let request: ExportMetricsServiceRequest = decode(Encoding::Json, body, "metrics").unwrap();
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        match &metrics[0].data {
            Some(Data::Sum(sum)) => {
                assert_eq!((sum.aggregation_temporality, sum.is_monotonic), (0, false));
                let point = &sum.data_points[0];
                assert_eq!((point.start_time_unix_nano, point.time_unix_nano), (0, 5));
                assert_eq!((point.value, point.flags), (None, 0));
            }
            other => panic!("{other:?}"),
        }
        match &metrics[1].data {
            Some(Data::Histogram(histogram)) => {
                let point = &histogram.data_points[0];
                assert_eq!(
                    (point.count, point.sum, point.min, point.max),
                    (0, None, None, None)
                );
                assert!(point.bucket_counts.is_empty() && point.explicit_bounds.is_empty());
            }
            other => panic!("{other:?}"),
        }
        match &metrics[2].data {
            Some(Data::ExponentialHistogram(histogram)) => {
                let point = &histogram.data_points[0];
                assert_eq!(
                    (point.scale, point.zero_count, point.zero_threshold),
                    (0, 0, 0.0)
                );
                assert_eq!(point.positive, Some(Default::default()));
                assert_eq!(point.negative, None);
            }
            other => panic!("{other:?}"),
        }
        match &metrics[3].data {
            Some(Data::Summary(summary)) => {
                let point = &summary.data_points[0];
                assert_eq!((point.sum, point.count), (0.0, 0));
                assert_eq!(point.quantile_values, [Default::default()]);
            }
            other => panic!("{other:?}"),
        }
        match &metrics[4].data {
            Some(Data::Gauge(gauge)) => {
                assert_eq!(gauge.data_points[0].value, None::<number_data_point::Value>);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn metric_enums_by_name_and_null_lists_inside_their_oneofs() {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        let body = br#"{"resourceMetrics":[{"resource":null,"scopeMetrics":[{"metrics":[
            {"name":"requests","sum":{"aggregationTemporality":"AGGREGATION_TEMPORALITY_CUMULATIVE",
             "isMonotonic":true,"dataPoints":[{"asInt":"3","attributes":null,"exemplars":null}]}},
            {"name":"latency","histogram":{"aggregationTemporality":"AGGREGATION_TEMPORALITY_DELTA",
             "dataPoints":[{"count":"1","bucketCounts":["1"],"explicitBounds":null,"attributes":null}]}},
            {"name":"idle","gauge":{"dataPoints":null}},
            {"name":"n","sum":{"aggregationTemporality":null,"dataPoints":[]}}]}]}]}"#;
        let request: ExportMetricsServiceRequest = decode(Encoding::Json, body, "metrics").unwrap();
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        match &metrics[0].data {
            Some(Data::Sum(sum)) => {
                assert_eq!(sum.aggregation_temporality, 2);
                assert_eq!(sum.data_points.len(), 1);
                assert!(sum.data_points[0].attributes.is_empty());
            }
            other => panic!("{other:?}"),
        }
        match &metrics[1].data {
            Some(Data::Histogram(histogram)) => {
                assert_eq!(histogram.aggregation_temporality, 1);
                assert!(histogram.data_points[0].explicit_bounds.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&metrics[2].data, Some(Data::Gauge(g)) if g.data_points.is_empty()));
        assert!(matches!(&metrics[3].data, Some(Data::Sum(s)) if s.aggregation_temporality == 0));
    }

    #[test]
    fn malformed_bodies_name_what_was_wrong() {
        let err = decode::<ExportTraceServiceRequest>(
            Encoding::Json,
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#,
            "traces",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("resourceSpans[0].scopeSpans[0].spans[0].traceId"),
            "{err}"
        );
        let err =
            decode::<ExportTraceServiceRequest>(Encoding::Protobuf, &[0x0a, 0xff, 0x01], "traces")
                .unwrap_err();
        assert!(err.to_string().contains("invalid protobuf"), "{err}");
    }

    #[test]
    fn gzip_is_undone_within_the_limit() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&[b'a'; 10_000]).unwrap();
        let gz = bytes::Bytes::from(encoder.finish().unwrap());
        assert_eq!(
            decompress(Some("gzip"), gz.clone(), 10_000).unwrap().len(),
            10_000
        );
        assert!(matches!(
            decompress(Some("gzip"), gz, 9_999),
            Err(IngestError::TooLarge { .. })
        ));
        assert!(matches!(
            decompress(Some("br"), bytes::Bytes::new(), 10),
            Err(IngestError::UnsupportedMediaType(_))
        ));
    }
}
