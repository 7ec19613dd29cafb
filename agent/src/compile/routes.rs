//! VirtualServices and Gateway API routes → the route table, plus an
//! implicit route for every registry host no route covers.
//!
//! Sidecars apply VirtualServices bound to `mesh` and HTTPRoutes/GRPCRoutes
//! attached to a Service (the Gateway API's mesh mode, GAMMA). Where
//! several claim one host, Istio's order decides, per port: HTTPRoutes in
//! this workload's namespace first (a consumer's override), then the oldest
//! resource (`creationTimestamp`, else file order); a later one only keeps
//! the ports the earlier ones leave (a rule limited to other ports), and is
//! warned about. Gateways compile the same rules bound to themselves
//! (`compile::gateway`).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use regex::{Regex, RegexBuilder};

use super::bootstrap::Agent;
use super::delegate::{self, Delegates};
use super::gateway_api::rules::{self as api_rules, RankedRule, RuleScope as ApiScope};
use super::gateway_api::{self, Parent, Route, RouteSpec, age};
use super::registry::Registry;
use super::route_policy::{self, RuleScope};
use crate::config::diagnostics::{Diagnostics, Location};
use crate::config::documents::Document;
use crate::config::service_entry::ServiceEntrySpec;
use crate::config::virtual_service::{
    HeaderOperations, Headers, HttpMatchRequest, HttpRoute, StringMatch, VirtualServiceSpec,
    is_authority,
};
use crate::host::{CLUSTER_DOMAIN, resolve_short_name};
use crate::model::header_format::{HeaderFormat, Parsed};
use crate::model::policy::RoutePolicy;
use crate::model::route::{
    DEFAULT_ROUTE_NAME, HeaderEdits, HttpRule, RouteMatch, RouteTable, StrMatcher, VirtualHost,
    WeightedDestination,
};

/// Istio's reserved gateway name for every sidecar.
pub(super) const MESH: &str = "mesh";

/// What routes are compiled for: the sidecars, or one gateway.
#[derive(Debug, Clone, Copy)]
pub(super) enum Binding<'a> {
    /// Sidecars (`mesh`).
    Mesh,
    /// The Istio Gateway `namespace/name`.
    Gateway(&'a str),
}

impl Binding<'_> {
    /// Whether a `gateways` list written in a resource of `namespace`
    /// (empty: `mesh` only, Istio's default) names this binding.
    pub fn admits(&self, gateways: &[String], namespace: &str) -> bool {
        match self {
            Self::Mesh => gateways.is_empty() || gateways.iter().any(|g| g == MESH),
            Self::Gateway(name) => gateways.iter().any(|g| gateway_name(g, namespace) == *name),
        }
    }
}

/// A `gateways` entry as Istio resolves it (`resolveGatewayName`):
/// `mesh`; `namespace/name`; a bare name in the resource's namespace; the
/// legacy `name.namespace.svc.cluster.local` form.
pub(super) fn gateway_name(name: &str, namespace: &str) -> String {
    if name == MESH || name.contains('/') {
        return name.to_owned();
    }
    match name.split_once('.') {
        Some((gw, rest)) => {
            let ns = rest.split('.').next().unwrap_or(namespace);
            format!("{ns}/{gw}")
        }
        None => format!("{namespace}/{name}"),
    }
}

/// The workload routes are compiled for, which `sourceLabels` and
/// `sourceNamespace` conditions are checked against.
#[derive(Debug, Clone, Copy)]
pub(super) struct Source<'a> {
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Its namespace.
    pub namespace: &'a str,
}

/// What a rule is compiled against.
struct Scope<'a> {
    loc: &'a Location,
    namespace: &'a str,
    registry: &'a Registry,
    binding: Binding<'a>,
    /// None when the bootstrap did not compile (its errors are reported).
    source: Option<Source<'a>>,
}

