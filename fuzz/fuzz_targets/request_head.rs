//! An HTTP/1.1 request head as a client sends it, parsed as hyper parses
//! it (httparse), then the agent's first step on the request path: one
//! reading of the host, the path and the headers rules decide on
//! (`canonical::settle`), under every `pathNormalization`, then the
//! authority routing reads. The first byte picks HTTP/1.1 or HTTP/2
//! semantics (an h2 request carries its authority in the URI).

#![no_main]

use http::{HeaderName, Request, Version};
use libfuzzer_sys::fuzz_target;
use tracemesh_agent::host::{request_authority, split_host_port};
use tracemesh_agent::path::PathNormalization;
use tracemesh_agent::proxy::settle_request_head;

const MODES: [PathNormalization; 4] = [
    PathNormalization::None,
    PathNormalization::Base,
    PathNormalization::MergeSlashes,
    PathNormalization::DecodeAndMergeSlashes,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, head)) = data.split_first() else {
        return;
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(head) else {
        return;
    };
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return;
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .version(if selector & 1 == 1 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        });
    for header in parsed.headers.iter() {
        builder = builder.header(header.name, header.value);
    }
    let Ok(request) = builder.body(()) else {
        return; // http refuses it, as hyper would answer 400
    };
    let decided = [
        HeaderName::from_static("cookie"),
        HeaderName::from_static("x-user"),
        HeaderName::from_static("authorization"),
    ];
    for mode in MODES {
        let mut req = request.clone();
        if let Ok(()) = settle_request_head(&mut req, mode, &decided) {
            if let Some(authority) = request_authority(&req) {
                let _ = split_host_port(authority);
            }
        }
    }
});
