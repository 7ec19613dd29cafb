//! A real headless Chromium drives the UI: search, the trace waterfall
//! (also of a 5,000-span trace), the service overview's charts and the
//! dependency graph, each from a deep link, with a screenshot per page
//! under `target/tmp/query-ui/`.

use std::time::Instant;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tracemesh_collector::ids::TraceId;

use crate::data::{self, FAIL_EVERY};
use crate::harness::eventually;
use crate::webdriver::Browser;

const BIG_SPANS: u64 = 5000;
const BIG_SERVICES: u64 = 5;

/// One trace of 5,000 spans over five services: a tree, four children each.
fn big_trace(base: u64) -> (TraceId, ExportTraceServiceRequest) {
    let trace = TraceId([0xbb; 16]);
    let mut by_service: Vec<Vec<Span>> = vec![Vec::new(); BIG_SERVICES as usize];
    for k in 0..BIG_SPANS {
        let depth = (64 - (k + 1).leading_zeros()) as u64;
        by_service[(k % BIG_SERVICES) as usize].push(Span {
            trace_id: trace.0.to_vec(),
            span_id: (k + 1).to_be_bytes().to_vec(),
            parent_span_id: if k == 0 {
                Vec::new()
            } else {
                ((k - 1) / 4 + 1).to_be_bytes().to_vec()
            },
            name: format!("step-{}", k % 17),
            kind: 1,
            start_time_unix_nano: base + depth * 1_000_000 + k * 1000,
            end_time_unix_nano: base + 200_000_000 - depth * 1_000_000,
            ..Default::default()
        });
    }
    let resource_spans = by_service
        .into_iter()
        .enumerate()
        .map(|(i, spans)| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(format!("batch-{i}"))),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    (trace, ExportTraceServiceRequest { resource_spans })
}

#[test]
fn ui_searches_shows_waterfalls_and_charts_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let (collector, sent) = data::start(dir.path());
    let (big, request) = big_trace(sent.base);
    data::send(&collector, &request);
    eventually("the 5,000-span trace indexed", || {
        let (status, body) = data::get(&collector, &format!("/api/traces/{big}"));
        (status == 200 && body["data"][0]["spans"].as_array()?.len() == BIG_SPANS as usize)
            .then_some(())
    });
    let base = format!("http://{}", collector.http);
    let browser = Browser::start();

    // Search from a deep link, then refine it in the form.
    browser.open(&format!("{base}/search?service=cart&since=1h&limit=20"));
    browser.wait_ready("/search");
    assert_eq!(browser.count("#trace-list .trace-row"), 20);
    assert_eq!(browser.count("#scatter circle"), 20);
    browser.type_into("#tags", "error=true");
    browser.type_into("#min_duration", "150ms");
    browser.script("document.body.dataset.ready = 'submitting'; return null;");
    browser.click("#find");
    browser.wait_ready("/search");
    let url = browser.script("return location.search;");
    assert!(
        url.as_str().unwrap().contains("min_duration=150ms"),
        "the search is a deep link: {url}"
    );
    // Failed calls (every 10th) of at least 150 ms: 150, 160, ..., 190.
    let expected = (150..200).filter(|t| t % FAIL_EVERY == 0).count() as u64;
    assert_eq!(browser.count("#trace-list .trace-row"), expected);
    assert_eq!(browser.count("#scatter circle.err"), expected);
    browser.screenshot("search");

    // Open a trace from the list: its waterfall has all five spans.
    browser.click("#trace-list .trace-row a");
    let trace_path = browser.script("return location.pathname;");
    browser.wait_ready(trace_path.as_str().unwrap());
    assert_eq!(browser.count("#waterfall .row"), 5);
    assert_eq!(browser.count("#waterfall .bar.error"), 1);
    assert_eq!(
        browser.script("return document.getElementById('span-count').textContent;"),
        "5"
    );
    browser.click("#waterfall .bar.error");
    let details = browser.script("return document.getElementById('span-details').innerText;");
    let details = details.as_str().unwrap();
    for expected in [
        "GET /cart/items",
        "upstream connect error",
        "cache miss",
        "k8s.namespace.name",
    ] {
        assert!(
            details.contains(expected),
            "span details lack {expected:?}: {details}"
        );
    }
    browser.screenshot("trace");

    // A 5,000-span trace, from a deep link.
    let started = Instant::now();
    browser.open(&format!("{base}/trace/{big}"));
    browser.wait_ready(&format!("/trace/{big}"));
    let elapsed = started.elapsed();
    assert_eq!(browser.count("#waterfall .row"), BIG_SPANS);
    assert_eq!(browser.count(".legend i"), BIG_SERVICES);
    println!("5,000-span trace: loaded and drawn in {elapsed:?}");
    browser.screenshot("trace-5000");

    // The service overview draws its three charts.
    browser.open(&format!("{base}/services?service=cart&since=1h"));
    browser.wait_ready("/services");
    for chart in ["#chart-rate", "#chart-errors"] {
        assert_eq!(browser.count(&format!("{chart} path.line")), 1, "{chart}");
    }
    assert_eq!(browser.count("#chart-latency path.line"), 3);
    let path =
        browser.script("return document.querySelector('#chart-rate path.line').getAttribute('d');");
    assert!(
        path.as_str().unwrap().matches('L').count() >= 10,
        "a line over the hour: {path}"
    );
    assert_eq!(
        browser.count("#operations tr"),
        3,
        "header and two operations"
    );
    browser.screenshot("services");

    // The dependency graph.
    browser.open(&format!("{base}/dependencies"));
    browser.wait_ready("/dependencies");
    let (_, deps) = data::get(&collector, "/api/v1/dependencies?since=48h");
    let edges = deps["edges"].as_array().unwrap();
    let mut services: Vec<&str> = edges
        .iter()
        .flat_map(|e| [e["parent"].as_str().unwrap(), e["child"].as_str().unwrap()])
        .collect();
    services.sort();
    services.dedup();
    assert!(
        services.len() >= 3 + BIG_SERVICES as usize,
        "the shop's and the big trace's services: {deps}"
    );
    assert_eq!(
        browser.count("#dependency-graph .node"),
        services.len() as u64
    );
    assert_eq!(
        browser.count("#dependency-graph line.edge"),
        edges.len() as u64
    );
    assert_eq!(browser.count("#edges tr"), edges.len() as u64 + 1);
    let table = browser.script("return document.getElementById('edges').innerText;");
    assert!(
        table.as_str().unwrap().contains("frontend\tcart\t200\t20"),
        "{table}"
    );
    browser.screenshot("dependencies");
    drop(browser);
    collector.stop();
}
