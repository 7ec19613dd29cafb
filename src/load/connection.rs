//! One worker's client connection: hyper's low-level HTTP/1.1 or HTTP/2
//! client on one TCP stream, opened again whenever the server closes it, so
//! `-c` is the number of connections the server sees.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Why one request got no complete response.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The TCP connection or the HTTP/2 handshake failed.
    #[error("connect {addr}: {reason}")]
    Connect {
        /// Where it tried to connect.
        addr: SocketAddr,
        /// Why it failed.
        reason: String,
    },
    /// No complete response within `--timeout`.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The connection broke or the server spoke invalid HTTP.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// What came back for one request.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    /// The response status.
    pub status: StatusCode,
    /// Response body bytes read.
    pub body_bytes: u64,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn ready(&mut self) -> Result<(), hyper::Error> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => s.send_request(request).await,
            Sender::H2(s) => s.send_request(request).await,
        }
    }
}

/// A connection that reopens itself; must be used inside a Tokio runtime.
pub struct Connection {
    addr: SocketAddr,
    h2: bool,
    sender: Option<Sender>,
}

impl Connection {
    /// A connection to `addr`, opened on first use (or by [`Self::open`]).
    pub fn new(addr: SocketAddr, h2: bool) -> Self {
        Self {
            addr,
            h2,
            sender: None,
        }
    }

    /// Opens the connection now (so the run's clock does not include it).
    pub async fn open(&mut self) -> Result<(), RequestError> {
        self.sender().await.map(drop)
    }

    /// The open connection, opened again if the server closed it.
    async fn sender(&mut self) -> Result<&mut Sender, RequestError> {
        let sender = match self.sender.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => connect(self.addr, self.h2).await?,
        };
        Ok(self.sender.insert(sender))
    }

    /// Sends `request` and reads the whole response, within `timeout`.
    /// After a timeout or a broken connection the next request reconnects.
    pub async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Answer, RequestError> {
        let result = tokio::time::timeout(timeout, self.exchange(request)).await;
        let result = result.unwrap_or(Err(RequestError::Timeout(timeout)));
        if result.is_err() {
            // The connection's state is unknown (a response may still be on
            // its way): start over on a new one.
            self.sender = None;
        }
        result
    }

    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<Answer, RequestError> {
        let mut sender = self.sender().await?;
        if sender.ready().await.is_err() {
            // Closed while idle (a keep-alive timeout): nothing was sent yet,
            // so this is no failure of the request; reconnect once.
            self.sender = None;
            sender = self.sender().await?;
            sender.ready().await?;
        }
        let response = sender.send(request).await?;
        let status = response.status();
        let mut body = response.into_body();
        let mut body_bytes = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                body_bytes += data.len() as u64;
            }
        }
        Ok(Answer { status, body_bytes })
    }
}

async fn connect(addr: SocketAddr, h2: bool) -> Result<Sender, RequestError> {
    let fail = |reason: String| RequestError::Connect { addr, reason };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| fail(e.to_string()))?;
    // Requests are small and latency is what is measured: no Nagle delay.
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    if h2 {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(connection);
        Ok(Sender::H2(sender))
    } else {
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(connection);
        Ok(Sender::H1(sender))
    }
}
