//! The agent's bootstrap (`apiVersion: tracemesh.io/v1, kind: Agent`): who this
//! sidecar is, where it listens, and where its telemetry goes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::IstioDuration;

/// The `spec` of the Agent document.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSpec {
    /// The service host this sidecar fronts (short name or FQDN); inbound
    /// metrics and spans report it as `destination_service`.
    pub service: String,
    /// The service account the workload runs as; with the namespace and the
    /// trust domain it makes the SPIFFE identity
    /// `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>` (default `default`).
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// The mesh's trust domain (default: the mesh config's `trustDomain`,
    /// else `cluster.local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// Where the workload certificate comes from; without it the agent
    /// speaks plaintext only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentitySpec>,
    /// The workload's labels; `app` and `version` become metric labels and
    /// VirtualService `sourceLabels` match against them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Inbound listener: traffic from the mesh to the local application.
    #[serde(default)]
    pub inbound: InboundSpec,
    /// Outbound listener: traffic from the local application to the mesh.
    #[serde(default)]
    pub outbound: OutboundSpec,
    /// Admin API listener.
    #[serde(default)]
    pub admin: AdminSpec,
    /// Transparent capture: whether `tracemesh iptables` redirects the
    /// pod's TCP to the listeners, and how captured connections are read.
    #[serde(default)]
    pub capture: CaptureSpec,
    /// What happens to connections for destinations outside the registry
    /// (Istio's MeshConfig `outboundTrafficPolicy`; a `Sidecar` that
    /// applies to this workload overrides it).
    #[serde(default)]
    pub outbound_traffic_policy: OutboundTrafficPolicySpec,
    /// Spans and their sampling.
    #[serde(default)]
    pub telemetry: TelemetrySpec,
    /// Per-request access log.
    #[serde(default)]
    pub access_log: AccessLogSpec,
    /// Worker threads, each with its own listeners and upstream pools (default 2).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Proxies in front of the mesh that append to `x-forwarded-for`; the
    /// original client is the address this many hops before the caller
    /// (Istio's `numTrustedProxies`; default 0: the caller itself).
    #[serde(default)]
    pub num_trusted_proxies: u32,
    /// Longest drain after SIGTERM (default 5s; Istio's
    /// `terminationDrainDuration`): the inbound listener drains while the
    /// outbound listeners serve on, until this has passed or no
    /// connection is left.
    #[serde(default = "default_drain")]
    pub drain_duration: IstioDuration,
    /// Timeouts of downstream connections and streams on the inbound and
    /// outbound listeners (Envoy's HttpConnectionManager `idle_timeout`
    /// and `stream_idle_timeout`).
    #[serde(default)]
    pub downstream: DownstreamSpec,
    /// What the agent holds for peers that stop reading (Envoy's overload
    /// manager, for HTTP/2 streams).
    #[serde(default)]
    pub overload: OverloadSpec,
    /// How request paths are normalized before authorization, routing, rate
    /// limits, telemetry and the upstream see them (Istio's mesh
    /// `pathNormalization`).
    #[serde(default)]
    pub path_normalization: PathNormalizationSpec,
}

/// `spec.downstream`: how long a downstream connection or stream may do
/// nothing.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DownstreamSpec {
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2: GOAWAY, then closed) — Envoy's `idle_timeout` (default 1h;
    /// `0s` turns it off; at most 24h).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: IstioDuration,
    /// A stream whose request or response body is on its way with nothing
    /// passing either way for this long is answered 408 (reset once its
    /// response has begun), and a WebSocket with no byte passing either
    /// way for this long is closed — Envoy's `stream_idle_timeout`, less
    /// the wait for the response head (default 5m; `0s` turns it off; at
    /// most 24h).
    #[serde(default = "default_stream_idle_timeout")]
    pub stream_idle_timeout: IstioDuration,
}

impl Default for DownstreamSpec {
    fn default() -> Self {
        Self {
            idle_timeout: default_idle_timeout(),
            stream_idle_timeout: default_stream_idle_timeout(),
        }
    }
}

/// `spec.overload`: bounds on what peers that stop reading make the agent
/// hold.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverloadSpec {
    /// Most HTTP/2 bodies (uploads from clients, responses from upstreams)
    /// that may be stalled at once, their readers having taken nothing for
    /// a second or more; past it those that have waited longest are cut.
    /// Each holds up to its stream's 256 KiB window (default 512, so
    /// 128 MiB; 1 to 1048576).
    #[serde(default = "default_max_stalled_streams")]
    pub max_stalled_streams: usize,
}

