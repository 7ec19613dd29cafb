//! tracemesh's native API under `/api/v1/`, for what Jaeger's lacks:
//! quantiles for any filter (tags included), error breakdowns by HTTP
//! status code, response flag and operation, latency histograms, RED time
//! series, the dependency graph with errors, and trace summaries. JSON in
//! (query parameters), JSON out; errors are `{"error": {"code", "message"}}`.
//! Durations are reported in milliseconds. The reference is docs/query.md.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use serde::Serialize;
use serde_json::{Value, json};
use tracemesh_collector::store::{SpanQuery, Trace};

use crate::engine::stats::{Latency, PERCENTS, QUANTILE_RELATIVE_ERROR};
use crate::engine::{Engine, TimeRange, TraceSearch, now_nanos};
use crate::error::QueryError;
use crate::http::{AppState, json};
use crate::jaeger::model::{hex, kind_from_name};
use crate::params::Params;

const DEFAULT_SINCE: Duration = Duration::from_secs(3600);

/// The `/api/v1/...` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/latency", get(latency))
        .route("/api/v1/red", get(red))
        .route("/api/v1/errors", get(errors))
        .route("/api/v1/histogram", get(histogram))
        .route("/api/v1/series", get(series))
        .route("/api/v1/dependencies", get(dependencies))
        .route("/api/v1/traces", get(traces))
}

fn error(error: &QueryError) -> Response {
    let status = error.status();
    json(
        status,
        &json!({"error": {"code": status.as_u16(), "message": error.public_message()}}),
    )
}

/// The time range: `start`/`end` in µs since the epoch, or `since` (a Go
/// duration, default 1h) back from now.
fn range(params: &Params) -> Result<TimeRange, QueryError> {
    let micros = |name: &str| -> Result<Option<u64>, QueryError> {
        Ok(params.int::<u64>(name)?.map(|us| us.saturating_mul(1000)))
    };
    let end = micros("end")?.unwrap_or_else(now_nanos);
    let range = match micros("start")? {
        Some(from) => TimeRange { from, to: end },
        None => TimeRange::ending(end, params.duration("since")?.unwrap_or(DEFAULT_SINCE)),
    };
    if range.from > range.to {
        return Err(QueryError::param("start", "after end"));
    }
    Ok(range)
}

/// The span filter every endpoint takes: `service`, `operation`, `kind`,
/// `tag=key=value` (repeated), `min_duration`, `max_duration`, `errors`,
/// and the time range.
fn filter(params: &Params) -> Result<(SpanQuery, TimeRange), QueryError> {
    let range = range(params)?;
    let kind = match params.get("kind") {
        None => None,
        Some(name) => Some(
            kind_from_name(name)
                .ok_or_else(|| QueryError::param("kind", format!("unknown span kind {name:?}")))?,
        ),
    };
    let mut tags = Vec::new();
    for tag in params.all("tag") {
        let (key, value) = tag
            .split_once('=')
            .ok_or_else(|| QueryError::param("tag", format!("expecting key=value, got {tag:?}")))?;
        tags.push((key.to_owned(), value.to_owned()));
    }
    let query = SpanQuery {
        service: params.get("service").map(str::to_owned),
        operation: params.get("operation").map(str::to_owned),
        kind,
        tags,
        min_duration: params.duration("min_duration")?,
        max_duration: params.duration("max_duration")?,
        errors_only: params.bool("errors")?,
        ..Default::default()
    };
    Ok((range.apply(query), range))
}

fn ms(nanos: Option<f64>) -> Option<f64> {
    nanos.map(|n| (n / 1e4).round() / 100.0)
}

/// A latency summary in milliseconds, keyed p50..p99.
fn latency_json(latency: &Latency) -> Value {
    let mut out = json!({"count": latency.count, "max_ms": ms(latency.max)});
    for (percent, value) in PERCENTS.iter().zip(&latency.quantiles) {
        out[format!("p{percent}_ms")] = json!(ms(*value));
    }
    out
}

async fn run<T: Serialize + Send + 'static>(
    state: AppState,
    raw: Option<String>,
    endpoint: &'static str,
    work: impl FnOnce(&Engine, &Params) -> Result<T, QueryError> + Send + 'static,
) -> Response {
    let params = Params::parse(raw.as_deref());
    state
        .answer(
            endpoint,
            move |engine| work(engine, &params),
            |r| match r {
                Ok(body) => json(http::StatusCode::OK, &body),
                Err(e) => error(&e),
            },
        )
        .await
}

/// `GET /api/v1/latency`: p50/p75/p90/p95/p99/max of the matching spans.
async fn latency(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    run(state, raw, "v1_latency", |engine, params| {
        let (query, _) = filter(params)?;
        let mut out = latency_json(&engine.latency(&query)?);
        out["relative_error"] = json!(QUANTILE_RELATIVE_ERROR);
        Ok(out)
    })
    .await
}

/// `GET /api/v1/red`: calls, errors, rate, error rate and latency, overall
/// or per operation (`by_operation=true`).
async fn red(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    run(state, raw, "v1_red", |engine, params| {
        let (query, range) = filter(params)?;
        let rows: Vec<Value> = engine
            .red(&query, range, params.bool("by_operation")?)?
            .iter()
            .map(|row| {
                json!({
                    "operation": row.operation,
                    "calls": row.calls,
                    "errors": row.errors,
                    "rate": row.rate,
                    "error_rate": row.error_rate,
                    "latency": latency_json(&row.latency),
                })
            })
            .collect();
        Ok(json!({"rows": rows}))
    })
    .await
}

