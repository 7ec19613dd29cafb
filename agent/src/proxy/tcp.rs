//! Plain TCP proxying for ports declared TCP: bytes pass through unparsed and
//! are counted in Istio's `istio_tcp_*` metrics.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use http::HeaderMap;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Worker;
use super::forward::tls_plan;
use super::pool::connect_tcp;
use crate::flags::ResponseFlags;
use crate::model::MtlsMode;
use crate::model::balancer::PickInput;
use crate::model::cluster::Cluster;
use crate::model::endpoint::Endpoint;
use crate::model::peer::PeerInfo;
use crate::telemetry::metrics::{ByAddress, PeerLabels, Reporter};
use crate::tls::handshake;
use crate::tls::io::UpstreamIo;

/// Proxies one connection: outbound to the service of TCP listener
/// `outbound_index`, or inbound (`None`) to the local application. Both
/// sides speak mTLS as the HTTP listeners do: inbound by PeerAuthentication,
/// outbound by the cluster's TLS.
pub async fn serve(
    worker: Rc<Worker>,
    downstream: TcpStream,
    peer: SocketAddr,
    outbound_index: Option<usize>,
) {
    let snapshot = worker.shared.config.load_full();
    let shared = &worker.shared;
    let (cluster, reporter, mode) = match outbound_index {
        Some(index) => match snapshot.tcp_routes.get(index) {
            Some(cluster) => (cluster.clone(), Reporter::Source, MtlsMode::Disable),
            None => return,
        },
        None => (
            snapshot.inbound.clone(),
            Reporter::Destination,
            snapshot.inbound_mtls,
        ),
    };
    let Ok((downstream, caller)) = handshake::accept(
        downstream,
        mode,
        shared.tls.load_full(),
        &shared.metrics.tls_failures,
    )
    .await
    else {
        return; // refused and counted
    };
    let no_headers = HeaderMap::new();
    let input = PickInput {
        headers: &no_headers,
        query: None,
        source_ip: peer.ip(),
    };
    let endpoint = cluster
        .pick(input, &[])
        .map(|i| cluster.endpoints[i].clone());
    let mut flags = ResponseFlags::NONE;
    let mut upstream = None;
    let mut callee = None;
    match &endpoint {
        None => flags = ResponseFlags::NO_HEALTHY_UPSTREAM,
        Some(endpoint) => match dial(&worker, &cluster, endpoint).await {
            Ok((stream, identity)) => {
                upstream = Some(stream);
                callee = identity;
            }
            Err(error) => {
                tracing::debug!(%error, upstream = %endpoint.address, "tcp upstream connect failed");
                flags = ResponseFlags::UPSTREAM_CONNECT_FAILURE;
            }
        },
    }
    let unknown = Arc::new(PeerInfo::unknown());
    let ours = Some(ByAddress(snapshot.identity.principal.clone()));
    let labels = match reporter {
        Reporter::Source => PeerLabels {
            reporter,
            source: ByAddress(snapshot.identity.peer.clone()),
            destination: ByAddress(endpoint.as_ref().map_or(unknown, |e| e.peer.clone())),
            service: ByAddress(cluster.service.clone()),
            security: "unknown",
            principals: [
                callee.is_some().then_some(ours).flatten(),
                callee.map(|c| ByAddress(Arc::from(c.to_string()))),
            ],
        },
        Reporter::Destination => {
            let theirs = caller.and_then(|c| c.principal).map(ByAddress);
            PeerLabels {
                reporter,
                source: ByAddress(unknown),
                destination: ByAddress(snapshot.identity.peer.clone()),
                service: ByAddress(cluster.service.clone()),
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
    let handles = shared.metrics.tcp_handles(&labels, flags);
    if let Some(handles) = &handles {
        handles.opened.inc();
    }
    if let (Some(upstream), Some(endpoint)) = (upstream, endpoint) {
        let _active = endpoint.state.start_request();
        let (mut down_read, mut down_write) = tokio::io::split(downstream);
        let (mut up_read, mut up_write) = tokio::io::split(upstream);
        let _ = tokio::join!(
            pipe(
                &mut down_read,
                &mut up_write,
                handles.as_ref().map(|h| &h.received)
            ),
            pipe(
                &mut up_read,
                &mut down_write,
                handles.as_ref().map(|h| &h.sent)
            ),
        );
    }
    if let Some(handles) = &handles {
        handles.closed.inc();
    }
}

/// TCP to the endpoint, then TLS when the cluster says so.
async fn dial(
    worker: &Worker,
    cluster: &Cluster,
    endpoint: &Endpoint,
) -> Result<(UpstreamIo, Option<tracemesh_ca::SpiffeId>), String> {
    let plan = tls_plan(worker, cluster, endpoint, false).map_err(|e| format!("{e:?}"))?;
    let stream = connect_tcp(&endpoint.address, cluster.connect_timeout)
        .await
        .map_err(|e| e.to_string())?;
    handshake::connect(stream, &plan, &worker.shared.metrics.tls_failures)
        .await
        .map_err(|failure| format!("tls: {}", failure.0))
}

/// Copies until end of stream, counting bytes as they pass (so long-lived
/// connections show up in metrics before they close), then half-closes.
async fn pipe<R, W>(from: &mut R, to: &mut W, counter: Option<&IntCounter>) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        if let Some(counter) = counter {
            counter.inc_by(n as u64);
        }
    }
}
