//! The file's MeshConfig → [`Mesh`]: the root namespace, the extension
//! providers (Istio's built-in `prometheus`, `stackdriver` and `envoy`,
//! replaced by a user's provider of the same name, as istiod merges them),
//! the default providers and the tracing defaults.
//!
//! The mesh config's `outboundTrafficPolicy` and `pathNormalization` are
//! the mesh's defaults: the Agent document is this workload's own settings
//! (as a pod's `proxy.istio.io/config` annotation is in Istio) and wins
//! where it sets a field; a Sidecar or Telemetry that applies to the
//! workload wins over both.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

use crate::config::diagnostics::Diagnostics;
use crate::config::documents::Document;
use crate::config::mesh::{ExtensionProvider, MeshConfig, RequestBodyInCheck};
use crate::ext_authz::{
    BodySettings, CommonSettings, DEFAULT_TIMEOUT, GrpcAuthzSettings, HttpAuthzSettings,
};
use crate::model::authz::Pattern;
use crate::model::bootstrap::MIN_EXPORT_TIMEOUT;
use crate::model::capture::OutboundTrafficMode;
use crate::model::mesh::{
    DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN, DefaultProviders, Mesh, OtlpTarget, Provider,
    ProviderConfig, TrustDomainBundle, builtin_providers,
};
use crate::path::PathNormalization;

/// The compiled mesh and the mesh-wide defaults the Agent may override.
pub(super) struct MeshDefaults {
    pub mesh: Mesh,
    /// `outboundTrafficPolicy.mode`.
    pub outbound_traffic_policy: Option<OutboundTrafficMode>,
    /// `pathNormalization.normalization`.
    pub path_normalization: Option<PathNormalization>,
    /// `trustDomain`: the mesh's trust domain, when the mesh config sets it.
    pub trust_domain: Option<String>,
    /// `trustDomainAliases`.
    pub trust_domain_aliases: Vec<String>,
}

impl MeshDefaults {
    /// The mesh config's trust domain (else Istio's default,
    /// `cluster.local`) and its `trustDomainAliases`: what the identities
    /// of a service's accounts are written in (Istio's
    /// `spiffe.MustGenSpiffeURI`, `ExpandWithTrustDomains`).
    pub fn trust_domains(&self) -> TrustDomainBundle {
        TrustDomainBundle::new(
            self.trust_domain.as_deref().unwrap_or(DEFAULT_TRUST_DOMAIN),
            &self.trust_domain_aliases,
        )
    }
}

/// The root namespace of the file's mesh config (the first one's
/// `rootNamespace`), else Istio's default `istio-system`.
pub(super) fn root_namespace(docs: &[Document<MeshConfig>]) -> &str {
    docs.first()
        .and_then(|doc| doc.spec.root_namespace.as_deref())
        .filter(|ns| !ns.is_empty())
        .unwrap_or(DEFAULT_ROOT_NAMESPACE)
}

