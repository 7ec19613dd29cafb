//! The Kubernetes Gateway API's rules: what its CRDs' schemas and CEL
//! validations refuse (what `kubectl apply` would print) is an error here,
//! with the CRD's own message. Kinds: GatewayClass, Gateway, HTTPRoute,
//! GRPCRoute, ReferenceGrant.

use std::collections::HashSet;

use super::common::{self, Check};
use crate::config::documents::Document;
use crate::config::gateway_api::{
    BackendObjectReference, GatewayClassSpec, GatewaySpec, GrpcRouteSpec, HttpBackendRef,
    HttpHeaderFilter, HttpHeaderMatch, HttpPathModifier, HttpRouteFilter, HttpRouteMatch,
    HttpRouteSpec, ParentReference, ReferenceGrantSpec, parse_duration,
};

/// `HTTPMethod` of the API.
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Filter types of HTTPRoute rules and backends.
const HTTP_FILTERS: &[&str] = &[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "RequestRedirect",
    "URLRewrite",
    "ExtensionRef",
    "CORS",
    "ExternalAuth",
];

/// Filter types of GRPCRoute rules and backends.
const GRPC_FILTERS: &[&str] = &[
    "ResponseHeaderModifier",
    "RequestHeaderModifier",
    "RequestMirror",
    "ExtensionRef",
];

pub(super) fn gateway_class(c: &mut Check<'_>, doc: &Document<GatewayClassSpec>) {
    let name = &doc.spec.controller_name;
    let valid = name.len() <= 253
        && name.split_once('/').is_some_and(|(domain, path)| {
            is_subdomain(domain)
                && !path.is_empty()
                && path
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/-._~%!$&'()*+,;=:".contains(&b))
        });
    if !valid {
        c.error(
            "spec.controllerName",
            format!("{name:?} must be a domain-prefixed path (`example.com/gateway-controller`)"),
        );
    }
}

