//! HTTPRoute and GRPCRoute rules → [`HttpRule`]s, one per match (as Istio
//! splits them), each with the rank the Gateway API orders rules by.
//!
//! What each field becomes, as Istio converts routes to VirtualServices
//! (`pilot/pkg/config/kube/gateway/conversion.go`) and renders them with
//! gateway semantics:
//!
//! - `path` `PathPrefix /x` → a path-separated prefix (`/x`, `/x/…`, not
//!   `/xy`); `Exact`; `RegularExpression` (RE2, the whole path).
//! - `headers`, `queryParams` (`Exact`, `RegularExpression`), `method`.
//! - `RequestHeaderModifier`/`ResponseHeaderModifier` → header edits (of
//!   the rule, or of a backend); `RequestRedirect` → a redirect (302 by
//!   default; without `port`, the scheme's port when `scheme` is set, else
//!   the request's); `URLRewrite` → host and path rewrites
//!   (`ReplacePrefixMatch` replaces the matched prefix on a segment
//!   boundary, `/` removing it); `RequestMirror` → a mirror.
//! - weighted `backendRefs` (weight 1 by default; 0 takes nothing; a rule
//!   whose weights are all 0, or that has none and does not redirect,
//!   answers 500, as the API requires).
//! - `timeouts.request` → the rule's timeout; `timeouts.backendRequest` →
//!   each attempt's timeout when `retry` is set, else the rule's timeout.
//! - `retry` → retries on connect failure, refused stream, gRPC
//!   unavailable/cancelled and `codes` (2 attempts by default).

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use regex::Regex;

use super::super::registry::Registry;
use super::super::routes::anchored_regex;
use super::{ReferenceGrants, RouteKind, backend};
use crate::config::diagnostics::{Diagnostics, Location};
use crate::config::gateway_api::{
    GrpcRouteRule, HttpBackendRef, HttpHeaderFilter, HttpHeaderMatch, HttpRouteFilter,
    HttpRouteMatch, HttpRouteRule, parse_duration,
};
use crate::model::policy::{
    DEFAULT_BACKOFF, DirectResponse, Mirror, Redirect, RetryOn, RetryPolicy, Rewrite, RouteAction,
    RoutePolicy,
};
use crate::model::route::{HeaderEdits, HttpRule, RouteMatch, StrMatcher, WeightedDestination};

/// Where a route's rules are compiled.
pub(in crate::compile) struct RuleScope<'a> {
    /// The route's document.
    pub loc: &'a Location,
    /// HTTPRoute or GRPCRoute.
    pub kind: RouteKind,
    /// The route's name.
    pub name: &'a str,
    /// The route's namespace: backends without one are in it.
    pub namespace: &'a str,
    /// The services routes can reach.
    pub registry: &'a Registry,
    /// ReferenceGrants, when cross-namespace backends need one (routes
    /// attached to Gateways; Istio does not ask for them in the mesh).
    pub grants: Option<&'a ReferenceGrants>,
}

impl RuleScope<'_> {
    fn warn(&self, diags: &mut Diagnostics, field: String, msg: impl Into<String>) {
        diags.warn(self.loc, Some(field), msg);
    }
}

/// A compiled rule and where the Gateway API puts it.
#[derive(Debug, Clone)]
pub(in crate::compile) struct RankedRule {
    /// Its precedence among the rules for one host.
    pub rank: Rank,
    /// The rule (at most one match).
    pub rule: HttpRule,
}

/// The Gateway API's precedence of one match (Istio's `sortHTTPRoutes`):
/// an exact path over a prefix over a regular expression, a longer path
/// first, a method match first, then more header matches, then more query
/// parameter matches. Ties keep the order of routes (oldest first) and of
/// rules and matches in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::compile) struct Rank {
    /// The rule has no match at all (sorted last).
    no_match: bool,
    /// 3 exact, 2 prefix, 1 regex, 0 none.
    path_kind: u8,
    path_len: usize,
    method: bool,
    headers: usize,
    query_params: usize,
}

