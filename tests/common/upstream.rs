//! Test upstreams: real HTTP/1.1 + HTTP/2 servers on port 0 that report what
//! they received and misbehave on cue, plus a server that resets connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Protocol version.
    pub version: Version,
    /// Headers.
    pub headers: HeaderMap,
    /// Body length.
    pub body_len: u64,
    /// FNV-1a of the body.
    pub body_hash: u64,
    /// The address the request's connection came from.
    pub peer: SocketAddr,
}

impl Upstream {
    /// The value of `name` on the last request seen (`None` without the
    /// header); panics when none was seen.
    pub fn last_header(&self, name: &str) -> Option<String> {
        let seen = self.seen.lock().unwrap();
        let last = seen.last().expect("no request seen");
        let value = last.headers.get(name)?;
        Some(value.to_str().unwrap().to_owned())
    }
}

/// A running upstream.
#[derive(Clone)]
pub struct Upstream {
    /// Its address.
    pub addr: SocketAddr,
    /// Its name (echoed in `x-upstream`).
    pub name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    cue: Arc<Cue>,
}

/// Misbehaviour on cue, and connection accounting.
#[derive(Default)]
struct Cue {
    /// Answer every request with this status (0: behave).
    status: AtomicU16,
    /// Wait this long before answering every request.
    delay_ms: AtomicU64,
    /// Fail every n-th request with 503 (0: never).
    fail_every: AtomicU64,
    open: AtomicUsize,
    max_open: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Most requests being answered at once on one connection.
    max_per_connection: AtomicUsize,
    accepted: AtomicUsize,
}

/// FNV-1a, to compare bodies without keeping them.
pub fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// FNV-1a's offset basis.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// The WebSocket message on which the app closes the connection.
pub const WEBSOCKET_HANG_UP: &str = "hang up";

/// The deterministic byte at `i` of a generated body.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) % 251) as u8
}

type Body = BoxBody<Bytes, Infallible>;

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