pub(super) fn gateway(c: &mut Check<'_>, doc: &Document<GatewaySpec>) {
    let spec = &doc.spec;
    if spec.gateway_class_name.is_empty() || spec.gateway_class_name.len() > 253 {
        c.error("spec.gatewayClassName", "a GatewayClass name is required");
    }
    if spec.listeners.is_empty() || spec.listeners.len() > 64 {
        c.error("spec.listeners", "a Gateway has between 1 and 64 listeners");
    }
    let mut names = HashSet::new();
    let mut combinations = HashSet::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        let f = format!("spec.listeners[{i}]");
        if !is_subdomain(&l.name) {
            c.error(
                format!("{f}.name"),
                format!(
                    "{:?} is not a valid listener name (a DNS subdomain)",
                    l.name
                ),
            );
        } else if !names.insert(l.name.as_str()) {
            c.error(
                format!("{f}.name"),
                "Listener name must be unique within the Gateway",
            );
        }
        common::port_number(c, &format!("{f}.port"), l.port);
        let protocol = l.protocol.as_str();
        let known = ["HTTP", "HTTPS", "TLS", "TCP", "UDP"].contains(&protocol);
        let domain_prefixed = protocol
            .split_once('/')
            .is_some_and(|(d, p)| is_subdomain(d) && !p.is_empty());
        if !known && !domain_prefixed {
            let hint = if ["HTTP", "HTTPS", "TLS", "TCP", "UDP"]
                .iter()
                .any(|p| p.eq_ignore_ascii_case(protocol))
            {
                format!(
                    " (protocols are upper case: {:?})",
                    protocol.to_ascii_uppercase()
                )
            } else {
                String::new()
            };
            c.error(
                format!("{f}.protocol"),
                format!("unsupported protocol {protocol:?}: HTTP, HTTPS, TLS, TCP, UDP or a domain-prefixed name{hint}"),
            );
        }
        if let Some(host) = &l.hostname {
            hostname(c, &format!("{f}.hostname"), host, true);
            if matches!(protocol, "TCP" | "UDP") {
                c.error(
                    format!("{f}.hostname"),
                    "hostname must not be specified for protocols ['TCP', 'UDP']",
                );
            }
        }
        if !combinations.insert((l.port, protocol, l.hostname.as_deref())) {
            c.error(
                &f,
                "Combination of port, protocol and hostname must be unique for each listener",
            );
        }
        match (&l.tls, protocol) {
            (Some(_), "HTTP" | "TCP" | "UDP") => c.error(
                format!("{f}.tls"),
                "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']",
            ),
            (None, "TLS") => c.error(format!("{f}.tls"), "tls mode must be set for protocol TLS"),
            (None, "HTTPS") => c.warn(
                format!("{f}.tls"),
                "an HTTPS listener without tls has no certificate; it is not served",
            ),
            _ => {}
        }
        if let Some(tls) = &l.tls {
            let mode = tls.mode.as_deref().unwrap_or("Terminate");
            match mode {
                "Terminate" => {
                    if tls.certificate_refs.is_empty() && tls.options.is_empty() {
                        c.error(
                            format!("{f}.tls"),
                            "certificateRefs or options must be specified when mode is Terminate",
                        );
                    }
                }
                "Passthrough" => {
                    if protocol == "HTTPS" {
                        c.error(
                            format!("{f}.tls.mode"),
                            "tls mode must be Terminate for protocol HTTPS",
                        );
                    }
                    if !tls.certificate_refs.is_empty() {
                        c.warn(
                            format!("{f}.tls.certificateRefs"),
                            "Passthrough does not terminate TLS; the certificates are not used",
                        );
                    }
                }
                other => c.error(
                    format!("{f}.tls.mode"),
                    format!("unknown mode {other:?} (Terminate, Passthrough)"),
                ),
            }
            if tls.certificate_refs.len() > 64 {
                c.error(
                    format!("{f}.tls.certificateRefs"),
                    "at most 64 certificateRefs",
                );
            }
            for (j, r) in tls.certificate_refs.iter().enumerate() {
                let rf = format!("{f}.tls.certificateRefs[{j}]");
                object_name(c, &format!("{rf}.name"), &r.name);
                if let Some(ns) = &r.namespace {
                    namespace(c, &format!("{rf}.namespace"), ns);
                }
                let group = r.group.as_deref().unwrap_or("");
                let kind = r.kind.as_deref().unwrap_or("Secret");
                if !group.is_empty() || kind != "Secret" {
                    c.error(
                        &rf,
                        format!("only Secrets hold certificates here, not {group}/{kind}"),
                    );
                }
            }
        }
        if let Some(allowed) = &l.allowed_routes {
            if let Some(ns) = &allowed.namespaces {
                match (ns.from.as_deref().unwrap_or("Same"), &ns.selector) {
                    ("Same" | "All", _) => {}
                    ("Selector", Some(selector)) => {
                        for (k, e) in selector.match_expressions.iter().enumerate() {
                            if !["In", "NotIn", "Exists", "DoesNotExist"]
                                .contains(&e.operator.as_str())
                            {
                                c.error(
                                    format!("{f}.allowedRoutes.namespaces.selector.matchExpressions[{k}].operator"),
                                    format!("unknown operator {:?} (In, NotIn, Exists, DoesNotExist)", e.operator),
                                );
                            }
                        }
                    }
                    ("Selector", None) => c.error(
                        format!("{f}.allowedRoutes.namespaces.selector"),
                        "`from: Selector` needs a selector",
                    ),
                    (other, _) => c.error(
                        format!("{f}.allowedRoutes.namespaces.from"),
                        format!("unknown {other:?} (All, Selector, Same)"),
                    ),
                }
            }
            if allowed.kinds.len() > 8 {
                c.error(format!("{f}.allowedRoutes.kinds"), "at most 8 kinds");
            }
            for (k, kind) in allowed.kinds.iter().enumerate() {
                if kind.kind.is_empty() {
                    c.error(
                        format!("{f}.allowedRoutes.kinds[{k}].kind"),
                        "a kind is required",
                    );
                }
            }
        }
    }
    if spec.addresses.len() > 16 {
        c.error("spec.addresses", "at most 16 addresses");
    }
    for (i, a) in spec.addresses.iter().enumerate() {
        if let Some(t) = &a.r#type
            && !["IPAddress", "Hostname", "NamedAddress"].contains(&t.as_str())
            && !t.contains('/')
        {
            c.error(
                format!("spec.addresses[{i}].type"),
                format!("unknown address type {t:?} (IPAddress, Hostname, NamedAddress)"),
            );
        }
    }
    if let Some(frontend) = spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) {
        let mut ports = HashSet::new();
        let validation =
            |c: &mut Check<'_>,
             field: &str,
             v: &Option<crate::config::gateway_api::FrontendValidation>| {
                let Some(v) = v else { return };
                if v.ca_certificate_refs.is_empty() || v.ca_certificate_refs.len() > 16 {
                    c.error(
                        format!("{field}.validation.caCertificateRefs"),
                        "between 1 and 16 caCertificateRefs",
                    );
                }
                if let Some(mode) = &v.mode
                    && !["AllowValidOnly", "AllowInsecureFallback"].contains(&mode.as_str())
                {
                    c.error(
                        format!("{field}.validation.mode"),
                        format!("unknown mode {mode:?} (AllowValidOnly, AllowInsecureFallback)"),
                    );
                }
            };
        validation(c, "spec.tls.frontend.default", &frontend.default.validation);
        for (i, p) in frontend.per_port.iter().enumerate() {
            let f = format!("spec.tls.frontend.perPort[{i}]");
            common::port_number(c, &format!("{f}.port"), p.port);
            if !ports.insert(p.port) {
                c.error(
                    format!("{f}.port"),
                    "Port for TLS configuration must be unique within the Gateway",
                );
            }
            validation(c, &format!("{f}.tls"), &p.tls.validation);
        }
    }
}