/// The `http[]` rules of a VirtualService that apply to `binding`, compiled;
/// a rule that delegates is replaced by its delegate's rules, merged
/// under it as Istio merges them ([`delegate`](super::delegate)).
pub(super) fn virtual_service_rules(
    doc: &Document<VirtualServiceSpec>,
    namespace: &str,
    registry: &Registry,
    binding: Binding<'_>,
    source: Option<Source<'_>>,
    delegates: Delegates<'_>,
    diags: &mut Diagnostics,
) -> Vec<HttpRule> {
    let scope = Scope {
        loc: &doc.location,
        namespace,
        registry,
        binding,
        source,
    };
    let name = format!("{namespace}/{}", doc.metadata.name);
    // Istio names a rule by its place among the merged rules.
    let mut out = Vec::new();
    let mut position = 0usize;
    let mut named = |mut compiled: HttpRule, rule_name: Option<&str>, position: &mut usize| {
        let which = rule_name.map_or_else(|| position.to_string(), str::to_owned);
        *position += 1;
        compiled.reference = Some(Arc::from(details_safe(&format!(
            "VirtualService:{name}[{which}]"
        ))));
        out.push(compiled);
    };
    for (i, rule) in doc.spec.http.iter().enumerate() {
        let field = format!("spec.http[{i}]");
        let Some(delegate) = &rule.delegate else {
            if let Some(compiled) = compile_rule(rule, &field, &scope, diags) {
                named(compiled, rule.name.as_deref(), &mut position);
            } else {
                position += 1;
            }
            continue;
        };
        // The root rule's own fields, checked where they are written
        // (what it compiles to is replaced by the delegate's rules).
        let _ = compile_rule(rule, &field, &scope, diags);
        let found = match delegates.find(delegate, namespace) {
            Ok(found) => found,
            Err(why) => {
                let msg = format!(
                    "{why}; the rule is dropped, as Istio drops it (requests fall through to the next rule)"
                );
                diags.warn(&doc.location, Some(format!("{field}.delegate")), msg);
                continue;
            }
        };
        let delegate_scope = Scope {
            loc: &found.doc.location,
            namespace: found.namespace,
            ..scope
        };
        for (j, leaf) in found.doc.spec.http.iter().enumerate() {
            let leaf_field = format!("spec.http[{j}]");
            // The delegate's own fields, checked where they are written.
            let _ = compile_rule(leaf, &leaf_field, &delegate_scope, diags);
            let Some(merged) = delegate::merge_route(rule, namespace, leaf, found.namespace) else {
                let msg = format!(
                    "its match conflicts with every match of the rule delegating to it (VirtualService {name} {field}); it is dropped there, as Istio drops it"
                );
                diags.warn(
                    &found.doc.location,
                    Some(format!("{leaf_field}.match")),
                    msg,
                );
                continue;
            };
            // Every part of the merged rule was checked above, in its own
            // resource; what compiling the whole says again is not repeated.
            let mut again = Diagnostics::default();
            if let Some(compiled) = compile_rule(&merged, &leaf_field, &delegate_scope, &mut again)
            {
                named(compiled, merged.name.as_deref(), &mut position);
            } else {
                position += 1;
            }
        }
    }
    out
}

/// The routing resources a sidecar reads.
pub(super) struct MeshInput<'a> {
    /// VirtualServices.
    pub virtual_services: &'a [Document<VirtualServiceSpec>],
    /// HTTPRoutes and GRPCRoutes, oldest first.
    pub routes: &'a [Route<'a>],
    /// ServiceEntries (parents of mesh routes).
    pub service_entries: &'a [Document<ServiceEntrySpec>],
}

/// The rules one resource gives one host, and where it stands.
struct Unit {
    host: String,
    /// `VirtualService ns/name` or `HTTPRoute ns/name` (for messages).
    source: String,
    /// `namespace/name` (VirtualService) or `HTTPRoute ns/name` (the
    /// vhost's origin for `/routes`).
    origin: String,
    /// HTTPRoutes of this workload's namespace first, then the oldest.
    rank: (bool, (bool, String, usize)),
    rules: Vec<HttpRule>,
    loc: Location,
    field: String,
}

pub(super) fn build(
    input: &MeshInput<'_>,
    registry: &Registry,
    boot: Option<&Agent>,
    agent_namespace: &str,
    diags: &mut Diagnostics,
) -> RouteTable {
    let source = boot.map(|b| Source {
        labels: &b.identity.labels,
        namespace: &b.identity.namespace,
    });
    let mut units = virtual_service_units(
        input.virtual_services,
        registry,
        source,
        agent_namespace,
        diags,
    );
    units.extend(mesh_route_units(input, registry, agent_namespace, diags));
    units.sort_by(|a, b| a.rank.cmp(&b.rank));
    let mut by_host: Vec<(String, Vec<Unit>)> = Vec::new();
    for unit in units {
        match by_host.iter_mut().find(|(h, _)| *h == unit.host) {
            Some((_, list)) => list.push(unit),
            None => by_host.push((unit.host.clone(), vec![unit])),
        }
    }
    let mut hosts: Vec<Arc<VirtualHost>> = Vec::new();
    for (host, units) in by_host {
        let ports = registry.http_ports(&host);
        let origin = units.first().map(|u| u.origin.clone());
        let mut rules = merge_units(units, &ports, diags);
        // Ports no rule is written for keep the service's own route, as
        // Istio builds each port's virtual host without the resources
        // that leave it out.
        if let Ports::Only(covered) = ports_of(&rules) {
            let free: Vec<RouteMatch> = ports
                .iter()
                .filter(|p| !covered.contains(p))
                .map(|p| RouteMatch {
                    port: Some(*p),
                    ..RouteMatch::default()
                })
                .collect();
            if !free.is_empty() {
                let mut fallback = implicit_host(&host, registry).rules.remove(0);
                fallback.matches = free;
                rules.push(fallback);
            }
        }
        hosts.push(Arc::new(VirtualHost {
            in_registry: registry.services.contains_key(&host),
            ports,
            host,
            virtual_service: origin,
            rules,
        }));
    }
    // A registry host without a VirtualService of its own takes the most
    // specific wildcard VirtualService that covers it (Istio's
    // `mostSpecificWildcardVsIndex`), else its implicit route.
    let mut covered = Vec::new();
    for fqdn in registry.services.keys() {
        if hosts.iter().any(|vh| &vh.host == fqdn) {
            continue;
        }
        let wildcard = hosts
            .iter()
            .filter(|vh| vh.host.starts_with('*') && !fqdn.starts_with('*'))
            .filter(|vh| crate::host::host_matches(&vh.host, fqdn))
            .max_by_key(|vh| vh.host.len());
        covered.push(match wildcard {
            Some(vh) => VirtualHost {
                host: fqdn.clone(),
                virtual_service: vh.virtual_service.clone(),
                rules: vh.rules.clone(),
                ports: registry.http_ports(fqdn),
                in_registry: true,
            },
            None => implicit_host(fqdn, registry),
        });
    }
    hosts.extend(covered.into_iter().map(Arc::new));
    table(hosts, registry, agent_namespace)
}

