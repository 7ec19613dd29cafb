//! tracemesh's query service (DESIGN §4): the engine that answers trace by
//! id, trace search, latency quantiles, rates, error breakdowns and the
//! dependency graph over the collector's store ([`engine`]); Jaeger's query
//! API and api_v3 for Grafana and Jaeger UI; tracemesh's native API under
//! `/api/v1/`; and the embedded web UI at `/`.
//!
//! [`router`] builds it all; the `tracemesh collector` command mounts it on
//! its `--http` listener (default :16686, Jaeger's port).

mod apiv3;
pub mod engine;
pub mod error;
mod http;
mod jaeger;
mod metrics;
mod native;
pub mod params;
pub mod tags;
pub mod timefmt;
mod ui;

use std::sync::Arc;

use axum::Router;
use tracemesh_collector::store::SpanReader;

pub use engine::Engine;
pub use error::QueryError;

/// The query API and UI over `reader`, with request metrics registered
/// into `registry`. Routes: `/api/...` (Jaeger), `/api/v3/...` (Jaeger
/// api_v3), `/api/v1/...` (native), and the UI at `/`.
pub fn router(
    reader: SpanReader,
    registry: &prometheus::Registry,
) -> Result<Router, prometheus::Error> {
    let state = http::AppState(Arc::new(http::Inner {
        engine: Engine::new(reader),
        metrics: metrics::QueryMetrics::new(registry)?,
    }));
    Ok(Router::new()
        .merge(jaeger::routes())
        .merge(apiv3::routes())
        .merge(native::routes())
        .merge(ui::routes())
        .with_state(state))
}
