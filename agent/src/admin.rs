//! The admin API (Envoy-like, localhost by default): readiness, metrics, the
//! effective config, clusters with their endpoints, and the route table.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::model::clock::now_ms;
use crate::model::cluster::Cluster;
use crate::model::destination::DestinationTarget;
use crate::model::live::UNLIMITED;
use crate::model::route::{RouteMatch, StrMatcher, VirtualHost};
use crate::proxy::Shared;
use crate::proxy::listener::BoundAddresses;

#[derive(Clone)]
struct AdminState {
    shared: Arc<Shared>,
    addresses: Arc<BoundAddresses>,
}

/// The admin routes, apart from serving so tests can call them directly.
pub fn router(shared: Arc<Shared>, addresses: BoundAddresses) -> Router {
    let state = AdminState {
        shared,
        addresses: Arc::new(addresses),
    };
    Router::new()
        .route("/ready", get(|| async { "LIVE\n" }))
        .route("/metrics", get(metrics))
        .route("/config_dump", get(config_dump))
        .route("/clusters", get(clusters))
        .route("/routes", get(routes))
        .route("/certs", get(certs))
        .with_state(state)
}

/// Serves the admin API on `listener` until the future is dropped.
pub async fn serve(listener: std::net::TcpListener, router: Router) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, router).await
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let body = state.shared.metrics.render();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn config_dump(State(state): State<AdminState>) -> Json<Value> {
    let snapshot = state.shared.config.load();
    let addresses = &state.addresses;
    let mut dump = snapshot.dump.clone();
    if snapshot.gateway.is_some() {
        let ports: Vec<Value> = addresses
            .gateway
            .iter()
            .map(|(port, addr)| json!({"port": port, "listen": addr.to_string()}))
            .collect();
        dump["listeners"] = json!({ "gateway": ports });
        return Json(dump);
    }
    dump["listeners"] = json!({
        "outbound": addresses.outbound.to_string(),
        "inbound": addresses.inbound.to_string(),
        "outboundTcp": addresses.outbound_tcp.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "app": snapshot.listeners.app.to_string(),
        "appProtocol": snapshot.listeners.app_protocol.to_string(),
    });
    Json(dump)
}

#[derive(Deserialize)]
struct Format {
    format: Option<String>,
}

