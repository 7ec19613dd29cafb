//! tracemesh's sidecar agent: an HTTP/1.1 + HTTP/2 proxy that routes by
//! Istio's own resources, propagates W3C trace context, reports every hop as
//! an OTLP span and as Istio-compatible Prometheus metrics.
//!
//! The request path (DESIGN §2) is built in [`proxy`]; the config it reads is
//! an immutable [`model::Snapshot`] compiled from YAML by [`compile`].

pub mod admin;
pub mod by_address;
pub mod capture;
pub mod compile;
pub mod config;
pub mod connect;
pub mod ext_authz;
pub mod flags;
pub mod gateway;
pub mod header_scan;
pub mod host;
pub mod model;
pub mod path;
pub mod proxy;
pub mod reload;
pub mod resolve;
pub mod run;
pub mod telemetry;
pub mod tls;
pub mod trace_context;

pub use gateway::{GatewayAddresses, run_gateway_until};
pub use run::{AgentAddresses, AgentError, run_until};
