//! tracemesh's certificate authority: SPIFFE workload identities
//! (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`) issued as
//! short-lived certificates, so sidecars can talk mutual TLS and
//! AuthorizationPolicies can name who is calling.
//!
//! `tracemesh ca init` makes (or plugs in) the signing material, `ca serve`
//! signs agents' CSRs over HTTPS against bootstrap tokens, `ca issue` writes
//! a key and certificate for file-based setups.

pub mod authority;
pub mod client;
pub mod files;
pub mod server;
pub mod spiffe;
pub mod tokens;

pub use authority::{Authority, CaError, Issued, PlugIn};
pub use client::{CaClient, RequestError};
pub use spiffe::{CertInfo, SpiffeId, spiffe_id_of};
