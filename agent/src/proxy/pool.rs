//! Upstream connections, pooled per worker and per endpoint: HTTP/1.1
//! connections are reused one request at a time, HTTP/2 connections are
//! shared by the requests, up to `maxConcurrentStreams` streams each
//! ([`shared_h2`](super::shared_h2)). Owned by one thread, so no lock.
//!
//! A cluster with a `maxConnections` limit counts its connections across
//! workers; a request that finds none free waits for a slot, or for a
//! connection of its own worker's pool to come free. As in Envoy, a pool
//! (one worker's, for one endpoint) that has no connection opens one past
//! the limit ([`ClusterState::take_connection`]), so its requests never
//! wait for another pool's. A request is pending (up to
//! `http1MaxPendingRequests`, else UO) from when it finds no connection
//! ready until one is: while it waits for a slot and while its own
//! connection is dialed. A connection that comes free goes to a waiter of
//! its own worker, as Envoy's pool hands it to its pending request.
//!
//! Idle connections are swept without a periodic timer ([`Pools::keep_swept`]):
//! the sweeper sleeps until the earliest idle deadline, and is woken when a
//! connection is pooled with an earlier one and when a pooled connection
//! closes (or its upstream sends unasked: each idle socket is watched with
//! the sweeper's waker). A worker with nothing pooled has no timer for it
//! at all.

use foldhash::HashMap;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::Waker;
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounter, IntCounterVec};
use tokio::sync::{Notify, watch};

use super::LocalExec;
use super::body::UpstreamBody;
use super::flow_control::{CONNECTION_WINDOW, MAX_HEADER_LIST, STREAM_WINDOW};
use super::h1::{Connection, MAX_RESPONSE_HEAD, Reuse};
use super::peer_settings::{INITIAL_LIMIT, ServerStreamLimit, SettingsScan};
use super::shared_h2::{Connections, Counted, DialFailure, NoRoom, Opened, Taken};
use super::upgrade::UpgradeSlot;
use crate::by_address::ByAddress;
use crate::connect::{self, DialError, DialSettings};
use crate::model::cluster::{Cluster, Http2Keepalive, Pooling, Poolings, TlsServer};
use crate::model::endpoint::UpstreamAddr;
use crate::model::live::{ClusterState, MAX_CONNECTIONS, MAX_PENDING, PoolLimits, Slot, UNLIMITED};
use crate::tls::TlsPlan;
use crate::tls::io::{AsTcp, UpstreamIo};

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
    /// The TLS handshake failed, for this reason.
    #[error("tls handshake with {addr}: {reason}")]
    Tls {
        /// The endpoint.
        addr: String,
        /// Why (`unknown_ca`, `wrong_san`, …).
        reason: &'static str,
    },
    /// The HTTP handshake failed.
    #[error("handshake with {addr}: {source}")]
    Handshake {
        /// The endpoint.
        addr: String,
        /// The cause.
        source: hyper::Error,
    },
    /// The cluster's connection and pending limits are full; the
    /// DestinationRule field of the limit that turned the request away.
    #[error("connection pool overflow ({0})")]
    Overflow(&'static str),
}

/// What secures a pooled connection, so differently secured connections to
/// one endpoint never mix: the client config, and the SNI and SANs checked
/// at the handshake (mesh mTLS shares one config among clusters that send
/// different names or expect different identities; a connection verified
/// for one must not carry another's requests).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TlsKey {
    Plain,
    Tls {
        config: ByAddress<rustls::ClientConfig>,
        server: Arc<TlsServer>,
    },
}

/// Which pool a connection belongs to: its endpoint, its TLS, and what the
/// cluster keeps its connections apart by when it sets any of it
/// ([`Pooling`]: the cluster that counts them, their stream and lifetime
/// limits, keepalive, bind address). Small, as it is built, hashed and
/// lent with every request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    addr: UpstreamAddr,
    tls: TlsKey,
    pooling: Option<Arc<Pooling>>,
}

impl PoolKey {
    /// The pool of `addr` as used by `cluster` with `plan`.
    #[inline]
    pub fn new(addr: &UpstreamAddr, cluster: &Cluster, plan: &TlsPlan) -> Self {
        Self {
            addr: addr.clone(),
            tls: match plan {
                TlsPlan::Plain => TlsKey::Plain,
                TlsPlan::Tls { config, server, .. } => TlsKey::Tls {
                    config: ByAddress(config.clone()),
                    server: server.clone(),
                },
            },
            pooling: cluster.pooling().cloned(),
        }
    }

    /// The cluster state counting its connections and pending requests,
    /// when the cluster limits either.
    fn counted_by(&self) -> Option<&Arc<ClusterState>> {
        let counted_by = self.pooling.as_ref()?.counted_by.as_ref()?;
        Some(&counted_by.0)
    }

    /// Whether its pool (endpoint and pooling) is one of `retired`.
    fn retired(&self, retired: &Poolings) -> bool {
        retired.contains(&self.addr, self.pooling.as_deref())
    }

    /// Most streams one of its HTTP/2 connections carries at once.
    fn max_concurrent_streams(&self) -> u64 {
        self.pooling
            .as_ref()
            .map_or(UNLIMITED, |p| p.max_concurrent_streams)
    }
}

/// The upstream side of a pooled connection as its requests record it:
/// the server's SPIFFE identity (`spiffe://…`) on an mTLS connection, and
/// the connection's own local address (Envoy's
/// `%UPSTREAM_LOCAL_ADDRESS%`), both learnt once when it is dialed.
#[derive(Debug, Clone, Default)]
pub struct UpstreamPeer {
    /// The server's identity, on mTLS connections.
    pub identity: Option<Arc<str>>,
    /// The connection's local address, when the socket could say.
    pub local: Option<SocketAddr>,
}

struct Idle {
    connection: Connection,
    peer: UpstreamPeer,
    served: u64,
    /// When it closes unless taken: its idle timeout on, or the end of its
    /// lifetime when that comes first.
    deadline: Instant,
    /// The end of its lifetime (`maxConnectionDuration`), if it has one.
    expires: Option<Instant>,
}

/// A stream on a shared HTTP/2 connection of an endpoint, as a request
/// gets it.
pub struct SharedH2 {
    /// The connection, the server's identity and the stream's count.
    pub taken: Taken,
    /// How long the request waited for a connection slot, when it had to.
    pub waited: Option<Duration>,
}

/// A connection slot, and how long the request had to wait for it.
struct Slotted {
    /// The slot (none when the cluster does not count connections, or a
    /// usable connection came free meanwhile).
    slot: Option<Slot>,
    /// The request's pending-request slot, held until the connection it
    /// dials is ready: Envoy's pool counts a request that waits for a
    /// connection as pending, whether it waits for a slot or for its own
    /// connection's handshakes (none when it need not dial).
    pending: Option<Slot>,
    /// How long the request waited for a slot, when it did: from the
    /// refusal to the slot (or usable connection), the dial not counted.
    waited: Option<Duration>,
}

/// The time waited for connection slots over several waits, `None` when
/// none of them waited.
pub(super) fn add_waits(before: Option<Duration>, now: Option<Duration>) -> Option<Duration> {
    match (before, now) {
        (Some(before), Some(now)) => Some(before + now),
        (before, now) => before.or(now),
    }
}

/// A worker's upstream connections.
pub struct Pools {
    idle: RefCell<HashMap<PoolKey, Vec<Idle>>>,
    shared_h2: RefCell<HashMap<PoolKey, Connections>>,
    /// Wakes the sweeper before its deadline.
    sweep_now: Arc<Notify>,
    /// Wakes the sweeper when an idle connection closes or becomes
    /// readable (what idle sockets are watched with).
    idle_waker: Waker,
    /// When the sweeper wakes on its own: the earliest idle deadline, or
    /// `None` with nothing pooled (it sleeps until woken).
    sweep_at: Cell<Option<Instant>>,
    opened: IntCounter,
    tls_failures: IntCounterVec,
    /// The poolings reloads retired that something still holds
    /// ([`Self::retire`]): an HTTP/1.1 connection of one that is given back
    /// is closed, not pooled.
    retired: RefCell<Poolings>,
    /// This worker's requests waiting for a connection slot, by key: a
    /// connection of the key that comes free wakes them to take it (as
    /// Envoy's pool hands a released connection to its pending request),
    /// and a dial of the key that fails fails them ([`Pools::dial_failed`]).
    waiting_here: RefCell<HashMap<PoolKey, Waiters>>,
    /// This worker's connections (dialing, lent, idle or shared) by key
    /// and protocol, for clusters that count connections: a pool with none
    /// may open one past `maxConnections` ([`ClusterState::take_connection`]).
    /// An entry goes once no connection holds it: at a sweep, or when the
    /// map has doubled since it was last looked through.
    held: RefCell<HashMap<PoolKey, Held>>,
    /// The size of `held` after it was last looked through.
    held_kept: Cell<usize>,
    /// HTTP/1.1 dials under way, by key.
    h1_dials: RefCell<HashMap<PoolKey, Vec<Rc<H1Dial>>>>,
}

/// The counts of a worker's HTTP/1.1 connections (upgraded ones too) and
/// HTTP/2 connections of one key: Envoy keeps a pool per protocol.
#[derive(Default)]
struct Held {
    h1: Arc<AtomicU64>,
    h2: Arc<AtomicU64>,
}

impl Held {
    /// Whether a connection holds either count (a count nothing holds is
    /// 0, and nothing can raise it).
    fn in_use(&self) -> bool {
        Arc::strong_count(&self.h1) > 1 || Arc::strong_count(&self.h2) > 1
    }
}

/// What an HTTP/1.1 dial ends with: the connection, the server's identity
/// and the end of the connection's lifetime, or why there is none.
type Dialed = Result<(Connection, UpstreamPeer, Option<Instant>), AcquireError>;

/// Where an HTTP/1.1 dial under way hands its connection: to the request
/// waiting for it, the one that began it or, that one gone, a later one
/// that took it over ([`Pools::unclaimed_dial`]).
#[derive(Default)]
struct H1Dial {
    to: Cell<Option<tokio::sync::oneshot::Sender<Dialed>>>,
}

impl H1Dial {
    /// Makes the caller the request the dial's end goes to.
    fn claim(&self) -> tokio::sync::oneshot::Receiver<Dialed> {
        let (to, claimed) = tokio::sync::oneshot::channel();
        self.to.set(Some(to));
        claimed
    }

    /// Whether no request waits for it any more.
    fn unclaimed(&self) -> bool {
        let to = self.to.take();
        let unclaimed = to.as_ref().is_none_or(|to| to.is_closed());
        self.to.set(to);
        unclaimed
    }
}

/// An HTTP/1.1 dial open to take-over while held: forgotten when dropped,
/// however its task ends (a panic, the worker stopping), so that a request
/// that took it over is told rather than left waiting.
struct DialUnderWay<'a> {
    pools: &'a Pools,
    key: &'a PoolKey,
    dial: &'a Rc<H1Dial>,
}

impl Drop for DialUnderWay<'_> {
    fn drop(&mut self) {
        self.pools.dial_ended(self.key, self.dial);
    }
}

/// A worker's requests waiting for a slot for one key, and the dials of
/// the key that failed while they waited.
#[derive(Default)]
struct Waiters {
    count: usize,
    /// Dials failed so far, and how the last failed.
    failed: u64,
    last_failure: Option<DialFailure>,
}

/// Counts a request of this worker as waiting for a slot for `key` while
/// held ([`Pools::waiting_here`]).
struct WaitingHere<'a> {
    pools: &'a Pools,
    key: &'a PoolKey,
    /// The key's failed dials when it began waiting.
    failed_before: u64,
}

