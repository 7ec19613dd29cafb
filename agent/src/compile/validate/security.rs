//! Istio's rules for security.istio.io and telemetry.istio.io resources:
//! AuthorizationPolicy, PeerAuthentication, RequestAuthentication, Telemetry.

use super::common::{self, Check};
use crate::config::documents::Document;
use crate::config::security::{
    AuthorizationPolicySpec, DRY_RUN_ANNOTATION, PeerAuthenticationSpec, RequestAuthenticationSpec,
    Source, parse_go_bool,
};
use crate::config::telemetry::TelemetrySpec;
use crate::model::expr::Expression;

/// Condition keys Istio knows (`when[].key`), exact or as prefixes.
const EXACT_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.serviceAccount",
    "source.principal",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];
const MAP_KEYS: &[&str] = &[
    "request.headers[",
    "request.auth.claims[",
    "experimental.envoy.filters.",
];

/// The `istio.io/dry-run` annotation: a boolean as Go reads one; a dry run
/// of a CUSTOM policy is refused (its provider would still be asked), one
/// of an AUDIT policy is warned of (it would record nothing).
fn dry_run(c: &mut Check<'_>, doc: &Document<AuthorizationPolicySpec>, action: &str) {
    let Some(value) = doc.metadata.annotations.get(DRY_RUN_ANNOTATION) else {
        return;
    };
    let field = format!("metadata.annotations[{DRY_RUN_ANNOTATION}]");
    match (parse_go_bool(value), action) {
        (None, _) => c.error(field, format!("{value:?} is not a boolean (true or false)")),
        (Some(true), "CUSTOM") => c.error(
            field,
            "a dry run of a CUSTOM policy is not supported: ALLOW and DENY policies only",
        ),
        (Some(true), "AUDIT") => c.warn(
            field,
            "a dry run of an AUDIT policy records nothing: the policy is left out",
        ),
        _ => {}
    }
}

