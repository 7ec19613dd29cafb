//! What the agent reports: spans, Istio metrics, access logs, and the peer
//! metadata exchange that fills both sides' labels.

pub mod access_log;
mod background;
pub mod grpc_messages;
pub mod hop_span;
pub mod metrics;
mod otlp_export;
pub mod otlp_wire;
pub mod overrides;
pub mod peer_metadata;
pub mod record;
pub mod sampler;
pub mod series;
pub mod span;
pub mod spans;
