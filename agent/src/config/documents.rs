//! Splits a multi-document file, reads each document as Kubernetes does
//! (YAML or JSON; a `List` holds several resources) and turns each resource
//! into a typed one, or a diagnostic naming the document, line and field.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;

use super::agent::AgentSpec;
use super::destination_rule::DestinationRuleSpec;
use super::diagnostics::{Diagnostics, Location};
use super::envoy_filter::{EnvoyFilterSpec, ProxyConfigSpec};
use super::faults;
use super::gateway::{GatewaySpec, SidecarSpec};
use super::gateway_api::{
    self, GatewayClassSpec, GrpcRouteSpec, HttpRouteSpec, ReferenceGrantSpec,
};
use super::ingress_gateway::IngressGatewaySpec;
use super::mesh::{MeshConfig, read_mesh_config};
use super::meta::ObjectMeta;
use super::rate_limit::RateLimitPolicySpec;
use super::security::{AuthorizationPolicySpec, PeerAuthenticationSpec, RequestAuthenticationSpec};
use super::service_entry::{ServiceEntrySpec, WorkloadEntry};
use super::source::{Tree, read_document};
use super::telemetry::TelemetrySpec;
use super::virtual_service::VirtualServiceSpec;
use super::workload::WorkloadGroupSpec;

/// One typed document, with where it came from.
#[derive(Debug, Clone)]
pub struct Document<S> {
    /// File, document index, line and `Kind ns/name`.
    pub location: Location,
    /// The API version it was written in.
    pub api_version: String,
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its spec, as written.
    pub spec: S,
}

/// A resource of a kind tracemesh knows. Parsed once per load, so the size
/// difference between variants costs nothing worth boxing for.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Resource {
    /// The bootstrap.
    Agent(Document<AgentSpec>),
    /// A registry entry.
    ServiceEntry(Document<ServiceEntrySpec>),
    /// A workload outside Kubernetes, an endpoint of ServiceEntries that select it.
    WorkloadEntry(Document<WorkloadEntry>),
    /// Routing rules.
    VirtualService(Document<VirtualServiceSpec>),
    /// Destination policies.
    DestinationRule(Document<DestinationRuleSpec>),
    /// Access control.
    AuthorizationPolicy(Document<AuthorizationPolicySpec>),
    /// mTLS mode.
    PeerAuthentication(Document<PeerAuthenticationSpec>),
    /// Rate limits.
    RateLimitPolicy(Document<RateLimitPolicySpec>),
    /// Which services a sidecar loads, and what happens outside them.
    Sidecar(Document<SidecarSpec>),
    /// Istio's mesh config: the `istio` ConfigMap's `mesh` key, or an
    /// `IstioOperator`'s `spec.meshConfig`.
    MeshConfig(Document<MeshConfig>),
    /// A mesh config refused for the errors already recorded: its providers
    /// are unknown, so references to them are not judged (they would only
    /// repeat the mesh config's errors as false "no such provider" ones).
    RejectedMeshConfig(Location),
    /// Tracing, metrics and access-log settings.
    Telemetry(Document<TelemetrySpec>),
    /// JWT authentication.
    RequestAuthentication(Document<RequestAuthenticationSpec>),
    /// The ingress gateway's bootstrap.
    IngressGateway(Document<IngressGatewaySpec>),
    /// An Istio ingress or egress gateway's servers.
    Gateway(Document<GatewaySpec>),
    /// A Kubernetes Gateway API class.
    GatewayClass(Document<GatewayClassSpec>),
    /// A Kubernetes Gateway API `Gateway`.
    KubernetesGateway(Document<gateway_api::GatewaySpec>),
    /// A Kubernetes Gateway API `HTTPRoute`.
    HttpRoute(Document<HttpRouteSpec>),
    /// A Kubernetes Gateway API `GRPCRoute`.
    GrpcRoute(Document<GrpcRouteSpec>),
    /// A Kubernetes Gateway API `ReferenceGrant`.
    ReferenceGrant(Document<ReferenceGrantSpec>),
    /// A Kubernetes `Namespace`: its labels, for Gateway listeners'
    /// `allowedRoutes.namespaces.selector`.
    Namespace(Document<()>),
    /// A kind the agent validates but does not use yet.
    Unused(Unused),
}

