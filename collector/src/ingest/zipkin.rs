//! Zipkin v2 JSON → OTLP spans, following OpenTelemetry's Zipkin mapping
//! (the reverse of the spec's OTLP→Zipkin table): `localEndpoint.serviceName`
//! becomes the resource's `service.name`, tags become string attributes,
//! annotations become events, `otel.status_code`/`error` tags become the
//! status, `remoteEndpoint` becomes `peer.service` and `network.peer.*`.
//!
//! A batch is taken whole or not at all, as Zipkin's server takes it
//! (`Collector.acceptSpans` decodes the whole list before anything is
//! stored, and a span it cannot decode fails the request): a span that
//! cannot be read, converted or kept refuses its batch, and the answer
//! names it by its place in the list and its field. Zipkin has no partial
//! success, so storing the rest would leave a sender that retries the
//! batch (or sends it again fixed) with copies.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::decode::Undecodable;
use super::validate::TimeBounds;
use crate::attributes::{self, UNKNOWN_SERVICE};
use crate::error::IngestError;
use crate::ids::{SpanId, TraceId};
use crate::metrics::Refusal;

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
    #[serde(default, deserialize_with = "null_as_default")]
    annotations: Vec<Annotation>,
    #[serde(default, deserialize_with = "null_as_default")]
    tags: BTreeMap<String, String>,
    /// The SERVER half of an id the CLIENT half shares (B3's default).
    #[serde(default, deserialize_with = "null_as_default")]
    shared: bool,
}

/// A field whose value is `null` is read as absent, as Zipkin's span
/// reader (`V2SpanReader`) skips a null field other than `traceId` and
/// `id`. (`Option` fields take `null` as `None` on their own.)
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
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

/// Why one span cannot be kept: the refusal it counts as, and the
/// field at fault.
type Fault = (Refusal, String);

fn malformed(why: String) -> Fault {
    (Refusal::Malformed, why)
}

/// Refuses times the store does not keep (see [`super::validate`]), named
/// by the Zipkin field that gave them: `timestamp` (µs), and `duration`
/// for the end.
fn check_times(
    (timestamp, duration): (Option<u64>, Option<u64>),
    span: &Span,
    bounds: TimeBounds,
) -> Result<(), Fault> {
    let timestamp = timestamp.unwrap_or(span.start_time_unix_nano / 1000);
    let ahead = "ahead of the collector's clock by more than max_clock_skew";
    if span.start_time_unix_nano < bounds.oldest_start {
        return Err((
            Refusal::OutOfRange,
            format!("timestamp {timestamp} is older than the retention window"),
        ));
    }
    if span.start_time_unix_nano > bounds.newest {
        return Err((
            Refusal::OutOfRange,
            format!("timestamp {timestamp} is {ahead}"),
        ));
    }
    if span.end_time_unix_nano > bounds.newest {
        return Err((
            Refusal::OutOfRange,
            format!("duration {} ends the span {ahead}", duration.unwrap_or(0)),
        ));
    }
    Ok(())
}

/// Converts one span; `received` (ns) stands in for a missing `timestamp`
/// when no annotation gives a time either. A span is refused when an id
/// is not hex or is all zero (OTLP's invalid id), or its times are
/// outside `bounds`; the error names the field at fault.
fn convert(
    zipkin: ZipkinSpan,
    received: u64,
    bounds: TimeBounds,
) -> Result<(String, InstrumentationScope, Span), Fault> {
    // Ids shorter than 16 or 32 digits are zero-padded, as Zipkin's own
    // Span.normalizeTraceId and Builder.id do.
    let trace_id =
        TraceId::parse_zipkin(&zipkin.trace_id).map_err(|e| malformed(format!("traceId: {e}")))?;
    let span_id = SpanId::parse_zipkin(&zipkin.id).map_err(|e| malformed(format!("id: {e}")))?;
    if trace_id.0 == [0; 16] {
        return Err((Refusal::Invalid, "traceId is all zero".into()));
    }
    if span_id.0 == [0; 8] {
        return Err((Refusal::Invalid, "id is all zero".into()));
    }
    let parent = match zipkin.parent_id.as_deref() {
        None | Some("") => Vec::new(),
        Some(text) => SpanId::parse_zipkin(text)
            .map_err(|e| malformed(format!("parentId: {e}")))?
            .0
            .to_vec(),
    };
    // A shared SERVER half's parent is its CLIENT half, whose id it
    // carries (Zipkin copies the client's parent into it): stored so, the
    // reader's split of the id makes it the client's child, as Jaeger's
    // span id uniquifier does, and the dependency graph sees the call.
    let server = kind(zipkin.kind.as_deref()) == SpanKind::Server;
    let parent = if zipkin.shared && server {
        span_id.0.to_vec()
    } else {
        parent
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
    let mut span = Span {
        trace_id: trace_id.0.to_vec(),
        span_id: span_id.0.to_vec(),
        parent_span_id: parent,
        name: zipkin.name.unwrap_or_default(),
        kind: kind(zipkin.kind.as_deref()) as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start.saturating_add(zipkin.duration.unwrap_or(0).saturating_mul(1000)),
        attributes,
        status: Some(status),
        ..Default::default()
    };
    check_times((zipkin.timestamp, zipkin.duration), &span, bounds)?;
    span.events = zipkin
        .annotations
        .into_iter()
        .map(|a| Event {
            time_unix_nano: a.timestamp.saturating_mul(1000),
            name: a.value,
            ..Default::default()
        })
        .collect();
    Ok((service, scope, span))
}

/// Reads one span alone, naming the field at fault.
fn read_span(text: &str) -> Result<ZipkinSpan, String> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|e| format!("invalid JSON at {}: {}", e.path(), e.inner()))
}