impl Rank {
    fn of(m: Option<&RouteMatch>, path_len: usize) -> Self {
        let Some(m) = m else {
            return Self {
                no_match: true,
                path_kind: 0,
                path_len: 0,
                method: false,
                headers: 0,
                query_params: 0,
            };
        };
        let path_kind = match &m.uri {
            Some(StrMatcher::Exact(_)) => 3,
            Some(StrMatcher::Prefix(_) | StrMatcher::PathSeparatedPrefix(_)) => 2,
            Some(StrMatcher::Regex(_)) => 1,
            Some(StrMatcher::Present) | None => 0,
        };
        Self {
            no_match: false,
            path_kind,
            path_len,
            method: m.method.is_some(),
            headers: m.headers.len(),
            query_params: m.query_params.len(),
        }
    }

    /// `Less` when `self` goes first.
    fn precedence(&self, other: &Self) -> Ordering {
        other
            .no_match
            .cmp(&self.no_match)
            .reverse()
            .then(other.path_kind.cmp(&self.path_kind))
            .then(other.path_len.cmp(&self.path_len))
            .then(other.method.cmp(&self.method))
            .then(other.headers.cmp(&self.headers))
            .then(other.query_params.cmp(&self.query_params))
    }
}

/// Sorts rules gathered (in route order) for one host into the Gateway
/// API's precedence; stable, so ties keep that order.
pub(in crate::compile) fn sort(rules: &mut [RankedRule]) {
    rules.sort_by(|a, b| a.rank.precedence(&b.rank));
}

/// Restricts rules to requests sent to `port` (a mesh parentRef's `port`),
/// as Istio adds `match.port`.
pub(in crate::compile) fn on_port(rules: &[RankedRule], port: Option<u16>) -> Vec<RankedRule> {
    let mut out = rules.to_vec();
    if let Some(port) = port {
        for r in &mut out {
            if r.rule.matches.is_empty() {
                r.rule.matches.push(RouteMatch::default());
            }
            for m in &mut r.rule.matches {
                m.port = Some(port);
            }
        }
    }
    out
}

/// The rules of an HTTPRoute (its `spec.rules`, or the API's default: one
/// rule matching every path).
pub(in crate::compile) fn http_rules(
    rules: Option<&[HttpRouteRule]>,
    scope: &RuleScope<'_>,
    diags: &mut Diagnostics,
) -> Vec<RankedRule> {
    let default = [HttpRouteRule::default()];
    let rules = rules.unwrap_or(&default);
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        let base = RuleBase {
            name: rule_name(rule.name.as_deref(), scope, i),
            field: &field,
            filters: &rule.filters,
            backends: &rule.backend_refs,
        };
        let mut template = base.compile(scope, diags);
        timeouts_and_retry(rule, &mut template.policy, scope, &field, diags);
        let default_match = [HttpRouteMatch::default()];
        let matches = rule.matches.as_deref().unwrap_or(&default_match);
        for (j, m) in matches.iter().enumerate() {
            let (compiled, prefix, path_len) =
                http_match(m, scope, &format!("{field}.matches[{j}]"), diags);
            let mut rule = template.clone();
            if let Some(rewrite) = base.rewrite(prefix.as_deref()) {
                rule.policy.rewrite = Some(rewrite);
            }
            if let RouteAction::Redirect(redirect) = &mut rule.policy.action {
                redirect.uri_regex = base.redirect_prefix(prefix.as_deref());
            }
            rule.matches = vec![compiled];
            out.push(RankedRule {
                rank: Rank::of(rule.matches.first(), path_len),
                rule,
            });
        }
    }
    out
}

