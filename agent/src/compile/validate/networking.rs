//! Istio's rules for the networking.istio.io kinds other than
//! VirtualService: DestinationRule, ServiceEntry, WorkloadEntry,
//! WorkloadGroup, Gateway, Sidecar, EnvoyFilter and ProxyConfig.

use std::collections::HashSet;

use super::common::{self, Check};
use super::virtual_service::{destination, subset_name};
use crate::config::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, LoadBalancerSettings,
    OutlierDetection, TrafficPolicy,
};
use crate::config::documents::Document;
use crate::config::envoy_filter::{EnvoyFilterSpec, ProxyConfigSpec};
use crate::config::gateway::{GatewaySpec, Port, ServerTlsSettings, SidecarSpec};
use crate::config::service_entry::{ServiceEntrySpec, WorkloadEntry};
use crate::config::workload::WorkloadGroupSpec;

pub(super) fn destination_rule(c: &mut Check<'_>, doc: &Document<DestinationRuleSpec>) {
    let spec = &doc.spec;
    if spec.host.is_empty() {
        c.error("spec.host", "the host is required");
    } else if let Some(err) = common::wildcard_domain_error(&spec.host) {
        c.error("spec.host", err);
    }
    if let Some(policy) = &spec.traffic_policy {
        traffic_policy(c, "spec.trafficPolicy", policy);
    }
    let mut names = HashSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let field = format!("spec.subsets[{i}]");
        subset_name(c, &format!("{field}.name"), &subset.name);
        if !subset.name.is_empty() && !names.insert(subset.name.as_str()) {
            c.error(
                format!("{field}.name"),
                format!("duplicate subset names: {}", subset.name),
            );
        }
        common::selector_labels(c, &format!("{field}.labels"), &subset.labels);
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy(c, &format!("{field}.trafficPolicy"), policy);
        }
    }
    common::export_to(c, doc.metadata.namespace.as_deref(), &spec.export_to, false);
    if let Some(selector) = &spec.workload_selector {
        common::selector(c, "spec.workloadSelector", selector);
        if spec.export_to.len() > 1 {
            c.error(
                "spec.exportTo",
                "destination rule with workload selector cannot have multiple entries in exportTo",
            );
        } else if spec.export_to.first().is_some_and(|e| e != ".") {
            c.error("spec.exportTo", "destination rule with workload selector cannot have exportTo beyond current namespace");
        }
    }
}

fn traffic_policy(c: &mut Check<'_>, field: &str, p: &TrafficPolicy) {
    let empty = p.load_balancer.is_none()
        && p.connection_pool.is_none()
        && p.outlier_detection.is_none()
        && p.tls.is_none()
        && p.port_level_settings.is_empty()
        && p.tunnel.is_none()
        && p.proxy_protocol.is_none()
        && p.retry_budget.is_none();
    if empty {
        c.error(field, "traffic policy must have at least one field");
    }
    if p.tunnel.is_some() && p.proxy_protocol.is_some() {
        c.error(field, "tunnel and proxyProtocol must not be set together");
    }
    if let Some(t) = &p.tunnel {
        if !matches!(t.protocol.as_deref(), None | Some("CONNECT" | "POST")) {
            c.error(
                format!("{field}.tunnel.protocol"),
                "tunnel protocol must be \"CONNECT\" or \"POST\"",
            );
        }
        if common::wildcard_domain_error(&t.target_host).is_some() && !common::is_ip(&t.target_host)
            || t.target_host.contains('*')
        {
            c.error(
                format!("{field}.tunnel.targetHost"),
                format!(
                    "tunnel target host must be valid FQDN or IP address: {:?}",
                    t.target_host
                ),
            );
        }
        common::port_number(c, &format!("{field}.tunnel.targetPort"), t.target_port);
    }
    if let Some(pp) = &p.proxy_protocol
        && !matches!(pp.version.as_deref(), None | Some("V1" | "V2"))
    {
        c.error(
            format!("{field}.proxyProtocol.version"),
            "proxy protocol version must be V1 or V2",
        );
    }
    if let Some(rb) = &p.retry_budget
        && rb.percent.is_some_and(|v| !(0.0..=100.0).contains(&v))
    {
        c.error(
            format!("{field}.retryBudget.percent"),
            "must be between 0 and 100",
        );
    }
    policy_parts(
        c,
        field,
        p.load_balancer.as_ref(),
        p.connection_pool.as_ref(),
        p.outlier_detection.as_ref(),
        p.tls.as_ref(),
    );
    let mut ports = HashSet::new();
    for (i, pl) in p.port_level_settings.iter().enumerate() {
        let f = format!("{field}.portLevelSettings[{i}]");
        common::port_number(c, &format!("{f}.port.number"), pl.port.number);
        if !ports.insert(pl.port.number) {
            c.warn(
                format!("{f}.port.number"),
                format!(
                    "port {} has settings already; only the first applies",
                    pl.port.number
                ),
            );
        }
        if pl.load_balancer.is_none()
            && pl.connection_pool.is_none()
            && pl.outlier_detection.is_none()
            && pl.tls.is_none()
        {
            c.error(&f, "port traffic policy must have at least one field");
        }
        policy_parts(
            c,
            &f,
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
        );
    }
}

fn policy_parts(
    c: &mut Check<'_>,
    field: &str,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = lb {
        load_balancer(c, &format!("{field}.loadBalancer"), lb);
    }
    if let Some(pool) = pool {
        connection_pool(c, &format!("{field}.connectionPool"), pool);
    }
    if let Some(od) = outlier {
        outlier_detection(c, &format!("{field}.outlierDetection"), od);
    }
    if let Some(tls) = tls {
        client_tls(c, &format!("{field}.tls"), tls);
    }
}

const SIMPLE_LB: &[&str] = &[
    "UNSPECIFIED",
    "LEAST_CONN",
    "RANDOM",
    "PASSTHROUGH",
    "ROUND_ROBIN",
    "LEAST_REQUEST",
];

