//! Turns parsed documents into a [`Snapshot`]: validates every field, collects
//! every error and warning (not just the first), and prebuilds what the
//! request path needs (regexes, route tables, balancers).

mod access;
mod authn;
mod bootstrap;
mod capture;
mod decided;
mod delegate;
mod destination_rules;
mod gateway;
mod gateway_api;
mod mesh;
mod mtls;
mod policy;
mod registry;
mod route_policy;
mod routes;
mod sidecar;
mod tcp_rules;
mod telemetry;
mod unenforced;
mod upstream_tls;
pub mod validate;

use std::path::Path;
use std::sync::Arc;

use crate::config::diagnostics::{ConfigRejected, Diagnostics, Location};
use crate::config::documents::{Document, Resource, parse_documents};
use crate::config::virtual_service::VirtualServiceSpec;
use crate::model::Snapshot;
use crate::model::live::LiveState;

/// The documents of one file, sorted by kind.
#[derive(Default)]
struct Documents {
    agents: Vec<Document<crate::config::agent::AgentSpec>>,
    service_entries: Vec<Document<crate::config::service_entry::ServiceEntrySpec>>,
    virtual_services: Vec<Document<VirtualServiceSpec>>,
    destination_rules: Vec<Document<crate::config::destination_rule::DestinationRuleSpec>>,
    authorization_policies: Vec<Document<crate::config::security::AuthorizationPolicySpec>>,
    peer_authentications: Vec<Document<crate::config::security::PeerAuthenticationSpec>>,
    rate_limit_policies: Vec<Document<crate::config::rate_limit::RateLimitPolicySpec>>,
    workload_entries: Vec<Document<crate::config::service_entry::WorkloadEntry>>,
    sidecars: Vec<Document<crate::config::gateway::SidecarSpec>>,
    mesh_configs: Vec<Document<crate::config::mesh::MeshConfig>>,
    /// Whether a mesh config was refused for its errors.
    mesh_config_rejected: bool,
    telemetries: Vec<Document<crate::config::telemetry::TelemetrySpec>>,
    request_authentications: Vec<Document<crate::config::security::RequestAuthenticationSpec>>,
    ingress_gateways: Vec<Document<crate::config::ingress_gateway::IngressGatewaySpec>>,
    gateways: Vec<Document<crate::config::gateway::GatewaySpec>>,
    gateway_classes: Vec<Document<crate::config::gateway_api::GatewayClassSpec>>,
    kubernetes_gateways: Vec<Document<crate::config::gateway_api::GatewaySpec>>,
    http_routes: Vec<Document<crate::config::gateway_api::HttpRouteSpec>>,
    grpc_routes: Vec<Document<crate::config::gateway_api::GrpcRouteSpec>>,
    reference_grants: Vec<Document<crate::config::gateway_api::ReferenceGrantSpec>>,
    namespaces: Vec<Document<()>>,
}

impl Documents {
    fn sort(resources: Vec<Resource>) -> Self {
        let mut docs = Self::default();
        for resource in resources {
            match resource {
                Resource::Agent(d) => docs.agents.push(d),
                Resource::ServiceEntry(d) => docs.service_entries.push(d),
                Resource::VirtualService(d) => docs.virtual_services.push(d),
                Resource::DestinationRule(d) => docs.destination_rules.push(d),
                Resource::AuthorizationPolicy(d) => docs.authorization_policies.push(d),
                Resource::PeerAuthentication(d) => docs.peer_authentications.push(d),
                Resource::RateLimitPolicy(d) => docs.rate_limit_policies.push(d),
                Resource::WorkloadEntry(d) => docs.workload_entries.push(d),
                Resource::Sidecar(d) => docs.sidecars.push(d),
                Resource::MeshConfig(d) => docs.mesh_configs.push(d),
                Resource::RejectedMeshConfig(_) => docs.mesh_config_rejected = true,
                Resource::Telemetry(d) => docs.telemetries.push(d),
                Resource::RequestAuthentication(d) => docs.request_authentications.push(d),
                Resource::IngressGateway(d) => docs.ingress_gateways.push(d),
                Resource::Gateway(d) => docs.gateways.push(d),
                Resource::GatewayClass(d) => docs.gateway_classes.push(d),
                Resource::KubernetesGateway(d) => docs.kubernetes_gateways.push(d),
                Resource::HttpRoute(d) => docs.http_routes.push(d),
                Resource::GrpcRoute(d) => docs.grpc_routes.push(d),
                Resource::ReferenceGrant(d) => docs.reference_grants.push(d),
                Resource::Namespace(d) => docs.namespaces.push(d),
                // Validated and warned about already; nothing to compile.
                Resource::Unused(_) => {}
            }
        }
        docs
    }
}

