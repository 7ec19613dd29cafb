//! The collector under hostile input, at full size, through its real
//! OTLP/HTTP listener: what one such input costs in time, memory and
//! stored data. Each case starts a fresh release `tracemesh collector`.
//!
//! - `attributes`: one span with 100,000 attributes, then one with nine
//!   1 MiB attribute keys: time to acknowledge and to index, peak memory;
//! - `far_future`: one request of 1,000 spans dated over the next ten
//!   years beside 100 of now: spans refused, partitions and files made,
//!   time until the current spans are indexed, the disk-usage metric
//!   against `du`;
//! - `wal_damage`: 2,000 acknowledged batches in the WAL (nothing indexed),
//!   `kill -9`, four bytes flipped in the first record, restart: records
//!   replayed and lost, time to recover.
//!
//! `cargo bench --bench hostile` (env: BENCH_CASES, a comma-separated
//! subset; BENCH_TRACEMESH, another build's binary to measure it the same
//! way, e.g. the one before a change).

// A benchmark run: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used)]

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use support::metric;

const DAY: u64 = 86_400 * 1_000_000_000;

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn kv(key: String, value: String) -> KeyValue {
    KeyValue {
        key,
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

/// `spans` spans of one new trace starting at `start`, 1 ms each.
fn request(spans: usize, start: u64) -> ExportTraceServiceRequest {
    let trace: [u8; 16] = std::array::from_fn(|_| fastrand::u8(1..));
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name".into(), "hostile".into())],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..spans)
                    .map(|i| Span {
                        trace_id: trace.to_vec(),
                        span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                        name: "op".into(),
                        kind: 2,
                        start_time_unix_nano: start,
                        end_time_unix_nano: start + 1_000_000,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// POSTs an OTLP/HTTP protobuf request; the status and rejected spans.
fn post(addr: SocketAddr, request: &ExportTraceServiceRequest) -> (u16, i64) {
    let body = request.encode_to_vec();
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(&body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&raw[9..12]).parse().unwrap();
    let rejected = ExportTraceServiceResponse::decode(&raw[split + 4..])
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| p.rejected_spans);
    (status, rejected)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn wait_indexed(http: SocketAddr, spans: f64, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if metric(http, "tracemesh_collector_index_spans_total") >= spans {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn du(path: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "--block-size=1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn files(path: &Path) -> usize {
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => files(&e.path()),
                _ => 1,
            })
            .sum()
    })
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tracemesh-hostile-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn attributes() {
    let data = tempdir();
    let started = support::start_collector(data.path(), ["--commit-interval", "200ms"]);
    let pid = started.child.id();
    let idle = rss_kib(pid);
    let mut many = request(1, now_nanos());
    many.resource_spans[0].scope_spans[0].spans[0].attributes = (0..100_000)
        .map(|i| kv(format!("attribute.{i}"), format!("value {i}")))
        .collect();
    let t = Instant::now();
    let (status, _) = post(started.otlp_http, &many);
    let acked = t.elapsed();
    let indexed = wait_indexed(started.http, 1.0, Duration::from_secs(300));
    let mut keys = request(1, now_nanos());
    keys.resource_spans[0].scope_spans[0].spans[0].attributes = (0..9u8)
        .map(|i| kv(char::from(b'a' + i).to_string().repeat(1 << 20), "v".into()))
        .collect();
    let (keys_status, _) = post(started.otlp_http, &keys);
    wait_indexed(started.http, 2.0, Duration::from_secs(300));
    let peak = rss_kib(pid);
    stop(started.child);
    println!(
        "| attributes | 100k-attribute span: status / acknowledged in | {status} / {:.2} s |",
        acked.as_secs_f64()
    );
    println!(
        "| attributes | 100k-attribute span: indexed after | {} |",
        indexed.map_or("not within 300 s".into(), |d| format!(
            "{:.2} s",
            d.as_secs_f64()
        ))
    );
    println!("| attributes | nine 1 MiB keys: status | {keys_status} |");
    println!(
        "| attributes | peak resident memory (idle) | {} MiB ({} MiB) |",
        peak / 1024,
        idle / 1024
    );
}

fn far_future() {
    let data = tempdir();
    let started = support::start_collector(data.path(), ["--commit-interval", "200ms"]);
    let mut flood = request(1000, 0);
    for (i, span) in flood.resource_spans[0].scope_spans[0]
        .spans
        .iter_mut()
        .enumerate()
    {
        span.start_time_unix_nano = now_nanos() + (i as u64 + 1) * (365 * DAY / 100);
        span.end_time_unix_nano = span.start_time_unix_nano + 1_000_000;
    }
    flood
        .resource_spans
        .extend(request(100, now_nanos()).resource_spans);
    let t = Instant::now();
    let (status, rejected) = post(started.otlp_http, &flood);
    let acked = t.elapsed();
    let accepted = 1100 - rejected;
    let indexed = wait_indexed(started.http, accepted as f64, Duration::from_secs(300));
    let partitions = metric(started.http, "tracemesh_collector_partitions");
    stop(started.child);
    // The disk-usage metric as a fresh start measures it.
    let restarted = support::start_collector(data.path(), []);
    let reported = metric(restarted.http, "tracemesh_collector_disk_bytes");
    let measured = du(data.path());
    stop(restarted.child);
    println!(
        "| far_future | status / spans refused / acknowledged in | {status} / {rejected} / {:.2} s |",
        acked.as_secs_f64()
    );
    println!(
        "| far_future | accepted spans indexed after | {} |",
        indexed.map_or("not within 300 s".into(), |d| format!(
            "{:.2} s",
            d.as_secs_f64()
        ))
    );
    println!(
        "| far_future | partitions / files in the store | {partitions} / {} |",
        files(&data.path().join("spans"))
    );
    println!(
        "| far_future | disk-usage metric / du of the data directory | {:.0} KiB / {} KiB |",
        reported / 1024.0,
        measured / 1024
    );
}

fn wal_damage() {
    const BATCHES: usize = 2000;
    let data = tempdir();
    let started = support::start_collector(data.path(), ["--commit-interval", "1h"]);
    for _ in 0..BATCHES {
        let (status, _) = post(started.otlp_http, &request(100, now_nanos()));
        assert_eq!(status, 200);
    }
    let mut child = started.child;
    child.kill().unwrap();
    let _ = child.wait();
    let wal = data.path().join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    segments.sort();
    let first = &segments[0];
    let mut bytes = std::fs::read(first).unwrap();
    let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    for byte in &mut bytes[16 + len / 2..16 + len / 2 + 4] {
        *byte ^= 0xff;
    }
    std::fs::write(first, &bytes).unwrap();
    let t = Instant::now();
    let restarted = support::start_collector(data.path(), []);
    let recovered_in = t.elapsed();
    let replayed = metric(
        restarted.http,
        "tracemesh_collector_wal_replayed_records_total",
    );
    let lost = metric(restarted.http, "tracemesh_collector_wal_lost_records_total");
    stop(restarted.child);
    println!(
        "| wal_damage | records replayed / reported lost, of {BATCHES} acknowledged | {replayed} / {lost} |"
    );
    println!(
        "| wal_damage | start with recovery ({} MiB of WAL) | {:.2} s |",
        bytes.len() >> 20,
        recovered_in.as_secs_f64()
    );
}

fn main() {
    if !support::measuring("hostile") {
        return;
    }
    let cases =
        std::env::var("BENCH_CASES").unwrap_or_else(|_| "attributes,far_future,wal_damage".into());
    println!("binary: {}", support::tracemesh());
    println!("| case | measure | value |");
    println!("|---|---|---|");
    for case in cases.split(',') {
        match case.trim() {
            "attributes" => attributes(),
            "far_future" => far_future(),
            "wal_damage" => wal_damage(),
            other => println!("unknown case {other}"),
        }
    }
}
