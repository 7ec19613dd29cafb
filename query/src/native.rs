//! tracemesh's native API under `/api/v1/`, for what Jaeger's lacks:
//! a service's latency, rate, errors and 4xx for any filter (tags
//! included), counting what it served unless asked otherwise and saying
//! what it counted; error breakdowns by HTTP status code, response flag and
//! operation; latency histograms; RED time series; the dependency graph
//! with errors; ordered trace searches; critical paths and "why is it
//! slower?" ([`crate::engine::explain`]). JSON in (query parameters), JSON
//! out; errors are `{"error": {"code", "message"}}`. Durations are in
//! milliseconds. The reference is docs/query.md.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use serde::Serialize;
use serde_json::{Value, json};
use tracemesh_collector::outcome::Outcome;
use tracemesh_collector::store::{Condition, SpanQuery, Trace};

use crate::engine::search::summarize;
use crate::engine::stats::{Latency, MAX_EDGES, PERCENTS, QUANTILE_RELATIVE_ERROR};
use crate::engine::view::Counted;
use crate::engine::{Engine, Sort, TimeRange, TraceSearch, View, now_nanos};
use crate::error::QueryError;
use crate::http::{AppState, json};
use crate::jaeger::model::hex;
use crate::params::Params;
use crate::tags;

const DEFAULT_SINCE: Duration = Duration::from_secs(3600);

/// Requests an explanation compares on each side, by default and at most.
const DEFAULT_SAMPLES: usize = 200;
const MAX_SAMPLES: usize = 2000;

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
        .route(
            "/api/v1/traces/{trace_id}/critical-path",
            get(critical_path),
        )
        .route("/api/v1/explain", get(explain))
}

fn error(error: &QueryError) -> Response {
    let status = error.status();
    json(
        status,
        &json!({"error": {"code": status.as_u16(), "message": error.public_message()}}),
    )
}

/// A time range from `start`/`end` (µs since the epoch) or `since` (a Go
/// duration back from now, default 1h); `prefix` names another pair
/// (`baseline_start`, ...).
fn range_of(params: &Params, prefix: &str) -> Result<TimeRange, QueryError> {
    let name = |n: &str| format!("{prefix}{n}");
    let micros = |n: &str| -> Result<Option<u64>, QueryError> {
        Ok(params
            .int::<u64>(&name(n))?
            .map(|us| us.saturating_mul(1000)))
    };
    let end = micros("end")?.unwrap_or_else(now_nanos);
    let range = match micros("start")? {
        Some(from) => TimeRange { from, to: end },
        None => TimeRange::ending(
            end,
            params.duration(&name("since"))?.unwrap_or(DEFAULT_SINCE),
        ),
    };
    if range.from > range.to {
        return Err(QueryError::param(&name("start"), "after end"));
    }
    Ok(range)
}

fn range(params: &Params) -> Result<TimeRange, QueryError> {
    range_of(params, "")
}

/// The span filter every endpoint takes: `service`, `operation`, `kind`
/// (a [`View`]: `inbound` counts what the service served, `outbound` the
/// calls it made; `default` when absent), `tag=key=value` (repeated),
/// `tags` (`key=value key2="a b"`), `min_duration`, `max_duration`,
/// `errors` (failed spans only), and the time range.
fn filter(
    params: &Params,
    default: Option<View>,
) -> Result<(SpanQuery, TimeRange, Option<View>), QueryError> {
    let range = range(params)?;
    let view = match params.get("kind") {
        None => default,
        Some(name) => Some(View::parse(name).ok_or_else(|| {
            QueryError::param(
                "kind",
                format!("unknown kind {name:?}: inbound, outbound, all or a span kind"),
            )
        })?),
    };
    let mut query = SpanQuery {
        service: params.get("service").map(str::to_owned),
        operation: params.get("operation").map(str::to_owned),
        min_duration: params.duration("min_duration")?,
        // Zero is no bound, as in the Jaeger APIs.
        max_duration: params.max_duration(&["max_duration"])?,
        ..Default::default()
    };
    Params::check_duration_range(
        (query.min_duration, query.max_duration),
        "min_duration",
        "max_duration",
    )?;
    if let Some(view) = view {
        view.apply(&mut query);
    }
    for tag in params.all("tag") {
        let (key, value) = tag
            .split_once('=')
            .ok_or_else(|| QueryError::param("tag", format!("expecting key=value, got {tag:?}")))?;
        tags::apply(&mut query, "tag", key, value)?;
    }
    for list in params.all("tags") {
        for (key, value) in tags::parse_list(list).map_err(|e| QueryError::param("tags", e))? {
            tags::apply(&mut query, "tags", &key, &value)?;
        }
    }
    if params.bool("errors")? {
        query.conditions.push(Condition::outcome(Outcome::Error));
    }
    Ok((range.apply(query), range, view))
}

