//! The compiled mesh config: the root namespace, the extension providers by
//! name, the default providers and the tracing defaults. Built from the
//! file's MeshConfig (the `istio` ConfigMap or an IstioOperator), or from
//! Istio's defaults when the file has none.

use std::sync::Arc;
use std::time::Duration;

use crate::ext_authz::{GrpcAuthzSettings, HttpAuthzSettings};

/// Istio's default `rootNamespace`.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// The mesh-wide settings.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// Policies without a selector here apply mesh-wide.
    pub root_namespace: String,
    /// `Kind namespace/name` of the document it came from (none: defaults).
    pub source: Option<String>,
    /// That document, for findings on its providers (none: defaults).
    pub location: Option<crate::config::diagnostics::Location>,
    /// Every extension provider, Istio's built-in ones (`prometheus`,
    /// `envoy`, `stackdriver`) first, replaced by a user's of the same name.
    pub providers: Vec<Arc<Provider>>,
    /// Provider names for tracing, metrics and access logs when a Telemetry
    /// names none.
    pub default_providers: DefaultProviders,
    /// `defaultConfig.tracing.sampling`, in percent (none when unset or
    /// 0, which Istio's `proxyConfigSamplingValue` reads as unset).
    pub default_sampling_percent: Option<f64>,
    /// `defaultConfig.tracing.customTags`: a span's tags when no Telemetry
    /// gives any (Istio's `configureCustomTags`).
    pub default_custom_tags: Vec<crate::model::telemetry::CustomTag>,
    /// The file's mesh config was refused (its own errors say why): its
    /// providers are unknown, so a reference to one is not reported missing.
    pub rejected: bool,
    /// How often the names of `resolution: DNS` endpoints are resolved
    /// again (`dnsRefreshRate`, Istio's default [`DEFAULT_DNS_REFRESH_RATE`]).
    pub dns_refresh_rate: std::time::Duration,
}

/// Istio's default `dnsRefreshRate`.
pub const DEFAULT_DNS_REFRESH_RATE: std::time::Duration = std::time::Duration::from_secs(60);

impl Default for Mesh {
    fn default() -> Self {
        Self {
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
            source: None,
            location: None,
            providers: builtin_providers(),
            default_providers: DefaultProviders::default(),
            default_sampling_percent: None,
            default_custom_tags: Vec::new(),
            rejected: false,
            dns_refresh_rate: DEFAULT_DNS_REFRESH_RATE,
        }
    }
}

impl Mesh {
    /// The provider named `name` (case-insensitive, as Istio looks them up).
    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }
}

/// Istio's built-in providers, present in every mesh config.
pub fn builtin_providers() -> Vec<Arc<Provider>> {
    vec![
        Arc::new(Provider {
            name: "prometheus".into(),
            field: None,
            config: ProviderConfig::Prometheus,
        }),
        Arc::new(Provider {
            name: "stackdriver".into(),
            field: None,
            config: ProviderConfig::Unsupported("stackdriver"),
        }),
        Arc::new(Provider {
            name: "envoy".into(),
            field: None,
            config: ProviderConfig::FileAccessLog {
                path: "/dev/stdout".into(),
                format: None,
                omit_empty: false,
            },
        }),
    ]
}

/// `defaultProviders`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DefaultProviders {
    /// Tracing (the first is used, as in Istio).
    pub tracing: Vec<String>,
    /// Metrics.
    pub metrics: Vec<String>,
    /// Access logs.
    pub access_logging: Vec<String>,
}

/// One named extension provider.
#[derive(Debug)]
pub struct Provider {
    /// Its name, as written.
    pub name: String,
    /// Where the mesh config declares it (`data.mesh.extensionProviders[2]`;
    /// none: built in).
    pub field: Option<String>,
    /// What it is.
    pub config: ProviderConfig,
}