/// Istio kinds whose schema and rules are checked but which the agent does
/// not apply yet; they are skipped with a warning.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Unused {
    /// A template for WorkloadEntries.
    WorkloadGroup(Document<WorkloadGroupSpec>),
    /// Envoy configuration patches.
    EnvoyFilter(Document<EnvoyFilterSpec>),
    /// Proxy settings.
    ProxyConfig(Document<ProxyConfigSpec>),
}

impl Unused {
    /// Where the resource is.
    pub fn location(&self) -> &Location {
        match self {
            Unused::WorkloadGroup(d) => &d.location,
            Unused::EnvoyFilter(d) => &d.location,
            Unused::ProxyConfig(d) => &d.location,
        }
    }
}

/// The on-disk shape of every resource: unknown top-level fields are errors,
/// `status` (present in `kubectl get -o yaml` output) is ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope<S> {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default = "Option::default")]
    spec: Option<S>,
    #[serde(default, rename = "status")]
    _status: Option<IgnoredAny>,
}

/// Any other Kubernetes object: only what every object has is checked.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    #[serde(default)]
    metadata: ObjectMeta,
}

/// The kinds of one API group and the versions each is served in.
struct Group {
    name: &'static str,
    kinds: &'static [(&'static str, &'static [&'static str])],
}

const NETWORKING: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const SECURITY: &[&str] = &["v1", "v1beta1"];
const GATEWAY_API: &[&str] = &["v1", "v1beta1"];
const GROUPS: &[Group] = &[
    Group {
        name: "tracemesh.io",
        kinds: &[
            ("Agent", &["v1"]),
            ("IngressGateway", &["v1"]),
            ("RateLimitPolicy", &["v1"]),
        ],
    },
    Group {
        name: gateway_api::GROUP,
        kinds: &[
            ("GatewayClass", GATEWAY_API),
            ("Gateway", GATEWAY_API),
            ("HTTPRoute", GATEWAY_API),
            ("GRPCRoute", &["v1"]),
            ("ReferenceGrant", &["v1", "v1beta1"]),
            // Kinds tracemesh does not use: their metadata is checked and
            // they are skipped with a warning.
            ("TCPRoute", &["v1", "v1alpha2"]),
            ("TLSRoute", &["v1", "v1alpha2", "v1alpha3"]),
            ("UDPRoute", &["v1", "v1alpha2"]),
            ("BackendTLSPolicy", &["v1", "v1alpha3"]),
            ("ListenerSet", &["v1"]),
        ],
    },
    Group {
        name: "networking.istio.io",
        kinds: &[
            ("VirtualService", NETWORKING),
            ("DestinationRule", NETWORKING),
            ("ServiceEntry", NETWORKING),
            ("WorkloadEntry", NETWORKING),
            ("Gateway", NETWORKING),
            ("Sidecar", NETWORKING),
            ("WorkloadGroup", NETWORKING),
            ("EnvoyFilter", &["v1alpha3"]),
            ("ProxyConfig", &["v1beta1"]),
        ],
    },
    Group {
        name: "security.istio.io",
        kinds: &[
            ("AuthorizationPolicy", SECURITY),
            ("PeerAuthentication", SECURITY),
            ("RequestAuthentication", SECURITY),
        ],
    },
    Group {
        name: "telemetry.istio.io",
        kinds: &[("Telemetry", &["v1", "v1alpha1"])],
    },
];

