//! The collector's settings: one serde struct read from YAML (`--config`),
//! overridden field by field by command-line flags ([`crate::cli`]). Field
//! docs are the reference: each says its unit and default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ingest::limits::SpanLimits;
use crate::serve::ListenTimeouts;
use crate::units::{ByteSize, HumanDuration};

/// Most partitions the accepted time range may span (retention plus clock
/// skew over the partition length): each is a tantivy index with its own
/// files and, while written, its own writer.
pub const MAX_PARTITIONS: u32 = 1000;

/// Everything a collector needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Where the write-ahead log and the span partitions live.
    /// Default `./tracemesh-data`.
    pub data_dir: PathBuf,
    /// Listen addresses (`host:port`, port 0 picks a free one).
    pub listen: ListenConfig,
    /// Every listener's header-read, body-read and idle timeouts.
    pub listen_timeouts: ListenTimeouts,
    /// Partitions whose newest possible span is older than this are dropped.
    /// Default `7d`.
    pub retention: HumanDuration,
    /// How far ahead of the collector's clock a span may start or end.
    /// Later spans are refused (OTLP partial success, reason `out_of_range`):
    /// a clock that far off is broken, and such a span would make a
    /// partition of its own that retention never reaches. Default `1h`.
    pub max_clock_skew: HumanDuration,
    /// When the data directory (span partitions and write-ahead log, as
    /// `du` counts them) grows past this, partitions are dropped, oldest
    /// first. The partition holding now, and any after it, are never
    /// dropped for it. Default: no cap.
    pub max_disk: Option<ByteSize>,
    /// The time span of one partition (one tantivy index). Default `1d`.
    pub partition: HumanDuration,
    /// How often new spans are committed to the index (and become
    /// searchable). Default `1s`.
    pub commit_interval: HumanDuration,
    /// Largest request body accepted, after decompression. Default `16MiB`.
    pub max_request_size: ByteSize,
    /// Spans acknowledged to senders but not yet in the index, at most; past
    /// it receivers answer 429 / RESOURCE_EXHAUSTED. Default 65536.
    pub ingest_queue_spans: usize,
    /// Memory the index writer may buffer before it flushes a segment.
    /// Default `128MiB`.
    pub index_memory: ByteSize,
    /// A WAL file is closed and a new one started past this size. Default `64MiB`.
    pub wal_segment_size: ByteSize,
    /// What one span may carry (OpenTelemetry's span limits): attributes
    /// per span, key and value lengths, events and links.
    pub span_limits: SpanLimits,
    /// Label sets (series) each span-derived metric family on `/metrics`
    /// holds at most (`traces_span_metrics_*`, `traces_service_graph_*`,
    /// `tracemesh_service_*`): the first ones seen are kept; measurements
    /// of further label sets go to the family's one overflow series,
    /// labelled only `otel_metric_overflow="true"`, and are counted in
    /// `tracemesh_collector_metric_series_overflow_total` (OpenTelemetry's
    /// metrics SDK cardinality limit). 1 to 1048576; default 5000.
    pub max_series_per_metric: usize,
    /// Where received spans and metrics are forwarded. Default none.
    pub exporters: Vec<ExporterConfig>,
}

/// The listeners of a collector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// OTLP over gRPC. Default `0.0.0.0:4317`.
    pub otlp_grpc: SocketAddr,
    /// OTLP over HTTP (protobuf and JSON). Default `0.0.0.0:4318`.
    pub otlp_http: SocketAddr,
    /// Zipkin v2 JSON. Default `0.0.0.0:9411`.
    pub zipkin: SocketAddr,
    /// `/metrics` now; the query API and UI when mounted. Default `0.0.0.0:16686`.
    pub http: SocketAddr,
}

/// One place received telemetry is forwarded to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExporterConfig {
    /// A name for logs and the `exporter` metric label. Default: protocol and endpoint.
    #[serde(default)]
    pub name: Option<String>,
    /// The wire protocol.
    pub protocol: ExportProtocol,
    /// `http://host:port` (gRPC), or the base URL of an OTLP/HTTP receiver
    /// (`/v1/traces` and `/v1/metrics` are appended unless the URL ends in one).
    pub endpoint: String,
    /// Headers (gRPC metadata) sent with every request, e.g. `authorization`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request compression. Default `gzip`.
    #[serde(default)]
    pub compression: Compression,
    /// How long one attempt may take. Default `10s`.
    #[serde(default = "default_export_timeout")]
    pub timeout: HumanDuration,
    /// Spans waiting to be sent, at most; past it new batches are dropped
    /// (and counted). Default 100000.
    #[serde(default = "default_export_queue")]
    pub queue_spans: usize,
    /// Spans sent in one request, at most. Default 8192.
    #[serde(default = "default_export_batch")]
    pub max_batch_spans: usize,
}

