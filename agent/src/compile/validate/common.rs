//! Checks shared by several kinds: host names, ports, protocols, label
//! selectors, `exportTo`, header names, regexes, percentages — Istio's
//! `pkg/config/validation` rules, with messages that say what to write.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::config::diagnostics::{Diagnostics, Location};
use crate::config::duration::IstioDuration;
use crate::config::meta::{Percent, PolicyTargetReference, WorkloadSelector};
use crate::model::authz::Cidr;

/// Findings about one resource.
pub(super) struct Check<'a> {
    pub loc: &'a Location,
    pub diags: &'a mut Diagnostics,
}

impl Check<'_> {
    pub fn error(&mut self, field: impl Into<String>, msg: impl Into<String>) {
        self.diags.error(self.loc, Some(field.into()), msg);
    }

    pub fn warn(&mut self, field: impl Into<String>, msg: impl Into<String>) {
        self.diags.warn(self.loc, Some(field.into()), msg);
    }
}

/// Istio's protocol names (case-insensitive).
pub(super) const PROTOCOLS: &[&str] = &[
    "HTTP",
    "HTTPS",
    "GRPC",
    "GRPC-WEB",
    "HTTP2",
    "HTTP_PROXY",
    "MONGO",
    "MYSQL",
    "REDIS",
    "TCP",
    "TLS",
    "UDP",
];

pub(super) fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS name whose first label may be `*` (`*.example.com`, `*`), as
/// Istio's `ValidateWildcardDomain`; upper case is accepted (hosts are
/// compared case-insensitively).
pub(super) fn wildcard_domain_error(host: &str) -> Option<String> {
    if host.is_empty() {
        return Some("a host name is required".into());
    }
    if host.len() > 255 {
        return Some(format!("{host:?} is longer than 255 characters"));
    }
    let rest = match host.strip_prefix('*') {
        Some("") => return None,
        Some(rest) => match rest.strip_prefix('.') {
            Some(rest) => rest,
            None => {
                return Some(format!(
                    "{host:?}: a wildcard must be a whole first label (`*.example.com`)"
                ));
            }
        },
        None => host,
    };
    let rest = rest.strip_suffix('.').unwrap_or(rest);
    for label in rest.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Some(format!(
                "{host:?} is not a valid host name (DNS labels of letters, digits and `-`, optionally `*.` first)"
            ));
        }
    }
    None
}

pub(super) fn port_number(c: &mut Check<'_>, field: &str, number: u32) {
    if !(1..=65535).contains(&number) {
        c.error(
            field,
            format!("port number {number} must be between 1 and 65535"),
        );
    }
}

/// A port's `protocol`: one of Istio's, or empty — left out, as Istio's
/// `ValidateProtocol` allows it: the protocol is detected from the
/// client's first bytes.
pub(super) fn protocol(c: &mut Check<'_>, field: &str, protocol: &str) {
    if !protocol.is_empty() && !PROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(protocol)) {
        c.error(
            field,
            format!(
                "unsupported protocol {protocol:?} (one of {})",
                PROTOCOLS.join(", ")
            ),
        );
    }
}

pub(super) fn port_name(c: &mut Check<'_>, field: &str, name: &str) {
    if !name.is_empty() && !is_dns1123_label(name) {
        c.error(
            field,
            format!("port name {name:?} must be a DNS label (lower case letters, digits, `-`)"),
        );
    }
}

/// `labels`/`matchLabels` of a selector: no empty keys, no wildcards.
pub(super) fn selector_labels(c: &mut Check<'_>, field: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        if k.is_empty() {
            c.error(
                field,
                format!("empty key is not supported in selector: \"{k}={v}\""),
            );
        } else if k.contains('*') || v.contains('*') {
            c.error(
                format!("{field}.{k}"),
                format!(
                    "wildcard is not supported in selector: \"{k}={v}\"; list the labels to match"
                ),
            );
        }
    }
}

pub(super) fn selector(c: &mut Check<'_>, field: &str, selector: &WorkloadSelector) {
    if selector.match_labels.is_empty() {
        c.warn(
            field,
            "workload selector specified without labels: it selects every workload",
        );
    }
    selector_labels(c, &format!("{field}.matchLabels"), &selector.match_labels);
}

