//! The data plane: listeners, the request path and upstream connections.
//!
//! Each worker thread runs its own single-threaded runtime with its own
//! listener sockets (SO_REUSEPORT) and its own upstream pools, as Envoy's
//! workers do: a connection lives and dies on one thread, and the request path
//! takes no lock. Workers share only the config snapshot (`ArcSwap`), atomics
//! and the span/metric sinks.

mod access;
mod activity;
mod attempts;
mod body;
mod canonical;
mod client_body;
mod cors;
mod delayed_close;
mod drain;
mod exchange;
mod fault;
mod flow_control;
mod forward;
mod gateway;
mod grpc_timeout;
mod h1;
mod handler;
mod headers;
mod interception;
pub mod listener;
mod local_reply;
mod mirror;
mod peer_settings;
mod pool;
mod progress;
mod reset_reason;
mod rewind;
mod rewrite;
mod route;
mod server;
mod shared_h2;
mod stalled;
mod stream_idle;
mod tap;
mod tcp;
#[cfg(test)]
mod testing;
mod upgrade;
mod upstream;
mod write_stall;

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::model::Snapshot;
use crate::model::cluster::{Cluster, Poolings};
use crate::model::endpoint::{Endpoint, UpstreamAddr};
use crate::model::live::LiveState;
use crate::model::peer::{self, PeerInfo};
use crate::model::service::ServiceName;
use crate::telemetry::access_log::{AccessLog, AccessLogSinks};
use crate::telemetry::metrics::{MetricCache, Metrics};
use crate::telemetry::peer_metadata;
use crate::telemetry::spans::WorkerSpans;

pub use crate::model::Direction;
pub use drain::OpenConnections;
pub use gateway::{GatewaySockets, bind_gateway, spawn_gateway_workers};
pub use listener::{BoundListeners, bind_all};
pub use server::{WorkerHandle, spawn_workers};

/// What every worker shares.
pub struct Shared {
    /// The config in force; swapped whole on reload.
    pub config: ArcSwap<Snapshot>,
    /// Metric families.
    pub metrics: Metrics,
    /// Where workers' finished spans go.
    pub spans: Arc<crate::telemetry::spans::SpanSink>,
    /// The Agent's own access log (`spec.accessLog`), when enabled.
    pub access_log: Option<Arc<AccessLog>>,
    /// The logs the Telemetry's access-log providers write to.
    pub access_logs: AccessLogSinks,
    /// Live counters (endpoints, clusters, rate limits), kept across reloads.
    pub live: LiveState,
    /// The workload's current TLS material (none without `spec.identity`).
    pub tls: Arc<arc_swap::ArcSwapOption<crate::tls::TlsMaterial>>,
    /// The downstream connections open on every worker's listeners: what
    /// ends a drain early.
    pub open_connections: Arc<OpenConnections>,
    /// The poolings of the config in force ([`Shared::install`]): each
    /// worker's pool sweeper lets go of the pools a reload retired.
    pub poolings: tokio::sync::watch::Sender<Arc<Poolings>>,
}

impl Shared {
    /// Puts `snapshot` in force: requests from now on read it, handshakes
    /// its trust domains, each worker's pool sweeper is told the poolings
    /// it sets, and the key sets of its `jwksUri`s are fetched now (once
    /// per URI; a reload keeps a store fetched), not when a first token
    /// asks for them.
    pub fn install(&self, snapshot: Snapshot) {
        snapshot.access.authn.start_key_fetches();
        let poolings = Arc::new(snapshot.poolings());
        let trust_domains = self.live.peer_trust_domains();
        if **trust_domains.load() != *snapshot.trust_domains {
            trust_domains.store(snapshot.trust_domains.clone());
        }
        self.config.store(Arc::new(snapshot));
        self.poolings.send_replace(poolings);
    }
}

