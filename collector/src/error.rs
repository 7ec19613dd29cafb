//! Why a request was refused, and the one place that maps it to an HTTP
//! status and a gRPC status (OTLP's rules: retryable failures are 429/503 with
//! `Retry-After`, or RESOURCE_EXHAUSTED/UNAVAILABLE with `RetryInfo`).

use std::time::Duration;

use http::StatusCode;
use tonic_types::{ErrorDetails, StatusExt};

use crate::metrics::Refusal;

/// How long a refused sender is asked to wait before retrying.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A request the collector did not accept (nothing of it was written).
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The body is not valid protobuf/JSON/gzip for the endpoint.
    #[error("{0}")]
    Malformed(String),
    /// The body (after decompression) is larger than the limit.
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The content type or encoding is not one the endpoint speaks.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The ingest queue is full: retry later.
    #[error("ingest queue full, retry later")]
    QueueFull,
    /// The WAL could not take the batch, or the collector is stopping.
    #[error("collector unavailable: {0}")]
    Unavailable(String),
    /// The request body did not arrive within the body-read timeout.
    #[error("request body not received within {0:?}")]
    Timeout(Duration),
    /// A span of a request taken whole or not at all (Zipkin's) cannot be
    /// kept: nothing of the request was written.
    #[error("{message}")]
    Invalid {
        /// Why the first bad span was refused.
        reason: Refusal,
        /// Which spans, by their place in the request, and their fields.
        message: String,
    },
}

impl IngestError {
    /// The HTTP status of the answer.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::Malformed(_) | Self::Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// Whether the sender should retry (and be told when).
    pub fn retry_after(&self) -> Option<Duration> {
        matches!(self, Self::QueueFull | Self::Unavailable(_)).then_some(RETRY_AFTER)
    }

    /// The gRPC code (as `google.rpc.Code`, also used in OTLP/HTTP error bodies).
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::Malformed(_) | Self::Invalid { .. } | Self::UnsupportedMediaType(_) => {
                tonic::Code::InvalidArgument
            }
            Self::TooLarge { .. } => tonic::Code::ResourceExhausted,
            Self::QueueFull => tonic::Code::ResourceExhausted,
            Self::Unavailable(_) => tonic::Code::Unavailable,
            Self::Timeout(_) => tonic::Code::DeadlineExceeded,
        }
    }

    /// The gRPC status, with `RetryInfo` when the sender should retry.
    pub fn grpc_status(&self) -> tonic::Status {
        match self.retry_after() {
            Some(delay) => tonic::Status::with_error_details(
                self.grpc_code(),
                self.to_string(),
                ErrorDetails::with_retry_info(Some(delay)),
            ),
            None => tonic::Status::new(self.grpc_code(), self.to_string()),
        }
    }
}

impl IngestError {
    /// The `reason` label of `tracemesh_collector_spans_refused_total`.
    pub fn reason(&self) -> Refusal {
        match self {
            Self::Malformed(_) => Refusal::Malformed,
            Self::TooLarge { .. } => Refusal::TooLarge,
            Self::UnsupportedMediaType(_) => Refusal::Unsupported,
            Self::QueueFull => Refusal::QueueFull,
            Self::Unavailable(_) => Refusal::Unavailable,
            Self::Timeout(_) => Refusal::Timeout,
            Self::Invalid { reason, .. } => *reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_otlp() {
        assert_eq!(
            IngestError::QueueFull.http_status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            IngestError::QueueFull.grpc_status().code(),
            tonic::Code::ResourceExhausted
        );
        let details = IngestError::QueueFull.grpc_status().get_error_details();
        assert_eq!(
            details.retry_info().and_then(|r| r.retry_delay),
            Some(RETRY_AFTER)
        );
        assert_eq!(
            IngestError::Malformed("x".into()).grpc_status().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            IngestError::TooLarge { limit: 1 }.http_status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert!(IngestError::Malformed("x".into()).retry_after().is_none());
    }
}
