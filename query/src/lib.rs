//! tracemesh's query service.
//!
//! This crate will hold the query role (see DESIGN §4): the engine that answers
//! trace-by-id, trace search, latency quantiles, error rates and the dependency
//! graph over the collector's store, the Jaeger query API for Grafana and
//! Jaeger UI, tracemesh's native API, and the embedded trace UI.
//! It is empty until the query service is built; nothing here pretends otherwise.
