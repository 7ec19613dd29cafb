//! Kubernetes Gateway API `Gateway`s of this gateway's classes → ports and
//! filter chains, with the HTTPRoutes and GRPCRoutes attached to their
//! listeners (`parentRefs` by Gateway, `sectionName`, `port`), as the
//! Gateway API specifies attachment:
//!
//! - a listener admits routes from its `allowedRoutes.namespaces` (`Same`
//!   by default, `All`, or a `Selector` over the `Namespace` documents'
//!   labels) of its `allowedRoutes.kinds` (HTTPRoute and GRPCRoute on HTTP
//!   and HTTPS listeners);
//! - a route's `hostnames` intersect the listener's `hostname` (none on
//!   either side: every host); a route left with no host does not attach;
//! - the rules of every route for one host are ordered by the API's
//!   precedence (`gateway_api::rules::sort`), routes oldest first on ties;
//! - HTTPS listeners terminate TLS with the first `certificateRefs` Secret
//!   read from the credential directory (another namespace's Secret needs a
//!   ReferenceGrant); `spec.tls.frontend` validation makes them MUTUAL.
//!   TLS listeners pass through (TLSRoute is not used yet: they take no
//!   route); TCP and UDP listeners are not served.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::Documents;
use super::super::gateway_api::rules::{self as api_rules, RankedRule, RuleScope};
use super::super::gateway_api::{
    Namespaces, Parent, ReferenceGrants, Referent, Route, RouteKind, RouteSpec, parent, routes,
};
use super::super::routes as mesh_routes;
use super::tls::{self, CertificateFiles, ServerTlsInput};
use super::{Context, DEFAULT_NAMESPACE, Ports, intersect};
use crate::config::diagnostics::Diagnostics;
use crate::config::documents::Document;
use crate::config::gateway_api::{GROUP, GatewaySpec, Listener};
use crate::model::gateway::{
    ChainAction, FilterChain, PortProtocol, ServerRef, ServerTls, ServerTlsMode,
};
use crate::model::route::VirtualHost;

/// A Gateway being bound.
struct KubeGateway<'a> {
    doc: &'a Document<GatewaySpec>,
    namespace: &'a str,
    /// `namespace/name`.
    name: String,
}

/// What listeners read while binding.
struct Index<'a> {
    routes: Vec<Route<'a>>,
    grants: ReferenceGrants,
    namespaces: Namespaces,
}

/// One parentRef of an indexed route that names a given Gateway.
struct RefToGateway<'i, 'a> {
    /// The route's place in [`Index::routes`].
    r: usize,
    route: &'i Route<'a>,
    /// The parentRef's place (`spec.parentRefs[p]`).
    p: usize,
    /// Its `sectionName`.
    section: Option<String>,
    /// Its `port`.
    port: Option<u16>,
}

impl<'a> Index<'a> {
    /// Every parentRef of the indexed routes that names Gateway `gw`, route
    /// by route, each route's in order.
    fn refs_to<'i>(
        &'i self,
        gw: &'i KubeGateway<'_>,
    ) -> impl Iterator<Item = RefToGateway<'i, 'a>> + 'i {
        self.routes.iter().enumerate().flat_map(move |(r, route)| {
            route
                .parent_refs
                .iter()
                .enumerate()
                .filter_map(move |(p, parent_ref)| {
                    match parent(parent_ref, &route.namespace, &[], DEFAULT_NAMESPACE) {
                        Parent::Gateway {
                            gateway,
                            section,
                            port,
                        } if gateway == gw.name => Some(RefToGateway {
                            r,
                            route,
                            p,
                            section,
                            port,
                        }),
                        _ => None,
                    }
                })
        })
    }
}

