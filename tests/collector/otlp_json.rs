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

/// `null` for a scalar field (string, bytes, 32- and 64-bit integers,
/// bool, double, enum, a oneof member) is that field's default, as the
/// protobuf JSON mapping says and protobuf's own parser reads it: the
/// request is taken whole, traces and metrics alike. (Such a request used
/// to be refused, or its span left out.)
#[test]
fn null_scalars_are_their_fields_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let trace: TraceId = random_trace_id();
    let start = now_nanos();
    let span = format!(
        r#"{{"traceId":"{trace}","spanId":"3333333333333333","parentSpanId":null,"traceState":null,
            "flags":null,"name":"GET /nulls","kind":null,"startTimeUnixNano":"{start}",
            "endTimeUnixNano":"{}","droppedAttributesCount":null,"droppedEventsCount":null,
            "droppedLinksCount":null,
            "attributes":[{{"key":"s","value":{{"stringValue":null}}}},{{"key":"i","value":{{"intValue":null}}}},
              {{"key":"b","value":{{"boolValue":null}}}},{{"key":"d","value":{{"doubleValue":null}}}},
              {{"key":"x","value":{{"bytesValue":null}}}},{{"key":"kept","value":{{"stringValue":"yes"}}}}],
            "events":[{{"timeUnixNano":"{start}","name":"retry","attributes":null,"droppedAttributesCount":null}}],
            "links":[{{"traceId":"{trace}","spanId":"4444444444444444","traceState":null,"flags":null}}],
            "status":{{"message":null,"code":null}}}}"#,
        start + 2_000_000
    );
    let body = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"nulls"}}}}],
            "droppedAttributesCount":null}},"schemaUrl":null,
            "scopeSpans":[{{"scope":{{"name":null,"version":null}},"schemaUrl":null,"spans":[{span}]}}]}}]}}"#
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
    let stored = wait_for_trace(&collector.data_dir, trace, 1);
    let span = &stored.spans[0].span;
    assert_eq!(span.name, "GET /nulls");
    assert!(span.parent_span_id.is_empty() && span.trace_state.is_empty());
    assert_eq!(
        (span.kind, span.flags, span.dropped_attributes_count),
        (0, 0, 0)
    );
    assert_eq!(span.status.as_ref().map(|s| s.code), Some(0));
    let unset: Vec<&str> = span
        .attributes
        .iter()
        .filter(|kv| kv.value.as_ref().and_then(|v| v.value.as_ref()).is_none())
        .map(|kv| kv.key.as_str())
        .collect();
    assert_eq!(
        unset,
        ["s", "i", "b", "d", "x"],
        "a null oneof member is unset"
    );
    assert_eq!(span.events[0].name, "retry");
    assert_eq!(span.links.len(), 1);
    let (status, found) = get(&collector, "/api/traces?service=nulls&tag=kept:yes");
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["data"][0]["traceID"], trace.to_string(), "{found}");

    let metrics = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"nulls"}}]},
        "schemaUrl":null,"scopeMetrics":[{"scope":null,"metrics":[
        {"name":"nulls_queue_depth","description":null,"unit":null,"gauge":{"dataPoints":[
          {"startTimeUnixNano":null,"timeUnixNano":null,"asDouble":7.5,"flags":null,"attributes":null}]}}]}]}]}"#;
    let r = http_request(
        collector.otlp_http,
        "POST",
        "/v1/metrics",
        &[("content-type", "application/json")],
        metrics.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let exposed = collector.metrics();
    assert!(
        exposed
            .lines()
            .any(|l| l.starts_with("nulls_queue_depth{") && l.ends_with(" 7.5")),
        "{exposed}"
    );

    // null inside a list is no value: refused, its span only, named.
    let r = http_request(
        collector.otlp_http,
        "POST",
        "/v1/traces",
        &[("content-type", "application/json")],
        body.replace(r#""events":[{"#, r#""events":[null,{"#)
            .as_bytes(),
    );
    assert_eq!(r.status, 200);
    let reply: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(reply["partialSuccess"]["rejectedSpans"], "1", "{reply}");
    let message = reply["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(message.contains("spans[0].events[0]"), "{message}");
    collector.stop();
}