/// Parses every document of `text`; problems go to `diags`. Runs on a
/// thread of its own with room for the YAML parser's recursion.
pub fn parse_documents(file: &Arc<str>, text: &str, diags: &mut Diagnostics) -> Vec<Resource> {
    let read = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("config-reader".into())
            .stack_size(super::source::READER_STACK)
            .spawn_scoped(scope, || {
                let mut found = Diagnostics::default();
                let resources = parse_all(file, text, &mut found);
                (resources, found)
            })
            .map(|reader| reader.join())
    });
    match read {
        Ok(Ok((resources, found))) => {
            diags.extend(found);
            resources
        }
        Ok(Err(_)) | Err(_) => {
            let msg = "the config reader failed (no thread could be started, or it panicked)";
            diags.error(&Location::file(file), None, msg);
            Vec::new()
        }
    }
}

fn parse_all(file: &Arc<str>, text: &str, diags: &mut Diagnostics) -> Vec<Resource> {
    let mut resources = Vec::new();
    for (index, segment) in split_documents(text).into_iter().enumerate() {
        let mut location = Location::file(file);
        location.document = Some(index + 1);
        location.line = Some(segment.first_line);
        let tree = match read_document(segment.text, segment.first_line) {
            Ok(Some(tree)) => tree,
            Ok(None) => continue,
            Err(err) => {
                location.line = Some(err.line);
                diags.error(&location, None, err.message);
                continue;
            }
        };
        let Tree { value, lines } = tree;
        match list_items(value) {
            Ok(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    let mut location = location.clone();
                    location.item = Some(i);
                    location.lines = lines.nested(&format!("items[{i}]"));
                    location.line = location.lines.of(None);
                    resources.extend(parse_one(item, location, diags));
                }
            }
            Err(value) => {
                location.lines = lines;
                resources.extend(parse_one(value, location, diags));
            }
        }
    }
    resources
}

/// The `items` of a Kubernetes list (`kind: List`, `VirtualServiceList`,
/// … as `kubectl get -o yaml` prints), or the value back when it is not one.
fn list_items(value: Value) -> Result<Vec<Value>, Value> {
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
        && value.get("items").is_some_and(Value::is_array);
    if !is_list {
        return Err(value);
    }
    match value {
        Value::Object(mut map) => match map.remove("items") {
            Some(Value::Array(items)) => Ok(items),
            _ => Ok(Vec::new()),
        },
        other => Err(other),
    }
}

