//! Istio's rules for a VirtualService (`ValidateVirtualService`).

use super::common::{self, Check};
use crate::config::documents::Document;
use crate::config::virtual_service::{
    CorsPolicy, Destination, Headers, HttpFaultInjection, HttpMatchRequest, HttpRedirect,
    HttpRoute, HttpRouteDestination, RouteDestination, StringMatch, VirtualServiceSpec,
    is_authority,
};
use crate::host::host_matches;

/// Envoy's retry conditions Istio accepts in `retryOn` (plus status codes).
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

pub(super) fn virtual_service(c: &mut Check<'_>, doc: &Document<VirtualServiceSpec>) {
    let spec = &doc.spec;
    if spec.hosts.is_empty() {
        // A delegate: routes only, reached from another VirtualService.
        if !spec.gateways.is_empty() {
            c.error("spec.gateways", "delegate virtual service must have no gateways specified (a VirtualService without hosts is a delegate)");
        }
        if !spec.tls.is_empty() {
            c.error(
                "spec.tls",
                "delegate virtual service must have no tls route specified",
            );
        }
        if !spec.tcp.is_empty() {
            c.error(
                "spec.tcp",
                "delegate virtual service must have no tcp route specified",
            );
        }
    }
    common::gateway_names(c, "spec.gateways", &spec.gateways);
    let to_mesh = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
    for (i, host) in spec.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if let Some(err) = common::wildcard_domain_error(host) {
            if !common::is_ip(host) {
                c.error(&field, err);
            }
        } else if host == "*" && to_mesh {
            c.error(&field, "wildcard host * is not allowed for virtual services bound to the mesh gateway; name the hosts or a `*.domain`");
        }
        if spec.hosts[..i].iter().any(|h| h.eq_ignore_ascii_case(host)) {
            c.error(
                &field,
                format!("duplicate hosts in virtual service: {host}"),
            );
        }
    }
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        c.error(
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
    }
    common::export_to(c, doc.metadata.namespace.as_deref(), &spec.export_to, false);
    for (i, route) in spec.http.iter().enumerate() {
        http_route(c, &format!("spec.http[{i}]"), route, spec.hosts.is_empty());
    }
    for (i, tls) in spec.tls.iter().enumerate() {
        let field = format!("spec.tls[{i}]");
        if tls.matches.is_empty() {
            c.error(
                format!("{field}.match"),
                "TLS route must have at least one match condition",
            );
        }
        for (j, m) in tls.matches.iter().enumerate() {
            let mf = format!("{field}.match[{j}]");
            if m.sni_hosts.is_empty() {
                c.error(
                    format!("{mf}.sniHosts"),
                    "TLS match must have at least one SNI host",
                );
            }
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                if let Some(err) = common::wildcard_domain_error(sni) {
                    c.error(format!("{mf}.sniHosts[{k}]"), err);
                } else if !spec.hosts.iter().any(|h| {
                    // Istio's `host.Name.SubsetOf`, on the names as written.
                    host_matches(&h.to_ascii_lowercase(), &sni.to_ascii_lowercase())
                }) {
                    c.error(
                        format!("{mf}.sniHosts[{k}]"),
                        format!("the SNI host {sni:?} is not a subset of any of the virtual service hosts"),
                    );
                }
            }
            l4_match(c, &mf, &m.destination_subnets, m.port, &m.gateways);
        }
        route_destinations(c, &format!("{field}.route"), &tls.route, "TLS");
    }
    for (i, tcp) in spec.tcp.iter().enumerate() {
        let field = format!("spec.tcp[{i}]");
        for (j, m) in tcp.matches.iter().enumerate() {
            let mf = format!("{field}.match[{j}]");
            l4_match(c, &mf, &m.destination_subnets, m.port, &m.gateways);
            if let Some(subnet) = &m.source_subnet {
                common::ip_or_cidr(c, &format!("{mf}.sourceSubnet"), subnet);
            }
        }
        route_destinations(c, &format!("{field}.route"), &tcp.route, "TCP");
    }
}

