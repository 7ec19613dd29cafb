//! Metric names and labels, declared once: Istio's standard request and TCP
//! metrics (so existing dashboards keep working) and the agent's own.
//!
//! Label sets are resolved to metric handles through a small per-worker cache
//! keyed by pointers, so recording a request touches only atomics.

use foldhash::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderMap;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub use crate::by_address::ByAddress;
use crate::flags::ResponseFlags;
use crate::model::expr::Attributes;
use crate::model::peer::PeerInfo;
use crate::model::service::ServiceName;
use crate::model::telemetry::{IstioMetric, Side, TelemetryPolicy};
use crate::telemetry::overrides::Layout;
use crate::telemetry::series::{Overflow, SeriesLimit};

/// Envoy's default histogram buckets, which Istio's metrics use.
pub const ENVOY_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

const PEER_LABELS: [&str; 20] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
];

fn http_labels() -> Vec<&'static str> {
    let tail = [
        "request_protocol",
        "response_code",
        "grpc_response_status",
        "response_flags",
        "connection_security_policy",
    ];
    PEER_LABELS.iter().chain(tail.iter()).copied().collect()
}

fn tcp_labels() -> Vec<&'static str> {
    let tail = [
        "request_protocol",
        "response_flags",
        "connection_security_policy",
    ];
    PEER_LABELS.iter().chain(tail.iter()).copied().collect()
}

/// Every metric family of the agent, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Istio's request and TCP families, shaped by the Telemetry in force.
    istio: Arc<ArcSwap<IstioFamilies>>,
    /// Spans accepted by the OTLP endpoint.
    pub spans_exported: IntCounter,
    /// Spans whose export failed.
    pub spans_failed: IntCounter,
    /// Spans dropped because the export queue was full.
    pub spans_dropped: IntCounter,
    /// Config loads by result: `accepted`, `rejected` (invalid), and
    /// `unreadable` (the file missing, a directory, unreadable or too large,
    /// once per reason and spell).
    pub config_reloads: IntCounterVec,
    /// Version of the config in force.
    pub config_version: IntGauge,
    /// Open downstream connections by listener.
    pub active_connections: IntGaugeVec,
    /// Upstream connections opened.
    pub upstream_connections: IntCounter,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    /// Endpoints ejected by outlier detection, by cluster.
    pub outlier_ejections: IntCounterVec,
    /// TLS handshakes that failed, by direction and reason.
    pub tls_failures: IntCounterVec,
    /// HTTP/2 bodies the agent stopped reading because their readers took
    /// nothing, by reason (`stream_idle_timeout`, `overload`).
    pub stalled_streams_cut: IntCounterVec,
    /// Workload certificate rotations, by result.
    pub certificate_rotations: IntCounterVec,
    /// When the workload certificate expires (Unix seconds).
    pub certificate_expiry: IntGauge,
    /// Observations not recorded because their family was at its series cap.
    pub series_overflow: IntCounterVec,
    /// Each Istio family's cap on its label sets (`maxSeriesPerMetric`).
    max_series: usize,
    /// Overflow of the HTTP request families.
    http_overflow: Arc<Overflow>,
    /// Overflow of the TCP families.
    tcp_overflow: Arc<Overflow>,
}

