//! The telemetry policy of this workload, compiled from the Telemetry
//! resources that apply to it (telemetry.istio.io) and the mesh config's
//! providers, with Istio's precedence (see `compile/telemetry.rs`). One
//! policy per side: CLIENT (outbound requests) and SERVER (inbound).
//!
//! A part that no Telemetry sets and no `defaultProviders` entry names is
//! `None`: the Agent's own settings apply to it (`spec.telemetry`,
//! `spec.accessLog`), as Istio falls back to its legacy mesh settings.

use std::sync::Arc;

use http::{HeaderMap, HeaderName};

use super::expr::{Attributes, Expression};
use super::mesh::{Provider, ProviderConfig};

/// CLIENT or SERVER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Outbound: the workload calls another service (Istio's CLIENT).
    Client,
    /// Inbound: the workload is called (Istio's SERVER).
    Server,
}

/// The compiled telemetry policy.
#[derive(Debug, Clone, Default)]
pub struct TelemetryPolicy {
    /// The Telemetry resources that applied, `namespace/name`, from the
    /// weakest (root namespace) to the strongest (workload).
    pub sources: Vec<String>,
    /// Outbound requests.
    pub client: SidePolicy,
    /// Inbound requests.
    pub server: SidePolicy,
    /// The mesh config's `defaultConfig.tracing.sampling`, in percent.
    pub mesh_sampling_percent: Option<f64>,
}

impl TelemetryPolicy {
    /// The policy of one side.
    pub fn side(&self, side: Side) -> &SidePolicy {
        match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        }
    }

    /// Share of new traces sampled on `side`, in percent: the Telemetry's
    /// `randomSamplingPercentage`, else the mesh config's
    /// `defaultConfig.tracing.sampling`, else the Agent's
    /// `spec.telemetry.sampling` (`agent_sampling`, a fraction 0–1).
    pub fn sampling_percent(&self, side: Side, agent_sampling: f64) -> f64 {
        self.side(side)
            .tracing
            .as_ref()
            .and_then(|t| t.sampling_percent)
            .or(self.mesh_sampling_percent)
            .unwrap_or(agent_sampling * 100.0)
    }
}

/// Tracing, metrics and access logs of one side.
#[derive(Debug, Clone, Default)]
pub struct SidePolicy {
    /// `None`: the Agent's `spec.telemetry` applies.
    pub tracing: Option<TracingPolicy>,
    /// `None`: Istio's metrics, unchanged, on `/metrics`.
    pub metrics: Option<MetricsPolicy>,
    /// `None`: the Agent's `spec.accessLog` applies. `Some(empty)`: no
    /// access log.
    pub access_logs: Option<Vec<AccessLogPolicy>>,
}

impl SidePolicy {
    /// Whether an expression reads the request when it is over (a
    /// `tagOverrides` upsert, an access-log filter): then the request path
    /// keeps what it reads.
    pub fn reads_requests(&self) -> bool {
        let upserts = self.metrics.as_ref().is_some_and(|m| {
            m.overrides
                .iter()
                .any(|o| o.tags.iter().any(|t| matches!(t, TagOverride::Upsert(..))))
        });
        let filters = self
            .access_logs
            .as_ref()
            .is_some_and(|logs| logs.iter().any(|l| l.filter.is_some()));
        upserts || filters
    }
}

/// `tracing`, merged.
#[derive(Debug, Clone)]
pub struct TracingPolicy {
    /// The tracing provider (the first named, as in Istio); `None` when the
    /// name matches no provider of the mesh config (then nothing is reported).
    pub provider: Option<Arc<Provider>>,
    /// No span is reported (`disableSpanReporting`, or no provider); trace
    /// context is still propagated.
    pub disabled: bool,
    /// Share of new traces sampled, 0–100: the Telemetry's
    /// `randomSamplingPercentage`, else the mesh config's
    /// `defaultConfig.tracing.sampling`; `None`: the Agent's
    /// `spec.telemetry.sampling`. Callers' decisions are followed anyway.
    pub sampling_percent: Option<f64>,
    /// Span attributes added to every span of this side, by name.
    pub custom_tags: Vec<CustomTag>,
}

