//! What the agent does with each field of each kind: enforced, or accepted
//! and not enforced yet. Each accepted-but-not-enforced field present in a
//! resource is one warning at load, so nothing an operator wrote is
//! silently ignored. The same table is the one in `docs/config.md`.

use serde::Serialize;
use serde_json::Value;

use super::Documents;
use crate::config::diagnostics::{Diagnostics, Location};

const NOT_ENFORCED: &str = "accepted but not enforced yet";

/// What the agent does with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Applied to traffic.
    Enforced,
    /// Accepted and not applied; a warning names it, with this reason.
    Warned(&'static str),
    /// Accepted and not applied; the compiler warns about it itself, with
    /// more context (this reason is what the table says).
    WarnedWhenCompiled(&'static str),
}

/// One row of the table: a field (pattern) of a kind.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The resource kind.
    pub kind: &'static str,
    /// Path under the document: `.` between fields, `[*]` for every list
    /// item, `*` for any map key, a leading `**.` for any depth.
    pub path: &'static str,
    /// What happens to it.
    pub support: Support,
}

const fn enforced(kind: &'static str, path: &'static str) -> Field {
    Field {
        kind,
        path,
        support: Support::Enforced,
    }
}

const fn compiler_warns(kind: &'static str, path: &'static str, why: &'static str) -> Field {
    Field {
        kind,
        path,
        support: Support::WarnedWhenCompiled(why),
    }
}

const fn warned(kind: &'static str, path: &'static str, why: &'static str) -> Field {
    Field {
        kind,
        path,
        support: Support::Warned(why),
    }
}

const VS: &str = "VirtualService";
const DR: &str = "DestinationRule";
const SE: &str = "ServiceEntry";
const WE: &str = "WorkloadEntry";
const AP: &str = "AuthorizationPolicy";
const PA: &str = "PeerAuthentication";
const RL: &str = "RateLimitPolicy";
const SC: &str = "Sidecar";
const RA: &str = "RequestAuthentication";
const TM: &str = "Telemetry";

const GW: &str = "Gateway";

