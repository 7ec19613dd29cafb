//! OTLP/gRPC and OTLP/HTTP protobuf bodies: `ExportTraceServiceRequest`
//! decoding (gzip undone first when the input is gzip), then ingest.

#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tracemesh_collector::ingest::decode;

fuzz_target!(|data: &[u8]| {
    let body = match data.starts_with(&[0x1f, 0x8b]) {
        true => match decode::decompress(Some("gzip"), data.to_vec().into(), 1 << 20) {
            Ok(body) => body,
            Err(_) => return,
        },
        false => data.to_vec().into(),
    };
    if let Ok(request) = ExportTraceServiceRequest::decode(&body[..]) {
        tracemesh_fuzz::ingest(request, Some(&body));
    }
});
