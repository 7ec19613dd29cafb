//! The first bytes of a captured connection: HTTP/1.x request line, the
//! HTTP/2 preface, or a TLS ClientHello with its SNI and ALPN, as protocol
//! detection reads them, at every length a client may have sent so far.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tracemesh_agent::capture::sniff::{Sniffed, sniff, sniff_final};

fuzz_target!(|data: &[u8]| {
    for decided in [sniff(data), sniff_final(data)] {
        if let Sniffed::Tls(hello) = decided {
            let _ = hello.alpn().count();
        }
    }
});
