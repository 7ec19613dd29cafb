//! Store round trips: write, commit, read back by id, search, scan, replay;
//! marked copies stored but never counted.

use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

use super::*;
use crate::attributes;
use crate::ids::TraceId;
use crate::resends::ResendFilter;

const DAY: u64 = 86_400;
const NOW: u64 = 20_000 * DAY * 1_000_000_000;

fn batch(service: &str, trace: u8, spans: &[(u8, u8, &str, u64, u64, i32)]) -> Vec<ResourceSpans> {
    vec![ResourceSpans {
        resource: Some(Resource {
            attributes: vec![
                attributes::string("service.name", service),
                attributes::string("k8s.namespace.name", "shop"),
            ],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "test".into(),
                version: "1".into(),
                ..Default::default()
            }),
            spans: spans
                .iter()
                .map(|&(id, parent, name, start, duration_ms, status)| Span {
                    trace_id: vec![trace; 16],
                    span_id: vec![id; 8],
                    parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
                    name: name.into(),
                    kind: 2,
                    start_time_unix_nano: start,
                    end_time_unix_nano: start + duration_ms * 1_000_000,
                    attributes: vec![
                        attributes::string("http.request.method", "GET"),
                        attributes::int(
                            "http.response.status_code",
                            if status == 2 { 500 } else { 200 },
                        ),
                    ],
                    status: Some(Status {
                        code: status,
                        message: String::new(),
                    }),
                    ..Default::default()
                })
                .collect(),
            schema_url: String::new(),
        }],
        schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
    }]
}

fn open(dir: &std::path::Path) -> SpanStore {
    SpanStore::open(dir, DAY, 32 << 20, Metrics::new().unwrap()).unwrap()
}

#[test]
fn spans_read_back_searched_and_scanned() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let first = batch(
        "cart",
        1,
        &[
            (1, 0, "GET /cart", NOW, 30, 0),
            (2, 1, "SELECT", NOW + 1000, 5, 0),
        ],
    );
    let second = batch(
        "checkout",
        2,
        &[(
            3,
            0,
            "POST /pay",
            NOW + 5 * DAY * 1_000_000_000 / 10,
            900,
            2,
        )],
    );
    assert_eq!(store.apply(1, &first, TimeWindow::ALL, |_| {}).unwrap(), 2);
    assert_eq!(store.apply(2, &second, TimeWindow::ALL, |_| {}).unwrap(), 1);
    assert_eq!(store.commit().unwrap(), 2);
    let reader = store.reader();

    let trace = reader.trace(TraceId([1; 16])).unwrap().unwrap();
    assert_eq!(trace.spans.len(), 2);
    assert_eq!(
        trace.spans[0].span, first[0].scope_spans[0].spans[0],
        "span reads back exactly"
    );
    assert_eq!(trace.spans[0].resource, first[0].resource);
    assert_eq!(trace.spans[0].scope, first[0].scope_spans[0].scope);
    assert_eq!(
        trace.spans[0].resource_schema_url,
        "https://opentelemetry.io/schemas/1.26.0"
    );
    assert!(reader.trace(TraceId([9; 16])).unwrap().is_none());

    let by_service = SpanQuery {
        service: Some("cart".into()),
        ..Default::default()
    };
    assert_eq!(reader.count(&by_service).unwrap(), 2);
    let hits = reader.find_traces(&SpanQuery::default(), 10).unwrap();
    assert_eq!(
        hits.iter().map(|h| h.trace_id).collect::<Vec<_>>(),
        vec![TraceId([2; 16]), TraceId([1; 16])],
        "latest first"
    );
    let errors = SpanQuery {
        errors_only: true,
        ..Default::default()
    };
    assert_eq!(
        reader.find_traces(&errors, 10).unwrap()[0].trace_id,
        TraceId([2; 16])
    );
    let tag = SpanQuery {
        tags: vec![
            ("k8s.namespace.name".into(), "shop".into()),
            ("http.response.status_code".into(), "500".into()),
        ],
        ..Default::default()
    };
    assert_eq!(
        reader.count(&tag).unwrap(),
        1,
        "resource and span attributes are searchable"
    );
    let slow = SpanQuery {
        min_duration: Some(Duration::from_millis(20)),
        max_duration: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    assert_eq!(reader.count(&slow).unwrap(), 1);
    let window = SpanQuery {
        start_from: Some(NOW + 1),
        start_to: Some(NOW + 2000),
        ..Default::default()
    };
    assert_eq!(reader.count(&window).unwrap(), 1);
    let fields = SpanQuery {
        http_method: Some("GET".into()),
        http_status_code: Some(200),
        kind: Some(2),
        ..Default::default()
    };
    assert_eq!(reader.count(&fields).unwrap(), 2);

    let mut summaries = Vec::new();
    reader
        .scan(&by_service, |s| summaries.push(s.clone()))
        .unwrap();
    summaries.sort_by_key(|s| s.start);
    assert_eq!(&*summaries[1].operation, "SELECT");
    assert_eq!(
        summaries[1].parent_span_id,
        Some(crate::ids::SpanId([1; 8]))
    );
    assert_eq!(summaries[1].duration, 5_000_000);
    assert_eq!(summaries[0].http_status_code, Some(200));
    assert_eq!(
        reader.services().unwrap(),
        vec!["cart".to_owned(), "checkout".to_owned()]
    );
    assert_eq!(
        reader.operations("cart").unwrap(),
        vec![("GET /cart".to_owned(), 2), ("SELECT".to_owned(), 2)]
    );
}

