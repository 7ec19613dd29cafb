//! Jaeger's query API, field for field as Jaeger's query service answers
//! it, so Grafana's Jaeger data source and Jaeger UI work unchanged:
//! services, operations, trace search and trace by id ([`api`]), the
//! dependency graph, and the monitor endpoints ([`monitor`]).

mod api;
pub mod model;

pub use api::parse_trace_id;
mod monitor;

use axum::Router;
use axum::response::Response;
use axum::routing::get;
use serde::Serialize;

use crate::error::QueryError;
use crate::http::{AppState, json};

/// The `/api/...` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/services", get(api::services))
        .route(
            "/api/services/{service}/operations",
            get(api::service_operations),
        )
        .route("/api/operations", get(api::operations))
        .route("/api/traces", get(api::search))
        .route("/api/traces/{trace_id}", get(api::trace))
        .route("/api/dependencies", get(api::dependencies))
        .route("/api/metrics/latencies", get(monitor::latencies))
        .route("/api/metrics/calls", get(monitor::calls))
        .route("/api/metrics/errors", get(monitor::errors))
        .route("/api/metrics/minstep", get(monitor::min_step))
}

/// Jaeger's response envelope.
#[derive(Debug, Serialize)]
struct Envelope<T> {
    data: T,
    total: usize,
    limit: usize,
    offset: usize,
    errors: Option<Vec<ErrorEntry>>,
}

/// One entry of the envelope's `errors`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    msg: String,
    #[serde(rename = "traceID", skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
}

/// `data` in the envelope, with `total` set as Jaeger sets it.
fn envelope<T: Serialize>(data: T, total: usize, errors: Vec<ErrorEntry>) -> Response {
    json(
        http::StatusCode::OK,
        &Envelope {
            data,
            total,
            limit: 0,
            offset: 0,
            errors: (!errors.is_empty()).then_some(errors),
        },
    )
}

/// An error in Jaeger's shape: `{"data":null,...,"errors":[{"code":400,"msg":...}]}`.
fn error(error: &QueryError) -> Response {
    let status = error.status();
    json(
        status,
        &Envelope::<Option<()>> {
            data: None,
            total: 0,
            limit: 0,
            offset: 0,
            errors: Some(vec![ErrorEntry {
                code: Some(status.as_u16()),
                msg: error.public_message(),
                trace_id: None,
            }]),
        },
    )
}

/// Renders a result as the envelope (with `total` = `count(data)`) or an error.
fn render<T: Serialize>(
    result: Result<T, QueryError>,
    total: impl FnOnce(&T) -> usize,
) -> Response {
    match result {
        Ok(data) => {
            let n = total(&data);
            envelope(data, n, Vec::new())
        }
        Err(e) => error(&e),
    }
}

/// A Jaeger error answer (for handlers outside this module).
pub fn error_response(e: &QueryError) -> Response {
    error(e)
}

/// Jaeger traces in Jaeger's envelope (`total` 0, as Jaeger answers).
pub fn traces_response(traces: Vec<model::JaegerTrace>) -> Response {
    envelope(traces, 0, Vec::new())
}