fn load_balancer(c: &mut Check<'_>, field: &str, lb: &LoadBalancerSettings) {
    if let Some(simple) = &lb.simple
        && !SIMPLE_LB.contains(&simple.as_str())
    {
        c.error(
            format!("{field}.simple"),
            format!(
                "unknown load balancer {simple:?} (one of {})",
                SIMPLE_LB.join(", ")
            ),
        );
    }
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        c.error(field, "set either `simple` or `consistentHash`, not both");
    }
    if let Some(hash) = &lb.consistent_hash {
        let f = format!("{field}.consistentHash");
        let keys = [
            hash.http_header_name.is_some(),
            hash.http_cookie.is_some(),
            hash.use_source_ip.is_some(),
            hash.http_query_parameter_name.is_some(),
        ];
        match keys.iter().filter(|k| **k).count() {
            0 => c.error(
                &f,
                "needs one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
            ),
            1 => {}
            _ => c.error(
                &f,
                "set only one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
            ),
        }
        if let Some(h) = &hash.http_header_name {
            common::header_name(c, &format!("{f}.httpHeaderName"), h);
        }
        if let Some(cookie) = &hash.http_cookie {
            if cookie.name.is_empty() {
                c.error(
                    format!("{f}.httpCookie.name"),
                    "name required for HttpCookie",
                );
            }
            let mut seen = HashSet::new();
            for (i, a) in cookie.attributes.iter().enumerate() {
                if a.name.is_empty() {
                    c.error(
                        format!("{f}.httpCookie.attributes[{i}].name"),
                        "cookie attribute name cannot be empty",
                    );
                } else if !seen.insert(a.name.as_str()) {
                    c.error(
                        format!("{f}.httpCookie.attributes[{i}].name"),
                        format!("duplicate cookie attribute name: {}", a.name),
                    );
                }
            }
            // With a `ttl` the cookie is made and sent in a `Set-Cookie`
            // header: what it is written from must be header text (Envoy
            // refuses control characters in the attributes too), or no
            // cookie could ever be sent.
            if cookie.ttl.is_some() {
                let mut parts = vec![(format!("{f}.httpCookie.name"), cookie.name.as_str())];
                if let Some(path) = &cookie.path {
                    parts.push((format!("{f}.httpCookie.path"), path));
                }
                for (i, a) in cookie.attributes.iter().enumerate() {
                    let at = format!("{f}.httpCookie.attributes[{i}]");
                    parts.push((format!("{at}.name"), &a.name));
                    if let Some(value) = &a.value {
                        parts.push((format!("{at}.value"), value));
                    }
                }
                for (field, text) in parts {
                    if http::HeaderValue::from_bytes(text.as_bytes()).is_err() {
                        c.error(
                            field,
                            "cannot be written in a Set-Cookie header (a control character)",
                        );
                    }
                }
            }
        }
        if hash.ring_hash.is_some() && hash.maglev.is_some() {
            c.error(&f, "set `ringHash` or `maglev`, not both");
        }
        if hash.minimum_ring_size.is_some() {
            if hash.ring_hash.is_some() || hash.maglev.is_some() {
                c.error(
                    format!("{f}.minimumRingSize"),
                    "only one of minimumRingSize or maglev/ringHash can be specified",
                );
            } else {
                c.warn(format!("{f}.minimumRingSize"), "consistent hash MinimumRingSize is deprecated, use ConsistentHash's RingHash configuration instead");
            }
        }
        if let Some(m) = &hash.maglev {
            let size = m.table_size;
            if size == 0 {
                c.error(
                    format!("{f}.maglev.tableSize"),
                    "tableSize must be set for maglev",
                );
            } else if size >= 5_000_011 {
                c.error(
                    format!("{f}.maglev.tableSize"),
                    "tableSize must be less than 5000011 for maglev",
                );
            } else if !is_prime(size) {
                c.error(
                    format!("{f}.maglev.tableSize"),
                    format!("tableSize must be a prime number for maglev (e.g. 65537, not {size})"),
                );
            }
        }
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        c.error(
            field,
            "only one of localityLbSetting and zoneAwareLbSetting can be set",
        );
    }
    if let Some(loc) = &lb.locality_lb_setting {
        let f = format!("{field}.localityLbSetting");
        if !loc.distribute.is_empty() && !loc.failover.is_empty() {
            c.error(
                &f,
                "can not simultaneously specify 'distribute' and 'failover'",
            );
        }
        for (i, d) in loc.distribute.iter().enumerate() {
            let total: u64 = d.to.values().map(|w| u64::from(*w)).sum();
            if total != 100 {
                c.error(
                    format!("{f}.distribute[{i}].to"),
                    format!("total weight across localities must be 100 (it is {total})"),
                );
            }
            if d.from.is_empty() {
                c.error(
                    format!("{f}.distribute[{i}].from"),
                    "the origin locality is required",
                );
            }
        }
        for (i, fo) in loc.failover.iter().enumerate() {
            if fo.from == fo.to {
                c.error(
                    format!("{f}.failover[{i}]"),
                    "locality lb failover settings must specify different regions",
                );
            }
            if fo.from.contains('/') || fo.to.contains('/') {
                c.error(
                    format!("{f}.failover[{i}]"),
                    "locality lb failover only specify region",
                );
            }
        }
    }
    if let Some(w) = &lb.warmup {
        let f = format!("{field}.warmup");
        if w.duration.is_none() {
            c.error(format!("{f}.duration"), "duration is required");
        }
        common::duration_at_least_1ms(c, &format!("{f}.duration"), w.duration);
        match w.minimum_percent {
            Some(p) if p > 100.0 => c.error(
                format!("{f}.minimumPercent"),
                "minimumPercent value should be less than or equal to 100",
            ),
            Some(p) if p.is_nan() || p < 0.0 => c.error(
                format!("{f}.minimumPercent"),
                "minimumPercent value should be greater than or equal to 0",
            ),
            _ => {}
        }
        if w.aggression.is_some_and(|a| a <= 0.0) {
            c.error(
                format!("{f}.aggression"),
                "aggression should be greater than 0",
            );
        }
    }
    common::duration_at_least_1ms(
        c,
        &format!("{field}.warmupDurationSecs"),
        lb.warmup_duration_secs,
    );
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

