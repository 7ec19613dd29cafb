//! The bytes an upstream sends back on an HTTP/1.1 connection, then its
//! close, read as the agent's own HTTP/1.1 client reads them: the status
//! line and headers (httparse, at most 100 lines and 80 KiB), the 1xx
//! answers it skips, the body's framing (RFC 9112 §6.3) and the body by
//! its length, its chunks and trailers, or until the close. The first byte
//! picks whether the request was a HEAD. The read must end, with a status
//! or a reason, whatever the bytes; a body read by its length or chunks is
//! never longer than the bytes sent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tracemesh_agent::proxy::read_upstream_response;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    if let Ok((status, length)) = read_upstream_response(bytes, selector & 1 == 1) {
        assert!(length <= bytes.len() as u64, "a body longer than what was sent");
        assert!(!status.is_informational() || status.as_u16() == 101);
    }
});