pub(super) fn authorization_policy(c: &mut Check<'_>, doc: &Document<AuthorizationPolicySpec>) {
    let spec = &doc.spec;
    if let Some(selector) = &spec.selector {
        common::selector(c, "spec.selector", selector);
    }
    common::target_refs(
        c,
        spec.target_ref.as_ref(),
        &spec.target_refs,
        spec.selector.is_some(),
    );
    let action = spec.action.as_deref().unwrap_or("ALLOW");
    match action {
        "ALLOW" | "AUDIT" => {}
        "DENY" if spec.rules.is_empty() => c.error("spec.rules", "DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` to deny all"),
        "DENY" => {}
        "CUSTOM" => {
            if spec.rules.is_empty() {
                c.error("spec.rules", "CUSTOM action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` to always trigger");
            }
            match &spec.provider {
                None => c.error("spec.provider", "CUSTOM action needs `provider.name` (an extension provider of the mesh config)"),
                Some(p) if p.name.is_empty() => c.error("spec.provider.name", "`provider.name` must not be empty"),
                Some(_) => {}
            }
        }
        other => c.error("spec.action", format!("unknown action {other:?} (ALLOW, DENY, AUDIT, CUSTOM)")),
    }
    dry_run(c, doc, action);
    if action != "CUSTOM" && spec.provider.is_some() {
        c.error(
            "spec.provider",
            format!("`provider` must not be with non CUSTOM action, found {action}"),
        );
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let rf = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            source(c, &format!("{rf}.from[{j}].source"), &from.source);
        }
        for (j, to) in rule.to.iter().enumerate() {
            let f = format!("{rf}.to[{j}].operation");
            let op = &to.operation;
            let all = [
                &op.hosts,
                &op.not_hosts,
                &op.ports,
                &op.not_ports,
                &op.methods,
                &op.not_methods,
                &op.paths,
                &op.not_paths,
            ];
            if all.iter().all(|l| l.is_empty()) {
                c.error(
                    &f,
                    format!("`to.operation` must not be empty, found at rule {i}"),
                );
            }
            for (name, list) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                for (k, p) in list.iter().enumerate() {
                    if !is_port_number(p) {
                        c.error(
                            format!("{f}.{name}[{k}]"),
                            format!("{p:?} is not a port number (1-65535)"),
                        );
                    }
                }
            }
            for (name, list) in [
                ("hosts", &op.hosts),
                ("notHosts", &op.not_hosts),
                ("paths", &op.paths),
                ("notPaths", &op.not_paths),
                ("methods", &op.methods),
                ("notMethods", &op.not_methods),
            ] {
                for (k, v) in list.iter().enumerate() {
                    wildcard_value(c, &format!("{f}.{name}[{k}]"), v, name.ends_with("aths"));
                }
            }
        }
        for (j, when) in rule.when.iter().enumerate() {
            let f = format!("{rf}.when[{j}]");
            let key = when.key.as_str();
            if key.is_empty() {
                c.error(format!("{f}.key"), "`key` must not be empty");
                continue;
            }
            if when.values.is_empty() && when.not_values.is_empty() {
                c.error(
                    &f,
                    format!("at least one of `values` or `notValues` must be set for key {key}"),
                );
            }
            let known = EXACT_KEYS.contains(&key)
                || MAP_KEYS.iter().any(|p| {
                    key.strip_prefix(p).is_some_and(|rest| {
                        if p.ends_with('[') {
                            rest.len() > 1 && rest.ends_with(']')
                        } else {
                            !rest.is_empty()
                        }
                    })
                });
            if !known {
                let hint = match key {
                    "destination.namespace" => " (replaced by metadata.namespace)".to_owned(),
                    k if k.starts_with("destination.labels") => {
                        " (replaced by the workload selector)".to_owned()
                    }
                    _ => format!(
                        " (known: {}, request.headers[NAME], request.auth.claims[NAME])",
                        EXACT_KEYS.join(", ")
                    ),
                };
                c.error(
                    format!("{f}.key"),
                    format!("unknown attribute: {key}{hint}"),
                );
            }
            let ips = matches!(key, "source.ip" | "remote.ip" | "destination.ip");
            for (name, list) in [("values", &when.values), ("notValues", &when.not_values)] {
                for (k, v) in list.iter().enumerate() {
                    let vf = format!("{f}.{name}[{k}]");
                    if ips {
                        common::peer_ip_or_cidr(c, &vf, v);
                    } else if key == "destination.port" && !is_port_number(v) {
                        c.error(&vf, format!("{v:?} is not a port number (1-65535)"));
                    } else if key == "source.serviceAccount" && !is_service_account(v) {
                        c.error(
                            &vf,
                            format!("{v:?} must be namespace/serviceaccount, without wildcards"),
                        );
                    }
                }
            }
        }
    }
}

/// A service account as policies name one: `namespace/name`, both parts
/// present, no wildcard (a `*` would be matched literally and match no
/// caller).
fn is_service_account(value: &str) -> bool {
    value
        .split_once('/')
        .is_some_and(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains('/'))
        && !value.contains('*')
}

fn source(c: &mut Check<'_>, field: &str, s: &Source) {
    let lists = [
        &s.principals,
        &s.not_principals,
        &s.request_principals,
        &s.not_request_principals,
        &s.namespaces,
        &s.not_namespaces,
        &s.ip_blocks,
        &s.not_ip_blocks,
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
        &s.service_accounts,
        &s.not_service_accounts,
        &s.trust_domains,
        &s.not_trust_domains,
    ];
    if lists.iter().all(|l| l.is_empty()) {
        c.error(field, "`from.source` must not be empty");
    }
    let accounts = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    let ids = !s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty();
    if accounts && ids {
        c.error(
            format!("{field}.serviceAccounts"),
            "cannot set serviceAccounts with namespaces or principals",
        );
    }
    for (name, list) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        for (k, v) in list.iter().enumerate() {
            if !is_service_account(v) {
                c.error(
                    format!("{field}.{name}[{k}]"),
                    format!("{v:?} must be namespace/serviceaccount, without wildcards"),
                );
            }
        }
    }
    for (name, list) in [
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        for (k, v) in list.iter().enumerate() {
            common::peer_ip_or_cidr(c, &format!("{field}.{name}[{k}]"), v);
        }
    }
    for (name, list) in [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ] {
        for (k, v) in list.iter().enumerate() {
            wildcard_value(c, &format!("{field}.{name}[{k}]"), v, false);
        }
    }
}

