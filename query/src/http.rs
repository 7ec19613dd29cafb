//! What every handler shares: the state, running engine work off the async
//! threads (tantivy searches block), JSON responses, and the per-endpoint
//! request metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use http::{StatusCode, header};
use serde::Serialize;

use crate::engine::Engine;
use crate::error::QueryError;
use crate::metrics::QueryMetrics;

/// The handlers' shared state.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

/// What [`AppState`] holds.
pub struct Inner {
    /// The engine.
    pub engine: Engine,
    /// Request metrics.
    pub metrics: QueryMetrics,
}

impl AppState {
    /// Runs `work` on the blocking pool and records the request under
    /// `endpoint`; `render` turns the outcome into the API's response shape.
    pub async fn answer<T: Send + 'static>(
        &self,
        endpoint: &'static str,
        work: impl FnOnce(&Engine) -> Result<T, QueryError> + Send + 'static,
        render: impl FnOnce(Result<T, QueryError>) -> Response,
    ) -> Response {
        let started = Instant::now();
        let state = self.clone();
        let result = tokio::task::spawn_blocking(move || work(&state.0.engine))
            .await
            .unwrap_or_else(|error| Err(QueryError::Internal(format!("query task: {error}"))));
        if let Err(error @ (QueryError::Store(_) | QueryError::Internal(_))) = &result {
            tracing::warn!(%error, endpoint, "query failed");
        }
        let response = render(result);
        self.0
            .metrics
            .observe(endpoint, response.status().as_u16(), started.elapsed());
        response
    }
}

/// A JSON response.
pub fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|error| {
        format!(r#"{{"error":"response not serializable: {error}"}}"#).into_bytes()
    });
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(bytes))
        .unwrap_or_default()
}
