//! YAML builders for test configs: an Agent bootstrap plus Istio resources.

use std::net::SocketAddr;

/// OTLP endpoint where nothing listens (port 1 is never bound in tests).
pub const NO_COLLECTOR: &str = "http://127.0.0.1:1";

/// An Agent document with every listener on port 0.
pub struct AgentDoc<'a> {
    /// Workload name.
    pub name: &'a str,
    /// Service fronted.
    pub service: &'a str,
    /// `app` label.
    pub app: &'a str,
    /// `version` label.
    pub version: &'a str,
    /// The local application.
    pub app_addr: SocketAddr,
    /// OTLP endpoint.
    pub otlp: &'a str,
    /// The application's protocol (HTTP, HTTP2, GRPC, TCP).
    pub app_protocol: &'a str,
    /// `spec.outbound.tcp` as flow YAML (`[]` for none).
    pub outbound_tcp: &'a str,
    /// Extra YAML appended under `spec:` (indented two spaces).
    pub extra: &'a str,
}

impl AgentDoc<'_> {
    /// Renders the document.
    pub fn yaml(&self) -> String {
        format!(
            r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata:
  name: {name}
  namespace: default
spec:
  service: {service}
  labels: {{app: {app}, version: {version}}}
  concurrency: 2
  inbound: {{listen: "127.0.0.1:0", app: "{app_addr}", appProtocol: {app_protocol}}}
  outbound: {{listen: "127.0.0.1:0", tcp: {outbound_tcp}}}
  admin: {{listen: "127.0.0.1:0"}}
  telemetry:
    otlp: {{endpoint: "{otlp}"}}
    sampling: 1.0
    flushInterval: 100ms
{extra}
"#,
            name = self.name,
            service = self.service,
            app = self.app,
            version = self.version,
            app_addr = self.app_addr,
            otlp = self.otlp,
            app_protocol = self.app_protocol,
            outbound_tcp = self.outbound_tcp,
            extra = self.extra,
        )
    }
}

/// An Agent for `service` with defaults (app = service name, version v1).
pub fn agent(service: &str, app_addr: SocketAddr, otlp: &str) -> String {
    agent_with(service, app_addr, otlp, "")
}

/// As [`agent`], with `extra` lines (indented two spaces) ending its spec.
pub fn agent_with(service: &str, app_addr: SocketAddr, otlp: &str, extra: &str) -> String {
    AgentDoc {
        name: &format!("{service}-v1"),
        service,
        app: service,
        version: "v1",
        app_addr,
        otlp,
        app_protocol: "HTTP",
        outbound_tcp: "[]",
        extra,
    }
    .yaml()
}

/// One endpoint: address and labels.
pub struct Ep<'a> {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its labels.
    pub labels: &'a [(&'a str, &'a str)],
}

/// A STATIC ServiceEntry in namespace `default` with one port named `http`.
/// A `host` without a dot names the service as Kubernetes would
/// (`reviews` → `reviews.default.svc.cluster.local`): a ServiceEntry's own
/// hosts are taken literally, as Istio takes them.
pub fn service_entry(host: &str, port: u16, protocol: &str, endpoints: &[Ep<'_>]) -> String {
    let name = host;
    let host = if host.contains('.') {
        host.to_owned()
    } else {
        format!("{host}.default.svc.cluster.local")
    };
    let mut eps = String::new();
    for ep in endpoints {
        let labels: Vec<String> = ep.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        eps.push_str(&format!(
            "  - address: {}\n    ports: {{http: {}}}\n    labels: {{{}}}\n",
            ep.addr.ip(),
            ep.addr.port(),
            labels.join(", ")
        ));
    }
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: {port}, name: http, protocol: {protocol}}}]\n  resolution: STATIC\n  endpoints:\n{eps}"
    )
}

/// Istio's mesh config as istiod reads it: the `istio` ConfigMap in
/// `istio-system`, its `mesh` key holding `mesh` verbatim — MeshConfig
/// YAML whose lines are indented four spaces (the block under `mesh: |`).
pub fn istio_config_map(mesh: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n{mesh}"
    )
}