/// Every kind the agent applies, field by field.
pub const FIELDS: &[Field] = &[
    enforced(VS, "spec.hosts"),
    enforced(VS, "spec.gateways"),
    enforced(VS, "spec.http[*].name"),
    enforced(VS, "spec.http[*].match"),
    enforced(VS, "spec.http[*].route"),
    enforced(VS, "spec.http[*].redirect"),
    enforced(VS, "spec.http[*].directResponse"),
    enforced(VS, "spec.http[*].rewrite"),
    enforced(VS, "spec.http[*].timeout"),
    enforced(VS, "spec.http[*].retries"),
    enforced(VS, "spec.http[*].fault"),
    enforced(VS, "spec.http[*].mirror"),
    enforced(VS, "spec.http[*].mirrors"),
    enforced(VS, "spec.http[*].mirrorPercentage"),
    enforced(VS, "spec.http[*].headers"),
    enforced(VS, "spec.http[*].corsPolicy"),
    warned(
        VS,
        "spec.exportTo",
        "every resource in the file applies to this agent; only a delegate's decides which roots may use it",
    ),
    enforced(VS, "spec.tls"),
    enforced(VS, "spec.tcp"),
    warned(
        VS,
        "spec.tcp[*].match[*].sourceSubnet",
        "Istio's sidecars ignore it too: a match of it alone takes every connection",
    ),
    enforced(VS, "spec.http[*].delegate"),
    warned(VS, "spec.http[*].match[*].statPrefix", "no per-match stats"),
    warned(VS, "spec.http[*].redirect.prefixRewrite", ""),
    warned(
        VS,
        "spec.http[*].retries.retryRemoteLocalities",
        "no localities",
    ),
    enforced(VS, "spec.http[*].retries.retryIgnorePreviousHosts"),
    enforced(DR, "spec.host"),
    enforced(DR, "spec.subsets"),
    enforced(DR, "**.loadBalancer.simple"),
    enforced(DR, "**.loadBalancer.consistentHash"),
    enforced(DR, "**.connectionPool.tcp.maxConnections"),
    enforced(DR, "**.connectionPool.tcp.connectTimeout"),
    enforced(DR, "**.connectionPool.tcp.idleTimeout"),
    enforced(DR, "**.connectionPool.tcp.tcpKeepalive"),
    enforced(DR, "**.connectionPool.tcp.maxConnectionDuration"),
    enforced(DR, "**.connectionPool.http"),
    enforced(DR, "**.outlierDetection"),
    enforced(DR, "**.tls"),
    enforced(DR, "**.portLevelSettings"),
    enforced(DR, "**.trafficPolicy.retryBudget"),
    warned(
        DR,
        "spec.exportTo",
        "every rule counts as exported to every namespace",
    ),
    enforced(DR, "spec.workloadSelector"),
    warned(DR, "**.trafficPolicy.tunnel", ""),
    warned(DR, "**.trafficPolicy.proxyProtocol", ""),
    warned(
        DR,
        "**.trafficPolicy.retryBudget.budgetInterval",
        "the budget counts the retries and requests in flight now",
    ),
    warned(DR, "**.loadBalancer.localityLbSetting", "no localities"),
    warned(DR, "**.loadBalancer.zoneAwareLbSetting", "no zones"),
    compiler_warns(
        DR,
        "**.tls.credentialName",
        "Kubernetes secrets are not read; use the file fields",
    ),
    enforced(DR, "**.outlierDetection.splitExternalLocalOriginErrors"),
    enforced(DR, "**.loadBalancer.warmup"),
    enforced(DR, "**.loadBalancer.warmupDurationSecs"),
    enforced(DR, "**.outlierDetection.consecutiveLocalOriginFailures"),
    warned(
        DR,
        "**.outlierDetection.outlierDetectionHttpErrorCodes",
        "5xx count as errors",
    ),
    enforced(SE, "spec.hosts"),
    enforced(SE, "spec.ports"),
    enforced(SE, "spec.resolution"),
    enforced(SE, "spec.endpoints"),
    enforced(SE, "spec.workloadSelector"),
    enforced(SE, "spec.subjectAltNames"),
    enforced(SE, "spec.addresses"),
    warned(
        SE,
        "spec.location",
        "MESH_EXTERNAL turns auto mTLS and AUTO_PASSTHROUGH off; without it the entry is the mesh's own, where Istio's default is MESH_EXTERNAL",
    ),
    warned(
        SE,
        "spec.exportTo",
        "every resource in the file applies to this agent",
    ),
    warned(SE, "spec.endpoints[*].network", "one network"),
    warned(SE, "spec.endpoints[*].locality", "no localities"),
    enforced(SE, "spec.endpoints[*].weight"),
    enforced(SE, "spec.endpoints[*].serviceAccount"),
    enforced(WE, "spec.address"),
    enforced(WE, "spec.ports"),
    enforced(WE, "spec.labels"),
    warned(WE, "spec.network", "one network"),
    warned(WE, "spec.locality", "no localities"),
    enforced(WE, "spec.weight"),
    enforced(WE, "spec.serviceAccount"),
    enforced(AP, "spec.selector"),
    enforced(AP, "spec.action"),
    enforced(AP, "spec.rules[*].from[*].source"),
    enforced(AP, "spec.rules[*].to[*].operation"),
    enforced(AP, "spec.rules[*].when"),
    compiler_warns(AP, "spec.targetRef", "gateways only: the policy is skipped"),
    compiler_warns(
        AP,
        "spec.targetRefs",
        "gateways only: the policy is skipped",
    ),
    enforced(AP, "spec.provider"),
    enforced(RA, "spec.selector"),
    compiler_warns(
        RA,
        "spec.targetRef",
        "gateways only: the resource is skipped",
    ),
    compiler_warns(
        RA,
        "spec.targetRefs",
        "gateways only: the resource is skipped",
    ),
    enforced(RA, "spec.jwtRules"),
    enforced(TM, "spec.selector"),
    compiler_warns(
        TM,
        "spec.targetRef",
        "gateways and waypoints only: the resource is skipped",
    ),
    compiler_warns(
        TM,
        "spec.targetRefs",
        "gateways and waypoints only: the resource is skipped",
    ),
    enforced(TM, "spec.tracing"),
    enforced(TM, "spec.metrics"),
    enforced(TM, "spec.accessLogging"),
    warned(
        TM,
        "spec.tracing[*].useRequestIdForTraceSampling",
        "new traces are sampled by a random draw",
    ),
    warned(
        TM,
        "spec.tracing[*].enableIstioTags",
        "Istio's `istio.canonical_service`, `istio.canonical_revision`, `istio.namespace`, `istio.mesh_id` and `istio.cluster_id` are always set, on each span's resource, which the query searches as span tags",
    ),
    warned(
        TM,
        "spec.tracing[*].disableContextPropagation",
        "trace context is always propagated",
    ),
    warned(
        TM,
        "spec.tracing[*].customTags.*.formatter",
        "Envoy format strings are not evaluated; the tag is left out",
    ),
    warned(
        TM,
        "spec.metrics[*].reportingInterval",
        "metrics are read when Prometheus scrapes",
    ),
    enforced(PA, "spec.selector"),
    enforced(PA, "spec.mtls"),
    enforced(PA, "spec.portLevelMtls"),
    enforced(RL, "spec.selector"),
    enforced(RL, "spec.rules"),
    enforced(SC, "spec.workloadSelector"),
    enforced(SC, "spec.egress[*].hosts"),
    enforced(SC, "spec.egress[*].port"),
    enforced(SC, "spec.outboundTrafficPolicy"),
    warned(
        SC,
        "spec.egress[*].bind",
        "the outbound listener is the Agent's `spec.outbound`",
    ),
    warned(
        SC,
        "spec.egress[*].captureMode",
        "capture is `tracemesh iptables` and the Agent's `spec.capture`",
    ),
    warned(
        SC,
        "spec.ingress",
        "the inbound listener is the Agent's `spec.inbound`",
    ),
    warned(
        SC,
        "spec.inboundConnectionPool",
        "no inbound connection limits",
    ),
    // Gateways (`tracemesh gateway`; sidecars skip the resource).
    enforced(GW, "spec.selector"),
    enforced(GW, "spec.servers[*].port"),
    enforced(GW, "spec.servers[*].hosts"),
    enforced(GW, "spec.servers[*].name"),
    enforced(GW, "spec.servers[*].tls.httpsRedirect"),
    enforced(GW, "spec.servers[*].tls.mode"),
    enforced(GW, "spec.servers[*].tls.serverCertificate"),
    enforced(GW, "spec.servers[*].tls.privateKey"),
    enforced(GW, "spec.servers[*].tls.caCertificates"),
    enforced(GW, "spec.servers[*].tls.credentialName"),
    enforced(GW, "spec.servers[*].tls.caCertCredentialName"),
    enforced(GW, "spec.servers[*].tls.minProtocolVersion"),
    enforced(GW, "spec.servers[*].tls.maxProtocolVersion"),
    enforced(GW, "spec.servers[*].tls.cipherSuites"),
    enforced(GW, "spec.servers[*].tls.credentialNames"),
    enforced(GW, "spec.servers[*].tls.tlsCertificates"),
    enforced(GW, "spec.servers[*].tls.subjectAltNames"),
    enforced(GW, "spec.servers[*].tls.verifyCertificateSpki"),
    enforced(GW, "spec.servers[*].tls.verifyCertificateHash"),
    enforced(GW, "spec.servers[*].tls.caCrl"),
    compiler_warns(
        GW,
        "spec.servers[*].bind",
        "a port listens where the IngressGateway's `listeners` say",
    ),
    compiler_warns(
        GW,
        "spec.servers[*].defaultEndpoint",
        "gateways forward to the routes' destinations only",
    ),
];

