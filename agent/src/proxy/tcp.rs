//! Plain TCP proxying for ports declared TCP: bytes pass through unparsed and
//! are counted in Istio's `istio_tcp_*` metrics. Each connection is also
//! reported as one span (Envoy's `tcp_proxy` reports none): a root, since TCP
//! carries no trace context, sampled at the agent's ratio, CLIENT outbound
//! and SERVER inbound, ending when the connection closes.
//!
//! Inbound (and on a gateway's TCP and TLS servers), the workload's
//! AuthorizationPolicies are checked once per connection, after the mTLS
//! handshake and before the upstream is dialed, with Istio's TCP semantics
//! ([`crate::model::authz::Authorization::for_tcp`]): a refused connection
//! is closed without a byte reaching the application.
//! Either way, a connection that passes no byte for the idle timeout
//! (Envoy's `tcp_proxy` `idle_timeout`, default 1h) is closed on both sides.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::forward::tls_plan;
use super::{Direction, Shared, Worker};
use crate::capture::detect::{Detected, detect_tls};
use crate::connect;
use crate::ext_authz::{CheckOutcome, CheckRequest};
use crate::flags::ResponseFlags;
use crate::model::authz::{AuthzInput, DecisionSource};
use crate::model::balancer::PickInput;
use crate::model::capture::OutboundTrafficMode;
use crate::model::cluster::Cluster;
use crate::model::endpoint::Endpoint;
use crate::model::endpoint::UpstreamAddr;
use crate::model::peer::PeerInfo;
use crate::model::service::ServiceName;
use crate::model::tcp_route::TcpRouted;
use crate::model::telemetry::{AccessLogPolicy, Side};
use crate::model::{MtlsMode, Snapshot};
use crate::telemetry::access_log::{AccessLog, AccessLogEntry, rfc3339_millis};
use crate::telemetry::metrics::{ByAddress, PeerLabels, Reporter, TcpConnection};
use crate::telemetry::otlp_wire::Value;
use crate::telemetry::span::{Kind, Parent, Sampling, Span};
use crate::tls::io::{AsTcp, DownstreamIo, MaybeTls, UpstreamIo};
use crate::tls::{PeerTls, handshake, is_mesh_alpn};

/// Where a TCP connection goes.
#[derive(Debug)]
pub enum TcpTarget {
    /// An endpoint of `cluster`: `endpoint` when the client addressed one
    /// (a captured call to a pod IP), else the balancer's pick.
    Cluster {
        /// The cluster.
        cluster: Arc<Cluster>,
        /// The endpoint the client chose, if it chose one.
        endpoint: Option<Arc<Endpoint>>,
    },
    /// Refused outside the registry (REGISTRY_ONLY): closed at once and
    /// counted as `BlackHoleCluster` with `UH`, as Envoy's `tcp_proxy`
    /// flags a connection to Istio's `BlackHoleCluster` (a `STATIC`
    /// cluster without endpoints: no host to connect to).
    BlackHole,
    /// Taken by no route of a gateway's filter chain (no `tls`/`tcp` rule
    /// for it, an SNI `AUTO_PASSTHROUGH` serves no cluster for): closed at
    /// once and counted as `BlackHoleCluster` with `NR`.
    NoRoute,
    /// Routed by a VirtualService to a destination without a cluster:
    /// closed at once and counted with `NC` under `service`, the
    /// destination's host (Envoy's `tcp_proxy` without its cluster).
    NoCluster {
        /// The destination the rule named.
        service: Arc<ServiceName>,
    },
}