/// A compiled config and what was found along the way.
pub struct Compiled {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Warnings (there are no errors in an accepted config).
    pub diagnostics: Diagnostics,
}

/// Reads a config file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, ConfigRejected> {
    crate::config::source::read_file_bounded(path).map_err(|err| {
        let file: Arc<str> = Arc::from(path.display().to_string());
        let mut diags = Diagnostics::default();
        diags.error(&Location::file(&file), None, format!("cannot read: {err}"));
        ConfigRejected(diags)
    })
}

/// Reads and compiles the file at `path`.
pub fn load_file(
    path: &Path,
    version: u64,
    states: &LiveState,
) -> Result<Compiled, ConfigRejected> {
    let file: Arc<str> = Arc::from(path.display().to_string());
    let bytes = read_file(path)?;
    compile_text(&file, &String::from_utf8_lossy(&bytes), version, states)
}

/// Compiles the text of a config file named `file`.
pub fn compile_text(
    file: &Arc<str>,
    text: &str,
    version: u64,
    states: &LiveState,
) -> Result<Compiled, ConfigRejected> {
    let mut diags = Diagnostics::default();
    let resources = parse_documents(file, text, &mut diags);
    compile_resources(file, resources, diags, version, states)
}

/// Compiles a sidecar's parsed resources (`diags` holds what parsing said).
fn compile_resources(
    file: &Arc<str>,
    resources: Vec<Resource>,
    mut diags: Diagnostics,
    version: u64,
    states: &LiveState,
) -> Result<Compiled, ConfigRejected> {
    let docs = Documents::sort(validate::resources(resources, &mut diags));
    let snapshot = build(file, &docs, version, states, &mut diags);
    match snapshot {
        Some(mut snapshot) if !diags.has_errors() => {
            snapshot.files = diags.files();
            Ok(Compiled {
                snapshot,
                diagnostics: diags,
            })
        }
        _ => Err(ConfigRejected(diags)),
    }
}

/// A compiled ingress gateway config and what the compile said.
pub struct CompiledGateway {
    /// What the gateway serves.
    pub snapshot: Arc<crate::model::gateway::GatewaySnapshot>,
    /// What its request path reads: the gateway as a workload (identity,
    /// telemetry, access log, the registry it routes to), with
    /// [`Snapshot::gateway`] holding its listeners, so a gateway's requests
    /// take exactly a sidecar's request path.
    pub proxy: Snapshot,
    /// Warnings (no errors: a config with errors is rejected).
    pub diagnostics: Diagnostics,
}

/// Compiles the text of an ingress gateway's config file named `file`:
/// one `IngressGateway` bootstrap, Istio `Gateway`s with the
/// VirtualServices bound to them, Kubernetes Gateway API `Gateway`s with
/// their routes, and the registry (ServiceEntry, DestinationRule) they
/// route to.
pub fn compile_gateway_text(
    file: &Arc<str>,
    text: &str,
    version: u64,
    states: &LiveState,
) -> Result<CompiledGateway, ConfigRejected> {
    let mut diags = Diagnostics::default();
    let resources = parse_documents(file, text, &mut diags);
    compile_gateway_resources(file, resources, diags, version, states)
}

