//! OTLP/HTTP: `POST /v1/traces` and `/v1/metrics` with protobuf or JSON
//! bodies (optionally gzipped). Answers are in the request's encoding:
//! an `Export*ServiceResponse` (with partial success) on 200, a
//! `google.rpc.Status` otherwise, with `Retry-After` on 429 and 503.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use serde::Serialize;

use super::read_body;
use crate::error::IngestError;
use crate::ingest::decode::{self, Encoding};
use crate::ingest::{Ingest, Receiver};

/// `google.rpc.Status`, the body of OTLP/HTTP error answers.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct RpcStatus {
    /// A `google.rpc.Code`.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What went wrong.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// The OTLP/HTTP routes.
pub fn router(ingest: Ingest) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .with_state(ingest)
}

fn encoded<T: Message + Serialize>(
    status: StatusCode,
    encoding: Encoding,
    message: &T,
) -> Response {
    let body = match encoding {
        Encoding::Protobuf => message.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(message).unwrap_or_default(),
    };
    (
        status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

/// The answer to a refused request.
pub fn error_response(error: &IngestError, encoding: Encoding) -> Response {
    let status = RpcStatus {
        code: error.grpc_code() as i32,
        message: error.to_string(),
    };
    let mut response = encoded(error.http_status(), encoding, &status);
    if let Some(after) = error.retry_after() {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(after.as_secs().max(1)),
        );
    }
    response
}

/// Reads the body of a request in the encoding its `Content-Type` names.
async fn read_request(
    ingest: &Ingest,
    headers: &HeaderMap,
    body: Body,
) -> Result<(axum::body::Bytes, Encoding), (IngestError, Encoding)> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let encoding = Encoding::from_content_type(content_type).map_err(|e| (e, Encoding::Json))?;
    let bytes = read_body(headers, body, ingest.max_request_size())
        .await
        .map_err(|e| (e, encoding))?;
    Ok((bytes, encoding))
}

async fn traces(State(ingest): State<Ingest>, headers: HeaderMap, body: Body) -> Response {
    let decoded = match read_request(&ingest, &headers, body).await {
        Ok((bytes, encoding)) => decode::traces(encoding, &bytes)
            .map(|decoded| (decoded, encoding))
            .map_err(|e| (e, encoding)),
        Err(refused) => Err(refused),
    };
    let (decoded, encoding) = match decoded {
        Ok(decoded) => decoded,
        Err((error, encoding)) => {
            ingest.refused(Receiver::OtlpHttp, &error);
            return error_response(&error, encoding);
        }
    };
    match ingest.traces(Receiver::OtlpHttp, decoded).await {
        Ok(accepted) if encoding == Encoding::Json => {
            // proto3 JSON writes int64 as a decimal string.
            let body = match accepted.rejected {
                0 => serde_json::json!({}),
                n => {
                    serde_json::json!({"partialSuccess": {"rejectedSpans": n.to_string(), "errorMessage": accepted.message}})
                }
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, encoding.content_type())],
                body.to_string(),
            )
                .into_response()
        }
        Ok(accepted) => {
            let partial_success = (accepted.rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: accepted.rejected as i64,
                error_message: accepted.message,
            });
            encoded(
                StatusCode::OK,
                encoding,
                &ExportTraceServiceResponse { partial_success },
            )
        }
        Err(error) => error_response(&error, encoding),
    }
}

async fn metrics(State(ingest): State<Ingest>, headers: HeaderMap, body: Body) -> Response {
    let decoded = match read_request(&ingest, &headers, body).await {
        Ok((bytes, encoding)) => {
            decode::decode::<ExportMetricsServiceRequest>(encoding, &bytes, "metrics")
                .map(|request| (request, encoding))
                .map_err(|e| (e, encoding))
        }
        Err(refused) => Err(refused),
    };
    match decoded {
        Ok((request, encoding)) => {
            ingest.metrics(Receiver::OtlpHttp, request);
            encoded(
                StatusCode::OK,
                encoding,
                &ExportMetricsServiceResponse {
                    partial_success: None,
                },
            )
        }
        Err((error, encoding)) => error_response(&error, encoding),
    }
}
