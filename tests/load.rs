//! End-to-end tests of `tracemesh load`: the real binary against a real
//! HTTP server started here on port 0.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::upstream::{Upstream, closed_port};
use http::Version;
use serde_json::Value;

/// Runs `tracemesh load ARGS --json` and returns its report.
async fn load(args: &[&str]) -> Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tracemesh"))
        .arg("load")
        .args(args)
        .arg("--json")
        .output()
        .await
        .expect("run tracemesh load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tracemesh load {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not json ({e}): {stdout}"))
}

/// The nearest-rank percentile of sorted samples: the smallest sample with at
/// least `q` of all samples at or below it.
fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_rate_is_kept_and_percentiles_match_the_samples() {
    let upstream = Upstream::start("rate").await;
    let dir = tempfile::tempdir().unwrap();
    let samples_path = dir.path().join("samples.txt");
    let url = format!("http://{}/", upstream.addr);
    let report = load(&[
        "-c",
        "4",
        "-qps",
        "200",
        "-t",
        "5s",
        "--samples-out",
        samples_path.to_str().unwrap(),
        &url,
    ])
    .await;

    // The schedule has exactly 5 s × 200 slots, and the rate is over the run.
    assert_eq!(report["count"], 1000, "{report:#}");
    assert_eq!(report["codes"]["200"], 1000, "{report:#}");
    assert_eq!(upstream.count(), 1000);
    let rate = report["actual_qps"].as_f64().unwrap();
    assert!(
        (rate - 200.0).abs() <= 200.0 * 0.02,
        "rate {rate} not within 2% of 200"
    );

    // Percentiles against an independent computation on the raw samples.
    let mut samples: Vec<u64> = std::fs::read_to_string(&samples_path)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(samples.len(), 1000);
    samples.sort_unstable();
    let latency = &report["latency_us"];
    assert_eq!(latency["count"], 1000);
    for (key, q) in [
        ("p50", 0.50),
        ("p75", 0.75),
        ("p90", 0.90),
        ("p99", 0.99),
        ("p99.9", 0.999),
    ] {
        let reported = latency[key].as_u64().unwrap();
        let reference = nearest_rank(&samples, q);
        // The HDR histogram keeps three significant digits (and reports the
        // top of a value's bucket): equal, or above by under 0.1%.
        assert!(
            reported >= reference && reported <= reference + reference / 1000 + 1,
            "{key}: reported {reported} µs, samples say {reference} µs"
        );
    }
    let (min, max) = (samples[0], samples[999]);
    assert!(latency["min"].as_u64().unwrap() <= min);
    assert!(latency["max"].as_u64().unwrap() >= max);
    let histogram_total: u64 = report["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(histogram_total, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_keeps_the_url_host_and_each_request_gets_a_trace() {
    let upstream = Upstream::start("h1").await;
    let report = load(&[
        "-c",
        "3",
        "--qps",
        "0",
        "-n",
        "60",
        "--traceparent",
        "-H",
        "x-test: yes",
        "--connect-to",
        &upstream.addr.to_string(),
        "http://reviews.default.svc.cluster.local:9080/api?x=1",
    ])
    .await;
    assert_eq!(report["count"], 60, "{report:#}");
    assert_eq!(report["codes"]["200"], 60);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 60);
    let mut traces = HashSet::new();
    for request in &seen {
        assert_eq!(request.version, Version::HTTP_11);
        assert_eq!(request.path, "/api?x=1");
        assert_eq!(
            request.headers["host"],
            "reviews.default.svc.cluster.local:9080"
        );
        assert_eq!(request.headers["x-test"], "yes");
        let traceparent = request.headers["traceparent"].to_str().unwrap();
        assert!(traceparent.starts_with("00-") && traceparent.ends_with("-01"));
        traces.insert(traceparent[3..35].to_owned());
    }
    assert_eq!(traces.len(), 60, "a new trace per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_prior_knowledge_with_a_payload() {
    let upstream = Upstream::start("h2").await;
    let url = format!("http://{}/echo", upstream.addr);
    let report = load(&[
        "--h2",
        "-c",
        "2",
        "--qps",
        "100",
        "-n",
        "40",
        "--payload-size",
        "1000",
        &url,
    ])
    .await;
    assert_eq!(report["protocol"], "HTTP/2");
    assert_eq!(report["codes"]["200"], 40, "{report:#}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 40);
    assert!(
        seen.iter()
            .all(|s| s.version == Version::HTTP_2 && s.method == "POST" && s.body_len == 1000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_counts_connect_errors() {
    let addr = closed_port().await;
    let url = format!("http://{addr}/");
    let report = load(&[
        "-c",
        "2",
        "--qps",
        "50",
        "-n",
        "10",
        "--timeout",
        "2s",
        &url,
    ])
    .await;
    assert_eq!(report["count"], 10, "{report:#}");
    assert_eq!(report["errors"]["connect"], 10);
    assert_eq!(report["latency_us"]["count"], 0);
    assert!(
        report["first_error"]
            .as_str()
            .unwrap()
            .contains(&addr.to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_responses_time_out_and_the_connection_is_replaced() {
    let upstream = Upstream::start("slow").await;
    let url = format!("http://{}/slow/2000", upstream.addr);
    let started = std::time::Instant::now();
    let report = load(&[
        "-c",
        "1",
        "--qps",
        "0",
        "-n",
        "2",
        "--timeout",
        "200ms",
        &url,
    ])
    .await;
    assert_eq!(report["errors"]["timeout"], 2, "{report:#}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
