//! Jaeger's query API and api_v3 answer in Jaeger's shapes (field names,
//! types, envelope, error shapes), after spans came in over real OTLP.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::data::{self, FAIL_EVERY, SHOP_TRACES, get};

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn set<'a>(items: &[&'a str]) -> BTreeSet<&'a str> {
    items.iter().copied().collect()
}

fn envelope_ok(body: &Value) {
    assert_eq!(
        keys(body),
        set(&["data", "total", "limit", "offset", "errors"]),
        "{body}"
    );
    assert_eq!(body["errors"], Value::Null);
}

fn tag<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == key)
        .unwrap_or_else(|| panic!("tag {key} missing in {span}"))
}

/// Every span and process of a Jaeger trace has Jaeger's fields and types.
pub fn check_trace_shape(trace: &Value) {
    assert_eq!(
        keys(trace),
        set(&["traceID", "spans", "processes", "warnings"])
    );
    let trace_id = trace["traceID"].as_str().unwrap();
    assert_eq!(trace_id.len(), 32);
    for span in trace["spans"].as_array().unwrap() {
        assert_eq!(
            keys(span),
            set(&[
                "traceID",
                "spanID",
                "operationName",
                "references",
                "startTime",
                "duration",
                "tags",
                "logs",
                "processID",
                "warnings"
            ]),
            "{span}"
        );
        assert_eq!(span["traceID"], trace_id);
        assert_eq!(span["spanID"].as_str().unwrap().len(), 16);
        assert!(span["startTime"].is_u64() && span["duration"].is_u64());
        for reference in span["references"].as_array().unwrap() {
            assert_eq!(keys(reference), set(&["refType", "traceID", "spanID"]));
            assert_eq!(reference["refType"], "CHILD_OF");
        }
        for tag in span["tags"].as_array().unwrap() {
            assert_eq!(keys(tag), set(&["key", "type", "value"]));
        }
        let process = &trace["processes"][span["processID"].as_str().unwrap()];
        assert_eq!(keys(process), set(&["serviceName", "tags"]));
    }
}

