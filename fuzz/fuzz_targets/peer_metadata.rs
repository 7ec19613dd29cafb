//! The peer-metadata header a caller's sidecar sends (Istio's
//! `x-envoy-peer-metadata`: base64 of a protobuf Struct), read from any
//! caller on the inbound listener.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tracemesh_agent::telemetry::peer_metadata::decode(data);
});
