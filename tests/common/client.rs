//! HTTP clients that send every request to one address (the agent) whatever
//! host the URL names, the way an app uses its sidecar.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as Legacy;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects to a fixed address, optionally from a given local IP
/// (127.0.0.2 and friends stand for other clients on one machine).
#[derive(Clone)]
pub struct Fixed(pub SocketAddr, pub Option<std::net::IpAddr>);

impl tower::Service<Uri> for Fixed {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (addr, from) = (self.0, self.1);
        Box::pin(async move {
            let stream = match from {
                None => TcpStream::connect(addr).await?,
                Some(ip) => {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind(SocketAddr::new(ip, 0))?;
                    socket.connect(addr).await?
                }
            };
            Ok(TokioIo::new(stream))
        })
    }
}

/// A pooled client through one address.
#[derive(Clone)]
pub struct Client {
    inner: Legacy<Fixed, Full<Bytes>>,
}

/// A response, body collected.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Protocol version.
    pub version: Version,
}

impl Reply {
    /// The body as JSON (the test upstream's report).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not json ({e}): {:?}", self.body))
    }

    /// Which upstream answered.
    pub fn upstream(&self) -> String {
        self.headers
            .get("x-upstream")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

impl Client {
    /// HTTP/1.1 through `addr`.
    pub fn h1(addr: SocketAddr) -> Self {
        Self {
            inner: Legacy::builder(TokioExecutor::new()).build(Fixed(addr, None)),
        }
    }

    /// HTTP/1.1 through `addr`, connecting from local address `from`.
    pub fn h1_from(from: std::net::IpAddr, addr: SocketAddr) -> Self {
        Self {
            inner: Legacy::builder(TokioExecutor::new()).build(Fixed(addr, Some(from))),
        }
    }

    /// HTTP/2 with prior knowledge (h2c) through `addr`.
    pub fn h2(addr: SocketAddr) -> Self {
        Self {
            inner: Legacy::builder(TokioExecutor::new())
                .http2_only(true)
                .build(Fixed(addr, None)),
        }
    }

    /// GETs `url`.
    pub async fn get(&self, url: &str) -> Reply {
        self.send(Request::get(url).body(Full::default()).unwrap())
            .await
    }

    /// GETs `url` with extra headers.
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = Request::get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Full::default()).unwrap()).await
    }

    /// GETs `url`; `Err` when no response came (connection refused, reset).
    pub async fn try_get(&self, url: &str) -> Result<Reply, String> {
        let req = Request::get(url).body(Full::default()).unwrap();
        let resp = self
            .inner
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
            version: parts.version,
        })
    }

    /// Where a source-address hash sends each of 16 clients a proxy in
    /// front names in `x-forwarded-for` (`203.0.113.1`..`.16`): GETs `url`
    /// three times for each, asserts 200 and that every client stays on
    /// one upstream (`x-upstream`), and returns the set of upstreams used.
    pub async fn homes_by_forwarded_for(&self, url: &str) -> std::collections::BTreeSet<String> {
        let mut homes = std::collections::HashMap::new();
        for round in 0..3 {
            for user in 1..=16 {
                let xff = format!("203.0.113.{user}");
                let reply = self.get_with(url, &[("x-forwarded-for", &xff)]).await;
                assert_eq!(reply.status, 200);
                let home = homes.entry(xff.clone()).or_insert_with(|| reply.upstream());
                assert_eq!(*home, reply.upstream(), "{xff} moved in round {round}");
            }
        }
        homes.into_values().collect()
    }

    /// Sends a request and collects the response.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        let resp = self.inner.request(req).await.expect("request");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
            version: parts.version,
        }
    }
}

/// A WebSocket to `url` (`ws://backend:9080/ws`: the test upstream echoes
/// its messages) through the listener at `addr`; asserts the 101.
pub async fn websocket(
    addr: SocketAddr,
    url: &str,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (ws, response) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("websocket handshake through the agent");
    assert_eq!(response.status(), 101);
    ws
}

/// Sends `text` on `ws` and asserts it comes back.
pub async fn echoed(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>, text: &str) {
    use futures_util::{SinkExt, StreamExt};
    let message = tokio_tungstenite::tungstenite::Message::text(text);
    ws.send(message).await.unwrap();
    let echoed = ws.next().await.expect("open").expect("echoed");
    assert_eq!(echoed.into_text().unwrap().as_str(), text);
}

/// A plain HTTP/1.1 GET on a fresh connection (for admin endpoints).
pub async fn raw_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let reply = Client::h1(addr).get(&format!("http://{addr}{path}")).await;
    (
        reply.status.as_u16(),
        String::from_utf8_lossy(&reply.body).into_owned(),
    )
}

/// Writes raw bytes on a new connection and reads until the peer closes.
pub async fn raw_exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut out),
    )
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One HTTP/1.1 connection to `addr`, kept open between requests as an
/// application's connection pool keeps it (hyper's pooling client may open
/// a second connection while the first goes back to its pool; this never
/// does).
pub struct OneConnection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl OneConnection {
    /// Connects to `addr`; panics when it cannot.
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self { sender }
    }

    /// GETs `path` of `host` on this connection and reads the body whole:
    /// (status, whether the response said `Connection: close`), or why
    /// there was no response.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<(u16, bool), String> {
        self.sender
            .ready()
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        let request = Request::get(path)
            .header(http::header::HOST, host)
            .body(Full::default())
            .unwrap();
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let close = response
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let status = response.status().as_u16();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        Ok((status, close))
    }
}
