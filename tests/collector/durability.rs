//! Durability: every acknowledged span survives a SIGKILL in the middle of a
//! stream, and a WAL whose last record was torn is recovered.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use std::sync::{Arc, Mutex};
use tracemesh_collector::ids::TraceId;
use tracemesh_collector::store::{SpanQuery, SpanReader};

use crate::harness::{Collector, batch, eventually, now_nanos, random_trace_id, runtime};

const SPANS_PER_BATCH: usize = 50;

#[test]
fn acknowledged_spans_survive_sigkill_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    // Commits every 100ms: at the kill, some batches are in the index and
    // the rest only in the WAL.
    let collector = Collector::start(dir.path(), &["--commit-interval", "100ms"]);
    let url = collector.grpc_url();
    let acked: Arc<Mutex<Vec<TraceId>>> = Arc::default();
    let rt = runtime();
    let sender = {
        let acked = acked.clone();
        rt.spawn(async move {
            let mut client = TraceServiceClient::connect(url).await.unwrap();
            // Bounded: stops at the first failure (the kill), or after 100k batches.
            for _ in 0..100_000 {
                let trace_id = random_trace_id();
                match client
                    .export(batch("durable", trace_id, SPANS_PER_BATCH, now_nanos()))
                    .await
                {
                    Ok(_) => acked.lock().unwrap().push(trace_id),
                    Err(_) => break,
                }
            }
        })
    };
    eventually("60 acknowledged batches", || {
        (acked.lock().unwrap().len() >= 60).then_some(())
    });
    let log = collector.kill9();
    rt.block_on(sender).unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 60, "{log}");

    let restarted = Collector::start(dir.path(), &[]);
    let log = restarted.log();
    assert!(
        log.contains("wal replayed"),
        "records after the last commit are replayed: {log}"
    );
    let reader = eventually("a readable store", || SpanReader::open(dir.path()).ok());
    for trace_id in &acked {
        let trace = reader
            .trace(*trace_id)
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged trace {trace_id} lost"));
        assert_eq!(trace.spans.len(), SPANS_PER_BATCH, "trace {trace_id}");
    }
    let stored = reader
        .count(&SpanQuery {
            service: Some("durable".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(stored >= (acked.len() * SPANS_PER_BATCH) as u64);
    assert!(
        stored <= ((acked.len() + 1) * SPANS_PER_BATCH) as u64,
        "no span is stored twice (one unacknowledged batch may be)"
    );
    restarted.stop();
}

#[test]
fn a_torn_last_wal_record_is_cut_and_the_rest_recovered() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing is committed to the index before the kill: only the WAL has the spans.
    let collector = Collector::start(dir.path(), &["--commit-interval", "1h"]);
    let url = collector.grpc_url();
    let traces: Vec<TraceId> = (0..3).map(|_| random_trace_id()).collect();
    let batches: Vec<_> = traces
        .iter()
        .map(|t| batch("torn", *t, 10, now_nanos()))
        .collect();
    runtime().block_on(async move {
        let mut client = TraceServiceClient::connect(url).await.unwrap();
        for b in batches {
            client.export(b).await.unwrap();
        }
    });
    collector.kill9();

    let wal_dir = dir.path().join("wal");
    let mut files: Vec<_> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let last = files
        .iter()
        .rev()
        .find(|p| std::fs::metadata(p).unwrap().len() > 0)
        .expect("a wal file with records")
        .clone();
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 9)
        .unwrap();

    let restarted = Collector::start(dir.path(), &["--commit-interval", "100ms"]);
    let log = restarted.log();
    assert!(log.contains("wal tail cut"), "{log}");
    let reader = SpanReader::open(dir.path()).unwrap();
    assert_eq!(
        reader
            .trace(traces[0])
            .unwrap()
            .expect("first batch")
            .spans
            .len(),
        10
    );
    assert_eq!(
        reader
            .trace(traces[1])
            .unwrap()
            .expect("second batch")
            .spans
            .len(),
        10
    );
    assert!(
        reader.trace(traces[2]).unwrap().is_none(),
        "the torn record is cut, not half-read"
    );
    let metrics = restarted.metrics();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("tracemesh_collector_wal_cut_bytes_total ") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    // The collector keeps working after recovery.
    let after = random_trace_id();
    let url = restarted.grpc_url();
    runtime().block_on(async move {
        let mut client = TraceServiceClient::connect(url).await.unwrap();
        client
            .export(batch("torn", after, 10, now_nanos()))
            .await
            .unwrap();
    });
    crate::harness::wait_for_trace(dir.path(), after, 10);
    restarted.stop();
}
