//! The ingress gateway's listeners (`tracemesh gateway`): one socket per
//! Gateway port and worker. A connection takes the filter chain its port
//! and SNI pick ([`GatewayPort::chain`]); an HTTP chain serves it through
//! the sidecar's request path ([`Connection::http`], routed by the chain's
//! table), after terminating TLS with the chain's certificate where the
//! server says so; a passthrough chain forwards its bytes, unopened, to
//! the service its SNI routes to; a TCP chain to its TCP route.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

use super::activity::Activity;
use super::drain::Phase;
use super::server::{Connection, WorkerHandle, accept, run_local, spawn_threads, to_tokio};
use super::tcp::{self, TcpTarget};
use super::{Direction, Downstream, GatewayConn, Shared, Worker};
use crate::capture::detect::{Detected, detect_tls};
use crate::model::balancer::PickInput;
use crate::model::cluster::Cluster;
use crate::model::endpoint::Endpoint;
use crate::model::gateway::{
    ChainAction, FilterChain, GatewayListeners, GatewayPort, L4Route, PortProtocol, ServerTlsMode,
    l4_route,
};
use crate::tls::TlsMaterial;
use crate::tls::handshake;
use crate::tls::io::{DownstreamIo, MaybeTls};
use crate::tls::material::is_mesh_alpn;

/// Longest a client on a TLS port may take to send its ClientHello:
/// Envoy's `listener_filters_timeout` default, which Istio leaves on its
/// gateways (the connection is then closed).
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);

/// Every gateway port's sockets, bound once per worker.
pub struct GatewaySockets {
    /// Per worker: `(Gateway port, socket)`.
    pub per_worker: Vec<Vec<(u16, StdListener)>>,
    /// `(Gateway port, bound address)` (port 0 resolved), ascending by port.
    pub addresses: Vec<(u16, SocketAddr)>,
}

/// Binds every port of `listeners` `workers` times (SO_REUSEPORT).
///
/// # Errors
/// A port that cannot be bound, naming the Gateways whose servers declare
/// it, the port and the address.
pub fn bind_gateway(
    listeners: &GatewayListeners,
    workers: usize,
) -> std::io::Result<GatewaySockets> {
    let workers = workers.max(1);
    let mut per_worker: Vec<Vec<(u16, StdListener)>> = (0..workers).map(|_| Vec::new()).collect();
    let mut addresses = Vec::new();
    for port in &listeners.ports {
        let group = super::listener::bind_group(port.listen, workers)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", declared_by(port))))?;
        addresses.push((port.number, group[0].local_addr()?));
        for (socket, sockets) in group.into_iter().zip(per_worker.iter_mut()) {
            sockets.push((port.number, socket));
        }
    }
    Ok(GatewaySockets {
        per_worker,
        addresses,
    })
}

/// `Gateway ns/a, ns/b port N`: the Gateways whose servers declare `port`.
fn declared_by(port: &GatewayPort) -> String {
    let mut gateways: Vec<&str> = port
        .chains
        .iter()
        .flat_map(|c| &c.servers)
        .map(|s| s.gateway.as_str())
        .collect();
    gateways.sort_unstable();
    gateways.dedup();
    format!("Gateway {} port {}", gateways.join(", "), port.number)
}

/// Starts one worker per socket group, as the sidecar's are started.
///
/// # Errors
/// A worker thread that could not start.
pub fn spawn_gateway_workers(
    shared: &Arc<Shared>,
    sockets: Vec<Vec<(u16, StdListener)>>,
) -> std::io::Result<Vec<WorkerHandle>> {
    spawn_threads(
        "gateway-worker",
        shared,
        sockets,
        move |shared, sockets, phase| {
            run_worker(shared, sockets, phase);
        },
    )
}

/// A gateway worker: every port is a draining listener (accepting until
/// the drain ends, its connections told to end once it begins), as an
/// ingress gateway's listeners are the mesh's way in.
fn run_worker(
    shared: Arc<Shared>,
    sockets: Vec<(u16, StdListener)>,
    phase: watch::Receiver<Phase>,
) {
    run_local(shared, phase.clone(), |worker, http| {
        for (number, socket) in sockets {
            let Some(listener) = to_tokio(socket) else {
                continue;
            };
            let (worker, http) = (worker.clone(), http.clone());
            let mut phase = phase.clone();
            tokio::task::spawn_local(async move {
                let gauge = worker
                    .shared
                    .metrics
                    .active_connections
                    .with_label_values(&["gateway"]);
                while let Some((stream, peer)) = accept(&listener, &mut phase).await {
                    let _ = stream.set_nodelay(true);
                    let open = worker.shared.open_connections.open();
                    let connection = Connection {
                        worker: worker.clone(),
                        http: http.clone(),
                        drain: Some(phase.clone()),
                    };
                    let gauge = gauge.clone();
                    tokio::task::spawn_local(async move {
                        let _open = open;
                        gauge.inc();
                        serve(connection, stream, peer, number).await;
                        gauge.dec();
                    });
                }
            });
        }
    });
}

