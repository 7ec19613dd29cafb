//! The ext_authz clients against real authorizers on real sockets: Envoy's
//! HTTP protocol and the `envoy.service.auth.v3` gRPC service. Allow (with
//! the authorizer's header edits), deny (with its status, headers and
//! body), the authorizer down with `failOpen` true and false, timeouts, and
//! the body in the check.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tracemesh_agent::ext_authz::{
    BodySettings, CheckOutcome, CheckRequest, CommonSettings, ExtAuthzClient, GrpcAuthzSettings,
    HttpAuthzSettings,
};
use tracemesh_agent::model::authz::Pattern;

fn common(target: SocketAddr, fail_open: bool) -> CommonSettings {
    CommonSettings {
        provider: "test-authz".into(),
        service: target.ip().to_string(),
        port: target.port(),
        target: target.to_string(),
        timeout: Duration::from_secs(10),
        fail_open,
        status_on_error: StatusCode::SERVICE_UNAVAILABLE,
        body: None,
    }
}

fn http_settings(target: SocketAddr, fail_open: bool) -> HttpAuthzSettings {
    HttpAuthzSettings {
        common: common(target, fail_open),
        path_prefix: "/authz".into(),
        include_request_headers: vec![Pattern::parse("x-user"), Pattern::parse("x-delay*")],
        additional_headers: vec![(
            HeaderName::from_static("x-mesh"),
            HeaderValue::from_static("tracemesh"),
        )],
        headers_to_upstream_on_allow: vec![Pattern::parse("x-authz-user")],
        headers_to_downstream_on_deny: vec![Pattern::parse("x-denied-by")],
        headers_to_downstream_on_allow: vec![Pattern::parse("x-authz-checked")],
    }
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
        .collect()
}

fn request<'a>(headers: &'a HeaderMap, body: Option<&'a [u8]>) -> CheckRequest<'a> {
    CheckRequest {
        method: "POST",
        scheme: "http",
        host: "reviews.default:9080",
        path_and_query: "/api/items?id=7",
        headers,
        body,
        body_partial: false,
        body_len: body.map(|b| b.len() as u64),
        protocol: "HTTP/1.1",
        source: "10.1.0.7:40000".parse().unwrap(),
        destination: "10.1.0.9:9080".parse().unwrap(),
        source_principal: Some("spiffe://cluster.local/ns/default/sa/productpage"),
        destination_principal: "spiffe://cluster.local/ns/default/sa/reviews",
        sni: None,
    }
}

