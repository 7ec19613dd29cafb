//! The web UI, embedded in the binary: one HTML page, one script, one
//! stylesheet, no build step and nothing fetched from elsewhere. Every UI
//! path (`/search`, `/trace/{id}`, `/services`, `/dependencies`,
//! `/compare`, `/explain`) answers
//! the same page, so deep links work on reload; the script routes.

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use http::header;

use crate::http::AppState;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from(body))
        .unwrap_or_default()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// The UI's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/search", get(index))
        .route("/trace/{trace_id}", get(index))
        .route("/services", get(index))
        .route("/dependencies", get(index))
        .route("/compare", get(index))
        .route("/explain", get(index))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