/// What a statistic counted: the view, and the range in µs.
fn counted(params: &Params, view: Option<View>, range: TimeRange) -> Value {
    let Counted { view, spans } = view.unwrap_or(View::All).counted(params.get("service"));
    json!({"view": view, "spans": spans, "start_us": range.from / 1000, "end_us": range.to / 1000})
}

fn ms(nanos: Option<f64>) -> Option<f64> {
    nanos.map(|n| (n / 1e4).round() / 100.0)
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
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

/// `GET /api/v1/latency`: count, rate and p50/p75/p90/p95/p99/max of the
/// matching spans (a service's requests served, by default).
async fn latency(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    run(state, raw, "v1_latency", |engine, params| {
        let (query, range, view) = filter(params, Some(View::Inbound))?;
        let red = engine.red(&query, range, false)?.pop().unwrap_or_default();
        let mut out = latency_json(&red.latency);
        out["rate"] = json!(red.rate);
        out["window_s"] = json!(red.window_s);
        out["relative_error"] = json!(QUANTILE_RELATIVE_ERROR);
        out["counted"] = counted(params, view, range);
        Ok(out)
    })
    .await
}

/// `GET /api/v1/red`: calls, rate, errors, 4xx and latency, overall or per
/// operation (`by_operation=true`).
async fn red(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    run(state, raw, "v1_red", |engine, params| {
        let (query, range, view) = filter(params, Some(View::Inbound))?;
        let rows: Vec<Value> = engine
            .red(&query, range, params.bool("by_operation")?)?
            .iter()
            .map(|row| {
                json!({
                    "operation": row.operation,
                    "calls": row.calls,
                    "rate": row.rate,
                    "window_s": row.window_s,
                    "errors": row.errors,
                    "error_rate": row.error_rate,
                    "client_errors": row.client_errors,
                    "client_error_rate": ratio(row.client_errors, row.calls),
                    "latency": latency_json(&row.latency),
                })
            })
            .collect();
        Ok(json!({"counted": counted(params, view, range), "rows": rows}))
    })
    .await
}

/// `GET /api/v1/errors`: errors and 4xx, by status code, response flag and
/// operation.
async fn errors(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    run(state, raw, "v1_errors", |engine, params| {
        let (query, range, view) = filter(params, Some(View::Inbound))?;
        let b = engine.errors(&query)?;
        let pairs = |list: &[(String, u64)], name: &str, count: &str| -> Vec<Value> {
            list.iter()
                .map(|(key, n)| json!({name: key, count: n}))
                .collect()
        };
        Ok(json!({
            "counted": counted(params, view, range),
            "calls": b.calls,
            "errors": b.errors,
            "error_rate": ratio(b.errors, b.calls),
            "client_errors": b.client_errors,
            "client_error_rate": ratio(b.client_errors, b.calls),
            "by_status_code": b.by_status_code.iter().map(|(code, n)| json!({"code": code, "count": n})).collect::<Vec<_>>(),
            "by_response_flag": pairs(&b.by_response_flag, "flag", "count"),
            "by_operation": pairs(&b.by_operation, "operation", "errors"),
            "client_errors_by_operation": pairs(&b.client_errors_by_operation, "operation", "client_errors"),
        }))
    })
    .await
}

/// `GET /api/v1/histogram?width=10ms`: span counts per latency bucket.
async fn histogram(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    run(state, raw, "v1_histogram", |engine, params| {
        let (query, range, view) = filter(params, Some(View::Inbound))?;
        let width = params
            .duration("width")?
            .unwrap_or(Duration::from_millis(10));
        let width_ns = width.as_nanos().min(u128::from(u64::MAX)) as u64;
        let buckets: Vec<Value> = engine
            .histogram(&query, width_ns)?
            .iter()
            .map(|b| json!({"from_ms": b.from as f64 / 1e6, "count": b.count}))
            .collect();
        Ok(json!({"counted": counted(params, view, range), "width_ms": width_ns as f64 / 1e6, "buckets": buckets}))
    })
    .await
}

/// `GET /api/v1/series?step=1m`: rate, error rate, 4xx rate, p50/p95/p99
/// per step.
async fn series(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    run(state, raw, "v1_series", |engine, params| {
        let (query, range, view) = filter(params, Some(View::Inbound))?;
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
                        let share = |n: u64| (p.calls > 0).then(|| ratio(n, p.calls));
                        json!({
                            "t_ms": p.start / 1_000_000,
                            "calls": p.calls,
                            "errors": p.errors,
                            "client_errors": p.client_errors,
                            "rate": p.calls as f64 / step.as_secs_f64(),
                            "error_rate": share(p.errors),
                            "client_error_rate": share(p.client_errors),
                            "p50_ms": ms(p.quantiles[0]),
                            "p95_ms": ms(p.quantiles[1]),
                            "p99_ms": ms(p.quantiles[2]),
                        })
                    })
                    .collect();
                json!({"operation": s.operation, "points": points})
            })
            .collect();
        Ok(json!({"counted": counted(params, view, range), "step_ms": step_ns / 1_000_000, "series": series}))
    })
    .await
}

