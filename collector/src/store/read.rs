//! The store's read API, written for the query service: trace by id, trace
//! search (service, operation, kind, tags, duration, errors, time range),
//! column-wise span scans for latency quantiles, rates and the dependency
//! graph, and the service and operation lists.
//!
//! Reads never block the writer: each call takes the current partition map
//! and each partition's current searcher.
//!
//! Every search, scan, count and aggregation leaves out the documents the
//! indexer marked as exact copies of a span indexed shortly before (a
//! client's resend, see [`crate::resends`]); a trace read returns every
//! stored span, copies included (the query service drops them).

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use prost::Message;
use tantivy::query::{
    AllQuery, BooleanQuery, EmptyQuery, InvertedIndexRangeQuery, Occur, Query, RangeQuery,
    TermQuery,
};
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::{DocAddress, Searcher, SegmentReader, TantivyDocument, Term};

use super::document::SpanRef;
use super::partition::{self, PartitionId, PartitionIndex};
use super::schema::{SpanFields, names};
use super::{PartitionMap, StoreError};
use crate::ids::{SpanId, TraceId};

/// What spans to match. Every set field must match (AND); tags match on the
/// attribute's text form (see [`crate::attributes::text`]), span attributes,
/// resource attributes and event fields alike (see [`Condition::Tag`]).
#[derive(Debug, Clone, Default)]
pub struct SpanQuery {
    /// Resource `service.name`.
    pub service: Option<String>,
    /// Span name.
    pub operation: Option<String>,
    /// OTLP span kind (1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: Option<i32>,
    /// `key=value` attribute matches.
    pub tags: Vec<(String, String)>,
    /// Spans at least this long.
    pub min_duration: Option<Duration>,
    /// Spans at most this long.
    pub max_duration: Option<Duration>,
    /// Only spans with status ERROR.
    pub errors_only: bool,
    /// Spans started at or after this (ns since the epoch).
    pub start_from: Option<u64>,
    /// Spans started at or before this (ns since the epoch).
    pub start_to: Option<u64>,
    /// `http.request.method`.
    pub http_method: Option<String>,
    /// `http.route`.
    pub http_route: Option<String>,
    /// `http.response.status_code`.
    pub http_status_code: Option<u16>,
    /// `peer.service`.
    pub peer_service: Option<String>,
    /// Further conditions, every one of which must hold.
    pub conditions: Vec<Condition>,
}

/// A condition on a span beyond [`SpanQuery`]'s fields: negations,
/// alternatives, status and HTTP status ranges, attribute presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// OTLP span kind.
    Kind(i32),
    /// OTLP status code (0 unset, 1 ok, 2 error).
    Status(i32),
    /// `http.response.status_code` within `from..=to`.
    HttpStatus(u16, u16),
    /// A span attribute, a resource attribute, or a field of one of the
    /// span's events (an attribute, or its name as `event`) with this
    /// text value: where Jaeger's stores match a tag (span tags, process
    /// tags, log fields). As in [`SpanQuery::tags`]. Event fields are
    /// searched in partitions created from the version that indexes them.
    Tag(String, String),
    /// An attribute (span or resource) with this key, whatever its value.
    HasTag(String),
    /// The condition does not hold.
    Not(Box<Condition>),
    /// At least one holds.
    Any(Vec<Condition>),
    /// Every one holds.
    All(Vec<Condition>),
}

impl Condition {
    /// The spans of `outcome`, as [`crate::outcome::Outcome::of`] defines it.
    pub fn outcome(outcome: crate::outcome::Outcome) -> Self {
        use crate::outcome::{Outcome, STATUS_ERROR};
        let client_error = Self::HttpStatus(400, 499);
        let error = Self::Any(vec![
            Self::HttpStatus(500, u16::MAX),
            Self::All(vec![
                Self::Status(STATUS_ERROR),
                Self::Not(Box::new(client_error.clone())),
            ]),
        ]);
        match outcome {
            Outcome::Error => error,
            Outcome::ClientError => client_error,
            Outcome::Success => Self::All(vec![
                Self::Not(Box::new(error)),
                Self::Not(Box::new(client_error)),
            ]),
        }
    }
}

