//! Which DestinationRule a service follows, chosen as Istio chooses it
//! (`pilot/pkg/model/push_context.go`):
//!
//! - The rules of one namespace for one host are merged into one
//!   (`mergeDestinationRule`), oldest first (`creationTimestamp`, else file
//!   order; a rule with a `workloadSelector` before those without, as
//!   Istio sorts them): the subsets of later rules are added, those whose
//!   name is taken ignored; the top-level `trafficPolicy` is the first
//!   rule's that has one.
//! - In a namespace, a service takes the rule of the most specific host
//!   that matches it (`MostSpecificHostMatch`): its own host, else the
//!   longest wildcard (`*.example.com` before `*.com` before `*`).
//! - The namespaces are searched in `destinationRule`'s order: this
//!   workload's own namespace, then the service's, then the root
//!   namespace; the first with a matching rule decides. A workload in the
//!   root namespace (a gateway in `istio-system`) searches the service's
//!   namespace first, so that mesh-wide rules do not hide a service's own.
//!   A rule in any other namespace does not apply to this workload.
//!
//! A rule with a `workloadSelector` applies only to the workloads of its
//! own namespace whose labels it selects, as Istio applies it; one for
//! other workloads is left out before any merge, so it can neither add to
//! nor override the rules this workload follows. `exportTo` is not
//! enforced: every rule counts as exported to every namespace.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::gateway_api::age;
use super::policy;
use crate::config::destination_rule::DestinationRuleSpec;
use crate::config::diagnostics::Diagnostics;
use crate::config::documents::Document;
use crate::host::resolve_short_name;

/// The workload whose rules are chosen, and the namespaces that decide.
#[derive(Debug, Clone, Copy)]
pub(super) struct RuleScope<'a> {
    /// The namespace of documents that name none.
    pub default_namespace: &'a str,
    /// This workload's own namespace (Istio's proxy config namespace).
    pub namespace: &'a str,
    /// The mesh's root namespace (`rootNamespace`, default `istio-system`).
    pub root_namespace: &'a str,
    /// This workload's labels, which a rule's `workloadSelector` selects.
    pub labels: &'a BTreeMap<String, String>,
}

/// The rules of one namespace for one host, merged (Istio's
/// `ConsolidatedDestRule`).
pub(super) struct ConsolidatedRule<'a> {
    /// The host, short names resolved in the rule's namespace.
    pub host: String,
    /// The rules' namespace.
    pub namespace: String,
    /// The merged rule: the first rule's, with the subsets of the others
    /// added and the first top-level `trafficPolicy` written.
    pub spec: DestinationRuleSpec,
    /// The rules merged, first (oldest) first.
    pub from: Vec<&'a Document<DestinationRuleSpec>>,
    /// Which of `from` the top-level `trafficPolicy` is.
    policy_from: usize,
    /// Which of `from` each of `spec.subsets` came from.
    subset_from: Vec<usize>,
}

impl ConsolidatedRule<'_> {
    /// `namespace/name` of the first rule merged.
    pub fn name(&self) -> String {
        self.name_of(0)
    }

    fn name_of(&self, i: usize) -> String {
        format!("{}/{}", self.namespace, self.from[i].metadata.name)
    }

    /// The rule a cluster of `subset` takes its policy from, as response
    /// details name it (`DestinationRule:<namespace>/<name>`): the rule
    /// that defined the subset when the subset has its own
    /// `trafficPolicy`, else the one whose top-level `trafficPolicy`
    /// applies.
    pub fn reference(&self, subset: Option<&str>) -> Arc<str> {
        let from = subset
            .and_then(|name| self.spec.subsets.iter().position(|s| s.name == name))
            .filter(|&i| self.spec.subsets[i].traffic_policy.is_some())
            .map_or(self.policy_from, |i| self.subset_from[i]);
        Arc::from(format!("DestinationRule:{}", self.name_of(from)))
    }
}