impl<'a> WaitingHere<'a> {
    fn new(pools: &'a Pools, key: &'a PoolKey) -> Self {
        let mut waiting = pools.waiting_here.borrow_mut();
        let waiters = waiting.entry(key.clone()).or_default();
        waiters.count += 1;
        let failed_before = waiters.failed;
        Self {
            pools,
            key,
            failed_before,
        }
    }

    /// How a dial of the key failed since it began waiting, if one did.
    fn dial_failed(&self) -> Option<DialFailure> {
        let waiting = self.pools.waiting_here.borrow();
        let waiters = waiting.get(self.key)?;
        (waiters.failed != self.failed_before)
            .then_some(waiters.last_failure)
            .flatten()
    }
}

impl Drop for WaitingHere<'_> {
    fn drop(&mut self) {
        let mut waiting = self.pools.waiting_here.borrow_mut();
        if let Some(waiters) = waiting.get_mut(self.key) {
            waiters.count -= 1;
            if waiters.count == 0 {
                waiting.remove(self.key);
            }
        }
    }
}

/// What an HTTP/1.1 connection lent to one request needs to go back to its
/// pool: the response body gives it back ([`Reuse`]) once read in full.
pub struct Lease {
    /// The server's identity, on mTLS connections.
    pub peer: UpstreamPeer,
    /// Whether it came from the idle pool (it may have closed meanwhile).
    pub reused: bool,
    /// How long the request waited for a connection slot (the cluster's
    /// `maxConnections` were all in use), when it had to; its dial not
    /// counted.
    pub waited: Option<Duration>,
    key: PoolKey,
    served: u64,
    max_served: u64,
    idle_timeout: Duration,
    /// The end of the connection's lifetime (`maxConnectionDuration`).
    expires: Option<Instant>,
    pools: Weak<Pools>,
}

impl Reuse for Lease {
    /// Puts the connection back in its pool, unless it served its quota of
    /// requests, outlived its lifetime, or a reload retired its pool
    /// meanwhile. A request of this worker waiting for a slot is woken to
    /// take it.
    fn reuse(self, connection: Connection) {
        let now = Instant::now();
        let spent = self.max_served > 0 && self.served + 1 >= self.max_served
            || self.expires.is_some_and(|at| at <= now);
        if spent {
            return; // dropping the connection closes it and frees its slot
        }
        if let Some(pools) = self.pools.upgrade() {
            let deadline = close_by(now + self.idle_timeout, self.expires);
            let idle = Idle {
                connection,
                peer: self.peer,
                served: self.served + 1,
                deadline,
                expires: self.expires,
            };
            pools.keep_idle(self.key, idle);
        }
    }
}

impl Pools {
    /// Empty pools counting opened connections and TLS handshake failures.
    pub fn new(opened: IntCounter, tls_failures: IntCounterVec) -> Self {
        let sweep_now = Arc::new(Notify::new());
        Self {
            idle: RefCell::default(),
            shared_h2: RefCell::default(),
            idle_waker: Waker::from(Arc::new(SweepWaker(sweep_now.clone()))),
            sweep_now,
            sweep_at: Cell::new(None),
            opened,
            tls_failures,
            retired: RefCell::default(),
            waiting_here: RefCell::default(),
            held: RefCell::default(),
            held_kept: Cell::new(0),
            h1_dials: RefCell::default(),
        }
    }

    /// Pools `idle` for `key`, unless a reload retired its pool, it
    /// closed, or the pool is full; a request of this worker waiting for a
    /// slot is woken to take it.
    fn keep_idle(&self, key: PoolKey, mut idle: Idle) {
        if key.retired(&self.retired.borrow()) {
            return; // lent before a reload that retired its pool
        }
        if !idle.connection.is_usable(&self.idle_waker) {
            return;
        }
        let deadline = idle.deadline;
        // (a request of this worker waiting for a slot takes it; the map
        // is looked in only when there is one, not per request)
        let waiter = {
            let waiting = self.waiting_here.borrow();
            !waiting.is_empty() && waiting.contains_key(&key)
        };
        let waiter = waiter.then(|| key.counted_by().cloned()).flatten();
        let mut idle_lists = self.idle.borrow_mut();
        let list = idle_lists.entry(key).or_default();
        if list.len() < MAX_IDLE {
            list.push(idle);
            self.sweep_by(deadline);
        }
        drop(idle_lists);
        if let Some(state) = waiter {
            state.released.notify_waiters();
        }
    }

