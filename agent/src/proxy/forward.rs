//! Sends one attempt to one endpoint over a pooled connection, secured as
//! the cluster's TLS says (plaintext, mesh mTLS, TLS origination).

use std::rc::Rc;

use http::Request;
use http_body::Body as _;
use hyper::body::Incoming;

use super::Worker;
use super::body::UpstreamBody;
use super::canonical::known_transfer_coding;
use super::pool::{AcquireError, PoolKey};
use super::upstream::{SendError, Sent, Upstream};
use crate::model::cluster::{Cluster, UpstreamTls};
use crate::model::endpoint::Endpoint;
use crate::model::policy::AttemptFailure;
use crate::tls::TlsPlan;

/// How the connection to `endpoint` is secured, with the workload's current
/// certificate for mesh mTLS.
pub fn tls_plan(
    worker: &Worker,
    cluster: &Cluster,
    endpoint: &Endpoint,
    h2: bool,
) -> Result<TlsPlan, SendError> {
    if let UpstreamTls::Broken(reason) = &cluster.tls {
        tracing::debug!(%reason, cluster = %cluster.name, "tls settings unusable");
    }
    let material = worker.shared.tls.load_full();
    TlsPlan::for_endpoint(&cluster.tls, endpoint.sidecar, h2, material).map_err(SendError::Tls)
}

/// Sends attempts over this worker's pooled connections.
pub struct Forwarder<'a> {
    /// The worker (pools, TLS material).
    pub worker: &'a Rc<Worker>,
    /// The cluster the endpoints belong to.
    pub cluster: &'a Cluster,
    /// Speak HTTP/2 upstream.
    pub h2: bool,
}

impl Upstream for Forwarder<'_> {
    type Body = Incoming;

    async fn send(
        &self,
        endpoint: &Endpoint,
        request: Request<UpstreamBody>,
    ) -> Result<Sent<Incoming>, SendError> {
        send(self.worker, endpoint, self.cluster, self.h2, request).await
    }
}

/// Sends `req` to `endpoint` as HTTP/2 (`h2`) or HTTP/1.1. A request that an
/// idle connection closed under before it was written goes out again on
/// another connection; that is not a retry.
pub async fn send(
    worker: &Rc<Worker>,
    endpoint: &Endpoint,
    cluster: &Cluster,
    h2: bool,
    mut req: Request<UpstreamBody>,
) -> Result<Sent<Incoming>, SendError> {
    let plan = tls_plan(worker, cluster, endpoint, h2)?;
    let key = PoolKey::new(&endpoint.address, cluster, &plan);
    let pools = &worker.pools;
    if h2 {
        for _ in 0..2 {
            let mut shared = pools
                .h2(&key, cluster, &plan)
                .await
                .map_err(acquire_failed)?;
            match shared.sender.try_send_request(req).await {
                Ok(response) => {
                    return Ok(Sent {
                        response,
                        connection: None,
                        peer: shared.peer,
                        waited: shared.waited,
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
        let mut lease = pools
            .h1(&key, cluster, &plan)
            .await
            .map_err(acquire_failed)?;
        match lease.sender.try_send_request(req).await {
            // A body of known length has no transfer coding to check (hyper
            // frames by the coding when there is one). The connection goes
            // with the response: its body is unread.
            Ok(response)
                if response.body().size_hint().exact().is_none()
                    && !known_transfer_coding(response.headers()) =>
            {
                tracing::debug!("upstream response in an unknown transfer coding");
                return Err(SendError::Protocol);
            }
            Ok(response) => {
                return Ok(Sent {
                    response,
                    peer: lease.peer.clone(),
                    waited: lease.waited,
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
        AcquireError::Overflow(limit) => SendError::Overflow(limit),
        AcquireError::Tls { reason, .. } => SendError::Tls(reason),
        AcquireError::Connect { .. } | AcquireError::Handshake { .. } => {
            SendError::Failed(AttemptFailure::ConnectFailure)
        }
    }
}

fn reset(error: &hyper::Error) -> SendError {
    tracing::debug!(%error, "upstream reset before response headers");
    if error.is_parse() {
        return SendError::Protocol;
    }
    let refused = format!("{error:?}").contains("REFUSED_STREAM");
    SendError::Failed(if refused {
        AttemptFailure::RefusedStream
    } else {
        AttemptFailure::Reset
    })
}