/// Compiles a gateway's parsed resources (`diags` holds what parsing said).
fn compile_gateway_resources(
    file: &Arc<str>,
    resources: Vec<Resource>,
    mut diags: Diagnostics,
    version: u64,
    states: &LiveState,
) -> Result<CompiledGateway, ConfigRejected> {
    let docs = Documents::sort(validate::resources(resources, &mut diags));
    let built = gateway::build(file, &docs, version, states, &mut diags);
    if !docs.agents.is_empty() {
        for doc in &docs.agents {
            let msg = "an Agent bootstraps a sidecar; a gateway's file holds an IngressGateway";
            diags.error(&doc.location, None, msg);
        }
    }
    let Some((snapshot, registry)) = built.filter(|_| !diags.has_errors()) else {
        return Err(ConfigRejected(diags));
    };
    let snapshot = Arc::new(snapshot);
    let proxy = gateway_proxy(&docs, (&snapshot, &registry), version, states, &mut diags);
    match proxy {
        Some(mut proxy) if !diags.has_errors() => {
            proxy.files = diags.files();
            Ok(CompiledGateway {
                snapshot,
                proxy,
                diagnostics: diags,
            })
        }
        _ => Err(ConfigRejected(diags)),
    }
}

/// The gateway as the request path sees a workload: its IngressGateway
/// read as the Agent it would be (same identity, telemetry, access log,
/// admin, path normalization; no inbound application, no capture), with
/// the policies that select it compiled by the sidecar's steps, and the
/// gateway's clusters and listeners in place of a sidecar's registry and
/// routes. Its diagnostics join the gateway compile's.
fn gateway_proxy(
    docs: &Documents,
    (gateway, registry): (
        &Arc<crate::model::gateway::GatewaySnapshot>,
        &registry::Registry,
    ),
    version: u64,
    states: &LiveState,
    diags: &mut Diagnostics,
) -> Option<Snapshot> {
    let doc = docs.ingress_gateways.first()?;
    let spec = &doc.spec;
    let mut metadata = doc.metadata.clone();
    metadata.namespace = Some(gateway.identity.namespace.clone());
    let agent = Document {
        location: doc.location.clone(),
        api_version: doc.api_version.clone(),
        metadata,
        spec: crate::config::agent::AgentSpec {
            service: gateway.identity.service.clone(),
            service_account: spec.service_account.clone(),
            trust_domain: Some(gateway.identity.spiffe.trust_domain.clone()),
            identity: spec.identity.clone(),
            labels: spec.labels.clone(),
            inbound: crate::config::agent::InboundSpec::default(),
            outbound: crate::config::agent::OutboundSpec::default(),
            admin: spec.admin.clone(),
            capture: crate::config::agent::CaptureSpec::default(),
            outbound_traffic_policy: Default::default(),
            telemetry: spec.telemetry.clone(),
            access_log: spec.access_log.clone(),
            concurrency: spec.concurrency,
            num_trusted_proxies: spec.num_trusted_proxies,
            drain_duration: spec.drain_duration,
            downstream: spec.downstream.clone(),
            overload: spec.overload.clone(),
            path_normalization: spec.path_normalization.clone(),
        },
    };
    let mesh = mesh::compile(&docs.mesh_configs, docs.mesh_config_rejected, diags);
    let mut boot = bootstrap::compile(&agent, &mesh, diags)?;
    // Istio's gateway connection manager: SANITIZE_SET unless the
    // gateway's ProxyConfig names a mode (`buildGatewayConnectionManager`).
    let xfcc_mode = spec.forward_client_cert_details.and_then(|d| d.mode());
    boot.bootstrap.xfcc = crate::tls::xfcc::XfccPolicy::gateway(
        xfcc_mode.unwrap_or(crate::tls::xfcc::ForwardClientCert::SanitizeSet),
    );
    let namespace = boot.identity.namespace.clone();
    let inbound = registry::inbound_cluster(&boot, states);
    let policies = workload_policies(
        docs,
        &agent,
        &mut boot,
        (&mesh, registry),
        &namespace,
        states,
        diags,
    );
    let routes = crate::model::route::RouteTable::default();
    let clusters = gateway.clusters.clone();
    let mut decided_headers = decided::decided_headers(
        &routes,
        &policies.authorization,
        &policies.rate_limits,
        &clusters,
    );
    for port in &gateway.listeners.ports {
        for chain in &port.chains {
            if let crate::model::gateway::ChainAction::Http(table) = &chain.action {
                let names = decided::decided_headers(table, &Default::default(), &[], &[]);
                for name in names {
                    if !decided_headers.contains(&name) {
                        decided_headers.push(name);
                    }
                }
            }
        }
    }
    let capture = capture::uncaptured(&boot.listeners);
    let dump = dump(docs, version, diags);
    let routing = Routing {
        routes,
        inbound,
        tcp_routes: Vec::new(),
        tcp_rules: Default::default(),
        clusters,
        decided_headers,
        capture,
        gateway: Some(gateway.clone()),
    };
    Some(snapshot(version, boot, mesh, policies, routing, dump))
}

