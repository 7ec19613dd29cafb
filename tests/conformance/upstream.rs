//! The upstreams a case names: real HTTP/1.1 + HTTP/2 servers on port 0
//! that record every request they receive *completely* (head and whole
//! body), in arrival order, and answer `200 ok` (or a case's status, after
//! a case's delay). A `raw` upstream reads HTTP/1.1 requests itself and
//! answers each with the current step's bytes verbatim. It keeps the
//! connection for the next request only when those bytes are one complete
//! response framed by `content-length`, as a server that answered so would;
//! otherwise it closes after answering. (Closing after a response that
//! did not say `connection: close` races the proxy's reuse of the
//! connection: a retry sent on it before the close arrives is lost. Cases
//! whose steps retry answer with a `content-length`; a chunked or
//! bodiless answer still closes, and would race the same way.)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// On HTTP/2 connections, the `SETTINGS_MAX_CONCURRENT_STREAMS` it
    /// sends (`None`: hyper's default, 200).
    pub max_concurrent_streams: Option<u32>,
    /// Speak HTTP/2 only (prior knowledge) and reset every stream with
    /// `RST_STREAM` carrying this error code (RFC 9113 §7) instead of
    /// answering, once its head has arrived (and is recorded).
    pub reset: Option<u32>,
}

/// What a `raw` upstream answers when a step sets nothing.
const DEFAULT_RAW_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// A running recording upstream.
#[derive(Clone)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    /// Connections accepted since [`Upstream::take_accepted`] last read them.
    accepted: Arc<AtomicUsize>,
    /// What a raw upstream answers (the step's `respond` and `hold`).
    answer: Arc<Mutex<RawAnswer>>,
}

/// A raw upstream's answer to the current step's requests.
#[derive(Clone, Default)]
struct RawAnswer {
    /// The bytes (`None`: [`DEFAULT_RAW_ANSWER`]).
    bytes: Option<Vec<u8>>,
    /// Keep the connection open and silent after them, until the proxy
    /// closes it: an upstream that stalls mid-response.
    hold: bool,
    /// Reset the connection (TCP RST) after them: an upstream that
    /// crashed mid-exchange.
    reset: bool,
}

impl Upstream {
    /// Starts `name` on 127.0.0.1:0.
    pub async fn start(name: &str, behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Upstream {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            accepted: Arc::default(),
            answer: Arc::default(),
        };
        let accepted = upstream.accepted.clone();
        let (received, raw_answer) = (upstream.received.clone(), upstream.answer.clone());
        let name = name.to_owned();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let received = received.clone();
                let name = name.clone();
                if behaviour.raw {
                    tokio::spawn(answer_raw(stream, name, received, raw_answer.clone()));
                    continue;
                }
                if let Some(code) = behaviour.reset {
                    tokio::spawn(reset_streams(stream, name, received, code));
                    continue;
                }
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (received, name) = (received.clone(), name.clone());
                        async move {
                            Ok::<_, Infallible>(answer(req, &name, &received, behaviour).await)
                        }
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    if let Some(streams) = behaviour.max_concurrent_streams {
                        builder.http2().max_concurrent_streams(streams);
                    }
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        upstream
    }

    /// What a raw upstream answers from now on (`None`: the default
    /// `200`); with `hold`, it then keeps the connection open and silent
    /// until the proxy closes it; with `reset`, it resets the connection.
    pub fn respond_with(&self, bytes: Option<Vec<u8>>, hold: bool, reset: bool) {
        *self.answer.lock().unwrap() = RawAnswer { bytes, hold, reset };
    }

    /// Connections accepted since the last call.
    pub fn take_accepted(&self) -> usize {
        self.accepted.swap(0, Ordering::SeqCst)
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
        received.lock().unwrap().push(recorded(name, &parts));
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

/// The record of a request whose head (and whole body, where it had one)
/// arrived.
fn recorded(name: &str, parts: &http::request::Parts) -> Received {
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
    Received {
        upstream: name.to_owned(),
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), ToString::to_string),
        headers,
    }
}

