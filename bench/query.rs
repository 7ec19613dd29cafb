//! Query benchmark: fills a real `tracemesh collector` with mesh-shaped
//! traces over OTLP/gRPC (its real ingest path: WAL, indexer, edge
//! linking), then times the query API on the resulting store over HTTP:
//! trace by id, a search by service + tag + min duration, p99 latency of
//! one service over the whole range, and the dependency graph.
//!
//! `cargo bench --bench query` (env: BENCH_SPANS, default 1048576;
//! BENCH_QUERIES, default 200 per query).

// A benchmark run: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used)]

mod support;

use support::metric;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

/// Traces per OTLP request (8 spans each).
const TRACES_PER_REQUEST: usize = 64;
/// A request: frontend → productpage → reviews → ratings, a server span in
/// each and a client span for each call, plus one internal span.
const SPANS_PER_TRACE: usize = 8;
const CHAIN: [&str; 4] = ["frontend", "productpage", "reviews", "ratings"];

fn attr(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    attr(key, Value::StringValue(value.into()))
}

/// One request's worth of traces, one `ResourceSpans` per service.
fn request(seq: u64, start: u64) -> (ExportTraceServiceRequest, Vec<String>) {
    let mut by_service: Vec<Vec<Span>> = vec![Vec::new(); CHAIN.len()];
    let mut ids = Vec::new();
    for t in 0..TRACES_PER_REQUEST {
        let trace_id: Vec<u8> = [fastrand::u64(..), fastrand::u64(..)]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        ids.push(trace_id.iter().map(|b| format!("{b:02x}")).collect());
        let begin = start + t as u64 * 1_000_000;
        let total = fastrand::u64(5_000_000..80_000_000);
        let failed = fastrand::u8(..) < 13;
        let mut parent = Vec::new();
        for (hop, service) in CHAIN.iter().enumerate() {
            let offset = hop as u64 * 500_000;
            let duration = total >> hop;
            let route = format!("/{service}/{{id}}");
            let server_id = fastrand::u64(1..).to_be_bytes().to_vec();
            let status = if failed && hop == CHAIN.len() - 1 {
                503
            } else {
                200
            };
            let mut server = Span {
                trace_id: trace_id.clone(),
                span_id: server_id.clone(),
                parent_span_id: parent.clone(),
                name: format!("GET {route}"),
                kind: 2,
                start_time_unix_nano: begin + offset,
                end_time_unix_nano: begin + offset + duration,
                attributes: vec![
                    text("http.request.method", "GET"),
                    text("http.route", &route),
                    attr("http.response.status_code", Value::IntValue(status)),
                    text("tracemesh.response_flags", "-"),
                    text("user.tier", if t % 3 == 0 { "gold" } else { "standard" }),
                ],
                ..Default::default()
            };
            if status >= 500 {
                server.status = Some(Status {
                    code: 2,
                    message: "unavailable".into(),
                });
            }
            by_service[hop].push(server);
            if let Some(next) = CHAIN.get(hop + 1) {
                let client_id = fastrand::u64(1..).to_be_bytes().to_vec();
                by_service[hop].push(Span {
                    trace_id: trace_id.clone(),
                    span_id: client_id.clone(),
                    parent_span_id: server_id,
                    name: format!("GET {next}"),
                    kind: 3,
                    start_time_unix_nano: begin + offset + 200_000,
                    end_time_unix_nano: begin + offset + 200_000 + (total >> (hop + 1)) + 300_000,
                    attributes: vec![
                        text("peer.service", next),
                        text("http.request.method", "GET"),
                    ],
                    ..Default::default()
                });
                parent = client_id;
            } else {
                by_service[hop].push(Span {
                    trace_id: trace_id.clone(),
                    span_id: fastrand::u64(1..).to_be_bytes().to_vec(),
                    parent_span_id: server_id,
                    name: "SELECT ratings".into(),
                    kind: 1,
                    start_time_unix_nano: begin + offset + 100_000,
                    end_time_unix_nano: begin + offset + 100_000 + duration / 2,
                    ..Default::default()
                });
            }
        }
    }
    let resource_spans = by_service
        .into_iter()
        .zip(CHAIN)
        .map(|(spans, service)| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    text("service.name", service),
                    text("k8s.namespace.name", "bookinfo"),
                    text("service.instance.id", &format!("{service}-{}", seq % 3)),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    (ExportTraceServiceRequest { resource_spans }, ids)
}

/// One GET on a fresh connection; the answer's status and body.
fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let status = String::from_utf8_lossy(&raw[9..12]).parse().unwrap_or(0);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |p| p + 4);
    (status, raw[split..].to_vec())
}

/// Runs `path(i)` `n` times; returns (median, p99) in ms, checking each answer.
fn time(
    addr: SocketAddr,
    n: usize,
    path: impl Fn(usize) -> String,
    check: impl Fn(&[u8]),
) -> (f64, f64) {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let path = path(i);
        let started = Instant::now();
        let (status, body) = get(addr, &path);
        times.push(started.elapsed());
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        check(&body);
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99))
}

