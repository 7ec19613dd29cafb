//! VirtualService `tls[]` and `tcp[]` rules for a sidecar's outbound TCP
//! and TLS service ports (Istio's sidecar TLS and TCP filter chains): per
//! port, the rules of every VirtualService bound to `mesh` whose hosts
//! cover the service, oldest first, their static conditions judged for
//! this workload.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::registry::Registry;
use super::routes::{Binding, Source};
use crate::config::diagnostics::{Diagnostics, Location};
use crate::config::documents::Document;
use crate::config::virtual_service::{
    L4MatchAttributes, RouteDestination, TlsMatchAttributes, VirtualServiceSpec,
};
use crate::host::{host_matches, resolve_short_name};
use crate::model::cluster::Cluster;
use crate::model::gateway::{L4Destination, L4Route};
use crate::model::service::Protocol;
use crate::model::tcp_route::{TcpMatch, TcpRoutes, TcpRule};

/// The rules of every outbound service port that carries TCP: on a port
/// declared TLS (or HTTPS) the `tls[]` rules, on one declared TCP or
/// undeclared the `tcp[]` rules — never the other kind, as Istio builds
/// them (`buildSidecarOutboundTLSFilterChainOpts`, `…TCPFilterChainOpts`).
/// Every VirtualService bound to `mesh` whose hosts cover the service
/// (its own name or a wildcard) gives its rules, oldest first (then by
/// name and namespace), merged as Istio merges them (`getConfigsForHost`);
/// `tcp[]` rules after one that takes every connection are warned as
/// unreachable.
pub(super) fn build(
    services: &[Document<VirtualServiceSpec>],
    registry: &Registry,
    source: Option<Source<'_>>,
    agent_namespace: &str,
    diags: &mut Diagnostics,
) -> TcpRoutes {
    // Each VirtualService with tls or tcp rules bound to sidecars, with its
    // namespace and its hosts as FQDNs (a VirtualService bound to gateways
    // only is warned by `routes::build`).
    let mut bound: Vec<(&Document<VirtualServiceSpec>, &str, Vec<String>)> = services
        .iter()
        .filter(|d| !d.spec.tcp.is_empty() || !d.spec.tls.is_empty())
        .filter_map(|d| {
            let namespace = d.metadata.namespace.as_deref().unwrap_or(agent_namespace);
            let hosts = d
                .spec
                .hosts
                .iter()
                .map(|h| resolve_short_name(h, namespace))
                .collect();
            Binding::Mesh
                .admits(&d.spec.gateways, namespace)
                .then_some((d, namespace, hosts))
        })
        .collect();
    // Istio's `sortConfigByCreationTime`: the oldest first, a resource
    // without a time first of all (its zero time), then by name and
    // namespace.
    bound.sort_by_key(|(d, namespace, _)| {
        (
            d.metadata.created_at(),
            d.metadata.name.clone(),
            namespace.to_string(),
        )
    });
    let mut routes = TcpRoutes::default();
    let ports = registry
        .services
        .iter()
        .flat_map(|(fqdn, s)| {
            s.clusters
                .get(&None)
                .into_iter()
                .flatten()
                .map(move |c| (fqdn, c))
        })
        .filter(|(_, c)| matches!(c.protocol, Protocol::Tcp | Protocol::Tls | Protocol::Auto));
    for (fqdn, cluster) in ports {
        let mut rules: Vec<TcpRule> = Vec::new();
        // The tcp[] rule that takes every connection, once there is one.
        let mut catch_all: Option<Arc<str>> = None;
        let covering = bound
            .iter()
            .filter(|(.., hosts)| hosts.iter().any(|h| host_matches(h, fqdn)));
        for (doc, namespace, _) in covering {
            let name = format!("{namespace}/{}", doc.metadata.name);
            let scope = PortScope {
                doc,
                name: &name,
                namespace,
                cluster,
                source,
                registry,
            };
            for (field, rule) in port_rules(&scope, diags) {
                if let Some(first) = &catch_all {
                    let msg = format!(
                        "unreachable for port {} of {fqdn}: {first} takes every connection first",
                        cluster.port
                    );
                    diags.warn(&doc.location, Some(field), msg);
                    continue;
                }
                // A rule whose conditions are all judged here takes every
                // connection left (Istio's `break TcpLoop`).
                let takes_all = rule.matches.is_empty()
                    || rule
                        .matches
                        .iter()
                        .any(|m| m.destination_subnets.is_empty());
                if takes_all && cluster.protocol != Protocol::Tls {
                    catch_all = Some(rule.reference.clone());
                }
                rules.push(rule);
            }
        }
        if !rules.is_empty() {
            routes.insert(cluster.name.clone(), rules);
        }
    }
    routes
}

