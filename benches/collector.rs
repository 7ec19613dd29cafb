//! Collector ingest benchmark: a load generator sends OTLP/gRPC batches of
//! 512 agent-shaped spans (15 attributes, 6 resource attributes, 8 spans per
//! trace) to a real `tracemesh collector` process (WAL with fsync on), then
//! reports acknowledged and indexed spans/s, resident memory, disk bytes per
//! span and trace-by-id latency on the resulting store.
//!
//! `cargo bench --bench collector` (env: BENCH_SPANS, default 1048576;
//! BENCH_CONCURRENCY, default 8; BENCH_COLLECTOR_ARGS, extra collector flags).

// A benchmark run: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used)]

mod support;

use support::metric;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use tracemesh_collector::ids::TraceId;
use tracemesh_collector::store::SpanReader;

const BATCH: usize = 512;
const SPANS_PER_TRACE: usize = 8;

fn s(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn i(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

const SERVICES: [&str; 6] = [
    "productpage",
    "reviews",
    "ratings",
    "details",
    "cart",
    "checkout",
];
const ROUTES: [&str; 5] = [
    "/api/v1/products/{id}",
    "/reviews/{id}",
    "/ratings/{id}",
    "/details/{id}",
    "/cart",
];

/// One batch: 64 traces of 8 spans, shaped like the agent's (server/client
/// pairs with the HTTP semantic-convention attributes it sets).
fn batch(seq: u64, now: u64) -> (ExportTraceServiceRequest, Vec<TraceId>) {
    let service = SERVICES[(seq % SERVICES.len() as u64) as usize];
    let mut traces = Vec::new();
    let mut spans = Vec::with_capacity(BATCH);
    for t in 0..BATCH / SPANS_PER_TRACE {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&fastrand::u64(..).to_be_bytes());
        trace_id[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
        traces.push(TraceId(trace_id));
        let mut parent = Vec::new();
        for n in 0..SPANS_PER_TRACE {
            let span_id = fastrand::u64(1..).to_be_bytes().to_vec();
            let route = ROUTES[(t + n) % ROUTES.len()];
            let status = if fastrand::u8(..) < 5 { 503 } else { 200 };
            let start = now + (t * 1000 + n * 100) as u64 * 1000;
            let duration = fastrand::u64(200_000..40_000_000);
            let peer = SERVICES[(n + 1) % SERVICES.len()];
            spans.push(Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.clone(),
                parent_span_id: parent.clone(),
                name: format!("GET {route}"),
                kind: if n % 2 == 0 { 2 } else { 3 },
                start_time_unix_nano: start,
                end_time_unix_nano: start + duration,
                attributes: vec![
                    s("http.request.method", "GET"),
                    s("http.route", route),
                    i("http.response.status_code", status),
                    s(
                        "url.path",
                        &route.replace("{id}", &fastrand::u32(..10_000).to_string()),
                    ),
                    s("url.scheme", "http"),
                    s(
                        "server.address",
                        &format!("{peer}.default.svc.cluster.local"),
                    ),
                    i("server.port", 9080),
                    s("network.protocol.version", "1.1"),
                    s("user_agent.original", "curl/8.5.0"),
                    s("peer.service", peer),
                    s(
                        "upstream_cluster",
                        &format!("outbound|9080||{peer}.default.svc.cluster.local"),
                    ),
                    s("tracemesh.response_flags", "-"),
                    i("http.request.body.size", 0),
                    i("http.response.body.size", fastrand::i64(100..5000)),
                    s(
                        "network.peer.address",
                        &format!("10.0.{}.{}", fastrand::u8(..), fastrand::u8(..)),
                    ),
                ],
                status: Some(Status {
                    code: if status >= 500 { 2 } else { 0 },
                    message: String::new(),
                }),
                ..Default::default()
            });
            parent = span_id;
        }
    }
    let resource = Resource {
        attributes: vec![
            s("service.name", service),
            s("service.namespace", "default"),
            s("service.version", "v1"),
            s("service.instance.id", &format!("{service}-v1-7d9c8b-x2x4k")),
            s("k8s.namespace.name", "default"),
            s("tracemesh.workload", &format!("{service}-v1")),
        ],
        ..Default::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tracemesh-agent".into(),
                    version: "0.1.0".into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    (request, traces)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU time of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total += if meta.is_dir() {
                dir_bytes(&entry.path())
            } else {
                meta.len()
            };
        }
    }
    total
}

