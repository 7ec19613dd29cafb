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

use crate::model::balancer::PickInput;
use crate::model::cluster::{Cluster, DEFAULT_CONNECT_TIMEOUT};
use crate::model::endpoint::UpstreamAddr;
use crate::proxy::connect_tcp;
use crate::tls::io::UpstreamIo;
use crate::tls::{TlsMaterial, TlsPlan, handshake};

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
        }
    }

    /// Opens a connection: an endpoint the cluster's balancer picks,
    /// secured as its TLS says (`h2`: the ALPN gRPC needs).
    async fn connect(&self, h2: bool, failures: &IntCounterVec) -> io::Result<UpstreamIo> {
        let (cluster, workload_tls) = match self {
            Self::Dns(addr) => {
                let stream = connect_tcp(addr, DEFAULT_CONNECT_TIMEOUT, None).await?;
                return Ok(UpstreamIo::Plain(stream));
            }
            Self::Cluster {
                cluster,
                workload_tls,
            } => (cluster, workload_tls),
        };
        let headers = http::HeaderMap::new();
        let input = PickInput {
            headers: &headers,
            query: None,
            source_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let endpoint = cluster
            .pick(input, &[])
            .and_then(|i| cluster.endpoints.get(i))
            .ok_or_else(|| io::Error::other(format!("{}: no healthy endpoint", cluster.name)))?;
        let plan =
            TlsPlan::for_endpoint(&cluster.tls, endpoint.sidecar, h2, workload_tls.load_full())
                .map_err(|reason| io::Error::other(format!("tls: {reason}")))?;
        let stream = connect_tcp(
            &endpoint.address,
            cluster.connect_timeout,
            cluster.upstream_bind,
        )
        .await?;
        let (io, _) = handshake::connect(stream, &plan, failures)
            .await
            .map_err(|failure| io::Error::other(format!("tls: {}", failure.0)))?;
        Ok(io)
    }
}

/// A connector for hyper's pooled client and tonic's channel: every new
/// connection goes where [`AuthzUpstream`] says, whatever the URI names.
#[derive(Clone)]
pub struct AuthzConnector {
    upstream: Arc<AuthzUpstream>,
    h2: bool,
    /// TLS failures of these connections (reasons as the proxy counts them;
    /// the check's own error says what failed).
    failures: IntCounterVec,
}

impl AuthzConnector {
    /// A connector to `upstream`, speaking HTTP/2 (gRPC) when `h2`.
    pub fn new(upstream: Arc<AuthzUpstream>, h2: bool) -> Self {
        let failures = IntCounterVec::new(
            prometheus::Opts::new("ext_authz_tls_failures", "unregistered"),
            &["direction", "reason"],
        )
        .unwrap_or_else(|_| unreachable!("valid static metric options"));
        Self {
            upstream,
            h2,
            failures,
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
            let io = this.upstream.connect(this.h2, &this.failures).await?;
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