pub(super) fn http_route(c: &mut Check<'_>, doc: &Document<HttpRouteSpec>) {
    let spec = &doc.spec;
    parent_refs(c, &spec.parent_refs);
    hostnames(c, &spec.hostnames);
    use_default_gateways(c, spec.use_default_gateways.as_deref());
    let Some(rules) = &spec.rules else { return };
    if rules.len() > 16 {
        c.error("spec.rules", "at most 16 rules");
    }
    let total: usize = rules
        .iter()
        .map(|r| r.matches.as_ref().map_or(1, Vec::len))
        .sum();
    if total > 128 {
        c.error("spec.rules", "While 16 rules and 64 matches per rule are allowed, the total number of matches across all rules in a route must be less than 128");
    }
    let mut names = HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let f = format!("spec.rules[{i}]");
        if let Some(name) = &rule.name {
            rule_name(c, &format!("{f}.name"), name, &mut names);
        }
        let matches = rule.matches.as_deref().unwrap_or_default();
        if matches.len() > 64 {
            c.error(format!("{f}.matches"), "at most 64 matches");
        }
        for (j, m) in matches.iter().enumerate() {
            http_match(c, &format!("{f}.matches[{j}]"), m);
        }
        filters(c, &format!("{f}.filters"), &rule.filters, HTTP_FILTERS);
        let prefix_only = matches.len() == 1
            && matches[0]
                .path
                .as_ref()
                .is_none_or(|p| p.r#type.as_deref().unwrap_or("PathPrefix") == "PathPrefix");
        let prefix_filters = rule
            .filters
            .iter()
            .chain(rule.backend_refs.iter().flat_map(|b| &b.filters))
            .filter_map(|flt| {
                let path = flt
                    .request_redirect
                    .as_ref()
                    .and_then(|r| r.path.as_ref())
                    .or(flt.url_rewrite.as_ref().and_then(|r| r.path.as_ref()))?;
                (path.r#type == "ReplacePrefixMatch").then_some(flt.r#type.as_str())
            });
        for filter in prefix_filters {
            if !prefix_only {
                c.error(&f, format!("When using {filter} filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"));
            }
        }
        if !rule.backend_refs.is_empty()
            && rule.filters.iter().any(|f| f.request_redirect.is_some())
        {
            c.error(
                &f,
                "RequestRedirect filter must not be used together with backendRefs",
            );
        }
        backend_refs(c, &f, &rule.backend_refs, HTTP_FILTERS);
        if let Some(t) = &rule.timeouts {
            let request = t
                .request
                .as_deref()
                .and_then(|d| duration(c, &format!("{f}.timeouts.request"), d));
            let backend = t
                .backend_request
                .as_deref()
                .and_then(|d| duration(c, &format!("{f}.timeouts.backendRequest"), d));
            if let (Some(request), Some(backend)) = (request, backend)
                && !request.is_zero()
                && backend > request
            {
                c.error(
                    format!("{f}.timeouts"),
                    "backendRequest timeout cannot be longer than request timeout",
                );
            }
        }
        if let Some(retry) = &rule.retry {
            for (k, code) in retry.codes.iter().enumerate() {
                if !(400..=599).contains(code) {
                    c.error(
                        format!("{f}.retry.codes[{k}]"),
                        format!("{code} is not a retriable status (400–599)"),
                    );
                }
            }
            if retry.attempts.is_some_and(|a| a < 0) {
                c.error(format!("{f}.retry.attempts"), "must not be negative");
            }
            if let Some(b) = &retry.backoff {
                duration(c, &format!("{f}.retry.backoff"), b);
            }
        }
    }
}

pub(super) fn grpc_route(c: &mut Check<'_>, doc: &Document<GrpcRouteSpec>) {
    let spec = &doc.spec;
    parent_refs(c, &spec.parent_refs);
    hostnames(c, &spec.hostnames);
    use_default_gateways(c, spec.use_default_gateways.as_deref());
    if spec.rules.len() > 16 {
        c.error("spec.rules", "at most 16 rules");
    }
    if spec.rules.iter().map(|r| r.matches.len()).sum::<usize>() > 128 {
        c.error("spec.rules", "While 16 rules and 64 matches per rule are allowed, the total number of matches across all rules in a route must be less than 128");
    }
    let mut names = HashSet::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let f = format!("spec.rules[{i}]");
        if let Some(name) = &rule.name {
            rule_name(c, &format!("{f}.name"), name, &mut names);
        }
        if rule.matches.len() > 64 {
            c.error(format!("{f}.matches"), "at most 64 matches");
        }
        for (j, m) in rule.matches.iter().enumerate() {
            let mf = format!("{f}.matches[{j}]");
            if let Some(method) = &m.method {
                let mf = format!("{mf}.method");
                let exact = match method.r#type.as_deref().unwrap_or("Exact") {
                    "Exact" => true,
                    "RegularExpression" => false,
                    other => {
                        c.error(
                            format!("{mf}.type"),
                            format!("unknown type {other:?} (Exact, RegularExpression)"),
                        );
                        true
                    }
                };
                if method.service.is_none() && method.method.is_none() {
                    c.error(
                        &mf,
                        "One or both of 'service' or 'method' must be specified",
                    );
                }
                for (name, value, valid) in [
                    (
                        "service",
                        &method.service,
                        is_grpc_service as fn(&str) -> bool,
                    ),
                    ("method", &method.method, is_grpc_method),
                ] {
                    let Some(value) = value else { continue };
                    if value.len() > 1024 {
                        c.error(format!("{mf}.{name}"), "at most 1024 characters");
                    } else if exact && !valid(value) {
                        c.error(
                            format!("{mf}.{name}"),
                            format!("{name} {value:?} must only contain valid characters"),
                        );
                    } else if !exact {
                        common::regex(c, &format!("{mf}.{name}"), value);
                    }
                }
            }
            header_matches(c, &format!("{mf}.headers"), &m.headers, 4096);
        }
        filters(c, &format!("{f}.filters"), &rule.filters, GRPC_FILTERS);
        backend_refs(c, &f, &rule.backend_refs, GRPC_FILTERS);
    }
}