/// Proxies one connection of a TCP listener: outbound to the service of
/// listener `outbound_index`, or inbound (`None`) to the local application.
/// Both sides speak mTLS as the HTTP listeners do: inbound by
/// PeerAuthentication, outbound by the cluster's TLS.
pub async fn serve(
    worker: Rc<Worker>,
    downstream: TcpStream,
    peer: SocketAddr,
    outbound_index: Option<usize>,
) {
    let snapshot = worker.shared.config.load_full();
    let shared = &worker.shared;
    let local = downstream.local_addr().unwrap_or(peer);
    let (cluster, direction, mode) = match outbound_index {
        Some(index) => match snapshot.tcp_routes.get(index) {
            Some(cluster) => (cluster.clone(), Direction::Outbound, MtlsMode::Disable),
            None => return,
        },
        None => (
            snapshot.inbound.clone(),
            Direction::Inbound,
            // Explicit mode: the listener serves one application port.
            (snapshot.inbound_mtls).for_port(snapshot.listeners.app.port()),
        ),
    };
    if direction == Direction::Inbound && opens_app_tls(&worker, &downstream, mode).await {
        let side = (direction, Some(cluster.port));
        let target = TcpTarget::Cluster {
            cluster,
            endpoint: None,
        };
        let io: DownstreamIo = MaybeTls::Plain(downstream);
        proxy(&worker, io, (peer, local), None, side, target).await;
        return;
    }
    let Ok((downstream, mut caller)) = handshake::accept(
        downstream,
        mode,
        shared.tls.load_full(),
        &shared.metrics.tls_failures,
        None,
    )
    .await
    else {
        return; // refused and counted
    };
    if let Some(tls) = caller.as_mut() {
        worker.identify(tls);
    }
    let guarded = (direction == Direction::Inbound).then_some(cluster.port);
    let mut target = TcpTarget::Cluster {
        cluster,
        endpoint: None,
    };
    if direction == Direction::Outbound {
        // The listener's bytes are not read ahead: no SNI. Unmatched TLS
        // keeps the service the listener names.
        target = routed(&snapshot, target, local.ip(), None, |service| service);
    }
    let ends = (peer, local);
    proxy(
        &worker,
        downstream,
        ends,
        caller,
        (direction, guarded),
        target,
    )
    .await;
}

/// The access logs a connection on `side` is written to: the side's
/// Telemetry providers without a filter (a filter reads request
/// attributes a connection has none of, so a filtered provider logs
/// requests only), else the Agent's own `accessLog`. One line per
/// connection, at its close, as Envoy's `tcp_proxy` writes it.
fn access_logs<'s>(
    shared: &Shared,
    snapshot: &'s Snapshot,
    side: Side,
) -> Vec<(Arc<AccessLog>, Option<&'s AccessLogPolicy>)> {
    match &snapshot.telemetry.side(side).access_logs {
        Some(logs) => logs
            .iter()
            .filter(|log| !log.disabled && log.filter.is_none())
            .filter_map(|log| {
                let sink = log.file().and_then(|path| shared.access_logs.get(path))?;
                Some((sink, Some(log)))
            })
            .collect(),
        None => shared
            .access_log
            .iter()
            .map(|log| (log.clone(), None))
            .collect(),
    }
}

/// Longest an explicit inbound listener under PERMISSIVE waits for a TLS
/// client's ClientHello to tell mesh mTLS from the application's own TLS:
/// as long as a handshake may take.
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// PERMISSIVE on an explicit inbound listener: whether the client opens
/// with a ClientHello offering none of the mesh's ALPN protocols (`istio`,
/// `istio-h2`, …) — the application's own TLS, which goes to it untouched, as
/// Istio's passthrough filter chain sends it and as a captured
/// connection's goes. Asked only where PERMISSIVE could terminate mTLS (a
/// workload certificate is loaded); a plaintext first byte decides at once.
pub(super) async fn opens_app_tls(worker: &Worker, stream: &TcpStream, mode: MtlsMode) -> bool {
    if mode != MtlsMode::Permissive || worker.shared.tls.load().is_none() {
        return false;
    }
    // The first byte alone tells plaintext (most connections) from TLS,
    // without the ClientHello's read buffer.
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(CLIENT_HELLO_TIMEOUT, stream.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) || first[0] != handshake::TLS_HANDSHAKE {
        return false;
    }
    matches!(
        detect_tls(stream, CLIENT_HELLO_TIMEOUT).await,
        Ok(Detected::Tls { alpn, .. }) if !alpn.iter().any(|p| is_mesh_alpn(p))
    )
}

