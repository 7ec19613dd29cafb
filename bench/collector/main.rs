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

mod load;
#[path = "../support/mod.rs"]
mod support;

use support::metric;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracemesh_collector::ids::TraceId;
use tracemesh_collector::store::SpanReader;

use load::{BATCH, SPANS_PER_TRACE};

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
        ..
    } = support::start_collector(data.path(), extra.split_whitespace());
    let pid = child.id();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
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
    let pool = load::pool(now);
    let started = Instant::now();
    let all_traces: Vec<TraceId> = runtime.block_on(load::run(pool, grpc, batches, concurrency));
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
