//! Istio's rules for a mesh config (`ValidateMeshConfig`): the root
//! namespace, the modes, the tracing sampling and every extension provider
//! (a unique name, exactly one provider, a service and port, a
//! `statusOnError` that is an HTTP status, a `pathPrefix` starting with `/`).

use std::collections::HashSet;

use super::common::{self, Check};
use crate::config::documents::Document;
use crate::config::mesh::{ExtensionProvider, MeshConfig, RequestBodyInCheck, mesh_field};
use crate::ext_authz::MAX_REQUEST_BYTES;
use crate::model::capture::OutboundTrafficMode;
use crate::path::PathNormalization;

pub(super) fn mesh_config(c: &mut Check<'_>, doc: &Document<MeshConfig>) {
    let at = mesh_field(&doc.api_version);
    let mesh = &doc.spec;
    if let Some(ns) = &mesh.root_namespace
        && !common::is_dns1123_label(ns)
    {
        c.error(
            format!("{at}.rootNamespace"),
            format!("{ns:?} is not a valid namespace (lower case letters, digits and `-`)"),
        );
    }
    if let Some(td) = &mesh.trust_domain
        && let Err(why) = trust_domain(td)
    {
        c.error(format!("{at}.trustDomain"), why);
    }
    for (i, td) in mesh.trust_domain_aliases.iter().enumerate() {
        if let Err(why) = trust_domain(td) {
            c.error(format!("{at}.trustDomainAliases[{i}]"), why);
        }
    }
    if let Some(mode) = mesh
        .outbound_traffic_policy
        .as_ref()
        .and_then(|p| p.mode.as_deref())
        && OutboundTrafficMode::parse(mode).is_none()
    {
        c.error(
            format!("{at}.outboundTrafficPolicy.mode"),
            format!("{mode:?}: the mode is ALLOW_ANY or REGISTRY_ONLY"),
        );
    }
    if let Some(name) = mesh
        .path_normalization
        .as_ref()
        .and_then(|p| p.normalization.as_deref())
        && PathNormalization::parse(name).is_none()
    {
        c.error(
            format!("{at}.pathNormalization.normalization"),
            format!("unknown {name:?} (NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)"),
        );
    }
    let tracing = mesh
        .default_config
        .as_ref()
        .and_then(|d| d.tracing.as_ref());
    if let Some(sampling) = tracing.and_then(|t| t.sampling)
        && !(0.0..=100.0).contains(&sampling)
    {
        c.error(
            format!("{at}.defaultConfig.tracing.sampling"),
            "tracing sampling must be between 0.0 and 100.0 (a percentage)",
        );
    }
    let mut names = HashSet::new();
    for (i, provider) in mesh.extension_providers.iter().enumerate() {
        let f = format!("{at}.extensionProviders[{i}]");
        if provider.name.is_empty() {
            c.error(format!("{f}.name"), "empty extension provider name");
        } else if !names.insert(provider.name.to_ascii_lowercase()) {
            c.error(
                format!("{f}.name"),
                format!("duplicate extension provider name {:?}", provider.name),
            );
        }
        extension_provider(c, &f, provider);
    }
    if let Some(defaults) = &mesh.default_providers {
        for (signal, list) in [
            ("tracing", &defaults.tracing),
            ("metrics", &defaults.metrics),
            ("accessLogging", &defaults.access_logging),
        ] {
            for (k, name) in list.iter().enumerate() {
                let known = names.contains(&name.to_ascii_lowercase())
                    || matches!(name.as_str(), "prometheus" | "envoy" | "stackdriver");
                if !known {
                    c.warn(
                        format!("{at}.defaultProviders.{signal}[{k}]"),
                        format!("no extension provider is named {name:?}: it is skipped, as Istio skips it"),
                    );
                }
            }
        }
    }
}