/// What `tracemesh validate` found in one file.
pub struct Checked {
    /// Every error and warning.
    pub diagnostics: Diagnostics,
    /// The file holds an `Agent` document, so it was compiled as an agent's
    /// config (with the agent's context), not only checked resource by resource.
    pub agent: bool,
    /// The file holds an `IngressGateway` document, so it was compiled as
    /// `tracemesh gateway --config` would load it.
    pub gateway: bool,
}

/// Checks the text of a file as `tracemesh validate` does: a file with an
/// `Agent` document is compiled exactly as `tracemesh agent --config` would
/// load it, a file with an `IngressGateway` document as the gateway would; any other file is checked resource by resource with Istio's
/// rules, as `istioctl validate` does, with the same warnings for fields
/// the agent accepts but does not enforce.
pub fn check_text(file: &Arc<str>, text: &str) -> Checked {
    let mut diags = Diagnostics::default();
    let resources = parse_documents(file, text, &mut diags);
    // Compiled from the resources read here: the text is parsed once.
    if resources.iter().any(|r| matches!(r, Resource::Agent(_))) {
        let diagnostics = match compile_resources(file, resources, diags, 1, &LiveState::default())
        {
            Ok(compiled) => compiled.diagnostics,
            Err(ConfigRejected(diags)) => diags,
        };
        return Checked {
            diagnostics,
            agent: true,
            gateway: false,
        };
    }
    if resources
        .iter()
        .any(|r| matches!(r, Resource::IngressGateway(_)))
    {
        let compiled = compile_gateway_resources(file, resources, diags, 1, &LiveState::default());
        let diagnostics = match compiled {
            Ok(compiled) => compiled.diagnostics,
            Err(ConfigRejected(diags)) => diags,
        };
        return Checked {
            diagnostics,
            agent: false,
            gateway: true,
        };
    }
    let docs = Documents::sort(validate::resources(resources, &mut diags));
    unenforced::warn_all(&docs, &mut diags);
    Checked {
        diagnostics: diags,
        agent: false,
        gateway: false,
    }
}

