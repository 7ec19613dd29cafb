//! Export: a second collector receives the first one's spans over OTLP;
//! while the second is down the first keeps ingesting, and delivers once
//! it is back.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

use crate::harness::{
    Collector, batch, eventually, now_nanos, random_trace_id, runtime, wait_for_trace,
};

fn send(url: String, trace_id: tracemesh_collector::ids::TraceId) {
    runtime().block_on(async move {
        let mut client = TraceServiceClient::connect(url).await.unwrap();
        client
            .export(batch("exported", trace_id, 20, now_nanos()))
            .await
            .unwrap();
    });
}

#[test]
fn spans_reach_a_second_collector_even_across_its_restart() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = Collector::start(dir_b.path(), &["--commit-interval", "100ms"]);
    let b_grpc = b.otlp_grpc.to_string();
    let a = Collector::start(
        dir_a.path(),
        &[
            "--commit-interval",
            "100ms",
            "--export-otlp-grpc",
            &b.grpc_url(),
        ],
    );

    let first = random_trace_id();
    send(a.grpc_url(), first);
    let at_a = wait_for_trace(dir_a.path(), first, 20);
    let at_b = wait_for_trace(dir_b.path(), first, 20);
    assert_eq!(
        at_a.spans, at_b.spans,
        "the second collector stores the same spans"
    );

    b.stop();
    let second = random_trace_id();
    send(a.grpc_url(), second);
    wait_for_trace(dir_a.path(), second, 20);

    let b = Collector::start(
        dir_b.path(),
        &["--commit-interval", "100ms", "--otlp-grpc", &b_grpc],
    );
    let delivered = wait_for_trace(dir_b.path(), second, 20);
    assert_eq!(delivered.spans.len(), 20);
    let metrics = eventually("exporter counted the delivery", || {
        let metrics = a.metrics();
        metrics
            .lines()
            .any(|l| {
                l.starts_with("tracemesh_collector_exporter_sent_spans_total") && l.ends_with(" 40")
            })
            .then_some(metrics)
    });
    let dropped = metrics
        .lines()
        .filter(|l| l.starts_with("tracemesh_collector_exporter_dropped_spans_total{"))
        .any(|l| !l.ends_with(" 0"));
    assert!(
        !dropped,
        "nothing dropped within the queue limit: {metrics}"
    );
    a.stop();
    b.stop();
}
