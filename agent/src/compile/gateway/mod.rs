//! An ingress gateway's config (an `IngressGateway` bootstrap plus Istio
//! `Gateway`s, the VirtualServices bound to them, and the Kubernetes
//! Gateway API's `Gateway`s and routes) → [`GatewaySnapshot`]: per port,
//! filter chains with their TLS and route tables, as Istio renders a
//! gateway's listeners for Envoy (`pilot/pkg/networking/core/gateway.go`).
//!
//! - A Gateway applies when its `selector` labels are all among the
//!   IngressGateway's `labels` (Istio: the selector matches the gateway
//!   pod).
//! - Servers are grouped by port. Plaintext HTTP servers of a port share
//!   one route table (Istio's `http.<port>`); each HTTPS server is a filter
//!   chain answering its hosts by SNI with its own table
//!   (`https.<port>.<name>.<gateway>.<namespace>`); PASSTHROUGH and TCP
//!   servers forward bytes by the VirtualServices' `tls[]` (`sniHosts`)
//!   and `tcp[]` rules.
//! - A VirtualService applies when its `gateways` name the Gateway
//!   (`namespace/name`, or a short name in the VirtualService's
//!   namespace) and a server's `hosts` admit it (`ns/host`, `./host`,
//!   `*/host`); its hosts and the server's intersect into the virtual
//!   hosts' domains. Several VirtualServices for one host on a gateway
//!   merge, oldest first (Istio merges gateway-bound VirtualServices).
//! - `httpsRedirect` makes the server's virtual hosts answer 301 to https.
//!
//! Documents without a namespace are in `default` (where `kubectl apply`
//! puts them); the gateway workload itself is in the IngressGateway's
//! namespace (default `istio-system`, where Istio installs its ingress),
//! where `credentialName` Secrets are read from, as in Istio.

mod kubernetes;
#[cfg(test)]
mod tests;
mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::Documents;
use super::delegate::Delegates;
use super::destination_rules::RuleScope;
use super::registry::{Importer, Registry};
use super::routes::{self, Binding, Source};
use super::tcp_rules::l4_destinations;
use crate::config::diagnostics::{Diagnostics, Location};
use crate::config::documents::Document;
use crate::config::gateway::{GatewaySpec, Server};
use crate::config::ingress_gateway::IngressGatewaySpec;
use crate::config::virtual_service::VirtualServiceSpec;
use crate::host::{host_matches, resolve_short_name};
use crate::model::cluster::Cluster;
use crate::model::gateway::{
    ChainAction, FilterChain, GatewayIdentity, GatewayListeners, GatewayPort, GatewaySnapshot,
    L4Route, PortProtocol, ServerRef, ServerTls, ServerTlsMode, cluster_sni,
};
use crate::model::live::LiveState;
use crate::model::mesh::TrustDomainBundle;
use crate::model::policy::{Redirect, RouteAction, RoutePolicy};
use crate::model::route::{HeaderEdits, HttpRule, RouteMatch, StrMatcher, VirtualHost};
use crate::tls::verify::ClientPins;

/// The namespace of documents that name none (`kubectl apply`'s default).
pub(super) const DEFAULT_NAMESPACE: &str = "default";
/// The gateway workload's namespace when its IngressGateway names none.
pub const DEFAULT_GATEWAY_NAMESPACE: &str = "istio-system";

/// The gateway workload's trust domain (`own`: its IngressGateway's, else
/// the mesh config's) and the file's mesh config's aliases, as a sidecar
/// reads them.
fn mesh_trust_domains(docs: &Documents, own: &str) -> TrustDomainBundle {
    let mesh = docs.mesh_configs.first().map(|m| &m.spec);
    TrustDomainBundle::new(own, mesh.map_or(&[][..], |m| &m.trust_domain_aliases))
}

/// Compiles a gateway's documents, with the registry its clusters came
/// from (the policies' providers resolve through it too); None when the
/// bootstrap is missing or did not compile (errors reported).
pub(super) fn build(
    file: &Arc<str>,
    docs: &Documents,
    version: u64,
    states: &LiveState,
    diags: &mut Diagnostics,
) -> Option<(GatewaySnapshot, Registry)> {
    let doc = single(file, &docs.ingress_gateways, diags)?;
    // The mesh config's trust domain when the IngressGateway sets none (its
    // findings are the proxy compile's, which reads it again).
    let mesh_trust_domain = docs
        .mesh_configs
        .first()
        .and_then(|m| m.spec.trust_domain.as_deref());
    let identity = identity(doc, mesh_trust_domain, diags)?;
    let root_namespace = super::mesh::root_namespace(&docs.mesh_configs);
    // The gateway workload follows the DestinationRules Istio gives a
    // proxy of its namespace (the IngressGateway's, `istio-system` by
    // default, usually the root namespace itself).
    let scope = RuleScope {
        default_namespace: DEFAULT_NAMESPACE,
        namespace: &identity.namespace,
        root_namespace,
        labels: &doc.spec.labels,
    };
    let registry = Registry::build(
        &docs.service_entries,
        &docs.workload_entries,
        &docs.destination_rules,
        scope,
        Importer::Gateway,
        (doc.spec.identity.is_some(), &docs.peer_authentications),
        &mesh_trust_domains(docs, &identity.spiffe.trust_domain),
        states,
        diags,
    );
    let mut ports = Ports::default();
    let ctx = Context {
        spec: &doc.spec,
        loc: &doc.location,
        identity: &identity,
        registry: &registry,
        virtual_services: &docs.virtual_services,
    };
    istio_gateways(&ctx, docs, &mut ports, diags);
    kubernetes::gateways(&ctx, docs, &mut ports, diags);
    not_served(docs, &identity, diags);
    let listeners = ports.finish(&ctx, diags);
    // A rejected Gateway may be the one that selects this gateway: its
    // own error is the whole story.
    let gateway_rejected = diags.errors().any(|d| {
        d.location
            .resource
            .as_deref()
            .is_some_and(|r| r.starts_with("Gateway "))
    });
    if listeners.ports.is_empty() && !gateway_rejected {
        let msg = "no Gateway selects this gateway (its `labels`) and no Kubernetes Gateway of its classes: it listens on nothing";
        diags.warn(&doc.location, Some("spec.labels".into()), msg);
    }
    let snapshot = GatewaySnapshot {
        version,
        bootstrap: doc.spec.clone(),
        identity: Arc::new(identity),
        listeners,
        clusters: registry.clusters(),
    };
    Some((snapshot, registry))
}

