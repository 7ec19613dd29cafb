//! Istio's `MeshConfig` as users hold it: the `mesh` key of the `istio`
//! ConfigMap (a YAML string; `istio-<revision>` for a revision) or
//! `spec.meshConfig` of an `IstioOperator`. The fields the agent uses are
//! typed here; every other MeshConfig (and `defaultConfig`) field Istio has
//! is accepted and named in one warning; a field Istio does not have is an
//! error, as istiod refuses it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::agent::{OutboundTrafficPolicySpec, PathNormalizationSpec};
use super::duration::IstioDuration;

/// The MeshConfig fields the agent applies.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    /// Namespace whose policies without a selector apply mesh-wide
    /// (default `istio-system`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_namespace: Option<String>,
    /// Connections to destinations outside the registry (default ALLOW_ANY).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicySpec>,
    /// How request paths are normalized (default BASE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_normalization: Option<PathNormalizationSpec>,
    /// Proxy defaults; the agent reads `tracing.sampling` and
    /// `tracing.customTags`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_config: Option<ProxyDefaults>,
    /// Named providers that Telemetry and CUSTOM AuthorizationPolicies refer to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension_providers: Vec<ExtensionProvider>,
    /// Providers used when a Telemetry resource names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_providers: Option<DefaultProviders>,
    /// The mesh's trust domain (Istio's default `cluster.local`); an
    /// Agent's `spec.trustDomain` wins for its workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// Other trust domains whose peers are of this mesh (a migration's old
    /// trust domain): accepted by inbound mTLS, and AuthorizationPolicy
    /// principals are written out for each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domain_aliases: Vec<String>,
    /// How often the names of `resolution: DNS` endpoints are resolved
    /// again (Istio's default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_refresh_rate: Option<super::duration::IstioDuration>,
}

/// `defaultConfig` (Istio's `ProxyConfig`): the part the agent reads.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyDefaults {
    /// Tracing defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<ProxyTracing>,
}

/// `defaultConfig.tracing`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyTracing {
    /// Share of new traces sampled, in percent 0–100 (Istio's default: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<f64>,
    /// Tags added to every span (literal, environment or header).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, super::telemetry::CustomTag>,
}

/// `defaultProviders`: provider names per signal.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultProviders {
    /// Tracing providers (the first is used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<String>,
    /// Metrics providers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
    /// Access log providers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<String>,
}

/// One `extensionProviders[]` entry: a name and exactly one provider.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// The name policies refer to (required, unique).
    #[serde(default)]
    pub name: String,
    /// Envoy's ext_authz over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_ext_authz_http: Option<ExtAuthzHttpProvider>,
    /// Envoy's ext_authz over gRPC (`envoy.service.auth.v3.Authorization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_ext_authz_grpc: Option<ExtAuthzGrpcProvider>,
    /// An OTLP trace exporter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opentelemetry: Option<OpenTelemetryProvider>,
    /// Prometheus metrics (the agent's `/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<Value>,
    /// An access log file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_file_access_log: Option<FileAccessLogProvider>,
    /// Access logs as OTLP log records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_otel_als: Option<OtelAlsProvider>,
    /// Zipkin tracing (not supported by the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<Value>,
    /// Lightstep tracing (deprecated by Istio; not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lightstep: Option<Value>,
    /// Datadog tracing (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datadog: Option<Value>,
    /// Stackdriver (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stackdriver: Option<Value>,
    /// OpenCensus (deprecated by Istio; not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opencensus: Option<Value>,
    /// SkyWalking tracing (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skywalking: Option<Value>,
    /// Envoy's HTTP gRPC access log service (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_http_als: Option<Value>,
    /// Envoy's TCP gRPC access log service (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_tcp_als: Option<Value>,
    /// An SDS server (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sds: Option<Value>,
}

