//! VirtualServices → the route table, plus an implicit route for every
//! registry host no VirtualService covers.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use regex::RegexBuilder;

use super::bootstrap::Agent;
use super::registry::Registry;
use super::route_policy::{self, RuleScope};
use crate::config::diagnostics::{Diagnostics, Location};
use crate::config::documents::Document;
use crate::config::virtual_service::{
    HeaderOperations, Headers, HttpMatchRequest, HttpRoute, StringMatch, VirtualServiceSpec,
};
use crate::host::{CLUSTER_DOMAIN, resolve_short_name};
use crate::model::policy::RoutePolicy;
use crate::model::route::{
    HeaderEdits, HttpRule, RouteMatch, RouteTable, StrMatcher, VirtualHost, WeightedDestination,
};

/// What a rule is compiled against.
struct Scope<'a> {
    loc: &'a Location,
    namespace: &'a str,
    registry: &'a Registry,
    boot: Option<&'a Agent>,
}

pub(super) fn build(
    services: &[Document<VirtualServiceSpec>],
    registry: &Registry,
    boot: Option<&Agent>,
    agent_namespace: &str,
    diags: &mut Diagnostics,
) -> RouteTable {
    let mut hosts: Vec<Arc<VirtualHost>> = Vec::new();
    for doc in services {
        let spec = &doc.spec;
        if !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == "mesh") {
            let msg = "applies to gateways only (no `mesh` in gateways); sidecars skip it";
            diags.warn(&doc.location, Some("spec.gateways".into()), msg);
            continue;
        }
        if spec.hosts.is_empty() {
            diags.error(
                &doc.location,
                Some("spec.hosts".into()),
                "at least one host is required",
            );
        }
        let namespace = doc.metadata.namespace.as_deref().unwrap_or(agent_namespace);
        let scope = Scope {
            loc: &doc.location,
            namespace,
            registry,
            boot,
        };
        let name = format!("{namespace}/{}", doc.metadata.name);
        let rules: Vec<HttpRule> = spec
            .http
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                let mut compiled = compile_rule(rule, &format!("spec.http[{i}]"), &scope, diags)?;
                let which = rule.name.clone().unwrap_or_else(|| i.to_string());
                compiled.reference = Some(Arc::from(details_safe(&format!(
                    "VirtualService:{name}[{which}]"
                ))));
                Some(compiled)
            })
            .collect();
        for (h, host) in spec.hosts.iter().enumerate() {
            let fqdn = resolve_short_name(host, namespace);
            if hosts.iter().any(|vh| vh.host == fqdn) {
                let msg =
                    format!("{fqdn} is already routed by an earlier VirtualService; ignored here");
                diags.warn(&doc.location, Some(format!("spec.hosts[{h}]")), msg);
                continue;
            }
            hosts.push(Arc::new(VirtualHost {
                ports: registry.http_ports(&fqdn),
                host: fqdn,
                virtual_service: Some(name.clone()),
                rules: rules.clone(),
            }));
        }
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
            },
            None => implicit_host(fqdn, registry),
        });
    }
    hosts.extend(covered.into_iter().map(Arc::new));
    table(hosts, agent_namespace)
}

fn implicit_host(fqdn: &str, registry: &Registry) -> VirtualHost {
    let target = registry.target(fqdn, None, None);
    VirtualHost {
        host: fqdn.to_owned(),
        ports: registry.http_ports(fqdn),
        virtual_service: None,
        rules: vec![HttpRule {
            name: None,
            reference: None,
            matches: Vec::new(),
            destinations: vec![WeightedDestination {
                target,
                weight: 100,
                request_headers: HeaderEdits::default(),
                response_headers: HeaderEdits::default(),
            }],
            total_weight: 100,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
            policy: RoutePolicy::default(),
        }],
    }
}

