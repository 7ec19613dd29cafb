//! Exact copies of spans, recognised at ingest. An OTLP exporter whose
//! export timed out sends the same batch again, though the first one may
//! have been received and acknowledged (OTLP's retry rules); a Zipkin
//! reporter does the same. The copy is acknowledged and stored like any
//! span — the WAL and the store keep what was acknowledged — but counting
//! it would count one request twice.
//!
//! So the indexer remembers a fingerprint of every span it indexed
//! recently: a hash of its stored bytes (trace id, span id, resource, scope
//! and every field of the span), with its span id beside it. A span whose
//! fingerprint and span id it remembers is a copy: its document is marked
//! ([`crate::store::schema::names::DUPLICATE`]), which every search and
//! aggregation of the store leaves out; it links no dependency edge; and
//! the span-derived metrics do not count it. A span with the same ids but
//! other content is no copy (a Zipkin span without a timestamp, given its
//! arrival time; a span its client changed before resending it).
//!
//! Memory is bounded: two generations of at most [`GENERATION`] spans
//! (16 bytes each, about 9 MiB in all), so a copy arriving more than
//! [`GENERATION`] spans after its original is not recognised here. The
//! query service drops copies from every trace it reads whatever their
//! age (it compares the spans of the trace); statistics count such a late
//! copy twice.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use tantivy::schema::Field;

use crate::ids::SpanId;
use crate::store::document::for_each_span;
use crate::store::{PartitionId, PreparedDocs};

/// Spans per generation: 7/8 of 2^18, so a generation's table never grows
/// past 2^18 slots.
pub const GENERATION: usize = (1 << 18) / 8 * 7;

/// The fingerprint of a span's stored bytes (its one-span `ResourceSpans`
/// encoding). SipHash with the standard library's fixed keys: the same in
/// every thread of the process, which is all the filter needs.
pub fn fingerprint(stored: &[u8]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(stored);
    hasher.finish()
}

/// A fingerprint is already a hash: the table uses it as is.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Table = HashMap<u64, u64, BuildHasherDefault<Prehashed>>;

/// The spans indexed recently; owned by the indexer thread.
pub struct ResendFilter {
    /// Fingerprint → span id.
    current: Table,
    previous: Table,
    generation: usize,
    /// Per span of the last batch marked, in batch order: whether it is a copy.
    copies: Vec<bool>,
}

impl Default for ResendFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl ResendFilter {
    /// A filter remembering up to two generations of [`GENERATION`] spans.
    pub fn new() -> Self {
        Self::with_generation(GENERATION)
    }

    fn with_generation(generation: usize) -> Self {
        Self {
            current: Table::default(),
            previous: Table::default(),
            generation,
            copies: Vec::new(),
        }
    }