pub(super) fn reference_grant(c: &mut Check<'_>, doc: &Document<ReferenceGrantSpec>) {
    let spec = &doc.spec;
    if spec.from.is_empty() || spec.from.len() > 16 {
        c.error("spec.from", "between 1 and 16 entries");
    }
    if spec.to.is_empty() || spec.to.len() > 16 {
        c.error("spec.to", "between 1 and 16 entries");
    }
    for (i, from) in spec.from.iter().enumerate() {
        let f = format!("spec.from[{i}]");
        group(c, &format!("{f}.group"), &from.group);
        kind(c, &format!("{f}.kind"), &from.kind);
        namespace(c, &format!("{f}.namespace"), &from.namespace);
    }
    for (i, to) in spec.to.iter().enumerate() {
        let f = format!("spec.to[{i}]");
        group(c, &format!("{f}.group"), &to.group);
        kind(c, &format!("{f}.kind"), &to.kind);
        if let Some(name) = &to.name {
            object_name(c, &format!("{f}.name"), name);
        }
    }
}

fn use_default_gateways(c: &mut Check<'_>, value: Option<&str>) {
    if let Some(v) = value
        && !["All", "None"].contains(&v)
    {
        c.error(
            "spec.useDefaultGateways",
            format!("unknown {v:?} (All, None)"),
        );
    }
}

fn rule_name<'a>(c: &mut Check<'_>, field: &str, name: &'a str, names: &mut HashSet<&'a str>) {
    if !is_subdomain(name) {
        c.error(
            field,
            format!("{name:?} is not a valid rule name (a DNS subdomain)"),
        );
    } else if !names.insert(name) {
        c.error(field, "Rule name must be unique within the route");
    }
}