/// `GET /api/v1/dependencies?since=24h&service=`: caller → callee, calls,
/// errors; with `service`, only the edges it calls or is called by. At
/// most [`MAX_EDGES`] edges (the most called): `omitted_calls` counts the
/// calls of the edges left out (0 when the graph is whole).
async fn dependencies(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let metrics = state.0.metrics.clone();
    run(state, raw, "v1_dependencies", move |engine, params| {
        let range = range(params)?;
        let graph = engine.dependencies(range, params.get("service"))?;
        metrics.edges_cut("v1_dependencies", graph.omitted_calls, MAX_EDGES);
        Ok(json!({
            "edges": graph.edges,
            "omitted_calls": graph.omitted_calls,
            "max_edges": MAX_EDGES,
        }))
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
    /// Failed spans: 5xx or local failures.
    pub errors: usize,
    /// Spans answered with a 4xx.
    pub client_errors: usize,
    /// Spans per service.
    pub services: BTreeMap<String, usize>,
}

/// Summarizes a trace for lists.
pub fn summary(trace: &Trace) -> TraceSummary {
    let s = summarize(trace);
    let (root_service, root_operation) = s.root.clone().unwrap_or_else(|| {
        trace
            .spans
            .first()
            .map(|r| {
                (
                    tracemesh_collector::attributes::service_name(r.resource.as_ref()).to_owned(),
                    r.span.name.clone(),
                )
            })
            .unwrap_or_default()
    });
    TraceSummary {
        trace_id: hex(&trace.trace_id.0),
        root_service,
        root_operation,
        start_us: s.start / 1000,
        duration_ms: s.end.saturating_sub(s.start) as f64 / 1e6,
        spans: s.spans,
        errors: s.errors,
        client_errors: s.client_errors,
        services: s.services.into_iter().map(|(k, v)| (k, v.spans)).collect(),
    }
}

/// The `sort` parameter.
fn sort(params: &Params) -> Result<Sort, QueryError> {
    params.get("sort").map_or(Ok(Sort::Newest), |name| {
        Sort::parse(name).ok_or_else(|| {
            let names: Vec<&str> = Sort::ALL.iter().map(|(n, _)| *n).collect();
            QueryError::param(
                "sort",
                format!("unknown order {name:?}: one of {}", names.join(", ")),
            )
        })
    })
}

/// `GET /api/v1/traces?limit=20&sort=longest`: summaries of the traces
/// with a matching span, newest first or in the order asked for.
async fn traces(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    run(state, raw, "v1_traces", |engine, params| {
        let (spans, _, _) = filter(params, None)?;
        let limit = params.limit(&["limit"], 20)?;
        let sort = sort(params)?;
        let traces = engine.search(&TraceSearch { spans, limit, sort })?;
        Ok(json!({"traces": traces.iter().map(summary).collect::<Vec<_>>()}))
    })
    .await
}

/// `GET /api/v1/traces/{id}/critical-path`: the stretches of the trace's
/// critical path, latest first, and each span's time on it.
async fn critical_path(State(state): State<AppState>, Path(trace_id): Path<String>) -> Response {
    let trace_id = match crate::jaeger::parse_trace_id("trace_id", &trace_id) {
        Ok(id) => id,
        Err(e) => return error(&e),
    };
    state
        .answer(
            "v1_critical_path",
            move |engine| {
                let (trace, path) = engine.critical_path(trace_id)?;
                let mut on_path: BTreeMap<usize, u64> = BTreeMap::new();
                for segment in &path {
                    *on_path.entry(segment.span).or_default() += segment.end - segment.start;
                }
                let span_id = |i: usize| hex(&trace.spans[i].span.span_id);
                Ok(json!({
                    "trace_id": hex(&trace_id.0),
                    "segments": path.iter().map(|s| json!({
                        "span_id": span_id(s.span),
                        "start_us": s.start / 1000,
                        "end_us": s.end / 1000,
                    })).collect::<Vec<_>>(),
                    "spans": on_path.iter().map(|(i, ns)| json!({
                        "span_id": span_id(*i),
                        "critical_ms": *ns as f64 / 1e6,
                    })).collect::<Vec<_>>(),
                }))
            },
            |r| match r {
                Ok(body) => json(http::StatusCode::OK, &body),
                Err(e) => error(&e),
            },
        )
        .await
}

/// `GET /api/v1/explain`: what made requests slower, hops ranked by the
/// time they added to the critical path. Either `trace=ID` (that trace
/// against up to `samples` other traces of its root operation in the
/// range), or `service` (and `operation`) with the current range against
/// `baseline_since`/`baseline_until` (Go durations back from now) or
/// `baseline_start`/`baseline_end` (µs).
async fn explain(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    run(state, raw, "v1_explain", |engine, params| {
        let samples = params
            .int::<usize>("samples")?
            .unwrap_or(DEFAULT_SAMPLES)
            .clamp(1, MAX_SAMPLES);
        if let Some(id) = params.get("trace") {
            let trace_id = crate::jaeger::parse_trace_id("trace", id)?;
            return engine.explain_trace(trace_id, range(params)?, samples);
        }
        if params.get("service").is_none() {
            return Err(QueryError::BadRequest(
                "parameter 'trace' or 'service' is required".into(),
            ));
        }
        let (query, current, _) = filter(params, Some(View::Inbound))?;
        let baseline = match (params.get("baseline_start"), params.duration("baseline_until")?) {
            (Some(_), _) => range_of(params, "baseline_")?,
            (None, until) => {
                let since = params.duration("baseline_since")?.ok_or_else(|| {
                    QueryError::BadRequest(
                        "the baseline window is needed: baseline_since (and baseline_until), or baseline_start and baseline_end".into(),
                    )
                })?;
                let now = now_nanos();
                let to = now.saturating_sub(until.unwrap_or(Duration::ZERO).as_nanos() as u64);
                TimeRange {
                    from: now.saturating_sub(since.as_nanos() as u64).min(to),
                    to,
                }
            }
        };
        let mut query = query;
        query.start_from = None;
        query.start_to = None;
        engine.explain_windows(&query, current, baseline, samples)
    })
    .await
}
