//! OTLP/HTTP JSON bodies (the OTLP/JSON mapping), decoded as the receiver
//! does it (a span that cannot be read left out), then ingest.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tracemesh_collector::ingest::decode::{self, Encoding};

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = decode::traces(Encoding::Json, &data.to_vec().into()) {
        tracemesh_fuzz::ingest(decoded.request, None);
    }
});
