//! A VirtualService rule's policy fields → [`RoutePolicy`]: redirect and
//! direct response, timeout, retries, fault injection, mirrors, rewrites,
//! CORS.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use regex::Regex;

use super::registry::Registry;
use crate::config::diagnostics::{Diagnostics, Location};
use crate::config::virtual_service::{
    CorsPolicy, HeaderOperations, HttpFaultInjection, HttpRetry, HttpRoute, Percent, StringMatch,
};
use crate::host::resolve_short_name;
use crate::model::policy::{
    Abort, Cors, CorsList, DEFAULT_BACKOFF, DirectResponse, Fault, Mirror, Redirect, RetryOn,
    RetryPolicy, Rewrite, RouteAction, RoutePolicy,
};
use crate::model::route::StrMatcher;

/// Where a rule's fields are compiled.
pub(super) struct RuleScope<'a> {
    pub loc: &'a Location,
    pub field: &'a str,
    pub namespace: &'a str,
    pub registry: &'a Registry,
}

impl RuleScope<'_> {
    fn error(&self, diags: &mut Diagnostics, sub: &str, msg: impl Into<String>) {
        diags.error(self.loc, Some(format!("{}.{sub}", self.field)), msg);
    }

    fn warn(&self, diags: &mut Diagnostics, sub: &str, msg: impl Into<String>) {
        diags.warn(self.loc, Some(format!("{}.{sub}", self.field)), msg);
    }
}

pub(super) fn compile(
    rule: &HttpRoute,
    scope: &RuleScope<'_>,
    diags: &mut Diagnostics,
) -> RoutePolicy {
    RoutePolicy {
        action: action(rule),
        timeout: rule.timeout.map(|t| t.get()).filter(|t| !t.is_zero()),
        retry: rule
            .retries
            .as_ref()
            .map_or_else(RetryPolicy::istio_default, |r| retry(r, scope, diags)),
        fault: rule.fault.as_ref().map(|f| fault(f, scope, diags)),
        mirrors: mirrors(rule, scope, diags),
        rewrite: rewrite(rule),
        cors: rule
            .cors_policy
            .as_ref()
            .map(|c| Box::new(cors(c, scope, diags))),
    }
}

/// The rule's action. The validator refused what it would have to guess
/// at: a non-3xx redirect code, an unknown `derivePort`, a status outside
/// 200-599, a body both `string` and `bytes` or not base64, and more than one
/// of `route`, `redirect`, `directResponse`.
fn action(rule: &HttpRoute) -> RouteAction {
    if let Some(r) = &rule.redirect {
        let code = r
            .redirect_code
            .and_then(|code| StatusCode::from_u16(code as u16).ok())
            .unwrap_or(StatusCode::MOVED_PERMANENTLY);
        return RouteAction::Redirect(Redirect {
            uri: r.uri.clone(),
            uri_regex: None,
            authority: r.authority.clone(),
            port: r.port.map(|p| p as u16),
            scheme: r.scheme.clone(),
            // Without an authority the client's host is kept with its port
            // (Envoy keeps the Host header), whatever derivePort says.
            port_from_request: r.derive_port.as_deref() == Some("FROM_REQUEST_PORT")
                || r.authority.is_none(),
            keep_request_port: false,
            code,
        });
    }
    if let Some(d) = &rule.direct_response {
        let status = StatusCode::from_u16(d.status as u16).unwrap_or(StatusCode::OK);
        let body = match d.body.as_ref().map(|b| (&b.string, &b.bytes)) {
            Some((Some(s), _)) => Bytes::from(s.clone()),
            Some((None, Some(b64))) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map(Bytes::from)
                    .unwrap_or_default()
            }
            _ => Bytes::new(),
        };
        return RouteAction::Direct(DirectResponse { status, body });
    }
    RouteAction::Forward
}