/// A span as it was received, with its resource and scope.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSpan {
    /// The resource it was sent with.
    pub resource: Option<Resource>,
    /// The resource's schema URL.
    pub resource_schema_url: String,
    /// Its instrumentation scope.
    pub scope: Option<InstrumentationScope>,
    /// The scope's schema URL.
    pub scope_schema_url: String,
    /// The span, field for field as sent.
    pub span: Span,
}

impl StoredSpan {
    /// The span with its resource and scope, as ingest handles spans.
    pub fn as_span_ref(&self) -> SpanRef<'_> {
        SpanRef {
            resource: self.resource.as_ref(),
            resource_schema_url: &self.resource_schema_url,
            scope: self.scope.as_ref(),
            scope_schema_url: &self.scope_schema_url,
            span: &self.span,
        }
    }
}

/// Most spans one trace read returns ([`SpanReader::trace`]): the earliest
/// by start time are kept, the rest counted in [`Trace::omitted_spans`].
pub const MAX_TRACE_SPANS: usize = 20_000;

/// Most spans one answer of several traces holds
/// ([`SpanReader::traces`]): traces past it are left out.
pub const MAX_ANSWER_SPANS: usize = 100_000;

/// The stored spans of one trace, by start time.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The trace id.
    pub trace_id: TraceId,
    /// Its spans, earliest start first, then by span id (so exact copies
    /// are neighbours).
    pub spans: Vec<StoredSpan>,
    /// Spans stored but not read: past the read's span limit.
    pub omitted_spans: u64,
}

/// A trace that matched a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceHit {
    /// The trace.
    pub trace_id: TraceId,
    /// Start of its latest matching span (ns since the epoch).
    pub latest_start: u64,
    /// How many of its spans matched.
    pub matched_spans: u32,
}

/// A span's columns, without its attributes: what aggregation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanSummary {
    /// Trace id.
    pub trace_id: TraceId,
    /// Span id.
    pub span_id: SpanId,
    /// Parent span id (`None` for a root).
    pub parent_span_id: Option<SpanId>,
    /// Resource `service.name`.
    pub service: Arc<str>,
    /// Span name.
    pub operation: Arc<str>,
    /// OTLP span kind.
    pub kind: i32,
    /// Start (ns since the epoch).
    pub start: u64,
    /// Duration (ns).
    pub duration: u64,
    /// OTLP status code (0 unset, 1 ok, 2 error).
    pub status_code: i32,
    /// `http.response.status_code`, when set.
    pub http_status_code: Option<u16>,
}

/// The read side of the store. Cheap to clone.
#[derive(Clone)]
pub struct SpanReader {
    dir: PathBuf,
    partitions: PartitionMap,
    /// Whether a writer in this process keeps `partitions` current.
    following: bool,
}

pub(super) fn index_err(
    partition: &PartitionIndex,
) -> impl Fn(tantivy::TantivyError) -> StoreError + '_ {
    |source| StoreError::Index {
        path: partition.path.clone(),
        source,
    }
}

impl SpanReader {
    pub(crate) fn following(dir: PathBuf, partitions: PartitionMap) -> Self {
        Self {
            dir,
            partitions,
            following: true,
        }
    }

