//! DestinationRule traffic policies: chosen as Istio chooses them (a port-level
//! entry replaces its policy, a subset overrides the rule field by field) and
//! turned into balancers and timeouts.

use std::sync::Arc;

use crate::config::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, LoadBalancerSettings,
    OutlierDetection, PortTrafficPolicy, TrafficPolicy,
};
use crate::config::diagnostics::{Diagnostics, Location};
use crate::model::balancer::{Balancer, DEFAULT_MAGLEV_TABLE_SIZE, HashKey};
use crate::model::cluster::DEFAULT_CONNECT_TIMEOUT;
use crate::model::endpoint::Endpoint;
use crate::model::live::{OutlierSettings, PoolLimits, UNLIMITED};

/// The policy in force for one port and subset, chosen as Istio chooses it
/// (`MergeSubsetTrafficPolicy`, `GetPortLevelTrafficPolicy` in
/// `pilot/pkg/networking/util`):
///
/// - a `portLevelSettings` entry for the port *replaces* its policy's load
///   balancer, connection pool, outlier detection and TLS — what the entry
///   leaves out takes its default, not the policy's top-level value;
/// - a subset's policy (resolved for the port the same way) overrides the
///   rule's field by field, except that a subset port-level entry replaces
///   all four fields.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct EffectivePolicy<'a> {
    pub load_balancer: Option<&'a LoadBalancerSettings>,
    pub connection_pool: Option<&'a ConnectionPoolSettings>,
    pub outlier_detection: Option<&'a OutlierDetection>,
    pub tls: Option<&'a ClientTlsSettings>,
}

impl<'a> EffectivePolicy<'a> {
    /// `policy` for `port`; `true` when a port-level entry decided it.
    fn for_port(policy: &'a TrafficPolicy, port: u16) -> (Self, bool) {
        let port_level = policy
            .port_level_settings
            .iter()
            .find(|p| p.port.number == u32::from(port));
        match port_level {
            Some(PortTrafficPolicy {
                load_balancer,
                connection_pool,
                outlier_detection,
                tls,
                ..
            }) => (
                Self {
                    load_balancer: load_balancer.as_ref(),
                    connection_pool: connection_pool.as_ref(),
                    outlier_detection: outlier_detection.as_ref(),
                    tls: tls.as_ref(),
                },
                true,
            ),
            None => (
                Self {
                    load_balancer: policy.load_balancer.as_ref(),
                    connection_pool: policy.connection_pool.as_ref(),
                    outlier_detection: policy.outlier_detection.as_ref(),
                    tls: policy.tls.as_ref(),
                },
                false,
            ),
        }
    }

