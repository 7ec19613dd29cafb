//! Istio's `Sidecar`: which one applies to this workload, the services its
//! `egress[].hosts` let the agent load, and its `outboundTrafficPolicy`.
//!
//! As Istio picks it: a Sidecar in the workload's namespace whose
//! `workloadSelector` matches the workload's labels; else the one in that
//! namespace without a selector; else the one without a selector in the
//! mesh's root namespace (`istio-system` unless the mesh config says otherwise). Several at one level: the first wins,
//! the others are warned about (Istio takes the oldest).

use crate::config::diagnostics::{Diagnostics, Location};
use crate::config::documents::Document;
use crate::config::gateway::SidecarSpec;
use crate::model::capture::OutboundTrafficMode;

use std::collections::BTreeMap;

/// Istio's default `rootNamespace`: Sidecars there without a selector
/// apply to every namespace that has none of its own.
#[cfg(test)]
const ROOT_NAMESPACE: &str = crate::model::mesh::DEFAULT_ROOT_NAMESPACE;

/// What the applying Sidecar says.
#[derive(Debug, Default)]
pub(super) struct SidecarScope {
    /// `namespace/name` of the Sidecar, when one applies.
    pub name: Option<String>,
    /// Its `outboundTrafficPolicy.mode`, when set.
    pub mode: Option<OutboundTrafficMode>,
    /// Services visible to the workload; `None`: all of them.
    pub egress: Option<EgressScope>,
    /// `outboundTrafficPolicy.egressProxy` (ALLOW_ANY): where traffic to
    /// destinations outside the registry goes instead — the FQDN (short
    /// names in the Sidecar's namespace), subset and port — and the
    /// Sidecar's location, for findings.
    pub egress_proxy: Option<EgressProxy>,
}

/// A Sidecar's `outboundTrafficPolicy.egressProxy`.
#[derive(Debug, Clone)]
pub(super) struct EgressProxy {
    /// The service's FQDN.
    pub host: String,
    /// Its subset.
    pub subset: Option<String>,
    /// The port (validation requires one).
    pub port: u16,
    /// The Sidecar, for findings.
    pub location: Location,
}

