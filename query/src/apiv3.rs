//! Jaeger's api_v3 HTTP endpoints (the gRPC gateway's JSON), which Jaeger's
//! own UI is moving to: services, operations, trace search with `query.*`
//! parameters and trace by id, traces as OTLP JSON.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message;
use serde::Serialize;
use serde_json::json;
use tracemesh_collector::store::{SpanQuery, Trace};

use crate::engine::TraceSearch;
use crate::error::QueryError;
use crate::http::{AppState, json};
use crate::jaeger::model::{kind_from_name, kind_name};
use crate::params::{Params, parse_duration};
use crate::timefmt::parse_rfc3339;

/// Jaeger's default search depth.
const DEFAULT_SEARCH_DEPTH: usize = 20;

/// The `/api/v3/...` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v3/services", get(services))
        .route("/api/v3/operations", get(operations))
        .route("/api/v3/traces", get(find_traces))
        .route("/api/v3/traces/{trace_id}", get(trace))
}

/// The gateway's error shape: `{"error":{"httpCode":400,"message":...}}`.
fn error(error: &QueryError) -> Response {
    let status = error.status();
    let message = match error {
        QueryError::BadParam { param, reason } => format!("malformed parameter {param}: {reason}"),
        other => other.public_message(),
    };
    json(
        status,
        &json!({"error": {"httpCode": status.as_u16(), "message": message}}),
    )
}

fn render<T: Serialize>(result: Result<T, QueryError>) -> Response {
    match result {
        Ok(body) => json(http::StatusCode::OK, &body),
        Err(e) => error(&e),
    }
}

async fn services(State(state): State<AppState>) -> Response {
    state
        .answer(
            "v3_services",
            |engine| Ok(json!({"services": engine.services()?})),
            render,
        )
        .await
}

async fn operations(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw.as_deref());
    let service = params.get("service").unwrap_or_default().to_owned();
    let kind = match params.get_any(&["spanKind", "span_kind"]) {
        None => None,
        Some((param, name)) => match kind_from_name(name) {
            Some(kind) => Some(kind),
            None => {
                return error(&QueryError::param(
                    param,
                    format!("unsupported span kind: '{name}'"),
                ));
            }
        },
    };
    state
        .answer(
            "v3_operations",
            move |engine| {
                let operations: Vec<_> = engine
                    .operations(&service, kind)?
                    .into_iter()
                    .map(|(name, kind)| {
                        let kind = match kind_name(kind) {
                            "" => "internal",
                            named => named,
                        };
                        json!({"name": name, "spanKind": kind})
                    })
                    .collect();
                Ok(json!({"operations": operations}))
            },
            render,
        )
        .await
}

/// Traces as one OTLP `TracesData`, spans grouped by resource and scope.
fn otlp(traces: &[Trace]) -> serde_json::Value {
    let mut resource_spans: Vec<ResourceSpans> = Vec::new();
    let mut by_resource: HashMap<(Vec<u8>, String), usize> = HashMap::new();
    for trace in traces {
        for stored in &trace.spans {
            let key = (
                stored
                    .resource
                    .as_ref()
                    .map(|r| r.encode_to_vec())
                    .unwrap_or_default(),
                stored.resource_schema_url.clone(),
            );
            let index = *by_resource.entry(key).or_insert_with(|| {
                resource_spans.push(ResourceSpans {
                    resource: stored.resource.clone(),
                    scope_spans: Vec::new(),
                    schema_url: stored.resource_schema_url.clone(),
                });
                resource_spans.len() - 1
            });
            let scopes = &mut resource_spans[index].scope_spans;
            let scope_at = scopes
                .iter()
                .position(|s| s.scope == stored.scope && s.schema_url == stored.scope_schema_url);
            let scope = match scope_at {
                Some(at) => &mut scopes[at],
                None => {
                    scopes.push(ScopeSpans {
                        scope: stored.scope.clone(),
                        spans: Vec::new(),
                        schema_url: stored.scope_schema_url.clone(),
                    });
                    let last = scopes.len() - 1;
                    &mut scopes[last]
                }
            };
            scope.spans.push(stored.span.clone());
        }
    }
    json!({"result": {"resourceSpans": resource_spans}})
}

async fn trace(State(state): State<AppState>, Path(trace_id): Path<String>) -> Response {
    let trace_id = match crate::jaeger::parse_trace_id("trace_id", &trace_id) {
        Ok(id) => id,
        Err(e) => return error(&e),
    };
    state
        .answer(
            "v3_trace",
            move |engine| Ok(otlp(&[engine.trace(trace_id)?])),
            render,
        )
        .await
}

fn search_params(params: &Params) -> Result<TraceSearch, QueryError> {
    if params.get("query.filter").is_some() {
        return Err(QueryError::param(
            "query.filter",
            "filter expressions are not supported; use query.attributes",
        ));
    }
    let time = |names: &[&str]| -> Result<Option<u64>, QueryError> {
        params
            .get_any(names)
            .map(|(param, text)| parse_rfc3339(text).map_err(|e| QueryError::param(param, e)))
            .transpose()
    };
    let from = time(&["query.startTimeMin", "query.start_time_min"])?;
    let to = time(&["query.startTimeMax", "query.start_time_max"])?;
    let (Some(from), Some(to)) = (from, to) else {
        return Err(QueryError::BadRequest(
            "query.startTimeMin and query.startTimeMax are required".into(),
        ));
    };
    if from >= to {
        return Err(QueryError::BadRequest(
            "query.startTimeMin must be before query.startTimeMax".into(),
        ));
    }
    let duration = |names: &[&str]| -> Result<Option<Duration>, QueryError> {
        params
            .get_any(names)
            .map(|(param, text)| parse_duration(text).map_err(|e| QueryError::param(param, e)))
            .transpose()
    };
    let mut spans = SpanQuery {
        service: params
            .get_any(&["query.serviceName", "query.service_name"])
            .map(|(_, v)| v.to_owned()),
        operation: params
            .get_any(&["query.operationName", "query.operation_name"])
            .map(|(_, v)| v.to_owned()),
        min_duration: duration(&["query.durationMin", "query.duration_min"])?,
        max_duration: duration(&["query.durationMax", "query.duration_max"])?,
        start_from: Some(from),
        start_to: Some(to),
        ..Default::default()
    };
    if let Some(attributes) = params.get("query.attributes") {
        let map: std::collections::BTreeMap<String, String> = serde_json::from_str(attributes)
            .map_err(|e| QueryError::param("query.attributes", e))?;
        spans.tags.extend(map);
    }
    let limit = params.limit(
        &[
            "query.searchDepth",
            "query.search_depth",
            "query.num_traces",
        ],
        DEFAULT_SEARCH_DEPTH,
    )?;
    Ok(TraceSearch { spans, limit })
}

async fn find_traces(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw.as_deref());
    let search = match search_params(&params) {
        Ok(search) => search,
        Err(e) => return error(&e),
    };
    state
        .answer(
            "v3_traces",
            move |engine| engine.search(&search),
            |r| match r {
                Ok(traces) if traces.is_empty() => json(
                    http::StatusCode::NOT_FOUND,
                    &json!({"error": {"httpCode": 404, "message": "No traces found"}}),
                ),
                Ok(traces) => json(http::StatusCode::OK, &otlp(&traces)),
                Err(e) => error(&e),
            },
        )
        .await
}
