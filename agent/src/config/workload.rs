//! Istio's `WorkloadGroup` (networking.istio.io): the template from which
//! WorkloadEntries of VMs are made. Validated; not used by the agent.
//! (`WorkloadEntry` itself shares its spec with ServiceEntry endpoints:
//! [`super::service_entry::WorkloadEntry`].)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::service_entry::WorkloadEntry;

/// A group of non-Kubernetes workloads.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadGroupSpec {
    /// Labels and annotations given to each WorkloadEntry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<GroupMetadata>,
    /// The WorkloadEntry template (required; `address` is filled in per VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<WorkloadEntry>,
    /// Readiness probe run by the VM's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ReadinessProbe>,
}

/// Labels and annotations of a WorkloadGroup's entries.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupMetadata {
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A readiness probe, as Kubernetes' but with one method.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadinessProbe {
    /// Seconds before the first probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds before a probe times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    /// Seconds between probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    /// Successes before ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i32>,
    /// Failures before not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
    /// An HTTP GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpHealthCheck>,
    /// A TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpHealthCheck>,
    /// A command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecHealthCheck>,
    /// A gRPC health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheck>,
}

/// `probe.httpGet`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHealthCheck {
    /// Path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Port (required).
    #[serde(default)]
    pub port: u32,
    /// Host (default: the workload's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `HTTP` or `HTTPS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<ProbeHeader>,
}

/// A probe request header.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeHeader {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Value.
    #[serde(default)]
    pub value: String,
}

/// `probe.tcpSocket`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpHealthCheck {
    /// Host (default: the workload's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port (required).
    #[serde(default)]
    pub port: u32,
}

/// `probe.exec`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecHealthCheck {
    /// The command and its arguments (required).
    #[serde(default)]
    pub command: Vec<String>,
}

/// `probe.grpc`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcHealthCheck {
    /// Port (required).
    #[serde(default)]
    pub port: u32,
    /// Service name sent in the health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}