/// The file's one mesh config (a second one is an error), compiled;
/// `rejected`: the file held a mesh config that was refused, so with no
/// valid one the mesh's providers are unknown ([`Mesh::rejected`]).
pub(super) fn compile(
    docs: &[Document<MeshConfig>],
    rejected: bool,
    diags: &mut Diagnostics,
) -> MeshDefaults {
    if let [first, rest @ ..] = docs {
        for extra in rest {
            let msg = format!(
                "a file holds one mesh config; {} is the one in force",
                first.location.resource.as_deref().unwrap_or("the first")
            );
            diags.error(&extra.location, None, msg);
        }
    }
    let Some(doc) = docs.first() else {
        return MeshDefaults {
            mesh: Mesh {
                rejected,
                ..Mesh::default()
            },
            outbound_traffic_policy: None,
            path_normalization: None,
            trust_domain: None,
            trust_domain_aliases: Vec::new(),
        };
    };
    let config = &doc.spec;
    let mut providers = builtin_providers();
    let at = crate::config::mesh::mesh_field(&doc.api_version);
    for (i, raw) in config.extension_providers.iter().enumerate() {
        // A tracing provider's timeout becomes the span export's: with
        // none, every export would fail unsent.
        if let Some(otel) = &raw.opentelemetry {
            let timeouts = [
                ("http", otel.http.as_ref().and_then(|h| h.timeout)),
                ("grpc", otel.grpc.as_ref().and_then(|g| g.timeout)),
            ];
            for (kind, timeout) in timeouts {
                if timeout.is_some_and(|t| t.get() < MIN_EXPORT_TIMEOUT) {
                    diags.error(
                        &doc.location,
                        Some(format!(
                            "{at}.extensionProviders[{i}].opentelemetry.{kind}.timeout"
                        )),
                        "must be at least 1ms: every span export would time out unanswered",
                    );
                }
            }
        }
        let mut config = provider(raw);
        if let (ProviderConfig::FileAccessLog { format, .. }, Some(file)) =
            (&mut config, &raw.envoy_file_access_log)
            && let Some(value) = &file.log_format
        {
            match crate::model::log_format::compile(value) {
                Ok(compiled) => *format = compiled.map(Arc::new),
                Err((sub, error)) => diags.error(
                    &doc.location,
                    Some(format!(
                        "{at}.extensionProviders[{i}].envoyFileAccessLog.logFormat.{sub}"
                    )),
                    error.to_string(),
                ),
            }
        }
        let provider = Arc::new(Provider {
            name: raw.name.clone(),
            field: Some(format!("{at}.extensionProviders[{i}]")),
            config,
        });
        match providers
            .iter_mut()
            .find(|p| p.name.eq_ignore_ascii_case(&raw.name))
        {
            Some(slot) => *slot = provider,
            None => providers.push(provider),
        }
    }
    let defaults = config.default_providers.clone().unwrap_or_default();
    let tracing = config
        .default_config
        .as_ref()
        .and_then(|d| d.tracing.as_ref());
    MeshDefaults {
        mesh: Mesh {
            root_namespace: root_namespace(docs).to_owned(),
            source: doc.location.resource.clone(),
            location: Some(doc.location.clone()),
            providers,
            default_providers: DefaultProviders {
                tracing: defaults.tracing,
                metrics: defaults.metrics,
                access_logging: defaults.access_logging,
            },
            // Istio's `proxyConfigSamplingValue`: 0 is unset, past 100 is 1.
            default_sampling_percent: tracing
                .and_then(|t| t.sampling)
                .filter(|p| *p != 0.0)
                .map(|p| if p > 100.0 { 1.0 } else { p }),
            default_custom_tags: tracing
                .iter()
                .flat_map(|t| &t.custom_tags)
                .filter_map(|(name, tag)| super::telemetry::custom_tag(name, tag))
                .collect(),
            rejected: false,
            dns_refresh_rate: dns_refresh_rate(doc, diags),
        },
        outbound_traffic_policy: config
            .outbound_traffic_policy
            .as_ref()
            .and_then(|p| p.mode.as_deref())
            .and_then(OutboundTrafficMode::parse),
        path_normalization: config
            .path_normalization
            .as_ref()
            .and_then(|p| p.normalization.as_deref())
            .and_then(PathNormalization::parse),
        trust_domain: config.trust_domain.clone(),
        trust_domain_aliases: config.trust_domain_aliases.clone(),
    }
}

/// The mesh config's `dnsRefreshRate`, else Istio's default; below 1ms
/// (Istio's validation, Envoy's `dns_refresh_rate` bound) an error.
fn dns_refresh_rate(doc: &Document<MeshConfig>, diags: &mut Diagnostics) -> Duration {
    let Some(rate) = doc.spec.dns_refresh_rate else {
        return crate::model::mesh::DEFAULT_DNS_REFRESH_RATE;
    };
    if rate.get() < Duration::from_millis(1) {
        let at = crate::config::mesh::mesh_field(&doc.api_version);
        diags.error(
            &doc.location,
            Some(format!("{at}.dnsRefreshRate")),
            format!("{rate} is below 1ms, the least Istio and Envoy take"),
        );
    }
    rate.get()
}

/// `host:port` of a provider's `service` (`namespace/host` or `host`).
fn target(service: &str, port: u32) -> String {
    let host = service.rsplit_once('/').map_or(service, |(_, h)| h);
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn status_on_error(status: Option<&str>) -> StatusCode {
    status
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::FORBIDDEN)
}

