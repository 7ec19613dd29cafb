//! What a VirtualService rule does besides routing: fault injection,
//! mirroring, redirects, rewrites and direct responses.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::agent::Agent;
use common::client::Client;
use common::grpc::{self, Echo};
use common::mesh::{Ep, NO_COLLECTOR, agent, service_entry};
use common::upstream::{FNV_START, Upstream, closed_port, fnv};
use http::Request;
use http_body_util::Full;

fn virtual_service(host: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {host}, namespace: default}}\nspec:\n  hosts: [{host}]\n  http:\n{rules}"
    )
}

async fn single(app: &Upstream, extra: &str) -> Agent {
    let yaml = agent("frontend", closed_port().await, NO_COLLECTOR)
        + &service_entry(
            "app",
            9080,
            "HTTP",
            &[Ep {
                addr: app.addr,
                labels: &[],
            }],
        )
        + extra;
    Agent::start(&yaml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_delay_and_abort_hit_their_percentages() {
    let app = Upstream::start("app").await;
    let rules = r#"  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 2ms, percentage: {value: 20}}}
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 30}}}
    route: [{destination: {host: app}}]
"#;
    let agent = single(&app, &virtual_service("app", rules)).await;
    let client = Client::h1(agent.outbound);
    let mut aborted = 0;
    for _ in 0..1000 {
        let reply = client.get("http://app:9080/abort").await;
        if reply.status == 418 {
            assert_eq!(
                reply.header("x-tracemesh-response-flags").as_deref(),
                Some("FI")
            );
            assert_eq!(&reply.body[..], b"fault filter abort");
            aborted += 1;
        } else {
            assert_eq!(reply.status, 200);
        }
    }
    // Binomial(1000, 0.3): mean 300, standard deviation 14.5.
    assert!((235..=365).contains(&aborted), "{aborted} of 1000 aborted");
    assert_eq!(
        app.count(),
        1000 - aborted,
        "aborted requests never reach the upstream"
    );
    for _ in 0..1000 {
        assert_eq!(client.get("http://app:9080/delay").await.status, 200);
    }
    let scrape = agent.metrics().await;
    let delayed = scrape.sum(
        "istio_requests_total",
        &[("response_flags", "DI"), ("response_code", "200")],
    );
    // Binomial(1000, 0.2): mean 200, standard deviation 12.6.
    assert!(
        (140.0..=260.0).contains(&delayed),
        "{delayed} of 1000 delayed"
    );
    assert_eq!(
        scrape.sum(
            "istio_requests_total",
            &[("response_flags", "FI"), ("response_code", "418")]
        ),
        aborted as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grpc_abort_answers_with_a_grpc_status() {
    let echo = grpc::start().await;
    let yaml = agent("frontend", closed_port().await, NO_COLLECTOR)
        + &service_entry(
            "echo",
            50051,
            "GRPC",
            &[Ep {
                addr: echo,
                labels: &[],
            }],
        )
        + &virtual_service(
            "echo",
            "  - fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}\n    route: [{destination: {host: echo}}]\n",
        );
    let agent = Agent::start(&yaml);
    let mut client = grpc::client(agent.outbound, "http://echo:50051").await;
    let status = grpc::unary(
        &mut client,
        Echo {
            text: "x".into(),
            ..Echo::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirrors_get_copies_without_slowing_the_caller() {
    let main = Upstream::start("main").await;
    let shadow = Upstream::start("shadow").await;
    shadow.delay_all(1500);
    let rules = r#"  - match: [{uri: {prefix: /half}}]
    mirror: {host: shadow}
    mirrorPercentage: {value: 50}
    route: [{destination: {host: app}}]
  - mirror: {host: shadow}
    route: [{destination: {host: app}}]
"#;
    let yaml = agent("frontend", closed_port().await, NO_COLLECTOR)
        + &service_entry(
            "app",
            9080,
            "HTTP",
            &[Ep {
                addr: main.addr,
                labels: &[],
            }],
        )
        + &service_entry(
            "shadow",
            9080,
            "HTTP",
            &[Ep {
                addr: shadow.addr,
                labels: &[],
            }],
        )
        + &virtual_service("app", rules);
    let agent = Agent::start(&yaml);
    let client = Client::h1(agent.outbound);
    let body = Bytes::from_static(b"a body the mirror must get too");
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let req = Request::post("http://app:9080/copy")
            .body(Full::new(body.clone()))
            .unwrap();
        assert_eq!(client.send(req).await.status, 200);
        slowest = slowest.max(started.elapsed());
    }
    // The mirror takes 1.5s to answer; the caller never waits for it.
    assert!(
        slowest < Duration::from_millis(1000),
        "a request took {slowest:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while shadow.count() < 10 {
        assert!(
            Instant::now() < deadline,
            "only {} copies arrived",
            shadow.count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let copy = shadow.seen().pop().unwrap();
    assert_eq!(copy.headers["host"], "app-shadow:9080");
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.body_hash, fnv(FNV_START, &body));
    assert_eq!(main.count(), 10);

    shadow.delay_all(0);
    for _ in 0..400 {
        client.get("http://app:9080/half").await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let copies = loop {
        let halves = shadow.seen().iter().filter(|s| s.path == "/half").count();
        // Binomial(400, 0.5): mean 200, standard deviation 10; wait for the
        // stragglers, then judge.
        if halves >= 150 || Instant::now() > deadline {
            tokio::time::sleep(Duration::from_millis(300)).await;
            break shadow.seen().iter().filter(|s| s.path == "/half").count();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        (150..=250).contains(&copies),
        "{copies} of 400 mirrored at 50%"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirects_rewrites_and_direct_responses() {
    let app = Upstream::start("app").await;
    let rules = r#"  - match: [{uri: {exact: /productpage}}]
    redirect: {uri: /}
  - match: [{uri: {prefix: /old/}}]
    rewrite: {uri: /new/, authority: renamed:9080}
    route: [{destination: {host: app}}]
  - match: [{uri: {regex: "/items/[0-9]+/detail"}}]
    rewrite: {uriRegexRewrite: {match: "^/items/([0-9]+)/detail$", rewrite: "/detail?item=\\1"}}
    route: [{destination: {host: app}}]
  - match: [{uri: {exact: /hello}}]
    directResponse: {status: 202, body: {string: "hello from the mesh"}}
  - route: [{destination: {host: app}}]
"#;
    let agent = single(&app, &virtual_service("app", rules)).await;
    let client = Client::h1(agent.outbound);

    let reply = client.get("http://app:9080/productpage?user=1").await;
    assert_eq!(reply.status, 301);
    // No authority in the redirect: the client's host goes with its port,
    // as Envoy writes it (conformance: vs_rewrites_and_redirects_…).
    assert_eq!(
        reply.header("location").as_deref(),
        Some("http://app:9080/?user=1")
    );

    let reply = client.get("http://app:9080/old/path?q=2").await;
    assert_eq!(reply.status, 200);
    let seen = app.seen().pop().unwrap();
    assert_eq!(seen.path, "/new/path?q=2");
    assert_eq!(seen.headers["host"], "renamed:9080");
    assert_eq!(seen.headers["x-envoy-original-path"], "/old/path?q=2");

    client.get("http://app:9080/items/42/detail").await;
    assert_eq!(app.seen().pop().unwrap().path, "/detail?item=42");

    let reply = client.get("http://app:9080/hello").await;
    assert_eq!(reply.status, 202);
    assert_eq!(&reply.body[..], b"hello from the mesh");
    assert_eq!(
        app.count(),
        2,
        "redirects and direct responses never reach the upstream"
    );
}