/// `envoyExtAuthzHttp`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzHttpProvider {
    /// The authorizer's host (`opa.opa.svc.cluster.local`, `ns/host`, or an IP).
    #[serde(default)]
    pub service: String,
    /// Its port.
    #[serde(default)]
    pub port: u32,
    /// How long a check may take (default 600s, Envoy's for Istio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<IstioDuration>,
    /// Prepended to the request's path in the check request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Let requests through when the authorizer cannot be reached.
    #[serde(default)]
    pub fail_open: bool,
    /// Envoy recomputes the route after the check (no meaning here).
    #[serde(default)]
    pub clear_route_cache: bool,
    /// Status when the authorizer cannot be reached (default 403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_on_error: Option<String>,
    /// Deprecated spelling of `includeRequestHeadersInCheck`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_headers_in_check: Vec<String>,
    /// Request headers sent in the check (besides Host, Method, Path,
    /// Content-Length and Authorization, always sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_request_headers_in_check: Vec<String>,
    /// Fixed headers added to the check request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    /// Send the request body (buffered up to a limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_request_body_in_check: Option<RequestBodyInCheck>,
    /// Authorizer response headers copied to the upstream request on allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_upstream_on_allow: Vec<String>,
    /// Authorizer response headers sent to the client on deny (none listed: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_downstream_on_deny: Vec<String>,
    /// Authorizer response headers added to the client's response on allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_downstream_on_allow: Vec<String>,
}

/// `envoyExtAuthzGrpc`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzGrpcProvider {
    /// The authorizer's host.
    #[serde(default)]
    pub service: String,
    /// Its port.
    #[serde(default)]
    pub port: u32,
    /// How long a check may take (default 600s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<IstioDuration>,
    /// Let requests through when the authorizer cannot be reached.
    #[serde(default)]
    pub fail_open: bool,
    /// Envoy recomputes the route after the check (no meaning here).
    #[serde(default)]
    pub clear_route_cache: bool,
    /// Status when the authorizer cannot be reached (default 403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_on_error: Option<String>,
    /// Send the request body (buffered up to a limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_request_body_in_check: Option<RequestBodyInCheck>,
}

/// `includeRequestBodyInCheck`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestBodyInCheck {
    /// Most body bytes buffered for the check; required (Envoy's
    /// `max_request_bytes` is `uint32.gt: 0`), so unset is `None`, not 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u32>,
    /// Send the first `maxRequestBytes` of a longer body instead of refusing it with 413.
    #[serde(default)]
    pub allow_partial_message: bool,
    /// gRPC: send the body as bytes (`raw_body`) rather than UTF-8 text.
    #[serde(default)]
    pub pack_as_bytes: bool,
}

/// `opentelemetry`: an OTLP trace exporter.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenTelemetryProvider {
    /// The collector's host.
    #[serde(default)]
    pub service: String,
    /// Its port.
    #[serde(default)]
    pub port: u32,
    /// Longest tag value (Envoy's; not applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tag_length: Option<u32>,
    /// Export with OTLP/HTTP instead of gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<OtlpHttpService>,
    /// gRPC settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<OtlpGrpcService>,
    /// Resource detectors (not applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_detectors: Option<Value>,
    /// How `service.name` is filled (not applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_attribute_enrichment: Option<String>,
    /// Dynatrace's sampler (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynatrace_sampler: Option<Value>,
}

/// `opentelemetry.http`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtlpHttpService {
    /// Path of the trace endpoint (default `/v1/traces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Export timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<IstioDuration>,
    /// Headers sent with each export.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NameValue>,
}

/// `opentelemetry.grpc`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtlpGrpcService {
    /// Export timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<IstioDuration>,
    /// Metadata sent with each export.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initial_metadata: Vec<NameValue>,
}

/// A header or metadata entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NameValue {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Value.
    #[serde(default)]
    pub value: String,
}

/// `envoyFileAccessLog`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileAccessLogProvider {
    /// File to append to (`/dev/stdout`).
    #[serde(default)]
    pub path: String,
    /// `text` or JSON `labels` of Envoy command operators (compiled by
    /// `model::log_format`); none: the agent's JSON line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<Value>,
    /// Leave out empty fields.
    #[serde(default)]
    pub omit_empty_values: bool,
}

