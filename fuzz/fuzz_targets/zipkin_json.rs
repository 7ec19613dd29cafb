//! Zipkin v2 JSON span lists, converted to OTLP, then ingest.

#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tracemesh_collector::ingest::validate::TimeBounds;
use tracemesh_collector::ingest::zipkin;

fuzz_target!(|data: &[u8]| {
    // Every time is let through, as in `tracemesh_fuzz::ingest`; a span
    // without one is dated 2023-11-14.
    let received = 1_700_000_000_000_000_000;
    if let Ok(resource_spans) = zipkin::decode(data, received, TimeBounds::ALL) {
        tracemesh_fuzz::ingest(ExportTraceServiceRequest { resource_spans }, None);
    }
});
