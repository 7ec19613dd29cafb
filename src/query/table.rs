//! Human tables for `tracemesh query`, from the API's JSON (so a table
//! shows exactly the numbers `--json` does).

use std::collections::HashMap;
use std::fmt::Write;

use serde_json::Value;

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// A number as the API gave it, `-` when absent.
fn num(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        _ => "-".into(),
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// `query trace`: the spans as a tree.
pub fn trace(body: &Value) -> String {
    let trace = &body["data"][0];
    let spans = trace["spans"].as_array().cloned().unwrap_or_default();
    let start = spans
        .iter()
        .filter_map(|s| s["startTime"].as_u64())
        .min()
        .unwrap_or(0);
    let ids: HashMap<&str, usize> = spans
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((s["spanID"].as_str()?, i)))
        .collect();
    let parent = |span: &Value| -> Option<usize> {
        span["references"]
            .as_array()?
            .iter()
            .find(|r| r["refType"] == "CHILD_OF")
            .and_then(|r| ids.get(r["spanID"].as_str()?).copied())
    };
    let mut children: HashMap<Option<usize>, Vec<usize>> = HashMap::new();
    for (i, span) in spans.iter().enumerate() {
        children.entry(parent(span)).or_default().push(i);
    }
    let mut rows = Vec::new();
    let mut stack: Vec<(usize, usize)> = children
        .get(&None)
        .map(|roots| roots.iter().rev().map(|&i| (i, 0)).collect())
        .unwrap_or_default();
    while let Some((i, depth)) = stack.pop() {
        let span = &spans[i];
        let service =
            trace["processes"][span["processID"].as_str().unwrap_or_default()]["serviceName"]
                .clone();
        let failed = span["tags"].as_array().is_some_and(|tags| {
            tags.iter()
                .any(|t| t["key"] == "error" && t["value"] == true)
        });
        rows.push(vec![
            text(&service),
            format!("{}{}", "  ".repeat(depth), text(&span["operationName"])),
            format!(
                "{:.3}",
                span["startTime"]
                    .as_u64()
                    .unwrap_or(start)
                    .saturating_sub(start) as f64
                    / 1000.0
            ),
            format!(
                "{:.3}",
                span["duration"].as_u64().unwrap_or(0) as f64 / 1000.0
            ),
            if failed {
                "ERROR".into()
            } else {
                String::new()
            },
        ]);
        if let Some(kids) = children.get(&Some(i)) {
            stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
        }
    }
    format!(
        "trace {}  {} spans\n{}",
        text(&trace["traceID"]),
        spans.len(),
        table(
            &["SERVICE", "OPERATION", "START_MS", "DURATION_MS", "STATUS"],
            &rows
        )
    )
}

/// `query traces`: one line per trace.
pub fn traces(body: &Value) -> String {
    let rows: Vec<Vec<String>> = body["traces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            vec![
                text(&t["trace_id"]),
                tracemesh_query::timefmt::rfc3339(t["start_us"].as_u64().unwrap_or(0) * 1000),
                num(&t["duration_ms"]),
                num(&t["spans"]),
                num(&t["errors"]),
                num(&t["client_errors"]),
                format!(
                    "{}: {}",
                    text(&t["root_service"]),
                    text(&t["root_operation"])
                ),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no traces\n".into();
    }
    table(
        &[
            "TRACE_ID",
            "START",
            "DURATION_MS",
            "SPANS",
            "ERRORS",
            "4XX",
            "ROOT",
        ],
        &rows,
    )
}

/// The line saying what a statistic counted.
fn counted(body: &Value) -> String {
    let counted = &body["counted"];
    let time = |key: &str| {
        counted[key]
            .as_u64()
            .map(|us| tracemesh_query::timefmt::rfc3339(us * 1000))
            .unwrap_or_default()
    };
    format!(
        "{} [{}], {} to {}\n",
        text(&counted["spans"]),
        text(&counted["view"]),
        time("start_us"),
        time("end_us")
    )
}

/// A share as a percentage with one decimal.
fn percent(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
}

/// A rate per second with two decimals.
fn rate(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// `query latency`: what was counted, then count, rate and quantiles.
pub fn latency(body: &Value) -> String {
    let keys = ["p50_ms", "p75_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms"];
    let mut row = vec![num(&body["count"]), rate(&body["rate"])];
    row.extend(keys.iter().map(|k| num(&body[*k])));
    counted(body)
        + &table(
            &[
                "COUNT",
                "RATE_PER_S",
                "P50_MS",
                "P75_MS",
                "P90_MS",
                "P95_MS",
                "P99_MS",
                "MAX_MS",
            ],
            &[row],
        )
}

/// `query errors`: what was counted, totals, then the breakdowns.
pub fn errors(body: &Value) -> String {
    let mut out = counted(body);
    out.push_str(&format!(
        "calls {}  errors {} ({})  4xx {} ({})\n",
        num(&body["calls"]),
        num(&body["errors"]),
        percent(&body["error_rate"]),
        num(&body["client_errors"]),
        percent(&body["client_error_rate"]),
    ));
    let section = |out: &mut String, title: &str, key: &str, name: &str, count: &str| {
        let rows: Vec<Vec<String>> = body[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                vec![
                    r[name]
                        .as_str()
                        .map_or_else(|| num(&r[name]), str::to_owned),
                    num(&r[count]),
                ]
            })
            .collect();
        if !rows.is_empty() {
            out.push('\n');
            out.push_str(&table(&[title, "SPANS"], &rows));
        }
    };
    section(&mut out, "STATUS_CODE", "by_status_code", "code", "count");
    section(
        &mut out,
        "RESPONSE_FLAG",
        "by_response_flag",
        "flag",
        "count",
    );
    section(
        &mut out,
        "FAILED_OPERATION",
        "by_operation",
        "operation",
        "errors",
    );
    section(
        &mut out,
        "4XX_OPERATION",
        "client_errors_by_operation",
        "operation",
        "client_errors",
    );
    out
}

/// `query explain`: the two sides, then hops and services by time added.
pub fn explain(body: &Value) -> String {
    let side = |s: &Value| {
        format!(
            "{} requests, mean {} ms{}",
            num(&s["requests"]),
            s["mean_ms"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.2}")),
            s["trace_id"]
                .as_str()
                .map(|t| format!(" (trace {t})"))
                .unwrap_or_default()
        )
    };
    let mut out = format!(
        "{}{}: {} against {}\n",
        text(&body["service"]),
        body["operation"]
            .as_str()
            .map(|o| format!(" {o}"))
            .unwrap_or_default(),
        side(&body["current"]),
        side(&body["baseline"]),
    );
    let ms = |v: &Value| v.as_f64().map_or("-".into(), |v| format!("{v:.2}"));
    let services: Vec<Vec<String>> = body["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| vec![text(&s[0]), ms(&s[1])])
        .collect();
    out.push('\n');
    out.push_str(&table(&["SERVICE", "ADDED_MS"], &services));
    let hops: Vec<Vec<String>> = body["hops"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            vec![
                text(&h["service"]),
                text(&h["operation"]),
                ms(&h["added_ms"]),
                ms(&h["current_ms"]),
                ms(&h["baseline_ms"]),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &["SERVICE", "OPERATION", "ADDED_MS", "NOW_MS", "BASELINE_MS"],
        &hops,
    ));
    out
}