/// What a provider does, compiled.
#[derive(Debug)]
pub enum ProviderConfig {
    /// Envoy's ext_authz over HTTP.
    ExtAuthzHttp(Arc<HttpAuthzSettings>),
    /// Envoy's ext_authz over gRPC.
    ExtAuthzGrpc(Arc<GrpcAuthzSettings>),
    /// An OTLP trace exporter.
    OpenTelemetry(OtlpTarget),
    /// Istio's metrics, on the agent's `/metrics`.
    Prometheus,
    /// The access log, to a file: the JSON line, or `format`.
    FileAccessLog {
        /// The file (`/dev/stdout`).
        path: String,
        /// `logFormat`; none: the agent's JSON line.
        format: Option<Arc<crate::model::log_format::LogFormat>>,
        /// `omitEmptyValues`: an empty value is left out (JSON) or written
        /// as nothing rather than `-` (text).
        omit_empty: bool,
    },
    /// Access log records over OTLP.
    OtelAccessLog(OtlpTarget),
    /// A provider kind the agent does not implement (its field name).
    Unsupported(&'static str),
}

/// Where an OTLP exporter sends.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpTarget {
    /// `http://service:port` (gRPC) or `http://service:port/path` (HTTP).
    pub endpoint: String,
    /// OTLP/HTTP instead of gRPC.
    pub http: bool,
    /// Export timeout, when set.
    pub timeout: Option<Duration>,
    /// Headers (gRPC metadata) sent with each export.
    pub headers: Vec<(String, String)>,
}

/// Istio's default trust domain, `cluster.local`: in an AuthorizationPolicy
/// principal it stands for the mesh's trust domain, whatever that is.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The mesh's trust domain and its aliases (MeshConfig `trustDomain`, or the
/// Agent's `spec.trustDomain`, then `trustDomainAliases`), as Istio's
/// `trustdomain.Bundle` holds them: peers of any of them are of this mesh.
/// A sidecar's inbound mTLS accepts client certificates of these trust
/// domains only, and AuthorizationPolicy principals are rewritten into each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomainBundle {
    /// The trust domain first, then its aliases; no repeats, none empty.
    trust_domains: Vec<String>,
}

impl Default for TrustDomainBundle {
    fn default() -> Self {
        Self::new(DEFAULT_TRUST_DOMAIN, &[])
    }
}

impl TrustDomainBundle {
    /// Istio's `NewBundle`: `trust_domain`, then `aliases` (repeats and
    /// empty values left out, as `TrustDomainsForValidation` dedups them).
    pub fn new(trust_domain: &str, aliases: &[String]) -> Self {
        let mut trust_domains: Vec<String> = Vec::with_capacity(1 + aliases.len());
        for td in std::iter::once(trust_domain).chain(aliases.iter().map(String::as_str)) {
            if !td.is_empty() && !trust_domains.iter().any(|known| known == td) {
                trust_domains.push(td.to_owned());
            }
        }
        Self { trust_domains }
    }

    /// The trust domain, then its aliases.
    pub fn trust_domains(&self) -> &[String] {
        &self.trust_domains
    }

    /// Whether `trust_domain` is the mesh's or one of its aliases (exactly,
    /// as Envoy's `spiffe://<td>/` prefix matchers compare).
    pub fn contains(&self, trust_domain: &str) -> bool {
        self.trust_domains.iter().any(|td| td == trust_domain)
    }

