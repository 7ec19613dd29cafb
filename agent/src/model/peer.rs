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

/// The peers the registry describes (its endpoints' labels), for telling
/// whether a peer's self-description can be believed without mTLS: only a
/// description that matches one of them is, and it is then labelled with
/// the registry's values, never the free text it arrived with.
#[derive(Debug, Default)]
pub struct KnownPeers {
    peers: std::collections::HashSet<RegistryPeer>,
}

/// A registry peer, compared on what the registry knows of it (its
/// namespace and labels; the registry names no workloads or clusters).
#[derive(Debug)]
struct RegistryPeer(std::sync::Arc<PeerInfo>);

impl RegistryPeer {
    fn key(&self) -> [&str; 5] {
        let p = &*self.0;
        [
            &p.namespace,
            &p.app,
            &p.version,
            &p.canonical_service,
            &p.canonical_revision,
        ]
    }
}

impl PartialEq for RegistryPeer {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for RegistryPeer {}

impl std::hash::Hash for RegistryPeer {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl KnownPeers {
    /// The set of `peers` (endpoints' peers; the first of equal ones kept).
    pub fn new<'a>(peers: impl IntoIterator<Item = &'a std::sync::Arc<PeerInfo>>) -> Self {
        let mut set = std::collections::HashSet::new();
        for peer in peers {
            set.insert(RegistryPeer(peer.clone()));
        }
        Self { peers: set }
    }

    /// The registry's peer `announced` describes (same namespace, `app`,
    /// `version` and canonical service and revision), if any.
    pub fn get(&self, announced: &std::sync::Arc<PeerInfo>) -> Option<&std::sync::Arc<PeerInfo>> {
        self.peers
            .get(&RegistryPeer(announced.clone()))
            .map(|p| &p.0)
    }
}

/// Whether a peer that proved `principal` over mTLS may describe itself as
/// `announced`: the namespace it announces is its certificate's.
pub fn matches_principal(announced: &PeerInfo, principal: &str) -> bool {
    principal
        .strip_prefix("spiffe://")
        .unwrap_or(principal)
        .split_once("/ns/")
        .and_then(|(_, rest)| rest.split_once("/sa/"))
        .is_some_and(|(namespace, _)| namespace == announced.namespace)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn peer(namespace: &str, app: &str, workload: &str) -> Arc<PeerInfo> {
        Arc::new(PeerInfo {
            workload: workload.into(),
            namespace: namespace.into(),
            app: app.into(),
            version: "v1".into(),
            canonical_service: app.into(),
            canonical_revision: "v1".into(),
            cluster: "unknown".into(),
        })
    }

    #[test]
    fn a_self_description_matches_the_registry_on_what_it_knows() {
        let registry = peer("default", "reviews", "unknown");
        let known = KnownPeers::new([&registry]);
        let announced = peer("default", "reviews", "reviews-v1-7d9f");
        let found = known.get(&announced).expect("matches the registry");
        assert!(
            Arc::ptr_eq(found, &registry),
            "labelled with the registry's values"
        );
        assert!(known.get(&peer("default", "forged", "x")).is_none());
        assert!(known.get(&peer("other", "reviews", "x")).is_none());
    }

    #[test]
    fn a_certificate_vouches_for_its_own_namespace_only() {
        let announced = peer("default", "frontend", "frontend-v1");
        let principal = "spiffe://cluster.local/ns/default/sa/frontend";
        assert!(matches_principal(&announced, principal));
        assert!(matches_principal(
            &announced,
            "cluster.local/ns/default/sa/x"
        ));
        let other = "spiffe://cluster.local/ns/prod/sa/frontend";
        assert!(!matches_principal(&announced, other));
        assert!(!matches_principal(
            &announced,
            "spiffe://cluster.local/default"
        ));
    }
}
