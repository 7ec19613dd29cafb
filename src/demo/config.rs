//! Each sidecar's config file: an `Agent` bootstrap, a ServiceEntry per
//! service it calls (the registry Kubernetes would give Istio), and the
//! Bookinfo resources that concern it, written as Istio users write them
//! (`examples/bookinfo/`). The files stay in the data directory: edit one
//! and its agent reloads it within a second.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

use super::scenario::{self, Scenario};
use super::topology::{NAMESPACE, Protocol, Role, Workload, service_port, service_protocol};

/// The article's DestinationRule on ratings.
const RATINGS_RULE: &str = include_str!("../../examples/bookinfo/ratings.yaml");
/// Istio's `bookinfo-gateway` Gateway and VirtualService.
const BOOKINFO_GATEWAY: &str = include_str!("../../examples/bookinfo/bookinfo-gateway.yaml");

/// The ingress gateway's config: an `IngressGateway` (Istio's
/// `istio-ingressgateway` in `istio-system`, its port 8080 on a free port
/// of `listen`), productpage's registry entry, and Bookinfo's own gateway
/// resources.
pub fn gateway_yaml(listen: IpAddr, otlp: SocketAddr, endpoints: &Endpoints) -> String {
    let bootstrap = format!(
        r#"# The ingress gateway, written by `tracemesh demo`.
apiVersion: tracemesh.io/v1
kind: IngressGateway
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  labels: {{istio: ingressgateway, app: istio-ingressgateway}}
  serviceAccount: istio-ingressgateway-service-account
  listeners: [{{port: 8080, listen: "{listen}:0"}}]
  admin: {{listen: "{listen}:0"}}
  concurrency: 1
  drainDuration: 1s
  telemetry:
    otlp: {{endpoint: "http://{otlp}", protocol: grpc}}
    sampling: 1.0
    maxQueuedSpans: 2048
"#
    );
    let docs = [
        bootstrap,
        service_entry("productpage", endpoints, None),
        BOOKINFO_GATEWAY.to_owned(),
    ];
    docs.iter()
        .map(|doc| doc.trim())
        .collect::<Vec<_>>()
        .join("\n---\n")
        + "\n"
}

/// Where the sidecars of each service listen for the mesh: service →
/// (version, inbound address) of every workload started so far. In pods,
/// the pod's address and the service's port (iptables takes it from there).
pub type Endpoints = BTreeMap<&'static str, Vec<(&'static str, SocketAddr)>>;

/// Each service's VIP, as Kubernetes' ClusterIP (pods only).
pub type Vips = BTreeMap<&'static str, IpAddr>;

/// What one sidecar's config is made from.
pub struct AgentConfig<'a> {
    /// The workload it fronts.
    pub workload: &'a Workload,
    /// Where its application listens.
    pub app: SocketAddr,
    /// The collector's OTLP/gRPC address.
    pub otlp: SocketAddr,
    /// The sidecars started before it.
    pub endpoints: &'a Endpoints,
    /// The demo's scenario.
    pub scenario: Option<Scenario>,
    /// In pods: every service's VIP. The sidecar then captures (Istio's
    /// ports, `capture.mode: REDIRECT`) and knows its own service too.
    pub vips: Option<&'a Vips>,
}

