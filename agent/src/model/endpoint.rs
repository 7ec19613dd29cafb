//! Endpoints: one address of a cluster, with its labels, its peer identity
//! for metric labels and its live counters.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use super::live::EndpointState;
use super::peer::PeerInfo;

/// Where an endpoint is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpstreamAddr {
    /// A fixed address.
    Socket(SocketAddr),
    /// A name resolved when a connection is opened (DNS resolution).
    Dns {
        /// The host name.
        host: Arc<str>,
        /// The port.
        port: u16,
    },
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(addr) => write!(f, "{addr}"),
            Self::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// One endpoint of a cluster.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub address: UpstreamAddr,
    /// `address` as text, formatted once for spans and logs of every request.
    pub address_text: Arc<str>,
    /// Its labels (subsets select by them; `app`/`version` fill metric labels
    /// when the peer does not announce itself).
    pub labels: BTreeMap<String, String>,
    /// Live counters.
    pub state: Arc<EndpointState>,
    /// The endpoint as a peer for metric labels, from its labels, used when
    /// the upstream does not announce itself through metadata exchange.
    pub peer: Arc<PeerInfo>,
    /// Its load-balancing weight, at least 1 (ServiceEntry
    /// `endpoints[].weight`, WorkloadEntry `weight`; Envoy's
    /// `load_balancing_weight`).
    pub weight: u32,
    /// Labelled as running a sidecar (`security.istio.io/tlsMode: istio`),
    /// so auto mTLS applies — unless its PeerAuthentication is DISABLE on
    /// its port (the registry clears it then, as Istio's mtlsChecker).
    pub sidecar: bool,
    /// The name of `resolution: DNS` (Envoy's `STRICT_DNS`) this endpoint
    /// is an address of — or, before the name first resolves, the name it
    /// connects by: what the agent's resolver keeps resolving.
    pub resolved_from: Option<Arc<str>>,
}

impl Endpoint {
    /// An endpoint of a service in `namespace`.
    pub fn new(
        address: UpstreamAddr,
        labels: BTreeMap<String, String>,
        state: Arc<EndpointState>,
        namespace: &str,
    ) -> Self {
        let label = |k: &str| labels.get(k).cloned();
        let unknown = PeerInfo::unknown();
        let app = label("app");
        let version = label("version");
        let peer = PeerInfo {
            canonical_service: label("service.istio.io/canonical-name")
                .or_else(|| app.clone())
                .unwrap_or(unknown.canonical_service),
            canonical_revision: label("service.istio.io/canonical-revision")
                .or_else(|| version.clone())
                .unwrap_or(unknown.canonical_revision),
            app: app.unwrap_or(unknown.app),
            version: version.unwrap_or(unknown.version),
            namespace: namespace.to_owned(),
            workload: unknown.workload,
            cluster: unknown.cluster,
        };
        Self {
            sidecar: labels
                .get("security.istio.io/tlsMode")
                .is_some_and(|m| m == "istio"),
            weight: 1,
            resolved_from: None,
            address_text: address.to_string().into(),
            address,
            labels,
            state,
            peer: Arc::new(peer),
        }
    }
}
