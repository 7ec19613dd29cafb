//! Trace context through two real agents, with spans arriving at a real
//! OTLP/gRPC endpoint: parent/child links, attributes, sampling, B3.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use common::agent::Agent;
use common::client::{Client, echoed, websocket};
use common::mesh::{AgentDoc, Ep, agent, service_entry};
use common::otlp::{ReceivedSpan, Receiver};
use common::upstream::{Upstream, closed_port, tcp_echo};

const SPAN_KIND_SERVER: i32 = 2;
const SPAN_KIND_CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;

struct Traced {
    receiver: Receiver,
    app: Upstream,
    frontend: Agent,
    backend: Agent,
}

async fn traced(sampling: &str, virtual_service: &str) -> Traced {
    traced_with(sampling, virtual_service, "").await
}

/// As [`traced`], the backend's config ending with `backend_resources`.
async fn traced_with(sampling: &str, virtual_service: &str, backend_resources: &str) -> Traced {
    let receiver = Receiver::start().await;
    let app = Upstream::start("app").await;
    let backend =
        Agent::start(&(agent("backend", app.addr, &receiver.endpoint()) + backend_resources));
    let labels = [("app", "backend")];
    let frontend_doc = AgentDoc {
        name: "frontend-v1",
        service: "frontend",
        app: "frontend",
        version: "v1",
        app_addr: closed_port().await,
        otlp: &receiver.endpoint(),
        app_protocol: "HTTP",
        outbound_tcp: "[]",
        extra: "",
    }
    .yaml()
    .replace("sampling: 1.0", &format!("sampling: {sampling}"));
    let yaml = frontend_doc
        + &service_entry(
            "backend",
            9080,
            "HTTP",
            &[Ep {
                addr: backend.inbound,
                labels: &labels,
            }],
        )
        + virtual_service;
    let frontend = Agent::start(&yaml);
    Traced {
        receiver,
        app,
        frontend,
        backend,
    }
}

fn of_trace<'a>(spans: &'a [ReceivedSpan], trace: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.trace_id() == trace).collect()
}

fn two_spans_of(trace: &str) -> impl Fn(&[ReceivedSpan]) -> bool + '_ {
    move |spans| of_trace(spans, trace).len() >= 2
}

