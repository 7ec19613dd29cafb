//! The parts every Kubernetes-style document shares.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Kubernetes object metadata. Unknown fields are allowed here (unlike in
/// specs) because `kubectl get -o yaml` output carries many server-set ones
/// (`uid`, `resourceVersion`, `managedFields`, …) that mean nothing to a proxy.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The resource's name, unique per kind and namespace.
    #[serde(default)]
    pub name: String,
    /// The namespace; short host names in specs resolve against it.
    /// Defaults to the agent's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// When the API server created the object (RFC 3339, `2024-05-01T10:00:00Z`,
    /// as `kubectl get -o yaml` prints it). Where two resources claim the same
    /// host, the older one wins, as Istio and the Gateway API order them; a
    /// resource without it counts as created in file order, after any with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

impl ObjectMeta {
    /// `creationTimestamp` read as RFC 3339; `None` when absent or not a
    /// time (the validator refuses that).
    pub fn created_at(&self) -> Option<time::OffsetDateTime> {
        let text = self.creation_timestamp.as_deref()?;
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
    }

    /// Oldest first, as Istio's `sortConfigByCreationTime` orders
    /// resources: by `creationTimestamp`, then by name; one without a
    /// timestamp after any with one, and equal to another without (a
    /// stable sort keeps their file order).
    pub fn creation_order(&self, other: &Self) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        match (self.created_at(), other.created_at()) {
            (Some(x), Some(y)) => x.cmp(&y).then_with(|| self.name.cmp(&other.name)),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
}

/// Istio's `istio.type.v1beta1.WorkloadSelector` (`selector` of security
/// and telemetry policies, `workloadSelector` of a DestinationRule).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Every label here must be on the workload for the selector to match.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// networking.istio.io's own `WorkloadSelector` (`workloadSelector` of a
/// ServiceEntry, Sidecar or EnvoyFilter): `labels`, not `matchLabels`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadLabels {
    /// Every label here must be on the workload for the selector to match.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl WorkloadLabels {
    /// Whether a workload with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A share of traffic in percent, `0.0`–`100.0`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    /// The percentage.
    pub value: f64,
}

impl WorkloadSelector {
    /// Whether a workload with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A reference to a Kubernetes object a policy attaches to (Gateway API style).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group of the target.
    #[serde(default)]
    pub group: String,
    /// Kind of the target.
    #[serde(default)]
    pub kind: String,
    /// Name of the target.
    #[serde(default)]
    pub name: String,
    /// Namespace of the target.
    #[serde(default)]
    pub namespace: String,
}
