//! Sends one attempt to one endpoint over a pooled connection, secured as
//! the cluster's TLS says (plaintext, mesh mTLS, TLS origination).

use std::io;
use std::rc::Rc;

use super::Worker;
use super::body::{Received, UpstreamBody};
use super::canonical::known_transfer_coding;
use super::h1::{self, SendFailure};
use super::pool::{AcquireError, PoolKey, add_waits};
use super::reset_reason::ResetReason;
use super::shared_h2::StreamBody;
use super::stalled::WatchedStream;
use super::upgrade;
use super::upstream::{AttemptHead, PoolReady, SendError, Sent, Upstream};
use crate::model::cluster::{Cluster, UpstreamTls};
use crate::model::endpoint::Endpoint;
use crate::model::policy::AttemptFailure;
use crate::tls::TlsPlan;
use crate::tls::handshake::TIMEOUT as TLS_TIMEOUT;
use http::{Response, StatusCode};

/// How the connection to `endpoint` is secured, with the workload's current
/// certificate for mesh mTLS; `authority` is the HTTP request's, as it
/// goes upstream (`None` for TCP), for an origination's SNI.
pub fn tls_plan(
    worker: &Worker,
    cluster: &Cluster,
    endpoint: &Endpoint,
    h2: bool,
    authority: Option<&str>,
) -> Result<TlsPlan, SendError> {
    if let UpstreamTls::Broken(reason) = &cluster.tls {
        tracing::debug!(%reason, cluster = %cluster.name, "tls settings unusable");
    }
    let material = || worker.shared.tls.load_full();
    TlsPlan::for_endpoint(&cluster.tls, endpoint.sidecar, h2, authority, material)
        .map_err(SendError::Tls)
}

/// Sends attempts over this worker's pooled connections.
pub struct Forwarder<'a> {
    /// The worker (pools, TLS material).
    pub worker: &'a Rc<Worker>,
    /// The cluster the endpoints belong to.
    pub cluster: &'a Cluster,
    /// Speak HTTP/2 upstream (an upgrade: as an extended CONNECT, see
    /// [`send`]).
    pub h2: bool,
    /// The request offers an upgrade (a 101 may answer it).
    pub upgrade: bool,
}

impl Upstream for Forwarder<'_> {
    type Body = Received;

    /// [`send`]'s own future, not one wrapping it: each layer of futures
    /// would move the request and the layers below it once more.
    fn send(
        &self,
        endpoint: &Endpoint,
        head: AttemptHead<'_>,
        body: UpstreamBody,
        ready: &PoolReady,
    ) -> impl Future<Output = Result<Sent<Received>, SendError>> {
        send(
            self.worker,
            endpoint,
            self.cluster,
            self.h2,
            self.upgrade,
            head,
            body,
            ready,
        )
    }
}

