//! Upstream connections, pooled per worker and per endpoint: HTTP/1.1
//! connections are reused one request at a time, an HTTP/2 connection is
//! shared by all requests. Owned by one thread, so no lock.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntCounter;
use tokio::net::TcpStream;

use super::LocalExec;
use super::body::RequestBody;
use crate::model::cluster::UpstreamAddr;

/// Most idle HTTP/1.1 connections kept per endpoint and worker.
const MAX_IDLE: usize = 256;
/// Idle connections older than this are closed by the sweep.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect (or name resolution) failed.
    #[error("connect to {addr}: {source}")]
    Io {
        /// The endpoint.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TCP connect took longer than the cluster's connect timeout.
    #[error("connect to {addr}: timed out after {timeout:?}")]
    Timeout {
        /// The endpoint.
        addr: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The HTTP handshake failed.
    #[error("handshake with {addr}: {source}")]
    Handshake {
        /// The endpoint.
        addr: String,
        /// The cause.
        source: hyper::Error,
    },
}

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

/// A worker's upstream connections.
pub struct Pools {
    idle: RefCell<HashMap<UpstreamAddr, Vec<Idle>>>,
    shared_h2: RefCell<HashMap<UpstreamAddr, http2::SendRequest<RequestBody>>>,
    opened: IntCounter,
}

/// An HTTP/1.1 connection lent to one request; [`release`](Self::release)
/// returns it once the response has been read in full.
pub struct Reusable {
    sender: http1::SendRequest<RequestBody>,
    addr: UpstreamAddr,
    pools: Weak<Pools>,
}

impl Reusable {
    /// Puts the connection back in its pool.
    pub fn release(self) {
        if let Some(pools) = self.pools.upgrade() {
            pools.put_idle(self.addr, self.sender);
        }
    }
}

impl Pools {
    /// Empty pools counting opened connections into `opened`.
    pub fn new(opened: IntCounter) -> Self {
        Self {
            idle: RefCell::default(),
            shared_h2: RefCell::default(),
            opened,
        }
    }

    /// An idle HTTP/1.1 connection to `addr` that is still open.
    pub fn take_idle(&self, addr: &UpstreamAddr) -> Option<http1::SendRequest<RequestBody>> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(addr)?;
        while let Some(conn) = list.pop() {
            if !conn.sender.is_closed() && conn.sender.is_ready() {
                return Some(conn.sender);
            }
        }
        None
    }

    fn put_idle(&self, addr: UpstreamAddr, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Wraps a connection for release after its response.
    pub fn lend(
        self: &Rc<Self>,
        addr: &UpstreamAddr,
        sender: http1::SendRequest<RequestBody>,
    ) -> Reusable {
        Reusable {
            sender,
            addr: addr.clone(),
            pools: Rc::downgrade(self),
        }
    }

    /// Opens a new HTTP/1.1 connection.
    pub async fn connect_h1(
        &self,
        addr: &UpstreamAddr,
        timeout: Duration,
    ) -> Result<http1::SendRequest<RequestBody>, ConnectError> {
        let io = TokioIo::new(self.tcp(addr, timeout).await?);
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake {
                addr: addr.to_string(),
                source,
            })?;
        tokio::task::spawn_local(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "upstream connection closed with an error");
            }
        });
        Ok(sender)
    }

    /// The shared HTTP/2 connection to `addr`, opened if needed.
    pub async fn h2(
        &self,
        addr: &UpstreamAddr,
        timeout: Duration,
    ) -> Result<http2::SendRequest<RequestBody>, ConnectError> {
        if let Some(sender) = self.shared_h2.borrow().get(addr)
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let io = TokioIo::new(self.tcp(addr, timeout).await?);
        let (sender, conn) = http2::Builder::new(LocalExec)
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake {
                addr: addr.to_string(),
                source,
            })?;
        tokio::task::spawn_local(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "upstream HTTP/2 connection closed with an error");
            }
        });
        self.shared_h2
            .borrow_mut()
            .insert(addr.clone(), sender.clone());
        Ok(sender)
    }

    /// Forgets a shared HTTP/2 connection that refused a request.
    pub fn forget_h2(&self, addr: &UpstreamAddr) {
        self.shared_h2.borrow_mut().remove(addr);
    }

    async fn tcp(&self, addr: &UpstreamAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
        let stream = connect_tcp(addr, timeout)
            .await
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::TimedOut => ConnectError::Timeout {
                    addr: addr.to_string(),
                    timeout,
                },
                _ => ConnectError::Io {
                    addr: addr.to_string(),
                    source,
                },
            })?;
        self.opened.inc();
        Ok(stream)
    }

    /// Drops idle connections that closed or idled past [`IDLE_TIMEOUT`].
    pub fn sweep(&self) {
        let now = Instant::now();
        self.idle.borrow_mut().retain(|_, list| {
            list.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
            !list.is_empty()
        });
        self.shared_h2
            .borrow_mut()
            .retain(|_, sender| !sender.is_closed());
    }
}

/// Opens a plain TCP connection to an endpoint (for TCP proxying).
pub async fn connect_tcp(addr: &UpstreamAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let connect = async {
        match addr {
            UpstreamAddr::Socket(socket) => TcpStream::connect(socket).await,
            UpstreamAddr::Dns { host, port } => TcpStream::connect((host.as_ref(), *port)).await,
        }
    };
    let stream = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
