//! What the listeners do with captured connections (DESIGN §2 "Listeners
//! and capture"): whether capture is on, where inbound connections go,
//! how long protocol detection may wait, what happens outside the
//! registry, and the compiled map from a connection's original
//! destination to the service it addresses.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use foldhash::HashMap;
use ipnet::IpNet;

use super::cluster::Cluster;
use super::endpoint::Endpoint;
use super::service::Protocol;

/// How connections reach the listeners (Istio's `interceptionMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterceptionMode {
    /// The application sends to the outbound listener itself (explicit mode).
    None,
    /// `tracemesh iptables` redirects the pod's TCP to the listeners.
    Redirect,
}

/// Where a captured inbound connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundApp {
    /// Always this address (`spec.inbound.app`).
    Fixed(SocketAddr),
    /// The application on the port the connection was sent to: connect to
    /// the original destination (the pod's own address) from the
    /// passthrough source 127.0.0.6 / ::6, which `tracemesh iptables`
    /// leaves uncaptured — so an application bound to the pod IP works,
    /// and one bound to localhost only stays unreachable, as without a mesh.
    OriginalDestination,
}

/// `outboundTrafficPolicy.mode`: what happens to a connection whose
/// destination the registry does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutboundTrafficMode {
    /// Passed through to where it was going; `PassthroughCluster` in
    /// metrics and spans.
    #[default]
    AllowAny,
    /// Refused; `BlackHoleCluster` in metrics and spans, 502 for HTTP.
    RegistryOnly,
}

impl OutboundTrafficMode {
    /// Parses Istio's names (`ALLOW_ANY`, `REGISTRY_ONLY`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "ALLOW_ANY" => Some(Self::AllowAny),
            "REGISTRY_ONLY" => Some(Self::RegistryOnly),
            _ => None,
        }
    }

    /// The cluster name metrics and spans show for such a connection.
    pub fn cluster_name(self) -> &'static str {
        match self {
            Self::AllowAny => "PassthroughCluster",
            Self::RegistryOnly => "BlackHoleCluster",
        }
    }
}

/// The default `protocolDetectionTimeout`.
pub const DEFAULT_PROTOCOL_DETECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// Capture settings and the destination map, compiled once per snapshot.
#[derive(Debug)]
pub struct Capture {
    /// Whether connections are redirected to the listeners.
    pub mode: InterceptionMode,
    /// The outbound capture port (the outbound listener's port).
    pub outbound_port: u16,
    /// The inbound capture port (the inbound listener's port).
    pub inbound_port: u16,
    /// Where captured inbound connections go.
    pub inbound_app: InboundApp,
    /// Declared protocol of this workload's own ports, by the port the
    /// application listens on (its service's `targetPort`, else `number`);
    /// a port not listed is detected from its first bytes.
    pub inbound_ports: BTreeMap<u16, Protocol>,
    /// The ports this workload's own service declares, by the port a
    /// request arrives on: what an inbound span is named after.
    pub service_ports: ServicePorts,
    /// Longest wait for a client's first bytes on a port of undeclared
    /// protocol; zero waits without limit.
    pub protocol_detection_timeout: Duration,
    /// What happens outside the registry (the Agent's, or the applying
    /// Sidecar's).
    pub outbound_traffic_policy: OutboundTrafficMode,
    /// `namespace/name` of the Sidecar that applies to this workload.
    pub sidecar: Option<String>,
    /// Under ALLOW_ANY, the Sidecar's `outboundTrafficPolicy.egressProxy`:
    /// traffic outside the registry goes there instead of to its original
    /// destination, as Istio routes its catch-all (`allow_any`) to the
    /// egress proxy's cluster.
    pub egress_proxy: Option<EgressProxy>,
    /// Original destination → service.
    pub destinations: Destinations,
}

/// Where a Sidecar's `egressProxy` sends what is outside the registry.
#[derive(Debug, Clone)]
pub enum EgressProxy {
    /// The proxy's cluster.
    Cluster(Arc<crate::model::cluster::Cluster>),
    /// A proxy this workload has no cluster for (not in the registry, or
    /// outside the Sidecar's egress hosts): requests get 503 `NC` and
    /// connections are closed, as Envoy fails a route to a cluster istiod
    /// did not send it.
    Missing,
}

