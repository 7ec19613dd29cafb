//! One attempt upstream, as the retry loop sees it: an answer ([`Sent`]) or
//! why there was none ([`SendError`]), from whatever sends it
//! ([`Upstream`]: real connections in `forward`, scripted ones in tests).

use std::cell::Cell;
use std::time::Duration;

use http::request::Parts;
use http::{Request, Response};

use super::body::UpstreamBody;
use super::local_reply::LocalReply;
use super::pool::UpstreamPeer;
use crate::model::endpoint::Endpoint;
use crate::model::policy::AttemptFailure;

/// What one attempt got back.
pub struct Sent<B> {
    /// Response headers and streaming body.
    pub response: Response<B>,
    /// The connection's server identity (on mTLS) and local address.
    pub peer: UpstreamPeer,
    /// How long the attempt waited for a pooled connection (the cluster's
    /// `maxConnections` all in use), when it had to.
    pub waited: Option<Duration>,
}

/// Sends one attempt to one endpoint.
pub trait Upstream {
    /// The response body it answers with.
    type Body;

    /// Sends the request `head` with `body` to `endpoint`, telling `ready`
    /// once it has a connection to send on; an error is an attempt
    /// without an answer.
    fn send(
        &self,
        endpoint: &Endpoint,
        head: AttemptHead<'_>,
        body: UpstreamBody,
        ready: &PoolReady,
    ) -> impl Future<Output = Result<Sent<Self::Body>, SendError>>;
}

/// Whether an attempt has got its connection: TCP connected, TLS and
/// HTTP handshakes done, or a pooled one taken (Envoy's `onPoolReady`).
/// The per-try timeout starts here, as Envoy's does: a slow connect is
/// bounded by the cluster's `connectTimeout`, not by the per-try timeout.
#[derive(Debug, Default)]
pub struct PoolReady(Cell<bool>);

impl PoolReady {
    /// The attempt has its connection.
    pub fn set(&self) {
        self.0.set(true);
    }

    /// The connection it had took nothing of the request, which waits for
    /// another.
    pub fn clear(&self) {
        self.0.set(false);
    }

    /// Whether it has.
    pub fn is_set(&self) -> bool {
        self.0.get()
    }
}

/// The request head of one attempt: lent from the head every attempt is
/// sent from, while a retry may still need it, or given for the last one.
///
/// The agent's HTTP/1.1 client writes a lent head straight from where it
/// lies (framing it there: every attempt sends the same body, so each
/// frames it alike); a client that must own its request (hyper's, for
/// HTTP/2 and upgrades) takes a copy of a lent head. Each retry thus costs a
/// copy only where one is needed, and a request no retry can follow costs
/// none.
// Not boxed: the head given to the last attempt is the common case (no
// retry policy), and boxing it would put back an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum AttemptHead<'a> {
    /// The shared head; the attempt leaves it as a later one may send it.
    Lent(&'a mut Parts),
    /// The head, the attempt's own.
    Given(Parts),
}

impl AttemptHead<'_> {
    /// The head, to read or to frame in place.
    pub fn parts(&mut self) -> &mut Parts {
        match self {
            Self::Lent(parts) => parts,
            Self::Given(parts) => parts,
        }
    }

    /// A request of its own with `body`, copying a lent head.
    pub fn into_request<B>(self, body: B) -> Request<B> {
        let parts = match self {
            Self::Lent(parts) => copy_head(parts),
            Self::Given(parts) => parts,
        };
        Request::from_parts(parts, body)
    }
}

/// A copy of a request head (`Parts` has no `Clone`: its extensions need
/// not be cloneable); extensions are not copied, the agent keeps none on
/// requests it sends.
pub fn copy_head(head: &Parts) -> Parts {
    let mut request = Request::new(());
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers.clone();
    request.into_parts().0
}

/// Why an attempt got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No response, for a reason retries may cover.
    Failed(AttemptFailure),
    /// The TLS handshake failed (a connect failure to retries), for this reason.
    Tls(&'static str),
    /// The connection was not made within the connect timeout, TLS
    /// handshake included (a connect failure to retries).
    ConnectTimeout,
    /// The HTTP/2 server reset the stream with `CONNECT_ERROR` (a remote
    /// reset to retries).
    ConnectError,
    /// The response broke the protocol (a reset to retries, as Envoy's
    /// protocol-error reset is).
    Protocol,
    /// The cluster's connection limits are full (never retried); the
    /// DestinationRule field of the limit.
    Overflow(&'static str),
    /// hyper dropped the request as its HTTP/2 connection went away,
    /// without handing it back: parked while its stream waited to open,
    /// or not known to have been processed. Envoy's pool would put it on
    /// another connection; the agent retries it as a refused stream, and
    /// answers it, when no retry follows, as the connection termination
    /// it was.
    Canceled,
}

impl SendError {
    /// The local reply when this is the final outcome.
    pub fn reply(self) -> LocalReply {
        match self {
            Self::Failed(AttemptFailure::ConnectFailure) | Self::Tls(_) => {
                LocalReply::CONNECT_FAILURE
            }
            Self::ConnectTimeout => LocalReply::CONNECT_TIMEOUT,
            Self::ConnectError => LocalReply::REMOTE_CONNECT_ERROR,
            Self::Failed(AttemptFailure::PerTryTimeout) => LocalReply::PER_TRY_TIMEOUT,
            Self::Failed(AttemptFailure::Reset | AttemptFailure::ResetBeforeRequest) => {
                LocalReply::CONNECTION_TERMINATION
            }
            Self::Failed(AttemptFailure::RefusedStream) => LocalReply::REMOTE_REFUSED_STREAM_RESET,
            Self::Failed(AttemptFailure::RemoteReset) => LocalReply::REMOTE_RESET,
            Self::Canceled => LocalReply::CONNECTION_TERMINATION,
            Self::Protocol => LocalReply::UPSTREAM_PROTOCOL_ERROR,
            Self::Overflow(limit) => LocalReply::overflow(limit),
        }
    }

    /// The failure as retry conditions see it.
    pub fn failure(self) -> Option<AttemptFailure> {
        match self {
            Self::Failed(failure) => Some(failure),
            Self::Tls(_) | Self::ConnectTimeout => Some(AttemptFailure::ConnectFailure),
            Self::ConnectError => Some(AttemptFailure::RemoteReset),
            Self::Protocol => Some(AttemptFailure::Reset),
            Self::Canceled => Some(AttemptFailure::RefusedStream),
            Self::Overflow(_) => None,
        }
    }
}