/// What every part of a gateway's compile reads.
struct Context<'a> {
    spec: &'a IngressGatewaySpec,
    loc: &'a Location,
    identity: &'a GatewayIdentity,
    registry: &'a Registry,
    /// Every VirtualService, for the delegates bound ones name.
    virtual_services: &'a [Document<VirtualServiceSpec>],
}

fn single<'a>(
    file: &Arc<str>,
    docs: &'a [Document<IngressGatewaySpec>],
    diags: &mut Diagnostics,
) -> Option<&'a Document<IngressGatewaySpec>> {
    match docs {
        [one] => Some(one),
        [] => {
            // One that could not be read is named by its own error already.
            if !diags.has_errors_in_kind("IngressGateway") {
                let msg = "no `apiVersion: tracemesh.io/v1, kind: IngressGateway` document: the gateway needs its bootstrap";
                diags.error(&Location::file(file), None, msg);
            }
            None
        }
        [_, rest @ ..] => {
            for extra in rest {
                let msg = "a file holds one IngressGateway document; this is a second one";
                diags.error(&extra.location, None, msg);
            }
            None
        }
    }
}

fn identity(
    doc: &Document<IngressGatewaySpec>,
    mesh_trust_domain: Option<&str>,
    diags: &mut Diagnostics,
) -> Option<GatewayIdentity> {
    let spec = &doc.spec;
    if doc.metadata.name.is_empty() {
        let msg = "the gateway workload's name is required";
        diags.error(&doc.location, Some("metadata.name".into()), msg);
        return None;
    }
    let namespace = doc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_GATEWAY_NAMESPACE.to_owned());
    let service = spec.service.as_deref().unwrap_or(&doc.metadata.name);
    let trust_domain = spec
        .trust_domain
        .as_deref()
        .or(mesh_trust_domain)
        .unwrap_or(crate::model::mesh::DEFAULT_TRUST_DOMAIN);
    let spiffe = match tracemesh_ca::SpiffeId::new(trust_domain, &namespace, &spec.service_account)
    {
        Ok(id) => id,
        Err(err) => {
            diags.error(
                &doc.location,
                Some("spec.serviceAccount".into()),
                err.to_string(),
            );
            return None;
        }
    };
    for (i, l) in spec.listeners.iter().enumerate() {
        let field = format!("spec.listeners[{i}]");
        if l.listen.parse::<SocketAddr>().is_err() {
            let msg = format!("{:?} is not an IP address and port", l.listen);
            diags.error(&doc.location, Some(format!("{field}.listen")), msg);
        }
        if l.port == 0 || l.port > 65535 {
            diags.error(
                &doc.location,
                Some(format!("{field}.port")),
                "must be 1-65535",
            );
        }
    }
    Some(GatewayIdentity {
        workload: doc.metadata.name.clone(),
        service: resolve_short_name(service, &namespace),
        namespace,
        labels: spec.labels.clone(),
        spiffe,
    })
}

/// The ports being built, in the order servers name them.
#[derive(Default)]
struct Ports {
    ports: BTreeMap<u16, PortBuild>,
}

/// One port while servers are added.
struct PortBuild {
    protocol: PortProtocol,
    /// Which server first claimed the port (for conflict messages).
    owner: String,
    /// Plaintext HTTP: the virtual hosts of every server, first wins.
    http: Vec<(Arc<VirtualHost>, ServerRef)>,
    /// TLS and TCP: one chain per server.
    chains: Vec<FilterChain>,
}

