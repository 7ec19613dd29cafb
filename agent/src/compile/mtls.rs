//! PeerAuthentication → the inbound mTLS modes, resolved as Istio's
//! `ComposePeerAuthentication`: a workload policy (a `selector` with
//! labels, in the workload's namespace) over the namespace's (no selector,
//! or one without labels) over the mesh's (the same, in the root
//! namespace); of several at one level the oldest applies
//! (`creationTimestamp`, else the first in the file);
//! UNSET inherits; nothing at all is PERMISSIVE. The workload policy's
//! `portLevelMtls` sets the mode of the ports it names (by the port the
//! application listens on, Istio's endpoint port); UNSET there inherits
//! the workload's mode. The same resolution, for a destination endpoint,
//! tells auto mTLS which endpoints take plaintext only ([`PeerPolicies`]).

use std::collections::BTreeMap;

use super::bootstrap::Agent;
use super::destination_rules::RuleScope;
use super::gateway_api::age;
use crate::config::diagnostics::Diagnostics;
use crate::config::documents::Document;
use crate::config::security::PeerAuthenticationSpec;
use crate::model::{InboundMtls, MtlsMode};

fn parse(mode: Option<&str>) -> Result<Option<MtlsMode>, String> {
    match mode {
        None | Some("UNSET") => Ok(None),
        Some("STRICT") => Ok(Some(MtlsMode::Strict)),
        Some("PERMISSIVE") => Ok(Some(MtlsMode::Permissive)),
        Some("DISABLE") => Ok(Some(MtlsMode::Disable)),
        Some(other) => Err(format!(
            "unknown mode {other:?} (UNSET, DISABLE, PERMISSIVE, STRICT)"
        )),
    }
}

/// Which level a PeerAuthentication applies to a workload at, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// A `selector` with labels matching the workload, in its namespace.
    Workload,
    /// No selector (or one without labels), in the workload's namespace.
    Namespace,
    /// No selector (or one without labels), in the root namespace.
    Mesh,
}

/// The workload a PeerAuthentication is resolved for: this agent's, or a
/// destination endpoint's (auto mTLS).
struct Target<'a> {
    namespace: &'a str,
    labels: &'a BTreeMap<String, String>,
    root_namespace: &'a str,
    /// The namespace of a policy that names none: the config's (this
    /// agent's), whichever workload the policies are resolved for.
    default_namespace: &'a str,
}

/// The level `doc` applies to `target` at, as Istio classifies a policy: a
/// selector without labels is no selector; a policy with labels in the
/// root namespace is no workload's (Istio ignores it); one in another
/// namespace is not this workload's.
fn level(doc: &Document<PeerAuthenticationSpec>, target: &Target<'_>) -> Option<Level> {
    let policy_ns = (doc.metadata.namespace.as_deref()).unwrap_or(target.default_namespace);
    match &doc.spec.selector {
        Some(selector) if !selector.match_labels.is_empty() => {
            let ours = policy_ns == target.namespace && policy_ns != target.root_namespace;
            (ours && selector.matches(target.labels)).then_some(Level::Workload)
        }
        _ if policy_ns == target.root_namespace => Some(Level::Mesh),
        _ if policy_ns == target.namespace => Some(Level::Namespace),
        _ => None,
    }
}

/// The inbound mTLS modes of the workload: its mode, and the modes of the
/// ports its workload policy's `portLevelMtls` names.
pub(super) fn inbound_mtls(
    docs: &[Document<PeerAuthenticationSpec>],
    boot: &Agent,
    diags: &mut Diagnostics,
) -> InboundMtls {
    let target = Target {
        namespace: &boot.identity.namespace,
        labels: &boot.identity.labels,
        root_namespace: &boot.root_namespace,
        default_namespace: &boot.identity.namespace,
    };
    let inbound = compose(docs, &target, diags);
    if inbound.any_strict() && !boot.has_identity {
        let first = docs.first().map(|d| d.location.clone());
        if let Some(loc) = first {
            let msg = "STRICT mTLS applies to this workload but the Agent has no spec.identity to serve TLS with";
            diags.error(&loc, Some("spec.mtls.mode".into()), msg);
        }
    }
    inbound
}

