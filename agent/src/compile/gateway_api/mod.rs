//! The Kubernetes Gateway API → the compiled routing model. HTTPRoute and
//! GRPCRoute rules become the same [`HttpRule`](crate::model::route::HttpRule)s
//! VirtualServices compile to (as Istio converts them to VirtualServices),
//! ordered as the Gateway API orders them ([`rules`]). This module resolves
//! what a route refers to: its parents (a Gateway and listener, or a
//! Service for mesh routing, the GAMMA mode), its backends, and the
//! ReferenceGrants that allow references across namespaces.

pub(super) mod rules;

use std::collections::BTreeMap;

use crate::config::diagnostics::Location;
use crate::config::documents::Document;
use crate::config::gateway_api::{
    BackendObjectReference, GROUP, GrpcRouteSpec, HttpRouteSpec, ParentReference,
    ReferenceGrantSpec,
};
use crate::config::meta::ObjectMeta;
use crate::config::service_entry::ServiceEntrySpec;
use crate::host::{CLUSTER_DOMAIN, service_entry_host};

/// Istio's API group, whose `Hostname` kind names a ServiceEntry host as
/// a backend, and whose `ServiceEntry` may be a mesh parent.
const ISTIO_NETWORKING: &str = "networking.istio.io";

/// HTTPRoute or GRPCRoute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RouteKind {
    /// `HTTPRoute`.
    Http,
    /// `GRPCRoute`.
    Grpc,
}

impl RouteKind {
    /// The kind's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Http => "HTTPRoute",
            Self::Grpc => "GRPCRoute",
        }
    }
}

/// A route of either kind, as binding reads it.
pub(super) struct Route<'a> {
    /// Its kind.
    pub kind: RouteKind,
    /// Where it is.
    pub location: &'a Location,
    /// Its metadata.
    pub metadata: &'a ObjectMeta,
    /// Its namespace (the default namespace when the document has none).
    pub namespace: String,
    /// `spec.parentRefs`.
    pub parent_refs: &'a [ParentReference],
    /// `spec.hostnames`.
    pub hostnames: &'a [String],
    /// The document, for its rules.
    pub spec: RouteSpec<'a>,
    /// Its position in the file among routes (older first when no
    /// `creationTimestamp` says otherwise).
    pub order: usize,
}

/// The spec of a [`Route`].
#[derive(Clone, Copy)]
pub(super) enum RouteSpec<'a> {
    /// An HTTPRoute's.
    Http(&'a HttpRouteSpec),
    /// A GRPCRoute's.
    Grpc(&'a GrpcRouteSpec),
}

impl Route<'_> {
    /// `Kind namespace/name`.
    pub fn describe(&self) -> String {
        format!(
            "{} {}/{}",
            self.kind.name(),
            self.namespace,
            self.metadata.name
        )
    }
}

/// Every route of a file, HTTPRoutes then GRPCRoutes, in the order the
/// Gateway API breaks ties between routes: the oldest `creationTimestamp`
/// first (documents without one count as created in file order, after
/// those with one), then `namespace/name`.
pub(super) fn routes<'a>(
    http: &'a [Document<HttpRouteSpec>],
    grpc: &'a [Document<GrpcRouteSpec>],
    default_namespace: &str,
) -> Vec<Route<'a>> {
    let namespace = |m: &ObjectMeta| {
        m.namespace
            .clone()
            .unwrap_or_else(|| default_namespace.to_owned())
    };
    let mut all: Vec<Route<'a>> = http
        .iter()
        .map(|d| Route {
            kind: RouteKind::Http,
            location: &d.location,
            metadata: &d.metadata,
            namespace: namespace(&d.metadata),
            parent_refs: &d.spec.parent_refs,
            hostnames: &d.spec.hostnames,
            spec: RouteSpec::Http(&d.spec),
            order: 0,
        })
        .chain(grpc.iter().map(|d| Route {
            kind: RouteKind::Grpc,
            location: &d.location,
            metadata: &d.metadata,
            namespace: namespace(&d.metadata),
            parent_refs: &d.spec.parent_refs,
            hostnames: &d.spec.hostnames,
            spec: RouteSpec::Grpc(&d.spec),
            order: 0,
        }))
        .collect();
    all.sort_by_key(|r| (r.location.document, r.location.item));
    for (i, r) in all.iter_mut().enumerate() {
        r.order = i;
    }
    all.sort_by(|a, b| {
        age(a.metadata, a.order)
            .cmp(&age(b.metadata, b.order))
            .then_with(|| a.namespace.cmp(&b.namespace))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    all
}

/// How old a resource is, for precedence: its `creationTimestamp`
/// (RFC 3339 in UTC as Kubernetes writes it, so text order is time
/// order), else its file position after every timestamped one.
pub(super) fn age(meta: &ObjectMeta, order: usize) -> (bool, String, usize) {
    match &meta.creation_timestamp {
        Some(ts) => (false, ts.clone(), 0),
        None => (true, String::new(), order),
    }
}

/// What a parentRef attaches the route to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Parent {
    /// A Gateway (and optionally one listener, by name or port).
    Gateway {
        /// `namespace/name`.
        gateway: String,
        /// `sectionName`.
        section: Option<String>,
        /// `port`.
        port: Option<u16>,
    },
    /// A mesh service (GAMMA): a Service, or a ServiceEntry's hosts.
    Mesh {
        /// The service's host names.
        hosts: Vec<String>,
        /// Its namespace.
        namespace: String,
        /// `port`: the route applies to requests to this port only.
        port: Option<u16>,
    },
    /// A kind tracemesh does not attach routes to.
    Unsupported(String),
}

