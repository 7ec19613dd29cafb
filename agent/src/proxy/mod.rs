//! The data plane: listeners, the request path and upstream connections.
//!
//! Each worker thread runs its own single-threaded runtime with its own
//! listener sockets (SO_REUSEPORT) and its own upstream pools, as Envoy's
//! workers do: a connection lives and dies on one thread, and the request path
//! takes no lock. Workers share only the config snapshot (`ArcSwap`), atomics
//! and the span/metric sinks.

mod access;
mod attempts;
mod body;
mod canonical;
mod exchange;
mod fault;
mod forward;
mod handler;
mod headers;
pub mod listener;
mod local_reply;
mod mirror;
mod pool;
mod progress;
mod rewrite;
mod route;
mod server;
mod tap;
mod tcp;
#[cfg(test)]
mod testing;
mod upgrade;
mod upstream;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::model::Snapshot;
use crate::model::live::LiveState;
use crate::model::peer::PeerInfo;
use crate::model::service::ServiceName;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::{MetricCache, Metrics};
use crate::telemetry::peer_metadata;
use crate::telemetry::spans::WorkerSpans;

pub use crate::model::Direction;
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
    /// The access log, when enabled.
    pub access_log: Option<AccessLog>,
    /// Live counters (endpoints, clusters, rate limits), kept across reloads.
    pub live: LiveState,
    /// The workload's current TLS material (none without `spec.identity`).
    pub tls: Arc<arc_swap::ArcSwapOption<crate::tls::TlsMaterial>>,
}

/// One accepted downstream connection.
#[derive(Debug)]
pub struct Downstream {
    /// Listener direction.
    pub direction: Direction,
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to. With transparent interception
    /// this is where an original-destination lookup would put its answer.
    pub local: SocketAddr,
    /// What the client proved over mTLS (inbound), if it used mTLS.
    pub tls: Option<crate::tls::PeerTls>,
}

/// Per-worker state: pools and caches that need no lock because only this
/// worker's thread touches them.
pub struct Worker {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// This worker's batch of finished spans.
    spans: Rc<WorkerSpans>,
    pools: Rc<pool::Pools>,
    caches: RefCell<Caches>,
}

#[derive(Default)]
struct Caches {
    metrics: MetricCache,
    peers: HashMap<Box<[u8]>, Arc<PeerInfo>>,
    unknown_services: HashMap<String, Arc<ServiceName>>,
    principals: HashMap<Box<str>, Arc<str>>,
}

const PEER_CACHE_LIMIT: usize = 1024;

impl Worker {
    fn new(shared: Arc<Shared>) -> Self {
        let metrics = &shared.metrics;
        let pools = Rc::new(pool::Pools::new(
            metrics.upstream_connections.clone(),
            metrics.tls_failures.clone(),
        ));
        Self {
            spans: WorkerSpans::new(shared.spans.clone()),
            shared,
            pools,
            caches: RefCell::default(),
        }
    }

    /// The peer a metadata header describes, decoded once per distinct value.
    fn peer_from_header(&self, value: &[u8]) -> Option<Arc<PeerInfo>> {
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

    /// A service name for a host no cluster knows (for `destination_service`
    /// of unrouted requests); bounded so junk hosts cannot grow memory.
    fn unknown_service(&self, host: &str, namespace: &str) -> Arc<ServiceName> {
        let mut caches = self.caches.borrow_mut();
        if let Some(name) = caches.unknown_services.get(host) {
            return name.clone();
        }
        if caches.unknown_services.len() >= PEER_CACHE_LIMIT {
            caches.unknown_services.clear();
        }
        let name = Arc::new(ServiceName::new(host, namespace));
        caches
            .unknown_services
            .insert(host.to_owned(), name.clone());
        name
    }
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
