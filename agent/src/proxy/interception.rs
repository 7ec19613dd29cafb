//! What a captured connection is (DESIGN §2 "Listeners and capture"): its
//! original destination looked up in the snapshot's address map, its
//! protocol declared or detected, and where it goes — HTTP routing, the
//! TCP proxy, TLS passed through by SNI — or, outside the registry,
//! `outboundTrafficPolicy`'s answer. Inbound, the local application on the
//! port the connection was sent to, and never anywhere else.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpStream;

use super::tcp::TcpTarget;
use super::{Captured, Unregistered};
use crate::capture::detect::{Detected, detect, take_undecided};
use crate::capture::{INBOUND_PASSTHROUGH_V4, INBOUND_PASSTHROUGH_V6};
use crate::model::Snapshot;
use crate::model::capture::{Destination, InboundApp, OutboundTrafficMode};
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
/// consumed, for at most `protocolDetectionTimeout`).
///
/// # Errors
/// The socket's errors while its first bytes are awaited.
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
        Protocol::Tls | Protocol::Auto => {
            Some(detect(stream, capture.protocol_detection_timeout).await?)
        }
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
            unregistered: match capture.outbound_traffic_policy {
                OutboundTrafficMode::AllowAny => {
                    Unregistered::Passthrough(passthrough(dst, Protocol::Auto))
                }
                OutboundTrafficMode::RegistryOnly => Unregistered::BlackHole,
            },
        }));
    }
    let to = |cluster: &Arc<Cluster>, endpoint: Option<&Arc<_>>| TcpTarget::Cluster {
        cluster: cluster.clone(),
        endpoint: endpoint.cloned(),
    };
    let target = match found {
        Some(Destination::Service(cluster)) => to(cluster, None),
        Some(Destination::Endpoint { cluster, endpoint }) => to(cluster, Some(endpoint)),
        // Address-less services on the port: TLS picks by SNI, plain TCP
        // takes the first (it carries no name).
        Some(Destination::Port(services)) => {
            let chosen = match sni {
                Some(sni) => services
                    .clusters
                    .iter()
                    .find(|c| host_matches(&c.service.host, sni)),
                None if detected_tls(&detected) => None,
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
        OutboundTrafficMode::AllowAny => TcpTarget::Cluster {
            cluster: passthrough(dst, Protocol::Tcp),
            endpoint: None,
        },
        OutboundTrafficMode::RegistryOnly => TcpTarget::BlackHole,
    }
}

fn detected_tls(detected: &Option<Detected>) -> bool {
    matches!(detected, Some(Detected::Tls { .. }))
}

/// Whether a ServiceEntry host (maybe `*.example.com`) covers `sni`.
fn host_matches(host: &str, sni: &str) -> bool {
    match host.strip_prefix('*') {
        Some(suffix) => sni.len() > suffix.len() && sni.ends_with(suffix),
        None => host.eq_ignore_ascii_case(sni),
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

    #[test]
    fn wildcard_hosts_cover_their_subdomains_only() {
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("api.example.com", "API.example.com"));
        assert!(!host_matches("api.example.com", "web.example.com"));
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