fn parent_refs(c: &mut Check<'_>, refs: &[ParentReference]) {
    if refs.len() > 32 {
        c.error("spec.parentRefs", "at most 32 parentRefs");
    }
    let mut seen: Vec<(&ParentReference, usize)> = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let f = format!("spec.parentRefs[{i}]");
        object_name(c, &format!("{f}.name"), &r.name);
        if let Some(g) = &r.group {
            group(c, &format!("{f}.group"), g);
        }
        if let Some(k) = &r.kind {
            kind(c, &format!("{f}.kind"), k);
        }
        if let Some(ns) = &r.namespace {
            namespace(c, &format!("{f}.namespace"), ns);
        }
        if let Some(port) = r.port {
            common::port_number(c, &format!("{f}.port"), port);
        }
        if let Some(section) = &r.section_name
            && !is_subdomain(section)
        {
            c.error(
                format!("{f}.sectionName"),
                format!("{section:?} is not a valid section name (a DNS subdomain)"),
            );
        }
        let same = |a: &ParentReference, b: &ParentReference| {
            a.group == b.group && a.kind == b.kind && a.namespace == b.namespace && a.name == b.name
        };
        for (other, _) in seen.iter().filter(|(o, _)| same(o, r)) {
            let unset = |p: &ParentReference| p.section_name.is_none() && p.port.is_none();
            if unset(other) || unset(r) {
                c.error(&f, "sectionName or port must be specified when parentRefs includes 2 or more references to the same parent");
            } else if other.section_name == r.section_name && other.port == r.port {
                c.error(&f, "sectionName or port must be unique when parentRefs includes 2 or more references to the same parent");
            }
        }
        seen.push((r, i));
    }
}

fn hostnames(c: &mut Check<'_>, hosts: &[String]) {
    if hosts.len() > 16 {
        c.error("spec.hostnames", "at most 16 hostnames");
    }
    for (i, h) in hosts.iter().enumerate() {
        hostname(c, &format!("spec.hostnames[{i}]"), h, true);
    }
}

/// The API's `Hostname` (wildcard allowed) or `PreciseHostname`: lower
/// case DNS labels, no IP addresses, no port.
fn hostname(c: &mut Check<'_>, field: &str, host: &str, wildcard: bool) {
    let rest = match host.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        _ => host,
    };
    let valid = host.len() <= 253
        && !rest.is_empty()
        && rest.split('.').all(is_label)
        && host.parse::<std::net::IpAddr>().is_err();
    if !valid {
        let what = if wildcard {
            "a lower case DNS name, optionally `*.` first, no IP address or port"
        } else {
            "a lower case DNS name (no wildcard, IP address or port)"
        };
        c.error(field, format!("{host:?} is not a valid host name: {what}"));
    }
}

fn http_match(c: &mut Check<'_>, field: &str, m: &HttpRouteMatch) {
    if let Some(path) = &m.path {
        let f = format!("{field}.path");
        let value = path.value.as_deref().unwrap_or("/");
        if value.len() > 1024 {
            c.error(format!("{f}.value"), "at most 1024 characters");
        }
        match path.r#type.as_deref().unwrap_or("PathPrefix") {
            "Exact" | "PathPrefix" => path_value(c, &format!("{f}.value"), value),
            "RegularExpression" => common::regex(c, &format!("{f}.value"), value),
            other => c.error(
                format!("{f}.type"),
                format!("type must be one of ['Exact', 'PathPrefix', 'RegularExpression'], not {other:?}"),
            ),
        }
    }
    header_matches(c, &format!("{field}.headers"), &m.headers, 4096);
    header_matches(c, &format!("{field}.queryParams"), &m.query_params, 1024);
    if let Some(method) = &m.method
        && !METHODS.contains(&method.as_str())
    {
        c.error(
            format!("{field}.method"),
            format!("unknown method {method:?} ({})", METHODS.join(", ")),
        );
    }
}

/// The CRD's rules for an `Exact` or `PathPrefix` path.
fn path_value(c: &mut Check<'_>, field: &str, value: &str) {
    let problem = if !value.starts_with('/') {
        Some("value must be an absolute path and start with '/'")
    } else if value.contains("//") {
        Some("must not contain '//'")
    } else if value.contains("/./") {
        Some("must not contain '/./'")
    } else if value.contains("/../") {
        Some("must not contain '/../'")
    } else if value.contains("%2f") || value.contains("%2F") {
        Some("must not contain '%2f' or '%2F'")
    } else if value.contains('#') {
        Some("must not contain '#'")
    } else if value.ends_with("/..") || value.ends_with("/.") {
        Some("must not end with '/..' or '/.'")
    } else if !valid_path_characters(value) {
        Some(
            "must only contain valid characters (matching ^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$)",
        )
    } else {
        None
    };
    if let Some(problem) = problem {
        c.error(
            field,
            format!("{value:?}: {problem} (for Exact and PathPrefix)"),
        );
    }
}