fn l4_match(
    c: &mut Check<'_>,
    field: &str,
    subnets: &[String],
    port: Option<u32>,
    gateways: &[String],
) {
    for (k, subnet) in subnets.iter().enumerate() {
        common::peer_ip_or_cidr(c, &format!("{field}.destinationSubnets[{k}]"), subnet);
    }
    if let Some(port) = port {
        common::port_number(c, &format!("{field}.port"), port);
    }
    common::gateway_names(c, &format!("{field}.gateways"), gateways);
}

fn route_destinations(c: &mut Check<'_>, field: &str, route: &[RouteDestination], what: &str) {
    if route.is_empty() {
        c.error(field, format!("{what} route is required"));
    }
    for (k, d) in route.iter().enumerate() {
        destination(c, &format!("{field}[{k}].destination"), &d.destination);
        weight(c, &format!("{field}[{k}].weight"), d.weight);
    }
    total_weight(c, field, route.iter().map(|d| d.weight.unwrap_or(0)));
}

fn weight(c: &mut Check<'_>, field: &str, weight: Option<i32>) {
    if let Some(w) = weight.filter(|w| *w < 0) {
        c.error(
            field,
            format!("weight {w} < 0; weights are relative shares, 0 or more"),
        );
    }
}

fn total_weight(c: &mut Check<'_>, field: &str, weights: impl Iterator<Item = i32>) {
    let weights: Vec<i32> = weights.collect();
    if weights.len() > 1 && weights.iter().all(|w| *w == 0) {
        c.error(
            field,
            "total destination weight = 0: weights are relative; give at least one destination a weight above 0 (e.g. 1 and 3 split 25/75)",
        );
    }
    let total: i64 = weights.iter().map(|w| i64::from((*w).max(0))).sum();
    if weights.len() > 1 && total > i64::from(u32::MAX) {
        c.error(
            field,
            format!(
                "total destination weight {total} > {}: Envoy adds weights in 32 bits; weights are relative, so smaller numbers split the same (e.g. 1 and 3 split 25/75)",
                u32::MAX
            ),
        );
    }
}

pub(super) fn destination(c: &mut Check<'_>, field: &str, d: &Destination) {
    if d.host == "*" {
        c.error(
            format!("{field}.host"),
            "invalid destination host *; name a service",
        );
    } else if let Some(err) = common::wildcard_domain_error(&d.host) {
        c.error(format!("{field}.host"), err);
    }
    if let Some(subset) = &d.subset {
        subset_name(c, &format!("{field}.subset"), subset);
    }
    if let Some(port) = &d.port {
        common::port_number(c, &format!("{field}.port.number"), port.number);
    }
}

pub(super) fn subset_name(c: &mut Check<'_>, field: &str, name: &str) {
    if name.is_empty() {
        c.error(field, "subset name cannot be empty");
    } else if !common::is_dns1123_label(name) {
        c.error(
            field,
            format!(
                "subset name {name:?} is invalid: lower case letters, digits and `-` (a DNS label)"
            ),
        );
    }
}