/// Indexes hosts by every name a client may use: the FQDN and, for cluster
/// services, `name.ns`, `name.ns.svc` and (same namespace) `name`.
fn table(hosts: Vec<Arc<VirtualHost>>, agent_namespace: &str) -> RouteTable {
    let mut table = RouteTable::default();
    for vh in &hosts {
        if vh.host.starts_with('*') {
            table.wildcard.push(vh.clone());
        } else {
            table.exact.insert(vh.host.clone(), vh.clone());
        }
    }
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
    table
        .wildcard
        .sort_by_key(|vh| std::cmp::Reverse(vh.host.len()));
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
        if let Some(compiled) = compile_match(m, &format!("{field}.match[{j}]"), scope, diags) {
            matches.push(compiled);
        }
    }
    if !rule.matches.is_empty() && matches.is_empty() {
        return None; // every condition names another source or gateway: never matches here
    }
    if rule.route.is_empty()
        && rule.redirect.is_none()
        && rule.direct_response.is_none()
        && rule.delegate.is_none()
    {
        diags.error(
            loc,
            Some(field.to_owned()),
            "a rule needs `route`, `redirect`, `directResponse` or `delegate`",
        );
    }
    let weights: Vec<i32> = rule.route.iter().map(|d| d.weight.unwrap_or(0)).collect();
    for (k, w) in weights.iter().enumerate() {
        if *w < 0 {
            diags.error(
                loc,
                Some(format!("{field}.route[{k}].weight")),
                "must not be negative",
            );
        }
    }
    // Weights are relative (Istio has not asked for a total of 100 since
    // 1.19): only a rule whose destinations all weigh nothing is refused.
    let sum: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    if rule.route.len() > 1 && sum == 0 {
        let msg = "total destination weight is 0; weights are relative, so give at least one destination a positive weight";
        diags.error(loc, Some(format!("{field}.route")), msg);
    }
    let mut destinations = Vec::new();
    for (k, dest) in rule.route.iter().enumerate() {
        let dfield = format!("{field}.route[{k}]");
        let host = resolve_short_name(&dest.destination.host, scope.namespace);
        let port = dest.destination.port.as_ref().map(|p| p.number as u16);
        let target = scope
            .registry
            .target(&host, dest.destination.subset.as_deref(), port);
        if target.clusters.is_empty() {
            let what = match &dest.destination.subset {
                Some(subset) if scope.registry.services.contains_key(&host) => {
                    format!("subset {subset:?} of {host} is not defined by a DestinationRule")
                }
                _ => scope.registry.missing(&host),
            };
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
        total_weight: destinations.iter().map(|d| d.weight).sum(),
        destinations,
        request_headers,
        response_headers,
        policy,
    })
}

/// Compiles one match entry; `None` when it can never match on this agent
/// (another source workload, namespace or a gateway).
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
    let boot = scope.boot?;
    let identity = &boot.identity;
    let labels_ok = m
        .source_labels
        .iter()
        .all(|(k, v)| identity.labels.get(k) == Some(v));
    let namespace_ok = m
        .source_namespace
        .as_ref()
        .is_none_or(|ns| *ns == identity.namespace);
    let gateway_ok = m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh");
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
    let set = [sm.exact.is_some(), sm.prefix.is_some(), sm.regex.is_some()];
    if set.iter().filter(|s| **s).count() > 1 {
        diags.error(
            loc,
            Some(field.to_owned()),
            "set only one of exact, prefix, regex",
        );
        return None;
    }
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
    match RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
    {
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
        let mut pair = |name: &str, value: &str, op: &str| {
            let f = format!("{field}.{side}.{op}.{name}");
            let name = HeaderName::try_from(name.to_ascii_lowercase())
                .map_err(|_| diags.error(loc, Some(f.clone()), "not a header name"));
            let value = HeaderValue::try_from(value)
                .map_err(|_| diags.error(loc, Some(f), "not a valid header value"));
            name.ok().zip(value.ok())
        };
        compiled.set = ops
            .set
            .iter()
            .filter_map(|(k, v)| pair(k, v, "set"))
            .collect();
        compiled.add = ops
            .add
            .iter()
            .filter_map(|(k, v)| pair(k, v, "add"))
            .collect();
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
