//! Peers as Istio's metric labels describe them: the workload on the other
//! side of a request, from its metadata exchange or its endpoint's labels.

/// What a peer says about itself. Missing fields read as `unknown`, as
/// Istio's labels do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerInfo {
    /// Workload name.
    pub workload: String,
    /// Namespace.
    pub namespace: String,
    /// `app` label.
    pub app: String,
    /// `version` label.
    pub version: String,
    /// Canonical service.
    pub canonical_service: String,
    /// Canonical revision (`latest` when unknown).
    pub canonical_revision: String,
    /// Cluster id.
    pub cluster: String,
}

impl PeerInfo {
    /// The peer nothing is known about.
    pub fn unknown() -> Self {
        let unknown = || "unknown".to_owned();
        Self {
            workload: unknown(),
            namespace: unknown(),
            app: unknown(),
            version: unknown(),
            canonical_service: unknown(),
            canonical_revision: "latest".to_owned(),
            cluster: unknown(),
        }
    }
}