fn parse_one(value: Value, mut location: Location, diags: &mut Diagnostics) -> Option<Resource> {
    if !value.is_object() {
        diags.error(
            &location,
            None,
            "a resource must be a mapping (apiVersion, kind, metadata, spec)",
        );
        return None;
    }
    let api_version = string_field(&value, "apiVersion");
    let kind = string_field(&value, "kind");
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        diags.error(
            &location,
            None,
            "a document needs both `apiVersion` and `kind`",
        );
        return None;
    };
    location.resource = Some(describe(&value, &kind));
    if let Some(mesh) = mesh_config(&value, &api_version, &kind) {
        return mesh_document(mesh, &value, &location, &api_version, diags);
    }
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("", api_version.as_str()));
    if group.is_empty() && kind == "Namespace" {
        // Its labels select the namespaces Gateway listeners admit routes from.
        let metadata = typed_object(value, &location, diags)?;
        return Some(Resource::Namespace(Document {
            location,
            api_version,
            metadata,
            spec: (),
        }));
    }
    let Some(known) = GROUPS.iter().find(|g| g.name == group) else {
        // A Kubernetes object or another project's resource: its metadata is
        // checked, the rest is not ours to judge.
        let at = diags.len();
        typed_object(value, &location, diags);
        if !diags.errors_since(at) {
            let msg = format!("{api_version} {kind} is not used by the agent; skipped");
            diags.warn(&location, None, msg);
        }
        return None;
    };
    let Some((_, versions)) = known.kinds.iter().find(|(k, _)| *k == kind) else {
        let kinds: Vec<&str> = known.kinds.iter().map(|(k, _)| *k).collect();
        let msg = format!("{group} has no kind {kind} (it has {})", kinds.join(", "));
        diags.error(&location, Some("kind".to_owned()), msg);
        return None;
    };
    if !versions.contains(&version) {
        let msg = format!(
            "{kind} is not served in version {version} of {group} (known: {})",
            versions.join(", ")
        );
        diags.error(&location, Some("apiVersion".to_owned()), msg);
        return None;
    }
    let (loc, api) = (&location, api_version.as_str());
    if group == gateway_api::GROUP {
        return gateway_api_resource(value, &kind, loc, api, diags);
    }
    Some(match kind.as_str() {
        "Agent" => Resource::Agent(typed_with(value, loc, api, diags, None)?),
        "IngressGateway" => Resource::IngressGateway(typed_with(value, loc, api, diags, None)?),
        "RateLimitPolicy" => Resource::RateLimitPolicy(typed(value, loc, api, diags)?),
        // Istio's CRDs require `spec` for these three.
        "ServiceEntry" => Resource::ServiceEntry(typed_with(value, loc, api, diags, None)?),
        "WorkloadEntry" => Resource::WorkloadEntry(typed_with(value, loc, api, diags, None)?),
        "VirtualService" => Resource::VirtualService(typed(value, loc, api, diags)?),
        "DestinationRule" => Resource::DestinationRule(typed(value, loc, api, diags)?),
        "AuthorizationPolicy" => Resource::AuthorizationPolicy(typed(value, loc, api, diags)?),
        "PeerAuthentication" => Resource::PeerAuthentication(typed(value, loc, api, diags)?),
        "Gateway" => Resource::Gateway(typed(value, loc, api, diags)?),
        "Sidecar" => Resource::Sidecar(typed(value, loc, api, diags)?),
        "WorkloadGroup" => Resource::Unused(Unused::WorkloadGroup(typed_with(
            value, loc, api, diags, None,
        )?)),
        "EnvoyFilter" => Resource::Unused(Unused::EnvoyFilter(typed(value, loc, api, diags)?)),
        "ProxyConfig" => Resource::Unused(Unused::ProxyConfig(typed(value, loc, api, diags)?)),
        "RequestAuthentication" => Resource::RequestAuthentication(typed(value, loc, api, diags)?),
        _ => Resource::Telemetry(typed(value, loc, api, diags)?),
    })
}

/// Where a document holds a mesh config: the field path of the object or
/// string, and whether it is a YAML string (a ConfigMap's `data.mesh`).
struct MeshSource<'a> {
    field: &'static str,
    raw: Option<&'a Value>,
    text: bool,
}

/// The mesh config a document carries: the `istio` ConfigMap (or a
/// revision's `istio-<rev>`) with a `mesh` key, or an IstioOperator.
fn mesh_config<'a>(value: &'a Value, api_version: &str, kind: &str) -> Option<MeshSource<'a>> {
    match (api_version, kind) {
        ("v1", "ConfigMap") => {
            let name = value.pointer("/metadata/name").and_then(Value::as_str)?;
            let named = name == "istio" || name.starts_with("istio-");
            let mesh = value.pointer("/data/mesh")?;
            named.then_some(MeshSource {
                field: "data.mesh",
                raw: Some(mesh),
                text: true,
            })
        }
        (api, "IstioOperator") if api.starts_with("install.istio.io/") => Some(MeshSource {
            field: "spec.meshConfig",
            raw: value.pointer("/spec/meshConfig"),
            text: false,
        }),
        _ => None,
    }
}