fn connection_pool(c: &mut Check<'_>, field: &str, pool: &ConnectionPoolSettings) {
    if pool.tcp.is_none() && pool.http.is_none() {
        c.error(field, "connection pool must have at least one field");
    }
    if let Some(http) = &pool.http {
        let f = format!("{field}.http");
        for (name, value, what) in [
            (
                "http1MaxPendingRequests",
                http.http1_max_pending_requests,
                "http1 max pending requests",
            ),
            (
                "http2MaxRequests",
                http.http2_max_requests,
                "http2 max requests",
            ),
            (
                "maxRequestsPerConnection",
                http.max_requests_per_connection,
                "max requests per connection",
            ),
            ("maxRetries", http.max_retries, "max retries"),
            (
                "maxConcurrentStreams",
                http.max_concurrent_streams,
                "max concurrent streams",
            ),
        ] {
            if value.is_some_and(|v| v < 0) {
                c.error(
                    format!("{f}.{name}"),
                    format!("{what} must be non-negative"),
                );
            }
        }
        match http.h2_upgrade_policy.as_deref() {
            None | Some("DEFAULT" | "DO_NOT_UPGRADE") => {}
            Some("UPGRADE") if http.use_client_protocol == Some(true) => {
                c.error(
                    format!("{f}.useClientProtocol"),
                    "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
                );
            }
            Some("UPGRADE") => {}
            Some(other) => c.error(
                format!("{f}.h2UpgradePolicy"),
                format!("unknown {other:?} (DEFAULT, DO_NOT_UPGRADE, UPGRADE)"),
            ),
        }
        common::duration_at_least_1ms(c, &format!("{f}.idleTimeout"), http.idle_timeout);
        if let Some(ka) = &http.http2_keep_alive {
            if ka.interval.is_none() {
                c.error(
                    format!("{f}.http2KeepAlive.interval"),
                    "http2 keepalive interval is required",
                );
            }
            if ka.timeout.is_none() {
                c.error(
                    format!("{f}.http2KeepAlive.timeout"),
                    "http2 keepalive timeout is required",
                );
            }
            common::duration_at_least_1ms(c, &format!("{f}.http2KeepAlive.interval"), ka.interval);
            common::duration_at_least_1ms(c, &format!("{f}.http2KeepAlive.timeout"), ka.timeout);
        }
    }
    if let Some(tcp) = &pool.tcp {
        let f = format!("{field}.tcp");
        if tcp.max_connections.is_some_and(|v| v < 0) {
            c.error(
                format!("{f}.maxConnections"),
                "max connections must be non-negative",
            );
        }
        common::duration_at_least_1ms(c, &format!("{f}.connectTimeout"), tcp.connect_timeout);
        common::duration_zero_or_at_least_1ms(c, &format!("{f}.idleTimeout"), tcp.idle_timeout);
        common::duration_at_least_1ms(
            c,
            &format!("{f}.maxConnectionDuration"),
            tcp.max_connection_duration,
        );
        if let Some(ka) = &tcp.tcp_keepalive {
            common::duration_at_least_1ms(c, &format!("{f}.tcpKeepalive.time"), ka.time);
            common::duration_at_least_1ms(c, &format!("{f}.tcpKeepalive.interval"), ka.interval);
        }
    }
}

fn outlier_detection(c: &mut Check<'_>, field: &str, od: &OutlierDetection) {
    common::duration_at_least_1ms(
        c,
        &format!("{field}.baseEjectionTime"),
        od.base_ejection_time,
    );
    common::duration_at_least_1ms(c, &format!("{field}.interval"), od.interval);
    if od.consecutive_errors.is_some_and(|v| v != 0) {
        c.warn(format!("{field}.consecutiveErrors"), "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead");
    }
    if od.consecutive_errors.is_some_and(|v| v < 0) {
        c.error(format!("{field}.consecutiveErrors"), "must not be negative");
    }
    if od.split_external_local_origin_errors != Some(true)
        && od.consecutive_local_origin_failures.is_some_and(|n| n > 0)
    {
        c.error(format!("{field}.consecutiveLocalOriginFailures"), "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false; set `splitExternalLocalOriginErrors: true`");
    }
    for (name, value) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        if let Some(v) = value.filter(|v| !(0..=100).contains(v)) {
            c.error(
                format!("{field}.{name}"),
                format!("percentage {v} is not in range 0..100"),
            );
        }
    }
    for (i, code) in od.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            c.error(
                format!("{field}.outlierDetectionHttpErrorCodes[{i}]"),
                format!("{code} is not an HTTP status code"),
            );
        }
    }
}

fn client_tls(c: &mut Check<'_>, field: &str, tls: &ClientTlsSettings) {
    let mode = tls.mode.as_deref().unwrap_or("DISABLE");
    match mode {
        "DISABLE" | "SIMPLE" | "ISTIO_MUTUAL" => {}
        "MUTUAL" => {
            if tls.credential_name.is_none()
                && (tls.client_certificate.is_none() || tls.private_key.is_none())
            {
                c.error(
                    format!("{field}.mode"),
                    "MUTUAL needs clientCertificate and privateKey (or credentialName)",
                );
            }
        }
        other => c.error(
            format!("{field}.mode"),
            format!("unknown mode {other:?} (DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL)"),
        ),
    }
    if mode == "ISTIO_MUTUAL" || mode == "DISABLE" {
        for (name, set) in [
            ("clientCertificate", tls.client_certificate.is_some()),
            ("privateKey", tls.private_key.is_some()),
            ("caCertificates", tls.ca_certificates.is_some()),
            ("credentialName", tls.credential_name.is_some()),
            ("caCrl", tls.ca_crl.is_some()),
        ] {
            if set {
                c.error(
                    format!("{field}.{name}"),
                    format!("cannot be set with mode {mode}: the mesh's own certificates are used"),
                );
            }
        }
    }
}