fn http_route(c: &mut Check<'_>, field: &str, r: &HttpRoute, delegate_vs: bool) {
    let f = |sub: &str| format!("{field}.{sub}");
    if r.delegate.is_some() {
        if delegate_vs {
            c.error(f("delegate"), "delegate HTTP route cannot contain delegate");
        }
        if !r.route.is_empty() {
            c.error(
                f("route"),
                "an HTTP route with `delegate` must not specify `route`",
            );
        }
        if r.redirect.is_some() {
            c.error(
                f("redirect"),
                "an HTTP route with `delegate` must not specify `redirect`",
            );
        }
    } else {
        let both = |c: &mut Check<'_>, a: bool, b: bool, sub: &str, msg: &str| {
            if a && b {
                c.error(format!("{field}.{sub}"), msg.to_owned());
            }
        };
        let (route, redirect, direct) = (
            !r.route.is_empty(),
            r.redirect.is_some(),
            r.direct_response.is_some(),
        );
        both(
            c,
            route,
            redirect,
            "redirect",
            "HTTP route cannot contain both route and redirect; keep one",
        );
        both(
            c,
            r.fault.is_some(),
            redirect,
            "fault",
            "HTTP route cannot contain both fault and redirect",
        );
        both(
            c,
            r.rewrite.is_some(),
            redirect,
            "rewrite",
            "HTTP route rule cannot contain both rewrite and redirect",
        );
        both(
            c,
            redirect,
            direct,
            "directResponse",
            "HTTP route rule cannot contain both redirect and direct_response",
        );
        both(
            c,
            route,
            direct,
            "directResponse",
            "HTTP route cannot contain both route and direct_response",
        );
        both(
            c,
            r.fault.is_some(),
            direct,
            "fault",
            "HTTP route cannot contain both fault and direct_response",
        );
        both(
            c,
            r.rewrite.is_some(),
            direct,
            "rewrite",
            "HTTP route rule cannot contain both rewrite and direct_response",
        );
        if !(route || redirect || direct) {
            c.error(field, "HTTP route, redirect or direct_response is required");
        }
    }
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        c.error(
            f("mirrors"),
            "HTTP route cannot contain both mirror and mirrors; move `mirror` into `mirrors`",
        );
    }
    if let Some(name) = &r.name
        && name.is_empty()
    {
        c.warn(f("name"), "an empty name is the same as none");
    }
    headers(
        c,
        &f("headers"),
        r.headers.as_ref(),
        Some(r.rewrite.as_ref().is_some_and(|rw| rw.authority.is_some())),
    );
    for (j, m) in r.matches.iter().enumerate() {
        http_match(c, &format!("{field}.match[{j}]"), m);
    }
    for (k, d) in r.route.iter().enumerate() {
        route_destination(c, &format!("{field}.route[{k}]"), d);
    }
    total_weight(
        c,
        &f("route"),
        r.route.iter().map(|d| d.weight.unwrap_or(0)),
    );
    if let Some(redirect) = &r.redirect {
        http_redirect(c, &f("redirect"), redirect, &r.matches);
    }
    if let Some(d) = &r.direct_response {
        if !(200..=599).contains(&d.status) {
            c.error(
                f("directResponse.status"),
                format!("status code {} must be in range 200-599", d.status),
            );
        }
        if let Some(body) = &d.body {
            if body.string.is_some() && body.bytes.is_some() {
                c.error(
                    f("directResponse.body"),
                    "set `string` or `bytes`, not both",
                );
            }
            let len = body.string.as_ref().map_or(0, String::len)
                + body.bytes.as_ref().map_or(0, |b| b.len() * 3 / 4);
            if len > 1 << 20 {
                c.error(f("directResponse.body"), "large direct_responses may impact control plane performance, must be less than 1MB");
            }
            if let Some(b64) = &body.bytes {
                use base64::Engine;
                if base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .is_err()
                {
                    c.error(
                        f("directResponse.body.bytes"),
                        "not base64 (standard alphabet, padded)",
                    );
                }
            }
        }
    }
    if let Some(rw) = &r.rewrite {
        if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
            c.error(
                f("rewrite"),
                "rewrite may only contain one of uri or uriRegexRewrite",
            );
        }
        if rw.uri.is_none() && rw.uri_regex_rewrite.is_none() && rw.authority.is_none() {
            c.error(
                f("rewrite"),
                "rewrite must specify at least one of uri, uriRegexRewrite, or authority",
            );
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            if rr.pattern.is_empty() || rr.rewrite.is_empty() {
                c.error(
                    f("rewrite.uriRegexRewrite"),
                    "uriRegexRewrite requires both `match` and `rewrite`",
                );
            } else {
                common::regex(c, &f("rewrite.uriRegexRewrite.match"), &rr.pattern);
            }
        }
        if let Some(a) = &rw.authority {
            common::header_value(c, &f("rewrite.authority"), a);
        }
    }
    if let Some(retries) = &r.retries {
        if retries.attempts < 0 {
            c.error(f("retries.attempts"), "attempts cannot be negative");
        }
        common::duration_at_least_1ms(c, &f("retries.perTryTimeout"), retries.per_try_timeout);
        common::duration_at_least_1ms(c, &f("retries.backoff"), retries.backoff);
        for cond in retries
            .retry_on
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            if !RETRY_ON.contains(&cond) && cond.parse::<u16>().is_err() {
                c.error(
                    f("retries.retryOn"),
                    format!(
                        "{cond:?} is not a valid retryOn condition ({}, or an HTTP status code)",
                        RETRY_ON.join(", ")
                    ),
                );
            }
        }
    }
    if let Some(t) = r.timeout
        && t.get() > std::time::Duration::ZERO
    {
        common::duration_at_least_1ms(c, &f("timeout"), Some(t));
    }
    if let Some(fault) = &r.fault {
        http_fault(c, &f("fault"), fault);
    }
    if let Some(mirror) = &r.mirror {
        destination(c, &f("mirror"), mirror);
    }
    if let Some(p) = r.mirror_percent {
        if p > 100 {
            c.error(
                f("mirrorPercent"),
                format!("mirror_percent must have a max value of 100 (it has {p})"),
            );
        }
        c.warn(
            f("mirrorPercent"),
            "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead",
        );
    }
    if let Some(p) = &r.mirror_percentage
        && !(0.0..=100.0).contains(&p.value)
    {
        c.error(
            f("mirrorPercentage.value"),
            format!(
                "mirror_percentage must be between 0 and 100 (it has {})",
                p.value
            ),
        );
    }
    for (k, m) in r.mirrors.iter().enumerate() {
        destination(
            c,
            &format!("{field}.mirrors[{k}].destination"),
            &m.destination,
        );
        if let Some(p) = &m.percentage
            && !(0.0..=100.0).contains(&p.value)
        {
            c.error(
                format!("{field}.mirrors[{k}].percentage.value"),
                format!(
                    "mirror percentage must be between 0 and 100 (it has {})",
                    p.value
                ),
            );
        }
    }
    if let Some(cors) = &r.cors_policy {
        cors_policy(c, &f("corsPolicy"), cors);
    }
}

