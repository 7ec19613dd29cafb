//! DestinationRule traffic policies: merged as Istio merges them (subset over
//! top level, port level over both) and turned into balancers and timeouts.

use std::sync::Arc;

use crate::balancer::{Balancer, DEFAULT_MAGLEV_TABLE_SIZE, HashKey};
use crate::config::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, LoadBalancerSettings,
    OutlierDetection, PortTrafficPolicy, TrafficPolicy,
};
use crate::config::diagnostics::{Diagnostics, Location};
use crate::model::cluster::Endpoint;

/// The policy in force for one port and subset.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct EffectivePolicy<'a> {
    pub load_balancer: Option<&'a LoadBalancerSettings>,
    pub connection_pool: Option<&'a ConnectionPoolSettings>,
    pub outlier_detection: Option<&'a OutlierDetection>,
    pub tls: Option<&'a ClientTlsSettings>,
}

impl<'a> EffectivePolicy<'a> {
    fn overlay(&mut self, policy: &'a TrafficPolicy, port: u16) {
        self.overlay_fields(
            policy.load_balancer.as_ref(),
            policy.connection_pool.as_ref(),
            policy.outlier_detection.as_ref(),
            policy.tls.as_ref(),
        );
        let port_level = policy
            .port_level_settings
            .iter()
            .find(|p| p.port.number == u32::from(port));
        if let Some(PortTrafficPolicy {
            load_balancer,
            connection_pool,
            outlier_detection,
            tls,
            ..
        }) = port_level
        {
            self.overlay_fields(
                load_balancer.as_ref(),
                connection_pool.as_ref(),
                outlier_detection.as_ref(),
                tls.as_ref(),
            );
        }
    }

    fn overlay_fields(
        &mut self,
        lb: Option<&'a LoadBalancerSettings>,
        pool: Option<&'a ConnectionPoolSettings>,
        outlier: Option<&'a OutlierDetection>,
        tls: Option<&'a ClientTlsSettings>,
    ) {
        self.load_balancer = lb.or(self.load_balancer);
        self.connection_pool = pool.or(self.connection_pool);
        self.outlier_detection = outlier.or(self.outlier_detection);
        self.tls = tls.or(self.tls);
    }

    /// The policy of `rule` for `port` and `subset`.
    pub fn of(rule: Option<&'a DestinationRuleSpec>, port: u16, subset: Option<&str>) -> Self {
        let mut policy = Self::default();
        let Some(rule) = rule else { return policy };
        if let Some(top) = &rule.traffic_policy {
            policy.overlay(top, port);
        }
        let subset_policy = subset
            .and_then(|name| rule.subsets.iter().find(|s| s.name == name))
            .and_then(|s| s.traffic_policy.as_ref());
        if let Some(sub) = subset_policy {
            policy.overlay(sub, port);
        }
        policy
    }
}