/// One accepted downstream connection.
#[derive(Debug)]
pub struct Downstream {
    /// Listener direction.
    pub direction: Direction,
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to: for a captured connection its
    /// original destination (as Envoy's `use_original_dst` reports it).
    pub local: SocketAddr,
    /// What the client proved over mTLS (inbound), if it used mTLS.
    pub tls: Option<crate::tls::PeerTls>,
    /// Where a captured connection's requests go; `None` for a connection
    /// that reached the listener itself (explicit mode).
    pub captured: Option<Captured>,
    /// Its requests in flight (for the idle timeout).
    pub activity: Rc<activity::Activity>,
    /// The ingress gateway's filter chain the connection took; `None` on
    /// a sidecar.
    pub gateway: Option<GatewayConn>,
    /// Told when the connection is spliced after an upgrade (its delayed
    /// close then waits for nothing); set when HTTP is served on it.
    pub spliced: Option<delayed_close::Spliced>,
}

/// Which ingress gateway filter chain a connection took: its requests are
/// routed by that chain's route table (looked up in the snapshot each
/// request serves under, so a reload applies to open connections too).
#[derive(Debug, Clone)]
pub struct GatewayConn {
    /// The Gateway port (`servers[].port.number`): what `match.port`
    /// sees and the destination's port defaults to.
    pub port: u16,
    /// The SNI the client sent (TLS ports).
    pub sni: Option<Arc<str>>,
    /// The gateway terminated TLS: requests are `https`.
    pub tls: bool,
}

impl Downstream {
    /// Where a request routed to `cluster` goes when `cluster` is an
    /// `ORIGINAL_DST` cluster (a ServiceEntry with `resolution: NONE`, a
    /// DestinationRule `loadBalancer.simple: PASSTHROUGH`) and
    /// the connection was captured outbound: the endpoint of its original
    /// destination ([`Cluster::original_destination_endpoint`]), made once
    /// per connection. `None` otherwise — any other cluster, or a
    /// connection with no original destination, whose requests go to the
    /// cluster's own endpoints.
    pub fn original_endpoint(&self, cluster: &Cluster) -> Option<Arc<Endpoint>> {
        let odst = cluster.original_dst?;
        let Some(Captured::Outbound {
            original_dst,
            original_endpoint,
            ..
        }) = &self.captured
        else {
            return None;
        };
        if let Some(kept) = original_endpoint.get()
            && kept.address == UpstreamAddr::Socket(odst.upstream(*original_dst))
            && kept.peer.namespace == cluster.service.namespace
        {
            return Some(kept.clone());
        }
        // The first one made is kept: a connection's requests usually go
        // to one NONE service. Another (a second `targetPort`, another
        // namespace's entry) is made for its request.
        let made = Arc::new(cluster.original_destination_endpoint(*original_dst)?);
        let _ = original_endpoint.set(made.clone());
        Some(made)
    }

    /// The application port a request reaches (inbound): the captured
    /// connection's original port, else `spec.inbound.app`'s.
    pub fn app_port(&self, snapshot: &Snapshot) -> u16 {
        if let Some(gateway) = &self.gateway {
            return gateway.port;
        }
        match &self.captured {
            Some(Captured::Inbound { app }) => app.port,
            _ => snapshot.listeners.app.port(),
        }
    }
}

/// What a captured connection's original destination decided.
#[derive(Debug)]
pub enum Captured {
    /// From the application to the mesh.
    Outbound {
        /// Where the application was connecting.
        original_dst: SocketAddr,
        /// The service that address is (a VIP, an endpoint address, a
        /// CIDR), for requests whose Host names no known service.
        service: Option<Arc<Cluster>>,
        /// What requests to no known service get.
        unregistered: Unregistered,
        /// The endpoint of `original_dst` for requests routed to an
        /// `ORIGINAL_DST` cluster ([`Downstream::original_endpoint`]),
        /// made by the first such request.
        original_endpoint: OnceCell<Arc<Endpoint>>,
    },
    /// From the mesh to the application.
    Inbound {
        /// The local application on the port the connection was sent to
        /// (or `spec.inbound.app`).
        app: Arc<Cluster>,
    },
}

