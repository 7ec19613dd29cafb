//! The `tracemesh collector` flags. Each overrides the same setting of the
//! YAML file given with `--config`; exporters from flags are added to the
//! file's.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{CollectorConfig, Compression, ConfigError, ExportProtocol, ExporterConfig};
use crate::units::{ByteSize, HumanDuration};

/// Flags of `tracemesh collector`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CollectorArgs {
    /// A YAML settings file; flags override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the write-ahead log and span partitions live [default: ./tracemesh-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// OTLP/gRPC listen address [default: 0.0.0.0:4317].
    #[arg(long, value_name = "HOST:PORT")]
    pub otlp_grpc: Option<SocketAddr>,
    /// OTLP/HTTP listen address [default: 0.0.0.0:4318].
    #[arg(long, value_name = "HOST:PORT")]
    pub otlp_http: Option<SocketAddr>,
    /// Zipkin v2 listen address [default: 0.0.0.0:9411].
    #[arg(long, value_name = "HOST:PORT")]
    pub zipkin: Option<SocketAddr>,
    /// Listen address of /metrics (and the query API and UI) [default: 0.0.0.0:16686].
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<SocketAddr>,
    /// Drop partitions older than this, e.g. 7d, 36h [default: 7d].
    #[arg(long)]
    pub retention: Option<HumanDuration>,
    /// Refuse spans that start or end further ahead of this machine's clock,
    /// e.g. 10m, 2h [default: 1h].
    #[arg(long)]
    pub max_clock_skew: Option<HumanDuration>,
    /// Drop the oldest partitions while the data directory takes more than
    /// this on disk, e.g. 50GiB (the partition holding now is kept).
    #[arg(long)]
    pub max_disk: Option<ByteSize>,
    /// Time span of one partition, e.g. 1d, 6h [default: 1d].
    #[arg(long)]
    pub partition: Option<HumanDuration>,
    /// How often new spans are committed and become searchable [default: 1s].
    #[arg(long)]
    pub commit_interval: Option<HumanDuration>,
    /// Spans acknowledged but not yet indexed, at most, before receivers push
    /// back with 429 / RESOURCE_EXHAUSTED [default: 65536].
    #[arg(long)]
    pub ingest_queue_spans: Option<usize>,
    /// Largest request body, after decompression [default: 16MiB].
    #[arg(long)]
    pub max_request_size: Option<ByteSize>,
    /// Where received spans and metrics are forwarded.
    #[command(flatten)]
    pub export: ExportArgs,
}

/// Exporter flags: where a collector forwards what it receives. Shared by
/// `tracemesh collector` and every command that embeds a collector (the demo).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ExportArgs {
    /// Forward spans and metrics over OTLP/gRPC to this endpoint (repeatable).
    #[arg(long, value_name = "URL")]
    pub export_otlp_grpc: Vec<String>,
    /// Forward spans and metrics over OTLP/HTTP to this base URL (repeatable).
    #[arg(long, value_name = "URL")]
    pub export_otlp_http: Vec<String>,
    /// Forward spans to a Jaeger collector's gRPC endpoint (repeatable).
    #[arg(long, value_name = "URL")]
    pub export_jaeger: Vec<String>,
    /// A header sent by the exporters given by flags, as KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub export_header: Vec<String>,
    /// Compression of the exporters given by flags [default: gzip].
    #[arg(long, value_enum)]
    pub export_compression: Option<Compression>,
    /// Queue size, in spans, of each exporter given by flags [default: 100000].
    #[arg(long)]
    pub export_queue_spans: Option<usize>,
}

impl ExportArgs {
    /// One exporter per endpoint flag, each with the shared header,
    /// compression and queue flags.
    pub fn exporters(&self) -> Result<Vec<ExporterConfig>, ConfigError> {
        let mut headers = std::collections::BTreeMap::new();
        for header in &self.export_header {
            let (key, value) = header.split_once('=').ok_or_else(|| ConfigError::Invalid {
                field: "export-header",
                message: format!("{header:?} is not KEY=VALUE"),
            })?;
            headers.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
        let flagged = [
            (ExportProtocol::OtlpGrpc, &self.export_otlp_grpc),
            (ExportProtocol::OtlpHttp, &self.export_otlp_http),
            (ExportProtocol::JaegerGrpc, &self.export_jaeger),
        ];
        let mut exporters = Vec::new();
        for (protocol, endpoints) in flagged {
            for endpoint in endpoints {
                let mut exporter = ExporterConfig::new(protocol, endpoint.clone());
                exporter.headers = headers.clone();
                if let Some(compression) = self.export_compression {
                    exporter.compression = compression;
                }
                if let Some(queue) = self.export_queue_spans {
                    exporter.queue_spans = queue;
                }
                exporters.push(exporter);
            }
        }
        Ok(exporters)
    }
}

impl CollectorArgs {
    /// The settings: the file's (or the defaults), then the flags on top,
    /// validated.
    pub fn resolve(&self) -> Result<CollectorConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => CollectorConfig::from_file(path)?,
            None => CollectorConfig::default(),
        };
        macro_rules! set {
            ($($flag:ident => $($field:ident).+),* $(,)?) => {
                $(if let Some(value) = &self.$flag { config.$($field).+ = value.clone(); })*
            };
        }
        set!(
            data_dir => data_dir,
            otlp_grpc => listen.otlp_grpc,
            otlp_http => listen.otlp_http,
            zipkin => listen.zipkin,
            http => listen.http,
            retention => retention,
            max_clock_skew => max_clock_skew,
            partition => partition,
            commit_interval => commit_interval,
            ingest_queue_spans => ingest_queue_spans,
            max_request_size => max_request_size,
        );
        if self.max_disk.is_some() {
            config.max_disk = self.max_disk;
        }
        config.exporters.extend(self.export.exporters()?);
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_defaults_and_add_exporters() {
        let args = CollectorArgs {
            otlp_grpc: Some("127.0.0.1:0".parse().unwrap()),
            retention: Some("2d".parse().unwrap()),
            export: ExportArgs {
                export_otlp_grpc: vec!["http://127.0.0.1:14317".into()],
                export_header: vec!["Authorization=Bearer t".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!(config.listen.otlp_grpc.port(), 0);
        assert_eq!(config.listen.otlp_http.port(), 4318);
        assert_eq!(config.retention.to_string(), "2d");
        assert_eq!(config.exporters.len(), 1);
        assert_eq!(config.exporters[0].headers["authorization"], "Bearer t");
    }

    #[test]
    fn a_header_without_equals_is_rejected() {
        let args = CollectorArgs {
            export: ExportArgs {
                export_header: vec!["nope".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(args.resolve().is_err());
    }
}
