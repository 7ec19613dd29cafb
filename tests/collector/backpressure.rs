//! Retention drops whole partitions; a saturated ingest queue answers 429
//! with Retry-After (HTTP) and RESOURCE_EXHAUSTED with RetryInfo (gRPC).

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use tonic_types::StatusExt;
use tracemesh_collector::store::{SpanQuery, SpanReader};

use crate::harness::{
    Collector, batch, count, eventually, http_request, now_nanos, random_trace_id, runtime,
    wait_for_trace,
};

const DAY: u64 = 86_400 * 1_000_000_000;

#[test]
fn retention_drops_an_old_partition() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &["--commit-interval", "100ms"]);
    let (old, new) = (random_trace_id(), random_trace_id());
    let url = collector.grpc_url();
    runtime().block_on(async move {
        let mut client = TraceServiceClient::connect(url).await.unwrap();
        client
            .export(batch("retained", old, 5, now_nanos() - 3 * DAY))
            .await
            .unwrap();
        client
            .export(batch("retained", new, 5, now_nanos()))
            .await
            .unwrap();
    });
    wait_for_trace(dir.path(), old, 5);
    wait_for_trace(dir.path(), new, 5);
    assert_eq!(SpanReader::open(dir.path()).unwrap().partitions().len(), 2);
    collector.stop();

    let restarted = Collector::start(dir.path(), &["--retention", "2d"]);
    let log = restarted.log();
    assert!(
        log.lines()
            .any(|l| l.contains("partition dropped") && l.contains("retention")),
        "{log}"
    );
    let reader = SpanReader::open(dir.path()).unwrap();
    assert_eq!(reader.partitions().len(), 1);
    assert!(
        reader.trace(old).unwrap().is_none(),
        "the old partition's spans are gone"
    );
    assert_eq!(reader.trace(new).unwrap().unwrap().spans.len(), 5);
    let metrics = restarted.metrics();
    assert!(
        metrics.contains(r#"tracemesh_collector_partitions_dropped_total{reason="retention"} 1"#),
        "{metrics}"
    );
    // A span older than retention is refused, not stored.
    let url = restarted.grpc_url();
    let reply = runtime().block_on(async move {
        let mut client = TraceServiceClient::connect(url).await.unwrap();
        client
            .export(batch(
                "retained",
                random_trace_id(),
                3,
                now_nanos() - 3 * DAY,
            ))
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!(reply.partial_success.unwrap().rejected_spans, 3);
    restarted.stop();
}

#[test]
fn a_saturated_ingest_queue_pushes_back() {
    let dir = tempfile::tempdir().unwrap();
    // Room for one 512-span batch: concurrent senders must find it full.
    let collector = Collector::start(
        dir.path(),
        &["--ingest-queue-spans", "600", "--commit-interval", "100ms"],
    );
    let addr = collector.otlp_http;

    let mut accepted_spans = 0u64;
    let mut saw_429 = false;
    for _round in 0..20 {
        let handles: Vec<_> = (0..32)
            .map(|_| {
                // Each batch its own trace: identical copies of one batch
                // are stored but counted once (a resend), and the count
                // below is of what was accepted.
                let body = batch("pressure", random_trace_id(), 512, now_nanos()).encode_to_vec();
                std::thread::spawn(move || {
                    http_request(
                        addr,
                        "POST",
                        "/v1/traces",
                        &[("content-type", "application/x-protobuf")],
                        &body,
                    )
                })
            })
            .collect();
        for handle in handles {
            let response = handle.join().unwrap();
            match response.status {
                200 => accepted_spans += 512,
                429 => {
                    saw_429 = true;
                    assert_eq!(
                        response.headers.get("retry-after").map(String::as_str),
                        Some("1")
                    );
                }
                other => panic!("unexpected status {other}"),
            }
        }
        if saw_429 {
            break;
        }
    }
    assert!(
        saw_429,
        "32 concurrent batches never filled a 600-span queue"
    );

    let url = collector.grpc_url();
    let request = batch("pressure", random_trace_id(), 512, now_nanos());
    let exhausted = runtime().block_on(async move {
        for _round in 0..20 {
            let mut calls = Vec::new();
            for _ in 0..32 {
                let url = url.clone();
                let request = request.clone();
                calls.push(tokio::spawn(async move {
                    TraceServiceClient::connect(url)
                        .await
                        .unwrap()
                        .export(request)
                        .await
                }));
            }
            let mut found = None;
            for call in calls {
                if let Err(status) = call.await.unwrap() {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                    found = Some(status);
                }
            }
            if found.is_some() {
                return found;
            }
        }
        None
    });
    let status = exhausted.expect("gRPC never answered RESOURCE_EXHAUSTED");
    assert!(
        status.get_details_retry_info().is_some(),
        "RESOURCE_EXHAUSTED carries RetryInfo so clients retry"
    );

    // What was accepted over HTTP is all stored; the refused batches are not.
    let query = SpanQuery {
        service: Some("pressure".into()),
        ..Default::default()
    };
    eventually("accepted spans indexed", || {
        (count(dir.path(), &query) >= accepted_spans).then_some(())
    });
    let metrics = collector.metrics();
    assert!(metrics.contains(r#"reason="queue_full""#), "{metrics}");
    collector.stop();
}
