//! Zipkin v2: `POST /api/v2/spans` with a JSON list of spans (optionally
//! gzipped), answered 202 Accepted like Zipkin's own collector.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use super::read_body;
use crate::error::IngestError;
use crate::ingest::decode::DecodedTraces;
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
    let decoded = match read_body(&headers, body, ingest.max_request_size()).await {
        Ok(bytes) => zipkin::decode(&bytes),
        Err(error) => Err(error),
    };
    let (resource_spans, undecodable) = match decoded {
        Ok(decoded) => decoded,
        Err(error) => {
            ingest.refused(Receiver::Zipkin, &error);
            return error_response(&error);
        }
    };
    let decoded = DecodedTraces {
        request: ExportTraceServiceRequest { resource_spans },
        encoded: None,
        undecodable,
    };
    // Zipkin has no partial success: the spans kept are stored, and the
    // answer names the ones that were not.
    match ingest.traces(Receiver::Zipkin, decoded).await {
        Ok(accepted) if accepted.rejected > 0 => {
            (StatusCode::BAD_REQUEST, format!("{}\n", accepted.message)).into_response()
        }
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(error) => error_response(&error),
    }
}