impl Default for OverloadSpec {
    fn default() -> Self {
        Self {
            max_stalled_streams: default_max_stalled_streams(),
        }
    }
}

fn default_max_stalled_streams() -> usize {
    crate::model::bootstrap::DEFAULT_MAX_STALLED_STREAMS
}

fn default_idle_timeout() -> IstioDuration {
    IstioDuration(crate::model::bootstrap::DEFAULT_IDLE_TIMEOUT)
}

fn default_stream_idle_timeout() -> IstioDuration {
    IstioDuration(crate::model::bootstrap::DEFAULT_STREAM_IDLE_TIMEOUT)
}

/// Istio's `MeshConfig.ProxyPathNormalization`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathNormalizationSpec {
    /// `NONE`, `BASE` (default; `DEFAULT` is its alias), `MERGE_SLASHES` or
    /// `DECODE_AND_MERGE_SLASHES`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<String>,
}

fn default_service_account() -> String {
    "default".into()
}

/// The workload certificate's source: files, or the built-in CA.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentitySpec {
    /// Certificate files (as cert-manager or `tracemesh ca issue` writes
    /// them), reloaded when they change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<IdentityFiles>,
    /// The CA to ask for short-lived certificates, rotated at half-life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaSpec>,
}

/// Certificate files.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityFiles {
    /// The workload certificate, then intermediates (PEM).
    pub cert_chain: String,
    /// Its private key (PEM).
    pub private_key: String,
    /// The roots peers are verified against (PEM).
    pub root_cert: String,
}

/// The built-in CA (`tracemesh ca serve`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaSpec {
    /// `host:port` of the CA.
    pub address: String,
    /// The CA's root certificate (PEM file), to verify the CA and peers.
    pub root_cert: String,
    /// File holding the bootstrap token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// The bootstrap token itself (prefer `tokenFile`: config dumps show this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Certificate lifetime asked for (default 24h); renewed at half-life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<IstioDuration>,
}

fn default_concurrency() -> usize {
    2
}

fn default_drain() -> IstioDuration {
    IstioDuration(std::time::Duration::from_secs(5))
}

/// The inbound listener and the application behind it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundSpec {
    /// Address the mesh reaches this workload on (default 0.0.0.0:15006).
    #[serde(default = "default_inbound")]
    pub listen: String,
    /// The local application's address (default 127.0.0.1:8080). With
    /// `capture.mode: REDIRECT` it may be left out: each captured
    /// connection then goes to the application on the port it was sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The application's protocol: HTTP (HTTP/1.1, or HTTP/2 when the caller
    /// used it), HTTP2, GRPC, or TCP (the listener then proxies bytes).
    #[serde(default = "default_app_protocol")]
    pub app_protocol: String,
}

impl Default for InboundSpec {
    fn default() -> Self {
        Self {
            listen: default_inbound(),
            app: None,
            app_protocol: default_app_protocol(),
        }
    }
}

fn default_inbound() -> String {
    "0.0.0.0:15006".into()
}

/// The application's address when `spec.inbound.app` is not given and
/// connections are not captured.
pub const DEFAULT_APP: &str = "127.0.0.1:8080";

fn default_app_protocol() -> String {
    "HTTP".into()
}

/// The outbound listener, and plain-TCP listeners for TCP services.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundSpec {
    /// Address the application sends to, as an HTTP proxy or with the target
    /// service in `Host` (default 127.0.0.1:15001).
    #[serde(default = "default_outbound")]
    pub listen: String,
    /// One listener per TCP service port the application uses: bytes sent to
    /// `listen` go to an endpoint of `host:port` (like Istio's Sidecar egress
    /// listeners with `bind`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpListenerSpec>,
}

impl Default for OutboundSpec {
    fn default() -> Self {
        Self {
            listen: default_outbound(),
            tcp: Vec::new(),
        }
    }
}

fn default_outbound() -> String {
    "127.0.0.1:15001".into()
}

/// A local TCP listener bound to one service port.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpListenerSpec {
    /// Local address to listen on.
    pub listen: String,
    /// The service host (short name or FQDN).
    pub host: String,
    /// The service port, declared with protocol TCP in its ServiceEntry.
    pub port: u32,
}

/// Transparent capture (Istio's `interceptionMode`). The capture ports are
/// the listeners' own: `spec.outbound.listen` (default 15001) and
/// `spec.inbound.listen` (default 15006), the ports `tracemesh iptables`
/// redirects to by default.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaptureSpec {
    /// `NONE` (default): the application sends to the outbound listener
    /// itself (explicit mode). `REDIRECT`: `tracemesh iptables` redirects
    /// the pod's TCP to the listeners, which read each connection's
    /// original destination; connections that reach a listener directly
    /// keep the explicit behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// How long a captured connection to a port of undeclared protocol may
    /// take to send its first bytes before it is proxied as TCP (Istio's
    /// `protocolDetectionTimeout`; default 1s; `0s` waits as long as the
    /// client takes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_detection_timeout: Option<IstioDuration>,
}