pub(super) fn gateways(
    ctx: &Context<'_>,
    docs: &Documents,
    ports: &mut Ports,
    diags: &mut Diagnostics,
) {
    let index = Index {
        routes: routes(&docs.http_routes, &docs.grpc_routes, DEFAULT_NAMESPACE),
        grants: ReferenceGrants::new(&docs.reference_grants, DEFAULT_NAMESPACE),
        namespaces: Namespaces::new(&docs.namespaces),
    };
    let mut rules: BTreeMap<usize, Vec<RankedRule>> = BTreeMap::new();
    for doc in &docs.kubernetes_gateways {
        if !ctx
            .spec
            .gateway_class_names
            .contains(&doc.spec.gateway_class_name)
        {
            let msg = format!(
                "class {:?} is not one this gateway serves ({:?}, its `gatewayClassNames`); not served here",
                doc.spec.gateway_class_name, ctx.spec.gateway_class_names
            );
            diags.warn(&doc.location, Some("spec.gatewayClassName".into()), msg);
            continue;
        }
        let namespace = doc
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE);
        let gw = KubeGateway {
            doc,
            namespace,
            name: format!("{namespace}/{}", doc.metadata.name),
        };
        for (i, listener) in doc.spec.listeners.iter().enumerate() {
            add_listener(ctx, &gw, listener, i, &index, &mut rules, ports, diags);
        }
        unmatched_parent_refs(&gw, &index, diags);
    }
}

