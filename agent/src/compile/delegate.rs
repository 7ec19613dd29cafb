//! VirtualService delegation (`http[].delegate`), as Istio merges it for
//! sidecars and gateways alike (`mergeVirtualServices`, `MergeHTTPRoutes`
//! in pilot/pkg/model): a root rule that names a delegate is replaced by
//! the delegate's rules, each with its conditions merged with the root
//! rule's and the root's rule-level fields where the delegate leaves them
//! out.
//!
//! A delegate is a VirtualService without `hosts`; it applies only
//! through a root. One level only: a delegate's own rules cannot delegate
//! (the validator refuses it). A root rule whose delegate is missing, has
//! hosts, or is not exported to the root's namespace is dropped (requests
//! fall through to the next rule); a delegate rule whose conditions
//! conflict with every condition of the root rule is dropped.

use std::collections::BTreeMap;

use super::routes::{MESH, gateway_name};
use crate::config::documents::Document;
use crate::config::virtual_service::{
    Delegate, HttpMatchRequest, HttpRoute, StringMatch, VirtualServiceSpec,
};
use crate::host::resolve_short_name;

/// The VirtualServices a root may delegate to.
#[derive(Clone, Copy)]
pub(super) struct Delegates<'a> {
    /// Every VirtualService of the file (delegates are those without hosts).
    pub services: &'a [Document<VirtualServiceSpec>],
    /// The namespace of a resource that names none.
    pub default_namespace: &'a str,
}

/// A delegate found for a root rule.
pub(super) struct Found<'a> {
    pub doc: &'a Document<VirtualServiceSpec>,
    pub namespace: &'a str,
}

impl<'a> Delegates<'a> {
    fn namespace_of(&self, doc: &'a Document<VirtualServiceSpec>) -> &'a str {
        doc.metadata
            .namespace
            .as_deref()
            .unwrap_or(self.default_namespace)
    }

    /// The delegate `d` of a root in `root_namespace` names (its namespace
    /// defaults to the root's), or why there is none to use.
    pub fn find(&self, d: &Delegate, root_namespace: &str) -> Result<Found<'a>, String> {
        let namespace = d.namespace.as_deref().unwrap_or(root_namespace);
        let named: Vec<&Document<VirtualServiceSpec>> = self
            .services
            .iter()
            .filter(|doc| doc.metadata.name == d.name && self.namespace_of(doc) == namespace)
            .collect();
        let Some(doc) = named.iter().find(|doc| doc.spec.hosts.is_empty()) else {
            return Err(if named.is_empty() {
                format!("delegate VirtualService {namespace}/{} not found", d.name)
            } else {
                format!(
                    "VirtualService {namespace}/{} has hosts, so it is not a delegate (a delegate has none)",
                    d.name
                )
            });
        };
        let found = Found {
            doc,
            namespace: self.namespace_of(doc),
        };
        if !exported_to(&doc.spec.export_to, found.namespace, root_namespace) {
            return Err(format!(
                "delegate VirtualService {namespace}/{} is not exported to namespace {root_namespace}",
                d.name
            ));
        }
        Ok(found)
    }
}

/// Whether a VirtualService of `namespace` with `export_to` is visible in
/// `to` (none: everywhere, the mesh default).
fn exported_to(export_to: &[String], namespace: &str, to: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == to || (e == "." && namespace == to))
}

/// Host names and gateway names of `route` resolved in `namespace`, as
/// Istio resolves each VirtualService's before merging
/// (`ResolveVirtualServiceShortnames`): merged rules keep what their own
/// resource meant.
fn qualified(route: &HttpRoute, namespace: &str) -> HttpRoute {
    let mut route = route.clone();
    for m in &mut route.matches {
        for g in &mut m.gateways {
            if g != MESH {
                *g = gateway_name(g, namespace);
            }
        }
    }
    for d in &mut route.route {
        d.destination.host = resolve_short_name(&d.destination.host, namespace);
    }
    if let Some(m) = &mut route.mirror {
        m.host = resolve_short_name(&m.host, namespace);
    }
    for m in &mut route.mirrors {
        m.destination.host = resolve_short_name(&m.destination.host, namespace);
    }
    route
}

/// The delegate's rule under `root` (Istio's `mergeHTTPRoute`), or `None`
/// when its conditions conflict with the root rule's.
pub(super) fn merge_route(
    root: &HttpRoute,
    root_namespace: &str,
    delegate: &HttpRoute,
    delegate_namespace: &str,
) -> Option<HttpRoute> {
    let root = qualified(root, root_namespace);
    let mut out = qualified(delegate, delegate_namespace);
    out.matches = merge_matches(&root.matches, &out.matches)?;
    out.name = joined(&root.name, &out.name);
    // The root's rule-level fields where the delegate sets none.
    fill(&mut out.rewrite, &root.rewrite);
    fill(&mut out.direct_response, &root.direct_response);
    fill(&mut out.timeout, &root.timeout);
    fill(&mut out.retries, &root.retries);
    fill(&mut out.fault, &root.fault);
    fill(&mut out.mirror, &root.mirror);
    fill(&mut out.mirror_percent, &root.mirror_percent);
    fill(&mut out.mirror_percentage, &root.mirror_percentage);
    fill(&mut out.cors_policy, &root.cors_policy);
    if out.mirrors.is_empty() {
        out.mirrors = root.mirrors.clone();
    }
    fill(&mut out.headers, &root.headers);
    Some(out)
}