fn retry(r: &HttpRetry, scope: &RuleScope<'_>, diags: &mut Diagnostics) -> RetryPolicy {
    let mut on = RetryOn::default();
    let mut status_codes = Vec::new();
    let conditions = r
        .retry_on
        .as_deref()
        .unwrap_or("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes");
    for condition in conditions
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        if let Ok(code) = condition.parse::<u16>() {
            // Istio turns numbers in retryOn into retriable status codes.
            status_codes.push(code);
            on.insert(RetryOn::RETRIABLE_STATUS_CODES);
        } else if let Some(c) = RetryOn::parse(condition) {
            on.insert(c);
        } else {
            scope.error(
                diags,
                "retries.retryOn",
                format!("unknown retry condition {condition:?}"),
            );
        }
    }
    RetryPolicy {
        attempts: r.attempts.max(0) as u32,
        per_try_timeout: r.per_try_timeout.map(|t| t.get()).filter(|t| !t.is_zero()),
        on,
        status_codes,
        backoff: r
            .backoff
            .map_or(DEFAULT_BACKOFF, |b| b.get().max(Duration::from_millis(1))),
        ignore_previous_hosts: r.retry_ignore_previous_hosts == Some(true),
    }
}

/// A percentage as written (`percentage`, else the legacy integer), or
/// `unset` when neither is; the validator refused values outside 0-100.
fn percent(value: Option<&Percent>, legacy: Option<u32>, unset: f64) -> f64 {
    let pct = value
        .map(|p| p.value)
        .or(legacy.map(f64::from))
        .unwrap_or(unset);
    pct.clamp(0.0, 100.0)
}

/// The rule's faults. The validator refused out-of-range percentages and
/// statuses, unknown gRPC names, `http2Error`, `exponentialDelay`, a delay
/// without `fixedDelay` and an abort with more than one error type; an abort
/// with none, which Istio only warns about, is refused here.
fn fault(f: &HttpFaultInjection, scope: &RuleScope<'_>, diags: &mut Diagnostics) -> Fault {
    // A fault without a percentage injects nothing: Istio renders Envoy's
    // fault filter with none (abort) or 0 (delay), and its API says so. It
    // is warned: a rule that never fires is rarely what was meant.
    let never = |part: &str, diags: &mut Diagnostics| {
        scope.warn(
            diags,
            &format!("fault.{part}"),
            "no percentage: no request is affected (as in Istio); set percentage.value: 100 for every request",
        );
    };
    let delay = f.delay.as_ref().and_then(|d| {
        if d.percentage.is_none() && d.percent.is_none() {
            never("delay", diags);
        }
        let pct = percent(d.percentage.as_ref(), d.percent, 0.0);
        d.fixed_delay.map(|delay| (delay.get(), pct))
    });
    let abort = f.abort.as_ref().and_then(|a| {
        if a.percentage.is_none() {
            never("abort", diags);
        }
        let pct = percent(a.percentage.as_ref(), None, 0.0);
        let abort = match (a.http_status, &a.grpc_status) {
            (Some(code), _) => StatusCode::from_u16(code as u16).ok().map(Abort::Http),
            (None, Some(name)) => grpc_code(name).map(Abort::Grpc),
            (None, None) => {
                scope.error(
                    diags,
                    "fault.abort",
                    "set exactly one of httpStatus, grpcStatus",
                );
                None
            }
        };
        abort.map(|a| (a, pct))
    });
    Fault { delay, abort }
}

/// gRPC status names → codes.
pub(super) fn grpc_code(name: &str) -> Option<u16> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .map(|i| i as u16)
        .or_else(|| name.parse().ok())
}

fn mirrors(rule: &HttpRoute, scope: &RuleScope<'_>, diags: &mut Diagnostics) -> Vec<Mirror> {
    let mut out = Vec::new();
    let mut add = |dest: &crate::config::virtual_service::Destination,
                   pct: f64,
                   field: &str,
                   diags: &mut Diagnostics| {
        let host = resolve_short_name(&dest.host, scope.namespace);
        let port = dest.port.as_ref().map(|p| p.number as u16);
        let target = scope.registry.target(&host, dest.subset.as_deref(), port);
        if target.clusters.is_empty() {
            let msg =
                format!("no ServiceEntry (or subset) for mirror host {host}; copies are not sent");
            diags.warn(scope.loc, Some(format!("{}.{field}", scope.field)), msg);
        }
        out.push(Mirror {
            target,
            percent: pct,
        });
    };
    if let Some(dest) = &rule.mirror {
        let pct = percent(rule.mirror_percentage.as_ref(), rule.mirror_percent, 100.0);
        add(dest, pct, "mirror", diags);
    }
    for (i, m) in rule.mirrors.iter().enumerate() {
        let pct = percent(m.percentage.as_ref(), None, 100.0);
        add(&m.destination, pct, &format!("mirrors[{i}]"), diags);
    }
    out
}