/// Resolves a parentRef of a route in `route_namespace`.
pub(super) fn parent(
    r: &ParentReference,
    route_namespace: &str,
    service_entries: &[Document<ServiceEntrySpec>],
    default_namespace: &str,
) -> Parent {
    let group = r.group.as_deref().unwrap_or(GROUP);
    let kind = r.kind.as_deref().unwrap_or("Gateway");
    let namespace = r
        .namespace
        .clone()
        .unwrap_or_else(|| route_namespace.to_owned());
    let port = r.port.and_then(|p| u16::try_from(p).ok());
    match (group, kind) {
        (GROUP, "Gateway") => Parent::Gateway {
            gateway: format!("{namespace}/{}", r.name),
            section: r.section_name.clone(),
            port,
        },
        ("", "Service") => Parent::Mesh {
            hosts: vec![format!("{}.{namespace}.{CLUSTER_DOMAIN}", r.name)],
            namespace,
            port,
        },
        (ISTIO_NETWORKING, "ServiceEntry") => {
            let entry = service_entries.iter().find(|d| {
                d.metadata.name == r.name
                    && d.metadata.namespace.as_deref().unwrap_or(default_namespace) == namespace
            });
            Parent::Mesh {
                hosts: entry
                    .map(|d| d.spec.hosts.iter().map(|h| service_entry_host(h)).collect())
                    .unwrap_or_default(),
                namespace,
                port,
            }
        }
        _ => Parent::Unsupported(if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{group}/{kind}")
        }),
    }
}

/// The ReferenceGrants of a file: who may refer to what across namespaces.
#[derive(Default)]
pub(super) struct ReferenceGrants {
    grants: Vec<(String, ReferenceGrantSpec)>,
}

/// One side of a cross-namespace reference.
pub(super) struct Referent<'a> {
    /// API group (`""` for the core group).
    pub group: &'a str,
    /// Kind.
    pub kind: &'a str,
    /// Namespace.
    pub namespace: &'a str,
}

impl ReferenceGrants {
    /// Indexes the grants of a file.
    pub fn new(docs: &[Document<ReferenceGrantSpec>], default_namespace: &str) -> Self {
        Self {
            grants: docs
                .iter()
                .map(|d| {
                    let ns = d.metadata.namespace.as_deref().unwrap_or(default_namespace);
                    (ns.to_owned(), d.spec.clone())
                })
                .collect(),
        }
    }

    /// Whether `from` may refer to the object `name` of `to` (always, in
    /// the same namespace; otherwise a ReferenceGrant in `to`'s namespace
    /// must list both).
    pub fn allows(&self, from: &Referent<'_>, to: &Referent<'_>, name: &str) -> bool {
        from.namespace == to.namespace
            || self.grants.iter().any(|(ns, grant)| {
                ns == to.namespace
                    && grant.from.iter().any(|f| {
                        f.group == from.group
                            && f.kind == from.kind
                            && f.namespace == from.namespace
                    })
                    && grant.to.iter().any(|t| {
                        t.group == to.group
                            && t.kind == to.kind
                            && t.name.as_deref().is_none_or(|n| n == name)
                    })
            })
    }
}