fn valid_path_characters(value: &str) -> bool {
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
            continue;
        }
        if !(b.is_ascii_alphanumeric() || b"-/._~!$&'()*+,;=:@".contains(&b)) {
            return false;
        }
        i += 1;
    }
    true
}

fn header_matches(c: &mut Check<'_>, field: &str, list: &[HttpHeaderMatch], max_value: usize) {
    if list.len() > 16 {
        c.error(field, "at most 16 conditions");
    }
    let mut names = HashSet::new();
    for (i, h) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        header_name(c, &format!("{f}.name"), &h.name);
        if !names.insert(h.name.as_str()) {
            c.error(
                format!("{f}.name"),
                format!(
                    "{:?} is listed twice (the API keys this list by name)",
                    h.name
                ),
            );
        }
        if h.value.is_empty() || h.value.len() > max_value {
            c.error(
                format!("{f}.value"),
                format!("a value of 1 to {max_value} characters is required"),
            );
        }
        match h.r#type.as_deref().unwrap_or("Exact") {
            "Exact" => {}
            "RegularExpression" => common::regex(c, &format!("{f}.value"), &h.value),
            other => c.error(
                format!("{f}.type"),
                format!("unknown type {other:?} (Exact, RegularExpression)"),
            ),
        }
    }
}

/// The API's `HTTPHeaderName`: a token of RFC 7230, at most 256 characters.
fn header_name(c: &mut Check<'_>, field: &str, name: &str) {
    let valid = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        c.error(
            field,
            format!("{name:?} is not a valid header name (an RFC 7230 token)"),
        );
    }
}

fn filters(c: &mut Check<'_>, field: &str, list: &[HttpRouteFilter], allowed: &[&str]) {
    if list.len() > 16 {
        c.error(field, "at most 16 filters");
    }
    let mut seen = HashSet::new();
    for (i, flt) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let kind = flt.r#type.as_str();
        if !allowed.contains(&kind) {
            c.error(
                format!("{f}.type"),
                format!(
                    "unknown filter type {kind:?} (one of {})",
                    allowed.join(", ")
                ),
            );
            continue;
        }
        if kind != "RequestMirror" && !seen.insert(kind) {
            c.error(&f, format!("{kind} filter cannot be repeated"));
        }
        let present = [
            (
                "RequestHeaderModifier",
                "requestHeaderModifier",
                flt.request_header_modifier.is_some(),
            ),
            (
                "ResponseHeaderModifier",
                "responseHeaderModifier",
                flt.response_header_modifier.is_some(),
            ),
            (
                "RequestMirror",
                "requestMirror",
                flt.request_mirror.is_some(),
            ),
            (
                "RequestRedirect",
                "requestRedirect",
                flt.request_redirect.is_some(),
            ),
            ("URLRewrite", "urlRewrite", flt.url_rewrite.is_some()),
            ("CORS", "cors", flt.cors.is_some()),
            ("ExtensionRef", "extensionRef", flt.extension_ref.is_some()),
            ("ExternalAuth", "externalAuth", flt.external_auth.is_some()),
        ];
        for (t, name, set) in present {
            if set && t != kind {
                c.error(
                    format!("{f}.{name}"),
                    format!("filter.{name} must be nil if the filter.type is not {t}"),
                );
            } else if !set && t == kind {
                c.error(
                    format!("{f}.{name}"),
                    format!("filter.{name} must be specified for {t} filter.type"),
                );
            }
        }
        for (name, m) in [
            ("requestHeaderModifier", &flt.request_header_modifier),
            ("responseHeaderModifier", &flt.response_header_modifier),
        ] {
            if let Some(m) = m {
                header_filter(c, &format!("{f}.{name}"), m);
            }
        }
        if let Some(mirror) = &flt.request_mirror {
            let mf = format!("{f}.requestMirror");
            backend_object(c, &format!("{mf}.backendRef"), &mirror.backend_ref);
            if mirror.percent.is_some() && mirror.fraction.is_some() {
                c.error(
                    &mf,
                    "Only one of percent or fraction may be specified in HTTPRequestMirrorFilter",
                );
            }
            if mirror.percent.is_some_and(|p| !(0..=100).contains(&p)) {
                c.error(format!("{mf}.percent"), "must be between 0 and 100");
            }
            if let Some(fr) = &mirror.fraction {
                let denominator = fr.denominator.unwrap_or(100);
                if fr.numerator < 0 || denominator < 1 || fr.numerator > denominator {
                    c.error(
                        format!("{mf}.fraction"),
                        "numerator must be between 0 and the denominator (at least 1)",
                    );
                }
            }
        }
        if let Some(r) = &flt.request_redirect {
            let rf = format!("{f}.requestRedirect");
            if let Some(s) = &r.scheme
                && !["http", "https"].contains(&s.as_str())
            {
                c.error(
                    format!("{rf}.scheme"),
                    format!("unknown scheme {s:?} (http, https)"),
                );
            }
            if let Some(h) = &r.hostname {
                hostname(c, &format!("{rf}.hostname"), h, false);
            }
            if let Some(p) = &r.path {
                path_modifier(c, &format!("{rf}.path"), p);
            }
            if let Some(port) = r.port {
                common::port_number(c, &format!("{rf}.port"), port);
            }
            if let Some(code) = r.status_code
                && ![301, 302, 303, 307, 308].contains(&code)
            {
                c.error(
                    format!("{rf}.statusCode"),
                    format!("{code} is not a redirect status (301, 302, 303, 307, 308)"),
                );
            }
        }
        if let Some(r) = &flt.url_rewrite {
            let rf = format!("{f}.urlRewrite");
            if let Some(h) = &r.hostname {
                hostname(c, &format!("{rf}.hostname"), h, false);
            }
            if let Some(p) = &r.path {
                path_modifier(c, &format!("{rf}.path"), p);
            }
        }
        if let Some(e) = &flt.extension_ref
            && (e.kind.is_empty() || e.name.is_empty())
        {
            c.error(
                format!("{f}.extensionRef"),
                "group, kind and name are required",
            );
        }
    }
    if seen.contains("RequestRedirect") && seen.contains("URLRewrite") {
        c.error(
            field,
            "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both",
        );
    }
}

