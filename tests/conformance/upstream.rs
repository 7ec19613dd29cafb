//! The upstreams a case names: real HTTP/1.1 + HTTP/2 servers on port 0
//! that record every request they receive *completely* (head and whole
//! body), in arrival order, and answer `200 ok` (or a case's status, after
//! a case's delay). A `raw` upstream reads HTTP/1.1 requests itself and
//! answers each with the step's bytes verbatim, then closes.

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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
    /// Answer with [`Upstream::respond_with`]'s bytes (see the module doc).
    pub raw: bool,
}

/// What a `raw` upstream answers when a step sets nothing.
const DEFAULT_RAW_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// A running recording upstream.
#[derive(Clone)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    /// What a raw upstream answers (the step's `respond`).
    answer: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Upstream {
    /// Starts `name` on 127.0.0.1:0.
    pub async fn start(name: &str, behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Upstream {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            answer: Arc::default(),
        };
        let (received, raw_answer) = (upstream.received.clone(), upstream.answer.clone());
        let name = name.to_owned();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let received = received.clone();
                let name = name.clone();
                if behaviour.raw {
                    let answer = raw_answer.lock().unwrap().clone();
                    let answer = answer.unwrap_or_else(|| DEFAULT_RAW_ANSWER.to_vec());
                    tokio::spawn(answer_raw(stream, name, received, answer));
                    continue;
                }
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

    /// What a raw upstream answers from now on (`None`: the default `200`).
    pub fn respond_with(&self, bytes: Option<Vec<u8>>) {
        *self.answer.lock().unwrap() = bytes;
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

/// A raw upstream's connection: reads one request (head, then a
/// `content-length` body), records it, writes `answer` and closes.
async fn answer_raw(
    mut stream: TcpStream,
    name: String,
    received: Arc<Mutex<Vec<Received>>>,
    answer: Vec<u8>,
) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) if buf.len() + n <= 65536 => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => return,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_owned();
    let path = request_line.next().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf.len() - (head_end + 4);
    while body < length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body += n,
        }
    }
    received.lock().unwrap().push(Received {
        upstream: name,
        method,
        path,
        headers,
    });
    let _ = stream.write_all(&answer).await;
    let _ = stream.shutdown().await;
}
