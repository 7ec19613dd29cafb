//! Mutual TLS and workload identity: the workload's certificate (from files
//! or the CA, rotated without dropping connections), inbound mTLS by
//! PeerAuthentication, outbound mTLS and TLS origination by DestinationRule.

pub mod handshake;
pub mod io;
pub mod material;
pub mod provider;
pub mod select;
pub mod verify;
pub mod xfcc;

pub use handshake::{PeerTls, TlsFailure, TlsPlan};
pub use material::{TlsMaterial, is_mesh_alpn};