impl Upstream {
    /// Starts an upstream named `name` on 127.0.0.1:0.
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, listener)
    }

    /// Starts an upstream on a listening socket made elsewhere (inside a
    /// network-namespace pod: an unchanged application there); nonblocking.
    pub fn start_on(name: &str, listener: std::net::TcpListener) -> Upstream {
        Self::serve(name, TcpListener::from_std(listener).unwrap())
    }

    fn serve(name: &str, listener: TcpListener) -> Upstream {
        let upstream = Upstream {
            addr: listener.local_addr().unwrap(),
            name: name.to_owned(),
            seen: Arc::default(),
            cue: Arc::default(),
        };
        let server = upstream.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    break;
                };
                let server = server.clone();
                let cue = server.cue.clone();
                cue.accepted.fetch_add(1, Ordering::SeqCst);
                let open = cue.open.fetch_add(1, Ordering::SeqCst) + 1;
                cue.max_open.fetch_max(open, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _open = OpenGuard(cue);
                    let on_connection = Arc::new(AtomicUsize::new(0));
                    let service = service_fn(move |req| {
                        let server = server.clone();
                        let on_connection = on_connection.clone();
                        async move {
                            let now = on_connection.fetch_add(1, Ordering::SeqCst) + 1;
                            server
                                .cue
                                .max_per_connection
                                .fetch_max(now, Ordering::SeqCst);
                            let response = server.handle(req, peer).await;
                            on_connection.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        upstream
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Number of requests seen so far.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Answers every request with `status` from now on (0 to behave again).
    pub fn fail_with(&self, status: u16) {
        self.cue.status.store(status, Ordering::SeqCst);
    }

    /// Fails every `n`-th request (by arrival) with 503 (0: never).
    pub fn fail_every(&self, n: u64) {
        self.cue.fail_every.store(n, Ordering::SeqCst);
    }

    /// Waits `ms` before answering every request.
    pub fn delay_all(&self, ms: u64) {
        self.cue.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Most connections open at once so far.
    pub fn max_open_connections(&self) -> usize {
        self.cue.max_open.load(Ordering::SeqCst)
    }

    /// Most requests being answered at once so far. Unlike
    /// [`max_open_connections`](Self::max_open_connections) this cannot lag:
    /// a connection the proxy closed counts as open here until this server
    /// reads its end, which under load can come after the proxy's next
    /// connection is accepted.
    pub fn max_requests_in_flight(&self) -> usize {
        self.cue.max_in_flight.load(Ordering::SeqCst)
    }

    /// Most requests being answered at once on one connection so far
    /// (HTTP/2 streams of one connection).
    pub fn max_requests_per_connection(&self) -> usize {
        self.cue.max_per_connection.load(Ordering::SeqCst)
    }

    /// Connections open now (closed ones count until this server reads
    /// their end).
    pub fn open_connections(&self) -> usize {
        self.cue.open.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted_connections(&self) -> usize {
        self.cue.accepted.load(Ordering::SeqCst)
    }

    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/".to_owned(), |p| p.to_string());
        if path.starts_with("/ws") {
            return self.websocket(&mut req);
        }
        let (parts, mut body) = req.into_parts();
        let (mut body_len, mut body_hash) = (0u64, FNV_START);
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref() {
                body_len += data.len() as u64;
                body_hash = fnv(body_hash, data);
            }
        }
        let seen = Seen {
            method: parts.method.to_string(),
            path: path.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body_len,
            body_hash,
            peer,
        };
        let arrival = {
            let mut all = self.seen.lock().unwrap();
            all.push(seen);
            all.len() as u64
        };
        let in_flight = self.cue.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.cue
            .max_in_flight
            .fetch_max(in_flight, Ordering::SeqCst);
        let _in_flight = InFlightGuard(self.cue.clone());
        let delay = self.cue.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let every = self.cue.fail_every.load(Ordering::SeqCst);
        let cued = match self.cue.status.load(Ordering::SeqCst) {
            0 if every > 0 && arrival % every == 0 => 503,
            status => status,
        };
        if cued != 0 {
            let mut response = Response::builder()
                .status(cued)
                .body(full(format!("cued {cued}")))
                .unwrap();
            response
                .headers_mut()
                .insert("x-upstream", self.name.parse().unwrap());
            return response;
        }
        let segments: Vec<&str> = path.split(['/', '?']).collect();
        let mut response = match segments.get(1).copied() {
            Some("status") => {
                let code = segments.get(2).and_then(|c| c.parse().ok()).unwrap_or(500);
                Response::builder()
                    .status(code)
                    .body(full(format!("status {code}")))
                    .unwrap()
            }
            Some("slow") => {
                let ms = segments.get(2).and_then(|c| c.parse().ok()).unwrap_or(1000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Response::new(full("slow"))
            }
            Some("stream") => {
                let total: u64 = segments
                    .get(2)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1 << 20);
                stream_response(total)
            }
            _ => {
                let report = serde_json::json!({
                    "upstream": self.name,
                    "method": parts.method.as_str(),
                    "path": path,
                    "version": format!("{:?}", parts.version),
                    "body_len": body_len,
                    "body_hash": body_hash,
                });
                Response::new(full(report.to_string()))
            }
        };
        response
            .headers_mut()
            .insert("x-upstream", self.name.parse().unwrap());
        // The Gateway API conformance echo server's cue: response headers
        // to set, `Name:value` pairs separated by commas.
        if let Some(set) = parts
            .headers
            .get("x-echo-set-header")
            .and_then(|v| v.to_str().ok())
        {
            for (name, value) in set.split(',').filter_map(|p| p.split_once(':')) {
                if let (Ok(name), Ok(value)) = (
                    http::HeaderName::try_from(name.trim()),
                    http::HeaderValue::try_from(value.trim()),
                ) {
                    response.headers_mut().append(name, value);
                }
            }
        }
        response
    }

    /// Answers a WebSocket handshake and echoes every message but
    /// [`WEBSOCKET_HANG_UP`], on which it closes the connection.
    fn websocket(&self, req: &mut Request<Incoming>) -> Response<Body> {
        let key = req.headers().get("sec-websocket-key").cloned();
        let Some(key) = key else {
            return Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(full("no key"))
                .unwrap();
        };
        let on_upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(msg)) = rx.next().await {
                // The app may end the connection itself (dropping both
                // halves closes it, with no closing handshake).
                if msg.to_text().is_ok_and(|t| t == WEBSOCKET_HANG_UP) {
                    break;
                }
                if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", accept)
            .body(full(Bytes::new()))
            .unwrap()
    }
}

struct OpenGuard(Arc<Cue>);

struct InFlightGuard(Arc<Cue>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `total` bytes of [`pattern`] in 64 KiB chunks, produced as they are sent.
fn stream_response(total: u64) -> Response<Body> {
    let chunks = (0..total.div_ceil(65536)).map(move |c| {
        let start = c * 65536;
        let end = (start + 65536).min(total);
        let data: Vec<u8> = (start..end).map(pattern).collect();
        Ok::<_, Infallible>(Frame::data(Bytes::from(data)))
    });
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    Response::new(BodyExt::boxed(body))
}

/// A server that, on each connection, reads one request head, writes
/// `answer` as it is and closes: a peer that speaks HTTP as no library
/// would (HTTP/1.0, contradictory framing).
pub async fn canned_server(answer: &'static [u8]) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut stream).await.is_some() {
                    let _ = stream.write_all(answer).await;
                }
            });
        }
    });
    addr
}

/// Reads one request head, byte by byte up to its blank line (nothing of
/// what follows); `None` when the connection ends first.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

/// A server that reads a request and closes the connection without answering.
pub async fn resetting_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                break;
            };
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                drop(stream);
            });
        }
    });
    addr
}

/// An address nothing listens on: connections to it are refused. A socket
/// stays bound to it, never listening, for the rest of the test process, so
/// the port cannot be handed to another test's listener meanwhile (a port
/// bound and closed again could be, and that listener would answer).
pub async fn closed_port() -> SocketAddr {
    static HELD: Mutex<Vec<tokio::net::TcpSocket>> = Mutex::new(Vec::new());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = socket.local_addr().unwrap();
    HELD.lock().unwrap().push(socket);
    addr
}

/// An upstream that reads the first bytes of each request, then nothing,
/// holding the connection open; where it listens.
pub async fn deaf() -> SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let deaf = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 1024];
                let _ = stream.read(&mut head).await;
                std::future::pending::<()>().await;
                drop(stream);
            });
        }
    });
    deaf
}

/// A TCP echo server.
pub async fn tcp_echo() -> SocketAddr {
    tcp_echo_on(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
}

/// A TCP echo server on `listener` (any address family); its address.
pub fn tcp_echo_on(listener: std::net::TcpListener) -> SocketAddr {
    listener.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                break;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}