/// One unit per host of each VirtualService bound to `mesh`.
fn virtual_service_units(
    services: &[Document<VirtualServiceSpec>],
    registry: &Registry,
    source: Option<Source<'_>>,
    agent_namespace: &str,
    diags: &mut Diagnostics,
) -> Vec<Unit> {
    let mut units = Vec::new();
    for (order, doc) in services.iter().enumerate() {
        let spec = &doc.spec;
        let namespace = doc.metadata.namespace.as_deref().unwrap_or(agent_namespace);
        if !Binding::Mesh.admits(&spec.gateways, namespace) {
            let msg = "applies to gateways only (no `mesh` in gateways); sidecars skip it";
            diags.warn(&doc.location, Some("spec.gateways".into()), msg);
            continue;
        }
        if spec.hosts.is_empty() {
            // A delegate: it applies through the VirtualServices that
            // delegate to it, never on its own (Istio's
            // `mergeVirtualServices` skips it).
            continue;
        }
        let rules = virtual_service_rules(
            doc,
            namespace,
            registry,
            Binding::Mesh,
            source,
            Delegates {
                services,
                default_namespace: agent_namespace,
            },
            diags,
        );
        let name = format!("{namespace}/{}", doc.metadata.name);
        for (h, host) in spec.hosts.iter().enumerate() {
            units.push(Unit {
                host: resolve_short_name(host, namespace),
                source: format!("VirtualService {name}"),
                origin: name.clone(),
                rank: (true, age(&doc.metadata, order)),
                rules: rules.clone(),
                loc: doc.location.clone(),
                field: format!("spec.hosts[{h}]"),
            });
        }
    }
    units
}

/// HTTPRoutes and GRPCRoutes attached to services (GAMMA), as Istio turns
/// them into VirtualServices: one per route namespace, parent port and
/// host, their rules merged and sorted in the Gateway API's precedence.
/// A route applies to this workload when it is in this workload's
/// namespace (a consumer route) or in the service's (a producer route).
fn mesh_route_units(
    input: &MeshInput<'_>,
    registry: &Registry,
    agent_namespace: &str,
    diags: &mut Diagnostics,
) -> Vec<Unit> {
    struct Group {
        key: (String, Option<u16>, String),
        rank: (bool, (bool, String, usize)),
        rules: Vec<RankedRule>,
        sources: Vec<String>,
        loc: Location,
        field: String,
    }
    let mut groups: Vec<Group> = Vec::new();
    for route in input.routes {
        let mut compiled: Option<Vec<RankedRule>> = None;
        for (i, r) in route.parent_refs.iter().enumerate() {
            let field = format!("spec.parentRefs[{i}]");
            let parent =
                gateway_api::parent(r, &route.namespace, input.service_entries, agent_namespace);
            let Parent::Mesh {
                hosts,
                namespace,
                port,
            } = parent
            else {
                continue;
            };
            if hosts.is_empty() {
                let msg = format!(
                    "no ServiceEntry {namespace}/{} in this file; the parent is ignored",
                    r.name
                );
                diags.warn(route.location, Some(field), msg);
                continue;
            }
            if route.namespace != agent_namespace && route.namespace != namespace {
                let msg = format!(
                    "a route of namespace {} for a service of namespace {namespace} applies to clients in {} only; this workload is in {agent_namespace}",
                    route.namespace, route.namespace
                );
                diags.warn(route.location, Some(field), msg);
                continue;
            }
            let rules = compiled.get_or_insert_with(|| mesh_rules(route, registry, diags));
            let rules = api_rules::on_port(rules, port);
            let consumer = route.namespace == agent_namespace;
            for host in hosts {
                if registry.find(&host, agent_namespace).is_none() {
                    let msg = format!(
                        "{}; the route applies to nothing here",
                        registry.missing(&host)
                    );
                    diags.warn(route.location, Some(field.clone()), msg);
                    continue;
                }
                let key = (route.namespace.clone(), port, host);
                match groups.iter_mut().find(|g| g.key == key) {
                    Some(g) => {
                        g.rules.extend(rules.iter().cloned());
                        g.sources.push(route.describe());
                    }
                    None => groups.push(Group {
                        key,
                        rank: (!consumer, age(route.metadata, route.order)),
                        rules: rules.clone(),
                        sources: vec![route.describe()],
                        loc: route.location.clone(),
                        field: field.clone(),
                    }),
                }
            }
        }
    }
    groups
        .into_iter()
        .map(|mut g| {
            api_rules::sort(&mut g.rules);
            let (_, _, host) = g.key;
            Unit {
                host,
                source: g.sources.join(", "),
                origin: g.sources.first().cloned().unwrap_or_default(),
                rank: g.rank,
                rules: g.rules.into_iter().map(|r| r.rule).collect(),
                loc: g.loc,
                field: g.field,
            }
        })
        .collect()
}