fn build(
    file: &Arc<str>,
    docs: &Documents,
    version: u64,
    states: &LiveState,
    diags: &mut Diagnostics,
) -> Option<Snapshot> {
    let agent = bootstrap::single_agent(file, &docs.agents, diags)?;
    let mesh = mesh::compile(&docs.mesh_configs, docs.mesh_config_rejected, diags);
    let boot = bootstrap::compile(agent, &mesh, diags);
    let namespace = boot
        .as_ref()
        .map_or("default", |b| b.identity.namespace.as_str())
        .to_owned();
    let has_identity = boot.as_ref().is_some_and(|b| b.has_identity);
    let sidecar = sidecar::applying(
        &docs.sidecars,
        &agent.spec.labels,
        &namespace,
        &mesh.mesh.root_namespace,
        diags,
    );
    let scope = destination_rules::RuleScope {
        default_namespace: &namespace,
        namespace: &namespace,
        root_namespace: &mesh.mesh.root_namespace,
        labels: &agent.spec.labels,
    };
    let mut registry = registry::Registry::build(
        &docs.service_entries,
        &docs.workload_entries,
        &docs.destination_rules,
        scope,
        registry::Importer::Sidecar {
            egress: sidecar.egress.as_ref(),
            captures: agent.spec.capture.mode.as_deref() == Some("REDIRECT"),
        },
        (has_identity, &docs.peer_authentications),
        // The workload's own trust domain (its Agent's, else the mesh
        // config's) and the mesh's aliases: the identities its mTLS peers
        // are checked in.
        &boot
            .as_ref()
            .map_or_else(|| mesh.trust_domains(), |b| (*b.trust_domains).clone()),
        states,
        diags,
    );
    if let (Some(scope), Some(name)) = (&sidecar.egress, &sidecar.name) {
        registry.restrict(scope, name);
    }
    let virtual_services = imported_virtual_services(docs, &sidecar, &namespace, diags);
    let api_routes = gateway_api::routes(&docs.http_routes, &docs.grpc_routes, &namespace);
    let mesh_routes = routes::MeshInput {
        virtual_services: &virtual_services,
        routes: &api_routes,
        service_entries: &docs.service_entries,
    };
    let routes = routes::build(&mesh_routes, &registry, boot.as_ref(), &namespace, diags);
    skipped_by_sidecars(docs, diags);
    unenforced::warn_all(docs, diags);
    let mut boot = boot?;
    let inbound = registry::inbound_cluster(&boot, states);
    let tcp_routes = registry.tcp_routes(agent, &namespace, diags);
    let source = routes::Source {
        labels: &boot.identity.labels,
        namespace: &boot.identity.namespace,
    };
    let tcp_rules = tcp_rules::build(
        &virtual_services,
        &registry,
        Some(source),
        &namespace,
        diags,
    );
    let policies = workload_policies(
        docs,
        agent,
        &mut boot,
        (&mesh, &registry),
        &namespace,
        states,
        diags,
    );
    let capture = capture::compile(
        &capture::CaptureInput {
            agent,
            listeners: &boot.listeners,
            service: &boot.identity.service,
            entries: &docs.service_entries,
            registry: &registry,
            sidecar: &sidecar,
            mesh_mode: mesh.outbound_traffic_policy,
        },
        diags,
    );
    let dump = dump(docs, version, diags);
    let clusters = registry.clusters();
    let decided_headers = decided::decided_headers(
        &routes,
        &policies.authorization,
        &policies.rate_limits,
        &clusters,
    );
    let routing = Routing {
        routes,
        inbound,
        tcp_routes,
        tcp_rules,
        clusters,
        decided_headers,
        capture,
        gateway: None,
    };
    Some(snapshot(version, boot, mesh, policies, routing, dump))
}