fn route_destination(c: &mut Check<'_>, field: &str, d: &HttpRouteDestination) {
    destination(c, &format!("{field}.destination"), &d.destination);
    weight(c, &format!("{field}.weight"), d.weight);
    headers(
        c,
        &format!("{field}.headers"),
        d.headers.as_ref(),
        Some(false),
    );
}

/// A rule's or a destination's header operations. On a request
/// (`rule_authority`: whether the rule's `rewrite` sets an authority too;
/// `Some(false)` for a destination), `Host` and `:authority` in `set` and
/// `add` rewrite the authority, once, as Istio's validateAuthorityRewrite
/// allows; on a response they are refused.
fn headers(
    c: &mut Check<'_>,
    field: &str,
    headers: Option<&Headers>,
    rule_authority: Option<bool>,
) {
    let Some(h) = headers else { return };
    let mut authorities = usize::from(rule_authority == Some(true));
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        for (op, map) in [("set", &ops.set), ("add", &ops.add)] {
            for (name, value) in map {
                let f = format!("{field}.{side}.{op}.{name}");
                if side == "request" && rule_authority.is_some() && is_authority(name) {
                    authorities += 1;
                    if authorities > 1 {
                        c.error(
                            f.clone(),
                            "authority header cannot be set multiple times (rewrite.authority, Host or :authority)",
                        );
                    }
                } else {
                    common::header_operation_name(c, &f, name);
                }
                common::header_value(c, &f, value);
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            common::header_operation_name(c, &format!("{field}.{side}.remove[{i}]"), name);
        }
    }
}