impl Metrics {
    /// Creates and registers every family in a fresh registry; each Istio
    /// family holds at most `max_series` label sets as it serves them
    /// (clamped to
    /// 1..=[`MAX_SERIES_BOUND`](crate::telemetry::series::MAX_SERIES_BOUND)).
    pub fn new(max_series: usize) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let series_overflow = counter(
            "tracemesh_agent_metric_series_overflow_total",
            "Observations not recorded because the metric family held maxSeriesPerMetric label sets.",
            &["family"],
        )?;
        let http_overflow = series_overflow.with_label_values(&["istio_requests"]);
        let tcp_overflow = series_overflow.with_label_values(&["istio_tcp"]);
        let metrics = Self {
            series_overflow,
            max_series,
            http_overflow: Arc::new(Overflow::new(
                "istio_requests_total, istio_request_duration_milliseconds, istio_request_bytes, istio_response_bytes, istio_request_messages_total, istio_response_messages_total",
                max_series,
                http_overflow,
            )),
            tcp_overflow: Arc::new(Overflow::new("istio_tcp_*", max_series, tcp_overflow)),
            istio: Arc::new(ArcSwap::from_pointee(IstioFamilies::standard(max_series)?)),
            spans_exported: IntCounter::new(
                "tracemesh_agent_spans_exported_total",
                "Spans accepted by the OTLP endpoint.",
            )?,
            spans_failed: IntCounter::new(
                "tracemesh_agent_spans_export_failed_total",
                "Spans whose export failed after retries.",
            )?,
            spans_dropped: IntCounter::new(
                "tracemesh_agent_spans_dropped_total",
                "Spans dropped because the export queue was full.",
            )?,
            config_reloads: counter(
                "tracemesh_agent_config_loads_total",
                "Config loads by result.",
                &["result"],
            )?,
            config_version: IntGauge::new(
                "tracemesh_agent_config_version",
                "Version of the config in force.",
            )?,
            active_connections: IntGaugeVec::new(
                Opts::new(
                    "tracemesh_agent_downstream_connections_active",
                    "Open downstream connections.",
                ),
                &["listener"],
            )?,
            upstream_connections: IntCounter::new(
                "tracemesh_agent_upstream_connections_total",
                "Upstream connections opened.",
            )?,
            access_log_dropped: IntCounter::new(
                "tracemesh_agent_access_log_dropped_total",
                "Access log lines dropped.",
            )?,
            outlier_ejections: counter(
                "tracemesh_agent_outlier_ejections_total",
                "Endpoints ejected by outlier detection.",
                &["cluster"],
            )?,
            tls_failures: counter(
                "tracemesh_agent_tls_handshake_failures_total",
                "TLS handshakes that failed, by direction and reason.",
                &["direction", "reason"],
            )?,
            stalled_streams_cut: counter(
                "tracemesh_agent_stalled_streams_cut_total",
                "HTTP/2 streams the agent stopped reading because their readers took nothing, by reason.",
                &["reason"],
            )?,
            certificate_rotations: counter(
                "tracemesh_agent_certificate_rotations_total",
                "Workload certificate rotations, by result.",
                &["result"],
            )?,
            certificate_expiry: IntGauge::new(
                "tracemesh_agent_certificate_expiry_timestamp_seconds",
                "When the workload certificate expires.",
            )?,
            registry,
        };
        metrics.register_all()?;
        Ok(metrics)
    }

    fn register_all(&self) -> Result<(), prometheus::Error> {
        let r = &self.registry;
        r.register(Box::new(self.spans_exported.clone()))?;
        r.register(Box::new(self.spans_failed.clone()))?;
        r.register(Box::new(self.spans_dropped.clone()))?;
        r.register(Box::new(self.config_reloads.clone()))?;
        r.register(Box::new(self.config_version.clone()))?;
        r.register(Box::new(self.active_connections.clone()))?;
        r.register(Box::new(self.upstream_connections.clone()))?;
        r.register(Box::new(self.access_log_dropped.clone()))?;
        r.register(Box::new(self.outlier_ejections.clone()))?;
        r.register(Box::new(self.tls_failures.clone()))?;
        r.register(Box::new(self.stalled_streams_cut.clone()))?;
        r.register(Box::new(self.certificate_rotations.clone()))?;
        r.register(Box::new(self.series_overflow.clone()))?;
        r.register(Box::new(self.certificate_expiry.clone()))
    }

    /// Shapes Istio's families as `policy` says (`metrics.overrides`): a
    /// family whose labels or served state change is made anew (its series
    /// start over, as a changed metric does in Envoy, and so does the
    /// count of label sets its series cap holds); the others keep their
    /// series and their count. Called on every accepted config load. (They are not in
    /// the registry, which holds a name to its first label names for the
    /// process's life; [`Metrics::render`] adds them.)
    pub fn apply_telemetry(&self, policy: &TelemetryPolicy) {
        let old = self.istio.load_full();
        let shape = |family: &IstioFamily| -> IstioFamily {
            let layout = Layout::build(family.metric, family.standard(), policy);
            if layout.same_shape(&family.layout) {
                return IstioFamily {
                    layout,
                    ..family.clone()
                };
            }
            let collector = match Collector::new(family.metric, &layout.labels) {
                Ok(collector) => collector,
                Err(error) => {
                    tracing::error!(metric = family.metric.prometheus_name(), %error, "metric not reshaped");
                    return family.clone();
                }
            };
            IstioFamily {
                metric: family.metric,
                layout,
                collector,
                series: Arc::new(SeriesLimit::new(self.max_series)),
            }
        };
        self.istio.store(Arc::new(IstioFamilies {
            generation: old.generation + 1,
            http: old.http.each_ref().map(shape),
            tcp: old.tcp.each_ref().map(shape),
        }));
    }

    /// The families in Prometheus text format.
    pub fn render(&self) -> String {
        use prometheus::core::Collector as _;
        let mut families = self.registry.gather();
        let istio = self.istio.load();
        for family in istio.all().filter(|f| f.layout.served()) {
            let collected = match &family.collector {
                Collector::Counter(c) => c.collect(),
                Collector::Histogram(h) => h.collect(),
            };
            families.extend(collected.into_iter().filter(|f| !f.get_metric().is_empty()));
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

/// Which side reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The caller's sidecar (outbound).
    Source,
    /// The callee's sidecar (inbound).
    Destination,
}

impl Reporter {
    /// The Telemetry side that reports (source: CLIENT, destination: SERVER).
    pub fn side(self) -> Side {
        match self {
            Self::Source => Side::Client,
            Self::Destination => Side::Server,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// The labels of one request or connection, by reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerLabels {
    /// Who reports.
    pub reporter: Reporter,
    /// The calling workload.
    pub source: ByAddress<PeerInfo>,
    /// The called workload.
    pub destination: ByAddress<PeerInfo>,
    /// The called service.
    pub service: ByAddress<ServiceName>,
    /// `mutual_tls`, `none` or `unknown`.
    pub security: &'static str,
    /// The caller's and the callee's SPIFFE identities, when mTLS proved them.
    pub principals: [Option<ByAddress<str>>; 2],
}

impl PeerLabels {
    fn values(&self) -> [String; 20] {
        let (s, d, svc) = (&*self.source.0, &*self.destination.0, &*self.service.0);
        let unknown = || "unknown".to_owned();
        let principal =
            |p: &Option<ByAddress<str>>| p.as_ref().map_or_else(unknown, |p| p.0.to_string());
        [
            self.reporter.as_str().to_owned(),
            s.workload.clone(),
            s.canonical_service.clone(),
            s.canonical_revision.clone(),
            s.namespace.clone(),
            principal(&self.principals[0]),
            s.app.clone(),
            s.version.clone(),
            s.cluster.clone(),
            d.workload.clone(),
            d.namespace.clone(),
            principal(&self.principals[1]),
            d.app.clone(),
            d.version.clone(),
            svc.host.clone(),
            d.canonical_service.clone(),
            d.canonical_revision.clone(),
            svc.name.clone(),
            svc.namespace.clone(),
            d.cluster.clone(),
        ]
    }
}

/// The labels of one finished request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    /// Who called whom.
    pub peers: PeerLabels,
    /// `http` or `grpc`.
    pub grpc: bool,
    /// Response status (0 when none was sent).
    pub code: u16,
    /// gRPC status of a gRPC request, as Istio reports it
    /// ([`super::record::reported_grpc_status`]).
    pub grpc_status: Option<i32>,
    /// Envoy's response flags.
    pub flags: ResponseFlags,
    /// The values of the Telemetry's `tagOverrides` upserts on this side,
    /// in [`IstioFamilies::evaluate`] order (empty without any).
    pub tags: Box<[String]>,
}

/// Metric handles for one label set; `None` for a metric disabled on the
/// side, or whose family had no room for the label set.
pub struct RequestHandles {
    requests: Option<IntCounter>,
    duration: Option<Histogram>,
    request_bytes: Option<Histogram>,
    response_bytes: Option<Histogram>,
    /// gRPC requests only, as Istio's stats filter counts messages where
    /// its `grpc_stats` filter left a count.
    request_messages: Option<IntCounter>,
    response_messages: Option<IntCounter>,
    /// Whether a family had no room for the label set: each observation
    /// is then counted as overflow.
    refused: bool,
}

/// What one request adds to its label set's metrics.
pub struct Observed {
    /// How long it took, in milliseconds.
    pub duration_ms: f64,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// gRPC messages of the request (counted for gRPC requests only).
    pub request_messages: u64,
    /// gRPC messages of the response.
    pub response_messages: u64,
}

impl RequestHandles {
    fn record(&self, observed: &Observed) {
        if let Some(c) = &self.requests {
            c.inc();
        }
        if let Some(h) = &self.duration {
            // Whole milliseconds, as Istio's stats filter records them
            // (`absl::ToInt64Milliseconds`): a request under 1 ms is 0.
            h.observe(observed.duration_ms.trunc());
        }
        if let Some(h) = &self.request_bytes {
            h.observe(observed.request_bytes as f64);
        }
        if let Some(h) = &self.response_bytes {
            h.observe(observed.response_bytes as f64);
        }
        if let Some(c) = &self.request_messages {
            c.inc_by(observed.request_messages);
        }
        if let Some(c) = &self.response_messages {
            c.inc_by(observed.response_messages);
        }
    }
}

/// Metric handles for one TCP label set; `None` for a metric disabled on
/// the side.
#[derive(Clone)]
pub struct TcpHandles {
    /// Bytes sent to the downstream.
    pub sent: Option<IntCounter>,
    /// Bytes received from the downstream.
    pub received: Option<IntCounter>,
    /// Connections opened.
    pub opened: Option<IntCounter>,
    /// Connections closed.
    pub closed: Option<IntCounter>,
}

const CACHE_LIMIT: usize = 4096;

/// A worker's label-set → handles cache (no lock: one per worker thread).
/// A label set a family had no room for is remembered as refused, so each
/// later observation of it is counted as overflow without building labels.
#[derive(Default)]
pub struct MetricCache {
    requests: HashMap<RequestKey, RequestHandles>,
    /// The [`IstioFamilies`] generation the handles belong to.
    generation: u64,
}

impl MetricCache {
    /// Records one request under `key`, resolving its handles on first use.
    pub fn record(&mut self, metrics: &Metrics, key: &RequestKey, observed: &Observed) {
        let generation = metrics.istio.load().generation;
        if generation != self.generation {
            // The Telemetry reshaped the families: handles are made anew.
            self.requests.clear();
            self.generation = generation;
        }
        if let Some(handles) = self.requests.get(key) {
            handles.record(observed);
            if handles.refused {
                metrics.http_overflow.refuse();
            }
            return;
        }
        if self.requests.len() >= CACHE_LIMIT {
            self.requests.clear(); // old snapshots' keys; handles are recreated on demand
        }
        let handles = metrics.request_handles(key);
        handles.record(observed);
        if handles.refused {
            metrics.http_overflow.refuse();
        }
        self.requests.insert(key.clone(), handles);
    }
}

impl Metrics {
    /// The handles of `key`'s label set, each family's `None` when it is
    /// at its series cap and the set it would serve is new (then
    /// marked refused).
    fn request_handles(&self, key: &RequestKey) -> RequestHandles {
        let peers = key.peers.values();
        let code = key.code.to_string();
        let grpc_status = key.grpc_status.map(|s| s.to_string()).unwrap_or_default();
        let flags = key.flags.as_str();
        let protocol = if key.grpc { "grpc" } else { "http" };
        let mut values: Vec<&str> = peers.iter().map(String::as_str).collect();
        values.extend([
            protocol,
            code.as_str(),
            grpc_status.as_str(),
            &flags,
            key.peers.security,
        ]);
        let families = self.istio.load();
        let side = key.peers.reporter.side();
        let mut tags = key.tags.iter().map(String::as_str);
        let mut refused = false;
        let [
            requests,
            duration,
            request_bytes,
            response_bytes,
            request_messages,
            response_messages,
        ] = &families.http;
        let grpc = key.grpc;
        RequestHandles {
            requests: requests.counter_if(true, side, &values, &mut tags, &mut refused),
            duration: duration.histogram(side, &values, &mut tags, &mut refused),
            request_bytes: request_bytes.histogram(side, &values, &mut tags, &mut refused),
            response_bytes: response_bytes.histogram(side, &values, &mut tags, &mut refused),
            request_messages: request_messages.counter_if(
                grpc,
                side,
                &values,
                &mut tags,
                &mut refused,
            ),
            response_messages: response_messages.counter_if(
                grpc,
                side,
                &values,
                &mut tags,
                &mut refused,
            ),
            refused,
        }
    }

    /// Handles for a TCP connection's labels (once per connection); a
    /// family's `None` (counted once as overflow) when it is at its series
    /// cap and the label set it would serve is new. A `tagOverrides` upsert on a TCP metric is evaluated
    /// once, over the connection (`source` is the downstream peer,
    /// `destination` the address it connected to, `sni` its TLS server
    /// name), as Istio's stats filter evaluates it on the connection's
    /// stream info: `request.*` and `response.*` are absent there, so an
    /// expression that reads them gives `unknown`.
    pub fn tcp_handles(
        &self,
        peers: &PeerLabels,
        flags: ResponseFlags,
        connection: TcpConnection<'_>,
    ) -> Option<TcpHandles> {
        self.tcp_series(peers, flags, connection, [true; 4])
    }

    /// Only the closed counter for a TCP connection's labels: a close under
    /// flags it was not opened with (Envoy's `DT`, set on the close) makes
    /// no opened or byte series of its own. `None` as for [`Self::tcp_handles`]
    /// (or when the metric is not recorded).
    pub fn tcp_closed(
        &self,
        peers: &PeerLabels,
        flags: ResponseFlags,
        connection: TcpConnection<'_>,
    ) -> Option<IntCounter> {
        self.tcp_series(peers, flags, connection, [false, false, false, true])?
            .closed
    }

    /// The counters of `families.tcp` (sent, received, opened, closed) that
    /// `wanted` says, for one connection's labels.
    fn tcp_series(
        &self,
        peers: &PeerLabels,
        flags: ResponseFlags,
        connection: TcpConnection<'_>,
        wanted: [bool; 4],
    ) -> Option<TcpHandles> {
        let peer_values = peers.values();
        let flags = flags.as_str();
        let mut values: Vec<&str> = peer_values.iter().map(String::as_str).collect();
        values.extend(["tcp", &flags, peers.security]);
        let families = self.istio.load();
        let side = peers.reporter.side();
        let mut upserted = Vec::new();
        let empty = HeaderMap::new();
        let attrs = Attributes {
            request: false,
            method: "",
            path: "",
            host: "",
            scheme: "",
            protocol: "tcp",
            request_headers: &empty,
            request_size: 0,
            response: None,
            source: connection.source,
            destination: connection.destination,
            mtls: peers.security == "mutual_tls",
            sni: connection.sni,
        };
        for family in &families.tcp {
            family.layout.evaluate(side, &attrs, &mut upserted);
        }
        // Every family takes its own upserts from `tags`, wanted or not.
        let mut tags = upserted.iter().map(String::as_str);
        let mut refused = false;
        let [sent, received, opened, closed] = [0, 1, 2, 3]
            .map(|i| families.tcp[i].counter_if(wanted[i], side, &values, &mut tags, &mut refused));
        if refused {
            self.tcp_overflow.refuse();
        }
        Some(TcpHandles {
            sent,
            received,
            opened,
            closed,
        })
    }

    /// The values of `side`'s `tagOverrides` upserts for one request, for
    /// [`RequestKey::tags`]; empty (no allocation) when the side has none.
    pub fn request_tags(&self, side: Side, attrs: &Attributes<'_>) -> Box<[String]> {
        let families = self.istio.load();
        if !families.http.iter().any(|f| f.layout.has_expressions(side)) {
            return Box::default();
        }
        let mut out = Vec::new();
        for family in &families.http {
            family.layout.evaluate(side, attrs, &mut out);
        }
        out.into_boxed_slice()
    }
}

/// What a TCP connection shows the `tagOverrides` expressions.
#[derive(Debug, Clone, Copy)]
pub struct TcpConnection<'a> {
    /// The downstream peer (`source.address`, `source.port`).
    pub source: SocketAddr,
    /// The address the downstream connected to, the original destination
    /// when captured (`destination.address`, `destination.port`).
    pub destination: SocketAddr,
    /// The TLS server name, when known (`connection.requested_server_name`).
    pub sni: Option<&'a str>,
}

/// A family's collector.
#[derive(Clone)]
enum Collector {
    Counter(IntCounterVec),
    Histogram(HistogramVec),
}

impl Collector {
    fn new(metric: IstioMetric, labels: &[String]) -> Result<Self, prometheus::Error> {
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let name = metric.prometheus_name();
        let help = match metric {
            IstioMetric::RequestCount => "Requests handled by the sidecar.",
            IstioMetric::RequestDuration => "Request duration in milliseconds.",
            IstioMetric::RequestSize => "Request body sizes in bytes.",
            IstioMetric::ResponseSize => "Response body sizes in bytes.",
            IstioMetric::TcpSentBytes => "Bytes sent to the downstream on TCP connections.",
            IstioMetric::TcpReceivedBytes => {
                "Bytes received from the downstream on TCP connections."
            }
            IstioMetric::TcpOpenedConnections => "TCP connections opened.",
            IstioMetric::TcpClosedConnections => "TCP connections closed.",
            IstioMetric::GrpcRequestMessages => "gRPC request messages.",
            IstioMetric::GrpcResponseMessages => "gRPC response messages.",
        };
        Ok(match metric {
            IstioMetric::RequestDuration | IstioMetric::RequestSize | IstioMetric::ResponseSize => {
                let opts = HistogramOpts::new(name, help).buckets(ENVOY_BUCKETS.to_vec());
                Self::Histogram(HistogramVec::new(opts, &labels)?)
            }
            _ => Self::Counter(IntCounterVec::new(Opts::new(name, help), &labels)?),
        })
    }
}

/// One Istio family, its shape, and the label sets its collector holds.
#[derive(Clone)]
struct IstioFamily {
    metric: IstioMetric,
    layout: Layout,
    collector: Collector,
    /// The cap on the collector's series, made with it.
    series: Arc<SeriesLimit>,
}

impl IstioFamily {
    fn new(metric: IstioMetric, max_series: usize) -> Result<Self, prometheus::Error> {
        let standard = standard_labels(metric);
        let layout = Layout::standard(standard);
        let collector = Collector::new(metric, &layout.labels)?;
        Ok(Self {
            metric,
            layout,
            collector,
            series: Arc::new(SeriesLimit::new(max_series)),
        })
    }

    fn standard(&self) -> &'static [&'static str] {
        standard_labels(self.metric)
    }

    /// Whether the served label values `values` fit the family's cap; sets
    /// `refused` when they do not.
    fn admit(&self, values: &[&str], refused: &mut bool) -> bool {
        let admitted = self.series.admit(&values);
        *refused |= !admitted;
        admitted
    }

    /// The counter of these labels when `wanted` (which creates its
    /// series) and the family has room for them; its upserts are taken
    /// from `tags` either way.
    fn counter_if<'a>(
        &self,
        wanted: bool,
        side: Side,
        values: &[&'a str],
        tags: &mut impl Iterator<Item = &'a str>,
        refused: &mut bool,
    ) -> Option<IntCounter> {
        let values = self.layout.values(side, values, tags)?;
        match &self.collector {
            Collector::Counter(c) if wanted && self.admit(&values, refused) => {
                Some(c.with_label_values(&values))
            }
            Collector::Counter(_) | Collector::Histogram(_) => None,
        }
    }

    /// The histogram of these labels when the family has room for them.
    fn histogram<'a>(
        &self,
        side: Side,
        values: &[&'a str],
        tags: &mut impl Iterator<Item = &'a str>,
        refused: &mut bool,
    ) -> Option<Histogram> {
        let values = self.layout.values(side, values, tags)?;
        match &self.collector {
            Collector::Histogram(h) if self.admit(&values, refused) => {
                Some(h.with_label_values(&values))
            }
            Collector::Histogram(_) | Collector::Counter(_) => None,
        }
    }
}

