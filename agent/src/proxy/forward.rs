//! Sends one attempt to one endpoint over a pooled connection.

use std::rc::Rc;

use http::{Request, Response};
use hyper::body::Incoming;

use super::body::UpstreamBody;
use super::local_reply::LocalReply;
use super::pool::{AcquireError, Lease, PoolKey, Pools};
use crate::model::cluster::{Cluster, Endpoint};
use crate::model::policy::AttemptFailure;

/// The upstream's response and, for HTTP/1.1, the connection to give back.
pub struct Sent {
    /// Response headers and streaming body.
    pub response: Response<Incoming>,
    /// The HTTP/1.1 connection, reusable after the response.
    pub connection: Option<Lease>,
}

/// Why an attempt got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No response, for a reason retries may cover.
    Failed(AttemptFailure),
    /// The cluster's connection limits are full (never retried).
    Overflow,
}

impl SendError {
    /// The local reply when this is the final outcome.
    pub fn reply(self) -> LocalReply {
        match self {
            Self::Failed(AttemptFailure::ConnectFailure) => LocalReply::CONNECT_FAILURE,
            Self::Failed(AttemptFailure::PerTryTimeout) => LocalReply::TIMEOUT,
            Self::Failed(AttemptFailure::Reset | AttemptFailure::RefusedStream) => {
                LocalReply::CONNECTION_TERMINATION
            }
            Self::Overflow => LocalReply::OVERFLOW,
        }
    }
}

/// Sends `req` to `endpoint` as HTTP/2 (`h2`) or HTTP/1.1. A request that an
/// idle connection closed under before it was written goes out again on
/// another connection; that is not a retry.
pub async fn send(
    pools: &Rc<Pools>,
    endpoint: &Endpoint,
    cluster: &Cluster,
    h2: bool,
    mut req: Request<UpstreamBody>,
) -> Result<Sent, SendError> {
    let key = PoolKey::new(&endpoint.address, cluster);
    if h2 {
        for _ in 0..2 {
            let mut sender = pools.h2(&key, cluster).await.map_err(acquire_failed)?;
            match sender.try_send_request(req).await {
                Ok(response) => {
                    return Ok(Sent {
                        response,
                        connection: None,
                    });
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) => {
                        pools.forget_h2(&key);
                        req = unsent;
                    }
                    None => return Err(reset(&error.into_error())),
                },
            }
        }
        return Err(SendError::Failed(AttemptFailure::Reset));
    }
    loop {
        let mut lease = pools.h1(&key, cluster).await.map_err(acquire_failed)?;
        match lease.sender.try_send_request(req).await {
            Ok(response) => {
                return Ok(Sent {
                    response,
                    connection: Some(lease),
                });
            }
            Err(mut error) => match error.take_message() {
                Some(unsent) if lease.reused => req = unsent,
                _ => return Err(reset(&error.into_error())),
            },
        }
    }
}

fn acquire_failed(error: AcquireError) -> SendError {
    tracing::debug!(%error, "no upstream connection");
    match error {
        AcquireError::Overflow => SendError::Overflow,
        AcquireError::Connect { .. } | AcquireError::Handshake { .. } => {
            SendError::Failed(AttemptFailure::ConnectFailure)
        }
    }
}

fn reset(error: &hyper::Error) -> SendError {
    tracing::debug!(%error, "upstream reset before response headers");
    let refused = format!("{error:?}").contains("REFUSED_STREAM");
    SendError::Failed(if refused {
        AttemptFailure::RefusedStream
    } else {
        AttemptFailure::Reset
    })
}