/// Reads a ConfigMap's or IstioOperator's mesh config; every other field of
/// the carrier is not the agent's to judge (its metadata is checked).
fn mesh_document(
    source: MeshSource<'_>,
    value: &Value,
    location: &Location,
    api_version: &str,
    diags: &mut Diagnostics,
) -> Option<Resource> {
    let metadata: ObjectMeta = match value.get("metadata").cloned() {
        None => ObjectMeta::default(),
        Some(meta) => match serde_path_to_error::deserialize(meta) {
            Ok(meta) => meta,
            Err(err) => {
                let (field, message) = faults::serde_error(err);
                let field = field.map(|f| format!("metadata.{f}"));
                diags.error(location, field, message);
                return Some(Resource::RejectedMeshConfig(location.clone()));
            }
        },
    };
    let field = source.field;
    // A `mesh: |` block is read from its first line in the file, so its
    // fields' findings point at their own lines; any other string from 1.
    let block_start = location.lines.block_start(field);
    let mut location = Cow::Borrowed(location);
    let object = match (source.raw, source.text) {
        (None, _) => Value::Null,
        (Some(Value::String(text)), true) => match read_document(text, block_start.unwrap_or(1)) {
            Ok(Some(tree)) => {
                if block_start.is_some() {
                    location.to_mut().lines = location.lines.with_inner(field, &tree.lines);
                }
                tree.value
            }
            Ok(None) => Value::Null,
            Err(err) => {
                let msg = match block_start {
                    Some(_) => format!("the mesh config is not YAML: {}", err.message),
                    None => format!(
                        "the mesh config is not YAML (its line {}): {}",
                        err.line, err.message
                    ),
                };
                diags.error(&location, Some(field.to_owned()), msg);
                return Some(Resource::RejectedMeshConfig(location.into_owned()));
            }
        },
        (Some(_), true) => {
            diags.error(
                &location,
                Some(field.to_owned()),
                "`mesh` must be a string holding YAML",
            );
            return Some(Resource::RejectedMeshConfig(location.into_owned()));
        }
        (Some(object), false) => object.clone(),
    };
    let read = read_mesh_config(object);
    for (path, message) in &read.errors {
        let at = if path.is_empty() {
            field.to_owned()
        } else {
            format!("{field}.{path}")
        };
        diags.error(&location, Some(at), message.clone());
    }
    if !read.unused.is_empty() {
        let msg = format!(
            "MeshConfig fields not used by the agent: {}",
            read.unused.join(", ")
        );
        diags.warn(&location, Some(field.to_owned()), msg);
    }
    let Some(config) = read.config.filter(|_| read.errors.is_empty()) else {
        return Some(Resource::RejectedMeshConfig(location.into_owned()));
    };
    Some(Resource::MeshConfig(Document {
        location: location.into_owned(),
        api_version: api_version.to_owned(),
        metadata,
        spec: config,
    }))
}

/// A resource whose `spec` may be left out (Kubernetes stores it as empty).
fn typed<S: DeserializeOwned + Default>(
    value: Value,
    location: &Location,
    api_version: &str,
    diags: &mut Diagnostics,
) -> Option<Document<S>> {
    typed_with(value, location, api_version, diags, Some(S::default))
}

fn typed_with<S: DeserializeOwned>(
    value: Value,
    location: &Location,
    api_version: &str,
    diags: &mut Diagnostics,
    missing: Option<fn() -> S>,
) -> Option<Document<S>> {
    match faults::deserialize::<Envelope<S>>(value) {
        Ok(envelope) => {
            let Some(spec) = envelope.spec.or_else(|| missing.map(|f| f())) else {
                diags.error(location, Some("spec".to_owned()), "`spec` is required");
                return None;
            };
            Some(Document {
                location: location.clone(),
                api_version: api_version.to_owned(),
                metadata: envelope.metadata,
                spec,
            })
        }
        Err(found) => {
            for (field, message) in found {
                diags.error(location, field, message);
            }
            None
        }
    }
}

fn typed_object(value: Value, location: &Location, diags: &mut Diagnostics) -> Option<ObjectMeta> {
    match serde_path_to_error::deserialize::<_, Object>(value) {
        Ok(object) => Some(object.metadata),
        Err(err) => {
            let (field, message) = faults::serde_error(err);
            diags.error(location, field, message);
            None
        }
    }
}