fn standard_labels(metric: IstioMetric) -> &'static [&'static str] {
    static HTTP: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(http_labels);
    static TCP: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(tcp_labels);
    match metric {
        IstioMetric::TcpSentBytes
        | IstioMetric::TcpReceivedBytes
        | IstioMetric::TcpOpenedConnections
        | IstioMetric::TcpClosedConnections => &TCP,
        _ => &HTTP,
    }
}

/// Istio's request families (count, duration, request and response sizes)
/// and TCP families (sent, received, opened, closed), as shaped now.
pub struct IstioFamilies {
    /// Increments with each reshaping, so cached handles are made anew.
    generation: u64,
    http: [IstioFamily; 6],
    tcp: [IstioFamily; 4],
}

impl IstioFamilies {
    fn standard(max_series: usize) -> Result<Self, prometheus::Error> {
        use IstioMetric::*;
        let family = |metric| IstioFamily::new(metric, max_series);
        Ok(Self {
            generation: 0,
            http: [
                family(RequestCount)?,
                family(RequestDuration)?,
                family(RequestSize)?,
                family(ResponseSize)?,
                family(GrpcRequestMessages)?,
                family(GrpcResponseMessages)?,
            ],
            tcp: [
                family(TcpSentBytes)?,
                family(TcpReceivedBytes)?,
                family(TcpOpenedConnections)?,
                family(TcpClosedConnections)?,
            ],
        })
    }

    fn all(&self) -> impl Iterator<Item = &IstioFamily> {
        self.http.iter().chain(&self.tcp)
    }
}