/// Sends the request `head` with `body` to `endpoint` as HTTP/2 (`h2`) or
/// HTTP/1.1: hyper's client (HTTP/2, upgrades) takes a request of its own,
/// the agent's HTTP/1.1 client writes a lent head where it lies. A request
/// that an idle connection closed under before it was written goes out
/// again on another connection; that is not a retry, and the time it
/// waited for each connection slot adds up in [`Sent::waited`]. An
/// HTTP/1.1 answer that cannot be passed on (see [`unusable`]) is the
/// upstream's protocol error, as an unreadable head is. `ready` is told
/// when the first connection is had.
///
/// An upgrade (`upgrade`, a WebSocket) sent as HTTP/2 (`h2`: to an
/// application whose port speaks it) goes as an RFC 8441 extended
/// CONNECT, as Envoy sends it ([`upgrade::to_extended_connect`]; its head
/// is in HTTP/1.1's form until then), its 200 answered to the client as
/// the 101 ([`upgrade::upgrade_answer`]).
///
/// An `async` block, not an `async fn`: an `async fn` keeps each argument
/// twice in its future, and this future is moved into each caller's. The
/// upgrade's connection (a hyper handshake, rare) is boxed for the same
/// reason: its future would be most of this one.
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)] // (an `async` block: above)
pub fn send(
    worker: &Rc<Worker>,
    endpoint: &Endpoint,
    cluster: &Cluster,
    h2: bool,
    upgrade: bool,
    mut head: AttemptHead<'_>,
    mut body: UpstreamBody,
    ready: &PoolReady,
) -> impl Future<Output = Result<Sent<Received>, SendError>> {
    async move {
        let connect = upgrade && h2;
        let plan = {
            // The request's authority matters to auto SNI alone.
            let parts = head.parts();
            let authority = match &cluster.tls {
                UpstreamTls::Originate(tls) if tls.auto_sni => {
                    crate::host::head_authority(&parts.uri, &parts.headers)
                }
                _ => None,
            };
            tls_plan(worker, cluster, endpoint, h2, authority)?
        };
        let key = PoolKey::new(&endpoint.address, cluster, &plan);
        let pools = &worker.pools;
        // The waits for connection slots, summed over the connections a request
        // nothing of which was written goes out on again.
        let mut waited = None;
        if h2 {
            let (mut req, websocket_key) = if connect {
                extended_connect(head, body)?
            } else {
                (head.into_request(body), None)
            };
            for _ in 0..2 {
                let mut shared = pools
                    .h2(&key, cluster, &plan)
                    .await
                    .map_err(acquire_failed)?;
                ready.set();
                waited = add_waits(waited, shared.waited);
                let taken = &mut shared.taken;
                match taken.sender.try_send_request(req).await {
                    Ok(mut response) => {
                        // An extended CONNECT's stream goes on as the
                        // upgraded one once answered 200 (101 here): counted
                        // on its connection until the splice ends.
                        let tunnel = connect
                            && upgrade::upgrade_answer(&mut response, websocket_key.as_ref());
                        // Let in by the stream's window: watched for a client
                        // that stops reading it; counted on its connection
                        // until it ends.
                        let stalls = &worker.stalls;
                        let stream = shared.taken.stream;
                        return Ok(Sent {
                            response: response.map(|body| {
                                if tunnel {
                                    Received::Tunnel(body, Some(stream))
                                } else if http_body::Body::is_end_stream(&body) {
                                    Received::Hyper(body)
                                } else {
                                    let body = StreamBody::new(body, stream);
                                    Received::Http2(WatchedStream::new(body, stalls, None))
                                }
                            }),
                            peer: shared.taken.peer,
                            waited,
                        });
                    }
                    Err(mut error) => match error.take_message() {
                        Some(unsent) => {
                            pools.forget_h2(&key, &taken.stream);
                            ready.clear();
                            req = unsent;
                        }
                        None => {
                            let error = error.into_error();
                            // A server that allows no stream refuses one with
                            // REFUSED_STREAM or PROTOCOL_ERROR (RFC 9113
                            // §5.1.2; Go's answers the latter once its SETTINGS
                            // are acknowledged): unprocessed either way, as
                            // Envoy's first streams are refused.
                            if ResetReason::is_remote_protocol_reset(&error)
                                && pools.h2_allows_none(&key, &taken.stream)
                            {
                                return Err(SendError::Failed(AttemptFailure::RefusedStream));
                            }
                            return Err(reset(&error));
                        }
                    },
                }
            }
            return Err(SendError::Failed(AttemptFailure::ResetBeforeRequest));
        }
        if upgrade {
            let (mut sender, peer, waited, slot) = Box::pin(pools.h1_upgrade(&key, cluster, &plan))
                .await
                .map_err(acquire_failed)?;
            ready.set();
            let mut response = sender
                .send_request(head.into_request(body))
                .await
                .map_err(|error| reset(&error))?;
            if let Some(slot) = slot {
                response.extensions_mut().insert(slot);
            }
            if let Some(why) = unusable(&response, upgrade) {
                tracing::debug!(why, "upstream response cannot be passed on");
                return Err(SendError::Protocol);
            }
            return Ok(Sent {
                response: response.map(Received::Hyper),
                peer,
                waited,
            });
        }
        loop {
            let (connection, lease) = pools
                .h1(&key, cluster, &plan)
                .await
                .map_err(acquire_failed)?;
            ready.set();
            waited = add_waits(waited, lease.waited);
            let (peer, reused) = (lease.peer.clone(), lease.reused);
            match h1::send(connection, head.parts(), body, lease).await {
                Ok(response) => {
                    if let Some(why) = unusable(&response, upgrade) {
                        tracing::debug!(why, "upstream response cannot be passed on");
                        return Err(SendError::Protocol);
                    }
                    return Ok(Sent {
                        response: response.map(Received::Own),
                        peer,
                        waited,
                    });
                }
                Err(SendFailure::Unsent(unsent)) if reused => {
                    ready.clear();
                    body = *unsent;
                }
                Err(SendFailure::Unsent(_)) => {
                    return Err(SendError::Failed(AttemptFailure::ResetBeforeRequest));
                }
                Err(SendFailure::Protocol(why)) => {
                    tracing::debug!(why, "upstream response cannot be passed on");
                    return Err(SendError::Protocol);
                }
                Err(SendFailure::Reset(error)) => {
                    tracing::debug!(%error, "upstream reset before response headers");
                    return Err(SendError::Failed(AttemptFailure::Reset));
                }
                Err(SendFailure::Body) => return Err(SendError::Failed(AttemptFailure::Reset)),
            }
        }
    }
}