/// The hosts of a Sidecar's egress listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EgressScope {
    rules: Vec<EgressRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct EgressRule {
    /// The egress listener it is written in (exclusions hold within it).
    listener: usize,
    /// The listener's port: the hosts are visible on it only.
    port: Option<u16>,
    namespace: NamespaceMatch,
    host: HostMatch,
    /// `~namespace/host`: the services it covers are not imported through
    /// this listener, whatever its other hosts say (Istio 1.31's
    /// `hostClassification.Excluded`); `~/*` excludes every service.
    excluded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NamespaceMatch {
    /// `*`.
    Any,
    /// A namespace by name (`.` is the Sidecar's own).
    Named(String),
}

impl NamespaceMatch {
    fn covers(&self, namespace: &str) -> bool {
        match self {
            NamespaceMatch::Any => true,
            NamespaceMatch::Named(ns) => ns == namespace,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    /// `*`.
    Any,
    /// `*.suffix`: hosts ending in `.suffix` (wildcard hosts included).
    Suffix(String),
    /// One host.
    Exact(String),
}

impl HostMatch {
    fn parse(dns: &str) -> Self {
        let dns = dns.to_ascii_lowercase();
        if dns == "*" {
            HostMatch::Any
        } else if let Some(suffix) = dns.strip_prefix("*.") {
            HostMatch::Suffix(suffix.to_owned())
        } else {
            HostMatch::Exact(dns)
        }
    }

    /// Whether `host` — itself possibly a wildcard, as a VirtualService's
    /// hosts may be — overlaps this pattern, as Istio's `host.Name.Matches`
    /// reads two names: equal, or one wildcard covering the other.
    fn overlaps(&self, host: &str) -> bool {
        let covered_by = |wildcard: &str, name: &str| {
            wildcard == "*"
                || wildcard
                    .strip_prefix('*')
                    .is_some_and(|suffix| name.ends_with(suffix) && name.len() > suffix.len())
        };
        match self {
            HostMatch::Any => true,
            HostMatch::Suffix(_) if self.matches(host) => true,
            HostMatch::Suffix(suffix) => covered_by(host, &format!("*.{suffix}")),
            HostMatch::Exact(exact) => host == exact || covered_by(host, exact),
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Suffix(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.ends_with('.')),
            HostMatch::Exact(exact) => host == exact,
        }
    }
}

impl EgressScope {
    /// Whether the service `host`, declared in `namespace`, is visible on
    /// `port`. `shared`: its traffic on the port meets the port's wildcard
    /// listener (`0.0.0.0:port`: an HTTP port, or a TCP one without an
    /// address of its own), which an egress listener declaring the port
    /// takes whole — Istio builds the port-specific listeners first and
    /// the catch-all listener's hosts never reach that port.
    pub fn allows(&self, namespace: &str, host: &str, port: u16, shared: bool) -> bool {
        let host = host.to_ascii_lowercase();
        let owned = shared && self.rules.iter().any(|r| r.port == Some(port));
        let covers = |rule: &EgressRule| {
            (if owned {
                rule.port == Some(port)
            } else {
                rule.port.is_none_or(|p| p == port)
            }) && rule.namespace.covers(namespace)
                && rule.host.matches(&host)
        };
        self.rules.iter().any(|rule| {
            !rule.excluded
                && covers(rule)
                && !self
                    .rules
                    .iter()
                    .any(|other| other.excluded && other.listener == rule.listener && covers(other))
        })
    }
}

impl EgressScope {
    /// Whether these egress hosts import a VirtualService of `namespace`
    /// with `hosts` (FQDNs, wildcards allowed), as Istio's
    /// `SelectVirtualServices` imports one: an egress host naming its
    /// namespace (or `*/`) whose host overlaps one of its hosts. Whatever
    /// the port: the ports a Sidecar hides are gone from the registry.
    pub fn imports(&self, namespace: &str, hosts: &[String]) -> bool {
        self.rules.iter().any(|rule| {
            !rule.excluded
                && rule.namespace.covers(namespace)
                && hosts.iter().any(|h| rule.host.overlaps(h))
        })
    }
}

/// The Sidecar that applies to a workload with `labels` in `namespace`,
/// compiled.
pub(super) fn applying(
    sidecars: &[Document<SidecarSpec>],
    labels: &BTreeMap<String, String>,
    namespace: &str,
    root_namespace: &str,
    diags: &mut Diagnostics,
) -> SidecarScope {
    let ns_of = |d: &Document<SidecarSpec>| {
        d.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| namespace.to_owned())
    };
    // 0: selects this workload; 1: its namespace's default; 2: the mesh's.
    let level = |d: &Document<SidecarSpec>| -> Option<u8> {
        let ns = ns_of(d);
        match &d.spec.workload_selector {
            Some(selector) if ns == namespace && selector.matches(labels) => Some(0),
            None if ns == namespace => Some(1),
            None if ns == root_namespace => Some(2),
            _ => None,
        }
    };
    let Some(best) = sidecars.iter().filter_map(level).min() else {
        return SidecarScope::default();
    };
    // The oldest applies, as Istio's `sortConfigByCreationTime` orders
    // them: by `creationTimestamp`, then by name; one without a timestamp
    // after any with one, in file order.
    let mut applying: Vec<&Document<SidecarSpec>> =
        sidecars.iter().filter(|d| level(d) == Some(best)).collect();
    applying.sort_by(|a, b| a.metadata.creation_order(&b.metadata));
    let mut applying = applying.into_iter();
    let Some(first) = applying.next() else {
        return SidecarScope::default();
    };
    let name = format!("{}/{}", ns_of(first), first.metadata.name);
    for other in applying {
        let msg = format!("the older Sidecar {name} applies to this workload; this one is ignored");
        diags.warn(&other.location, None, msg);
    }
    // `.` is the workload's namespace, also in the root namespace's
    // Sidecar (Istio converts it for the proxy's `ConfigNamespace`).
    compile(first, &ns_of(first), namespace, name)
}

/// `doc` (of `sidecar_namespace`) for a workload in `namespace` (what `.`
/// names).
fn compile(
    doc: &Document<SidecarSpec>,
    sidecar_namespace: &str,
    namespace: &str,
    name: String,
) -> SidecarScope {
    // A policy without `mode` is REGISTRY_ONLY, the field's default, as
    // Istio takes any policy the Sidecar sets.
    let mode = doc.spec.outbound_traffic_policy.as_ref().map(|p| {
        p.mode
            .as_deref()
            .and_then(OutboundTrafficMode::parse)
            .unwrap_or(OutboundTrafficMode::RegistryOnly)
    });
    let egress = (!doc.spec.egress.is_empty()).then(|| EgressScope {
        rules: doc
            .spec
            .egress
            .iter()
            .enumerate()
            .flat_map(|(index, listener)| {
                let port = listener
                    .port
                    .as_ref()
                    .and_then(|p| u16::try_from(p.number).ok());
                listener.hosts.iter().filter_map(move |h| {
                    // Validation has refused hosts without a `namespace/`.
                    let (ns, dns) = h.split_once('/')?;
                    let (excluded, ns) = match ns.strip_prefix('~') {
                        Some("") => (true, "*"),
                        Some(rest) => (true, rest),
                        None => (false, ns),
                    };
                    let namespace = match ns {
                        "*" => NamespaceMatch::Any,
                        "." => NamespaceMatch::Named(namespace.to_owned()),
                        other => NamespaceMatch::Named(other.to_owned()),
                    };
                    Some(EgressRule {
                        listener: index,
                        port,
                        namespace,
                        host: HostMatch::parse(dns),
                        excluded,
                    })
                })
            })
            .collect(),
    });
    let egress_proxy = (doc.spec.outbound_traffic_policy.as_ref())
        .and_then(|p| p.egress_proxy.as_ref())
        .and_then(|proxy| {
            Some(EgressProxy {
                host: crate::host::resolve_short_name(&proxy.host, sidecar_namespace),
                subset: proxy.subset.clone(),
                port: u16::try_from(proxy.port.as_ref()?.number).ok()?,
                location: doc.location.clone(),
            })
        });
    SidecarScope {
        name: Some(name),
        mode,
        egress,
        egress_proxy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::diagnostics::Location;
    use crate::config::gateway::{EgressListener, OutboundTrafficPolicy, Port};
    use crate::config::meta::{ObjectMeta, WorkloadLabels};
    use crate::model::capture::OutboundTrafficMode;
    use std::sync::Arc;

    fn sidecar(
        name: &str,
        ns: &str,
        selector: Option<&[(&str, &str)]>,
        egress: &[(Option<u32>, &[&str])],
    ) -> Document<SidecarSpec> {
        let file: Arc<str> = Arc::from("mesh.yaml");
        Document {
            location: Location::file(&file),
            api_version: "networking.istio.io/v1".into(),
            metadata: ObjectMeta {
                name: name.into(),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: SidecarSpec {
                workload_selector: selector.map(|l| WorkloadLabels {
                    labels: l.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
                }),
                egress: egress
                    .iter()
                    .map(|(port, hosts)| EgressListener {
                        port: port.map(|number| Port {
                            number,
                            protocol: "HTTP".into(),
                            name: "http".into(),
                            target_port: None,
                        }),
                        hosts: hosts.iter().map(|h| (*h).into()).collect(),
                        ..Default::default()
                    })
                    .collect(),
                outbound_traffic_policy: Some(OutboundTrafficPolicy {
                    mode: Some("REGISTRY_ONLY".into()),
                    egress_proxy: None,
                }),
                ..Default::default()
            },
        }
    }

    fn labels() -> BTreeMap<String, String> {
        [("app".to_owned(), "productpage".to_owned())].into()
    }

    #[test]
    fn a_selector_beats_the_namespace_default_which_beats_the_root() {
        let all = [
            sidecar("root", ROOT_NAMESPACE, None, &[(None, &["*/*"])]),
            sidecar("ns-default", "default", None, &[(None, &["./*"])]),
            sidecar(
                "other-app",
                "default",
                Some(&[("app", "reviews")]),
                &[(None, &["./*"])],
            ),
            sidecar(
                "mine",
                "default",
                Some(&[("app", "productpage")]),
                &[(None, &["./*"])],
            ),
            sidecar(
                "mine-too",
                "default",
                Some(&[("app", "productpage")]),
                &[(None, &["./*"])],
            ),
            sidecar("elsewhere", "prod", None, &[(None, &["./*"])]),
        ];
        let mut diags = Diagnostics::default();
        let scope = applying(&all, &labels(), "default", ROOT_NAMESPACE, &mut diags);
        assert_eq!(scope.name.as_deref(), Some("default/mine"));
        assert_eq!(scope.mode, Some(OutboundTrafficMode::RegistryOnly));
        assert_eq!(diags.warnings().count(), 1, "mine-too is ignored");
        let scope = applying(&all[..3], &labels(), "default", ROOT_NAMESPACE, &mut diags);
        assert_eq!(scope.name.as_deref(), Some("default/ns-default"));
        let scope = applying(&all[..1], &labels(), "default", ROOT_NAMESPACE, &mut diags);
        assert_eq!(scope.name.as_deref(), Some("istio-system/root"));
        let scope = applying(&all[5..], &labels(), "default", ROOT_NAMESPACE, &mut diags);
        assert!(scope.name.is_none() && scope.egress.is_none() && scope.mode.is_none());
    }

    /// VirtualServices are imported by their own namespace and hosts,
    /// which overlap an egress host as Istio's `host.Name.Matches` reads
    /// two names (either may be a wildcard).
    #[test]
    fn virtual_services_are_imported_by_namespace_and_overlapping_hosts() {
        let doc = sidecar(
            "s",
            "default",
            None,
            &[(None, &["./*", "prod/api.example.com", "*/*.googleapis.com"])],
        );
        let mut diags = Diagnostics::default();
        let scope = applying(&[doc], &labels(), "default", ROOT_NAMESPACE, &mut diags);
        let egress = scope.egress.expect("egress");
        let hosts = |h: &[&str]| h.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        assert!(egress.imports("default", &hosts(&["anything.example.org"])));
        assert!(!egress.imports("other", &hosts(&["reviews.default.svc.cluster.local"])));
        assert!(egress.imports("prod", &hosts(&["api.example.com"])));
        assert!(
            egress.imports("prod", &hosts(&["*.example.com"])),
            "a wildcard covers it"
        );
        assert!(egress.imports("prod", &hosts(&["*"])));
        assert!(!egress.imports("prod", &hosts(&["www.example.com"])));
        assert!(egress.imports("any", &hosts(&["storage.googleapis.com"])));
        assert!(
            egress.imports("any", &hosts(&["*.com"])),
            "it covers the pattern"
        );
        assert!(!egress.imports("any", &hosts(&["googleapis.com"])));
    }

    #[test]
    fn egress_hosts_as_istio_reads_them() {
        let doc = sidecar(
            "s",
            "default",
            None,
            &[
                (
                    None,
                    &[
                        "./reviews.default.svc.cluster.local",
                        "istio-system/*",
                        "*/*.googleapis.com",
                    ],
                ),
                (Some(5432), &["prod/db.prod.svc.cluster.local"]),
                (None, &["~/*"]),
            ],
        );
        let mut diags = Diagnostics::default();
        let scope = applying(&[doc], &labels(), "default", ROOT_NAMESPACE, &mut diags);
        let egress = scope.egress.expect("egress");
        assert!(egress.allows("default", "reviews.default.svc.cluster.local", 9080, true));
        assert!(
            egress.allows("default", "Reviews.Default.svc.cluster.local", 9080, true),
            "case-insensitive"
        );
        assert!(!egress.allows("default", "ratings.default.svc.cluster.local", 9080, true));
        assert!(
            !egress.allows("prod", "reviews.default.svc.cluster.local", 9080, true),
            "namespace counts"
        );
        assert!(egress.allows("istio-system", "anything.example", 80, true));
        assert!(egress.allows("ext", "storage.googleapis.com", 443, true));
        assert!(egress.allows("ext", "a.b.googleapis.com", 443, true));
        assert!(
            egress.allows("ext", "*.googleapis.com", 443, true),
            "a wildcard service inside the pattern"
        );
        assert!(!egress.allows("ext", "googleapis.com", 443, true));
        assert!(!egress.allows("ext", "evilgoogleapis.com", 443, true));
        assert!(egress.allows("prod", "db.prod.svc.cluster.local", 5432, true));
        assert!(
            !egress.allows("prod", "db.prod.svc.cluster.local", 5433, true),
            "only on its listener's port"
        );
    }

    /// Found by a breaker against Envoy rendered as istiod would: the root
    /// namespace's Sidecar reads `./*` as the workload's namespace; a
    /// policy without `mode` is REGISTRY_ONLY; of two at one level the
    /// oldest applies, not the file's first; an egress listener with a
    /// port takes that port whole for the services that meet on it.
    #[test]
    fn sidecars_are_read_as_istio_renders_them() {
        let mut diags = Diagnostics::default();
        let root = sidecar(
            "default",
            ROOT_NAMESPACE,
            None,
            &[(None, &["./*", "istio-system/*"])],
        );
        let scope = applying(&[root], &labels(), "default", ROOT_NAMESPACE, &mut diags);
        let egress = scope.egress.expect("egress");
        assert!(egress.allows("default", "reviews.default.svc.cluster.local", 9080, true));
        assert!(!egress.allows("prod", "details.prod.svc.cluster.local", 9080, true));
        assert!(egress.allows(
            "istio-system",
            "istiod.istio-system.svc.cluster.local",
            15012,
            true
        ));

        let mut empty = sidecar("empty", "default", None, &[(None, &["*/*"])]);
        empty.spec.outbound_traffic_policy = Some(OutboundTrafficPolicy {
            mode: None,
            egress_proxy: None,
        });
        let scope = applying(&[empty], &labels(), "default", ROOT_NAMESPACE, &mut diags);
        assert_eq!(scope.mode, Some(OutboundTrafficMode::RegistryOnly));

        let created = |mut doc: Document<SidecarSpec>, at: &str| {
            doc.metadata.creation_timestamp = Some(at.into());
            doc
        };
        let newer = created(
            sidecar("newer", "default", None, &[(None, &["*/*"])]),
            "2025-06-01T00:00:00Z",
        );
        let older = created(
            sidecar("older", "default", None, &[(None, &["./*"])]),
            "2024-01-01T00:00:00Z",
        );
        let scope = applying(
            &[newer, older],
            &labels(),
            "default",
            ROOT_NAMESPACE,
            &mut diags,
        );
        assert_eq!(scope.name.as_deref(), Some("default/older"));

        let owned = sidecar(
            "owned",
            "default",
            None,
            &[
                (Some(9080), &["./reviews.default.svc.cluster.local"]),
                (None, &["./*", "prod/*"]),
            ],
        );
        let scope = applying(&[owned], &labels(), "default", ROOT_NAMESPACE, &mut diags);
        let egress = scope.egress.expect("egress");
        assert!(egress.allows("default", "reviews.default.svc.cluster.local", 9080, true));
        assert!(!egress.allows("default", "ratings.default.svc.cluster.local", 9080, true));
        assert!(!egress.allows("prod", "details.prod.svc.cluster.local", 9080, true));
        assert!(egress.allows("prod", "details.prod.svc.cluster.local", 8080, true));
        assert!(
            egress.allows("prod", "db.prod.svc.cluster.local", 9080, false),
            "a TCP service with an address of its own has its own listener"
        );
    }

    /// Istio 1.31's exclusions: `~namespace/host` takes what it covers out
    /// of its listener's imports (`hostClassification.Excluded`), `~/*`
    /// everything; another listener's imports stand.
    #[test]
    fn excluded_egress_hosts_are_not_imported() {
        let doc = sidecar(
            "s",
            "default",
            None,
            &[
                (
                    None,
                    &[
                        "*/*.example",
                        "~default/secret.example",
                        "~*/*.internal.example",
                    ],
                ),
                (Some(5432), &["./*", "~/*"]),
                (Some(6379), &["./secret.example"]),
            ],
        );
        let mut diags = Diagnostics::default();
        let scope = applying(&[doc], &labels(), "default", ROOT_NAMESPACE, &mut diags);
        let egress = scope.egress.expect("egress");
        assert!(egress.allows("default", "public.example", 80, true));
        assert!(!egress.allows("default", "secret.example", 80, true));
        assert!(
            egress.allows("other", "secret.example", 80, true),
            "excluded in its namespace only"
        );
        assert!(!egress.allows("other", "a.internal.example", 80, true));
        assert!(
            egress.allows("default", "secret.example", 6379, true),
            "another listener's import"
        );
        assert!(
            !egress.allows("default", "db.default.svc.cluster.local", 5432, true),
            "`~/*` excludes every service"
        );
    }
}