/// This workload's own service ports (ServiceEntry `ports[].number`), by
/// the port inbound requests arrive on (`targetPort`, else `number`, and
/// the endpoints' `ports`).
#[derive(Debug, Default)]
pub struct ServicePorts {
    /// Declared port by arrival port.
    pub by_arrival: BTreeMap<u16, u16>,
    /// The declared port when the service has exactly one and requests
    /// arrive on the inbound listener's own port (no capture).
    pub only: Option<u16>,
}

impl ServicePorts {
    /// The declared port a request arriving on `port` addressed: the one
    /// mapped to it, else the service's only port.
    pub fn addressed(&self, port: u16) -> Option<u16> {
        self.by_arrival.get(&port).copied().or(self.only)
    }

    /// Whether a Host's `port` may name the service: one it declares, or
    /// any when it declares none (nothing to check it against).
    pub fn may_name(&self, port: u16) -> bool {
        let declared = || self.only == Some(port) || self.by_arrival.values().any(|&p| p == port);
        (self.only.is_none() && self.by_arrival.is_empty()) || declared()
    }
}

/// What a captured outbound connection's original destination addresses.
#[derive(Debug, Clone, Copy)]
pub enum Destination<'a> {
    /// A service address (a VIP, or inside a CIDR of its `addresses`) on one
    /// of its ports: the port's cluster (all endpoints; routing and
    /// subsets apply as for any request to the service).
    Service(&'a Arc<Cluster>),
    /// One endpoint's own address and port (a call straight to a pod IP):
    /// the service it belongs to, and that endpoint, which the caller chose.
    Endpoint {
        /// The service port's cluster.
        cluster: &'a Arc<Cluster>,
        /// The endpoint addressed.
        endpoint: &'a Arc<Endpoint>,
    },
    /// No address matched, but services without `addresses` declare this
    /// port (Istio's `0.0.0.0:<port>` listener): HTTP picks among them by
    /// Host (the route table's virtual hosts, an exact domain before any
    /// wildcard), TLS by SNI ([`PortServices::by_sni`]), TCP takes the
    /// first.
    Port(&'a PortServices),
}

/// Services without `addresses` that declare one port.
#[derive(Debug)]
pub struct PortServices {
    /// The port's protocol (the first declaration's).
    pub protocol: Protocol,
    /// Their clusters for this port, in declaration order.
    pub clusters: Vec<Arc<Cluster>>,
    /// Their exact hosts, by name (the first declaration of a name keeps
    /// it).
    exact: HashMap<String, Arc<Cluster>>,
    /// Their wildcard hosts (`*.example.com`), longest suffix first
    /// (stable: declaration order among equals).
    wildcards: Vec<Arc<Cluster>>,
}

impl PortServices {
    /// The service a TLS ClientHello's server name (lower-cased, as
    /// detection reads it) picks, as Envoy matches a filter chain's
    /// `server_names`: the exact host, else the wildcard with the longest
    /// suffix that covers it — whatever order they were declared in. Both
    /// orders are built once, with the map; this allocates nothing.
    pub fn by_sni(&self, sni: &str) -> Option<&Arc<Cluster>> {
        self.exact.get(sni).or_else(|| {
            self.wildcards
                .iter()
                .find(|c| crate::host::host_matches(&c.service.host, sni))
        })
    }

    fn push(&mut self, cluster: &Arc<Cluster>) {
        let host = &cluster.service.host;
        if host.starts_with('*') {
            let at = self
                .wildcards
                .partition_point(|c| c.service.host.len() >= host.len());
            self.wildcards.insert(at, cluster.clone());
        } else {
            self.exact
                .entry(host.clone())
                .or_insert_with(|| cluster.clone());
        }
        self.clusters.push(cluster.clone());
    }
}

#[derive(Debug)]
enum Exact {
    Service(Arc<Cluster>),
    Endpoint(Arc<Cluster>, Arc<Endpoint>),
}

/// The address map: exact addresses (VIPs, endpoint IPs) by hash, CIDR
/// `addresses` longest prefix first, then ports of address-less services.
/// Built once; [`Destinations::lookup`] allocates nothing.
#[derive(Debug, Default)]
pub struct Destinations {
    exact: HashMap<(IpAddr, u16), Exact>,
    /// Sorted by prefix length, longest first (stable: declaration order
    /// among equals).
    prefixes: Vec<(IpNet, u16, Arc<Cluster>)>,
    ports: HashMap<u16, PortServices>,
}

/// Why an entry was not added: an earlier one holds the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The cluster that keeps it.
    pub by: String,
}