fn traceparent_parts(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_incoming_traceparent_continues_its_trace() {
    let t = traced("1.0", "").await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let reply = Client::h1(t.frontend.outbound)
        .get_with(
            "http://backend:9080/orders?id=7",
            &[
                ("traceparent", &format!("00-{trace}-{caller_span}-01")),
                ("user-agent", "trace-test/1.0"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200);

    let seen = t.app.seen().pop().unwrap();
    let (app_trace, app_parent, flags) =
        traceparent_parts(seen.headers["traceparent"].to_str().unwrap());
    assert_eq!(app_trace, trace, "the app stays in the caller's trace");
    assert_eq!(flags, "01");

    let spans = t
        .receiver
        .wait_for("client and server spans", two_spans_of(trace))
        .await;
    let spans = of_trace(&spans, trace);
    let client = spans
        .iter()
        .find(|s| s.span.kind == SPAN_KIND_CLIENT)
        .expect("a CLIENT span");
    let server = spans
        .iter()
        .find(|s| s.span.kind == SPAN_KIND_SERVER)
        .expect("a SERVER span");
    assert_eq!(
        client.parent_id(),
        caller_span,
        "the outbound span is the caller's child"
    );
    assert_eq!(
        server.parent_id(),
        client.span_id(),
        "the inbound span is the outbound span's child"
    );
    assert_eq!(
        app_parent,
        server.span_id(),
        "the app's parent is the inbound agent's span"
    );
    assert_eq!(client.service, "frontend");
    assert_eq!(server.service, "backend");
    // Istio's span tags (`enableIstioTags`), on the resource.
    for (key, value) in [
        ("istio.canonical_service", "backend"),
        ("istio.canonical_revision", "v1"),
        ("istio.namespace", "default"),
        ("istio.mesh_id", "cluster.local"),
        ("istio.cluster_id", "Kubernetes"),
    ] {
        assert_eq!(server.resource_attr(key).as_deref(), Some(value), "{key}");
    }

    assert_eq!(client.attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(client.attr("url.path").as_deref(), Some("/orders"));
    assert_eq!(
        client.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(client.attr("server.address").as_deref(), Some("backend"));
    assert_eq!(client.attr("server.port").as_deref(), Some("9080"));
    assert_eq!(client.attr("peer.service").as_deref(), Some("backend"));
    assert_eq!(
        client.attr("tracemesh.upstream"),
        Some(t.backend.inbound.to_string())
    );
    assert_eq!(
        client.attr("tracemesh.response_flags").as_deref(),
        Some("-")
    );
    assert_eq!(
        client.attr("user_agent.original").as_deref(),
        Some("trace-test/1.0")
    );
    assert_eq!(
        server.attr("network.peer.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_ne!(
        client.span.status.as_ref().map_or(0, |s| s.code),
        STATUS_ERROR
    );
    assert!(client.span.end_time_unix_nano >= client.span.start_time_unix_nano);
    assert!(server.span.start_time_unix_nano >= client.span.start_time_unix_nano);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_without_context_starts_a_new_trace() {
    let t = traced("1.0", "").await;
    Client::h1(t.frontend.outbound)
        .get("http://backend:9080/fresh")
        .await;
    let seen = t.app.seen().pop().unwrap();
    let (trace, parent, flags) = traceparent_parts(seen.headers["traceparent"].to_str().unwrap());
    assert_eq!(flags, "01");
    let spans = t
        .receiver
        .wait_for("the new trace", two_spans_of(&trace))
        .await;
    let spans = of_trace(&spans, &trace);
    let client = spans
        .iter()
        .find(|s| s.span.kind == SPAN_KIND_CLIENT)
        .unwrap();
    let server = spans
        .iter()
        .find(|s| s.span.kind == SPAN_KIND_SERVER)
        .unwrap();
    assert_eq!(client.parent_id(), "", "the first hop is the root");
    assert_eq!(server.parent_id(), client.span_id());
    assert_eq!(parent, server.span_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b3_headers_are_read_and_rewritten() {
    let t = traced("1.0", "").await;
    Client::h1(t.frontend.outbound)
        .get_with(
            "http://backend:9080/zipkin",
            &[
                ("x-b3-traceid", "64fe8b2a57d3eff7"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
                ("x-b3-sampled", "1"),
            ],
        )
        .await;
    let trace = "000000000000000064fe8b2a57d3eff7";
    let seen = t.app.seen().pop().unwrap();
    assert_eq!(seen.headers["x-b3-traceid"], trace);
    assert_eq!(
        traceparent_parts(seen.headers["traceparent"].to_str().unwrap()).0,
        trace
    );
    let spans = t
        .receiver
        .wait_for("the B3 trace", two_spans_of(trace))
        .await;
    let spans = of_trace(&spans, trace);
    let client = spans
        .iter()
        .find(|s| s.span.kind == SPAN_KIND_CLIENT)
        .unwrap();
    let server = spans
        .iter()
        .find(|s| s.span.kind == SPAN_KIND_SERVER)
        .unwrap();
    assert_eq!(client.parent_id(), "e457b5a2e4d86bd1");
    assert_eq!(
        seen.headers["x-b3-spanid"].to_str().unwrap(),
        server.span_id(),
        "B3 names the inbound span as parent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_are_named_by_service_and_errors_mark_them() {
    let vs = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: backend, namespace: default}\nspec:\n  hosts: [backend]\n  http:\n  - name: backend-api\n    retries: {attempts: 2, retryOn: \"503\"}\n    route: [{destination: {host: backend}}]\n";
    let t = traced("1.0", vs).await;
    let client = Client::h1(t.frontend.outbound);
    assert_eq!(
        client.get("http://backend:9080/status/503").await.status,
        503
    );
    let trace = traceparent_parts(
        t.app.seen().pop().unwrap().headers["traceparent"]
            .to_str()
            .unwrap(),
    )
    .0;
    // The rule retries a 503 twice: the request's CLIENT span, two retry
    // CLIENT spans under it, three SERVER spans.
    let spans = t
        .receiver
        .wait_for("the failing trace", |spans| {
            of_trace(spans, &trace).len() >= 6
        })
        .await;
    let spans = of_trace(&spans, &trace);
    for span in &spans {
        assert_eq!(
            span.span.status.as_ref().unwrap().code,
            STATUS_ERROR,
            "{:?}",
            span.span.name
        );
        assert_eq!(
            span.attr("http.response.status_code").as_deref(),
            Some("503")
        );
    }
    // Client and server spans of a call share Istio's name: the service's
    // FQDN and declared port, whatever rule routed it.
    let name = "backend.default.svc.cluster.local:9080/*";
    assert!(spans.iter().all(|s| s.span.name == name), "{spans:?}");
    let outbound = spans
        .iter()
        .find(|s| s.span.kind == SPAN_KIND_CLIENT && s.attr("http.request.resend_count").is_none())
        .expect("the request's span");
    assert_eq!(outbound.span.kind, SPAN_KIND_CLIENT);
    // The rule's name has its own attribute; `http.route` is a path
    // template, and a rule without a path match has none.
    assert_eq!(
        outbound.attr("tracemesh.route_name").as_deref(),
        Some("backend-api")
    );
    assert_eq!(outbound.attr("http.route"), None);
    assert_eq!(
        outbound.attr("tracemesh.retry.attempts").as_deref(),
        Some("3")
    );
    assert_eq!(
        outbound.attr("tracemesh.response_flags").as_deref(),
        Some("URX")
    );
    let retries: Vec<_> = spans
        .iter()
        .filter(|s| s.attr("http.request.resend_count").is_some())
        .collect();
    assert_eq!(retries.len(), 2);
    for retry in &retries {
        assert_eq!(retry.span.kind, SPAN_KIND_CLIENT);
        assert_eq!(
            retry.parent_id(),
            outbound.span_id(),
            "retries sit under the request's span"
        );
    }
    let servers: Vec<_> = spans
        .iter()
        .filter(|s| s.span.kind == SPAN_KIND_SERVER)
        .collect();
    assert_eq!(servers.len(), 3, "one server span per attempt");
    assert!(
        retries
            .iter()
            .all(|r| servers.iter().any(|s| s.parent_id() == r.span_id())),
        "each retry is its attempt's parent"
    );

    let reply = client.get("http://nowhere:9080/").await;
    assert_eq!(reply.status, 404);
    let spans = t
        .receiver
        .wait_for("the NR span", |spans| {
            spans
                .iter()
                .any(|s| s.attr("tracemesh.response_flags").as_deref() == Some("NR"))
        })
        .await;
    let nr = spans
        .iter()
        .find(|s| s.attr("tracemesh.response_flags").as_deref() == Some("NR"))
        .unwrap();
    assert_eq!(nr.span.status.as_ref().unwrap().code, STATUS_ERROR);
    assert_eq!(nr.attr("error.type").as_deref(), Some("NR"));
}

/// A request the backend's agent denies is the caller's error, not the
/// backend's: its SERVER span keeps the 403 and the `RBAC` flag with its
/// status unset, as OpenTelemetry's HTTP conventions and Envoy's tracer
/// leave a server's 4xx, while the caller's CLIENT span is an error. (The
/// SERVER span was an error too: Jaeger drew denied requests red, and span
/// metrics counted them as the backend's errors.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_denied_request_is_the_callers_error_not_the_servers() {
    let deny = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: default}\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [/admin]}\n";
    let t = traced_with("1.0", "", deny).await;
    let client = Client::h1(t.frontend.outbound);
    let reply = client.get("http://backend:9080/admin").await;
    assert_eq!(reply.status, 403);
    let denied = |s: &ReceivedSpan| s.attr("url.path").as_deref() == Some("/admin");
    let spans = t
        .receiver
        .wait_for("both spans of the denied call", |spans| {
            spans.iter().filter(|s| denied(s)).count() >= 2
        })
        .await;
    let server = spans
        .iter()
        .find(|s| denied(s) && s.span.kind == SPAN_KIND_SERVER)
        .expect("the backend's span");
    assert_eq!(
        server.attr("tracemesh.response_flags").as_deref(),
        Some("RBAC")
    );
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("403")
    );
    assert_ne!(
        server.span.status.as_ref().map(|s| s.code),
        Some(STATUS_ERROR)
    );
    assert_eq!(server.attr("error.type"), None);
    let caller = spans
        .iter()
        .find(|s| denied(s) && s.span.kind == SPAN_KIND_CLIENT)
        .expect("the caller's span");
    assert_eq!(caller.span.status.as_ref().unwrap().code, STATUS_ERROR);
    assert_eq!(caller.attr("error.type").as_deref(), Some("403"));
}

/// A WebSocket's spans last the whole stream, and a side closing it ends
/// them without an error: Envoy flags the close DC (kept in
/// `tracemesh.response_flags`), and its tracer marks no error for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_websocket_span_lasts_the_stream_and_its_close_is_no_error() {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let t = traced("1.0", "").await;
    let mut ws = websocket(t.frontend.outbound, "ws://backend:9080/ws").await;
    let opened = std::time::Instant::now();
    echoed(&mut ws, "hello").await;
    // Open a while, so that a span ended at the 101 would show.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let held = opened.elapsed().as_nanos() as u64;
    ws.get_mut().shutdown().await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let upgraded = |s: &ReceivedSpan| s.attr("url.path").as_deref() == Some("/ws");
    let spans = t
        .receiver
        .wait_for("both spans of the WebSocket", |spans| {
            spans.iter().filter(|s| upgraded(s)).count() >= 2
        })
        .await;
    for span in spans.iter().filter(|s| upgraded(s)) {
        let kind = span.span.kind;
        assert_eq!(
            span.attr("http.response.status_code").as_deref(),
            Some("101")
        );
        assert_eq!(
            span.attr("tracemesh.response_flags").as_deref(),
            Some("DC"),
            "kind {kind}"
        );
        assert_ne!(
            span.span.status.as_ref().map(|s| s.code),
            Some(STATUS_ERROR),
            "kind {kind}"
        );
        let lasted = span.span.end_time_unix_nano - span.span.start_time_unix_nano;
        assert!(
            lasted >= held,
            "kind {kind}: {lasted} ns, open {held} ns at least"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sampling_decisions_are_respected() {
    let t = traced("0.0", "").await;
    let client = Client::h1(t.frontend.outbound);
    // New traces are not sampled at 0.0; the decision travels on.
    client.get("http://backend:9080/unsampled").await;
    let seen = t.app.seen().pop().unwrap();
    let (unsampled, _, flags) = traceparent_parts(seen.headers["traceparent"].to_str().unwrap());
    assert_eq!(flags, "00");
    // A caller's "not sampled" is followed too.
    let declined = "11111111111111111111111111111111";
    client
        .get_with(
            "http://backend:9080/declined",
            &[("traceparent", &format!("00-{declined}-2222222222222222-00"))],
        )
        .await;
    // A caller's "sampled" is followed even at 0.0 (parent-based), which
    // also proves spans do flow, so the absence of the others is meaningful.
    let sampled = "33333333333333333333333333333333";
    client
        .get_with(
            "http://backend:9080/sampled",
            &[("traceparent", &format!("00-{sampled}-4444444444444444-01"))],
        )
        .await;
    let spans = t
        .receiver
        .wait_for("the sampled trace", two_spans_of(sampled))
        .await;
    assert!(
        of_trace(&spans, &unsampled).is_empty(),
        "unsampled new trace was exported"
    );
    assert!(
        of_trace(&spans, declined).is_empty(),
        "a declined trace was exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b3_sampling_decisions_are_followed_and_passed_on() {
    let t = traced("1.0", "").await;
    let client = Client::h1(t.frontend.outbound);
    // "Do not sample" with no ids: a new trace, not recorded, and every
    // format written says so (issue 13: today the span was recorded and the
    // next hop told "sampled").
    client
        .get_with("http://backend:9080/declined", &[("b3", "0")])
        .await;
    let seen = t.app.seen().pop().unwrap();
    let (declined, _, flags) = traceparent_parts(seen.headers["traceparent"].to_str().unwrap());
    assert_eq!(flags, "00");
    let b3 = seen.headers["b3"].to_str().unwrap().to_owned();
    assert!(b3.starts_with(&declined) && b3.contains("-0-"), "{b3}");
    client
        .get_with("http://backend:9080/declined", &[("x-b3-sampled", "0")])
        .await;
    let seen = t.app.seen().pop().unwrap();
    let (declined_multi, _, flags) =
        traceparent_parts(seen.headers["traceparent"].to_str().unwrap());
    assert_eq!(flags, "00");
    assert_eq!(seen.headers["x-b3-sampled"], "0");
    assert_eq!(
        seen.headers["x-b3-traceid"].to_str().unwrap(),
        declined_multi
    );
    // A sampled B3 trace does reach the collector, so the absence of the
    // declined ones above means something.
    let sampled = "55555555555555555555555555555555";
    client
        .get_with(
            "http://backend:9080/sampled",
            &[("b3", &format!("{sampled}-6666666666666666-1"))],
        )
        .await;
    let spans = t
        .receiver
        .wait_for("the sampled B3 trace", two_spans_of(sampled))
        .await;
    assert!(of_trace(&spans, &declined).is_empty(), "b3: 0 was recorded");
    assert!(
        of_trace(&spans, &declined_multi).is_empty(),
        "x-b3-sampled: 0 was recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b3_debug_is_recorded_at_zero_sampling_and_stays_debug() {
    let t = traced("0.0", "").await;
    let trace = "77777777777777777777777777777777";
    Client::h1(t.frontend.outbound)
        .get_with(
            "http://backend:9080/debug",
            &[("b3", &format!("{trace}-8888888888888888-d"))],
        )
        .await;
    let seen = t.app.seen().pop().unwrap();
    let b3 = seen.headers["b3"].to_str().unwrap();
    assert!(b3.starts_with(trace) && b3.contains("-d-"), "{b3}");
    t.receiver
        .wait_for("the debug trace", two_spans_of(trace))
        .await;
}

/// Spans of one TCP connection seen by both agents (frontend → db), and of
/// one refused at connect time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_tcp_connection_is_a_span_with_its_peer_and_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let receiver = Receiver::start().await;
    let echo = tcp_echo().await;
    let doc = |name, service, app_addr, protocol, outbound_tcp| AgentDoc {
        name,
        service,
        app: service,
        version: "v1",
        app_addr,
        otlp: "",
        app_protocol: protocol,
        outbound_tcp,
        extra: "",
    };
    let endpoint = receiver.endpoint();
    let backend = Agent::start(
        &AgentDoc {
            otlp: &endpoint,
            ..doc("db-v1", "db", echo, "TCP", "[]")
        }
        .yaml(),
    );
    let listeners = "[{listen: \"127.0.0.1:0\", host: db, port: 5432}, \
                     {listen: \"127.0.0.1:0\", host: gone, port: 5433}]";
    let gone = closed_port().await;
    let yaml = AgentDoc {
        otlp: &endpoint,
        ..doc(
            "frontend-v1",
            "frontend",
            closed_port().await,
            "HTTP",
            listeners,
        )
    }
    .yaml()
        + &service_entry(
            "db",
            5432,
            "TCP",
            &[Ep {
                addr: backend.inbound,
                labels: &[("app", "db")],
            }],
        )
        + &service_entry(
            "gone",
            5433,
            "TCP",
            &[Ep {
                addr: gone,
                labels: &[("app", "gone")],
            }],
        );
    let frontend = Agent::start(&yaml);
    assert_eq!(frontend.outbound_tcp.len(), 2);

    let mut conn = tokio::net::TcpStream::connect(frontend.outbound_tcp[0])
        .await
        .unwrap();
    conn.write_all(&[7u8; 1000]).await.unwrap();
    conn.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    conn.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed.len(), 1000);
    let mut refused = tokio::net::TcpStream::connect(frontend.outbound_tcp[1])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = refused.read_to_end(&mut rest).await;

    let tcp = |s: &ReceivedSpan| s.attr("network.transport").as_deref() == Some("tcp");
    let spans = receiver
        .wait_for("three TCP spans", |spans| {
            spans.iter().filter(|s| tcp(s)).count() >= 3
        })
        .await;
    let client = spans
        .iter()
        .find(|s| {
            tcp(s)
                && s.span.kind == SPAN_KIND_CLIENT
                && s.attr("peer.service").as_deref() == Some("db")
        })
        .expect("the frontend's CLIENT span of the db connection");
    assert_eq!(client.service, "frontend");
    assert!(client.span.parent_span_id.is_empty(), "TCP spans are roots");
    assert_eq!(client.attr("server.port").as_deref(), Some("5432"));
    assert!(
        client.span.name.ends_with(":5432/*"),
        "{}",
        client.span.name
    );
    assert_eq!(
        client.attr("tracemesh.upstream"),
        Some(backend.inbound.to_string())
    );
    assert_eq!(
        client.attr("tracemesh.bytes_received").as_deref(),
        Some("1000")
    );
    assert_eq!(client.attr("tracemesh.bytes_sent").as_deref(), Some("1000"));
    assert_eq!(
        client.attr("tracemesh.response_flags").as_deref(),
        Some("-")
    );
    assert_ne!(
        client.span.status.as_ref().map_or(0, |s| s.code),
        STATUS_ERROR
    );
    let server = spans
        .iter()
        .find(|s| tcp(s) && s.span.kind == SPAN_KIND_SERVER)
        .expect("the db agent's SERVER span");
    assert_eq!(server.service, "db");
    assert_eq!(server.attr("peer.service"), None);
    assert_eq!(server.attr("tracemesh.upstream"), Some(echo.to_string()));
    assert_eq!(
        server.attr("tracemesh.bytes_received").as_deref(),
        Some("1000")
    );
    let failed = spans
        .iter()
        .find(|s| tcp(s) && s.attr("peer.service").as_deref() == Some("gone"))
        .expect("the refused connection's span");
    assert_eq!(failed.span.kind, SPAN_KIND_CLIENT);
    assert_eq!(
        failed.attr("tracemesh.response_flags").as_deref(),
        Some("UF,URX")
    );
    assert_eq!(
        failed.span.status.as_ref().map(|s| s.code),
        Some(STATUS_ERROR)
    );
    assert_eq!(failed.attr("tracemesh.bytes_sent").as_deref(), Some("0"));
}

/// A request whose Host names no service (an ingress gateway passes the
/// client's) or no port: the inbound span takes the service's declared
/// port, as Istio's inbound route decorator names it
/// (`<fqdn>:<service port>/*`), never the port the listener happens to
/// bind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_inbound_span_takes_the_declared_port_when_the_host_names_none() {
    let receiver = Receiver::start().await;
    let app = Upstream::start("productpage").await;
    let own_entry = "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: productpage, namespace: default}\nspec:\n  hosts: [productpage.default.svc.cluster.local]\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: productpage}}\n";
    let sidecar = Agent::start(&(agent("productpage", app.addr, &receiver.endpoint()) + own_entry));
    let client = Client::h1(sidecar.inbound);
    for (path, host) in [
        ("/from-the-gateway", "bookinfo.example.com:31380"),
        ("/no-port", "productpage"),
        ("/addressed", "productpage.default:9080"),
        // A port the service does not declare names nothing: a caller
        // must not mint one span name per port it makes up.
        (
            "/made-up-port",
            "productpage.default.svc.cluster.local:7777",
        ),
    ] {
        let reply = client.get(&format!("http://{host}{path}")).await;
        assert_eq!(reply.status, 200, "{path}");
    }
    for path in [
        "/from-the-gateway",
        "/no-port",
        "/addressed",
        "/made-up-port",
    ] {
        let span = receiver.span_of(path).await;
        assert_eq!(span.span.kind, SPAN_KIND_SERVER);
        assert_eq!(
            span.span.name,
            "productpage.default.svc.cluster.local:9080/*",
            "{path}: not the listener's port {}",
            sidecar.inbound.port()
        );
    }
}