/// `GET /api/v1/errors`: errors by status code, response flag and operation.
async fn errors(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    run(state, raw, "v1_errors", |engine, params| {
        let (query, _) = filter(params)?;
        let b = engine.errors(&query)?;
        Ok(json!({
            "calls": b.calls,
            "errors": b.errors,
            "error_rate": if b.calls == 0 { 0.0 } else { b.errors as f64 / b.calls as f64 },
            "by_status_code": b.by_status_code.iter().map(|(code, n)| json!({"code": code, "count": n})).collect::<Vec<_>>(),
            "by_response_flag": b.by_response_flag.iter().map(|(flag, n)| json!({"flag": flag, "count": n})).collect::<Vec<_>>(),
            "by_operation": b.by_operation.iter().map(|(op, n)| json!({"operation": op, "errors": n})).collect::<Vec<_>>(),
        }))
    })
    .await
}

/// `GET /api/v1/histogram?width=10ms`: span counts per latency bucket.
async fn histogram(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    run(state, raw, "v1_histogram", |engine, params| {
        let (query, _) = filter(params)?;
        let width = params
            .duration("width")?
            .unwrap_or(Duration::from_millis(10));
        let width_ns = width.as_nanos().min(u128::from(u64::MAX)) as u64;
        let buckets: Vec<Value> = engine
            .histogram(&query, width_ns)?
            .iter()
            .map(|b| json!({"from_ms": b.from as f64 / 1e6, "count": b.count}))
            .collect();
        Ok(json!({"width_ms": width_ns as f64 / 1e6, "buckets": buckets}))
    })
    .await
}

/// `GET /api/v1/series?step=1m`: rate, error rate, p50/p95/p99 per step.
async fn series(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    run(state, raw, "v1_series", |engine, params| {
        let (query, range) = filter(params)?;
        let step = params.duration("step")?.unwrap_or(Duration::from_secs(60));
        let step_ns = step.as_nanos().min(u128::from(u64::MAX)) as u64;
        let percents = [50.0, 95.0, 99.0];
        let all = engine.series(&query, range, step_ns, &percents, params.bool("by_operation")?)?;
        let series: Vec<Value> = all
            .iter()
            .map(|s| {
                let points: Vec<Value> = s
                    .points
                    .iter()
                    .map(|p| {
                        json!({
                            "t_ms": p.start / 1_000_000,
                            "calls": p.calls,
                            "errors": p.errors,
                            "rate": p.calls as f64 / step.as_secs_f64(),
                            "error_rate": if p.calls == 0 { None } else { Some(p.errors as f64 / p.calls as f64) },
                            "p50_ms": ms(p.quantiles[0]),
                            "p95_ms": ms(p.quantiles[1]),
                            "p99_ms": ms(p.quantiles[2]),
                        })
                    })
                    .collect();
                json!({"operation": s.operation, "points": points})
            })
            .collect();
        Ok(json!({"step_ms": step_ns / 1_000_000, "series": series}))
    })
    .await
}

/// `GET /api/v1/dependencies?since=24h`: caller → callee, calls, errors.
async fn dependencies(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    run(state, raw, "v1_dependencies", |engine, params| {
        let range = range(params)?;
        Ok(json!({"edges": engine.dependencies(range)?}))
    })
    .await
}

/// A trace in a search result list.
#[derive(Debug, Serialize)]
pub struct TraceSummary {
    /// 32 hex digits.
    pub trace_id: String,
    /// The root span's service (the earliest span's when the root is missing).
    pub root_service: String,
    /// The root span's name.
    pub root_operation: String,
    /// First span start, µs since the epoch.
    pub start_us: u64,
    /// Last span end minus first span start, ms.
    pub duration_ms: f64,
    /// Spans.
    pub spans: usize,
    /// Spans with status ERROR.
    pub errors: usize,
    /// Spans per service.
    pub services: BTreeMap<String, usize>,
}

/// Summarizes a trace for lists.
pub fn summary(trace: &Trace) -> TraceSummary {
    let root = trace
        .spans
        .iter()
        .find(|s| s.span.parent_span_id.is_empty())
        .or_else(|| trace.spans.first());
    let start = trace
        .spans
        .iter()
        .map(|s| s.span.start_time_unix_nano)
        .min()
        .unwrap_or(0);
    let end = trace
        .spans
        .iter()
        .map(|s| s.span.end_time_unix_nano)
        .max()
        .unwrap_or(start);
    let mut services = BTreeMap::new();
    for span in &trace.spans {
        let name = tracemesh_collector::attributes::service_name(span.resource.as_ref());
        *services.entry(name.to_owned()).or_insert(0) += 1;
    }
    TraceSummary {
        trace_id: hex(&trace.trace_id.0),
        root_service: root
            .map(|r| tracemesh_collector::attributes::service_name(r.resource.as_ref()).to_owned())
            .unwrap_or_default(),
        root_operation: root.map(|r| r.span.name.clone()).unwrap_or_default(),
        start_us: start / 1000,
        duration_ms: end.saturating_sub(start) as f64 / 1e6,
        spans: trace.spans.len(),
        errors: trace
            .spans
            .iter()
            .filter(|s| s.span.status.as_ref().is_some_and(|st| st.code == 2))
            .count(),
        services,
    }
}

/// `GET /api/v1/traces?limit=20`: summaries of the matching traces, newest first.
async fn traces(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    run(state, raw, "v1_traces", |engine, params| {
        let (spans, _) = filter(params)?;
        let limit = params.limit(&["limit"], 20)?;
        let traces = engine.search(&TraceSearch { spans, limit })?;
        Ok(json!({"traces": traces.iter().map(summary).collect::<Vec<_>>()}))
    })
    .await
}