/// `outboundTrafficPolicy.mode` applied to one connection.
#[derive(Debug)]
pub enum Unregistered {
    /// ALLOW_ANY: to the original destination, as `PassthroughCluster`.
    Passthrough(Arc<Cluster>),
    /// REGISTRY_ONLY: refused, as `BlackHoleCluster`.
    BlackHole,
    /// ALLOW_ANY to a Sidecar's `egressProxy` this workload has no
    /// cluster for: 503 `NC`, as Envoy answers a route to a cluster it
    /// was not given.
    NoCluster,
}

/// Per-worker state: pools and caches that need no lock because only this
/// worker's thread touches them.
pub struct Worker {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// This worker's batch of finished spans.
    spans: Rc<WorkerSpans>,
    pools: Rc<pool::Pools>,
    /// The HTTP/2 bodies this worker reads, and which wait for readers
    /// that take nothing.
    stalls: Rc<stalled::Stalls>,
    caches: RefCell<Caches>,
}

#[derive(Default)]
struct Caches {
    metrics: MetricCache,
    peers: HashMap<Box<[u8]>, Arc<PeerInfo>>,
    principals: HashMap<Box<str>, Arc<str>>,
    /// The peer a certificate describes, by its namespace.
    namespaces: HashMap<Box<str>, Arc<PeerInfo>>,
    services: HashMap<Box<str>, Arc<ServiceName>>,
}

const PEER_CACHE_LIMIT: usize = 1024;

impl Worker {
    fn new(shared: Arc<Shared>) -> Self {
        let metrics = &shared.metrics;
        let pools = Rc::new(pool::Pools::new(
            metrics.upstream_connections.clone(),
            metrics.tls_failures.clone(),
        ));
        // The agent-wide bound, shared out: a worker's bodies wait for its
        // readers alone.
        let stalled_limit = {
            let snapshot = shared.config.load();
            let bootstrap = &snapshot.bootstrap;
            bootstrap
                .max_stalled_streams
                .div_ceil(bootstrap.concurrency.max(1))
        };
        let stalls = stalled::Stalls::new(stalled_limit, &metrics.stalled_streams_cut);
        Self {
            spans: WorkerSpans::new(shared.spans.clone()),
            shared,
            pools,
            stalls,
            caches: RefCell::default(),
        }
    }

    /// The peer a metadata header (`x-envoy-peer-metadata`) describes,
    /// when it can be believed (DESIGN §2 "Telemetry"): from a peer that
    /// proved `principal` over mTLS, a description of its certificate's
    /// namespace; from any other peer, a description that matches a peer of
    /// the registry, labelled with the registry's values. Anything else is
    /// `None` (`unknown` labels): a client's free text never becomes a
    /// metric label, so forged identities cannot grow the metrics.
    fn announced_peer(
        &self,
        value: &[u8],
        principal: Option<&str>,
        snapshot: &Snapshot,
    ) -> Option<Arc<PeerInfo>> {
        let announced = self.decode_peer(value)?;
        match principal {
            Some(principal) if peer::matches_principal(&announced, principal) => Some(announced),
            _ => snapshot.known_peers.get(&announced).cloned(),
        }
    }

    /// A metadata header decoded, once per distinct value (bounded).
    fn decode_peer(&self, value: &[u8]) -> Option<Arc<PeerInfo>> {
        let mut caches = self.caches.borrow_mut();
        if let Some(peer) = caches.peers.get(value) {
            return Some(peer.clone());
        }
        let peer = Arc::new(peer_metadata::decode(value)?);
        if caches.peers.len() >= PEER_CACHE_LIMIT {
            caches.peers.clear();
        }
        caches.peers.insert(value.into(), peer.clone());
        Some(peer)
    }