/// One `customTags` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomTag {
    /// The attribute name.
    pub name: String,
    /// Where its value comes from.
    pub value: TagValue,
}

/// A custom tag's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagValue {
    /// A fixed value; `environment` tags are read once when the config
    /// loads (the agent's environment does not change) and become this.
    Literal(String),
    /// A request header, or the default when it is absent (no default and
    /// absent: the tag is left out, as Envoy does).
    Header {
        /// The header.
        name: HeaderName,
        /// Value when it is absent.
        default: Option<String>,
    },
}

impl TracingPolicy {
    /// The custom tags' values for a request, in name order.
    pub fn tags<'a>(&'a self, headers: &'a HeaderMap) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.custom_tags.iter().filter_map(move |tag| {
            let value = match &tag.value {
                TagValue::Literal(v) => v.as_str(),
                TagValue::Header { name, default } => headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .or(default.as_deref())?,
            };
            Some((tag.name.as_str(), value))
        })
    }

    /// Whether a new trace (one without a caller's decision) is sampled,
    /// given a uniform draw in `[0, 1)`, or `None` when the Agent decides.
    pub fn samples(&self, draw: f64) -> Option<bool> {
        self.sampling_percent.map(|p| draw * 100.0 < p)
    }
}

/// Istio's standard metrics (`MetricSelector.IstioMetric`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IstioMetric {
    /// `istio_requests_total`.
    RequestCount,
    /// `istio_request_duration_milliseconds`.
    RequestDuration,
    /// `istio_request_bytes`.
    RequestSize,
    /// `istio_response_bytes`.
    ResponseSize,
    /// `istio_tcp_connections_opened_total`.
    TcpOpenedConnections,
    /// `istio_tcp_connections_closed_total`.
    TcpClosedConnections,
    /// `istio_tcp_sent_bytes_total`.
    TcpSentBytes,
    /// `istio_tcp_received_bytes_total`.
    TcpReceivedBytes,
    /// `istio_request_messages_total`.
    GrpcRequestMessages,
    /// `istio_response_messages_total`.
    GrpcResponseMessages,
}

impl IstioMetric {
    /// Every metric (what ALL_METRICS stands for).
    pub const ALL: [IstioMetric; 10] = [
        Self::RequestCount,
        Self::RequestDuration,
        Self::RequestSize,
        Self::ResponseSize,
        Self::TcpOpenedConnections,
        Self::TcpClosedConnections,
        Self::TcpSentBytes,
        Self::TcpReceivedBytes,
        Self::GrpcRequestMessages,
        Self::GrpcResponseMessages,
    ];

    /// The enum name in Telemetry (`REQUEST_COUNT`).
    pub fn istio_name(self) -> &'static str {
        match self {
            Self::RequestCount => "REQUEST_COUNT",
            Self::RequestDuration => "REQUEST_DURATION",
            Self::RequestSize => "REQUEST_SIZE",
            Self::ResponseSize => "RESPONSE_SIZE",
            Self::TcpOpenedConnections => "TCP_OPENED_CONNECTIONS",
            Self::TcpClosedConnections => "TCP_CLOSED_CONNECTIONS",
            Self::TcpSentBytes => "TCP_SENT_BYTES",
            Self::TcpReceivedBytes => "TCP_RECEIVED_BYTES",
            Self::GrpcRequestMessages => "GRPC_REQUEST_MESSAGES",
            Self::GrpcResponseMessages => "GRPC_RESPONSE_MESSAGES",
        }
    }

    /// The Prometheus family it is served as.
    pub fn prometheus_name(self) -> &'static str {
        match self {
            Self::RequestCount => "istio_requests_total",
            Self::RequestDuration => "istio_request_duration_milliseconds",
            Self::RequestSize => "istio_request_bytes",
            Self::ResponseSize => "istio_response_bytes",
            Self::TcpOpenedConnections => "istio_tcp_connections_opened_total",
            Self::TcpClosedConnections => "istio_tcp_connections_closed_total",
            Self::TcpSentBytes => "istio_tcp_sent_bytes_total",
            Self::TcpReceivedBytes => "istio_tcp_received_bytes_total",
            Self::GrpcRequestMessages => "istio_request_messages_total",
            Self::GrpcResponseMessages => "istio_response_messages_total",
        }
    }

    /// The metric `match.metric` names (an enum name: `REQUEST_COUNT`).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| name == m.istio_name())
    }

    /// The metric `match.customMetric` names: its stat name as Istio's
    /// stats filter matches it (`requests_total`). The `istio_` before it
    /// is the Prometheus namespace Envoy adds, not part of the name, so
    /// `istio_requests_total` names none, as in Istio.
    pub fn parse_custom(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.prometheus_name().strip_prefix("istio_") == Some(name))
    }
}

