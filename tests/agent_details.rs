//! "Which policy fired": every local reply and policy action carries Envoy's
//! `response_code_details` extended with the resource and rule that decided
//! it — in the reply's `x-tracemesh-response-code-details` header (local
//! replies), on the span (`tracemesh.response_code_details`, through a real
//! OTLP receiver) and in the access log line. One real agent per side, real
//! upstreams that misbehave on cue.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::agent::Agent;
use common::client::{Client, Reply};
use common::mesh::{AgentDoc, Ep, service_entry};
use common::otlp::{ReceivedSpan, Receiver};
use common::upstream::{Upstream, closed_port};
use opentelemetry_proto::tonic::trace::v1::span::Event;

const HEADER: &str = "x-tracemesh-response-code-details";

fn event<'a>(span: &'a ReceivedSpan, name: &str) -> Option<&'a Event> {
    span.span.events.iter().find(|e| e.name == name)
}

fn event_attr(event: &Event, key: &str) -> Option<String> {
    common::otlp::attr(&event.attributes, key)
}

/// Checks one outcome everywhere it is reported: the header (local
/// replies only), the span and the access log.
async fn reported(
    agent: &Agent,
    otlp: &Receiver,
    reply: &Reply,
    path: &str,
    status: u16,
    details: &str,
    local: bool,
) -> ReceivedSpan {
    assert_eq!(reply.status.as_u16(), status, "{path}: {:?}", reply.body);
    let header = reply.header(HEADER);
    if local {
        assert_eq!(header.as_deref(), Some(details), "{path}: the reply header");
    } else {
        assert_eq!(
            header, None,
            "{path}: upstream replies carry no details header"
        );
    }
    let span = otlp.span_of(path).await;
    assert_eq!(
        span.attr("tracemesh.response_code_details").as_deref(),
        Some(details),
        "{path}: the span"
    );
    let line = agent.access_log_line(path);
    assert_eq!(
        line["response_code_details"], details,
        "{path}: the access log"
    );
    span
}