/// One connection to Gateway port `number`, by the chain it takes.
async fn serve(connection: Connection, stream: TcpStream, peer: SocketAddr, number: u16) {
    let snapshot = connection.worker.shared.config.load_full();
    let Some(port) = snapshot
        .gateway
        .as_ref()
        .and_then(|g| g.listeners.port(number))
    else {
        return; // the port left the config: a restart closes it
    };
    let local = stream.local_addr().unwrap_or(peer);
    let down = |tls, sni, terminated| Downstream {
        direction: Direction::Outbound,
        peer,
        local,
        tls,
        captured: None,
        activity: Activity::new(),
        gateway: Some(GatewayConn {
            port: number,
            sni,
            tls: terminated,
        }),
        spliced: None,
    };
    match port.protocol {
        PortProtocol::Http => {
            // Each request takes the config in force when it comes: the
            // connection holds none, so a config replaced lets its
            // endpoints go.
            drop(snapshot);
            let io: DownstreamIo = MaybeTls::Plain(stream);
            connection.http(io, down(None, None, false)).await;
        }
        PortProtocol::Tcp => {
            if let Some(ChainAction::Forward(routes)) = port.chain(None).map(|c| &c.action) {
                let target = l4_target(routes, None, number);
                tcp::proxy(
                    &connection.worker,
                    stream,
                    (peer, local),
                    None,
                    (Direction::Outbound, Some(number)),
                    target,
                )
                .await;
            }
        }
        PortProtocol::Tls => {
            let (sni, alpn) = match detect_tls(&stream, HELLO_TIMEOUT).await {
                Ok(Detected::Tls { sni, alpn }) => (sni, alpn),
                Ok(Detected::Opaque { timed_out: true }) => {
                    tracing::debug!(%peer, port = number, "no ClientHello within {HELLO_TIMEOUT:?}; closed");
                    return;
                }
                // Not TLS (or a hello a TLS server refuses): the chain for
                // no name takes it, as Envoy's chains (Istio sets no
                // `transport_protocol` on a gateway's) take what
                // `tls_inspector` did not find TLS in; a passthrough chain
                // relays it, a terminating one fails its handshake.
                Ok(_) => (None, Vec::new()),
                Err(error) => {
                    tracing::debug!(%error, "gateway connection failed before its first bytes");
                    return;
                }
            };
            let Some(chain) = port.chain(sni.as_deref()) else {
                tracing::debug!(%peer, port = number, sni = ?sni, "no server answers this SNI; closed");
                return;
            };
            // AUTO_PASSTHROUGH relays a mesh peer's mTLS only, told by the
            // ALPN a sidecar offers, as Istio's chains match it
            // (`application_protocols`): any other TLS client is closed.
            if matches!(chain.action, ChainAction::AutoPassthrough(_))
                && !alpn.iter().any(|p| is_mesh_alpn(p))
            {
                tracing::debug!(%peer, port = number, sni = ?sni, "AUTO_PASSTHROUGH takes mesh mTLS only (no istio ALPN); closed");
                return;
            }
            let sni: Option<Arc<str>> = sni.map(Arc::from);
            if chain.tls.is_none() {
                return passthrough(&connection.worker, chain, stream, peer, sni, number).await;
            }
            let Some((config, material)) = server_config(&connection.worker, chain) else {
                return;
            };
            // The connection's XFCC element, built once here where the
            // gateway's mode sets one; `By` names the certificate served.
            let policy = snapshot.bootstrap.xfcc;
            let local_uris = match (&material, &chain.tls) {
                (Some(material), _) => material.local_uris.as_slice(),
                (None, Some(tls)) => tls.local_uris.as_slice(),
                (None, None) => &[],
            };
            let xfcc = (policy.mode.sets_element() && matches!(chain.action, ChainAction::Http(_)))
                .then_some(handshake::XfccSource {
                    details: policy.details,
                    local_uris,
                });
            let failures = &connection.worker.shared.metrics.tls_failures;
            let peer_names = chain.tls.as_ref().and_then(|t| t.peer_names.as_deref());
            let terminated = handshake::terminate(stream, config, failures, xfcc, peer_names).await;
            let Ok((io, client)) = terminated else {
                return; // refused and counted
            };
            let client = Some(client);
            match &chain.action {
                ChainAction::Http(_) => {
                    drop(snapshot);
                    connection.http(io, down(client, sni, true)).await;
                }
                ChainAction::Forward(routes) => {
                    let target = l4_target(routes, sni.as_deref(), number);
                    let worker = &connection.worker;
                    let ends = (peer, local);
                    let side = (Direction::Outbound, Some(number));
                    tcp::proxy(worker, io, ends, client, side, target).await;
                }
                ChainAction::AutoPassthrough(_) => {}
            }
        }
    }
}