fn fill<T: Clone>(field: &mut Option<T>, root: &Option<T>) {
    if field.is_none() {
        field.clone_from(root);
    }
}

/// Istio's name of a merged rule or condition: `root-delegate`, or
/// whichever is set.
fn joined(root: &Option<String>, delegate: &Option<String>) -> Option<String> {
    match (root.as_deref(), delegate.as_deref()) {
        (Some(r), Some(d)) if !r.is_empty() && !d.is_empty() => Some(format!("{r}-{d}")),
        (_, Some(d)) if !d.is_empty() => Some(d.to_owned()),
        (Some(r), _) if !r.is_empty() => Some(r.to_owned()),
        _ => None,
    }
}

/// Istio's `mergeHTTPMatchRequests`: each delegate condition is merged with
/// every root condition it does not conflict with; `None` (a conflict)
/// when one of them conflicts with them all.
fn merge_matches(
    root: &[HttpMatchRequest],
    delegate: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(delegate.to_vec());
    }
    if delegate.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for leaf in delegate {
        let before = out.len();
        for r in root {
            if !has_conflict(r, leaf) {
                out.push(merge_match(r, leaf));
            }
        }
        if out.len() == before {
            return None;
        }
    }
    Some(out)
}

/// Istio's `mergeHTTPMatchRequest`: the delegate's condition, with the
/// root's where it sets none; maps merged, the delegate's keys winning.
fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = leaf.clone();
    out.name = joined(&root.name, &leaf.name);
    fill(&mut out.uri, &root.uri);
    fill(&mut out.scheme, &root.scheme);
    fill(&mut out.method, &root.method);
    fill(&mut out.authority, &root.authority);
    out.headers = merged_map(&root.headers, &leaf.headers);
    out.without_headers = merged_map(&root.without_headers, &leaf.without_headers);
    out.query_params = merged_map(&root.query_params, &leaf.query_params);
    if out.port.unwrap_or(0) == 0 {
        out.port = root.port;
    }
    out.source_labels = merged_map(&root.source_labels, &leaf.source_labels);
    if out.source_namespace.as_deref().unwrap_or("").is_empty() {
        out.source_namespace.clone_from(&root.source_namespace);
    }
    if out.gateways.is_empty() {
        out.gateways.clone_from(&root.gateways);
    }
    if out.stat_prefix.as_deref().unwrap_or("").is_empty() {
        out.stat_prefix.clone_from(&root.stat_prefix);
    }
    out
}