/// Envoy's text form by default (`cluster::endpoint::stat::value`), JSON
/// with `?format=json`.
async fn clusters(State(state): State<AdminState>, Query(format): Query<Format>) -> Response {
    let snapshot = state.shared.config.load();
    let all: Vec<&Arc<Cluster>> = std::iter::once(&snapshot.inbound)
        .chain(&snapshot.clusters)
        .collect();
    if format.format.as_deref() == Some("json") {
        let list: Vec<Value> = all.iter().map(|c| cluster_json(c)).collect();
        return Json(json!({ "clusters": list })).into_response();
    }
    let now = now_ms();
    let mut text = String::new();
    for cluster in all {
        let state = &cluster.state;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        text.push_str(&format!(
            "{}::rq_pending::{}\n",
            cluster.name,
            load(&state.pending)
        ));
        text.push_str(&format!(
            "{}::rq_active::{}\n",
            cluster.name,
            load(&state.requests)
        ));
        for ep in &cluster.endpoints {
            let prefix = format!("{}::{}", cluster.name, ep.address);
            text.push_str(&format!("{prefix}::rq_active::{}\n", ep.state.active()));
            text.push_str(&format!("{prefix}::rq_total::{}\n", ep.state.total()));
            let health = if ep.state.is_ejected(now) {
                "/failed_outlier_check"
            } else {
                "healthy"
            };
            text.push_str(&format!("{prefix}::health_flags::{health}\n"));
            text.push_str(&format!("{prefix}::weight::{}\n", ep.weight));
            if let Some(name) = &ep.resolved_from {
                text.push_str(&format!("{prefix}::hostname::{name}\n"));
            }
        }
    }
    ([(CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

fn cluster_json(cluster: &Cluster) -> Value {
    let now = now_ms();
    let endpoints: Vec<Value> = cluster
        .endpoints
        .iter()
        .map(|ep| {
            let ejected = ep.state.is_ejected(now);
            json!({
                "address": ep.address.to_string(),
                // The `resolution: DNS` name it is an address of (Envoy's
                // `hostname` of a STRICT_DNS host).
                "hostname": ep.resolved_from.as_deref(),
                "labels": ep.labels,
                "weight": ep.weight,
                "activeRequests": ep.state.active(),
                "totalRequests": ep.state.total(),
                "health": if ejected { "EJECTED" } else { "HEALTHY" },
                "ejectedForMs": ep.state.ejected_for_ms(now),
                "ejections": ep.state.ejections(),
            })
        })
        .collect();
    let state = &cluster.state;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let limits = &cluster.limits;
    let limit = |v: u64| {
        if v == UNLIMITED {
            Value::Null
        } else {
            v.into()
        }
    };
    json!({
        "name": cluster.name,
        "service": cluster.service.host,
        "port": cluster.port,
        "protocol": cluster.protocol.to_string(),
        "subset": cluster.subset,
        "loadBalancer": cluster.balancer.name(),
        "connectTimeoutMs": cluster.connect_timeout.as_millis() as u64,
        "activeRequests": load(&state.requests),
        "pendingRequests": load(&state.pending),
        "activeRetries": load(&state.retries),
        "limits": {
            "maxConnections": limit(limits.max_connections),
            "maxPendingRequests": limit(limits.max_pending),
            "maxRequests": limit(limits.max_requests),
            "maxRetries": limit(limits.max_retries),
            "maxRequestsPerConnection": limits.max_requests_per_connection,
            "maxConcurrentStreams": limit(limits.max_concurrent_streams),
        },
        "outlierDetection": cluster.outlier.is_some(),
        "endpoints": endpoints,
    })
}

async fn routes(State(state): State<AdminState>) -> Json<Value> {
    let snapshot = state.shared.config.load();
    let mut hosts: Vec<&Arc<VirtualHost>> = Vec::new();
    for vh in snapshot
        .routes
        .exact
        .values()
        .chain(&snapshot.routes.wildcard)
    {
        if !hosts.iter().any(|h| Arc::ptr_eq(h, vh)) {
            hosts.push(vh);
        }
    }
    hosts.sort_by(|a, b| a.host.cmp(&b.host));
    let list: Vec<Value> = hosts
        .iter()
        .map(|vh| virtual_host_json(vh, &snapshot.routes.exact))
        .collect();
    let mut body = json!({
        "version": snapshot.version,
        "virtualHosts": list,
        "inbound": snapshot.inbound.name,
    });
    if let Some(gateway) = &snapshot.gateway {
        body["gateway"] = gateway_routes(&gateway.listeners);
    }
    Json(body)
}

/// An ingress gateway's route configs: per port, each filter chain's
/// name (Istio's `http.80`, `https.443.<server>.<gateway>.<ns>`), the SNI
/// names it answers and its virtual hosts.
fn gateway_routes(listeners: &crate::model::gateway::GatewayListeners) -> Value {
    use crate::model::gateway::ChainAction;
    let ports: Vec<Value> = listeners
        .ports
        .iter()
        .map(|port| {
            let chains: Vec<Value> = port
                .chains
                .iter()
                .map(|chain| {
                    let mut out = json!({
                        "name": chain.name,
                        "serverNames": chain.server_names,
                        "tls": chain.tls.as_ref().map(|t| format!("{:?}", t.mode)),
                    });
                    match &chain.action {
                        ChainAction::Http(table) => {
                            let mut hosts: Vec<&Arc<VirtualHost>> =
                                table.exact.values().chain(&table.wildcard).collect();
                            hosts.sort_by(|a, b| a.host.cmp(&b.host));
                            hosts.dedup_by(|a, b| Arc::ptr_eq(a, b));
                            out["virtualHosts"] = hosts
                                .iter()
                                .map(|vh| virtual_host_json(vh, &table.exact))
                                .collect();
                        }
                        ChainAction::Forward(routes) => {
                            out["forward"] = routes
                                .iter()
                                .map(|r| json!({"sniHosts": r.sni_hosts}))
                                .collect();
                        }
                        ChainAction::AutoPassthrough(clusters) => {
                            out["autoPassthrough"] = json!(clusters.len());
                        }
                    }
                    out
                })
                .collect();
            json!({"port": port.number, "listen": port.listen.to_string(), "chains": chains})
        })
        .collect();
    Value::Array(ports)
}

fn virtual_host_json(
    vh: &Arc<VirtualHost>,
    exact: &foldhash::HashMap<String, Arc<VirtualHost>>,
) -> Value {
    let mut domains: Vec<&String> = exact
        .iter()
        .filter(|(_, v)| Arc::ptr_eq(v, vh))
        .map(|(k, _)| k)
        .collect();
    domains.sort();
    let rules: Vec<Value> = vh
        .rules
        .iter()
        .map(|rule| {
            json!({
                "name": rule.name.as_deref(),
                "match": rule.matches.iter().map(match_json).collect::<Vec<_>>(),
                "route": rule.destinations.iter().map(|d| json!({
                    "destination": target_json(&d.target),
                    "weight": d.weight,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "host": vh.host,
        "domains": domains,
        "virtualService": vh.virtual_service,
        "rules": rules,
    })
}

fn target_json(target: &DestinationTarget) -> Value {
    json!({
        "host": &*target.host,
        "subset": target.subset,
        "port": target.port,
        "clusters": target.clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
    })
}

fn str_matcher_json(m: &StrMatcher) -> Value {
    match m {
        StrMatcher::Exact(s) => json!({ "exact": s }),
        StrMatcher::Prefix(s) => json!({ "prefix": s }),
        StrMatcher::PathSeparatedPrefix(s) => json!({ "pathSeparatedPrefix": s }),
        StrMatcher::Regex(r) => json!({ "regex": r.as_str() }),
        StrMatcher::Present => json!({ "present": true }),
    }
}

fn match_json(m: &RouteMatch) -> Value {
    let mut out = serde_json::Map::new();
    let simple = [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ];
    for (name, matcher) in simple {
        if let Some(matcher) = matcher {
            out.insert(name.into(), str_matcher_json(matcher));
        }
    }
    let named = |list: &[(http::HeaderName, StrMatcher)]| -> Value {
        list.iter()
            .map(|(k, v)| (k.to_string(), str_matcher_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    if !m.headers.is_empty() {
        out.insert("headers".into(), named(&m.headers));
    }
    if !m.without_headers.is_empty() {
        out.insert("withoutHeaders".into(), named(&m.without_headers));
    }
    if !m.query_params.is_empty() {
        let params: serde_json::Map<_, _> = m
            .query_params
            .iter()
            .map(|(k, v)| (k.clone(), str_matcher_json(v)))
            .collect();
        out.insert("queryParams".into(), params.into());
    }
    if let Some(port) = m.port {
        out.insert("port".into(), port.into());
    }
    if m.ignore_uri_case {
        out.insert("ignoreUriCase".into(), true.into());
    }
    out.into()
}

/// The workload's identity and certificates, as Envoy's `/certs` shows them
/// (subjects, SANs, validity; never the key), with the inbound mTLS modes:
/// `inboundMtls` for every port but those `portLevelMtls` names.
async fn certs(State(state): State<AdminState>) -> Json<Value> {
    let (mode, ports) = {
        let snapshot = state.shared.config.load();
        let inbound = &snapshot.inbound_mtls;
        let ports: serde_json::Map<String, Value> = (inbound.ports.iter())
            .map(|(port, m)| (port.to_string(), m.as_str().into()))
            .collect();
        (inbound.mode.as_str(), ports)
    };
    let Some(material) = state.shared.tls.load_full() else {
        return Json(json!({
            "identity": null,
            "inboundMtls": mode,
            "portLevelMtls": ports,
            "certificateChain": [],
            "rootCertificates": [],
        }));
    };
    let seconds = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    Json(json!({
        "identity": material.identity.to_string(),
        "source": material.source,
        "inboundMtls": mode,
        "portLevelMtls": ports,
        "loadedAt": seconds(Some(material.loaded_at)),
        "renewAt": seconds(material.renew_at()),
        "expiresAt": seconds(material.expires_at()),
        "certificateChain": material.chain,
        "rootCertificates": material.roots,
    }))
}