    /// One shared copy of a peer's principal per worker, so metric label
    /// sets stay few however many connections carry it.
    fn intern_principal(&self, principal: &Arc<str>) -> Arc<str> {
        let mut caches = self.caches.borrow_mut();
        if let Some(shared) = caches.principals.get(&**principal) {
            return shared.clone();
        }
        if caches.principals.len() >= PEER_CACHE_LIMIT {
            caches.principals.clear();
        }
        caches
            .principals
            .insert(Box::from(&**principal), principal.clone());
        principal.clone()
    }

    /// Shares `tls`'s principal per worker and sets the peer its
    /// certificate describes ([`PeerTls::peer`](crate::tls::handshake::PeerTls::peer)),
    /// once per connection.
    fn identify(&self, tls: &mut crate::tls::handshake::PeerTls) {
        tls.principal = tls.principal.as_ref().map(|p| self.intern_principal(p));
        tls.peer = tls
            .identity
            .as_ref()
            .map(|id| self.peer_in_namespace(&id.namespace));
    }

    /// The peer known only by its certificate's `namespace`, one shared
    /// copy per namespace per worker (bounded).
    fn peer_in_namespace(&self, namespace: &str) -> Arc<PeerInfo> {
        let mut caches = self.caches.borrow_mut();
        if let Some(peer) = caches.namespaces.get(namespace) {
            return peer.clone();
        }
        if caches.namespaces.len() >= PEER_CACHE_LIMIT {
            caches.namespaces.clear();
        }
        let peer = Arc::new(PeerInfo {
            namespace: namespace.to_owned(),
            ..PeerInfo::unknown()
        });
        caches.namespaces.insert(namespace.into(), peer.clone());
        peer
    }

    /// The service labels of a configured host no cluster answered for
    /// (a rule's own answer, a route or cluster not found), made once per
    /// host. Only hosts of the config come here, so the set is bounded by
    /// it; a host outside the registry is [`ServiceName::outside_registry`].
    fn service_named(&self, host: &str, namespace: &str) -> Arc<ServiceName> {
        let mut caches = self.caches.borrow_mut();
        if let Some(name) = caches.services.get(host) {
            return name.clone();
        }
        if caches.services.len() >= PEER_CACHE_LIMIT {
            caches.services.clear();
        }
        let name = Arc::new(ServiceName::new(host, namespace));
        caches.services.insert(Box::from(host), name.clone());
        name
    }
}

/// The request path's first step, reading the request head
/// ([`canonical`]: one host, the path normalized by `path_normalization`,
/// each header of `decided_headers` on one line), for the `request_head`
/// fuzz target; `Err` is the status the request would be refused with.
/// Not an API: the request path calls the step itself.
#[doc(hidden)]
pub fn settle_request_head<B>(
    req: &mut http::Request<B>,
    path_normalization: crate::path::PathNormalization,
    decided_headers: &[http::HeaderName],
) -> Result<(), u16> {
    let settings = canonical::Settings {
        path_normalization,
        decided_headers,
    };
    canonical::settle(req, &settings).map_err(|reply| reply.status.as_u16())
}

/// Reads a whole upstream response from `bytes` as the agent's HTTP/1.1
/// client does (the answer to a HEAD when `head_request`), the upstream
/// closing after them: its status and body length, or why it was refused
/// (a 502 `UPE`) or broke off. For the `upstream_response` fuzz target.
/// Not an API: the client reads responses from its connections itself.
#[doc(hidden)]
pub fn read_upstream_response(
    bytes: &[u8],
    head_request: bool,
) -> Result<(http::StatusCode, u64), &'static str> {
    h1::read_whole(bytes, head_request)
}

/// Runs futures on the current worker's thread (hyper's executor for
/// HTTP/2 streams and connections, which need not be `Send` here).
#[derive(Debug, Clone, Copy)]
pub struct LocalExec;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}
