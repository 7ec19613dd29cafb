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
use super::pool::connect_tcp;
use crate::balancer::PickInput;
use crate::flags::ResponseFlags;
use crate::telemetry::metrics::{ByAddress, PeerLabels, Reporter};
use crate::telemetry::peer_metadata::PeerInfo;

/// Proxies one connection: outbound to the service of TCP listener
/// `outbound_index`, or inbound (`None`) to the local application.
pub async fn serve(
    worker: Rc<Worker>,
    mut downstream: TcpStream,
    peer: SocketAddr,
    outbound_index: Option<usize>,
) {
    let snapshot = worker.shared.config.load_full();
    let (cluster, reporter) = match outbound_index {
        Some(index) => match snapshot.tcp_routes.get(index) {
            Some(cluster) => (cluster.clone(), Reporter::Source),
            None => return,
        },
        None => (snapshot.inbound.clone(), Reporter::Destination),
    };
    let no_headers = HeaderMap::new();
    let input = PickInput {
        headers: &no_headers,
        query: None,
        source_ip: peer.ip(),
    };
    let endpoint = cluster
        .balancer
        .pick(&cluster.endpoints, input)
        .map(|i| cluster.endpoints[i].clone());
    let unknown = Arc::new(PeerInfo::unknown());
    let local = snapshot.identity.peer.clone();
    let (source, destination, security) = match reporter {
        Reporter::Source => (
            local,
            endpoint.as_ref().map_or(unknown, |e| e.peer.clone()),
            "unknown",
        ),
        Reporter::Destination => (unknown, local, "none"),
    };
    let mut flags = ResponseFlags::NONE;
    let mut upstream = None;
    match &endpoint {
        None => flags = ResponseFlags::NO_HEALTHY_UPSTREAM,
        Some(endpoint) => match connect_tcp(&endpoint.address, cluster.connect_timeout).await {
            Ok(stream) => upstream = Some(stream),
            Err(error) => {
                tracing::debug!(%error, upstream = %endpoint.address, "tcp upstream connect failed");
                flags = ResponseFlags::UPSTREAM_CONNECT_FAILURE;
            }
        },
    }
    let labels = PeerLabels {
        reporter,
        source: ByAddress(source),
        destination: ByAddress(destination),
        service: ByAddress(cluster.service.clone()),
        security,
    };
    let handles = worker.shared.metrics.tcp_handles(&labels, flags);
    handles.opened.inc();
    if let (Some(mut upstream), Some(endpoint)) = (upstream, endpoint) {
        let _active = endpoint.state.start_request();
        let (mut down_read, mut down_write) = downstream.split();
        let (mut up_read, mut up_write) = upstream.split();
        let _ = tokio::join!(
            pipe(&mut down_read, &mut up_write, &handles.received),
            pipe(&mut up_read, &mut down_write, &handles.sent),
        );
    }
    handles.closed.inc();
}

/// Copies until end of stream, counting bytes as they pass (so long-lived
/// connections show up in metrics before they close), then half-closes.
async fn pipe<R, W>(from: &mut R, to: &mut W, counter: &IntCounter) -> std::io::Result<()>
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
        counter.inc_by(n as u64);
    }
}
