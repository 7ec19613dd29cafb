//! The request path, in order (DESIGN §2). Each step is a call into the
//! module that does that one job; the comment says why it sits where it does.

use std::convert::Infallible;
use std::rc::Rc;
use std::time::Instant;

use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use super::body::{RequestBody, ResponseBody};
use super::exchange::Exchange;
use super::headers::{self, IncomingResponse, OutgoingRequest};
use super::{Downstream, Worker, forward, route, upgrade};
use crate::balancer::PickInput;
use crate::model::service::Protocol;
use crate::telemetry::peer_metadata::PEER_METADATA;

/// Proxies one request.
pub async fn handle(
    worker: Rc<Worker>,
    down: Rc<Downstream>,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    // One snapshot for the whole request: a reload mid-request cannot mix configs.
    let snapshot = worker.shared.config.load_full();

    // A request id before anything can fail, as Envoy assigns it.
    headers::ensure_request_id(req.headers_mut());

    // Trace context next, so that every outcome below — local replies
    // included — is a span and a metric.
    let mut ex = Exchange::begin(&worker, &down, &snapshot, &req);

    // Routing: the VirtualService rule outbound, the local app inbound.
    let routed = match route::select(&snapshot, down.direction, &req, &mut ex) {
        Ok(routed) => routed,
        Err(reply) => return Ok(ex.local_reply(reply)),
    };
    let cluster = routed.cluster;
    ex.set_route(routed.rule.and_then(|r| r.name.as_ref()), cluster);

    // Load balancing: the cluster's policy picks an endpoint.
    let input = PickInput {
        headers: req.headers(),
        query: req.uri().query(),
        source_ip: down.peer.ip(),
    };
    let Some(index) = cluster.balancer.pick(&cluster.endpoints, input) else {
        return Ok(ex.local_reply(super::local_reply::LocalReply::NO_HEALTHY_UPSTREAM));
    };
    let endpoint = &cluster.endpoints[index];
    ex.set_endpoint(endpoint);

    // Upgrades travel as HTTP/1.1 and keep their headers; everything else
    // speaks the protocol the destination port declares.
    let downstream_upgrade = upgrade::take(&mut req);
    let h2 =
        downstream_upgrade.is_none() && wants_h2(cluster.protocol, req.version(), ex.is_grpc());

    // Headers for the next hop: hop-by-hop out, forwarding headers, trace
    // context, peer metadata, the rule's edits.
    let (mut parts, body) = req.into_parts();
    let caller_announced = parts.headers.contains_key(PEER_METADATA);
    let outgoing = OutgoingRequest {
        direction: down.direction,
        h2,
        upgrade: downstream_upgrade.is_some(),
        identity: &snapshot.identity,
        client_ip: down.peer.ip(),
        edits: routed.request_edits(),
    };
    if let Err(reply) = headers::prepare_request(&mut parts, &outgoing, &mut ex) {
        return Ok(ex.local_reply(reply));
    }
    let (body, progress) = RequestBody::new(body);
    ex.track_request_body(progress);

    // Forwarding over a pooled connection; the body streams as it arrives.
    let started = Instant::now();
    let request = Request::from_parts(parts, body);
    let sent = match forward::send(
        &worker.pools,
        &endpoint.address,
        h2,
        cluster.connect_timeout,
        request,
    )
    .await
    {
        Ok(sent) => sent,
        Err(reply) => return Ok(ex.local_reply(reply)),
    };

    // The response on its way back: peer metadata, edits, service time.
    let mut response = sent.response;
    let mut connection = sent.connection;
    if let (Some(downstream), StatusCode::SWITCHING_PROTOCOLS) =
        (downstream_upgrade, response.status())
    {
        upgrade::splice(downstream, &mut response);
        connection = None; // the connection now belongs to the upgrade
    }
    let (mut parts, body) = response.into_parts();
    let back = IncomingResponse {
        direction: down.direction,
        caller_announced,
        identity: &snapshot.identity,
        upstream_ms: started.elapsed().as_millis() as u64,
        edits: routed.response_edits(),
    };
    headers::prepare_response(&mut parts, &back, &mut ex);
    Ok(ex.respond(parts, body, started, connection))
}

/// Whether to speak HTTP/2 upstream: ports declared HTTP2 or GRPC always,
/// gRPC requests always (gRPC needs HTTP/2), undeclared ports as the client
/// spoke.
fn wants_h2(protocol: Protocol, downstream: Version, grpc: bool) -> bool {
    match protocol {
        Protocol::Http2 | Protocol::Grpc => true,
        Protocol::Http | Protocol::Tcp => grpc,
        Protocol::Auto => grpc || downstream == Version::HTTP_2,
    }
}