pub(super) fn service_entry(c: &mut Check<'_>, doc: &Document<ServiceEntrySpec>) {
    let spec = &doc.spec;
    if let Some(ws) = &spec.workload_selector {
        common::selector_labels(c, "spec.workloadSelector.labels", &ws.labels);
        if ws.labels.is_empty() {
            c.warn("spec.workloadSelector", "workload selector specified without labels: it selects every workload in the namespace");
        }
        if !spec.endpoints.is_empty() {
            c.error(
                "spec.workloadSelector",
                "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
            );
        }
    }
    if spec.hosts.is_empty() {
        c.error("spec.hosts", "service entry must have at least one host");
    }
    let resolution = spec.resolution.as_deref().unwrap_or("NONE");
    for (i, host) in spec.hosts.iter().enumerate() {
        if host == "*" {
            c.error(
                format!("spec.hosts[{i}]"),
                "invalid host *; name the host or a `*.domain`",
            );
        } else if let Some(err) = common::wildcard_domain_error(host) {
            c.error(format!("spec.hosts[{i}]"), err);
        }
    }
    let mut cidr = false;
    for (i, address) in spec.addresses.iter().enumerate() {
        cidr |= address.contains('/');
        common::ip_or_cidr(c, &format!("spec.addresses[{i}]"), address);
    }
    if cidr && !matches!(resolution, "NONE" | "STATIC") {
        c.error(
            "spec.addresses",
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }
    let mut names = HashSet::new();
    let mut numbers = HashSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        common::port_number(c, &format!("{f}.number"), port.number);
        common::protocol(c, &format!("{f}.protocol"), &port.protocol);
        common::port_name(c, &format!("{f}.name"), &port.name);
        if !names.insert(port.name.as_str()) {
            c.error(
                format!("{f}.name"),
                format!("service entry port name {:?} already defined", port.name),
            );
        }
        if !numbers.insert(port.number) {
            c.error(
                format!("{f}.number"),
                format!("service entry port {} already defined", port.number),
            );
        }
        if let Some(target) = port.target_port {
            common::port_number(c, &format!("{f}.targetPort"), target);
        }
    }
    if let Some(location) = &spec.location
        && !matches!(location.as_str(), "MESH_EXTERNAL" | "MESH_INTERNAL")
    {
        c.error(
            "spec.location",
            format!("unknown location {location:?} (MESH_EXTERNAL, MESH_INTERNAL)"),
        );
    }
    let port_names: HashSet<&str> = spec.ports.iter().map(|p| p.name.as_str()).collect();
    match resolution {
        "NONE" => {
            if !spec.endpoints.is_empty() {
                c.error("spec.endpoints", "no endpoints should be provided for resolution type NONE; use STATIC to list endpoints");
            }
            if spec.workload_selector.is_some() {
                c.warn("spec.workloadSelector", "workloadSelector should not be set when resolution mode is NONE");
            }
        }
        "STATIC" => {
            for (j, ep) in spec.endpoints.iter().enumerate() {
                workload_entry(c, &format!("spec.endpoints[{j}]"), ep, Some(&port_names), false);
            }
        }
        "DNS" | "DNS_ROUND_ROBIN" => {
            if spec.endpoints.is_empty() {
                for (i, host) in spec.hosts.iter().enumerate() {
                    if host.starts_with('*') {
                        c.error(format!("spec.hosts[{i}]"), format!("hosts must be FQDN or contain only prefix wildcards if no endpoints are provided for resolution mode {resolution}; list endpoints or use resolution NONE"));
                    }
                }
            }
            if resolution == "DNS_ROUND_ROBIN" && spec.endpoints.len() > 1 {
                c.error("spec.endpoints", "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN");
            }
            for (j, ep) in spec.endpoints.iter().enumerate() {
                workload_entry(c, &format!("spec.endpoints[{j}]"), ep, Some(&port_names), true);
            }
        }
        "DYNAMIC_DNS" => {
            if !spec.hosts.iter().any(|h| h.starts_with('*')) {
                c.error("spec.hosts", "at least one wildcard host must be provided for resolution type DYNAMIC_DNS");
            }
            if !spec.addresses.is_empty() {
                c.error("spec.addresses", "addresses cannot be set for resolution type DYNAMIC_DNS");
            }
            if !spec.endpoints.is_empty() {
                c.error("spec.endpoints", "endpoints cannot be set for resolution type DYNAMIC_DNS");
            }
        }
        other => c.error("spec.resolution", format!("unsupported resolution type {other:?} (NONE, STATIC, DNS, DNS_ROUND_ROBIN, DYNAMIC_DNS)")),
    }
    common::export_to(c, doc.metadata.namespace.as_deref(), &spec.export_to, true);
}

