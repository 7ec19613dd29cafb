//! The request headers some rule of the snapshot decides on. A request that
//! repeats one of them could be judged on one line and read by the app on
//! another, so it is refused (cookies excepted: their lines are joined, as
//! HTTP/2 splits them).

use std::sync::Arc;

use http::HeaderName;

use crate::model::authz::{Authorization, ConditionKey};
use crate::model::balancer::{Balancer, HashKey};
use crate::model::cluster::Cluster;
use crate::model::rate_limit::{KeyKind, RateLimiter};
use crate::model::route::RouteTable;

/// Every header named by a route match, an authorization condition, a
/// rate-limit key or a hash key; each once.
pub(super) fn decided_headers(
    routes: &RouteTable,
    authorization: &Authorization,
    rate_limits: &[Arc<RateLimiter>],
    clusters: &[Arc<Cluster>],
) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = Vec::new();
    let mut add = |name: &HeaderName| {
        if !names.contains(name) {
            names.push(name.clone());
        }
    };
    let hosts = routes.exact.values().chain(&routes.wildcard);
    for rule in hosts.flat_map(|vh| &vh.rules) {
        for m in &rule.matches {
            m.headers
                .iter()
                .chain(&m.without_headers)
                .for_each(|(n, _)| add(n));
        }
    }
    let policies = [
        &authorization.deny,
        &authorization.allow,
        &authorization.audit,
    ];
    for rule in policies.into_iter().flatten().flat_map(|p| &p.rules) {
        for condition in &rule.when {
            if let ConditionKey::Header(name) = &condition.key {
                add(name);
            }
        }
    }
    for limiter in rate_limits {
        if let KeyKind::Header(name) = &limiter.key {
            add(name);
        }
    }
    for cluster in clusters {
        match &cluster.balancer {
            Balancer::ConsistentHash {
                key: HashKey::Header(name),
                ..
            } => add(name),
            Balancer::ConsistentHash {
                key: HashKey::Cookie(_),
                ..
            } => add(&http::header::COOKIE),
            _ => {}
        }
    }
    names
}
