//! Zipkin v2: `POST /api/v2/spans` with a JSON list of spans (optionally
//! gzipped), answered 202 Accepted like Zipkin's own collector. A batch is
//! stored whole or not at all: a bad span refuses it (400, naming the span
//! and its field), as Zipkin's server refuses a list it cannot decode.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use super::read_body;
use crate::error::IngestError;
use crate::ingest::{Ingest, Receiver, zipkin};

/// The Zipkin routes.
pub fn router(ingest: Ingest) -> Router {
    Router::new()
        .route("/api/v2/spans", post(spans))
        .with_state(ingest)
}

fn error_response(error: &IngestError) -> Response {
    let mut response = (error.http_status(), format!("{error}\n")).into_response();
    if let Some(after) = error.retry_after() {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(after.as_secs().max(1)),
        );
    }
    response
}

async fn spans(State(ingest): State<Ingest>, headers: HeaderMap, body: Body) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if !content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        let error = IngestError::UnsupportedMediaType(format!(
            "content-type {content_type:?} is not supported: use application/json"
        ));
        ingest.refused(Receiver::Zipkin, &error);
        return error_response(&error);
    }
    let bytes = match read_body(&headers, body, ingest.max_request_size()).await {
        Ok(bytes) => bytes,
        Err(error) => {
            ingest.refused(Receiver::Zipkin, &error);
            return error_response(&error);
        }
    };
    // Zipkin has no partial success: a bad span refuses the whole batch,
    // so a sender that retries it (or sends it again fixed) makes no
    // copies of the good ones. The receipt time, which dates a span that
    // gives none, is read before the bounds, so it is inside them; the
    // bounds the spans were checked against are those the batch is
    // written with, so validation removes none of them.
    let received = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let bounds = ingest.time_bounds();
    let resource_spans = match zipkin::decode(&bytes, received, bounds) {
        Ok(resource_spans) => resource_spans,
        Err(zipkin::Refused { spans: 0, error }) => {
            ingest.refused(Receiver::Zipkin, &error);
            return error_response(&error);
        }
        Err(zipkin::Refused { spans, error }) => {
            ingest.batch_refused(Receiver::Zipkin, spans, &error);
            return error_response(&error);
        }
    };
    let request = ExportTraceServiceRequest { resource_spans };
    match ingest
        .traces_within(Receiver::Zipkin, request.into(), bounds)
        .await
    {
        Ok(accepted) => {
            debug_assert_eq!(accepted.rejected, 0, "{}", accepted.message);
            StatusCode::ACCEPTED.into_response()
        }
        Err(error) => error_response(&error),
    }
}
