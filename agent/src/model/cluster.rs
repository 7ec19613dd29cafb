//! Clusters: the endpoints behind one service port (and subset), and how one
//! is picked.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::service::{Protocol, ServiceName};
use crate::balancer::Balancer;
use crate::telemetry::peer_metadata::PeerInfo;

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

/// Live counters of one endpoint, shared by every cluster and snapshot that
/// names the same address so they survive reloads.
#[derive(Debug, Default)]
pub struct EndpointState {
    active: AtomicU64,
    total: AtomicU64,
}

impl EndpointState {
    /// Requests in flight to this endpoint.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests sent to this endpoint since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Marks a request started; the guard marks it finished when dropped.
    pub fn start_request(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.clone())
    }
}

/// One in-flight request to an endpoint (decrements the count when dropped).
#[derive(Debug)]
pub struct ActiveRequest(Arc<EndpointState>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One endpoint of a cluster.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub address: UpstreamAddr,
    /// Its labels (subsets select by them; `app`/`version` fill metric labels
    /// when the peer does not announce itself).
    pub labels: BTreeMap<String, String>,
    /// Live counters.
    pub state: Arc<EndpointState>,
    /// The endpoint as a peer for metric labels, from its labels, used when
    /// the upstream does not announce itself through metadata exchange.
    pub peer: Arc<PeerInfo>,
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
            address,
            labels,
            state,
            peer: Arc::new(peer),
        }
    }
}

/// The endpoints of one service port, optionally narrowed to a subset.
#[derive(Debug)]
pub struct Cluster {
    /// Envoy-style name: `outbound|9080|v1|reviews.default.svc.cluster.local`.
    pub name: String,
    /// The service, for metric labels and spans.
    pub service: Arc<ServiceName>,
    /// The service port.
    pub port: u16,
    /// The port's protocol.
    pub protocol: Protocol,
    /// The subset, when the cluster is one.
    pub subset: Option<String>,
    /// The endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// How an endpoint is picked.
    pub balancer: Balancer,
    /// Time allowed to open a TCP connection.
    pub connect_timeout: Duration,
}

/// Default TCP connect timeout, as Istio's (10s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Endpoint states by address, so a reload hands the same live counters to
/// the new snapshot. Locked only while compiling a config, never per request.
#[derive(Debug, Default)]
pub struct EndpointStates(
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<EndpointState>>>,
);

impl EndpointStates {
    /// The state for `key`, shared with earlier snapshots that still hold it.
    pub fn get(&self, key: &str) -> Arc<EndpointState> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(state) = map.get(key).and_then(std::sync::Weak::upgrade) {
            return state;
        }
        map.retain(|_, weak| weak.strong_count() > 0);
        let state = Arc::new(EndpointState::default());
        map.insert(key.to_owned(), Arc::downgrade(&state));
        state
    }
}