/// The rules of a GRPCRoute.
pub(in crate::compile) fn grpc_rules(
    rules: &[GrpcRouteRule],
    scope: &RuleScope<'_>,
    diags: &mut Diagnostics,
) -> Vec<RankedRule> {
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        let base = RuleBase {
            name: rule_name(rule.name.as_deref(), scope, i),
            field: &field,
            filters: &rule.filters,
            backends: &rule.backend_refs,
        };
        let template = base.compile(scope, diags);
        if rule.matches.is_empty() {
            out.push(RankedRule {
                rank: Rank::of(None, 0),
                rule: template,
            });
            continue;
        }
        for (j, m) in rule.matches.iter().enumerate() {
            let f = format!("{field}.matches[{j}]");
            let mut compiled = RouteMatch::default();
            let mut path_len = 0;
            if let Some(method) = &m.method {
                let (uri, len) = grpc_path(
                    method.r#type.as_deref(),
                    method.service.as_deref(),
                    method.method.as_deref(),
                );
                path_len = len;
                compiled.uri = matcher_or_warn(uri, scope, format!("{f}.method"), diags);
            }
            compiled.headers = header_conditions(&m.headers, scope, &format!("{f}.headers"), diags);
            let mut rule = template.clone();
            rule.matches = vec![compiled];
            out.push(RankedRule {
                rank: Rank::of(rule.matches.first(), path_len),
                rule,
            });
        }
    }
    out
}

/// Istio's name for a rule without one: `namespace.route.index`.
fn rule_name(name: Option<&str>, scope: &RuleScope<'_>, index: usize) -> Option<Arc<str>> {
    Some(Arc::from(match name {
        Some(name) => name.to_owned(),
        None => format!("{}.{}.{index}", scope.namespace, scope.name),
    }))
}

/// What the rules of both kinds share: name, filters, backends.
struct RuleBase<'a> {
    name: Option<Arc<str>>,
    field: &'a str,
    filters: &'a [HttpRouteFilter],
    backends: &'a [HttpBackendRef],
}

/// A path condition's text, for a compiled matcher or an error.
enum PathPattern {
    Exact(String),
    Prefix(String),
    Regex(String),
}

