//! Istio's `EnvoyFilter` (networking.istio.io/v1alpha3) and `ProxyConfig`
//! (networking.istio.io/v1beta1): Envoy-specific patches and proxy settings.
//! Validated as far as their schema and Istio's rules go; the agent is not
//! Envoy, so they are skipped with a warning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::meta::{PolicyTargetReference, WorkloadLabels, WorkloadSelector};

/// Patches to the Envoy configuration Istio generates.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyFilterSpec {
    /// Workloads patched; none means the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadLabels>,
    /// Gateway API targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// The patches, in order.
    #[serde(default)]
    pub config_patches: Vec<ConfigPatch>,
    /// Order among EnvoyFilters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

/// One patch: where it applies and what it does.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigPatch {
    /// LISTENER, FILTER_CHAIN, NETWORK_FILTER, HTTP_FILTER, ROUTE_CONFIGURATION,
    /// VIRTUAL_HOST, HTTP_ROUTE, CLUSTER, EXTENSION_CONFIG, BOOTSTRAP or LISTENER_FILTER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_to: Option<String>,
    /// Which objects are patched.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<ObjectMatch>,
    /// The patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<Patch>,
}

/// `configPatches[].match`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMatch {
    /// ANY, SIDECAR_INBOUND, SIDECAR_OUTBOUND, GATEWAY or WAYPOINT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Proxy version and metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyMatch>,
    /// A listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<ListenerMatch>,
    /// A route configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_configuration: Option<RouteConfigurationMatch>,
    /// A cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterMatch>,
    /// A waypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<WaypointMatch>,
}

/// `match.proxy`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyMatch {
    /// Regex on the proxy version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_version: Option<String>,
    /// Proxy metadata to match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// `match.listener`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerMatch {
    /// Port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<u32>,
    /// Port name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// A filter chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_chain: Option<FilterChainMatch>,
    /// A listener filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_filter: Option<String>,
    /// Listener name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `match.listener.filterChain`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterChainMatch {
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// SNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// `tls` or `raw_buffer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_protocol: Option<String>,
    /// ALPN values, comma separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_protocols: Option<String>,
    /// A network filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterMatch>,
    /// Destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u32>,
}

/// A filter, optionally with a sub filter (an HTTP filter of the HCM).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterMatch {
    /// Filter name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Sub filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_filter: Option<NameMatch>,
}

/// Something matched by name.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NameMatch {
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `match.routeConfiguration`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfigurationMatch {
    /// Port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<u32>,
    /// Port name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// Gateway (`namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// A virtual host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<VirtualHostMatch>,
    /// Route configuration name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `match.routeConfiguration.vhost`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualHostMatch {
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// One of its domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_name: Option<String>,
    /// A route in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteMatch>,
}

/// `vhost.route`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// Route name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// ANY, ROUTE, REDIRECT or DIRECT_RESPONSE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// `match.cluster`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterMatch {
    /// Port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<u32>,
    /// Service FQDN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Subset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `match.waypoint`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointMatch {
    /// Port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<u32>,
    /// A route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<NameMatch>,
    /// A filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterMatch>,
}

/// `configPatches[].patch`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Patch {
    /// MERGE, ADD, REMOVE, INSERT_BEFORE, INSERT_AFTER, INSERT_FIRST, REPLACE
    /// or MERGE_AND_REPLACE_LIST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The Envoy configuration to merge or add (free-form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// UNSPECIFIED, AUTHN, AUTHZ or STATS (for ADD of HTTP filters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_class: Option<String>,
}

/// Per-workload proxy settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfigSpec {
    /// Workloads it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Worker threads (0: one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<i32>,
    /// Environment variables for the proxy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment_variables: BTreeMap<String, String>,
    /// Proxy image flavour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ProxyImage>,
}

/// `image` of a ProxyConfig.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyImage {
    /// `default`, `debug` or `distroless`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<String>,
}
