//! The ingress gateway's compiled listeners, in Envoy's terms as Istio
//! renders a gateway: one listener per Gateway port, each with filter
//! chains. A chain answers a set of SNI names (none: every connection, and
//! every plaintext connection), may terminate TLS, and then either routes
//! HTTP by its route table (the same [`RouteTable`] sidecars route by) or
//! forwards the bytes (TLS passthrough by SNI, TCP). Built once per config
//! load by `compile::gateway`; every lookup here is a pure function.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use super::cluster::Cluster;
use super::destination::DestinationTarget;
use super::route::RouteTable;
use crate::config::ingress_gateway::IngressGatewaySpec;
use crate::host::host_matches;
use crate::tls::verify::ClientPins;

/// Everything an ingress gateway serves, compiled once per config load
/// (`compile::compile_gateway_text`) and swapped whole on reload, as the
/// sidecar's [`Snapshot`](super::Snapshot) is.
#[derive(Debug)]
pub struct GatewaySnapshot {
    /// Increments with each accepted load.
    pub version: u64,
    /// The IngressGateway bootstrap as written (admin, telemetry, access
    /// log, identity source, concurrency, drain).
    pub bootstrap: IngressGatewaySpec,
    /// Who the gateway is.
    pub identity: Arc<GatewayIdentity>,
    /// Its ports and filter chains.
    pub listeners: GatewayListeners,
    /// Every mesh cluster it can reach (for `/clusters`).
    pub clusters: Vec<Arc<Cluster>>,
}

/// The gateway workload.
#[derive(Debug, Clone)]
pub struct GatewayIdentity {
    /// `metadata.name` of the IngressGateway.
    pub workload: String,
    /// Its namespace (default `istio-system`).
    pub namespace: String,
    /// The service FQDN it is reached as.
    pub service: String,
    /// Its labels (Gateways' `selector` match them).
    pub labels: BTreeMap<String, String>,
    /// `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`.
    pub spiffe: tracemesh_ca::SpiffeId,
}

/// Every port the gateway listens on.
#[derive(Debug, Default)]
pub struct GatewayListeners {
    /// By port number, ascending.
    pub ports: Vec<GatewayPort>,
}

impl GatewayListeners {
    /// The listener of a Gateway port.
    pub fn port(&self, number: u16) -> Option<&GatewayPort> {
        self.ports.iter().find(|p| p.number == number)
    }
}

/// What a port carries: it decides what happens when a connection arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortProtocol {
    /// Plaintext HTTP/1.1 or HTTP/2 (prior knowledge): Gateway servers of
    /// protocol HTTP, HTTP2, GRPC.
    Http,
    /// TLS: the ClientHello's SNI picks the chain, which terminates TLS
    /// (HTTPS, TLS with SIMPLE/MUTUAL) or passes it through.
    Tls,
    /// Plain TCP (TCP, MONGO, MYSQL, REDIS servers).
    Tcp,
}

/// One Gateway port: its bound address and filter chains.
#[derive(Debug)]
pub struct GatewayPort {
    /// The port as the Gateway resources name it (`servers[].port.number`,
    /// `listeners[].port`); what `match.port` and redirects see.
    pub number: u16,
    /// Where it is bound (the IngressGateway's `spec.listeners`).
    pub listen: SocketAddr,
    /// What it carries.
    pub protocol: PortProtocol,
    /// Filter chains; on a TLS port, each answers its `server_names`.
    pub chains: Vec<FilterChain>,
}

impl GatewayPort {
    /// The chain a connection with `sni` (none: no SNI, or plaintext)
    /// takes, as Envoy's filter chain match picks it: an exact server name
    /// (an AUTO_PASSTHROUGH chain's names are its clusters' SNIs, as Istio
    /// renders one chain per cluster), else the longest `*.suffix` that
    /// covers it, else the chain without server names.
    pub fn chain(&self, sni: Option<&str>) -> Option<&FilterChain> {
        let by_name = || {
            (self.chains.iter()).filter(|c| !matches!(c.action, ChainAction::AutoPassthrough(_)))
        };
        if let Some(sni) = sni {
            let sni = sni.strip_suffix('.').unwrap_or(sni);
            if let Some(exact) =
                by_name().find(|c| c.server_names.iter().any(|n| n.eq_ignore_ascii_case(sni)))
            {
                return Some(exact);
            }
            let lower = sni.to_ascii_lowercase();
            let auto = self.chains.iter().find(|c| {
                matches!(&c.action, ChainAction::AutoPassthrough(clusters) if clusters.contains_key(&lower))
            });
            if auto.is_some() {
                return auto;
            }
            let wildcard = by_name()
                .filter_map(|c| {
                    let best = c
                        .server_names
                        .iter()
                        .filter(|n| n.starts_with("*.") && host_matches(n, &lower))
                        .map(String::len)
                        .max()?;
                    Some((best, c))
                })
                .max_by_key(|(len, _)| *len);
            if let Some((_, chain)) = wildcard {
                return Some(chain);
            }
        }
        by_name().find(|c| c.server_names.is_empty())
    }
}