/// Istio's string values: `*` only as a whole value, a prefix or a suffix.
fn wildcard_value(c: &mut Check<'_>, field: &str, v: &str, path: bool) {
    if v.is_empty() {
        c.error(field, "empty value not allowed");
        return;
    }
    let inner = v.trim_start_matches('*').trim_end_matches('*');
    if inner.contains('*') && !path {
        c.error(
            field,
            format!("{v:?}: `*` is only supported as a prefix or suffix (or alone)"),
        );
    }
    if path && inner.contains('*') && !v.contains("{*}") && !v.contains("{**}") {
        c.error(
            field,
            format!("{v:?}: `*` inside a path is only supported as `{{*}}` or `{{**}}` segments"),
        );
    }
}

pub(super) fn peer_authentication(c: &mut Check<'_>, doc: &Document<PeerAuthenticationSpec>) {
    let spec = &doc.spec;
    if let Some(selector) = &spec.selector {
        common::selector(c, "spec.selector", selector);
    }
    let modes = |m: Option<&str>| {
        matches!(
            m,
            None | Some("UNSET" | "DISABLE" | "PERMISSIVE" | "STRICT")
        )
    };
    if let Some(m) = spec.mtls.as_ref().and_then(|m| m.mode.as_deref())
        && !modes(Some(m))
    {
        c.error(
            "spec.mtls.mode",
            format!("unknown mode {m:?} (UNSET, DISABLE, PERMISSIVE, STRICT)"),
        );
    }
    let workload = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !spec.port_level_mtls.is_empty() && !workload {
        c.error("spec.portLevelMtls", "mesh/namespace peer authentication cannot have port level mTLS; add a `selector` with labels");
    }
    for (port, m) in &spec.port_level_mtls {
        let f = format!("spec.portLevelMtls.{port}");
        if !(1..=65535).contains(port) {
            c.error(&f, "port must be in range 1..65535");
        }
        if !modes(m.mode.as_deref()) {
            c.error(
                format!("{f}.mode"),
                format!(
                    "unknown mode {:?} (UNSET, DISABLE, PERMISSIVE, STRICT)",
                    m.mode.as_deref().unwrap_or_default()
                ),
            );
        }
    }
}

pub(super) fn request_authentication(c: &mut Check<'_>, doc: &Document<RequestAuthenticationSpec>) {
    let spec = &doc.spec;
    if let Some(selector) = &spec.selector {
        common::selector(c, "spec.selector", selector);
    }
    common::target_refs(
        c,
        spec.target_ref.as_ref(),
        &spec.target_refs,
        spec.selector.is_some(),
    );
    let mut issuers = std::collections::HashSet::new();
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let f = format!("spec.jwtRules[{i}]");
        if rule.issuer.is_empty() && rule.jwks_uri.as_deref().unwrap_or_default().is_empty() {
            c.error(
                format!("{f}.issuer"),
                "issuer or jwksUri must be non-empty string",
            );
        }
        if !rule.issuer.is_empty() && !issuers.insert(rule.issuer.as_str()) {
            c.error(
                format!("{f}.issuer"),
                format!("duplicate issuer {:?}", rule.issuer),
            );
        }
        for (k, a) in rule.audiences.iter().enumerate() {
            if a.is_empty() {
                c.error(
                    format!("{f}.audiences[{k}]"),
                    "audience must be non-empty string",
                );
            }
        }
        if let Some(uri) = &rule.jwks_uri
            && !(uri.starts_with("https://")
                || uri.starts_with("http://")
                || uri.starts_with("file://"))
        {
            c.error(
                format!("{f}.jwksUri"),
                format!("{uri:?} is not an http(s) URL"),
            );
        }
        if rule.jwks_uri.is_some() && rule.jwks.is_some() {
            c.warn(
                format!("{f}.jwks"),
                "both jwks and jwksUri are set: jwks is used",
            );
        }
        if let Some(jwks) = &rule.jwks {
            match serde_json::from_str::<serde_json::Value>(jwks) {
                Err(e) => c.error(format!("{f}.jwks"), format!("jwks parse error: {e}")),
                Ok(v) if !v.get("keys").is_some_and(serde_json::Value::is_array) => {
                    c.error(
                        format!("{f}.jwks"),
                        "jwks parse error: a JSON Web Key Set is an object with a `keys` array",
                    );
                }
                Ok(v) => {
                    let private = v["keys"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .enumerate()
                        .filter(|(_, k)| k.get("d").is_some());
                    for (k, _) in private {
                        c.warn(format!("{f}.jwks"), format!("jwks key at index {k} contains private key material; only public keys are used for verification"));
                    }
                }
            }
        }
        for (k, h) in rule.from_headers.iter().enumerate() {
            if h.name.is_empty() {
                c.error(
                    format!("{f}.fromHeaders[{k}].name"),
                    "location header name must be non-empty string",
                );
            } else {
                common::header_name(c, &format!("{f}.fromHeaders[{k}].name"), &h.name);
            }
        }
        for (k, p) in rule.from_params.iter().enumerate() {
            if p.is_empty() {
                c.error(
                    format!("{f}.fromParams[{k}]"),
                    "location query must be non-empty string",
                );
            }
        }
        for (k, cookie) in rule.from_cookies.iter().enumerate() {
            if cookie.is_empty() {
                c.error(
                    format!("{f}.fromCookies[{k}]"),
                    "cookie name must be non-empty string",
                );
            }
        }
        for (k, o) in rule.output_claim_to_headers.iter().enumerate() {
            if o.header.is_empty() || o.claim.is_empty() {
                c.error(
                    format!("{f}.outputClaimToHeaders[{k}]"),
                    "outputClaimToHeaders header and claim value must be non-empty string",
                );
            } else {
                common::header_operation_name(
                    c,
                    &format!("{f}.outputClaimToHeaders[{k}].header"),
                    &o.header,
                );
            }
        }
        if let Some(h) = &rule.output_payload_to_header {
            common::header_name(c, &format!("{f}.outputPayloadToHeader"), h);
        }
        common::duration_at_least_1ms(c, &format!("{f}.timeout"), rule.timeout);
    }
}

