//! A worker's shared HTTP/2 connections to one upstream pool key, and the
//! streams each carries: a request takes a stream on the first connection
//! with room under the cluster's `maxConcurrentStreams` (DestinationRule
//! `connectionPool.http`, Envoy's `max_concurrent_streams` of the cluster's
//! `http2_protocol_options`) and under the server's own
//! `SETTINGS_MAX_CONCURRENT_STREAMS` ([`ServerStreamLimit`]), and a
//! connection is opened when none has room, as Envoy's HTTP/2 pool counts
//! both in a connection's capacity and opens one.
//!
//! Requests that find no room while connections are being dialed wait for
//! those dials when the dials' room would take them (each new connection
//! carries `maxConcurrentStreams`, `maxRequestsPerConnection` or the
//! server's limit as last heard on the key's connections
//! ([`Connections::starting_limit`]), whichever is fewest, the dialing
//! request's stream included), so a burst opens as many
//! connections as its streams need, not one per request. A dial that fails
//! (or overflows the cluster's limits) fails the requests that waited for
//! it with its own error, as Envoy's pool fails the requests pending on a
//! connection that could not be made.
//!
//! An idle connection stays for the next burst until its idle timeout, as
//! in Envoy's pool (streams go to the first connection with room, so the
//! later ones are the ones left idle; hyper closes one once no sender is
//! left and its streams are done). A connection given
//! `maxRequestsPerConnection` streams is shared no more, as Envoy drains
//! it: it closes once they end; so is one past its lifetime
//! (`maxConnectionDuration`).

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use tokio::sync::Notify;

use super::body::{BoxError, UpstreamBody};
use super::peer_settings::{INITIAL_LIMIT, ServerStreamLimit};
use super::pool::{AcquireError, UpstreamPeer};
use super::reset_reason::ResetBeforeEnd;
use crate::model::live::PoolLimits;

/// One shared HTTP/2 connection.
struct Shared {
    sender: http2::SendRequest<UpstreamBody>,
    peer: UpstreamPeer,
    /// The most streams the server lets it carry at once.
    server_limit: ServerStreamLimit,
    /// Streams it carries now.
    streams: Rc<Cell<u64>>,
    /// Streams it has been given.
    served: u64,
    /// When a sweep first found it carrying none (since then).
    idle_since: Option<Instant>,
    /// The end of its lifetime (`maxConnectionDuration`): given no stream
    /// after it, it closes once its streams end.
    expires: Option<Instant>,
}

/// One in a count ([`Cell`]) until dropped.
#[derive(Debug)]
pub struct Counted(pub(super) Rc<Cell<u64>>);

