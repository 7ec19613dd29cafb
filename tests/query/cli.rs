//! `tracemesh query` prints the numbers the API answers, as JSON and in
//! its tables.

use std::process::Command;

use serde_json::Value;

use crate::data::{self, get};

fn query(server: &str, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tracemesh"))
        .arg("query")
        .args(args)
        .args(["--server", server])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn cli_prints_what_the_api_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (collector, sent) = data::start(dir.path());
    let server = format!("http://{}", collector.http);

    // A fixed window, so both answers are about the same time.
    let end = crate::harness::now_nanos() / 1000;
    let (start, end) = ((end - 3_600_000_000).to_string(), end.to_string());
    let window = format!("start={start}&end={end}");
    let (_, api) = get(
        &collector,
        &format!("/api/v1/latency?service=calc&{window}"),
    );
    let json: Value = serde_json::from_str(&query(
        &server,
        &[
            "latency",
            "--service",
            "calc",
            "--start",
            &start,
            "--end",
            &end,
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(json, api);
    let table = query(
        &server,
        &[
            "latency",
            "--service",
            "calc",
            "--start",
            &start,
            "--end",
            &end,
        ],
    );
    assert!(
        table.starts_with("requests calc served: its SERVER spans"),
        "the table says what it counted: {table}"
    );
    let row: Vec<&str> = table.lines().nth(2).unwrap().split_whitespace().collect();
    let mut expected: Vec<String> = vec![
        api["count"].to_string(),
        format!("{:.2}", api["rate"].as_f64().unwrap()),
    ];
    expected.extend(
        ["p50_ms", "p75_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms"]
            .iter()
            .map(|k| api[*k].to_string()),
    );
    assert_eq!(row, expected, "{table}");
    // --kind picks the calls made instead.
    let (_, outbound) = get(
        &collector,
        "/api/v1/latency?service=cart&kind=outbound&since=1h",
    );
    let json: Value = serde_json::from_str(&query(
        &server,
        &[
            "latency",
            "--service",
            "cart",
            "--kind",
            "outbound",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(json["count"], outbound["count"]);
    assert_eq!(json["counted"]["view"], "outbound");

    let (_, api) = get(&collector, &format!("/api/v1/errors?service=cart&{window}"));
    let json: Value = serde_json::from_str(&query(
        &server,
        &[
            "errors",
            "--service",
            "cart",
            "--start",
            &start,
            "--end",
            &end,
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(json, api);
    let table = query(&server, &["errors", "--service", "cart"]);
    assert_eq!(
        table.lines().nth(1).unwrap(),
        format!(
            "calls {}  errors {} (10.0%)  4xx 0 (0.0%)",
            api["calls"], api["errors"]
        ),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["503", "20"]),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["UF", "20"]),
        "{table}"
    );

    let args = [
        "traces",
        "--service",
        "cart",
        "--tag",
        "customer.tier=gold",
        "--min-duration",
        "100ms",
        "--errors",
        "--since",
        "15m",
    ];
    let (_, api) = get(
        &collector,
        "/api/v1/traces?service=cart&tag=customer.tier%3Dgold&min_duration=100ms&errors=true&since=15m&limit=20",
    );
    let json: Value =
        serde_json::from_str(&query(&server, &[&args[..], &["--json"]].concat())).unwrap();
    assert_eq!(json, api);
    let ids: Vec<&str> = api["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trace_id"].as_str().unwrap())
        .collect();
    // Failed (every 10th) and gold (every 4th) and at least 100 ms: traces 100, 120, ..., 180.
    assert_eq!(
        ids,
        (100..200)
            .rev()
            .filter(|t| t % 20 == 0)
            .map(|t| sent.shop[t].to_string())
            .collect::<Vec<_>>()
    );
    let table = query(&server, &args);
    let listed: Vec<&str> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(listed, ids);

    // The longest traces first, without guessing a minimum duration.
    let (_, longest) = get(
        &collector,
        "/api/v1/traces?service=cart&sort=longest&limit=3&since=15m",
    );
    let json: Value = serde_json::from_str(&query(
        &server,
        &[
            "traces",
            "--service",
            "cart",
            "--sort",
            "longest",
            "--limit",
            "3",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(json, longest);
    let ids: Vec<&str> = longest["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trace_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [199, 198, 197].map(|t| sent.shop[t].to_string()),
        "cart's call in trace t lasts t + 1 ms"
    );

    let trace = sent.shop[0].to_string();
    let table = query(&server, &["trace", &trace]);
    assert!(
        table.starts_with(&format!("trace {trace}  5 spans")),
        "{table}"
    );
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 7, "title, header, five spans: {table}");
    assert!(
        lines[4].starts_with("cart")
            && lines[4].contains("GET /cart/items")
            && lines[4].ends_with("ERROR"),
        "{table}"
    );
    let failed = Command::new(env!("CARGO_BIN_EXE_tracemesh"))
        .args([
            "query",
            "trace",
            "0123456789abcdef0123456789abcdef",
            "--server",
            &server,
        ])
        .output()
        .unwrap();
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("trace not found"));
    collector.stop();
}
