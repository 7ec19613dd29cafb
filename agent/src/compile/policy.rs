//! DestinationRule traffic policies: chosen as Istio chooses them (a port-level
//! entry replaces its policy, a subset overrides the rule field by field) and
//! turned into balancers and timeouts.

use std::sync::Arc;

use crate::config::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, LoadBalancerSettings,
    OutlierDetection, PortTrafficPolicy, RetryBudget as RetryBudgetSettings, TrafficPolicy,
};
use crate::config::diagnostics::{Diagnostics, Location};
use crate::model::balancer::{Balancer, DEFAULT_MAGLEV_TABLE_SIZE, HashCookie, HashKey, SlowStart};
use crate::model::cluster::{DEFAULT_CONNECT_TIMEOUT, Http2Keepalive, Keepalive, TcpKeepalive};
use crate::model::endpoint::Endpoint;
use crate::model::live::{LiveState, OutlierSettings, PoolLimits, RetryBudget, UNLIMITED};

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
    /// The traffic policy's (a port's settings have none of their own).
    pub retry_budget: Option<&'a RetryBudgetSettings>,
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
                    retry_budget: policy.retry_budget.as_ref(),
                },
                true,
            ),
            None => (
                Self {
                    load_balancer: policy.load_balancer.as_ref(),
                    connection_pool: policy.connection_pool.as_ref(),
                    outlier_detection: policy.outlier_detection.as_ref(),
                    tls: policy.tls.as_ref(),
                    retry_budget: policy.retry_budget.as_ref(),
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
            (port_level, true) => Self {
                retry_budget: port_level.retry_budget.or(top.retry_budget),
                ..port_level
            },
            (sub, false) => Self {
                load_balancer: sub.load_balancer.or(top.load_balancer),
                connection_pool: sub.connection_pool.or(top.connection_pool),
                outlier_detection: sub.outlier_detection.or(top.outlier_detection),
                tls: sub.tls.or(top.tls),
                retry_budget: sub.retry_budget.or(top.retry_budget),
            },
        }
    }
}

/// What the agent does with a load-balancer setting unlike Envoy: warnings,
/// and an error for `useSourceIp: false` alone; the validator refused
/// unknown and conflicting settings. Reported once per place it is written.
/// `captures`: the agent captures outbound connections (PASSTHROUGH then
/// sends them to their original destinations).
pub(super) fn validate_load_balancer(
    lb: &LoadBalancerSettings,
    loc: &Location,
    field: &str,
    captures: bool,
    diags: &mut Diagnostics,
) {
    if passthrough(Some(lb)) && !captures {
        let msg = "PASSTHROUGH sends a connection to its original destination, which only a connection the agent captures has (Agent spec.capture.mode: REDIRECT); this proxy captures none, so its requests are balanced LEAST_REQUEST over the endpoints";
        diags.warn(loc, Some(format!("{field}.simple")), msg);
    }
    let Some(hash) = &lb.consistent_hash else {
        return;
    };
    // Istio counts `useSourceIp: false` as the hash key it names; the agent
    // would hash by source IP all the same, so it asks for a real key.
    if hash.use_source_ip == Some(false)
        && hash.http_header_name.is_none()
        && hash.http_cookie.is_none()
        && hash.http_query_parameter_name.is_none()
    {
        let msg = "`useSourceIp: false` names no hash key; set `useSourceIp: true`, httpHeaderName, httpCookie or httpQueryParameterName";
        diags.error(
            loc,
            Some(format!("{field}.consistentHash.useSourceIp")),
            msg,
        );
    }
}

/// Whether the setting is `simple: PASSTHROUGH`: Istio's ORIGINAL_DST
/// cluster (`applyLoadBalancer`), each connection to its original
/// destination.
pub(super) fn passthrough(lb: Option<&LoadBalancerSettings>) -> bool {
    lb.is_some_and(|lb| lb.simple.as_deref() == Some("PASSTHROUGH"))
}