fn extension_provider(c: &mut Check<'_>, f: &str, p: &ExtensionProvider) {
    let kinds = p.kinds();
    match kinds.len() {
        0 => c.error(
            f,
            "an extension provider needs one provider (envoyExtAuthzHttp, envoyExtAuthzGrpc, opentelemetry, prometheus, envoyFileAccessLog, envoyOtelAls, …)",
        ),
        1 => {}
        _ => {
            let names: Vec<&str> = kinds.iter().map(|(n, _)| *n).collect();
            c.error(
                f,
                format!("set one provider per entry, found {}", names.join(", ")),
            );
        }
    }
    if let Some(http) = &p.envoy_ext_authz_http {
        let f = format!("{f}.envoyExtAuthzHttp");
        service_port(c, &f, &http.service, http.port);
        status_on_error(c, &f, http.status_on_error.as_deref());
        if let Some(prefix) = &http.path_prefix
            && !prefix.is_empty()
            && !prefix.starts_with('/')
        {
            c.error(
                format!("{f}.pathPrefix"),
                format!("pathPrefix should begin with `/` but found {prefix:?}"),
            );
        }
        common::duration_at_least_1ms(c, &format!("{f}.timeout"), http.timeout);
        request_body(c, &f, http.include_request_body_in_check.as_ref());
        for (name, list) in [
            (
                "includeRequestHeadersInCheck",
                &http.include_request_headers_in_check,
            ),
            ("includeHeadersInCheck", &http.include_headers_in_check),
            (
                "headersToUpstreamOnAllow",
                &http.headers_to_upstream_on_allow,
            ),
            (
                "headersToDownstreamOnDeny",
                &http.headers_to_downstream_on_deny,
            ),
            (
                "headersToDownstreamOnAllow",
                &http.headers_to_downstream_on_allow,
            ),
        ] {
            for (k, h) in list.iter().enumerate() {
                common::header_name(c, &format!("{f}.{name}[{k}]"), h);
            }
        }
        for (h, v) in &http.include_additional_headers_in_check {
            let hf = format!("{f}.includeAdditionalHeadersInCheck.{h}");
            common::header_name(c, &hf, h);
            common::header_value(c, &hf, v);
        }
    }
    if let Some(grpc) = &p.envoy_ext_authz_grpc {
        let f = format!("{f}.envoyExtAuthzGrpc");
        service_port(c, &f, &grpc.service, grpc.port);
        status_on_error(c, &f, grpc.status_on_error.as_deref());
        common::duration_at_least_1ms(c, &format!("{f}.timeout"), grpc.timeout);
        request_body(c, &f, grpc.include_request_body_in_check.as_ref());
    }
    if let Some(otel) = &p.opentelemetry {
        let f = format!("{f}.opentelemetry");
        service_port(c, &f, &otel.service, otel.port);
        if otel.http.is_some() && otel.grpc.is_some() {
            c.error(
                &f,
                "OpenTelemetryTracingProvider cannot specify both grpc and http",
            );
        }
        let sent = [
            ("http.headers", otel.http.as_ref().map(|h| &h.headers)),
            (
                "grpc.initialMetadata",
                otel.grpc.as_ref().map(|g| &g.initial_metadata),
            ),
        ];
        for (name, list) in sent {
            for (k, header) in list.into_iter().flatten().enumerate() {
                let hf = format!("{f}.{name}[{k}]");
                common::header_name(c, &format!("{hf}.name"), &header.name);
                common::header_value(c, &format!("{hf}.value"), &header.value);
            }
        }
    }
    if let Some(als) = &p.envoy_otel_als {
        service_port(c, &format!("{f}.envoyOtelAls"), &als.service, als.port);
    }
}

/// `includeRequestBodyInCheck.maxRequestBytes`: required and more than 0,
/// as Envoy's `BufferSettings.max_request_bytes` requires (`uint32.gt: 0`;
/// Istio passes the value through, so an unset value or 0 is a config Envoy
/// rejects), and at most [`MAX_REQUEST_BYTES`], the agent's bound on a body
/// held per request.
fn request_body(c: &mut Check<'_>, f: &str, body: Option<&RequestBodyInCheck>) {
    let Some(body) = body else {
        return;
    };
    let f = format!("{f}.includeRequestBodyInCheck.maxRequestBytes");
    match body.max_request_bytes {
        None => c.error(
            f,
            "maxRequestBytes is required with includeRequestBodyInCheck: the most body bytes sent to the authorizer (Envoy's max_request_bytes), e.g. 8192",
        ),
        Some(0) => c.error(
            f,
            "maxRequestBytes must be greater than 0 (Envoy's max_request_bytes), e.g. 8192",
        ),
        Some(n) if n as usize > MAX_REQUEST_BYTES => c.error(
            f,
            format!(
                "maxRequestBytes {n} is over the agent's bound of {MAX_REQUEST_BYTES} bytes held per request"
            ),
        ),
        _ => {}
    }
}

/// `service` is a host name, `namespace/host` or an IP; `port` 1–65535.
fn service_port(c: &mut Check<'_>, f: &str, service: &str, port: u32) {
    if service.is_empty() {
        c.error(format!("{f}.service"), "service must not be empty");
    } else {
        let host = service.rsplit_once('/').map_or(service, |(_, h)| h);
        let valid = common::is_ip(host)
            || (host.len() <= 255
                && host
                    .trim_end_matches('.')
                    .split('.')
                    .all(|l| common::is_dns1123_label(&l.to_ascii_lowercase())));
        if !valid {
            c.error(
                format!("{f}.service"),
                format!("invalid service fmt {service:?}: a host name, `namespace/host` or an IP address"),
            );
        }
    }
    common::port_number(c, &format!("{f}.port"), port);
}

/// Envoy's `StatusCode` enum: the HTTP statuses it names.
const STATUS_CODES: &[u16] = &[
    100, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308,
    400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421,
    422, 423, 424, 426, 428, 429, 431, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
];

fn status_on_error(c: &mut Check<'_>, f: &str, status: Option<&str>) {
    let Some(status) = status.filter(|s| !s.is_empty()) else {
        return;
    };
    if !status
        .parse::<u16>()
        .is_ok_and(|code| STATUS_CODES.contains(&code))
    {
        c.error(
            format!("{f}.statusOnError"),
            format!("unsupported statusOnError value {status:?}: an HTTP status Envoy knows (e.g. 403, 500, 503)"),
        );
    }
}

/// Istio's `ValidateTrustDomain`: DNS-1123 labels joined by dots (the last
/// may be empty, `istio.io.`).
fn trust_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let last = labels.len() - 1;
    let valid = labels
        .iter()
        .enumerate()
        .all(|(i, label)| (i == last && label.is_empty()) || common::is_dns1123_label(label));
    if valid {
        Ok(())
    } else {
        Err(format!("trust domain name {domain:?} invalid"))
    }
}