/// A sidecar's outbound connection to `destination`, addressed to a
/// service port, whose TLS ClientHello named `sni` (when it was read):
/// routed by the VirtualService `tls[]` or `tcp[]` rules written for the
/// port, else to the port's own cluster. When the port has `tls[]` rules
/// and none takes the connection, Istio has no chain to the service:
/// `unmatched` says where it goes instead, given `target`. A client that
/// addressed an endpoint itself (a pod IP) keeps it. A rule whose
/// destination has no cluster closes the connection, counted `NC`.
pub fn routed(
    snapshot: &Snapshot,
    target: TcpTarget,
    destination: IpAddr,
    sni: Option<&str>,
    unmatched: impl FnOnce(TcpTarget) -> TcpTarget,
) -> TcpTarget {
    let TcpTarget::Cluster {
        cluster,
        endpoint: None,
    } = &target
    else {
        return target;
    };
    match snapshot.tcp_rules.route(cluster, destination, sni) {
        TcpRouted::Unrouted => target,
        TcpRouted::Unmatched => unmatched(target),
        TcpRouted::To(to) => TcpTarget::Cluster {
            cluster: to.clone(),
            endpoint: None,
        },
        TcpRouted::NoCluster { rule, host } => {
            tracing::debug!(%rule, %host, "tcp route to a destination without a cluster; closed");
            let namespace = &snapshot.identity.namespace;
            TcpTarget::NoCluster {
                service: Arc::new(ServiceName::new(host, namespace)),
            }
        }
    }
}

