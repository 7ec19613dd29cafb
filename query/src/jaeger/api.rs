//! Jaeger's services, operations, trace search, trace by id and
//! dependencies endpoints.

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use tracemesh_collector::ids::TraceId;
use tracemesh_collector::store::SpanQuery;

use super::model::{self, kind_from_name, kind_name};
use super::{ErrorEntry, envelope, error, render};
use crate::engine::stats::MAX_EDGES;
use crate::engine::{Sort, TimeRange, TraceSearch, now_nanos};
use crate::error::QueryError;
use crate::http::AppState;
use crate::params::Params;
use crate::tags;

/// The search window when `start` is not given (Jaeger's would be empty:
/// it starts and ends now).
const DEFAULT_TRACE_LOOKBACK: Duration = Duration::from_secs(2 * 24 * 3600);
/// Jaeger's default number of traces.
const DEFAULT_LIMIT: usize = 100;
/// Jaeger's default dependency window.
const DEFAULT_DEPENDENCY_LOOKBACK: Duration = Duration::from_secs(24 * 3600);

/// `GET /api/services`
pub async fn services(State(state): State<AppState>) -> Response {
    state
        .answer(
            "jaeger_services",
            |engine| engine.services(),
            |r| render(r, Vec::len),
        )
        .await
}

/// `GET /api/services/{service}/operations`: names only.
pub async fn service_operations(
    State(state): State<AppState>,
    Path(service): Path<String>,
) -> Response {
    state
        .answer(
            "jaeger_service_operations",
            move |engine| {
                let mut names: Vec<String> = engine
                    .operations(&service, None)?
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect();
                names.dedup();
                Ok(names)
            },
            |r| render(r, Vec::len),
        )
        .await
}

/// One operation as `/api/operations` lists it.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// The span name.
    pub name: String,
    /// Jaeger's kind name (empty when unspecified).
    pub span_kind: &'static str,
}

/// `GET /api/operations?service=&spanKind=`
pub async fn operations(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw.as_deref());
    let parsed = (|| {
        let service = params
            .get("service")
            .ok_or_else(|| QueryError::BadRequest("parameter 'service' is required".into()))?
            .to_owned();
        let kind = match params.get("spanKind") {
            None => None,
            Some(name) => Some(kind_from_name(name).ok_or_else(|| {
                QueryError::param("spanKind", format!("unsupported span kind: '{name}'"))
            })?),
        };
        Ok((service, kind))
    })();
    let (service, kind) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return error(&e),
    };
    state
        .answer(
            "jaeger_operations",
            move |engine| {
                Ok(engine
                    .operations(&service, kind)?
                    .into_iter()
                    .map(|(name, kind)| Operation {
                        name,
                        span_kind: kind_name(kind),
                    })
                    .collect::<Vec<_>>())
            },
            |r| render(r, Vec::len),
        )
        .await
}

/// Parses a trace id as Jaeger does: up to 32 hex digits, left-padded.
pub fn parse_trace_id(param: &str, text: &str) -> Result<TraceId, QueryError> {
    if text.is_empty() || text.len() > 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(QueryError::param(
            param,
            format!("{text:?} is not a trace id (1 to 32 hex digits)"),
        ));
    }
    let padded = format!("{text:0>32}");
    padded
        .parse::<TraceId>()
        .map_err(|e| QueryError::param(param, e))
}

/// `GET /api/traces/{traceID}`
pub async fn trace(State(state): State<AppState>, Path(trace_id): Path<String>) -> Response {
    let trace_id = match parse_trace_id("traceID", &trace_id) {
        Ok(id) => id,
        Err(e) => return error(&e),
    };
    state
        .answer(
            "jaeger_trace",
            move |engine| Ok(vec![model::trace(&engine.trace(trace_id)?)]),
            |r| render(r, |_| 0),
        )
        .await
}

/// Reads Jaeger's trace search parameters.
fn search_params(params: &Params) -> Result<TraceSearch, QueryError> {
    let service = params.get("service").map(str::to_owned);
    if service.is_none() {
        return Err(QueryError::BadRequest(
            "parameter 'service' is required".into(),
        ));
    }
    let micros = |name: &str| -> Result<Option<u64>, QueryError> {
        Ok(params.int::<u64>(name)?.map(|us| us.saturating_mul(1000)))
    };
    // `lookback` is the UI's own (`2d`, `custom`): Jaeger's query service
    // never reads it, and neither does this one.
    let end = micros("end")?.unwrap_or_else(now_nanos);
    let start = match micros("start")? {
        Some(start) => start,
        None => TimeRange::ending(end, DEFAULT_TRACE_LOOKBACK).from,
    };
    let mut spans = SpanQuery {
        service,
        operation: params.get("operation").map(str::to_owned),
        min_duration: params.duration("minDuration")?,
        // 0 is no upper bound, as in Jaeger's query parser and storage.
        max_duration: params.max_duration(&["maxDuration"])?,
        start_from: Some(start),
        start_to: Some(end),
        ..Default::default()
    };
    Params::check_duration_range(
        (spans.min_duration, spans.max_duration),
        "minDuration",
        "maxDuration",
    )?;
    for tag in params.all("tag") {
        let (key, value) = tag.split_once(':').ok_or_else(|| {
            QueryError::param("tag", format!("expecting key:value, received: {tag}"))
        })?;
        tags::apply(&mut spans, "tag", key, value)?;
    }
    for tags in params.all("tags") {
        let map: std::collections::BTreeMap<String, serde_json::Value> =
            serde_json::from_str(tags).map_err(|e| QueryError::param("tags", e))?;
        for (key, value) in map {
            let value = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            tags::apply(&mut spans, "tags", &key, &value)?;
        }
    }
    let limit = params.limit(&["limit"], DEFAULT_LIMIT)?;
    Ok(TraceSearch {
        spans,
        limit,
        sort: Sort::Newest,
    })
}