/// Exporter wire protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportProtocol {
    /// OTLP over gRPC (`TraceService/Export`, `MetricsService/Export`).
    OtlpGrpc,
    /// OTLP over HTTP with protobuf bodies.
    OtlpHttp,
    /// Jaeger's `api_v2.CollectorService/PostSpans` (spans only).
    JaegerGrpc,
}

impl ExportProtocol {
    /// The name used in flags and YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OtlpGrpc => "otlp_grpc",
            Self::OtlpHttp => "otlp_http",
            Self::JaegerGrpc => "jaeger_grpc",
        }
    }
}

/// Request body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    #[default]
    Gzip,
}

fn default_export_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn default_export_queue() -> usize {
    100_000
}

fn default_export_batch() -> usize {
    8192
}

impl ExporterConfig {
    /// An exporter with every default but protocol and endpoint.
    pub fn new(protocol: ExportProtocol, endpoint: String) -> Self {
        Self {
            name: None,
            protocol,
            endpoint,
            headers: BTreeMap::new(),
            compression: Compression::default(),
            timeout: default_export_timeout(),
            queue_spans: default_export_queue(),
            max_batch_spans: default_export_batch(),
        }
    }

    /// The name in logs and metric labels.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.protocol.as_str(), self.endpoint))
    }
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("tracemesh-data"),
            listen: ListenConfig::default(),
            listen_timeouts: ListenTimeouts::default(),
            retention: HumanDuration(Duration::from_secs(7 * 86_400)),
            max_clock_skew: HumanDuration(Duration::from_secs(3600)),
            max_disk: None,
            partition: HumanDuration(Duration::from_secs(86_400)),
            commit_interval: HumanDuration(Duration::from_secs(1)),
            max_request_size: ByteSize(16 << 20),
            ingest_queue_spans: 65_536,
            index_memory: ByteSize(128 << 20),
            wal_segment_size: ByteSize(64 << 20),
            span_limits: SpanLimits::default(),
            max_series_per_metric: crate::spanmetrics::DEFAULT_MAX_SERIES,
            exporters: Vec::new(),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
        Self {
            otlp_grpc: any(4317),
            otlp_http: any(4318),
            zipkin: any(9411),
            http: any(16686),
        }
    }
}

/// A settings file or value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML does not match the settings (the path names the field).
    #[error("{path}: {field}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The field, as a dotted path.
        field: String,
        /// What was wrong.
        message: String,
    },
    /// A value is out of its range.
    #[error("{field}: {message}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// Why.
        message: String,
    },
}