/// One `match` entry of a `tls[]` or `tcp[]` rule, read alike.
struct Conditions<'a> {
    sni_hosts: &'a [String],
    destination_subnets: &'a [String],
    port: Option<u32>,
    source_labels: &'a BTreeMap<String, String>,
    source_namespace: Option<&'a str>,
    gateways: &'a [String],
}

impl<'a> From<&'a TlsMatchAttributes> for Conditions<'a> {
    fn from(m: &'a TlsMatchAttributes) -> Self {
        Self {
            sni_hosts: &m.sni_hosts,
            destination_subnets: &m.destination_subnets,
            port: m.port,
            source_labels: &m.source_labels,
            source_namespace: m.source_namespace.as_deref(),
            gateways: &m.gateways,
        }
    }
}

impl<'a> From<&'a L4MatchAttributes> for Conditions<'a> {
    fn from(m: &'a L4MatchAttributes) -> Self {
        Self {
            sni_hosts: &[],
            destination_subnets: &m.destination_subnets,
            port: m.port,
            source_labels: &m.source_labels,
            source_namespace: m.source_namespace.as_deref(),
            gateways: &m.gateways,
        }
    }
}

/// What one VirtualService's rules are compiled for: the service port of
/// `cluster`, from the workload `source`.
struct PortScope<'a> {
    doc: &'a Document<VirtualServiceSpec>,
    /// `namespace/name` of the VirtualService.
    name: &'a str,
    namespace: &'a str,
    cluster: &'a Cluster,
    source: Option<Source<'a>>,
    registry: &'a Registry,
}

/// The rules of the VirtualService that can apply to a connection from
/// this workload to the service port, in order, each with its field: its
/// `tls[]` rules on a TLS port, else its `tcp[]` rules.
fn port_rules(scope: &PortScope<'_>, diags: &mut Diagnostics) -> Vec<(String, TcpRule)> {
    let spec = &scope.doc.spec;
    let mut rules = Vec::new();
    if scope.cluster.protocol == Protocol::Tls {
        for (i, rule) in spec.tls.iter().enumerate() {
            let matches = rule.matches.iter().map(Conditions::from);
            let field = format!("spec.tls[{i}]");
            let compiled = compile_rule(scope, &field, matches, &rule.route, diags);
            rules.extend(compiled.map(|r| (field, r)));
        }
        return rules;
    }
    for (i, rule) in spec.tcp.iter().enumerate() {
        let matches = rule.matches.iter().map(Conditions::from);
        let field = format!("spec.tcp[{i}]");
        let compiled = compile_rule(scope, &field, matches, &rule.route, diags);
        rules.extend(compiled.map(|r| (field, r)));
    }
    rules
}

/// One rule at `field`; `None` when every one of its `matches` fails for
/// this workload and port (it takes no connection here).
fn compile_rule<'a>(
    scope: &PortScope<'_>,
    field: &str,
    matches: impl ExactSizeIterator<Item = Conditions<'a>>,
    route: &[RouteDestination],
    diags: &mut Diagnostics,
) -> Option<TcpRule> {
    let written = matches.len();
    let matches: Vec<TcpMatch> = matches
        .filter(|m| {
            applies(
                m,
                &scope.doc.spec.gateways,
                scope.namespace,
                scope.cluster.port,
                scope.source,
            )
        })
        .filter_map(|m| runtime_match(&m))
        .collect();
    if written > 0 && matches.is_empty() {
        return None;
    }
    let at = (field, &scope.doc.location);
    let port = scope.cluster.port;
    let destinations = l4_destinations(scope.registry, route, scope.namespace, port, at, diags);
    Some(TcpRule {
        matches,
        route: L4Route {
            sni_hosts: Vec::new(),
            destinations,
        },
        reference: Arc::from(format!("VirtualService {} {field}", scope.name)),
    })
}

/// Whether a `match` entry's static conditions hold for this workload's
/// connections to `port`: its gateways (else the VirtualService's) name
/// `mesh`, and its `port`, `sourceLabels` and `sourceNamespace` agree.
fn applies(
    m: &Conditions<'_>,
    gateways: &[String],
    namespace: &str,
    port: u16,
    source: Option<Source<'_>>,
) -> bool {
    let gateways = if m.gateways.is_empty() {
        gateways
    } else {
        m.gateways
    };
    let from = |check: &dyn Fn(Source<'_>) -> bool| source.is_some_and(check);
    Binding::Mesh.admits(gateways, namespace)
        && m.port.is_none_or(|p| p == u32::from(port))
        && (m.source_labels.is_empty()
            || from(&|s| {
                m.source_labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k) == Some(v))
            }))
        && m.source_namespace
            .is_none_or(|ns| from(&|s| s.namespace == ns))
}