const MODES: &[&str] = &["CLIENT_AND_SERVER", "CLIENT", "SERVER"];
const METRICS: &[&str] = &[
    "ALL_METRICS",
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
];

fn mode(c: &mut Check<'_>, field: &str, mode: Option<&str>) {
    if let Some(m) = mode
        && !MODES.contains(&m)
    {
        c.error(
            field,
            format!("unknown mode {m:?} (CLIENT_AND_SERVER, CLIENT, SERVER)"),
        );
    }
}

fn providers(c: &mut Check<'_>, field: &str, providers: &[crate::config::telemetry::ProviderRef]) {
    for (k, p) in providers.iter().enumerate() {
        if p.name.is_empty() {
            c.error(
                format!("{field}[{k}].name"),
                "providers.name may not be empty",
            );
        }
    }
}

pub(super) fn telemetry(c: &mut Check<'_>, doc: &Document<TelemetrySpec>) {
    let spec = &doc.spec;
    if let Some(selector) = &spec.selector {
        common::selector(c, "spec.selector", selector);
    }
    common::target_refs(
        c,
        spec.target_ref.as_ref(),
        &spec.target_refs,
        spec.selector.is_some(),
    );
    if spec.tracing.len() > 1 {
        c.warn(
            "spec.tracing",
            "multiple tracing is not currently supported",
        );
    }
    for (i, t) in spec.tracing.iter().enumerate() {
        let f = format!("spec.tracing[{i}]");
        mode(
            c,
            &format!("{f}.match.mode"),
            t.matches.as_ref().and_then(|m| m.mode.as_deref()),
        );
        providers(c, &format!("{f}.providers"), &t.providers);
        if t.providers.len() > 1 {
            c.warn(
                format!("{f}.providers"),
                "multiple providers is not currently supported",
            );
        }
        if t.random_sampling_percentage
            .is_some_and(|p| !(0.0..=100.0).contains(&p))
        {
            c.error(
                format!("{f}.randomSamplingPercentage"),
                "randomSamplingPercentage must be in range [0.0, 100.0]",
            );
        }
        for (name, tag) in &t.custom_tags {
            let tf = format!("{f}.customTags.{name}");
            if name.is_empty() {
                c.error(&tf, "tag name may not be empty");
            }
            let kinds = [
                tag.literal.is_some(),
                tag.environment.is_some(),
                tag.header.is_some(),
                tag.formatter.is_some(),
            ];
            match kinds.iter().filter(|k| **k).count() {
                0 => c.error(&tf, format!("tag '{name}' may not have a nil value: set literal, environment, header or formatter")),
                1 => {}
                _ => c.error(&tf, "set only one of literal, environment, header, formatter"),
            }
            if tag.literal.as_ref().is_some_and(|l| l.value.is_empty()) {
                c.error(
                    format!("{tf}.literal.value"),
                    "literal tag value may not be empty",
                );
            }
            if tag.header.as_ref().is_some_and(|h| h.name.is_empty()) {
                c.error(
                    format!("{tf}.header.name"),
                    "header tag name may not be empty",
                );
            }
            if tag.environment.as_ref().is_some_and(|e| e.name.is_empty()) {
                c.error(
                    format!("{tf}.environment.name"),
                    "environment tag name may not be empty",
                );
            }
        }
    }
    for (i, m) in spec.metrics.iter().enumerate() {
        let f = format!("spec.metrics[{i}]");
        providers(c, &format!("{f}.providers"), &m.providers);
        common::duration_at_least_1ms(c, &format!("{f}.reportingInterval"), m.reporting_interval);
        for (j, o) in m.overrides.iter().enumerate() {
            let of = format!("{f}.overrides[{j}]");
            if let Some(sel) = &o.matches {
                if sel.metric.is_some() && sel.custom_metric.is_some() {
                    c.error(
                        format!("{of}.match"),
                        "set `metric` or `customMetric`, not both",
                    );
                }
                if let Some(metric) = &sel.metric
                    && !METRICS.contains(&metric.as_str())
                {
                    c.error(
                        format!("{of}.match.metric"),
                        format!("unknown metric {metric:?} (one of {})", METRICS.join(", ")),
                    );
                }
                if sel.custom_metric.as_deref() == Some("") {
                    c.error(
                        format!("{of}.match.customMetric"),
                        "customMetric may not be empty",
                    );
                }
                mode(c, &format!("{of}.match.mode"), sel.mode.as_deref());
            }
            for (name, to) in &o.tag_overrides {
                let tf = format!("{of}.tagOverrides.{name}");
                if name.is_empty() {
                    c.warn(&tf, "tagOverrides.name may not be empty");
                }
                match to.operation.as_deref().unwrap_or("UPSERT") {
                    "UPSERT" if to.value.as_deref().unwrap_or_default().is_empty() => c.error(
                        format!("{tf}.value"),
                        "tagOverrides.value must be set when operation is UPSERT",
                    ),
                    "UPSERT" => {
                        if let Some(Err(e)) = to.value.as_deref().map(Expression::parse) {
                            c.error(
                                format!("{tf}.value"),
                                format!("not an expression the agent evaluates: {e} (see the CEL subset in docs/config.md)"),
                            );
                        }
                    }
                    "REMOVE" if to.value.is_some() => c.error(
                        format!("{tf}.value"),
                        "tagOverrides.value may only be set when operation is UPSERT",
                    ),
                    "REMOVE" => {}
                    other => c.error(
                        format!("{tf}.operation"),
                        format!("unknown operation {other:?} (UPSERT, REMOVE)"),
                    ),
                }
            }
        }
    }
    for (i, a) in spec.access_logging.iter().enumerate() {
        let f = format!("spec.accessLogging[{i}]");
        mode(
            c,
            &format!("{f}.match.mode"),
            a.matches.as_ref().and_then(|m| m.mode.as_deref()),
        );
        providers(c, &format!("{f}.providers"), &a.providers);
        if a.filter
            .as_ref()
            .is_some_and(|fl| fl.expression.trim().is_empty())
        {
            c.error(
                format!("{f}.filter.expression"),
                "filter expression may not be empty",
            );
        } else if let Some(Err(e)) = a
            .filter
            .as_ref()
            .map(|fl| Expression::parse(&fl.expression))
        {
            c.error(
                format!("{f}.filter.expression"),
                format!("not an expression the agent evaluates: {e} (see the CEL subset in docs/config.md)"),
            );
        }
    }
}

/// A port as Istio reads one in a policy (Go's `strconv.ParseUint`): decimal
/// digits only, no sign, 1 to 65535.
fn is_port_number(text: &str) -> bool {
    !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && text.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
}
