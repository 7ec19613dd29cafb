//! One answer stays bounded: `limit` is capped at 1000 traces, a trace
//! read returns at most 20,000 spans (the earliest), and a dependency
//! graph at most 10,000 edges (the most called, a cut told and counted),
//! whatever the store holds.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde_json::json;

use crate::data::{get, send};
use crate::harness::{Collector, batch, eventually, now_nanos, random_trace_id};

#[test]
fn limit_and_trace_size_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let start = now_nanos() - 60_000_000_000;
    // One trace of 25,000 spans, in five requests.
    let big = random_trace_id();
    for part in 0..5u64 {
        send(
            &collector,
            &batch("bounded", big, 5000, start + part * 10_000),
        );
    }
    // 1,100 more traces of one span each, in one request.
    let mut many = ExportTraceServiceRequest::default();
    for _ in 0..1100 {
        many.resource_spans
            .extend(batch("bounded", random_trace_id(), 1, start).resource_spans);
    }
    send(&collector, &many);
    eventually("every trace searchable", || {
        let (_, body) = get(
            &collector,
            "/api/traces?service=bounded&limit=1000000&lookback=1h",
        );
        (body["data"].as_array()?.len() >= 1000).then_some(())
    });

    let (status, body) = get(
        &collector,
        "/api/traces?service=bounded&limit=1000000&lookback=1h",
    );
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 1000, "limit capped");

    let (status, body) = get(&collector, &format!("/api/traces/{big}"));
    assert_eq!(status, 200);
    let spans = body["data"][0]["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 20_000, "one trace read is capped");
    collector.stop();
}

/// `service`'s TCP client spans, one per `(peer, n)`: each links the edge
/// `service` → `peer` by itself (`peer.service`).
fn tcp_calls(service: &str, peers: &[(String, usize)], start: u64) -> ExportTraceServiceRequest {
    let string = |key: &str, value: &str| KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    };
    let mut spans = Vec::new();
    for (peer, n) in peers {
        for _ in 0..*n {
            let trace_id = random_trace_id();
            spans.push(Span {
                trace_id: trace_id.0.to_vec(),
                span_id: fastrand::u64(1..).to_be_bytes().to_vec(),
                name: format!("{peer}:27017/*"),
                kind: 3,
                start_time_unix_nano: start,
                end_time_unix_nano: start + 1_000_000,
                attributes: vec![
                    string("network.transport", "tcp"),
                    string("peer.service", peer),
                ],
                ..Default::default()
            });
        }
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A dependency graph answers at most 10,000 edges, the most called; Jaeger's
/// `service=` picks that service's edges before the bound, so an edge cut
/// from the whole graph is still there when asked for by its service. A
/// cut is told in the native answer (`omitted_calls`), counted in
/// `tracemesh_query_truncated_answers_total` and logged. (The filter used
/// to apply after a silent cut: a service's edges answered `[]`.)
#[test]
fn dependency_graph_is_bounded_visibly_and_filters_by_service_before_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let start = now_nanos() - 60_000_000_000;
    // 101 services each calling the 100 others twice: 10,100 edges of 2
    // calls. Then two edges of one call, the least called, into zz-target
    // (one caller's name full of regex meta characters).
    let services: Vec<String> = (0..101).map(|i| format!("s{i:03}")).collect();
    for caller in &services {
        let peers: Vec<(String, usize)> = services
            .iter()
            .filter(|peer| *peer != caller)
            .map(|peer| (peer.clone(), 2))
            .collect();
        send(&collector, &tcp_calls(caller, &peers, start));
    }
    let target = [("zz-target".to_owned(), 1)];
    send(&collector, &tcp_calls("zz-lonely", &target, start));
    send(&collector, &tcp_calls("zz.dot+(x)[y]^$", &target, start));
    let spans = 101 * 100 * 2 + 2;
    eventually("every span indexed", || {
        let (_, body) = get(&collector, "/api/v1/latency?kind=all&since=1h");
        (body["count"] == spans).then_some(())
    });

    let (status, body) = get(&collector, "/api/dependencies?service=zz-target");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!([
            {"parent": "zz-lonely", "child": "zz-target", "callCount": 1},
            {"parent": "zz.dot+(x)[y]^$", "child": "zz-target", "callCount": 1},
        ]),
        "the edges past the bound, found by their service"
    );
    let (_, body) = get(
        &collector,
        "/api/dependencies?service=zz.dot%2B%28x%29%5By%5D%5E%24",
    );
    assert_eq!(
        body["data"],
        json!([{"parent": "zz.dot+(x)[y]^$", "child": "zz-target", "callCount": 1}]),
        "a name is matched literally"
    );
    let (_, body) = get(&collector, "/api/v1/dependencies?since=1h&service=s007");
    assert_eq!(
        body["edges"].as_array().unwrap().len(),
        200,
        "100 out, 100 in"
    );
    assert_eq!(body["omitted_calls"], 0, "{}", body["omitted_calls"]);
    let (_, body) = get(&collector, "/api/dependencies?service=s");
    assert_eq!(body["data"], json!([]), "a prefix of a name is no name");

    // The whole graph: the 10,000 most called edges, the cut told.
    let (_, body) = get(&collector, "/api/v1/dependencies?since=1h");
    let edges = body["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 10_000);
    assert!(
        edges.iter().all(|e| e["calls"] == 2),
        "the most called kept"
    );
    assert_eq!(body["max_edges"], 10_000);
    assert_eq!(
        body["omitted_calls"],
        100 * 2 + 2,
        "100 edges of 2 and 2 of 1 left out"
    );
    let (status, body) = get(&collector, "/api/dependencies");
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 10_000);
    let metrics = collector.metrics();
    for endpoint in ["jaeger_dependencies", "v1_dependencies"] {
        let line = format!("tracemesh_query_truncated_answers_total{{endpoint=\"{endpoint}\"}} 1");
        assert!(metrics.contains(&line), "{line}: {metrics}");
    }
    collector.stop();
}
