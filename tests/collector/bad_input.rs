//! Malformed and oversize payloads get the right status and a message that
//! names the problem, and nothing of them is stored; a span that cannot be
//! decoded (an attribute nested past the decoders' depth limits) costs that
//! span only.

use std::io::Write;

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tracemesh_collector::ids::TraceId;
use tracemesh_collector::store::SpanQuery;

use crate::harness::{
    Collector, batch, count, http_request, now_nanos, random_trace_id, runtime, wait_for_trace,
};

/// Sends raw bytes as a gRPC message (so a malformed one can be sent).
#[derive(Clone, Default)]
struct RawCodec;
struct Raw;

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

fn grpc_export_raw(url: String, body: Bytes) -> Result<Bytes, tonic::Status> {
    runtime().block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        );
        grpc.unary(tonic::Request::new(body), path, RawCodec)
            .await
            .map(|r| r.into_inner())
    })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn malformed_and_oversize_payloads_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(
        dir.path(),
        &["--commit-interval", "200ms", "--max-request-size", "64KiB"],
    );
    let protobuf = [("content-type", "application/x-protobuf")];
    let json = [("content-type", "application/json")];

    // A valid request cut short is malformed protobuf.
    let valid = batch("bad-input", random_trace_id(), 20, now_nanos()).encode_to_vec();
    let truncated = &valid[..valid.len() - 7];
    let r = http_request(
        collector.otlp_http,
        "POST",
        "/v1/traces",
        &protobuf,
        truncated,
    );
    assert_eq!(r.status, 400);
    let status = tracemesh_collector::receiver::otlp_http::RpcStatus::decode(&r.body[..])
        .expect("google.rpc.Status body");
    assert_eq!(status.code, tonic::Code::InvalidArgument as i32);
    assert!(
        status.message.contains("invalid protobuf"),
        "{}",
        status.message
    );

    // A span that cannot be read costs that span only: partial success.
    let r = http_request(
        collector.otlp_http,
        "POST",
        "/v1/traces",
        &json,
        br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"not-hex"}]}]}]}"#,
    );
    assert_eq!(r.status, 200);
    let reply: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(reply["partialSuccess"]["rejectedSpans"], "1", "{reply}");
    let message = reply["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("resourceSpans[0].scopeSpans[0].spans[0].traceId"),
        "{message}"
    );

    let r = http_request(
        collector.otlp_http,
        "POST",
        "/v1/traces",
        &json,
        b"{\"resourceSpans\": [",
    );
    assert_eq!(r.status, 400);

    let mut gz_headers = protobuf.to_vec();
    gz_headers.push(("content-encoding", "gzip"));
    let r = http_request(
        collector.otlp_http,
        "POST",
        "/v1/traces",
        &gz_headers,
        b"definitely not gzip",
    );
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("gzip"));

    let r = http_request(
        collector.otlp_http,
        "POST",
        "/v1/traces",
        &[("content-type", "text/plain")],
        b"hello",
    );
    assert_eq!(r.status, 415);

    // Oversize: on the wire, and only after decompression (a gzip bomb).
    let big = batch("bad-input", random_trace_id(), 2000, now_nanos()).encode_to_vec();
    assert!(big.len() > 64 * 1024);
    let r = http_request(collector.otlp_http, "POST", "/v1/traces", &protobuf, &big);
    assert_eq!(r.status, 413);
    let compressed = gzip(&big);
    assert!(compressed.len() < 64 * 1024);
    let r = http_request(
        collector.otlp_http,
        "POST",
        "/v1/traces",
        &gz_headers,
        &compressed,
    );
    assert_eq!(r.status, 413);

    let r = http_request(
        collector.zipkin,
        "POST",
        "/api/v2/spans",
        &json,
        br#"[{"traceId":"zz","id":"352bff9a74ca9ad2"}]"#,
    );
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("traceId"));

    let error =
        grpc_export_raw(collector.grpc_url(), Bytes::copy_from_slice(truncated)).unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error:?}");
    assert!(
        error.message().contains("invalid protobuf"),
        "{}",
        error.message()
    );

    // Invalid spans in an otherwise good batch: partial success, the rest stored.
    let marker = random_trace_id();
    let mut mixed = batch("bad-input", marker, 5, now_nanos());
    mixed.resource_spans[0].scope_spans[0].spans[1].trace_id = vec![1, 2, 3];
    mixed.resource_spans[0].scope_spans[0].spans[3].span_id = vec![0; 8];
    let reply = grpc_export_raw(collector.grpc_url(), mixed.encode_to_vec().into()).unwrap();
    let reply = ExportTraceServiceResponse::decode(reply).unwrap();
    let partial = reply.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 2);
    for why in ["trace_id must be 16 bytes, got 3", "span_id is all zero"] {
        assert!(
            partial.error_message.contains(why),
            "{why}: {}",
            partial.error_message
        );
    }

    let r = http_request(collector.otlp_http, "POST", "/v1/traces", &json, br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"00000000000000000000000000000001","spanId":"00"}]}]}]}"#);
    assert_eq!(r.status, 200);
    let reply: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        reply["partialSuccess"]["rejectedSpans"],
        serde_json::json!("1"),
        "{reply}"
    );

    wait_for_trace(&collector.data_dir, marker, 3);
    let everything = count(&collector.data_dir, &SpanQuery::default());
    assert_eq!(
        everything, 3,
        "only the marker batch's valid spans are stored"
    );
    let metrics = collector.metrics();
    assert!(
        metrics.contains(
            r#"tracemesh_collector_spans_refused_total{reason="malformed",receiver="otlp_http"} 4"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"tracemesh_collector_spans_refused_total{reason="too_large",receiver="otlp_http"} 2"#
        ),
        "{metrics}"
    );
    collector.stop();
}

