//! One attempt upstream, as the retry loop sees it: an answer ([`Sent`]) or
//! why there was none ([`SendError`]), from whatever sends it
//! ([`Upstream`]: real connections in `forward`, scripted ones in tests).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};

use super::body::UpstreamBody;
use super::local_reply::LocalReply;
use crate::model::endpoint::Endpoint;
use crate::model::policy::AttemptFailure;

/// What one attempt got back.
pub struct Sent<B> {
    /// Response headers and streaming body.
    pub response: Response<B>,
    /// The server's identity, on mTLS connections.
    pub peer: Option<Arc<str>>,
    /// How long the attempt waited for a pooled connection (the cluster's
    /// `maxConnections` all in use), when it had to.
    pub waited: Option<Duration>,
}

/// Sends one attempt to one endpoint.
pub trait Upstream {
    /// The response body it answers with.
    type Body;

    /// Sends `request` to `endpoint`; an error is an attempt without an answer.
    fn send(
        &self,
        endpoint: &Endpoint,
        request: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<Sent<Self::Body>, SendError>>;
}

/// Why an attempt got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No response, for a reason retries may cover.
    Failed(AttemptFailure),
    /// The TLS handshake failed (a connect failure to retries), for this reason.
    Tls(&'static str),
    /// The response broke the protocol (a reset to retries, as Envoy's
    /// protocol-error reset is).
    Protocol,
    /// The cluster's connection limits are full (never retried); the
    /// DestinationRule field of the limit.
    Overflow(&'static str),
}

impl SendError {
    /// The local reply when this is the final outcome.
    pub fn reply(self) -> LocalReply {
        match self {
            Self::Failed(AttemptFailure::ConnectFailure) | Self::Tls(_) => {
                LocalReply::CONNECT_FAILURE
            }
            Self::Failed(AttemptFailure::PerTryTimeout) => LocalReply::PER_TRY_TIMEOUT,
            Self::Failed(
                AttemptFailure::Reset
                | AttemptFailure::ResetBeforeRequest
                | AttemptFailure::RefusedStream,
            ) => LocalReply::CONNECTION_TERMINATION,
            Self::Protocol => LocalReply::UPSTREAM_PROTOCOL_ERROR,
            Self::Overflow(limit) => LocalReply::overflow(limit),
        }
    }

    /// The failure as retry conditions see it.
    pub fn failure(self) -> Option<AttemptFailure> {
        match self {
            Self::Failed(failure) => Some(failure),
            Self::Tls(_) => Some(AttemptFailure::ConnectFailure),
            Self::Protocol => Some(AttemptFailure::Reset),
            Self::Overflow(_) => None,
        }
    }
}
