//! What a captured connection is (DESIGN §2 "Listeners and capture"): its
//! original destination looked up in the snapshot's address map, its
//! protocol declared or detected, and where it goes — HTTP routing, the
//! TCP proxy, TLS passed through by SNI — or, outside the registry,
//! `outboundTrafficPolicy`'s answer. Inbound, the local application on the
//! port the connection was sent to, and never anywhere else.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::tcp::TcpTarget;
use super::{Captured, Unregistered};
use crate::capture::detect::{Detected, detect, detect_tls, take_undecided};
use crate::capture::{INBOUND_PASSTHROUGH_V4, INBOUND_PASSTHROUGH_V6};
use crate::model::Snapshot;
use crate::model::capture::{Destination, EgressProxy, InboundApp, OutboundTrafficMode};
use crate::model::cluster::Cluster;
use crate::model::peer::PeerInfo;
use crate::model::service::Protocol;
use crate::model::service::ServiceName;

/// How a captured outbound connection is handled.
#[derive(Debug)]
pub enum Outbound {
    /// HTTP requests, routed by Host (and the destination when the Host
    /// names no service).
    Http(Captured),
    /// Bytes to a target (TCP, and TLS passed through), with the SNI its
    /// TLS ClientHello named, when it was read.
    Tcp {
        /// Where the bytes go, before the VirtualService's rules.
        target: TcpTarget,
        /// The SNI.
        sni: Option<String>,
        /// Bytes a detection that timed out peeked, read off the socket to
        /// be sent first ([`take_undecided`]).
        undecided: bytes::Bytes,
    },
}

/// Decides a captured outbound connection to `dst`: its protocol from the
/// destination's port declaration, else from its first bytes (peeked, not
/// consumed, for at most `protocolDetectionTimeout`). A port declared TLS
/// (or HTTPS) detects nothing: its ClientHello is awaited for as long as
/// the client takes ([`client_hello`]).
///
/// # Errors
/// The socket's errors while its first bytes are awaited; on a port
/// declared TLS, [`io::ErrorKind::TimedOut`] when no ClientHello came
/// within the downstream idle timeout.
pub async fn outbound(
    snapshot: &Snapshot,
    stream: &TcpStream,
    dst: SocketAddr,
) -> io::Result<Outbound> {
    let capture = &snapshot.capture;
    let found = capture.destinations.lookup(dst);
    let declared = match found {
        Some(Destination::Service(cluster) | Destination::Endpoint { cluster, .. }) => {
            cluster.protocol
        }
        Some(Destination::Port(services)) => services.protocol,
        None => Protocol::Auto,
    };
    let detected = match declared {
        Protocol::Tls => Some(client_hello(stream, snapshot.bootstrap.downstream.idle).await?),
        Protocol::Auto => Some(detect(stream, capture.protocol_detection_timeout).await?),
        _ => None,
    };
    let (http, sni) = match (declared, &detected) {
        (Protocol::Tcp, _) => (false, None),
        (Protocol::Http | Protocol::Http2 | Protocol::Grpc, _) => (true, None),
        (_, Some(Detected::Http1 | Detected::Http2)) => (true, None),
        (_, Some(Detected::Tls { sni, .. })) => (false, sni.as_deref()),
        (_, _) => (false, None),
    };
    if http {
        let service = match found {
            Some(Destination::Service(cluster) | Destination::Endpoint { cluster, .. }) => {
                Some(cluster.clone())
            }
            Some(Destination::Port(_)) | None => None,
        };
        return Ok(Outbound::Http(Captured::Outbound {
            original_dst: dst,
            service,
            unregistered: match (capture.outbound_traffic_policy, &capture.egress_proxy) {
                (OutboundTrafficMode::AllowAny, None) => {
                    Unregistered::Passthrough(passthrough(dst, Protocol::Auto))
                }
                (OutboundTrafficMode::AllowAny, Some(EgressProxy::Cluster(proxy))) => {
                    Unregistered::Passthrough(proxy.clone())
                }
                (OutboundTrafficMode::AllowAny, Some(EgressProxy::Missing)) => {
                    Unregistered::NoCluster
                }
                (OutboundTrafficMode::RegistryOnly, _) => Unregistered::BlackHole,
            },
            original_endpoint: Default::default(),
        }));
    }
    let to = |cluster: &Arc<Cluster>, endpoint: Option<&Arc<_>>| TcpTarget::Cluster {
        cluster: cluster.clone(),
        endpoint: endpoint.cloned(),
    };
    let target = match found {
        Some(Destination::Service(cluster)) => to(cluster, None),
        Some(Destination::Endpoint { cluster, endpoint }) => to(cluster, Some(endpoint)),
        // Address-less services on the port: TLS picks by SNI, the most
        // specific host first, plain TCP takes the first (it carries no
        // name). On a port declared TLS what is not TLS, or names no host,
        // matches no service, as it matches none of Envoy's filter chains
        // by `server_names`: the traffic policy decides where it goes.
        Some(Destination::Port(services)) => {
            let chosen = match sni {
                Some(sni) => services.by_sni(sni),
                None if services.protocol == Protocol::Tls || detected_tls(&detected) => None,
                None => services.clusters.first(),
            };
            match chosen {
                Some(cluster) => to(cluster, None),
                None => outside_registry(snapshot, dst),
            }
        }
        None => outside_registry(snapshot, dst),
    };
    let undecided = match &detected {
        Some(detected) => take_undecided(detected, stream)?,
        None => bytes::Bytes::new(),
    };
    Ok(Outbound::Tcp {
        target,
        sni: sni.map(str::to_owned),
        undecided,
    })
}