impl RuleBase<'_> {
    /// The rule without matches: destinations, header edits, redirect,
    /// mirrors (rewrites depend on the match; see [`Self::rewrite`]).
    fn compile(&self, scope: &RuleScope<'_>, diags: &mut Diagnostics) -> HttpRule {
        let mut request_headers = HeaderEdits::default();
        let mut response_headers = HeaderEdits::default();
        let mut redirect = None;
        let mut mirrors = Vec::new();
        let mut unresolvable = false;
        for (i, flt) in self.filters.iter().enumerate() {
            let f = format!("{}.filters[{i}]", self.field);
            match flt.r#type.as_str() {
                "RequestHeaderModifier" => {
                    if let Some(m) = &flt.request_header_modifier {
                        request_headers = header_edits(m, scope, &f, diags);
                    }
                }
                "ResponseHeaderModifier" => {
                    if let Some(m) = &flt.response_header_modifier {
                        response_headers = header_edits(m, scope, &f, diags);
                    }
                }
                "RequestRedirect" => {
                    if let Some(r) = &flt.request_redirect {
                        redirect = Some(Redirect {
                            uri: r.path.as_ref().and_then(|p| p.replace_full_path.clone()),
                            uri_regex: None,
                            authority: r.hostname.clone(),
                            port: r.port.and_then(|p| u16::try_from(p).ok()),
                            scheme: r.scheme.clone(),
                            // "When empty, the port of the request is used";
                            // with a scheme, the scheme's well-known port.
                            port_from_request: r.port.is_none() && r.scheme.is_none(),
                            keep_request_port: false,
                            code: r
                                .status_code
                                .and_then(|c| StatusCode::from_u16(c as u16).ok())
                                .unwrap_or(StatusCode::FOUND),
                        });
                    }
                }
                "RequestMirror" => {
                    let Some(m) = &flt.request_mirror else {
                        continue;
                    };
                    let percent = match (&m.fraction, m.percent) {
                        (Some(fr), _) => {
                            100.0 * fr.numerator as f64
                                / fr.denominator.unwrap_or(100).max(1) as f64
                        }
                        (None, Some(p)) => p as f64,
                        (None, None) => 100.0,
                    };
                    match resolve(&m.backend_ref, scope) {
                        Ok(target) => mirrors.push(Mirror {
                            target,
                            percent: percent.clamp(0.0, 100.0),
                        }),
                        Err(why) => scope.warn(
                            diags,
                            format!("{f}.requestMirror.backendRef"),
                            format!("{why}; copies are not sent"),
                        ),
                    }
                }
                "URLRewrite" => {} // per match, below
                "CORS" => scope.warn(diags, f, "accepted but not enforced yet (the HTTPRoute CORS filter is not compiled; a VirtualService corsPolicy is enforced)"),
                other => {
                    unresolvable = true;
                    scope.warn(
                        diags,
                        f,
                        format!("{other} filters are not supported; matching requests get 500, as the API requires for a filter that cannot be resolved"),
                    );
                }
            }
        }
        let (destinations, backends_field) = self.destinations(scope, diags);
        let all_invalid =
            !destinations.is_empty() && destinations.iter().all(|d| d.target.clusters.is_empty());
        let weight: u32 = destinations.iter().map(|d| d.weight).sum();
        let action = if unresolvable {
            direct(500)
        } else if let Some(r) = redirect {
            RouteAction::Redirect(r)
        } else if weight == 0 {
            direct(500)
        } else if all_invalid {
            scope.warn(
                diags,
                backends_field,
                "no backend resolves; requests get 500, as the API requires",
            );
            direct(500)
        } else {
            RouteAction::Forward
        };
        let forwards = matches!(action, RouteAction::Forward);
        let reference = format!(
            "{}:{}/{}[{}]",
            scope.kind.name(),
            scope.namespace,
            scope.name,
            self.field
        );
        HttpRule {
            name: self.name.clone(),
            reference: Some(Arc::from(super::super::routes::details_safe(&reference))),
            matches: Vec::new(),
            total_weight: if forwards { weight } else { 0 },
            destinations: if forwards { destinations } else { Vec::new() },
            request_headers,
            response_headers,
            policy: RoutePolicy {
                action,
                mirrors,
                ..RoutePolicy::default()
            },
        }
    }

    /// Weighted destinations (weight 0 dropped; a lone one takes all).
    fn destinations(
        &self,
        scope: &RuleScope<'_>,
        diags: &mut Diagnostics,
    ) -> (Vec<WeightedDestination>, String) {
        let field = format!("{}.backendRefs", self.field);
        let mut out = Vec::new();
        for (k, b) in self.backends.iter().enumerate() {
            let bf = format!("{field}[{k}]");
            let weight = b.weight.unwrap_or(1).clamp(0, 1_000_000) as u32;
            if weight == 0 {
                continue;
            }
            let target = match resolve(&b.object(), scope) {
                Ok(target) => target,
                Err(why) => {
                    scope.warn(
                        diags,
                        bf.clone(),
                        format!("{why}; its share of requests fails"),
                    );
                    crate::model::destination::DestinationTarget {
                        host: Arc::from(b.name.as_str()),
                        subset: None,
                        port: b.port.and_then(|p| u16::try_from(p).ok()),
                        clusters: Vec::new(),
                    }
                }
            };
            let mut request_headers = HeaderEdits::default();
            let mut response_headers = HeaderEdits::default();
            for (j, flt) in b.filters.iter().enumerate() {
                let f = format!("{bf}.filters[{j}]");
                match (&flt.request_header_modifier, &flt.response_header_modifier) {
                    (Some(m), _) => request_headers = header_edits(m, scope, &f, diags),
                    (_, Some(m)) => response_headers = header_edits(m, scope, &f, diags),
                    _ => scope.warn(
                        diags,
                        f,
                        format!(
                            "accepted but not enforced yet ({} on a backend; header modifiers are)",
                            flt.r#type
                        ),
                    ),
                }
            }
            out.push(WeightedDestination {
                target,
                weight,
                request_headers,
                response_headers,
                authority: None,
            });
        }
        if out.len() == 1 {
            out[0].weight = 100;
        }
        (out, field)
    }

    /// The rule's `RequestRedirect` `ReplacePrefixMatch` for a match whose
    /// path prefix is `prefix`, as a path substitution.
    fn redirect_prefix(&self, prefix: Option<&str>) -> Option<(Regex, String)> {
        let r = self
            .filters
            .iter()
            .find_map(|f| f.request_redirect.as_ref())?;
        let p = r
            .path
            .as_ref()
            .filter(|p| p.r#type == "ReplacePrefixMatch")?;
        prefix_rewrite(
            prefix.unwrap_or("/"),
            p.replace_prefix_match.as_deref().unwrap_or("/"),
        )
    }

    /// The rule's `URLRewrite` for a match whose path prefix is `prefix`.
    fn rewrite(&self, prefix: Option<&str>) -> Option<Rewrite> {
        let r = self.filters.iter().find_map(|f| f.url_rewrite.as_ref())?;
        let authority = r
            .hostname
            .as_deref()
            .and_then(|h| HeaderValue::try_from(h).ok());
        let uri_regex = r.path.as_ref().and_then(|p| match p.r#type.as_str() {
            "ReplaceFullPath" => {
                let with = p.replace_full_path.as_deref().unwrap_or("/");
                Some((Regex::new("^.*$").ok()?, literal_replacement(with)))
            }
            _ => prefix_rewrite(
                prefix.unwrap_or("/"),
                p.replace_prefix_match.as_deref().unwrap_or("/"),
            ),
        });
        Some(Rewrite {
            uri: None,
            authority,
            uri_regex,
        })
    }
}

