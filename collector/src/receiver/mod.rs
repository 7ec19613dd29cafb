//! The receivers: OTLP over gRPC ([`grpc`]), OTLP over HTTP ([`otlp_http`])
//! and Zipkin v2 ([`zipkin`]). Each decodes, then hands the request to
//! [`crate::ingest::Ingest`], and maps refusals through
//! [`crate::error::IngestError`].

pub mod grpc;
pub mod otlp_http;
pub mod zipkin;

use axum::body::{Body, Bytes};
use http::HeaderMap;

use crate::error::IngestError;
use crate::ingest::decode;
use crate::serve::BodyTimeout;

/// Reads a request body (at most `limit` bytes on the wire and after
/// decompression) and undoes its `Content-Encoding`.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, IngestError> {
    if let Some(length) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && length > limit
    {
        return Err(IngestError::TooLarge { limit });
    }
    let raw = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            IngestError::TooLarge { limit }
        } else if let Some(timeout) = BodyTimeout::find(&e) {
            IngestError::Timeout(timeout.0)
        } else {
            IngestError::Malformed(format!("request body could not be read: {e}"))
        }
    })?;
    let encoding = headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    decode::decompress(encoding, raw, limit)
}