/// Proxies `downstream` (already past any mTLS handshake; `caller` is what
/// the client proved) from `peer` to `local` (the address it connected to)
/// on to `target`, counting `istio_tcp_*` as the `direction`'s reporter.
/// `guarded` is the port the connection enters this workload at when its
/// AuthorizationPolicies guard it (a sidecar's application port inbound, a
/// gateway's listener port): they are checked before `target` is dialed.
pub async fn proxy<IO>(
    worker: &Rc<Worker>,
    downstream: IO,
    (peer, local): (SocketAddr, SocketAddr),
    caller: Option<PeerTls>,
    (direction, guarded): (Direction, Option<u16>),
    target: TcpTarget,
) where
    IO: AsyncRead + AsyncWrite + Unpin + AsTcp,
{
    // Envoy's `max_downstream_connection_duration` counts from here.
    let began = Instant::now();
    let snapshot = worker.shared.config.load_full();
    let shared = &worker.shared;
    let kind = match direction {
        Direction::Outbound => Kind::Client,
        Direction::Inbound => Kind::Server,
    };
    let parent = Parent {
        context: None,
        decision: None,
    };
    // The side's Telemetry: sampling of new traces and span reporting.
    let side = match direction {
        Direction::Outbound => Side::Client,
        Direction::Inbound => Side::Server,
    };
    let sampling = Sampling::of(&snapshot.telemetry, side, worker.spans.ratio());
    let start_time = SystemTime::now();
    let mut span = Span::start_with(&worker.spans, kind, parent, start_time, sampling);
    let reporter = match direction {
        Direction::Outbound => Reporter::Source,
        Direction::Inbound => Reporter::Destination,
    };
    let (cluster, chosen, unrouted, refused) = match target {
        TcpTarget::Cluster { cluster, endpoint } => {
            (Some(cluster), endpoint, None, ResponseFlags::NONE)
        }
        TcpTarget::BlackHole => (None, None, None, ResponseFlags::NO_HEALTHY_UPSTREAM),
        TcpTarget::NoRoute => (None, None, None, ResponseFlags::NO_ROUTE),
        TcpTarget::NoCluster { service } => {
            (None, None, Some(service), ResponseFlags::NO_CLUSTER_FOUND)
        }
    };
    let no_headers = HeaderMap::new();
    // AuthorizationPolicy decides before the upstream is dialed.
    let verdict = match guarded {
        Some(port) => {
            let ends = ConnectionEnds { peer, local, port };
            authorize(&snapshot, ends, caller.as_ref(), &no_headers).await
        }
        None => ConnectionVerdict::default(),
    };
    let input = PickInput {
        headers: &no_headers,
        query: None,
        source_ip: peer.ip(),
        generated_cookie: None,
    };
    let endpoint = chosen.or_else(|| {
        let cluster = cluster.as_ref()?;
        cluster
            .pick(input, &[])
            .map(|i| cluster.endpoints[i].clone())
    });
    let mut flags = ResponseFlags::NONE;
    let mut upstream = None;
    let mut callee = None;
    let mut upstream_local = None;
    match (&cluster, &endpoint) {
        _ if verdict.denied.is_some() => flags = verdict.flag,
        (None, _) => flags = refused,
        (Some(_), None) => flags = ResponseFlags::NO_HEALTHY_UPSTREAM,
        (Some(cluster), Some(endpoint)) => match dial(worker, cluster, endpoint).await {
            Ok((stream, identity)) => {
                upstream_local = stream.tcp().local_addr().ok();
                upstream = Some(stream);
                callee = identity;
            }
            Err(error) => {
                tracing::debug!(%error, upstream = %endpoint.address, "tcp upstream connect failed");
                // Envoy's tcp_proxy: the connect failed, then its one
                // connect attempt (`max_connect_attempts`) was spent.
                flags = ResponseFlags::UPSTREAM_CONNECT_FAILURE
                    | ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
            }
        },
    }
    let service = match (&cluster, unrouted) {
        (Some(cluster), _) => cluster.service.clone(),
        (None, Some(service)) => service,
        (None, None) => BLACK_HOLE.with(Clone::clone),
    };
    let caller_sni = caller.as_ref().and_then(|c| c.sni.clone());
    let unknown = Arc::new(PeerInfo::unknown());
    let ours = Some(ByAddress(snapshot.identity.principal.clone()));
    let labels = match reporter {
        Reporter::Source => PeerLabels {
            reporter,
            source: ByAddress(snapshot.identity.peer.clone()),
            destination: ByAddress(endpoint.as_ref().map_or(unknown, |e| e.peer.clone())),
            service: ByAddress(service),
            security: "unknown",
            principals: [
                callee.is_some().then_some(ours).flatten(),
                callee.map(|c| ByAddress(Arc::from(c.to_string()))),
            ],
        },
        Reporter::Destination => {
            // Without metadata (TCP carries none here), the caller is what
            // its certificate says: its namespace, as Istio reads it.
            let source = caller.as_ref().and_then(|c| c.peer.clone());
            let theirs = caller.and_then(|c| c.principal).map(ByAddress);
            PeerLabels {
                reporter,
                source: ByAddress(source.unwrap_or(unknown)),
                destination: ByAddress(snapshot.identity.peer.clone()),
                service: ByAddress(service),
                security: if theirs.is_some() {
                    "mutual_tls"
                } else {
                    "none"
                },
                principals: [theirs.clone(), theirs.and(ours)],
            }
        }
    };
    // `None` past the families' series cap: proxied all the same, counted
    // as overflow instead.
    let connection = TcpConnection {
        source: peer,
        destination: local,
        sni: None,
    };
    let handles = shared.metrics.tcp_handles(&labels, flags, connection);
    if let Some(opened) = handles.as_ref().and_then(|h| h.opened.as_ref()) {
        opened.inc();
    }
    let (mut received, mut sent) = (0u64, 0u64);
    let mut ended = None;
    if let (Some(upstream), Some(endpoint)) = (upstream, &endpoint) {
        let _active = endpoint.state.start_request();
        // Each side's socket, kept to close it with a reset when the other
        // side resets, as Envoy's tcp_proxy passes a reset on
        // (`detect_and_raise_rst_tcp_connection`, on by default): the
        // streams are dropped with the halves below, these copies after.
        let sockets = [downstream.tcp(), upstream.tcp()].map(|s| s.as_fd().try_clone_to_owned());
        let (mut down_read, mut down_write) = tokio::io::split(downstream);
        let (mut up_read, mut up_write) = tokio::io::split(upstream);
        let last = Cell::new(Instant::now());
        let both = async {
            let forward = pipe(
                (&mut down_read, &mut up_write),
                handles.as_ref().and_then(|h| h.received.as_ref()),
                &mut received,
                &last,
            );
            let backward = pipe(
                (&mut up_read, &mut down_write),
                handles.as_ref().and_then(|h| h.sent.as_ref()),
                &mut sent,
                &last,
            );
            tokio::pin!(forward, backward);
            let (mut forward_done, mut backward_done) = (false, false);
            // Both ways to their ends, unless one side resets: then the
            // other (0 downstream, 1 upstream) is reset at once.
            while !(forward_done && backward_done) {
                tokio::select! {
                    passed = &mut forward, if !forward_done => {
                        forward_done = true;
                        if is_reset(&passed) {
                            return Some(1);
                        }
                    }
                    passed = &mut backward, if !backward_done => {
                        backward_done = true;
                        if is_reset(&passed) {
                            return Some(0);
                        }
                    }
                }
            }
            None
        };
        let timeout = idle_timeout(&snapshot, cluster.as_deref());
        let lifetime = cluster
            .as_deref()
            .and_then(|c| c.limits.max_connection_duration);
        // Idle or past its lifetime: both streams are dropped here, closing
        // both connections.
        tokio::select! {
            reset = both => {
                if let Some(Ok(socket)) = reset.and_then(|side| sockets.get(side)) {
                    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
                }
            }
            () = idle(&last, timeout) => ended = Some(Ended::Idle),
            () = expire(began, lifetime) => ended = Some(Ended::Lifetime),
        }
    }
    if ended == Some(Ended::Lifetime) {
        // Envoy's DT, on the connection's close only.
        flags.insert(ResponseFlags::DURATION_TIMEOUT);
        if let Some(closed) = shared.metrics.tcp_closed(&labels, flags, connection) {
            closed.inc();
        }
    } else if let Some(closed) = handles.as_ref().and_then(|h| h.closed.as_ref()) {
        closed.inc();
    }
    let decided = verdict.source.as_ref().map(ToString::to_string);
    let audited = verdict.audited.as_ref().map(ToString::to_string);
    let termination = match (&verdict.denied, ended) {
        (Some(details), _) => Some(details.as_str()),
        (None, Some(Ended::Idle)) => Some("idle_timeout"),
        (None, Some(Ended::Lifetime)) => Some("max_connection_duration_reached"),
        (None, None) => None,
    };
    let sinks = access_logs(shared, &snapshot, side);
    if !sinks.is_empty() {
        let flags = flags.as_str();
        let traceparent = span.is_recording().then(|| {
            let context = span.context();
            crate::trace_context::traceparent(
                context.trace_id(),
                context.span_id(),
                context.is_sampled(),
            )
        });
        let entry = AccessLogEntry {
            start_time: rfc3339_millis(start_time),
            route_name: None,
            method: None,
            path: None,
            protocol: None,
            response_code: 0,
            response_flags: &flags,
            response_code_details: None,
            authorization_policy: decided.as_deref(),
            access_log_hint: audited.is_some(),
            audit_policy: audited.as_deref(),
            authz_dry_run: verdict.dry_run.as_deref(),
            connection_termination_details: termination,
            upstream_transport_failure_reason: None,
            bytes_received: received,
            bytes_sent: sent,
            duration: began.elapsed().as_millis() as u64,
            upstream_service_time: None,
            x_forwarded_for: None,
            user_agent: None,
            request_id: None,
            authority: None,
            // A refused connection never reached the proxying (Envoy's
            // RBAC network filter closes it before tcp_proxy picks).
            upstream_host: (endpoint.as_ref())
                .filter(|_| verdict.denied.is_none())
                .map(|e| e.address_text.to_string()),
            upstream_cluster: (cluster.as_deref())
                .filter(|_| verdict.denied.is_none())
                .map(|c| c.name.as_str()),
            upstream_local_address: upstream_local.map(|a| a.to_string()),
            downstream_local_address: local.to_string(),
            downstream_remote_address: peer.to_string(),
            requested_server_name: caller_sni.as_deref(),
            traceparent: traceparent.as_ref().and_then(|t| t.to_str().ok()),
        };
        for (sink, log) in sinks {
            let (format, omit_empty) = log.map_or((None, false), AccessLogPolicy::format);
            sink.write_as(&entry, format, omit_empty);
        }
    }
    if span.is_recording() {
        // As on the request path: the policy that let the connection in or
        // refused it, and whether an AUDIT rule matched.
        if let Some(policy) = &decided {
            span.set("tracemesh.authz.policy", Value::Str(policy));
        }
        if audited.is_some() {
            span.set("tracemesh.authz.audit", Value::Bool(true));
        }
        if let Some(dry_run) = &verdict.dry_run {
            span.set("tracemesh.authz.dry_run", Value::Str(dry_run));
        }
        if let Some(details) = termination {
            span.set(
                "tracemesh.connection_termination_details",
                Value::Str(details),
            );
        }
        describe(
            &mut span,
            direction,
            cluster.as_deref(),
            &labels.service.0,
            endpoint.as_deref(),
            flags,
            [received, sent],
        );
        span.end(SystemTime::now());
    }
}