/// An HTTP/2 connection (prior knowledge) whose every stream is recorded
/// and reset with `code`, at once: what a server that refuses
/// (`REFUSED_STREAM`, 7) or fails (`INTERNAL_ERROR`, 2) a request sends.
async fn reset_streams(
    stream: TcpStream,
    name: String,
    received: Arc<Mutex<Vec<Received>>>,
    code: u32,
) {
    let Ok(mut connection) = h2::server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        let (parts, _) = request.into_parts();
        received.lock().unwrap().push(recorded(&name, &parts));
        respond.send_reset(h2::Reason::from(code));
    }
}

/// A raw upstream's connection: reads requests (head, then a
/// `content-length` body), records each, and writes the step's answer
/// (read when the request has arrived); closes ([`linger`]) after an
/// answer that [`keeps_alive`] does not allow more after, or after a
/// request whose body it cannot frame.
async fn answer_raw(
    mut stream: TcpStream,
    name: String,
    received: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<RawAnswer>>,
) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = find_head_end(&buf) {
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
        let request_line = lines.next().unwrap_or("");
        let mut target = request_line.split(' ');
        let method = target.next().unwrap_or("").to_owned();
        let path = target.next().unwrap_or("").to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        // Only an HTTP/1.1 request whose body was framed by content-length
        // leaves the next request where this reader can find it (not an
        // HTTP/2 preface, not chunks); a client that said close is done,
        // and an answer to HEAD would leave its body on the connection.
        let framed = request_line.ends_with(" HTTP/1.1")
            && method != "HEAD"
            && !headers.iter().any(|(n, v)| {
                n == "transfer-encoding" || n == "connection" && v.eq_ignore_ascii_case("close")
            });
        buf.drain(..head_end + 4);
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        received.lock().unwrap().push(Received {
            upstream: name.clone(),
            method,
            path,
            headers,
        });
        let RawAnswer { bytes, hold, reset } = answer.lock().unwrap().clone();
        let bytes = bytes.unwrap_or_else(|| DEFAULT_RAW_ANSWER.to_vec());
        if stream.write_all(&bytes).await.is_err() {
            return;
        }
        if reset {
            // (closed with linger 0, the socket sends an RST, not a FIN)
            let _ = stream.set_zero_linger();
            return;
        }
        if hold {
            let mut rest = [0u8; 4096];
            while stream.read(&mut rest).await.is_ok_and(|n| n > 0) {}
            return;
        }
        if !(framed && keeps_alive(&bytes)) {
            linger(stream).await;
            return;
        }
    }
}

/// How long a raw upstream closing a connection reads on for the client's
/// own close (nginx's `lingering_timeout`).
const LINGER: Duration = Duration::from_secs(5);

/// Closes a connection as an HTTP/1.1 server does after its last answer
/// (RFC 9112 §9.6; nginx's lingering close): its sending side first, then
/// reading and dropping what the client still sends until the client
/// closes too (at most [`LINGER`]). Closed with bytes unread, the socket
/// would send an RST, which can reach the client before it has read the
/// answer and destroy it there: what the client saw would be a race.
async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut rest = [0u8; 4096];
        while stream.read(&mut rest).await.is_ok_and(|n| n > 0) {}
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Where a message's head ends: the offset of its blank line's `\r\n\r\n`.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Whether `answer` is one complete HTTP/1.1 response after which a server
/// could read another request on the connection: a final status with a
/// body (not 1xx, 204 or 304), one all-digit `content-length` equal to the
/// bytes after the head, no `transfer-encoding`, no `connection: close`.
fn keeps_alive(answer: &[u8]) -> bool {
    let Some(head_end) = find_head_end(answer) else {
        return false;
    };
    let Ok(head) = std::str::from_utf8(&answer[..head_end]) else {
        return false;
    };
    let body = answer.len() - (head_end + 4);
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|line| line.strip_prefix("HTTP/1.1 "));
    let Some(code) = status
        .and_then(|s| s.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
    else {
        return false;
    };
    if !(200..=599).contains(&code) || code == 204 || code == 304 {
        return false;
    }
    let mut lengths = 0;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return false;
        };
        let (name, value) = (name.to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" if value.bytes().all(|b| b.is_ascii_digit()) => {
                if value.parse() != Ok(body) {
                    return false;
                }
                lengths += 1;
            }
            "content-length" | "transfer-encoding" => return false,
            "connection" if value.eq_ignore_ascii_case("close") => return false,
            _ => {}
        }
    }
    lengths == 1
}