impl Ports {
    /// The port `number` for a server of `protocol`, or None (warned)
    /// when an earlier server took it with another protocol.
    fn claim(
        &mut self,
        number: u16,
        protocol: PortProtocol,
        owner: &str,
        at: (&Location, &str),
        diags: &mut Diagnostics,
    ) -> Option<&mut PortBuild> {
        let port = self.ports.entry(number).or_insert_with(|| PortBuild {
            protocol,
            owner: owner.to_owned(),
            http: Vec::new(),
            chains: Vec::new(),
        });
        if port.protocol != protocol {
            let msg = format!(
                "port {number} is already {:?} for {}; this {protocol:?} server is ignored (Istio: one protocol per gateway port)",
                port.protocol, port.owner
            );
            diags.warn(at.0, Some(at.1.to_owned()), msg);
            return None;
        }
        Some(port)
    }

    fn finish(self, ctx: &Context<'_>, diags: &mut Diagnostics) -> GatewayListeners {
        let mut listeners = GatewayListeners::default();
        let mut bound: Vec<(SocketAddr, u16)> = Vec::new();
        for (number, build) in self.ports {
            let entry = ctx
                .spec
                .listeners
                .iter()
                .position(|l| l.port == u32::from(number));
            let listen = entry
                .and_then(|i| ctx.spec.listeners[i].listen.parse().ok())
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], number)));
            // Every socket is bound with SO_REUSEPORT, so two Gateway ports
            // on one address would both bind and the kernel would split
            // connections between their chains: refused, as Envoy refuses
            // two listeners on one address.
            if let Some((_, other)) = bound
                .iter()
                .find(|(addr, _)| super::bootstrap::overlaps(*addr, listen))
            {
                let field = entry.map_or_else(
                    || "spec.listeners".to_owned(),
                    |i| format!("spec.listeners[{i}].listen"),
                );
                let msg = format!(
                    "Gateway ports {other} and {number} both listen on {listen}: each Gateway port needs an address of its own (a port without a `listeners` entry listens on 0.0.0.0:<port>)"
                );
                diags.error(ctx.loc, Some(field), msg);
            }
            bound.push((listen, number));
            let mut chains = build.chains;
            if build.protocol == PortProtocol::Http {
                // One virtual host per host name across the port's servers,
                // their routes in the servers' order, as Istio's
                // `buildGatewayHTTPRouteConfig` merges them (`vHostDedupMap`):
                // two Gateways serving `*` on port 80 both route.
                let mut hosts: Vec<VirtualHost> = Vec::new();
                let mut servers: Vec<ServerRef> = Vec::new();
                for (vh, server) in build.http {
                    if !servers.contains(&server) {
                        servers.push(server);
                    }
                    let vh = Arc::try_unwrap(vh).unwrap_or_else(|vh| VirtualHost {
                        host: vh.host.clone(),
                        ports: vh.ports.clone(),
                        in_registry: vh.in_registry,
                        virtual_service: vh.virtual_service.clone(),
                        rules: vh.rules.clone(),
                    });
                    match hosts.iter_mut().find(|h| h.host == vh.host) {
                        Some(h) => h.rules.extend(vh.rules),
                        None => hosts.push(vh),
                    }
                }
                let hosts = (hosts.into_iter())
                    .map(|mut vh| {
                        catch_alls_last(&mut vh.rules);
                        Arc::new(vh)
                    })
                    .collect();
                chains.push(FilterChain {
                    name: format!("http.{number}"),
                    servers,
                    server_names: Vec::new(),
                    tls: None,
                    action: ChainAction::Http(Arc::new(routes::gateway_table(hosts))),
                });
            }
            dedupe_server_names(&mut chains, number, ctx.loc, diags);
            listeners.ports.push(GatewayPort {
                number,
                listen,
                protocol: build.protocol,
                chains,
            });
        }
        listeners
    }
}

/// Istio's `SortVHostRoutes` for a gateway's virtual host: the catch-all
/// routes (a match on no more than the path `/`, or no match at all) go
/// after the others, which keep their order, so a VirtualService merged in
/// later still reaches its paths past an earlier one's default route. A
/// rule with both kinds of match is split, as Istio renders one route per
/// match. An `httpsRedirect` stays first (Envoy's `require_tls` is the
/// virtual host's, checked before any route).
fn catch_alls_last(rules: &mut Vec<HttpRule>) {
    let mut first = Vec::new();
    let mut last = Vec::new();
    for rule in rules.drain(..) {
        if rule.name.as_deref() == Some(HTTPS_REDIRECT) && rule.reference.is_none() {
            first.insert(0, rule);
            continue;
        }
        if rule.matches.is_empty() {
            last.push(rule);
            continue;
        }
        let (catch_all, other): (Vec<RouteMatch>, Vec<RouteMatch>) =
            rule.matches.iter().cloned().partition(is_catch_all);
        match (catch_all.is_empty(), other.is_empty()) {
            (true, _) => first.push(rule),
            (false, true) => last.push(rule),
            (false, false) => {
                first.push(HttpRule {
                    matches: other,
                    ..rule.clone()
                });
                last.push(HttpRule {
                    matches: catch_all,
                    ..rule
                });
            }
        }
    }
    rules.extend(first);
    rules.extend(last);
}