/// A ServiceEntry endpoint or a WorkloadEntry's spec. `ports` are the
/// entry's port names, when there is an entry.
pub(super) fn workload_entry(
    c: &mut Check<'_>,
    field: &str,
    we: &WorkloadEntry,
    ports: Option<&HashSet<&str>>,
    allow_fqdn: bool,
) {
    let f = |sub: &str| format!("{field}.{sub}");
    let address = we.address.as_str();
    if address.is_empty() {
        if we.network.is_none() {
            c.error(f("address"), "address is required");
        } else {
            c.warn(
                f("address"),
                format!(
                    "address is unset with network {:?}",
                    we.network.as_deref().unwrap_or_default()
                ),
            );
        }
    } else if let Some(path) = address.strip_prefix("unix://") {
        if !path.starts_with('/') {
            c.error(
                f("address"),
                format!("{address} is not an absolute path to a file"),
            );
        }
        if !we.ports.is_empty() {
            c.error(
                f("ports"),
                format!("unix endpoint {address} must not include ports"),
            );
        }
    } else if !common::is_ip(address) {
        if !allow_fqdn {
            c.error(f("address"), format!("endpoint address {address:?} is not a valid IP address (resolution STATIC needs IPs; use DNS for host names)"));
        } else if common::wildcard_domain_error(address).is_some() || address.contains('*') {
            c.error(
                f("address"),
                format!("endpoint address {address:?} is not a valid FQDN or an IP address"),
            );
        }
    }
    for (name, port) in &we.ports {
        common::port_number(c, &f(&format!("ports.{name}")), *port);
        if let Some(ports) = ports
            && !ports.contains(name.as_str())
        {
            c.error(
                f(&format!("ports.{name}")),
                format!("endpoint port {name} is not defined by the service entry"),
            );
        }
    }
    common::selector_labels(c, &f("labels"), &we.labels);
    if let Some(sa) = &we.service_account
        && !common::is_dns1123_label(sa)
        && sa.len() > 253
    {
        c.error(
            f("serviceAccount"),
            "service account names are at most 253 characters",
        );
    }
}

pub(super) fn workload_entry_resource(c: &mut Check<'_>, doc: &Document<WorkloadEntry>) {
    let allow_fqdn = true; // Istio accepts DNS names for WorkloadEntries (resolved by DNS ServiceEntries)
    workload_entry(c, "spec", &doc.spec, None, allow_fqdn);
}

pub(super) fn workload_group(c: &mut Check<'_>, doc: &Document<WorkloadGroupSpec>) {
    let spec = &doc.spec;
    match &spec.template {
        None => c.error("spec.template", "template is required"),
        Some(t) => {
            if !t.address.is_empty() {
                c.error(
                    "spec.template.address",
                    "address is filled in per workload; leave it empty in the template",
                );
            }
            for (name, port) in &t.ports {
                common::port_number(c, &format!("spec.template.ports.{name}"), *port);
            }
            common::selector_labels(c, "spec.template.labels", &t.labels);
        }
    }
    if let Some(meta) = &spec.metadata {
        common::selector_labels(c, "spec.metadata.labels", &meta.labels);
    }
    if let Some(p) = &spec.probe {
        for (name, value) in [
            ("periodSeconds", p.period_seconds),
            ("initialDelaySeconds", p.initial_delay_seconds),
            ("timeoutSeconds", p.timeout_seconds),
            ("successThreshold", p.success_threshold),
            ("failureThreshold", p.failure_threshold),
        ] {
            if value.is_some_and(|v| v < 0) {
                c.error(
                    format!("spec.probe.{name}"),
                    format!("{name} must be non-negative"),
                );
            }
        }
        let methods = [
            p.http_get.is_some(),
            p.tcp_socket.is_some(),
            p.exec.is_some(),
            p.grpc.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            c.error(
                "spec.probe",
                "set only one of httpGet, tcpSocket, exec, grpc",
            );
        }
        if let Some(h) = &p.http_get {
            common::port_number(c, "spec.probe.httpGet.port", h.port);
            if h.scheme
                .as_deref()
                .is_some_and(|s| !matches!(s, "HTTP" | "HTTPS"))
            {
                c.error(
                    "spec.probe.httpGet.scheme",
                    "httpGet.scheme must be one of \"HTTPS\", \"HTTP\"",
                );
            }
            for (i, header) in h.http_headers.iter().enumerate() {
                common::header_name(
                    c,
                    &format!("spec.probe.httpGet.httpHeaders[{i}].name"),
                    &header.name,
                );
            }
        }
        if let Some(t) = &p.tcp_socket {
            common::port_number(c, "spec.probe.tcpSocket.port", t.port);
        }
        if let Some(g) = &p.grpc {
            common::port_number(c, "spec.probe.grpc.port", g.port);
        }
        if p.exec.as_ref().is_some_and(|e| e.command.is_empty()) {
            c.error("spec.probe.exec.command", "exec.command is required");
        }
    }
}

pub(super) fn gateway(c: &mut Check<'_>, doc: &Document<GatewaySpec>) {
    let spec = &doc.spec;
    if spec.servers.is_empty() {
        c.error("spec.servers", "gateway must have at least one server");
    }
    common::selector_labels(c, "spec.selector", &spec.selector);
    let mut names = HashSet::new();
    for (i, server) in spec.servers.iter().enumerate() {
        let f = format!("spec.servers[{i}]");
        if server.hosts.is_empty() {
            c.error(
                format!("{f}.hosts"),
                "server config must contain at least one host",
            );
        }
        for (j, host) in server.hosts.iter().enumerate() {
            let (ns, name) = host.split_once('/').unwrap_or(("", host));
            if host.contains('/') && !(ns == "." || ns == "*" || common::is_dns1123_label(ns)) {
                c.error(
                    format!("{f}.hosts[{j}]"),
                    format!("invalid namespace {ns:?} in {host:?} (use `.`, `*` or a namespace)"),
                );
            } else if let Some(err) = common::wildcard_domain_error(name) {
                c.error(format!("{f}.hosts[{j}]"), err);
            }
        }
        let Some(port) = &server.port else {
            c.error(format!("{f}.port"), "port is required");
            continue;
        };
        server_port(c, &format!("{f}.port"), port, server.bind.as_deref());
        if port.target_port.is_some() {
            c.warn(
                format!("{f}.port.targetPort"),
                "targetPort has no impact on Gateways",
            );
        }
        if !port.name.is_empty() && !names.insert(port.name.as_str()) {
            c.error(
                format!("{f}.port.name"),
                format!(
                    "port names in servers must be unique: duplicate name {}",
                    port.name
                ),
            );
        }
        let protocol = port.protocol.to_ascii_uppercase();
        let tls_port = matches!(protocol.as_str(), "HTTPS" | "TLS");
        match &server.tls {
            None if tls_port => c.error(
                format!("{f}.tls"),
                "server must have TLS settings for HTTPS/TLS protocols",
            ),
            None => {}
            Some(tls) => {
                let redirect_only = tls.https_redirect == Some(true)
                    && tls.mode.is_none()
                    && tls.server_certificate.is_none()
                    && tls.credential_name.is_none();
                if !tls_port && !redirect_only {
                    if protocol == "HTTP" {
                        c.error(format!("{f}.tls"), "server cannot have TLS settings for plain text HTTP ports (only httpsRedirect)");
                    } else {
                        c.error(
                            format!("{f}.tls"),
                            "server cannot have TLS settings for non HTTPS/TLS ports",
                        );
                    }
                }
                if tls.https_redirect == Some(true) && protocol != "HTTP" {
                    c.warn(
                        format!("{f}.tls.httpsRedirect"),
                        "tls.httpsRedirect should only be used with http servers",
                    );
                }
                if tls_port {
                    server_tls(c, &format!("{f}.tls"), tls);
                }
            }
        }
    }
}