fn pairs(list: &[(HeaderName, HeaderValue)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn http_allow_sends_envoys_check_and_applies_the_named_headers() {
    let (addr, seen) = common::ext_authz::start_http().await;
    let client = ExtAuthzClient::http(Arc::new(http_settings(addr, false)));
    let sent = headers(&[
        ("x-user", "alice"),
        ("x-other", "not-sent"),
        ("authorization", "Bearer abc"),
        ("x-remove-me", "1"),
    ]);
    let verdict = client.check(&request(&sent, None)).await;
    assert_eq!(verdict.details, "ext_authz_ok");
    let CheckOutcome::Allow(edits) = verdict.outcome else {
        panic!("{verdict:?}");
    };
    assert_eq!(
        pairs(&edits.upstream_set),
        [("x-authz-user".into(), "alice".into())]
    );
    assert_eq!(
        edits.upstream_remove,
        [HeaderName::from_static("x-remove-me")]
    );
    assert_eq!(
        pairs(&edits.downstream_add),
        [("x-authz-checked".into(), "yes".into())]
    );
    let check = seen.lock().unwrap()[0].clone();
    assert_eq!(check.method, "POST");
    assert_eq!(check.path, "/authz/api/items?id=7");
    assert_eq!(check.header("host"), Some("reviews.default:9080"));
    assert_eq!(check.header("x-user"), Some("alice"));
    assert_eq!(
        check.header("authorization"),
        Some("Bearer abc"),
        "always sent"
    );
    assert_eq!(
        check.header("x-mesh"),
        Some("tracemesh"),
        "includeAdditionalHeadersInCheck"
    );
    assert_eq!(check.header("content-length"), Some("0"));
    assert_eq!(
        check.header("x-other"),
        None,
        "not in includeRequestHeadersInCheck"
    );
}

#[tokio::test]
async fn http_deny_passes_the_authorizers_status_body_and_named_headers() {
    let (addr, _) = common::ext_authz::start_http().await;
    let client = ExtAuthzClient::http(Arc::new(http_settings(addr, false)));
    let sent = headers(&[("x-user", "mallory")]);
    let verdict = client.check(&request(&sent, None)).await;
    assert_eq!(verdict.details, "ext_authz_denied");
    let CheckOutcome::Deny(denied) = verdict.outcome else {
        panic!("{verdict:?}");
    };
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(&denied.body[..], b"denied by test-authz");
    assert_eq!(
        pairs(&denied.headers),
        [("x-denied-by".into(), "test-authz".into())]
    );
}

#[tokio::test]
async fn an_authorizer_failure_follows_fail_open() {
    // Down: a port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let sent = headers(&[("x-user", "alice")]);
    for fail_open in [false, true] {
        for client in [
            ExtAuthzClient::http(Arc::new(http_settings(closed, fail_open))),
            ExtAuthzClient::grpc(Arc::new(GrpcAuthzSettings {
                common: common(closed, fail_open),
            })),
        ] {
            let verdict = client.check(&request(&sent, None)).await;
            match (fail_open, verdict.outcome) {
                (true, CheckOutcome::Allow(edits)) => {
                    assert_eq!(verdict.details, "ext_authz_failure_mode_allowed");
                    assert!(edits.upstream_set.is_empty());
                }
                (false, CheckOutcome::Deny(denied)) => {
                    assert_eq!(verdict.details, "ext_authz_error");
                    assert_eq!(
                        denied.status,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "statusOnError"
                    );
                }
                (_, other) => panic!("failOpen {fail_open}: {other:?}"),
            }
        }
    }
    // A 5xx answer is a failure too (Envoy's reading), not a denial.
    let (addr, _) = common::ext_authz::start_http().await;
    let client = ExtAuthzClient::http(Arc::new(http_settings(addr, false)));
    let sent = headers(&[("x-user", "alice"), ("x-fail", "1")]);
    let mut settings = http_settings(addr, false);
    settings
        .include_request_headers
        .push(Pattern::parse("x-fail"));
    let client_failing = ExtAuthzClient::http(Arc::new(settings));
    let verdict = client_failing.check(&request(&sent, None)).await;
    assert_eq!(verdict.details, "ext_authz_error");
    drop(client);
}

#[tokio::test]
async fn a_slow_authorizer_times_out() {
    let (http_addr, _) = common::ext_authz::start_http().await;
    let (grpc_addr, _) = common::ext_authz::start_grpc().await;
    let sent = headers(&[("x-user", "alice"), ("x-delay-ms", "5000")]);
    let mut http = http_settings(http_addr, false);
    http.common.timeout = Duration::from_millis(200);
    let mut grpc = common(grpc_addr, false);
    grpc.timeout = Duration::from_millis(200);
    for client in [
        ExtAuthzClient::http(Arc::new(http)),
        ExtAuthzClient::grpc(Arc::new(GrpcAuthzSettings { common: grpc })),
    ] {
        let started = std::time::Instant::now();
        let verdict = client.check(&request(&sent, None)).await;
        assert_eq!(verdict.details, "ext_authz_error", "{verdict:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "the timeout bounds the check"
        );
    }
}

#[tokio::test]
async fn grpc_allow_and_deny_follow_the_check_response() {
    let (addr, seen) = common::ext_authz::start_grpc().await;
    let client = ExtAuthzClient::grpc(Arc::new(GrpcAuthzSettings {
        common: common(addr, false),
    }));
    let sent = headers(&[("x-user", "alice"), ("x-request-id", "r-1")]);
    let verdict = client.check(&request(&sent, None)).await;
    let CheckOutcome::Allow(edits) = verdict.outcome else {
        panic!("{verdict:?}");
    };
    assert_eq!(
        pairs(&edits.upstream_set),
        [("x-authz-user".into(), "alice".into())]
    );
    assert_eq!(
        pairs(&edits.upstream_append),
        [("x-authz-tag".into(), "appended".into())]
    );
    assert_eq!(
        edits.upstream_remove,
        [HeaderName::from_static("x-remove-me")]
    );
    assert_eq!(
        pairs(&edits.downstream_add),
        [("x-authz-checked".into(), "yes".into())]
    );
    let check = seen.lock().unwrap()[0].clone();
    assert_eq!(check.path, "/api/items?id=7");
    assert_eq!(check.header(":authority"), Some("reviews.default:9080"));
    assert_eq!(check.header(":method"), Some("POST"));
    let (address, principal) = check.source.clone().unwrap();
    assert!(address.contains("10.1.0.7"), "{address}");
    assert_eq!(
        principal,
        "spiffe://cluster.local/ns/default/sa/productpage"
    );

    let sent = headers(&[("x-user", "mallory"), ("x-deny-status", "401")]);
    let verdict = client.check(&request(&sent, None)).await;
    let CheckOutcome::Deny(denied) = verdict.outcome else {
        panic!("{verdict:?}");
    };
    assert_eq!(
        denied.status,
        StatusCode::UNAUTHORIZED,
        "the authorizer's status"
    );
    assert_eq!(&denied.body[..], b"denied by test-authz");
    assert_eq!(
        pairs(&denied.headers),
        [("x-denied-by".into(), "test-authz".into())]
    );
}

#[tokio::test]
async fn the_body_read_ahead_goes_in_the_check() {
    // The request path reads the body ahead and cuts it (end to end in
    // agent_identity); the clients send what they are given.
    let (http_addr, http_seen) = common::ext_authz::start_http().await;
    let (grpc_addr, grpc_seen) = common::ext_authz::start_grpc().await;
    let body = |pack_as_bytes| {
        Some(BodySettings {
            max_request_bytes: 8,
            allow_partial_message: true,
            pack_as_bytes,
        })
    };
    let sent = headers(&[("x-user", "alice"), ("x-envoy-auth-partial-body", "forged")]);
    let mut http = http_settings(http_addr, false);
    http.common.body = body(false);
    http.include_request_headers
        .push(Pattern::parse("x-envoy-auth-partial-body"));
    let http = ExtAuthzClient::http(Arc::new(http));
    let mut grpc = common(grpc_addr, false);
    grpc.body = body(true);
    let grpc = ExtAuthzClient::grpc(Arc::new(GrpcAuthzSettings { common: grpc }));
    let mut cut = request(&sent, Some(b"much too"));
    cut.body_partial = true;
    let verdict = http.check(&cut).await;
    assert!(matches!(verdict.outcome, CheckOutcome::Allow(_)));
    let check = http_seen.lock().unwrap()[0].clone();
    assert_eq!(check.body, b"much too");
    assert_eq!(check.header("content-length"), Some("8"));
    assert_eq!(check.header("x-envoy-auth-partial-body"), Some("true"));
    let verdict = grpc.check(&request(&sent, Some(b"short"))).await;
    assert!(matches!(verdict.outcome, CheckOutcome::Allow(_)));
    let check = grpc_seen.lock().unwrap()[0].clone();
    assert_eq!(
        (check.body.as_slice(), check.raw_body),
        (&b"short"[..], true)
    );
    assert_eq!(
        check.header("x-envoy-auth-partial-body"),
        Some("false"),
        "the client's own is replaced"
    );
}
