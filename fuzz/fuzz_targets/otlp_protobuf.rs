//! OTLP/gRPC and OTLP/HTTP protobuf bodies: `ExportTraceServiceRequest`
//! decoding as the receivers do it (gzip undone first when the input is
//! gzip; a span that cannot be decoded left out), then ingest.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tracemesh_collector::ingest::decode::{self, Encoding};

fuzz_target!(|data: &[u8]| {
    let body = match data.starts_with(&[0x1f, 0x8b]) {
        true => match decode::decompress(Some("gzip"), data.to_vec().into(), 1 << 20) {
            Ok(body) => body,
            Err(_) => return,
        },
        false => data.to_vec().into(),
    };
    if let Ok(decoded) = decode::traces(Encoding::Protobuf, &body) {
        tracemesh_fuzz::ingest(decoded.request, decoded.encoded.as_deref());
    }
});