/// `ReplacePrefixMatch` as the Gateway API defines it: the matched prefix
/// `P` (a whole number of path segments) becomes `R`, trailing slashes of
/// both ignored, and an empty result is `/` (`/foo/bar` with `/foo` → `/xyz`
/// is `/xyz/bar`; with `/foo` → `/` it is `/bar`; `/foo` with `/foo` → `/`
/// is `/`). As a whole-path regex substitution.
fn prefix_rewrite(prefix: &str, replacement: &str) -> Option<(Regex, String)> {
    let p = prefix.trim_end_matches('/');
    let r = replacement.trim_end_matches('/');
    let escaped = regex::escape(p);
    if r.is_empty() {
        Some((Regex::new(&format!("^{escaped}/?")).ok()?, "/".to_owned()))
    } else {
        Some((
            Regex::new(&format!("^{escaped}")).ok()?,
            literal_replacement(r),
        ))
    }
}

/// A replacement taken literally by the regex crate (`$` escaped).
fn literal_replacement(with: &str) -> String {
    with.replace('$', "$$")
}

fn direct(status: u16) -> RouteAction {
    RouteAction::Direct(DirectResponse {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body: Bytes::new(),
    })
}

/// A backend reference → its target in the registry, or why it has none.
fn resolve(
    b: &crate::config::gateway_api::BackendObjectReference,
    scope: &RuleScope<'_>,
) -> Result<crate::model::destination::DestinationTarget, String> {
    let (host, port) = backend(b, (scope.kind, scope.namespace), scope.grants)?;
    let target = scope.registry.target(&host, None, Some(port));
    if target.clusters.is_empty() {
        return Err(scope.registry.missing(&host));
    }
    if !target.clusters.iter().any(|c| c.port == port) {
        return Err(format!("{host} has no port {port}"));
    }
    Ok(target)
}