/// The balancer for a validated setting (`PASSTHROUGH`: LEAST_REQUEST, for
/// the requests without an original destination).
pub(super) fn balancer(
    lb: Option<&LoadBalancerSettings>,
    endpoints: &[Arc<Endpoint>],
    (live, cluster): (&LiveState, &str),
) -> Balancer {
    let Some(lb) = lb else {
        return Balancer::by_turns(endpoints, true, live, cluster, None);
    };
    if let Some(hash) = &lb.consistent_hash {
        let key = if let Some(name) = &hash.http_header_name {
            http::HeaderName::try_from(name.as_str())
                .map(HashKey::Header)
                .ok()
        } else if let Some(cookie) = &hash.http_cookie {
            let attributes: Vec<(String, Option<String>)> = (cookie.attributes.iter())
                .map(|a| (a.name.clone(), a.value.clone()))
                .collect();
            Some(HashKey::Cookie(HashCookie::new(
                cookie.name.clone(),
                cookie.ttl.map(|t| t.get()),
                cookie.path.as_deref(),
                &attributes,
            )))
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
    let slow_start = slow_start(lb);
    match lb.simple.as_deref() {
        Some("ROUND_ROBIN") => Balancer::by_turns(endpoints, false, live, cluster, slow_start),
        // Envoy's random balancer draws every host alike, weights aside.
        Some("RANDOM") => Balancer::Random,
        // Istio renders no slow start for PASSTHROUGH's ORIGINAL_DST.
        Some("PASSTHROUGH") => Balancer::by_turns(endpoints, true, live, cluster, None),
        _ => Balancer::by_turns(endpoints, true, live, cluster, slow_start),
    }
}

/// The setting's slow start, as Istio's `setSlowStartConfig` renders it:
/// `warmup` (its `minimumPercent` and `aggression` else Envoy's defaults,
/// 10% and 1), else `warmupDurationSecs`; a zero window is none.
fn slow_start(lb: &LoadBalancerSettings) -> Option<SlowStart> {
    let (window, min_percent, aggression) = match &lb.warmup {
        Some(warmup) => (warmup.duration?, warmup.minimum_percent, warmup.aggression),
        None => (lb.warmup_duration_secs?, None, None),
    };
    let window_ms = window.get().as_millis().min(u128::from(u64::MAX)) as u64;
    (window_ms > 0).then(|| SlowStart {
        window_ms,
        aggression: aggression.unwrap_or(1.0),
        min_weight: min_percent.unwrap_or(10.0) / 100.0,
    })
}

/// What a cluster takes from its effective policy.
pub(super) struct ClusterSettings {
    pub connect_timeout: std::time::Duration,
    pub limits: PoolLimits,
    pub outlier: Option<OutlierSettings>,
    pub h2_upgrade: bool,
    pub use_client_protocol: bool,
    pub tcp_idle_timeout: Option<std::time::Duration>,
    pub keepalive: Keepalive,
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
        max_concurrent_streams: limit(http.and_then(|h| h.max_concurrent_streams)),
        idle_timeout: http
            .and_then(|h| h.idle_timeout)
            .or(tcp.and_then(|t| t.idle_timeout))
            .map_or(defaults.idle_timeout, |d| d.get()),
        max_connection_duration: tcp
            .and_then(|t| t.max_connection_duration)
            .map(|d| d.get())
            .filter(|d| !d.is_zero()),
        // Istio's defaults when the field is there (none when it is not).
        retry_budget: policy.retry_budget.map(|b| RetryBudget {
            percent: b.percent.unwrap_or(20.0).clamp(0.0, 100.0),
            min_concurrency: b
                .min_retry_concurrency
                .filter(|n| *n > 0)
                .map_or(3, u64::from),
        }),
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
        // Istio renders the count only with the split, where Envoy's
        // default is 5 (enforced at 100%).
        consecutive_local_origin: (od.split_external_local_origin_errors == Some(true)).then(
            || {
                od.consecutive_local_origin_failures
                    .filter(|n| *n > 0)
                    .unwrap_or(5)
            },
        ),
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
        // Only the TCP setting reaches `tcp_proxy` (Istio's network filter
        // builder); unset, the agent-wide default applies.
        tcp_idle_timeout: tcp.and_then(|t| t.idle_timeout).map(|d| d.get()),
        keepalive: Keepalive {
            tcp: tcp
                .and_then(|t| t.tcp_keepalive.as_ref())
                .map(|k| TcpKeepalive {
                    probes: k.probes,
                    time: k.time.map(|d| d.get()),
                    interval: k.interval.map(|d| d.get()),
                }),
            // Both are required (the validator says so when one is missing).
            http2: http
                .and_then(|h| h.http2_keep_alive.as_ref())
                .and_then(|k| {
                    Some(Http2Keepalive {
                        interval: k.interval?.get(),
                        timeout: k.timeout?.get(),
                    })
                }),
        },
    }
}

/// Checks every place a traffic policy is written in a DestinationRule for
/// what the agent cannot do (TLS files, ISTIO_MUTUAL without an identity)
/// or does differently; Istio's own rules (limits, percentages, subset
/// names) are the validator's.
pub(super) fn validate_rule(
    rule: &DestinationRuleSpec,
    loc: &Location,
    (has_identity, captures): (bool, bool),
    diags: &mut Diagnostics,
) {
    let check = |policy: &TrafficPolicy, field: &str, diags: &mut Diagnostics| {
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
            let field = format!("{field}.loadBalancer");
            validate_load_balancer(lb, loc, &field, captures, diags);
        }
        for (i, port) in policy.port_level_settings.iter().enumerate() {
            if let Some(lb) = &port.load_balancer {
                let field = format!("{field}.portLevelSettings[{i}].loadBalancer");
                validate_load_balancer(lb, loc, &field, captures, diags);
            }
        }
    };
    if let Some(top) = &rule.traffic_policy {
        check(top, "spec.trafficPolicy", diags);
    }
    for (i, subset) in rule.subsets.iter().enumerate() {
        if let Some(policy) = &subset.traffic_policy {
            check(policy, &format!("spec.subsets[{i}].trafficPolicy"), diags);
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

    /// Istio's rules are checked once, by the validator, in its words; what
    /// only the agent refuses is checked when the rule is compiled.
    #[test]
    fn each_rule_is_reported_once() {
        let errors = |dr: &str| -> Vec<String> {
            let yaml = format!(
                "apiVersion: tracemesh.io/v1\nkind: Agent\nmetadata: {{name: a, namespace: default}}\nspec: {{service: a}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: default}}\nspec: {dr}\n"
            );
            let file: Arc<str> = Arc::from("mesh.yaml");
            match crate::compile::compile_text(&file, &yaml, 1, &Default::default()) {
                Ok(_) => Vec::new(),
                Err(crate::compile::ConfigRejected(diags)) => {
                    diags.errors().map(ToString::to_string).collect()
                }
            }
        };
        let negative = errors(
            "{host: r, trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}, outlierDetection: {maxEjectionPercent: 101}}}",
        );
        assert_eq!(negative.len(), 2, "{negative:?}");
        assert!(negative[0].contains("max connections must be non-negative"));
        assert!(negative[1].contains("percentage 101 is not in range 0..100"));
        let no_key = errors(
            "{host: r, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: false}}}}",
        );
        assert_eq!(no_key.len(), 1, "{no_key:?}");
        assert!(
            no_key[0]
                .contains("consistentHash.useSourceIp: `useSourceIp: false` names no hash key")
        );
    }
}
