//! Span times outside what the store keeps: spans dated far ahead (or with
//! an end time near 2^64) are refused with OTLP partial success and make no
//! partition; partitions left ahead of the clock are dropped; the disk cap
//! evicts the oldest data by time and never the current partition; the
//! disk-usage metric agrees with `du`.

use std::process::Command;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tracemesh_collector::store::SpanReader;

use crate::harness::{
    Collector, batch, eventually, http_request, now_nanos, random_trace_id, runtime, sample,
    wait_for_trace,
};

const DAY: u64 = 86_400 * 1_000_000_000;

fn export(collector: &Collector, request: ExportTraceServiceRequest) -> i64 {
    let url = collector.grpc_url();
    runtime().block_on(async move {
        let mut client = TraceServiceClient::connect(url).await.unwrap();
        let reply = client.export(request).await.unwrap().into_inner();
        reply.partial_success.map_or(0, |p| p.rejected_spans)
    })
}

#[test]
fn a_flood_of_far_future_spans_is_refused_and_makes_no_partition() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &["--commit-interval", "100ms"]);
    // 1000 spans, one every 3.65 days over the next ten years, in one
    // request beside 10 of now.
    let mut flood = batch("far-future", random_trace_id(), 1000, 0);
    for (i, span) in flood.resource_spans[0].scope_spans[0]
        .spans
        .iter_mut()
        .enumerate()
    {
        span.start_time_unix_nano = now_nanos() + (i as u64 + 1) * (365 * DAY / 100);
        span.end_time_unix_nano = span.start_time_unix_nano + 1_000_000;
    }
    let current = random_trace_id();
    let mut now = batch("far-future", current, 10, now_nanos());
    // An end time at the edge of the range.
    let edge = random_trace_id();
    let mut edge_span = batch("far-future", edge, 1, now_nanos());
    edge_span.resource_spans[0].scope_spans[0].spans[0].end_time_unix_nano = u64::MAX - 1;
    now.resource_spans[0].scope_spans[0]
        .spans
        .append(&mut edge_span.resource_spans[0].scope_spans[0].spans);
    flood.resource_spans.extend(now.resource_spans);

    let started = Instant::now();
    let rejected = export(&collector, flood);
    assert_eq!(rejected, 1001, "the far-future spans and the edge span");
    wait_for_trace(dir.path(), current, 10);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "acknowledged and indexed in {:?}",
        started.elapsed()
    );
    let reader = SpanReader::open(dir.path()).unwrap();
    assert!(reader.trace(edge).unwrap().is_none());
    assert_eq!(reader.partitions().len(), 1, "only today's partition");
    let metrics = collector.metrics();
    assert_eq!(
        sample(
            &metrics,
            r#"tracemesh_collector_spans_refused_total{reason="out_of_range",receiver="otlp_grpc"}"#
        ),
        1001.0
    );
    assert_eq!(sample(&metrics, "tracemesh_collector_partitions"), 1.0);

    // Zipkin has no partial success: the request is answered 400 naming
    // the span and its field, and nothing of it is stored.
    let ahead_us = (now_nanos() + 365 * DAY) / 1000;
    let body = format!(
        r#"[{{"traceId":"{}","id":"00000000000000a1","name":"x","timestamp":{ahead_us},"duration":5,"localEndpoint":{{"serviceName":"far-future"}}}}]"#,
        random_trace_id()
    );
    let r = http_request(
        collector.zipkin,
        "POST",
        "/api/v2/spans",
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 400);
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains("zipkin span [0]: timestamp") && text.contains("max_clock_skew"),
        "{text}"
    );
    collector.stop();
}

fn du(path: &std::path::Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "--block-size=1"])
        .arg(path)
        .output()
        .expect("du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("du output")
}

#[test]
fn the_disk_cap_evicts_the_oldest_data_and_never_the_current_partition() {
    let dir = tempfile::tempdir().unwrap();
    // A week of allowed skew, so a partition five days ahead can be made:
    // the state an earlier version (no skew bound) could leave behind.
    let collector = Collector::start(
        dir.path(),
        &["--commit-interval", "100ms", "--max-clock-skew", "7d"],
    );
    let at = |offset_days: i64| (now_nanos() as i64 + offset_days * DAY as i64) as u64;
    let traces: Vec<_> = [-3, -2, 0, 5]
        .into_iter()
        .map(|days| {
            let trace = random_trace_id();
            assert_eq!(export(&collector, batch("capped", trace, 50, at(days))), 0);
            trace
        })
        .collect();
    for trace in &traces {
        wait_for_trace(dir.path(), *trace, 50);
    }
    assert_eq!(SpanReader::open(dir.path()).unwrap().partitions().len(), 4);
    collector.stop();

    // Default skew, and a cap far below what the store takes.
    let restarted = Collector::start(dir.path(), &["--max-disk", "64KiB"]);
    let log = restarted.log();
    let dropped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("partition dropped"))
        .collect();
    assert_eq!(dropped.len(), 3, "{log}");
    assert!(dropped[0].contains("out_of_range"), "{log}");
    assert!(
        dropped[1].contains("max_disk") && dropped[2].contains("max_disk"),
        "{log}"
    );
    assert!(
        log.contains("over max_disk with only current partitions left"),
        "{log}"
    );
    let reader = SpanReader::open(dir.path()).unwrap();
    let kept: Vec<bool> = traces
        .iter()
        .map(|t| reader.trace(*t).unwrap().is_some())
        .collect();
    assert_eq!(
        kept,
        [false, false, true, false],
        "only the current partition is left"
    );

    // The disk-usage metric counts what `du` counts.
    let reported = eventually("the disk usage metric", || {
        let value = sample(&restarted.metrics(), "tracemesh_collector_disk_bytes");
        (value > 0.0).then_some(value)
    });
    let measured = du(dir.path()) as f64;
    assert!(
        (reported - measured).abs() <= measured * 0.1,
        "metric {reported} bytes, du {measured} bytes"
    );
    restarted.stop();
}