fn main() {
    if !support::measuring("collector") {
        return;
    }
    let total_spans = support::env("BENCH_SPANS", 1 << 20);
    let concurrency = support::env("BENCH_CONCURRENCY", 8) as usize;
    let batches = total_spans.div_ceil(BATCH as u64);
    let data = tempfile::Builder::new()
        .prefix("tracemesh-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();

    let extra = std::env::var("BENCH_COLLECTOR_ARGS").unwrap_or_default();
    let support::Started {
        mut child,
        grpc,
        http,
    } = support::start_collector(data.path(), extra.split_whitespace());
    let pid = child.id();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        - 3_600_000_000_000;
    let sampler = {
        let peak = peak_rss.clone();
        std::thread::spawn(move || {
            while rss_kib(pid) > 0 {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
                if peak.load(Ordering::Relaxed) == u64::MAX {
                    break;
                }
            }
        })
    };
    println!("collector bench: {batches} batches x {BATCH} spans, {concurrency} in flight");
    let started = Instant::now();
    let all_traces: Vec<TraceId> = runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
                    .await
                    .unwrap()
                    .max_decoding_message_size(64 << 20);
                let mut sample = Vec::new();
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= batches {
                        break;
                    }
                    // Built again on the rare retry rather than cloned for every send:
                    // the generator shares the two cores with the collector.
                    let traces = loop {
                        let (request, traces) = batch(seq, now + seq * 64_000_000);
                        match client.export(request).await {
                            Ok(_) => break traces,
                            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                                tokio::time::sleep(Duration::from_millis(50)).await
                            }
                            Err(status) => panic!("export failed: {status:?}"),
                        }
                    };
                    sample.push(traces[fastrand::usize(..traces.len())]);
                }
                sample
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    });
    let acked_in = started.elapsed();
    let sent = batches * BATCH as u64;
    while (metric(http, "tracemesh_collector_index_spans_total") as u64) < sent {
        std::thread::sleep(Duration::from_millis(50));
    }
    let indexed_in = started.elapsed();
    let refused = metric(
        http,
        "tracemesh_collector_spans_refused_total{reason=\"queue_full\",receiver=\"otlp_grpc\"}",
    );
    let mean = |name: &str| {
        metric(http, &format!("{name}_sum")) / metric(http, &format!("{name}_count")).max(1.0)
    };
    let commit_mean = mean("tracemesh_collector_index_commit_seconds");
    let commits = metric(http, "tracemesh_collector_index_commit_seconds_count");
    let fsync_mean = mean("tracemesh_collector_wal_fsync_seconds");
    let fsyncs = metric(http, "tracemesh_collector_wal_fsync_seconds_count");
    let rss_end = rss_kib(pid);
    let cpu_seconds = cpu_seconds(pid);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    peak_rss.store(
        peak_rss.load(Ordering::Relaxed).max(rss_end),
        Ordering::Relaxed,
    );
    let peak = peak_rss.swap(u64::MAX, Ordering::Relaxed);
    let _ = sampler.join();
    let disk = dir_bytes(data.path());
    let index_disk = dir_bytes(&data.path().join("spans"));

    let reader = SpanReader::open(data.path()).unwrap();
    let mut latencies = Vec::new();
    for trace_id in all_traces.iter().take(2000) {
        let t = Instant::now();
        let trace = reader.trace(*trace_id).unwrap().expect("trace stored");
        latencies.push(t.elapsed());
        assert_eq!(trace.spans.len(), SPANS_PER_TRACE);
    }
    latencies.sort();
    let q = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];

    println!("| metric | value |");
    println!("|---|---|");
    println!("| spans sent (acknowledged) | {sent} |");
    println!("| refused (429/RESOURCE_EXHAUSTED, retried) | {refused} |");
    println!(
        "| ingest, acknowledged (WAL fsync on) | {:.0} spans/s |",
        sent as f64 / acked_in.as_secs_f64()
    );
    println!(
        "| ingest, indexed | {:.0} spans/s |",
        sent as f64 / indexed_in.as_secs_f64()
    );
    println!(
        "| collector CPU per span (user+sys) | {:.1} µs |",
        cpu_seconds * 1e6 / sent as f64
    );
    println!(
        "| resident memory, peak / end | {} MiB / {} MiB |",
        peak / 1024,
        rss_end / 1024
    );
    println!(
        "| disk per span (index after final commit) | {:.1} bytes |",
        index_disk as f64 / sent as f64
    );
    println!(
        "| disk per span (data dir incl. WAL) | {:.1} bytes |",
        disk as f64 / sent as f64
    );
    println!(
        "| WAL group commits: count / mean fsync | {fsyncs} / {:.2} ms |",
        fsync_mean * 1000.0
    );
    println!(
        "| index commits: count / mean duration | {commits} / {:.0} ms |",
        commit_mean * 1000.0
    );
    println!(
        "| trace by id, {} lookups: p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |",
        latencies.len(),
        ms(q(0.5)),
        ms(q(0.99)),
        ms(q(1.0))
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