/// `envoyOtelAls`: access log records over OTLP.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtelAlsProvider {
    /// The collector's host.
    #[serde(default)]
    pub service: String,
    /// Its port.
    #[serde(default)]
    pub port: u32,
    /// The log name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_name: Option<String>,
    /// Text or labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<Value>,
}

/// The field a document's mesh config sits at: `data.mesh` in the `istio`
/// ConfigMap (`apiVersion: v1`), `spec.meshConfig` in an IstioOperator.
pub fn mesh_field(api_version: &str) -> &'static str {
    if api_version == "v1" {
        "data.mesh"
    } else {
        "spec.meshConfig"
    }
}

/// Which signal a provider serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// `envoyExtAuthzHttp` or `envoyExtAuthzGrpc`.
    ExtAuthz,
    /// A tracing provider.
    Tracing,
    /// A metrics provider.
    Metrics,
    /// An access log provider.
    AccessLog,
    /// SDS.
    Other,
}

impl ExtensionProvider {
    /// The provider's field names that are set (exactly one is valid).
    pub fn kinds(&self) -> Vec<(&'static str, ProviderKind)> {
        use ProviderKind::*;
        let set = [
            (
                "envoyExtAuthzHttp",
                self.envoy_ext_authz_http.is_some(),
                ExtAuthz,
            ),
            (
                "envoyExtAuthzGrpc",
                self.envoy_ext_authz_grpc.is_some(),
                ExtAuthz,
            ),
            ("opentelemetry", self.opentelemetry.is_some(), Tracing),
            ("prometheus", self.prometheus.is_some(), Metrics),
            (
                "envoyFileAccessLog",
                self.envoy_file_access_log.is_some(),
                AccessLog,
            ),
            ("envoyOtelAls", self.envoy_otel_als.is_some(), AccessLog),
            ("zipkin", self.zipkin.is_some(), Tracing),
            ("lightstep", self.lightstep.is_some(), Tracing),
            ("datadog", self.datadog.is_some(), Tracing),
            ("stackdriver", self.stackdriver.is_some(), Metrics),
            ("opencensus", self.opencensus.is_some(), Tracing),
            ("skywalking", self.skywalking.is_some(), Tracing),
            ("envoyHttpAls", self.envoy_http_als.is_some(), AccessLog),
            ("envoyTcpAls", self.envoy_tcp_als.is_some(), AccessLog),
            ("sds", self.sds.is_some(), Other),
        ];
        set.into_iter()
            .filter(|(_, on, _)| *on)
            .map(|(name, _, kind)| (name, kind))
            .collect()
    }
}

/// Every field of Istio's `MeshConfig` (istio.mesh.v1alpha1).
const MESH_FIELDS: &[&str] = &[
    "proxyListenPort",
    "proxyInboundListenPort",
    "proxyHttpPort",
    "connectTimeout",
    "hboneIdleTimeout",
    "protocolDetectionTimeout",
    "tcpKeepalive",
    "ingressClass",
    "ingressService",
    "ingressControllerMode",
    "ingressSelector",
    "enableTracing",
    "accessLogFile",
    "accessLogFormat",
    "accessLogEncoding",
    "enableEnvoyAccessLogService",
    "disableEnvoyListenerLog",
    "defaultConfig",
    "outboundTrafficPolicy",
    "inboundTrafficPolicy",
    "configSources",
    "enableAutoMtls",
    "trustDomain",
    "trustDomainAliases",
    "caCertificates",
    "defaultServiceExportTo",
    "defaultVirtualServiceExportTo",
    "defaultDestinationRuleExportTo",
    "rootNamespace",
    "localityLbSetting",
    "zoneAwareLbSetting",
    "dnsRefreshRate",
    "h2UpgradePolicy",
    "inboundClusterStatName",
    "outboundClusterStatName",
    "certificates",
    "serviceSettings",
    "serviceScopeConfigs",
    "enablePrometheusMerge",
    "verifyCertificateAtClient",
    "ca",
    "extensionProviders",
    "defaultProviders",
    "discoverySelectors",
    "pathNormalization",
    "defaultHttpRetryPolicy",
    "meshMtls",
    "tlsDefaults",
    "defaultTrafficPolicy",
    "serviceEntryVisibility",
    // Deprecated or removed fields still found in installations.
    "mixerCheckServer",
    "mixerReportServer",
    "disablePolicyChecks",
    "policyCheckFailOpen",
    "sidecarToTelemetrySessionAffinity",
    "enableSdsTokenMount",
    "sdsUdsPath",
    "thriftConfig",
    "authPolicy",
    "rdsRefreshDelay",
    "mixerAddress",
    "sdsRefreshDelay",
    "outboundTrafficPolicyMode",
    "reportBatchMaxEntries",
    "reportBatchMaxTime",
    "enableClientSidePolicyCheck",
    "localityLbSettings",
];