/// The rule's rewrite; the validator refused `uri` with `uriRegexRewrite`,
/// an authority that is no header value and a pattern that is no regex.
/// `Host` or `:authority` in the rule's `headers.request` `set`/`add` is an
/// authority rewrite too (the validator allowed one of the two places).
fn rewrite(rule: &HttpRoute) -> Option<Rewrite> {
    let from_headers = rule
        .headers
        .as_ref()
        .and_then(|h| h.request.as_ref())
        .and_then(HeaderOperations::authority);
    let r = rule.rewrite.as_ref();
    if r.is_none() && from_headers.is_none() {
        return None;
    }
    let authority = r
        .and_then(|r| r.authority.as_deref())
        .or(from_headers)
        .and_then(|a| HeaderValue::try_from(a).ok());
    let uri_regex = r.and_then(|r| r.uri_regex_rewrite.as_ref()).and_then(|rr| {
        Regex::new(&rr.pattern)
            .ok()
            .map(|re| (re, re2_replacement(&rr.rewrite)))
    });
    Some(Rewrite {
        uri: r.and_then(|r| r.uri.clone()),
        authority,
        uri_regex,
    })
}

/// The rule's CORS policy, as Istio renders it for Envoy's cors filter
/// (`TranslateCORSPolicy`): `allowOrigins` when it lists any, else the
/// deprecated `allowOrigin` as exact matches; the lists joined with `,`;
/// `maxAge` in seconds. The validator refused a match with none or several
/// of `exact`/`prefix`/`regex`, an empty prefix, a regex that is no RE2
/// regex, unknown methods, header names that are none, and a `maxAge` with
/// a fraction of a second.
fn cors(c: &CorsPolicy, scope: &RuleScope<'_>, diags: &mut Diagnostics) -> Cors {
    let origins: Vec<StrMatcher> = if c.allow_origins.is_empty() {
        c.allow_origin
            .iter()
            .map(|o| StrMatcher::Exact(o.clone()))
            .collect()
    } else {
        c.allow_origins
            .iter()
            .enumerate()
            .filter_map(|(i, m)| origin_matcher(m, i, scope, diags))
            .collect()
    };
    // Envoy's filter allows every origin when a matcher matches `*` itself.
    let any_origin = origins.iter().any(|m| m.matches("*"));
    let joined = |list: &[String], sub: &str, diags: &mut Diagnostics| {
        if list.is_empty() {
            return None;
        }
        let value = list.join(",");
        match HeaderValue::try_from(value) {
            Ok(value) => Some(value),
            Err(_) => {
                scope.error(diags, sub, "not a header value once joined with `,`");
                None
            }
        }
    };
    // `*` alone is read by Envoy as "what the preflight asks for".
    let listed = |value: Option<HeaderValue>| {
        value.map(|v| match v.as_bytes() {
            b"*" => CorsList::EchoRequest,
            _ => CorsList::Listed(v),
        })
    };
    Cors {
        origins,
        any_origin,
        allow_methods: listed(joined(&c.allow_methods, "corsPolicy.allowMethods", diags)),
        allow_headers: listed(joined(&c.allow_headers, "corsPolicy.allowHeaders", diags)),
        expose_headers: joined(&c.expose_headers, "corsPolicy.exposeHeaders", diags),
        max_age: c.max_age.map(|age| HeaderValue::from(age.get().as_secs())),
        allow_credentials: c.allow_credentials == Some(true),
        forward_unmatched_preflights: c.unmatched_preflights.as_deref() != Some("IGNORE"),
    }
}

/// One `allowOrigins` entry; `None` for one without a match (Istio drops it).
fn origin_matcher(
    m: &StringMatch,
    i: usize,
    scope: &RuleScope<'_>,
    diags: &mut Diagnostics,
) -> Option<StrMatcher> {
    if let Some(exact) = &m.exact {
        return Some(StrMatcher::Exact(exact.clone()));
    }
    if let Some(prefix) = &m.prefix {
        return Some(StrMatcher::Prefix(prefix.clone()));
    }
    let pattern = m.regex.as_deref()?;
    match super::routes::anchored_regex(pattern) {
        Ok(regex) => Some(StrMatcher::Regex(regex)),
        Err(err) => {
            let sub = format!("corsPolicy.allowOrigins[{i}].regex");
            scope.error(diags, &sub, format!("invalid regex: {err}"));
            None
        }
    }
}

