//! Where a provider's checks go, as Istio resolves an ext_authz provider's
//! `service`: to the cluster `outbound|<port>||<host>` of the service
//! registry (the ServiceEntry's endpoints, picked by its load balancer, and
//! the TLS its DestinationRule gives — mesh mTLS, or origination), the same
//! a request from this workload to that host and port would use; a service
//! the registry does not know is dialed by DNS, as written.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use prometheus::IntCounterVec;

use super::ExtAuthzError;
use super::stats::ExtAuthzStats;
use crate::connect::{self, DialError, connect_tcp};
use crate::model::balancer::PickInput;
use crate::model::cluster::{Cluster, DEFAULT_CONNECT_TIMEOUT};
use crate::model::endpoint::UpstreamAddr;
use crate::model::live::{ActiveRequest, Slot};
use crate::tls::io::UpstreamIo;
use crate::tls::{TlsMaterial, TlsPlan};

/// The authorizer's address.
#[derive(Debug, Clone)]
pub enum AuthzUpstream {
    /// The registry's cluster for the provider's host and port.
    Cluster {
        /// The cluster (endpoints, balancer, TLS).
        cluster: Arc<Cluster>,
        /// The workload certificate, for mesh mTLS.
        workload_tls: Arc<ArcSwapOption<TlsMaterial>>,
    },
    /// Not in the registry: the `host:port` written, resolved by DNS.
    Dns(UpstreamAddr),
    /// In the registry but kept from this workload (a Sidecar's egress
    /// hosts): no cluster, every check fails with this reason.
    Unavailable(String),
}

impl AuthzUpstream {
    /// `target` (`host:port`, `[v6]:port`) dialed as written.
    pub fn dns(target: &str) -> Self {
        let addr = match target.parse::<SocketAddr>() {
            Ok(socket) => UpstreamAddr::Socket(socket),
            Err(_) => {
                let (host, port) = target.rsplit_once(':').unwrap_or((target, "80"));
                UpstreamAddr::Dns {
                    host: Arc::from(host),
                    port: port.parse().unwrap_or(80),
                }
            }
        };
        Self::Dns(addr)
    }

    /// The cluster's name (`outbound|port||host`), or the address dialed.
    pub fn describe(&self) -> String {
        match self {
            Self::Cluster { cluster, .. } => cluster.name.clone(),
            Self::Dns(addr) => addr.to_string(),
            Self::Unavailable(_) => "none".to_owned(),
        }
    }

    /// How many endpoints a check may be sent to (one pooled client each;
    /// one for DNS).
    pub fn endpoints(&self) -> usize {
        match self {
            Self::Cluster { cluster, .. } => cluster.endpoints.len(),
            Self::Dns(_) => 1,
            Self::Unavailable(_) => 0,
        }
    }

    /// Picks the endpoint one check goes to, as the proxy picks one for a
    /// request: the cluster's balancer, its request counted on the endpoint
    /// (`rq_total`, `rq_active`) and held against the cluster's
    /// `maxRequests` until the returned guard drops.
    pub fn pick(&self) -> Result<Picked, ExtAuthzError> {
        let cluster = match self {
            Self::Dns(_) => {
                return Ok(Picked {
                    index: 0,
                    _held: None,
                });
            }
            Self::Unavailable(reason) => return Err(ExtAuthzError::Transport(reason.clone())),
            Self::Cluster { cluster, .. } => cluster,
        };
        let headers = http::HeaderMap::new();
        let input = PickInput {
            headers: &headers,
            query: None,
            source_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            generated_cookie: None,
        };
        let (index, endpoint) = cluster
            .pick(input, &[])
            .and_then(|i| Some((i, cluster.endpoints.get(i)?)))
            .ok_or_else(|| {
                ExtAuthzError::Transport(format!("{}: no healthy endpoint", cluster.name))
            })?;
        let active = endpoint.state.start_request();
        let slot = cluster
            .state
            .take_request(cluster.limits.max_requests)
            .ok_or_else(|| {
                ExtAuthzError::Transport(format!("{}: maxRequests reached", cluster.name))
            })?;
        Ok(Picked {
            index,
            _held: Some((active, slot)),
        })
    }

    /// Opens a connection to endpoint `index` (of [`AuthzUpstream::pick`]),
    /// secured as the cluster's TLS says (`h2`: the ALPN gRPC needs).
    async fn connect(
        &self,
        index: usize,
        h2: bool,
        failures: &IntCounterVec,
    ) -> io::Result<UpstreamIo> {
        let (cluster, workload_tls) = match self {
            Self::Dns(addr) => {
                let stream = connect_tcp(addr, DEFAULT_CONNECT_TIMEOUT, None, None).await?;
                return Ok(UpstreamIo::Plain(stream));
            }
            Self::Unavailable(reason) => return Err(io::Error::other(reason.clone())),
            Self::Cluster {
                cluster,
                workload_tls,
            } => (cluster, workload_tls),
        };
        let endpoint = cluster
            .endpoints
            .get(index)
            .ok_or_else(|| io::Error::other(format!("{}: no endpoint {index}", cluster.name)))?;
        let plan = TlsPlan::for_endpoint(&cluster.tls, endpoint.sidecar, h2, None, || {
            workload_tls.load_full()
        })
        .map_err(|reason| io::Error::other(format!("tls: {reason}")))?;
        match connect::dial(&endpoint.address, cluster, &plan, failures).await {
            Ok((io, _)) => Ok(io),
            Err(DialError::Connect(error)) => Err(error),
            Err(tls) => Err(io::Error::other(tls.to_string())),
        }
    }
}

/// The endpoint a check goes to; its request counts as active until dropped.
#[derive(Debug)]
pub struct Picked {
    /// Index of the endpoint (0 for DNS).
    pub index: usize,
    _held: Option<(ActiveRequest, Slot)>,
}

/// A connector for hyper's pooled client and tonic's channel: every new
/// connection goes to one endpoint of [`AuthzUpstream`], whatever the URI
/// names.
#[derive(Clone)]
pub struct AuthzConnector {
    upstream: Arc<AuthzUpstream>,
    index: usize,
    h2: bool,
    stats: Arc<ExtAuthzStats>,
}

impl AuthzConnector {
    /// A connector to endpoint `index` of `upstream`, speaking HTTP/2
    /// (gRPC) when `h2`; TLS failures counted in `stats`.
    pub fn new(
        upstream: Arc<AuthzUpstream>,
        index: usize,
        h2: bool,
        stats: Arc<ExtAuthzStats>,
    ) -> Self {
        Self {
            upstream,
            index,
            h2,
            stats,
        }
    }
}

impl tonic::codegen::Service<Uri> for AuthzConnector {
    type Response = AuthzIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<AuthzIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let failures = this.stats.tls_failures();
            let io = this.upstream.connect(this.index, this.h2, failures).await?;
            Ok(AuthzIo(TokioIo::new(io)))
        })
    }
}

/// A connection to the authorizer, as hyper reads and writes it.
pub struct AuthzIo(TokioIo<UpstreamIo>);

impl Connection for AuthzIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for AuthzIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for AuthzIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
