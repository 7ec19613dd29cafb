//! tracemesh's trace collector (DESIGN §3).
//!
//! ```text
//! receivers (OTLP gRPC, OTLP HTTP, Zipkin) → validate → WAL append (group
//! commit, fsync) → acknowledge → indexer thread (tantivy partitions,
//! span-derived metrics) ; exporters (OTLP gRPC/HTTP, Jaeger) fed after the ack
//! ```
//!
//! The query service reads the store through [`store::SpanReader`].

pub mod attributes;
pub mod cli;
pub mod config;
pub mod edges;
pub mod error;
pub mod events;
pub mod export;
pub mod handoff;
pub mod ids;
pub mod indexer;
pub mod ingest;
pub mod metrics;
pub mod otlp_metrics;
pub mod outcome;
pub mod receiver;
pub mod resends;
pub mod run;
pub mod serve;
pub mod spanmetrics;
pub mod store;
pub mod units;
pub mod wal;
pub mod wire;

/// Jaeger's `api_v2` protobuf messages and gRPC stubs, compiled at build time
/// from `proto/jaeger/api_v2.proto`.
#[allow(missing_docs, clippy::all)]
pub mod jaeger_proto {
    tonic::include_proto!("jaeger.api_v2");
}

pub use cli::{CollectorArgs, ExportArgs};
pub use config::CollectorConfig;
pub use run::{Collector, CollectorAddresses, CollectorError};