/// `metrics`, merged for one side.
#[derive(Debug, Clone, Default)]
pub struct MetricsPolicy {
    /// Every metric off (ALL_METRICS disabled, or no Prometheus provider
    /// in scope: the agent serves metrics through Prometheus only).
    pub disabled: bool,
    /// Changes per metric, in [`IstioMetric::ALL`] order; metrics without an
    /// entry are served unchanged.
    pub overrides: Vec<MetricOverride>,
}

/// What changes for one metric.
#[derive(Debug, Clone)]
pub struct MetricOverride {
    /// The metric.
    pub metric: IstioMetric,
    /// It is not served.
    pub disabled: bool,
    /// Label changes, in label order.
    pub tags: Vec<TagOverride>,
}

/// `tagOverrides` entry.
#[derive(Debug, Clone)]
pub enum TagOverride {
    /// The label is not served.
    Remove(String),
    /// The label (standard or new) gets this value per request; an
    /// expression that fails gives `unknown`.
    Upsert(String, Arc<Expression>),
}

impl TagOverride {
    /// The label.
    pub fn label(&self) -> &str {
        match self {
            Self::Remove(l) | Self::Upsert(l, _) => l,
        }
    }
}

impl MetricsPolicy {
    /// Whether `metric` is served.
    pub fn enabled(&self, metric: IstioMetric) -> bool {
        !self.disabled && self.of(metric).is_none_or(|o| !o.disabled)
    }

    /// The label changes of `metric`.
    pub fn tags(&self, metric: IstioMetric) -> &[TagOverride] {
        self.of(metric).map_or(&[], |o| o.tags.as_slice())
    }

    fn of(&self, metric: IstioMetric) -> Option<&MetricOverride> {
        self.overrides.iter().find(|o| o.metric == metric)
    }
}

/// One access-log provider in force for a side.
#[derive(Debug, Clone)]
pub struct AccessLogPolicy {
    /// The provider (`envoy`: the JSON log on standard output, an
    /// `envoyFileAccessLog`, an `envoyOtelAls`).
    pub provider: Arc<Provider>,
    /// Turned off for this workload.
    pub disabled: bool,
    /// Only requests for which it is `true` are logged.
    pub filter: Option<Arc<Expression>>,
}

impl AccessLogPolicy {
    /// Whether this request goes to this provider's log.
    pub fn logs(&self, attrs: &Attributes<'_>) -> bool {
        !self.disabled && self.filter.as_ref().is_none_or(|f| f.matches(attrs))
    }

    /// The file, when the provider writes one.
    pub fn file(&self) -> Option<&str> {
        match &self.provider.config {
            ProviderConfig::FileAccessLog { path, .. } => Some(path),
            _ => None,
        }
    }

    /// How the provider writes a line: its `logFormat` (none: the JSON
    /// line) and `omitEmptyValues`.
    pub fn format(&self) -> (Option<&crate::model::log_format::LogFormat>, bool) {
        match &self.provider.config {
            ProviderConfig::FileAccessLog {
                format, omit_empty, ..
            } => (format.as_deref(), *omit_empty),
            _ => (None, false),
        }
    }
}