/// `GET /api/traces?service=&operation=&tags=&start=&end=&minDuration=&maxDuration=&limit=&lookback=`
/// (or `traceID=...`, repeated, to fetch several by id).
pub async fn search(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw.as_deref());
    let mut ids = params.all("traceID");
    // One answer reads at most MAX_TRACES traces.
    ids.truncate(crate::params::MAX_TRACES);
    if !ids.is_empty() {
        let ids = match ids
            .iter()
            .map(|id| parse_trace_id("traceID", id).map(|t| (t, (*id).to_owned())))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(ids) => ids,
            Err(e) => return error(&e),
        };
        return state
            .answer(
                "jaeger_traces",
                move |engine| {
                    let mut traces = Vec::new();
                    let mut missing = Vec::new();
                    for (id, text) in ids {
                        match engine.trace(id) {
                            Ok(trace) => traces.push(model::trace(&trace)),
                            Err(QueryError::TraceNotFound) => missing.push(ErrorEntry {
                                code: None,
                                msg: QueryError::TraceNotFound.to_string(),
                                trace_id: Some(text),
                            }),
                            Err(e) => return Err(e),
                        }
                    }
                    Ok((traces, missing))
                },
                |r| match r {
                    Ok((traces, missing)) => envelope(traces, 0, missing),
                    Err(e) => error(&e),
                },
            )
            .await;
    }
    let search = match search_params(&params) {
        Ok(search) => search,
        Err(e) => return error(&e),
    };
    state
        .answer(
            "jaeger_traces",
            move |engine| {
                Ok(engine
                    .search(&search)?
                    .iter()
                    .map(model::trace)
                    .collect::<Vec<_>>())
            },
            |r| render(r, |_| 0),
        )
        .await
}

/// A dependency link as Jaeger answers it.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DependencyLink {
    /// The calling service.
    pub parent: String,
    /// The called service.
    pub child: String,
    /// Calls.
    pub call_count: u64,
}

/// `GET /api/dependencies?endTs=&lookback=` (ms), optionally `service=`
/// (the edges it calls or is called by, chosen before the bound). At most
/// [`MAX_EDGES`] edges, the most called, in Jaeger's shape: a cut is
/// logged at WARN and counted in `tracemesh_query_truncated_answers_total`
/// (Jaeger's answer has no place for it that its UI shows).
pub async fn dependencies(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw.as_deref());
    let range = (|| {
        let end = params
            .int::<u64>("endTs")?
            .map_or_else(now_nanos, |ms| ms.saturating_mul(1_000_000));
        let lookback = params
            .units("lookback", Duration::from_millis(1))?
            .unwrap_or(DEFAULT_DEPENDENCY_LOOKBACK);
        Ok(TimeRange::ending(end, lookback))
    })();
    let range = match range {
        Ok(range) => range,
        Err(e) => return error(&e),
    };
    let service = params.get("service").map(str::to_owned);
    let metrics = state.0.metrics.clone();
    state
        .answer(
            "jaeger_dependencies",
            move |engine| {
                let graph = engine.dependencies(range, service.as_deref())?;
                metrics.edges_cut("jaeger_dependencies", graph.omitted_calls, MAX_EDGES);
                Ok(graph
                    .edges
                    .into_iter()
                    .map(|d| DependencyLink {
                        parent: d.parent,
                        child: d.child,
                        call_count: d.calls,
                    })
                    .collect::<Vec<_>>())
            },
            |r| render(r, |_| 0),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(query: &str) -> Result<SpanQuery, QueryError> {
        search_params(&Params::parse(Some(query))).map(|search| search.spans)
    }

    #[test]
    fn max_duration_zero_is_no_upper_bound() {
        for zero in ["0", "0s", "0ms"] {
            let spans = parsed(&format!("service=frontend&maxDuration={zero}")).unwrap();
            assert_eq!(spans.max_duration, None, "maxDuration={zero}");
            let spans = parsed(&format!(
                "service=frontend&minDuration=1ms&maxDuration={zero}"
            ))
            .unwrap();
            assert_eq!(spans.min_duration, Some(Duration::from_millis(1)));
            assert_eq!(spans.max_duration, None, "maxDuration={zero}");
        }
        let spans = parsed("service=frontend&minDuration=1ms&maxDuration=2ms").unwrap();
        assert_eq!(spans.max_duration, Some(Duration::from_millis(2)));
        assert!(matches!(
            parsed("service=frontend&minDuration=2ms&maxDuration=1ms"),
            Err(QueryError::BadRequest(_))
        ));
    }
}