/// Warns of each parentRef to `gw` whose `sectionName` or `port` names
/// none of its listeners: the route does not attach there (the API's
/// `Accepted=False`, reason `NoMatchingParent`).
fn unmatched_parent_refs(gw: &KubeGateway<'_>, idx: &Index<'_>, diags: &mut Diagnostics) {
    for RefToGateway {
        route,
        p,
        section,
        port,
        ..
    } in idx.refs_to(gw)
    {
        if section.is_none() && port.is_none() {
            continue;
        }
        let named = |l: &Listener| names(section.as_deref(), port, l);
        if !gw.doc.spec.listeners.iter().any(named) {
            let msg = format!(
                "no listener of Gateway {} has{}{}; the route is not attached to it",
                gw.name,
                section
                    .as_deref()
                    .map(|s| format!(" sectionName {s:?}"))
                    .unwrap_or_default(),
                port.map(|p| format!(" port {p}")).unwrap_or_default(),
            );
            diags.warn(route.location, Some(format!("spec.parentRefs[{p}]")), msg);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn add_listener(
    ctx: &Context<'_>,
    gw: &KubeGateway<'_>,
    listener: &Listener,
    index: usize,
    idx: &Index<'_>,
    compiled: &mut BTreeMap<usize, Vec<RankedRule>>,
    ports: &mut Ports,
    diags: &mut Diagnostics,
) {
    let loc = &gw.doc.location;
    let field = format!("spec.listeners[{index}]");
    let Ok(number) = u16::try_from(listener.port) else {
        return;
    };
    let (protocol, http) = match listener.protocol.as_str() {
        "HTTP" => (PortProtocol::Http, true),
        "HTTPS" => (PortProtocol::Tls, true),
        "TLS" => (PortProtocol::Tls, false),
        other => {
            let msg =
                format!("{other} listeners are not served by tracemesh yet (HTTP, HTTPS, TLS)");
            diags.warn(loc, Some(format!("{field}.protocol")), msg);
            return;
        }
    };
    let passthrough = listener.tls.as_ref().and_then(|t| t.mode.as_deref()) == Some("Passthrough");
    let server_tls = if protocol == PortProtocol::Tls && !passthrough {
        match listener_tls(ctx, gw, listener, http, &format!("{field}.tls"), idx, diags) {
            Some(t) => Some(t),
            None => return,
        }
    } else {
        None
    };
    let sref = ServerRef {
        gateway: gw.name.clone(),
        name: listener.name.clone(),
    };
    let server_names: Vec<String> = listener
        .hostname
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let owner = format!("Gateway {} {field}", gw.name);
    let vhosts = if http {
        attached_hosts(ctx, gw, listener, &field, idx, compiled, diags)
    } else {
        let msg = "TLSRoute is not used by tracemesh yet: this listener takes no route and closes connections";
        diags.warn(loc, Some(field.clone()), msg);
        Vec::new()
    };
    let Some(build) = ports.claim(
        number,
        protocol,
        &owner,
        (loc, &format!("{field}.port")),
        diags,
    ) else {
        return;
    };
    if protocol == PortProtocol::Http {
        build
            .http
            .extend(vhosts.into_iter().map(|vh| (vh, sref.clone())));
        return;
    }
    let chain_name = format!(
        "https.{number}.{}.{}.{}",
        listener.name, gw.doc.metadata.name, gw.namespace
    );
    build.chains.push(FilterChain {
        name: chain_name,
        servers: vec![sref],
        server_names,
        tls: server_tls,
        action: if http {
            ChainAction::Http(Arc::new(mesh_routes::gateway_table(vhosts)))
        } else {
            ChainAction::Forward(Vec::new())
        },
    });
}

fn listener_tls(
    ctx: &Context<'_>,
    gw: &KubeGateway<'_>,
    listener: &Listener,
    http: bool,
    field: &str,
    idx: &Index<'_>,
    diags: &mut Diagnostics,
) -> Option<ServerTls> {
    let loc = &gw.doc.location;
    let Some(certificate) = listener
        .tls
        .as_ref()
        .and_then(|t| t.certificate_refs.first())
    else {
        diags.error(
            loc,
            Some(format!("{field}.certificateRefs")),
            "a terminating listener needs a certificate",
        );
        return None;
    };
    let kind = certificate.kind.as_deref().unwrap_or("Secret");
    let group = certificate.group.as_deref().unwrap_or("");
    if (group, kind) != ("", "Secret") {
        let msg = format!("{group}/{kind}: certificates are read from Secrets only");
        diags.error(loc, Some(format!("{field}.certificateRefs[0]")), msg);
        return None;
    }
    let namespace = certificate.namespace.as_deref().unwrap_or(gw.namespace);
    let from = Referent {
        group: GROUP,
        kind: "Gateway",
        namespace: gw.namespace,
    };
    let to = Referent {
        group: "",
        kind: "Secret",
        namespace,
    };
    if !idx.grants.allows(&from, &to, &certificate.name) {
        let msg = format!(
            "Secret {namespace}/{} is in another namespace and no ReferenceGrant there lets Gateways of {} refer to it",
            certificate.name, gw.namespace
        );
        diags.error(loc, Some(format!("{field}.certificateRefs[0]")), msg);
        return None;
    }
    let mut files: CertificateFiles =
        tls::secret_files(&ctx.spec.credential_directory, namespace, &certificate.name);
    files.ca = None;
    files.crl = None;
    let mut mode = ServerTlsMode::Simple;
    let frontend = gw.doc.spec.tls.as_ref().and_then(|t| t.frontend.as_ref());
    let validation = frontend.and_then(|f| {
        f.per_port
            .iter()
            .find(|p| p.port == listener.port)
            .map(|p| &p.tls)
            .unwrap_or(&f.default)
            .validation
            .as_ref()
    });
    if let Some(v) = validation
        && let Some(ca) = v.ca_certificate_refs.first()
    {
        let ns = ca.namespace.as_deref().unwrap_or(gw.namespace);
        let dir = tls::secret_files(&ctx.spec.credential_directory, ns, &ca.name);
        files.crl = dir.crl;
        files.ca = Some(dir.ca.unwrap_or_else(|| {
            std::path::Path::new(&ctx.spec.credential_directory)
                .join(ns)
                .join(&ca.name)
                .join("ca.crt")
        }));
        mode = if v.mode.as_deref() == Some("AllowInsecureFallback") {
            ServerTlsMode::OptionalMutual
        } else {
            ServerTlsMode::Mutual
        };
    }
    let input = ServerTlsInput {
        mode,
        files,
        min_version: None,
        max_version: None,
        cipher_suites: &[],
        alpn: http,
        pins: Default::default(),
    };
    let (config, local_uris) = tls::server_config(&input, field, loc, diags)?;
    Some(ServerTls {
        mode,
        config: Some(config),
        local_uris,
        peer_names: None,
    })
}

/// Whether a parentRef's `sectionName` and `port` (each when set) name
/// `listener`.
fn names(section: Option<&str>, port: Option<u16>, listener: &Listener) -> bool {
    section.is_none_or(|s| s == listener.name) && port.is_none_or(|p| u32::from(p) == listener.port)
}

/// Whether a listener admits a route of `kind` from `namespace`.
fn allowed(
    gw: &KubeGateway<'_>,
    listener: &Listener,
    kind: RouteKind,
    namespace: &str,
    idx: &Index<'_>,
) -> bool {
    let allowed = listener.allowed_routes.as_ref();
    let kinds = allowed.map(|a| a.kinds.as_slice()).unwrap_or_default();
    let kind_ok = kinds.is_empty()
        || kinds
            .iter()
            .any(|k| k.group.as_deref().unwrap_or(GROUP) == GROUP && k.kind == kind.name());
    let from = allowed.and_then(|a| a.namespaces.as_ref());
    let namespace_ok = match from.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
        "All" => true,
        "Selector" => from
            .and_then(|n| n.selector.as_ref())
            .is_some_and(|s| s.matches(&idx.namespaces.labels(namespace))),
        _ => namespace == gw.namespace,
    };
    kind_ok && namespace_ok
}

/// The virtual hosts of the routes attached to one listener.
fn attached_hosts(
    ctx: &Context<'_>,
    gw: &KubeGateway<'_>,
    listener: &Listener,
    field: &str,
    idx: &Index<'_>,
    compiled: &mut BTreeMap<usize, Vec<RankedRule>>,
    diags: &mut Diagnostics,
) -> Vec<Arc<VirtualHost>> {
    let listener_host = listener
        .hostname
        .as_deref()
        .unwrap_or("*")
        .to_ascii_lowercase();
    let mut by_host: Vec<(String, Vec<RankedRule>, String)> = Vec::new();
    for RefToGateway {
        r,
        route,
        p,
        section,
        port,
    } in idx.refs_to(gw)
    {
        if !names(section.as_deref(), port, listener) {
            continue;
        }
        let at = Some(format!("spec.parentRefs[{p}]"));
        if !allowed(gw, listener, route.kind, &route.namespace, idx) {
            if section.is_some() {
                let msg = format!(
                    "not allowed by {} {field}.allowedRoutes (namespace or kind)",
                    gw.name
                );
                diags.warn(route.location, at, msg);
            }
            continue;
        }
        let domains: Vec<String> = if route.hostnames.is_empty() {
            vec![listener_host.clone()]
        } else {
            route
                .hostnames
                .iter()
                .filter_map(|h| intersect(&listener_host, &h.to_ascii_lowercase()))
                .collect()
        };
        if domains.is_empty() {
            if section.is_some() {
                let msg = format!(
                    "no hostname of the route falls under listener {}'s {listener_host}",
                    listener.name
                );
                diags.warn(route.location, at, msg);
            }
            continue;
        }
        let rules = compiled
            .entry(r)
            .or_insert_with(|| route_rules(route, ctx, idx, diags));
        for domain in domains {
            match by_host.iter_mut().find(|(h, _, _)| *h == domain) {
                Some((_, list, _)) => list.extend(rules.iter().cloned()),
                None => by_host.push((domain, rules.clone(), route.describe())),
            }
        }
    }
    by_host
        .into_iter()
        .map(|(host, mut rules, origin)| {
            api_rules::sort(&mut rules);
            Arc::new(VirtualHost {
                host,
                ports: vec![listener.port as u16],
                in_registry: false,
                virtual_service: Some(origin),
                rules: rules.into_iter().map(|r| r.rule).collect(),
            })
        })
        .collect()
}

fn route_rules(
    route: &Route<'_>,
    ctx: &Context<'_>,
    idx: &Index<'_>,
    diags: &mut Diagnostics,
) -> Vec<RankedRule> {
    let scope = RuleScope {
        loc: route.location,
        kind: route.kind,
        name: &route.metadata.name,
        namespace: &route.namespace,
        registry: ctx.registry,
        grants: Some(&idx.grants),
    };
    match route.spec {
        RouteSpec::Http(spec) => api_rules::http_rules(spec.rules.as_deref(), &scope, diags),
        RouteSpec::Grpc(spec) => api_rules::grpc_rules(&spec.rules, &scope, diags),
    }
}
