//! The Kubernetes Gateway API conformance cases that apply to a
//! single-machine mesh, as data: each file in `cases/` holds the routes of
//! one upstream conformance test (translated: the suite's echo Services are
//! ServiceEntries whose endpoints are local upstreams), the requests it
//! sends and what must answer. `cases/mesh/` attach routes to Services
//! (GAMMA) and run through a sidecar; `cases/gateway/` attach routes to a
//! Gateway and run through a real `tracemesh gateway`. The list of
//! upstream cases covered and skipped is `docs/gateway-api-conformance.md`.
//!
//! `cargo test --test gateway_api [-- FILTER]`.

// Test helpers: a failed unwrap is a failed case.
#![allow(clippy::unwrap_used)]

#[allow(unused_imports)]
#[path = "../common/mod.rs"]
mod common;
mod grpc_echo;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::agent::Agent;
use common::client::Client;
use common::upstream::{Upstream, closed_port};
use http::Request;
use http_body_util::Full;
use libtest_mimic::{Arguments, Failed, Trial};
use serde::Deserialize;

/// The suite's mesh namespace: routes, Services and the client are in it.
const NAMESPACE: &str = "gateway-conformance-mesh";
/// The suite's backends (`echo` selects them all).
const BACKENDS: &[&str] = &["echo-v1", "echo-v2"];

/// One case file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// The upstream test's `ShortName`.
    name: String,
    /// Where it comes from in the Gateway API repository.
    source: String,
    /// What it shows.
    #[allow(dead_code)]
    description: String,
    /// The suite's namespace for the case (default the mesh namespace;
    /// gateway cases use `gateway-conformance-infra`).
    #[serde(default)]
    namespace: Option<String>,
    /// Its backends (default `echo-v1`, `echo-v2`; gateway cases use
    /// `infra-backend-v1` … `v3`), each a ServiceEntry of that namespace
    /// (or of `NAMESPACE/` before the name, as the suite's `web-backend`
    /// of `gateway-conformance-web-backend`) on ports 80 and 8080 with its
    /// own upstream.
    #[serde(default)]
    backends: Vec<String>,
    /// What compiling the case must warn, one entry per diagnostic: text
    /// its message contains (none by default; the suite's invalid
    /// reference and parentRef cases expect the warnings that stand for
    /// the status conditions they check).
    #[serde(default)]
    diagnostics: Vec<String>,
    /// The routes (YAML documents; gateway cases include their Gateways,
    /// of class `istio`).
    routes: String,
    /// GRPCRoute case: the backends are the suite's gRPC echo service
    /// (ServiceEntry ports of protocol GRPC) and every request is an
    /// `rpc`.
    #[serde(default)]
    grpc: bool,
    /// The gateway's ports (default 80 only): the suite's listener ports a
    /// gateway case uses; a request goes to its `port`'s.
    #[serde(default)]
    ports: Vec<u16>,
    /// Requests in order.
    requests: Vec<Step>,
}

/// A request and what must happen.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    #[serde(default = "get")]
    method: String,
    /// Host (default `echo`).
    #[serde(default = "echo")]
    host: String,
    /// Port (default 80).
    #[serde(default = "port_80")]
    port: u16,
    /// Path and query.
    #[serde(default)]
    path: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    /// Status (default 200).
    #[serde(default = "ok")]
    status: u16,
    /// The backend that must answer (none for a redirect or an error).
    #[serde(default)]
    backend: Option<String>,
    /// The `Location` of a redirect.
    #[serde(default)]
    location: Option<String>,
    /// The path and query the backend must see.
    #[serde(default)]
    upstream_path: Option<String>,
    /// Headers the backend must see (name → value).
    #[serde(default)]
    upstream_headers: BTreeMap<String, String>,
    /// Headers the backend must not see.
    #[serde(default)]
    upstream_absent: Vec<String>,
    /// Headers the response must carry.
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
    /// Headers the response must not carry.
    #[serde(default)]
    response_absent: Vec<String>,
    /// A gRPC call's method of the suite's `GrpcEcho` (`Echo`, `EchoTwo`,
    /// `EchoThree`), `headers` its metadata; `path` is unused.
    #[serde(default)]
    rpc: Option<String>,
    /// The call's gRPC status (`tonic::Code` name; default `Ok`).
    #[serde(default)]
    grpc_status: Option<String>,
}