/// A route's rules as sidecars apply them (no ReferenceGrant is asked for
/// in the mesh, as in Istio).
fn mesh_rules(route: &Route<'_>, registry: &Registry, diags: &mut Diagnostics) -> Vec<RankedRule> {
    let scope = ApiScope {
        loc: route.location,
        kind: route.kind,
        name: &route.metadata.name,
        namespace: &route.namespace,
        registry,
        grants: None,
    };
    match route.spec {
        RouteSpec::Http(spec) => api_rules::http_rules(spec.rules.as_deref(), &scope, diags),
        RouteSpec::Grpc(spec) => api_rules::grpc_rules(&spec.rules, &scope, diags),
    }
}

/// The ports a unit's rules can match: every port, or these.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ports {
    All,
    Only(Vec<u16>),
}

fn ports_of(rules: &[HttpRule]) -> Ports {
    let mut ports = Vec::new();
    for rule in rules {
        if rule.matches.is_empty() {
            return Ports::All;
        }
        for m in &rule.matches {
            match m.port {
                None => return Ports::All,
                Some(p) if !ports.contains(&p) => ports.push(p),
                Some(_) => {}
            }
        }
    }
    Ports::Only(ports)
}

/// The rules of one host from units in precedence order: each unit keeps
/// the ports no earlier unit routes (Istio builds a virtual host per port
/// and keeps the first resource's for a host).
fn merge_units(units: Vec<Unit>, service_ports: &[u16], diags: &mut Diagnostics) -> Vec<HttpRule> {
    let mut rules: Vec<HttpRule> = Vec::new();
    let mut taken = Ports::Only(Vec::new());
    let mut first: Option<String> = None;
    for unit in units {
        let covers = ports_of(&unit.rules);
        let Ports::Only(taken_ports) = &taken else {
            warn_shadowed(&unit, first.as_deref(), None, diags);
            continue;
        };
        if taken_ports.is_empty() {
            rules.extend(unit.rules);
            taken = covers;
            first = Some(unit.source);
            continue;
        }
        let free: Vec<u16> = service_ports
            .iter()
            .copied()
            .filter(|p| !taken_ports.contains(p))
            .collect();
        let kept: Vec<HttpRule> = unit
            .rules
            .iter()
            .filter_map(|r| restrict(r, taken_ports, &free))
            .collect();
        if kept.is_empty() {
            warn_shadowed(&unit, first.as_deref(), None, diags);
            continue;
        }
        warn_shadowed(&unit, first.as_deref(), Some(taken_ports), diags);
        rules.extend(kept);
        taken = match covers {
            Ports::All => Ports::All,
            Ports::Only(more) => {
                let mut all = taken_ports.clone();
                all.extend(more.into_iter().filter(|p| free.contains(p)));
                Ports::Only(all)
            }
        };
    }
    rules
}

/// `rule` limited to ports outside `taken`: a port-less condition becomes
/// one per `free` port. None when nothing is left.
fn restrict(rule: &HttpRule, taken: &[u16], free: &[u16]) -> Option<HttpRule> {
    let conditions: Vec<RouteMatch> = if rule.matches.is_empty() {
        vec![RouteMatch::default()]
    } else {
        rule.matches.clone()
    };
    let mut matches = Vec::new();
    for m in conditions {
        match m.port {
            Some(p) if taken.contains(&p) => {}
            Some(_) => matches.push(m),
            None => matches.extend(free.iter().map(|p| RouteMatch {
                port: Some(*p),
                ..m.clone()
            })),
        }
    }
    (!matches.is_empty()).then(|| HttpRule {
        matches,
        ..rule.clone()
    })
}

fn warn_shadowed(unit: &Unit, first: Option<&str>, ports: Option<&[u16]>, diags: &mut Diagnostics) {
    let winner = first.unwrap_or("an earlier resource");
    let why = "HTTPRoutes of this workload's namespace first, then the oldest resource, as Istio orders them";
    let msg = match ports {
        None => format!(
            "{} is already routed by {winner}; ignored here ({why})",
            unit.host
        ),
        Some(ports) => format!(
            "{} is already routed by {winner} on port(s) {ports:?}; {} applies to its other ports only ({why})",
            unit.host, unit.source
        ),
    };
    diags.warn(&unit.loc, Some(unit.field.clone()), msg);
}