/// Kinds checked with Istio's rules and then skipped.
#[cfg(test)]
const VALIDATED_ONLY: &[&str] = &["WorkloadGroup", "EnvoyFilter", "ProxyConfig"];

pub(super) fn warn_all(docs: &Documents, diags: &mut Diagnostics) {
    fn each<S: Serialize>(
        kind: &str,
        list: &[crate::config::documents::Document<S>],
        diags: &mut Diagnostics,
    ) {
        for doc in list {
            let Ok(spec) = serde_json::to_value(&doc.spec) else {
                continue;
            };
            let root = serde_json::json!({ "spec": spec });
            warn_document(kind, &root, &doc.location, diags);
        }
    }
    each(VS, &docs.virtual_services, diags);
    each(DR, &docs.destination_rules, diags);
    each(SE, &docs.service_entries, diags);
    each(WE, &docs.workload_entries, diags);
    each(AP, &docs.authorization_policies, diags);
    each(PA, &docs.peer_authentications, diags);
    each(RL, &docs.rate_limit_policies, diags);
    each(SC, &docs.sidecars, diags);
    each(RA, &docs.request_authentications, diags);
    each(TM, &docs.telemetries, diags);
}

fn warn_document(kind: &str, root: &Value, loc: &Location, diags: &mut Diagnostics) {
    for field in FIELDS.iter().filter(|f| f.kind == kind) {
        let Support::Warned(why) = field.support else {
            continue;
        };
        let segments: Vec<&str> = field.path.split('.').collect();
        let mut found = Vec::new();
        find(root, &segments, String::new(), &mut found);
        for path in found {
            let msg = if why.is_empty() {
                NOT_ENFORCED.to_owned()
            } else {
                format!("{NOT_ENFORCED} ({why})")
            };
            diags.warn(loc, Some(path), msg);
        }
    }
}