impl AgentConfig<'_> {
    /// The config file's text. Every listener binds port 0 on loopback: the
    /// agent reports where it landed, and the next sidecars' ServiceEntries
    /// point there.
    pub fn to_yaml(&self) -> String {
        let mut docs = vec![self.bootstrap()];
        // Its own service's port names its inbound spans (Istio's
        // `<fqdn>:<service port>/*` whatever Host a caller sent) and, in
        // pods, tells the inbound side its protocol.
        docs.push(service_entry(
            self.workload.service,
            self.endpoints,
            self.vips,
        ));
        for callee in self.workload.calls() {
            docs.push(service_entry(callee, self.endpoints, self.vips));
        }
        match self.workload.role {
            Role::ProductPage => {
                docs.push(scenario::reviews_routing(self.scenario));
                docs.push(scenario::productpage_rate_limit(self.scenario));
            }
            Role::Reviews { .. } => docs.push(RATINGS_RULE.to_owned()),
            Role::Details | Role::Ratings | Role::Database => {}
        }
        docs.iter()
            .map(|doc| doc.trim())
            .collect::<Vec<_>>()
            .join("\n---\n")
            + "\n"
    }

    fn bootstrap(&self) -> String {
        let w = self.workload;
        let app_protocol = match w.protocol() {
            Protocol::Http => "HTTP",
            Protocol::Tcp => "TCP",
        };
        if self.vips.is_some() {
            return self.captured_bootstrap(app_protocol);
        }
        let mut tcp = String::new();
        for callee in w.calls() {
            if service_protocol(callee) == Protocol::Tcp {
                let port = service_port(callee);
                let _ = write!(
                    tcp,
                    "\n    - {{listen: \"127.0.0.1:0\", host: {callee}, port: {port}}}"
                );
            }
        }
        let tcp = if tcp.is_empty() {
            String::new()
        } else {
            format!("\n    tcp:{tcp}")
        };
        format!(
            r#"# The {name} sidecar, written by `tracemesh demo`.
apiVersion: tracemesh.io/v1
kind: Agent
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  service: {service}
  serviceAccount: bookinfo-{service}
  labels: {{app: {service}, version: {version}}}
  concurrency: 1
  drainDuration: 1s
  inbound: {{listen: "127.0.0.1:0", app: "{app}", appProtocol: {app_protocol}}}
  outbound:
    listen: "127.0.0.1:0"{tcp}
  admin: {{listen: "127.0.0.1:0"}}
  telemetry:
    otlp: {{endpoint: "http://{otlp}", protocol: grpc}}
    sampling: 1.0
    # A few seconds of the demo's spans; the default 8192 slots are
    # allocated up front (about 6.5 MiB a sidecar).
    maxQueuedSpans: 2048
"#,
            name = w.name,
            service = w.service,
            version = w.version,
            app = self.app,
            otlp = self.otlp,
        )
    }
}

impl AgentConfig<'_> {
    /// A pod's sidecar: Istio's capture ports (what `tracemesh iptables`
    /// redirects to), the application reached at the original destination,
    /// the admin port on the pod's address so the hub can scrape it.
    fn captured_bootstrap(&self, app_protocol: &str) -> String {
        format!(
            r#"# The {name} sidecar in its pod, written by `tracemesh demo --pods`.
apiVersion: tracemesh.io/v1
kind: Agent
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  service: {service}
  serviceAccount: bookinfo-{service}
  labels: {{app: {service}, version: {version}}}
  concurrency: 1
  drainDuration: 1s
  capture: {{mode: REDIRECT}}
  inbound: {{listen: "0.0.0.0:15006", appProtocol: {app_protocol}}}
  outbound: {{listen: "127.0.0.1:15001"}}
  admin: {{listen: "0.0.0.0:15000"}}
  telemetry:
    otlp: {{endpoint: "http://{otlp}", protocol: grpc}}
    sampling: 1.0
    maxQueuedSpans: 2048
"#,
            name = self.workload.name,
            service = self.workload.service,
            version = self.workload.version,
            otlp = self.otlp,
        )
    }
}

/// The registry entry of `service`: its port, its VIP (in pods) and every
/// sidecar serving it (none when none has started).
fn service_entry(service: &str, endpoints: &Endpoints, vips: Option<&Vips>) -> String {
    let port = service_port(service);
    let (port_name, protocol) = match service_protocol(service) {
        Protocol::Http => ("http", "HTTP"),
        Protocol::Tcp => ("tcp", "TCP"),
    };
    let serving = endpoints.get(service).filter(|e| !e.is_empty());
    // No sidecar of it has started yet (a sidecar's own service): only
    // its ports, reached at the caller's original destination.
    let resolution = if serving.is_some() { "STATIC" } else { "NONE" };
    let mut out = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {service}, namespace: {NAMESPACE}}}
