//! A sidecar's TCP routing: the VirtualService `tcp[]` rules that apply to
//! an outbound TCP service port (Istio's sidecar TCP filter chains), so a
//! connection can be shifted between subsets or services by weight.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::cluster::Cluster;
use super::gateway::L4Route;

/// One `tcp[]` rule, its static conditions (port, `sourceLabels`,
/// `sourceNamespace`, `gateways`) already judged for this workload.
#[derive(Debug)]
pub struct TcpRule {
    /// Conditions on the connection's addresses, ORed; empty: every
    /// connection.
    pub matches: Vec<TcpMatch>,
    /// Where matching connections go, by weight.
    pub route: L4Route,
    /// `VirtualService namespace/name spec.tcp[index]`, for logs.
    pub reference: Arc<str>,
}

/// The conditions of one `match` entry checked per connection.
#[derive(Debug, Default)]
pub struct TcpMatch {
    /// `destinationSubnets`: the address the client connected to is in one
    /// of them; empty: any.
    pub destination_subnets: Vec<IpNet>,
    /// `sourceSubnet`: the client's address is in it.
    pub source_subnet: Option<IpNet>,
}

impl TcpMatch {
    fn admits(&self, source: IpAddr, destination: IpAddr) -> bool {
        let (source, destination) = (canonical(source), canonical(destination));
        (self.destination_subnets.is_empty()
            || self
                .destination_subnets
                .iter()
                .any(|n| n.contains(&destination)))
            && self.source_subnet.is_none_or(|n| n.contains(&source))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Where a TCP connection to a service port goes by the rules.
#[derive(Debug)]
pub enum TcpRouted<'a> {
    /// No rule is written for the port, or none matches: the service's own
    /// cluster (Istio's default TCP filter chain).
    Unrouted,
    /// The picked destination's cluster.
    To(&'a Arc<Cluster>),
    /// The matching rule's destination has no cluster (an unknown host or
    /// subset, a port the service lacks, or every weight zero): the
    /// connection is closed. The rule's reference.
    Nowhere(&'a str),
}

/// The `tcp[]` rules of every outbound service port that has any, by the
/// name of the service port's cluster (`outbound|port||host`).
#[derive(Debug, Default)]
pub struct TcpRoutes {
    by_cluster: HashMap<String, Vec<TcpRule>>,
}

impl TcpRoutes {
    /// Rules for the service port whose cluster is named `cluster`, in the
    /// order they are tried.
    pub fn insert(&mut self, cluster: String, rules: Vec<TcpRule>) {
        self.by_cluster.insert(cluster, rules);
    }

    /// Whether any port has rules.
    pub fn is_empty(&self) -> bool {
        self.by_cluster.is_empty()
    }

    /// The rules of the port whose cluster is named `cluster`.
    pub fn rules(&self, cluster: &str) -> Option<&[TcpRule]> {
        self.by_cluster.get(cluster).map(Vec::as_slice)
    }

    /// Routes a connection from `source` to `destination` addressed to the
    /// service port of `cluster`: the first rule whose conditions hold
    /// decides, picking a destination by weight; its cluster is the one
    /// for the destination's `port`, else for the service port addressed.
    pub fn route(&self, cluster: &Cluster, source: IpAddr, destination: IpAddr) -> TcpRouted<'_> {
        let Some(rules) = self.by_cluster.get(&cluster.name) else {
            return TcpRouted::Unrouted;
        };
        let rule = rules.iter().find(|r| {
            r.matches.is_empty() || r.matches.iter().any(|m| m.admits(source, destination))
        });
        let Some(rule) = rule else {
            return TcpRouted::Unrouted;
        };
        match rule
            .route
            .pick()
            .and_then(|d| d.target.cluster_for(cluster.port))
        {
            Some(to) => TcpRouted::To(to),
            None => TcpRouted::Nowhere(&rule.reference),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cluster::testing::cluster;
    use crate::model::destination::DestinationTarget;
    use crate::model::gateway::L4Destination;
    use crate::model::service::Protocol;

    fn target(cluster: Option<Arc<Cluster>>) -> DestinationTarget {
        DestinationTarget {
            host: Arc::from("db.default.svc.cluster.local"),
            subset: None,
            port: None,
            clusters: cluster.into_iter().collect(),
        }
    }

    fn rule(matches: Vec<TcpMatch>, to: Option<Arc<Cluster>>) -> TcpRule {
        TcpRule {
            matches,
            route: L4Route {
                sni_hosts: Vec::new(),
                destinations: vec![L4Destination {
                    target: target(to),
                    weight: 100,
                }],
            },
            reference: Arc::from("VirtualService default/db spec.tcp[0]"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn name(routed: TcpRouted<'_>) -> Option<&str> {
        match routed {
            TcpRouted::To(cluster) => Some(&cluster.name),
            TcpRouted::Unrouted => Some("unrouted"),
            TcpRouted::Nowhere(_) => None,
        }
    }

    #[test]
    fn the_first_rule_whose_addresses_match_decides() {
        let service = cluster("db", 5432, Protocol::Tcp, &[]);
        let v2 = cluster("db-v2", 5432, Protocol::Tcp, &[]);
        let mut routes = TcpRoutes::default();
        let subnet = TcpMatch {
            destination_subnets: vec!["10.0.0.0/8".parse().unwrap()],
            source_subnet: None,
        };
        let nowhere = TcpMatch {
            destination_subnets: Vec::new(),
            source_subnet: Some("192.168.1.0/24".parse().unwrap()),
        };
        routes.insert(
            service.name.clone(),
            vec![
                rule(vec![subnet], Some(v2.clone())),
                rule(vec![nowhere], None),
            ],
        );
        let to = |src: &str, dst: &str| name(routes.route(&service, ip(src), ip(dst)));
        assert_eq!(to("127.0.0.1", "10.1.2.3"), Some("outbound|5432||db-v2"));
        // An IPv4-mapped destination is matched as the IPv4 address it is.
        assert_eq!(
            to("127.0.0.1", "::ffff:10.1.2.3"),
            Some("outbound|5432||db-v2")
        );
        assert_eq!(to("192.168.1.7", "127.0.0.1"), None);
        assert_eq!(to("127.0.0.1", "127.0.0.1"), Some("unrouted"));
        let other = cluster("cache", 6379, Protocol::Tcp, &[]);
        let routed = routes.route(&other, ip("10.0.0.1"), ip("10.0.0.2"));
        assert_eq!(name(routed), Some("unrouted"));
    }
}
