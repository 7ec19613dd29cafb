//! Zipkin v2 JSON span lists, converted to OTLP, then ingest.

#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tracemesh_collector::ingest::zipkin;

fuzz_target!(|data: &[u8]| {
    if let Ok((resource_spans, _)) = zipkin::decode(data) {
        tracemesh_fuzz::ingest(ExportTraceServiceRequest { resource_spans }, None);
    }
});
