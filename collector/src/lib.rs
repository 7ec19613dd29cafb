//! tracemesh's trace collector.
//!
//! This crate will hold the collector's runtime role (see DESIGN §3): the OTLP
//! gRPC/HTTP and Zipkin receivers, the write-ahead log that makes every
//! acknowledged span durable, the tantivy span store partitioned by time with
//! its retention, span-derived RED metrics, and the OTLP and Jaeger exporters.
//! It is empty until the collector is built; nothing here pretends otherwise.