/// A backendRef (or mirror) resolved to a host and port, or why not.
pub(super) fn backend(
    b: &BackendObjectReference,
    route: (RouteKind, &str),
    grants: Option<&ReferenceGrants>,
) -> Result<(String, u16), String> {
    let (kind, route_namespace) = route;
    let group = b.group.as_deref().unwrap_or("");
    let target_kind = b.kind.as_deref().unwrap_or("Service");
    let namespace = b.namespace.as_deref().unwrap_or(route_namespace);
    let port = b
        .port
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| "port is required in backendRef".to_owned());
    let host = match (group, target_kind) {
        ("", "Service") => {
            if b.name.contains('.') {
                return Err(format!(
                    "{:?}: the name of the Service must be used, not a host name",
                    b.name
                ));
            }
            format!("{}.{namespace}.{CLUSTER_DOMAIN}", b.name)
        }
        (ISTIO_NETWORKING, "Hostname") => {
            if b.namespace.is_some() {
                return Err("namespace may not be set with Hostname type".into());
            }
            b.name.to_ascii_lowercase()
        }
        _ => {
            return Err(format!(
                "referencing unsupported backendRef: group {group:?} kind {target_kind:?} (a Service, or networking.istio.io Hostname)"
            ));
        }
    };
    if let Some(grants) = grants {
        let from = Referent {
            group: GROUP,
            kind: kind.name(),
            namespace: route_namespace,
        };
        let to = Referent {
            group,
            kind: target_kind,
            namespace,
        };
        if !grants.allows(&from, &to, &b.name) {
            return Err(format!(
                "backendRef {namespace}/{} not accessible to a {} in namespace {route_namespace:?} (missing a ReferenceGrant?)",
                b.name,
                kind.name()
            ));
        }
    }
    Ok((host, port?))
}

/// The labels of each namespace named by a `Namespace` document, plus
/// the `kubernetes.io/metadata.name` label every namespace carries.
#[derive(Default)]
pub(super) struct Namespaces {
    labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl Namespaces {
    /// Indexes the `Namespace` documents of a file.
    pub fn new(docs: &[Document<()>]) -> Self {
        Self {
            labels: docs
                .iter()
                .map(|d| (d.metadata.name.clone(), d.metadata.labels.clone()))
                .collect(),
        }
    }

    /// The labels of `namespace`.
    pub fn labels(&self, namespace: &str) -> BTreeMap<String, String> {
        let mut labels = self.labels.get(namespace).cloned().unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), namespace.to_owned());
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::gateway_api::{ReferenceGrantFrom, ReferenceGrantTo};

    #[test]
    fn reference_grants_allow_what_they_list() {
        let grant = ReferenceGrantSpec {
            from: vec![ReferenceGrantFrom {
                group: GROUP.into(),
                kind: "HTTPRoute".into(),
                namespace: "web".into(),
            }],
            to: vec![ReferenceGrantTo {
                group: String::new(),
                kind: "Service".into(),
                name: Some("db".into()),
            }],
        };
        let grants = ReferenceGrants {
            grants: vec![("data".into(), grant)],
        };
        let from = |ns| Referent {
            group: GROUP,
            kind: "HTTPRoute",
            namespace: ns,
        };
        let svc = |ns| Referent {
            group: "",
            kind: "Service",
            namespace: ns,
        };
        assert!(grants.allows(&from("web"), &svc("data"), "db"));
        assert!(!grants.allows(&from("web"), &svc("data"), "cache"));
        assert!(!grants.allows(&from("other"), &svc("data"), "db"));
        assert!(grants.allows(&from("other"), &svc("other"), "anything"));
    }

    #[test]
    fn backends_resolve_services_and_hostnames() {
        let b =
            |group: Option<&str>, kind: Option<&str>, name: &str, port| BackendObjectReference {
                group: group.map(Into::into),
                kind: kind.map(Into::into),
                name: name.into(),
                namespace: None,
                port,
            };
        let route = (RouteKind::Http, "web");
        assert_eq!(
            backend(&b(None, None, "echo", Some(8080)), route, None),
            Ok(("echo.web.svc.cluster.local".into(), 8080))
        );
        assert_eq!(
            backend(
                &b(
                    Some(ISTIO_NETWORKING),
                    Some("Hostname"),
                    "api.example.com",
                    Some(443)
                ),
                route,
                None
            ),
            Ok(("api.example.com".into(), 443))
        );
        assert!(backend(&b(None, None, "echo", None), route, None).is_err());
        assert!(backend(&b(Some("x.io"), Some("Thing"), "t", Some(1)), route, None).is_err());
    }
}
