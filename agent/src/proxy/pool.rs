//! Upstream connections, pooled per worker and per endpoint: HTTP/1.1
//! connections are reused one request at a time, an HTTP/2 connection is
//! shared by all requests. Owned by one thread, so no lock.
//!
//! A cluster with a `maxConnections` limit counts its connections across
//! workers; a request that finds none free waits as a pending request (up to
//! `http1MaxPendingRequests`, else UO). While requests wait, connections that
//! come free are closed rather than kept idle, so a waiter on any worker can
//! open one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntCounter;
use tokio::net::TcpStream;

use super::LocalExec;
use super::body::UpstreamBody;
use crate::by_address::ByAddress;
use crate::model::cluster::{Cluster, UpstreamAddr};
use crate::model::live::{ClusterState, Slot, UNLIMITED};

/// Most idle HTTP/1.1 connections kept per endpoint and worker.
const MAX_IDLE: usize = 256;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// TCP connect (or name resolution) failed or timed out.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The endpoint.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP handshake failed.
    #[error("handshake with {addr}: {source}")]
    Handshake {
        /// The endpoint.
        addr: String,
        /// The cause.
        source: hyper::Error,
    },
    /// The cluster's connection and pending limits are full.
    #[error("connection pool overflow")]
    Overflow,
}

/// Which pool a connection belongs to: its endpoint, and for clusters that
/// limit connections, the cluster that counts it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    addr: UpstreamAddr,
    counted_by: Option<ByAddress<ClusterState>>,
}

impl PoolKey {
    /// The pool of `addr` as used by `cluster`.
    pub fn new(addr: &UpstreamAddr, cluster: &Cluster) -> Self {
        Self {
            addr: addr.clone(),
            counted_by: (cluster.limits.max_connections != UNLIMITED)
                .then(|| ByAddress(cluster.state.clone())),
        }
    }
}

struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
    served: u64,
    idle_timeout: Duration,
}

/// A worker's upstream connections.
pub struct Pools {
    idle: RefCell<HashMap<PoolKey, Vec<Idle>>>,
    shared_h2: RefCell<HashMap<PoolKey, http2::SendRequest<UpstreamBody>>>,
    opened: IntCounter,
}

/// An HTTP/1.1 connection lent to one request; [`release`](Self::release)
/// returns it once the response has been read in full.
pub struct Lease {
    /// The connection.
    pub sender: http1::SendRequest<UpstreamBody>,
    /// Whether it came from the idle pool (it may have closed meanwhile).
    pub reused: bool,
    key: PoolKey,
    served: u64,
    max_served: u64,
    idle_timeout: Duration,
    pools: Weak<Pools>,
}

