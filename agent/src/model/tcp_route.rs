//! A sidecar's TCP routing: the VirtualService `tls[]` rules of an
//! outbound TLS service port, or the `tcp[]` rules of a TCP or undeclared
//! one (Istio's sidecar TLS and TCP filter chains), so a connection can be
//! sent by its SNI, or shifted between subsets or services by weight.

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
    /// Conditions checked per connection, ORed; empty: every connection.
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
    /// `sniHosts` of a `tls[]` match, lowercase (exact, `*.suffix`, or `*`
    /// for any connection, with an SNI or without); empty for `tcp[]`.
    pub sni_hosts: Vec<String>,
    /// `destinationSubnets`: the address the client connected to is in one
    /// of them; empty: any.
    pub destination_subnets: Vec<IpNet>,
}

impl TcpMatch {
    /// How specifically this match takes a connection to `destination`
    /// with `sni`, as Envoy ranks filter chains — the longest destination
    /// prefix first (none written ranks below any), then the SNI (exact,
    /// else the longest `*.suffix`, else `*`) — or `None` when it does not
    /// take it.
    fn rank(&self, destination: IpAddr, sni: Option<&str>, tls: bool) -> Option<(i16, usize)> {
        // An IPv4-mapped address is matched as the IPv4 address it is.
        let destination = destination.to_canonical();
        let prefix = if self.destination_subnets.is_empty() {
            -1
        } else {
            self.destination_subnets
                .iter()
                .filter(|n| n.contains(&destination))
                .map(|n| i16::from(n.prefix_len()))
                .max()?
        };
        if !tls {
            return Some((prefix, 0));
        }
        let by_sni = self
            .sni_hosts
            .iter()
            .filter_map(|h| match (h.as_str(), sni) {
                ("*", _) => Some(1),
                (_, None) => None,
                (h, Some(sni)) if h.starts_with('*') => {
                    crate::host::host_matches(h, sni).then_some(h.len())
                }
                (h, Some(sni)) => (h == sni).then_some(usize::MAX),
            })
            .max()?;
        Some((prefix, by_sni))
    }
}

/// Where a connection to a service port goes by the rules.
#[derive(Debug)]
pub enum TcpRouted<'a> {
    /// No rule is written for the port, or no `tcp[]` rule matches: the
    /// service's own cluster (Istio's default TCP filter chain).
    Unrouted,
    /// The picked destination's cluster.
    To(&'a Arc<Cluster>),
    /// The port has `tls[]` rules and none takes this connection's SNI (or
    /// it sent none): Istio has no chain to the service then, and the
    /// connection takes the listener's passthrough chain — outside the
    /// registry.
    Unmatched,
    /// The matching rule's destination has no cluster (an unknown host or
    /// subset, a port the service lacks, or every weight zero): the
    /// connection is closed, as Envoy's `tcp_proxy` closes it (`NC`).
    NoCluster {
        /// The rule's reference.
        rule: &'a str,
        /// The destination's host.
        host: &'a str,
    },
}

/// The rules of every outbound service port that has any, by the name of
/// the service port's cluster (`outbound|port||host`).
#[derive(Debug, Default)]
pub struct TcpRoutes {
    by_cluster: HashMap<String, Vec<TcpRule>>,
}

impl TcpRoutes {
    /// Rules for the service port whose cluster is named `cluster`: its
    /// `tls[]` rules on a TLS port, else its `tcp[]` rules, in the order
    /// they are tried among equals.
    pub fn insert(&mut self, cluster: String, rules: Vec<TcpRule>) {
        self.by_cluster.insert(cluster, rules);
    }

    /// The rules of the port whose cluster is named `cluster`.
    pub fn rules(&self, cluster: &str) -> Option<&[TcpRule]> {
        self.by_cluster.get(cluster).map(Vec::as_slice)
    }