    fn take_idle(&self, key: &PoolKey) -> Option<Idle> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(key)?;
        while let Some(mut conn) = list.pop() {
            let expired = conn.expires.is_some_and(|at| at <= Instant::now());
            if !expired && conn.connection.is_usable(Waker::noop()) {
                return Some(conn);
            }
        }
        None
    }

    /// An HTTP/1.1 connection for `key`: idle, new, or after waiting for a
    /// slot when the cluster limits connections; with the lease that takes
    /// it back.
    pub async fn h1(
        self: &Rc<Self>,
        key: &PoolKey,
        cluster: &Cluster,
        plan: &TlsPlan,
    ) -> Result<(Connection, Lease), AcquireError> {
        let mut waited = None;
        let lease = |peer, reused, served, waited, expires| Lease {
            peer,
            reused,
            waited,
            key: key.clone(),
            served,
            max_served: cluster.limits.max_requests_per_connection,
            idle_timeout: cluster.limits.idle_timeout,
            expires,
            pools: Rc::downgrade(self),
        };
        let slotted = loop {
            if let Some(idle) = self.take_idle(key) {
                let lease = lease(idle.peer, true, idle.served, waited, idle.expires);
                return Ok((idle.connection, lease));
            }
            // A dial under way whose request went is this one's to wait
            // for, as Envoy's pool gives a connecting connection to its
            // next pending request rather than dialing another.
            if let Some(dial) = self.unclaimed_dial(key) {
                let pending = pending_slot(key, &cluster.limits)?;
                let claimed = dial.claim();
                // (the dial's task and the dial map hold it: a task that
                // ends anyhow drops the sender, and this request hears)
                drop(dial);
                let (connection, peer, expires) = claimed.await.map_err(|_| stopped(key))??;
                drop(pending);
                return Ok((connection, lease(peer, false, 0, waited, expires)));
            }
            // Boxed, as in `h2`: only a request with no idle connection
            // comes here, and unboxed its state would weigh on every one's.
            let usable = || self.has_idle(key);
            let slotted = Box::pin(self.connection_slot(key, cluster, false, usable)).await?;
            waited = add_waits(waited, slotted.waited);
            // No slot although the cluster counts connections: one of this
            // worker's came free meanwhile, and it is taken instead.
            if slotted.slot.is_some() || key.counted_by().is_none() {
                break slotted;
            }
        };
        let Slotted { slot, pending, .. } = slotted;
        // The dial runs on as a task of its own, as Envoy's pool goes on
        // connecting when the request that began the connection goes (its
        // route timeout, its client): the next request takes the dial
        // over, or the connection waits idle for one, where a handshake
        // slower than the timeout would otherwise be begun anew, and cut,
        // for every request.
        let dial = Rc::new(H1Dial::default());
        let claimed = dial.claim();
        self.h1_dials
            .borrow_mut()
            .entry(key.clone())
            .or_default()
            .push(dial.clone());
        let (pools, dial_key) = (Rc::clone(self), key.clone());
        let (settings, plan) = (DialSettings::of(cluster), plan.clone());
        let idle_timeout = cluster.limits.idle_timeout;
        let expires = expiry(cluster);
        tokio::task::spawn_local(async move {
            let under_way = DialUnderWay {
                pools: &pools,
                key: &dial_key,
                dial: &dial,
            };
            let opened = pools.dial(&dial_key.addr, settings, &plan).await;
            drop(under_way);
            if let Err(error) = &opened {
                pools.dial_failed(&dial_key, error);
            }
            let opened = opened.map(|(io, peer)| (Connection::new(io, slot), peer, expires()));
            let unsent = match dial.to.take() {
                Some(to) => to.send(opened).err(),
                None => Some(opened),
            };
            if let Some(Ok((connection, peer, expires))) = unsent {
                let deadline = close_by(Instant::now() + idle_timeout, expires);
                let idle = Idle {
                    connection,
                    peer,
                    served: 0,
                    deadline,
                    expires,
                };
                pools.keep_idle(dial_key, idle);
            }
        });
        // (no answer only when the worker stops: its tasks are dropped)
        let (connection, peer, expires) = claimed.await.map_err(|_| stopped(key))??;
        drop(pending);
        Ok((connection, lease(peer, false, 0, waited, expires)))
    }

    /// A dial for `key` failed with `error`: the requests of this worker
    /// waiting for a slot for it fail with it ([`WaitingHere::dial_failed`]).
    fn dial_failed(&self, key: &PoolKey, error: &AcquireError) {
        let mut waiting = self.waiting_here.borrow_mut();
        let Some(waiters) = waiting.get_mut(key) else {
            return;
        };
        waiters.failed += 1;
        waiters.last_failure = Some(DialFailure::of(error));
        drop(waiting);
        if let Some(state) = key.counted_by() {
            state.released.notify_waiters();
        }
    }

    /// A dial of an HTTP/1.1 connection for `key` under way whose request
    /// went, for another to take over.
    fn unclaimed_dial(&self, key: &PoolKey) -> Option<Rc<H1Dial>> {
        let dials = self.h1_dials.borrow();
        if dials.is_empty() {
            return None; // (no lookup per request while nothing dials)
        }
        dials.get(key)?.iter().find(|d| d.unclaimed()).cloned()
    }

    /// Forgets `dial`, which has ended.
    fn dial_ended(&self, key: &PoolKey, dial: &Rc<H1Dial>) {
        let mut dials = self.h1_dials.borrow_mut();
        if let Some(list) = dials.get_mut(key) {
            list.retain(|d| !Rc::ptr_eq(d, dial));
            if list.is_empty() {
                dials.remove(key);
            }
        }
    }

    /// A new HTTP/1.1 connection for a request that offers an upgrade,
    /// driven by hyper (a 101 hands it to the splice) and never pooled;
    /// with the server's identity and how long the request waited for a
    /// connection slot, when it had to.
    pub async fn h1_upgrade(
        &self,
        key: &PoolKey,
        cluster: &Cluster,
        plan: &TlsPlan,
    ) -> Result<
        (
            http1::SendRequest<UpstreamBody>,
            UpstreamPeer,
            Option<Duration>,
            Option<UpgradeSlot>,
        ),
        AcquireError,
    > {
        let mut waited = None;
        let slotted = loop {
            let usable = || self.has_idle(key);
            let slotted = self.connection_slot(key, cluster, false, usable).await?;
            waited = add_waits(waited, slotted.waited);
            // No slot although the cluster counts connections: one of this
            // worker's came free meanwhile, which an upgrade cannot use (it
            // takes a connection of its own, driven by hyper): it closes,
            // and its slot is the upgrade's.
            if slotted.slot.is_some() || key.counted_by().is_none() {
                break slotted;
            }
            drop(self.take_idle(key));
        };
        let settings = DialSettings::of(cluster);
        let dialed = self.dial(&key.addr, settings, plan).await;
        if let Err(error) = &dialed {
            self.dial_failed(key, error);
        }
        let (io, peer) = dialed?;
        let (sender, conn) = http1::Builder::new()
            .max_header_size(MAX_RESPONSE_HEAD)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| AcquireError::Handshake {
                addr: key.addr.to_string(),
                source,
            })?;
        let Slotted { slot, pending, .. } = slotted;
        drop(pending);
        // The connection counts until it closes and, upgraded, until the
        // upgraded stream ends: the splice holds the other share.
        let slot = slot.map(UpgradeSlot::new);
        let held = slot.clone();
        tokio::task::spawn_local(async move {
            let _slot = held;
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "upstream connection closed with an error");
            }
        });
        Ok((sender, peer, waited, slot))
    }

    /// A stream on a shared HTTP/2 connection for `key`: on the first with
    /// fewer than the cluster's `maxConcurrentStreams`, else on one opened
    /// for it ([`shared_h2`](super::shared_h2)).
    pub async fn h2(
        self: &Rc<Self>,
        key: &PoolKey,
        cluster: &Cluster,
        plan: &TlsPlan,
    ) -> Result<SharedH2, AcquireError> {
        let limits = &cluster.limits;
        let mut waited = None;
        loop {
            let no_room = {
                let mut shared = self.shared_h2.borrow_mut();
                let connections = match shared.get_mut(key) {
                    Some(connections) => connections,
                    None => shared.entry(key.clone()).or_default(),
                };
                if let Some(taken) = connections.take(limits) {
                    return Ok(SharedH2 { taken, waited });
                }
                connections.no_room(limits)
            };
            let dial = match no_room {
                NoRoom::Wait(waiting) => {
                    // Waiting for a connection, it is a pending request
                    // where the cluster counts them (as in Envoy's pool).
                    let pending = pending_slot(key, limits)?;
                    let began = Instant::now();
                    let dialed = waiting.dialed().await;
                    if pending.is_some() {
                        waited = add_waits(waited, Some(began.elapsed()));
                    }
                    match dialed {
                        Ok(()) => continue,
                        Err(failure) => return Err(failed_dial(key, failure)),
                    }
                }
                NoRoom::Dial(dial) => dial,
            };
            let has_room = || {
                self.shared_h2
                    .borrow()
                    .get(key)
                    .is_some_and(|c| c.has_room(limits))
            };
            // Boxed: only the request that opens a connection comes here,
            // and unboxed its state would weigh on every request's future.
            let slotted = match Box::pin(self.connection_slot(key, cluster, true, has_room)).await {
                Ok(slotted) => slotted,
                Err(error) => {
                    // Turned away after waiting for a slot: so are the
                    // requests that waited for this dial. (Turned away at
                    // once, past the pending limit, it had none.)
                    if let AcquireError::Overflow(MAX_CONNECTIONS) = error {
                        dial.failed(DialFailure::Overflow(MAX_CONNECTIONS));
                    }
                    return Err(error);
                }
            };
            waited = add_waits(waited, slotted.waited);
            if has_room() {
                continue; // a stream of this worker's ended meanwhile
            }
            let starting = match self.shared_h2.borrow_mut().get_mut(key) {
                Some(connections) => connections.starting_limit(),
                None => u64::from(INITIAL_LIMIT),
            };
            let Slotted { slot, pending, .. } = slotted;
            // The dial runs on as a task of its own, as an HTTP/1.1 one
            // does ([`Self::h1`]) and Envoy's pool goes on connecting: a
            // connection the request no longer waits for is shared idle,
            // and the requests waiting for this dial take streams on it.
            let (dialed, result) = tokio::sync::oneshot::channel();
            let (pools, dial_key, plan) = (Rc::clone(self), key.clone(), plan.clone());
            let (settings, keepalive) = (DialSettings::of(cluster), cluster.keepalive.http2);
            let (dial_limits, expires) = (limits.clone(), expiry(cluster));
            tokio::task::spawn_local(async move {
                let opened = pools
                    .open_h2(&dial_key, settings, keepalive, &plan, slot, starting)
                    .await;
                match opened {
                    Ok(opened) => {
                        let expires = expires();
                        let up = Ok((opened, dial, expires));
                        if let Err(Ok((opened, dial, expires))) = dialed.send(up) {
                            pools.with_h2(&dial_key, &dial_limits, expires, |connections| {
                                connections.made_idle(opened, expires, dial, &dial_limits);
                            });
                        }
                    }
                    Err(error) => {
                        dial.failed(DialFailure::of(&error));
                        pools.dial_failed(&dial_key, &error);
                        let _ = dialed.send(Err(error));
                    }
                }
            });
            // (no answer only when the worker stops: its tasks are dropped)
            let (opened, dial, expires) = result.await.map_err(|_| stopped(key))??;
            drop(pending);
            let taken = self.with_h2(key, limits, expires, |connections| {
                connections.made(opened, expires, dial, limits)
            });
            return Ok(SharedH2 { taken, waited });
        }
    }

    /// `made` with the shared HTTP/2 connections of `key`, given one a dial
    /// made, whose lifetime ends at `expires`: the sweeper lets it go once
    /// idle for its timeout, or at the end of its lifetime. A connection
    /// dialed for a request of a config a reload has left is not shared:
    /// its request alone uses it (it closes, its request gone).
    fn with_h2<R>(
        &self,
        key: &PoolKey,
        limits: &PoolLimits,
        expires: Option<Instant>,
        made: impl FnOnce(&mut Connections) -> R,
    ) -> R {
        let made = if key.retired(&self.retired.borrow()) {
            made(&mut Connections::default())
        } else {
            let mut shared = self.shared_h2.borrow_mut();
            made(shared.entry(key.clone()).or_default())
        };
        let deadline = close_by(Instant::now() + limits.idle_timeout, expires);
        self.sweep_by(deadline);
        made
    }

    /// Has the sweeper sweep by `deadline`. Only a deadline earlier than
    /// the sweeper's wakes it (with one idle timeout per pool, the first
    /// connection pooled).
    fn sweep_by(&self, deadline: Instant) {
        if self.sweep_at.get().is_none_or(|at| deadline < at) {
            self.sweep_at.set(Some(deadline));
            self.sweep_now.notify_one();
        }
    }

    /// A new HTTP/2 connection, counted by `slot` until it closes, with
    /// `keepalive` PINGs when set; the server's stream limit read from its
    /// frames as they arrive, `starting` streams until the first
    /// ([`Connections::starting_limit`]).
    async fn open_h2(
        &self,
        key: &PoolKey,
        settings: DialSettings,
        keepalive: Option<Http2Keepalive>,
        plan: &TlsPlan,
        slot: Option<Slot>,
        starting: u64,
    ) -> Result<Opened, AcquireError> {
        let (io, peer) = self.dial(&key.addr, settings, plan).await?;
        let server_limit = ServerStreamLimit::starting_at(starting);
        // The slot goes with the socket: hyper's connection future ends
        // when no sender is left, while the socket carries the streams on.
        let io = SlottedIo {
            io,
            scan: SettingsScan::new(server_limit.clone()),
            _slot: slot,
        };
        let mut builder = http2::Builder::new(LocalExec);
        builder
            .timer(TokioTimer::new())
            // (what the pool counts before the server's SETTINGS arrive;
            // the dialer's own stream goes out whatever it is)
            .initial_max_send_streams(starting.max(1) as usize)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            // response headers and trailers as large as Envoy takes
            .max_header_list_size(MAX_HEADER_LIST);
        if let Some(keepalive) = keepalive {
            // Envoy's connection keepalive PINGs idle connections too.
            builder
                .keep_alive_interval(keepalive.interval)
                .keep_alive_timeout(keepalive.timeout)
                .keep_alive_while_idle(true);
        }
        let (sender, conn) = builder
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| AcquireError::Handshake {
                addr: key.addr.to_string(),
                source,
            })?;
        tokio::task::spawn_local(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "upstream HTTP/2 connection closed with an error");
            }
        });
        Ok(Opened {
            sender,
            peer,
            server_limit,
        })
    }

    /// Forgets the shared HTTP/2 connection `stream` is on: it refused a
    /// request.
    pub fn forget_h2(&self, key: &PoolKey, stream: &Counted) {
        if let Some(connections) = self.shared_h2.borrow_mut().get_mut(key) {
            connections.forget(stream);
        }
    }

    /// Whether the server of the shared HTTP/2 connection `stream` is on
    /// allows no stream (its last SETTINGS said 0).
    pub fn h2_allows_none(&self, key: &PoolKey, stream: &Counted) -> bool {
        self.shared_h2
            .borrow()
            .get(key)
            .is_some_and(|connections| connections.allows_none(stream))
    }

    /// Whether an idle connection for `key` could be taken now.
    fn has_idle(&self, key: &PoolKey) -> bool {
        self.idle.borrow_mut().get_mut(key).is_some_and(|list| {
            list.iter_mut()
                .any(|c| c.connection.is_usable(&self.idle_waker))
        })
    }

    /// A connection slot when the cluster counts connections (`None` when it
    /// does not): at once if below the limit or this worker holds no
    /// connection of `key` and the protocol (HTTP/2 when `h2`)
    /// ([`ClusterState::take_connection`]), else after waiting. Either way the request is pending
    /// (`http1MaxPendingRequests`) until the connection it dials is ready
    /// ([`Slotted::pending`]), as in Envoy's pool, and turned away when the
    /// pending limit is full. `usable` says whether this worker got a
    /// connection it can use meanwhile (then no slot is needed).
    async fn connection_slot(
        &self,
        key: &PoolKey,
        cluster: &Cluster,
        h2: bool,
        usable: impl Fn() -> bool,
    ) -> Result<Slotted, AcquireError> {
        let Some(state) = key.counted_by() else {
            return Ok(Slotted {
                slot: None,
                pending: None,
                waited: None,
            });
        };
        let limits = &cluster.limits;
        // Pending until its connection is ready, a dial of its own or not.
        let pending = state
            .take_pending(limits.max_pending)
            .ok_or(AcquireError::Overflow(MAX_PENDING))?;
        let held = self.held(key, h2);
        if let Some(slot) = state.take_connection(limits.max_connections, &held) {
            return Ok(Slotted {
                slot: Some(slot),
                pending: Some(pending),
                waited: None,
            });
        }
        let waiting = WaitingHere::new(self, key);
        let began = Instant::now();
        let mut pending = Some(pending);
        let mut after_waiting = |slot: Option<Slot>| Slotted {
            // (a connection that came free needs no dial)
            pending: if slot.is_some() { pending.take() } else { None },
            slot,
            waited: Some(began.elapsed()),
        };
        let give_up = began + cluster.connect_timeout;
        let mut yielded = false;
        loop {
            let released = state.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if usable() {
                return Ok(after_waiting(None));
            }
            // A dial of the pool failed: so do the requests waiting, as
            // Envoy's pool fails its pending requests when a connection
            // fails to connect (`purgePendingStreams`).
            if let Some(failure) = waiting.dial_failed() {
                return Err(failed_dial(key, failure));
            }
            // (a slot, or this worker's last connection of the key closed)
            if let Some(slot) = state.take_connection(limits.max_connections, &held) {
                return Ok(after_waiting(Some(slot)));
            }
            // (and looks again every 50 ms: a closed connection wakes one
            // waiter, of any worker and endpoint, unless it was its pool's
            // last, and an HTTP/2 stream that ends wakes none)
            let wait = give_up
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            if wait.is_zero() {
                if yielded {
                    return Err(AcquireError::Overflow(MAX_CONNECTIONS));
                }
                // A dial of the pool whose connect timeout ends in the same
                // timer tick fails first, and a connection closed in it
                // frees its slot: their tasks, woken with this one, run
                // before this one looks once more.
                yielded = true;
                tokio::task::yield_now().await;
                continue;
            }
            let _ = tokio::time::timeout(wait, released).await;
        }
    }

    /// The count of this worker's connections of `key`, HTTP/2 ones when
    /// `h2`.
    fn held(&self, key: &PoolKey, h2: bool) -> Arc<AtomicU64> {
        let mut held = self.held.borrow_mut();
        let of = |held: &Held| if h2 { held.h2.clone() } else { held.h1.clone() };
        if let Some(counts) = held.get(key) {
            return of(counts);
        }
        if held.len() >= 2 * self.held_kept.get().max(16) {
            held.retain(|_, counts| counts.in_use());
            self.held_kept.set(held.len());
        }
        of(held.entry(key.clone()).or_default())
    }

    /// TCP, then TLS when the plan says so.
    async fn dial(
        &self,
        addr: &UpstreamAddr,
        settings: DialSettings,
        plan: &TlsPlan,
    ) -> Result<(UpstreamIo, UpstreamPeer), AcquireError> {
        let dialed = connect::dial_with(addr, settings, plan, &self.tls_failures).await;
        if !matches!(dialed, Err(DialError::Connect(_))) {
            self.opened.inc();
        }
        let (io, identity) = dialed.map_err(|error| match error {
            DialError::Connect(source) => AcquireError::Connect {
                addr: addr.to_string(),
                source,
            },
            DialError::Tls(failure) => AcquireError::Tls {
                addr: addr.to_string(),
                reason: failure.0,
            },
        })?;
        let peer = UpstreamPeer {
            identity: identity.map(|id| Arc::from(id.to_string())),
            local: io.tcp().local_addr().ok(),
        };
        Ok((io, peer))
    }

    /// Closes idle connections that closed or idled past their timeout,
    /// and forgets the counts of keys this worker holds no connection of.
    /// Returns when the next sweep is due, if one is.
    fn sweep(&self) -> Option<Instant> {
        self.let_retired_go();
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut due = |deadline: Instant| {
            next = Some(next.map_or(deadline, |at: Instant| at.min(deadline)));
        };
        self.idle.borrow_mut().retain(|_, list| {
            list.retain_mut(|c| now < c.deadline && c.connection.is_usable(&self.idle_waker));
            for c in list.iter() {
                due(c.deadline);
            }
            !list.is_empty()
        });
        self.shared_h2.borrow_mut().retain(|key, connections| {
            let (left, at) = connections.sweep(now, key.max_concurrent_streams());
            if let Some(at) = at {
                due(at);
            }
            left
        });
        let mut held = self.held.borrow_mut();
        held.retain(|_, counts| counts.in_use());
        self.held_kept.set(held.len());
        drop(held);
        self.sweep_at.set(next);
        next
    }

    /// Lets go of the pools of every key the reload from `before` to `now`
    /// retired (its endpoint reached with its pooling no more: settings
    /// changed, set where none were, or the endpoint gone): their idle
    /// connections close now, and
    /// their shared HTTP/2 connections once their streams end (no sender
    /// is left to open another; hyper then closes the connection). No
    /// request of the new config asks for these keys, so they would
    /// otherwise idle for their idle timeout, holding sockets and, for a
    /// cluster that counts connections, slots.
    ///
    /// They stay retired until nothing holds their pooling any more (the
    /// default pools until the next reload): an
    /// HTTP/1.1 connection lent out meanwhile is closed when given back, an
    /// HTTP/2 connection a request of the old config dials is not shared,
    /// and each sweep lets go of what came back under them.
    fn retire(&self, before: &Poolings, now: &Poolings) {
        self.retired
            .borrow_mut()
            .retire(before.retired_by(now), now);
        self.let_retired_go();
    }

    /// Drops the pools of retired poolings, then forgets the retired
    /// poolings nothing holds any more.
    fn let_retired_go(&self) {
        let mut retired = self.retired.borrow_mut();
        if retired.is_empty() {
            return;
        }
        self.idle
            .borrow_mut()
            .retain(|key, _| !key.retired(&retired));
        self.shared_h2
            .borrow_mut()
            .retain(|key, _| !key.retired(&retired));
        retired.forget_unused();
    }

    /// Sweeps whenever an idle connection can be due to close: at the
    /// earliest idle deadline, and when a connection is pooled with an
    /// earlier one or a pooled connection closes. With nothing pooled it
    /// sleeps with no timer.
    /// After a reload (`poolings` changes) it lets go of the pools whose
    /// settings the reload changed ([`Self::retire`]). Runs on the worker's
    /// thread until the worker stops.
    pub async fn keep_swept(self: Rc<Self>, mut poolings: watch::Receiver<Arc<Poolings>>) {
        let mut in_force = poolings.borrow_and_update().clone();
        let mut reloads = true;
        loop {
            let next = self.sweep();
            let woken = self.sweep_now.notified();
            let due = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = woken => {}
                () = due => {}
                changed = poolings.changed(), if reloads => match changed {
                    Ok(()) => {
                        let now = poolings.borrow_and_update().clone();
                        self.retire(&in_force, &now);
                        in_force = now;
                    }
                    // The agent is stopping: no reload comes any more.
                    Err(_) => reloads = false,
                },
            }
        }
    }
}