impl Lease {
    /// Puts the connection back in its pool, unless it served its quota of
    /// requests or requests are waiting for a connection slot.
    pub fn release(self) {
        let spent = self.max_served > 0 && self.served + 1 >= self.max_served;
        let wanted = self
            .key
            .counted_by
            .as_ref()
            .is_some_and(|c| c.0.has_waiters());
        if spent || wanted {
            return; // dropping the sender closes the connection and frees its slot
        }
        if let Some(pools) = self.pools.upgrade() {
            pools.put_idle(self.key, self.sender, self.served + 1, self.idle_timeout);
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

    fn take_idle(&self, key: &PoolKey) -> Option<Idle> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(key)?;
        while let Some(conn) = list.pop() {
            if !conn.sender.is_closed() && conn.sender.is_ready() {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(
        &self,
        key: PoolKey,
        sender: http1::SendRequest<UpstreamBody>,
        served: u64,
        idle_timeout: Duration,
    ) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE {
            list.push(Idle {
                sender,
                since: Instant::now(),
                served,
                idle_timeout,
            });
        }
    }

    /// An HTTP/1.1 connection for `key`: idle, new, or after waiting for a
    /// slot when the cluster limits connections.
    pub async fn h1(
        self: &Rc<Self>,
        key: &PoolKey,
        cluster: &Cluster,
    ) -> Result<Lease, AcquireError> {
        let lease = |sender, reused, served| Lease {
            sender,
            reused,
            key: key.clone(),
            served,
            max_served: cluster.limits.max_requests_per_connection,
            idle_timeout: cluster.limits.idle_timeout,
            pools: Rc::downgrade(self),
        };
        if let Some(idle) = self.take_idle(key) {
            return Ok(lease(idle.sender, true, idle.served));
        }
        let slot = self
            .connection_slot(key, cluster, || self.has_idle(key))
            .await?;
        if slot.is_none()
            && let Some(idle) = self.take_idle(key)
        {
            return Ok(lease(idle.sender, true, idle.served));
        }
        let sender = self
            .connect_h1(&key.addr, cluster.connect_timeout, slot)
            .await?;
        Ok(lease(sender, false, 0))
    }

    /// The shared HTTP/2 connection for `key`, opened if needed.
    pub async fn h2(
        &self,
        key: &PoolKey,
        cluster: &Cluster,
    ) -> Result<http2::SendRequest<UpstreamBody>, AcquireError> {
        let live = || {
            self.shared_h2
                .borrow()
                .get(key)
                .filter(|s| !s.is_closed())
                .cloned()
        };
        if let Some(sender) = live() {
            return Ok(sender);
        }
        let slot = self
            .connection_slot(key, cluster, || live().is_some())
            .await?;
        if let Some(sender) = live() {
            return Ok(sender); // another request of this worker opened one meanwhile
        }
        let io = TokioIo::new(self.tcp(&key.addr, cluster.connect_timeout).await?);
        let (sender, conn) = http2::Builder::new(LocalExec)
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .handshake(io)
            .await
            .map_err(|source| AcquireError::Handshake {
                addr: key.addr.to_string(),
                source,
            })?;
        tokio::task::spawn_local(async move {
            let _slot = slot; // the connection counts until it closes
            if let Err(error) = conn.await {
                tracing::debug!(%error, "upstream HTTP/2 connection closed with an error");
            }
        });
        self.shared_h2
            .borrow_mut()
            .insert(key.clone(), sender.clone());
        Ok(sender)
    }

    /// Forgets a shared HTTP/2 connection that refused a request.
    pub fn forget_h2(&self, key: &PoolKey) {
        self.shared_h2.borrow_mut().remove(key);
    }

    fn has_idle(&self, key: &PoolKey) -> bool {
        self.idle.borrow().get(key).is_some_and(|l| !l.is_empty())
    }

    /// A connection slot when the cluster counts connections (`None` when it
    /// does not): at once if below the limit, else after waiting as a
    /// pending request. `usable` says whether this worker got a connection
    /// it can use meanwhile (then no slot is needed).
    async fn connection_slot(
        &self,
        key: &PoolKey,
        cluster: &Cluster,
        usable: impl Fn() -> bool,
    ) -> Result<Option<Slot>, AcquireError> {
        let Some(state) = key.counted_by.as_ref().map(|c| &c.0) else {
            return Ok(None);
        };
        let limits = &cluster.limits;
        if let Some(slot) = state.take_connection(limits.max_connections) {
            return Ok(Some(slot));
        }
        let _pending = state
            .take_pending(limits.max_pending)
            .ok_or(AcquireError::Overflow)?;
        let give_up = Instant::now() + cluster.connect_timeout;
        loop {
            let released = state.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(slot) = state.take_connection(limits.max_connections) {
                return Ok(Some(slot));
            }
            if usable() {
                return Ok(None);
            }
            let wait = give_up
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            if wait.is_zero() {
                return Err(AcquireError::Overflow);
            }
            let _ = tokio::time::timeout(wait, released).await;
        }
    }

    async fn connect_h1(
        &self,
        addr: &UpstreamAddr,
        timeout: Duration,
        slot: Option<Slot>,
    ) -> Result<http1::SendRequest<UpstreamBody>, AcquireError> {
        let io = TokioIo::new(self.tcp(addr, timeout).await?);
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| AcquireError::Handshake {
                addr: addr.to_string(),
                source,
            })?;
        tokio::task::spawn_local(async move {
            let _slot = slot; // the connection counts until it closes
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "upstream connection closed with an error");
            }
        });
        Ok(sender)
    }

    async fn tcp(&self, addr: &UpstreamAddr, timeout: Duration) -> Result<TcpStream, AcquireError> {
        let stream = connect_tcp(addr, timeout)
            .await
            .map_err(|source| AcquireError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        self.opened.inc();
        Ok(stream)
    }

    /// Closes idle connections that closed, idled past their timeout, or
    /// hold a slot that requests of another worker are waiting for.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.idle.borrow_mut().retain(|key, list| {
            let wanted = key.counted_by.as_ref().is_some_and(|c| c.0.has_waiters());
            list.retain(|c| {
                !wanted && !c.sender.is_closed() && now.duration_since(c.since) < c.idle_timeout
            });
            !list.is_empty()
        });
        self.shared_h2
            .borrow_mut()
            .retain(|_, sender| !sender.is_closed());
    }
}

/// Opens a plain TCP connection to an endpoint (for TCP proxying too).
pub async fn connect_tcp(addr: &UpstreamAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let connect = async {
        match addr {
            UpstreamAddr::Socket(socket) => TcpStream::connect(socket).await,
            UpstreamAddr::Dns { host, port } => TcpStream::connect((host.as_ref(), *port)).await,
        }
    };
    let stream = tokio::time::timeout(timeout, connect).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("timed out after {timeout:?}"),
        )
    })??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
