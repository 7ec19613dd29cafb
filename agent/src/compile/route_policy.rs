//! A VirtualService rule's policy fields → [`RoutePolicy`]: redirect and
//! direct response, timeout, retries, fault injection, mirrors, rewrites.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use regex::Regex;

use super::registry::Registry;
use crate::config::diagnostics::{Diagnostics, Location};
use crate::config::virtual_service::{
    HeaderOperations, HttpFaultInjection, HttpRetry, HttpRoute, Percent,
};
use crate::host::resolve_short_name;
use crate::model::policy::{
    Abort, DEFAULT_BACKOFF, DirectResponse, Fault, Mirror, Redirect, RetryOn, RetryPolicy, Rewrite,
    RouteAction, RoutePolicy,
};

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

    #[test]
    fn grpc_names_map_to_codes() {
        assert_eq!(grpc_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_code("not_found"), Some(5));
        assert_eq!(grpc_code("BOGUS"), None);
    }
}