    /// Routes a connection to `destination` addressed to the service port
    /// of `cluster`, whose TLS ClientHello named `sni` (when it was read),
    /// as Envoy picks among Istio's filter chains: the rule with the most
    /// specific match (the longest `destinationSubnets` prefix, then for
    /// `tls[]` the most specific of its `sniHosts`), the first among
    /// equals. The rule picks a destination by weight; its cluster is the
    /// one for the destination's `port`, else for the service port
    /// addressed.
    pub fn route(
        &self,
        cluster: &Cluster,
        destination: IpAddr,
        sni: Option<&str>,
    ) -> TcpRouted<'_> {
        let Some(rules) = self.by_cluster.get(&cluster.name) else {
            return TcpRouted::Unrouted;
        };
        let tls = rules
            .iter()
            .any(|r| r.matches.iter().any(|m| !m.sni_hosts.is_empty()));
        let sni = sni.map(|s| s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase());
        let mut best: Option<((i16, usize), &TcpRule)> = None;
        for rule in rules {
            let rank = if rule.matches.is_empty() {
                Some((-1, 0))
            } else {
                rule.matches
                    .iter()
                    .filter_map(|m| m.rank(destination, sni.as_deref(), tls))
                    .max()
            };
            if let Some(rank) = rank
                && best.is_none_or(|(b, _)| rank > b)
            {
                best = Some((rank, rule));
            }
        }
        let Some((_, rule)) = best else {
            return if tls {
                TcpRouted::Unmatched
            } else {
                TcpRouted::Unrouted
            };
        };
        let picked = rule.route.pick();
        match picked.and_then(|d| d.target.cluster_for(cluster.port)) {
            Some(to) => TcpRouted::To(to),
            None => TcpRouted::NoCluster {
                rule: &rule.reference,
                host: picked.map_or("", |d| &d.target.host),
            },
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

    fn name(routed: TcpRouted<'_>) -> String {
        match routed {
            TcpRouted::To(cluster) => cluster.name.clone(),
            TcpRouted::Unrouted => "unrouted".into(),
            TcpRouted::Unmatched => "unmatched".into(),
            TcpRouted::NoCluster { rule, host } => format!("no cluster for {host} by {rule}"),
        }
    }

    fn subnets(nets: &[&str]) -> TcpMatch {
        TcpMatch {
            destination_subnets: nets.iter().map(|n| n.parse().unwrap()).collect(),
            ..TcpMatch::default()
        }
    }

    #[test]
    fn the_longest_destination_prefix_decides_then_the_first_rule() {
        let service = cluster("db", 5432, Protocol::Tcp, &[]);
        let wide = cluster("wide", 5432, Protocol::Tcp, &[]);
        let narrow = cluster("narrow", 5432, Protocol::Tcp, &[]);
        let any = cluster("any", 5432, Protocol::Tcp, &[]);
        let mut routes = TcpRoutes::default();
        routes.insert(
            service.name.clone(),
            vec![
                rule(vec![subnets(&["10.0.0.0/8"])], Some(wide.clone())),
                rule(vec![subnets(&["10.1.0.0/16"])], Some(narrow.clone())),
                rule(vec![subnets(&["192.168.0.0/16"])], None),
                rule(Vec::new(), Some(any.clone())),
                rule(Vec::new(), None),
            ],
        );
        let to = |dst: &str| name(routes.route(&service, ip(dst), None));
        assert_eq!(to("10.1.2.3"), "outbound|5432||narrow");
        assert_eq!(to("10.2.0.1"), "outbound|5432||wide");
        // An IPv4-mapped destination is matched as the IPv4 address it is.
        assert_eq!(to("::ffff:10.2.0.1"), "outbound|5432||wide");
        // A catch-all ranks below any prefix; the first of two wins.
        assert_eq!(to("127.0.0.1"), "outbound|5432||any");
        assert_eq!(
            to("192.168.1.1"),
            "no cluster for db.default.svc.cluster.local by VirtualService default/db spec.tcp[0]"
        );
        let other = cluster("cache", 6379, Protocol::Tcp, &[]);
        assert_eq!(name(routes.route(&other, ip("10.0.0.2"), None)), "unrouted");
    }

    #[test]
    fn tls_rules_pick_by_prefix_then_sni_and_an_unmatched_sni_leaves_the_registry() {
        let service = cluster("web", 443, Protocol::Tls, &[]);
        let exact = cluster("exact", 443, Protocol::Tls, &[]);
        let wild = cluster("wild", 443, Protocol::Tls, &[]);
        let local = cluster("local", 443, Protocol::Tls, &[]);
        let sni = |hosts: &[&str], nets: &[&str]| TcpMatch {
            sni_hosts: hosts.iter().map(ToString::to_string).collect(),
            ..subnets(nets)
        };
        let mut routes = TcpRoutes::default();
        routes.insert(
            service.name.clone(),
            vec![
                rule(vec![sni(&["*.example.com"], &[])], Some(wild.clone())),
                rule(vec![sni(&["api.example.com"], &[])], Some(exact.clone())),
                rule(
                    vec![sni(&["*.example.com"], &["10.0.0.0/8"])],
                    Some(local.clone()),
                ),
            ],
        );
        let to = |dst: &str, sni: Option<&str>| name(routes.route(&service, ip(dst), sni));
        assert_eq!(
            to("192.0.2.1", Some("API.example.com.")),
            "outbound|443||exact"
        );
        assert_eq!(
            to("192.0.2.1", Some("www.example.com")),
            "outbound|443||wild"
        );
        // The destination prefix ranks before the SNI, as in Envoy.
        assert_eq!(
            to("10.0.0.1", Some("api.example.com")),
            "outbound|443||local"
        );
        assert_eq!(to("192.0.2.1", Some("example.org")), "unmatched");
        assert_eq!(to("192.0.2.1", None), "unmatched");
        // `*` takes every connection, with an SNI or without.
        routes.insert(
            service.name.clone(),
            vec![rule(vec![sni(&["*"], &[])], Some(wild.clone()))],
        );
        assert_eq!(
            name(routes.route(&service, ip("192.0.2.1"), None)),
            "outbound|443||wild"
        );
    }
}