/// One protobuf field: key, length, `content`.
fn field(tag: u32, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 12);
    encode_key(tag, WireType::LengthDelimited, &mut out);
    encode_varint(content.len() as u64, &mut out);
    out.extend_from_slice(content);
    out
}

/// An `AnyValue` of `levels` key-value lists nested in one another (each
/// level AnyValue → KeyValueList → KeyValue → AnyValue), encoded from the
/// inside out without recursing: as a prost message, 100,000 levels would
/// overflow the test's own stack.
fn nested_kvlists(levels: usize) -> Vec<u8> {
    let field_len = |tag, len: usize| key_len(tag) + encoded_len_varint(len as u64) + len;
    let leaf = field(1, b"leaf");
    let mut lengths = Vec::with_capacity(levels);
    let mut len = leaf.len();
    for _ in 0..levels {
        let key_value = field_len(1, 1) + field_len(2, len);
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
        out.extend(field(1, b"k"));
        encode_key(2, WireType::LengthDelimited, &mut out);
        encode_varint(inner as u64, &mut out);
    }
    out.extend(leaf);
    out
}

/// The same value in OTLP/JSON.
fn nested_kvlists_json(levels: usize) -> String {
    let mut out = String::with_capacity(levels * 50);
    for _ in 0..levels {
        out.push_str(r#"{"kvlistValue":{"values":[{"key":"k","value":"#);
    }
    out.push_str(r#"{"stringValue":"leaf"}"#);
    for _ in 0..levels {
        out.push_str("}]}}");
    }
    out
}

/// Spans nested too deep in each batch: span 1 (40 levels) and span 3
/// (100,000 levels) of 5.
const DEEP: [(usize, usize); 2] = [(1, 40), (3, 100_000)];

/// A batch of 5 spans of `trace`, spans 1 and 3 with an attribute nested
/// too deep ([`DEEP`]), encoded as protobuf; and the ids of the others.
fn deep_batch_protobuf(trace: TraceId) -> (Vec<u8>, Vec<String>) {
    let request = batch("deep-nest", trace, 5, now_nanos());
    let resource_spans = &request.resource_spans[0];
    let mut spans = Vec::new();
    let mut kept = Vec::new();
    for (i, span) in resource_spans.scope_spans[0].spans.iter().enumerate() {
        let mut encoded = span.encode_to_vec();
        match DEEP.iter().find(|(at, _)| *at == i) {
            // A field appended to a message is read as one more of it.
            Some((_, levels)) => {
                let mut attribute = field(1, b"deep");
                attribute.extend(field(2, &nested_kvlists(*levels)));
                encoded.extend(field(9, &attribute));
            }
            None => kept.push(hex(&span.span_id)),
        }
        spans.extend(field(2, &encoded));
    }
    let resource = resource_spans.resource.as_ref().unwrap();
    let mut body = field(1, &resource.encode_to_vec());
    body.extend(field(2, &spans));
    (field(1, &body), kept)
}

/// The same batch in OTLP/JSON.
fn deep_batch_json(trace: TraceId) -> (Vec<u8>, Vec<String>) {
    let mut request = batch("deep-nest", trace, 5, now_nanos());
    let mut kept = Vec::new();
    for (i, span) in request.resource_spans[0].scope_spans[0]
        .spans
        .iter_mut()
        .enumerate()
    {
        match DEEP.iter().find(|(at, _)| *at == i) {
            Some((_, levels)) => span.attributes.push(KeyValue {
                key: "deep".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(format!("nest-{levels}"))),
                }),
                ..Default::default()
            }),
            None => kept.push(hex(&span.span_id)),
        }
    }
    let mut body = serde_json::to_string(&request).unwrap();
    for (_, levels) in DEEP {
        let placeholder = format!(r#"{{"stringValue":"nest-{levels}"}}"#);
        assert!(body.contains(&placeholder), "{body}");
        body = body.replace(&placeholder, &nested_kvlists_json(levels));
    }
    (body.into_bytes(), kept)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The span ids of `trace` as the Jaeger API answers them, sorted.
fn jaeger_span_ids(collector: &Collector, trace: TraceId) -> Vec<String> {
    let r = http_request(
        collector.http,
        "GET",
        &format!("/api/traces/{trace}"),
        &[],
        &[],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let mut ids: Vec<String> = body["data"][0]["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spanID"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn assert_partial(rejected: i64, message: &str) {
    assert_eq!(rejected, 2, "{message}");
    assert!(
        message.starts_with("2 span(s) could not be decoded; resource 0 scope 0 span 1: ")
            || message.starts_with(
                "2 span(s) could not be decoded; invalid JSON at resourceSpans[0].scopeSpans[0].spans[1]"
            ),
        "{message}"
    );
    assert!(message.contains("recursion limit"), "{message}");
}

#[test]
fn a_span_nested_too_deep_costs_that_span_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let mut sent = Vec::new();

    // OTLP/gRPC.
    let trace = random_trace_id();
    let (body, kept) = deep_batch_protobuf(trace);
    assert!(
        ExportTraceServiceRequest::decode(&body[..]).is_err(),
        "the batch does not decode whole"
    );
    let reply = grpc_export_raw(collector.grpc_url(), body.into()).unwrap();
    let partial = ExportTraceServiceResponse::decode(reply)
        .unwrap()
        .partial_success
        .expect("partial success");
    assert_partial(partial.rejected_spans, &partial.error_message);
    sent.push((trace, kept));

    // OTLP/HTTP, protobuf.
    let trace = random_trace_id();
    let (body, kept) = deep_batch_protobuf(trace);
    let r = http_request(
        collector.otlp_http,
        "POST",
        "/v1/traces",
        &[("content-type", "application/x-protobuf")],
        &body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let partial = ExportTraceServiceResponse::decode(&r.body[..])
        .unwrap()
        .partial_success
        .expect("partial success");
    assert_partial(partial.rejected_spans, &partial.error_message);
    sent.push((trace, kept));

    // OTLP/HTTP, JSON.
    let trace = random_trace_id();
    let (body, kept) = deep_batch_json(trace);
    let r = http_request(
        collector.otlp_http,
        "POST",
        "/v1/traces",
        &[("content-type", "application/json")],
        &body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let reply: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let partial = &reply["partialSuccess"];
    assert_eq!(partial["rejectedSpans"], "2", "{reply}");
    assert_partial(2, partial["errorMessage"].as_str().unwrap());
    sent.push((trace, kept));

    assert!(collector.is_running(), "{}", collector.log());
    for (trace, mut kept) in sent {
        wait_for_trace(&collector.data_dir, trace, kept.len());
        kept.sort();
        assert_eq!(jaeger_span_ids(&collector, trace), kept, "trace {trace}");
    }
    let metrics = collector.metrics();
    for (receiver, spans) in [("otlp_grpc", 2), ("otlp_http", 4)] {
        let sample = format!(
            r#"tracemesh_collector_spans_refused_total{{reason="malformed",receiver="{receiver}"}} {spans}"#
        );
        assert!(metrics.contains(&sample), "{sample} in {metrics}");
    }
    let log = collector.stop();
    assert_eq!(
        log.matches("spans could not be decoded").count(),
        1,
        "one WARN line per 10 s: {log}"
    );
}