/// The PeerAuthentications as a caller's auto mTLS reads them: which
/// destination endpoints take plaintext only.
pub(super) struct PeerPolicies<'a> {
    /// Every PeerAuthentication of the config.
    docs: &'a [Document<PeerAuthenticationSpec>],
    /// The mesh's root namespace.
    root_namespace: &'a str,
    /// The namespace of a policy that names none (this agent's).
    default_namespace: &'a str,
}

impl<'a> PeerPolicies<'a> {
    /// `docs` as the workload of `scope` reads them: a policy that names
    /// no namespace is in the scope's `default_namespace`, and the mesh-wide
    /// ones are those of its `root_namespace`.
    pub(super) fn new(docs: &'a [Document<PeerAuthenticationSpec>], scope: &RuleScope<'a>) -> Self {
        PeerPolicies {
            docs,
            root_namespace: scope.root_namespace,
            default_namespace: scope.default_namespace,
        }
    }

    /// Whether the policies that apply to a workload in `namespace` with
    /// `labels` set DISABLE for its `port` (the port it listens on), as
    /// Istio's `mtlsChecker.checkMtlsEnabled` reads them: auto mTLS then
    /// sends plaintext, as that server takes nothing else.
    pub(super) fn disable(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        port: u16,
    ) -> bool {
        if self.docs.is_empty() {
            return false;
        }
        let target = Target {
            namespace,
            labels,
            root_namespace: self.root_namespace,
            default_namespace: self.default_namespace,
        };
        // The policies' own mistakes are the agent's workload's to report.
        let inbound = compose(self.docs, &target, &mut Diagnostics::default());
        inbound.for_port(port) == MtlsMode::Disable
    }
}