fn doc<'a>(service: &'a str, app: std::net::SocketAddr, otlp: &'a str, extra: &'a str) -> String {
    AgentDoc {
        name: "w-v1",
        service,
        app: service,
        version: "v1",
        app_addr: app,
        otlp,
        app_protocol: "HTTP",
        outbound_tcp: "[]",
        extra,
    }
    .yaml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authorization_and_rate_limits_name_the_policy_rule() {
    let otlp = Receiver::start().await;
    let app = Upstream::start("app").await;
    let policies = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/private/*"]}}]
  - to: [{operation: {paths: ["/admin/*"]}}]
---
apiVersion: tracemesh.io/v1
kind: RateLimitPolicy
metadata: {name: limits, namespace: default}
spec:
  rules:
  - name: burst
    match: {paths: ["/limited/*"]}
    tokenBucket: {maxTokens: 1, fillInterval: 1h}
"#;
    let agent = Agent::start(
        &(doc(
            "reviews",
            app.addr,
            &otlp.endpoint(),
            "  accessLog: {enabled: true}",
        ) + policies),
    );
    let client = Client::h1(agent.inbound);

    let denied = client.get("http://reviews/admin/x").await;
    let span = reported(
        &agent,
        &otlp,
        &denied,
        "/admin/x",
        403,
        "rbac_access_denied_matched_policy[ns[default]-policy[deny-admin]-rule[1]]",
        true,
    )
    .await;
    assert_eq!(
        span.attr("tracemesh.response_flags").as_deref(),
        Some("RBAC")
    );

    assert_eq!(client.get("http://reviews/limited/1").await.status, 200);
    let limited = client.get("http://reviews/limited/2").await;
    reported(
        &agent,
        &otlp,
        &limited,
        "/limited/2",
        429,
        "local_rate_limited{RateLimitPolicy:default/limits[burst]}",
        true,
    )
    .await;
    // What the upstream answered says so, as Envoy's `via_upstream`.
    assert_eq!(
        agent.access_log_line("/limited/1")["response_code_details"],
        "via_upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeouts_retries_faults_and_connection_limits_name_their_rules() {
    let otlp = Receiver::start().await;
    let slow = Upstream::start("slow").await;
    slow.delay_all(3000);
    let flaky = Upstream::start("flaky").await;
    flaky.fail_with(503);
    let busy = Upstream::start("busy").await;
    busy.delay_all(1500);
    let queued = Upstream::start("queued").await;
    queued.delay_all(300);
    let fine = Upstream::start("fine").await;
    let gone = closed_port().await;
    let entry = |host: &str, addr| {
        service_entry(
            host,
            9080,
            "HTTP",
            &[Ep {
                addr,
                labels: &[("app", "x")],
            }],
        )
    };
    let config = doc(
        "frontend",
        closed_port().await,
        &otlp.endpoint(),
        "  accessLog: {enabled: true}",
    ) + &entry("slow", slow.addr)
        + &entry("flaky", flaky.addr)
        + &entry("busy", busy.addr)
        + &entry("queued", queued.addr)
        + &entry("faulty", fine.addr)
        + &entry("gone", gone)
        + r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow, namespace: default}
spec:
  hosts: [slow]
  http:
  - name: slow-route
    match: [{uri: {prefix: /api/}}]
    timeout: 200ms
    route: [{destination: {host: slow}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky, namespace: default}
spec:
  hosts: [flaky]
  http:
  - retries: {attempts: 2, retryOn: 5xx, perTryTimeout: 2s}
    route: [{destination: {host: flaky}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: gone, namespace: default}
spec:
  hosts: [gone]
  http:
  - name: try-twice
    retries: {attempts: 1, retryOn: connect-failure}
    route: [{destination: {host: gone}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: faulty, namespace: default}
spec:
  hosts: [faulty]
  http:
  - name: chaos
    match: [{name: teapot, uri: {exact: /teapot}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: faulty}}]
  - name: late
    fault: {delay: {fixedDelay: 50ms, percentage: {value: 100}}}
    route: [{destination: {host: faulty}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: busy-limits, namespace: default}
spec:
  host: busy
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: one-connection, namespace: default}
spec:
  host: queued
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 10}}
"#;
    let agent = Agent::start(&config);
    let client = Client::h1(agent.outbound);

    // The route's timeout; http.route is the matched path template, the
    // rule's name has its own attribute.
    let timed_out = client.get("http://slow:9080/api/x").await;
    let span = reported(
        &agent,
        &otlp,
        &timed_out,
        "/api/x",
        504,
        "response_timeout{VirtualService:default/slow[slow-route]}",
        true,
    )
    .await;
    assert_eq!(span.attr("http.route").as_deref(), Some("/api/*"));
    assert_eq!(
        span.attr("tracemesh.route_name").as_deref(),
        Some("slow-route")
    );
    assert_eq!(agent.access_log_line("/api/x")["route_name"], "slow-route");

    // Retries given up on a retriable status: the upstream's answer, URX,
    // and the rule (unnamed: its index); each retry an event naming it.
    let flaked = client.get("http://flaky:9080/f").await;
    let span = reported(
        &agent,
        &otlp,
        &flaked,
        "/f",
        503,
        "via_upstream{upstream_retry_limit_exceeded,VirtualService:default/flaky[0]}",
        false,
    )
    .await;
    assert_eq!(
        span.attr("tracemesh.response_flags").as_deref(),
        Some("URX")
    );
    let retry = event(&span, "retry").expect("a retry event");
    assert_eq!(
        event_attr(retry, "tracemesh.policy").as_deref(),
        Some("VirtualService:default/flaky[0]")
    );
    assert_eq!(span.attr("http.route"), None, "no path match, no template");

    // Retries given up on connect failures: a local reply.
    let refused = client.get("http://gone:9080/g").await;
    reported(
        &agent,
        &otlp,
        &refused,
        "/g",
        503,
        "upstream_reset_before_response_started{remote_connection_failure,upstream_retry_limit_exceeded,VirtualService:default/gone[try-twice]}",
        true,
    )
    .await;

    // Fault injection: the abort names its rule, a delay is an event.
    let aborted = client.get("http://faulty:9080/teapot").await;
    reported(
        &agent,
        &otlp,
        &aborted,
        "/teapot",
        418,
        "fault_filter_abort{VirtualService:default/faulty[chaos]}",
        true,
    )
    .await;
    assert_eq!(&aborted.body[..], b"fault filter abort");
    let delayed = client.get("http://faulty:9080/late").await;
    let span = reported(&agent, &otlp, &delayed, "/late", 200, "via_upstream", false).await;
    let delay = event(&span, "fault_delay").expect("a fault delay event");
    assert_eq!(
        event_attr(delay, "tracemesh.policy").as_deref(),
        Some("VirtualService:default/faulty[late][fault.delay]")
    );

    // Overflow names the DestinationRule and the limit.
    let (first, second) = {
        let c1 = Client::h1(agent.outbound);
        let c2 = Client::h1(agent.outbound);
        let first = tokio::spawn(async move { c1.get("http://busy:9080/first").await });
        // The first holds the one request slot for 1.5 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while busy.count() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the first request arrives"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let second = c2.get("http://busy:9080/second").await;
        (first.await.unwrap(), second)
    };
    assert_eq!(first.status.as_u16(), 200);
    reported(
        &agent,
        &otlp,
        &second,
        "/second",
        503,
        "upstream_reset_before_response_started{overflow,DestinationRule:default/busy-limits[connectionPool.http.http2MaxRequests]}",
        true,
    )
    .await;

    // A request that waits for the one connection: an event naming the
    // limit. (Both on one HTTP/2 connection, so on one worker: a worker
    // holding no connection opens one past the limit, as Envoy's pools do.)
    let c1 = Client::h2(agent.outbound);
    let c2 = c1.clone();
    let one = tokio::spawn(async move { c1.get("http://queued:9080/q1").await });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while queued.count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first request arrives"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let two = c2.get("http://queued:9080/q2").await;
    assert_eq!(
        (one.await.unwrap().status.as_u16(), two.status.as_u16()),
        (200, 200)
    );
    let span = otlp.span_of("/q2").await;
    let wait = event(&span, "connection_pool_wait").expect("a pool wait event");
    assert_eq!(
        event_attr(wait, "tracemesh.limit").as_deref(),
        Some("connectionPool.tcp.maxConnections")
    );
    assert_eq!(
        event_attr(wait, "tracemesh.policy").as_deref(),
        Some("DestinationRule:default/one-connection[connectionPool.tcp.maxConnections]")
    );
    let waited: f64 = event_attr(wait, "duration_ms").unwrap().parse().unwrap();
    assert!(waited > 0.0, "{waited}");

    // Route names as Istio gives them (`translateRoute`,
    // `DefaultRouteName`): a named match is `<rule>.<match>`, a service
    // without a VirtualService goes by Istio's own `default` route.
    assert_eq!(
        agent.access_log_line("/teapot")["route_name"],
        "chaos.teapot"
    );
    assert_eq!(agent.access_log_line("/q2")["route_name"], "default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outlier_ejection_names_the_host_the_reason_and_the_rule() {
    let otlp = Receiver::start().await;
    let broken = Upstream::start("broken").await;
    broken.fail_with(500);
    let config = doc(
        "frontend",
        closed_port().await,
        &otlp.endpoint(),
        "  accessLog: {enabled: true}",
    ) + &service_entry(
        "broken",
        9080,
        "HTTP",
        &[Ep {
            addr: broken.addr,
            labels: &[("app", "broken")],
        }],
    ) + r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: eject-fast, namespace: default}
spec:
  host: broken
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 10s, baseEjectionTime: 60s, maxEjectionPercent: 100}
"#;
    let agent = Agent::start(&config);
    let client = Client::h1(agent.outbound);
    let failed = client.get("http://broken:9080/first").await;
    let span = reported(&agent, &otlp, &failed, "/first", 500, "via_upstream", false).await;
    let ejection = event(&span, "outlier_ejection").expect("an ejection event");
    assert_eq!(
        event_attr(ejection, "tracemesh.upstream"),
        Some(broken.addr.to_string())
    );
    assert_eq!(
        event_attr(ejection, "reason").as_deref(),
        Some("consecutive5xxErrors")
    );
    assert_eq!(
        event_attr(ejection, "tracemesh.policy").as_deref(),
        Some("DestinationRule:default/eject-fast[outlierDetection]")
    );
    let none_left = client.get("http://broken:9080/second").await;
    reported(
        &agent,
        &otlp,
        &none_left,
        "/second",
        503,
        "no_healthy_upstream{DestinationRule:default/eject-fast[outlierDetection]}",
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirects_and_direct_responses_are_the_routes_answers() {
    let otlp = Receiver::start().await;
    let shop = Upstream::start("shop").await;
    let config = doc(
        "frontend",
        closed_port().await,
        &otlp.endpoint(),
        "  accessLog: {enabled: true}",
    ) + &service_entry(
        "shop",
        9080,
        "HTTP",
        &[Ep {
            addr: shop.addr,
            labels: &[("app", "shop")],
        }],
    ) + r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: default}
spec:
  hosts: [shop]
  http:
  - name: moved
    match: [{uri: {exact: /old}}]
    redirect: {uri: /new}
  - name: closed
    match: [{uri: {exact: /closed}}]
    directResponse: {status: 503, body: {string: "closed for the night"}}
  - route: [{destination: {host: shop}}]
"#;
    let agent = Agent::start(&config);
    let client = Client::h1(agent.outbound);

    // Envoy's router answers both itself, with the details
    // `direct_response`; the rule that did is named as for every reply a
    // route decides, and the span and log carry the rule's name.
    let moved = client.get("http://shop:9080/old").await;
    assert_eq!(
        moved.header("location").as_deref(),
        Some("http://shop:9080/new")
    );
    let span = reported(
        &agent,
        &otlp,
        &moved,
        "/old",
        301,
        "direct_response{VirtualService:default/shop[moved]}",
        true,
    )
    .await;
    assert_eq!(span.attr("tracemesh.route_name").as_deref(), Some("moved"));
    let closed = client.get("http://shop:9080/closed").await;
    assert_eq!(&closed.body[..], b"closed for the night");
    let span = reported(
        &agent,
        &otlp,
        &closed,
        "/closed",
        503,
        "direct_response{VirtualService:default/shop[closed]}",
        true,
    )
    .await;
    assert_eq!(span.attr("tracemesh.route_name").as_deref(), Some("closed"));
    assert_eq!(shop.count(), 0, "the upstream is never asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_details_header_can_be_turned_off() {
    let config = doc(
        "frontend",
        closed_port().await,
        common::mesh::NO_COLLECTOR,
        "",
    )
    .replace(
        "    flushInterval: 100ms\n",
        "    flushInterval: 100ms\n    replyDetails: false\n",
    );
    let agent = Agent::start(&config);
    let reply = Client::h1(agent.outbound).get("http://nowhere/").await;
    assert_eq!(reply.status.as_u16(), 404);
    assert_eq!(
        reply.header("x-tracemesh-response-flags").as_deref(),
        Some("NR")
    );
    assert_eq!(reply.header(HEADER), None);
}