fn server_port(c: &mut Check<'_>, field: &str, port: &Port, bind: Option<&str>) {
    if bind.is_some_and(|b| b.starts_with("unix://")) {
        if port.number != 0 {
            c.error(
                format!("{field}.number"),
                "port number must be 0 for unix domain socket",
            );
        }
    } else {
        common::port_number(c, &format!("{field}.number"), port.number);
    }
    if ![
        "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "REDIS", "MYSQL", "TCP", "TLS",
    ]
    .iter()
    .any(|p| p.eq_ignore_ascii_case(&port.protocol))
    {
        c.error(format!("{field}.protocol"), format!("invalid protocol {:?}, supported protocols are HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP, TLS", port.protocol));
    }
    if port.name.is_empty() {
        c.error(format!("{field}.name"), "port name must be set");
    }
}

const TLS_VERSIONS: &[&str] = &["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"];

fn server_tls(c: &mut Check<'_>, field: &str, tls: &ServerTlsSettings) {
    let mode = tls.mode.as_deref().unwrap_or("PASSTHROUGH");
    let has_files = tls.server_certificate.is_some() || tls.private_key.is_some();
    let sources = [
        tls.credential_name.is_some(),
        !tls.credential_names.is_empty(),
        has_files,
        !tls.tls_certificates.is_empty(),
    ];
    match mode {
        "PASSTHROUGH" | "AUTO_PASSTHROUGH" => {
            if sources.iter().any(|s| *s) {
                c.warn(field, format!("{mode} mode does not use certificates, they will be ignored"));
            }
        }
        "ISTIO_MUTUAL" => {
            for (name, set) in [("serverCertificate", tls.server_certificate.is_some()), ("privateKey", tls.private_key.is_some()), ("caCertificates", tls.ca_certificates.is_some()), ("credentialName", tls.credential_name.is_some()), ("credentialNames", !tls.credential_names.is_empty()), ("tlsCertificates", !tls.tls_certificates.is_empty())] {
                if set {
                    c.error(format!("{field}.{name}"), format!("ISTIO_MUTUAL TLS cannot have associated {name}"));
                }
            }
        }
        "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" => {
            if sources.iter().filter(|s| **s).count() > 1 {
                c.error(field, "only one of credentialName, credentialNames, serverCertificate/privateKey, tlsCertificates should be specified");
            }
            if sources.iter().all(|s| !*s) {
                c.error(field, format!("{mode} TLS requires a server certificate: credentialName, or serverCertificate and privateKey"));
            }
            if has_files {
                if tls.server_certificate.is_none() {
                    c.error(format!("{field}.serverCertificate"), format!("{mode} TLS requires a server certificate"));
                }
                if tls.private_key.is_none() {
                    c.error(format!("{field}.privateKey"), format!("{mode} TLS requires a private key"));
                }
                if mode != "SIMPLE" && tls.ca_certificates.is_none() {
                    c.error(format!("{field}.caCertificates"), format!("{mode} TLS requires a client CA bundle"));
                }
            }
            if tls.credential_names.len() > 2 || tls.tls_certificates.len() > 2 {
                c.warn(field, format!("{mode} TLS can support up to 2 server certificates"));
            }
            if tls.ca_crl.is_some() && tls.credential_name.is_some() {
                c.error(format!("{field}.caCrl"), "CRL is not supported with credentialName. CRL has to be specified in the credential");
            } else if tls.ca_crl.is_some() && mode == "SIMPLE" {
                c.error(format!("{field}.caCrl"), "CRL is not supported with SIMPLE TLS");
            }
        }
        other => c.error(format!("{field}.mode"), format!("unknown mode {other:?} (PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL, OPTIONAL_MUTUAL)")),
    }
    for (name, v) in [
        ("minProtocolVersion", &tls.min_protocol_version),
        ("maxProtocolVersion", &tls.max_protocol_version),
    ] {
        if let Some(v) = v
            && !TLS_VERSIONS.contains(&v.as_str())
        {
            c.error(
                format!("{field}.{name}"),
                format!("unknown TLS version {v:?} ({})", TLS_VERSIONS.join(", ")),
            );
        }
    }
    let rank = |v: &Option<String>| {
        v.as_deref()
            .and_then(|v| TLS_VERSIONS.iter().position(|x| *x == v))
            .filter(|r| *r > 0)
    };
    if let (Some(min), Some(max)) = (
        rank(&tls.min_protocol_version),
        rank(&tls.max_protocol_version),
    ) && min > max
    {
        c.error(
            format!("{field}.minProtocolVersion"),
            "minProtocolVersion is above maxProtocolVersion",
        );
    }
}

const CAPTURE_MODES: &[&str] = &["DEFAULT", "IPTABLES", "NONE"];

