//! Building blocks for the request path's unit tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::model::balancer::Balancer;
use crate::model::cluster::{Cluster, UpstreamTls};
use crate::model::endpoint::{Endpoint, UpstreamAddr};
use crate::model::live::{ClusterState, EndpointState, OutlierSettings, PoolLimits};
use crate::model::service::{Protocol, ServiceName};

/// A plaintext HTTP cluster of `svc` on port 80 over `addresses`, picked
/// round-robin from the first.
pub fn cluster(
    addresses: &[SocketAddr],
    limits: PoolLimits,
    outlier: Option<OutlierSettings>,
) -> Arc<Cluster> {
    let endpoints = addresses
        .iter()
        .map(|address| {
            let state = Arc::new(EndpointState::default());
            let address = UpstreamAddr::Socket(*address);
            Arc::new(Endpoint::new(address, BTreeMap::new(), state, "default"))
        })
        .collect();
    Arc::new(Cluster {
        name: "outbound|80||svc.default.svc.cluster.local".into(),
        service: Arc::new(ServiceName::new("svc.default.svc.cluster.local", "default")),
        port: 80,
        protocol: Protocol::Http,
        subset: None,
        endpoints,
        balancer: Balancer::RoundRobin(Default::default()),
        connect_timeout: Duration::from_secs(2),
        limits,
        tcp_idle_timeout: None,
        destination_rule: Some(Arc::from("DestinationRule:default/svc")),
        outlier,
        h2_upgrade: false,
        use_client_protocol: false,
        state: Arc::new(ClusterState::default()),
        tls: UpstreamTls::Plain,
        upstream_bind: None,
        original_dst: None,
        keepalive: Default::default(),
        pooling: Default::default(),
        dns_names: Default::default(),
    })
}

/// A worker's connection pools, counting into throwaway counters.
pub fn pools() -> std::rc::Rc<super::pool::Pools> {
    use prometheus::{IntCounter, IntCounterVec, Opts};
    let opened = IntCounter::new("opened", "connections opened").expect("a counter");
    let failures = IntCounterVec::new(Opts::new("tls", "tls failures"), &["side", "reason"])
        .expect("a counter");
    std::rc::Rc::new(super::pool::Pools::new(opened, failures))
}

/// The plaintext pool key of `cluster`'s first endpoint.
pub fn key(cluster: &Cluster) -> super::pool::PoolKey {
    super::pool::PoolKey::new(
        &cluster.endpoints[0].address,
        cluster,
        &crate::tls::TlsPlan::Plain,
    )
}

/// How an [`answer_once`] server leaves its connection after its answer.
pub enum Then {
    /// Shuts its writing down, then reads until the client closes.
    Close,
    /// Resets it (`SO_LINGER` 0, then closed).
    Reset,
    /// Holds it open and reads nothing more, for as long as the test runs.
    Hold,
}

/// A server on 127.0.0.1:0, spawned on this thread's `LocalSet`: it
/// accepts one connection, reads once (the request, or its start), writes
/// `answer` byte for byte and then does `then`. Its address.
pub async fn answer_once(answer: &'static [u8], then: Then) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("an address");
    tokio::task::spawn_local(async move {
        let (mut stream, _) = listener.accept().await.expect("a connection");
        let mut request = [0u8; 4096];
        let read = stream.read(&mut request).await.expect("a read");
        assert!(read > 0, "a request");
        stream.write_all(answer).await.expect("a write");
        match then {
            Then::Close => {
                stream.shutdown().await.expect("a shutdown");
                while stream.read(&mut request).await.is_ok_and(|n| n > 0) {}
            }
            Then::Reset => stream.set_zero_linger().expect("SO_LINGER 0"),
            Then::Hold => {
                std::future::pending::<()>().await;
                drop(stream);
            }
        }
    });
    address
}
