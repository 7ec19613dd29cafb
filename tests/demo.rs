#![allow(clippy::unwrap_used)]
//! `tracemesh demo` end to end: the real binary runs Bookinfo behind real
//! sidecars, entered through the ingress gateway, for a few seconds;
//! afterwards its span store must hold whole traces from the gateway
//! across five hops, the reviews split must follow the
//! VirtualService, and productpage's p99 from the query API must agree
//! with the spans and with what the load generator measured.

mod common;
#[allow(dead_code)]
#[path = "collector/harness.rs"]
mod harness;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use common::demo::{Demo, Finished};
use tracemesh_collector::attributes;
use tracemesh_collector::ids::{SpanId, TraceId};
use tracemesh_collector::store::{SpanQuery, SpanReader, SpanSummary};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// One default demo run, shared by the checks below.
fn default_run() -> &'static (Finished, Vec<SpanSummary>) {
    static RUN: OnceLock<(Finished, Vec<SpanSummary>)> = OnceLock::new();
    RUN.get_or_init(|| {
        let demo = Demo::start(&[
            "--duration",
            "12s",
            "--qps",
            "40",
            "-c",
            "8",
            "--report-every",
            "2s",
        ]);
        let finished = demo.wait(Duration::from_secs(180));
        let spans = all_spans(&SpanReader::open(&finished.data_dir()).unwrap());
        (finished, spans)
    })
}

fn all_spans(reader: &SpanReader) -> Vec<SpanSummary> {
    let mut spans = Vec::new();
    reader
        .scan(&SpanQuery::default(), |s| spans.push(s.clone()))
        .unwrap();
    spans
}

fn by_trace(spans: &[SpanSummary]) -> HashMap<TraceId, Vec<&SpanSummary>> {
    let mut traces: HashMap<TraceId, Vec<&SpanSummary>> = HashMap::new();
    for span in spans {
        traces.entry(span.trace_id).or_default().push(span);
    }
    traces
}

fn parent<'a>(trace: &[&'a SpanSummary], span: &SpanSummary) -> Option<&'a SpanSummary> {
    let id: SpanId = span.parent_span_id?;
    trace.iter().copied().find(|s| s.span_id == id)
}

/// Checks that every ratings server span sits at the end of one chain,
/// ratings ← reviews (client, server) ← productpage (client, server) ←
/// the ingress gateway (server, the root), each child starting after its
/// parent; returns how many there are.
fn five_hop_traces(traces: &HashMap<TraceId, Vec<&SpanSummary>>) -> usize {
    let mut five_hops = 0;
    for trace in traces.values() {
        for ratings in trace
            .iter()
            .filter(|s| &*s.service == "ratings" && s.kind == SERVER)
        {
            let chain: Vec<&SpanSummary> =
                std::iter::successors(Some(*ratings), |s| parent(trace, s)).collect();
            let hops: Vec<(&str, i32)> = chain.iter().map(|s| (&*s.service, s.kind)).collect();
            assert_eq!(
                hops,
                [
                    ("ratings", SERVER),
                    ("reviews", CLIENT),
                    ("reviews", SERVER),
                    ("productpage", CLIENT),
                    ("productpage", SERVER),
                    ("istio-ingressgateway", SERVER),
                ],
                "trace {:?}",
                ratings.trace_id
            );
            assert!(chain[5].parent_span_id.is_none());
            // A child starts after its parent (one machine, one clock).
            for pair in chain.windows(2) {
                assert!(pair[0].start >= pair[1].start);
            }
            five_hops += 1;
        }
    }
    five_hops
}

