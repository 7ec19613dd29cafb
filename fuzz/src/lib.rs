//! What the fuzz targets share: the collector's ingest steps that run on
//! bytes from the network, after decoding and before the WAL (validation,
//! span limits, document building with each span's stored bytes cut from
//! the request, marking of spans repeated within the request, dependency-edge
//! linking). A target decodes its format and
//! hands the request here, so every format's fuzzing also reaches the code
//! behind the decoder.

#![forbid(unsafe_code)]

use std::sync::OnceLock;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tracemesh_collector::edges::EdgeLinker;
use tracemesh_collector::ingest::limits::SpanLimits;
use tracemesh_collector::ingest::validate::{self, TimeBounds};
use tracemesh_collector::resends::ResendFilter;
use tracemesh_collector::store::SpanStore;
use tracemesh_collector::store::schema::{self, SpanFields};

/// One day, the default partition length, in seconds.
const PARTITION: u64 = 86_400;

fn fields() -> SpanFields {
    static FIELDS: OnceLock<SpanFields> = OnceLock::new();
    *FIELDS.get_or_init(|| SpanFields::of(&schema::build()).expect("the schema has every field"))
}

/// Runs a decoded trace request through ingest as a receiver would.
/// `raw` is its protobuf encoding when it arrived as protobuf.
pub fn ingest(mut request: ExportTraceServiceRequest, raw: Option<&[u8]>) {
    // Every time is let through, so extreme timestamps reach the document
    // and partition code too.
    let rejected = validate::retain_valid(&mut request.resource_spans, TimeBounds::ALL);
    let limited = SpanLimits::default().apply(&mut request.resource_spans);
    let encoded;
    let raw = match raw {
        Some(raw) if rejected.count == 0 && !limited.any() => raw,
        _ => {
            encoded = request.encode_to_vec();
            &encoded
        }
    };
    let mut prepared =
        SpanStore::prepare(&fields(), &request.resource_spans, Some(raw), PARTITION);
    let mut resends = ResendFilter::new();
    resends.mark(
        fields().duplicate,
        &request.resource_spans,
        &prepared.fingerprints,
        &mut prepared.docs,
        PARTITION,
        |_| true,
    );
    EdgeLinker::new(fields()).annotate(
        &request.resource_spans,
        &mut prepared.docs,
        PARTITION,
        resends.copies(),
    );
}