/// The two ends of an inbound connection and the application port it is
/// for (`destination.port` of the policies).
#[derive(Debug, Clone, Copy)]
struct ConnectionEnds {
    peer: SocketAddr,
    local: SocketAddr,
    port: u16,
}

/// What AuthorizationPolicy decided for one inbound connection.
#[derive(Debug, Default)]
struct ConnectionVerdict {
    /// Envoy's connection termination details when refused
    /// (`rbac_access_denied_matched_policy[…]`, `ext_authz_denied`, …).
    denied: Option<String>,
    /// `RBAC`, or `UAEX` when the external authorizer refused.
    flag: ResponseFlags,
    /// The policy that decided, when one did.
    source: Option<DecisionSource>,
    /// The AUDIT rule that matched, when one did.
    audited: Option<DecisionSource>,
    /// What the dry-run policies would have decided, when any apply.
    dry_run: Option<String>,
}

/// Checks one inbound connection against the workload's policies as Istio
/// builds them for TCP: CUSTOM (a gRPC provider is asked, with no request
/// attributes), then DENY, then ALLOW. The peer's identity comes from the
/// mTLS handshake; without one, principal and namespace are absent.
async fn authorize(
    snapshot: &Snapshot,
    ends: ConnectionEnds,
    caller: Option<&PeerTls>,
    no_headers: &HeaderMap,
) -> ConnectionVerdict {
    let policies = &snapshot.tcp_authorization;
    if policies.is_empty() {
        return ConnectionVerdict::default();
    }
    let identity = caller.and_then(|c| c.identity.as_ref());
    let principal = identity.map(|id| id.principal());
    let input = AuthzInput {
        source_ip: ends.peer.ip(),
        // No forwarding header on TCP: the original client is the peer.
        remote_ip: ends.peer.ip(),
        destination_ip: ends.local.ip(),
        destination_port: ends.port,
        principal: principal.as_deref(),
        namespace: identity.map(|id| id.namespace.as_str()),
        sni: caller.and_then(|c| c.sni.as_deref()),
        method: "",
        path: "",
        path_and_query: "",
        scheme: "",
        authority: "",
        headers: no_headers,
    };
    let mut verdict = ConnectionVerdict::default();
    if let Some((custom, rule)) = policies.custom_match(&input, None) {
        let check = CheckRequest {
            method: "",
            scheme: "",
            host: "",
            path_and_query: "",
            headers: no_headers,
            body: None,
            body_partial: false,
            body_len: None,
            protocol: "",
            source: ends.peer,
            destination: SocketAddr::new(ends.local.ip(), ends.port),
            source_principal: caller.and_then(|c| c.principal.as_deref()),
            destination_principal: &snapshot.identity.principal,
            sni: input.sni,
        };
        let answer = custom.client.check(&check).await;
        let source = DecisionSource {
            policy: custom.policy.name.clone(),
            rule: Some(rule),
            provider: Some(custom.provider.clone()),
        };
        if let CheckOutcome::Deny(_) = answer.outcome {
            tracing::debug!(peer = %ends.peer, policy = %source, "tcp connection refused by the external authorizer");
            return ConnectionVerdict {
                denied: Some(answer.details.to_owned()),
                flag: ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE,
                source: Some(source),
                audited: None,
                dry_run: None,
            };
        }
        verdict.source = Some(source);
    }
    let local = policies.decide_local(&input, None);
    if let Some(details) = local.denied_details() {
        tracing::debug!(peer = %ends.peer, %details, "tcp connection refused by AuthorizationPolicy");
        return ConnectionVerdict {
            denied: Some(details),
            flag: ResponseFlags::RBAC_DENIED,
            source: local.source,
            audited: None,
            dry_run: local.dry_run,
        };
    }
    verdict.audited = local.audited;
    verdict.dry_run = local.dry_run;
    verdict.source = local.source.or(verdict.source);
    verdict
}