fn implicit_host(fqdn: &str, registry: &Registry) -> VirtualHost {
    let target = registry.target(fqdn, None, None);
    VirtualHost {
        host: fqdn.to_owned(),
        ports: registry.http_ports(fqdn),
        in_registry: true,
        virtual_service: None,
        rules: vec![HttpRule {
            name: Some(Arc::clone(&DEFAULT_ROUTE_NAME)),
            reference: None,
            matches: Vec::new(),
            destinations: vec![WeightedDestination {
                target,
                weight: 100,
                request_headers: HeaderEdits::default(),
                response_headers: HeaderEdits::default(),
                authority: None,
            }],
            total_weight: 100,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
            policy: RoutePolicy::default(),
        }],
    }
}

/// Indexes a gateway's hosts by the names they were written with (a
/// gateway's virtual hosts answer their domains only, as Envoy's do).
pub(super) fn gateway_table(hosts: Vec<Arc<VirtualHost>>) -> RouteTable {
    let mut table = RouteTable::default();
    for vh in hosts {
        if vh.host.starts_with('*') {
            table.wildcard.push(vh);
        } else {
            table.exact.insert(vh.host.clone(), vh);
        }
    }
    table
        .wildcard
        .sort_by_key(|vh| std::cmp::Reverse(vh.host.len()));
    table
}

/// Indexes hosts by every name a client may use: the FQDN and, for cluster
/// services, `name.ns`, `name.ns.svc` and (same namespace) `name`; and each
/// VIP of a registry service, as Istio's `generateVirtualHostDomains` puts
/// the service's addresses among its virtual host's domains (a sidecar
/// ignores the port in host matching, so `vip` and `vip:port` both match).
/// A VIP is a ServiceEntry `addresses` entry that is one address (an IP,
/// or a /32 or /128 prefix, which Istio's `convertServices` turns into
/// one); a wider CIDR is no domain a Host can name. Where two services
/// claim one address the earlier-declared keeps it, as Istio keeps the
/// first virtual host to claim a domain.
fn table(hosts: Vec<Arc<VirtualHost>>, registry: &Registry, agent_namespace: &str) -> RouteTable {
    let mut table = gateway_table(hosts.clone());
    for vh in &hosts {
        let Some(head) = vh
            .host
            .strip_suffix(CLUSTER_DOMAIN)
            .and_then(|h| h.strip_suffix('.'))
        else {
            continue;
        };
        let Some((name, namespace)) = head.split_once('.') else {
            continue;
        };
        let mut aliases = vec![
            head.to_owned(),
            format!("{head}.svc"),
            format!("{head}.svc.cluster"),
        ];
        if namespace == agent_namespace {
            aliases.push(name.to_owned());
        }
        for alias in aliases {
            table.exact.entry(alias).or_insert_with(|| vh.clone());
        }
    }
    let by_host: std::collections::HashMap<&str, &Arc<VirtualHost>> =
        hosts.iter().map(|vh| (vh.host.as_str(), vh)).collect();
    let mut services: Vec<_> = registry.services.iter().collect();
    services.sort_by_key(|(_, s)| s.order);
    for (fqdn, service) in services {
        let Some(vh) = by_host.get(fqdn.as_str()) else {
            continue;
        };
        let vips = service
            .addresses
            .iter()
            .filter(|net| net.prefix_len() == net.max_prefix_len());
        for vip in vips {
            let vip = vip.addr().to_string();
            table.exact.entry(vip).or_insert_with(|| Arc::clone(vh));
        }
    }
    table
}

/// A name made fit for response details, which hold no whitespace (Envoy
/// writes `_` for it the same way).
pub(super) fn details_safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect()
}