/// The modes the policies applying to `target` set.
fn compose(
    docs: &[Document<PeerAuthenticationSpec>],
    target: &Target<'_>,
    diags: &mut Diagnostics,
) -> InboundMtls {
    let (mut workload, mut namespace, mut mesh) = (None, None, None);
    // Oldest first (`creationTimestamp`, else file order, then name), as
    // Istio takes the oldest of several policies at one level.
    let mut ordered: Vec<(usize, &Document<PeerAuthenticationSpec>)> =
        docs.iter().enumerate().collect();
    ordered.sort_by(|(i, a), (j, b)| {
        (age(&a.metadata, *i).cmp(&age(&b.metadata, *j)))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    for (_, doc) in ordered {
        let loc = &doc.location;
        let spec = &doc.spec;
        let mode = match parse(spec.mtls.as_ref().and_then(|m| m.mode.as_deref())) {
            Ok(mode) => mode,
            Err(msg) => {
                diags.error(loc, Some("spec.mtls.mode".into()), msg);
                continue;
            }
        };
        let slot = match level(doc, target) {
            Some(Level::Workload) => &mut workload,
            Some(Level::Namespace) => &mut namespace,
            Some(Level::Mesh) => &mut mesh,
            None => continue,
        };
        if slot.is_some() {
            diags.warn(
                &doc.location,
                None,
                "another PeerAuthentication of the same scope applies: the oldest wins (creationTimestamp, else the first in the file)",
            );
            continue;
        }
        *slot = Some((doc, mode));
    }
    // UNSET (or no policy) inherits from the level above.
    let mode = [workload, namespace, mesh]
        .into_iter()
        .flatten()
        .find_map(|(_, mode)| mode)
        .unwrap_or(MtlsMode::Permissive);
    let mut ports = Vec::new();
    if let Some((doc, _)) = workload {
        for (&number, m) in &doc.spec.port_level_mtls {
            let field = || Some(format!("spec.portLevelMtls.{number}.mode"));
            let port_mode = match parse(m.mode.as_deref()) {
                Ok(port_mode) => port_mode.unwrap_or(mode),
                Err(msg) => {
                    diags.error(&doc.location, field(), msg);
                    continue;
                }
            };
            // Out of range is the validation's error.
            if let Ok(port) = u16::try_from(number) {
                ports.push((port, port_mode));
            }
        }
    }
    ports.sort_unstable_by_key(|&(port, _)| port);
    InboundMtls {
        mode,
        ports: ports.into_boxed_slice(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::compile::compile_text;
    use crate::model::live::LiveState;
    use crate::model::{InboundMtls, MtlsMode};

    /// The agent `reviews` (labels `app: reviews`) in `default`, with an
    /// identity, then `policies`.
    fn modes(policies: &str) -> InboundMtls {
        let yaml = format!(
            r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {{name: reviews-v1, namespace: default}}
spec:
  service: reviews
  labels: {{app: reviews}}
  identity:
    files: {{certChain: /nonexistent/cert-chain.pem, privateKey: /nonexistent/key.pem, rootCert: /nonexistent/root-cert.pem}}
{policies}"#
        );
        let file: Arc<str> = Arc::from("mesh.yaml");
        let compiled =
            compile_text(&file, &yaml, 1, &LiveState::default()).unwrap_or_else(|e| panic!("{e}"));
        compiled.snapshot.inbound_mtls
    }

    fn policy(name: &str, namespace: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
        )
    }

    /// A root-namespace policy whose selector has no labels is the mesh's
    /// (Istio: `Selector == nil || len(MatchLabels) == 0`); skipping it
    /// left the workload PERMISSIVE under a mesh-wide STRICT.
    #[test]
    fn a_root_namespace_selector_without_labels_is_mesh_wide() {
        for selector in ["  selector: {matchLabels: {}}\n", "  selector: {}\n"] {
            let spec = format!("{selector}  mtls: {{mode: STRICT}}\n");
            let inbound = modes(&policy("mesh", "istio-system", &spec));
            assert_eq!(inbound.mode, MtlsMode::Strict, "{selector}");
            assert_eq!(inbound.for_port(8080), MtlsMode::Strict, "{selector}");
            assert_eq!(inbound.for_port(9090), MtlsMode::Strict, "{selector}");
        }
        // Below a namespace policy, as any mesh policy is.
        let mesh = policy(
            "mesh",
            "istio-system",
            "  selector: {}\n  mtls: {mode: STRICT}\n",
        );
        let namespace = policy("ns", "default", "  mtls: {mode: DISABLE}\n");
        assert_eq!(modes(&(mesh + &namespace)).mode, MtlsMode::Disable);
    }

    /// In the workload's namespace a selector without labels is the
    /// namespace's policy: a workload policy wins over it, and it is one
    /// of the namespace's policies (the first of them applies).
    #[test]
    fn a_selector_without_labels_in_the_namespace_is_namespace_wide() {
        let empty = policy(
            "empty",
            "default",
            "  selector: {}\n  mtls: {mode: STRICT}\n",
        );
        let workload = policy(
            "reviews",
            "default",
            "  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: DISABLE}\n",
        );
        assert_eq!(
            modes(&(empty.clone() + &workload)).mode,
            MtlsMode::Disable,
            "the workload policy is narrower"
        );
        let namespace = policy("ns", "default", "  mtls: {mode: DISABLE}\n");
        assert_eq!(
            modes(&(empty.clone() + &namespace)).mode,
            MtlsMode::Strict,
            "the first namespace policy applies"
        );
        assert_eq!(modes(&(namespace + &empty)).mode, MtlsMode::Disable);
    }

    /// A policy with labels applies only in the workload's namespace, and
    /// never from the root namespace (Istio ignores workload policies
    /// there).
    #[test]
    fn a_labelled_policy_elsewhere_does_not_apply() {
        let spec = "  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: STRICT}\n";
        for namespace in ["istio-system", "other"] {
            let inbound = modes(&policy("reviews", namespace, spec));
            assert_eq!(inbound.mode, MtlsMode::Permissive, "{namespace}");
        }
        let spec = "  selector: {matchLabels: {app: ratings}}\n  mtls: {mode: STRICT}\n";
        assert_eq!(
            modes(&policy("ratings", "default", spec)).mode,
            MtlsMode::Permissive
        );
    }

    /// `portLevelMtls` sets the mode of the ports it names only; every
    /// other port keeps the workload's mode (one mode for every port was
    /// a STRICT bypass on the ports not named).
    #[test]
    fn port_level_mtls_sets_its_ports_only() {
        let strict = policy(
            "finance",
            "default",
            "  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    8080: {mode: DISABLE}\n",
        );
        let inbound = modes(&strict);
        assert_eq!(inbound.for_port(8080), MtlsMode::Disable);
        assert_eq!(inbound.for_port(9090), MtlsMode::Strict);
        assert_eq!(inbound.mode, MtlsMode::Strict);

        let permissive = policy(
            "finance",
            "default",
            "  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: PERMISSIVE}\n  portLevelMtls:\n    9090: {mode: STRICT}\n",
        );
        let inbound = modes(&permissive);
        assert_eq!(inbound.for_port(9090), MtlsMode::Strict);
        assert_eq!(inbound.for_port(8080), MtlsMode::Permissive);
        assert_eq!(inbound.ports[..], [(9090, MtlsMode::Strict)]);
    }

    /// UNSET inherits: a port's from the workload's mode, the workload's
    /// from the namespace's.
    #[test]
    fn unset_inherits_from_the_level_above() {
        let namespace = policy("ns", "default", "  mtls: {mode: STRICT}\n");
        let workload = policy(
            "reviews",
            "default",
            "  selector: {matchLabels: {app: reviews}}\n  portLevelMtls:\n    9090: {mode: UNSET}\n    8080: {mode: DISABLE}\n",
        );
        let inbound = modes(&(namespace + &workload));
        assert_eq!(inbound.mode, MtlsMode::Strict);
        assert_eq!(inbound.for_port(9090), MtlsMode::Strict);
        assert_eq!(inbound.for_port(8080), MtlsMode::Disable);
        assert_eq!(inbound.for_port(7000), MtlsMode::Strict);
    }

    /// A STRICT port needs the Agent's identity, even when the workload's
    /// own mode is not STRICT.
    #[test]
    fn a_strict_port_needs_an_identity() {
        let yaml = r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: reviews-v1, namespace: default}
spec: {service: reviews, labels: {app: reviews}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: finance, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    9090: {mode: STRICT}
"#;
        let file: Arc<str> = Arc::from("mesh.yaml");
        let Err(rejected) = compile_text(&file, yaml, 1, &LiveState::default()) else {
            panic!("a STRICT port without an identity was accepted");
        };
        assert!(
            rejected.to_string().contains("no spec.identity"),
            "{rejected}"
        );
    }

    /// Auto mTLS reads the destination's PeerAuthentication as Istio's
    /// mtlsChecker does: an endpoint with a sidecar whose policy is
    /// DISABLE on the port it listens on is sent plaintext; other ports
    /// and other endpoints keep mTLS.
    #[test]
    fn auto_mtls_sends_plaintext_where_the_destination_disables_mtls() {
        let entry = r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend, namespace: default}
spec:
  hosts: [backend.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9090, name: metrics, protocol: HTTP}]
  endpoints:
  - {address: 10.0.0.1, ports: {http: 8080, metrics: 9090}, labels: {app: backend, security.istio.io/tlsMode: istio}}
  - {address: 10.0.0.2, ports: {http: 8080, metrics: 9090}, labels: {app: other, security.istio.io/tlsMode: istio}}
"#;
        let sidecars = |policies: &str| {
            let yaml = format!(
                r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {{name: reviews-v1, namespace: default}}
spec:
  service: reviews
  labels: {{app: reviews}}
  identity:
    files: {{certChain: /nonexistent/cert-chain.pem, privateKey: /nonexistent/key.pem, rootCert: /nonexistent/root-cert.pem}}
{entry}{policies}"#
            );
            let file: Arc<str> = Arc::from("mesh.yaml");
            let compiled = compile_text(&file, &yaml, 1, &LiveState::default())
                .unwrap_or_else(|e| panic!("{e}"));
            let mut seen: Vec<(u16, String, bool)> = (compiled.snapshot.clusters.iter())
                .filter(|c| c.service.host == "backend.default.svc.cluster.local")
                .flat_map(|c| {
                    let port = c.port;
                    c.endpoints
                        .iter()
                        .map(move |e| (port, e.address.to_string(), e.sidecar))
                })
                .collect();
            seen.sort();
            seen
        };
        let all_mtls = [
            (9080, "10.0.0.1:8080".to_owned(), true),
            (9080, "10.0.0.2:8080".to_owned(), true),
            (9090, "10.0.0.1:9090".to_owned(), true),
            (9090, "10.0.0.2:9090".to_owned(), true),
        ];
        assert_eq!(sidecars(""), all_mtls);
        let disable = policy(
            "backend",
            "default",
            "  selector: {matchLabels: {app: backend}}\n  mtls: {mode: DISABLE}\n",
        );
        let mut want = all_mtls.clone();
        want[0].2 = false;
        want[2].2 = false;
        assert_eq!(
            sidecars(&disable),
            want,
            "the workload policy's endpoint only"
        );
        // Port-level, by the port the endpoint listens on.
        let port = policy(
            "backend",
            "default",
            "  selector: {matchLabels: {app: backend}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    9090: {mode: DISABLE}\n",
        );
        let mut want = all_mtls.clone();
        want[2].2 = false;
        assert_eq!(sidecars(&port), want, "its port 9090 only");
        // A namespace's DISABLE reaches every endpoint of the namespace.
        let namespace = policy("ns", "default", "  mtls: {mode: DISABLE}\n");
        let none: Vec<_> = all_mtls
            .iter()
            .map(|(p, a, _)| (*p, a.clone(), false))
            .collect();
        assert_eq!(sidecars(&namespace), none);
    }

    /// A PeerAuthentication that names no namespace is of the config's
    /// (this agent's) namespace for auto mTLS too: it was taken as the
    /// destination's, so a namespace-less DISABLE meant for this namespace
    /// sent plaintext to every namespace's sidecars, whose callers then
    /// lost their identity.
    #[test]
    fn a_policy_without_a_namespace_is_the_configs_for_auto_mtls_too() {
        let yaml = r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: reviews-v1, namespace: default}
spec:
  service: reviews
  labels: {app: reviews}
  identity:
    files: {certChain: /nonexistent/cert-chain.pem, privateKey: /nonexistent/key.pem, rootCert: /nonexistent/root-cert.pem}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend, namespace: prod}
spec:
  hosts: [backend.prod.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 10.0.0.1, ports: {http: 8080}, labels: {app: backend, security.istio.io/tlsMode: istio}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: here-only}
spec:
  mtls: {mode: DISABLE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: backend-here}
spec:
  selector: {matchLabels: {app: backend}}
  mtls: {mode: DISABLE}
"#;
        let file: Arc<str> = Arc::from("mesh.yaml");
        let compiled =
            compile_text(&file, yaml, 1, &LiveState::default()).unwrap_or_else(|e| panic!("{e}"));
        let sidecars: Vec<bool> = (compiled.snapshot.clusters.iter())
            .filter(|c| c.service.host == "backend.prod.svc.cluster.local")
            .flat_map(|c| c.endpoints.iter().map(|e| e.sidecar))
            .collect();
        assert_eq!(sidecars, [true], "prod's sidecar keeps mTLS");
    }
}
