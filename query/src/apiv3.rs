//! Jaeger's api_v3 HTTP endpoints (the gRPC gateway's JSON), which Jaeger's
//! own UI uses from 2.19 on: services, operations, trace search with
//! `query.*` parameters, trace summaries for the search page, and trace by
//! id, traces as OTLP JSON. Also Jaeger's `POST /api/transform`, with which
//! the UI turns an uploaded OTLP JSON file into its own model.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::{get, post};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message;
use serde::Serialize;
use serde_json::json;
use tracemesh_collector::store::{SpanQuery, Trace};

use crate::engine::{Sort, TraceSearch};
use crate::error::QueryError;
use crate::http::{AppState, json};
use crate::jaeger::model::{kind_from_name, kind_name};
use crate::params::{Params, parse_duration};
use crate::tags;
use crate::timefmt::parse_rfc3339;

/// Jaeger's default search depth.
const DEFAULT_SEARCH_DEPTH: usize = 100;

/// The `/api/v3/...` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v3/services", get(services))
        .route("/api/v3/operations", get(operations))
        .route("/api/v3/traces", get(find_traces))
        .route("/api/v3/traces/{trace_id}", get(trace))
        .route("/api/v3/trace-summaries", get(find_trace_summaries))
        .route(
            "/api/transform",
            post(transform).layer(DefaultBodyLimit::max(MAX_TRANSFORM_BYTES)),
        )
}

/// Largest OTLP JSON body `/api/transform` reads.
const MAX_TRANSFORM_BYTES: usize = 64 << 20;

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
        // Zero is no bound, as Jaeger's storage readers take it.
        max_duration: params.max_duration(&["query.durationMax", "query.duration_max"])?,
        start_from: Some(from),
        start_to: Some(to),
        ..Default::default()
    };
    Params::check_duration_range(
        (spans.min_duration, spans.max_duration),
        "query.duration_min",
        "query.duration_max",
    )?;
    if let Some(attributes) = params.get("query.attributes") {
        let map: std::collections::BTreeMap<String, String> = serde_json::from_str(attributes)
            .map_err(|e| QueryError::param("query.attributes", e))?;
        for (key, value) in map {
            tags::apply(&mut spans, "query.attributes", &key, &value)?;
        }
    }
    let limit = params.limit(
        &[
            "query.searchDepth",
            "query.search_depth",
            "query.num_traces",
        ],
        DEFAULT_SEARCH_DEPTH,
    )?;
    Ok(TraceSearch {
        spans,
        limit,
        sort: Sort::Newest,
    })
}

/// Runs the search of `raw`'s `query.*` parameters; `render` shapes the traces.
async fn search_then(
    state: AppState,
    raw: Option<String>,
    endpoint: &'static str,
    render: impl FnOnce(Vec<Trace>) -> Response,
) -> Response {
    let params = Params::parse(raw.as_deref());
    let search = match search_params(&params) {
        Ok(search) => search,
        Err(e) => return error(&e),
    };
    state
        .answer(
            endpoint,
            move |engine| engine.search(&search),
            |r| match r {
                Ok(traces) => render(traces),
                Err(e) => error(&e),
            },
        )
        .await
}

async fn find_traces(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    search_then(state, raw, "v3_traces", |traces| {
        if traces.is_empty() {
            json(
                http::StatusCode::NOT_FOUND,
                &json!({"error": {"httpCode": 404, "message": "No traces found"}}),
            )
        } else {
            json(http::StatusCode::OK, &otlp(&traces))
        }
    })
    .await
}

