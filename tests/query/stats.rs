//! The numbers are right: quantiles within the sketch's stated relative
//! error of the exact order statistics, error rates and the dependency
//! graph exactly what was sent.

use serde_json::json;
use tracemesh_query::engine::stats::QUANTILE_RELATIVE_ERROR;

use crate::data::{self, CALC_SPANS, FAIL_EVERY, SHOP_TRACES, calc_duration, cart_duration, get};

/// Whether `estimate` (ms) is within the relative error of an order
/// statistic at quantile `q` (the rank may round either way).
fn close_to_quantile(sorted_ns: &[u64], q: f64, estimate_ms: f64) -> bool {
    let rank = q * (sorted_ns.len() - 1) as f64;
    [rank.floor() as usize, rank.ceil() as usize]
        .iter()
        .any(|&r| {
            let exact = sorted_ns[r] as f64 / 1e6;
            // The API rounds to 0.01 ms.
            (estimate_ms - exact).abs() <= exact * QUANTILE_RELATIVE_ERROR + 0.005
        })
}

#[test]
fn quantiles_error_rates_and_dependencies_match_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (collector, _) = data::start(dir.path());

    let mut calc: Vec<u64> = (0..CALC_SPANS).map(calc_duration).collect();
    calc.sort();
    let (status, latency) = get(&collector, "/api/v1/latency?service=calc&since=1h");
    assert_eq!(status, 200, "{latency}");
    assert_eq!(latency["count"], CALC_SPANS);
    assert_eq!(latency["relative_error"], QUANTILE_RELATIVE_ERROR);
    for (key, q) in [
        ("p50_ms", 0.5),
        ("p75_ms", 0.75),
        ("p90_ms", 0.9),
        ("p95_ms", 0.95),
        ("p99_ms", 0.99),
    ] {
        let estimate = latency[key].as_f64().unwrap();
        assert!(
            close_to_quantile(&calc, q, estimate),
            "{key} = {estimate} ms is not within 1% of the exact quantile"
        );
    }
    let max = latency["max_ms"].as_f64().unwrap();
    assert!(
        (max - *calc.last().unwrap() as f64 / 1e6).abs() <= 0.005,
        "max is exact: {max}"
    );

    // A tag filter: the gold tier is every 4th cart call (1, 5, 9, ... ms).
    let mut gold: Vec<u64> = (0..SHOP_TRACES)
        .filter(|t| t % 4 == 0)
        .map(cart_duration)
        .collect();
    gold.sort();
    let (_, latency) = get(
        &collector,
        "/api/v1/latency?service=cart&operation=GET%20/cart/items&tag=customer.tier=gold&since=1h",
    );
    assert_eq!(latency["count"], gold.len());
    assert!(
        close_to_quantile(&gold, 0.5, latency["p50_ms"].as_f64().unwrap()),
        "{latency}"
    );
    assert!(
        close_to_quantile(&gold, 0.99, latency["p99_ms"].as_f64().unwrap()),
        "{latency}"
    );

    // Error rates, overall and per operation: the requests cart served
    // by default, the calls it made when asked.
    let failures = SHOP_TRACES / FAIL_EVERY;
    let (_, red) = get(
        &collector,
        "/api/v1/red?service=cart&by_operation=true&since=1h",
    );
    assert_eq!(red["counted"]["view"], "inbound");
    let rows = red["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{red}");
    assert_eq!(rows[0]["operation"], "GET /cart/items");
    assert_eq!(
        (rows[0]["calls"].clone(), rows[0]["errors"].clone()),
        (json!(SHOP_TRACES), json!(failures))
    );
    assert_eq!(rows[0]["error_rate"], json!(1.0 / FAIL_EVERY as f64));
    let (_, red) = get(
        &collector,
        "/api/v1/red?service=cart&kind=outbound&by_operation=true&since=1h",
    );
    assert_eq!(red["counted"]["view"], "outbound");
    assert_eq!(
        red["rows"],
        json!([{"operation": "SELECT", "calls": SHOP_TRACES, "errors": 0, "client_errors": 0, "client_error_rate": 0.0, "error_rate": 0.0,
            "rate": red["rows"][0]["rate"], "window_s": red["rows"][0]["window_s"], "latency": red["rows"][0]["latency"]}])
    );

    // Where the errors come from.
    let (_, errors) = get(&collector, "/api/v1/errors?service=cart&since=1h");
    assert_eq!(errors["calls"], SHOP_TRACES);
    assert_eq!(errors["errors"], failures);
    assert_eq!(
        errors["by_status_code"],
        json!([{"code": 200, "count": SHOP_TRACES - failures}, {"code": 503, "count": failures}])
    );
    assert_eq!(
        errors["by_response_flag"],
        json!([{"flag": "UF", "count": failures}])
    );
    assert_eq!(
        errors["by_operation"],
        json!([{"operation": "GET /cart/items", "errors": failures}])
    );

    // The dependency graph, with errors.
    let (_, deps) = get(&collector, "/api/v1/dependencies?since=2h");
    assert_eq!(
        deps["edges"],
        json!([
            {"parent": "cart", "child": "db", "calls": SHOP_TRACES, "errors": 0},
            {"parent": "frontend", "child": "cart", "calls": SHOP_TRACES, "errors": failures},
        ])
    );

    // The latency histogram counts every span once.
    let (_, histogram) = get(
        &collector,
        "/api/v1/histogram?service=cart&operation=GET%20/cart/items&width=50ms&since=1h",
    );
    let counts: Vec<u64> = histogram["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .collect();
    assert_eq!(
        counts,
        [49, 50, 50, 50, 1],
        "1..200 ms in 50 ms buckets: {histogram}"
    );

    // A time series sums to the totals.
    let (_, series) = get(
        &collector,
        "/api/v1/series?service=cart&operation=GET%20/cart/items&since=1h&step=1m",
    );
    let points = series["series"][0]["points"].as_array().unwrap();
    assert!(points.len() >= 60, "empty steps included");
    let calls: u64 = points.iter().map(|p| p["calls"].as_u64().unwrap()).sum();
    let errors: u64 = points.iter().map(|p| p["errors"].as_u64().unwrap()).sum();
    assert_eq!((calls, errors), (SHOP_TRACES as u64, failures as u64));
    collector.stop();
}

