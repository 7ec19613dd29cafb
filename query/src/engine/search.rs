//! Trace search with an order (newest, longest, shortest, most spans, most
//! errors), trace summaries for result lists, and the adjustments every
//! trace read gets ([`adjust`]): exact copies of a span dropped, and
//! Zipkin's shared span ids split into a client span and a server child,
//! as Jaeger does.
//!
//! Newest first is the store's own order. Every other order first finds
//! every trace with a matching span in the range (at most
//! [`MAX_CANDIDATES`], newest first), then measures those traces with one
//! column-wise scan of the range (start, end, span count, errors), sorts
//! them, and reads only the `limit` it keeps: "the slowest traces" needs no
//! guessed minimum duration.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use tracemesh_collector::attributes;
use tracemesh_collector::ids::TraceId;
use tracemesh_collector::outcome::{Outcome, STATUS_ERROR};
use tracemesh_collector::store::{SpanQuery, StoredSpan, Trace};

use super::Engine;
use crate::error::QueryError;

/// Traces an ordered search considers, at most (the newest that match).
pub const MAX_CANDIDATES: usize = 100_000;

/// How far around the range an ordered search scans for the other spans
/// of the traces it found (a root that started earlier, children later).
const SCAN_MARGIN_NS: u64 = 60 * 1_000_000_000;

/// OTLP `SPAN_KIND_SERVER` and `SPAN_KIND_CLIENT`.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// The order of a trace search's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Latest matching span first (the default).
    #[default]
    Newest,
    /// Longest trace first (last span end minus first span start).
    Longest,
    /// Shortest trace first.
    Shortest,
    /// Most spans first.
    MostSpans,
    /// Most failed spans first (5xx or local failures).
    MostErrors,
}

impl Sort {
    /// Every order, by name.
    pub const ALL: [(&'static str, Sort); 5] = [
        ("newest", Sort::Newest),
        ("longest", Sort::Longest),
        ("shortest", Sort::Shortest),
        ("most_spans", Sort::MostSpans),
        ("most_errors", Sort::MostErrors),
    ];

    /// The order named `name` (`newest`, `longest`, `shortest`,
    /// `most_spans`, `most_errors`; `-` may stand for `_`).
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.replace('-', "_");
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, sort)| *sort)
    }
}

/// A trace search: which spans must match, how many traces to return, in
/// which order.
#[derive(Debug, Clone, Default)]
pub struct TraceSearch {
    /// At least one span of each returned trace matches this.
    pub spans: SpanQuery,
    /// Most traces returned.
    pub limit: usize,
    /// Their order.
    pub sort: Sort,
}

/// A trace's measures, for ordering.
#[derive(Debug, Clone, Copy, Default)]
struct Measure {
    start: u64,
    end: u64,
    spans: u64,
    errors: u64,
    latest_match: u64,
}

/// One service's part of a trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServiceCounts {
    /// Its spans.
    pub spans: usize,
    /// Its spans with status ERROR (what Jaeger counts).
    pub status_errors: usize,
    /// Its failed spans ([`Outcome::Error`]).
    pub errors: usize,
}

/// A trace in a result list.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The trace.
    pub trace_id: TraceId,
    /// The root span's service and name: the span without a parent that
    /// started first; `None` when every span has a parent.
    pub root: Option<(String, String)>,
    /// The earliest span start, ns since the epoch.
    pub start: u64,
    /// The latest span end, ns since the epoch.
    pub end: u64,
    /// Spans.
    pub spans: usize,
    /// Spans with status ERROR.
    pub status_errors: usize,
    /// Failed spans: 5xx or local failures ([`Outcome::Error`]).
    pub errors: usize,
    /// Spans answered with a 4xx.
    pub client_errors: usize,
    /// Spans whose parent is not in the trace.
    pub orphans: usize,
    /// Per service, by name.
    pub services: BTreeMap<String, ServiceCounts>,
}

