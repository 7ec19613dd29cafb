//! Bookinfo's applications, small and real: HTTP/1.1 servers that call each
//! other through their sidecars, forward trace headers as an instrumented
//! application does, and slow down or fail when the scenario says so.

mod database;
mod pages;
mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::scenario::Behaviour;
use super::topology::{Role, Workload};
use upstream::Upstream;

/// One running application's state.
pub struct App {
    workload: Workload,
    behaviour: Behaviour,
    upstream: Upstream,
    database: Option<String>,
}

impl App {
    /// The application of `workload`, calling the mesh through `outbound`
    /// (its sidecar's HTTP listener; `None`: by plain service URLs) and,
    /// for ratings, the database at `database` (`host:port`: its sidecar's
    /// TCP listener, or the service's name and port).
    pub fn new(
        workload: Workload,
        behaviour: Behaviour,
        outbound: Option<SocketAddr>,
        database: Option<String>,
    ) -> Self {
        Self {
            workload,
            behaviour,
            upstream: Upstream::new(outbound),
            database,
        }
    }

    fn workload(&self) -> &Workload {
        &self.workload
    }

    fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }
}

/// Serves `app` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, app: Arc<App>) {
    if app.workload.role == Role::Database {
        return database::serve(listener).await;
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(handle(&app, request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(app: &App, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let behaviour = app.behaviour;
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    if behaviour.fail_percent > 0 && fastrand::u8(0..100) < behaviour.fail_percent {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "failing on purpose: --scenario",
        );
    }
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only");
    }
    let path = request.uri().path();
    let headers = request.headers();
    let id = |prefix: &str| path.strip_prefix(prefix).filter(|id| !id.is_empty());
    match app.workload.role {
        Role::ProductPage if path == "/productpage" || path == "/" => {
            let page = pages::product_page(app, headers).await;
            let mut response = Response::new(Full::new(Bytes::from(page)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        Role::Details => match id("/details/") {
            Some(id) => json(&pages::details(id)),
            None => not_found(),
        },
        Role::Reviews { .. } => match id("/reviews/") {
            Some(id) => json(&pages::reviews(app, id, headers).await),
            None => not_found(),
        },
        Role::Ratings => match id("/ratings/") {
            Some(id) => match pages::ratings(app, id).await {
                Ok(ratings) => json(&ratings),
                Err(error) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("ratings database: {error}"),
                ),
            },
            None => not_found(),
        },
        _ => not_found(),
    }
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *response.status_mut() = status;
    response
}

fn not_found() -> Response<Full<Bytes>> {
    text(StatusCode::NOT_FOUND, "not found")
}