/// Checks a load-balancer setting; reported once per place it is written.
pub(super) fn validate_load_balancer(
    lb: &LoadBalancerSettings,
    loc: &Location,
    field: &str,
    diags: &mut Diagnostics,
) {
    if let Some(simple) = &lb.simple {
        let known = [
            "UNSPECIFIED",
            "LEAST_CONN",
            "LEAST_REQUEST",
            "RANDOM",
            "PASSTHROUGH",
            "ROUND_ROBIN",
        ];
        if !known.contains(&simple.as_str()) {
            let msg = format!(
                "unknown load balancer {simple:?} (known: {})",
                known.join(", ")
            );
            diags.error(loc, Some(format!("{field}.simple")), msg);
        } else if simple == "PASSTHROUGH" {
            let msg = "PASSTHROUGH needs transparent interception; LEAST_REQUEST is used";
            diags.warn(loc, Some(format!("{field}.simple")), msg);
        }
    }
    let Some(hash) = &lb.consistent_hash else {
        return;
    };
    if lb.simple.is_some() {
        diags.error(
            loc,
            Some(field.to_owned()),
            "set either `simple` or `consistentHash`, not both",
        );
    }
    let keys = [
        hash.http_header_name.is_some(),
        hash.http_cookie.is_some(),
        hash.use_source_ip == Some(true),
        hash.http_query_parameter_name.is_some(),
    ];
    let field = format!("{field}.consistentHash");
    match keys.iter().filter(|k| **k).count() {
        0 => diags.error(
            loc,
            Some(field.clone()),
            "needs one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
        ),
        1 => {}
        _ => diags.error(loc, Some(field.clone()), "set only one hash key"),
    }
    if let Some(name) = &hash.http_header_name
        && http::HeaderName::try_from(name.as_str()).is_err()
    {
        diags.error(
            loc,
            Some(format!("{field}.httpHeaderName")),
            format!("{name:?} is not a header name"),
        );
    }
    if hash.http_cookie.as_ref().is_some_and(|c| c.ttl.is_some()) {
        let msg = "cookies are hashed when present but not generated; `ttl` is ignored";
        diags.warn(loc, Some(format!("{field}.httpCookie.ttl")), msg);
    }
    if let Some(size) = hash.maglev.as_ref().map(|m| m.table_size)
        && (!is_prime(size) || size > 5_000_011)
    {
        diags.error(
            loc,
            Some(format!("{field}.maglev.tableSize")),
            "must be a prime up to 5000011",
        );
    }
}

/// The balancer for a validated setting.
pub(super) fn balancer(lb: Option<&LoadBalancerSettings>, endpoints: &[Arc<Endpoint>]) -> Balancer {
    let Some(lb) = lb else {
        return Balancer::LeastRequest;
    };
    if let Some(hash) = &lb.consistent_hash {
        let key = if let Some(name) = &hash.http_header_name {
            http::HeaderName::try_from(name.as_str())
                .map(HashKey::Header)
                .ok()
        } else if let Some(cookie) = &hash.http_cookie {
            Some(HashKey::Cookie(cookie.name.clone()))
        } else if let Some(param) = &hash.http_query_parameter_name {
            Some(HashKey::QueryParameter(param.clone()))
        } else {
            Some(HashKey::SourceIp)
        };
        let size = hash
            .maglev
            .as_ref()
            .map_or(DEFAULT_MAGLEV_TABLE_SIZE, |m| m.table_size as usize);
        if let Some(key) = key {
            return Balancer::consistent_hash(key, endpoints, size);
        }
    }
    match lb.simple.as_deref() {
        Some("ROUND_ROBIN") => Balancer::RoundRobin(Default::default()),
        Some("RANDOM") => Balancer::Random,
        _ => Balancer::LeastRequest,
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// Checks every place a traffic policy is written in a DestinationRule.
pub(super) fn validate_rule(rule: &DestinationRuleSpec, loc: &Location, diags: &mut Diagnostics) {
    let check = |policy: &TrafficPolicy, field: &str, diags: &mut Diagnostics| {
        if let Some(lb) = &policy.load_balancer {
            validate_load_balancer(lb, loc, &format!("{field}.loadBalancer"), diags);
        }
        for (i, port) in policy.port_level_settings.iter().enumerate() {
            if let Some(lb) = &port.load_balancer {
                validate_load_balancer(
                    lb,
                    loc,
                    &format!("{field}.portLevelSettings[{i}].loadBalancer"),
                    diags,
                );
            }
        }
    };
    if let Some(top) = &rule.traffic_policy {
        check(top, "spec.trafficPolicy", diags);
    }
    let mut names = std::collections::HashSet::new();
    for (i, subset) in rule.subsets.iter().enumerate() {
        if subset.name.is_empty() {
            diags.error(
                loc,
                Some(format!("spec.subsets[{i}].name")),
                "a subset needs a name",
            );
        } else if !names.insert(subset.name.as_str()) {
            diags.error(
                loc,
                Some(format!("spec.subsets[{i}].name")),
                format!("subset {:?} is defined twice", subset.name),
            );
        }
        if let Some(policy) = &subset.traffic_policy {
            check(policy, &format!("spec.subsets[{i}].trafficPolicy"), diags);
        }
    }
}
