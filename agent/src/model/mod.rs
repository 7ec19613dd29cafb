//! The compiled, immutable form of a config: what the request path reads.
//! Built once per load by `compile`, swapped atomically on reload.

pub mod access;
pub mod authn;
pub mod authz;
pub mod balancer;
pub mod bootstrap;
pub mod capture;
pub mod clock;
pub mod cluster;
pub mod destination;
pub mod dns;
pub mod endpoint;
pub mod expr;
pub mod gateway;
pub mod header_format;
pub mod jwks;
pub mod live;
pub mod log_format;
pub mod mesh;
pub mod peer;
pub mod policy;
pub mod rate_limit;
pub mod route;
pub mod service;
pub mod tcp_route;
pub mod telemetry;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;

use cluster::Cluster;
use peer::PeerInfo;
use route::RouteTable;
use service::{Protocol, ServiceName};

/// Who this agent is, as metrics, spans and peers see it.
#[derive(Debug)]
pub struct Identity {
    /// The workload (`metadata.name` of the Agent document).
    pub workload: String,
    /// Its namespace.
    pub namespace: String,
    /// The service it fronts.
    pub service: Arc<ServiceName>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// `app` label, or `unknown`.
    pub app: String,
    /// `version` label, or `unknown`.
    pub version: String,
    /// Istio's canonical service (canonical-name label, else app, else workload).
    pub canonical_service: String,
    /// Istio's canonical revision (canonical-revision label, else version, else `latest`).
    pub canonical_revision: String,
    /// The cluster id peers see (`Kubernetes`, Istio's default).
    pub cluster_id: String,
    /// Value of `x-envoy-peer-metadata` announcing this workload to peers.
    pub peer_metadata: HeaderValue,
    /// Value of `x-envoy-peer-metadata-id`.
    pub peer_metadata_id: HeaderValue,
    /// This workload as a peer, for metric labels.
    pub peer: Arc<PeerInfo>,
    /// Its SPIFFE identity (what its certificate carries, when it has one).
    pub spiffe: tracemesh_ca::SpiffeId,
    /// The same as `spiffe://…`, for metric labels and spans.
    pub principal: Arc<str>,
    /// Whether the Agent has a certificate source (`spec.identity`).
    pub has_certificate: bool,
}

/// Listener addresses, parsed from the bootstrap. Fixed for the process's
/// life: a reload that changes them is refused with a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listeners {
    /// Inbound listener.
    pub inbound: SocketAddr,
    /// The local application.
    pub app: SocketAddr,
    /// Protocol of the local application.
    pub app_protocol: Protocol,
    /// Outbound HTTP listener.
    pub outbound: SocketAddr,
    /// Outbound plain-TCP listeners, in `spec.outbound.tcp` order.
    pub outbound_tcp: Vec<SocketAddr>,
    /// Admin listener.
    pub admin: SocketAddr,
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the mesh to the local application.
    Inbound,
    /// From the local application to the mesh.
    Outbound,
}

impl Direction {
    /// Name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// The inbound mTLS mode in force (PeerAuthentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    /// mTLS required; plaintext is refused.
    Strict,
    /// mTLS or plaintext.
    Permissive,
    /// Plaintext only.
    Disable,
}

impl MtlsMode {
    /// Istio's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "STRICT",
            Self::Permissive => "PERMISSIVE",
            Self::Disable => "DISABLE",
        }
    }
}

/// The inbound mTLS modes in force (PeerAuthentication), as Istio's merged
/// policy holds them: the workload's mode, and the modes the workload
/// policy's `portLevelMtls` sets, by the port a connection arrives on (the
/// application's port: a captured connection's original destination
/// port, else the inbound listener's application port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMtls {
    /// The mode of every port `ports` does not name.
    pub mode: MtlsMode,
    /// `portLevelMtls`, resolved (UNSET is `mode`), sorted by port.
    pub ports: Box<[(u16, MtlsMode)]>,
}

impl InboundMtls {
    /// The mode of a connection arriving on `port` (Istio's
    /// `GetMutualTLSModeForPort`).
    pub fn for_port(&self, port: u16) -> MtlsMode {
        match self.ports.binary_search_by_key(&port, |&(p, _)| p) {
            Ok(i) => self.ports[i].1,
            Err(_) => self.mode,
        }
    }

    /// Whether some port is STRICT.
    pub fn any_strict(&self) -> bool {
        self.mode == MtlsMode::Strict || self.ports.iter().any(|&(_, m)| m == MtlsMode::Strict)
    }
}