fn get() -> String {
    "GET".into()
}
fn echo() -> String {
    "echo".into()
}
fn port_80() -> u16 {
    80
}
fn ok() -> u16 {
    200
}

fn cases(part: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/gateway_api/cases")
        .join(part);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A backend entry's namespace (the case's unless `NAMESPACE/` is given)
/// and Service name.
fn backend_ref<'a>(entry: &'a str, namespace: &'a str) -> (&'a str, &'a str) {
    entry.split_once('/').unwrap_or((namespace, entry))
}

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for path in cases("mesh") {
        let name = format!("mesh::{}", path.file_stem().unwrap().to_string_lossy());
        trials.push(Trial::test(name, move || {
            run_mesh(&path).map_err(Failed::from)
        }));
    }
    for path in cases("gateway") {
        let name = format!("gateway::{}", path.file_stem().unwrap().to_string_lossy());
        let case = load(&path);
        let file = path.clone();
        trials.push(Trial::test(format!("{name}::compiles"), move || {
            gateway_compiles(&file).map_err(Failed::from)
        }));
        trials.push(Trial::test(name, move || {
            run_gateway(&path, &case).map_err(Failed::from)
        }));
    }
    libtest_mimic::run(&args, trials).exit();
}

/// A gateway case's resources load as an ingress gateway's config
/// (`tracemesh validate` compiles a file with an IngressGateway as the
/// gateway would), without errors or warnings about its routes.
fn gateway_compiles(path: &Path) -> Result<(), String> {
    use std::io::Write;
    let case = load(path);
    let namespace = case.namespace.as_deref().unwrap_or(NAMESPACE);
    let mut yaml = "apiVersion: tracemesh.io/v1\nkind: IngressGateway\nmetadata: {name: gateway, namespace: istio-system}\nspec:\n  labels: {istio: ingressgateway}\n".to_owned();
    let protocol = if case.grpc { "GRPC" } else { "HTTP" };
    for entry in &case.backends {
        let (namespace, backend) = backend_ref(entry, namespace);
        yaml += &format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {backend}, namespace: {namespace}}}\nspec:\n  hosts: [{backend}.{namespace}.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 8080, name: http, protocol: {protocol}}}]\n  endpoints: [{{address: 127.0.0.1}}]\n"
        );
    }
    yaml += "---\n";
    yaml += &case.routes;
    let mut child = std::process::Command::new(common::agent::binary())
        .args(["validate", "--output", "json", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let diagnostics = report["diagnostics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let expected = diagnostics.len() == case.diagnostics.len()
        && case.diagnostics.iter().all(|want| {
            diagnostics.iter().any(|d| {
                d["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(want.as_str()))
            })
        });
    if report["files"][0]["gateway"] != true || !expected {
        return Err(format!(
            "{}: want diagnostics {:?}, got {report:#}",
            case.name, case.diagnostics
        ));
    }
    Ok(())
}

/// A ServiceEntry `name` of the mesh namespace on ports 80 and 8080, both
/// served by each upstream's port (the suite's echo Services map 80 and
/// 8080 to the pods' 8080 and 3000).
fn service_entry(name: &str, upstreams: &[&Upstream]) -> String {
    service_entry_in(NAMESPACE, name, upstreams)
}

/// [`service_entry`] in `namespace`.
fn service_entry_in(namespace: &str, name: &str, upstreams: &[&Upstream]) -> String {
    let endpoints: Vec<(String, SocketAddr)> =
        upstreams.iter().map(|u| (u.name.clone(), u.addr)).collect();
    service_entry_of(namespace, name, &endpoints, "HTTP")
}

/// A ServiceEntry `name` of `namespace` on ports 80 and 8080 of
/// `protocol`, both served by each endpoint's port.
fn service_entry_of(
    namespace: &str,
    name: &str,
    endpoints: &[(String, SocketAddr)],
    protocol: &str,
) -> String {
    let mut eps = String::new();
    for (app, addr) in endpoints {
        eps.push_str(&format!(
            "  - address: {}\n    ports: {{http: {p}, http-alt: {p}}}\n    labels: {{app: {app}}}\n",
            addr.ip(),
            p = addr.port()
        ));
    }
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  hosts: [{name}.{namespace}.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 80, name: http, protocol: {protocol}}}\n  - {{number: 8080, name: http-alt, protocol: {protocol}}}\n  endpoints:\n{eps}"
    )
}

fn run_mesh(path: &Path) -> Result<(), String> {
    let case = load(path);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut upstreams = Vec::new();
        for name in BACKENDS {
            upstreams.push(Upstream::start(name).await);
        }
        let all: Vec<&Upstream> = upstreams.iter().collect();
        // The client: a workload of the mesh namespace (the suite's
        // `echo-v1` pod sends every request).
        let mut yaml = common::mesh::AgentDoc {
            name: "client",
            service: "client",
            app: "client",
            version: "v1",
            app_addr: closed_port().await,
            otlp: common::mesh::NO_COLLECTOR,
            app_protocol: "HTTP",
            outbound_tcp: "[]",
            extra: "",
        }
        .yaml()
        .replace("namespace: default", &format!("namespace: {NAMESPACE}"));
        yaml += &service_entry("echo", &all);
        for u in &upstreams {
            yaml += &service_entry(&u.name, &[u]);
        }
        yaml += "---\n";
        yaml += &case.routes;
        let agent = Agent::try_start(&yaml)
            .map_err(|e| format!("{}: the agent refused the config: {e}", case.source))?;
        let client = Client::h1(agent.outbound);
        let mut failures = Vec::new();
        for (i, step) in case.requests.iter().enumerate() {
            if let Err(why) = check(step, &client, &upstreams).await {
                failures.push(format!(
                    "request {i} ({} {} {:?}): {why}",
                    step.method, step.path, step.headers
                ));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} ({}):\n  {}",
                case.name,
                case.source,
                failures.join("\n  ")
            ))
        }
    })
}