/// `outboundTrafficPolicy` of the mesh (MeshConfig).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicySpec {
    /// `ALLOW_ANY` (default, as Istio's): connections to unknown
    /// destinations go where they were going (`PassthroughCluster`);
    /// `REGISTRY_ONLY`: they are refused (`BlackHoleCluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// The admin API listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminSpec {
    /// Address of `/ready`, `/metrics`, `/config_dump`, `/clusters`, `/routes`
    /// (default 127.0.0.1:15000: keep it local, it shows the whole config).
    #[serde(default = "default_admin")]
    pub listen: String,
}

impl Default for AdminSpec {
    fn default() -> Self {
        Self {
            listen: default_admin(),
        }
    }
}

fn default_admin() -> String {
    "127.0.0.1:15000".into()
}

/// Where spans go and how many are kept.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    /// The OTLP endpoint.
    #[serde(default)]
    pub otlp: OtlpSpec,
    /// Share of new traces recorded, 0.0–1.0 (default 1.0). Requests that
    /// arrive with a trace context follow the caller's decision.
    #[serde(default = "default_sampling")]
    pub sampling: f64,
    /// Most finished spans held while the endpoint is slow or down; beyond
    /// it spans are dropped and counted (default 8192).
    #[serde(default = "default_span_queue")]
    pub max_queued_spans: usize,
    /// Longest a finished span waits before it is exported (default 1s).
    #[serde(default = "default_flush_interval")]
    pub flush_interval: IstioDuration,
    /// Most label sets (series) each Istio metric family holds; past it an
    /// observation with a new label set is not recorded, and is counted in
    /// `tracemesh_agent_metric_series_overflow_total` (default 10000,
    /// at most 1048576).
    #[serde(default = "default_max_series")]
    pub max_series_per_metric: usize,
    /// Send `x-tracemesh-response-code-details` on the agent's own replies:
    /// the policy and rule that decided them (default true). Turn it off
    /// where callers should not learn policy names.
    #[serde(default = "default_reply_details")]
    pub reply_details: bool,
}

fn default_reply_details() -> bool {
    true
}

impl Default for TelemetrySpec {
    fn default() -> Self {
        Self {
            otlp: OtlpSpec::default(),
            sampling: default_sampling(),
            max_queued_spans: default_span_queue(),
            flush_interval: default_flush_interval(),
            reply_details: default_reply_details(),
            max_series_per_metric: default_max_series(),
        }
    }
}

fn default_max_series() -> usize {
    crate::telemetry::series::DEFAULT_MAX_SERIES
}

fn default_flush_interval() -> IstioDuration {
    IstioDuration(std::time::Duration::from_secs(1))
}

fn default_sampling() -> f64 {
    1.0
}

fn default_span_queue() -> usize {
    8192
}

/// An OTLP endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtlpSpec {
    /// URL of the endpoint. For `http`, `/v1/traces` is appended unless
    /// present. Unset: the workload's tracing provider (an
    /// `extensionProviders[].opentelemetry` named by Telemetry or
    /// `defaultProviders.tracing`), else http://127.0.0.1:4317, the built-in
    /// collector. Set, it wins over any provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `grpc` (default) or `http` (HTTP/protobuf).
    #[serde(default = "default_otlp_protocol")]
    pub protocol: String,
    /// Extra headers sent with every export (e.g. an API key).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Timeout of one export (default 10s).
    #[serde(default = "default_otlp_timeout")]
    pub timeout: IstioDuration,
}

impl Default for OtlpSpec {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: default_otlp_protocol(),
            headers: BTreeMap::new(),
            timeout: default_otlp_timeout(),
        }
    }
}

/// Where spans go when neither the Agent nor a tracing provider says: the
/// built-in collector's OTLP/gRPC port.
pub const DEFAULT_OTLP_ENDPOINT: &str = "http://127.0.0.1:4317";

fn default_otlp_protocol() -> String {
    "grpc".into()
}

fn default_otlp_timeout() -> IstioDuration {
    IstioDuration(std::time::Duration::from_secs(10))
}

/// The access log: one JSON line per request with Envoy's fields.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogSpec {
    /// Write the log (default off: a line per request costs).
    #[serde(default)]
    pub enabled: bool,
    /// File to append to; `-` or absent means standard output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}