/// The error of a request whose dial's task was dropped: its worker stopped.
fn stopped(key: &PoolKey) -> AcquireError {
    AcquireError::Connect {
        addr: key.addr.to_string(),
        source: std::io::Error::other("the worker stopped while dialing"),
    }
}

/// A pending-request slot for a request of `key` that waits for a
/// connection (`http1MaxPendingRequests`, counted as Envoy's pool counts
/// its pending requests); `None` where the cluster counts none, an
/// overflow when the limit is full.
fn pending_slot(key: &PoolKey, limits: &PoolLimits) -> Result<Option<Slot>, AcquireError> {
    key.counted_by()
        .map(|state| {
            state
                .take_pending(limits.max_pending)
                .ok_or(AcquireError::Overflow(MAX_PENDING))
        })
        .transpose()
}

/// The error a request that waited for a dial fails with: the dial's.
fn failed_dial(key: &PoolKey, failure: DialFailure) -> AcquireError {
    let addr = key.addr.to_string();
    match failure {
        DialFailure::Connect => AcquireError::Connect {
            addr,
            source: std::io::Error::other(WAITED_FOR_A_FAILED_DIAL),
        },
        // (Its kind says so: the waiter's reply is a connection timeout too.)
        DialFailure::Timeout => AcquireError::Connect {
            addr,
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, WAITED_FOR_A_FAILED_DIAL),
        },
        DialFailure::Tls(reason) => AcquireError::Tls { addr, reason },
        DialFailure::Overflow(limit) => AcquireError::Overflow(limit),
    }
}

/// What a request that waited for a failed dial is told.
const WAITED_FOR_A_FAILED_DIAL: &str = "the connection this request waited for could not be made";

/// An upstream HTTP/2 socket holding its connection slot until dropped;
/// what the server sends passes its [`SettingsScan`] on the way in.
struct SlottedIo {
    io: UpstreamIo,
    scan: SettingsScan,
    _slot: Option<Slot>,
}

impl tokio::io::AsyncRead for SlottedIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let read = std::pin::Pin::new(&mut this.io).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = read {
            this.scan.feed(&mut buf.filled_mut()[before..]);
        }
        read
    }
}

impl tokio::io::AsyncWrite for SlottedIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// When a connection of `cluster` up now (connected, handshakes done)
/// ends its lifetime (`maxConnectionDuration`), if it has one: Envoy's
/// timer starts once the connection is up, not when its dial begins.
fn expiry(cluster: &Cluster) -> impl Fn() -> Option<Instant> + 'static {
    let lifetime = cluster.limits.max_connection_duration;
    move || lifetime.map(|lifetime| Instant::now() + lifetime)
}

/// When an idle connection closes: at its idle deadline `idle`, or at the
/// end of its lifetime `expires` when that comes first.
fn close_by(idle: Instant, expires: Option<Instant>) -> Instant {
    expires.map_or(idle, |at| at.min(idle))
}

/// Wakes the sweeper: the waker idle sockets are watched with.
struct SweepWaker(Arc<Notify>);

impl std::task::Wake for SweepWaker {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::LocalSet;

    use super::*;
    use crate::model::live::PoolLimits;
    use crate::proxy::reset_reason::ResetReason;
    use crate::proxy::testing::{key, pools};

    #[test]
    fn clusters_share_connections_unless_their_pooling_differs() {
        use crate::proxy::testing::cluster;
        let addr: SocketAddr = "10.0.0.1:80".parse().expect("an address");
        let plain = |limits| key(&cluster(&[addr], limits, None));
        // Clusters that set nothing share one pool, and carry nothing more
        // than the endpoint and its TLS.
        let default = plain(PoolLimits::default());
        assert_eq!(default, plain(PoolLimits::default()));
        assert!(default.pooling.is_none());
        // Each setting of its own keeps a cluster's connections apart; the
        // same settings in another cluster (or snapshot) share them.
        let streams = || PoolLimits {
            max_concurrent_streams: 10,
            ..PoolLimits::default()
        };
        assert_ne!(default, plain(streams()));
        assert_eq!(plain(streams()), plain(streams()));
        let lifetime = PoolLimits {
            max_connection_duration: Some(Duration::from_secs(60)),
            ..PoolLimits::default()
        };
        assert_ne!(plain(streams()), plain(lifetime));
        // A cluster that counts its connections pools them alone.
        let counted = || PoolLimits {
            max_connections: 4,
            ..PoolLimits::default()
        };
        assert_ne!(plain(counted()), plain(counted()));
        // Across a reload, the new snapshot of a cluster that counts them
        // counts into the same state (`LiveState::cluster`): one pool.
        let state = Arc::new(ClusterState::default());
        let snapshot = || {
            let mut snapshot = cluster(&[addr], counted(), None);
            Arc::get_mut(&mut snapshot).expect("unshared").state = state.clone();
            key(&snapshot)
        };
        assert_eq!(snapshot(), snapshot());
        let one = cluster(&[addr], counted(), None);
        assert_eq!(key(&one), key(&one));
        assert_eq!(key(&one).max_concurrent_streams(), UNLIMITED);
        assert!(key(&one).counted_by().is_some());
    }