/// A gateway case: its backends as ServiceEntries of the case's
/// namespace, its Gateway and routes, served by a real `tracemesh gateway`
/// whose port 80 (the suite's Gateway listeners') is the client's target.
fn run_gateway(path: &Path, case: &Case) -> Result<(), String> {
    let namespace = case.namespace.as_deref().unwrap_or(NAMESPACE);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut upstreams = Vec::new();
        let ports = if case.ports.is_empty() {
            vec![80]
        } else {
            case.ports.clone()
        };
        let mut yaml = common::gateway::bootstrap(&ports, common::mesh::NO_COLLECTOR, "");
        let mut echoes = Vec::new();
        for entry in &case.backends {
            let (namespace, name) = backend_ref(entry, namespace);
            if case.grpc {
                let e = grpc_echo::GrpcEcho::start(name).await;
                let endpoint = [(name.to_owned(), e.addr)];
                yaml += &service_entry_of(namespace, name, &endpoint, "GRPC");
                echoes.push(e);
            } else {
                let u = Upstream::start(name).await;
                yaml += &service_entry_in(namespace, &u.name, &[&u]);
                upstreams.push(u);
            }
        }
        yaml += "---\n";
        yaml += &case.routes;
        let gateway = common::gateway::Gateway::try_start(&yaml)
            .map_err(|e| format!("{}: the gateway refused the config: {e}", path.display()))?;
        let clients: BTreeMap<u16, Client> = ports
            .iter()
            .map(|&p| (p, Client::h1(gateway.port(p))))
            .collect();
        let mut failures = Vec::new();
        for (i, step) in case.requests.iter().enumerate() {
            let Some(client) = clients.get(&step.port) else {
                failures.push(format!(
                    "request {i}: the gateway has no port {}",
                    step.port
                ));
                continue;
            };
            let checked = if case.grpc {
                check_rpc(step, gateway.port(step.port), &echoes).await
            } else {
                check(step, client, &upstreams).await
            };
            if let Err(why) = checked {
                failures.push(format!(
                    "request {i} ({} {} {} {:?}): {why}",
                    step.method,
                    step.host,
                    step.rpc.as_deref().unwrap_or(&step.path),
                    step.headers
                ));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} ({}):\n  {}",
                case.name,
                case.source,
                failures.join("\n  ")
            ))
        }
    })
}

