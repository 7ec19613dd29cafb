//! Where a rule (or a mirror) sends requests: a service host, resolved to
//! one cluster per service port.

use std::sync::Arc;

use super::cluster::Cluster;

/// A destination service, resolved to a cluster per port.
#[derive(Debug, Clone)]
pub struct DestinationTarget {
    /// The FQDN.
    pub host: Arc<str>,
    /// The subset, if any.
    pub subset: Option<String>,
    /// The port the rule names, if any.
    pub port: Option<u16>,
    /// Clusters of the service's ports (for the subset); empty when the host
    /// is not in the registry or the subset is not defined.
    pub clusters: Vec<Arc<Cluster>>,
}

impl DestinationTarget {
    /// The cluster for a request addressed to `request_port`: the rule's port,
    /// else the request's, else the service's only port.
    pub fn cluster_for(&self, request_port: u16) -> Option<&Arc<Cluster>> {
        let port = self.port.unwrap_or(request_port);
        self.clusters.iter().find(|c| c.port == port).or({
            match (self.port, self.clusters.as_slice()) {
                (None, [only]) => Some(only),
                _ => None,
            }
        })
    }
}