/// Which Gateway server (or listener) a chain comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRef {
    /// `namespace/name` of the Gateway resource.
    pub gateway: String,
    /// The server's port name (Istio) or the listener's name (Kubernetes).
    pub name: String,
}

/// One filter chain: which connections it takes and what it does.
#[derive(Debug)]
pub struct FilterChain {
    /// Istio's name for the chain's routes (`http.80`,
    /// `https.443.https.bookinfo-gateway.default`), for `/routes` and stats.
    pub name: String,
    /// The servers it serves.
    pub servers: Vec<ServerRef>,
    /// SNI names it answers (exact or `*.suffix`); empty: every connection.
    pub server_names: Vec<String>,
    /// TLS it terminates; none for plaintext and passthrough chains.
    pub tls: Option<ServerTls>,
    /// What happens to the (decrypted) stream.
    pub action: ChainAction,
}

/// What a chain does with a connection.
#[derive(Debug)]
pub enum ChainAction {
    /// Serve HTTP and route each request by this table (VirtualServices
    /// bound to the Gateway, HTTPRoutes and GRPCRoutes attached to it).
    Http(Arc<RouteTable>),
    /// Forward the bytes: TLS passthrough routes by SNI, or TCP routes.
    /// A connection no route takes is closed.
    Forward(Vec<L4Route>),
    /// Istio's AUTO_PASSTHROUGH: the SNI names the cluster
    /// (`outbound_.<port>_.<subset>_.<host>`, Istio's DNS SRV form), as an
    /// east-west gateway forwards mTLS between networks.
    AutoPassthrough(HashMap<String, Arc<Cluster>>),
}

/// A TLS-terminating chain's TLS.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Istio's mode.
    pub mode: ServerTlsMode,
    /// The rustls config (certificates, client verification, versions,
    /// cipher suites, ALPN). None for ISTIO_MUTUAL: the gateway's workload
    /// certificate (its `TlsMaterial`, which rotates) serves it, requiring
    /// a mesh peer certificate.
    pub config: Option<Arc<rustls::ServerConfig>>,
    /// The URI SANs of the certificate `config` serves (`By` in the XFCC
    /// element of its connections); empty for ISTIO_MUTUAL, whose
    /// workload certificate's are read at each handshake.
    pub local_uris: Vec<String>,
    /// ISTIO_MUTUAL's `subjectAltNames`: one of them the client's
    /// certificate must carry, checked as its handshake ends (the other
    /// modes check theirs in `config`).
    pub peer_names: Option<Arc<ClientPins>>,
}

/// Istio's `ServerTLSSettings.mode` for a terminating server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerTlsMode {
    /// Server certificate only.
    Simple,
    /// A client certificate signed by the server's CA is required.
    Mutual,
    /// A client certificate is verified when sent, not required.
    OptionalMutual,
    /// Mesh mTLS with the gateway's workload identity.
    IstioMutual,
}

/// A route for forwarded bytes (VirtualService `tls[]` or `tcp[]`).
#[derive(Debug)]
pub struct L4Route {
    /// SNI names it takes (exact or `*.suffix`; TLS routes); empty: any.
    pub sni_hosts: Vec<String>,
    /// Weighted destinations.
    pub destinations: Vec<L4Destination>,
}

/// One weighted destination of an [`L4Route`].
#[derive(Debug)]
pub struct L4Destination {
    /// Where to.
    pub target: DestinationTarget,
    /// Relative weight.
    pub weight: u32,
}

impl L4Route {
    /// Picks a destination by weight (uniformly at random).
    pub fn pick(&self) -> Option<&L4Destination> {
        // Validation bounds the total to 32 bits; saturating, a config
        // past it still cannot overflow here.
        let total = self
            .destinations
            .iter()
            .fold(0u32, |total, d| total.saturating_add(d.weight));
        if self.destinations.len() == 1 {
            return self.destinations.first();
        }
        if total == 0 {
            return None;
        }
        let mut ticket = fastrand::u32(..total);
        self.destinations.iter().find(|d| {
            if ticket < d.weight {
                true
            } else {
                ticket -= d.weight;
                false
            }
        })
    }
}

