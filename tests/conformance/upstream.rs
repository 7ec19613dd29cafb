//! The upstreams a case names: real HTTP/1.1 + HTTP/2 servers on port 0
//! that record every request they receive *completely* (head and whole
//! body), in arrival order, and answer `200 ok` (or a case's status, after
//! a case's delay).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// One request as an upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The upstream's name in the case.
    pub upstream: String,
    /// Method.
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// Header lines in order, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Received {
    /// The first value of `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How an upstream answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Status to answer with (0: 200).
    pub status: u16,
    /// Wait this long before answering.
    pub delay: Duration,
}

/// A running recording upstream.
#[derive(Clone)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Upstream {
    /// Starts `name` on 127.0.0.1:0.
    pub async fn start(name: &str, behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Upstream {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
        };
        let received = upstream.received.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let received = received.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (received, name) = (received.clone(), name.clone());
                        async move {
                            Ok::<_, Infallible>(answer(req, &name, &received, behaviour).await)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        upstream
    }

    /// Takes what was received so far.
    pub fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.received.lock().unwrap())
    }
}

async fn answer(
    req: Request<Incoming>,
    name: &str,
    received: &Mutex<Vec<Received>>,
    behaviour: Behaviour,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // Only a request whose body arrived whole counts as received.
    let complete = body.collect().await.is_ok();
    if complete {
        let mut headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(n, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (n.as_str().to_owned(), value)
            })
            .collect();
        // HTTP/2 carries the host as `:authority`; record it as `host`.
        if let Some(authority) = parts.uri.authority()
            && !parts.headers.contains_key(http::header::HOST)
        {
            headers.push(("host".to_owned(), authority.to_string()));
        }
        received.lock().unwrap().push(Received {
            upstream: name.to_owned(),
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), ToString::to_string),
            headers,
        });
    }
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    let status = if behaviour.status == 0 {
        200
    } else {
        behaviour.status
    };
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(b"ok")))
        .unwrap()
}