/// Every field of Istio's `ProxyConfig` (`defaultConfig`).
const PROXY_FIELDS: &[&str] = &[
    "configPath",
    "binaryPath",
    "serviceCluster",
    "tracingServiceName",
    "drainDuration",
    "parentShutdownDuration",
    "discoveryAddress",
    "discoveryRefreshDelay",
    "zipkinAddress",
    "statsdUdpAddress",
    "envoyMetricsServiceAddress",
    "proxyAdminPort",
    "availabilityZone",
    "controlPlaneAuthPolicy",
    "customConfigFile",
    "statNameLength",
    "concurrency",
    "proxyBootstrapTemplatePath",
    "interceptionMode",
    "tracing",
    "sds",
    "envoyAccessLogService",
    "envoyMetricsService",
    "proxyMetadata",
    "runtimeValues",
    "statusPort",
    "extraStatTags",
    "gatewayTopology",
    "terminationDrainDuration",
    "meshId",
    "readinessProbe",
    "proxyStatsMatcher",
    "holdApplicationUntilProxyStarts",
    "caCertificatesPem",
    "image",
    "privateKeyProvider",
    "proxyHeaders",
    "fileFlushInterval",
    "fileFlushMinSizeKb",
    "statsCompression",
    "connectionSettings",
];

/// Every field of `ProxyConfig.tracing`.
const TRACING_FIELDS: &[&str] = &[
    "zipkin",
    "lightstep",
    "datadog",
    "stackdriver",
    "openCensusAgent",
    "customTags",
    "maxPathTagLength",
    "sampling",
    "tlsSettings",
    "enableIstioTags",
];

/// A MeshConfig object split into the typed part and the fields the agent
/// does not use, or why it cannot be read.
#[derive(Debug, Default)]
pub struct MeshRead {
    /// The typed fields (absent when the object could not be read).
    pub config: Option<MeshConfig>,
    /// Istio fields present and not used, by path (`accessLogFile`,
    /// `defaultConfig.discoveryAddress`).
    pub unused: Vec<String>,
    /// Problems, each with the path of its field and a message.
    pub errors: Vec<(String, String)>,
}