/// `targetRef` / `targetRefs`, and that they are not combined with `selector`.
pub(super) fn target_refs(
    c: &mut Check<'_>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
    has_selector: bool,
) {
    let refs = target_ref
        .map(|r| ("spec.targetRef".to_owned(), r))
        .into_iter()
        .chain(
            target_refs
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
        );
    let mut any = false;
    for (field, r) in refs {
        any = true;
        if r.name.is_empty() {
            c.error(format!("{field}.name"), "targetRef name must be set");
        }
        if !r.namespace.is_empty() {
            c.error(
                format!("{field}.namespace"),
                "targetRef namespace must not be set; cross namespace referencing is not supported",
            );
        }
        if r.kind.is_empty() {
            c.error(
                format!("{field}.kind"),
                "targetRef kind must be set (Gateway, Service, ServiceEntry, GatewayClass)",
            );
        }
    }
    if target_ref.is_some() && !target_refs.is_empty() {
        c.error(
            "spec.targetRefs",
            "set `targetRef` or `targetRefs`, not both",
        );
    }
    if any && has_selector {
        c.error(
            "spec.selector",
            "only one of targetRefs or workloadSelector can be set",
        );
    }
}

/// `exportTo`: `.`, `*`, `~` or namespace names, once each; `*` alone.
pub(super) fn export_to(
    c: &mut Check<'_>,
    namespace: Option<&str>,
    export_to: &[String],
    service_entry: bool,
) {
    let mut seen = std::collections::HashSet::new();
    for (i, e) in export_to.iter().enumerate() {
        let field = format!("spec.exportTo[{i}]");
        let key = if e == "." {
            namespace.unwrap_or(".")
        } else {
            e.as_str()
        };
        if !seen.insert(key.to_owned()) {
            c.error(&field, format!("duplicate entries in exportTo: {e}"));
        }
        if !(matches!(e.as_str(), "." | "*" | "~") || is_dns1123_label(e)) {
            c.error(
                &field,
                format!(
                    "{e:?} is not a namespace name, `.` (this namespace), `*` (all) or `~` (none)"
                ),
            );
        }
        if e == "~" && !service_entry {
            c.error(
                &field,
                "`~` (export to no one) is only supported on ServiceEntries",
            );
        }
    }
    if export_to.len() > 1 && export_to.iter().any(|e| e == "*") {
        c.error(
            "spec.exportTo",
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
    if export_to.len() > 1 && export_to.iter().any(|e| e == "~") {
        c.error("spec.exportTo", "cannot export to no one (~) and someone");
    }
}

/// An HTTP header name as Envoy accepts it.
pub(super) fn header_name(c: &mut Check<'_>, field: &str, name: &str) -> bool {
    if name.is_empty() {
        c.error(field, "header name cannot be empty");
        return false;
    }
    if http::HeaderName::try_from(name.to_ascii_lowercase()).is_err() {
        c.error(field, format!("{name:?} is not a valid header name"));
        return false;
    }
    true
}

/// A header a route edits: never a pseudo-header, never `Host` (use
/// `rewrite.authority`).
pub(super) fn header_operation_name(c: &mut Check<'_>, field: &str, name: &str) {
    if name.starts_with(':') {
        c.error(
            field,
            format!("invalid header {name:?}: header cannot have \":\" prefix"),
        );
    } else if name.eq_ignore_ascii_case("host") {
        c.error(
            field,
            format!("invalid header {name:?}: cannot set Host header; use `rewrite.authority`"),
        );
    } else {
        header_name(c, field, name);
    }
}

/// What an invalid header value is told: never the value itself (a
/// header value is often a credential, and errors go to logs).
pub const INVALID_HEADER_VALUE: &str = "is not a valid header value (a control character or a line break; the value is not repeated here)";

/// A header value; the error never repeats it ([`INVALID_HEADER_VALUE`]).
pub(super) fn header_value(c: &mut Check<'_>, field: &str, value: &str) {
    if http::HeaderValue::try_from(value).is_err() {
        c.error(field, INVALID_HEADER_VALUE);
    }
}

/// An RE2 pattern (the `regex` crate's syntax is RE2's), at most 1024 bytes.
pub(super) fn regex(c: &mut Check<'_>, field: &str, pattern: &str) {
    if pattern.is_empty() {
        c.error(field, "regex string match should not be empty");
    } else if pattern.len() > 1024 {
        c.error(field, "regex is too large, max length allowed is 1024");
    } else if let Err(err) = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
    {
        let err = err.to_string().replace('\n', " ");
        c.error(
            field,
            format!("invalid regex: {err}; Istio uses RE2 syntax"),
        );
    }
}

/// `Percent`: 0, or 0.0001 to 100.
pub(super) fn percent(c: &mut Check<'_>, field: &str, p: Option<&Percent>) {
    if let Some(p) = p
        && !(p.value == 0.0 || (0.0001..=100.0).contains(&p.value))
    {
        c.error(
            field,
            format!(
                "percentage {} is neither 0.0, nor in range [0.0001, 100.0]",
                p.value
            ),
        );
    }
}

/// A duration Envoy can use: at least 1ms.
pub(super) fn duration_at_least_1ms(c: &mut Check<'_>, field: &str, d: Option<IstioDuration>) {
    if let Some(d) = d
        && d.get() < std::time::Duration::from_millis(1)
    {
        c.error(field, format!("duration {d} must be at least 1ms"));
    }
}

/// A timeout that `0s` turns off: zero, or at least 1ms (Istio's
/// `connectionPool.tcp.idleTimeout`, istio/istio#55409): anything between
/// would round to 0 in Envoy's milliseconds and turn it off unasked.
pub(super) fn duration_zero_or_at_least_1ms(
    c: &mut Check<'_>,
    field: &str,
    d: Option<IstioDuration>,
) {
    if d.is_some_and(|d| !d.get().is_zero()) {
        duration_at_least_1ms(c, field, d);
    }
}

/// An AuthorizationPolicy address: an IP or CIDR, warned when it is an
/// IPv4-mapped IPv6 one (`::ffff:10.0.0.1`), which never matches: a peer
/// connecting over IPv4 to a dual-stack listener is matched as IPv4, as
/// Envoy matches it.
pub(super) fn peer_ip_or_cidr(c: &mut Check<'_>, field: &str, value: &str) {
    ip_or_cidr(c, field, value);
    let (address, prefix) = match value.split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().ok()),
        None => (value, None),
    };
    if let Ok(std::net::IpAddr::V6(v6)) = address.parse::<std::net::IpAddr>()
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        let instead = match prefix {
            Some(p) if p >= 96 => format!("{v4}/{}", p - 96),
            _ => v4.to_string(),
        };
        c.warn(
            field,
            format!("{value:?} is an IPv4-mapped IPv6 address and never matches: IPv4 addresses are matched as IPv4; write {instead:?}"),
        );
    }
}

pub(super) fn ip_or_cidr(c: &mut Check<'_>, field: &str, value: &str) {
    if Cidr::parse(value).is_none() {
        c.error(
            field,
            format!("{value:?} is not an IP address or CIDR block (`10.0.0.0/8`, `2001:db8::/32`)"),
        );
    }
}

pub(super) fn is_ip(value: &str) -> bool {
    value.parse::<IpAddr>().is_ok()
}

/// `namespace/name` or `name` of a gateway; `mesh` for sidecars.
pub(super) fn gateway_names(c: &mut Check<'_>, field: &str, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let (ns, gw) = name.split_once('/').unwrap_or(("", name.as_str()));
        if gw.is_empty() || (name.contains('/') && ns.is_empty()) {
            c.error(&field, "config namespace and gateway name cannot be empty");
        } else if !ns.is_empty() && !is_dns1123_label(ns) {
            c.error(&field, format!("invalid value for namespace: {ns:?}"));
        } else if wildcard_domain_error(gw).is_some() || gw.contains('*') {
            c.error(&field, format!("invalid value for gateway name: {gw:?}"));
        }
    }
}
