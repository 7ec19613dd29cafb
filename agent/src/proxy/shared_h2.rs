//! A worker's shared HTTP/2 connections to one upstream pool key, and the
//! streams each carries: a request takes a stream on the first connection
//! with room under the cluster's `maxConcurrentStreams` (DestinationRule
//! `connectionPool.http`, Envoy's `max_concurrent_streams` of the cluster's
//! `http2_protocol_options`), and a connection is opened when none has
//! room, as Envoy's HTTP/2 pool opens one.
//!
//! Requests that find no room while connections are being dialed wait for
//! those dials when the dials' room would take them (each new connection
//! carries `maxConcurrentStreams`, the dialing request's stream included),
//! so a burst opens as many connections as its streams need, not one per
//! request; a failed dial fails the requests that waited for it, as
//! Envoy's pool fails requests pending on a connection that could not be
//! made. A connection beyond the first is kept only while it carries
//! streams: once its last stream ends it goes at the next request or
//! sweep (hyper closes it when no sender is left and its streams are done).
//! A connection given `maxRequestsPerConnection` streams is shared no
//! more, as Envoy drains it: it closes once they end.

use std::cell::Cell;
use std::rc::Rc;

use hyper::client::conn::http2;
use tokio::sync::Notify;

use super::body::UpstreamBody;
use super::pool::PeerIdentity;
use crate::model::live::PoolLimits;

/// One shared HTTP/2 connection.
struct Shared {
    sender: http2::SendRequest<UpstreamBody>,
    peer: PeerIdentity,
    /// Streams it carries now.
    streams: Rc<Cell<u64>>,
    /// Streams it has been given.
    served: u64,
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
    pub peer: PeerIdentity,
    /// The stream, counted on its connection until dropped: held by the
    /// request until its response ends (or it got none).
    pub stream: Counted,
}

/// The shared connections of one pool key on one worker.
#[derive(Default)]
pub struct Connections {
    shared: Vec<Shared>,
    /// Connections being dialed for this key.
    dialing: Rc<Cell<u64>>,
    /// Requests waiting for those dials.
    waiting: Rc<Cell<u64>>,
    /// Dials that failed so far (a waiter compares it before and after).
    failed_dials: Rc<Cell<u64>>,
    /// Told when a dial ends, made, failed or given up.
    dialed: Rc<Notify>,
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
    dialed: Rc<Notify>,
    failed_dials: Rc<Cell<u64>>,
    failed_before: u64,
}

impl Waiting {
    /// Waits until a dial ends; `false` when one failed meanwhile.
    pub async fn dialed(self) -> bool {
        // (The wait began with this request's look at the connections,
        // with no await between: no dial can have ended unheard.)
        self.dialed.notified().await;
        self.failed_dials.get() == self.failed_before
    }
}

/// A dial under way, counted until dropped; its end (made, failed or given
/// up) wakes the requests waiting for dials.
pub struct Dialing {
    _dialing: Counted,
    dialed: Rc<Notify>,
}

impl Drop for Dialing {
    fn drop(&mut self) {
        self.dialed.notify_waiters();
    }
}

impl Connections {
    /// A stream on the first live connection with fewer than
    /// `maxConcurrentStreams` streams. Closed connections are dropped, and idle ones after it
    /// (surplus: an earlier one has room); a connection given its
    /// `maxRequestsPerConnection`-th stream is given no more: no longer
    /// shared, it closes once its streams end.
    pub fn take(&mut self, limits: &PoolLimits) -> Option<Taken> {
        self.shared.retain(|c| !c.sender.is_closed());
        let limit = limits.max_concurrent_streams;
        let at = self.shared.iter().position(|c| c.streams.get() < limit)?;
        let mut index = 0;
        self.shared.retain(|c| {
            index += 1;
            index <= at + 1 || c.streams.get() > 0
        });
        let shared = &mut self.shared[at];
        shared.served += 1;
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

    /// Whether a live connection has room for one more stream.
    pub fn has_room(&self, limits: &PoolLimits) -> bool {
        let limit = limits.max_concurrent_streams;
        self.shared
            .iter()
            .any(|c| !c.sender.is_closed() && c.streams.get() < limit)
    }

    /// Drops closed connections; whether anything is left, held or under
    /// way (else the key's entry can go).
    pub fn retain_live(&mut self) -> bool {
        self.shared.retain(|c| !c.sender.is_closed());
        !self.shared.is_empty() || self.dialing.get() > 0 || self.waiting.get() > 0
    }

    /// For a request that found no room: wait for the dials under way when
    /// their room (each new connection's streams, less the one its dialer
    /// takes) is not yet spoken for, else dial.
    pub fn no_room(&self, limits: &PoolLimits) -> NoRoom {
        let streams = match limits.max_requests_per_connection {
            0 => limits.max_concurrent_streams,
            most => limits.max_concurrent_streams.min(most),
        };
        let room = self.dialing.get().saturating_mul(streams.saturating_sub(1));
        if self.waiting.get() < room {
            NoRoom::Wait(Waiting {
                _waiting: Counted::new(&self.waiting),
                dialed: self.dialed.clone(),
                failed_dials: self.failed_dials.clone(),
                failed_before: self.failed_dials.get(),
            })
        } else {
            NoRoom::Dial(Dialing {
                _dialing: Counted::new(&self.dialing),
                dialed: self.dialed.clone(),
            })
        }
    }

    /// A dial made a connection: shared from now on, with the dialer's
    /// stream on it.
    pub fn made(
        &mut self,
        sender: http2::SendRequest<UpstreamBody>,
        peer: PeerIdentity,
        dial: Dialing,
        limits: &PoolLimits,
    ) -> Taken {
        let streams = Rc::new(Cell::new(0));
        let stream = Counted::new(&streams);
        if !spent(1, limits) {
            self.shared.push(Shared {
                sender: sender.clone(),
                peer: peer.clone(),
                streams,
                served: 1,
            });
        }
        drop(dial);
        Taken {
            sender,
            peer,
            stream,
        }
    }

    /// A dial failed: the requests waiting for it fail too.
    pub fn failed(&self, dial: Dialing) {
        self.failed_dials.set(self.failed_dials.get() + 1);
        drop(dial);
    }

    /// Streams on each shared connection, in order.
    #[cfg(test)]
    pub fn streams(&self) -> Vec<u64> {
        self.shared.iter().map(|c| c.streams.get()).collect()
    }

    /// Forgets the connection `stream` is on: it refused a request (it is
    /// going away).
    pub fn forget(&mut self, stream: &Counted) {
        self.shared.retain(|c| !Rc::ptr_eq(&c.streams, &stream.0));
    }
}

/// Whether a connection that has been given `served` streams is given no
/// more (`maxRequestsPerConnection`, 0: no limit).
fn spent(served: u64, limits: &PoolLimits) -> bool {
    limits.max_requests_per_connection > 0 && served >= limits.max_requests_per_connection
}