/// The outcome of a stored span.
pub fn span_outcome(span: &opentelemetry_proto::tonic::trace::v1::Span) -> Outcome {
    let http = attributes::get_int(&span.attributes, "http.response.status_code")
        .and_then(|c| u16::try_from(c).ok());
    Outcome::of(span.status.as_ref().map_or(0, |s| s.code), http)
}

/// Summarizes a trace for lists.
pub fn summarize(trace: &Trace) -> Summary {
    let ids: HashSet<&[u8]> = trace
        .spans
        .iter()
        .map(|s| s.span.span_id.as_slice())
        .collect();
    let mut summary = Summary {
        trace_id: trace.trace_id,
        root: None,
        start: u64::MAX,
        end: 0,
        spans: trace.spans.len(),
        status_errors: 0,
        errors: 0,
        client_errors: 0,
        orphans: 0,
        services: BTreeMap::new(),
    };
    let mut root_start = u64::MAX;
    for stored in &trace.spans {
        let span = &stored.span;
        let service = attributes::service_name(stored.resource.as_ref());
        let counts = summary.services.entry(service.to_owned()).or_default();
        counts.spans += 1;
        if span.status.as_ref().is_some_and(|s| s.code == STATUS_ERROR) {
            counts.status_errors += 1;
            summary.status_errors += 1;
        }
        match span_outcome(span) {
            Outcome::Error => {
                counts.errors += 1;
                summary.errors += 1;
            }
            Outcome::ClientError => summary.client_errors += 1,
            Outcome::Success => {}
        }
        summary.start = summary.start.min(span.start_time_unix_nano);
        summary.end = summary.end.max(span.end_time_unix_nano);
        if span.parent_span_id.is_empty() {
            if span.start_time_unix_nano < root_start {
                root_start = span.start_time_unix_nano;
                summary.root = Some((service.to_owned(), span.name.clone()));
            }
        } else if !ids.contains(span.parent_span_id.as_slice()) {
            summary.orphans += 1;
        }
    }
    if summary.start == u64::MAX {
        summary.start = 0;
    }
    summary.end = summary.end.max(summary.start);
    summary
}

/// What every trace the engine returns goes through: exact copies of a
/// span dropped ([`drop_copies`]), then Zipkin's shared span ids split
/// ([`split_shared_span_ids`]). In that order: a split gives a server span
/// and its copy distinct ids, after which they would no longer be copies.
pub fn adjust(trace: &mut Trace) {
    drop_copies(trace);
    split_shared_span_ids(trace);
    drop_self_parents(trace);
}

/// A span that names itself as its parent has none, as Zipkin's span
/// builder undoes the circle: a Zipkin shared SERVER half is stored with
/// its own id as parent, which [`split_shared_span_ids`] turns into its
/// CLIENT half's; one whose client half never came would otherwise be its
/// own child.
fn drop_self_parents(trace: &mut Trace) {
    for stored in &mut trace.spans {
        if stored.span.parent_span_id == stored.span.span_id {
            stored.span.parent_span_id.clear();
        }
    }
}

