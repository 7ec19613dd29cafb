//! The request path, in order (DESIGN §2). Each step is a call into the
//! module that does that one job; the comment says why it sits where it does.

use std::convert::Infallible;
use std::rc::Rc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::attempts::{Attempts, BodySource, HeldBody};
use super::client_body::ClientBody;
use super::exchange::{Exchange, ProxyBody};
use super::forward::Forwarder;
use super::headers::{self, IncomingResponse, OutgoingRequest};
use super::local_reply::LocalReply;
use super::mirror::Copies;
use super::stream_idle::StreamClock;
use super::{
    Direction, Downstream, Worker, access, canonical, cors, fault, grpc_timeout, rewrite, route,
    upgrade,
};
use crate::model::access::AccessOutcome;
use crate::model::capture::OutboundTrafficMode;
use crate::model::header_format::FormatContext;
use crate::model::policy::{RouteAction, roll};
use crate::telemetry::peer_metadata::PEER_METADATA;
use crate::tls::xfcc::{self, ForwardClientCert};

/// Proxies one request.
///
/// An `async` block, not an `async fn`: an `async fn` keeps each argument
/// twice in its future (the argument and the body's binding of it), and
/// hyper moves this future into its connection's at every request.
#[allow(clippy::manual_async_fn)] // an `async fn` doubles its arguments (above)
pub fn handle(
    worker: Rc<Worker>,
    down: Rc<Downstream>,
    mut req: Request<Incoming>,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> {
    async move {
        // One snapshot for the whole request: a reload mid-request cannot mix configs.
        let snapshot = worker.shared.config.load_full();
        // The header fields as Envoy's HTTP/2 codec takes them, before the
        // agent adds or drops any: bounded in number, cookie crumbs joined.
        let received = canonical::received(&mut req);

        // A request from outside the mesh loses what only the mesh may set
        // (and its request id); then every request has an id before
        // anything can fail, as Envoy assigns it.
        if down.gateway.is_some() {
            headers::clean_external(req.headers_mut());
        }
        headers::ensure_request_id(req.headers_mut());
        // `x-forwarded-client-cert` under the listener's mode, before
        // anything reads the request, as Envoy's connection manager sets it
        // ahead of its filters and routing: a sidecar's outbound removes
        // it, its inbound and a gateway apply their mode with the
        // connection's element.
        let mode = match down.direction {
            Direction::Outbound if down.gateway.is_none() => ForwardClientCert::Sanitize,
            _ => snapshot.bootstrap.xfcc.mode,
        };
        let (client_certificate, element) = match &down.tls {
            Some(tls) => (tls.client_certificate, tls.xfcc.as_ref()),
            None => (false, None),
        };
        xfcc::apply(req.headers_mut(), mode, client_certificate, element);

        // One reading of the request before anything reads it: the path
        // normalized once (the mesh's pathNormalization), one host, one value per
        // header a rule decides on. Every step below and the upstream see it.
        let settings = canonical::Settings {
            path_normalization: snapshot.path_normalization,
            decided_headers: &snapshot.decided_headers,
        };
        let settled = canonical::settle(&mut req, &settings);
        // The body, held until the attempts take it (`None` only while access
        // control reads it ahead), on the stream's idle clock, which the
        // response's frames move on too.
        let clock = snapshot
            .bootstrap
            .downstream
            .stream_idle
            .map(StreamClock::new);
        // An HTTP/2 client's body is let in by its stream's window: watched
        // for an upstream that stops taking it.
        let http2 = req.version() == http::Version::HTTP_2;
        let mut req = req.map(|body| {
            let stalls =
                (http2 && !http_body::Body::is_end_stream(&body)).then_some(&worker.stalls);
            Some(HeldBody::Arrived(ClientBody::new(
                body,
                clock.clone(),
                stalls,
            )))
        });

        // Trace context next, so that every outcome below — local replies
        // included — is a span and a metric.
        let mut ex = Exchange::begin(&worker, &down, &snapshot, &req);
        if let Err(reply) = received.and(settled) {
            return Ok(ex.local_reply(reply));
        }
        // An upgrade is taken, dropped (h2c) or refused before any policy
        // reads the request, as Envoy decides it before its filters run.
        let version = req.version();
        if let Err(reply) = upgrade::admit(version, req.headers_mut()) {
            return Ok(ex.local_reply(reply));
        }

        // Access control, then rate limiting: they guard the workload (the
        // sidecar's application, or the ingress gateway itself, as Istio's
        // policies selecting the gateway do), so they answer before any
        // routing or upstream work is spent on the request.
        //
        // The downstream remote address they read is taken once, from the
        // request as it came, as Envoy's connection manager takes it before
        // any filter runs or `x-forwarded-for` is appended to.
        let remote_ip = |headers: &http::HeaderMap| {
            access::remote_ip(
                headers,
                down.peer.ip(),
                snapshot.bootstrap.num_trusted_proxies,
                down.gateway.is_some(),
            )
        };
        let mut guarded_remote_ip = None;
        if down.direction == Direction::Inbound || down.gateway.is_some() {
            let remote_ip = *guarded_remote_ip.insert(remote_ip(req.headers()));
            if !snapshot.access.is_empty() {
                // Without a CUSTOM policy nothing awaits: decided in place, no
                // future kept. With one, the external check is boxed so that its
                // state does not weigh on every request's future.
                // A provider that includes the body reads it ahead, into the
                // tap the attempts then send it from.
                let outcome = match access::check_now(&snapshot, &down, &req, remote_ip) {
                    Some(outcome) => outcome,
                    None => {
                        let (parts, mut body) = req.into_parts();
                        let head = Request::from_parts(parts, ());
                        let check = access::check(&snapshot, &down, &head, remote_ip, &mut body);
                        let outcome = Box::pin(check).await;
                        req = head.map(|()| body);
                        outcome
                    }
                };
                match outcome {
                    AccessOutcome::Allow(allowed) => {
                        ex.set_allowed(&allowed);
                        access::apply_allow_edits(&allowed, &mut req);
                    }
                    AccessOutcome::Deny(denied) => return Ok(ex.access_denied(denied)),
                }
            }
            match access::rate_limit(&snapshot, &req, down.peer.ip(), remote_ip) {
                Ok(None) => {}
                Ok(Some(status)) => ex.add_response_headers(status.headers(false)),
                Err(limited) => {
                    ex.add_response_headers(limited.status.headers(true));
                    let details = limited.details();
                    return Ok(ex.local_reply_because(LocalReply::RATE_LIMITED, details));
                }
            }
        }

        // Routing: the VirtualService rule outbound, the local app inbound.
        let routed = match &down.gateway {
            Some(conn) => route::gateway(&snapshot, conn, &req),
            None => route::select(&snapshot, down.direction, down.captured.as_ref(), &req),
        };
        let routed = match routed {
            Ok(routed) => routed,
            Err(not_routed) => {
                match not_routed.host {
                    Some(host) => ex.set_unrouted_host(host),
                    // A gateway's request for no host it serves (404 NR):
                    // labelled as a sidecar's unrouted request is, never
                    // as the gateway's own service.
                    None if down.gateway.is_some() => ex.set_unrouted(),
                    // Refused, not passed through: Istio's BlackHoleCluster;
                    // or (no cluster) ALLOW_ANY's egress proxy is missing.
                    None if down.direction == Direction::Outbound => {
                        let no_cluster = (not_routed.reply.flags)
                            .contains(crate::flags::ResponseFlags::NO_CLUSTER_FOUND);
                        ex.set_outside_registry(if no_cluster {
                            OutboundTrafficMode::AllowAny
                        } else {
                            OutboundTrafficMode::RegistryOnly
                        });
                    }
                    None => {}
                }
                let mut response = ex.local_reply(not_routed.reply);
                if req.method() == http::Method::CONNECT && req.version() <= http::Version::HTTP_11
                {
                    // Envoy closes an HTTP/1 connection whose CONNECT it refused:
                    // what follows on it would be tunnel bytes, not requests.
                    let close = http::HeaderValue::from_static("close");
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, close);
                }
                return Ok(response);
            }
        };
        if let Some(host) = routed.answered_for {
            ex.set_unrouted_host(host);
        }
        let policy = routed.policy();
        // Every answer to a routed request carries the rule's response edits,
        // the agent's own as well as the app's: Envoy's router applies them to
        // its redirects, direct responses and local replies too.
        let edits = routed.response_edits();
        let format = FormatContext {
            version: req.version(),
            peer: down.peer,
            local: down.local,
        };
        let edited = |mut response: Response<ProxyBody>| {
            for edits in edits.iter().flatten() {
                edits.apply(response.headers_mut(), &format);
            }
            response
        };
        let cluster = match (&policy.action, routed.cluster) {
            (RouteAction::Redirect(redirect), _) => {
                ex.set_matched(routed.matched);
                return Ok(edited(redirect_reply(ex, redirect, &req)));
            }
            (RouteAction::Direct(direct), _) => {
                ex.set_matched(routed.matched);
                return Ok(edited(ex.direct(direct.status, direct.body.clone())));
            }
            (RouteAction::Forward, Some(cluster)) => cluster,
            (RouteAction::Forward, None) => {
                return Ok(edited(ex.local_reply(LocalReply::NO_CLUSTER)));
            }
        };
        ex.set_route(routed.matched, cluster, routed.catch_all);
        // A NONE service's cluster (ORIGINAL_DST) sends a captured
        // connection's requests where the connection was going.
        let original_endpoint = down.original_endpoint(cluster);

        // Fault injection sits in front of the upstream, as Envoy's fault filter.
        if let Some(fault) = &policy.fault {
            let injected = fault::decide(fault, roll);
            if let Some(delay) = injected.delay {
                ex.delaying(delay);
                tokio::time::sleep(delay).await;
            }
            if let Some(reply) = injected.abort {
                return Ok(edited(ex.local_reply(reply)));
            }
        }

        // CORS after faults and before the upstream, as Istio orders Envoy's
        // filters (fault, cors, router): a preflight is answered here (without
        // the rule's response edits: Envoy's filter answers past the router's
        // local-reply path that applies them), and every answer from here on
        // to an allowed origin carries its headers, over the rule's edits.
        let allowed = match policy.cors.as_deref() {
            None => None,
            Some(policy) => match cors::decide(policy, req.method(), req.headers()) {
                cors::Decision::Untouched => None,
                cors::Decision::Allowed(allowed) => Some(allowed),
                cors::Decision::Preflight(answer) => return Ok(ex.cors_preflight(answer)),
            },
        };
        let answered = |response: Response<ProxyBody>| {
            let mut response = edited(response);
            if let Some(allowed) = &allowed {
                allowed.apply(response.headers_mut());
            }
            response
        };

        // Everything speaks the protocol the destination port declares.
        // Upgrades (WebSocket, once admitted) go once, as HTTP/1.1 — but
        // to an application whose port speaks HTTP/2 as an RFC 8441
        // extended CONNECT, as Envoy sends it (`forward::send`; the head
        // in HTTP/1.1's form until then). Only the inbound hop makes it:
        // a peer's sidecar takes upgrades over HTTP/1.1 only and makes the
        // CONNECT to its application itself (docs/envoy-differences.md).
        let downstream_upgrade = upgrade::take(&mut req);
        let port_h2 = cluster.speaks_h2(req.version(), ex.is_grpc());
        let h2 = downstream_upgrade.is_none() && port_h2;
        let connect =
            downstream_upgrade.is_some() && port_h2 && down.direction == Direction::Inbound;

        // Headers for the next hop: rewrites, hop-by-hop out, forwarding
        // headers, trace context, peer metadata, the rule's edits.
        let (mut parts, body) = req.into_parts();
        let caller_announced = crate::header_scan::holds(&parts.headers, &PEER_METADATA);
        if let Some(rewrite) = &policy.rewrite {
            rewrite::apply(rewrite, routed.matched.and_then(|m| m.prefix), &mut parts);
        }
        if let Some(authority) = routed.destination_authority() {
            rewrite::set_authority(&mut parts, authority);
        }
        // `useSourceIp` hashes the downstream remote address, which Envoy
        // takes from x-forwarded-for where it does not use the peer's (a
        // sidecar's `use_remote_address: false`): read before the forwarding
        // headers below append this hop's caller.
        let hash_source_ip = if cluster.balancer.hashes_source_ip() {
            guarded_remote_ip.unwrap_or_else(|| remote_ip(&parts.headers))
        } else {
            down.peer.ip()
        };
        let outgoing = OutgoingRequest {
            direction: down.direction,
            h2,
            upgrade: downstream_upgrade.is_some(),
            identity: &snapshot.identity,
            client_ip: down.peer.ip(),
            edits: routed.request_edits(),
            format,
            edge_scheme: down
                .gateway
                .as_ref()
                .map(|g| if g.tls { "https" } else { "http" }),
            // (a gateway's remote address: the guarded one, as it uses the remote address)
            external_address: down.gateway.as_ref().and(guarded_remote_ip),
            trust_forwarded_proto: snapshot.bootstrap.num_trusted_proxies > 0,
        };
        let prepared = headers::prepare_request(&mut parts, &outgoing, |headers| {
            ex.inject_trace_context(headers);
        });
        if let Err(reply) = prepared {
            return Ok(answered(ex.local_reply(reply)));
        }

        // The body is kept for replays only when a retry or a mirror may want it.
        let replays = downstream_upgrade.is_none()
            && (policy.retry.attempts > 0 || !policy.mirrors.is_empty());
        let Some(body) = body else {
            return Ok(answered(ex.local_reply(LocalReply::CONNECTION_TERMINATION)));
        };
        let body = BodySource::new(body, replays);
        ex.track_request_body(body.progress().clone(), body.tap().cloned());
        if body.is_empty() {
            headers::frame_empty_body(&mut parts, h2);
        }

        // Mirrors get copies, fire-and-forget, before the real request goes.
        if !policy.mirrors.is_empty() {
            let copies = Copies {
                worker: &worker,
                down: &down,
                head: &parts,
                tap: body.tap(),
                parent: ex.span_context(),
                report_spans: ex.reports_spans(),
                port: routed.port,
                version: parts.version,
                grpc: ex.is_grpc(),
            };
            copies.send(&policy.mirrors);
        }

        // The retry loop: pick an endpoint, respect the pool's limits, forward
        // under the timeouts, judge the outcome.
        // (an upgrade's request does not end while it is upgraded, so, as
        // Envoy's, its route timeout never starts)
        let timeout = if downstream_upgrade.is_some() {
            None
        } else if ex.is_grpc() {
            grpc_timeout::bound(policy.timeout, &parts.headers)
        } else {
            policy.timeout
        };
        // A cookie the hash policy makes for a request without it (a `ttl`),
        // picked by and set on the upstream's response, as Envoy's router.
        let set_cookie = (cluster.balancer).cookie_to_set(&parts.headers, down.peer, down.local);
        let attempts = Attempts {
            cluster,
            endpoint: original_endpoint.as_ref(),
            retry: &policy.retry,
            timeout,
            source_ip: hash_source_ip,
            generated_cookie: set_cookie.as_ref().map(|c| c.value.as_str()),
            count_attempts: down.direction == Direction::Outbound || down.gateway.is_some(),
            grpc: ex.is_grpc() && downstream_upgrade.is_none(),
        };
        let upstream = Forwarder {
            worker: &worker,
            cluster,
            h2: h2 || connect,
            upgrade: downstream_upgrade.is_some(),
        };
        let delivered = match attempts.run(&upstream, parts, body, &mut *ex).await {
            Ok(delivered) => delivered,
            Err(reply) => return Ok(answered(ex.local_reply(reply))),
        };

        // The response on its way back: peer metadata, edits, service time.
        let mut response = delivered.response;
        let splice = match (downstream_upgrade, response.status()) {
            (Some(downstream), StatusCode::SWITCHING_PROTOCOLS) => {
                if let Some(spliced) = &down.spliced {
                    spliced.set();
                }
                let idle = snapshot.bootstrap.downstream.stream_idle;
                let open = worker.shared.open_connections.open();
                Some(upgrade::Splice::new(downstream, &mut response, idle, open))
            }
            _ => None,
        };
        let (mut parts, body) = response.into_parts();
        let upstream_time = delivered.started.elapsed();
        let back = IncomingResponse {
            direction: down.direction,
            caller_announced,
            identity: &snapshot.identity,
            upstream_ms: upstream_time.as_millis() as u64,
            edits,
            format,
        };
        if let Some(announced) = headers::prepare_response(&mut parts, &back) {
            ex.set_peer_from_header(announced.as_bytes(), &snapshot);
        }
        if let Some(allowed) = &allowed {
            allowed.apply(&mut parts.headers);
        }
        if let Some(cookie) = set_cookie {
            parts
                .headers
                .append(http::header::SET_COOKIE, cookie.header);
        }
        Ok(match splice {
            Some(splice) => ex.switch_protocols(parts, upstream_time, splice),
            None => ex.respond(parts, body, upstream_time, delivered.deadline, clock),
        })
    }
}

fn redirect_reply<B>(
    ex: Box<Exchange>,
    redirect: &crate::model::policy::Redirect,
    req: &Request<B>,
) -> Response<ProxyBody> {
    let mut response = Response::new(());
    *response.status_mut() = redirect.code;
    if let Some(location) = rewrite::location(redirect, req) {
        response
            .headers_mut()
            .insert(http::header::LOCATION, location);
    }
    ex.route_reply(response, bytes::Bytes::new())
}
