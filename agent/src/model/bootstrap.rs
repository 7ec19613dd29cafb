//! The compiled `Agent` document's process settings: how many workers, how
//! long to drain, where spans and the access log go, where the workload
//! certificate comes from — set up once at start (a reload that changes them
//! is warned about) — and the request-path settings it carries, the
//! number of trusted proxies and what becomes of `x-forwarded-client-cert`
//! (applied on reload: the mode to each request, the element's details to
//! connections accepted after it). Validated and defaulted by `compile`; nothing
//! here is a raw serde type.

use std::path::PathBuf;
use std::time::Duration;

/// The process settings of one compiled config.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// Worker threads, each with its own listeners and upstream pools.
    pub concurrency: usize,
    /// Longest drain after SIGTERM: the inbound side drains, the outbound
    /// side serves on, until this has passed or no connection is left.
    pub drain: Duration,
    /// Proxies in front of the mesh that append to `x-forwarded-for`
    /// (Istio's `numTrustedProxies`).
    pub num_trusted_proxies: u32,
    /// What the downstream listener does with `x-forwarded-client-cert`:
    /// a sidecar's inbound (Istio's APPEND_FORWARD with Subject, URI and
    /// DNS) or an ingress gateway's (`forwardClientCertDetails`). A
    /// sidecar's outbound always removes it (Envoy's SANITIZE).
    pub xfcc: crate::tls::xfcc::XfccPolicy,
    /// Where spans go.
    pub telemetry: Telemetry,
    /// Where the access log goes; `None` when it is off.
    pub access_log: Option<AccessLogTarget>,
    /// Where the workload certificate comes from; `None`: plaintext only.
    pub certificate: Option<CertificateSource>,
    /// Downstream idle timeouts (read for each new connection, so a reload
    /// applies them to connections accepted after it).
    pub downstream: DownstreamTimeouts,
    /// Most HTTP/2 bodies that may be stalled at once, their readers
    /// taking nothing, across the workers
    /// (`spec.overload.maxStalledStreams`).
    pub max_stalled_streams: usize,
}

/// Envoy's default `idle_timeout` of a downstream connection.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Envoy's default `stream_idle_timeout`.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How many HTTP/2 bodies may be stalled, their readers taking nothing, by
/// default: 128 MiB of 256 KiB stream windows.
pub const DEFAULT_MAX_STALLED_STREAMS: usize = 512;
/// The most `spec.overload.maxStalledStreams` may be.
pub const MAX_STALLED_STREAMS_BOUND: usize = 1 << 20;
/// The longest either timeout may be.
pub const MAX_DOWNSTREAM_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How long downstream connections and streams may do nothing (the Agent's
/// `spec.downstream`); `None` is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownstreamTimeouts {
    /// A connection with no request in flight this long is closed; also
    /// the longest a captured connection to a port declared TLS may take
    /// to send its ClientHello.
    pub idle: Option<Duration>,
    /// A streaming body (either way) with nothing passing either way this
    /// long ends the stream (408, or a reset once the response has begun).
    pub stream_idle: Option<Duration>,
}

impl Default for DownstreamTimeouts {
    fn default() -> Self {
        Self {
            idle: Some(DEFAULT_IDLE_TIMEOUT),
            stream_idle: Some(DEFAULT_STREAM_IDLE_TIMEOUT),
        }
    }
}

/// Span export (the Agent's `spec.telemetry`).
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// The OTLP endpoint.
    pub otlp: Otlp,
    /// Share of new traces recorded, 0.0–1.0.
    pub sampling: f64,
    /// Most finished spans held while the endpoint is slow or down.
    pub max_queued_spans: usize,
    /// Longest a finished span waits before it is exported.
    pub flush_interval: Duration,
    /// Local replies carry `x-tracemesh-response-code-details`.
    pub reply_details: bool,
    /// Most label sets each Istio metric family holds.
    pub max_series_per_metric: usize,
}

/// An OTLP endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Otlp {
    /// The URL spans are sent to: for OTLP/HTTP the whole URL with its path
    /// (the Agent's endpoint gets `/v1/traces` added unless present; a
    /// provider's `http.path`, default `/v1/traces`).
    pub endpoint: String,
    /// The transport.
    pub protocol: OtlpProtocol,
    /// Extra headers (gRPC metadata) sent with every export.
    pub headers: Vec<(String, String)>,
    /// Timeout of one export, at least [`MIN_EXPORT_TIMEOUT`].
    pub timeout: Duration,
}

/// The shortest export timeout a config may set (the Agent's
/// `spec.telemetry.otlp.timeout`, a tracing provider's `timeout`): with
/// less, every export would time out unanswered.
pub const MIN_EXPORT_TIMEOUT: Duration = Duration::from_millis(1);

/// How spans are sent (OTLP's two transports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output (`path` absent or `-`).
    Stdout,
    /// Appended to this file.
    File(PathBuf),
}

/// Where the workload certificate comes from (the Agent's `spec.identity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateSource {
    /// PEM files, reloaded when they change.
    Files(CertificateFiles),
    /// The built-in CA, asked for short-lived certificates.
    Ca(CaSource),
}

/// Certificate files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// The workload certificate, then intermediates.
    pub cert_chain: PathBuf,
    /// Its private key.
    pub private_key: PathBuf,
    /// The roots peers are verified against.
    pub root_cert: PathBuf,
}

/// The built-in CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSource {
    /// `host:port` of the CA.
    pub address: String,
    /// The CA's root certificate (PEM file).
    pub root_cert: PathBuf,
    /// The bootstrap token.
    pub token: BootstrapToken,
    /// Certificate lifetime asked for.
    pub lifetime: Duration,
}

/// The token that proves the workload to the CA.
#[derive(Clone, PartialEq, Eq)]
pub enum BootstrapToken {
    /// Read from this file when the agent starts.
    File(PathBuf),
    /// Written in the config.
    Inline(String),
}

impl std::fmt::Debug for BootstrapToken {
    /// Never prints the token itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Inline(_) => f.write_str("Inline(<redacted>)"),
        }
    }
}