impl Destinations {
    /// Maps `net` (a VIP as a host prefix, or a CIDR) on `cluster`'s port
    /// to `cluster`.
    ///
    /// # Errors
    /// [`Taken`] when an earlier service claimed the same prefix and port.
    pub fn add_address(&mut self, net: IpNet, cluster: &Arc<Cluster>) -> Result<(), Taken> {
        let net = net.trunc();
        let port = cluster.port;
        if net.prefix_len() == net.max_prefix_len() {
            return match self.exact.get(&(net.addr(), port)) {
                Some(Exact::Service(c) | Exact::Endpoint(c, _)) => {
                    Err(Taken { by: c.name.clone() })
                }
                None => {
                    self.exact
                        .insert((net.addr(), port), Exact::Service(cluster.clone()));
                    Ok(())
                }
            };
        }
        if let Some((_, _, c)) = self
            .prefixes
            .iter()
            .find(|(n, p, _)| *n == net && *p == port)
        {
            return Err(Taken { by: c.name.clone() });
        }
        let at = self
            .prefixes
            .partition_point(|(n, _, _)| n.prefix_len() >= net.prefix_len());
        self.prefixes.insert(at, (net, port, cluster.clone()));
        Ok(())
    }

    /// Maps an endpoint's own address to it, unless a service address or
    /// another service's endpoint already holds it (a pod behind several
    /// services: the first declared wins).
    pub fn add_endpoint(
        &mut self,
        address: SocketAddr,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
    ) {
        self.exact
            .entry((address.ip().to_canonical(), address.port()))
            .or_insert_with(|| Exact::Endpoint(cluster.clone(), endpoint.clone()));
    }

    /// Declares `cluster`'s port for a service without addresses.
    ///
    /// # Errors
    /// [`Taken`] when the port is already declared with a protocol it
    /// cannot share with (the first declaration keeps it): HTTP, HTTP2 and
    /// gRPC share, TLS shares with TLS, TCP with nothing — plain bytes carry
    /// no name to choose a service by.
    pub fn add_port(&mut self, cluster: &Arc<Cluster>) -> Result<(), Taken> {
        let entry = self
            .ports
            .entry(cluster.port)
            .or_insert_with(|| PortServices {
                protocol: cluster.protocol,
                clusters: Vec::new(),
                exact: HashMap::default(),
                wildcards: Vec::new(),
            });
        // HTTP-family ports share one listener (routed by Host), TLS ports
        // too (by SNI); plain TCP carries no name to tell services apart.
        let shares = (entry.protocol.is_http() && cluster.protocol.is_http())
            || (entry.protocol == Protocol::Tls && cluster.protocol == Protocol::Tls);
        if let Some(first) = entry.clusters.first()
            && !shares
        {
            return Err(Taken {
                by: first.name.clone(),
            });
        }
        entry.push(cluster);
        Ok(())
    }