    /// Opens the store under `data_dir` read-only (for tools and tests; a
    /// running collector may be writing it). Call [`Self::refresh`] to see
    /// later commits.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let reader = Self {
            dir: data_dir.join("spans"),
            partitions: Arc::new(ArcSwap::from_pointee(Default::default())),
            following: false,
        };
        reader.refresh()?;
        Ok(reader)
    }

    /// For a read-only handle: picks up new and dropped partitions and new
    /// commits. A handle from a running store is always current.
    pub fn refresh(&self) -> Result<(), StoreError> {
        if self.following {
            return Ok(());
        }
        let current = self.partitions.load_full();
        let mut map = std::collections::BTreeMap::new();
        for (id, path) in partition::list(&self.dir)? {
            let partition = match current.get(&id) {
                Some(open) => {
                    open.reader.reload().map_err(index_err(open))?;
                    open.clone()
                }
                None => Arc::new(PartitionIndex::open(id, &path, false)?),
            };
            map.insert(id, partition);
        }
        self.partitions.store(Arc::new(map));
        Ok(())
    }

    /// The partitions, oldest first.
    pub fn partitions(&self) -> Vec<PartitionId> {
        self.partitions.load().keys().copied().collect()
    }

    pub(super) fn newest_first(&self, from: u64, to: u64) -> Vec<Arc<PartitionIndex>> {
        self.partitions
            .load()
            .values()
            .rev()
            .filter(|p| p.id.overlaps(from, to))
            .cloned()
            .collect()
    }

    /// The spans of a trace (at most [`MAX_TRACE_SPANS`], the earliest),
    /// or `None` when none is stored.
    pub fn trace(&self, trace_id: TraceId) -> Result<Option<Trace>, StoreError> {
        self.trace_at_most(trace_id, MAX_TRACE_SPANS)
    }

    /// Several traces, in the order asked, within [`MAX_ANSWER_SPANS`]
    /// spans in all: the traces past the budget are left out, so one
    /// answer stays bounded whatever the traces hold. Traces not stored
    /// are skipped.
    pub fn traces(&self, trace_ids: &[TraceId]) -> Result<Vec<Trace>, StoreError> {
        let mut budget = MAX_ANSWER_SPANS;
        let mut traces = Vec::new();
        for &trace_id in trace_ids {
            if budget == 0 {
                break;
            }
            if let Some(trace) = self.trace_at_most(trace_id, budget.min(MAX_TRACE_SPANS))? {
                budget -= trace.spans.len();
                traces.push(trace);
            }
        }
        Ok(traces)
    }

    /// The spans of a trace, at most `max_spans` of them (the earliest by
    /// start; only those are decoded), or `None` when none is stored.
    pub fn trace_at_most(
        &self,
        trace_id: TraceId,
        max_spans: usize,
    ) -> Result<Option<Trace>, StoreError> {
        let partitions = self.newest_first(0, u64::MAX);
        // The searchers the documents were found with are the ones they
        // are read with (a commit in between changes the segments).
        let searchers: Vec<Searcher> = partitions.iter().map(|p| p.reader.searcher()).collect();
        // (start, partition, document) of every span, from the fast
        // column, before any span is decoded.
        let mut found = Vec::new();
        for (p, (partition, searcher)) in partitions.iter().zip(&searchers).enumerate() {
            let term = Term::from_field_bytes(partition.fields.trace_id, &trace_id.0);
            let query = TermQuery::new(term, IndexRecordOption::Basic);
            let mut starts: Option<(u32, tantivy::columnar::Column<u64>)> = None;
            for address in matching_docs(searcher, &query).map_err(index_err(partition))? {
                let column = match &starts {
                    Some((ord, column)) if *ord == address.segment_ord => column,
                    _ => {
                        let column = searcher
                            .segment_reader(address.segment_ord)
                            .fast_fields()
                            .u64(names::START)
                            .map_err(index_err(partition))?;
                        &starts.insert((address.segment_ord, column)).1
                    }
                };
                found.push((column.first(address.doc_id).unwrap_or(0), p, address));
            }
        }
        if found.is_empty() {
            return Ok(None);
        }
        let omitted = found.len().saturating_sub(max_spans);
        if omitted > 0 {
            found.sort_unstable_by_key(|(start, _, _)| *start);
            found.truncate(max_spans);
        }
        let mut spans = Vec::with_capacity(found.len());
        for (_, p, address) in found {
            let partition = &partitions[p];
            let doc: TantivyDocument = searchers[p].doc(address).map_err(index_err(partition))?;
            if let Some(bytes) = doc
                .get_first(partition.fields.span)
                .and_then(|v| v.as_bytes())
            {
                spans.push(decode_span(bytes)?);
            }
        }
        spans.sort_by_key(|s| (s.span.start_time_unix_nano, s.span.span_id.clone()));
        Ok(Some(Trace {
            trace_id,
            spans,
            omitted_spans: omitted as u64,
        }))
    }

    /// Traces with at least one span matching `query`, latest first, at most `limit`.
    pub fn find_traces(
        &self,
        query: &SpanQuery,
        limit: usize,
    ) -> Result<Vec<TraceHit>, StoreError> {
        let mut hits: HashMap<TraceId, TraceHit> = HashMap::new();
        let (from, to) = query.time_range();
        for partition in self.newest_first(from, to) {
            let searcher = partition.reader.searcher();
            let tantivy_query = build_query(&partition.fields, query);
            for segment in searcher.segment_readers() {
                let columns = Columns::open(segment).map_err(index_err(&partition))?;
                let mut by_ord: HashMap<u64, (u64, u32)> = HashMap::new();
                let weight = tantivy_query
                    .weight(tantivy::query::EnableScoring::disabled_from_searcher(
                        &searcher,
                    ))
                    .map_err(index_err(&partition))?;
                weight
                    .for_each_no_score(segment, &mut |docs| {
                        for &doc in docs {
                            let Some(ord) = columns
                                .trace_id
                                .as_ref()
                                .and_then(|c| c.term_ords(doc).next())
                            else {
                                continue;
                            };
                            let start = columns.start.first(doc).unwrap_or(0);
                            let entry = by_ord.entry(ord).or_insert((0, 0));
                            entry.0 = entry.0.max(start);
                            entry.1 += 1;
                        }
                    })
                    .map_err(index_err(&partition))?;
                let mut bytes = Vec::with_capacity(16);
                for (ord, (start, count)) in by_ord {
                    bytes.clear();
                    if let Some(column) = &columns.trace_id
                        && column.ord_to_bytes(ord, &mut bytes).unwrap_or(false)
                        && let Some(trace_id) = TraceId::from_bytes(&bytes)
                    {
                        let hit = hits.entry(trace_id).or_insert(TraceHit {
                            trace_id,
                            latest_start: 0,
                            matched_spans: 0,
                        });
                        hit.latest_start = hit.latest_start.max(start);
                        hit.matched_spans += count;
                    }
                }
            }
            if hits.len() >= limit {
                break; // older partitions only hold older spans
            }
        }
        let mut hits: Vec<TraceHit> = hits.into_values().collect();
        hits.sort_by(|a, b| {
            b.latest_start
                .cmp(&a.latest_start)
                .then(a.trace_id.cmp(&b.trace_id))
        });
        hits.truncate(limit);
        Ok(hits)
    }

    /// Calls `visit` with the columns of every span matching `query`
    /// (attributes are not read: this is the fast path for aggregation).
    /// Returns how many spans were visited.
    pub fn scan(
        &self,
        query: &SpanQuery,
        mut visit: impl FnMut(&SpanSummary),
    ) -> Result<u64, StoreError> {
        let mut visited = 0;
        self.for_each_match(
            query,
            |segment| Ok((Columns::open(segment)?, NameCache::default())),
            |(columns, names), doc| {
                if let Some(summary) = columns.summary(doc, names)? {
                    visited += 1;
                    visit(&summary);
                }
                Ok(())
            },
        )?;
        Ok(visited)
    }

    /// Calls `visit(start, duration, operation)` (ns since the epoch, ns,
    /// the span's name when `with_operation`) for every span matching
    /// `query`: the three columns a distribution over time needs, read
    /// without the rest of [`scan`](Self::scan)'s summary (trace ids are
    /// the costly column to read span by span). Returns how many spans
    /// were visited.
    pub fn scan_durations(
        &self,
        query: &SpanQuery,
        with_operation: bool,
        mut visit: impl FnMut(u64, u64, Option<&Arc<str>>),
    ) -> Result<u64, StoreError> {
        let mut visited = 0;
        self.for_each_match(
            query,
            |segment| {
                let fast = segment.fast_fields();
                let operation = match with_operation {
                    true => fast.str(names::OPERATION)?,
                    false => None,
                };
                let columns = (fast.u64(names::START)?, fast.u64(names::DURATION)?);
                Ok((columns, operation, HashMap::new()))
            },
            |((start, duration), operation, names), doc| {
                let name = match with_operation {
                    true => Some(Columns::name(operation, names, doc)?),
                    false => None,
                };
                visited += 1;
                visit(
                    start.first(doc).unwrap_or(0),
                    duration.first(doc).unwrap_or(0),
                    name.as_ref(),
                );
                Ok(())
            },
        )?;
        Ok(visited)
    }

    /// The walk both scans take: every document matching `query` in the
    /// partitions its time range touches, newest first, segment by
    /// segment; `open` reads a segment's columns once, `each` reads one
    /// document from them. The first read error ends the walk.
    fn for_each_match<C>(
        &self,
        query: &SpanQuery,
        mut open: impl FnMut(&SegmentReader) -> tantivy::Result<C>,
        mut each: impl FnMut(&mut C, u32) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        let (from, to) = query.time_range();
        for partition in self.newest_first(from, to) {
            let searcher = partition.reader.searcher();
            let tantivy_query = build_query(&partition.fields, query);
            let weight = tantivy_query
                .weight(tantivy::query::EnableScoring::disabled_from_searcher(
                    &searcher,
                ))
                .map_err(index_err(&partition))?;
            for segment in searcher.segment_readers() {
                let mut columns = open(segment).map_err(index_err(&partition))?;
                let mut failed = None;
                weight
                    .for_each_no_score(segment, &mut |docs| {
                        for &doc in docs {
                            if failed.is_some() {
                                return;
                            }
                            if let Err(e) = each(&mut columns, doc) {
                                failed = Some(e);
                            }
                        }
                    })
                    .map_err(index_err(&partition))?;
                if let Some(source) = failed {
                    return Err(StoreError::Io {
                        path: partition.path.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Every service with stored spans, sorted.
    pub fn services(&self) -> Result<Vec<String>, StoreError> {
        let mut services = BTreeSet::new();
        for partition in self.newest_first(0, u64::MAX) {
            let searcher = partition.reader.searcher();
            for segment in searcher.segment_readers() {
                let Some(column) = segment
                    .fast_fields()
                    .str(names::SERVICE)
                    .map_err(index_err(&partition))?
                else {
                    continue;
                };
                let mut text = String::new();
                for ord in 0..column.num_terms() as u64 {
                    if column.ord_to_str(ord, &mut text).unwrap_or(false) {
                        services.insert(text.clone());
                    }
                }
            }
        }
        Ok(services.into_iter().collect())
    }

    /// The operations (span name and kind) of a service, sorted.
    pub fn operations(&self, service: &str) -> Result<Vec<(String, i32)>, StoreError> {
        let query = SpanQuery {
            service: Some(service.to_owned()),
            ..Default::default()
        };
        let mut operations = BTreeSet::new();
        for partition in self.newest_first(0, u64::MAX) {
            let searcher = partition.reader.searcher();
            let tantivy_query = build_query(&partition.fields, &query);
            let weight = tantivy_query
                .weight(tantivy::query::EnableScoring::disabled_from_searcher(
                    &searcher,
                ))
                .map_err(index_err(&partition))?;
            for segment in searcher.segment_readers() {
                let fast = segment.fast_fields();
                let Some(names) = fast.str(names::OPERATION).map_err(index_err(&partition))? else {
                    continue;
                };
                let kinds = fast.u64(names::KIND).map_err(index_err(&partition))?;
                let mut pairs = BTreeSet::new();
                weight
                    .for_each_no_score(segment, &mut |docs| {
                        for &doc in docs {
                            if let Some(ord) = names.term_ords(doc).next() {
                                pairs.insert((ord, kinds.first(doc).unwrap_or(0)));
                            }
                        }
                    })
                    .map_err(index_err(&partition))?;
                let mut text = String::new();
                for (ord, kind) in pairs {
                    if names.ord_to_str(ord, &mut text).unwrap_or(false) {
                        operations.insert((text.clone(), kind as i32));
                    }
                }
            }
        }
        Ok(operations.into_iter().collect())
    }

    /// Spans matching `query`.
    pub fn count(&self, query: &SpanQuery) -> Result<u64, StoreError> {
        let (from, to) = query.time_range();
        let mut total = 0u64;
        for partition in self.newest_first(from, to) {
            let searcher = partition.reader.searcher();
            let tantivy_query = build_query(&partition.fields, query);
            total += tantivy_query
                .count(&searcher)
                .map_err(index_err(&partition))? as u64;
        }
        Ok(total)
    }
}

impl SpanQuery {
    pub(super) fn time_range(&self) -> (u64, u64) {
        (
            self.start_from.unwrap_or(0),
            self.start_to.unwrap_or(u64::MAX),
        )
    }
}

fn matching_docs(searcher: &Searcher, query: &dyn Query) -> tantivy::Result<Vec<DocAddress>> {
    let weight = query.weight(tantivy::query::EnableScoring::disabled_from_searcher(
        searcher,
    ))?;
    let mut addresses = Vec::new();
    for (ord, segment) in searcher.segment_readers().iter().enumerate() {
        weight.for_each_no_score(segment, &mut |docs| {
            addresses.extend(docs.iter().map(|&doc| DocAddress::new(ord as u32, doc)));
        })?;
    }
    Ok(addresses)
}

fn decode_span(bytes: &[u8]) -> Result<StoredSpan, StoreError> {
    let mut resource_spans = ResourceSpans::decode(bytes)?;
    let mut scope_spans = resource_spans.scope_spans.pop().unwrap_or_default();
    let span = scope_spans.spans.pop().unwrap_or_default();
    Ok(StoredSpan {
        resource: resource_spans.resource,
        resource_schema_url: resource_spans.schema_url,
        scope: scope_spans.scope,
        scope_schema_url: scope_spans.schema_url,
        span,
    })
}

/// The tantivy query for a [`SpanQuery`] on one partition, marked copies
/// left out.
pub(super) fn build_query(fields: &SpanFields, query: &SpanQuery) -> Box<dyn Query> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    let mut term = |term: Term| {
        clauses.push((
            Occur::Must,
            Box::new(TermQuery::new(term, IndexRecordOption::Basic)),
        ))
    };
    let text_fields = [
        (fields.service, &query.service),
        (fields.operation, &query.operation),
        (fields.http_method, &query.http_method),
        (fields.http_route, &query.http_route),
        (fields.peer_service, &query.peer_service),
    ];
    for (field, value) in text_fields {
        if let Some(value) = value {
            term(Term::from_field_text(field, value));
        }
    }
    if let Some(kind) = query.kind {
        term(Term::from_field_u64(fields.kind, kind.max(0) as u64));
    }
    if let Some(code) = query.http_status_code {
        term(Term::from_field_u64(fields.http_status, u64::from(code)));
    }
    if query.errors_only {
        term(Term::from_field_u64(fields.status, 2));
    }
    for (key, value) in &query.tags {
        clauses.push((Occur::Must, tag_query(fields, key, value)));
    }
    for condition in &query.conditions {
        clauses.push((Occur::Must, condition_query(fields, condition)));
    }
    if let Some(duplicate) = fields.duplicate {
        // Exact copies are stored but never counted (see `crate::resends`).
        clauses.push((
            Occur::MustNot,
            Box::new(TermQuery::new(
                Term::from_field_u64(duplicate, 1),
                IndexRecordOption::Basic,
            )),
        ));
    }
    let range = |field, from: Option<u64>, to: Option<u64>| -> Option<Box<dyn Query>> {
        if from.is_none() && to.is_none() {
            return None;
        }
        let lower = from.map_or(Bound::Unbounded, |v| {
            Bound::Included(Term::from_field_u64(field, v))
        });
        let upper = to.map_or(Bound::Unbounded, |v| {
            Bound::Included(Term::from_field_u64(field, v))
        });
        Some(Box::new(RangeQuery::new(lower, upper)))
    };
    let nanos = |d: Option<Duration>| d.map(|d| d.as_nanos().min(u128::from(u64::MAX)) as u64);
    if let Some(q) = range(fields.start, query.start_from, query.start_to) {
        clauses.push((Occur::Must, q));
    }
    if let Some(q) = range(
        fields.duration,
        nanos(query.min_duration),
        nanos(query.max_duration),
    ) {
        clauses.push((Occur::Must, q));
    }
    if clauses.iter().all(|(occur, _)| *occur == Occur::MustNot) {
        if clauses.is_empty() {
            return Box::new(AllQuery);
        }
        clauses.push((Occur::Must, Box::new(AllQuery)));
    }
    Box::new(BooleanQuery::new(clauses))
}

/// The spans where `key` has the text `value` ([`Condition::Tag`]): in
/// the field of its own a key may have (the resource's `service.name`,
/// the span's `http.route`, ...), in the JSON field of the other span and
/// resource attributes (a resource's `http.route`, a status code sent as
/// a string), or in the JSON field of the events' fields.
fn tag_query(fields: &SpanFields, key: &str, value: &str) -> Box<dyn Query> {
    let json = |field| {
        let mut term = Term::from_field_json_path(field, key, true);
        term.append_type_and_str(value);
        term
    };
    let dedicated = match key {
        "service.name" => Some(Term::from_field_text(fields.service, value)),
        "http.request.method" => Some(Term::from_field_text(fields.http_method, value)),
        "http.route" => Some(Term::from_field_text(fields.http_route, value)),
        "peer.service" => Some(Term::from_field_text(fields.peer_service, value)),
        "http.response.status_code" => value
            .parse::<u64>()
            .ok()
            .map(|code| Term::from_field_u64(fields.http_status, code)),
        _ => None,
    };
    let terms: Vec<Term> = dedicated
        .into_iter()
        .chain([json(fields.attributes)])
        .chain(fields.events.map(json))
        .collect();
    Box::new(BooleanQuery::new(
        terms
            .into_iter()
            .map(|term| {
                let query: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::Basic));
                (Occur::Should, query)
            })
            .collect(),
    ))
}

/// Every span with attribute `key` set: a range over the key's terms.
fn has_tag_query(fields: &SpanFields, key: &str) -> Box<dyn Query> {
    let text_field = match key {
        "service.name" => Some(fields.service),
        "http.request.method" => Some(fields.http_method),
        "http.route" => Some(fields.http_route),
        "peer.service" => Some(fields.peer_service),
        "http.response.status_code" => {
            return Box::new(RangeQuery::new(
                Bound::Included(Term::from_field_u64(fields.http_status, 0)),
                Bound::Unbounded,
            ));
        }
        _ => None,
    };
    // The largest character: no indexed value sorts after it.
    const LAST: &str = "\u{10FFFF}";
    let (lower, upper) = match text_field {
        Some(field) => (
            Term::from_field_text(field, ""),
            Term::from_field_text(field, LAST),
        ),
        None => {
            let bound = |text: &str| {
                let mut json = Term::from_field_json_path(fields.attributes, key, true);
                json.append_type_and_str(text);
                json
            };
            (bound(""), bound(LAST))
        }
    };
    Box::new(InvertedIndexRangeQuery::new(
        Bound::Included(lower),
        Bound::Included(upper),
    ))
}

/// The tantivy query of one [`Condition`].
fn condition_query(fields: &SpanFields, condition: &Condition) -> Box<dyn Query> {
    let term =
        |term: Term| -> Box<dyn Query> { Box::new(TermQuery::new(term, IndexRecordOption::Basic)) };
    match condition {
        Condition::Kind(kind) => term(Term::from_field_u64(fields.kind, (*kind).max(0) as u64)),
        Condition::Status(code) => term(Term::from_field_u64(fields.status, (*code).max(0) as u64)),
        Condition::HttpStatus(from, to) => Box::new(RangeQuery::new(
            Bound::Included(Term::from_field_u64(fields.http_status, u64::from(*from))),
            Bound::Included(Term::from_field_u64(fields.http_status, u64::from(*to))),
        )),
        Condition::Tag(key, value) => tag_query(fields, key, value),
        Condition::HasTag(key) => has_tag_query(fields, key),
        Condition::Not(inner) => Box::new(BooleanQuery::new(vec![
            (Occur::Must, Box::new(AllQuery) as Box<dyn Query>),
            (Occur::MustNot, condition_query(fields, inner)),
        ])),
        Condition::Any(all) if all.is_empty() => Box::new(EmptyQuery),
        Condition::Any(all) => Box::new(BooleanQuery::new(
            all.iter()
                .map(|c| (Occur::Should, condition_query(fields, c)))
                .collect(),
        )),
        Condition::All(all) if all.is_empty() => Box::new(AllQuery),
        Condition::All(all) => Box::new(BooleanQuery::new(
            all.iter()
                .map(|c| (Occur::Must, condition_query(fields, c)))
                .collect(),
        )),
    }
}

/// One segment's columns, opened once per scan.
struct Columns {
    trace_id: Option<tantivy::columnar::BytesColumn>,
    span_id: tantivy::columnar::Column<u64>,
    parent: tantivy::columnar::Column<u64>,
    service: Option<tantivy::columnar::StrColumn>,
    operation: Option<tantivy::columnar::StrColumn>,
    kind: tantivy::columnar::Column<u64>,
    start: tantivy::columnar::Column<u64>,
    duration: tantivy::columnar::Column<u64>,
    status: tantivy::columnar::Column<u64>,
    http_status: tantivy::columnar::Column<u64>,
}

/// Ordinal → string, per segment and column, so each name is read once.
#[derive(Default)]
struct NameCache {
    services: HashMap<u64, Arc<str>>,
    operations: HashMap<u64, Arc<str>>,
    trace_ids: HashMap<u64, TraceId>,
}

impl Columns {
    fn open(segment: &SegmentReader) -> tantivy::Result<Self> {
        let fast = segment.fast_fields();
        Ok(Self {
            trace_id: fast.bytes(names::TRACE_ID)?,
            span_id: fast.u64(names::SPAN_ID)?,
            parent: fast.u64(names::PARENT_SPAN_ID)?,
            service: fast.str(names::SERVICE)?,
            operation: fast.str(names::OPERATION)?,
            kind: fast.u64(names::KIND)?,
            start: fast.u64(names::START)?,
            duration: fast.u64(names::DURATION)?,
            status: fast.u64(names::STATUS)?,
            http_status: fast.u64(names::HTTP_STATUS)?,
        })
    }

    fn name(
        column: &Option<tantivy::columnar::StrColumn>,
        cache: &mut HashMap<u64, Arc<str>>,
        doc: u32,
    ) -> std::io::Result<Arc<str>> {
        let Some(column) = column else {
            return Ok(Arc::from(""));
        };
        let Some(ord) = column.term_ords(doc).next() else {
            return Ok(Arc::from(""));
        };
        if let Some(name) = cache.get(&ord) {
            return Ok(name.clone());
        }
        let mut text = String::new();
        column.ord_to_str(ord, &mut text)?;
        let name: Arc<str> = Arc::from(text);
        cache.insert(ord, name.clone());
        Ok(name)
    }

    fn summary(&self, doc: u32, cache: &mut NameCache) -> std::io::Result<Option<SpanSummary>> {
        let Some(column) = &self.trace_id else {
            return Ok(None);
        };
        let Some(ord) = column.term_ords(doc).next() else {
            return Ok(None);
        };
        let trace_id = match cache.trace_ids.get(&ord) {
            Some(id) => *id,
            None => {
                let mut bytes = Vec::with_capacity(16);
                column.ord_to_bytes(ord, &mut bytes)?;
                let Some(id) = TraceId::from_bytes(&bytes) else {
                    return Ok(None);
                };
                if cache.trace_ids.len() > 100_000 {
                    cache.trace_ids.clear();
                }
                cache.trace_ids.insert(ord, id);
                id
            }
        };
        let parent = self.parent.first(doc).unwrap_or(0);
        Ok(Some(SpanSummary {
            trace_id,
            span_id: SpanId::from_u64(self.span_id.first(doc).unwrap_or(0)),
            parent_span_id: (parent != 0).then(|| SpanId::from_u64(parent)),
            service: Self::name(&self.service, &mut cache.services, doc)?,
            operation: Self::name(&self.operation, &mut cache.operations, doc)?,
            kind: self.kind.first(doc).unwrap_or(0) as i32,
            start: self.start.first(doc).unwrap_or(0),
            duration: self.duration.first(doc).unwrap_or(0),
            status_code: self.status.first(doc).unwrap_or(0) as i32,
            http_status_code: self
                .http_status
                .first(doc)
                .and_then(|c| u16::try_from(c).ok()),
        }))
    }
}