    /// Whether a span with this fingerprint and span id was seen recently;
    /// remembers it either way.
    pub fn seen(&mut self, fingerprint: u64, span_id: u64) -> bool {
        let seen = self
            .current
            .get(&fingerprint)
            .or_else(|| self.previous.get(&fingerprint))
            == Some(&span_id);
        if self.current.len() >= self.generation && !self.current.contains_key(&fingerprint) {
            // The older generation goes; its table is reused.
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        self.current.insert(fingerprint, span_id);
        seen
    }

    /// Looks up every span of a batch (`fingerprints` in batch order, as
    /// [`crate::store::SpanStore::prepare`] made them) and marks the
    /// documents of copies with `field` in the partitions `markable`
    /// admits (see [`crate::store::SpanStore::marks_duplicates`]). Returns
    /// how many copies the batch holds; [`Self::is_copy`] tells which.
    pub fn mark(
        &mut self,
        field: Option<Field>,
        batch: &[ResourceSpans],
        fingerprints: &[u64],
        docs: &mut PreparedDocs,
        partition_length: u64,
        markable: impl Fn(PartitionId) -> bool,
    ) -> u64 {
        let mut copies = std::mem::take(&mut self.copies);
        copies.clear();
        let mut found = 0;
        let mut next: HashMap<PartitionId, usize> = HashMap::new();
        for_each_span(batch, |span| {
            let partition =
                PartitionId::containing(span.span.start_time_unix_nano, partition_length);
            let slot = next.entry(partition).or_insert(0);
            let index = *slot;
            *slot += 1;
            let copy = fingerprints.get(copies.len()).is_some_and(|&fingerprint| {
                let id = SpanId::from_bytes(&span.span.span_id).map_or(0, SpanId::as_u64);
                self.seen(fingerprint, id)
            });
            copies.push(copy);
            if !copy {
                return;
            }
            found += 1;
            if let Some(field) = field
                && markable(partition)
                && let Some(doc) = docs.get_mut(&partition).and_then(|d| d.get_mut(index))
            {
                doc.add_u64(field, 1);
            }
        });
        self.copies = copies;
        found
    }

    /// Whether span `index` (in batch order) of the last batch marked is a copy.
    pub fn is_copy(&self, index: usize) -> bool {
        self.copies.get(index).copied().unwrap_or(false)
    }

    /// Per span of the last batch marked, in batch order: whether it is a copy.
    pub fn copies(&self) -> &[bool] {
        &self.copies
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes;
    use crate::store::{SpanStore, schema};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span};
    use tantivy::schema::Value;

    const DAY: u64 = 86_400;

    fn span(id: u8, start: u64) -> Span {
        Span {
            trace_id: vec![0xd0; 16],
            span_id: vec![0, 0, 0, 0, 0, 0, 0, id],
            name: "op".into(),
            start_time_unix_nano: start,
            end_time_unix_nano: start + 1_000_000,
            ..Default::default()
        }
    }

    fn batch(spans: Vec<Span>) -> Vec<ResourceSpans> {
        vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attributes::string("service.name", "meter")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }]
    }

    fn marked(fields: &schema::SpanFields, docs: &PreparedDocs) -> Vec<bool> {
        docs.values()
            .flatten()
            .map(|doc| {
                doc.get_first(fields.duplicate.unwrap())
                    .and_then(|v| v.as_u64())
                    == Some(1)
            })
            .collect()
    }

    #[test]
    fn a_resent_batch_is_marked_and_a_changed_span_is_not() {
        let fields = schema::SpanFields::of(&schema::build()).unwrap();
        let mut filter = ResendFilter::new();
        let start = 1_700_000_000_000_000_000;
        let first = batch(vec![span(0xb1, start), span(0xb2, start + 5)]);
        // The same batch, and one whose span b2 changed (a later start).
        let changed = batch(vec![span(0xb1, start), span(0xb2, start + 6)]);
        let mut results = Vec::new();
        for (request, markable) in [(&first, true), (&first, true), (&changed, false)] {
            let mut prepared = SpanStore::prepare(&fields, request, None, DAY);
            let found = filter.mark(
                fields.duplicate,
                request,
                &prepared.fingerprints,
                &mut prepared.docs,
                DAY,
                |_| markable,
            );
            results.push((
                found,
                filter.copies().to_vec(),
                marked(&fields, &prepared.docs),
            ));
        }
        assert_eq!(
            results,
            [
                (0, vec![false, false], vec![false, false]),
                (2, vec![true, true], vec![true, true]),
                // A partition that cannot take the mark keeps the document
                // as it was; the span is still a copy for the metrics.
                (1, vec![true, false], vec![false, false]),
            ]
        );
        assert!(filter.is_copy(0) && !filter.is_copy(1) && !filter.is_copy(2));
    }

    #[test]
    fn a_fingerprint_needs_its_span_id_and_memory_is_two_generations() {
        let mut filter = ResendFilter::with_generation(2);
        assert!(!filter.seen(1, 10));
        assert!(!filter.seen(1, 11), "same fingerprint, other span id");
        assert!(filter.seen(1, 11));
        assert!(!filter.seen(2, 20));
        // The generation {1, 2} is full: 3 starts the next one.
        assert!(!filter.seen(3, 30));
        assert!(filter.seen(1, 11), "the previous generation is remembered");
        // {3, 1} is full: 4 starts the next one, and {1, 2} goes.
        assert!(!filter.seen(4, 40));
        assert!(!filter.seen(2, 20), "forgotten after two generations");
        assert!(filter.seen(1, 11), "seen again, remembered again");
        assert!(filter.current.len() <= 2 && filter.previous.len() <= 2);
    }

    #[test]
    fn fingerprints_follow_the_stored_bytes() {
        let a = batch(vec![span(1, 5)]);
        let fields = schema::SpanFields::of(&schema::build()).unwrap();
        let once = SpanStore::prepare(&fields, &a, None, DAY).fingerprints;
        let again = SpanStore::prepare(&fields, &a, None, DAY).fingerprints;
        assert_eq!(once, again);
        let mut b = a.clone();
        b[0].scope_spans[0].spans[0].name = "other".into();
        assert_ne!(
            once,
            SpanStore::prepare(&fields, &b, None, DAY).fingerprints
        );
        let mut c = a.clone();
        c[0].resource = None;
        assert_ne!(
            once,
            SpanStore::prepare(&fields, &c, None, DAY).fingerprints
        );
    }
}