/// Istio's `isCatchAllRoute`: a path of prefix `/` (or none, or the regex
/// `.*`) and no header or query condition (the method, scheme and
/// authority are header conditions in Envoy's route).
fn is_catch_all(m: &RouteMatch) -> bool {
    let any_path = match &m.uri {
        None => true,
        Some(StrMatcher::Prefix(p)) => p == "/",
        Some(StrMatcher::PathSeparatedPrefix(p)) => p.is_empty() || p == "/",
        Some(StrMatcher::Regex(r)) => r.as_str() == "^(?:.*)$",
        Some(_) => false,
    };
    any_path
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
        && m.method.is_none()
        && m.scheme.is_none()
        && m.authority.is_none()
}

/// Two chains of a port answering one SNI name: the first keeps it (Envoy
/// refuses duplicates; Istio keeps the first server).
fn dedupe_server_names(
    chains: &mut Vec<FilterChain>,
    port: u16,
    loc: &Location,
    diags: &mut Diagnostics,
) {
    let mut seen: Vec<String> = Vec::new();
    let mut catch_all = false;
    chains.retain_mut(|chain| {
        let before = chain.server_names.len();
        let was_catch_all = chain.server_names.is_empty();
        chain.server_names.retain(|n| {
            let dup = seen.contains(n);
            seen.push(n.clone());
            !dup
        });
        let keep = if was_catch_all {
            !std::mem::replace(&mut catch_all, true)
        } else {
            !chain.server_names.is_empty()
        };
        if chain.server_names.len() < before || !keep {
            let msg = format!(
                "port {port}: chain {} answers names an earlier server already answers; the earlier one keeps them",
                chain.name
            );
            diags.warn(loc, None, msg);
        }
        keep
    });
}

/// A server's `hosts` entry: the namespaces whose VirtualServices it
/// admits, and the host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerHost {
    /// None: any namespace (`*/` or no prefix).
    namespace: Option<String>,
    host: String,
}

impl ServerHost {
    fn parse(entry: &str, gateway_namespace: &str) -> Self {
        let (namespace, host) = match entry.split_once('/') {
            Some(("*", host)) => (None, host),
            Some((".", host)) => (Some(gateway_namespace.to_owned()), host),
            Some((ns, host)) => (Some(ns.to_owned()), host),
            None => (None, entry),
        };
        Self {
            namespace,
            host: host.to_ascii_lowercase(),
        }
    }

    fn admits(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }
}

/// The domain two host patterns share: the more specific one, when one
/// covers the other (Istio's gateway host intersection).
pub(super) fn intersect(a: &str, b: &str) -> Option<String> {
    if host_matches(a, b) {
        Some(b.to_owned())
    } else if host_matches(b, a) {
        Some(a.to_owned())
    } else {
        None
    }
}

/// A Gateway as the bind step reads it.
struct IstioGateway<'a> {
    doc: &'a Document<GatewaySpec>,
    /// `namespace/name`.
    name: String,
    namespace: &'a str,
}

/// The VirtualServices bound to a gateway, in Istio's order
/// (`sortConfigByCreationTime`: the oldest first, one without a time first
/// of all, then by name and namespace), with their namespace.
fn bound<'a>(
    services: &'a [Document<VirtualServiceSpec>],
    gateway: &str,
) -> Vec<(&'a Document<VirtualServiceSpec>, &'a str)> {
    let mut list: Vec<(&Document<VirtualServiceSpec>, &str)> = services
        .iter()
        .filter_map(|d| {
            let ns = d.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            // As Istio indexes them: by the resource's `gateways`; a
            // match's own `gateways` narrow it further (`compile_match`).
            Binding::Gateway(gateway)
                .admits(&d.spec.gateways, ns)
                .then_some((d, ns))
        })
        .collect();
    list.sort_by_cached_key(|(d, ns)| (d.metadata.created_at(), d.metadata.name.clone(), *ns));
    list
}

fn istio_gateways(ctx: &Context<'_>, docs: &Documents, ports: &mut Ports, diags: &mut Diagnostics) {
    let mut selected: Vec<(usize, &Document<GatewaySpec>)> = docs
        .gateways
        .iter()
        .enumerate()
        .filter(|(_, d)| {
            d.spec
                .selector
                .iter()
                .all(|(k, v)| ctx.identity.labels.get(k) == Some(v))
        })
        .collect();
    selected.sort_by(|a, b| {
        super::gateway_api::age(&a.1.metadata, a.0)
            .cmp(&super::gateway_api::age(&b.1.metadata, b.0))
    });
    for (_, doc) in selected {
        let namespace = doc
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE);
        let gw = IstioGateway {
            doc,
            name: format!("{namespace}/{}", doc.metadata.name),
            namespace,
        };
        let services = bound(&docs.virtual_services, &gw.name);
        for (i, server) in doc.spec.servers.iter().enumerate() {
            add_server(ctx, &gw, server, i, &services, ports, diags);
        }
    }
}

/// A server's protocol: what its port carries and whether it serves HTTP.
fn server_protocol(protocol: &str, tls_mode: Option<&str>) -> Option<(PortProtocol, bool)> {
    let passthrough = matches!(tls_mode, Some("PASSTHROUGH" | "AUTO_PASSTHROUGH"));
    Some(match protocol.to_ascii_uppercase().as_str() {
        "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => (PortProtocol::Http, true),
        "HTTPS" => (PortProtocol::Tls, !passthrough),
        "TLS" => (PortProtocol::Tls, false),
        "TCP" | "MONGO" | "MYSQL" | "REDIS" => (PortProtocol::Tcp, false),
        _ => return None,
    })
}