/// One namespace's merged rules, by host.
#[derive(Default)]
struct NamespaceRules {
    /// Exact hosts → index of the rule.
    specific: HashMap<String, usize>,
    /// Wildcard hosts (`*.example.com`, `*`) and the rule's index.
    wildcard: Vec<(String, usize)>,
}

impl NamespaceRules {
    fn get(&self, host: &str) -> Option<usize> {
        if host.starts_with('*') {
            self.wildcard
                .iter()
                .find(|(h, _)| h == host)
                .map(|(_, i)| *i)
        } else {
            self.specific.get(host).copied()
        }
    }

    /// The rule of the most specific host matching the service `host`
    /// (Istio's `MostSpecificHostMatch`).
    fn most_specific(&self, host: &str) -> Option<usize> {
        if !host.starts_with('*')
            && let Some(i) = self.specific.get(host)
        {
            return Some(*i);
        }
        self.wildcard
            .iter()
            .filter(|(pattern, _)| rule_host_matches(pattern, host))
            .min_by_key(|(pattern, _)| specificity(pattern))
            .map(|(_, i)| *i)
    }
}

/// Whether a rule for `pattern` matches the service `host`, as Istio's
/// `MostSpecificHostMatch` matches them: an exact host only itself; a
/// wildcard every host ending in what follows its `*` (`*.example.com`
/// matches `api.example.com` and the wildcard service `*.api.example.com`,
/// not `example.com`; `*` matches every host).
fn rule_host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        None => pattern == host,
        Some(suffix) => host.strip_prefix('*').unwrap_or(host).ends_with(suffix),
    }
}

/// Istio's `host.MoreSpecific` as a sort key, smallest first: exact hosts
/// before wildcards, then the longest, then alphabetical.
fn specificity(host: &str) -> (bool, Reverse<usize>, &str) {
    (host.starts_with('*'), Reverse(host.len()), host)
}

/// Every DestinationRule, merged per namespace and host, and where each
/// service's rule is looked for.
pub(super) struct DestinationRules<'a> {
    rules: Vec<ConsolidatedRule<'a>>,
    by_namespace: HashMap<String, NamespaceRules>,
    namespace: String,
    root_namespace: String,
}