/// One compiled config.
#[derive(Debug)]
pub struct Snapshot {
    /// Increments with each accepted load.
    pub version: u64,
    /// The process settings of the Agent document.
    pub bootstrap: bootstrap::Bootstrap,
    /// Listener addresses.
    pub listeners: Listeners,
    /// This agent's identity.
    pub identity: Arc<Identity>,
    /// Its trust domain and the mesh's aliases of it: the trust domains a
    /// sidecar's inbound mTLS accepts peers of.
    pub trust_domains: Arc<mesh::TrustDomainBundle>,
    /// Outbound HTTP routing.
    pub routes: RouteTable,
    /// The local application, behind the inbound listener.
    pub inbound: Arc<Cluster>,
    /// Destination of each outbound TCP listener, in `spec.outbound.tcp` order.
    pub tcp_routes: Vec<Arc<Cluster>>,
    /// VirtualService `tcp[]` rules of outbound TCP service ports: where a
    /// connection to the port (by listener or captured) goes instead.
    pub tcp_rules: tcp_route::TcpRoutes,
    /// Every outbound cluster, for `/clusters`.
    pub clusters: Vec<Arc<Cluster>>,
    /// The peers the registry's endpoints describe: the only
    /// self-descriptions believed without mTLS.
    pub known_peers: peer::KnownPeers,
    /// AuthorizationPolicies that apply to this workload (inbound).
    pub authorization: authz::Authorization,
    /// The same policies as Istio builds them for TCP filter chains
    /// ([`authz::Authorization::for_tcp`]): what the inbound TCP proxy
    /// checks once per connection.
    pub tcp_authorization: authz::Authorization,
    /// Authentication, then CUSTOM, DENY and ALLOW policies, in one place
    /// (inbound): what the request path calls once per request.
    pub access: Arc<access::AccessControl>,
    /// The mesh config (root namespace, extension providers, defaults).
    pub mesh: Arc<mesh::Mesh>,
    /// Tracing, metrics and access logs per side, from the Telemetry
    /// resources that apply to this workload.
    pub telemetry: Arc<telemetry::TelemetryPolicy>,
    /// RateLimitPolicy rules that apply to this workload (inbound).
    pub rate_limits: Vec<Arc<rate_limit::RateLimiter>>,
    /// The inbound mTLS modes (PeerAuthentication), by arrival port.
    pub inbound_mtls: InboundMtls,
    /// How request paths are normalized before anything reads them.
    pub path_normalization: crate::path::PathNormalization,
    /// Request headers some rule decides on (authorization, routing, rate
    /// limits, hashing): a request must send each on one line (cookies are
    /// joined), so the rule and the app read the same value.
    pub decided_headers: Vec<http::HeaderName>,
    /// Transparent capture: settings and the original-destination map.
    pub capture: capture::Capture,
    /// The effective config as JSON, for `/config_dump`.
    pub dump: serde_json::Value,
    /// The files the config names and its compile read (TLS certificates,
    /// keys and CA bundles), each with its stamp from before the read
    /// (`None`: it could not be looked at): the reload watcher compiles the
    /// config again when one changes, as Istio's agent watches the files a
    /// DestinationRule or Gateway names.
    pub files: Vec<(
        std::path::PathBuf,
        Option<crate::config::file_stamp::FileStamp>,
    )>,
    /// An ingress gateway's listeners (`tracemesh gateway`); `None` for a
    /// sidecar. A gateway's requests are routed by the route table of the
    /// filter chain their connection took, not by [`Snapshot::routes`].
    pub gateway: Option<Arc<gateway::GatewaySnapshot>>,
}

impl Snapshot {
    /// The poolings of every cluster this config defines: the inbound
    /// application's, the outbound and TCP routes', an ingress gateway's.
    pub fn poolings(&self) -> cluster::Poolings {
        cluster::Poolings::of(self.every_cluster())
    }

    /// The names of `resolution: DNS` endpoints of every cluster this
    /// config defines ([`cluster::Cluster::dns_names`]): what the agent's
    /// resolver keeps resolving.
    pub fn dns_names(&self) -> std::collections::BTreeSet<Arc<str>> {
        (self.every_cluster())
            .flat_map(|cluster| cluster.dns_names.iter().cloned())
            .collect()
    }

    /// The inbound application's cluster, the outbound and TCP routes',
    /// an ingress gateway's.
    fn every_cluster(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        let gateway = self.gateway.iter().flat_map(|g| &g.clusters);
        std::iter::once(&self.inbound)
            .chain(&self.tcp_routes)
            .chain(&self.clusters)
            .chain(gateway)
    }
}
