//! A caller's trace context: `traceparent`/`tracestate` (W3C) and B3 single
//! and multi headers, in any number and order. Each input line is one
//! header: its first byte picks the name, the rest is the value.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some((&pick, value)) = line.split_first() else {
            continue;
        };
        let name = HeaderName::from_static(NAMES[usize::from(pick) % NAMES.len()]);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
        let _ = tracemesh_agent::trace_context::parse_traceparent(value);
    }
    let _ = tracemesh_agent::trace_context::extract(&headers);
});