fn body(raw: Option<&RequestBodyInCheck>) -> Option<BodySettings> {
    raw.map(|b| BodySettings {
        max_request_bytes: b.max_request_bytes.unwrap_or(0) as usize,
        allow_partial_message: b.allow_partial_message,
        pack_as_bytes: b.pack_as_bytes,
    })
}

fn patterns(list: &[String]) -> Vec<Pattern> {
    list.iter()
        .map(|h| Pattern::parse(&h.to_ascii_lowercase()))
        .collect()
}

fn provider(raw: &ExtensionProvider) -> ProviderConfig {
    if let Some(http) = &raw.envoy_ext_authz_http {
        let mut include = patterns(&http.include_request_headers_in_check);
        include.extend(patterns(&http.include_headers_in_check));
        let additional = http
            .include_additional_headers_in_check
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::try_from(k.to_ascii_lowercase()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        return ProviderConfig::ExtAuthzHttp(Arc::new(HttpAuthzSettings {
            common: CommonSettings {
                provider: raw.name.clone(),
                service: http.service.clone(),
                port: u16::try_from(http.port).unwrap_or(0),
                target: target(&http.service, http.port),
                timeout: http.timeout.map_or(DEFAULT_TIMEOUT, |t| t.get()),
                fail_open: http.fail_open,
                status_on_error: status_on_error(http.status_on_error.as_deref()),
                body: body(http.include_request_body_in_check.as_ref()),
            },
            path_prefix: http.path_prefix.clone().unwrap_or_default(),
            include_request_headers: include,
            additional_headers: additional,
            headers_to_upstream_on_allow: patterns(&http.headers_to_upstream_on_allow),
            headers_to_downstream_on_deny: patterns(&http.headers_to_downstream_on_deny),
            headers_to_downstream_on_allow: patterns(&http.headers_to_downstream_on_allow),
        }));
    }
    if let Some(grpc) = &raw.envoy_ext_authz_grpc {
        return ProviderConfig::ExtAuthzGrpc(Arc::new(GrpcAuthzSettings {
            common: CommonSettings {
                provider: raw.name.clone(),
                service: grpc.service.clone(),
                port: u16::try_from(grpc.port).unwrap_or(0),
                target: target(&grpc.service, grpc.port),
                timeout: grpc.timeout.map_or(DEFAULT_TIMEOUT, |t| t.get()),
                fail_open: grpc.fail_open,
                status_on_error: status_on_error(grpc.status_on_error.as_deref()),
                body: body(grpc.include_request_body_in_check.as_ref()),
            },
        }));
    }
    if let Some(otel) = &raw.opentelemetry {
        let base = format!("http://{}", target(&otel.service, otel.port));
        let (endpoint, http, timeout, headers) = match (&otel.http, &otel.grpc) {
            (Some(h), _) => (
                format!("{base}{}", h.path.as_deref().unwrap_or("/v1/traces")),
                true,
                h.timeout.map(|t| t.get()),
                h.headers
                    .iter()
                    .map(|n| (n.name.clone(), n.value.clone()))
                    .collect(),
            ),
            (None, Some(g)) => (
                base,
                false,
                g.timeout.map(|t| t.get()),
                g.initial_metadata
                    .iter()
                    .map(|n| (n.name.clone(), n.value.clone()))
                    .collect(),
            ),
            (None, None) => (base, false, None, Vec::new()),
        };
        return ProviderConfig::OpenTelemetry(OtlpTarget {
            endpoint,
            http,
            timeout,
            headers,
        });
    }
    if raw.prometheus.is_some() {
        return ProviderConfig::Prometheus;
    }
    if let Some(file) = &raw.envoy_file_access_log {
        return ProviderConfig::FileAccessLog {
            path: file.path.clone(),
            format: None,
            omit_empty: file.omit_empty_values,
        };
    }
    if let Some(als) = &raw.envoy_otel_als {
        return ProviderConfig::OtelAccessLog(OtlpTarget {
            endpoint: format!("http://{}", target(&als.service, als.port)),
            http: false,
            timeout: None::<Duration>,
            headers: Vec::new(),
        });
    }
    let kind = raw.kinds().first().map_or("none", |(name, _)| *name);
    ProviderConfig::Unsupported(kind)
}