#[test]
fn jaeger_api_answers_as_jaeger_does() {
    let dir = tempfile::tempdir().unwrap();
    let (collector, sent) = data::start(dir.path());

    let (status, services) = get(&collector, "/api/services");
    assert_eq!(status, 200);
    envelope_ok(&services);
    assert_eq!(services["data"], json!(["calc", "cart", "db", "frontend"]));
    assert_eq!(services["total"], 4);

    let (_, operations) = get(&collector, "/api/services/cart/operations");
    envelope_ok(&operations);
    assert_eq!(operations["data"], json!(["GET /cart/items", "SELECT"]));
    let (_, operations) = get(&collector, "/api/operations?service=cart&spanKind=server");
    assert_eq!(
        operations["data"],
        json!([{"name": "GET /cart/items", "spanKind": "server"}])
    );
    assert_eq!(operations["total"], 1);

    // Trace by id: all five spans across three services, translated.
    let failed = sent.shop[0];
    let (status, body) = get(&collector, &format!("/api/traces/{failed}"));
    assert_eq!(status, 200);
    envelope_ok(&body);
    let trace = &body["data"][0];
    check_trace_shape(trace);
    assert_eq!(trace["traceID"], failed.to_string());
    let spans = trace["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 5);
    assert_eq!(trace["processes"].as_object().unwrap().len(), 3);
    let server = spans
        .iter()
        .find(|s| s["operationName"] == "GET /cart/items")
        .unwrap();
    assert_eq!(server["duration"], 1000, "1 ms in µs");
    assert_eq!(
        *tag(server, "span.kind"),
        json!({"key": "span.kind", "type": "string", "value": "server"})
    );
    assert_eq!(
        *tag(server, "error"),
        json!({"key": "error", "type": "bool", "value": true})
    );
    assert_eq!(
        *tag(server, "http.response.status_code"),
        json!({"key": "http.response.status_code", "type": "int64", "value": 503})
    );
    assert_eq!(
        server["logs"][0]["fields"][0],
        json!({"key": "event", "type": "string", "value": "cache miss"})
    );
    let process = &trace["processes"][server["processID"].as_str().unwrap()];
    assert_eq!(process["serviceName"], "cart");
    assert_eq!(
        process["tags"],
        json!([{"key": "k8s.namespace.name", "type": "string", "value": "shop"}])
    );

    // Search: service + tags (JSON) + durations, whole traces newest first.
    let end_us = (sent.base + 3_600_000_000_000) / 1000;
    let start_us = sent.base / 1000 - 1;
    let path = format!(
        "/api/traces?service=cart&tags=%7B%22http.response.status_code%22%3A%22503%22%7D&minDuration=50ms&maxDuration=1.5s&start={start_us}&end={end_us}&limit=100&lookback=custom"
    );
    let (status, body) = get(&collector, &path);
    assert_eq!(status, 200, "{body}");
    envelope_ok(&body);
    let expected: Vec<String> = (0..SHOP_TRACES)
        .rev()
        .filter(|t| t % FAIL_EVERY == 0 && crate::data::cart_duration(*t) >= 50_000_000)
        .map(|t| sent.shop[t].to_string())
        .collect();
    let found: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["traceID"].as_str().unwrap())
        .collect();
    assert_eq!(
        found, expected,
        "newest first, only failed calls of at least 50ms"
    );
    for trace in body["data"].as_array().unwrap() {
        check_trace_shape(trace);
        assert_eq!(trace["spans"].as_array().unwrap().len(), 5, "whole traces");
    }
    let (_, limited) = get(
        &collector,
        "/api/traces?service=cart&tag=customer.tier:gold&limit=3&lookback=1h",
    );
    assert_eq!(limited["data"].as_array().unwrap().len(), 3);
    // limit=0 is Jaeger's default (its storage readers take NumTraces 0
    // as 100), not one trace: 200 shop traces, 100 answered.
    let (_, zero) = get(&collector, "/api/traces?service=cart&limit=0&lookback=1h");
    assert_eq!(zero["data"].as_array().unwrap().len(), 100);

    // Errors: unknown trace → 404, bad parameters → 400 naming them.
    let (status, body) = get(&collector, "/api/traces/0123456789abcdef0123456789abcdef");
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"data": null, "total": 0, "limit": 0, "offset": 0, "errors": [{"code": 404, "msg": "trace not found"}]})
    );
    for (path, param) in [
        ("/api/traces?service=cart&limit=many", "limit"),
        ("/api/traces?service=cart&minDuration=soon", "minDuration"),
        ("/api/traces?service=cart&tags=notjson", "tags"),
        ("/api/traces/not-hex", "traceID"),
        ("/api/dependencies?endTs=yesterday", "endTs"),
        (
            "/api/metrics/latencies?service=cart&quantile=high",
            "quantile",
        ),
        ("/api/metrics/calls?service=cart&step=fast", "step"),
        ("/api/operations", "service"),
        ("/api/traces", "service"),
    ] {
        let (status, body) = get(&collector, path);
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["errors"][0]["code"], 400);
        let msg = body["errors"][0]["msg"].as_str().unwrap();
        assert!(msg.contains(&format!("'{param}'")), "{path}: {msg}");
    }

    // Dependencies, Jaeger's fields only.
    let end_ms = sent.base / 1_000_000 + 3_600_000;
    let (_, deps) = get(
        &collector,
        &format!("/api/dependencies?endTs={end_ms}&lookback=7200000"),
    );
    envelope_ok(&deps);
    assert_eq!(
        deps["data"],
        json!([
            {"parent": "cart", "child": "db", "callCount": SHOP_TRACES},
            {"parent": "frontend", "child": "cart", "callCount": SHOP_TRACES},
        ])
    );

    // Monitor: Jaeger's MetricFamily JSON.
    let now_ms = crate::harness::now_nanos() / 1_000_000;
    let (status, calls) = get(
        &collector,
        &format!(
            "/api/metrics/calls?service=cart&endTs={now_ms}&lookback=900000&step=60000&ratePer=600000"
        ),
    );
    assert_eq!(status, 200, "{calls}");
    assert_eq!(keys(&calls), set(&["name", "type", "help", "metrics"]));
    assert_eq!(calls["name"], "service_call_rate");
    assert_eq!(calls["type"], "GAUGE");
    let metric = &calls["metrics"][0];
    assert_eq!(
        metric["labels"],
        json!([{"name": "service_name", "value": "cart"}])
    );
    let last = metric["metricPoints"].as_array().unwrap().last().unwrap();
    assert_eq!(keys(last), set(&["gaugeValue", "timestamp"]));
    let rate = last["gaugeValue"]["doubleValue"].as_f64().unwrap();
    assert!(
        (rate - SHOP_TRACES as f64 / 600.0).abs() < 1e-9,
        "server spans per second over 10 minutes: {rate}"
    );
    assert!(last["timestamp"].as_str().unwrap().ends_with('Z'));
    let (_, errors) = get(
        &collector,
        &format!(
            "/api/metrics/errors?service=cart&groupByOperation=true&endTs={now_ms}&lookback=900000&step=60000&ratePer=600000"
        ),
    );
    assert_eq!(errors["name"], "service_operation_error_rate");
    let metric = &errors["metrics"][0];
    assert_eq!(
        metric["labels"],
        json!([{"name": "service_name", "value": "cart"}, {"name": "operation", "value": "GET /cart/items"}])
    );
    let last = metric["metricPoints"].as_array().unwrap().last().unwrap();
    assert!(
        (last["gaugeValue"]["doubleValue"].as_f64().unwrap() - 1.0 / FAIL_EVERY as f64).abs()
            < 1e-9
    );
    let (_, latencies) = get(
        &collector,
        &format!(
            "/api/metrics/latencies?service=cart&quantile=0.95&endTs={now_ms}&lookback=900000&step=60000"
        ),
    );
    assert_eq!(latencies["name"], "service_latencies");
    assert_eq!(
        latencies["help"],
        "0.95th quantile latency, grouped by service"
    );

    // api_v3: OTLP JSON.
    let (status, v3) = get(&collector, "/api/v3/services");
    assert_eq!(
        (status, v3),
        (200, json!({"services": ["calc", "cart", "db", "frontend"]}))
    );
    let (_, v3) = get(&collector, "/api/v3/operations?service=db");
    assert_eq!(
        v3,
        json!({"operations": [{"name": "query", "spanKind": "server"}]})
    );
    let (status, v3) = get(&collector, &format!("/api/v3/traces/{failed}"));
    assert_eq!(status, 200);
    let resource_spans = v3["result"]["resourceSpans"].as_array().unwrap();
    assert_eq!(resource_spans.len(), 3);
    let span = &resource_spans[0]["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], failed.to_string());
    assert!(
        span["spanId"].as_str().unwrap().len() == 16 && span["kind"].is_u64(),
        "{span}"
    );
    let (status, v3) = get(
        &collector,
        "/api/v3/traces/0123456789abcdef0123456789abcdef",
    );
    assert_eq!((status, v3["error"]["httpCode"].clone()), (404, json!(404)));
    let min = crate::harness::now_nanos() - 3_600_000_000_000;
    let window = format!(
        "query.startTimeMin={}&query.startTimeMax={}",
        tracemesh_query::timefmt::rfc3339(min),
        tracemesh_query::timefmt::rfc3339(min + 7_200_000_000_000)
    );
    let (status, v3) = get(
        &collector,
        &format!("/api/v3/traces?query.serviceName=db&query.searchDepth=4&{window}"),
    );
    assert_eq!(status, 200, "{v3}");
    let spans: usize = v3["result"]["resourceSpans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["scopeSpans"][0]["spans"].as_array().unwrap().len())
        .sum();
    assert_eq!(spans, 4 * 5, "four whole traces");
    // A zero durationMax is no bound, as Jaeger's storage readers take it.
    let (status, v3) = get(
        &collector,
        &format!(
            "/api/v3/traces?query.serviceName=db&query.searchDepth=4&query.durationMax=0s&{window}"
        ),
    );
    assert_eq!(status, 200, "{v3}");
    let traces = v3["result"]["resourceSpans"].as_array().map_or(0, Vec::len);
    assert!(traces > 0, "durationMax=0s found nothing: {v3}");
    let (status, v3) = get(
        &collector,
        "/api/v3/traces?query.serviceName=db&query.startTimeMin=soon&query.startTimeMax=later",
    );
    assert_eq!(status, 400);
    assert!(
        v3["error"]["message"]
            .as_str()
            .unwrap()
            .contains("query.startTimeMin"),
        "{v3}"
    );

    // The query service's own metrics are on the collector's /metrics.
    assert!(
        collector
            .metrics()
            .contains("tracemesh_query_requests_total{code=\"404\",endpoint=\"jaeger_trace\"} 1")
    );
    collector.stop();
}
