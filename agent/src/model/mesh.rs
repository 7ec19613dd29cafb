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
    /// `defaultConfig.tracing.sampling`, in percent.
    pub default_sampling_percent: Option<f64>,
    /// The file's mesh config was refused (its own errors say why): its
    /// providers are unknown, so a reference to one is not reported missing.
    pub rejected: bool,
}

impl Default for Mesh {
    fn default() -> Self {
        Self {
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
            source: None,
            location: None,
            providers: builtin_providers(),
            default_providers: DefaultProviders::default(),
            default_sampling_percent: None,
            rejected: false,
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
    /// The JSON access log, to a file.
    FileAccessLog {
        /// The file (`/dev/stdout`).
        path: String,
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
