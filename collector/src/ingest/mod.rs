//! From a decoded request to an acknowledged batch: validation, admission
//! (the bounded ingest queue), the WAL append, then hand-off to the exporters.

pub mod decode;
mod lenient;
pub mod validate;
pub mod zipkin;

mod pipeline;

pub use pipeline::{Accepted, Ingest, IngestQueue, Receiver};