/// A resource of the Kubernetes Gateway API group (`spec` is required by
/// its CRDs for every kind).
fn gateway_api_resource(
    value: Value,
    kind: &str,
    loc: &Location,
    api: &str,
    diags: &mut Diagnostics,
) -> Option<Resource> {
    Some(match kind {
        "GatewayClass" => Resource::GatewayClass(typed_with(value, loc, api, diags, None)?),
        "Gateway" => Resource::KubernetesGateway(typed_with(value, loc, api, diags, None)?),
        "HTTPRoute" => Resource::HttpRoute(typed_with(value, loc, api, diags, None)?),
        "GRPCRoute" => Resource::GrpcRoute(typed_with(value, loc, api, diags, None)?),
        "ReferenceGrant" => Resource::ReferenceGrant(typed_with(value, loc, api, diags, None)?),
        _ => {
            let at = diags.len();
            typed_object(value, loc, diags);
            if !diags.errors_since(at) {
                let msg = format!("{api} {kind} is not used by tracemesh yet; skipped");
                diags.warn(loc, None, msg);
            }
            return None;
        }
    })
}

fn string_field(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// `Kind namespace/name` (or `Kind name`) for messages.
fn describe(value: &Value, kind: &str) -> String {
    let meta = value.get("metadata");
    let field = |k| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        _ => kind.to_owned(),
    }
}

/// One document's text and the line it starts on.
struct Segment<'a> {
    text: &'a str,
    first_line: usize,
}

/// Splits at `---` lines (YAML document markers at column 0), keeping line
/// numbers so errors point into the original file.
fn split_documents(text: &str) -> Vec<Segment<'_>> {
    let mut segments = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        let is_marker = trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "...";
        if is_marker {
            segments.push(Segment {
                text: &text[start..offset],
                first_line: start_line,
            });
            start = offset + line.len();
            start_line = index + 2;
        }
        offset += line.len();
    }
    segments.push(Segment {
        text: &text[start..],
        first_line: start_line,
    });
    segments
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> (Vec<Resource>, Diagnostics) {
        let mut diags = Diagnostics::default();
        let file: Arc<str> = Arc::from("mesh.yaml");
        (parse_documents(&file, text, &mut diags), diags)
    }

    #[test]
    fn splits_and_numbers_documents() {
        let (docs, diags) = load(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: [a]}\n---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
        );
        assert_eq!(docs.len(), 1);
        let warning = diags
            .warnings()
            .next()
            .expect("a warning for the Deployment");
        assert_eq!(warning.location.document, Some(4));
        assert!(
            warning
                .to_string()
                .contains("apps/v1 Deployment is not used"),
            "{warning}"
        );
    }

    #[test]
    fn unknown_field_names_its_path() {
        let (_, diags) = load(
            "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: r, namespace: default}\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {hots: r}\n",
        );
        let error = diags.errors().next().expect("an error");
        let text = error.to_string();
        assert!(text.contains("VirtualService default/r"), "{text}");
        assert_eq!(
            error.field.as_deref(),
            Some("spec.http[0].route[0].destination.hots")
        );
        assert!(text.contains("unknown field `hots`"), "{text}");
    }

    #[test]
    fn missing_kind_is_an_error() {
        let (_, diags) = load("apiVersion: v1\nmetadata: {name: x}\n");
        assert!(diags.has_errors());
    }

    #[test]
    fn unserved_version_is_an_error() {
        let (_, diags) =
            load("apiVersion: networking.istio.io/v2\nkind: VirtualService\nspec: {}\n");
        let error = diags.errors().next().expect("an error");
        assert_eq!(error.field.as_deref(), Some("apiVersion"));
    }

    #[test]
    fn yaml_syntax_error_points_at_the_line() {
        let (_, diags) = load("apiVersion: v1\nkind: Service\n---\nkind: [unclosed\n");
        let error = diags.errors().next().expect("an error");
        assert_eq!(error.location.document, Some(2));
        assert!(error.location.line.is_some_and(|l| l >= 4), "{error}");
    }
}