impl<'a> DestinationRules<'a> {
    /// Checks each rule (what the agent cannot do, given whether it has an
    /// identity and captures outbound connections) and merges the rules of
    /// one namespace for one host, warning about what a merge ignores.
    pub fn new(
        docs: &'a [Document<DestinationRuleSpec>],
        scope: RuleScope<'_>,
        (has_identity, captures): (bool, bool),
        diags: &mut Diagnostics,
    ) -> Self {
        let mut ordered: Vec<(usize, &Document<DestinationRuleSpec>)> =
            docs.iter().enumerate().collect();
        ordered.sort_by(|(i, a), (j, b)| {
            let key = |d: &Document<DestinationRuleSpec>, order: usize| {
                (d.spec.workload_selector.is_none(), age(&d.metadata, order))
            };
            key(a, *i)
                .cmp(&key(b, *j))
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        let mut index = Self {
            rules: Vec::new(),
            by_namespace: HashMap::new(),
            namespace: scope.namespace.to_owned(),
            root_namespace: scope.root_namespace.to_owned(),
        };
        for doc in docs {
            policy::validate_rule(&doc.spec, &doc.location, (has_identity, captures), diags);
        }
        for (_, doc) in ordered {
            let namespace = doc
                .metadata
                .namespace
                .as_deref()
                .unwrap_or(scope.default_namespace);
            let for_this_workload = doc.spec.workload_selector.as_ref().is_none_or(|selector| {
                namespace == scope.namespace && selector.matches(scope.labels)
            });
            if !for_this_workload {
                continue;
            }
            let host = resolve_short_name(&doc.spec.host, namespace);
            let rules = index.by_namespace.entry(namespace.to_owned()).or_default();
            match rules.get(&host) {
                Some(i) => merge(&mut index.rules[i], doc, diags),
                None => {
                    let i = index.rules.len();
                    if host.starts_with('*') {
                        rules.wildcard.push((host.clone(), i));
                    } else {
                        rules.specific.insert(host.clone(), i);
                    }
                    index.rules.push(ConsolidatedRule {
                        host,
                        namespace: namespace.to_owned(),
                        spec: doc.spec.clone(),
                        from: vec![doc],
                        policy_from: 0,
                        subset_from: vec![0; doc.spec.subsets.len()],
                    });
                }
            }
        }
        index
    }

    /// The namespaces searched for a rule of a service declared in
    /// `service_namespace`, in order, each with why.
    fn search_order<'s>(&'s self, service_namespace: &'s str) -> Vec<(&'s str, Vec<&'static str>)> {
        let mut order: Vec<(&str, Vec<&'static str>)> = Vec::new();
        let mut add =
            |ns: &'s str, why: &'static str| match order.iter_mut().find(|(n, _)| *n == ns) {
                Some((_, whys)) => whys.push(why),
                None => order.push((ns, vec![why])),
            };
        // Istio's first step, for a workload in the root namespace, looks
        // at the root's rules exported to it alone (`exportTo: ["."]`);
        // with `exportTo` not enforced every rule counts as exported to
        // all, and that workload starts with the service's namespace.
        if self.namespace != self.root_namespace {
            add(&self.namespace, "this workload's");
        }
        add(service_namespace, "the service's");
        add(&self.root_namespace, "the root");
        if self.namespace == self.root_namespace {
            add(&self.namespace, "this workload's");
        }
        order
    }

    /// The rule the service `host` declared in `service_namespace`
    /// follows: its index, or `None` when no rule applies.
    pub fn for_service(&self, host: &str, service_namespace: &str) -> Option<usize> {
        self.search_order(service_namespace)
            .into_iter()
            .find_map(|(ns, _)| self.by_namespace.get(ns)?.most_specific(host))
    }

    /// The rule at `i` (from [`DestinationRules::for_service`]).
    pub fn get(&self, i: usize) -> &ConsolidatedRule<'a> {
        &self.rules[i]
    }

    /// Warns about each rule that applies to no service of `services`
    /// (host and namespace of each) — `used` marks those that apply —
    /// saying why: no service matches its host, or, for the first service
    /// it matches, which rule applies instead and why.
    pub fn warn_unused<'s>(
        &self,
        services: impl Iterator<Item = (&'s str, &'s str)> + Clone,
        used: &[bool],
        diags: &mut Diagnostics,
    ) {
        for (i, rule) in self.rules.iter().enumerate() {
            if used[i] {
                continue;
            }
            let matched = services
                .clone()
                .find(|(host, _)| rule_host_matches(&rule.host, host));
            let msg = match matched {
                None if rule.host.starts_with('*') => format!(
                    "no ServiceEntry host matches {}; the rule applies to nothing",
                    rule.host
                ),
                None => format!(
                    "no ServiceEntry declares {}; the rule applies to nothing",
                    rule.host
                ),
                Some((host, service_namespace)) => self.why_not(rule, host, service_namespace),
            };
            for doc in &rule.from {
                diags.warn(&doc.location, Some("spec.host".into()), msg.clone());
            }
        }
    }

    /// Why `rule`, which matches the service `host` declared in
    /// `service_namespace`, is not the rule that service follows.
    fn why_not(&self, rule: &ConsolidatedRule<'_>, host: &str, service_namespace: &str) -> String {
        let order = self.search_order(service_namespace);
        let searched = order.iter().any(|(ns, _)| *ns == rule.namespace);
        let order: Vec<String> = order
            .into_iter()
            .map(|(ns, whys)| format!("{ns} ({})", whys.join(" and ")))
            .collect();
        let order = format!(
            "this workload takes DestinationRules from the namespaces {}",
            order.join(", then ")
        );
        let chosen = self
            .for_service(host, service_namespace)
            .map(|j| &self.rules[j]);
        let follows = match chosen {
            Some(chosen) => format!("{host} follows DestinationRule {} instead", chosen.name()),
            None => format!("{host} follows no DestinationRule"),
        };
        match chosen {
            _ if !searched => format!(
                "{follows}: {order}, as Istio does, and namespace {} is none of them; this rule applies to nothing here",
                rule.namespace
            ),
            Some(chosen) if chosen.namespace == rule.namespace => format!(
                "{follows}: its host {} is more specific than {} (the most specific host of a namespace decides, as in Istio); this rule applies to nothing here",
                chosen.host, rule.host
            ),
            _ => format!(
                "{follows}: {order}, the first with a rule matching the host deciding, as in Istio; this rule applies to nothing here"
            ),
        }
    }