fn header_filter(c: &mut Check<'_>, field: &str, m: &HttpHeaderFilter) {
    for (op, list) in [("set", &m.set), ("add", &m.add)] {
        if list.len() > 16 {
            c.error(format!("{field}.{op}"), "at most 16 headers");
        }
        let mut names = HashSet::new();
        for (i, h) in list.iter().enumerate() {
            let f = format!("{field}.{op}[{i}]");
            header_name(c, &format!("{f}.name"), &h.name);
            if !names.insert(h.name.as_str()) {
                c.error(
                    format!("{f}.name"),
                    format!(
                        "{:?} is listed twice (the API keys this list by name)",
                        h.name
                    ),
                );
            }
            if h.value.is_empty() || h.value.len() > 4096 {
                c.error(
                    format!("{f}.value"),
                    "a value of 1 to 4096 characters is required",
                );
            } else if http::HeaderValue::try_from(h.value.as_str()).is_err() {
                c.error(
                    format!("{f}.value"),
                    format!("header {:?} value contains invalid characters", h.name),
                );
            }
        }
    }
    if m.remove.len() > 16 {
        c.error(format!("{field}.remove"), "at most 16 headers");
    }
    let mut names = HashSet::new();
    for (i, name) in m.remove.iter().enumerate() {
        header_name(c, &format!("{field}.remove[{i}]"), name);
        if !names.insert(name.as_str()) {
            c.error(
                format!("{field}.remove[{i}]"),
                format!("{name:?} is listed twice"),
            );
        }
    }
}

fn path_modifier(c: &mut Check<'_>, field: &str, p: &HttpPathModifier) {
    match p.r#type.as_str() {
        "ReplaceFullPath" => {
            if p.replace_full_path.is_none() {
                c.error(
                    format!("{field}.replaceFullPath"),
                    "replaceFullPath must be specified when type is set to 'ReplaceFullPath'",
                );
            }
            if p.replace_prefix_match.is_some() {
                c.error(
                    format!("{field}.replacePrefixMatch"),
                    "type must be 'ReplacePrefixMatch' when replacePrefixMatch is set",
                );
            }
        }
        "ReplacePrefixMatch" => {
            if p.replace_prefix_match.is_none() {
                c.error(
                    format!("{field}.replacePrefixMatch"),
                    "replacePrefixMatch must be specified when type is set to 'ReplacePrefixMatch'",
                );
            }
            if p.replace_full_path.is_some() {
                c.error(
                    format!("{field}.replaceFullPath"),
                    "type must be 'ReplaceFullPath' when replaceFullPath is set",
                );
            }
        }
        other => c.error(
            format!("{field}.type"),
            format!("unknown type {other:?} (ReplaceFullPath, ReplacePrefixMatch)"),
        ),
    }
    for (name, value) in [
        ("replaceFullPath", &p.replace_full_path),
        ("replacePrefixMatch", &p.replace_prefix_match),
    ] {
        if let Some(v) = value {
            if v.len() > 1024 {
                c.error(format!("{field}.{name}"), "at most 1024 characters");
            } else if !v.is_empty() && !v.starts_with('/') {
                c.error(
                    format!("{field}.{name}"),
                    format!("{v:?} must be an absolute path (start with '/')"),
                );
            } else if http::uri::PathAndQuery::try_from(v.as_str()).is_err() {
                c.error(
                    format!("{field}.{name}"),
                    format!("{v:?} is not a valid path"),
                );
            }
        }
    }
}