fn add_server(
    ctx: &Context<'_>,
    gw: &IstioGateway<'_>,
    server: &Server,
    index: usize,
    services: &[(&Document<VirtualServiceSpec>, &str)],
    ports: &mut Ports,
    diags: &mut Diagnostics,
) {
    let loc = &gw.doc.location;
    let field = format!("spec.servers[{index}]");
    let Some(port) = &server.port else { return };
    let Ok(number) = u16::try_from(port.number) else {
        return;
    };
    let tls = server.tls.as_ref();
    // A `tls` without `mode` is PASSTHROUGH, the field's zero value as
    // Istio reads it.
    let mode = tls.map(|t| t.mode.as_deref().unwrap_or("PASSTHROUGH"));
    let Some((protocol, http)) = server_protocol(&port.protocol, mode) else {
        let msg = format!(
            "protocol {:?} is not served by gateways here (HTTP, HTTPS, HTTP2, GRPC, TLS, TCP)",
            port.protocol
        );
        diags.warn(loc, Some(format!("{field}.port.protocol")), msg);
        return;
    };
    if server.default_endpoint.is_some() {
        let msg = "not enforced: gateways forward to the routes' destinations only";
        diags.warn(loc, Some(format!("{field}.defaultEndpoint")), msg);
    }
    if server.bind.is_some() {
        let msg =
            "bind is not used: a gateway port listens where the IngressGateway's `listeners` say";
        diags.warn(loc, Some(format!("{field}.bind")), msg);
    }
    let hosts: Vec<ServerHost> = server
        .hosts
        .iter()
        .map(|h| ServerHost::parse(h, gw.namespace))
        .collect();
    let port_name = if port.name.is_empty() {
        format!("{index}")
    } else {
        port.name.clone()
    };
    let sref = ServerRef {
        gateway: gw.name.clone(),
        name: server.name.clone().unwrap_or_else(|| port_name.clone()),
    };
    let owner = format!("Gateway {} {field}", gw.name);
    let terminating =
        protocol != PortProtocol::Tcp && !matches!(mode, Some("PASSTHROUGH" | "AUTO_PASSTHROUGH"));
    let server_tls = if protocol == PortProtocol::Tls && terminating {
        let Some(t) = server_tls(ctx, tls, http, &format!("{field}.tls"), loc, diags) else {
            return;
        };
        Some(t)
    } else {
        None
    };
    if protocol == PortProtocol::Http && tls.is_some_and(|t| t.mode.is_some()) {
        let msg = "TLS settings other than httpsRedirect do not apply to a plaintext port";
        diags.warn(loc, Some(format!("{field}.tls")), msg);
    }
    let source = Source {
        labels: &ctx.identity.labels,
        namespace: &ctx.identity.namespace,
    };
    // Envoy's `require_tls: ALL`, as Istio renders `httpsRedirect`,
    // redirects only what did not come over TLS: nothing on a port that
    // terminates it (a redirect there would send the client round again).
    let redirect =
        protocol == PortProtocol::Http && tls.and_then(|t| t.https_redirect).unwrap_or(false);
    let mut server_names: Vec<String> = sni_names(&hosts);
    let Some(build) = ports.claim(
        number,
        protocol,
        &owner,
        (loc, &format!("{field}.port")),
        diags,
    ) else {
        return;
    };
    if http {
        let vhosts = http_hosts(ctx, gw, &hosts, number, services, source, redirect, diags);
        if protocol == PortProtocol::Http {
            build
                .http
                .extend(vhosts.into_iter().map(|vh| (vh, sref.clone())));
        } else {
            build.chains.push(FilterChain {
                name: format!(
                    "https.{number}.{port_name}.{}.{}",
                    gw.doc.metadata.name, gw.namespace
                ),
                servers: vec![sref],
                server_names,
                tls: server_tls,
                action: ChainAction::Http(Arc::new(routes::gateway_table(vhosts))),
            });
        }
        return;
    }
    let action = match mode {
        Some("AUTO_PASSTHROUGH") => {
            ChainAction::AutoPassthrough(auto_passthrough(ctx.registry, &hosts))
        }
        Some("PASSTHROUGH") => {
            let routes = tls_routes(ctx, gw, &hosts, number, services, diags);
            // Istio renders the server's chains by its routes' `sniHosts`
            // (intersected with its hosts), not by its hosts: a name a route
            // gives exactly beats another server's wildcard for it.
            let mut named: Vec<String> = routes
                .iter()
                .flat_map(|r| r.sni_hosts.iter().cloned())
                .collect();
            named.sort();
            named.dedup();
            if !named.is_empty() {
                server_names = if named.iter().any(|n| n == "*") {
                    Vec::new()
                } else {
                    named
                };
            }
            ChainAction::Forward(routes)
        }
        _ => ChainAction::Forward(tcp_routes(ctx, gw, &hosts, number, services, diags)),
    };
    build.chains.push(FilterChain {
        name: format!(
            "{}.{number}.{port_name}.{}.{}",
            port.protocol.to_ascii_lowercase(),
            gw.doc.metadata.name,
            gw.namespace
        ),
        servers: vec![sref],
        server_names: if protocol == PortProtocol::Tcp {
            Vec::new()
        } else {
            server_names
        },
        tls: server_tls,
        action,
    });
}