/// A gRPC call of a GRPCRoute case: its status, and the backend it
/// reached (none unless the status is `Ok`).
async fn check_rpc(
    step: &Step,
    gateway: SocketAddr,
    echoes: &[grpc_echo::GrpcEcho],
) -> Result<(), String> {
    let Some(method) = &step.rpc else {
        return Err("a GRPCRoute case's request needs an rpc".into());
    };
    let before: Vec<usize> = echoes.iter().map(grpc_echo::GrpcEcho::count).collect();
    let code = match grpc_echo::call(gateway, &step.host, method, &step.headers).await {
        Ok(()) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    let want = step.grpc_status.as_deref().unwrap_or("Ok");
    if format!("{code:?}") != want {
        return Err(format!("gRPC status {code:?}, want {want}"));
    }
    let reached: Vec<&str> = echoes
        .iter()
        .zip(&before)
        .filter(|(e, n)| e.count() > **n)
        .map(|(e, _)| e.name.as_str())
        .collect();
    match (&step.backend, reached.as_slice()) {
        (None, []) => Ok(()),
        (Some(want), [got]) if want == got => Ok(()),
        (want, got) => Err(format!("reached {got:?}, want {want:?}")),
    }
}

async fn check(step: &Step, client: &Client, upstreams: &[Upstream]) -> Result<(), String> {
    let before: Vec<usize> = upstreams.iter().map(Upstream::count).collect();
    let mut req = Request::builder()
        .method(step.method.as_str())
        .uri(format!("http://{}:{}{}", step.host, step.port, step.path));
    if step.port == 80 {
        req = req.header("host", step.host.as_str());
    }
    for (k, v) in &step.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let reply = client.send(req.body(Full::default()).unwrap()).await;
    if reply.status != step.status {
        return Err(format!(
            "status {} (flags {:?}), want {}",
            reply.status,
            reply.header("x-tracemesh-response-flags"),
            step.status
        ));
    }
    if let Some(location) = &step.location
        && reply.header("location").as_deref() != Some(location)
    {
        return Err(format!(
            "location {:?}, want {location}",
            reply.header("location")
        ));
    }
    for (k, v) in &step.response_headers {
        let got = joined(&reply.headers, k);
        if got != *v {
            return Err(format!("response header {k}: {got:?}, want {v}"));
        }
    }
    for k in &step.response_absent {
        if reply.headers.contains_key(k.as_str()) {
            return Err(format!("the response carries {k}, which must be absent"));
        }
    }
    let reached: Vec<&Upstream> = upstreams
        .iter()
        .zip(&before)
        .filter(|(u, n)| u.count() > **n)
        .map(|(u, _)| u)
        .collect();
    let Some(backend) = &step.backend else {
        if let Some(u) = reached.first() {
            return Err(format!("reached {}, want no backend", u.name));
        }
        return Ok(());
    };
    let [u] = reached.as_slice() else {
        let names: Vec<&str> = reached.iter().map(|u| u.name.as_str()).collect();
        return Err(format!("reached {names:?}, want {backend}"));
    };
    if &u.name != backend {
        return Err(format!("reached {}, want {backend}", u.name));
    }
    let seen = u.seen().pop().unwrap();
    if let Some(path) = &step.upstream_path
        && &seen.path != path
    {
        return Err(format!("the backend saw path {}, want {path}", seen.path));
    }
    for (k, v) in &step.upstream_headers {
        let got = joined(&seen.headers, k);
        if got != *v {
            return Err(format!("the backend saw {k}: {got:?}, want {v}"));
        }
    }
    for k in &step.upstream_absent {
        if seen.headers.contains_key(k.as_str()) {
            return Err(format!("the backend saw {k}, which must be removed"));
        }
    }
    Ok(())
}

/// Every value of header `name`, comma-joined, as the suite compares them.
fn joined(headers: &http::HeaderMap, name: &str) -> String {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    values.join(",")
}