fn main() {
    if !support::measuring("query") {
        return;
    }
    let spans = support::env("BENCH_SPANS", 1 << 20);
    let queries = support::env("BENCH_QUERIES", 200) as usize;
    let per_request = (TRACES_PER_REQUEST * SPANS_PER_TRACE) as u64;
    let requests = spans.div_ceil(per_request);
    let data = tempfile::Builder::new()
        .prefix("tracemesh-query-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let support::Started {
        mut child,
        grpc,
        http,
        ..
    } = support::start_collector(data.path(), []);

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let first = now - 3_000_000_000_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let trace_ids: Vec<String> = runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
                    .await
                    .unwrap();
                let mut sample = Vec::new();
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= requests {
                        break;
                    }
                    let (request, ids) =
                        request(seq, first + seq * TRACES_PER_REQUEST as u64 * 1_000_000);
                    loop {
                        match client.export(request.clone()).await {
                            Ok(_) => break,
                            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                                tokio::time::sleep(Duration::from_millis(50)).await
                            }
                            Err(s) => panic!("export failed: {s:?}"),
                        }
                    }
                    sample.push(ids[fastrand::usize(..ids.len())].clone());
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
    let sent = requests * per_request;
    while (metric(http, "tracemesh_collector_index_spans_total") as u64) < sent {
        std::thread::sleep(Duration::from_millis(100));
    }
    // One commit interval more, so every span is searchable.
    let commits = metric(http, "tracemesh_collector_index_commit_seconds_count");
    while metric(http, "tracemesh_collector_index_commit_seconds_count") <= commits {
        std::thread::sleep(Duration::from_millis(100));
    }
    let ingest = started.elapsed();
    println!(
        "query bench: {sent} spans ingested and indexed in {:.1} s",
        ingest.as_secs_f64()
    );

    let start_us = first / 1000;
    let end_us = now / 1000 + 60_000_000;
    let by_id = time(
        http,
        queries.max(1000),
        |i| format!("/api/traces/{}", trace_ids[i % trace_ids.len()]),
        |body| {
            assert!(body.windows(8).any(|w| w == b"\"spanID\""));
        },
    );
    let tags = "%7B%22user.tier%22%3A%22gold%22%7D";
    let search = time(
        http,
        queries,
        |i| {
            // Each hop's spans are half as long as the one before.
            let hop = i % CHAIN.len();
            let min_ms = 40 >> hop;
            format!(
                "/api/traces?service={}&tags={tags}&minDuration={min_ms}ms&start={start_us}&end={end_us}&limit=20",
                CHAIN[hop]
            )
        },
        |body| assert!(body.starts_with(b"{\"data\":[{")),
    );
    let p99 = time(
        http,
        queries,
        |i| {
            format!(
                "/api/v1/latency?service={}&start={start_us}&end={end_us}",
                CHAIN[i % CHAIN.len()]
            )
        },
        |body| assert!(String::from_utf8_lossy(body).contains("\"p99_ms\":")),
    );
    let lookback_ms = (end_us - start_us) / 1000 + 60_000;
    let graph = time(
        http,
        queries,
        |_| {
            format!(
                "/api/dependencies?endTs={}&lookback={lookback_ms}",
                end_us / 1000
            )
        },
        |body| {
            assert!(
                String::from_utf8_lossy(body)
                    .contains("\"parent\":\"reviews\",\"child\":\"ratings\"")
            )
        },
    );
    // Jaeger UI's Monitor tab: a service's p95 over 10-minute windows,
    // one point a minute over the last hour, per operation.
    let monitor = time(
        http,
        queries,
        |i| {
            format!(
                "/api/metrics/latencies?service={}&quantile=0.95&groupByOperation=true&endTs={}&lookback={lookback_ms}&step=60000&ratePer=600000",
                CHAIN[i % CHAIN.len()],
                end_us / 1000
            )
        },
        |body| assert!(String::from_utf8_lossy(body).contains("\"doubleValue\":")),
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    println!("| query ({sent} spans, via the HTTP API) | median | p99 | target (p99) |");
    println!("|---|---|---|---|");
    println!(
        "| trace by id ({SPANS_PER_TRACE} spans), `/api/traces/{{id}}` | {:.2} ms | {:.2} ms | < 10 ms |",
        by_id.0, by_id.1
    );
    println!(
        "| search: service + tag + minDuration, limit 20, `/api/traces` | {:.2} ms | {:.2} ms | < 100 ms |",
        search.0, search.1
    );
    println!(
        "| p50–p99 latency of one service, whole range, `/api/v1/latency` | {:.2} ms | {:.2} ms | < 200 ms |",
        p99.0, p99.1
    );
    println!(
        "| dependency graph, whole range, `/api/dependencies` | {:.2} ms | {:.2} ms | < 200 ms |",
        graph.0, graph.1
    );
    println!(
        "| Monitor tab: p95 per operation over 10-minute windows, `/api/metrics/latencies` | {:.2} ms | {:.2} ms | < 200 ms |",
        monitor.0, monitor.1
    );
}