/// The conditions of a `match` entry checked per connection; `None` when
/// an address does not parse (the validator has refused the config).
fn runtime_match(m: &Conditions<'_>) -> Option<TcpMatch> {
    let destination_subnets = m
        .destination_subnets
        .iter()
        .map(|text| {
            text.parse::<IpNet>()
                .ok()
                .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(TcpMatch {
        sni_hosts: m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        destination_subnets,
    })
}

/// The weighted destinations of a `tcp[]` or `tls[]` rule for traffic
/// addressed to `port`, each resolved to its service's clusters; a
/// destination without a cluster for the port is warned at `field` of the
/// document at `loc` (connections routed there are closed). A single
/// destination takes all connections whatever its weight, as in Istio.
pub(super) fn l4_destinations(
    registry: &Registry,
    route: &[RouteDestination],
    namespace: &str,
    port: u16,
    (field, loc): (&str, &Location),
    diags: &mut Diagnostics,
) -> Vec<L4Destination> {
    route
        .iter()
        .enumerate()
        .map(|(k, d)| {
            let host = resolve_short_name(&d.destination.host, namespace);
            let named = d
                .destination
                .port
                .as_ref()
                .and_then(|p| u16::try_from(p.number).ok());
            let target = registry.target(&host, d.destination.subset.as_deref(), named);
            if let Some(what) = registry.unresolved(&target, Some(port)) {
                let msg = format!("{what}; connections are closed");
                diags.warn(loc, Some(format!("{field}.route[{k}].destination")), msg);
            }
            L4Destination {
                target,
                weight: if route.len() == 1 {
                    100
                } else {
                    d.weight.unwrap_or(0).max(0) as u32
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::super::{Compiled, compile_text};
    use crate::config::diagnostics::Severity;
    use crate::model::live::LiveState;
    use crate::model::tcp_route::TcpRouted;

    const CONFIG: &str = r#"
apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: frontend-v1, namespace: default}
spec:
  service: frontend
  labels: {app: frontend, version: v1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 5432, name: tcp, protocol: TCP}, {number: 8080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, labels: {version: v1}}
  - {address: 127.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: default}
spec:
  host: db
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [db]
  tcp:
  - match: [{sourceLabels: {app: reviews}}]
    route: [{destination: {host: db, subset: v1}}]
  - match: [{port: 5432, destinationSubnets: [10.96.0.0/12, 10.1.1.1]}]
    route: [{destination: {host: db, subset: v9}}]
  - match: [{port: 5432, sourceNamespace: default}]
    route:
    - {destination: {host: db, subset: v1}, weight: 0}
    - {destination: {host: db, subset: v2}, weight: 100}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db-later, namespace: default}
spec:
  hosts: [db]
  tcp:
  - route: [{destination: {host: db, subset: v1}}]
"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_tcp_port_takes_the_rules_that_hold_for_this_workload() {
        let file = std::sync::Arc::from("mesh.yaml");
        let compiled =
            compile_text(&file, CONFIG, 1, &LiveState::default()).unwrap_or_else(|e| panic!("{e}"));
        let snapshot = &compiled.snapshot;
        let rules = &snapshot.tcp_rules;
        // The HTTP port has no TCP rules; the TCP port has the rules whose
        // static conditions hold here (not `sourceLabels: {app: reviews}`).
        assert!(
            rules
                .rules("outbound|8080||db.default.svc.cluster.local")
                .is_none()
        );
        let port = rules
            .rules("outbound|5432||db.default.svc.cluster.local")
            .expect("the TCP port is routed");
        let references: Vec<&str> = port.iter().map(|r| &*r.reference).collect();
        assert_eq!(
            references,
            [
                "VirtualService default/db spec.tcp[1]",
                "VirtualService default/db spec.tcp[2]"
            ]
        );
        let service = snapshot
            .clusters
            .iter()
            .find(|c| c.name == "outbound|5432||db.default.svc.cluster.local")
            .unwrap();
        let routed = |dst: &str| match rules.route(service, ip(dst), None) {
            TcpRouted::To(c) => c.name.clone(),
            TcpRouted::Unrouted => "unrouted".into(),
            TcpRouted::Unmatched => "unmatched".into(),
            TcpRouted::NoCluster { rule, .. } => format!("nowhere by {rule}"),
        };
        let nowhere = "nowhere by VirtualService default/db spec.tcp[1]";
        assert_eq!(routed("10.96.0.10"), nowhere, "subset v9 is not defined");
        assert_eq!(routed("10.1.1.1"), nowhere, "a bare address is a /32");
        for _ in 0..20 {
            assert_eq!(
                routed("127.0.0.1"),
                "outbound|5432|v2|db.default.svc.cluster.local"
            );
        }
        let warnings: Vec<String> = compiled
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .map(ToString::to_string)
            .collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("spec.tcp[1].route[0].destination")),
            "{warnings:#?}"
        );
        // db-later's catch-all comes after db's (merged oldest first, as
        // Istio merges them), which takes every connection first.
        assert!(
            warnings.iter().any(|w| w.contains("db-later")
                && w.contains("spec.tcp[0]: unreachable for port 5432")
                && w.contains(
                    "VirtualService default/db spec.tcp[2] takes every connection first"
                )),
            "{warnings:#?}"
        );
        assert!(
            !warnings
                .iter()
                .any(|w| w.contains("spec.tcp:") && w.contains("not enforced")),
            "{warnings:#?}"
        );
    }

    #[test]
    fn an_address_that_does_not_parse_names_its_field() {
        let yaml = CONFIG.replace("10.1.1.1]", "10.1.1.1/40]");
        let file = std::sync::Arc::from("mesh.yaml");
        let rejected = compile_text(&file, &yaml, 1, &LiveState::default())
            .err()
            .expect("refused");
        let text = rejected.to_string();
        assert!(
            text.contains("spec.tcp[1].match[0].destinationSubnets[1]")
                && text.contains("\"10.1.1.1/40\" is not an IP address or CIDR block"),
            "{text}"
        );
    }

    /// CONFIG's registry with two VirtualServices for db's TCP port: `wild`
    /// (`*.default.svc.cluster.local`, to v1) then `exact` (`db`, to v2),
    /// each with its `creationTimestamp` when one is given.
    fn wild_then_exact(wild: &str, exact: &str) -> Compiled {
        let head = CONFIG
            .split("---\napiVersion: networking.istio.io/v1\nkind: VirtualService")
            .next()
            .unwrap();
        let at = |t: &str| {
            if t.is_empty() {
                String::new()
            } else {
                format!(", creationTimestamp: \"{t}\"")
            }
        };
        let vs = |name: &str, t: &str, host: &str, subset: &str| {
            format!(
                "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default{}}}
spec:
  hosts: [\"{host}\"]
  tcp: [{{route: [{{destination: {{host: db, subset: {subset}}}}}]}}]
",
                at(t)
            )
        };
        let yaml = format!(
            "{head}{}{}",
            vs("wild", wild, "*.default.svc.cluster.local", "v1"),
            vs("exact", exact, "db", "v2")
        );
        let file = std::sync::Arc::from("mesh.yaml");
        compile_text(&file, &yaml, 1, &LiveState::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn db_references(compiled: &Compiled) -> Vec<&str> {
        let rules = compiled
            .snapshot
            .tcp_rules
            .rules("outbound|5432||db.default.svc.cluster.local")
            .expect("routed");
        rules.iter().map(|r| &*r.reference).collect()
    }

    #[test]
    fn virtual_services_covering_a_host_merge_oldest_first() {
        // The older wildcard VirtualService's catch-all comes first, as
        // Istio merges every VirtualService that covers the host; the
        // host's own rule after it is unreachable, and said so.
        let compiled = wild_then_exact("2020-01-01T00:00:00Z", "2024-01-01T00:00:00Z");
        assert_eq!(
            db_references(&compiled),
            ["VirtualService default/wild spec.tcp[0]"]
        );
        let unreachable = compiled.diagnostics.iter().any(|d| {
            d.severity == Severity::Warning
                && d.to_string().contains("VirtualService default/exact")
                && d.message
                    .contains("wild spec.tcp[0] takes every connection first")
        });
        assert!(
            unreachable,
            "{:#?}",
            compiled.diagnostics.iter().collect::<Vec<_>>()
        );
    }

    #[test]
    fn equal_ages_merge_by_name_whatever_the_file_order() {
        // Without times (Istio's zero time: before any time), `exact`
        // sorts before `wild` by name, though it comes later in the file;
        // a time written as another zone's is compared as a time.
        for (wild, exact) in [
            ("", ""),
            ("2024-01-01T06:00:00Z", "2024-01-01T10:00:00+05:00"),
        ] {
            assert_eq!(
                db_references(&wild_then_exact(wild, exact)),
                ["VirtualService default/exact spec.tcp[0]"],
                "{wild:?} / {exact:?}"
            );
        }
    }
}