impl Counted {
    fn new(count: &Rc<Cell<u64>>) -> Self {
        count.set(count.get() + 1);
        Self(count.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// A stream taken on a shared connection.
pub struct Taken {
    /// The connection to send on.
    pub sender: http2::SendRequest<UpstreamBody>,
    /// The server's identity, on mTLS connections.
    pub peer: UpstreamPeer,
    /// The stream, counted on its connection until dropped: held by the
    /// request's response body ([`StreamBody`]) until it ends or is cut
    /// (or dropped when no response came).
    pub stream: Counted,
}

/// A response body read from a shared connection's stream, counted on the
/// connection until dropped (a cut drops it with the stream: the stream is
/// reset, and so no longer the connection's).
pub struct StreamBody {
    body: Incoming,
    _stream: Counted,
}

impl StreamBody {
    /// `body`, read from the stream `stream` counts.
    pub fn new(body: Incoming, stream: Counted) -> Self {
        Self {
            body,
            _stream: stream,
        }
    }
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = BoxError;

    /// The stream's frames, and its end; an end without `END_STREAM` (a
    /// `RST_STREAM(NO_ERROR)` or a GOAWAY with `NO_ERROR` before it, which
    /// hyper ends the body at as if it were whole) is [`ResetBeforeEnd`].
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(None) if !self.body.is_end_stream() => {
                Poll::Ready(Some(Err(Box::new(ResetBeforeEnd))))
            }
            polled => polled.map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection a dial made.
pub struct Opened {
    /// Its sender.
    pub sender: http2::SendRequest<UpstreamBody>,
    /// The server's identity, on mTLS connections.
    pub peer: UpstreamPeer,
    /// The most streams the server lets it carry at once (its
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`, RFC 9113 §6.5.2), as its frames
    /// bring it.
    pub server_limit: ServerStreamLimit,
}

/// Why a dial made no connection, told to the requests that waited for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialFailure {
    /// TCP connect or the HTTP/2 handshake failed.
    Connect,
    /// TCP connect did not finish within the connect timeout (a TLS
    /// handshake that did not is [`Self::Tls`] with its `timeout` reason).
    Timeout,
    /// The TLS handshake failed, for this reason.
    Tls(&'static str),
    /// The cluster's connection limits turned it away: the
    /// DestinationRule field of the limit.
    Overflow(&'static str),
}

/// What ended dials tell the requests waiting for them.
#[derive(Default)]
struct Dials {
    /// Dials that ended so far (a waiter compares it before and after).
    ended: Cell<u64>,
    /// Dials that failed so far.
    failed: Cell<u64>,
    /// Why the last one failed.
    last_failure: Cell<Option<DialFailure>>,
    /// Told when a dial ends, made, failed or given up.
    notify: Notify,
}

/// The shared connections of one pool key on one worker.
#[derive(Default)]
pub struct Connections {
    shared: Vec<Shared>,
    /// The cluster's idle timeout, as the last connection was made (what
    /// sweeps apply).
    idle_timeout: Duration,
    /// Connections being dialed for this key.
    dialing: Rc<Cell<u64>>,
    /// Requests waiting for those dials.
    waiting: Rc<Cell<u64>>,
    dials: Rc<Dials>,
    /// The server's `SETTINGS_MAX_CONCURRENT_STREAMS` as last heard on one
    /// of these connections: what a new one is counted at until its own
    /// SETTINGS arrive.
    heard: Option<u64>,
}

/// What a request that found no room does.
pub enum NoRoom {
    /// Waits for the dials under way: their room would take it.
    Wait(Waiting),
    /// Dials a connection itself, counted as dialing while it holds this.
    Dial(Dialing),
}

/// A request waiting for the dials under way, counted until dropped.
pub struct Waiting {
    _waiting: Counted,
    dials: Rc<Dials>,
    ended_before: u64,
    failed_before: u64,
}

impl Waiting {
    /// Waits until a dial ends; the failure of one that failed meanwhile.
    pub async fn dialed(self) -> Result<(), DialFailure> {
        loop {
            let notified = self.dials.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.dials.ended.get() != self.ended_before {
                break;
            }
            notified.await;
        }
        if self.dials.failed.get() == self.failed_before {
            return Ok(());
        }
        Err(self
            .dials
            .last_failure
            .get()
            .unwrap_or(DialFailure::Connect))
    }
}

/// A dial under way, counted until dropped; its end (made, failed or given
/// up) wakes the requests waiting for dials.
pub struct Dialing {
    _dialing: Counted,
    dials: Rc<Dials>,
}

impl DialFailure {
    /// What a dial that failed with `error` tells its waiters.
    pub fn of(error: &AcquireError) -> Self {
        match error {
            AcquireError::Tls { reason, .. } => Self::Tls(reason),
            AcquireError::Overflow(limit) => Self::Overflow(limit),
            AcquireError::Connect { source, .. }
                if source.kind() == std::io::ErrorKind::TimedOut =>
            {
                Self::Timeout
            }
            AcquireError::Connect { .. } | AcquireError::Handshake { .. } => Self::Connect,
        }
    }
}

impl Dialing {
    /// The dial made no connection: the requests waiting for it fail with
    /// `failure`.
    pub fn failed(self, failure: DialFailure) {
        self.dials.failed.set(self.dials.failed.get() + 1);
        self.dials.last_failure.set(Some(failure));
    }
}

impl Drop for Dialing {
    fn drop(&mut self) {
        self.dials.ended.set(self.dials.ended.get() + 1);
        self.dials.notify.notify_waiters();
    }
}

impl Connections {
    /// A stream on the first live connection with fewer streams than
    /// `maxConcurrentStreams` and the server's limit;
    /// a connection given its `maxRequestsPerConnection`-th stream is
    /// given no more: no longer shared, it closes once its streams end.
    pub fn take(&mut self, limits: &PoolLimits) -> Option<Taken> {
        let at = self.prune(limits)?;
        let shared = &mut self.shared[at];
        shared.served += 1;
        shared.idle_since = None;
        let taken = Taken {
            sender: shared.sender.clone(),
            peer: shared.peer.clone(),
            stream: Counted::new(&shared.streams),
        };
        if spent(shared.served, limits) {
            self.shared.remove(at);
        }
        Some(taken)
    }

    /// Drops closed connections and idle ones whose server allows no
    /// stream. Returns where the first with room is.
    fn prune(&mut self, limits: &PoolLimits) -> Option<usize> {
        // (A connection past `maxRequestsPerConnection` is left only by a
        // reload that lowered it.)
        self.shared
            .retain(|c| c.is_live() && !spent(c.served, limits) && !c.idle_and_refusing());
        let limit = limits.max_concurrent_streams;
        self.shared.iter().position(|c| c.has_room(limit))
    }

    /// Whether a live connection has room for one more stream.
    pub fn has_room(&self, limits: &PoolLimits) -> bool {
        let limit = limits.max_concurrent_streams;
        self.shared.iter().any(|c| c.is_live() && c.has_room(limit))
    }

    /// A sweep at `now`: [`Self::prune`] by `max_streams` (the key's
    /// `maxConcurrentStreams`), then connections idle for the idle
    /// timeout are let go: a connection a sweep finds carrying no stream
    /// goes at the first sweep an idle timeout later that still finds it
    /// so. Returns whether anything is left, held or under way (else the
    /// key's entry can go), and when the next sweep is due for it.
    pub fn sweep(&mut self, now: Instant, max_streams: u64) -> (bool, Option<Instant>) {
        let limits = PoolLimits {
            max_concurrent_streams: max_streams,
            ..PoolLimits::default()
        };
        self.prune(&limits);
        let timeout = self.idle_timeout;
        let mut due: Option<Instant> = None;
        let mut due_by = |deadline: Instant| {
            due = Some(due.map_or(deadline, |d: Instant| d.min(deadline)));
        };
        self.shared.retain_mut(|c| {
            if let Some(expires) = c.expires {
                due_by(expires);
            }
            if c.streams.get() > 0 {
                // Looked at again a timeout on (at least a second: a zero
                // timeout must not make the sweeper spin).
                c.idle_since = None;
                due_by(now + timeout.max(Duration::from_secs(1)));
                return true;
            }
            let deadline = *c.idle_since.get_or_insert(now) + timeout;
            let keep = deadline > now;
            if keep {
                due_by(deadline);
            }
            keep
        });
        let left = !self.shared.is_empty() || self.dialing.get() > 0 || self.waiting.get() > 0;
        (left, due)
    }

    /// The streams a new connection is counted at until its server's first
    /// SETTINGS: the server's limit as last heard on one of these
    /// connections (a server tells every connection the same, as a rule),
    /// at most [`INITIAL_LIMIT`] (h2's own starting limit, which the pool
    /// sets to this); `INITIAL_LIMIT` before any was heard (where Envoy
    /// counts a new connection at the cluster's cap).
    pub fn starting_limit(&mut self) -> u64 {
        // (A 0 is passing, a server draining or not ready: heard once, it
        // must not make every new connection start refused.)
        let latest = self
            .shared
            .iter()
            .rev()
            .find_map(|c| c.server_limit.heard().filter(|&streams| streams > 0));
        self.heard = latest.or(self.heard);
        self.heard.map_or(u64::from(INITIAL_LIMIT), |heard| {
            heard.min(u64::from(INITIAL_LIMIT))
        })
    }

    /// For a request that found no room: wait for the dials under way when
    /// their room (each new connection's streams, less the one its dialer
    /// takes) is not yet spoken for, else dial.
    pub fn no_room(&mut self, limits: &PoolLimits) -> NoRoom {
        let streams = match limits.max_requests_per_connection {
            0 => limits.max_concurrent_streams,
            most => limits.max_concurrent_streams.min(most),
        };
        let streams = streams.min(self.starting_limit());
        let room = self.dialing.get().saturating_mul(streams.saturating_sub(1));
        if self.waiting.get() < room {
            NoRoom::Wait(Waiting {
                _waiting: Counted::new(&self.waiting),
                dials: self.dials.clone(),
                ended_before: self.dials.ended.get(),
                failed_before: self.dials.failed.get(),
            })
        } else {
            NoRoom::Dial(Dialing {
                _dialing: Counted::new(&self.dialing),
                dials: self.dials.clone(),
            })
        }
    }

    /// A dial made a connection, whose lifetime ends at `expires`: shared
    /// from now on (unless one stream is all it may carry), with the
    /// dialer's stream on it. Its end wakes the requests that waited for
    /// the dial.
    pub fn made(
        &mut self,
        opened: Opened,
        expires: Option<Instant>,
        dial: Dialing,
        limits: &PoolLimits,
    ) -> Taken {
        let (sender, peer) = (opened.sender.clone(), opened.peer.clone());
        let streams = Rc::new(Cell::new(0));
        let stream = Counted::new(&streams);
        if !spent(1, limits) {
            self.share(opened, streams, 1, expires, limits);
        }
        drop(dial);
        Taken {
            sender,
            peer,
            stream,
        }
    }

    /// A dial made a connection its request no longer waits for (its
    /// route timeout passed, its client went): shared idle for the next
    /// request. Its end wakes the requests that waited for the dial.
    pub fn made_idle(
        &mut self,
        opened: Opened,
        expires: Option<Instant>,
        dial: Dialing,
        limits: &PoolLimits,
    ) {
        self.share(opened, Rc::default(), 0, expires, limits);
        drop(dial);
    }

    fn share(
        &mut self,
        opened: Opened,
        streams: Rc<Cell<u64>>,
        served: u64,
        expires: Option<Instant>,
        limits: &PoolLimits,
    ) {
        self.idle_timeout = limits.idle_timeout;
        self.shared.push(Shared {
            sender: opened.sender,
            peer: opened.peer,
            server_limit: opened.server_limit,
            streams,
            served,
            idle_since: None,
            expires,
        });
    }

    /// Forgets the connection `stream` is on: it refused a request (it is
    /// going away).
    pub fn forget(&mut self, stream: &Counted) {
        self.shared.retain(|c| !Rc::ptr_eq(&c.streams, &stream.0));
    }

    /// Whether the server of the connection `stream` is on allows no
    /// stream: its last SETTINGS said 0.
    pub fn allows_none(&self, stream: &Counted) -> bool {
        self.shared
            .iter()
            .find(|c| Rc::ptr_eq(&c.streams, &stream.0))
            .is_some_and(|c| c.server_limit.heard() == Some(0))
    }

    /// Streams on each shared connection, in order.
    #[cfg(test)]
    pub fn streams(&self) -> Vec<u64> {
        self.shared.iter().map(|c| c.streams.get()).collect()
    }
}

impl Shared {
    /// Whether it may be given streams: open, and within its lifetime.
    fn is_live(&self) -> bool {
        !self.sender.is_closed() && self.expires.is_none_or(|at| at > Instant::now())
    }

    /// Whether it carries fewer streams than `limit` (the cluster's
    /// `maxConcurrentStreams`) and than the server allows.
    fn has_room(&self, limit: u64) -> bool {
        self.streams.get() < limit.min(self.server_limit.get())
    }

    /// Whether it carries no stream and its server allows none: nothing
    /// would ever use it (a server answering `SETTINGS_MAX_CONCURRENT_STREAMS`
    /// 0 to every connection must not make the pool keep one per request).
    fn idle_and_refusing(&self) -> bool {
        self.streams.get() == 0 && self.server_limit.get() == 0
    }
}

/// Whether a connection that has been given `served` streams is given no
/// more (`maxRequestsPerConnection`, 0: no limit).
fn spent(served: u64, limits: &PoolLimits) -> bool {
    limits.max_requests_per_connection > 0 && served >= limits.max_requests_per_connection
}
