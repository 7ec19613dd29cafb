//! The floor under the agent's cost: an HTTP/1.1 reverse proxy with nothing
//! but the libraries the agent is built on, in the agent's runtime shape
//! (`bench/agent/run.sh`, cost mode, path `hyper_floor`).
//!
//! One current-thread tokio runtime on one thread, hyper's HTTP/1.1 server
//! per downstream connection and hyper's HTTP/1.1 client over pooled
//! keep-alive upstream connections, `TCP_NODELAY` both ways, mimalloc — as a
//! `concurrency: 1` agent serves a request. No routing, no header rewriting,
//! no telemetry, no policy: what the agent spends above this proxy at the
//! same rate is the cost of what it does, not of hyper or tokio.
//!
//! ```text
//! hyper_floor LISTEN UPSTREAM     e.g. hyper_floor 127.0.0.1:18301 127.0.0.1:18080
//! ```
//!
//! Prints `hyper floor ready` once it listens. Upstream failures answer 502.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;

use http_body_util::{BodyExt, Empty, combinators::UnsyncBoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The agent's allocator: mimalloc behind the binary's own GlobalAlloc.
#[path = "../src/alloc.rs"]
mod alloc;

#[global_allocator]
static GLOBAL: alloc::MiMalloc = alloc::MiMalloc;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Idle keep-alive connections to the upstream, reused last-in first-out.
struct Pool {
    upstream: SocketAddr,
    idle: RefCell<Vec<SendRequest<Incoming>>>,
}

impl Pool {
    async fn connection(&self) -> Option<SendRequest<Incoming>> {
        loop {
            let Some(mut sender) = self.idle.borrow_mut().pop() else {
                break;
            };
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
        let stream = TcpStream::connect(self.upstream).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::task::spawn_local(connection);
        Some(sender)
    }

    /// Forwards `request` as it came; the connection goes back to the pool
    /// once it can take the next request.
    async fn forward(
        self: Rc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let Some(mut sender) = self.connection().await else {
            return Ok(bad_gateway());
        };
        let response = sender.send_request(request).await;
        self.idle.borrow_mut().push(sender);
        Ok(match response {
            Ok(response) => response.map(BodyExt::boxed_unsync),
            Err(_) => bad_gateway(),
        })
    }
}

fn bad_gateway() -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: hyper_floor LISTEN UPSTREAM".into());
    };
    let (listen, upstream): (SocketAddr, SocketAddr) = (listen.parse()?, upstream.parse()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(listen).await?;
        println!("hyper floor ready");
        let pool = Rc::new(Pool {
            upstream,
            idle: RefCell::new(Vec::new()),
        });
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                let service =
                    hyper::service::service_fn(move |request| pool.clone().forward(request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