impl CollectorConfig {
    /// Reads a YAML settings file; unknown fields are errors.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|(field, message)| ConfigError::Parse {
            path: path.to_owned(),
            field,
            message,
        })
    }

    fn from_yaml(text: &str) -> Result<Self, (String, String)> {
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer)
            .map_err(|e| (e.path().to_string(), e.inner().to_string()))
    }

    /// Checks ranges the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.to_owned(),
            })
        };
        if self.partition.0 < Duration::from_secs(60) {
            return invalid("partition", "must be at least 1m");
        }
        if self.retention.0 < self.partition.0 {
            return invalid("retention", "must be at least one partition long");
        }
        // Spans are accepted from retention ago to max_clock_skew ahead,
        // so this bounds the partitions that can exist at once.
        let partitions = (self.retention.0 + self.max_clock_skew.0).as_secs_f64()
            / self.partition.0.as_secs_f64();
        if partitions > MAX_PARTITIONS as f64 {
            return invalid(
                "partition",
                &format!(
                    "retention plus max_clock_skew spans {partitions:.0} partitions, more than {MAX_PARTITIONS}: make partitions longer"
                ),
            );
        }
        if self.max_clock_skew.0 > Duration::from_secs(7 * 86_400) {
            return invalid("max_clock_skew", "must be at most 7d");
        }
        let t = &self.listen_timeouts;
        if [t.read_header_timeout, t.read_body_timeout, t.idle_timeout]
            .iter()
            .any(|d| d.0.is_zero())
        {
            return invalid("listen_timeouts", "every timeout must be positive");
        }
        if self.commit_interval.0.is_zero() {
            return invalid("commit_interval", "must be positive");
        }
        if self.ingest_queue_spans == 0 {
            return invalid("ingest_queue_spans", "must be positive");
        }
        if self.span_limits.attribute_key_length_limit == 0
            || self.span_limits.attribute_value_length_limit == 0
        {
            return invalid(
                "span_limits",
                "attribute_key_length_limit and attribute_value_length_limit must be positive",
            );
        }
        if !(1..=crate::spanmetrics::MAX_SERIES_BOUND).contains(&self.max_series_per_metric) {
            return invalid(
                "max_series_per_metric",
                &format!("must be from 1 to {}", crate::spanmetrics::MAX_SERIES_BOUND),
            );
        }
        if self.index_memory.0 < 16 << 20 {
            return invalid("index_memory", "must be at least 16MiB");
        }
        for exporter in &self.exporters {
            if !(exporter.endpoint.starts_with("http://")
                || exporter.endpoint.starts_with("https://"))
            {
                return invalid("exporters.endpoint", "must start with http:// or https://");
            }
            if exporter.endpoint.starts_with("https://") {
                return invalid(
                    "exporters.endpoint",
                    "https is not supported yet: use http:// (plaintext)",
                );
            }
            if exporter.timeout.0 < Duration::from_millis(1) {
                return invalid(
                    "exporters.timeout",
                    "must be at least 1ms: every attempt would time out unanswered",
                );
            }
            if exporter.queue_spans == 0 || exporter.max_batch_spans == 0 {
                return invalid(
                    "exporters.queue_spans",
                    "queue_spans and max_batch_spans must be positive",
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example the README points to names every setting with its
    /// default: it parses (no unknown key) into exactly the defaults.
    #[test]
    fn the_example_file_is_every_default() {
        let text = include_str!("../../examples/collector.yaml");
        let example = CollectorConfig::from_yaml(text).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            format!("{example:?}"),
            format!("{:?}", CollectorConfig::default())
        );
        let exporter = text
            .lines()
            .skip_while(|l| !l.starts_with("# exporters:"))
            .skip(1)
            .map(|l| l.trim_start_matches('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let commented = CollectorConfig::from_yaml(&format!("exporters:\n{exporter}"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(commented.exporters.len(), 1);
    }

    #[test]
    fn yaml_overrides_defaults_and_rejects_unknown_fields() {
        let config = CollectorConfig::from_yaml(
            "data_dir: /var/lib/tm\nretention: 2d\nlisten:\n  otlp_grpc: 127.0.0.1:0\nexporters:\n  - protocol: otlp_http\n    endpoint: http://backend:4318\n    headers: {authorization: Bearer x}\n",
        )
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/tm"));
        assert_eq!(config.retention.0, Duration::from_secs(2 * 86_400));
        assert_eq!(config.listen.otlp_grpc.port(), 0);
        assert_eq!(config.listen.zipkin.port(), 9411);
        assert_eq!(config.exporters[0].protocol, ExportProtocol::OtlpHttp);
        assert_eq!(config.exporters[0].compression, Compression::Gzip);
        config.validate().unwrap();

        let (field, message) =
            CollectorConfig::from_yaml("listen:\n  otlp_grcp: 127.0.0.1:0\n").unwrap_err();
        assert_eq!(field, "listen.otlp_grcp");
        assert!(message.contains("otlp_grcp"), "{message}");
    }

    #[test]
    fn the_series_cap_is_read_and_kept_in_range() {
        let config = CollectorConfig::from_yaml("max_series_per_metric: 20\n").unwrap();
        assert_eq!(config.max_series_per_metric, 20);
        config.validate().unwrap();
        assert_eq!(
            CollectorConfig::default().max_series_per_metric,
            crate::spanmetrics::DEFAULT_MAX_SERIES
        );
        for max_series_per_metric in [0, crate::spanmetrics::MAX_SERIES_BOUND + 1] {
            let config = CollectorConfig {
                max_series_per_metric,
                ..Default::default()
            };
            assert!(matches!(
                config.validate(),
                Err(ConfigError::Invalid {
                    field: "max_series_per_metric",
                    ..
                })
            ));
        }
    }

    #[test]
    fn validate_rejects_a_retention_shorter_than_a_partition() {
        let config = CollectorConfig {
            retention: HumanDuration(Duration::from_secs(3600)),
            ..Default::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid {
                field: "retention",
                ..
            })
        ));
    }
}
