//! Malformed and oversize payloads get the right status and a message that
//! names the problem, and nothing of them is stored.

use std::io::Write;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
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

    let r = http_request(
        collector.otlp_http,
        "POST",
        "/v1/traces",
        &json,
        br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"not-hex"}]}]}]}"#,
    );
    assert_eq!(r.status, 400);
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains("resourceSpans[0].scopeSpans[0].spans[0].traceId"),
        "{body}"
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
    let reply =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(reply)
            .unwrap();
    let partial = reply.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 2);
    assert!(
        partial.error_message.contains("trace_id must be 16 bytes"),
        "{}",
        partial.error_message
    );

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