/// One summary as the gateway's JSON writes an `api_v3.TraceSummary`:
/// proto3 JSON, zero values left out, 64-bit numbers as strings.
fn summary_json(trace: &Trace) -> serde_json::Value {
    let summary = crate::engine::search::summarize(trace);
    let mut out = serde_json::Map::new();
    out.insert(
        "traceId".into(),
        json!(crate::jaeger::model::hex(&trace.trace_id.0)),
    );
    if let Some((service, operation)) = &summary.root {
        if !service.is_empty() {
            out.insert("rootServiceName".into(), json!(service));
        }
        if !operation.is_empty() {
            out.insert("rootOperationName".into(), json!(operation));
        }
    }
    if summary.start != 0 {
        out.insert(
            "minStartTimeUnixNano".into(),
            json!(summary.start.to_string()),
        );
    }
    if summary.end != 0 {
        out.insert("maxEndTimeUnixNano".into(), json!(summary.end.to_string()));
    }
    let mut count = |key: &str, n: usize| {
        if n != 0 {
            out.insert(key.into(), json!(n));
        }
    };
    count("spanCount", summary.spans);
    count("errorSpanCount", summary.status_errors);
    count("orphanSpanCount", summary.orphans);
    let services: Vec<serde_json::Value> = summary
        .services
        .iter()
        .map(|(name, counts)| {
            let mut service = serde_json::Map::new();
            service.insert("name".into(), json!(name));
            if counts.spans != 0 {
                service.insert("spanCount".into(), json!(counts.spans));
            }
            if counts.status_errors != 0 {
                service.insert("errorSpanCount".into(), json!(counts.status_errors));
            }
            serde_json::Value::Object(service)
        })
        .collect();
    if !services.is_empty() {
        out.insert("services".into(), json!(services));
    }
    serde_json::Value::Object(out)
}

/// `GET /api/v3/trace-summaries`: the search of `/api/v3/traces`, one
/// summary per trace (root, time span, span and error counts per
/// service), as Jaeger UI's search page reads it. No match is an empty
/// answer, not a 404.
async fn find_trace_summaries(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    search_then(state, raw, "v3_trace_summaries", |traces| {
        if traces.is_empty() {
            json(http::StatusCode::OK, &json!({}))
        } else {
            json(
                http::StatusCode::OK,
                &json!({"summaries": traces.iter().map(summary_json).collect::<Vec<_>>()}),
            )
        }
    })
    .await
}

/// `POST /api/transform`: an OTLP JSON `TracesData` (what `/api/v3/traces`
/// and OpenTelemetry's file exporter write) → Jaeger's UI model, one trace
/// per trace id in the order first seen, in Jaeger's envelope. Doubles
/// written as strings (`"NaN"`) are read as the OTLP JSON mapping allows.
async fn transform(State(state): State<AppState>, body: Bytes) -> Response {
    use tracemesh_collector::ingest::decode::{Encoding, decode};
    let started = std::time::Instant::now();
    let request: Result<
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        _,
    > = decode(Encoding::Json, &body, "OTLP traces");
    let response = match request {
        Err(e) => crate::jaeger::error_response(&QueryError::BadRequest(format!(
            "cannot unmarshal OTLP: {e}"
        ))),
        Ok(request) => {
            let mut traces: Vec<Trace> = Vec::new();
            let mut index: HashMap<[u8; 16], usize> = HashMap::new();
            tracemesh_collector::store::document::for_each_span(&request.resource_spans, |span| {
                let Some(trace_id) =
                    tracemesh_collector::ids::TraceId::from_bytes(&span.span.trace_id)
                else {
                    return;
                };
                let at = *index.entry(trace_id.0).or_insert_with(|| {
                    traces.push(Trace {
                        trace_id,
                        spans: Vec::new(),
                        omitted_spans: 0,
                    });
                    traces.len() - 1
                });
                traces[at]
                    .spans
                    .push(tracemesh_collector::store::StoredSpan {
                        resource: span.resource.cloned(),
                        resource_schema_url: span.resource_schema_url.to_owned(),
                        scope: span.scope.cloned(),
                        scope_schema_url: span.scope_schema_url.to_owned(),
                        span: span.span.clone(),
                    });
            });
            crate::jaeger::traces_response(traces.iter().map(crate::jaeger::model::trace).collect())
        }
    };
    state.0.metrics.observe(
        "jaeger_transform",
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