fn merged_map<V: Clone>(
    root: &BTreeMap<String, V>,
    leaf: &BTreeMap<String, V>,
) -> BTreeMap<String, V> {
    let mut out = root.clone();
    out.extend(leaf.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// Istio's `hasConflict`: whether a delegate condition asks for something
/// the root condition rules out.
fn has_conflict(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs
        .iter()
        .any(|(r, l)| string_match_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    for (root_map, leaf_map) in [
        (&root.headers, &leaf.headers),
        (&root.without_headers, &leaf.without_headers),
        (&root.query_params, &leaf.query_params),
    ] {
        if leaf_map
            .iter()
            .any(|(k, l)| string_match_conflict(root_map.get(k), Some(l)))
        {
            return true;
        }
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    let (rp, lp) = (root.port.unwrap_or(0), leaf.port.unwrap_or(0));
    if rp > 0 && lp > 0 && rp != lp {
        return true;
    }
    let root_ns = root.source_namespace.as_deref().unwrap_or("");
    if !root_ns.is_empty() && leaf.source_namespace.as_deref().unwrap_or("") != root_ns {
        return true;
    }
    if leaf
        .source_labels
        .iter()
        .any(|(k, v)| root.source_labels.get(k).is_some_and(|r| r != v))
    {
        return true;
    }
    if !root.gateways.is_empty() && !leaf.gateways.is_empty() {
        if root.gateways.len() < leaf.gateways.len() {
            return true;
        }
        if leaf.gateways.iter().any(|g| !root.gateways.contains(g)) {
            return true;
        }
    }
    false
}

/// Istio's `stringMatchConflict`: a delegate's condition must be as
/// narrow as the root's — the same exact value, or an exact value or
/// prefix under the root's prefix; regexes combine with nothing.
fn string_match_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    let get = |s: &Option<String>| s.as_deref().unwrap_or("").to_owned();
    let (r_exact, r_prefix, r_regex) = (get(&root.exact), get(&root.prefix), get(&root.regex));
    let (l_exact, l_prefix, l_regex) = (get(&leaf.exact), get(&leaf.prefix), get(&leaf.regex));
    if !r_regex.is_empty() && (!l_regex.is_empty() || !l_prefix.is_empty() || !l_exact.is_empty()) {
        return true;
    }
    if !l_regex.is_empty() && (!r_regex.is_empty() || !r_prefix.is_empty() || !r_exact.is_empty()) {
        return true;
    }
    if !r_exact.is_empty() {
        return !l_prefix.is_empty() || l_exact != r_exact;
    }
    if !r_prefix.is_empty() {
        if !l_prefix.is_empty() {
            return !l_prefix.starts_with(&r_prefix);
        }
        if !l_exact.is_empty() {
            return !l_exact.starts_with(&r_prefix);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> Option<StringMatch> {
        Some(StringMatch {
            prefix: Some(p.into()),
            ..StringMatch::default()
        })
    }

    fn exact(p: &str) -> Option<StringMatch> {
        Some(StringMatch {
            exact: Some(p.into()),
            ..StringMatch::default()
        })
    }

    fn uri(sm: Option<StringMatch>) -> HttpMatchRequest {
        HttpMatchRequest {
            uri: sm,
            ..HttpMatchRequest::default()
        }
    }

    #[test]
    fn string_conditions_conflict_as_istio_decides() {
        let c = |r: Option<StringMatch>, l: Option<StringMatch>| {
            string_match_conflict(r.as_ref(), l.as_ref())
        };
        assert!(!c(prefix("/api"), prefix("/api/v2")));
        assert!(c(prefix("/api/v2"), prefix("/api")));
        assert!(!c(prefix("/api"), exact("/api/x")));
        assert!(c(exact("/a"), prefix("/a")));
        assert!(!c(exact("/a"), exact("/a")));
        assert!(c(exact("/a"), exact("/b")));
        let regex = Some(StringMatch {
            regex: Some("/a.*".into()),
            ..StringMatch::default()
        });
        assert!(c(regex.clone(), prefix("/a")));
        assert!(c(prefix("/a"), regex.clone()));
        assert!(!c(None, regex.clone()));
        assert!(!c(regex, None));
    }

    #[test]
    fn each_delegate_condition_needs_a_root_condition_it_narrows() {
        let root = [uri(prefix("/api")), uri(prefix("/v1"))];
        let merged = merge_matches(&root, &[uri(prefix("/api/v2"))]).unwrap();
        assert_eq!(merged, vec![uri(prefix("/api/v2"))]);
        assert!(merge_matches(&root, &[uri(prefix("/other"))]).is_none());
        assert!(
            merge_matches(&root, &[uri(prefix("/api/v2")), uri(prefix("/x"))]).is_none(),
            "one conflicting condition drops the rule"
        );
        // Without conditions on either side, the other side's are kept.
        assert_eq!(merge_matches(&root, &[]).unwrap(), root.to_vec());
        assert_eq!(merge_matches(&[], &root).unwrap(), root.to_vec());
    }

    #[test]
    fn merged_conditions_take_the_roots_fields_the_delegate_leaves_out() {
        let mut root = uri(prefix("/api"));
        root.name = Some("r".into());
        root.method = exact("GET");
        root.headers.insert("a".into(), StringMatch::default());
        root.headers.insert("b".into(), exact("1").unwrap());
        let mut leaf = HttpMatchRequest {
            name: Some("l".into()),
            ..HttpMatchRequest::default()
        };
        leaf.headers.insert("b".into(), exact("1").unwrap());
        leaf.headers.insert("c".into(), exact("3").unwrap());
        let merged = &merge_matches(&[root], &[leaf]).unwrap()[0];
        assert_eq!(merged.name.as_deref(), Some("r-l"));
        assert_eq!(merged.uri, prefix("/api"));
        assert_eq!(merged.method, exact("GET"));
        let keys: Vec<&str> = merged.headers.keys().map(String::as_str).collect();
        assert_eq!(keys, ["a", "b", "c"]);
    }

    #[test]
    fn a_merged_rule_keeps_the_roots_fields_and_resolves_in_each_namespace() {
        let root: HttpRoute = serde_json::from_str(
            r#"{"name": "root", "match": [{"uri": {"prefix": "/api"}}], "delegate": {"name": "d"},
                "timeout": "3s", "mirror": {"host": "shadow"}}"#,
        )
        .unwrap();
        let delegate: HttpRoute = serde_json::from_str(
            r#"{"name": "v2", "match": [{"uri": {"prefix": "/api/v2"}}], "timeout": "1s",
                "route": [{"destination": {"host": "reviews", "subset": "v2"}}]}"#,
        )
        .unwrap();
        let merged = merge_route(&root, "front", &delegate, "back").unwrap();
        assert_eq!(merged.name.as_deref(), Some("root-v2"));
        assert_eq!(merged.delegate, None);
        assert_eq!(merged.matches, vec![uri(prefix("/api/v2"))]);
        assert_eq!(
            merged.route[0].destination.host,
            "reviews.back.svc.cluster.local"
        );
        assert_eq!(
            merged.mirror.unwrap().host,
            "shadow.front.svc.cluster.local"
        );
        assert_eq!(merged.timeout, delegate.timeout, "the delegate's own wins");
    }
}