    /// One mark per rule, none set: what [`DestinationRules::warn_unused`]
    /// is given, with the rules that applied marked.
    pub fn marks(&self) -> Vec<bool> {
        vec![false; self.rules.len()]
    }
}

/// Merges `doc` into `into`, an older rule of its namespace for its host,
/// as Istio's `mergeDestinationRule` does: subsets added unless their name
/// is taken, the top-level `trafficPolicy` kept unless `into` has none.
fn merge<'a>(
    into: &mut ConsolidatedRule<'a>,
    doc: &'a Document<DestinationRuleSpec>,
    diags: &mut Diagnostics,
) {
    let k = into.from.len();
    into.from.push(doc);
    for (j, subset) in doc.spec.subsets.iter().enumerate() {
        match into.spec.subsets.iter().position(|s| s.name == subset.name) {
            Some(taken) => {
                let msg = format!(
                    "subset {} of {} is already defined by DestinationRule {}, with which this rule is merged (rules of one namespace for one host are, as in Istio); this one is ignored",
                    subset.name,
                    into.host,
                    into.name_of(into.subset_from[taken])
                );
                diags.warn(&doc.location, Some(format!("spec.subsets[{j}].name")), msg);
            }
            None => {
                into.spec.subsets.push(subset.clone());
                into.subset_from.push(k);
            }
        }
    }
    match (&into.spec.traffic_policy, &doc.spec.traffic_policy) {
        (None, Some(policy)) => {
            into.spec.traffic_policy = Some(policy.clone());
            into.policy_from = k;
        }
        (Some(_), Some(_)) => {
            let msg = format!(
                "{} already has DestinationRule {} in this namespace, whose trafficPolicy applies: as in Istio, the rules of one namespace for one host are merged, the older one's trafficPolicy kept and the subsets added; this one's trafficPolicy is ignored",
                into.host,
                into.name_of(into.policy_from)
            );
            diags.warn(&doc.location, Some("spec.trafficPolicy".into()), msg);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::compile::compile_text;
    use crate::config::documents::{Resource, parse_documents};
    use crate::model::live::LiveState;

    const NO_LABELS: &BTreeMap<String, String> = &BTreeMap::new();

    const SCOPE: RuleScope<'static> = RuleScope {
        default_namespace: "default",
        namespace: "default",
        root_namespace: "istio-system",
        labels: NO_LABELS,
    };

    /// A DestinationRule `namespace/name` for `host`, with `extra` spec
    /// fields (flow YAML, after a comma).
    fn rule(namespace: &str, name: &str, host: &str, extra: &str) -> String {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{host: \"{host}\"{extra}}}\n"
        )
    }

    fn parse(yaml: &str) -> Vec<Document<DestinationRuleSpec>> {
        let mut diags = Diagnostics::default();
        let docs = parse_documents(&Arc::from("rules.yaml"), yaml, &mut diags)
            .into_iter()
            .filter_map(|r| match r {
                Resource::DestinationRule(d) => Some(d),
                _ => None,
            })
            .collect();
        assert!(!diags.has_errors(), "{diags:?}");
        docs
    }

    /// `namespace/name` of the first rule merged into the rule `host` of
    /// `service_namespace` follows, or `-`.
    fn chosen(
        docs: &[Document<DestinationRuleSpec>],
        scope: RuleScope<'_>,
        host: &str,
        service_namespace: &str,
    ) -> String {
        let rules = DestinationRules::new(docs, scope, (false, false), &mut Diagnostics::default());
        rules
            .for_service(host, service_namespace)
            .map_or("-".to_owned(), |i| rules.get(i).name())
    }

    #[test]
    fn the_most_specific_host_of_a_namespace_decides() {
        let docs = parse(
            &[
                rule("default", "everything", "*", ""),
                rule("default", "dot-com", "*.com", ""),
                rule("default", "example", "*.example.com", ""),
                rule("default", "api", "api.example.com", ""),
            ]
            .concat(),
        );
        let cases = [
            ("api.example.com", "default/api"),
            ("www.example.com", "default/example"),
            ("a.b.example.com", "default/example"),
            // `*.example.com` needs a label before `.example.com`.
            ("example.com", "default/dot-com"),
            ("other.com", "default/dot-com"),
            ("reviews.default.svc.cluster.local", "default/everything"),
            // Wildcard services: their own host, else a wider wildcard; an
            // exact host never matches them.
            ("*.example.com", "default/example"),
            ("*.api.example.com", "default/example"),
            ("*.org", "default/everything"),
        ];
        for (host, want) in cases {
            assert_eq!(chosen(&docs, SCOPE, host, "default"), want, "{host}");
        }
    }

    /// A rule with a `workloadSelector` is for the workloads of its
    /// namespace it selects only: for another workload it neither merges
    /// into nor overrides the rule without one. It came first in the merge
    /// for every workload, so its `tls: DISABLE` downgraded them all.
    #[test]
    fn a_rule_for_other_workloads_is_left_out() {
        let docs = parse(
            &[
                rule(
                    "default",
                    "legacy-only",
                    "api.example.com",
                    ", workloadSelector: {matchLabels: {app: legacy}}, trafficPolicy: {tls: {mode: DISABLE}}",
                ),
                rule(
                    "default",
                    "everyone",
                    "api.example.com",
                    ", trafficPolicy: {tls: {mode: SIMPLE}}",
                ),
            ]
            .concat(),
        );
        let labels = |app: &str| BTreeMap::from([("app".to_owned(), app.to_owned())]);
        let reviews = labels("reviews");
        let scope = RuleScope {
            labels: &reviews,
            ..SCOPE
        };
        assert_eq!(
            chosen(&docs, scope, "api.example.com", "default"),
            "default/everyone"
        );
        let legacy = labels("legacy");
        let scope = RuleScope {
            labels: &legacy,
            ..SCOPE
        };
        assert_eq!(
            chosen(&docs, scope, "api.example.com", "default"),
            "default/legacy-only"
        );
        // Only in its own namespace.
        let elsewhere = RuleScope {
            namespace: "prod",
            labels: &legacy,
            ..SCOPE
        };
        assert_eq!(
            chosen(&docs, elsewhere, "api.example.com", "default"),
            "default/everyone"
        );
    }

    #[test]
    fn rule_hosts_match_as_istio_matches_them() {
        assert!(rule_host_matches("*", "anything.example"));
        assert!(rule_host_matches("*", "*.example.com"));
        assert!(rule_host_matches("*.example.com", "api.example.com"));
        assert!(!rule_host_matches("*.example.com", "example.com"));
        assert!(!rule_host_matches("*.example.com", "api.example.org"));
        assert!(rule_host_matches("*.example.com", "*.example.com"));
        assert!(rule_host_matches("*.example.com", "*.api.example.com"));
        assert!(!rule_host_matches("*.api.example.com", "*.example.com"));
        assert!(!rule_host_matches("api.example.com", "*.example.com"));
        assert!(rule_host_matches("api.example.com", "api.example.com"));
    }

    #[test]
    fn this_workloads_namespace_then_the_services_then_the_root() {
        // File order says nothing: the other namespace's rule comes first.
        let all = [
            rule("other", "from-other", "api.example.com", ""),
            rule("istio-system", "root", "api.example.com", ""),
            rule("payments", "theirs", "api.example.com", ""),
            rule("default", "mine", "api.example.com", ""),
        ];
        let docs = |n: usize| parse(&all[..n].concat());
        assert_eq!(
            chosen(&docs(4), SCOPE, "api.example.com", "payments"),
            "default/mine"
        );
        assert_eq!(
            chosen(&docs(3), SCOPE, "api.example.com", "payments"),
            "payments/theirs"
        );
        assert_eq!(
            chosen(&docs(2), SCOPE, "api.example.com", "payments"),
            "istio-system/root"
        );
        assert_eq!(
            chosen(&docs(1), SCOPE, "api.example.com", "payments"),
            "-",
            "a rule of a namespace that is neither this workload's, the service's nor the root applies to nothing"
        );
        // The service in the other namespace: its rule, before the root's.
        assert_eq!(
            chosen(&docs(2), SCOPE, "api.example.com", "other"),
            "other/from-other"
        );
        // The root namespace as the mesh config names it.
        let mesh_root = RuleScope {
            root_namespace: "mesh-root",
            ..SCOPE
        };
        assert_eq!(
            chosen(&docs(2), mesh_root, "api.example.com", "payments"),
            "-"
        );
    }

    #[test]
    fn a_namespace_decides_before_the_next_however_specific_the_next_ones_host() {
        let docs = parse(
            &[
                rule("payments", "exact", "api.example.com", ""),
                rule("istio-system", "exact-root", "api.example.com", ""),
                rule("default", "mesh-wide-here", "*", ""),
            ]
            .concat(),
        );
        assert_eq!(
            chosen(&docs, SCOPE, "api.example.com", "payments"),
            "default/mesh-wide-here"
        );
        // A root namespace `*.local` applies where no nearer rule matches.
        let docs = parse(
            &[
                rule("istio-system", "local", "*.local", ""),
                rule(
                    "payments",
                    "ledger",
                    "ledger.payments.svc.cluster.local",
                    "",
                ),
            ]
            .concat(),
        );
        assert_eq!(
            chosen(&docs, SCOPE, "reviews.default.svc.cluster.local", "default"),
            "istio-system/local"
        );
        assert_eq!(
            chosen(
                &docs,
                SCOPE,
                "ledger.payments.svc.cluster.local",
                "payments"
            ),
            "payments/ledger"
        );
    }

    #[test]
    fn a_workload_in_the_root_namespace_looks_in_the_services_namespace_first() {
        // Istio's `destinationRule`: for a gateway in istio-system, the
        // mesh-wide rules there must not hide a service's own.
        let gateway = RuleScope {
            default_namespace: "default",
            namespace: "istio-system",
            root_namespace: "istio-system",
            labels: NO_LABELS,
        };
        let docs = parse(
            &[
                rule("istio-system", "root", "api.example.com", ""),
                rule("payments", "theirs", "*.example.com", ""),
            ]
            .concat(),
        );
        assert_eq!(
            chosen(&docs, gateway, "api.example.com", "payments"),
            "payments/theirs"
        );
        assert_eq!(
            chosen(&docs, gateway, "api.example.com", "default"),
            "istio-system/root"
        );
    }

    #[test]
    fn short_hosts_resolve_in_the_rules_namespace() {
        let docs = parse(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: reviews}\n",
        );
        assert_eq!(
            chosen(&docs, SCOPE, "reviews.default.svc.cluster.local", "default"),
            "default/r",
            "a rule naming no namespace is in the default one"
        );
        let docs = parse(&rule("payments", "r", "reviews", ""));
        assert_eq!(
            chosen(
                &docs,
                SCOPE,
                "reviews.payments.svc.cluster.local",
                "payments"
            ),
            "payments/r"
        );
    }

    #[test]
    fn rules_of_one_namespace_for_one_host_merge_the_oldest_first() {
        let tls = |mode: &str| format!(", trafficPolicy: {{tls: {{mode: {mode}}}}}");
        let subsets = |names: &[&str]| {
            let s: Vec<String> = names
                .iter()
                .map(|n| format!("{{name: {n}, labels: {{version: {n}}}}}"))
                .collect();
            format!(", subsets: [{}]", s.join(", "))
        };
        let yaml = [
            rule("default", "first", "api.example.com", &subsets(&["v1"])),
            rule(
                "default",
                "second",
                "api.example.com",
                &(tls("SIMPLE") + &subsets(&["v1", "v2"])),
            ),
            rule("default", "third", "api.example.com", &tls("DISABLE")),
        ]
        .concat();
        let docs = parse(&yaml);
        let mut diags = Diagnostics::default();
        let rules = DestinationRules::new(&docs, SCOPE, (false, false), &mut diags);
        let merged = rules.get(rules.for_service("api.example.com", "default").unwrap());
        let names: Vec<&str> = merged
            .from
            .iter()
            .map(|d| d.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["first", "second", "third"]);
        let subset_names: Vec<&str> = merged
            .spec
            .subsets
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(subset_names, ["v1", "v2"]);
        let mode = |r: &ConsolidatedRule<'_>| {
            r.spec
                .traffic_policy
                .as_ref()
                .and_then(|p| p.tls.as_ref())
                .and_then(|t| t.mode.clone())
        };
        assert_eq!(
            mode(merged).as_deref(),
            Some("SIMPLE"),
            "the first trafficPolicy (the first rule has none)"
        );
        assert_eq!(&*merged.reference(None), "DestinationRule:default/second");
        assert_eq!(
            &*merged.reference(Some("v2")),
            "DestinationRule:default/second"
        );
        let warnings: Vec<String> = diags.warnings().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        assert!(
            warnings[0].contains("DestinationRule default/second")
                && warnings[0].contains("spec.subsets[0].name")
                && warnings[0].contains("subset v1 of api.example.com is already defined by DestinationRule default/first"),
            "{warnings:#?}"
        );
        assert!(
            warnings[1].contains("DestinationRule default/third")
                && warnings[1].contains("spec.trafficPolicy")
                && warnings[1].contains(
                    "DestinationRule default/second in this namespace, whose trafficPolicy applies"
                ),
            "{warnings:#?}"
        );

        // The oldest by creationTimestamp comes first, wherever it is in
        // the file; those without one after it, in file order.
        let yaml = [
            rule("default", "untimed", "api.example.com", &tls("DISABLE")),
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: timed, namespace: default, creationTimestamp: \"2024-05-01T10:00:00Z\"}\nspec: {host: api.example.com, trafficPolicy: {tls: {mode: SIMPLE}}}\n".to_owned(),
        ]
        .concat();
        let docs = parse(&yaml);
        let rules =
            DestinationRules::new(&docs, SCOPE, (false, false), &mut Diagnostics::default());
        let merged = rules.get(rules.for_service("api.example.com", "default").unwrap());
        assert_eq!(merged.name(), "default/timed");
        assert_eq!(mode(merged).as_deref(), Some("SIMPLE"));
    }

    #[test]
    fn a_subsets_own_policy_names_the_rule_that_defined_it() {
        let yaml = [
            rule(
                "default",
                "top",
                "api.example.com",
                ", trafficPolicy: {tls: {mode: DISABLE}}",
            ),
            rule(
                "default",
                "canary",
                "api.example.com",
                ", subsets: [{name: canary, labels: {v: c}, trafficPolicy: {tls: {mode: DISABLE}}}, {name: plain, labels: {v: p}}]",
            ),
        ]
        .concat();
        let docs = parse(&yaml);
        let rules =
            DestinationRules::new(&docs, SCOPE, (false, false), &mut Diagnostics::default());
        let merged = rules.get(rules.for_service("api.example.com", "default").unwrap());
        assert_eq!(&*merged.reference(None), "DestinationRule:default/top");
        assert_eq!(
            &*merged.reference(Some("canary")),
            "DestinationRule:default/canary"
        );
        assert_eq!(
            &*merged.reference(Some("plain")),
            "DestinationRule:default/top"
        );
    }

    const AGENT: &str = "apiVersion: tracemesh.io/v1\nkind: Agent\nmetadata: {name: app-v1, namespace: default}\nspec:\n  service: app\n";

    fn entry(namespace: &str, host: &str) -> String {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {}, namespace: {namespace}}}\nspec:\n  hosts: [\"{host}\"]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1}}]\n",
            host.replace('*', "any")
        )
    }

    /// A rule whose `connectTimeout` tells it apart.
    fn timeout_rule(namespace: &str, name: &str, host: &str, ms: u32) -> String {
        rule(
            namespace,
            name,
            host,
            &format!(", trafficPolicy: {{connectionPool: {{tcp: {{connectTimeout: {ms}ms}}}}}}"),
        )
    }

    #[test]
    fn clusters_follow_the_rule_chosen_and_the_rest_are_warned_about() {
        let yaml = [
            AGENT.to_owned(),
            entry("default", "api.example.com"),
            entry("payments", "ledger.example.com"),
            entry("payments", "*.wild.example.com"),
            timeout_rule("other", "from-other", "ledger.example.com", 1),
            timeout_rule("default", "everything", "*", 2),
            timeout_rule("default", "wild", "*.example.com", 3),
            timeout_rule("istio-system", "root-ledger", "ledger.example.com", 4),
            timeout_rule("default", "nowhere", "*.nowhere.test", 5),
            timeout_rule("default", "absent", "absent.example.com", 6),
        ]
        .concat();
        let compiled = compile_text(&Arc::from("mesh.yaml"), &yaml, 1, &LiveState::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let cluster = |host: &str| {
            let c = compiled
                .snapshot
                .clusters
                .iter()
                .find(|c| c.service.host == host)
                .unwrap_or_else(|| panic!("{host}"));
            (
                c.connect_timeout,
                c.destination_rule.as_deref().map(str::to_owned),
            )
        };
        for host in [
            "api.example.com",
            "ledger.example.com",
            "*.wild.example.com",
        ] {
            assert_eq!(
                cluster(host),
                (
                    Duration::from_millis(3),
                    Some("DestinationRule:default/wild".to_owned())
                ),
                "{host}: this workload's namespace first, its most specific host"
            );
        }
        let warnings: Vec<String> = compiled
            .diagnostics
            .warnings()
            .map(ToString::to_string)
            .collect();
        let about = |name: &str| {
            let found: Vec<&String> = warnings
                .iter()
                .filter(|w| w.contains(&format!("(DestinationRule {name},")))
                .collect();
            assert_eq!(found.len(), 1, "{name}: {warnings:#?}");
            found[0].clone()
        };
        assert!(
            about("default/everything").contains(
                "spec.host: *.wild.example.com follows DestinationRule default/wild instead: its host *.example.com is more specific than *"
            ),
            "{warnings:#?}"
        );
        assert!(
            about("other/from-other").contains(
                "spec.host: ledger.example.com follows DestinationRule default/wild instead: this workload takes DestinationRules from the namespaces default (this workload's), then payments (the service's), then istio-system (the root), as Istio does, and namespace other is none of them; this rule applies to nothing here"
            ),
            "{warnings:#?}"
        );
        assert!(
            about("istio-system/root-ledger").contains(
                "spec.host: ledger.example.com follows DestinationRule default/wild instead: this workload takes DestinationRules from the namespaces default (this workload's), then payments (the service's), then istio-system (the root), the first with a rule matching the host deciding"
            ),
            "{warnings:#?}"
        );
        assert!(
            about("default/nowhere").contains(
                "spec.host: no ServiceEntry host matches *.nowhere.test; the rule applies to nothing"
            ),
            "{warnings:#?}"
        );
        assert!(
            about("default/absent").contains(
                "spec.host: no ServiceEntry declares absent.example.com; the rule applies to nothing"
            ),
            "{warnings:#?}"
        );
        assert!(
            !warnings
                .iter()
                .any(|w| w.contains("(DestinationRule default/wild,")),
            "{warnings:#?}"
        );
    }
}