fn timeouts_and_retry(
    rule: &HttpRouteRule,
    policy: &mut RoutePolicy,
    scope: &RuleScope<'_>,
    field: &str,
    diags: &mut Diagnostics,
) {
    if let Some(retry) = &rule.retry {
        let mut on = RetryOn::CONNECT_FAILURE;
        for c in [
            RetryOn::REFUSED_STREAM,
            RetryOn::GRPC_UNAVAILABLE,
            RetryOn::GRPC_CANCELLED,
        ] {
            on.insert(c);
        }
        if !retry.codes.is_empty() {
            on.insert(RetryOn::RETRIABLE_STATUS_CODES);
        }
        let backoff = retry.backoff.as_deref().and_then(parse_duration);
        policy.retry = RetryPolicy {
            attempts: retry.attempts.unwrap_or(2).clamp(0, i64::from(u32::MAX)) as u32,
            per_try_timeout: None,
            on,
            status_codes: retry
                .codes
                .iter()
                .filter_map(|c| u16::try_from(*c).ok())
                .collect(),
            backoff: backoff.map_or(DEFAULT_BACKOFF, |b| b.max(Duration::from_millis(1))),
            ignore_previous_hosts: false,
        };
    }
    let Some(t) = &rule.timeouts else { return };
    let parse = |d: &Option<String>, name: &str, diags: &mut Diagnostics| {
        let d = d.as_deref()?;
        let parsed = parse_duration(d);
        if parsed.is_none() {
            scope.warn(
                diags,
                format!("{field}.timeouts.{name}"),
                format!("{d:?} is not a duration; ignored"),
            );
        }
        parsed.filter(|d| !d.is_zero())
    };
    if let Some(request) = parse(&t.request, "request", diags) {
        policy.timeout = Some(request);
    }
    if let Some(backend) = parse(&t.backend_request, "backendRequest", diags) {
        // As Istio: each attempt's timeout when retries are configured,
        // else the route's.
        if rule.retry.is_some() {
            policy.retry.per_try_timeout = Some(backend);
        } else {
            policy.timeout = Some(backend);
        }
    }
}

