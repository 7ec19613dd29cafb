//! A sidecar's TCP routing: the VirtualService `tls[]` and `tcp[]` rules
//! that apply to an outbound TCP or TLS service port (Istio's sidecar TCP
//! and TLS filter chains), so a connection can be sent by its SNI, or
//! shifted between subsets or services by weight.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::cluster::Cluster;
use super::gateway::L4Route;

/// One `tls[]` or `tcp[]` rule, its static conditions (port,
/// `sourceLabels`, `sourceNamespace`, `gateways`) already judged for this
/// workload.
#[derive(Debug)]
pub struct TcpRule {
    /// Conditions on the connection's addresses, ORed; empty: every
    /// connection.
    pub matches: Vec<TcpMatch>,
    /// Where matching connections go, by weight.
    pub route: L4Route,
    /// `VirtualService namespace/name spec.tcp[index]` (or `spec.tls`), for
    /// logs.
    pub reference: Arc<str>,
}

/// The conditions of one `match` entry checked per connection.
#[derive(Debug, Default)]
pub struct TcpMatch {
    /// `sniHosts` of a `tls[]` match, lowercase (exact, `*.suffix` or
    /// `*`); empty for a `tcp[]` match.
    pub sni_hosts: Vec<String>,
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

/// The `tls[]` and `tcp[]` rules of every outbound service port that has
/// any, by the name of the service port's cluster (`outbound|port||host`).
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

    /// The rules of the port whose cluster is named `cluster`.
    pub fn rules(&self, cluster: &str) -> Option<&[TcpRule]> {
        self.by_cluster.get(cluster).map(Vec::as_slice)
    }

    /// Routes a connection from `source` to `destination` addressed to the
    /// service port of `cluster`, whose TLS ClientHello named `sni` (when
    /// it was read). As Envoy picks Istio's filter chains: a `tls[]` rule
    /// by the most specific of its `sniHosts` covering the SNI (exact, else
    /// the longest wildcard; the first rule among equals), else the first
    /// `tcp[]` rule whose conditions hold. The rule picks a destination by
    /// weight; its cluster is the one for the destination's `port`, else
    /// for the service port addressed.
    pub fn route(
        &self,
        cluster: &Cluster,
        source: IpAddr,
        destination: IpAddr,
        sni: Option<&str>,
    ) -> TcpRouted<'_> {
        let Some(rules) = self.by_cluster.get(&cluster.name) else {
            return TcpRouted::Unrouted;
        };
        let by_sni = sni.and_then(|sni| by_sni(rules, sni, source, destination));
        let rule = by_sni.or_else(|| {
            rules.iter().find(|r| {
                r.matches.is_empty()
                    || r.matches
                        .iter()
                        .any(|m| m.sni_hosts.is_empty() && m.admits(source, destination))
            })
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

/// The `tls[]` rule whose `sniHosts` cover `sni` most specifically, among
/// the matches whose addresses hold.
fn by_sni<'r>(
    rules: &'r [TcpRule],
    sni: &str,
    source: IpAddr,
    destination: IpAddr,
) -> Option<&'r TcpRule> {
    let sni = sni.strip_suffix('.').unwrap_or(sni).to_ascii_lowercase();
    let mut best: Option<(usize, &TcpRule)> = None;
    for rule in rules {
        let specificity = rule
            .matches
            .iter()
            .filter(|m| m.admits(source, destination))
            .flat_map(|m| &m.sni_hosts)
            .filter(|h| crate::host::host_matches(h, &sni))
            .map(|h| {
                if h.starts_with('*') {
                    h.len()
                } else {
                    usize::MAX
                }
            })
            .max();
        if let Some(s) = specificity
            && best.is_none_or(|(b, _)| s > b)
        {
            best = Some((s, rule));
        }
    }
    best.map(|(_, rule)| rule)
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
            ..TcpMatch::default()
        };
        let nowhere = TcpMatch {
            source_subnet: Some("192.168.1.0/24".parse().unwrap()),
            ..TcpMatch::default()
        };
        routes.insert(
            service.name.clone(),
            vec![
                rule(vec![subnet], Some(v2.clone())),
                rule(vec![nowhere], None),
            ],
        );
        let to = |src: &str, dst: &str| name(routes.route(&service, ip(src), ip(dst), None));
        assert_eq!(to("127.0.0.1", "10.1.2.3"), Some("outbound|5432||db-v2"));
        // An IPv4-mapped destination is matched as the IPv4 address it is.
        assert_eq!(
            to("127.0.0.1", "::ffff:10.1.2.3"),
            Some("outbound|5432||db-v2")
        );
        assert_eq!(to("192.168.1.7", "127.0.0.1"), None);
        assert_eq!(to("127.0.0.1", "127.0.0.1"), Some("unrouted"));
        let other = cluster("cache", 6379, Protocol::Tcp, &[]);
        let routed = routes.route(&other, ip("10.0.0.1"), ip("10.0.0.2"), None);
        assert_eq!(name(routed), Some("unrouted"));
    }

    #[test]
    fn tls_rules_pick_by_the_most_specific_sni_then_tcp_rules_decide() {
        let service = cluster("web", 443, Protocol::Tls, &[]);
        let exact = cluster("exact", 443, Protocol::Tls, &[]);
        let wild = cluster("wild", 443, Protocol::Tls, &[]);
        let fallback = cluster("fallback", 443, Protocol::Tls, &[]);
        let sni = |hosts: &[&str]| TcpMatch {
            sni_hosts: hosts.iter().map(ToString::to_string).collect(),
            ..TcpMatch::default()
        };
        let mut routes = TcpRoutes::default();
        routes.insert(
            service.name.clone(),
            vec![
                rule(vec![sni(&["*.example.com"])], Some(wild.clone())),
                rule(vec![sni(&["api.example.com"])], Some(exact.clone())),
                rule(Vec::new(), Some(fallback.clone())),
            ],
        );
        let to =
            |sni: Option<&str>| name(routes.route(&service, ip("127.0.0.1"), ip("10.0.0.1"), sni));
        assert_eq!(to(Some("API.example.com.")), Some("outbound|443||exact"));
        assert_eq!(to(Some("www.example.com")), Some("outbound|443||wild"));
        assert_eq!(to(Some("example.org")), Some("outbound|443||fallback"));
        assert_eq!(to(None), Some("outbound|443||fallback"));
    }
}