#[test]
fn replay_adds_only_what_a_partition_lacks_and_retention_drops_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let old = batch(
        "cart",
        1,
        &[(1, 0, "old", NOW - 3 * DAY * 1_000_000_000, 1, 0)],
    );
    let new = batch("cart", 2, &[(2, 0, "new", NOW, 1, 0)]);
    store.apply(1, &old, TimeWindow::ALL, |_| {}).unwrap();
    store.apply(2, &new, TimeWindow::ALL, |_| {}).unwrap();
    store.close().unwrap();

    let mut store = open(dir.path());
    assert_eq!(store.max_committed_seq(), 2);
    assert_eq!(
        store.apply(1, &old, TimeWindow::ALL, |_| {}).unwrap(),
        0,
        "committed records are skipped on replay"
    );
    assert_eq!(store.apply(3, &new, TimeWindow::ALL, |_| {}).unwrap(), 1);
    assert_eq!(store.sizes().len(), 2);
    let oldest = PartitionId::containing(NOW - 3 * DAY * 1_000_000_000, DAY);
    store.drop_partition(oldest).unwrap();
    store.commit().unwrap();
    let reader = SpanReader::open(dir.path()).unwrap();
    assert_eq!(reader.partitions().len(), 1);
    assert!(reader.trace(TraceId([1; 16])).unwrap().is_none());
    assert_eq!(
        reader.trace(TraceId([2; 16])).unwrap().unwrap().spans.len(),
        2
    );
}

#[test]
fn a_trace_read_keeps_its_earliest_spans_within_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let spans: Vec<(u8, u8, &str, u64, u64, i32)> = (1..=10u8)
        .rev()
        .map(|id| (id, 0, "op", NOW + u64::from(id) * 1000, 1, 0))
        .collect();
    store
        .apply(1, &batch("cart", 9, &spans), TimeWindow::ALL, |_| {})
        .unwrap();
    store
        .apply(2, &batch("cart", 8, &spans[..3]), TimeWindow::ALL, |_| {})
        .unwrap();
    store.commit().unwrap();
    let reader = store.reader();
    let trace = reader.trace_at_most(TraceId([9; 16]), 4).unwrap().unwrap();
    let ids: Vec<u8> = trace.spans.iter().map(|s| s.span.span_id[0]).collect();
    assert_eq!(ids, [1, 2, 3, 4], "the earliest four");
    assert_eq!(trace.omitted_spans, 6);
    let both = reader
        .traces(&[TraceId([9; 16]), TraceId([7; 16]), TraceId([8; 16])])
        .unwrap();
    assert_eq!(both.len(), 2, "the trace not stored is skipped");
    assert_eq!((both[0].spans.len(), both[1].spans.len()), (10, 3));
}

/// Prepares `batch` as a receiver does, marks it as the indexer does, and
/// adds it as record `seq`.
fn apply_marked(
    store: &mut SpanStore,
    filter: &mut ResendFilter,
    seq: u64,
    batch: &[ResourceSpans],
) {
    let fields = store.fields();
    let mut prepared = SpanStore::prepare(&fields, batch, None, DAY);
    filter.mark(
        fields.duplicate,
        batch,
        &prepared.fingerprints,
        &mut prepared.docs,
        DAY,
        |id| store.marks_duplicates(id),
    );
    store
        .apply_prepared(seq, prepared.docs, TimeWindow::ALL)
        .unwrap();
}

