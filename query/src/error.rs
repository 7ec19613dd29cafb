//! The query service's errors and the one place they become HTTP statuses.
//! Each API family renders them in its own shape (Jaeger's envelope,
//! api_v3's gateway error, the native `{"error": ...}`); the status is the
//! same everywhere.

use http::StatusCode;
use tracemesh_collector::store::StoreError;

/// Why a query was not answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A parameter could not be read (400, naming it).
    #[error("unable to parse param '{param}': {reason}")]
    BadParam {
        /// The parameter's name.
        param: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request as a whole is wrong (400), e.g. a required parameter is missing.
    #[error("{0}")]
    BadRequest(String),
    /// No span of the trace is stored (404; Jaeger's message).
    #[error("trace not found")]
    TraceNotFound,
    /// The store failed (500).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug or a lost task (500).
    #[error("{0}")]
    Internal(String),
}

impl QueryError {
    /// A [`QueryError::BadParam`].
    pub fn param(param: &str, reason: impl std::fmt::Display) -> Self {
        Self::BadParam {
            param: param.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadParam { .. } | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TraceNotFound => StatusCode::NOT_FOUND,
            Self::Store(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What a client is told: internals (paths, tantivy errors) stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            Self::Store(_) | Self::Internal(_) => "internal error, see the collector's log".into(),
            other => other.to_string(),
        }
    }
}
