//! The ingress gateway's bootstrap (`apiVersion: tracemesh.io/v1, kind:
//! IngressGateway`): who the gateway is, which Gateway resources it serves,
//! where each Gateway port listens, and where its telemetry goes. The
//! traffic itself is configured by Istio's `Gateway` and the VirtualServices
//! bound to it, and by the Kubernetes Gateway API's `Gateway` and routes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::agent::{
    AccessLogSpec, AdminSpec, DownstreamSpec, IdentitySpec, OverloadSpec, PathNormalizationSpec,
    TelemetrySpec,
};
use super::duration::IstioDuration;

/// The `spec` of the IngressGateway document.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressGatewaySpec {
    /// The gateway workload's labels (Istio's `istio: ingressgateway`): an
    /// Istio `Gateway` whose `selector` they match is served; `app` and
    /// `version` become metric labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The service the gateway is reached as (short name or FQDN; default
    /// the workload's name): `destination_service` of the requests it
    /// receives, and its own service in the spans it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Kubernetes Gateways of these classes are served (default `[istio]`,
    /// the class Istio installs).
    #[serde(default = "default_gateway_classes")]
    pub gateway_class_names: Vec<String>,
    /// Where each Gateway port is bound. A port without an entry listens on
    /// `0.0.0.0:<port>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<GatewayListenerSpec>,
    /// Directory of the TLS credentials Gateways name (`credentialName`,
    /// `certificateRefs`): the Secret `<namespace>/<name>` is read from
    /// `<directory>/<namespace>/<name>/` (`tls.crt`, `tls.key`, `ca.crt`),
    /// as a Kubernetes Secret volume lays out its keys.
    #[serde(default = "default_credential_directory")]
    pub credential_directory: String,
    /// The service account the gateway runs as (default `default`); with
    /// the namespace and the trust domain it makes the gateway's SPIFFE
    /// identity, which ISTIO_MUTUAL servers and mesh mTLS present.
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// The mesh's trust domain (default: the mesh config's `trustDomain`,
    /// else `cluster.local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// Where the gateway's workload certificate comes from (needed for
    /// ISTIO_MUTUAL servers and for mTLS to the mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentitySpec>,
    /// Admin API listener.
    #[serde(default)]
    pub admin: AdminSpec,
    /// Spans and their sampling.
    #[serde(default)]
    pub telemetry: TelemetrySpec,
    /// Per-request access log.
    #[serde(default)]
    pub access_log: AccessLogSpec,
    /// Worker threads (default 2).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Proxies in front of the gateway that append to `x-forwarded-for`
    /// (Istio's `numTrustedProxies`; default 0).
    #[serde(default)]
    pub num_trusted_proxies: u32,
    /// What the gateway does with a client's `x-forwarded-client-cert`
    /// (Istio's `gatewayTopology.forwardClientCertDetails`, set by MeshConfig
    /// `defaultConfig` or the gateway pod's `proxy.istio.io/config`
    /// annotation): SANITIZE, FORWARD_ONLY, APPEND_FORWARD, SANITIZE_SET
    /// (the default, as UNDEFINED) or ALWAYS_FORWARD_ONLY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_client_cert_details: Option<ForwardClientCertDetails>,
    /// Longest drain after SIGTERM (default 5s; Istio's
    /// `terminationDrainDuration`): every port drains until this has
    /// passed or no connection is left.
    #[serde(default = "default_drain")]
    pub drain_duration: IstioDuration,
    /// Timeouts of the gateway's downstream connections and streams, as the
    /// Agent's `downstream` (Envoy's `idle_timeout`, `stream_idle_timeout`).
    #[serde(default)]
    pub downstream: DownstreamSpec,
    /// What the gateway holds for peers that stop reading, as the Agent's
    /// `overload`.
    #[serde(default)]
    pub overload: OverloadSpec,
    /// How request paths are normalized (Istio's mesh `pathNormalization`).
    #[serde(default)]
    pub path_normalization: PathNormalizationSpec,
}

/// Where one Gateway port listens.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayListenerSpec {
    /// The port as Gateway resources name it (`servers[].port.number`,
    /// `listeners[].port`): Istio's gateway Service port.
    pub port: u32,
    /// The address it is bound to (`0.0.0.0:8080`, as Istio's gateway pod
    /// listens on the Service's target port).
    pub listen: String,
}

/// Where credentials are read from by default.
pub const DEFAULT_CREDENTIAL_DIRECTORY: &str = "/etc/tracemesh/credentials";

fn default_gateway_classes() -> Vec<String> {
    vec!["istio".to_owned()]
}

fn default_credential_directory() -> String {
    DEFAULT_CREDENTIAL_DIRECTORY.to_owned()
}

fn default_service_account() -> String {
    "default".into()
}

fn default_concurrency() -> usize {
    2
}

fn default_drain() -> IstioDuration {
    IstioDuration(std::time::Duration::from_secs(5))
}

/// Istio's `ForwardClientCertDetails` (MeshConfig `ProxyConfig
/// .GatewayTopology`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ForwardClientCertDetails {
    /// Not set: the gateway's default, SANITIZE_SET.
    Undefined,
    /// Removed from every request.
    Sanitize,
    /// Passed on when the client presented a certificate.
    ForwardOnly,
    /// The client's certificate appended to what it sent.
    AppendForward,
    /// Replaced by the client's certificate (the default).
    SanitizeSet,
    /// Passed on as received, whatever the connection.
    AlwaysForwardOnly,
}

impl ForwardClientCertDetails {
    /// The mode it sets; `None` for UNDEFINED (the default applies).
    pub fn mode(self) -> Option<crate::tls::xfcc::ForwardClientCert> {
        use crate::tls::xfcc::ForwardClientCert as Mode;
        Some(match self {
            Self::Undefined => return None,
            Self::Sanitize => Mode::Sanitize,
            Self::ForwardOnly => Mode::ForwardOnly,
            Self::AppendForward => Mode::AppendForward,
            Self::SanitizeSet => Mode::SanitizeSet,
            Self::AlwaysForwardOnly => Mode::AlwaysForwardOnly,
        })
    }
}