/// The SNI names a TLS server answers: its hosts (`*` answers every name,
/// so the chain takes every connection).
fn sni_names(hosts: &[ServerHost]) -> Vec<String> {
    if hosts.iter().any(|h| h.host == "*") {
        return Vec::new();
    }
    let mut names: Vec<String> = hosts.iter().map(|h| h.host.clone()).collect();
    names.dedup();
    names
}

fn server_tls(
    ctx: &Context<'_>,
    settings: Option<&crate::config::gateway::ServerTlsSettings>,
    http: bool,
    field: &str,
    loc: &Location,
    diags: &mut Diagnostics,
) -> Option<ServerTls> {
    let Some(t) = settings else {
        diags.error(
            loc,
            Some(field.to_owned()),
            "an HTTPS or TLS server needs `tls`",
        );
        return None;
    };
    let mode = match t.mode.as_deref().unwrap_or("PASSTHROUGH") {
        "SIMPLE" => ServerTlsMode::Simple,
        "MUTUAL" => ServerTlsMode::Mutual,
        "OPTIONAL_MUTUAL" => ServerTlsMode::OptionalMutual,
        "ISTIO_MUTUAL" => {
            if ctx.spec.identity.is_none() {
                let msg = "ISTIO_MUTUAL presents the gateway's workload certificate: the IngressGateway needs `identity`";
                diags.error(loc, Some(format!("{field}.mode")), msg);
                return None;
            }
            // Istio renders the server's `subjectAltNames` into the
            // workload certificate's validation context; no pins, and the
            // revocation list is not read here.
            for (name, set) in [
                (
                    "verifyCertificateSpki",
                    !t.verify_certificate_spki.is_empty(),
                ),
                (
                    "verifyCertificateHash",
                    !t.verify_certificate_hash.is_empty(),
                ),
                ("caCrl", t.ca_crl.is_some()),
            ] {
                if set {
                    let msg = "not enforced on ISTIO_MUTUAL: peers are checked against the mesh's roots and `subjectAltNames`";
                    diags.warn(loc, Some(format!("{field}.{name}")), msg);
                }
            }
            return Some(ServerTls {
                mode: ServerTlsMode::IstioMutual,
                config: None,
                local_uris: Vec::new(),
                peer_names: (!t.subject_alt_names.is_empty()).then(|| {
                    Arc::new(ClientPins {
                        subject_alt_names: t.subject_alt_names.clone(),
                        ..ClientPins::default()
                    })
                }),
            });
        }
        other => {
            diags.error(
                loc,
                Some(format!("{field}.mode")),
                format!("{other:?} does not terminate TLS"),
            );
            return None;
        }
    };
    let pins = tls::client_pins(t, mode, field, loc, diags)?;
    let files = if let Some(name) = t
        .credential_name
        .as_deref()
        .or(t.credential_names.first().map(String::as_str))
    {
        let mut files = tls::secret_files(
            &ctx.spec.credential_directory,
            &ctx.identity.namespace,
            name,
        );
        // Further credentials (an RSA and an ECDSA certificate): their
        // chains and keys; the client CA is the first's, as in Istio.
        if t.credential_name.is_none() {
            for name in t.credential_names.iter().skip(1) {
                let more = tls::secret_files(
                    &ctx.spec.credential_directory,
                    &ctx.identity.namespace,
                    name,
                );
                files.more.push((more.cert, more.key));
            }
        }
        if let Some(ca) = t.ca_cert_credential_name.as_deref() {
            // The client CA (and its revocation list) of another Secret:
            // its CA key, else its certificate.
            let ca = tls::secret_files(&ctx.spec.credential_directory, &ctx.identity.namespace, ca);
            files.ca = ca.ca.or(Some(ca.cert));
            files.crl = ca.crl;
        }
        files
    } else {
        let first = t.tls_certificates.first();
        let mut more = Vec::new();
        for (i, c) in t.tls_certificates.iter().enumerate().skip(1) {
            let (Some(cert), Some(key)) = (&c.server_certificate, &c.private_key) else {
                let msg = "needs `serverCertificate` and `privateKey`";
                diags.error(loc, Some(format!("{field}.tlsCertificates[{i}]")), msg);
                return None;
            };
            more.push((cert.into(), key.into()));
        }
        let cert = t
            .server_certificate
            .clone()
            .or_else(|| first.and_then(|c| c.server_certificate.clone()));
        let key = t
            .private_key
            .clone()
            .or_else(|| first.and_then(|c| c.private_key.clone()));
        let (Some(cert), Some(key)) = (cert, key) else {
            let msg = "needs `credentialName`, or `serverCertificate` and `privateKey`";
            diags.error(loc, Some(field.to_owned()), msg);
            return None;
        };
        tls::CertificateFiles {
            cert: cert.into(),
            key: key.into(),
            ca: t
                .ca_certificates
                .clone()
                .or_else(|| first.and_then(|c| c.ca_certificates.clone()))
                .map(Into::into),
            crl: t.ca_crl.clone().map(Into::into),
            more,
        }
    };
    let input = tls::ServerTlsInput {
        mode,
        files,
        min_version: t.min_protocol_version.as_deref(),
        max_version: t.max_protocol_version.as_deref(),
        cipher_suites: &t.cipher_suites,
        alpn: http,
        pins,
    };
    let (config, local_uris) = tls::server_config(&input, field, loc, diags)?;
    Some(ServerTls {
        mode,
        config: Some(config),
        local_uris,
        peer_names: None,
    })
}