/// Drops exact copies of a span from a trace, keeping the first, as
/// Jaeger's query service does (its `DeduplicateSpans` adjuster): a client
/// that resent a batch after a timeout had its spans stored twice. Copies
/// encode alike: resource, scope, their schema URLs and every field of the
/// span. A span with the same ids but other content stays.
///
/// `trace.spans` must be in the store's order (start, then span id), which
/// makes copies neighbours: only neighbours with the same start and span
/// id are encoded and compared, so a trace without any costs one pass and
/// no allocation. Returns how many spans were dropped.
pub fn drop_copies(trace: &mut Trace) -> usize {
    let spans = &trace.spans;
    let same_place = |a: &StoredSpan, b: &StoredSpan| {
        a.span.start_time_unix_nano == b.span.start_time_unix_nano
            && a.span.span_id == b.span.span_id
    };
    let mut copies: Vec<usize> = Vec::new();
    // Reused from one run of neighbours to the next.
    let mut encodings: Vec<Vec<u8>> = Vec::new();
    let mut order: Vec<usize> = Vec::new();
    let mut first = 0;
    while first < spans.len() {
        let mut end = first + 1;
        while end < spans.len() && same_place(&spans[first], &spans[end]) {
            end += 1;
        }
        let run = end - first;
        if run > 1 {
            if encodings.len() < run {
                encodings.resize_with(run, Vec::new);
            }
            for (encoding, stored) in encodings.iter_mut().zip(&spans[first..end]) {
                encoding.clear();
                stored.as_span_ref().encode_into(encoding);
            }
            order.clear();
            order.extend(0..run);
            // Stable: of equal encodings the earliest comes first and stays.
            order.sort_by(|&a, &b| encodings[a].cmp(&encodings[b]));
            for pair in order.windows(2) {
                if encodings[pair[0]] == encodings[pair[1]] {
                    copies.push(first + pair[1]);
                }
            }
        }
        first = end;
    }
    if copies.is_empty() {
        return 0;
    }
    copies.sort_unstable();
    let mut next = copies.iter().peekable();
    let mut index = 0;
    trace.spans.retain(|_| {
        let copy = next.next_if_eq(&&index).is_some();
        index += 1;
        !copy
    });
    copies.len()
}

/// Splits Zipkin's shared spans as Jaeger's span id uniquifier does: a
/// SERVER span with the id of a CLIENT span gets a new id (one past the
/// largest in the trace) and the client as its parent, and the spans
/// that named the shared id as parent become children of the server span.
pub fn split_shared_span_ids(trace: &mut Trace) {
    let id = |bytes: &[u8]| -> u64 { <[u8; 8]>::try_from(bytes).map_or(0, u64::from_be_bytes) };
    let clients: HashSet<u64> = trace
        .spans
        .iter()
        .filter(|s| s.span.kind == CLIENT)
        .map(|s| id(&s.span.span_id))
        .collect();
    let shared = |s: &tracemesh_collector::store::StoredSpan| {
        s.span.kind == SERVER && clients.contains(&id(&s.span.span_id))
    };
    if !trace.spans.iter().any(shared) {
        return;
    }
    let mut used: HashSet<u64> = trace.spans.iter().map(|s| id(&s.span.span_id)).collect();
    let mut next = used.iter().copied().max().unwrap_or(0);
    let mut renamed: HashMap<u64, u64> = HashMap::new();
    for stored in &mut trace.spans {
        if !shared(stored) {
            continue;
        }
        let old = id(&stored.span.span_id);
        loop {
            next = next.wrapping_add(1);
            if next != 0 && used.insert(next) {
                break;
            }
        }
        renamed.insert(old, next);
        stored.span.parent_span_id = old.to_be_bytes().to_vec();
        stored.span.span_id = next.to_be_bytes().to_vec();
    }
    for stored in &mut trace.spans {
        let span = &mut stored.span;
        if let Some(new) = renamed.get(&id(&span.parent_span_id))
            && id(&span.span_id) != *new
        {
            span.parent_span_id = new.to_be_bytes().to_vec();
        }
    }
}

impl Engine {
    /// Whole traces with a span matching the search, in its order.
    pub fn search(&self, search: &TraceSearch) -> Result<Vec<Trace>, QueryError> {
        let ids = self.find(search)?;
        // Within one answer's span budget; a trace can vanish between the
        // search and the read (retention).
        let mut traces = self.reader().traces(&ids)?;
        for trace in &mut traces {
            adjust(trace);
        }
        Ok(traces)
    }