spec:
  hosts: [{service}.{NAMESPACE}.svc.cluster.local]
  ports: [{{number: {port}, name: {port_name}, protocol: {protocol}}}]
  resolution: {resolution}"
    );
    if let Some(vip) = vips.and_then(|v| v.get(service)) {
        let _ = write!(out, "\n  addresses: [{vip}]");
    }
    let Some(serving) = serving else {
        return out;
    };
    out.push_str("\n  endpoints:");
    for (version, address) in serving {
        let _ = write!(
            out,
            "\n  - {{address: {ip}, ports: {{{port_name}: {p}}}, labels: {{app: {service}, version: {version}}}}}",
            ip = address.ip(),
            p = address.port(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::topology::WORKLOADS;

    /// Every sidecar's config, under every scenario, compiles without
    /// errors or warnings.
    #[test]
    fn every_config_compiles_cleanly() {
        let address = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let mut endpoints = Endpoints::new();
        for (i, w) in WORKLOADS.iter().enumerate() {
            endpoints
                .entry(w.service)
                .or_default()
                .push((w.version, address(20_000 + i as u16)));
        }
        let scenarios = [
            None,
            Some(Scenario::SlowRatings),
            Some(Scenario::FailingReviewsV3),
            Some(Scenario::Shift5050),
        ];
        // In pods: every service has a VIP, every sidecar captures.
        let mut vips = Vips::new();
        for w in &WORKLOADS {
            let next = IpAddr::from([10, 96, 0, 10 + vips.len() as u8]);
            vips.entry(w.service).or_insert(next);
        }
        let live = tracemesh_agent::model::live::LiveState::default();
        for (scenario, vips) in scenarios
            .into_iter()
            .flat_map(|s| [(s, None), (s, Some(&vips))])
        {
            for workload in &WORKLOADS {
                // Outside pods a sidecar starts before any of its own
                // service's: its own entry has no endpoints yet.
                let mut started = endpoints.clone();
                if vips.is_none() {
                    started.remove(workload.service);
                }
                let yaml = AgentConfig {
                    workload,
                    app: address(8080),
                    otlp: address(4317),
                    endpoints: &started,
                    scenario,
                    vips,
                }
                .to_yaml();
                let file = std::sync::Arc::from(format!("{}.yaml", workload.name));
                let compiled = tracemesh_agent::compile::compile_text(&file, &yaml, 1, &live)
                    .unwrap_or_else(|e| panic!("{}:\n{yaml}\n{:?}", workload.name, e.0));
                // The article's ratings rule keeps Istio's deprecated
                // `consecutiveErrors`, which Istio (and so the agent) warns about.
                let warnings: Vec<String> = compiled
                    .diagnostics
                    .warnings()
                    .map(ToString::to_string)
                    .filter(|w| !w.contains("consecutive errors is deprecated"))
                    .collect();
                assert!(warnings.is_empty(), "{}: {warnings:?}", workload.name);
                // Its inbound spans are named after its service's port,
                // whether requests arrive on the sidecar's free listener
                // port or, captured, at the application's port.
                let ports = &compiled.snapshot.capture.service_ports;
                let arrival = match vips {
                    Some(_) => service_port(workload.service),
                    None => 1,
                };
                assert_eq!(
                    ports.addressed(arrival),
                    Some(service_port(workload.service)),
                    "{}",
                    workload.name
                );
            }
        }
        // The gateway's config compiles cleanly too, and binds Bookinfo's
        // VirtualService to its port 8080.
        let yaml = gateway_yaml(IpAddr::from([127, 0, 0, 1]), address(4317), &endpoints);
        let file = std::sync::Arc::from("istio-ingressgateway.yaml");
        let compiled = tracemesh_agent::compile::compile_gateway_text(&file, &yaml, 1, &live)
            .unwrap_or_else(|e| panic!("gateway:\n{yaml}\n{:?}", e.0));
        let warnings: Vec<String> = compiled
            .diagnostics
            .warnings()
            .map(ToString::to_string)
            .collect();
        assert!(warnings.is_empty(), "gateway: {warnings:?}");
        assert!(compiled.snapshot.listeners.port(8080).is_some());
    }
}