    /// Istio's `ReplaceTrustDomainAliases`: each principal
    /// (`<td>/ns/<ns>/sa/<sa>`) whose trust domain is `cluster.local`, the
    /// mesh's or an alias's is replaced by one principal per trust domain
    /// of the bundle; a principal of another trust domain, one whose trust
    /// domain is `*`, and one not of that form are kept as written.
    pub fn replace_trust_domain_aliases(&self, principals: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(principals.len());
        for principal in principals {
            let parts: Vec<&str> = principal.split('/').collect();
            let td = parts[0];
            // Not of the SPIFFE form, or `*/…`: no trust domain enforced.
            if parts.len() != 5 || td == "*" {
                out.push(principal.clone());
                continue;
            }
            if !string_match(td, &self.trust_domains) && td != DEFAULT_TRUST_DOMAIN {
                out.push(principal.clone());
                continue;
            }
            let rest = parts[1..].join("/");
            let mut replaced: Vec<String> = Vec::with_capacity(self.trust_domains.len());
            for own in &self.trust_domains {
                let new = if suffix_match(own, td) {
                    principal.clone()
                } else {
                    format!("{own}/{rest}")
                };
                if !replaced.contains(&new) {
                    replaced.push(new);
                }
            }
            out.extend(replaced);
        }
        out
    }

    /// Istio's `ExpandTrustDomainAliases`: a `trustDomains` value that is
    /// the mesh's trust domain or an alias stands for all of them.
    pub fn expand_trust_domain_aliases(&self, values: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(values.len());
        for value in values {
            let expanded: &[String] = if self.contains(value) {
                &self.trust_domains
            } else {
                std::slice::from_ref(value)
            };
            for v in expanded {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
        }
        out
    }
}

/// Istio's `trustdomain.stringMatch`: `a` equals an entry of `list`, or
/// either is a `*`, `prefix*` or `*suffix` pattern the other matches.
fn string_match(a: &str, list: &[String]) -> bool {
    list.iter().any(|s| {
        a == s
            || s == "*"
            || prefix_match(a, s)
            || prefix_match(s, a)
            || suffix_match(a, s)
            || suffix_match(s, a)
    })
}

/// `pattern` is `prefix*` and `a` starts with the prefix.
fn prefix_match(a: &str, pattern: &str) -> bool {
    pattern
        .strip_suffix('*')
        .is_some_and(|prefix| a.starts_with(prefix))
}

/// `pattern` is `*suffix` and `a` ends with the suffix.
fn suffix_match(a: &str, pattern: &str) -> bool {
    pattern
        .strip_prefix('*')
        .is_some_and(|suffix| a.ends_with(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Istio's `TestReplaceTrustDomainAliases` cases: `cluster.local`, the
    /// trust domain and its aliases become each of the bundle's; another
    /// trust domain, `*` and malformed principals stay as written.
    #[test]
    fn principals_are_rewritten_into_the_trust_domain_and_its_aliases() {
        let bundle = TrustDomainBundle::new("corp.example", &[]);
        assert_eq!(
            bundle
                .replace_trust_domain_aliases(&strings(&["cluster.local/ns/default/sa/attacker"])),
            ["corp.example/ns/default/sa/attacker"]
        );
        let bundle = TrustDomainBundle::new("td2", &strings(&["td1", "cluster.local", "td1", ""]));
        assert_eq!(bundle.trust_domains(), ["td2", "td1", "cluster.local"]);
        assert_eq!(
            bundle.replace_trust_domain_aliases(&strings(&["td1/ns/foo/sa/bar"])),
            [
                "td2/ns/foo/sa/bar",
                "td1/ns/foo/sa/bar",
                "cluster.local/ns/foo/sa/bar"
            ]
        );
        let kept = strings(&[
            "other.example/ns/foo/sa/bar",
            "*/ns/foo/sa/bar",
            "sa/bar",
            "*",
        ]);
        assert_eq!(bundle.replace_trust_domain_aliases(&kept), kept);
        // A wildcard trust domain that matches one of the bundle's is kept
        // for it and written out for the others.
        assert_eq!(
            bundle.replace_trust_domain_aliases(&strings(&["*1/ns/foo/sa/bar"])),
            [
                "td2/ns/foo/sa/bar",
                "*1/ns/foo/sa/bar",
                "cluster.local/ns/foo/sa/bar"
            ]
        );
        assert_eq!(
            bundle.expand_trust_domain_aliases(&strings(&["td1", "x", "td2"])),
            ["td2", "td1", "cluster.local", "x"]
        );
    }
}