/// A captured TCP connection to `dst` that no service takes (or, with
/// `tls[]` rules, no rule takes): passed through to `dst` (ALLOW_ANY) or
/// refused (REGISTRY_ONLY), by `outboundTrafficPolicy`.
pub fn outside_registry(snapshot: &Snapshot, dst: SocketAddr) -> TcpTarget {
    match snapshot.capture.outbound_traffic_policy {
        OutboundTrafficMode::AllowAny => match &snapshot.capture.egress_proxy {
            None => TcpTarget::Cluster {
                cluster: passthrough(dst, Protocol::Tcp),
                endpoint: None,
            },
            Some(EgressProxy::Cluster(proxy)) => TcpTarget::Cluster {
                cluster: proxy.clone(),
                endpoint: None,
            },
            Some(EgressProxy::Missing) => TcpTarget::BlackHole,
        },
        OutboundTrafficMode::RegistryOnly => TcpTarget::BlackHole,
    }
}

/// A captured TCP or TLS connection to `dst`, once routed: to an
/// `ORIGINAL_DST` cluster (a ServiceEntry with `resolution: NONE`, a
/// DestinationRule `loadBalancer.simple: PASSTHROUGH`) it goes
/// where it was going (on the port's `targetPort` when set), as Envoy's
/// cluster sends it, under the cluster's policies; any other target is
/// left as it is.
pub fn at_original_destination(target: TcpTarget, dst: SocketAddr) -> TcpTarget {
    match target {
        TcpTarget::Cluster {
            cluster,
            endpoint: None,
        } if cluster.original_dst.is_some() => {
            let endpoint = cluster.original_destination_endpoint(dst).map(Arc::new);
            TcpTarget::Cluster { cluster, endpoint }
        }
        target => target,
    }
}

fn detected_tls(detected: &Option<Detected>) -> bool {
    matches!(detected, Some(Detected::Tls { .. }))
}

/// The ClientHello of a connection to a port declared TLS, as Istio's
/// listener for such a port reads it: only its TLS inspector runs, with no
/// listener filter timeout (`ListenerFiltersTimeout: 0` in
/// `buildListenerFromEntry`), so a client that pauses before its hello is
/// still routed by its SNI — `protocolDetectionTimeout` is for sniffing
/// undeclared ports. The first byte still decides whether it is TLS at all
/// (anything else is [`Detected::Opaque`] at once). The wait is bounded by
/// the downstream idle timeout (`spec.downstream.idleTimeout`, none when
/// it is off), as every connection with nothing in flight is: past it the
/// connection is refused with [`io::ErrorKind::TimedOut`], so a client
/// that never speaks holds nothing but its own connection, and not for
/// good.
async fn client_hello(stream: &TcpStream, idle: Option<Duration>) -> io::Result<Detected> {
    let hello = detect_tls(stream, Duration::ZERO);
    let Some(idle) = idle else {
        return hello.await;
    };
    match tokio::time::timeout(idle, hello).await {
        Ok(detected) => detected,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no ClientHello within the idle timeout ({idle:?})"),
        )),
    }
}