    /// The policy of `rule` for `port` and `subset`.
    pub fn of(rule: Option<&'a DestinationRuleSpec>, port: u16, subset: Option<&str>) -> Self {
        let Some(rule) = rule else {
            return Self::default();
        };
        let top = rule
            .traffic_policy
            .as_ref()
            .map(|p| Self::for_port(p, port).0)
            .unwrap_or_default();
        let subset_policy = subset
            .and_then(|name| rule.subsets.iter().find(|s| s.name == name))
            .and_then(|s| s.traffic_policy.as_ref());
        let Some(sub) = subset_policy else {
            return top;
        };
        match Self::for_port(sub, port) {
            (port_level, true) => port_level,
            (sub, false) => Self {
                load_balancer: sub.load_balancer.or(top.load_balancer),
                connection_pool: sub.connection_pool.or(top.connection_pool),
                outlier_detection: sub.outlier_detection.or(top.outlier_detection),
                tls: sub.tls.or(top.tls),
            },
        }
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

/// What a cluster takes from its effective policy.
pub(super) struct ClusterSettings {
    pub connect_timeout: std::time::Duration,
    pub limits: PoolLimits,
    pub outlier: Option<OutlierSettings>,
    pub h2_upgrade: bool,
    pub use_client_protocol: bool,
}

/// Istio's defaults for what the policy leaves out.
pub(super) fn cluster_settings(policy: &EffectivePolicy<'_>) -> ClusterSettings {
    let tcp = policy.connection_pool.and_then(|p| p.tcp.as_ref());
    let http = policy.connection_pool.and_then(|p| p.http.as_ref());
    let limit = |v: Option<i32>| v.filter(|v| *v > 0).map_or(UNLIMITED, |v| v as u64);
    let defaults = PoolLimits::default();
    let limits = PoolLimits {
        max_connections: limit(tcp.and_then(|t| t.max_connections)),
        max_pending: limit(http.and_then(|h| h.http1_max_pending_requests)),
        max_requests: limit(http.and_then(|h| h.http2_max_requests)),
        max_retries: limit(http.and_then(|h| h.max_retries)),
        max_requests_per_connection: http
            .and_then(|h| h.max_requests_per_connection)
            .filter(|v| *v > 0)
            .map_or(0, |v| v as u64),
        idle_timeout: http
            .and_then(|h| h.idle_timeout)
            .or(tcp.and_then(|t| t.idle_timeout))
            .map_or(defaults.idle_timeout, |d| d.get()),
    };
    let outlier = policy.outlier_detection.map(|od| OutlierSettings {
        // Istio maps the deprecated consecutiveErrors to gateway errors only.
        consecutive_5xx: match (od.consecutive_5xx_errors, od.consecutive_errors) {
            (Some(n), _) => n,
            (None, Some(_)) => 0,
            (None, None) => 5,
        },
        consecutive_gateway: od
            .consecutive_gateway_errors
            .or(od.consecutive_errors.filter(|n| *n > 0).map(|n| n as u32))
            .unwrap_or(0),
        interval: od
            .interval
            .map_or(std::time::Duration::from_secs(10), |d| d.get()),
        base_ejection: od
            .base_ejection_time
            .map_or(std::time::Duration::from_secs(30), |d| d.get()),
        max_ejection_percent: od
            .max_ejection_percent
            .map_or(10, |p| p.clamp(0, 100) as u32),
        min_health_percent: od.min_health_percent.map_or(0, |p| p.clamp(0, 100) as u32),
    });
    ClusterSettings {
        connect_timeout: tcp
            .and_then(|t| t.connect_timeout)
            .map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.get()),
        limits,
        outlier,
        h2_upgrade: http.and_then(|h| h.h2_upgrade_policy.as_deref()) == Some("UPGRADE"),
        use_client_protocol: http.and_then(|h| h.use_client_protocol).unwrap_or(false),
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// Checks every place a traffic policy is written in a DestinationRule.
pub(super) fn validate_rule(
    rule: &DestinationRuleSpec,
    loc: &Location,
    has_identity: bool,
    diags: &mut Diagnostics,
) {
    let check = |policy: &TrafficPolicy, field: &str, diags: &mut Diagnostics| {
        validate_limits(policy, loc, field, diags);
        if let Some(tls) = &policy.tls {
            super::upstream_tls::validate(tls, loc, &format!("{field}.tls"), has_identity, diags);
        }
        for (i, port) in policy.port_level_settings.iter().enumerate() {
            if let Some(tls) = &port.tls {
                let field = format!("{field}.portLevelSettings[{i}].tls");
                super::upstream_tls::validate(tls, loc, &field, has_identity, diags);
            }
        }
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

/// Negative limits and out-of-range percentages are errors, as Istio's
/// validation has them.
fn validate_limits(policy: &TrafficPolicy, loc: &Location, field: &str, diags: &mut Diagnostics) {
    let pool = policy.connection_pool.as_ref();
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    let ints = [
        (
            "connectionPool.tcp.maxConnections",
            tcp.and_then(|t| t.max_connections),
        ),
        (
            "connectionPool.http.http1MaxPendingRequests",
            http.and_then(|h| h.http1_max_pending_requests),
        ),
        (
            "connectionPool.http.http2MaxRequests",
            http.and_then(|h| h.http2_max_requests),
        ),
        (
            "connectionPool.http.maxRequestsPerConnection",
            http.and_then(|h| h.max_requests_per_connection),
        ),
        (
            "connectionPool.http.maxRetries",
            http.and_then(|h| h.max_retries),
        ),
    ];
    for (name, value) in ints {
        if value.is_some_and(|v| v < 0) {
            diags.error(loc, Some(format!("{field}.{name}")), "must not be negative");
        }
    }
    if let Some(policy) = http.and_then(|h| h.h2_upgrade_policy.as_deref())
        && !matches!(policy, "DEFAULT" | "DO_NOT_UPGRADE" | "UPGRADE")
    {
        let msg = format!("unknown {policy:?} (DEFAULT, DO_NOT_UPGRADE, UPGRADE)");
        diags.error(
            loc,
            Some(format!("{field}.connectionPool.http.h2UpgradePolicy")),
            msg,
        );
    }
    if let Some(od) = &policy.outlier_detection {
        for (name, value) in [
            ("maxEjectionPercent", od.max_ejection_percent),
            ("minHealthPercent", od.min_health_percent),
        ] {
            if value.is_some_and(|v| !(0..=100).contains(&v)) {
                diags.error(
                    loc,
                    Some(format!("{field}.outlierDetection.{name}")),
                    "must be between 0 and 100",
                );
            }
        }
        if od.consecutive_errors.is_some_and(|v| v < 0) {
            diags.error(
                loc,
                Some(format!("{field}.outlierDetection.consecutiveErrors")),
                "must not be negative",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> DestinationRuleSpec {
        let tree = crate::config::source::read_document(yaml, 1)
            .expect("yaml")
            .expect("a document");
        serde_json::from_value(tree.value).expect("rule")
    }

    fn lb(policy: &EffectivePolicy<'_>) -> Option<&'static str> {
        let simple = policy.load_balancer.and_then(|lb| lb.simple.as_deref());
        simple.map(|s| match s {
            "ROUND_ROBIN" => "ROUND_ROBIN",
            "RANDOM" => "RANDOM",
            _ => "OTHER",
        })
    }

    const RULE: &str = r#"
host: svc
trafficPolicy:
  loadBalancer: {simple: ROUND_ROBIN}
  connectionPool: {http: {http2MaxRequests: 1}}
  outlierDetection: {consecutive5xxErrors: 1}
  tls: {mode: SIMPLE}
  portLevelSettings:
  - port: {number: 9080}
    loadBalancer: {simple: RANDOM}
subsets:
- name: plain
  labels: {version: v1}
- name: pooled
  labels: {version: v2}
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 7}}
- name: ported
  labels: {version: v3}
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 9}}
    portLevelSettings:
    - port: {number: 80}
      outlierDetection: {consecutive5xxErrors: 3}
"#;

    #[test]
    fn a_port_entry_replaces_the_top_level_policy() {
        let rule = rule(RULE);
        let on_9080 = EffectivePolicy::of(Some(&rule), 9080, None);
        assert_eq!(lb(&on_9080), Some("RANDOM"));
        assert!(on_9080.connection_pool.is_none());
        assert!(on_9080.outlier_detection.is_none());
        assert!(on_9080.tls.is_none());
        let on_80 = EffectivePolicy::of(Some(&rule), 80, None);
        assert_eq!(lb(&on_80), Some("ROUND_ROBIN"));
        assert!(on_80.tls.is_some() && on_80.outlier_detection.is_some());
    }

    #[test]
    fn subsets_override_field_by_field() {
        let rule = rule(RULE);
        // No subset policy: the rule's (port-resolved) policy.
        let plain = EffectivePolicy::of(Some(&rule), 9080, Some("plain"));
        assert_eq!(lb(&plain), Some("RANDOM"));
        assert!(plain.tls.is_none());
        // A subset field replaces that field only.
        let pooled = EffectivePolicy::of(Some(&rule), 80, Some("pooled"));
        let max = |p: &EffectivePolicy<'_>| {
            p.connection_pool
                .and_then(|c| c.http.as_ref())
                .and_then(|h| h.http2_max_requests)
        };
        assert_eq!(max(&pooled), Some(7));
        assert_eq!(lb(&pooled), Some("ROUND_ROBIN"));
        assert!(pooled.tls.is_some() && pooled.outlier_detection.is_some());
        // On 9080 the rule's port entry applies first, then the subset field.
        let pooled_9080 = EffectivePolicy::of(Some(&rule), 9080, Some("pooled"));
        assert_eq!(max(&pooled_9080), Some(7));
        assert_eq!(lb(&pooled_9080), Some("RANDOM"));
        assert!(pooled_9080.tls.is_none());
        // A subset port entry replaces all four fields.
        let ported = EffectivePolicy::of(Some(&rule), 80, Some("ported"));
        assert!(ported.connection_pool.is_none() && ported.tls.is_none());
        assert!(ported.load_balancer.is_none());
        assert_eq!(
            ported
                .outlier_detection
                .and_then(|o| o.consecutive_5xx_errors),
            Some(3)
        );
        // Without its port entry, the subset's own top level merges in.
        let ported_9080 = EffectivePolicy::of(Some(&rule), 9080, Some("ported"));
        assert_eq!(max(&ported_9080), Some(9));
        assert_eq!(lb(&ported_9080), Some("RANDOM"));
    }
}