fn string_match(c: &mut Check<'_>, field: &str, sm: &StringMatch, allow_empty: bool) {
    let set = [sm.exact.is_some(), sm.prefix.is_some(), sm.regex.is_some()];
    match set.iter().filter(|s| **s).count() {
        0 if !allow_empty => c.error(field, "set one of exact, prefix, regex"),
        0 | 1 => {}
        _ => c.error(field, "set only one of exact, prefix, regex"),
    }
    if sm.prefix.as_deref() == Some("") {
        c.error(
            format!("{field}.prefix"),
            "prefix string match should not be empty",
        );
    }
    if let Some(re) = &sm.regex {
        common::regex(c, &format!("{field}.regex"), re);
    }
}

fn http_match(c: &mut Check<'_>, field: &str, m: &HttpMatchRequest) {
    for (name, sm) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            string_match(c, &format!("{field}.{name}"), sm, false);
        }
    }
    for (kind, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, sm) in map {
            let f = format!("{field}.{kind}.{name}");
            if common::header_name(c, &f, name) && name.starts_with("@request.auth.claims") {
                c.error(&f, "JWT claim based routing is only supported for gateways");
            }
            // In withoutHeaders, `regex: "*"` is no RE2 regex: Istio renders
            // it as a presence match and its validation lets it through.
            if kind == "withoutHeaders" && sm.regex.as_deref() == Some("*") {
                continue;
            }
            string_match(c, &f, sm, true);
        }
    }
    for (name, sm) in &m.query_params {
        string_match(c, &format!("{field}.queryParams.{name}"), sm, true);
    }
    if let Some(port) = m.port {
        common::port_number(c, &format!("{field}.port"), port);
    }
    if let Some(ns) = &m.source_namespace
        && !common::is_dns1123_label(ns)
    {
        c.error(
            format!("{field}.sourceNamespace"),
            format!("sourceNamespace match {ns} is invalid"),
        );
    }
    common::selector_labels(c, &format!("{field}.sourceLabels"), &m.source_labels);
    common::gateway_names(c, &format!("{field}.gateways"), &m.gateways);
}

fn http_redirect(c: &mut Check<'_>, field: &str, r: &HttpRedirect, matches: &[HttpMatchRequest]) {
    if r.uri.is_some() && r.prefix_rewrite.is_some() {
        c.error(
            field,
            "redirect may only specify one of uri or prefixRewrite",
        );
    }
    if r.prefix_rewrite.is_some()
        && matches
            .iter()
            .any(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_none()))
    {
        c.error(
            format!("{field}.prefixRewrite"),
            "redirect prefixRewrite requires all URI matches to use prefix match type",
        );
    }
    if r.uri.is_none()
        && r.prefix_rewrite.is_none()
        && r.authority.is_none()
        && r.scheme.is_none()
        && r.port.is_none()
        && r.derive_port.is_none()
    {
        c.error(
            field,
            "redirect must specify uri, authority, scheme, or port",
        );
    }
    if let Some(code) = r.redirect_code
        && !(300..=399).contains(&code)
    {
        c.error(
            format!("{field}.redirectCode"),
            format!("{code} is not a valid redirect code, must be 3xx"),
        );
    }
    if let Some(scheme) = &r.scheme
        && !matches!(scheme.as_str(), "http" | "https")
    {
        c.error(
            format!("{field}.scheme"),
            "invalid redirect scheme, must be \"http\" or \"https\"",
        );
    }
    if let Some(port) = r.port {
        common::port_number(c, &format!("{field}.port"), port);
        if r.derive_port.is_some() {
            c.error(
                format!("{field}.derivePort"),
                "set `port` or `derivePort`, not both",
            );
        }
    }
    if let Some(dp) = &r.derive_port
        && !matches!(dp.as_str(), "FROM_PROTOCOL_DEFAULT" | "FROM_REQUEST_PORT")
    {
        c.error(
            format!("{field}.derivePort"),
            format!("unknown {dp:?} (FROM_PROTOCOL_DEFAULT, FROM_REQUEST_PORT)"),
        );
    }
}