/// The VirtualServices the applying Sidecar's egress hosts import, as
/// Istio's `SelectVirtualServices` picks them: one whose namespace an
/// egress host names (or `*/`) and whose hosts overlap that egress host's.
/// All of them without a Sidecar egress. Delegates, which have no hosts,
/// stay: they reach the workload through the roots that name them. One
/// left out that would route this workload's traffic (bound to `mesh`) is
/// warned about.
fn imported_virtual_services<'a>(
    docs: &'a Documents,
    sidecar: &sidecar::SidecarScope,
    namespace: &str,
    diags: &mut Diagnostics,
) -> std::borrow::Cow<'a, [Document<VirtualServiceSpec>]> {
    let (Some(scope), Some(name)) = (&sidecar.egress, &sidecar.name) else {
        return std::borrow::Cow::Borrowed(&docs.virtual_services);
    };
    let mut imported = Vec::with_capacity(docs.virtual_services.len());
    for doc in &docs.virtual_services {
        let vs_namespace = doc.metadata.namespace.as_deref().unwrap_or(namespace);
        let hosts: Vec<String> = (doc.spec.hosts.iter())
            .map(|h| crate::host::resolve_short_name(h, vs_namespace))
            .collect();
        if hosts.is_empty() || scope.imports(vs_namespace, &hosts) {
            imported.push(doc.clone());
            continue;
        }
        let bound_to_mesh =
            doc.spec.gateways.is_empty() || doc.spec.gateways.iter().any(|g| g == routes::MESH);
        if bound_to_mesh {
            let msg =
                format!("outside the egress hosts of Sidecar {name}: not applied to this workload");
            diags.warn(&doc.location, Some("spec.hosts".into()), msg);
        }
    }
    std::borrow::Cow::Owned(imported)
}

/// What the resources that select a workload make of it, compiled alike
/// for a sidecar and a gateway: access control (AuthorizationPolicy,
/// RequestAuthentication), the Telemetry that applies (and the span
/// exporter it picks, set on `boot`), rate limits and inbound mTLS.
struct WorkloadPolicies {
    authorization: crate::model::authz::Authorization,
    authn: crate::model::authn::Authenticator,
    telemetry: crate::model::telemetry::TelemetryPolicy,
    rate_limits: Vec<Arc<crate::model::rate_limit::RateLimiter>>,
    inbound_mtls: crate::model::InboundMtls,
}

fn workload_policies(
    docs: &Documents,
    agent: &Document<crate::config::agent::AgentSpec>,
    boot: &mut bootstrap::Agent,
    (mesh, registry): (&mesh::MeshDefaults, &registry::Registry),
    namespace: &str,
    states: &LiveState,
    diags: &mut Diagnostics,
) -> WorkloadPolicies {
    let authorization = access::authorization(
        &docs.authorization_policies,
        boot,
        (&mesh.mesh, registry, states),
        namespace,
        diags,
    );
    let telemetry = telemetry::compile(&docs.telemetries, boot, &mesh.mesh, diags);
    telemetry::resolve_exporter(boot, &telemetry, &agent.location, diags);
    let authn = authn::authenticator(&docs.request_authentications, boot, states, diags);
    let rate_limits =
        access::rate_limits(&docs.rate_limit_policies, boot, namespace, states, diags);
    let inbound_mtls = mtls::inbound_mtls(&docs.peer_authentications, boot, diags);
    WorkloadPolicies {
        authorization,
        authn,
        telemetry,
        rate_limits,
        inbound_mtls,
    }
}

/// Where a workload's requests go: a sidecar's registry and routes, or a
/// gateway's clusters and listeners.
struct Routing {
    routes: crate::model::route::RouteTable,
    inbound: Arc<crate::model::cluster::Cluster>,
    tcp_routes: Vec<Arc<crate::model::cluster::Cluster>>,
    tcp_rules: crate::model::tcp_route::TcpRoutes,
    clusters: Vec<Arc<crate::model::cluster::Cluster>>,
    decided_headers: Vec<http::HeaderName>,
    capture: crate::model::capture::Capture,
    gateway: Option<Arc<crate::model::gateway::GatewaySnapshot>>,
}

