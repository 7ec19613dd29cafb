//! OTLP/HTTP JSON bodies (the OTLP/JSON mapping), then ingest.

#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tracemesh_collector::ingest::decode::{self, Encoding};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode::decode::<ExportTraceServiceRequest>(Encoding::Json, data, "traces")
    {
        tracemesh_fuzz::ingest(request, None);
    }
});