pub(super) fn sidecar(c: &mut Check<'_>, doc: &Document<SidecarSpec>) {
    let spec = &doc.spec;
    if let Some(ws) = &spec.workload_selector {
        common::selector_labels(c, "spec.workloadSelector.labels", &ws.labels);
        if ws.labels.is_empty() {
            c.warn("spec.workloadSelector", "workload selector specified without labels, will be applied to all services in namespace");
        }
    }
    if spec.egress.is_empty()
        && spec.ingress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        c.error("spec", "sidecar: empty configuration provided");
    }
    let mut bound = HashSet::new();
    for (i, ing) in spec.ingress.iter().enumerate() {
        let f = format!("spec.ingress[{i}]");
        match &ing.port {
            None => c.error(
                format!("{f}.port"),
                "sidecar: port is required for ingress listeners",
            ),
            Some(port) => {
                common::port_number(c, &format!("{f}.port.number"), port.number);
                common::protocol(c, &format!("{f}.port.protocol"), &port.protocol);
                if port.target_port.is_some() {
                    c.warn(
                        format!("{f}.port.targetPort"),
                        "targetPort has no impact on Sidecars",
                    );
                }
                if !bound.insert((ing.bind.clone(), port.number)) {
                    c.error(
                        format!("{f}.port"),
                        "sidecar: ports on IP bound listeners must be unique",
                    );
                }
            }
        }
        capture_mode(c, &format!("{f}.captureMode"), ing.capture_mode.as_deref());
        if let Some(ep) = &ing.default_endpoint
            && !ep.starts_with("unix://")
        {
            let ok = ep.rsplit_once(':').is_some_and(|(host, port)| {
                matches!(host, "127.0.0.1" | "0.0.0.0" | "[::1]" | "[::]" | "")
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                c.error(format!("{f}.defaultEndpoint"), format!("sidecar: defaultEndpoint {ep:?} must be 127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT, [::]:PORT, :PORT or unix:///path"));
            }
        }
        if let Some(tls) = &ing.tls {
            if tls.https_redirect.is_some() {
                c.error(
                    format!("{f}.tls.httpsRedirect"),
                    "sidecar: httpsRedirect is not supported",
                );
            }
            if tls.credential_name.is_some() || !tls.credential_names.is_empty() {
                c.error(
                    format!("{f}.tls.credentialName"),
                    "sidecar: credentialName is not currently supported",
                );
            }
            if matches!(
                tls.mode.as_deref(),
                Some("ISTIO_MUTUAL" | "AUTO_PASSTHROUGH" | "PASSTHROUGH") | None
            ) {
                c.error(
                    format!("{f}.tls.mode"),
                    format!(
                        "configuration is invalid: cannot set mode to {} in sidecar ingress tls",
                        tls.mode.as_deref().unwrap_or("PASSTHROUGH")
                    ),
                );
            }
        }
    }
    let mut bound = HashSet::new();
    let mut catch_all = 0;
    for (i, eg) in spec.egress.iter().enumerate() {
        let f = format!("spec.egress[{i}]");
        match &eg.port {
            None => {
                catch_all += 1;
                if catch_all > 1 {
                    c.error(
                        &f,
                        "sidecar: egress can have only one listener with empty port",
                    );
                } else if i != spec.egress.len() - 1 {
                    c.error(&f, "sidecar: the egress listener with empty port should be the last listener in the list");
                }
            }
            Some(port) => {
                if !(eg.bind.as_deref().is_some_and(|b| b.starts_with("unix://"))
                    && port.number == 0)
                {
                    common::port_number(c, &format!("{f}.port.number"), port.number);
                }
                common::protocol(c, &format!("{f}.port.protocol"), &port.protocol);
                if !bound.insert((eg.bind.clone(), port.number)) {
                    c.error(
                        format!("{f}.port"),
                        "sidecar: ports on IP bound listeners must be unique",
                    );
                }
            }
        }
        capture_mode(c, &format!("{f}.captureMode"), eg.capture_mode.as_deref());
        if eg.hosts.is_empty() {
            c.error(
                format!("{f}.hosts"),
                "sidecar: egress listener must contain at least one host",
            );
        }
        for (j, host) in eg.hosts.iter().enumerate() {
            let hf = format!("{f}.hosts[{j}]");
            match host.split_once('/') {
                None => c.error(&hf, format!("sidecar: host {host:?} must be namespace/dnsName (`./*`, `istio-system/*`, `*/foo.example.com`)")),
                Some((ns, name)) => {
                    // `~namespace/host` (Istio 1.31) excludes what it
                    // covers; `~/*` every service.
                    let valid = match ns.strip_prefix('~') {
                        Some(named) => matches!(named, "" | "." | "*") || common::is_dns1123_label(named),
                        None => matches!(ns, "." | "*") || common::is_dns1123_label(ns),
                    };
                    if !valid {
                        c.error(&hf, format!("sidecar: invalid namespace {ns:?} in {host:?}"));
                    }
                    if let Some(err) = common::wildcard_domain_error(name) {
                        c.error(&hf, err);
                    }
                }
            }
        }
    }
    if let Some(otp) = &spec.outbound_traffic_policy {
        match otp.mode.as_deref() {
            None | Some("REGISTRY_ONLY") => {
                if otp.egress_proxy.is_some() {
                    c.error("spec.outboundTrafficPolicy.egressProxy", "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode");
                }
            }
            Some("ALLOW_ANY") => {}
            Some(other) => c.error(
                "spec.outboundTrafficPolicy.mode",
                format!("unknown mode {other:?} (REGISTRY_ONLY, ALLOW_ANY)"),
            ),
        }
        if let Some(proxy) = &otp.egress_proxy {
            destination(c, "spec.outboundTrafficPolicy.egressProxy", proxy);
            if proxy.port.is_none() {
                c.error(
                    "spec.outboundTrafficPolicy.egressProxy.port",
                    "sidecar: egress_proxy port must be non-nil",
                );
            }
        }
    }
}