/// The snapshot of one workload, from its compiled parts.
fn snapshot(
    version: u64,
    boot: bootstrap::Agent,
    mesh: mesh::MeshDefaults,
    policies: WorkloadPolicies,
    routing: Routing,
    dump: serde_json::Value,
) -> Snapshot {
    let known_peers = crate::model::peer::KnownPeers::new(
        routing
            .clusters
            .iter()
            .flat_map(|c| c.endpoints.iter().map(|e| &e.peer)),
    );
    Snapshot {
        version,
        bootstrap: boot.bootstrap,
        listeners: boot.listeners,
        identity: boot.identity,
        trust_domains: boot.trust_domains,
        routes: routing.routes,
        inbound: routing.inbound,
        tcp_routes: routing.tcp_routes,
        tcp_rules: routing.tcp_rules,
        clusters: routing.clusters,
        access: Arc::new(crate::model::access::AccessControl {
            authn: policies.authn,
            authz: policies.authorization.clone(),
        }),
        known_peers,
        tcp_authorization: policies.authorization.for_tcp(),
        authorization: policies.authorization,
        mesh: Arc::new(mesh.mesh),
        telemetry: Arc::new(policies.telemetry),
        rate_limits: policies.rate_limits,
        inbound_mtls: policies.inbound_mtls,
        path_normalization: boot.path_normalization,
        decided_headers: routing.decided_headers,
        capture: routing.capture,
        dump,
        files: Vec::new(),
        gateway: routing.gateway,
    }
}

/// Where a resource holds credentials, as JSON pointers (`*`: every key of
/// an object): the CA bootstrap token and the values of the headers sent
/// with span exports (API keys, bearer tokens). `/config_dump` shows
/// `<redacted>` there, as Envoy's config dump hides secrets.
const SECRETS: &[&str] = &["/spec/identity/ca/token", "/spec/telemetry/otlp/headers/*"];

/// Replaces credentials in `resource` with `<redacted>`: the places named
/// in [`SECRETS`], and the password of any URL that carries one
/// (`https://user:password@host`).
fn redact(resource: &mut serde_json::Value) {
    const REDACTED: &str = "<redacted>";
    for pointer in SECRETS {
        match pointer.strip_suffix("/*") {
            Some(object) => {
                if let Some(serde_json::Value::Object(map)) = resource.pointer_mut(object) {
                    for value in map.values_mut() {
                        *value = REDACTED.into();
                    }
                }
            }
            None => {
                if let Some(value) = resource.pointer_mut(pointer) {
                    *value = REDACTED.into();
                }
            }
        }
    }
    redact_url_passwords(resource);
}

/// A mesh config as the dump shows it: where it was written (a ConfigMap's
/// `data.mesh`, an IstioOperator's `spec.meshConfig`), parsed, with the
/// extension providers' credentials redacted.
fn mesh_entry(doc: &Document<crate::config::mesh::MeshConfig>) -> serde_json::Value {
    let mut mesh = serde_json::to_value(&doc.spec).unwrap_or_default();
    redact_providers(&mut mesh);
    let (kind, body) = match crate::config::mesh::mesh_field(&doc.api_version) {
        "data.mesh" => ("ConfigMap", serde_json::json!({"data": {"mesh": mesh}})),
        _ => (
            "IstioOperator",
            serde_json::json!({"spec": {"meshConfig": mesh}}),
        ),
    };
    let mut entry = serde_json::json!({
        "apiVersion": doc.api_version,
        "kind": kind,
        "metadata": doc.metadata,
    });
    if let (Some(entry), serde_json::Value::Object(body)) = (entry.as_object_mut(), body) {
        entry.extend(body);
    }
    redact_url_passwords(&mut entry);
    entry
}

/// Where an extension provider holds credentials: the values of the fixed
/// headers an ext_authz check carries (`includeAdditionalHeadersInCheck`,
/// often a static `authorization`), of an OpenTelemetry exporter's HTTP
/// `headers` and gRPC `initialMetadata`, and Lightstep's `accessToken`.
fn redact_providers(mesh: &mut serde_json::Value) {
    const REDACTED: &str = "<redacted>";
    let Some(serde_json::Value::Array(providers)) = mesh.get_mut("extensionProviders") else {
        return;
    };
    for provider in providers {
        if let Some(serde_json::Value::Object(headers)) =
            provider.pointer_mut("/envoyExtAuthzHttp/includeAdditionalHeadersInCheck")
        {
            headers.values_mut().for_each(|v| *v = REDACTED.into());
        }
        for list in [
            "/opentelemetry/http/headers",
            "/opentelemetry/grpc/initialMetadata",
        ] {
            if let Some(serde_json::Value::Array(pairs)) = provider.pointer_mut(list) {
                for value in pairs.iter_mut().filter_map(|p| p.get_mut("value")) {
                    *value = REDACTED.into();
                }
            }
        }
        if let Some(token) = provider.pointer_mut("/lightstep/accessToken") {
            *token = REDACTED.into();
        }
    }
}

