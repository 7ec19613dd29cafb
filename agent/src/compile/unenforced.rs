//! Fields the agent accepts but does not enforce yet. Each one present is a
//! warning at load, so nothing an operator wrote is silently ignored.

use super::Documents;
use crate::config::destination_rule::TrafficPolicy;
use crate::config::diagnostics::{Diagnostics, Location};

const NOT_ENFORCED: &str = "accepted but not enforced yet";

pub(super) fn warn_all(docs: &Documents, diags: &mut Diagnostics) {
    for doc in &docs.virtual_services {
        let loc = &doc.location;
        let spec = &doc.spec;
        if !spec.tls.is_empty() {
            diags.warn(loc, Some("spec.tls".into()), NOT_ENFORCED);
        }
        if !spec.tcp.is_empty() {
            diags.warn(loc, Some("spec.tcp".into()), NOT_ENFORCED);
        }
        for (i, rule) in spec.http.iter().enumerate() {
            if rule.cors_policy.is_some() {
                diags.warn(
                    loc,
                    Some(format!("spec.http[{i}].corsPolicy")),
                    NOT_ENFORCED,
                );
            }
            if rule.delegate.is_some() {
                diags.warn(
                    loc,
                    Some(format!("spec.http[{i}].delegate")),
                    "delegation applies to gateways only; not enforced",
                );
            }
        }
    }
    for doc in &docs.destination_rules {
        let loc = &doc.location;
        if let Some(policy) = &doc.spec.traffic_policy {
            warn_policy(policy, "spec.trafficPolicy", loc, diags);
        }
        for (i, subset) in doc.spec.subsets.iter().enumerate() {
            if let Some(policy) = &subset.traffic_policy {
                warn_policy(
                    policy,
                    &format!("spec.subsets[{i}].trafficPolicy"),
                    loc,
                    diags,
                );
            }
        }
    }
    for doc in &docs.service_entries {
        if doc.spec.workload_selector.is_some() {
            let msg = "selecting workloads needs a platform; only listed endpoints are used";
            diags.warn(&doc.location, Some("spec.workloadSelector".into()), msg);
        }
    }
}

fn warn_policy(policy: &TrafficPolicy, field: &str, loc: &Location, diags: &mut Diagnostics) {
    let pool = policy.connection_pool.as_ref();
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    let outlier = policy.outlier_detection.as_ref();
    let present = [
        (
            "connectionPool.tcp.tcpKeepalive",
            tcp.is_some_and(|t| t.tcp_keepalive.is_some()),
        ),
        (
            "connectionPool.tcp.maxConnectionDuration",
            tcp.is_some_and(|t| t.max_connection_duration.is_some()),
        ),
        (
            "connectionPool.http.maxConcurrentStreams",
            http.is_some_and(|h| h.max_concurrent_streams.is_some()),
        ),
        (
            "outlierDetection.splitExternalLocalOriginErrors",
            outlier.is_some_and(|o| {
                o.split_external_local_origin_errors.is_some()
                    || o.consecutive_local_origin_failures.is_some()
            }),
        ),
        ("tunnel", policy.tunnel.is_some()),
        ("proxyProtocol", policy.proxy_protocol.is_some()),
    ];
    for (name, _) in present.iter().filter(|(_, p)| *p) {
        diags.warn(loc, Some(format!("{field}.{name}")), NOT_ENFORCED);
    }
    if let Some(lb) = &policy.load_balancer
        && (lb.locality_lb_setting.is_some()
            || lb.warmup.is_some()
            || lb.warmup_duration_secs.is_some())
    {
        diags.warn(
            loc,
            Some(format!("{field}.loadBalancer")),
            "locality and warmup settings are not enforced yet",
        );
    }
}