/// Reads a MeshConfig object: sorts its fields into used, known and unused,
/// and unknown (errors), then types the used ones.
pub fn read_mesh_config(value: Value) -> MeshRead {
    let mut read = MeshRead::default();
    let Value::Object(mut map) = value else {
        if !value.is_null() {
            read.errors
                .push((String::new(), "a mesh config is a mapping of fields".into()));
        } else {
            read.config = Some(MeshConfig::default());
        }
        return read;
    };
    const USED: &[&str] = &[
        "rootNamespace",
        "outboundTrafficPolicy",
        "pathNormalization",
        "defaultConfig",
        "extensionProviders",
        "defaultProviders",
        "trustDomain",
        "trustDomainAliases",
        "dnsRefreshRate",
    ];
    sort_fields(&mut map, "", USED, MESH_FIELDS, &mut read);
    if let Some(Value::Object(proxy)) = map.get_mut("defaultConfig") {
        sort_fields(
            proxy,
            "defaultConfig.",
            &["tracing"],
            PROXY_FIELDS,
            &mut read,
        );
        if let Some(Value::Object(tracing)) = proxy.get_mut("tracing") {
            let used = &["sampling", "customTags"];
            sort_fields(
                tracing,
                "defaultConfig.tracing.",
                used,
                TRACING_FIELDS,
                &mut read,
            );
        }
    }
    match super::faults::deserialize::<MeshConfig>(Value::Object(map)) {
        Ok(config) => read.config = Some(config),
        Err(found) => {
            let found = found
                .into_iter()
                .map(|(path, message)| (path.unwrap_or_default(), message));
            read.errors.extend(found);
        }
    }
    read
}

fn sort_fields(
    map: &mut serde_json::Map<String, Value>,
    prefix: &str,
    used: &[&str],
    known: &[&str],
    read: &mut MeshRead,
) {
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        if used.contains(&key.as_str()) {
            continue;
        }
        map.remove(&key);
        if known.contains(&key.as_str()) {
            read.unused.push(format!("{prefix}{key}"));
        } else {
            let msg = format!("unknown field `{key}`: Istio's MeshConfig has no such field");
            read.errors.push((format!("{prefix}{key}"), msg));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_used_unused_and_unknown_fields() {
        let read = read_mesh_config(serde_json::json!({
            "accessLogFile": "/dev/stdout",
            "rootNamespace": "mesh-root",
            "defaultConfig": {"discoveryAddress": "istiod:15012", "tracing": {"sampling": 10, "zipkin": {"address": "z:9411"}}},
            "extensionProviders": [{"name": "opa", "envoyExtAuthzGrpc": {"service": "opa.opa", "port": 9191}}],
            "enableTracingg": true,
        }));
        assert_eq!(
            read.unused,
            [
                "accessLogFile",
                "defaultConfig.discoveryAddress",
                "defaultConfig.tracing.zipkin"
            ]
        );
        assert_eq!(read.errors.len(), 1, "{:?}", read.errors);
        assert_eq!(read.errors[0].0, "enableTracingg");
        let config = read.config.expect("typed");
        assert_eq!(config.root_namespace.as_deref(), Some("mesh-root"));
        let sampling = config
            .default_config
            .and_then(|d| d.tracing)
            .and_then(|t| t.sampling);
        assert_eq!(sampling, Some(10.0));
        assert_eq!(config.extension_providers[0].name, "opa");
    }

    #[test]
    fn a_typed_field_of_the_wrong_shape_names_its_path() {
        let read = read_mesh_config(serde_json::json!({
            "extensionProviders": [{"name": "x", "envoyExtAuthzHttp": {"service": "a", "port": "eighty"}}],
        }));
        assert_eq!(
            read.errors[0].0,
            "extensionProviders[0].envoyExtAuthzHttp.port"
        );
    }

    #[test]
    fn every_field_of_the_wrong_shape_is_named_at_once() {
        let read = read_mesh_config(serde_json::json!({
            "extensionProviders": [
                {"name": "a", "envoyExtAuthzHttp": {"service": "a", "port": 80, "timeout": "banana"}},
                {"name": "b", "envoyExtAuthzHttp": {"service": "b", "port": 80}},
                {"name": "c", "envoyExtAuthzHttp": {"service": "c", "port": 80, "failOpen": "yes"}},
            ],
            "rootNamespace": 5,
        }));
        let paths: Vec<&str> = read.errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "extensionProviders[0].envoyExtAuthzHttp.timeout",
                "extensionProviders[2].envoyExtAuthzHttp.failOpen",
                "rootNamespace",
            ],
            "{:?}",
            read.errors
        );
        assert!(read.config.is_none());
    }
}
