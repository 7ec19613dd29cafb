//! What a service's numbers count (the requests it served, the calls it
//! made apart, errors as 5xx and local failures with 4xx beside them),
//! tag searches the same in every API (span fields, aliases, quoted
//! values), ordered searches, Jaeger UI 2.19's endpoints
//! (`/api/v3/trace-summaries`, `/api/transform`) pinned to Jaeger's
//! shapes, the Monitor tab's series, and ingest compatibility (OTLP/JSON
//! doubles as strings, Zipkin spans without timestamp or with shared ids).

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde_json::{Value, json};

use crate::data::{get, send};
use crate::harness::{Collector, eventually, http_request, now_nanos};

const MS: u64 = 1_000_000;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn code(code: i64) -> KeyValue {
    kv(
        "http.response.status_code",
        any_value::Value::IntValue(code),
    )
}

/// Trace `t`'s span `n` (parent `parent`, 0 for none).
fn span(
    t: u8,
    (n, parent): (u8, u8),
    kind: i32,
    (start, ms): (u64, u64),
    attributes: Vec<KeyValue>,
    error: bool,
) -> Span {
    Span {
        trace_id: trace_id(t).to_vec(),
        span_id: vec![t, n, 0, 0, 0, 0, 0, 1],
        parent_span_id: if parent == 0 {
            Vec::new()
        } else {
            vec![t, parent, 0, 0, 0, 0, 0, 1]
        },
        name: if kind == 2 {
            "GET /a".into()
        } else {
            "backend.default.svc.cluster.local:9080/*".into()
        },
        kind,
        start_time_unix_nano: start,
        end_time_unix_nano: start + ms * MS,
        attributes,
        status: error.then(|| Status {
            code: 2,
            message: "failed".into(),
        }),
        ..Default::default()
    }
}

fn trace_id(t: u8) -> [u8; 16] {
    let mut id = [0xee; 16];
    id[15] = t;
    id
}

fn hex(t: u8) -> String {
    trace_id(t).iter().map(|b| format!("{b:02x}")).collect()
}