#[test]
fn tcp_connections_are_edges_by_peer_service_and_http_calls_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let collector = crate::harness::Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let base = crate::harness::now_nanos() - 5 * 60 * 1_000_000_000;
    data::send(&collector, &data::tcp_requests(base));
    let failures = data::TCP_CONNECTIONS / data::TCP_FAIL_EVERY;
    let expected = json!([
        {"parent": "productpage", "child": "ratings", "calls": 1, "errors": 0},
        {"parent": "ratings", "child": "mongodb", "calls": data::TCP_CONNECTIONS, "errors": failures},
    ]);
    crate::harness::eventually("the TCP edge", || {
        let (_, deps) = get(&collector, "/api/v1/dependencies?since=2h");
        (deps["edges"] == expected).then_some(())
    });
    let end_ms = crate::harness::now_nanos() / 1_000_000;
    let (_, deps) = get(
        &collector,
        &format!("/api/dependencies?endTs={end_ms}&lookback=7200000"),
    );
    assert_eq!(
        deps["data"],
        json!([
            {"parent": "productpage", "child": "ratings", "callCount": 1},
            {"parent": "ratings", "child": "mongodb", "callCount": data::TCP_CONNECTIONS},
        ])
    );
}

/// Jaeger's Monitor tab: the latency at each point is the quantile of the
/// spans of the whole `ratePer` window ending there, as Jaeger's
/// `histogram_quantile(q, rate(…[ratePer]))` is — the window the call and
/// error rates beside it cover — not of the spans of one step. Three slow
/// spans alone in their minute are the p95 of that step, not of the 103
/// spans of its three-minute window.
#[test]
fn monitor_latency_is_the_quantile_of_the_rate_window() {
    const MINUTE: u64 = 60_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let collector = crate::harness::Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let minute = (crate::harness::now_nanos() / MINUTE - 8) * MINUTE;
    let (request, sent) = data::monitor_requests(minute);
    data::send(&collector, &request);
    crate::harness::eventually("the monitor service's spans indexed", || {
        let (_, body) = get(&collector, "/api/v1/latency?service=monitor&since=1h");
        (body["count"].as_u64() == Some(sent.len() as u64)).then_some(())
    });

    let end = minute + 5 * MINUTE + MINUTE / 2;
    let (status, answer) = get(
        &collector,
        &format!(
            "/api/metrics/latencies?service=monitor&quantile=0.95&endTs={}&lookback=600000&step=60000&ratePer=180000",
            end / 1_000_000
        ),
    );
    assert_eq!(status, 200, "{answer}");
    let points = answer["metrics"][0]["metricPoints"].as_array().unwrap();
    let value_at = |at: u64| {
        let timestamp = tracemesh_query::timefmt::rfc3339(at);
        points
            .iter()
            .find(|p| p["timestamp"] == timestamp.as_str())
            .map(|p| p["gaugeValue"]["doubleValue"].as_f64().unwrap())
    };
    // Every step from the first span's on: the exact p95 of the spans
    // started in the three steps ending with it.
    let mut checked = 0;
    for step in 0..6 {
        let start = minute + step * MINUTE;
        let mut window: Vec<u64> = sent
            .iter()
            .filter(|(at, _)| *at + 2 * MINUTE >= start && *at < start + MINUTE)
            .map(|&(_, duration)| duration)
            .collect();
        window.sort();
        let at = (start + MINUTE).min(end);
        match value_at(at) {
            Some(estimate) => {
                assert!(
                    !window.is_empty(),
                    "a point for an empty window at step {step}"
                );
                assert!(
                    close_to_quantile(&window, 0.95, estimate),
                    "step {step}: {estimate} ms, the window's {} spans from {} to {} ns",
                    window.len(),
                    window[0],
                    window[window.len() - 1]
                );
                checked += 1;
            }
            None => assert!(window.is_empty(), "no point at step {step}: {answer}"),
        }
    }
    assert_eq!(checked, 6, "{answer}");
    // The step of the three slow spans: the window's p95 is a 19.6 ms span,
    // where the step's own would be 500 ms.
    let slow = value_at(minute + 4 * MINUTE).unwrap();
    assert!(
        (slow - 19.6).abs() < 19.6 * QUANTILE_RELATIVE_ERROR + 0.005,
        "{slow}"
    );
    // Before the first span: no point, not a 0.
    assert_eq!(value_at(minute), None, "{answer}");
}