/// A Zipkin batch refused whole: nothing of it may be stored.
#[derive(Debug)]
pub struct Refused {
    /// Spans in the batch (0 when the body is no list of spans).
    pub spans: u64,
    /// Why: names the first bad spans by their place in the list and
    /// their field.
    pub error: IngestError,
}

/// Parses a `POST /api/v2/spans` JSON body into OTLP resource spans, one
/// resource per local service, or refuses it whole: a body that is not a
/// JSON list, or a list with a span that cannot be read or converted (an
/// id that is not hex or is zero, a tag that is not a string) or whose
/// times are outside `bounds`. `received` (ns since the epoch, inside
/// `bounds`) stands in for the time of a span that gives none. A list
/// that reads whole is read in one pass; one that does not is read again
/// span by span to name the bad spans (serde_json skips over a span
/// without recursing, whatever its depth). An empty body is no spans, as
/// Zipkin's collector accepts it (202).
pub fn decode(
    body: &[u8],
    received: u64,
    bounds: TimeBounds,
) -> Result<Vec<ResourceSpans>, Refused> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let spans: Vec<Result<ZipkinSpan, String>> =
        match serde_path_to_error::deserialize::<_, Vec<ZipkinSpan>>(&mut deserializer) {
            Ok(spans) => spans.into_iter().map(Ok).collect(),
            Err(whole) => serde_json::from_slice::<Vec<&RawValue>>(body)
                .map_err(|_| Refused {
                    spans: 0,
                    error: IngestError::Malformed(format!(
                        "zipkin spans: invalid JSON at {}: {}",
                        whole.path(),
                        whole.inner()
                    )),
                })?
                .into_iter()
                .map(|span| read_span(span.get()))
                .collect(),
        };
    let total = spans.len() as u64;
    let mut bad = Undecodable::default();
    let mut first_fault = None;
    let mut by_service: BTreeMap<String, BTreeMap<(String, String), Vec<Span>>> = BTreeMap::new();
    for (index, zipkin) in spans.into_iter().enumerate() {
        let converted = zipkin
            .map_err(malformed)
            .and_then(|zipkin| convert(zipkin, received, bounds));
        match converted {
            Ok((service, scope, span)) => by_service
                .entry(service)
                .or_default()
                .entry((scope.name, scope.version))
                .or_default()
                .push(span),
            Err((refusal, why)) => {
                first_fault.get_or_insert(refusal);
                bad.add(1, || format!("zipkin span [{index}]: {why}"));
            }
        }
    }
    if let Some(reason) = first_fault {
        return Err(Refused {
            spans: total,
            error: IngestError::Invalid {
                reason,
                message: format!(
                    "{} of {total} span(s) invalid, none of the batch stored; {}",
                    bad.spans,
                    bad.reasons()
                ),
            },
        });
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
    use crate::store::document::span_count;

    /// A shared SERVER half is stored with its CLIENT half's id, its own,
    /// as its parent; an unshared span keeps its parent, and so does a
    /// shared one that is no SERVER.
    #[test]
    fn a_shared_server_half_is_stored_as_its_client_halfs_child() {
        let convert_one = |json: &str| {
            let zipkin: ZipkinSpan = serde_json::from_str(json).unwrap();
            convert(zipkin, 1, TimeBounds::ALL).unwrap().2
        };
        let server = convert_one(
            r#"{"traceId":"aaaa000000000001","id":"0000000000000011","parentId":"0000000000000001","kind":"SERVER","shared":true,"timestamp":1}"#,
        );
        assert_eq!(server.parent_span_id, server.span_id);
        let unshared = convert_one(
            r#"{"traceId":"aaaa000000000001","id":"0000000000000011","parentId":"0000000000000001","kind":"SERVER","timestamp":1}"#,
        );
        assert_eq!(unshared.parent_span_id, [0, 0, 0, 0, 0, 0, 0, 1]);
        let client = convert_one(
            r#"{"traceId":"aaaa000000000001","id":"0000000000000011","kind":"CLIENT","shared":true,"timestamp":1}"#,
        );
        assert!(client.parent_span_id.is_empty());
    }

    /// Every field but the ids may be `null`, read as absent, as Zipkin's
    /// reader reads it: a span with `"tags": null` refused its whole batch.
    #[test]
    fn null_fields_are_absent() {
        let body = br#"[{"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010db","parentId":null,"name":null,"kind":null,
            "timestamp":1,"duration":null,"localEndpoint":{"serviceName":"api","ipv4":null,"port":null},"remoteEndpoint":null,
            "annotations":null,"tags":null,"shared":null,"debug":null}]"#;
        let resources = decode(body, RECEIVED, TimeBounds::ALL).unwrap();
        let span = &resources[0].scope_spans[0].spans[0];
        assert!(span.parent_span_id.is_empty() && span.events.is_empty());
        // The ids may not.
        let body = br#"[{"traceId":null,"id":"4d1e00c0db9010db"}]"#;
        assert!(decode(body, RECEIVED, TimeBounds::ALL).is_err());
    }

    #[test]
    fn maps_like_opentelemetry() {
        let body = br#"[{"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010db","parentId":"5b4185666d50f68b","name":"get /api",
            "kind":"CLIENT","timestamp":1472470996199000,"duration":207000,
            "localEndpoint":{"serviceName":"frontend","ipv4":"10.0.0.1"},
            "remoteEndpoint":{"serviceName":"backend","ipv4":"10.0.0.2","port":8080},
            "annotations":[{"timestamp":1472470996238000,"value":"ws"}],
            "tags":{"http.method":"GET","error":"boom","otel.scope.name":"brave"}}]"#;
        let batch = decode(body, RECEIVED, TimeBounds::ALL).unwrap();
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
        let batch = decode(body, RECEIVED, TimeBounds::ALL).unwrap();
        let spans = &batch[0].scope_spans[0].spans;
        assert_eq!(spans[0].start_time_unix_nano, 1_472_470_996_238_000_000);
        assert_eq!(
            spans[0].end_time_unix_nano - spans[0].start_time_unix_nano,
            5_000
        );
        assert_eq!(spans[1].start_time_unix_nano, RECEIVED, "received");
    }

    /// When the tests' batches are received (ns): inside the bounds
    /// [`zero_ids_and_times_the_store_does_not_keep_refuse_the_batch`] sets.
    const RECEIVED: u64 = 1_500_000_000_000_000;

    /// The refusal of a batch: its span count, the reason counted, the
    /// message.
    fn refused(body: &[u8], bounds: TimeBounds) -> (u64, Refusal, String) {
        match decode(body, RECEIVED, bounds) {
            Ok(batch) => panic!("decoded: {batch:?}"),
            Err(Refused { spans, error }) => (spans, error.reason(), error.to_string()),
        }
    }

    #[test]
    fn a_bad_span_refuses_its_whole_batch_and_is_named_with_its_field() {
        let (spans, reason, message) = refused(
            br#"[{"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010db"},
            {"traceId":"xyz","id":"4d1e00c0db9010dc"},
            {"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010dd","tags":{"deep":{"a":[1]}}},
            {"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010de"}]"#,
            TimeBounds::ALL,
        );
        assert_eq!((spans, reason), (4, Refusal::Malformed));
        assert!(
            message.starts_with("2 of 4 span(s) invalid, none of the batch stored;"),
            "{message}"
        );
        assert!(message.contains("zipkin span [1]: traceId"), "{message}");
        assert!(
            message.contains("zipkin span [2]: invalid JSON at tags.deep"),
            "{message}"
        );
        // Not a list: refused as a request, its spans unknown.
        let (spans, reason, message) = refused(br#"{"not":"a list"}"#, TimeBounds::ALL);
        assert_eq!((spans, reason), (0, Refusal::Malformed));
        assert!(message.contains("invalid JSON"), "{message}");
        // An empty list is an empty batch, as Zipkin takes it; so is an
        // empty body.
        assert_eq!(decode(b"[]", RECEIVED, TimeBounds::ALL).unwrap(), []);
        assert_eq!(decode(b"", RECEIVED, TimeBounds::ALL).unwrap(), []);
    }

    #[test]
    fn zero_ids_and_times_the_store_does_not_keep_refuse_the_batch() {
        let bounds = TimeBounds {
            oldest_start: 1_000_000_000_000_000,
            newest: 2_000_000_000_000_000,
        };
        let good =
            r#"{"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010db","timestamp":1500000000000}"#;
        assert_eq!(
            span_count(&decode(format!("[{good}]").as_bytes(), RECEIVED, bounds).unwrap()),
            1
        );
        // What is kept, at the bounds' edges or dated on receipt, is what
        // validation keeps with the same bounds: the receiver writes the
        // batch whole.
        let mut edges = decode(
            br#"[{"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010dc","timestamp":1000000000000},
            {"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010dd","timestamp":1999999999999,"duration":1},
            {"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010de"}]"#,
            RECEIVED,
            bounds,
        )
        .unwrap();
        assert_eq!(
            crate::ingest::validate::retain_valid(&mut edges, bounds).count,
            0
        );
        assert_eq!(span_count(&edges), 3);
        for (bad, reason, why) in [
            (
                r#"{"traceId":"0","id":"4d1e00c0db9010dc","timestamp":1500000000000}"#,
                Refusal::Invalid,
                "zipkin span [1]: traceId is all zero",
            ),
            (
                r#"{"traceId":"86154a4ba6e91385","id":"0000","timestamp":1500000000000}"#,
                Refusal::Invalid,
                "zipkin span [1]: id is all zero",
            ),
            (
                r#"{"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010dc","timestamp":999999999999}"#,
                Refusal::OutOfRange,
                "zipkin span [1]: timestamp 999999999999 is older than the retention window",
            ),
            (
                r#"{"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010dc","timestamp":2000000000001}"#,
                Refusal::OutOfRange,
                "zipkin span [1]: timestamp 2000000000001 is ahead",
            ),
            (
                r#"{"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010dc","timestamp":1999999999999,"duration":5}"#,
                Refusal::OutOfRange,
                "zipkin span [1]: duration 5 ends the span ahead",
            ),
        ] {
            let (spans, refusal, message) = refused(format!("[{good},{bad}]").as_bytes(), bounds);
            assert_eq!((spans, refusal), (2, reason), "{bad}");
            assert!(message.contains(why), "{why}: {message}");
        }
    }

    #[test]
    fn short_ids_are_zero_padded_as_zipkin_does_long_or_non_hex_ones_refused() {
        let batch = decode(
            br#"[{"traceId":"6154a4ba6e91385","id":"d1e00c0db9010db","parentId":"5b4"},
            {"traceId":"1","id":"2"}]"#,
            RECEIVED,
            TimeBounds::ALL,
        )
        .unwrap();
        let spans = &batch[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_eq!(
            hex(&spans[0].trace_id),
            format!("{:0>32}", "6154a4ba6e91385")
        );
        assert_eq!(hex(&spans[0].span_id), "0d1e00c0db9010db");
        assert_eq!(hex(&spans[0].parent_span_id), "00000000000005b4");
        assert_eq!(hex(&spans[1].trace_id), format!("{:0>32}", "1"));
        assert_eq!(hex(&spans[1].span_id), "0000000000000002");
        let (spans, reason, message) = refused(
            br#"[{"traceId":"86154a4ba6e91385086154a4ba6e913850","id":"4d1e00c0db9010dc"},
            {"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010dc0"},
            {"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010dc","parentId":"xy"},
            {"traceId":"","id":"4d1e00c0db9010dc"}]"#,
            TimeBounds::ALL,
        );
        assert_eq!((spans, reason), (4, Refusal::Malformed));
        assert!(message.starts_with("4 of 4 span(s)"), "{message}");
        assert!(message.contains("zipkin span [0]: traceId"), "{message}");
        assert!(message.contains("zipkin span [1]: id"), "{message}");
        assert!(message.contains("zipkin span [2]: parentId"), "{message}");
    }

    #[test]
    fn a_span_nested_past_the_json_depth_limit_refuses_its_batch_without_recursing() {
        let depth = 100_000;
        let mut body = String::from(r#"[{"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010db"},"#);
        body.push_str(r#"{"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010dc","tags":"#);
        body.push_str(&"[".repeat(depth));
        body.push_str(&"]".repeat(depth));
        body.push_str("}]");
        let (spans, reason, message) = refused(body.as_bytes(), TimeBounds::ALL);
        assert_eq!((spans, reason), (2, Refusal::Malformed));
        assert!(message.contains("zipkin span [1]: "), "{message}");
        // Unknown fields are skipped at any depth, as before.
        let mut body =
            String::from(r#"[{"traceId":"86154a4ba6e91385","id":"4d1e00c0db9010db","x":"#);
        body.push_str(&"{\"a\":".repeat(depth));
        body.push('1');
        body.push_str(&"}".repeat(depth));
        body.push_str("}]");
        let batch = decode(body.as_bytes(), RECEIVED, TimeBounds::ALL).unwrap();
        assert_eq!(span_count(&batch), 1);
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