/// gateway's traces: 1 served 200 (called backend once, a 503 retried),
/// 2 answered 429 (rate limited), 3 answered 503 (its call got a 404),
/// 4 timed out (ERROR, no status).
fn gateway(base: u64) -> ExportTraceServiceRequest {
    let s = |key: &str, value: &str| kv(key, any_value::Value::StringValue(value.into()));
    let spans = vec![
        span(1, (1, 0), 2, (base, 20), vec![code(200)], false),
        span(
            1,
            (2, 1),
            3,
            (base + MS, 15),
            vec![code(200), s("peer.service", "backend")],
            false,
        ),
        span(
            1,
            (3, 2),
            3,
            (base + MS, 2),
            vec![
                code(503),
                kv("http.request.resend_count", any_value::Value::IntValue(1)),
            ],
            true,
        ),
        span(
            2,
            (1, 0),
            2,
            (base + 100 * MS, 1),
            vec![
                code(429),
                s("tracemesh.response_flags", "RL"),
                s("note", "two words here"),
            ],
            true,
        ),
        span(3, (1, 0), 2, (base + 200 * MS, 30), vec![code(503)], true),
        span(3, (2, 1), 3, (base + 201 * MS, 5), vec![code(404)], true),
        span(4, (1, 0), 2, (base + 300 * MS, 50), vec![], true),
    ];
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![s("service.name", "gateway")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(
                    opentelemetry_proto::tonic::common::v1::InstrumentationScope {
                        name: "edge-proxy".into(),
                        ..Default::default()
                    },
                ),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn started(dir: &std::path::Path) -> (Collector, u64) {
    let collector = Collector::start(dir, &["--commit-interval", "200ms"]);
    let base = now_nanos() - 5 * 60 * 1_000_000_000;
    send(&collector, &gateway(base));
    eventually("gateway's 7 spans indexed", || {
        let (_, body) = get(&collector, "/api/v1/latency?service=gateway&kind=all");
        (body["count"] == 7).then_some(())
    });
    (collector, base)
}

fn trace_ids(body: &Value) -> Vec<String> {
    body["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trace_id"].as_str().unwrap().to_owned())
        .collect()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[test]
fn services_count_what_they_served_and_errors_are_5xx_and_local_failures() {
    let dir = tempfile::tempdir().unwrap();
    let (collector, _) = started(dir.path());

    let (_, red) = get(&collector, "/api/v1/red?service=gateway");
    assert_eq!(red["counted"]["view"], "inbound");
    assert!(
        red["counted"]["spans"]
            .as_str()
            .unwrap()
            .contains("SERVER spans"),
        "{red}"
    );
    let row = &red["rows"][0];
    assert_eq!(
        (
            row["calls"].clone(),
            row["errors"].clone(),
            row["client_errors"].clone()
        ),
        (json!(4), json!(2), json!(1)),
        "503 and the timeout are errors, the 429 is a 4xx: {red}"
    );
    assert_eq!(row["error_rate"], 0.5);
    let (_, outbound) = get(&collector, "/api/v1/errors?service=gateway&kind=outbound");
    assert_eq!(
        (
            outbound["calls"].clone(),
            outbound["errors"].clone(),
            outbound["client_errors"].clone()
        ),
        (json!(2), json!(0), json!(1)),
        "two calls made (the retry attempt is not one), the 404 is a 4xx: {outbound}"
    );
    let (_, every_client) = get(&collector, "/api/v1/latency?service=gateway&kind=client");
    assert_eq!(every_client["count"], 3, "kind=client counts attempts too");
    let (_, failed) = get(&collector, "/api/v1/traces?service=gateway&errors=true");
    assert_eq!(
        sorted(trace_ids(&failed)),
        [hex(1), hex(3), hex(4)],
        "a failed span each"
    );
    let (status, bad) = get(&collector, "/api/v1/latency?service=gateway&kind=sideways");
    assert_eq!(status, 400);
    assert!(
        bad["error"]["message"].as_str().unwrap().contains("'kind'"),
        "{bad}"
    );

    // The span-derived metrics on /metrics count the same way.
    let metrics = collector.metrics();
    for (direction, outcome, n) in [
        ("inbound", "success", 1),
        ("inbound", "client_error", 1),
        ("inbound", "error", 2),
        ("outbound", "client_error", 1),
        ("outbound", "success", 1),
    ] {
        let total: u64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("tracemesh_service_requests_total{")
                    && l.contains(&format!("direction=\"{direction}\""))
                    && l.contains(&format!("outcome=\"{outcome}\""))
                    && l.contains("service_name=\"gateway\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, n, "{direction} {outcome}");
    }
    collector.stop();
}

#[test]
fn every_shown_tag_is_searchable_the_same_way_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (collector, base) = started(dir.path());
    let native = |query: &str| {
        let (status, body) = get(
            &collector,
            &format!("/api/v1/traces?service=gateway&{query}"),
        );
        assert_eq!(status, 200, "{query}: {body}");
        sorted(trace_ids(&body))
    };
    let start_us = base / 1000 - 1;
    let jaeger = |tags: &str| {
        let tags: String = form_urlencoded::byte_serialize(tags.as_bytes()).collect();
        let (status, body) = get(
            &collector,
            &format!("/api/traces?service=gateway&tags={tags}&start={start_us}&lookback=2d"),
        );
        assert_eq!(status, 200, "{tags}: {body}");
        sorted(
            body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["traceID"].as_str().unwrap().to_owned())
                .collect(),
        )
    };
    let window = format!(
        "query.startTimeMin={}&query.startTimeMax={}",
        tracemesh_query::timefmt::rfc3339(base - 60_000 * MS),
        tracemesh_query::timefmt::rfc3339(base + 3_600_000 * MS)
    );
    let v3 = |attributes: &str| {
        let attributes: String = form_urlencoded::byte_serialize(attributes.as_bytes()).collect();
        let (status, body) = get(
            &collector,
            &format!(
                "/api/v3/trace-summaries?query.serviceName=gateway&query.attributes={attributes}&{window}"
            ),
        );
        assert_eq!(status, 200, "{attributes}: {body}");
        sorted(
            body["summaries"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|t| t["traceId"].as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default(),
        )
    };
    let cases: [(&str, &str, Vec<String>); 8] = [
        ("span.kind", "client", vec![hex(1), hex(3)]),
        (
            "otel.status_code",
            "ERROR",
            vec![hex(1), hex(2), hex(3), hex(4)],
        ),
        ("error", "true", vec![hex(1), hex(2), hex(3), hex(4)]),
        ("http.status_code", "429", vec![hex(2)]),
        ("response_flags", "RL", vec![hex(2)]),
        ("note", "two words here", vec![hex(2)]),
        ("otel.scope.name", "edge-proxy", (1..=4).map(hex).collect()),
        (
            "otel.status_description",
            "failed",
            vec![hex(1), hex(2), hex(3), hex(4)],
        ),
    ];
    for (key, value, expected) in cases {
        let tag: String =
            form_urlencoded::byte_serialize(format!("{key}={value}").as_bytes()).collect();
        assert_eq!(
            native(&format!("tag={tag}")),
            expected,
            "native tag {key}={value}"
        );
        let list: String =
            form_urlencoded::byte_serialize(format!("{key}=\"{value}\"").as_bytes()).collect();
        assert_eq!(
            native(&format!("tags={list}")),
            expected,
            "native tags {key}=\"{value}\""
        );
        assert_eq!(
            jaeger(&json!({key: value}).to_string()),
            expected,
            "Jaeger tags {key}={value}"
        );
        assert_eq!(
            v3(&json!({key: value}).to_string()),
            expected,
            "api_v3 {key}={value}"
        );
    }
    let (status, body) = get(
        &collector,
        "/api/v1/traces?service=gateway&tags=note%3D%22open",
    );
    assert_eq!(status, 400, "{body}");

    // Ordered searches: most spans, longest, most errors.
    let first = |sort: &str| {
        let (_, body) = get(
            &collector,
            &format!("/api/v1/traces?service=gateway&sort={sort}&limit=1"),
        );
        trace_ids(&body)
    };
    assert_eq!(first("most_spans"), [hex(1)]);
    assert_eq!(first("longest"), [hex(4)]);
    assert_eq!(first("shortest"), [hex(2)]);
    assert_eq!(first("newest"), [hex(4)]);
    let (_, most_errors) = get(
        &collector,
        "/api/v1/traces?service=gateway&sort=most_errors&limit=4",
    );
    assert_eq!(
        most_errors["traces"][3]["trace_id"],
        hex(2),
        "a 429 is no error: {most_errors}"
    );
    collector.stop();
}

/// A zero `max_duration` is no bound in the native API, as `maxDuration=0`
/// and `query.durationMax=0` are in the Jaeger ones. (It used to find
/// only spans of no duration: nothing.)
#[test]
fn a_zero_max_duration_is_no_bound_in_the_native_api() {
    let dir = tempfile::tempdir().unwrap();
    let (collector, _) = started(dir.path());
    for zero in ["0", "0s", "0ms"] {
        let (status, all) = get(
            &collector,
            &format!("/api/v1/traces?service=gateway&max_duration={zero}"),
        );
        assert_eq!(status, 200, "{all}");
        assert_eq!(
            sorted(trace_ids(&all)),
            (1..=4).map(hex).collect::<Vec<_>>(),
            "{zero}"
        );
        let (_, long) = get(
            &collector,
            &format!("/api/v1/traces?service=gateway&min_duration=25ms&max_duration={zero}"),
        );
        assert_eq!(sorted(trace_ids(&long)), [hex(3), hex(4)], "{zero}");
        let (_, latency) = get(
            &collector,
            &format!("/api/v1/latency?service=gateway&kind=all&max_duration={zero}"),
        );
        assert_eq!(latency["count"], 7, "{zero}: {latency}");
    }
    // Any other maximum is a bound.
    let (_, short) = get(
        &collector,
        "/api/v1/latency?service=gateway&kind=all&max_duration=2ms",
    );
    assert_eq!(short["count"], 2, "{short}");
    collector.stop();
}

/// A maximum duration below the minimum is refused with 400, naming both,
/// in every API, as Jaeger's query parser refuses it: the native API and
/// API v3 answered an empty search, which reads as "no such traces".
#[test]
fn a_maximum_duration_below_the_minimum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (collector, _) = started(dir.path());
    for (path, message) in [
        (
            "/api/v1/traces?service=gateway&min_duration=25ms&max_duration=2ms",
            "'max_duration' should be greater than 'min_duration'",
        ),
        (
            "/api/v1/latency?service=gateway&kind=all&min_duration=25ms&max_duration=2ms",
            "'max_duration' should be greater than 'min_duration'",
        ),
        (
            "/api/traces?service=gateway&minDuration=25ms&maxDuration=2ms",
            "'maxDuration' should be greater than 'minDuration'",
        ),
        (
            "/api/v3/traces?query.service_name=gateway&query.duration_min=25ms&query.duration_max=2ms&query.start_time_min=1970-01-01T00:00:00Z&query.start_time_max=2100-01-01T00:00:00Z",
            "'query.duration_max' should be greater than 'query.duration_min'",
        ),
    ] {
        let (status, body) = get(&collector, path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.to_string().contains(message), "{path}: {body}");
    }
    // Equal bounds are a range.
    let (status, _) = get(
        &collector,
        "/api/v1/traces?service=gateway&min_duration=2ms&max_duration=2ms",
    );
    assert_eq!(status, 200);
    collector.stop();
}

/// ledger's traces, for searches by event (Jaeger log) fields: 1, a gold
/// customer's request with a Timeout exception event; 2, a silver one
/// with a Timeout and a retry (attempt 2) event; 3, a gold one whose
/// Timeout event is on its client call, not on the gold span; 4, a
/// bronze one whose client call has a retry event carrying
/// `http.request.resend_count` (on the event, not the span: still a call).
fn ledger(base: u64) -> ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::trace::v1::span::Event;
    let s = |key: &str, value: &str| kv(key, any_value::Value::StringValue(value.into()));
    let event = |name: &str, attributes: Vec<KeyValue>| Event {
        time_unix_nano: base + MS,
        name: name.into(),
        attributes,
        ..Default::default()
    };
    let timeout = || event("exception", vec![s("exception.type", "Timeout")]);
    let mut one = span(1, (1, 0), 2, (base, 20), vec![s("tier", "gold")], false);
    one.events = vec![timeout()];
    let mut two = span(
        2,
        (1, 0),
        2,
        (base + 100 * MS, 20),
        vec![s("tier", "silver")],
        false,
    );
    two.events = vec![
        timeout(),
        event("retry", vec![kv("attempt", any_value::Value::IntValue(2))]),
    ];
    let three = span(
        3,
        (1, 0),
        2,
        (base + 200 * MS, 20),
        vec![s("tier", "gold")],
        false,
    );
    let mut three_call = span(3, (2, 1), 3, (base + 201 * MS, 5), vec![], false);
    three_call.events = vec![timeout()];
    let four = span(
        4,
        (1, 0),
        2,
        (base + 300 * MS, 20),
        vec![s("tier", "bronze")],
        false,
    );
    let mut four_call = span(4, (2, 1), 3, (base + 301 * MS, 5), vec![], false);
    four_call.events = vec![event(
        "retry",
        vec![kv(
            "http.request.resend_count",
            any_value::Value::IntValue(1),
        )],
    )];
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    s("service.name", "ledger"),
                    s("deployment.environment", "prod"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![one, two, three, three_call, four, four_call],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A tag search matches span attributes, resource (process) attributes
/// and event (log) fields, the event's name as `event` included, as
/// Jaeger's stores match span tags, process tags and log fields (the
/// memory store's `flattenTags`, Badger's tag index, Elasticsearch's
/// `logs.fields`): every tag must match (AND) on one span, each in any of
/// those places. The same in every API: Jaeger's `tags` and `tag`,
/// api_v3's `query.attributes`, the native `tag` and `tags`, and the
/// native statistics. (Event fields used to match nothing.)
#[test]
fn tag_searches_match_event_fields_as_jaeger_does_in_every_api() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let base = now_nanos() - 5 * 60 * 1_000_000_000;
    send(&collector, &ledger(base));
    eventually("ledger's 6 spans indexed", || {
        let (_, body) = get(&collector, "/api/v1/latency?service=ledger&kind=all");
        (body["count"] == 6).then_some(())
    });
    let encode =
        |text: &str| -> String { form_urlencoded::byte_serialize(text.as_bytes()).collect() };
    let start_us = base / 1000 - 1;
    let window = format!(
        "query.startTimeMin={}&query.startTimeMax={}",
        tracemesh_query::timefmt::rfc3339(base - 60_000 * MS),
        tracemesh_query::timefmt::rfc3339(base + 3_600_000 * MS)
    );
    let jaeger_ids = |body: &Value| {
        sorted(
            body["data"]
                .as_array()
                .unwrap_or_else(|| panic!("{body}"))
                .iter()
                .map(|t| t["traceID"].as_str().unwrap().to_owned())
                .collect(),
        )
    };
    /// Tags, each `(key, value)`.
    type Tags<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Tags, Vec<String>); 9] = [
        (
            &[("exception.type", "Timeout")],
            vec![hex(1), hex(2), hex(3)],
        ),
        (&[("event", "exception")], vec![hex(1), hex(2), hex(3)]),
        (&[("event", "retry")], vec![hex(2), hex(4)]),
        (&[("attempt", "2")], vec![hex(2)]),
        // Every tag on one span, each in any place: an attribute and an
        // event field, two events' fields, a resource attribute and an
        // event's name.
        (
            &[("tier", "gold"), ("exception.type", "Timeout")],
            vec![hex(1)],
        ),
        (
            &[("exception.type", "Timeout"), ("attempt", "2")],
            vec![hex(2)],
        ),
        (
            &[("deployment.environment", "prod"), ("event", "retry")],
            vec![hex(2), hex(4)],
        ),
        (&[("tier", "gold"), ("event", "retry")], vec![]),
        (&[("exception.type", "Deadline")], vec![]),
    ];
    for (tags, expected) in cases {
        let native_tag: String = tags
            .iter()
            .map(|(k, v)| format!("&tag={}", encode(&format!("{k}={v}"))))
            .collect();
        let (status, body) = get(
            &collector,
            &format!("/api/v1/traces?service=ledger{native_tag}"),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(sorted(trace_ids(&body)), expected, "native tag {tags:?}");
        let list: Vec<String> = tags.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let (_, body) = get(
            &collector,
            &format!(
                "/api/v1/traces?service=ledger&tags={}",
                encode(&list.join(" "))
            ),
        );
        assert_eq!(sorted(trace_ids(&body)), expected, "native tags {tags:?}");
        let object: serde_json::Map<String, Value> = tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let object = Value::Object(object).to_string();
        let (status, body) = get(
            &collector,
            &format!(
                "/api/traces?service=ledger&tags={}&start={start_us}&lookback=2d",
                encode(&object)
            ),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(jaeger_ids(&body), expected, "Jaeger tags {tags:?}");
        let jaeger_tag: String = tags
            .iter()
            .map(|(k, v)| format!("&tag={}", encode(&format!("{k}:{v}"))))
            .collect();
        let (_, body) = get(
            &collector,
            &format!("/api/traces?service=ledger{jaeger_tag}&start={start_us}&lookback=2d"),
        );
        assert_eq!(jaeger_ids(&body), expected, "Jaeger tag {tags:?}");
        let (status, body) = get(
            &collector,
            &format!(
                "/api/v3/traces?query.serviceName=ledger&query.attributes={}&{window}",
                encode(&object)
            ),
        );
        let v3: Vec<String> = if status == 404 {
            Vec::new()
        } else {
            assert_eq!(status, 200, "{body}");
            let mut ids: Vec<String> = body["result"]["resourceSpans"]
                .as_array()
                .unwrap_or_else(|| panic!("{body}"))
                .iter()
                .flat_map(|r| r["scopeSpans"].as_array().unwrap().clone())
                .flat_map(|s| s["spans"].as_array().unwrap().clone())
                .map(|span| span["traceId"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids.dedup();
            ids
        };
        assert_eq!(v3, expected, "api_v3 {tags:?}: {body}");
    }

    // The native statistics filter the same way: the spans with the
    // event field.
    let (_, latency) = get(
        &collector,
        &format!(
            "/api/v1/latency?service=ledger&kind=all&tag={}",
            encode("exception.type=Timeout")
        ),
    );
    assert_eq!(latency["count"], 3, "{latency}");
    // An event's attribute is no span attribute: the call whose retry
    // event carries http.request.resend_count is still a call made.
    let (_, outbound) = get(&collector, "/api/v1/latency?service=ledger&kind=outbound");
    assert_eq!(outbound["count"], 2, "{outbound}");
    collector.stop();
}

#[test]
fn jaeger_ui_2_19_endpoints_answer_in_jaegers_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let (collector, base) = started(dir.path());
    let window = format!(
        "query.startTimeMin={}&query.startTimeMax={}",
        tracemesh_query::timefmt::rfc3339(base - 60_000 * MS),
        tracemesh_query::timefmt::rfc3339(base + 3_600_000 * MS)
    );

    // Trace summaries, field for field as the gateway writes
    // FindTraceSummariesResponse (zero values left out, int64 as strings).
    let (status, body) = get(
        &collector,
        &format!(
            "/api/v3/trace-summaries?query.serviceName=gateway&query.attributes=%7B%22span.kind%22%3A%22client%22%7D&query.searchDepth=20&{window}"
        ),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["summaries"][1],
        json!({
            "traceId": hex(1),
            "rootServiceName": "gateway",
            "rootOperationName": "GET /a",
            "minStartTimeUnixNano": base.to_string(),
            "maxEndTimeUnixNano": (base + 20 * MS).to_string(),
            "spanCount": 3,
            "errorSpanCount": 1,
            "services": [{"name": "gateway", "spanCount": 3, "errorSpanCount": 1}],
        }),
        "{body}"
    );
    let (status, body) = get(
        &collector,
        &format!("/api/v3/trace-summaries?query.serviceName=nobody&{window}"),
    );
    assert_eq!(
        (status, body),
        (200, json!({})),
        "no match is an empty answer"
    );
    let (status, body) = get(
        &collector,
        "/api/v3/trace-summaries?query.serviceName=gateway",
    );
    assert_eq!(status, 400);
    assert_eq!(body["error"]["httpCode"], 400, "{body}");

    // /api/transform: an OTLP JSON file → Jaeger's UI model, doubles as
    // strings included.
    let upload = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "telemetrygen"}}]},
        "scopeSpans": [{"scope": {"name": "telemetrygen"}, "spans": [
            {"traceId": "83a9efd15c1c98a977e0711cc93ee28b", "spanId": "e127af99e3b3e074", "parentSpanId": "909541b92cf05311",
             "name": "okey-dokey-0", "kind": 2, "startTimeUnixNano": "1706678909209712000", "endTimeUnixNano": "1706678909209835000",
             "attributes": [{"key": "ratio", "value": {"doubleValue": "1.5"}}, {"key": "odd", "value": {"doubleValue": "NaN"}}], "status": {}},
            {"traceId": "83a9efd15c1c98a977e0711cc93ee28c", "spanId": "e127af99e3b3e075",
             "name": "other", "kind": 3, "startTimeUnixNano": "1706678909209712000", "endTimeUnixNano": "1706678909209835000"}
        ]}]
    }]});
    let response = http_request(
        collector.http,
        "POST",
        "/api/transform",
        &[("content-type", "application/json")],
        upload.to_string().as_bytes(),
    );
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(
        (
            body["total"].clone(),
            body["limit"].clone(),
            body["offset"].clone(),
            body["errors"].clone()
        ),
        (json!(0), json!(0), json!(0), Value::Null)
    );
    let traces = body["data"].as_array().unwrap();
    assert_eq!(traces.len(), 2, "one per trace id");
    crate::api::check_trace_shape(&traces[0]);
    let span = &traces[0]["spans"][0];
    assert_eq!(span["traceID"], "83a9efd15c1c98a977e0711cc93ee28b");
    assert_eq!(span["spanID"], "e127af99e3b3e074");
    assert_eq!(span["startTime"], 1_706_678_909_209_712u64);
    assert_eq!(span["duration"], 123);
    assert_eq!(
        span["references"],
        json!([{"refType": "CHILD_OF", "traceID": "83a9efd15c1c98a977e0711cc93ee28b", "spanID": "909541b92cf05311"}])
    );
    assert!(
        span["tags"]
            .as_array()
            .unwrap()
            .contains(&json!({"key": "ratio", "type": "float64", "value": 1.5})),
        "{span}"
    );
    assert_eq!(traces[0]["processes"]["p1"]["serviceName"], "telemetrygen");
    let response = http_request(
        collector.http,
        "POST",
        "/api/transform",
        &[],
        b"{\"resourceSpans\": 7}",
    );
    assert_eq!(response.status, 400);
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["errors"][0]["code"], 400, "{body}");

    // The Monitor tab: no point before the service's first span.
    let end_ms = base / MS + 120_000;
    let (status, calls) = get(
        &collector,
        &format!(
            "/api/metrics/calls?service=gateway&endTs={end_ms}&lookback=900000&step=60000&ratePer=60000"
        ),
    );
    assert_eq!(status, 200, "{calls}");
    let points = calls["metrics"][0]["metricPoints"].as_array().unwrap();
    assert!(!points.is_empty() && points.len() <= 4, "{calls}");
    let first =
        tracemesh_query::timefmt::parse_rfc3339(points[0]["timestamp"].as_str().unwrap()).unwrap();
    assert!(
        first > base,
        "the first point ends the step of the first span: {calls}"
    );
    assert!(points[0]["gaugeValue"]["doubleValue"].as_f64().unwrap() > 0.0);
    // spanKind as Jaeger reads it: `unspecified` is a kind, and several
    // kinds are counted together (both used to be a 400). A window of two
    // steps holds every span, wherever a step boundary falls.
    let peak = |kinds: &str| {
        let (status, calls) = get(
            &collector,
            &format!(
                "/api/metrics/calls?service=gateway{kinds}&endTs={end_ms}&lookback=900000&step=60000&ratePer=120000"
            ),
        );
        assert_eq!(status, 200, "{kinds}: {calls}");
        calls["metrics"][0]["metricPoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["gaugeValue"]["doubleValue"].as_f64().unwrap())
            .fold(0.0, f64::max)
    };
    assert_eq!(peak(""), 4.0 / 120.0, "4 SERVER spans in two minutes");
    assert_eq!(peak("&spanKind=server&spanKind=client"), 7.0 / 120.0);
    assert_eq!(peak("&spanKind=unspecified"), 0.0, "no UNSPECIFIED span");
    let (status, body) = get(
        &collector,
        "/api/metrics/calls?service=gateway&spanKind=sideways",
    );
    assert_eq!(status, 400, "{body}");

    // Older UIs: /api/traces ignores a lookback it cannot read when no start is given.
    let (status, body) = get(
        &collector,
        "/api/traces?service=gateway&lookback=2d&limit=2",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    collector.stop();
}

#[test]
fn ingest_takes_string_doubles_and_zipkin_as_jaeger_does() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let micros = now_nanos() / 1000;

    // OTLP/JSON doubles written as strings are accepted.
    let body = json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "meter"}}]},
        "scopeSpans": [{"spans": [{"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "read",
            "startTimeUnixNano": (micros * 1000).to_string(), "endTimeUnixNano": (micros * 1000 + 1000).to_string(),
            "attributes": [{"key": "load", "value": {"doubleValue": "0.25"}}, {"key": "limit", "value": {"doubleValue": "Infinity"}}]}]}]}]});
    let response = http_request(
        collector.otlp_http,
        "POST",
        "/v1/traces",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );

    // A request sent twice, as an OTLP exporter resends one whose answer
    // timed out: checkout's request (b1), its call to payments (b2) and
    // payments' side of it (b3). Every answer counts each span once.
    let resent = resent_request(micros * 1000);
    for _ in 0..2 {
        let response = http_request(
            collector.otlp_http,
            "POST",
            "/v1/traces",
            &[("content-type", "application/json")],
            resent.as_bytes(),
        );
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
    }

    // Zipkin: client and server halves sharing an id, and a span without timestamp.
    let zipkin = format!(
        r#"[{{"traceId":"5af7183fb1d4cf5f","id":"352bff9a74ca9ad2","kind":"CLIENT","name":"get /api","timestamp":{micros},"duration":2000,
             "localEndpoint":{{"serviceName":"frontend"}}}},
            {{"traceId":"5af7183fb1d4cf5f","id":"352bff9a74ca9ad2","kind":"SERVER","name":"get /api","timestamp":{},"duration":1000,
             "localEndpoint":{{"serviceName":"backend"}},"shared":true}},
            {{"traceId":"5af7183fb1d4cf5f","parentId":"352bff9a74ca9ad2","id":"452bff9a74ca9ad2","kind":"CLIENT","name":"select",
             "timestamp":{},"duration":500,"localEndpoint":{{"serviceName":"backend"}}}},
            {{"traceId":"5af7183fb1d4cf5f","id":"552bff9a74ca9ad2","parentId":"352bff9a74ca9ad2","name":"late",
             "localEndpoint":{{"serviceName":"backend"}}}}]"#,
        micros + 100,
        micros + 200
    );
    let response = http_request(
        collector.zipkin,
        "POST",
        "/api/v2/spans",
        &[("content-type", "application/json")],
        zipkin.as_bytes(),
    );
    assert_eq!(
        response.status,
        202,
        "{}",
        String::from_utf8_lossy(&response.body)
    );

    let meter = eventually("the OTLP/JSON span", || {
        let (status, body) = get(&collector, "/api/traces/0af7651916cd43dd8448eb211c80319c");
        (status == 200).then_some(body)
    });
    let tags = meter["data"][0]["spans"][0]["tags"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        tags.contains(&json!({"key": "load", "type": "float64", "value": 0.25})),
        "{tags:?}"
    );

    let trace = eventually("the Zipkin trace's four spans", || {
        let (status, body) = get(&collector, "/api/traces/5af7183fb1d4cf5f");
        (status == 200 && body["data"][0]["spans"].as_array()?.len() == 4).then_some(body)
    });
    let spans = trace["data"][0]["spans"].as_array().unwrap();
    let by_name_kind = |name: &str, kind: &str| {
        spans
            .iter()
            .find(|s| {
                s["operationName"] == name
                    && s["tags"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|t| t["key"] == "span.kind" && t["value"] == kind)
            })
            .unwrap_or_else(|| panic!("{name} {kind} in {trace}"))
    };
    let client = by_name_kind("get /api", "client");
    let server = by_name_kind("get /api", "server");
    let select = by_name_kind("select", "client");
    assert_eq!(client["spanID"], "352bff9a74ca9ad2");
    assert_ne!(
        server["spanID"], client["spanID"],
        "distinct ids, as Jaeger gives them"
    );
    assert_eq!(
        server["references"][0]["spanID"], "352bff9a74ca9ad2",
        "the server half is the client's child"
    );
    assert_eq!(
        select["references"][0]["spanID"], server["spanID"],
        "the server's own call hangs under it"
    );

    // The Zipkin batch resent, gzipped. Its spans with a timestamp are
    // copies; "late" had none, so its second arrival is another span (the
    // same ids, another start), which stays.
    let response = http_request(
        collector.zipkin,
        "POST",
        "/api/v2/spans",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        &gzip(zipkin.as_bytes()),
    );
    assert_eq!(
        response.status,
        202,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    // Indexed in order: once the resent "late" is in, so is everything before it.
    let trace = eventually("the resent Zipkin batch", || {
        let (_, body) = get(&collector, "/api/traces/5af7183fb1d4cf5f");
        (body["data"][0]["spans"].as_array()?.len() >= 5).then_some(body)
    });
    let mut names: Vec<&str> = trace["data"][0]["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["operationName"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["get /api", "get /api", "late", "late", "select"],
        "client, server and select once; late twice: {trace}"
    );

    let trace_id = "d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0";
    let (status, body) = get(&collector, &format!("/api/traces/{trace_id}"));
    assert_eq!(status, 200, "{body}");
    let span_ids = |trace: &Value| -> Vec<String> {
        let mut ids: Vec<String> = trace["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["spanID"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let once = ["00000000000000b1", "00000000000000b2", "00000000000000b3"];
    assert_eq!(span_ids(&body["data"][0]), once, "trace by id: {body}");
    let (_, found) = get(&collector, "/api/traces?service=checkout");
    assert_eq!(found["data"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(span_ids(&found["data"][0]), once, "search: {found}");
    let (_, v3) = get(&collector, &format!("/api/v3/traces/{trace_id}"));
    let v3_spans: usize = v3["result"]["resourceSpans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["scopeSpans"][0]["spans"].as_array().unwrap().len())
        .sum();
    assert_eq!(v3_spans, 3, "api_v3: {v3}");
    let now = now_nanos();
    let (_, summaries) = get(
        &collector,
        &format!(
            "/api/v3/trace-summaries?query.serviceName=checkout&query.startTimeMin={}&query.startTimeMax={}",
            tracemesh_query::timefmt::rfc3339(now - 3_600_000 * MS),
            tracemesh_query::timefmt::rfc3339(now + 60_000 * MS)
        ),
    );
    assert_eq!(summaries["summaries"][0]["spanCount"], 3, "{summaries}");
    let (_, native) = get(&collector, "/api/v1/traces?service=checkout&since=1h");
    assert_eq!(native["traces"][0]["spans"], 3, "{native}");
    let (_, ordered) = get(
        &collector,
        "/api/v1/traces?service=checkout&since=1h&sort=most_spans",
    );
    assert_eq!(ordered["traces"][0]["spans"], 3, "{ordered}");

    let (_, latency) = get(&collector, "/api/v1/latency?service=checkout&since=1h");
    assert_eq!(latency["count"], 1, "requests served: {latency}");
    let (_, latency) = get(
        &collector,
        "/api/v1/latency?service=checkout&kind=all&since=1h",
    );
    assert_eq!(latency["count"], 2, "every span: {latency}");
    let (_, red) = get(
        &collector,
        "/api/v1/red?service=checkout&kind=outbound&since=1h",
    );
    assert_eq!(red["rows"][0]["calls"], 1, "calls made: {red}");
    let (_, deps) = get(&collector, "/api/v1/dependencies?since=2h");
    assert!(
        deps["edges"]
            .as_array()
            .unwrap()
            .contains(&json!({"parent": "checkout", "child": "payments", "calls": 1, "errors": 0})),
        "{deps}"
    );
    let (_, deps) = get(
        &collector,
        &format!("/api/dependencies?endTs={}&lookback=7200000", now / MS),
    );
    assert!(
        deps["data"]
            .as_array()
            .unwrap()
            .contains(&json!({"parent": "checkout", "child": "payments", "callCount": 1})),
        "{deps}"
    );

    // The span-derived metrics count each span once too.
    let metrics = collector.metrics();
    let sum = |name: &str, label: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let checkout = "service_name=\"checkout\"";
    assert_eq!(
        (
            sum("tracemesh_service_requests_total", checkout),
            sum("traces_span_metrics_calls_total", checkout),
            sum(
                "traces_service_graph_request_total",
                "client=\"checkout\",connection_type=\"\",server=\"payments\""
            ),
        ),
        (2.0, 2.0, 1.0),
        "served once, called once"
    );
    assert_eq!(
        crate::harness::sample(&metrics, "tracemesh_collector_index_duplicate_spans_total"),
        6.0,
        "b1, b2, b3, and Zipkin's client, server and select"
    );
    collector.stop();
}

/// The report's request as OTLP/JSON: trace d0d0…, checkout's SERVER span
/// b1, its CLIENT span b2 and payments' SERVER span b3, starting at `start`.
fn resent_request(start: u64) -> String {
    let span = |id: &str, parent: Option<&str>, kind: u8, name: &str, offset_ms: u64, ms: u64| {
        let mut span = json!({"traceId": "d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0",
            "spanId": format!("00000000000000{id}"), "name": name, "kind": kind,
            "startTimeUnixNano": (start + offset_ms * MS).to_string(),
            "endTimeUnixNano": (start + (offset_ms + ms) * MS).to_string(),
            "attributes": [{"key": "http.response.status_code", "value": {"intValue": "200"}}]});
        if let Some(parent) = parent {
            span["parentSpanId"] = format!("00000000000000{parent}").into();
        }
        span
    };
    let service = |name: &str, spans: Vec<Value>| {
        json!({"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": name}}]},
            "scopeSpans": [{"scope": {"name": "shop"}, "spans": spans}]})
    };
    json!({"resourceSpans": [
        service("checkout", vec![
            span("b1", None, 2, "POST /checkout", 0, 20),
            span("b2", Some("b1"), 3, "POST /pay", 2, 15),
        ]),
        service("payments", vec![span("b3", Some("b2"), 2, "POST /pay", 3, 12)]),
    ]})
    .to_string()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn explain_ranks_the_hop_that_slowed_a_service_between_two_windows() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let now = now_nanos();
    let minute = 60_000 * MS;
    // shop calls payments; payments took 10 ms 25 minutes ago and 60 ms in
    // the last 10 minutes; shop's own work stayed at 5 ms.
    let resource = |service: &str, spans: Vec<Span>| ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv(
                "service.name",
                any_value::Value::StringValue(service.into()),
            )],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    };
    let (mut shop, mut payments) = (Vec::new(), Vec::new());
    for i in 0..40u8 {
        let (start, work) = if i < 20 {
            (now - 25 * minute + u64::from(i) * 1000 * MS, 10)
        } else {
            (now - 5 * minute + u64::from(i) * 1000 * MS, 60)
        };
        let t = 100 + i;
        let mut server = span(t, (1, 0), 2, (start, work + 7), vec![], false);
        server.name = "POST /checkout".into();
        let mut client = span(t, (2, 1), 3, (start + 5 * MS, work + 1), vec![], false);
        client.attributes.push(kv(
            "peer.service",
            any_value::Value::StringValue("payments".into()),
        ));
        let mut callee = span(t, (3, 2), 2, (start + 5 * MS, work), vec![], false);
        callee.name = "POST /pay".into();
        shop.extend([server, client]);
        payments.push(callee);
    }
    send(
        &collector,
        &ExportTraceServiceRequest {
            resource_spans: vec![resource("shop", shop), resource("payments", payments)],
        },
    );
    eventually("120 spans indexed", || {
        let (_, body) = get(&collector, "/api/v1/latency?kind=all&since=1h");
        (body["count"] == 120).then_some(())
    });
    let (status, body) = get(
        &collector,
        "/api/v1/explain?service=shop&since=10m&baseline_since=30m&baseline_until=20m",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mode"], "windows");
    assert_eq!(
        (
            body["current"]["requests"].clone(),
            body["baseline"]["requests"].clone()
        ),
        (json!(20), json!(20))
    );
    let top = &body["hops"][0];
    assert_eq!(
        (top["service"].clone(), top["operation"].clone()),
        (json!("payments"), json!("POST /pay")),
        "{body}"
    );
    assert!(
        (top["added_ms"].as_f64().unwrap() - 50.0).abs() < 0.5,
        "{body}"
    );
    assert_eq!(body["services"][0][0], "payments");
    let shop_row = body["hops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["service"] == "shop")
        .unwrap();
    assert!(
        shop_row["added_ms"].as_f64().unwrap().abs() < 0.5,
        "shop's own time did not change: {body}"
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tracemesh"))
        .args([
            "query",
            "explain",
            "--service",
            "shop",
            "--since",
            "10m",
            "--baseline-since",
            "30m",
            "--baseline-until",
            "20m",
        ])
        .args(["--server", &format!("http://{}", collector.http)])
        .output()
        .unwrap();
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        table.lines().nth(3).unwrap().starts_with("payments"),
        "{table}"
    );
    collector.stop();
}

/// A VirtualService `mirror` makes the agent send a copy of each request
/// and report its CLIENT span with `tracemesh.mirror=true`. The copy is
/// fire and forget (Envoy's shadow goes through an async client outside
/// the HTTP filter chain, so Istio never counts it as a
/// `reporter="source"` request): the outbound view and the span-derived
/// metrics count the one call the service made, and a failing mirror
/// target raises no error rate, while the mirror's span stays stored,
/// counted by `kind=client` and searchable. (Mirror copies used to double
/// the calls made, and a 503 from the mirror counted as a failed call.)
#[test]
fn mirrored_copies_are_no_calls_made_and_stay_searchable() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let base = now_nanos() - 5 * 60 * 1_000_000_000;
    let mut call = span(1, (2, 1), 3, (base + MS, 5), vec![code(200)], false);
    call.name = "backend.default.svc.cluster.local:9080/*".into();
    let mut mirror = span(
        1,
        (3, 1),
        3,
        (base + MS, 7),
        vec![
            code(503),
            kv("tracemesh.mirror", any_value::Value::BoolValue(true)),
        ],
        true,
    );
    mirror.name = "backend-shadow:9080 mirror".into();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    any_value::Value::StringValue("shop".into()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    span(1, (1, 0), 2, (base, 20), vec![code(200)], false),
                    call,
                    mirror,
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    send(&collector, &request);
    eventually("shop's 3 spans indexed", || {
        let (_, body) = get(&collector, "/api/v1/latency?service=shop&kind=all");
        (body["count"] == 3).then_some(())
    });

    let (_, outbound) = get(&collector, "/api/v1/errors?service=shop&kind=outbound");
    assert_eq!(
        (outbound["calls"].clone(), outbound["errors"].clone()),
        (json!(1), json!(0)),
        "one call made, and it succeeded: {outbound}"
    );
    assert!(
        outbound["counted"]["spans"]
            .as_str()
            .unwrap()
            .contains("mirrored copies left out"),
        "{outbound}"
    );
    let (_, red) = get(&collector, "/api/v1/red?service=shop&kind=outbound");
    assert_eq!(red["rows"][0]["calls"], 1, "{red}");
    assert_eq!(red["rows"][0]["error_rate"], 0.0, "{red}");
    let (_, every_client) = get(&collector, "/api/v1/latency?service=shop&kind=client");
    assert_eq!(
        every_client["count"], 2,
        "kind=client counts the copy: {every_client}"
    );
    let (status, found) = get(
        &collector,
        "/api/v1/traces?service=shop&tag=tracemesh.mirror%3Dtrue",
    );
    assert_eq!(status, 200, "{found}");
    assert_eq!(trace_ids(&found), [hex(1)], "the copy's span is searchable");

    let metrics = collector.metrics();
    let outbound: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("tracemesh_service_requests_total{")
                && l.contains("direction=\"outbound\"")
                && l.contains("service_name=\"shop\"")
        })
        .collect();
    assert_eq!(
        outbound,
        [
            "tracemesh_service_requests_total{direction=\"outbound\",operation=\"backend.default.svc.cluster.local:9080/*\",outcome=\"success\",service_name=\"shop\"} 1"
        ],
        "{metrics}"
    );
    collector.stop();
}