fn capture_mode(c: &mut Check<'_>, field: &str, mode: Option<&str>) {
    if let Some(mode) = mode
        && !CAPTURE_MODES.contains(&mode)
    {
        c.error(
            field,
            format!("unknown capture mode {mode:?} (DEFAULT, IPTABLES, NONE)"),
        );
    }
}

const APPLY_TO: &[&str] = &[
    "LISTENER",
    "FILTER_CHAIN",
    "NETWORK_FILTER",
    "HTTP_FILTER",
    "ROUTE_CONFIGURATION",
    "VIRTUAL_HOST",
    "HTTP_ROUTE",
    "CLUSTER",
    "EXTENSION_CONFIG",
    "BOOTSTRAP",
    "LISTENER_FILTER",
];
const PATCH_OPS: &[&str] = &[
    "MERGE",
    "ADD",
    "REMOVE",
    "INSERT_BEFORE",
    "INSERT_AFTER",
    "INSERT_FIRST",
    "REPLACE",
    "MERGE_AND_REPLACE_LIST",
];

pub(super) fn envoy_filter(c: &mut Check<'_>, doc: &Document<EnvoyFilterSpec>) {
    let spec = &doc.spec;
    if let Some(ws) = &spec.workload_selector {
        common::selector_labels(c, "spec.workloadSelector.labels", &ws.labels);
    }
    if spec.workload_selector.is_some() && !spec.target_refs.is_empty() {
        c.error(
            "spec.targetRefs",
            "only one of targetRefs or workloadSelector can be set",
        );
    }
    common::target_refs(c, None, &spec.target_refs, false);
    for (i, cp) in spec.config_patches.iter().enumerate() {
        let f = format!("spec.configPatches[{i}]");
        match cp.apply_to.as_deref() {
            None | Some("INVALID") => c.error(
                format!("{f}.applyTo"),
                format!(
                    "Envoy filter: missing applyTo (one of {})",
                    APPLY_TO.join(", ")
                ),
            ),
            Some(a) if !APPLY_TO.contains(&a) => c.error(
                format!("{f}.applyTo"),
                format!("unknown applyTo {a:?} (one of {})", APPLY_TO.join(", ")),
            ),
            Some(_) => {}
        }
        let Some(patch) = &cp.patch else {
            c.error(format!("{f}.patch"), "Envoy filter: missing patch");
            continue;
        };
        match patch.operation.as_deref() {
            None | Some("INVALID") => c.error(
                format!("{f}.patch.operation"),
                format!(
                    "Envoy filter: missing patch operation (one of {})",
                    PATCH_OPS.join(", ")
                ),
            ),
            Some(op) if !PATCH_OPS.contains(&op) => c.error(
                format!("{f}.patch.operation"),
                format!("unknown operation {op:?} (one of {})", PATCH_OPS.join(", ")),
            ),
            Some("REMOVE") => {}
            Some(_) if patch.value.is_none() => c.error(
                format!("{f}.patch.value"),
                "Envoy filter: missing patch value for non-remove operation",
            ),
            Some(_) => {}
        }
        if patch
            .filter_class
            .as_deref()
            .is_some_and(|fc| !matches!(fc, "UNSPECIFIED" | "AUTHN" | "AUTHZ" | "STATS"))
        {
            c.error(
                format!("{f}.patch.filterClass"),
                "unknown filterClass (UNSPECIFIED, AUTHN, AUTHZ, STATS)",
            );
        }
        if let Some(m) = &cp.matches {
            if m.context.as_deref().is_some_and(|ctx| {
                !matches!(
                    ctx,
                    "ANY" | "SIDECAR_INBOUND" | "SIDECAR_OUTBOUND" | "GATEWAY" | "WAYPOINT"
                )
            }) {
                c.error(
                    format!("{f}.match.context"),
                    "unknown context (ANY, SIDECAR_INBOUND, SIDECAR_OUTBOUND, GATEWAY, WAYPOINT)",
                );
            }
            let objects = [
                m.listener.is_some(),
                m.route_configuration.is_some(),
                m.cluster.is_some(),
                m.waypoint.is_some(),
            ];
            if objects.iter().filter(|o| **o).count() > 1 {
                c.error(
                    format!("{f}.match"),
                    "set only one of listener, routeConfiguration, cluster, waypoint",
                );
            }
            let apply = cp.apply_to.as_deref().unwrap_or_default();
            if m.cluster.is_some() && apply != "CLUSTER" {
                c.error(
                    format!("{f}.match.cluster"),
                    "Envoy filter: applyTo for cluster match should be CLUSTER",
                );
            }
            if m.route_configuration.is_some()
                && !matches!(apply, "ROUTE_CONFIGURATION" | "VIRTUAL_HOST" | "HTTP_ROUTE")
            {
                c.error(format!("{f}.match.routeConfiguration"), "Envoy filter: applyTo for route configuration match should be ROUTE_CONFIGURATION, VIRTUAL_HOST or HTTP_ROUTE");
            }
            if let Some(v) = m.proxy.as_ref().and_then(|p| p.proxy_version.as_deref()) {
                common::regex(c, &format!("{f}.match.proxy.proxyVersion"), v);
            }
        }
    }
}

pub(super) fn proxy_config(c: &mut Check<'_>, doc: &Document<ProxyConfigSpec>) {
    let spec = &doc.spec;
    if let Some(selector) = &spec.selector {
        common::selector(c, "spec.selector", selector);
    }
    if spec.concurrency.is_some_and(|n| n < 0) {
        c.error(
            "spec.concurrency",
            "concurrency must be greater than or equal to 0",
        );
    }
    if let Some(image) = spec.image.as_ref().and_then(|i| i.image_type.as_deref())
        && !matches!(image, "default" | "debug" | "distroless")
    {
        c.error(
            "spec.image.imageType",
            format!("unknown image type {image:?} (default, debug, distroless)"),
        );
    }
    for name in spec.environment_variables.keys() {
        if name.is_empty() {
            c.error(
                "spec.environmentVariables",
                "variable names cannot be empty",
            );
        }
    }
}