/// One HTTPRoute match → the compiled condition, the path prefix it
/// matches by (for `ReplacePrefixMatch`), and the path's length (its rank).
fn http_match(
    m: &HttpRouteMatch,
    scope: &RuleScope<'_>,
    field: &str,
    diags: &mut Diagnostics,
) -> (RouteMatch, Option<String>, usize) {
    let path_type = m
        .path
        .as_ref()
        .and_then(|p| p.r#type.as_deref())
        .unwrap_or("PathPrefix");
    let value = m
        .path
        .as_ref()
        .and_then(|p| p.value.as_deref())
        .unwrap_or("/");
    let (pattern, prefix) = match path_type {
        "Exact" => (PathPattern::Exact(value.to_owned()), None),
        "RegularExpression" => (PathPattern::Regex(value.to_owned()), None),
        _ => {
            // "When specified, a trailing `/` is ignored."
            let trimmed = if value == "/" {
                value
            } else {
                value.trim_end_matches('/')
            };
            let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
            (
                PathPattern::Prefix(trimmed.to_owned()),
                Some(trimmed.to_owned()),
            )
        }
    };
    let path_len = match &pattern {
        PathPattern::Exact(s) | PathPattern::Prefix(s) | PathPattern::Regex(s) => s.len(),
    };
    let compiled = RouteMatch {
        uri: matcher_or_warn(pattern, scope, format!("{field}.path"), diags),
        method: m.method.clone().map(StrMatcher::Exact),
        headers: header_conditions(&m.headers, scope, &format!("{field}.headers"), diags),
        query_params: m
            .query_params
            .iter()
            .enumerate()
            .filter_map(|(i, q)| {
                let value = value_matcher(q, scope, format!("{field}.queryParams[{i}]"), diags)?;
                Some((q.name.clone(), value))
            })
            .collect(),
        ..RouteMatch::default()
    };
    (compiled, prefix, path_len)
}

fn matcher_or_warn(
    pattern: PathPattern,
    scope: &RuleScope<'_>,
    field: String,
    diags: &mut Diagnostics,
) -> Option<StrMatcher> {
    Some(match pattern {
        PathPattern::Exact(s) => StrMatcher::Exact(s),
        PathPattern::Prefix(s) if s == "/" => StrMatcher::Prefix(s),
        PathPattern::Prefix(s) => StrMatcher::PathSeparatedPrefix(s),
        PathPattern::Regex(s) => match anchored_regex(&s) {
            Ok(r) => StrMatcher::Regex(r),
            Err(e) => {
                diags.error(scope.loc, Some(field), format!("invalid regex: {e}"));
                return None;
            }
        },
    })
}

/// A GRPCRoute method match as a path condition (Istio's
/// `createGRPCURIMatch`), and its length.
fn grpc_path(
    kind: Option<&str>,
    service: Option<&str>,
    method: Option<&str>,
) -> (PathPattern, usize) {
    let regex = kind == Some("RegularExpression");
    let pattern = match (service, method, regex) {
        (Some(s), Some(m), false) => PathPattern::Exact(format!("/{s}/{m}")),
        (Some(s), None, false) => PathPattern::Prefix(format!("/{s}")),
        (None, Some(m), false) => PathPattern::Regex(format!("/[^/]+/{}", regex::escape(m))),
        (Some(s), Some(m), true) => PathPattern::Regex(format!("/{s}/{m}")),
        (Some(s), None, true) => PathPattern::Regex(format!("/{s}/.+")),
        (None, Some(m), true) => PathPattern::Regex(format!("/[^/]+/{m}")),
        (None, None, _) => PathPattern::Prefix("/".into()),
    };
    let len = match &pattern {
        PathPattern::Exact(s) | PathPattern::Prefix(s) | PathPattern::Regex(s) => s.len(),
    };
    (pattern, len)
}

fn header_conditions(
    list: &[HttpHeaderMatch],
    scope: &RuleScope<'_>,
    field: &str,
    diags: &mut Diagnostics,
) -> Vec<(HeaderName, StrMatcher)> {
    let mut out: Vec<(HeaderName, StrMatcher)> = Vec::new();
    for (i, h) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let Ok(name) = HeaderName::try_from(h.name.to_ascii_lowercase()) else {
            diags.error(
                scope.loc,
                Some(format!("{f}.name")),
                format!("{:?} is not a header name", h.name),
            );
            continue;
        };
        // "Subsequent entries with an equivalent header name MUST be ignored."
        if out.iter().any(|(n, _)| *n == name) {
            continue;
        }
        if let Some(value) = value_matcher(h, scope, f, diags) {
            out.push((name, value));
        }
    }
    out
}

fn value_matcher(
    h: &HttpHeaderMatch,
    scope: &RuleScope<'_>,
    field: String,
    diags: &mut Diagnostics,
) -> Option<StrMatcher> {
    match h.r#type.as_deref() {
        Some("RegularExpression") => match anchored_regex(&h.value) {
            Ok(r) => Some(StrMatcher::Regex(r)),
            Err(e) => {
                diags.error(
                    scope.loc,
                    Some(format!("{field}.value")),
                    format!("invalid regex: {e}"),
                );
                None
            }
        },
        _ => Some(StrMatcher::Exact(h.value.clone())),
    }
}