fn compile_rule(
    rule: &HttpRoute,
    field: &str,
    scope: &Scope<'_>,
    diags: &mut Diagnostics,
) -> Option<HttpRule> {
    let loc = scope.loc;
    let mut matches = Vec::new();
    for (j, m) in rule.matches.iter().enumerate() {
        if let Some(mut compiled) = compile_match(m, &format!("{field}.match[{j}]"), scope, diags) {
            // Istio's `translateRoute`: `<rule>.<match>` for a named match.
            if let Some(name) = m.name.as_deref().filter(|n| !n.is_empty()) {
                let rule_name = rule.name.as_deref().unwrap_or_default();
                compiled.route_name = Some(Arc::from(format!("{rule_name}.{name}")));
            }
            matches.push(compiled);
        }
    }
    if !rule.matches.is_empty() && matches.is_empty() {
        return None; // every condition names another source or gateway: never matches here
    }
    // The validator refused rules without an action, negative weights and
    // weights that sum to 0 (weights are relative, as in Istio since 1.19).
    let weights: Vec<i32> = rule.route.iter().map(|d| d.weight.unwrap_or(0)).collect();
    let mut destinations = Vec::new();
    for (k, dest) in rule.route.iter().enumerate() {
        let dfield = format!("{field}.route[{k}]");
        let host = resolve_short_name(&dest.destination.host, scope.namespace);
        let port = dest.destination.port.as_ref().map(|p| p.number as u16);
        let target = scope
            .registry
            .target(&host, dest.destination.subset.as_deref(), port);
        if let Some(what) = scope.registry.unresolved(&target, None) {
            diags.warn(
                loc,
                Some(format!("{dfield}.destination")),
                format!("{what}; requests get 503 NC"),
            );
        }
        let (request_headers, response_headers) = edits(
            dest.headers.as_ref(),
            &format!("{dfield}.headers"),
            loc,
            diags,
        );
        destinations.push(WeightedDestination {
            target,
            weight: if rule.route.len() == 1 {
                100
            } else {
                weights[k].max(0) as u32
            },
            request_headers,
            response_headers,
            authority: dest
                .headers
                .as_ref()
                .and_then(|h| h.request.as_ref())
                .and_then(HeaderOperations::authority)
                .and_then(|a| HeaderValue::try_from(a).ok()),
        });
    }
    let (request_headers, response_headers) = edits(
        rule.headers.as_ref(),
        &format!("{field}.headers"),
        loc,
        diags,
    );
    let rule_scope = RuleScope {
        loc,
        field,
        namespace: scope.namespace,
        registry: scope.registry,
    };
    let policy = route_policy::compile(rule, &rule_scope, diags);
    Some(HttpRule {
        name: rule.name.as_deref().map(Arc::from),
        reference: None,
        matches,
        // Validation bounds the total to 32 bits (Envoy's); saturating,
        // a refused config still compiles without overflow.
        total_weight: destinations
            .iter()
            .fold(0u32, |total, d| total.saturating_add(d.weight)),
        destinations,
        request_headers,
        response_headers,
        policy,
    })
}

/// Compiles one match entry; `None` when it can never match here (another
/// source workload or namespace, or `gateways` that leave this binding out).
fn compile_match(
    m: &HttpMatchRequest,
    field: &str,
    scope: &Scope<'_>,
    diags: &mut Diagnostics,
) -> Option<RouteMatch> {
    let loc = scope.loc;
    let mut matcher = |sm: &Option<StringMatch>, name: &str, ignore_case: bool| {
        sm.as_ref()
            .and_then(|sm| string_matcher(sm, &format!("{field}.{name}"), ignore_case, loc, diags))
    };
    let mut compiled = RouteMatch {
        uri: matcher(&m.uri, "uri", m.ignore_uri_case),
        ignore_uri_case: m.ignore_uri_case,
        scheme: matcher(&m.scheme, "scheme", false),
        method: matcher(&m.method, "method", false),
        authority: matcher(&m.authority, "authority", false),
        port: m.port.map(|p| p as u16),
        ..RouteMatch::default()
    };
    compiled.route_template = match &compiled.uri {
        Some(StrMatcher::Exact(path)) => Some(Arc::from(path.as_str())),
        Some(StrMatcher::Prefix(prefix)) => Some(Arc::from(format!("{prefix}*"))),
        _ => None,
    };
    for (kind, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, sm) in map {
            let hfield = format!("{field}.{kind}.{name}");
            let Ok(header) = HeaderName::try_from(name.to_ascii_lowercase()) else {
                diags.error(loc, Some(hfield), format!("{name:?} is not a header name"));
                continue;
            };
            if let Some(sm) = header_matcher(sm, &hfield, loc, diags) {
                let list = if kind == "headers" {
                    &mut compiled.headers
                } else {
                    &mut compiled.without_headers
                };
                list.push((header, sm));
            }
        }
    }
    for (name, sm) in &m.query_params {
        if let Some(sm) = header_matcher(sm, &format!("{field}.queryParams.{name}"), loc, diags) {
            compiled.query_params.push((name.clone(), sm));
        }
    }
    let source = scope.source?;
    let labels_ok = m
        .source_labels
        .iter()
        .all(|(k, v)| source.labels.get(k) == Some(v));
    let namespace_ok = m
        .source_namespace
        .as_ref()
        .is_none_or(|ns| ns == source.namespace);
    // A match's own `gateways` replace the resource's for that match.
    let gateway_ok = m.gateways.is_empty() || scope.binding.admits(&m.gateways, scope.namespace);
    (labels_ok && namespace_ok && gateway_ok).then_some(compiled)
}

/// A header or query-parameter condition: as [`string_matcher`], except that
/// `regex: "*"` means "present", as Istio renders it (`present_match`).
fn header_matcher(
    sm: &StringMatch,
    field: &str,
    loc: &Location,
    diags: &mut Diagnostics,
) -> Option<StrMatcher> {
    if sm.regex.as_deref() == Some("*") && sm.exact.is_none() && sm.prefix.is_none() {
        return Some(StrMatcher::Present);
    }
    string_matcher(sm, field, false, loc, diags)
}