/// The virtual hosts an HTTP server serves: each bound VirtualService's
/// hosts intersected with the server's, rules merged oldest first; with
/// `httpsRedirect`, every host of the server answers a redirect instead.
#[allow(clippy::too_many_arguments)]
fn http_hosts(
    ctx: &Context<'_>,
    gw: &IstioGateway<'_>,
    hosts: &[ServerHost],
    port: u16,
    services: &[(&Document<VirtualServiceSpec>, &str)],
    source: Source<'_>,
    redirect: bool,
    diags: &mut Diagnostics,
) -> Vec<Arc<VirtualHost>> {
    let mut vhosts: Vec<VirtualHost> = Vec::new();
    for (doc, namespace) in services {
        if doc.spec.http.is_empty() {
            continue;
        }
        let admitted: Vec<&ServerHost> = hosts.iter().filter(|h| h.admits(namespace)).collect();
        let mut rules: Option<Vec<HttpRule>> = None;
        for host in &doc.spec.hosts {
            let host = resolve_short_name(host, namespace);
            for server_host in &admitted {
                let Some(domain) = intersect(&server_host.host, &host) else {
                    continue;
                };
                let rules = rules.get_or_insert_with(|| {
                    routes::virtual_service_rules(
                        doc,
                        namespace,
                        ctx.registry,
                        Binding::Gateway(&gw.name),
                        Some(source),
                        Delegates {
                            services: ctx.virtual_services,
                            default_namespace: DEFAULT_NAMESPACE,
                        },
                        diags,
                    )
                });
                let rules = on_port(rules, port);
                match vhosts.iter_mut().find(|v| v.host == domain) {
                    Some(v) => v.rules.extend(rules),
                    None => vhosts.push(VirtualHost {
                        host: domain,
                        ports: vec![port],
                        in_registry: false,
                        virtual_service: Some(format!("{namespace}/{}", doc.metadata.name)),
                        rules,
                    }),
                }
            }
        }
    }
    if redirect {
        for host in hosts {
            if !vhosts.iter().any(|v| v.host == host.host) {
                vhosts.push(VirtualHost {
                    host: host.host.clone(),
                    ports: vec![port],
                    in_registry: false,
                    virtual_service: None,
                    rules: Vec::new(),
                });
            }
        }
        // Envoy's `require_tls` reads `x-forwarded-proto`, which it keeps
        // from trusted proxies in front (a load balancer that ended TLS):
        // their `https` requests are served by the server's routes, not
        // sent round again. Trusting none, every request is redirected.
        let trusted = ctx.spec.num_trusted_proxies > 0;
        for v in &mut vhosts {
            let routes = std::mem::take(&mut v.rules);
            v.rules = vec![https_redirect(trusted)];
            if trusted {
                v.rules.extend(routes);
            }
        }
    }
    vhosts.into_iter().map(Arc::new).collect()
}

/// Rules whose `match.port` names another port never match here; the
/// others keep their conditions.
fn on_port(rules: &[HttpRule], port: u16) -> Vec<HttpRule> {
    rules
        .iter()
        .filter_map(|r| {
            if r.matches.is_empty() {
                return Some(r.clone());
            }
            let matches: Vec<_> = r
                .matches
                .iter()
                .filter(|m| m.port.is_none_or(|p| p == port))
                .cloned()
                .collect();
            (!matches.is_empty()).then(|| HttpRule {
                matches,
                ..r.clone()
            })
        })
        .collect()
}

/// The name of the [`https_redirect`] rule.
const HTTPS_REDIRECT: &str = "https-redirect";

/// Envoy's `require_tls: ALL`, as Istio renders `httpsRedirect`: 301 to
/// the same host, port and path over https (Envoy writes
/// `https://<Host><path>`, a port in the Host included; only `:443`, the
/// same URL, is left out here). `trusted_proto`: only a request whose
/// `x-forwarded-proto` (set by a trusted proxy in front) is not `https`.
fn https_redirect(trusted_proto: bool) -> HttpRule {
    let matches = if trusted_proto {
        vec![RouteMatch {
            without_headers: vec![(
                http::HeaderName::from_static("x-forwarded-proto"),
                StrMatcher::Exact("https".to_owned()),
            )],
            ..RouteMatch::default()
        }]
    } else {
        Vec::new()
    };
    HttpRule {
        name: Some(Arc::from(HTTPS_REDIRECT)),
        reference: None,
        matches,
        destinations: Vec::new(),
        total_weight: 0,
        request_headers: HeaderEdits::default(),
        response_headers: HeaderEdits::default(),
        policy: RoutePolicy {
            action: RouteAction::Redirect(Redirect::to_https()),
            ..RoutePolicy::default()
        },
    }
}