fn percentile(values: &mut [u64], q: f64) -> u64 {
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

#[test]
fn the_demo_reports_live_numbers_and_stops_cleanly() {
    let (finished, _) = default_run();
    let live = finished
        .stdout
        .iter()
        .filter(|l| l.contains(" req/s ") && l.contains(" p99 ") && l.contains("errors"))
        .count();
    assert!(live >= 3, "live lines:\n{}", finished.stdout.join("\n"));
    assert!(finished.stdout.iter().any(|l| l.contains("/metrics")));
    assert_eq!(finished.done["error_rate"], 0.0);
    // 40 qps for 12 s, with room for a loaded machine.
    assert!(finished.done["requests"] >= 400.0, "{:?}", finished.done);
}

#[test]
fn traces_run_productpage_reviews_ratings_across_five_hops() {
    let (finished, spans) = default_run();
    let traces = by_trace(spans);
    let requests = finished.done["requests"] as usize;
    // Every request of the load is one trace rooted at the ingress
    // gateway's span (the load enters at $GATEWAY_URL/productpage), with
    // productpage's inbound span its child.
    let rooted: Vec<_> = traces
        .values()
        .filter(|t| {
            t.iter().any(|s| {
                let root = parent(t, s).filter(|g| {
                    g.parent_span_id.is_none()
                        && &*g.service == "istio-ingressgateway"
                        && g.kind == SERVER
                });
                root.is_some() && &*s.service == "productpage" && s.kind == SERVER
            })
        })
        .collect();
    assert!(
        rooted.len() * 100 >= requests * 98,
        "{} rooted traces for {requests} requests",
        rooted.len()
    );
    let five_hops = five_hop_traces(&traces);
    // reviews v2 and v3 (half the split) call ratings on every request.
    assert!(
        five_hops * 100 >= requests * 35,
        "{five_hops} five-hop traces of {requests} requests"
    );
    // details is the page's other call: productpage SERVER → CLIENT → details SERVER.
    let details = spans
        .iter()
        .filter(|s| &*s.service == "details" && s.kind == SERVER)
        .count();
    assert!(details * 100 >= requests * 98, "{details} details spans");
    // productpage's own span is named after its service port, as Istio's
    // inbound decorator names it, though the gateway passes the client's
    // Host and the sidecar listens on a free port.
    let pages: Vec<_> = spans
        .iter()
        .filter(|s| &*s.service == "productpage" && s.kind == SERVER)
        .map(|s| &*s.operation)
        .collect();
    assert!(!pages.is_empty());
    assert!(
        pages
            .iter()
            .all(|op| *op == "productpage.default.svc.cluster.local:9080/*"),
        "{:?}",
        pages.first()
    );
}

#[test]
fn the_reviews_split_follows_the_virtual_service() {
    let (finished, spans) = default_run();
    let reader = SpanReader::open(&finished.data_dir()).unwrap();
    let mut versions: HashMap<String, u64> = HashMap::new();
    for span in spans
        .iter()
        .filter(|s| &*s.service == "reviews" && s.kind == SERVER)
    {
        let trace = reader.trace(span.trace_id).unwrap().unwrap();
        let stored = trace
            .spans
            .iter()
            .find(|s| s.span.span_id == span.span_id.0)
            .unwrap();
        let resource = stored.resource.as_ref().unwrap();
        let version = attributes::get_str(&resource.attributes, "service.version").unwrap();
        *versions.entry(version.to_owned()).or_default() += 1;
    }
    let total: u64 = versions.values().sum();
    assert!(total >= 400, "{versions:?}");
    for (version, weight) in [("v1", 0.5), ("v2", 0.3), ("v3", 0.2)] {
        let observed = versions.get(version).copied().unwrap_or(0) as f64;
        let expected = weight * total as f64;
        // 4.5 standard deviations of a binomial count: fails by chance
        // about once in 150 000 runs.
        let tolerance = 4.5 * (total as f64 * weight * (1.0 - weight)).sqrt();
        assert!(
            (observed - expected).abs() <= tolerance,
            "{version}: {observed} of {total}, expected {expected:.0} ± {tolerance:.0} ({versions:?})"
        );
    }
}

/// productpage's inbound p99 as the query API answers it, from a
/// collector started on the finished demo's store.
fn p99_from_query_api(finished: &Finished) -> (f64, f64) {
    let collector = harness::Collector::start(&finished.data_dir(), &[]);
    let response = harness::http_request(
        collector.http,
        "GET",
        "/api/v1/latency?service=productpage&kind=server&since=1h",
        &[],
        &[],
    );
    collector.stop();
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    (
        body["p99_ms"].as_f64().unwrap(),
        body["relative_error"].as_f64().unwrap(),
    )
}

#[test]
fn productpage_p99_from_the_query_api_agrees_with_spans_and_load_generator() {
    let (finished, spans) = default_run();
    let mut durations: Vec<u64> = spans
        .iter()
        .filter(|s| &*s.service == "productpage" && s.kind == SERVER)
        .map(|s| s.duration)
        .collect();
    let from_spans = percentile(&mut durations, 0.99) as f64 / 1e6;
    let (from_api, relative_error) = p99_from_query_api(finished);
    // The API's sketch answers within its stated relative error of the
    // exact p99 (plus a rank's worth of slack at the tail).
    let neighbours = (
        percentile(&mut durations, 0.985) as f64 / 1e6,
        percentile(&mut durations, 0.995) as f64 / 1e6,
    );
    assert!(
        from_api >= neighbours.0 * (1.0 - relative_error) - 1e-6
            && from_api <= neighbours.1 * (1.0 + relative_error) + 1e-6,
        "p99: query API {from_api:.3} ms, spans {from_spans:.3} ms ({neighbours:?})"
    );
    let from_load = finished.done["p99_ms"];
    // The load generator also counts its own connection and the sidecar's
    // accept; on a loaded machine either side can catch a stall. Agree
    // within a factor of three, or within 25 ms.
    let agree = (from_api - from_load).abs() <= 25.0
        || (from_api <= from_load * 3.0 && from_load <= from_api * 3.0);
    assert!(
        agree,
        "p99: query API {from_api:.1} ms, load generator {from_load:.1} ms"
    );
}

#[test]
fn the_dependency_graph_has_the_http_hops_and_ratings_to_mongodb_over_tcp() {
    let (finished, _) = default_run();
    let collector = harness::Collector::start(&finished.data_dir(), &[]);
    let response = harness::http_request(
        collector.http,
        "GET",
        "/api/v1/dependencies?since=1h",
        &[],
        &[],
    );
    collector.stop();
    assert_eq!(response.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    let edges: Vec<(String, String)> = body["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["parent"].to_string(), e["child"].to_string()))
        .collect();
    for (parent, child) in [
        ("istio-ingressgateway", "productpage"),
        ("productpage", "reviews"),
        ("reviews", "ratings"),
        ("ratings", "mongodb"),
    ] {
        assert!(
            edges.contains(&(format!("{parent:?}"), format!("{child:?}"))),
            "{parent} → {child} missing: {body}"
        );
    }
}

/// One run of a scenario at the demo's default load, shared by its checks.
fn scenario_run(scenario: &str) -> Finished {
    let demo = Demo::start(&[
        "--duration",
        "20s",
        "--qps",
        "10",
        "-c",
        "10",
        "--report-every",
        "4s",
        "--scenario",
        scenario,
    ]);
    demo.wait(Duration::from_secs(180))
}

fn slow_ratings() -> &'static Finished {
    static RUN: OnceLock<Finished> = OnceLock::new();
    RUN.get_or_init(|| scenario_run("slow-ratings"))
}

/// What the query service and the CLI answer about productpage, from a
/// collector on the finished demo's store, over the load's own window.
struct Answers {
    /// Every productpage span, as the query defaulted to before it
    /// counted requests served, and those of them with status ERROR.
    every_span: (serde_json::Value, serde_json::Value),
    latency: serde_json::Value,
    errors: serde_json::Value,
    outbound: serde_json::Value,
    /// productpage's calls whose retries ran out (`URX`).
    retries_exhausted: serde_json::Value,
    explain: Option<serde_json::Value>,
}

fn cli(server: &str, args: &[&str]) -> serde_json::Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tracemesh"))
        .arg("query")
        .args(args)
        .args(["--server", server, "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn answers(finished: &Finished, explain: bool) -> Answers {
    let collector = harness::Collector::start(&finished.data_dir(), &[]);
    let get = |path: &str| {
        let response = harness::http_request(collector.http, "GET", path, &[], &[]);
        assert_eq!(
            response.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&response.body)
        );
        serde_json::from_slice::<serde_json::Value>(&response.body).unwrap()
    };
    // From before the load to the moment it ended.
    let start = (finished.ready_at / 1000 - 5_000_000).to_string();
    let end = (finished.done_at / 1000).to_string();
    let window = format!("start={start}&end={end}");
    let server = format!("http://{}", collector.http);
    let latency = get(&format!("/api/v1/latency?service=productpage&{window}"));
    let errors = get(&format!("/api/v1/errors?service=productpage&{window}"));
    let outbound = get(&format!(
        "/api/v1/errors?service=productpage&kind=outbound&{window}"
    ));
    let retries_exhausted = get(&format!(
        "/api/v1/latency?service=productpage&kind=outbound&tag=tracemesh.response_flags%3DURX&{window}"
    ));
    let every_span = (
        get(&format!(
            "/api/v1/latency?service=productpage&kind=all&{window}"
        )),
        get(&format!(
            "/api/v1/latency?service=productpage&kind=all&tag=otel.status_code%3DERROR&{window}"
        )),
    );
    // The CLI prints the same numbers, with the same default: requests served.
    let by_cli = ["--service", "productpage", "--start", &start, "--end", &end];
    assert_eq!(cli(&server, &[&["latency"], &by_cli[..]].concat()), latency);
    assert_eq!(cli(&server, &[&["errors"], &by_cli[..]].concat()), errors);
    let explain = explain.then(|| {
        // A slow page: the one at the 90th percentile (the very slowest
        // few are where a loaded machine's stalls land, wherever they hit).
        let slowest = get(&format!(
            "/api/v1/traces?service=productpage&kind=server&sort=longest&limit=20&{window}"
        ));
        let trace = slowest["traces"].as_array().unwrap().last().unwrap()["trace_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let api = get(&format!("/api/v1/explain?trace={trace}&{window}"));
        assert_eq!(
            cli(&server, &["explain", "--trace", &trace, "--since", "1h"])["hops"][0]["service"],
            api["hops"][0]["service"]
        );
        api
    });
    collector.stop();
    Answers {
        every_span,
        latency,
        errors,
        outbound,
        retries_exhausted,
        explain,
    }
}

/// `value` is within `relative` of `expected`, or within `absolute`.
fn close(value: f64, expected: f64, relative: f64, absolute: f64) -> bool {
    (value - expected).abs() <= (expected.abs() * relative).max(absolute)
}

/// The numbers a user reads off the query service agree with the load
/// generator's own: how many requests productpage served, at what rate,
/// how fast, and which share did not get a 2xx. Tolerances: count within
/// 2% (spans still in a sidecar's queue at the stop), rate within 10%
/// (the window starts at the first span), quantiles at most 25% + 15 ms
/// above the generator's and at least its next lower quantile − 15 ms
/// (the generator also times its own connection, the sidecar's accept
/// and its own scheduling), shares within 2 points.
fn agrees_with_the_load_generator(scenario: &str, finished: &Finished, answers: &Answers) {
    let load = &finished.done;
    let (latency, errors) = (&answers.latency, &answers.errors);
    let report = format!("{scenario}: load {load:?}\nlatency {latency}\nerrors {errors}");
    assert_eq!(latency["counted"]["view"], "inbound", "{report}");
    let count = latency["count"].as_f64().unwrap();
    assert!(close(count, load["requests"], 0.02, 3.0), "count: {report}");
    assert!(
        close(latency["rate"].as_f64().unwrap(), load["qps"], 0.10, 0.0),
        "rate: {report}"
    );
    // Each request's server span lies inside the generator's own timing of
    // it, so no quantile of the spans can exceed the generator's beyond the
    // tolerance. Below, the generator's tail also holds its own scheduling
    // and connection waits, and a p99 of a few hundred requests rests on
    // two or three of them: a quantile may sit as low as the generator's
    // next lower one (p90 for p99, p75 for p90) before it counts as wrong.
    for (quantile, lower) in [("p90_ms", "p75_ms"), ("p99_ms", "p90_ms")] {
        let value = latency[quantile].as_f64().unwrap();
        assert!(
            value <= load[quantile] * 1.25 + 15.0,
            "{quantile} above the generator's: {report}"
        );
        assert!(
            value >= load[lower] - 15.0,
            "{quantile} below the generator's {lower}: {report}"
        );
    }
    let calls = errors["calls"].as_f64().unwrap();
    let error_rate = errors["errors"].as_f64().unwrap() / calls;
    let non_2xx =
        (errors["errors"].as_f64().unwrap() + errors["client_errors"].as_f64().unwrap()) / calls;
    assert!(
        close(error_rate, load["error_rate"], 0.0, 0.02),
        "error rate: {report}"
    );
    assert!(
        close(non_2xx, load["non_2xx_rate"], 0.0, 0.02),
        "non-2xx share: {report}"
    );
    // productpage makes two calls a page it renders (details, reviews;
    // none for a request its sidecar refused); retries are attempts of
    // those calls, not calls of their own.
    let outbound = answers.outbound["calls"].as_f64().unwrap();
    let pages = load["requests"] * (1.0 - load["non_2xx_rate"]);
    assert!(
        close(outbound, 2.0 * pages, 0.03, 6.0),
        "outbound calls: {}\n{report}",
        answers.outbound
    );
    // Every span of productpage (what the query counted before) is up to
    // 5 per request: its server span, its calls, their retries.
    let (all, failed) = &answers.every_span;
    let spans = all["count"].as_f64().unwrap();
    assert!(spans >= count + outbound, "{all}");
    println!(
        "{scenario}: load generator {} requests {:.2}/s p50 {:.1} ms p90 {:.1} ms p99 {:.1} ms errors {:.3} non-2xx {:.3}\n\
         {scenario}: query (requests served) {count} requests {:.2}/s p50 {} ms p90 {} ms p99 {} ms errors {error_rate:.3} non-2xx {non_2xx:.3}\n\
         {scenario}: every span (the former default) {spans} spans {:.2}/s p50 {} ms p90 {} ms p99 {} ms status ERROR {:.3}",
        load["requests"],
        load["qps"],
        load["p50_ms"],
        load["p90_ms"],
        load["p99_ms"],
        load["error_rate"],
        load["non_2xx_rate"],
        latency["rate"].as_f64().unwrap(),
        latency["p50_ms"],
        latency["p90_ms"],
        latency["p99_ms"],
        all["rate"].as_f64().unwrap(),
        all["p50_ms"],
        all["p90_ms"],
        all["p99_ms"],
        failed["count"].as_f64().unwrap() / spans,
    );
}

#[test]
fn slow_ratings_numbers_agree_with_the_load_generator_and_explain_names_ratings() {
    let finished = slow_ratings();
    let answers = answers(finished, true);
    agrees_with_the_load_generator("slow-ratings", finished, &answers);
    // Half the pages wait 100 ms for ratings: productpage's p90 says so.
    assert!(
        answers.latency["p90_ms"].as_f64().unwrap() >= 100.0,
        "{}",
        answers.latency
    );
    let explain = answers.explain.unwrap();
    assert_eq!(explain["hops"][0]["service"], "ratings", "{explain}");
    assert_eq!(explain["services"][0][0], "ratings", "{explain}");
}

#[test]
fn failing_reviews_v3_numbers_agree_with_the_load_generator() {
    let finished = scenario_run("failing-reviews-v3");
    let answers = answers(&finished, false);
    agrees_with_the_load_generator("failing-reviews-v3", &finished, &answers);
    // Every page answered (reviews unavailable at worst): no error served,
    // while the calls productpage made to reviews did fail.
    assert_eq!(answers.errors["errors"], 0, "{}", answers.errors);
    assert!(
        answers.outbound["errors"].as_u64().unwrap() > 0,
        "{}",
        answers.outbound
    );
    // Those calls failed after their retry: the scenario's VirtualService
    // retries a 5xx once, and a call whose retry failed too is URX. (Half
    // of reviews-v3's answers fail, so a quarter of its calls end so:
    // about ten of the forty it gets.)
    assert!(
        answers.retries_exhausted["count"].as_u64().unwrap() > 0,
        "{}",
        answers.retries_exhausted
    );
}

#[test]
fn rate_limited_numbers_agree_with_the_load_generator_and_the_demo_shows_429s() {
    let finished = scenario_run("rate-limited");
    let answers = answers(&finished, false);
    agrees_with_the_load_generator("rate-limited", &finished, &answers);
    let share = finished.done["non_2xx_rate"];
    assert!(
        (0.25..=0.75).contains(&share),
        "about half get 429: {:?}",
        finished.done
    );
    assert_eq!(finished.done["error_rate"], 0.0, "a 429 is not an error");
    let live: Vec<&String> = finished
        .stdout
        .iter()
        .filter(|l| l.contains(" req/s "))
        .collect();
    assert!(
        live.iter().any(|l| {
            l.split("non-2xx")
                .nth(1)
                .and_then(|rest| rest.trim().trim_end_matches('%').parse::<f64>().ok())
                .is_some_and(|p| p > 10.0)
        }),
        "the live line shows the 429s: {live:?}"
    );
    assert!(
        finished
            .stdout
            .iter()
            .any(|l| l.starts_with("load: ") && l.contains("non-2xx")),
        "{:?}",
        finished.stdout
    );
    assert_eq!(
        answers.errors["by_status_code"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["code"] == 429)
            .map(|c| c["count"].clone()),
        Some(answers.errors["client_errors"].clone())
    );
}

#[test]
fn slow_ratings_shows_in_the_traces() {
    let finished = slow_ratings();
    let spans = all_spans(&SpanReader::open(&finished.data_dir()).unwrap());
    let ratings: Vec<u64> = spans
        .iter()
        .filter(|s| &*s.service == "ratings" && s.kind == SERVER)
        .map(|s| s.duration)
        .collect();
    assert!(ratings.len() >= 10, "{} ratings spans", ratings.len());
    assert!(
        ratings.iter().all(|d| *d >= 100_000_000),
        "every ratings answer waits 100 ms: {ratings:?}"
    );
    // The page waits for ratings when reviews v2 or v3 serve it.
    let traces = by_trace(&spans);
    for trace in traces.values() {
        let through_ratings = trace.iter().any(|s| &*s.service == "ratings");
        let page = trace
            .iter()
            .find(|s| &*s.service == "productpage" && s.kind == SERVER);
        if let (true, Some(page)) = (through_ratings, page) {
            assert!(page.duration >= 100_000_000);
        }
    }
    // Operation names are the services' declared ports, the same on both
    // sides of a call: ratings is called on 9080 by reviews' client spans.
    // (Its own client spans are its TCP connections to mongodb.)
    let name = "ratings.default.svc.cluster.local:9080/*";
    assert!(
        spans
            .iter()
            .filter(|s| &*s.service == "ratings" && s.kind == SERVER)
            .all(|s| &*s.operation == name)
    );
    assert!(
        spans
            .iter()
            .any(|s| &*s.service == "reviews" && s.kind == CLIENT && &*s.operation == name)
    );
}

#[test]
fn a_taken_ui_port_is_said_once_with_the_flag_that_moves_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("an address").port().to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tracemesh"))
        .args(["demo", "--ui-port", &port, "--duration", "5s"])
        .output()
        .expect("tracemesh runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let error = errors[0];
    assert!(
        error.contains(&format!("UI port {port} is in use")),
        "{error}"
    );
    assert!(error.contains("--ui-port"), "{error}");
    assert_eq!(error.matches("in use").count(), 1, "said once: {error}");
}

/// Whether this machine can run `demo --pods` (root): `None` after saying
/// why it skips, which `CI=true` does not allow.
fn pods_possible(test: &str) -> Option<()> {
    if rustix::process::geteuid().is_root() {
        return Some(());
    }
    let why = "demo --pods makes network namespaces and needs root";
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {why}, and CI=true requires it to run"
    );
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("skipping {test}: {why}\n").as_bytes(),
    );
    None
}

/// The namespaces (and their `/etc/netns` files) a process's pod beds left.
fn pods_left_by(pid: u32) -> Vec<String> {
    let prefix = format!("tmpods-{pid}-");
    ["/var/run/netns", "/etc/netns"]
        .into_iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .map(|e| e.path().display().to_string())
        .filter(|p| p.rsplit('/').next().unwrap().starts_with(&prefix))
        .collect()
}

/// Bookinfo in network-namespace pods: unchanged applications calling
/// plain service URLs, every hop captured by iptables and reported by the
/// agents; the load's count is the spans' count; nothing is left behind.
#[test]
fn the_pods_demo_runs_bookinfo_captured_and_leaves_nothing_behind() {
    if pods_possible("demo --pods").is_none() {
        return;
    }
    let demo = Demo::start(&[
        "--pods",
        "--duration",
        "10s",
        "--qps",
        "20",
        "-c",
        "4",
        "--report-every",
        "2s",
    ]);
    let pid = demo.id();
    assert!(
        !pods_left_by(pid).is_empty(),
        "the demo runs in namespaces named tmpods-{pid}-*"
    );
    let finished = demo.wait(Duration::from_secs(180));
    assert_eq!(pods_left_by(pid), Vec::<String>::new(), "left behind");
    assert_eq!(finished.done["error_rate"], 0.0, "{:?}", finished.done);
    assert_eq!(finished.done["non_2xx_rate"], 0.0, "{:?}", finished.done);
    let requests = finished.done["requests"] as usize;
    // 20 qps for 10 s, with room for a loaded machine.
    assert!(requests >= 100, "{:?}", finished.done);

    let spans = all_spans(&SpanReader::open(&finished.data_dir()).unwrap());
    let traces = by_trace(&spans);
    // Every request of the load is one trace rooted at the ingress
    // gateway's span (the load enters through it, in the hub), and
    // productpage's captured agent saw each one, once, as its child.
    let rooted = spans
        .iter()
        .filter(|s| {
            s.parent_span_id.is_none() && &*s.service == "istio-ingressgateway" && s.kind == SERVER
        })
        .count();
    assert_eq!(
        rooted, requests,
        "rooted gateway spans for the load's requests"
    );
    let entered = spans
        .iter()
        .filter(|s| &*s.service == "productpage" && s.kind == SERVER)
        .filter(|s| {
            parent(&traces[&s.trace_id], s).is_some_and(|g| &*g.service == "istio-ingressgateway")
        })
        .count();
    assert_eq!(entered, requests, "productpage spans under the gateway's");
    // productpage → details and reviews, reviews v2/v3 → ratings, each
    // hop a client span in the caller's agent and a server span in the
    // callee's, in one trace.
    let five_hops = five_hop_traces(&traces);
    // reviews v2 and v3 (half the split) call ratings on every request.
    assert!(
        five_hops * 100 >= requests * 35,
        "{five_hops} five-hop traces of {requests} requests"
    );
    let details = spans
        .iter()
        .filter(|s| &*s.service == "details" && s.kind == SERVER)
        .count();
    assert_eq!(details, requests, "details spans");
    // ratings answers from the database, read over captured TCP
    // (`mongodb:27017`): a failed read would be a 503.
    let ratings: Vec<Option<u16>> = spans
        .iter()
        .filter(|s| &*s.service == "ratings" && s.kind == SERVER)
        .map(|s| s.http_status_code)
        .collect();
    assert_eq!(ratings.len(), five_hops);
    assert!(ratings.iter().all(|code| *code == Some(200)), "{ratings:?}");
}

/// Without root, `demo --pods` says what it needs and makes nothing.
#[test]
fn the_pods_demo_without_root_says_it_needs_root() {
    let binary = env!("CARGO_BIN_EXE_tracemesh");
    let mut command = if rustix::process::geteuid().is_root() {
        // As an ordinary user, as `setpriv` makes one.
        let mut c = std::process::Command::new("setpriv");
        c.args([
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            "--",
            binary,
        ]);
        c
    } else {
        std::process::Command::new(binary)
    };
    let dir = tempfile::tempdir().unwrap();
    let _ = std::process::Command::new("chmod")
        .args(["a+rwx"])
        .arg(dir.path())
        .status();
    let out = command
        .args([
            "demo",
            "--pods",
            "--ui-port",
            "0",
            "--duration",
            "1s",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--pods") && stderr.contains("needs root"),
        "{stderr}"
    );
    assert!(
        stderr.contains("without --pods"),
        "it says the rootless demo needs none of it: {stderr}"
    );
}

/// Stopped by a signal (Ctrl-C's SIGINT, or SIGTERM as here) mid-run, the
/// pods demo stops cleanly and removes every namespace it made.
#[test]
fn the_pods_demo_stopped_by_a_signal_leaves_nothing_behind() {
    if pods_possible("demo --pods, stopped").is_none() {
        return;
    }
    let demo = Demo::start(&["--pods", "--qps", "5", "-c", "2"]);
    let pid = demo.id();
    assert!(!pods_left_by(pid).is_empty());
    let finished = demo.terminate(Duration::from_secs(120));
    assert_eq!(pods_left_by(pid), Vec::<String>::new(), "left behind");
    assert!(
        finished.stdout.iter().any(|l| l == "demo stopped"),
        "{}",
        finished.stdout.join("\n")
    );
}