/// A string condition; `ignore_case` (the URI's `ignoreUriCase`) applies to
/// `exact` and `prefix` only — Envoy's `case_sensitive` ignores regexes.
fn string_matcher(
    sm: &StringMatch,
    field: &str,
    ignore_case: bool,
    loc: &Location,
    diags: &mut Diagnostics,
) -> Option<StrMatcher> {
    let fold = |s: &String| {
        if ignore_case {
            s.to_ascii_lowercase()
        } else {
            s.clone()
        }
    };
    if let Some(exact) = &sm.exact {
        return Some(StrMatcher::Exact(fold(exact)));
    }
    if let Some(prefix) = &sm.prefix {
        return Some(StrMatcher::Prefix(fold(prefix)));
    }
    let Some(pattern) = &sm.regex else {
        return Some(StrMatcher::Present);
    };
    match anchored_regex(pattern) {
        Ok(regex) => Some(StrMatcher::Regex(regex)),
        Err(err) => {
            diags.error(
                loc,
                Some(format!("{field}.regex")),
                format!("invalid regex: {err}"),
            );
            None
        }
    }
}

/// An RE2 pattern that must match the whole value (as Envoy's
/// `safe_regex` does), with the size limit every config regex gets.
pub(super) fn anchored_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

fn edits(
    headers: Option<&Headers>,
    field: &str,
    loc: &Location,
    diags: &mut Diagnostics,
) -> (HeaderEdits, HeaderEdits) {
    let mut one = |ops: Option<&HeaderOperations>, side: &str| {
        let Some(ops) = ops else {
            return HeaderEdits::default();
        };
        let mut compiled = HeaderEdits::default();
        // The authority a rule's request names is its rewrite, not an edit.
        let edit = |name: &&String| side != "request" || !is_authority(name);
        let ops_by_kind = [("set", &ops.set, false), ("add", &ops.add, true)];
        for (op, map, add) in ops_by_kind {
            for (name, value) in map.iter().filter(|(k, _)| edit(k)) {
                let f = format!("{field}.{side}.{op}.{name}");
                let Ok(name) = HeaderName::try_from(name.to_ascii_lowercase()) else {
                    diags.error(loc, Some(f), "not a header name");
                    continue;
                };
                // Envoy's substitutions (`%PROTOCOL%`, `%%`, …), as Istio
                // passes the value on to it.
                match HeaderFormat::parse(value, side == "request") {
                    Ok(Parsed::Static(text)) => match HeaderValue::try_from(text) {
                        Ok(value) if add => compiled.add.push((name, value)),
                        Ok(value) => compiled.set.push((name, value)),
                        Err(_) => diags.error(loc, Some(f), "not a valid header value"),
                    },
                    Ok(Parsed::Format(format)) => compiled.formatted.push((name, format, add)),
                    Err(why) => diags.error(loc, Some(f), why),
                }
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            match HeaderName::try_from(name.to_ascii_lowercase()) {
                Ok(h) => compiled.remove.push(h),
                Err(_) => diags.error(
                    loc,
                    Some(format!("{field}.{side}.remove[{i}]")),
                    "not a header name",
                ),
            }
        }
        compiled
    };
    let request = one(headers.and_then(|h| h.request.as_ref()), "request");
    let response = one(headers.and_then(|h| h.response.as_ref()), "response");
    (request, response)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::compile::{Compiled, compile_text};
    use crate::model::live::LiveState;

    const MESH_FILE: &str = r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: productpage-v1, namespace: default}
spec:
  service: productpage
  labels: {app: productpage}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 10.244.0.12, labels: {version: v1}}
  - {address: 10.244.0.13, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

    fn compile(extra: &str) -> Compiled {
        let file: Arc<str> = Arc::from("mesh.yaml");
        let yaml = format!("{MESH_FILE}---\n{extra}");
        compile_text(&file, &yaml, 1, &LiveState::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn reviews(compiled: &Compiled) -> &VirtualHost {
        compiled
            .snapshot
            .routes
            .find("reviews.default.svc.cluster.local")
            .expect("reviews has a virtual host")
    }

    fn rule_names(vh: &VirtualHost) -> Vec<String> {
        vh.rules
            .iter()
            .map(|r| r.name.as_deref().unwrap_or("-").to_owned())
            .collect()
    }

    fn virtual_service(gateways: &str, rules: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  gateways: {gateways}\n  http:\n{rules}"
        )
    }

    const TO_V2: &str =
        "  - name: to-v2\n    route: [{destination: {host: reviews, subset: v2}}]\n";

    #[test]
    fn host_in_request_headers_is_the_authority_rewrite_once() {
        let rules = r#"  - name: set-host
    headers: {request: {set: {Host: a.example, x-keep: "1"}}}
    route: [{destination: {host: reviews, subset: v1}, headers: {request: {add: {":authority": b.example}}}}]
"#;
        let compiled = compile(&virtual_service("[mesh]", rules));
        let rule = &reviews(&compiled).rules[0];
        let rewrite = rule.policy.rewrite.as_ref().expect("an authority rewrite");
        assert_eq!(rewrite.authority.as_ref().unwrap(), "a.example");
        let names: Vec<&str> = rule
            .request_headers
            .set
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["x-keep"], "the authority is no header edit");
        assert_eq!(
            rule.destinations[0].authority.as_ref().unwrap(),
            "b.example"
        );

        let twice = r#"  - name: twice
    rewrite: {authority: c.example}
    headers: {request: {set: {host: a.example}}}
    route: [{destination: {host: reviews}}]
"#;
        let file: Arc<str> = Arc::from("mesh.yaml");
        let yaml = format!("{MESH_FILE}---\n{}", virtual_service("[mesh]", twice));
        let error = compile_text(&file, &yaml, 1, &LiveState::default())
            .err()
            .expect("an authority set twice is refused")
            .to_string();
        assert!(
            error.contains("headers.request.set.host") && error.contains("multiple times"),
            "{error}"
        );
    }

    #[test]
    fn a_fault_without_a_percentage_affects_nothing_and_is_warned() {
        let rules = r#"  - name: faulty
    fault: {abort: {httpStatus: 418}, delay: {fixedDelay: 1s}}
    route: [{destination: {host: reviews}}]
"#;
        let compiled = compile(&virtual_service("[mesh]", rules));
        let fault = reviews(&compiled).rules[0]
            .policy
            .fault
            .clone()
            .expect("a fault");
        assert_eq!(fault.abort.map(|(_, pct)| pct), Some(0.0));
        assert_eq!(fault.delay.map(|(_, pct)| pct), Some(0.0));
        let warnings: Vec<String> = compiled
            .diagnostics
            .warnings()
            .map(|d| d.to_string())
            .collect();
        for part in ["fault.abort", "fault.delay"] {
            assert!(
                warnings
                    .iter()
                    .any(|w| w.contains(part) && w.contains("no request is affected")),
                "{part}: {warnings:?}"
            );
        }
    }

    #[test]
    fn a_virtual_service_bound_to_gateways_only_does_not_apply_to_sidecars() {
        for gateways in ["[bookinfo-gateway]", "[istio-system/ingress]"] {
            let compiled = compile(&virtual_service(gateways, TO_V2));
            let vh = reviews(&compiled);
            assert_eq!(vh.virtual_service, None, "{gateways}: the implicit route");
            assert_eq!(rule_names(vh), ["default"], "{gateways}");
            let text: Vec<String> = compiled
                .diagnostics
                .warnings()
                .map(|d| d.to_string())
                .collect();
            let text = text.join("\n");
            assert!(
                text.contains("spec.gateways") && text.contains("sidecars skip it"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_virtual_service_bound_to_mesh_applies_to_sidecars() {
        for gateways in ["[mesh, bookinfo-gateway]", "[mesh]", "[]"] {
            let compiled = compile(&virtual_service(gateways, TO_V2));
            let vh = reviews(&compiled);
            assert_eq!(vh.virtual_service.as_deref(), Some("default/reviews"));
            assert_eq!(rule_names(vh), ["to-v2"], "{gateways}");
        }
    }

    #[test]
    fn match_gateways_replace_the_resource_gateways_per_match() {
        let rules = r#"  - name: gateway-only
    match: [{uri: {prefix: /a}, gateways: [bookinfo-gateway]}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: mixed
    match:
    - {uri: {prefix: /b}, gateways: [default/bookinfo-gateway]}
    - {uri: {prefix: /c}, gateways: [mesh]}
    route: [{destination: {host: reviews, subset: v2}}]
  - name: default
    route: [{destination: {host: reviews, subset: v1}}]
"#;
        let compiled = compile(&virtual_service("[mesh, bookinfo-gateway]", rules));
        let vh = reviews(&compiled);
        assert_eq!(rule_names(vh), ["mixed", "default"]);
        let mixed = &vh.rules[0];
        assert_eq!(mixed.matches.len(), 1, "only the mesh match stays");
        assert!(matches!(&mixed.matches[0].uri, Some(StrMatcher::Prefix(p)) if p == "/c"));
    }

    #[test]
    fn gateway_names_resolve_as_istio_resolves_them() {
        assert_eq!(gateway_name("mesh", "default"), "mesh");
        assert_eq!(
            gateway_name("bookinfo-gateway", "default"),
            "default/bookinfo-gateway"
        );
        assert_eq!(
            gateway_name("istio-system/ingress", "default"),
            "istio-system/ingress"
        );
        assert_eq!(
            gateway_name("ingress.istio-system.svc.cluster.local", "default"),
            "istio-system/ingress"
        );
        let gw = Binding::Gateway("default/bookinfo-gateway");
        assert!(gw.admits(&["bookinfo-gateway".into()], "default"));
        assert!(!gw.admits(&["bookinfo-gateway".into()], "other"));
        assert!(!gw.admits(&[], "default"), "no gateways: mesh only");
        assert!(!gw.admits(&["mesh".into()], "default"));
        assert!(Binding::Mesh.admits(&[], "default"));
        assert!(!Binding::Mesh.admits(&["default/bookinfo-gateway".into()], "default"));
    }
}