/// The RFC 8441 extended CONNECT ([`upgrade::to_extended_connect`]), with
/// its `:protocol`, that sends the WebSocket upgrade `head` (in HTTP/1.1's
/// form) with `body`, and the client's `Sec-WebSocket-Key`. A lent head is
/// copied first, never changed: it stays as a later attempt may send it
/// ([`AttemptHead::Lent`]). A head naming no authority is the upstream's
/// protocol error.
fn extended_connect<B>(
    head: AttemptHead<'_>,
    body: B,
) -> Result<(http::Request<B>, Option<http::HeaderValue>), SendError> {
    let (mut parts, body) = head.into_request(body).into_parts();
    let key = upgrade::to_extended_connect(&mut parts).map_err(|_| SendError::Protocol)?;
    let mut req = http::Request::from_parts(parts, body);
    req.extensions_mut().insert(upgrade::websocket_protocol());
    Ok((req, key))
}

/// Why an HTTP/1.1 response cannot be passed on, if it cannot: a 101 to a
/// request that offered no upgrade (RFC 9110 §15.2.2: a server switches only
/// to a protocol the request offered; passed on, the caller is left on a
/// connection speaking neither), or a body in a transfer coding other than
/// `chunked` alone (a body of known length has none to check: hyper frames
/// by the coding when there is one).
fn unusable<B: http_body::Body>(response: &Response<B>, upgrade: bool) -> Option<&'static str> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS && !upgrade {
        return Some("a switch of protocols the request did not offer");
    }
    let coded = response.body().size_hint().exact().is_none();
    (coded && !known_transfer_coding(response.headers()))
        .then_some("a transfer coding other than chunked")
}

// (Failures are the cold path: kept out of `send`'s body.)
#[cold]
fn acquire_failed(error: AcquireError) -> SendError {
    tracing::debug!(%error, "no upstream connection");
    match error {
        AcquireError::Overflow(limit) => SendError::Overflow(limit),
        AcquireError::Tls {
            reason: TLS_TIMEOUT,
            ..
        } => SendError::ConnectTimeout,
        AcquireError::Connect { source, .. } if source.kind() == io::ErrorKind::TimedOut => {
            SendError::ConnectTimeout
        }
        AcquireError::Tls { reason, .. } => SendError::Tls(reason),
        AcquireError::Connect { .. } | AcquireError::Handshake { .. } => {
            SendError::Failed(AttemptFailure::ConnectFailure)
        }
    }
}

#[cold]
fn reset(error: &hyper::Error) -> SendError {
    tracing::debug!(%error, "upstream reset before response headers");
    if error.is_parse() {
        return SendError::Protocol;
    }
    if error.is_canceled() {
        return SendError::Canceled;
    }
    match ResetReason::of(error) {
        ResetReason::RemoteRefusedStreamReset => SendError::Failed(AttemptFailure::RefusedStream),
        ResetReason::RemoteConnectError => SendError::ConnectError,
        ResetReason::ProtocolError => SendError::Protocol,
        ResetReason::RemoteReset => SendError::Failed(AttemptFailure::RemoteReset),
        ResetReason::ConnectionTermination => SendError::Failed(AttemptFailure::Reset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_head() -> http::request::Parts {
        let (parts, ()) = http::Request::get("/ws")
            .header("host", "app:9080")
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap()
            .into_parts();
        parts
    }

    #[test]
    fn a_lent_head_stays_as_the_next_attempt_sends_it() {
        let mut shared = upgrade_head();
        for _ in 0..2 {
            let (req, key) = extended_connect(AttemptHead::Lent(&mut shared), ()).unwrap();
            assert_eq!(req.method(), http::Method::CONNECT);
            assert_eq!(req.uri(), "http://app:9080/ws");
            assert!(req.headers().get("upgrade").is_none());
            assert_eq!(key.unwrap(), "dGhlIHNhbXBsZSBub25jZQ==");
            assert_eq!(
                req.extensions()
                    .get::<hyper::ext::Protocol>()
                    .unwrap()
                    .as_str(),
                "websocket"
            );
            // The shared head is the client's upgrade still.
            assert_eq!(shared.method, http::Method::GET);
            assert_eq!(shared.uri, "/ws");
            assert_eq!(shared.headers["upgrade"], "websocket");
            assert_eq!(shared.headers["connection"], "upgrade");
            assert_eq!(shared.headers["host"], "app:9080");
        }
        let given = extended_connect(AttemptHead::Given(upgrade_head()), ());
        assert_eq!(given.unwrap().0.method(), http::Method::CONNECT);
    }
}