#[test]
fn marked_copies_are_stored_and_read_but_never_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let mut filter = ResendFilter::new();
    let sent = batch(
        "cart",
        1,
        &[
            (1, 0, "GET /cart", NOW, 30, 0),
            (2, 1, "SELECT", NOW + 1000, 5, 0),
        ],
    );
    apply_marked(&mut store, &mut filter, 1, &sent);
    store.commit().unwrap();
    // Resent after a commit: the copies are in another segment.
    apply_marked(&mut store, &mut filter, 2, &sent);
    store.commit().unwrap();
    let reader = store.reader();

    let trace = reader.trace(TraceId([1; 16])).unwrap().unwrap();
    assert_eq!(trace.spans.len(), 4, "a trace read returns what is stored");
    let cart = SpanQuery {
        service: Some("cart".into()),
        ..Default::default()
    };
    assert_eq!(reader.count(&cart).unwrap(), 2);
    assert_eq!(reader.count(&SpanQuery::default()).unwrap(), 2);
    let mut scanned = 0;
    reader.scan(&cart, |_| scanned += 1).unwrap();
    assert_eq!(scanned, 2);
    let hits = reader.find_traces(&cart, 10).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].matched_spans, 2);
    let counted = reader
        .aggregate(
            &cart,
            serde_json::json!({"n": {"value_count": {"field": schema::names::DURATION}}}),
        )
        .unwrap();
    assert_eq!(counted["n"]["value"], 2.0, "{counted}");
    assert_eq!(
        reader.operations("cart").unwrap(),
        [("GET /cart".to_owned(), 2), ("SELECT".to_owned(), 2)]
    );
}

/// The schema as it was before `field` was added: every field before it,
/// in the same order (fields are only ever added last).
fn schema_before(field: &str) -> tantivy::schema::Schema {
    let mut before = tantivy::schema::Schema::builder();
    for (_, entry) in schema::build()
        .fields()
        .take_while(|(_, entry)| entry.name() != field)
    {
        before.add_field(entry.clone());
    }
    before.build()
}

#[test]
fn a_partition_created_before_the_mark_takes_new_documents_unmarked() {
    let dir = tempfile::tempdir().unwrap();
    let id = PartitionId::containing(NOW, DAY);
    let path = dir.path().join("spans").join(id.dir_name());
    std::fs::create_dir_all(&path).unwrap();
    tantivy::Index::create_in_dir(&path, schema_before(schema::names::DUPLICATE)).unwrap();

    let mut store = open(dir.path());
    assert!(!store.marks_duplicates(id));
    assert!(
        store.marks_duplicates(PartitionId::containing(NOW + DAY * 1_000_000_000, DAY)),
        "a partition still to be created will have the field"
    );
    let mut filter = ResendFilter::new();
    let sent = batch("cart", 1, &[(1, 0, "GET /cart", NOW, 30, 0)]);
    apply_marked(&mut store, &mut filter, 1, &sent);
    apply_marked(&mut store, &mut filter, 2, &sent);
    assert!(filter.is_copy(0), "still a copy for the span metrics");
    store.commit().unwrap();
    let reader = store.reader();
    assert_eq!(
        reader.trace(TraceId([1; 16])).unwrap().unwrap().spans.len(),
        2
    );
    let cart = SpanQuery {
        service: Some("cart".into()),
        ..Default::default()
    };
    assert_eq!(
        reader.count(&cart).unwrap(),
        2,
        "such a partition cannot leave the copy out"
    );
}

/// `batch` with events on its first span: an exception (attribute
/// `exception.type`) and a retry (attributes `attempt` and
/// `http.request.resend_count`).
fn with_events(mut batch: Vec<ResourceSpans>) -> Vec<ResourceSpans> {
    use opentelemetry_proto::tonic::trace::v1::span::Event;
    let span = &mut batch[0].scope_spans[0].spans[0];
    span.events = vec![
        Event {
            time_unix_nano: span.start_time_unix_nano,
            name: "exception".into(),
            attributes: vec![attributes::string("exception.type", "Timeout")],
            ..Default::default()
        },
        Event {
            time_unix_nano: span.start_time_unix_nano,
            name: "retry".into(),
            attributes: vec![
                attributes::int("attempt", 2),
                attributes::int("http.request.resend_count", 1),
            ],
            ..Default::default()
        },
    ];
    batch
}