/// The rustls config a terminating chain serves: the server's own, or
/// (ISTIO_MUTUAL) the gateway's current workload certificate, requiring a
/// client certificate the mesh's roots signed (of any trust domain, as in
/// Istio), with that material.
fn server_config(
    worker: &Worker,
    chain: &FilterChain,
) -> Option<(Arc<rustls::ServerConfig>, Option<Arc<TlsMaterial>>)> {
    let tls = chain.tls.as_ref()?;
    match (&tls.config, tls.mode) {
        (Some(config), _) => Some((config.clone(), None)),
        (None, ServerTlsMode::IstioMutual) => match worker.shared.tls.load_full() {
            Some(material) => Some((material.server_gateway.clone(), Some(material))),
            None => {
                let failures = &worker.shared.metrics.tls_failures;
                failures
                    .with_label_values(&["inbound", "no_workload_certificate"])
                    .inc();
                None
            }
        },
        (None, _) => None,
    }
}

/// TLS passed through unopened: by the SNI's route (PASSTHROUGH) or the
/// cluster the SNI names (AUTO_PASSTHROUGH).
async fn passthrough(
    worker: &Rc<Worker>,
    chain: &FilterChain,
    stream: TcpStream,
    peer: SocketAddr,
    sni: Option<Arc<str>>,
    number: u16,
) {
    let target = match &chain.action {
        ChainAction::Forward(routes) => l4_target(routes, sni.as_deref(), number),
        ChainAction::AutoPassthrough(clusters) => {
            // As the chain was chosen: one trailing dot dropped.
            let name = sni.as_deref().map(|s| s.strip_suffix('.').unwrap_or(s));
            match name.and_then(|s| clusters.get(s)) {
                Some(cluster) => match mesh_endpoint(cluster, peer) {
                    Some(endpoint) => TcpTarget::Cluster {
                        cluster: cluster.clone(),
                        endpoint: Some(endpoint),
                    },
                    // No endpoint of the cluster ends mesh mTLS (UH).
                    None => TcpTarget::BlackHole,
                },
                None => TcpTarget::NoRoute,
            }
        }
        ChainAction::Http(_) => return,
    };
    let ends = (peer, stream.local_addr().unwrap_or(peer));
    let side = (Direction::Outbound, Some(number));
    tcp::proxy(worker, stream, ends, None, side, target).await;
}

/// The endpoint of `cluster` an AUTO_PASSTHROUGH connection goes to,
/// picked by the cluster's balancer among those that end mesh mTLS (a
/// sidecar's, not turned off by PeerAuthentication): Istio's
/// `EndpointsWithMTLSFilter` keeps no other in these clusters, so the port
/// relays a client's mTLS only to a sidecar that checks it. Endpoints
/// outlier detection ejected are passed over while another is left.
fn mesh_endpoint(cluster: &Cluster, peer: SocketAddr) -> Option<Arc<Endpoint>> {
    let headers = http::HeaderMap::new();
    let input = || PickInput {
        headers: &headers,
        query: None,
        source_ip: peer.ip(),
        generated_cookie: None,
    };
    let endpoints = &cluster.endpoints;
    let now = crate::model::clock::now_ms();
    let ejected = |i: usize| cluster.outlier.is_some() && endpoints[i].state.is_ejected(now);
    let balancer = &cluster.balancer;
    let chosen = balancer
        .pick_among(endpoints, input(), |i| endpoints[i].sidecar && !ejected(i))
        .or_else(|| balancer.pick_among(endpoints, input(), |i| endpoints[i].sidecar))?;
    Some(endpoints[chosen].clone())
}

/// Where forwarded bytes go: the route `sni` picks, a destination by
/// weight, its cluster at the Gateway port (else the service's only port).
fn l4_target(routes: &[L4Route], sni: Option<&str>, number: u16) -> TcpTarget {
    let cluster = l4_route(routes, sni)
        .and_then(L4Route::pick)
        .and_then(|d| d.target.cluster_for(number));
    match cluster {
        Some(cluster) => TcpTarget::Cluster {
            cluster: cluster.clone(),
            endpoint: None,
        },
        None => TcpTarget::NoRoute,
    }
}
