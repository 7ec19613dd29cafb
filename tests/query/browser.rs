//! A real headless Chromium drives the UI: search (sorted, tags, trace
//! compare), the trace waterfall (critical path, span links, event offsets,
//! multi-line values, JSON download, span deep links, the trace-id box; also
//! of a 5,000-span trace), the service overview's charts (what they count,
//! absolute time ranges, time-axis labels), "why is it slower?" and the
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

/// A trace whose one span links to shop trace 0's root and carries a
/// stack trace.
fn linked_trace(base: u64, target: TraceId) -> (TraceId, ExportTraceServiceRequest) {
    use opentelemetry_proto::tonic::trace::v1::span::Link;
    let trace = TraceId([0xdd; 16]);
    let span = Span {
        trace_id: trace.0.to_vec(),
        span_id: vec![0xd1; 8],
        name: "process batch".into(),
        kind: 5,
        start_time_unix_nano: base,
        end_time_unix_nano: base + 3_000_000,
        attributes: vec![KeyValue {
            key: "exception.stacktrace".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(
                    "Error: boom\n    at handler (app.js:10:5)\n    at main (app.js:20:1)".into(),
                )),
            }),
            ..Default::default()
        }],
        links: vec![Link {
            trace_id: target.0.to_vec(),
            span_id: ((1u64 << 8) | 1).to_be_bytes().to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("worker".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    (trace, request)
}

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
    let (linked, request) = linked_trace(sent.base, sent.shop[0]);
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

    // Longest first, without a guessed minimum duration; then compare the
    // longest trace with the third longest.
    browser.open(&format!(
        "{base}/search?service=cart&since=1h&limit=5&sort=longest"
    ));
    browser.wait_ready("/search");
    assert_eq!(
        browser.script("return document.getElementById('sort').value;"),
        "longest"
    );
    let first =
        browser.script("return document.querySelector('#trace-list .trace-row a').textContent;");
    assert_eq!(
        first,
        sent.shop[199].to_string()[..16],
        "cart's longest call is trace 199's"
    );
    browser.script("document.querySelectorAll('#trace-list .pick')[0].click(); document.querySelectorAll('#trace-list .pick')[2].click(); return null;");
    browser.click("#compare");
    browser.wait_ready("/compare");
    assert_eq!(browser.count("#comparison tr.cmp"), 5, "five spans matched");
    browser.open(&format!(
        "{base}/compare?a={}&b={}",
        sent.shop[199], sent.shop[19]
    ));
    browser.wait_ready("/compare");
    assert!(
        browser.count("#comparison tr.cmp.faster") >= 2,
        "cart's call and its caller's are faster in B"
    );
    browser.open(&format!(
        "{base}/search?service=cart&since=1h&limit=20&tags=error%3Dtrue&min_duration=150ms"
    ));
    browser.wait_ready("/search");
    browser.screenshot("compare");

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
    // The critical path is drawn; event times are offsets from the span's start.
    assert!(
        browser.count("#waterfall .critical") >= 3,
        "the path runs through frontend, cart, db"
    );
    assert_eq!(
        browser.script("return document.querySelector('#events td.offset').textContent;"),
        "+0.010 ms"
    );
    browser.screenshot("trace");

    // JSON download of the trace.
    browser.script("window.__downloads = []; const click = HTMLAnchorElement.prototype.click; HTMLAnchorElement.prototype.click = function () { if (this.download) window.__downloads.push(this.download); return click.call(this); }; return null;");
    browser.click("#download");
    let shown = browser.script("return location.pathname.slice(7);");
    assert_eq!(
        browser.script("return window.__downloads;"),
        serde_json::json!([format!("trace-{}.json", shown.as_str().unwrap())])
    );

    // The trace-id box opens a trace; a deep link opens one span of it;
    // a span link leads to the linked span; multi-line values stay whole.
    browser.type_into("#trace-id", &linked.to_string());
    browser.script("document.body.dataset.ready = 'submitting'; return null;");
    browser.click("#open-trace");
    browser.wait_ready(&format!("/trace/{linked}"));
    browser.open(&format!("{base}/trace/{linked}?span=d1d1d1d1d1d1d1d1"));
    browser.wait_ready(&format!("/trace/{linked}"));
    let details = browser.script("return document.getElementById('span-details').innerText;");
    assert!(
        details.as_str().unwrap().contains("span d1d1d1d1d1d1d1d1"),
        "{details}"
    );
    let stack = browser.script("return [...document.querySelectorAll('#span-details td.value')].map(td => td.innerText).find(t => t.startsWith('Error: boom'));");
    assert_eq!(stack.as_str().unwrap().lines().count(), 3, "{stack}");
    browser.screenshot("trace-links");
    browser.script("document.body.dataset.ready = 'following'; return null;");
    browser.click("#links a.span-link");
    browser.wait_ready(&format!("/trace/{}", sent.shop[0]));
    assert_eq!(
        browser.script("return document.querySelector('#waterfall .row.selected').dataset.spanId;"),
        "0000000000000101",
        "the linked span is selected"
    );

    // A 5,000-span trace, from a deep link.
    let started = Instant::now();
    browser.open(&format!("{base}/trace/{big}"));
    browser.wait_ready(&format!("/trace/{big}"));
    let elapsed = started.elapsed();
    assert_eq!(browser.count("#waterfall .row"), BIG_SPANS);
    assert_eq!(browser.count(".legend i"), BIG_SERVICES);
    println!("5,000-span trace: loaded and drawn in {elapsed:?}");
    browser.screenshot("trace-5000");

    // The service overview draws its three charts over an absolute range,
    // with clock labels on the time axis, and says what it counted.
    let start_us = sent.base / 1000 - 60_000_000;
    let end_us = start_us + 3_600_000_000;
    browser.open(&format!(
        "{base}/services?service=cart&kind=inbound&start={start_us}&end={end_us}"
    ));
    browser.wait_ready("/services");
    assert_eq!(
        browser.script("return document.getElementById('since').value;"),
        "custom"
    );
    assert_eq!(browser.count("#chart-rate path.line"), 1);
    assert_eq!(
        browser.count("#chart-errors path.line"),
        2,
        "errors and 4xx"
    );
    assert_eq!(browser.count("#chart-latency path.line"), 3);
    assert_eq!(browser.count("#chart-rate text.x-label"), 5);
    let label =
        browser.script("return document.querySelector('#chart-rate text.x-label').textContent;");
    assert!(
        regex::Regex::new(r"^\d\d:\d\d$")
            .unwrap()
            .is_match(label.as_str().unwrap()),
        "{label}"
    );
    let counted = browser.script("return document.getElementById('counted').innerText;");
    assert!(
        counted.as_str().unwrap().contains("requests cart served"),
        "{counted}"
    );
    let path =
        browser.script("return document.querySelector('#chart-rate path.line').getAttribute('d');");
    assert!(
        path.as_str().unwrap().matches('L').count() >= 10,
        "a line over the hour: {path}"
    );
    assert_eq!(
        browser.count("#operations tr"),
        2,
        "header and the one operation cart serves"
    );
    browser.screenshot("services");

    // Why is it slower? The longest trace against the typical one.
    browser.open(&format!("{base}/explain?trace={}&since=1h", sent.shop[199]));
    browser.wait_ready("/explain");
    let answer = browser.script("return document.getElementById('explain-answer').innerText;");
    assert!(
        answer.as_str().unwrap().starts_with("Most added by cart"),
        "{answer}"
    );
    assert!(browser.count("#explain tr.hop") >= 3);
    browser.screenshot("explain");

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