fn backend_refs(c: &mut Check<'_>, rule_field: &str, refs: &[HttpBackendRef], allowed: &[&str]) {
    let field = format!("{rule_field}.backendRefs");
    if refs.len() > 16 {
        c.error(&field, "at most 16 backendRefs");
    }
    for (i, b) in refs.iter().enumerate() {
        let f = format!("{field}[{i}]");
        backend_object(c, &f, &b.object());
        if b.weight.is_some_and(|w| !(0..=1_000_000).contains(&w)) {
            c.error(format!("{f}.weight"), "must be between 0 and 1000000");
        }
        filters(c, &format!("{f}.filters"), &b.filters, allowed);
        for (j, flt) in b.filters.iter().enumerate() {
            if flt.request_redirect.is_some() {
                c.error(
                    format!("{f}.filters[{j}]"),
                    "a backend's filters cannot redirect (RequestRedirect belongs to the rule)",
                );
            }
        }
    }
}

fn backend_object(c: &mut Check<'_>, field: &str, b: &BackendObjectReference) {
    object_name(c, &format!("{field}.name"), &b.name);
    if let Some(g) = &b.group {
        group(c, &format!("{field}.group"), g);
    }
    if let Some(k) = &b.kind {
        kind(c, &format!("{field}.kind"), k);
    }
    if let Some(ns) = &b.namespace {
        namespace(c, &format!("{field}.namespace"), ns);
    }
    let is_service = b.group.as_deref().unwrap_or("").is_empty()
        && b.kind.as_deref().unwrap_or("Service") == "Service";
    match b.port {
        Some(port) => common::port_number(c, &format!("{field}.port"), port),
        None if is_service => c.error(
            format!("{field}.port"),
            "Must have port for Service reference",
        ),
        None => {}
    }
}

fn duration(c: &mut Check<'_>, field: &str, value: &str) -> Option<std::time::Duration> {
    let parsed = parse_duration(value);
    if parsed.is_none() {
        c.error(
            field,
            format!("{value:?} is not a Gateway API duration (1 to 4 parts of up to 5 digits and h, m, s or ms: `10s`, `1m30s`, `500ms`)"),
        );
    }
    parsed
}

fn group(c: &mut Check<'_>, field: &str, group: &str) {
    if !(group.is_empty() || is_subdomain(group)) {
        c.error(
            field,
            format!("{group:?} is not an API group (a DNS subdomain, or empty for the core group)"),
        );
    }
}

fn kind(c: &mut Check<'_>, field: &str, kind: &str) {
    let valid = !kind.is_empty()
        && kind.len() <= 63
        && kind.starts_with(|ch: char| ch.is_ascii_alphabetic())
        && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !kind.ends_with('-');
    if !valid {
        c.error(field, format!("{kind:?} is not a kind"));
    }
}

fn namespace(c: &mut Check<'_>, field: &str, ns: &str) {
    if !common::is_dns1123_label(ns) {
        c.error(field, format!("{ns:?} is not a namespace name"));
    }
}

fn object_name(c: &mut Check<'_>, field: &str, name: &str) {
    if name.is_empty() || name.len() > 253 {
        c.error(field, "a name of 1 to 253 characters is required");
    }
}

fn is_label(label: &str) -> bool {
    common::is_dns1123_label(label)
}

/// A DNS-1123 subdomain: lower case labels joined by dots, at most 253.
fn is_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_label)
}

fn is_grpc_service(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    !s.is_empty()
        && s.split('.').all(|part| {
            part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

fn is_grpc_method(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_characters_as_the_crd_allows() {
        assert!(valid_path_characters("/a-b/c_d/%2e~"));
        assert!(!valid_path_characters("/a b"));
        assert!(!valid_path_characters("/%zz"));
        assert!(!valid_path_characters("/a?b"));
    }

    #[test]
    fn grpc_names() {
        assert!(is_grpc_service("grpc.health.v1.Health"));
        assert!(is_grpc_service(".Foo"));
        assert!(!is_grpc_service("1Foo"));
        assert!(is_grpc_method("Check"));
        assert!(!is_grpc_method("Check/Me"));
    }
}