/// The idle timeout of a connection to `cluster`: its DestinationRule's
/// `connectionPool.tcp.idleTimeout` (zero: none), else the agent's
/// `spec.downstream.idleTimeout` (Istio's proxy-wide `IDLE_TIMEOUT`,
/// Envoy's 1h by default).
fn idle_timeout(snapshot: &Snapshot, cluster: Option<&Cluster>) -> Option<Duration> {
    match cluster.and_then(|c| c.tcp_idle_timeout) {
        Some(set) => (!set.is_zero()).then_some(set),
        None => snapshot.bootstrap.downstream.idle,
    }
}

/// Why the agent ended a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// No byte either way for the idle timeout.
    Idle,
    /// The cluster's `maxConnectionDuration` passed since it began.
    Lifetime,
}

/// Resolves `lifetime` after `began`; never without one.
async fn expire(began: Instant, lifetime: Option<Duration>) {
    match lifetime {
        Some(lifetime) => tokio::time::sleep_until(began + lifetime).await,
        None => std::future::pending().await,
    }
}

/// Resolves once no byte has passed either way (`last` is the time of the
/// latest) for `timeout`; never without one. (Also the idle timer of an
/// upgraded HTTP connection's splice.)
pub(super) async fn idle(last: &Cell<Instant>, timeout: Option<Duration>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    loop {
        let deadline = last.get() + timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// The connection's span attributes, name and status: `bytes` is
/// `[received from downstream, sent to downstream]`, as the `istio_tcp_*`
/// byte counters count them.
fn describe(
    span: &mut Span,
    direction: Direction,
    cluster: Option<&Cluster>,
    service: &ServiceName,
    endpoint: Option<&Endpoint>,
    flags: ResponseFlags,
    bytes: [u64; 2],
) {
    let outbound = direction == Direction::Outbound;
    // Outside the registry (PassthroughCluster, BlackHoleCluster) the
    // service is known only by its cluster's name, never a raw host.
    let registered = cluster.is_some_and(|c| !Arc::ptr_eq(&c.service, &passthrough()));
    let port = match (outbound, cluster, endpoint) {
        (true, Some(cluster), _) => Some(cluster.port),
        (_, _, Some(endpoint)) => Some(match &endpoint.address {
            UpstreamAddr::Socket(address) => address.port(),
            UpstreamAddr::Dns { port, .. } => *port,
        }),
        _ => None,
    };
    span.set_name(|name| {
        use std::fmt::Write as _;
        match (registered, port) {
            (true, Some(port)) => {
                let _ = write!(name, "{}:{port}/*", service.host);
            }
            _ => name.push_str(&service.name),
        }
    });
    span.set("network.transport", Value::Str("tcp"));
    if registered {
        span.set("server.address", Value::Str(&service.host));
    }
    if let Some(port) = port {
        span.set("server.port", Value::Int(i64::from(port)));
    }
    if outbound {
        span.set("peer.service", Value::Str(&service.name));
    }
    if let Some(cluster) = cluster {
        span.set("tracemesh.upstream_cluster", Value::Str(&cluster.name));
    }
    if let Some(endpoint) = endpoint {
        span.set("tracemesh.upstream", Value::Str(&endpoint.address_text));
    }
    span.set("tracemesh.bytes_received", Value::Int(bytes[0] as i64));
    span.set("tracemesh.bytes_sent", Value::Int(bytes[1] as i64));
    let rendered = flags.as_str();
    span.set("tracemesh.response_flags", Value::Str(&rendered));
    if flags.is_failure() {
        span.set("error.type", Value::Str(&rendered));
        span.set_error(rendered.into_owned());
    }
}

/// The service of connections passed through outside the registry.
fn passthrough() -> Arc<ServiceName> {
    ServiceName::outside_registry(OutboundTrafficMode::AllowAny)
}

thread_local! {
    /// `destination_service` of connections refused outside the registry.
    static BLACK_HOLE: Arc<ServiceName> =
        ServiceName::outside_registry(OutboundTrafficMode::RegistryOnly);
}

/// TCP to the endpoint, then TLS when the cluster says so.
async fn dial(
    worker: &Worker,
    cluster: &Cluster,
    endpoint: &Endpoint,
) -> Result<(UpstreamIo, Option<tracemesh_ca::SpiffeId>), String> {
    let plan = tls_plan(worker, cluster, endpoint, false, None).map_err(|e| format!("{e:?}"))?;
    let failures = &worker.shared.metrics.tls_failures;
    connect::dial(&endpoint.address, cluster, &plan, failures)
        .await
        .map_err(|error| error.to_string())
}

/// Whether a [`pipe`] ended because its source was reset.
fn is_reset(passed: &Result<(), PipeBroke>) -> bool {
    matches!(passed, Err(PipeBroke::Reading(e)) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

/// Which end of a [`pipe`] broke.
#[derive(Debug)]
pub(super) enum PipeBroke {
    /// Reading its source failed.
    Reading(std::io::Error),
    /// Writing (or ending) its destination failed.
    Writing(std::io::Error),
}

/// Copies until end of stream, counting bytes as they pass (so long-lived
/// connections show up in metrics before they close) and noting in `last`
/// when they did, then half-closes (also when reading fails otherwise);
/// a reset of its source ends it at once, unclosed, for the caller to pass
/// the reset on.
pub(super) async fn pipe<R, W>(
    (from, to): (&mut R, &mut W),
    counter: Option<&IntCounter>,
    total: &mut u64,
    last: &Cell<Instant>,
) -> Result<(), PipeBroke>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) => n,
            // A reset is passed on as a reset, by the caller, which owns
            // the other side's socket: an end of stream sent first would
            // make a cut-short transfer look complete.
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(PipeBroke::Reading(error));
            }
            Err(error) => {
                // A side that broke off otherwise (a TLS session ended
                // without close_notify) ends the other side too, as an end
                // of stream does, so the peer is not left waiting.
                let _ = to.shutdown().await;
                return Err(PipeBroke::Reading(error));
            }
        };
        if n == 0 {
            return to.shutdown().await.map_err(PipeBroke::Writing);
        }
        last.set(Instant::now());
        to.write_all(&buf[..n]).await.map_err(PipeBroke::Writing)?;
        last.set(Instant::now());
        *total += n as u64;
        if let Some(counter) = counter {
            counter.inc_by(n as u64);
        }
    }
}
