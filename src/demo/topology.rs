//! Istio's Bookinfo as the demo runs it: which workloads exist, what each
//! one is, and whom it calls. Everything else (configs, start order, the
//! report) reads this table.

/// The namespace every demo workload lives in.
pub const NAMESPACE: &str = "default";

/// What a workload's application does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The page: calls details and reviews, renders both.
    ProductPage,
    /// Book details.
    Details,
    /// Reviews; v2 and v3 also show ratings (black and red stars).
    Reviews {
        /// Whether this version calls ratings.
        with_ratings: bool,
    },
    /// Star ratings, read from the database.
    Ratings,
    /// The ratings database: a plain TCP service (Bookinfo's MongoDB).
    Database,
}

/// How a service is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1.
    Http,
    /// Plain TCP bytes.
    Tcp,
}

/// One workload: an application and its sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// Workload name (`source_workload` in metrics).
    pub name: &'static str,
    /// The service it serves.
    pub service: &'static str,
    /// Its `version` label.
    pub version: &'static str,
    /// What its application does.
    pub role: Role,
}

impl Workload {
    /// The services this workload calls.
    pub fn calls(&self) -> &'static [&'static str] {
        match self.role {
            Role::ProductPage => &["details", "reviews"],
            // Every reviews version carries the same config, as one
            // Deployment's pods would; v1 just never calls ratings.
            Role::Reviews { .. } => &["ratings"],
            Role::Ratings => &["mongodb"],
            Role::Details | Role::Database => &[],
        }
    }

    /// The service's protocol.
    pub fn protocol(&self) -> Protocol {
        service_protocol(self.service)
    }
}

/// The port every Bookinfo service is known by.
pub fn service_port(service: &str) -> u16 {
    match service_protocol(service) {
        Protocol::Http => 9080,
        Protocol::Tcp => 27017,
    }
}

/// The protocol of a service.
pub fn service_protocol(service: &str) -> Protocol {
    if service == "mongodb" {
        Protocol::Tcp
    } else {
        Protocol::Http
    }
}

/// Bookinfo's workloads, callees before callers: each sidecar's registry
/// needs the addresses of the services it calls, so they start in this order.
pub const WORKLOADS: [Workload; 7] = [
    Workload {
        name: "mongodb-v1",
        service: "mongodb",
        version: "v1",
        role: Role::Database,
    },
    Workload {
        name: "ratings-v1",
        service: "ratings",
        version: "v1",
        role: Role::Ratings,
    },
    Workload {
        name: "reviews-v1",
        service: "reviews",
        version: "v1",
        role: Role::Reviews {
            with_ratings: false,
        },
    },
    Workload {
        name: "reviews-v2",
        service: "reviews",
        version: "v2",
        role: Role::Reviews { with_ratings: true },
    },
    Workload {
        name: "reviews-v3",
        service: "reviews",
        version: "v3",
        role: Role::Reviews { with_ratings: true },
    },
    Workload {
        name: "details-v1",
        service: "details",
        version: "v1",
        role: Role::Details,
    },
    Workload {
        name: "productpage-v1",
        service: "productpage",
        version: "v1",
        role: Role::ProductPage,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_callee_starts_before_its_callers() {
        for (index, workload) in WORKLOADS.iter().enumerate() {
            for callee in workload.calls() {
                let started = WORKLOADS[..index].iter().any(|w| w.service == *callee);
                assert!(started, "{} calls {callee} before it starts", workload.name);
            }
        }
    }
}