/// TLS passthrough routes: the bound VirtualServices' `tls[]` rules whose
/// `sniHosts` a server host covers, for this port and gateway.
fn tls_routes(
    ctx: &Context<'_>,
    gw: &IstioGateway<'_>,
    hosts: &[ServerHost],
    port: u16,
    services: &[(&Document<VirtualServiceSpec>, &str)],
    diags: &mut Diagnostics,
) -> Vec<L4Route> {
    let mut out = Vec::new();
    let binding = Binding::Gateway(&gw.name);
    for (doc, namespace) in services {
        if !hosts.iter().any(|h| h.admits(namespace)) {
            continue;
        }
        for (i, rule) in doc.spec.tls.iter().enumerate() {
            let field = format!("spec.tls[{i}]");
            let mut sni_hosts = Vec::new();
            for m in &rule.matches {
                let gateways = if m.gateways.is_empty() {
                    &doc.spec.gateways
                } else {
                    &m.gateways
                };
                if !binding.admits(gateways, namespace)
                    || m.port.is_some_and(|p| p != u32::from(port))
                {
                    continue;
                }
                for sni in &m.sni_hosts {
                    let sni = sni.to_ascii_lowercase();
                    for h in hosts.iter().filter(|h| h.admits(namespace)) {
                        if let Some(name) = intersect(&h.host, &sni)
                            && !sni_hosts.contains(&name)
                        {
                            sni_hosts.push(name);
                        }
                    }
                }
            }
            if sni_hosts.is_empty() {
                continue;
            }
            let at = (field.as_str(), &doc.location);
            let destinations =
                l4_destinations(ctx.registry, &rule.route, namespace, port, at, diags);
            out.push(L4Route {
                sni_hosts,
                destinations,
            });
        }
    }
    out
}

/// TCP routes (and TLS-terminated TCP): the bound VirtualServices'
/// `tcp[]` rules for this port and gateway, of the VirtualServices one of
/// whose `hosts` a server host covers (its namespace admitted), as Istio's
/// `pickMatchingGatewayHosts` keeps them; the first rule matching decides,
/// so they keep their order.
fn tcp_routes(
    ctx: &Context<'_>,
    gw: &IstioGateway<'_>,
    hosts: &[ServerHost],
    port: u16,
    services: &[(&Document<VirtualServiceSpec>, &str)],
    diags: &mut Diagnostics,
) -> Vec<L4Route> {
    let mut out = Vec::new();
    let binding = Binding::Gateway(&gw.name);
    for (doc, namespace) in services {
        let served = doc.spec.hosts.iter().any(|host| {
            let host = resolve_short_name(host, namespace);
            hosts
                .iter()
                .any(|h| h.admits(namespace) && intersect(&h.host, &host).is_some())
        });
        if !served {
            continue;
        }
        for (i, rule) in doc.spec.tcp.iter().enumerate() {
            let applies = rule.matches.is_empty()
                || rule.matches.iter().any(|m| {
                    let gateways = if m.gateways.is_empty() {
                        &doc.spec.gateways
                    } else {
                        &m.gateways
                    };
                    binding.admits(gateways, namespace)
                        && m.port.is_none_or(|p| p == u32::from(port))
                });
            if !applies {
                continue;
            }
            let field = format!("spec.tcp[{i}]");
            let at = (field.as_str(), &doc.location);
            let destinations =
                l4_destinations(ctx.registry, &rule.route, namespace, port, at, diags);
            out.push(L4Route {
                sni_hosts: Vec::new(),
                destinations,
            });
        }
    }
    out
}

/// AUTO_PASSTHROUGH: the clusters of the mesh's services a server's
/// `hosts` cover, by Istio's SNI for each (`outbound_.<port>_.<subset>_.<host>`),
/// as Istio's `builtAutoPassthroughFilterChains` renders them: a service
/// declared MESH_EXTERNAL is left out (it has no sidecar to end the
/// caller's mTLS), as is one no server host covers.
fn auto_passthrough(
    registry: &Registry,
    hosts: &[ServerHost],
) -> std::collections::HashMap<String, Arc<Cluster>> {
    let covered = |host: &str, namespace: &str| {
        hosts
            .iter()
            .any(|h| h.admits(namespace) && host_matches(&h.host, host))
    };
    registry
        .services
        .iter()
        .filter(|(host, service)| !service.mesh_external && covered(host, &service.namespace))
        .flat_map(|(_, service)| service.clusters.values().flatten())
        .map(|c| {
            let sni = cluster_sni(c.port, c.subset.as_deref(), &c.service.host);
            (sni, c.clone())
        })
        .collect()
}

/// Gateways in the file this gateway does not serve, said once each (a
/// file may configure several gateways).
fn not_served(docs: &Documents, identity: &GatewayIdentity, diags: &mut Diagnostics) {
    for doc in &docs.gateways {
        if !doc
            .spec
            .selector
            .iter()
            .all(|(k, v)| identity.labels.get(k) == Some(v))
        {
            let msg = format!(
                "its selector does not match this gateway's labels {:?}; not served here",
                identity.labels
            );
            diags.warn(&doc.location, Some("spec.selector".into()), msg);
        }
    }
}