fn tags(pairs: &[(&str, &str)]) -> SpanQuery {
    SpanQuery {
        tags: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

/// A tag matches a span attribute, a resource attribute or an event field
/// (an attribute, or the name as `event`), as Jaeger's stores match span
/// tags, process tags and log fields; every tag on one span. An event's
/// attribute is no attribute of the span: `HasTag` does not see it.
#[test]
fn tags_match_event_fields_beside_span_and_resource_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let sent = with_events(batch(
        "cart",
        1,
        &[
            (1, 0, "GET /cart", NOW, 30, 0),
            (2, 1, "SELECT", NOW + 1000, 5, 0),
        ],
    ));
    store.apply(1, &sent, TimeWindow::ALL, |_| {}).unwrap();
    store.commit().unwrap();
    let reader = store.reader();
    for (pairs, spans) in [
        (&[("exception.type", "Timeout")][..], 1),
        (&[("event", "retry")], 1),
        (&[("attempt", "2")], 1),
        (&[("http.request.method", "GET"), ("attempt", "2")], 1),
        (&[("k8s.namespace.name", "shop"), ("event", "exception")], 1),
        (&[("exception.type", "Timeout"), ("event", "retry")], 1),
        (&[("exception.type", "Deadline")], 0),
        (&[("http.request.method", "GET")], 2),
    ] {
        assert_eq!(reader.count(&tags(pairs)).unwrap(), spans, "{pairs:?}");
        let mut query = SpanQuery::default();
        query.conditions.extend(
            pairs
                .iter()
                .map(|(k, v)| Condition::Tag((*k).to_owned(), (*v).to_owned())),
        );
        assert_eq!(reader.count(&query).unwrap(), spans, "{pairs:?}");
    }
    let resends = SpanQuery {
        conditions: vec![Condition::HasTag("http.request.resend_count".into())],
        ..Default::default()
    };
    assert_eq!(reader.count(&resends).unwrap(), 0);
}

/// A partition created before event fields were indexed takes documents
/// with events, without their event fields: the spans are stored whole
/// and found by their attributes.
#[test]
fn a_partition_created_before_event_fields_takes_documents_without_them() {
    for lacking in [schema::names::EVENTS, schema::names::DUPLICATE] {
        let dir = tempfile::tempdir().unwrap();
        let id = PartitionId::containing(NOW, DAY);
        let path = dir.path().join("spans").join(id.dir_name());
        std::fs::create_dir_all(&path).unwrap();
        tantivy::Index::create_in_dir(&path, schema_before(lacking)).unwrap();
        let mut store = open(dir.path());
        let mut filter = ResendFilter::new();
        let sent = with_events(batch("cart", 1, &[(1, 0, "GET /cart", NOW, 30, 0)]));
        apply_marked(&mut store, &mut filter, 1, &sent);
        store.commit().unwrap();
        let reader = store.reader();
        let trace = reader.trace(TraceId([1; 16])).unwrap().unwrap();
        assert_eq!(
            trace.spans[0].span, sent[0].scope_spans[0].spans[0],
            "{lacking}"
        );
        assert_eq!(
            reader
                .count(&tags(&[("http.request.method", "GET")]))
                .unwrap(),
            1,
            "{lacking}"
        );
        assert_eq!(
            reader
                .count(&tags(&[("exception.type", "Timeout")]))
                .unwrap(),
            0,
            "{lacking}: not indexed there"
        );
    }
}

/// A key with a field of its own is found where that field is not used
/// too: a string `http.response.status_code` (the field holds integers),
/// a resource's `http.route` (the field holds the span's).
#[test]
fn a_tag_is_found_beside_the_field_of_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let mut sent = batch("cart", 1, &[(1, 0, "GET /cart", NOW, 30, 0)]);
    sent[0].scope_spans[0].spans[0].attributes =
        vec![attributes::string("http.response.status_code", "503")];
    if let Some(resource) = &mut sent[0].resource {
        resource
            .attributes
            .push(attributes::string("http.route", "/cart"));
    }
    let typed = batch("cart", 2, &[(2, 0, "GET /cart", NOW, 30, 2)]);
    store.apply(1, &sent, TimeWindow::ALL, |_| {}).unwrap();
    store.apply(2, &typed, TimeWindow::ALL, |_| {}).unwrap();
    store.commit().unwrap();
    let reader = store.reader();
    assert_eq!(
        reader
            .count(&tags(&[("http.response.status_code", "503")]))
            .unwrap(),
        1
    );
    assert_eq!(
        reader
            .count(&tags(&[("http.response.status_code", "500")]))
            .unwrap(),
        1,
        "the integer, in its field"
    );
    assert_eq!(reader.count(&tags(&[("http.route", "/cart")])).unwrap(), 1);
}
