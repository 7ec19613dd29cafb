//! One answer stays bounded: `limit` is capped at 1000 traces, and a trace
//! read returns at most 20,000 spans (the earliest), whatever the store
//! holds.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

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
