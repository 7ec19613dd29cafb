//! Istio's validation rules, resource by resource, without an agent's
//! context: what `istioctl validate` (and Istio's admission webhook) would
//! refuse is an error here, what it would warn about is a warning. A
//! resource with errors is dropped before it is compiled, so each problem
//! is reported once.

mod common;

pub(crate) use common::INVALID_HEADER_VALUE;
mod gateway_api;
mod mesh;
mod networking;
mod security;
mod virtual_service;

use common::Check;

use crate::config::diagnostics::Diagnostics;
use crate::config::documents::{Document, Resource, Unused};

/// Checks every resource; returns those without errors. Kinds the agent does
/// not use are checked, warned about and left out.
pub fn resources(resources: Vec<Resource>, diags: &mut Diagnostics) -> Vec<Resource> {
    let mut valid = Vec::with_capacity(resources.len());
    for resource in resources {
        let mark = diags.len();
        check(&resource, diags);
        if diags.errors_since(mark) {
            if let Resource::MeshConfig(doc) = resource {
                valid.push(Resource::RejectedMeshConfig(doc.location));
            }
            continue;
        }
        match resource {
            Resource::Unused(unused) => {
                let (api_version, kind) = unused_kind(&unused);
                let msg = format!("{api_version} {kind} is not used by the agent; skipped");
                diags.warn(unused.location(), None, msg);
            }
            used => valid.push(used),
        }
    }
    valid
}

fn unused_kind(unused: &Unused) -> (&str, &'static str) {
    match unused {
        Unused::WorkloadGroup(d) => (&d.api_version, "WorkloadGroup"),
        Unused::EnvoyFilter(d) => (&d.api_version, "EnvoyFilter"),
        Unused::ProxyConfig(d) => (&d.api_version, "ProxyConfig"),
    }
}

fn check(resource: &Resource, diags: &mut Diagnostics) {
    fn run<S>(
        doc: &Document<S>,
        diags: &mut Diagnostics,
        f: impl FnOnce(&mut Check<'_>, &Document<S>),
    ) {
        let mut c = Check {
            loc: &doc.location,
            diags,
        };
        metadata(&mut c, doc);
        f(&mut c, doc);
    }
    match resource {
        // The bootstraps are checked where they are compiled.
        Resource::Agent(_) | Resource::IngressGateway(_) => {}
        Resource::Gateway(doc) => run(doc, diags, networking::gateway),
        Resource::GatewayClass(doc) => run(doc, diags, gateway_api::gateway_class),
        Resource::KubernetesGateway(doc) => run(doc, diags, gateway_api::gateway),
        Resource::HttpRoute(doc) => run(doc, diags, gateway_api::http_route),
        Resource::GrpcRoute(doc) => run(doc, diags, gateway_api::grpc_route),
        Resource::ReferenceGrant(doc) => run(doc, diags, gateway_api::reference_grant),
        Resource::Namespace(doc) => run(doc, diags, |_, _| {}),
        Resource::RateLimitPolicy(doc) => run(doc, diags, |c, doc| {
            let name = doc.metadata.name.clone();
            for (i, rule) in doc.spec.rules.iter().enumerate() {
                let field = format!("spec.rules[{i}]");
                super::access::rate_limiter(rule, name.clone(), &field, c.loc, c.diags);
            }
        }),
        Resource::ServiceEntry(doc) => run(doc, diags, networking::service_entry),
        Resource::WorkloadEntry(doc) => run(doc, diags, networking::workload_entry_resource),
        Resource::VirtualService(doc) => run(doc, diags, virtual_service::virtual_service),
        Resource::DestinationRule(doc) => run(doc, diags, networking::destination_rule),
        Resource::AuthorizationPolicy(doc) => run(doc, diags, security::authorization_policy),
        Resource::PeerAuthentication(doc) => run(doc, diags, security::peer_authentication),
        Resource::Sidecar(doc) => run(doc, diags, networking::sidecar),
        Resource::RequestAuthentication(doc) => run(doc, diags, security::request_authentication),
        Resource::Telemetry(doc) => run(doc, diags, security::telemetry),
        Resource::MeshConfig(doc) => run(doc, diags, mesh::mesh_config),
        // Its errors are recorded already.
        Resource::RejectedMeshConfig(_) => {}
        Resource::Unused(unused) => match unused {
            Unused::WorkloadGroup(doc) => run(doc, diags, networking::workload_group),
            Unused::EnvoyFilter(doc) => run(doc, diags, networking::envoy_filter),
            Unused::ProxyConfig(doc) => run(doc, diags, networking::proxy_config),
        },
    }
}

/// Every resource needs a name; names and namespaces are DNS names.
fn metadata<S>(c: &mut Check<'_>, doc: &Document<S>) {
    let meta = &doc.metadata;
    if meta.name.is_empty() {
        c.error("metadata.name", "a resource needs a name");
    } else if meta.name.len() > 253 || !meta.name.split('.').all(common::is_dns1123_label) {
        c.error(
            "metadata.name",
            format!(
                "{:?} is not a valid name (lower case letters, digits, `-` and `.`)",
                meta.name
            ),
        );
    }
    if let Some(ts) = &meta.creation_timestamp
        && meta.created_at().is_none()
    {
        c.error(
            "metadata.creationTimestamp",
            format!("{ts:?} is not an RFC 3339 time (Kubernetes writes `2024-05-01T10:00:00Z`)"),
        );
    }
    if let Some(ns) = &meta.namespace
        && !common::is_dns1123_label(ns)
    {
        c.error(
            "metadata.namespace",
            format!("{ns:?} is not a valid namespace (lower case letters, digits and `-`)"),
        );
    }
}
