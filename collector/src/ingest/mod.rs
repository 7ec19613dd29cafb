//! From a decoded request to an acknowledged batch: validation, admission
//! (the bounded ingest queue), the WAL append, then hand-off to the exporters.

mod confine;
pub mod decode;
mod lenient;
pub mod limits;
pub mod validate;
pub mod zipkin;

mod pipeline;

pub use crate::metrics::Receiver;
pub use pipeline::{Accepted, Ingest, IngestParts};