    /// The service a connection to `dst` addresses: an exact address (VIP
    /// or endpoint), then the longest CIDR, then the port of address-less
    /// services; `None` outside the registry.
    pub fn lookup(&self, dst: SocketAddr) -> Option<Destination<'_>> {
        let ip = dst.ip().to_canonical();
        let port = dst.port();
        if let Some(exact) = self.exact.get(&(ip, port)) {
            return Some(match exact {
                Exact::Service(cluster) => Destination::Service(cluster),
                Exact::Endpoint(cluster, endpoint) => Destination::Endpoint { cluster, endpoint },
            });
        }
        if let Some((_, _, cluster)) = self
            .prefixes
            .iter()
            .find(|(net, p, _)| *p == port && net.contains(&ip))
        {
            return Some(Destination::Service(cluster));
        }
        self.ports.get(&port).map(Destination::Port)
    }

    /// How many addresses and ports are mapped (for `/config_dump`).
    pub fn len(&self) -> usize {
        self.exact.len() + self.prefixes.len() + self.ports.len()
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cluster::testing::cluster;

    fn net(s: &str) -> IpNet {
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .unwrap()
    }

    fn host(d: Option<Destination<'_>>) -> String {
        match d {
            Some(Destination::Service(c)) => format!("service {}", c.name),
            Some(Destination::Endpoint { cluster, endpoint }) => {
                format!("endpoint {} of {}", endpoint.address, cluster.name)
            }
            Some(Destination::Port(p)) => format!(
                "port {} {:?}",
                p.protocol,
                p.clusters.iter().map(|c| &c.name).collect::<Vec<_>>()
            ),
            None => "outside".into(),
        }
    }

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn vips_endpoints_and_cidrs_longest_prefix_first() {
        let mut map = Destinations::default();
        let reviews = cluster(
            "reviews.default.svc.cluster.local",
            9080,
            Protocol::Http,
            &["10.244.0.12:8080"],
        );
        let wide = cluster("corp.example.com", 5432, Protocol::Tcp, &[]);
        let narrow = cluster("db.corp.example.com", 5432, Protocol::Tcp, &[]);
        let v6 = cluster(
            "ratings.default.svc.cluster.local",
            9080,
            Protocol::Http,
            &[],
        );
        map.add_address(net("10.96.0.20"), &reviews).unwrap();
        map.add_address(net("10.0.0.0/8"), &wide).unwrap();
        map.add_address(net("10.20.0.0/16"), &narrow).unwrap();
        map.add_address(net("fd00:96::30"), &v6).unwrap();
        map.add_endpoint(at("10.244.0.12:8080"), &reviews, &reviews.endpoints[0]);

        assert_eq!(
            host(map.lookup(at("10.96.0.20:9080"))),
            "service outbound|9080||reviews.default.svc.cluster.local"
        );
        assert_eq!(
            host(map.lookup(at("10.96.0.20:9081"))),
            "outside",
            "an undeclared port of a VIP"
        );
        assert_eq!(
            host(map.lookup(at("10.244.0.12:8080"))),
            "endpoint 10.244.0.12:8080 of outbound|9080||reviews.default.svc.cluster.local",
            "a pod IP on its target port"
        );
        assert_eq!(
            host(map.lookup(at("10.20.1.1:5432"))),
            "service outbound|5432||db.corp.example.com"
        );
        assert_eq!(
            host(map.lookup(at("10.30.1.1:5432"))),
            "service outbound|5432||corp.example.com"
        );
        assert_eq!(host(map.lookup(at("11.0.0.1:5432"))), "outside");
        assert_eq!(
            host(map.lookup(at("[fd00:96::30]:9080"))),
            "service outbound|9080||ratings.default.svc.cluster.local"
        );
        assert_eq!(
            host(map.lookup(at("[::ffff:10.96.0.20]:9080"))),
            "service outbound|9080||reviews.default.svc.cluster.local",
            "IPv4-mapped as IPv4"
        );
    }

    #[test]
    fn the_first_claim_of_an_address_wins() {
        let mut map = Destinations::default();
        let a = cluster("a.example", 80, Protocol::Http, &["10.244.0.20:80"]);
        let b = cluster("b.example", 80, Protocol::Http, &["10.244.0.20:80"]);
        map.add_address(net("10.96.0.1"), &a).unwrap();
        assert_eq!(
            map.add_address(net("10.96.0.1/32"), &b),
            Err(Taken { by: a.name.clone() })
        );
        map.add_address(net("10.1.0.0/16"), &a).unwrap();
        assert!(
            map.add_address(net("10.1.2.3/16"), &b).is_err(),
            "the same prefix, host bits aside"
        );
        map.add_endpoint(at("10.244.0.20:80"), &a, &a.endpoints[0]);
        map.add_endpoint(at("10.244.0.20:80"), &b, &b.endpoints[0]);
        assert_eq!(
            host(map.lookup(at("10.244.0.20:80"))),
            "endpoint 10.244.0.20:80 of outbound|80||a.example"
        );
        map.add_endpoint(at("10.96.0.1:80"), &b, &b.endpoints[0]);
        assert_eq!(
            host(map.lookup(at("10.96.0.1:80"))),
            "service outbound|80||a.example",
            "a VIP outranks an endpoint"
        );
    }

    #[test]
    fn address_less_services_share_http_and_tls_ports_not_tcp() {
        let mut map = Destinations::default();
        let httpbin = cluster("httpbin.org", 80, Protocol::Http, &[]);
        let example = cluster("example.com", 80, Protocol::Http, &[]);
        let tls_a = cluster("a.example", 443, Protocol::Tls, &[]);
        let tls_b = cluster("b.example", 443, Protocol::Tls, &[]);
        let db_a = cluster("db-a.example", 5432, Protocol::Tcp, &[]);
        let db_b = cluster("db-b.example", 5432, Protocol::Tcp, &[]);
        let tcp80 = cluster("raw.example", 80, Protocol::Tcp, &[]);
        let grpc80 = cluster("grpc.example", 80, Protocol::Grpc, &[]);
        map.add_port(&httpbin).unwrap();
        map.add_port(&example).unwrap();
        map.add_port(&tls_a).unwrap();
        map.add_port(&tls_b).unwrap();
        map.add_port(&db_a).unwrap();
        assert_eq!(
            map.add_port(&db_b),
            Err(Taken {
                by: db_a.name.clone()
            })
        );
        assert_eq!(
            map.add_port(&tcp80),
            Err(Taken {
                by: httpbin.name.clone()
            })
        );
        map.add_port(&grpc80).expect("gRPC shares the HTTP port");
        assert_eq!(
            host(map.lookup(at("93.184.216.34:80"))),
            "port HTTP [\"outbound|80||httpbin.org\", \"outbound|80||example.com\", \"outbound|80||grpc.example\"]"
        );
        assert_eq!(
            host(map.lookup(at("93.184.216.34:443"))),
            "port TLS [\"outbound|443||a.example\", \"outbound|443||b.example\"]"
        );
        assert_eq!(
            host(map.lookup(at("93.184.216.34:5432"))),
            "port TCP [\"outbound|5432||db-a.example\"]"
        );
        assert_eq!(host(map.lookup(at("93.184.216.34:8080"))), "outside");
    }

    #[test]
    fn sni_picks_the_exact_host_then_the_longest_wildcard_whatever_the_order() {
        let mut map = Destinations::default();
        let any = cluster("*", 443, Protocol::Tls, &[]);
        let wide = cluster("*.example.com", 443, Protocol::Tls, &[]);
        let eu = cluster("*.eu.example.com", 443, Protocol::Tls, &[]);
        let api = cluster("api.example.com", 443, Protocol::Tls, &[]);
        let api_again = cluster("api.example.com", 443, Protocol::Tls, &[]);
        let other_eu = cluster("*.de.example.com", 443, Protocol::Tls, &[]);
        // The widest first, the exact host last.
        for c in [&any, &wide, &eu, &api, &api_again, &other_eu] {
            map.add_port(c).unwrap();
        }
        let Some(Destination::Port(port)) = map.lookup(at("203.0.113.1:443")) else {
            panic!("the port of address-less services");
        };
        let picked = |sni| port.by_sni(sni).map(Arc::as_ptr);
        assert_eq!(picked("api.example.com"), Some(Arc::as_ptr(&api)));
        assert_eq!(picked("x.eu.example.com"), Some(Arc::as_ptr(&eu)));
        assert_eq!(picked("x.de.example.com"), Some(Arc::as_ptr(&other_eu)));
        assert_eq!(picked("www.example.com"), Some(Arc::as_ptr(&wide)));
        assert_eq!(picked("example.org"), Some(Arc::as_ptr(&any)));
        assert_eq!(
            port.clusters.first().map(Arc::as_ptr),
            Some(Arc::as_ptr(&any)),
            "declaration order is kept for plain TCP"
        );

        let mut map = Destinations::default();
        map.add_port(&wide).unwrap();
        let Some(Destination::Port(port)) = map.lookup(at("203.0.113.1:443")) else {
            panic!("the port of address-less services");
        };
        assert!(port.by_sni("example.com").is_none(), "no subdomain");
        assert!(port.by_sni("api.example.org").is_none());
    }

    #[test]
    fn traffic_policy_names() {
        assert_eq!(
            OutboundTrafficMode::parse("REGISTRY_ONLY"),
            Some(OutboundTrafficMode::RegistryOnly)
        );
        assert_eq!(
            OutboundTrafficMode::parse("registry_only"),
            None,
            "Istio's enum is case-sensitive"
        );
        assert_eq!(
            OutboundTrafficMode::default().cluster_name(),
            "PassthroughCluster"
        );
        assert_eq!(
            OutboundTrafficMode::RegistryOnly.cluster_name(),
            "BlackHoleCluster"
        );
    }
}