/// Istio's `PassthroughCluster` for one original destination.
fn passthrough(dst: SocketAddr, protocol: Protocol) -> Arc<Cluster> {
    Arc::new(Cluster::original_destination(
        "PassthroughCluster".to_owned(),
        ServiceName::outside_registry(OutboundTrafficMode::AllowAny),
        dst,
        protocol,
        Arc::new(PeerInfo::unknown()),
        None,
    ))
}

/// The local application a captured inbound connection to `dst` goes to,
/// or `None` when `dst` is not this pod's (the inbound listener is never
/// an open proxy).
pub fn inbound_app(snapshot: &Snapshot, dst: SocketAddr) -> Option<Arc<Cluster>> {
    let capture = &snapshot.capture;
    let ports = [
        capture.inbound_port,
        capture.outbound_port,
        snapshot.listeners.admin.port(),
    ];
    if ports.contains(&dst.port()) || !is_local(dst.ip()) {
        return None;
    }
    Some(match capture.inbound_app {
        InboundApp::Fixed(_) => snapshot.inbound.clone(),
        InboundApp::OriginalDestination => {
            let protocol = capture
                .inbound_ports
                .get(&dst.port())
                .copied()
                .unwrap_or(Protocol::Auto);
            let bind = match dst {
                SocketAddr::V4(_) => IpAddr::V4(INBOUND_PASSTHROUGH_V4),
                SocketAddr::V6(_) => IpAddr::V6(INBOUND_PASSTHROUGH_V6),
            };
            let identity = &snapshot.identity;
            Arc::new(Cluster::original_destination(
                format!("inbound|{}||", dst.port()),
                identity.service.clone(),
                dst,
                protocol,
                identity.peer.clone(),
                Some(bind),
            ))
        }
    })
}

/// Whether `ip` is an address of this network namespace: binding it works.
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile_text;
    use crate::model::live::LiveState;
    use tokio::io::AsyncWriteExt;

    /// Two hosts of one address-less ServiceEntry on a port declared TLS,
    /// the first declared first; a short detection timeout.
    const CONFIG: &str = r#"
apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: client-v1, namespace: default}
spec:
  service: client
  capture: {mode: REDIRECT, protocolDetectionTimeout: 50ms}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: example, namespace: default}
spec:
  hosts: [api.example.com, other.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
"#;

    fn snapshot() -> Snapshot {
        let file = Arc::from("capture.yaml");
        match compile_text(&file, CONFIG, 1, &LiveState::default()) {
            Ok(compiled) => compiled.snapshot,
            Err(rejected) => panic!("{rejected}"),
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// rustls' ClientHello for `sni`.
    fn client_hello_for(sni: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut wire = Vec::new();
        conn.write_tls(&mut wire).unwrap();
        wire
    }

    #[tokio::test]
    async fn a_late_client_hello_on_a_declared_tls_port_is_routed_by_its_sni() {
        let snapshot = snapshot();
        let (mut client, server) = pair().await;
        // Six detection timeouts later: a port declared TLS does not
        // detect, it waits for the hello.
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client
                .write_all(&client_hello_for("other.example.com"))
                .await
                .unwrap();
            client
        });
        let dst = "192.0.2.1:443".parse().unwrap();
        let decided = outbound(&snapshot, &server, dst).await.unwrap();
        let _client = late.await.unwrap();
        let Outbound::Tcp {
            target: TcpTarget::Cluster { cluster, .. },
            sni,
            undecided,
        } = decided
        else {
            panic!("TLS to a service: {decided:?}");
        };
        assert_eq!(cluster.name, "outbound|443||other.example.com");
        assert_eq!(sni.as_deref(), Some("other.example.com"));
        assert!(undecided.is_empty(), "the hello is peeked, not read");
    }

    #[tokio::test]
    async fn a_client_hello_that_never_comes_ends_at_the_idle_timeout() {
        let (_client, server) = pair().await;
        let idle = Some(Duration::from_millis(100));
        let error = client_hello(&server, idle).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        // Anything but a handshake record decides at once, idle or not.
        let (mut client, server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let detected = client_hello(&server, None).await.unwrap();
        assert_eq!(detected, Detected::Opaque { timed_out: false });
    }

    #[test]
    fn only_this_namespace_addresses_are_local() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(
            !is_local("192.0.2.1".parse().unwrap()),
            "TEST-NET-1 is nobody's"
        );
    }
}
