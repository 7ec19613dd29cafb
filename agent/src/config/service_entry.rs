//! Istio's `ServiceEntry` (networking.istio.io): the agent's service registry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::meta::WorkloadLabels;

/// A service in the mesh or outside it: its host names, ports and endpoints.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// Host names of the service; short names resolve in the resource's namespace.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs (or CIDRs) of the service: captured connections to them
    /// on a declared port reach this service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The ports the service answers on.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// MESH_EXTERNAL or MESH_INTERNAL (default MESH_EXTERNAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// NONE, STATIC, DNS, DNS_ROUND_ROBIN or DYNAMIC_DNS (default NONE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    /// The endpoints; with DNS resolution and none given, the hosts themselves.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    /// Selects WorkloadEntries (and, on Kubernetes, pods) as endpoints by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadLabels>,
    /// Namespaces the entry is visible in (every entry is visible to this agent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// SANs expected on the endpoints' certificates (used once mTLS exists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// One port of a service.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// The port number clients address.
    pub number: u32,
    /// HTTP, HTTP2, GRPC, TCP, HTTPS, TLS, MONGO… (case-insensitive). HTTP2
    /// and GRPC are spoken to upstreams as HTTP/2; TCP is proxied as bytes.
    #[serde(default)]
    pub protocol: String,
    /// The port's name; endpoint port maps refer to it.
    #[serde(default)]
    pub name: String,
    /// The port on the endpoints, when it differs from `number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// One endpoint of a service entry, and the spec of a `WorkloadEntry`
/// resource (Istio's way to register a VM or any non-Kubernetes host).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// An IP address, or a host name when resolution is DNS.
    #[serde(default)]
    pub address: String,
    /// Port name → port number on this endpoint, overriding the service's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    /// Labels; DestinationRule subsets select endpoints by them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Network the endpoint sits in (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Locality `region/zone/subzone` (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// Load-balancing weight (Envoy's `load_balancing_weight`; unset: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Service account the endpoint runs as (used once mTLS exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}