/// The route a forwarded connection with `sni` takes: the route naming it
/// exactly, else the one with the longest `*.suffix` covering it, else the
/// first route without SNI names or with `*` (as Envoy's filter chains, one
/// per TLS route, are matched), whether or not the client sent a name.
pub fn l4_route<'r>(routes: &'r [L4Route], sni: Option<&str>) -> Option<&'r L4Route> {
    if let Some(sni) = sni {
        let sni = sni.strip_suffix('.').unwrap_or(sni).to_ascii_lowercase();
        if let Some(exact) = routes.iter().find(|r| r.sni_hosts.contains(&sni)) {
            return Some(exact);
        }
        let wildcard = routes
            .iter()
            .filter_map(|r| {
                let best = r
                    .sni_hosts
                    .iter()
                    .filter(|h| h.starts_with("*.") && host_matches(h, &sni))
                    .map(String::len)
                    .max()?;
                Some((best, r))
            })
            .max_by_key(|(len, _)| *len);
        if let Some((_, route)) = wildcard {
            return Some(route);
        }
    }
    // `*` is rendered as a chain without `server_names` (Istio's
    // `toFilterChainMatch`), as a route without `sniHosts`: it takes a
    // connection that names nothing too.
    routes
        .iter()
        .find(|r| r.sni_hosts.is_empty() || r.sni_hosts.iter().any(|h| h == "*"))
}

/// Istio's SNI for a cluster (`outbound_.9080_._.reviews.default.svc.cluster.local`),
/// which AUTO_PASSTHROUGH chains route by.
pub fn cluster_sni(port: u16, subset: Option<&str>, host: &str) -> String {
    format!("outbound_.{port}_.{}_.{host}", subset.unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(names: &[&str]) -> FilterChain {
        FilterChain {
            name: names.join(","),
            servers: Vec::new(),
            server_names: names.iter().map(|n| (*n).to_owned()).collect(),
            tls: None,
            action: ChainAction::Forward(Vec::new()),
        }
    }

    #[test]
    fn chains_match_exact_then_longest_wildcard_then_catch_all() {
        let port = GatewayPort {
            number: 443,
            listen: "127.0.0.1:0".parse().unwrap(),
            protocol: PortProtocol::Tls,
            chains: vec![
                chain(&["*.example.com"]),
                chain(&["*.api.example.com"]),
                chain(&["www.example.com"]),
                chain(&[]),
            ],
        };
        let name = |sni| port.chain(sni).map(|c| c.name.as_str());
        assert_eq!(name(Some("www.example.com")), Some("www.example.com"));
        assert_eq!(name(Some("WWW.Example.com.")), Some("www.example.com"));
        assert_eq!(name(Some("v1.api.example.com")), Some("*.api.example.com"));
        assert_eq!(name(Some("shop.example.com")), Some("*.example.com"));
        assert_eq!(name(Some("example.org")), Some(""));
        assert_eq!(name(None), Some(""));
    }

    fn route(hosts: &[&str]) -> L4Route {
        L4Route {
            sni_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            destinations: Vec::new(),
        }
    }

    #[test]
    fn l4_routes_by_sni_specificity() {
        let routes = vec![
            route(&["*.example.com"]),
            route(&["db.example.com"]),
            route(&[]),
        ];
        let pick =
            |sni| l4_route(&routes, sni).map(|r| r.sni_hosts.first().cloned().unwrap_or_default());
        assert_eq!(pick(Some("db.example.com")), Some("db.example.com".into()));
        assert_eq!(pick(Some("web.example.com")), Some("*.example.com".into()));
        assert_eq!(pick(Some("other.org")), Some(String::new()));
        // `*` is no server name at all: it takes a client naming none too.
        let starred = vec![route(&["db.example.com"]), route(&["*"])];
        let pick = |sni| l4_route(&starred, sni).map(|r| r.sni_hosts[0].clone());
        assert_eq!(pick(None), Some("*".into()));
        assert_eq!(pick(Some("web.example.com")), Some("*".into()));
        assert_eq!(pick(Some("db.example.com")), Some("db.example.com".into()));
        assert_eq!(
            cluster_sni(9080, None, "reviews.default.svc.cluster.local"),
            "outbound_.9080_._.reviews.default.svc.cluster.local"
        );
    }
}