fn http_fault(c: &mut Check<'_>, field: &str, fault: &HttpFaultInjection) {
    if fault.abort.is_none() && fault.delay.is_none() {
        c.error(
            field,
            "HTTP fault injection must have an abort and/or a delay",
        );
    }
    if let Some(abort) = &fault.abort {
        let f = format!("{field}.abort");
        common::percent(c, &format!("{f}.percentage"), abort.percentage.as_ref());
        match (abort.http_status, &abort.grpc_status, &abort.http2_error) {
            (Some(code), None, None) => {
                if !(200..=599).contains(&code) {
                    c.error(
                        format!("{f}.httpStatus"),
                        format!("HTTP status {code} is not in range 200-599"),
                    );
                }
            }
            (None, Some(status), None) => {
                if crate::compile::route_policy::grpc_code(status).is_none() {
                    c.error(
                        format!("{f}.grpcStatus"),
                        format!(
                            "gRPC status {status:?} is not supported; use a status name such as UNAVAILABLE or NOT_FOUND"
                        ),
                    );
                }
            }
            (None, None, Some(_)) => c.error(
                format!("{f}.http2Error"),
                "HTTP/2 abort fault injection not supported yet; use httpStatus or grpcStatus",
            ),
            (None, None, None) => c.warn(&f, "abort configured, but error type not set"),
            _ => c.error(&f, "set only one of httpStatus, grpcStatus, http2Error"),
        }
    }
    if let Some(delay) = &fault.delay {
        let f = format!("{field}.delay");
        common::percent(c, &format!("{f}.percentage"), delay.percentage.as_ref());
        if let Some(p) = delay.percent
            && p > 100
        {
            c.error(
                format!("{f}.percent"),
                format!("percentage {p} is not in range 0..100"),
            );
        }
        match (delay.fixed_delay, delay.exponential_delay) {
            (Some(_), Some(_)) => c.error(&f, "set fixedDelay or exponentialDelay, not both"),
            (Some(d), None) => {
                common::duration_at_least_1ms(c, &format!("{f}.fixedDelay"), Some(d))
            }
            (None, Some(_)) => c.error(
                format!("{f}.exponentialDelay"),
                "exponentialDelay not supported yet; use fixedDelay",
            ),
            (None, None) => c.error(&f, "a delay needs fixedDelay"),
        }
    }
}

fn cors_policy(c: &mut Check<'_>, field: &str, cors: &CorsPolicy) {
    for (i, origin) in cors.allow_origins.iter().enumerate() {
        string_match(c, &format!("{field}.allowOrigins[{i}]"), origin, false);
    }
    for (i, method) in cors.allow_methods.iter().enumerate() {
        if !HTTP_METHODS.contains(&method.as_str()) && method != "*" {
            c.error(
                format!("{field}.allowMethods[{i}]"),
                format!("{method:?} is not a supported HTTP method"),
            );
        }
    }
    for (list, name) in [
        (&cors.allow_headers, "allowHeaders"),
        (&cors.expose_headers, "exposeHeaders"),
    ] {
        for (i, h) in list.iter().enumerate() {
            if h != "*" {
                common::header_name(c, &format!("{field}.{name}[{i}]"), h);
            }
        }
    }
    if let Some(age) = cors.max_age
        && age.get().subsec_nanos() != 0
    {
        c.error(
            format!("{field}.maxAge"),
            "max_age duration is accurate only to seconds precision",
        );
    }
    if let Some(u) = &cors.unmatched_preflights
        && !matches!(u.as_str(), "UNSPECIFIED" | "FORWARD" | "IGNORE")
    {
        c.error(
            format!("{field}.unmatchedPreflights"),
            format!("unknown {u:?} (UNSPECIFIED, FORWARD, IGNORE)"),
        );
    }
    if !cors.allow_origin.is_empty() {
        c.warn(
            format!("{field}.allowOrigin"),
            "deprecated; use allowOrigins with `exact`",
        );
    }
}
