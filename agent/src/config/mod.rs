//! The config file as written: serde types mirroring Istio's resources field
//! for field (unknown fields are errors), the Agent bootstrap, and the loader
//! that splits documents and names every problem's file, document and field.

pub mod agent;
pub mod destination_rule;
pub mod diagnostics;
pub mod documents;
pub mod duration;
pub mod envoy_filter;
pub mod faults;
pub mod file_stamp;
pub mod gateway;
pub mod gateway_api;
pub mod ingress_gateway;
pub mod mesh;
pub mod meta;
pub mod rate_limit;
pub mod security;
pub mod service_entry;
pub mod source;
pub mod telemetry;
pub mod virtual_service;
pub mod workload;