    #[test]
    fn mesh_connections_are_pooled_apart_by_sni_and_expected_sans() {
        // One workload config, shared by every mesh cluster: a connection
        // verified for one cluster's SNI and SANs must not carry another's.
        let config = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        );
        let plan = |sni: &str, sans: &[&str]| TlsPlan::Tls {
            config: config.clone(),
            server: Arc::new(TlsServer {
                server_name: rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("SNI"),
                expected: sans.iter().map(|s| (*s).to_owned()).collect(),
            }),
            mesh: None,
        };
        let cluster = crate::model::cluster::testing::cluster(
            "app",
            80,
            crate::model::service::Protocol::Http,
            &["10.0.0.1:80"],
        );
        let key = |plan: &TlsPlan| PoolKey::new(&cluster.endpoints[0].address, &cluster, plan);
        let a = key(&plan("a.example", &["spiffe://td/ns/a/sa/a"]));
        assert_eq!(a, key(&plan("a.example", &["spiffe://td/ns/a/sa/a"])));
        assert_ne!(a, key(&plan("b.example", &["spiffe://td/ns/a/sa/a"])));
        assert_ne!(a, key(&plan("a.example", &["spiffe://td/ns/b/sa/b"])));
        assert_ne!(a, key(&plan("a.example", &[])));
        assert_ne!(a, key(&TlsPlan::Plain));
    }

    /// A server that accepts connections and keeps them open until they
    /// close, counting how many it accepted.
    async fn server() -> (SocketAddr, Rc<std::cell::Cell<usize>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("an address");
        let accepted = Rc::new(std::cell::Cell::new(0));
        let count = accepted.clone();
        tokio::task::spawn_local(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.set(count.get() + 1);
                tokio::task::spawn_local(async move {
                    let mut buf = [0u8; 1024];
                    while stream.readable().await.is_ok() {
                        match stream.try_read(&mut buf) {
                            Ok(0) => return,
                            Ok(_) | Err(_) => tokio::task::yield_now().await,
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    use std::net::SocketAddr;

    fn limited(address: SocketAddr, max_connections: u64, max_pending: u64) -> Arc<Cluster> {
        let limits = PoolLimits {
            max_connections,
            max_pending,
            ..PoolLimits::default()
        };
        super::super::testing::cluster(&[address], limits, None)
    }

    /// A listener whose accept queue is full at two connections (the
    /// kernel then drops a SYN, and a dial retries after its initial
    /// retransmission timeout, 1 s, then 3 s, as it doubles), and a
    /// cluster of it limited as [`limited`] says, whose connect timeout
    /// (10 s) leaves room for those retries.
    fn backlogged(
        max_connections: u64,
        max_pending: u64,
    ) -> (tokio::net::TcpListener, SocketAddr, Arc<Cluster>) {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("a port");
        let listener = socket.listen(1).expect("listening");
        let address = listener.local_addr().expect("an address");
        let mut cluster = limited(address, max_connections, max_pending);
        Arc::get_mut(&mut cluster)
            .expect("the only owner")
            .connect_timeout = Duration::from_secs(10);
        (listener, address, cluster)
    }

    /// A connection given back while a request of the same worker waits
    /// for a slot goes to that request, as Envoy's pool hands a released
    /// connection to its pending request: no close and dial per request.
    #[tokio::test]
    async fn a_connection_given_back_goes_to_a_waiter_of_its_worker() {
        LocalSet::new()
            .run_until(async {
                let (address, accepted) = server().await;
                let cluster = limited(address, 1, UNLIMITED);
                let key = key(&cluster);
                let a = pools();
                let (first, lease) = a
                    .h1(&key, &cluster, &TlsPlan::Plain)
                    .await
                    .expect("a connection");
                let waiting = {
                    let (a, key, cluster) = (a.clone(), key.clone(), cluster.clone());
                    tokio::task::spawn_local(async move {
                        a.h1(&key, &cluster, &TlsPlan::Plain)
                            .await
                            .map(|(_, l)| l.reused)
                    })
                };
                while !waits(&a, &key) {
                    tokio::task::yield_now().await;
                }
                lease.reuse(first);
                let reused = waiting.await.expect("joined").expect("a connection");
                assert!(reused, "the waiter dialed anew");
                assert_eq!(accepted.get(), 1);
            })
            .await;
    }

    /// Whether a request of `pools` waits for a connection slot for `key`.
    fn waits(pools: &Pools, key: &PoolKey) -> bool {
        pools.waiting_here.borrow().contains_key(key)
    }

    /// `maxConnections` counts every worker's connections, and a worker
    /// holding none opens one past it, as each of Envoy's pools does: its
    /// requests never wait for another worker's connection, which that
    /// worker's own requests keep busy (the agent used to close a
    /// connection given back for another worker's waiter, and so closed
    /// and opened one per request). A worker holding one waits for it.
    #[tokio::test]
    async fn each_worker_may_open_one_connection_past_the_limit() {
        LocalSet::new()
            .run_until(async {
                let (address, accepted) = server().await;
                let cluster = limited(address, 1, 1);
                let key = key(&cluster);
                let (a, b, c) = (pools(), pools(), pools());
                let (first, lease) = a
                    .h1(&key, &cluster, &TlsPlan::Plain)
                    .await
                    .expect("a connection");
                // Worker B holds none: it opens its own at once, past the limit.
                let (second, b_lease) = b
                    .h1(&key, &cluster, &TlsPlan::Plain)
                    .await
                    .expect("a connection past the limit");
                assert_eq!(b_lease.waited, None, "B did not wait");
                assert_eq!(cluster.state.connections.load(Ordering::Relaxed), 2);
                b_lease.reuse(second);
                assert!(b.has_idle(&key), "kept for B's next request");

                // A holds one: its next request waits for it as a pending request…
                let waiting = {
                    let (a, key, cluster) = (a.clone(), key.clone(), cluster.clone());
                    tokio::task::spawn_local(async move {
                        a.h1(&key, &cluster, &TlsPlan::Plain)
                            .await
                            .map(|(_, l)| (l.reused, l.waited.is_some()))
                    })
                };
                while !waits(&a, &key) {
                    tokio::task::yield_now().await;
                }
                // …so worker C, though it holds none, overflows
                // http1MaxPendingRequests (UO), as Envoy checks it first.
                let overflow = c.h1(&key, &cluster, &TlsPlan::Plain).await;
                assert!(matches!(overflow, Err(AcquireError::Overflow(MAX_PENDING))));

                // A's connection given back goes to A's waiter.
                lease.reuse(first);
                let taken = waiting.await.expect("joined").expect("a connection");
                assert_eq!(taken, (true, true), "reused after waiting");
                assert_eq!(accepted.get(), 2);
                assert!(b.has_idle(&key), "B's stays");
                // (the waiter's task dropped A's connection: B's is left)
                assert_eq!(cluster.state.connections.load(Ordering::Relaxed), 1);
            })
            .await;
    }

    /// One worker's pools for two endpoints of a cluster limited to one
    /// connection: each may hold one, as Envoy's pool per host does, rather
    /// than closing one endpoint's connection for each request to the
    /// other's.
    #[tokio::test]
    async fn each_endpoint_may_hold_a_connection_past_the_limit() {
        LocalSet::new()
            .run_until(async {
                let ((one, _), (two, _)) = (server().await, server().await);
                let limits = PoolLimits {
                    max_connections: 1,
                    ..PoolLimits::default()
                };
                let cluster = super::super::testing::cluster(&[one, two], limits, None);
                let pools = pools();
                let keys: Vec<PoolKey> = cluster
                    .endpoints
                    .iter()
                    .map(|e| PoolKey::new(&e.address, &cluster, &TlsPlan::Plain))
                    .collect();
                for _ in 0..3 {
                    for key in &keys {
                        let (connection, lease) = pools
                            .h1(key, &cluster, &TlsPlan::Plain)
                            .await
                            .expect("a connection");
                        assert_eq!(lease.waited, None);
                        lease.reuse(connection);
                    }
                }
                // (dials counted, not accepts: a server's accept may come
                // a turn later)
                assert_eq!(pools.opened.get(), 2);
                assert_eq!(cluster.state.connections.load(Ordering::Relaxed), 2);
            })
            .await;
    }

    fn streams_limited(address: SocketAddr, max_concurrent_streams: u64) -> Arc<Cluster> {
        let limits = PoolLimits {
            max_concurrent_streams,
            ..PoolLimits::default()
        };
        super::super::testing::cluster(&[address], limits, None)
    }

    /// Streams on each of the key's shared HTTP/2 connections, in order.
    fn streams_per_connection(pools: &Pools, key: &PoolKey) -> Vec<u64> {
        pools
            .shared_h2
            .borrow()
            .get(key)
            .map(Connections::streams)
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_burst_opens_the_http2_connections_its_streams_need() {
        LocalSet::new()
            .run_until(async {
                let (address, accepted) = server().await;
                let cluster = streams_limited(address, 2);
                let key = key(&cluster);
                let pools = pools();
                // Five streams at once: the first three requests dial
                // (each dial has room for one more), the other two wait
                // for those dials and share their connections.
                let burst = (0..5).map(|_| pools.h2(&key, &cluster, &TlsPlan::Plain));
                let taken: Vec<SharedH2> = futures_util::future::join_all(burst)
                    .await
                    .into_iter()
                    .map(|shared| shared.expect("a stream"))
                    .collect();
                assert_eq!(streams_per_connection(&pools, &key), [2, 2, 1]);
                // (The server counts a connection when its task runs.)
                for _ in 0..1000 {
                    tokio::task::yield_now().await;
                }
                assert_eq!(accepted.get(), 3);

                // Streams that end make room where they were: the next
                // goes on the first, and the idle ones stay for the next
                // burst, as in Envoy's pool.
                drop(taken);
                let again = pools
                    .h2(&key, &cluster, &TlsPlan::Plain)
                    .await
                    .expect("a stream");
                assert_eq!(streams_per_connection(&pools, &key), [1, 0, 0]);
                assert_eq!(accepted.get(), 3);
                drop(again);
            })
            .await;
    }

    /// An HTTP/2 server answering every request at once, sending
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` = `max_streams`.
    async fn h2_server(max_streams: u32) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("an address");
        tokio::task::spawn_local(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(|_| async {
                    let empty = http_body_util::Empty::<bytes::Bytes>::new();
                    Ok::<_, std::convert::Infallible>(http::Response::new(empty))
                });
                let mut builder = hyper::server::conn::http2::Builder::new(LocalExec);
                builder.max_concurrent_streams(max_streams);
                tokio::task::spawn_local(async move {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        address
    }

    /// A GET of `/` from `address` on the connection `shared` is a stream of.
    async fn get_on(
        address: SocketAddr,
        shared: &SharedH2,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        let request = http::Request::get(format!("http://{address}/"))
            .body(UpstreamBody::Full(None))
            .expect("a request");
        shared.taken.sender.clone().send_request(request).await
    }

    /// A pool whose first HTTP/2 connection, to a server allowing
    /// `max_streams` streams (a cluster with no cap of its own), has heard
    /// the server's SETTINGS; that connection's stream.
    struct Heard {
        pools: Rc<Pools>,
        cluster: Arc<Cluster>,
        key: PoolKey,
        first: SharedH2,
    }

    async fn heard(max_streams: u32) -> Heard {
        let address = h2_server(max_streams).await;
        let cluster = streams_limited(address, UNLIMITED);
        let key = key(&cluster);
        let pools = pools();
        let first = pools.h2(&key, &cluster, &TlsPlan::Plain).await;
        let first = first.expect("a stream");
        // Its answer comes after the server's SETTINGS on the wire.
        let answer = get_on(address, &first).await.expect("an answer");
        assert_eq!(answer.status(), 200);
        Heard {
            pools,
            cluster,
            key,
            first,
        }
    }

    /// The server's `SETTINGS_MAX_CONCURRENT_STREAMS` caps the streams its
    /// connection is given, as `maxConcurrentStreams` does (Envoy counts
    /// it in the connection's capacity): a request that finds the
    /// connection at the server's limit opens another instead of queueing
    /// on it.
    #[tokio::test]
    async fn the_servers_stream_limit_caps_its_connection() {
        LocalSet::new()
            .run_until(async {
                let Heard {
                    pools,
                    cluster,
                    key,
                    first,
                } = heard(1).await;
                let plan = &TlsPlan::Plain;
                let second = pools.h2(&key, &cluster, plan).await.expect("a stream");
                assert_eq!(streams_per_connection(&pools, &key), [1, 1]);
                drop(first);
                // The stream that ended made room where it was.
                let third = pools.h2(&key, &cluster, plan).await.expect("a stream");
                assert_eq!(streams_per_connection(&pools, &key), [1, 1]);
                drop((second, third));
            })
            .await;
    }

    /// A new connection is counted at the server's limit as heard on the
    /// key's others until its own SETTINGS arrive: a burst that finds the
    /// pool full opens the connections the server's limit needs, instead of
    /// putting its streams on one new connection counted at 100 (where
    /// they would wait, or be refused, past the server's limit).
    #[tokio::test]
    async fn a_new_connection_is_counted_at_the_servers_heard_limit() {
        LocalSet::new()
            .run_until(async {
                let Heard {
                    pools,
                    cluster,
                    key,
                    first,
                } = heard(1).await;
                let plan = &TlsPlan::Plain;
                let burst = (0..3).map(|_| pools.h2(&key, &cluster, plan));
                let taken = futures_util::future::join_all(burst).await;
                assert!(taken.iter().all(Result::is_ok));
                assert_eq!(streams_per_connection(&pools, &key), [1, 1, 1, 1]);
                drop((first, taken));
            })
            .await;
    }

    /// An HTTP/2 server that allows no stream: its SETTINGS carry
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` 0; it refuses every stream
    /// (`RST_STREAM` `REFUSED_STREAM`) and says on the channel when the
    /// client has acknowledged those SETTINGS, that is, has applied them.
    async fn refusing_server() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("an address");
        let (acked, acks) = tokio::sync::mpsc::unbounded_channel();
        tokio::task::spawn_local(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let acked = acked.clone();
                tokio::task::spawn_local(async move {
                    // SETTINGS: one entry, MAX_CONCURRENT_STREAMS (3) = 0.
                    let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0];
                    stream.write_all(&settings).await?;
                    let mut preface = [0; 24];
                    stream.read_exact(&mut preface).await?;
                    loop {
                        let mut header = [0; 9];
                        stream.read_exact(&mut header).await?;
                        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
                        let mut payload = vec![0; length as usize];
                        stream.read_exact(&mut payload).await?;
                        let (kind, flags) = (header[3], header[4]);
                        if kind == 4 && flags & 1 == 1 {
                            let _ = acked.send(());
                        }
                        if kind == 1 {
                            // RST_STREAM on its stream, REFUSED_STREAM (7).
                            let mut reset = vec![0, 0, 4, 3, 0];
                            reset.extend(&header[5..9]);
                            reset.extend(7u32.to_be_bytes());
                            stream.write_all(&reset).await?;
                        }
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), std::io::Error>(())
                });
            }
        });
        (address, acks)
    }

    /// A stream handed to a connection whose server's 0 hyper has already
    /// applied goes out and is refused, as Envoy's first streams on a
    /// connection are, instead of being held by hyper for a stream the
    /// server will never allow (with no route timeout, for ever).
    #[tokio::test]
    async fn a_stream_given_after_the_servers_0_is_refused_not_held() {
        LocalSet::new()
            .run_until(async {
                let (address, mut acks) = refusing_server().await;
                let cluster = streams_limited(address, UNLIMITED);
                let key = key(&cluster);
                let pools = pools();
                let first = pools.h2(&key, &cluster, &TlsPlan::Plain).await;
                let first = first.expect("a stream");
                acks.recv().await.expect("the server's SETTINGS applied");
                let sent = get_on(address, &first);
                let answer = tokio::time::timeout(Duration::from_secs(30), sent).await;
                let error = answer.expect("refused, not held").expect_err("refused");
                assert_eq!(
                    ResetReason::of(&error),
                    ResetReason::RemoteRefusedStreamReset,
                    "{error:?}"
                );
            })
            .await;
    }

    /// A connection whose server allows no stream is let go once idle: a
    /// server answering 0 must not make the pool keep a connection per
    /// request until the idle timeout.
    #[tokio::test]
    async fn a_connection_whose_server_allows_no_stream_goes_once_idle() {
        LocalSet::new()
            .run_until(async {
                let address = h2_server(0).await;
                let cluster = streams_limited(address, UNLIMITED);
                let key = key(&cluster);
                let pools = pools();
                let plan = &TlsPlan::Plain;
                let first = pools.h2(&key, &cluster, plan).await.expect("a stream");
                // Refused, whether it went out before the server's 0 was
                // read or after.
                let sent = get_on(address, &first);
                let answer = tokio::time::timeout(Duration::from_secs(30), sent).await;
                let error = answer.expect("refused, not held").expect_err("refused");
                assert_eq!(
                    ResetReason::of(&error),
                    ResetReason::RemoteRefusedStreamReset
                );
                drop(first);
                let second = pools.h2(&key, &cluster, plan).await.expect("a stream");
                assert_eq!(streams_per_connection(&pools, &key), [1]);
                drop(second);
            })
            .await;
    }

    /// Idle HTTP/2 connections stay for the next burst, and go at the
    /// first sweep after they have been idle for the idle timeout.
    #[tokio::test]
    async fn idle_http2_connections_go_at_sweeps() {
        LocalSet::new()
            .run_until(async {
                let (address, accepted) = server().await;
                let limits = PoolLimits {
                    max_concurrent_streams: 1,
                    idle_timeout: Duration::from_millis(100),
                    ..PoolLimits::default()
                };
                let cluster = super::super::testing::cluster(&[address], limits, None);
                let key = key(&cluster);
                let pools = pools();
                let burst = (0..3).map(|_| pools.h2(&key, &cluster, &TlsPlan::Plain));
                let taken = futures_util::future::join_all(burst).await;
                assert_eq!(streams_per_connection(&pools, &key), [1, 1, 1]);
                drop(taken);
                pools.sweep();
                assert_eq!(streams_per_connection(&pools, &key), [0, 0, 0]);
                // The next burst finds them: no dial.
                let burst = (0..3).map(|_| pools.h2(&key, &cluster, &TlsPlan::Plain));
                let taken = futures_util::future::join_all(burst).await;
                assert_eq!(streams_per_connection(&pools, &key), [1, 1, 1]);
                // (The server counts a connection when its task runs.)
                for _ in 0..1000 {
                    tokio::task::yield_now().await;
                }
                assert_eq!(accepted.get(), 3, "connections dialed");
                drop(taken);
                pools.sweep();
                tokio::time::sleep(Duration::from_millis(150)).await;
                let next = pools.sweep();
                assert!(pools.shared_h2.borrow().is_empty());
                assert_eq!(next, None, "nothing left to sweep");
            })
            .await;
    }

    #[tokio::test]
    async fn an_http2_connection_given_its_requests_is_shared_no_more() {
        LocalSet::new()
            .run_until(async {
                let (address, _accepted) = server().await;
                let limits = PoolLimits {
                    max_requests_per_connection: 2,
                    ..PoolLimits::default()
                };
                let cluster = super::super::testing::cluster(&[address], limits, None);
                let key = key(&cluster);
                let pools = pools();
                let mut held = Vec::new();
                for expected in [vec![1], vec![], vec![1]] {
                    let shared = pools.h2(&key, &cluster, &TlsPlan::Plain).await;
                    held.push(shared.expect("a stream"));
                    assert_eq!(streams_per_connection(&pools, &key), expected);
                }
                // The first connection carried two streams, the second one so far.
                assert!(Rc::ptr_eq(&held[0].taken.stream.0, &held[1].taken.stream.0));
                assert!(!Rc::ptr_eq(
                    &held[1].taken.stream.0,
                    &held[2].taken.stream.0
                ));
            })
            .await;
    }

    /// Requests waiting for another's dial wait as pending requests where
    /// the cluster counts connections (past `http1MaxPendingRequests`:
    /// UO at once), and a dial that overflows the limits fails them with
    /// it, as a dial that fails does.
    #[tokio::test]
    async fn requests_waiting_for_a_dial_are_pending_requests() {
        LocalSet::new()
            .run_until(async {
                let (address, _accepted) = server().await;
                let limits = PoolLimits {
                    max_connections: 1,
                    max_pending: 2,
                    max_concurrent_streams: 2,
                    ..PoolLimits::default()
                };
                let mut cluster = super::super::testing::cluster(&[address], limits, None);
                Arc::get_mut(&mut cluster)
                    .expect("the only owner")
                    .connect_timeout = Duration::from_millis(200);
                let key = key(&cluster);
                let pools = pools();
                let plan = &TlsPlan::Plain;
                // The one connection, full with two streams.
                let _held = [
                    pools.h2(&key, &cluster, plan).await.expect("a stream"),
                    pools.h2(&key, &cluster, plan).await.expect("a stream"),
                ];
                // The third dials, waiting as a pending request for a slot;
                // the fourth waits for the third's dial, pending too; the
                // fifth finds no pending place.
                let (third, fourth, fifth) = futures_util::future::join3(
                    pools.h2(&key, &cluster, plan),
                    pools.h2(&key, &cluster, plan),
                    pools.h2(&key, &cluster, plan),
                )
                .await;
                let overflow = |result: Result<SharedH2, AcquireError>| match result {
                    Err(AcquireError::Overflow(limit)) => limit,
                    other => panic!("{:?}", other.err()),
                };
                assert_eq!(overflow(third), MAX_CONNECTIONS);
                assert_eq!(overflow(fourth), MAX_CONNECTIONS, "told by the dial");
                assert_eq!(overflow(fifth), MAX_PENDING);
                assert_eq!(cluster.state.pending.load(Ordering::Relaxed), 0);
            })
            .await;
    }

    /// An HTTP/2 connection's slot is held by its socket: while a stream is
    /// in flight it counts, even once no sender is left (hyper's connection
    /// future ends then).
    #[tokio::test]
    async fn a_connection_no_longer_shared_keeps_its_slot_while_streams_run() {
        LocalSet::new()
            .run_until(async {
                let (address, _accepted) = server().await;
                let limits = PoolLimits {
                    max_connections: 1,
                    max_requests_per_connection: 1,
                    ..PoolLimits::default()
                };
                let cluster = super::super::testing::cluster(&[address], limits, None);
                let key = key(&cluster);
                let pools = pools();
                let mut shared = pools
                    .h2(&key, &cluster, &TlsPlan::Plain)
                    .await
                    .expect("a stream");
                // Given its one request, the connection is shared no more:
                // the request's sender is its last.
                assert_eq!(streams_per_connection(&pools, &key), Vec::<u64>::new());
                let request = http::Request::get("http://svc/")
                    .body(UpstreamBody::Full(None))
                    .expect("a request");
                let in_flight = shared.taken.sender.send_request(request);
                drop(shared);
                let unanswered = tokio::task::spawn_local(in_flight);
                for _ in 0..1000 {
                    tokio::task::yield_now().await;
                }
                assert!(!unanswered.is_finished(), "the server never answers");
                assert_eq!(cluster.state.connections.load(Ordering::Relaxed), 1);
                unanswered.abort();
            })
            .await;
    }

    #[tokio::test]
    async fn requests_waiting_for_a_dial_fail_with_it() {
        LocalSet::new()
            .run_until(async {
                let closed = {
                    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
                    listener.local_addr().expect("an address")
                };
                let cluster = streams_limited(closed, UNLIMITED);
                let key = key(&cluster);
                let pools = pools();
                let burst = (0..3).map(|_| pools.h2(&key, &cluster, &TlsPlan::Plain));
                let results = futures_util::future::join_all(burst).await;
                assert!(
                    results
                        .iter()
                        .all(|r| matches!(r, Err(AcquireError::Connect { .. }))),
                    "every request failed"
                );
                // One dialed; the other two waited for its dial.
                let told = results
                    .iter()
                    .filter(|r| {
                        matches!(r, Err(AcquireError::Connect { source, .. })
                            if source.to_string() == WAITED_FOR_A_FAILED_DIAL)
                    })
                    .count();
                assert_eq!(told, 2);
                // Nothing is left waiting or counted as dialing.
                pools.sweep();
                assert!(pools.shared_h2.borrow().is_empty());
            })
            .await;
    }

    #[test]
    fn waits_for_connection_slots_add_up() {
        let ms = Duration::from_millis;
        assert_eq!(add_waits(None, None), None);
        assert_eq!(add_waits(Some(ms(3)), None), Some(ms(3)));
        assert_eq!(add_waits(None, Some(ms(4))), Some(ms(4)));
        assert_eq!(add_waits(Some(ms(3)), Some(ms(4))), Some(ms(7)));
    }

    /// A request is pending while its own connection is dialed, as Envoy's
    /// pool counts it, and no longer once the dial ends; a dial under way
    /// does not make a connection given back meanwhile close (only a
    /// request waiting for a connection slot does).
    #[tokio::test]
    async fn a_dialing_request_is_pending_and_connections_given_back_stay() {
        LocalSet::new()
            .run_until(async {
                // (a dial to it waits a second for its SYN to be retried)
                let (listener, address, cluster) = backlogged(2, 1);
                let key = key(&cluster);
                let (a, b, c) = (pools(), pools(), pools());
                let (first, lease) = a
                    .h1(&key, &cluster, &TlsPlan::Plain)
                    .await
                    .expect("a connection");
                let _first_accepted = listener.accept().await.expect("accepted");
                assert_eq!(cluster.state.pending.load(Ordering::Relaxed), 0);
                let _fillers = [
                    TcpStream::connect(address).await.expect("queued"),
                    TcpStream::connect(address).await.expect("queued"),
                ];

                let dialing = {
                    let (b, key, cluster) = (b.clone(), key.clone(), cluster.clone());
                    tokio::task::spawn_local(async move {
                        b.h1(&key, &cluster, &TlsPlan::Plain).await.map(|_| ())
                    })
                };
                while cluster.state.pending.load(Ordering::Relaxed) == 0 {
                    tokio::task::yield_now().await;
                }
                // The dial holds the one pending place: a request that finds
                // no connection ready is turned away (UO).
                let overflow = c.h1(&key, &cluster, &TlsPlan::Plain).await;
                assert!(matches!(overflow, Err(AcquireError::Overflow(MAX_PENDING))));
                // The dial does not make a connection given back close.
                lease.reuse(first);
                assert!(a.has_idle(&key), "the connection given back was closed");

                let _drained = (
                    listener.accept().await.expect("accepted"),
                    listener.accept().await.expect("accepted"),
                );
                dialing.await.expect("joined").expect("a connection");
                assert_eq!(cluster.state.pending.load(Ordering::Relaxed), 0);
            })
            .await;
    }

    /// A dial a request of a worker's began (to a listener whose full
    /// accept queue holds it a second) and left, as its route timeout or
    /// its client would drop it, while the dial waits.
    struct Abandoned {
        a: Rc<Pools>,
        key: PoolKey,
        cluster: Arc<Cluster>,
        listener: TcpListener,
        fillers: [TcpStream; 2],
    }

    impl Abandoned {
        /// The connection the dial made, once the listener has accepted
        /// it (the queue ahead of it drained).
        async fn dialed(self) -> (Rc<Pools>, PoolKey, Arc<Cluster>, TcpStream) {
            let listener = &self.listener;
            let _drained = (
                listener.accept().await.expect("accepted"),
                listener.accept().await.expect("accepted"),
            );
            let (dialed, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
                .await
                .expect("the dial went on")
                .expect("accepted");
            drop(self.fillers);
            (self.a, self.key, self.cluster, dialed)
        }
    }

    /// [`Abandoned`]: an HTTP/2 request's dial when `h2`.
    async fn abandon_a_dial(h2: bool) -> Abandoned {
        let (listener, address, cluster) = backlogged(10, 10);
        let key = key(&cluster);
        let a = pools();
        let fillers = [
            TcpStream::connect(address).await.expect("queued"),
            TcpStream::connect(address).await.expect("queued"),
        ];
        let gone = {
            let (a, key, cluster) = (a.clone(), key.clone(), cluster.clone());
            tokio::task::spawn_local(async move {
                if h2 {
                    let _ = a.h2(&key, &cluster, &TlsPlan::Plain).await;
                } else {
                    let _ = a.h1(&key, &cluster, &TlsPlan::Plain).await;
                }
            })
        };
        while cluster.state.pending.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        assert_eq!(cluster.state.pending.load(Ordering::Relaxed), 0);
        Abandoned {
            a,
            key,
            cluster,
            listener,
            fillers,
        }
    }

    /// A dial goes on when the request that began it goes (its route
    /// timeout, its client), as Envoy's pool goes on connecting: the
    /// connection is pooled idle, and the next request takes it.
    #[tokio::test]
    async fn a_dial_outlives_the_request_that_began_it() {
        LocalSet::new()
            .run_until(async {
                let (a, key, cluster, _dialed) = abandon_a_dial(false).await.dialed().await;
                let pooled = async {
                    while !a.has_idle(&key) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                };
                tokio::time::timeout(Duration::from_secs(30), pooled)
                    .await
                    .expect("the connection is pooled idle");
                let (_, lease) = a
                    .h1(&key, &cluster, &TlsPlan::Plain)
                    .await
                    .expect("a connection");
                assert!(lease.reused, "the next request dialed anew");
            })
            .await;
    }

    /// A connection's lifetime (`maxConnectionDuration`) runs from when
    /// it is up, as Envoy starts its timer: a dial held a second and more
    /// does not make a connection that expires before, or soon after, its
    /// first request.
    #[tokio::test]
    async fn a_connections_lifetime_runs_from_when_it_is_up() {
        LocalSet::new()
            .run_until(async {
                let (listener, address, mut cluster) = backlogged(10, 10);
                let lifetime = Duration::from_secs(1);
                Arc::get_mut(&mut cluster)
                    .expect("the only owner")
                    .limits
                    .max_connection_duration = Some(lifetime);
                let key = key(&cluster);
                let a = pools();
                let fillers = [
                    TcpStream::connect(address).await.expect("queued"),
                    TcpStream::connect(address).await.expect("queued"),
                ];
                let request = {
                    let (a, key, cluster) = (a.clone(), key.clone(), cluster.clone());
                    tokio::task::spawn_local(async move {
                        a.h1(&key, &cluster, &TlsPlan::Plain)
                            .await
                            .map(|(_, lease)| lease)
                    })
                };
                while cluster.state.pending.load(Ordering::Relaxed) == 0 {
                    tokio::task::yield_now().await;
                }
                let began = Instant::now();
                // (held past a lifetime: the queue drained only after it)
                tokio::time::sleep(lifetime + Duration::from_millis(500)).await;
                let _drained = (
                    listener.accept().await.expect("accepted"),
                    listener.accept().await.expect("accepted"),
                );
                drop(fillers);
                let held_until = Instant::now();
                let lease = tokio::time::timeout(Duration::from_secs(30), request)
                    .await
                    .expect("the dial went on")
                    .expect("joined")
                    .expect("a connection");
                let expires = lease.expires.expect("a lifetime");
                assert!(
                    expires >= held_until + lifetime,
                    "expires {:?} after the dial began, held {:?}",
                    expires - began,
                    held_until - began
                );
            })
            .await;
    }

    /// The next request takes over a dial whose request went, as Envoy's
    /// pool gives a connecting connection to its next pending request,
    /// rather than dialing another: one dial, and the request pending
    /// while it waits for it.
    #[tokio::test]
    async fn a_request_takes_over_a_dial_whose_request_went() {
        LocalSet::new()
            .run_until(async {
                let abandoned = abandon_a_dial(false).await;
                let next = {
                    let (a, key) = (abandoned.a.clone(), abandoned.key.clone());
                    let cluster = abandoned.cluster.clone();
                    tokio::task::spawn_local(async move {
                        a.h1(&key, &cluster, &TlsPlan::Plain)
                            .await
                            .map(|(connection, lease)| (connection, lease.reused))
                    })
                };
                let pending = &abandoned.cluster.state.pending;
                while pending.load(Ordering::Relaxed) == 0 {
                    tokio::task::yield_now().await;
                }
                let dials = |a: &Pools, key: &PoolKey| a.h1_dials.borrow().get(key).map(Vec::len);
                assert_eq!(dials(&abandoned.a, &abandoned.key), Some(1), "one dial");
                let (a, key, cluster, _dialed) = abandoned.dialed().await;
                let (_connection, reused) = next.await.expect("joined").expect("a connection");
                assert!(!reused);
                assert_eq!(dials(&a, &key), None, "the dial ended");
                assert_eq!(cluster.state.pending.load(Ordering::Relaxed), 0);
            })
            .await;
    }

    /// A dial that fails fails the requests of its worker waiting for a
    /// slot for it, as Envoy's pool fails its pending requests when a
    /// connection fails to connect, rather than each dialing in turn after
    /// it (one connect timeout each).
    #[tokio::test]
    async fn requests_waiting_for_a_slot_fail_with_the_dial_that_failed() {
        LocalSet::new()
            .run_until(async {
                let (_listener, address, mut cluster) = backlogged(1, 8);
                Arc::get_mut(&mut cluster)
                    .expect("the only owner")
                    .connect_timeout = Duration::from_millis(1500);
                let key = key(&cluster);
                let a = pools();
                let _fillers = [
                    TcpStream::connect(address).await.expect("queued"),
                    TcpStream::connect(address).await.expect("queued"),
                ];
                let request = || {
                    let (a, key, cluster) = (a.clone(), key.clone(), cluster.clone());
                    tokio::task::spawn_local(async move {
                        a.h1(&key, &cluster, &TlsPlan::Plain)
                            .await
                            .map(|_| ())
                            .map_err(|error| error.to_string())
                    })
                };
                let first = request();
                while cluster.state.pending.load(Ordering::Relaxed) == 0 {
                    tokio::task::yield_now().await;
                }
                let second = request();
                while !waits(&a, &key) {
                    tokio::task::yield_now().await;
                }
                let first = first.await.expect("joined");
                let second = second.await.expect("joined");
                assert!(first.is_err(), "the dial timed out");
                let second = second.expect_err("failed with the dial");
                assert!(second.contains(WAITED_FOR_A_FAILED_DIAL), "{second}");
            })
            .await;
    }

    /// An HTTP/2 dial goes on too when the request that began it goes: the
    /// connection is shared idle, and the next request takes a stream on
    /// it rather than dialing anew (with a handshake slower than the route
    /// timeout, every request used to begin a dial and cut it).
    #[tokio::test]
    async fn an_http2_dial_outlives_the_request_that_began_it() {
        LocalSet::new()
            .run_until(async {
                let (a, key, cluster, dialed) = abandon_a_dial(true).await.dialed().await;
                tokio::task::spawn_local(async move {
                    let service = hyper::service::service_fn(|_| async {
                        let empty = http_body_util::Empty::<bytes::Bytes>::new();
                        Ok::<_, std::convert::Infallible>(http::Response::new(empty))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(LocalExec)
                        .serve_connection(TokioIo::new(dialed), service)
                        .await;
                });
                let shared = async {
                    while streams_per_connection(&a, &key) != [0] {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                };
                tokio::time::timeout(Duration::from_secs(30), shared)
                    .await
                    .expect("the connection is shared idle");
                let opened = a.opened.get();
                let taken = a
                    .h2(&key, &cluster, &TlsPlan::Plain)
                    .await
                    .expect("a stream");
                assert_eq!(streams_per_connection(&a, &key), [1]);
                assert_eq!(a.opened.get(), opened, "the next request dialed anew");
                drop(taken);
            })
            .await;
    }

    /// The wait a request reports (the `connection_pool_wait` span event)
    /// is its wait for a connection slot, not the dial that follows it: it
    /// used to run on to the end of the TCP and TLS handshakes.
    #[tokio::test]
    async fn the_wait_reported_ends_when_the_slot_is_granted() {
        LocalSet::new()
            .run_until(async {
                let (listener, address, cluster) = backlogged(1, 1);
                let key = key(&cluster);
                let a = pools();
                let (first, lease) = a
                    .h1(&key, &cluster, &TlsPlan::Plain)
                    .await
                    .expect("a connection");
                let _first_accepted = listener.accept().await.expect("accepted");
                let fillers = [
                    TcpStream::connect(address).await.expect("queued"),
                    TcpStream::connect(address).await.expect("queued"),
                ];

                let began = Instant::now();
                let waiting = {
                    let (a, key, cluster) = (a.clone(), key.clone(), cluster.clone());
                    tokio::task::spawn_local(async move {
                        a.h1(&key, &cluster, &TlsPlan::Plain)
                            .await
                            .map(|(_, lease)| lease.waited)
                    })
                };
                while !waits(&a, &key) {
                    tokio::task::yield_now().await;
                }
                // The slot comes free at once; the queue only later.
                drop((first, lease));
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _accepted = (
                    listener.accept().await.expect("accepted"),
                    listener.accept().await.expect("accepted"),
                );
                let waited = waiting.await.expect("joined").expect("a connection");
                let took = began.elapsed();
                drop(fillers);
                let waited = waited.expect("the request waited as a pending one");
                // (On a machine loaded enough that it dials after the queue
                // is drained, the dial is quick and the test asks less.)
                assert!(
                    waited < Duration::from_millis(500),
                    "{waited:?} of {took:?} counted as the wait for a slot"
                );
            })
            .await;
    }

    /// HTTP/1.1 and HTTP/2 connections to one endpoint are counted apart,
    /// as Envoy keeps a pool per protocol: a worker holding an HTTP/1.1
    /// connection at the limit still opens an HTTP/2 one (the HTTP/1.1 one
    /// would serve no HTTP/2 request, and an HTTP/2 request used to wait
    /// until the connect timeout).
    #[tokio::test]
    async fn each_protocol_may_hold_a_connection_past_the_limit() {
        LocalSet::new()
            .run_until(async {
                let address = h2_server(100).await;
                let cluster = limited(address, 1, 8);
                let key = key(&cluster);
                let a = pools();
                let lent = a
                    .h1(&key, &cluster, &TlsPlan::Plain)
                    .await
                    .expect("a connection");
                let stream = a.h2(&key, &cluster, &TlsPlan::Plain);
                let stream = tokio::time::timeout(Duration::from_secs(5), stream)
                    .await
                    .expect("no wait")
                    .expect("a stream");
                assert_eq!(stream.waited, None);
                let held = |a: &Pools| {
                    let held = a.held.borrow();
                    let counts = &held[&key];
                    (
                        counts.h1.load(Ordering::Relaxed),
                        counts.h2.load(Ordering::Relaxed),
                    )
                };
                assert_eq!(held(&a), (1, 1));
                assert_eq!(cluster.state.connections.load(Ordering::Relaxed), 2);
                drop(lent);
            })
            .await;
    }

    /// An upgrade at the limit while its worker holds an idle connection
    /// closes that one for its own (it cannot use it: hyper drives an
    /// upgrade's connection), rather than waiting for the connect timeout.
    #[tokio::test]
    async fn an_upgrade_at_the_limit_closes_an_idle_connection_for_its_own() {
        LocalSet::new()
            .run_until(async {
                let (address, _) = server().await;
                let cluster = limited(address, 1, 8);
                let key = key(&cluster);
                let a = pools();
                let (connection, lease) = a
                    .h1(&key, &cluster, &TlsPlan::Plain)
                    .await
                    .expect("a connection");
                lease.reuse(connection);
                let upgrade = a.h1_upgrade(&key, &cluster, &TlsPlan::Plain);
                let (_sender, _, _, _) = tokio::time::timeout(Duration::from_secs(5), upgrade)
                    .await
                    .expect("no wait for the connect timeout")
                    .expect("a connection");
                assert!(!a.has_idle(&key), "the idle one closed");
                assert_eq!(cluster.state.connections.load(Ordering::Relaxed), 1);
            })
            .await;
    }

    /// A key's count of the worker's connections stays while one is open,
    /// idle or lent, and goes at the first sweep after the last closed:
    /// endpoints that reloads replace leave no entry behind.
    #[tokio::test]
    async fn a_keys_connection_count_goes_with_its_last_connection() {
        LocalSet::new()
            .run_until(async {
                let (address, _) = server().await;
                let cluster = limited(address, 1, 8);
                let key = key(&cluster);
                let a = pools();
                let count = |a: &Pools| {
                    let held = a.held.borrow();
                    held.get(&key).map(|c| c.h1.load(Ordering::Relaxed))
                };
                let (connection, lease) = a
                    .h1(&key, &cluster, &TlsPlan::Plain)
                    .await
                    .expect("a connection");
                assert_eq!(count(&a), Some(1));
                lease.reuse(connection);
                a.sweep();
                assert_eq!(count(&a), Some(1), "an idle connection counts");
                let (connection, lease) = a
                    .h1(&key, &cluster, &TlsPlan::Plain)
                    .await
                    .expect("the idle connection");
                assert!(lease.reused);
                drop((connection, lease));
                assert_eq!(count(&a), Some(0));
                a.sweep();
                assert_eq!(count(&a), None, "forgotten");
                assert_eq!(cluster.state.connections.load(Ordering::Relaxed), 0);
            })
            .await;
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_its_idle_timeout() {
        LocalSet::new()
            .run_until(async {
                let (address, _) = server().await;
                let limits = PoolLimits {
                    idle_timeout: Duration::from_millis(200),
                    ..PoolLimits::default()
                };
                let cluster = super::super::testing::cluster(&[address], limits, None);
                let key = key(&cluster);
                let pools = pools();
                tokio::task::spawn_local(pools.clone().keep_swept(no_reloads()));
                tokio::task::yield_now().await;
                assert_eq!(pools.sweep_at.get(), None, "nothing pooled: no deadline");
                let (connection, lease) = pools
                    .h1(&key, &cluster, &TlsPlan::Plain)
                    .await
                    .expect("a connection");
                lease.reuse(connection);
                assert!(pools.has_idle(&key));
                // The sweeper, asleep with no deadline, was woken by the
                // pooled connection and closes it at its idle timeout.
                let give_up = Instant::now() + Duration::from_secs(30);
                while pools.has_idle(&key) {
                    assert!(
                        Instant::now() < give_up,
                        "the idle connection was never closed"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert_eq!(
                    pools.sweep_at.get(),
                    None,
                    "nothing pooled again: no deadline"
                );
            })
            .await;
    }

    /// A sweeper that hears of no reload (its config's sender is gone).
    fn no_reloads() -> watch::Receiver<Arc<Poolings>> {
        watch::channel(Arc::default()).1
    }

    /// A reload that changes a cluster's pool settings lets go of the
    /// connections pooled under the old ones at once, as Envoy drains a
    /// changed cluster's pools: before, no request asked for them again,
    /// and they idled for their idle timeout (an hour by default). Pools
    /// whose settings the reload kept, and those of clusters built per
    /// connection, stay.
    #[tokio::test]
    async fn a_reload_that_changes_pool_settings_lets_the_old_pools_go() {
        LocalSet::new()
            .run_until(async {
                let (address, accepted) = server().await;
                let per_connection = |n| PoolLimits {
                    max_requests_per_connection: n,
                    ..PoolLimits::default()
                };
                let old = super::super::testing::cluster(&[address], per_connection(10), None);
                let new = super::super::testing::cluster(&[address], per_connection(20), None);
                let kept = super::super::testing::cluster(&[address], per_connection(30), None);
                let unlisted = super::super::testing::cluster(&[address], per_connection(40), None);
                let pools = pools();
                let (tell, poolings) = watch::channel(Arc::new(Poolings::of([&old, &kept])));
                tokio::task::spawn_local(pools.clone().keep_swept(poolings));
                for cluster in [&old, &kept, &unlisted] {
                    let (connection, lease) = pools
                        .h1(&key(cluster), cluster, &TlsPlan::Plain)
                        .await
                        .expect("a connection");
                    lease.reuse(connection);
                }
                // One more of the old settings, lent across two reloads.
                let (lent, lease) = pools
                    .h1(&key(&old), &old, &TlsPlan::Plain)
                    .await
                    .expect("a connection");
                assert!(lease.reused);
                let (lent_too, lease_too) = pools
                    .h1(&key(&old), &old, &TlsPlan::Plain)
                    .await
                    .expect("a connection");
                lease_too.reuse(lent_too);
                while accepted.get() < 4 {
                    tokio::task::yield_now().await; // the server's accepts
                }
                tell.send_replace(Arc::new(Poolings::of([&new, &kept])));
                let give_up = Instant::now() + Duration::from_secs(30);
                while pools.has_idle(&key(&old)) {
                    assert!(Instant::now() < give_up, "the old pool was kept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert!(pools.has_idle(&key(&kept)), "a pool the reload kept went");
                assert!(pools.has_idle(&key(&unlisted)), "a pool no config set went");
                // A second reload, retiring `kept`: `old` stays retired.
                tell.send_replace(Arc::new(Poolings::of([&new])));
                while pools.has_idle(&key(&kept)) {
                    assert!(Instant::now() < give_up, "the kept pool was kept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                lease.reuse(lent);
                assert!(
                    !pools.has_idle(&key(&old)),
                    "a retired connection was pooled"
                );
                let (_, lease) = pools
                    .h1(&key(&new), &new, &TlsPlan::Plain)
                    .await
                    .expect("a connection");
                assert!(!lease.reused, "the new settings took an old connection");
            })
            .await;
    }

    /// Settings set where none were retire the endpoint's default pool,
    /// unless another cluster still reaches the endpoint without settings.
    #[tokio::test]
    async fn settings_set_where_none_were_let_the_default_pool_go() {
        LocalSet::new()
            .run_until(async {
                let (address, _) = server().await;
                let plain = super::super::testing::cluster(&[address], PoolLimits::default(), None);
                let limits = PoolLimits {
                    max_requests_per_connection: 10,
                    ..PoolLimits::default()
                };
                let set = super::super::testing::cluster(&[address], limits, None);
                assert!(plain.pooling().is_none());
                let pools = pools();
                let (tell, poolings) = watch::channel(Arc::new(Poolings::of([&plain])));
                tokio::task::spawn_local(pools.clone().keep_swept(poolings));
                let (connection, lease) = pools
                    .h1(&key(&plain), &plain, &TlsPlan::Plain)
                    .await
                    .expect("a connection");
                lease.reuse(connection);
                // Another cluster still reaches it plainly: kept.
                tell.send_replace(Arc::new(Poolings::of([&set, &plain])));
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert!(pools.has_idle(&key(&plain)), "a default pool in use went");
                tell.send_replace(Arc::new(Poolings::of([&set])));
                let give_up = Instant::now() + Duration::from_secs(30);
                while pools.has_idle(&key(&plain)) {
                    assert!(Instant::now() < give_up, "the default pool was kept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
    }

    #[tokio::test]
    async fn connections_are_reused_and_unlimited_clusters_count_none() {
        LocalSet::new()
            .run_until(async {
                let (address, accepted) = server().await;
                let cluster = limited(address, UNLIMITED, UNLIMITED);
                let key = key(&cluster);
                let pools = pools();
                let (connection, lease) = pools
                    .h1(&key, &cluster, &TlsPlan::Plain)
                    .await
                    .expect("a connection");
                assert!(!lease.reused);
                lease.reuse(connection);
                let (_, again) = pools
                    .h1(&key, &cluster, &TlsPlan::Plain)
                    .await
                    .expect("a connection");
                assert!(again.reused);
                while accepted.get() == 0 {
                    tokio::task::yield_now().await; // the server's accept
                }
                assert_eq!(accepted.get(), 1);
                assert_eq!(cluster.state.connections.load(Ordering::Relaxed), 0);
            })
            .await;
    }
}