/// RE2 replacement syntax (`\1`) → the regex crate's (`${1}`), with literal
/// `$` escaped.
fn re2_replacement(rewrite: &str) -> String {
    let mut out = String::with_capacity(rewrite.len());
    let mut chars = rewrite.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push_str("${");
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    out.push(d);
                }
                out.push('}');
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re2_groups_become_regex_crate_groups() {
        assert_eq!(re2_replacement("/v2/\\1/x\\12"), "/v2/${1}/x${12}");
        assert_eq!(re2_replacement("$cost"), "$$cost");
    }

    const CORS_CONFIG: &str = r#"
apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: p, namespace: default}
spec: {service: p, inbound: {app: "127.0.0.1:9080"}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.1.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: full
    route: [{destination: {host: reviews}}]
    corsPolicy:
      allowOrigins: [{exact: https://a.example}, {prefix: https://p.}, {regex: 'https://r[0-9]+'}]
      allowMethods: [GET, POST]
      allowHeaders: [x-h1, X-H2]
      exposeHeaders: [x-e, x-f]
      maxAge: 90s
      allowCredentials: true
      unmatchedPreflights: IGNORE
  - name: star
    route: [{destination: {host: reviews}}]
    corsPolicy:
      allowOrigins: [{regex: '.*'}]
      allowMethods: ['*']
      allowHeaders: ['*']
      allowCredentials: false
  - name: legacy
    route: [{destination: {host: reviews}}]
    corsPolicy: {allowOrigin: [https://old.example]}
  - name: none
    route: [{destination: {host: reviews}}]
"#;

    #[test]
    fn cors_policies_compile_as_istio_renders_them() {
        let file = std::sync::Arc::from("cors.yaml");
        let live = crate::model::live::LiveState::default();
        let compiled = match crate::compile::compile_text(&file, CORS_CONFIG, 1, &live) {
            Ok(compiled) => compiled,
            Err(rejected) => panic!("{rejected}"),
        };
        let warnings = format!("{:?}", compiled.diagnostics);
        let vhost = compiled.snapshot.routes.find("reviews").expect("the host");
        let cors: Vec<_> = vhost
            .rules
            .iter()
            .map(|r| r.policy.cors.as_deref())
            .collect();
        let [Some(full), Some(star), Some(legacy), None] = cors[..] else {
            panic!("{cors:?}");
        };

        assert_eq!(full.origins.len(), 3);
        assert!(full.origins[0].matches("https://a.example"));
        assert!(full.origins[1].matches("https://p.x"));
        assert!(full.origins[2].matches("https://r1"));
        assert!(!full.origins[2].matches("https://r1x"), "the whole origin");
        assert!(!full.any_origin);
        let listed = |v: &'static str| Some(CorsList::Listed(HeaderValue::from_static(v)));
        assert_eq!(full.allow_methods, listed("GET,POST"));
        assert_eq!(full.allow_headers, listed("x-h1,X-H2"));
        assert_eq!(
            full.expose_headers,
            Some(HeaderValue::from_static("x-e,x-f"))
        );
        assert_eq!(full.max_age, Some(HeaderValue::from_static("90")));
        assert!(full.allow_credentials);
        assert!(!full.forward_unmatched_preflights);

        assert!(star.any_origin, "a regex that matches `*` allows all");
        assert_eq!(star.allow_methods, Some(CorsList::EchoRequest));
        assert_eq!(star.allow_headers, Some(CorsList::EchoRequest));
        assert_eq!(star.expose_headers, None);
        assert_eq!(star.max_age, None);
        assert!(!star.allow_credentials);
        assert!(star.forward_unmatched_preflights, "FORWARD by default");

        assert!(legacy.origins[0].matches("https://old.example"));
        assert!(!legacy.origins[0].matches("https://old.example.evil"));
        assert_eq!(legacy.allow_methods, None);

        // Enforced: only the deprecated field is warned about.
        assert!(!warnings.contains("not enforced"), "{warnings}");
        assert!(warnings.contains("allowOrigin"), "{warnings}");
    }

    #[test]
    fn grpc_names_map_to_codes() {
        assert_eq!(grpc_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_code("not_found"), Some(5));
        assert_eq!(grpc_code("BOGUS"), None);
    }
}