/// Paths under `value` matching `segments` whose value says something
/// (not null, not empty, not `false`).
fn find(value: &Value, segments: &[&str], path: String, out: &mut Vec<String>) {
    let Some((first, rest)) = segments.split_first() else {
        let says_something = match value {
            Value::Null | Value::Bool(false) => false,
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => true,
        };
        if says_something && !out.contains(&path) {
            out.push(path);
        }
        return;
    };
    let join = |path: &str, key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    if *first == "**" {
        find(value, rest, path.clone(), out);
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    find(v, segments, join(&path, k), out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    find(v, segments, format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
        return;
    }
    let (key, each) = match first.strip_suffix("[*]") {
        Some(key) => (key, true),
        None => (*first, false),
    };
    let Value::Object(map) = value else { return };
    let children: Vec<(String, &Value)> = if key == "*" {
        map.iter().map(|(k, v)| (join(&path, k), v)).collect()
    } else {
        map.get(key)
            .map(|v| (join(&path, key), v))
            .into_iter()
            .collect()
    };
    for (child_path, child) in children {
        if each {
            for (i, item) in child.as_array().into_iter().flatten().enumerate() {
                find(item, rest, format!("{child_path}[{i}]"), out);
            }
        } else {
            find(child, rest, child_path, out);
        }
    }
}

/// The table of `docs/config.md`: per kind, what is enforced and what is
/// accepted with a warning.
#[cfg(test)]
fn markdown_table() -> String {
    let show = |path: &str| {
        let path = path.strip_prefix("spec.").unwrap_or(path);
        let path = path.strip_prefix("**.").unwrap_or(path);
        format!("`{}`", path.replace("[*]", ""))
    };
    let mut out = String::from(
        "| kind | enforced | accepted, not enforced (one warning each) |\n|---|---|---|\n",
    );
    let mut kinds: Vec<&str> = Vec::new();
    for f in FIELDS {
        if !kinds.contains(&f.kind) {
            kinds.push(f.kind);
        }
    }
    for kind in kinds {
        let list = |want_enforced: bool| {
            let mut items: Vec<String> = Vec::new();
            for f in FIELDS.iter().filter(|f| f.kind == kind) {
                let item = match f.support {
                    Support::Enforced if want_enforced => show(f.path),
                    Support::Warned("") if !want_enforced => show(f.path),
                    Support::Warned(why) | Support::WarnedWhenCompiled(why) if !want_enforced => {
                        format!("{} ({why})", show(f.path))
                    }
                    _ => continue,
                };
                if !items.contains(&item) {
                    items.push(item);
                }
            }
            if items.is_empty() {
                "—".to_owned()
            } else {
                items.join(", ")
            }
        };
        out.push_str(&format!("| {kind} | {} | {} |\n", list(true), list(false)));
    }
    for kind in VALIDATED_ONLY {
        out.push_str(&format!(
            "| {kind} | — | every field: checked with Istio's rules, then the resource is skipped with one warning |\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_find_every_place_a_field_is_written() {
        let root = serde_json::json!({"spec": {
            "trafficPolicy": {"connectionPool": {"tcp": {"tcpKeepalive": {"time": "1s"}}}},
            "subsets": [{"name": "v1", "trafficPolicy": {"portLevelSettings": [{"connectionPool": {"tcp": {"tcpKeepalive": {"probes": 3}}}}]}}],
            "exportTo": [],
        }});
        let mut found = Vec::new();
        find(
            &root,
            &["**", "connectionPool", "tcp", "tcpKeepalive"],
            String::new(),
            &mut found,
        );
        assert_eq!(
            found,
            [
                "spec.subsets[0].trafficPolicy.portLevelSettings[0].connectionPool.tcp.tcpKeepalive",
                "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive",
            ]
        );
        let mut found = Vec::new();
        find(&root, &["spec", "exportTo"], String::new(), &mut found);
        assert!(found.is_empty(), "an empty list says nothing");
    }

    #[test]
    fn the_docs_table_is_this_table() {
        let docs =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md"))
                .expect("docs/config.md");
        assert!(
            docs.contains(&markdown_table()),
            "docs/config.md must contain the field table; paste this:\n{}",
            markdown_table()
        );
    }
}
