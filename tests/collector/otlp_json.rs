//! OTLP/JSON as the protobuf JSON mapping allows writing it (enums by
//! name, `null` for a field's default) is stored whole through the real
//! OTLP/HTTP endpoint, links its dependency edge, and is found by Jaeger's
//! search with `maxDuration=0` (no upper bound).

use tracemesh_collector::ids::TraceId;

use crate::harness::{Collector, http_request, now_nanos, random_trace_id, wait_for_trace};

/// A resource of `service` holding one span; `span` is the span's JSON.
fn resource(service: &str, span: &str) -> String {
    format!(
        r#"{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"{service}"}}}}]}},
            "scopeSpans":[{{"scope":null,"spans":[{span}]}}]}}"#
    )
}

fn get(collector: &Collector, path: &str) -> (u16, serde_json::Value) {
    let r = http_request(collector.http, "GET", path, &[], b"");
    let body = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&r.body)));
    (r.status, body)
}

#[test]
fn enum_names_and_nulls_are_stored_and_searchable_with_max_duration_zero() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let trace: TraceId = random_trace_id();
    let start = now_nanos();
    let end = start + 5_000_000;
    let parent = format!(
        r#"{{"traceId":"{trace}","spanId":"1111111111111111","name":"GET /pb2","kind":"SPAN_KIND_CLIENT",
            "startTimeUnixNano":"{start}","endTimeUnixNano":"{end}","attributes":null,"events":null,
            "status":{{"code":"STATUS_CODE_ERROR","message":"upstream reset"}}}}"#
    );
    let child = format!(
        r#"{{"traceId":"{trace}","spanId":"2222222222222222","parentSpanId":"1111111111111111",
            "name":"GET /","kind":"SPAN_KIND_SERVER","startTimeUnixNano":"{}","endTimeUnixNano":"{}",
            "attributes":null,"links":null,"status":{{"code":null}}}}"#,
        start + 1_000_000,
        end - 1_000_000
    );
    let body = format!(
        r#"{{"resourceSpans":[{},{}]}}"#,
        resource("pf2", &parent),
        resource("pb2", &child)
    );
    let r = http_request(
        collector.otlp_http,
        "POST",
        "/v1/traces",
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    let answer = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 200, "{answer}");
    assert!(!answer.contains("partialSuccess"), "{answer}");

    let stored = wait_for_trace(&collector.data_dir, trace, 2);
    let kinds_and_codes: Vec<(i32, i32)> = {
        let mut spans: Vec<_> = stored
            .spans
            .iter()
            .map(|s| (s.span.kind, s.span.status.as_ref().map_or(-1, |st| st.code)))
            .collect();
        spans.sort();
        spans
    };
    assert_eq!(kinds_and_codes, [(2, 0), (3, 2)]);

    // The call links as any other: pf2 -> pb2, failed (the client failed).
    let (status, deps) = get(&collector, "/api/dependencies");
    assert_eq!(status, 200, "{deps}");
    let edge = deps["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["parent"] == "pf2" && d["child"] == "pb2");
    assert!(edge.is_some(), "{deps}");

    // maxDuration=0 is no upper bound, as in Jaeger.
    for query in [
        "service=pf2&maxDuration=0",
        "service=pf2&minDuration=1ms&maxDuration=0s",
    ] {
        let (status, found) = get(&collector, &format!("/api/traces?{query}"));
        assert_eq!(status, 200, "{query}: {found}");
        let ids: Vec<&str> = found["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["traceID"].as_str())
            .collect();
        assert_eq!(ids, [trace.to_string()], "{query}: {found}");
    }
    let (status, _) = get(
        &collector,
        "/api/traces?service=pf2&minDuration=2ms&maxDuration=1ms",
    );
    assert_eq!(status, 400);
    let metrics = collector.metrics();
    assert!(
        metrics.contains("tracemesh_collector_dependency_edges_dropped_total 0"),
        "{metrics}"
    );
}