    /// The ids of the traces a search returns, in its order.
    fn find(&self, search: &TraceSearch) -> Result<Vec<TraceId>, QueryError> {
        if search.sort == Sort::Newest {
            return Ok(self
                .reader()
                .find_traces(&search.spans, search.limit)?
                .into_iter()
                .map(|hit| hit.trace_id)
                .collect());
        }
        let hits = self.reader().find_traces(&search.spans, MAX_CANDIDATES)?;
        let mut measures: HashMap<TraceId, Measure> = hits
            .iter()
            .map(|hit| {
                (
                    hit.trace_id,
                    Measure {
                        start: u64::MAX,
                        latest_match: hit.latest_start,
                        ..Measure::default()
                    },
                )
            })
            .collect();
        let scan = SpanQuery {
            start_from: Some(
                search
                    .spans
                    .start_from
                    .unwrap_or(0)
                    .saturating_sub(SCAN_MARGIN_NS),
            ),
            start_to: Some(
                search
                    .spans
                    .start_to
                    .unwrap_or(u64::MAX)
                    .saturating_add(SCAN_MARGIN_NS),
            ),
            ..SpanQuery::default()
        };
        self.reader().scan(&scan, |span| {
            if let Some(m) = measures.get_mut(&span.trace_id) {
                m.start = m.start.min(span.start);
                m.end = m.end.max(span.start.saturating_add(span.duration));
                m.spans += 1;
                if Outcome::of(span.status_code, span.http_status_code) == Outcome::Error {
                    m.errors += 1;
                }
            }
        })?;
        let mut ranked: Vec<(TraceId, Measure)> = measures.into_iter().collect();
        let length = |m: &Measure| m.end.saturating_sub(m.start);
        ranked.sort_by(|(a_id, a), (b_id, b)| {
            let primary = match search.sort {
                Sort::Longest => length(b).cmp(&length(a)),
                Sort::Shortest => length(a).cmp(&length(b)),
                Sort::MostSpans => b.spans.cmp(&a.spans),
                Sort::MostErrors => b.errors.cmp(&a.errors),
                Sort::Newest => std::cmp::Ordering::Equal,
            };
            primary
                .then(b.latest_match.cmp(&a.latest_match))
                .then(a_id.cmp(b_id))
        });
        ranked.truncate(search.limit);
        Ok(ranked.into_iter().map(|(id, _)| id).collect())
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::Span;

    use super::*;

    fn span(id: u64, parent: u64, kind: i32) -> StoredSpan {
        StoredSpan {
            resource: None,
            resource_schema_url: String::new(),
            scope: None,
            scope_schema_url: String::new(),
            span: Span {
                trace_id: vec![1; 16],
                span_id: id.to_be_bytes().to_vec(),
                parent_span_id: if parent == 0 {
                    Vec::new()
                } else {
                    parent.to_be_bytes().to_vec()
                },
                kind,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_zipkin_shared_span_becomes_client_and_server_child() {
        // client 2 and server 2 share an id; 3 is the server's own call.
        let mut trace = Trace {
            trace_id: TraceId([1; 16]),
            spans: vec![
                span(1, 0, SERVER),
                span(2, 1, CLIENT),
                span(2, 1, SERVER),
                span(3, 2, CLIENT),
            ],
            omitted_spans: 0,
        };
        split_shared_span_ids(&mut trace);
        let ids: Vec<(u64, u64)> = trace
            .spans
            .iter()
            .map(|s| {
                let id = |b: &[u8]| <[u8; 8]>::try_from(b).map_or(0, u64::from_be_bytes);
                (id(&s.span.span_id), id(&s.span.parent_span_id))
            })
            .collect();
        assert_eq!(ids, [(1, 0), (2, 1), (4, 2), (3, 4)]);
    }

    /// As the Zipkin receiver stores a shared SERVER half: its own id as
    /// its parent. Read, it is the client's child; without its client
    /// half, it has no parent rather than itself.
    #[test]
    fn a_stored_shared_server_half_is_the_clients_child_or_a_root() {
        let mut both = trace(vec![
            span(1, 0, SERVER),
            span(2, 1, CLIENT),
            span(2, 2, SERVER),
            span(3, 2, CLIENT),
        ]);
        adjust(&mut both);
        assert_eq!(ids(&both), [(1, 0), (2, 1), (4, 2), (3, 4)]);
        let mut alone = trace(vec![span(2, 2, SERVER), span(3, 2, CLIENT)]);
        adjust(&mut alone);
        assert_eq!(ids(&alone), [(2, 0), (3, 2)]);
    }

    fn trace(spans: Vec<StoredSpan>) -> Trace {
        Trace {
            trace_id: TraceId([1; 16]),
            spans,
            omitted_spans: 0,
        }
    }

    fn ids(trace: &Trace) -> Vec<(u64, u64)> {
        let id = |b: &[u8]| <[u8; 8]>::try_from(b).map_or(0, u64::from_be_bytes);
        trace
            .spans
            .iter()
            .map(|s| (id(&s.span.span_id), id(&s.span.parent_span_id)))
            .collect()
    }

    #[test]
    fn exact_copies_go_and_a_span_with_the_same_ids_but_other_content_stays() {
        let at = |mut s: StoredSpan, start: u64| {
            s.span.start_time_unix_nano = start;
            s
        };
        let mut named = at(span(3, 1, CLIENT), 30);
        named.span.name = "renamed".into();
        let mut other_service = at(span(3, 1, CLIENT), 30);
        other_service.resource = Some(Resource {
            attributes: vec![tracemesh_collector::attributes::string(
                "service.name",
                "other",
            )],
            ..Default::default()
        });
        // A NaN attribute: the copies are unequal as Rust compares floats,
        // yet encode alike.
        let mut nan = at(span(4, 1, CLIENT), 40);
        nan.span.attributes = vec![KeyValue {
            key: "ratio".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::DoubleValue(f64::NAN)),
            }),
            ..Default::default()
        }];
        assert_ne!(nan, nan.clone());
        let mut sent = trace(vec![
            at(span(1, 0, SERVER), 10),
            at(span(1, 0, SERVER), 10),
            at(span(2, 1, CLIENT), 20),
            at(span(2, 1, CLIENT), 20),
            at(span(2, 1, CLIENT), 20),
            // Same ids and start, other content: none is a copy of 3.
            at(span(3, 1, CLIENT), 30),
            named.clone(),
            other_service.clone(),
            at(span(3, 1, CLIENT), 30),
            nan.clone(),
            nan.clone(),
            // Same ids, a later start: no copy.
            at(span(2, 1, CLIENT), 50),
        ]);
        assert_eq!(drop_copies(&mut sent), 5);
        // Compared by encoding, as NaN is unequal to itself.
        let encoded = |spans: &[StoredSpan]| -> Vec<Vec<u8>> {
            spans.iter().map(|s| s.as_span_ref().encode()).collect()
        };
        assert_eq!(
            encoded(&sent.spans),
            encoded(&[
                at(span(1, 0, SERVER), 10),
                at(span(2, 1, CLIENT), 20),
                at(span(3, 1, CLIENT), 30),
                named,
                other_service,
                nan,
                at(span(2, 1, CLIENT), 50),
            ])
        );
        let mut unique = trace(vec![span(1, 0, SERVER), span(2, 1, CLIENT)]);
        let before = unique.clone();
        assert_eq!(drop_copies(&mut unique), 0);
        assert_eq!(unique, before);
    }

    #[test]
    fn copies_go_before_a_zipkin_shared_span_is_split() {
        // A Zipkin batch resent: the shared client 2 and server 2 twice.
        let mut resent = trace(vec![
            span(1, 0, SERVER),
            span(1, 0, SERVER),
            span(2, 1, CLIENT),
            span(2, 1, SERVER),
            span(2, 1, CLIENT),
            span(2, 1, SERVER),
            span(3, 2, CLIENT),
        ]);
        adjust(&mut resent);
        assert_eq!(ids(&resent), [(1, 0), (2, 1), (4, 2), (3, 4)]);
        assert_eq!(summarize(&resent).spans, 4);
    }

    #[test]
    fn sorts_parse_by_name() {
        assert_eq!(Sort::parse("most-spans"), Some(Sort::MostSpans));
        assert_eq!(Sort::parse("longest"), Some(Sort::Longest));
        assert_eq!(Sort::parse("slowest"), None);
    }
}