/// A header modifier → edits; a name listed twice (in any case) counts once.
fn header_edits(
    m: &HttpHeaderFilter,
    scope: &RuleScope<'_>,
    field: &str,
    diags: &mut Diagnostics,
) -> HeaderEdits {
    let mut edits = HeaderEdits::default();
    let pairs =
        |list: &[crate::config::gateway_api::HttpHeader], op: &str, diags: &mut Diagnostics| {
            let mut out: Vec<(HeaderName, HeaderValue)> = Vec::new();
            for (i, h) in list.iter().enumerate() {
                let name = HeaderName::try_from(h.name.to_ascii_lowercase());
                let value = HeaderValue::try_from(h.value.as_str());
                match (name, value) {
                    (Ok(name), Ok(value)) => {
                        if !out.iter().any(|(n, _)| *n == name) {
                            out.push((name, value));
                        }
                    }
                    _ => diags.error(
                        scope.loc,
                        Some(format!("{field}.{op}[{i}]")),
                        "not a valid header name and value",
                    ),
                }
            }
            out
        };
    edits.set = pairs(&m.set, "set", diags);
    edits.add = pairs(&m.add, "add", diags);
    edits.remove = m
        .remove
        .iter()
        .filter_map(|n| HeaderName::try_from(n.to_ascii_lowercase()).ok())
        .collect();
    edits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(prefix: &str, with: &str, path: &str) -> String {
        let (re, replacement) = prefix_rewrite(prefix, with).expect("a regex");
        re.replace(path, replacement.as_str()).into_owned()
    }

    #[test]
    fn replace_prefix_match_as_the_api_tabulates_it() {
        // The table of HTTPPathModifier.replacePrefixMatch.
        let cases = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/bar", "/", "/xyz", "/xyz/bar"),
            ("/bar", "/", "/", "/bar"),
        ];
        for (path, prefix, with, want) in cases {
            assert_eq!(
                rewrite(prefix, with, path),
                want,
                "{path} {prefix} → {with}"
            );
        }
        assert_eq!(rewrite("/a", "/cost$1", "/a/b"), "/cost$1/b");
    }

    #[test]
    fn ranks_order_exact_prefix_regex_then_length_method_headers_queries() {
        let m = |uri: Option<StrMatcher>, method: bool, headers: usize| RouteMatch {
            uri,
            method: method.then(|| StrMatcher::Exact("GET".into())),
            headers: (0..headers)
                .map(|i| {
                    (
                        HeaderName::try_from(format!("h{i}")).unwrap(),
                        StrMatcher::Present,
                    )
                })
                .collect(),
            ..RouteMatch::default()
        };
        let exact = Rank::of(Some(&m(Some(StrMatcher::Exact("/a".into())), false, 0)), 2);
        let long = Rank::of(
            Some(&m(
                Some(StrMatcher::PathSeparatedPrefix("/abc".into())),
                false,
                0,
            )),
            4,
        );
        let short = Rank::of(
            Some(&m(
                Some(StrMatcher::PathSeparatedPrefix("/ab".into())),
                false,
                0,
            )),
            3,
        );
        let method = Rank::of(
            Some(&m(
                Some(StrMatcher::PathSeparatedPrefix("/ab".into())),
                true,
                0,
            )),
            3,
        );
        let headers = Rank::of(
            Some(&m(
                Some(StrMatcher::PathSeparatedPrefix("/ab".into())),
                false,
                2,
            )),
            3,
        );
        let none = Rank::of(None, 0);
        let mut ranks = [none, short, headers, method, long, exact];
        ranks.sort_by(Rank::precedence);
        assert_eq!(ranks, [exact, long, method, headers, short, none]);
    }

    #[test]
    fn grpc_methods_become_paths() {
        let text = |p: PathPattern| match p {
            PathPattern::Exact(s) => format!("exact {s}"),
            PathPattern::Prefix(s) => format!("prefix {s}"),
            PathPattern::Regex(s) => format!("regex {s}"),
        };
        assert_eq!(
            text(grpc_path(None, Some("pkg.Svc"), Some("Get")).0),
            "exact /pkg.Svc/Get"
        );
        assert_eq!(
            text(grpc_path(None, Some("pkg.Svc"), None).0),
            "prefix /pkg.Svc"
        );
        assert_eq!(
            text(grpc_path(None, None, Some("Get")).0),
            "regex /[^/]+/Get"
        );
        assert_eq!(
            text(grpc_path(Some("RegularExpression"), Some("pkg\\..*"), None).0),
            "regex /pkg\\..*/.+"
        );
    }
}