fn redact_url_passwords(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) => {
            // scheme://user:password@host… → scheme://user:<redacted>@host…
            if let Some((scheme, rest)) = text.split_once("://")
                && let Some((userinfo, host)) = rest.split_once('@')
                && !userinfo.contains('/')
                && let Some((user, _password)) = userinfo.split_once(':')
            {
                *text = format!("{scheme}://{user}:<redacted>@{host}");
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_url_passwords),
        serde_json::Value::Object(map) => map.values_mut().for_each(redact_url_passwords),
        _ => {}
    }
}

/// Gateway resources in a sidecar's file configure gateways
/// (`tracemesh gateway`); a sidecar says so once per resource.
fn skipped_by_sidecars(docs: &Documents, diags: &mut Diagnostics) {
    let msg = "configures ingress gateways (`tracemesh gateway`); sidecars skip it";
    for loc in docs
        .gateways
        .iter()
        .map(|d| &d.location)
        .chain(docs.kubernetes_gateways.iter().map(|d| &d.location))
        .chain(docs.gateway_classes.iter().map(|d| &d.location))
        .chain(docs.ingress_gateways.iter().map(|d| &d.location))
    {
        diags.warn(loc, None, msg);
    }
}

/// The effective config as JSON: every resource as written, plus warnings.
fn dump(docs: &Documents, version: u64, diags: &Diagnostics) -> serde_json::Value {
    fn entries<S: serde::Serialize>(kind: &str, list: &[Document<S>]) -> Vec<serde_json::Value> {
        list.iter()
            .map(|d| {
                serde_json::json!({
                    "apiVersion": d.api_version,
                    "kind": kind,
                    "metadata": d.metadata,
                    "spec": d.spec,
                })
            })
            .collect()
    }
    let mut resources = Vec::new();
    resources.extend(entries("Agent", &docs.agents));
    resources.extend(entries("ServiceEntry", &docs.service_entries));
    resources.extend(entries("WorkloadEntry", &docs.workload_entries));
    resources.extend(entries("VirtualService", &docs.virtual_services));
    resources.extend(entries("DestinationRule", &docs.destination_rules));
    resources.extend(entries("AuthorizationPolicy", &docs.authorization_policies));
    resources.extend(entries("PeerAuthentication", &docs.peer_authentications));
    resources.extend(entries("RateLimitPolicy", &docs.rate_limit_policies));
    resources.extend(entries("Sidecar", &docs.sidecars));
    resources.extend(entries(
        "RequestAuthentication",
        &docs.request_authentications,
    ));
    resources.extend(entries("Telemetry", &docs.telemetries));
    resources.extend(entries("IngressGateway", &docs.ingress_gateways));
    resources.extend(entries("Gateway", &docs.gateways));
    resources.extend(entries("GatewayClass", &docs.gateway_classes));
    resources.extend(entries("Gateway", &docs.kubernetes_gateways));
    resources.extend(entries("HTTPRoute", &docs.http_routes));
    resources.extend(entries("GRPCRoute", &docs.grpc_routes));
    resources.extend(entries("ReferenceGrant", &docs.reference_grants));
    for resource in &mut resources {
        redact(resource);
    }
    resources.extend(docs.mesh_configs.iter().map(mesh_entry));
    let warnings: Vec<String> = diags.warnings().map(ToString::to_string).collect();
    serde_json::json!({
        "version": version,
        "resources": resources,
        "warnings": warnings,
    })
}
