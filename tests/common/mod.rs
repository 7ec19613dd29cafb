//! Shared pieces of the end-to-end tests: the real agent process, real
//! upstreams, a real OTLP receiver, a tonic echo service, clients, and a
//! Prometheus text parser. Each test binary uses a different subset.
#![allow(dead_code)]

pub mod agent;
pub mod client;
pub mod demo;
pub mod ext_authz;
pub mod gateway;
pub mod grpc;
pub mod mesh;
pub mod metrics;
pub mod otlp;
pub mod pki;
pub mod pods;
pub mod process;
pub mod upstream;
