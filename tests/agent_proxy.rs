//! Requests through two real agents (outbound → inbound → app) arrive intact:
//! HTTP/1.1 and h2c, large streamed bodies, gRPC with trailers, WebSocket
//! upgrades, absolute-form proxy requests and plain TCP.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::agent::Agent;
use common::client::{Client, echoed, raw_exchange, websocket};
use common::grpc::{self, Echo};
use common::mesh::{AgentDoc, Ep, NO_COLLECTOR, agent, agent_with, service_entry};
use common::upstream::{
    FNV_START, Upstream, canned_server, closed_port, fnv, pattern, tcp_echo, tcp_echo_on,
};
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::Full;

/// A frontend agent whose ServiceEntry `backend:9080` points at a backend
/// agent's inbound listener, which forwards to `app`.
struct Mesh {
    frontend: Agent,
    backend: Agent,
}

async fn mesh(app: std::net::SocketAddr, protocol: &str) -> Mesh {
    mesh_of(&agent("backend", app, NO_COLLECTOR), protocol).await
}

/// [`mesh`] with the backend agent's own config, `backend_yaml`.
async fn mesh_of(backend_yaml: &str, protocol: &str) -> Mesh {
    let backend = Agent::start(backend_yaml);
    let labels = [("app", "backend"), ("version", "v1")];
    let yaml = agent("frontend", closed_port().await, NO_COLLECTOR)
        + &service_entry(
            "backend",
            9080,
            protocol,
            &[Ep {
                addr: backend.inbound,
                labels: &labels,
            }],
        );
    let frontend = Agent::start(&yaml);
    Mesh { frontend, backend }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http1_and_h2c_arrive_with_headers_and_bodies_intact() {
    let app = Upstream::start("backend-app").await;
    let mesh = mesh(app.addr, "HTTP").await;
    let body = Bytes::from((0..100_000u64).map(pattern).collect::<Vec<u8>>());
    for (client, version) in [
        (Client::h1(mesh.frontend.outbound), "h1"),
        (Client::h2(mesh.frontend.outbound), "h2"),
    ] {
        let req = Request::post("http://backend:9080/echo?q=1")
            .header("x-custom", format!("value-{version}"))
            .header("content-type", "application/octet-stream")
            .body(Full::new(body.clone()))
            .unwrap();
        let reply = client.send(req).await;
        assert_eq!(reply.status, 200, "{version}: {:?}", reply.body);
        assert_eq!(reply.upstream(), "backend-app");
        let report = reply.json();
        assert_eq!(report["path"], "/echo?q=1");
        assert_eq!(report["body_len"], body.len() as u64);
        assert_eq!(report["body_hash"], fnv(FNV_START, &body));
        assert!(
            reply.header("x-envoy-peer-metadata").is_none(),
            "peer metadata must not reach the app's caller"
        );
        let seen = app.seen().pop().unwrap();
        assert_eq!(
            seen.headers["x-custom"],
            format!("value-{version}").as_str()
        );
        assert_eq!(seen.headers["host"], "backend:9080");
        assert!(seen.headers.contains_key("x-request-id"));
        assert!(seen.headers.contains_key("traceparent"));
        assert_eq!(seen.headers["x-forwarded-proto"], "http");
        // Istio's sidecars (`use_remote_address: false`) append none.
        assert!(!seen.headers.contains_key("x-forwarded-for"));
        assert!(
            !seen.headers.contains_key("x-envoy-peer-metadata"),
            "the inbound agent strips peer metadata"
        );
    }
    assert_eq!(app.count(), 2);
    drop(mesh.backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_megabyte_bodies_stream_both_ways() {
    let app = Upstream::start("bulk").await;
    let mesh = mesh(app.addr, "HTTP").await;
    let size: u64 = 8 << 20;
    let upload = Bytes::from((0..size).map(pattern).collect::<Vec<u8>>());
    for client in [
        Client::h1(mesh.frontend.outbound),
        Client::h2(mesh.frontend.outbound),
    ] {
        let req = Request::put("http://backend:9080/upload")
            .body(Full::new(upload.clone()))
            .unwrap();
        let report = client.send(req).await.json();
        assert_eq!(report["body_len"], size);
        assert_eq!(report["body_hash"], fnv(FNV_START, &upload));

        let reply = client
            .get(&format!("http://backend:9080/stream/{size}"))
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body.len() as u64, size);
        assert!(
            reply
                .body
                .iter()
                .enumerate()
                .all(|(i, b)| *b == pattern(i as u64)),
            "download corrupted"
        );
    }
}

/// One data frame whose stream ends with it, of no declared length: what
/// an HTTP/2 upload from a streaming client (`fetch` with a stream,
/// `curl -T -`) looks like once its last DATA frame carries END_STREAM.
struct LastFrame(Option<Bytes>);

impl http_body::Body for LastFrame {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|data| Ok(http_body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

/// A frontend agent alone, its ServiceEntry `backend:9080` (HTTP) the
/// `app` itself: the agent's own upstream client is the one the app meets.
async fn frontend_only(app: &Upstream) -> Agent {
    let yaml = agent("frontend", closed_port().await, NO_COLLECTOR)
        + &service_entry(
            "backend",
            9080,
            "HTTP",
            &[Ep {
                addr: app.addr,
                labels: &[],
            }],
        );
    Agent::start(&yaml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_h2_upload_of_no_declared_length_reaches_an_http1_app_whole() {
    // The agent forwards it chunked; its one large frame must go out
    // before the last chunk, not after it.
    let app = Upstream::start("uploads").await;
    let frontend = frontend_only(&app).await;
    let client: hyper_util::client::legacy::Client<_, LastFrame> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(common::client::Fixed(frontend.outbound, None));
    for size in [12_000u64, 100, 9_000] {
        let upload = Bytes::from((0..size).map(pattern).collect::<Vec<u8>>());
        let req = Request::post("http://backend:9080/upload")
            .body(LastFrame(Some(upload.clone())))
            .unwrap();
        let resp = client.request(req).await.expect("an answer");
        assert_eq!(resp.status(), 200, "{size} bytes");
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("a body")
            .to_bytes();
        let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(report["body_len"], size, "{size} bytes");
        assert_eq!(report["body_hash"], fnv(FNV_START, &upload), "{size} bytes");
        let seen = app.seen().pop().unwrap();
        assert_eq!(
            seen.headers["transfer-encoding"], "chunked",
            "no length was declared: chunked on HTTP/1.1"
        );
    }
}

/// A GET's body framed by the caller (chunked, no length) reaches the app
/// whole, chunked, as Envoy passes it on: a body is never dropped for its
/// method.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunked_get_body_reaches_an_http1_app_whole() {
    let app = Upstream::start("gets").await;
    let frontend = frontend_only(&app).await;
    let request = "GET /with-a-body HTTP/1.1\r\nHost: backend:9080\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let response = raw_exchange(frontend.outbound, request).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let seen = app.seen().pop().expect("the app saw the request");
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.body_len, 5);
    assert_eq!(seen.body_hash, fnv(FNV_START, b"hello"));
    assert_eq!(seen.headers["transfer-encoding"], "chunked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_calls_keep_their_trailers() {
    let echo = grpc::start().await;
    let mesh = mesh(echo, "GRPC").await;
    let mut client = grpc::client(mesh.frontend.outbound, "http://backend:9080").await;

    let reply = grpc::unary(
        &mut client,
        Echo {
            text: "hello".into(),
            count: 0,
            payload: vec![7; 1000],
        },
    )
    .await
    .unwrap();
    assert_eq!(reply.text, "hello");
    assert_eq!(reply.payload, vec![7; 1000]);

    let status = grpc::unary(
        &mut client,
        Echo {
            text: "error:missing thing".into(),
            ..Echo::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "missing thing");

    let (items, end) = grpc::stream(
        &mut client,
        Echo {
            text: "tick".into(),
            count: 5,
            payload: vec![],
        },
    )
    .await;
    assert_eq!(items.len(), 5);
    assert_eq!(items[4].text, "tick 4");
    assert!(end.is_ok(), "{end:?}");

    let (items, end) = grpc::stream(
        &mut client,
        Echo {
            text: "fail-at-end".into(),
            count: 3,
            payload: vec![],
        },
    )
    .await;
    assert_eq!(items.len(), 3);
    let status = end.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted);
    assert_eq!(status.message(), "ended on purpose");
    assert_eq!(
        status.metadata().get("x-echo-trailer").unwrap(),
        "kept",
        "custom trailer lost"
    );

    let scrape = mesh.frontend.metrics().await;
    let ok = [
        ("reporter", "source"),
        ("request_protocol", "grpc"),
        ("grpc_response_status", "0"),
    ];
    assert!(
        scrape.sum("istio_requests_total", &ok) >= 2.0,
        "{}",
        scrape.text
    );
    let aborted = [("reporter", "source"), ("grpc_response_status", "10")];
    assert_eq!(scrape.sum("istio_requests_total", &aborted), 1.0);
    // The messages each way, as Istio counts them for gRPC (its
    // `grpc_stats` filter): the unary call and the five-item stream, then
    // the stream that failed after three, and the refused call.
    for (status, requests, responses) in [("0", 2.0, 6.0), ("10", 1.0, 3.0), ("5", 1.0, 0.0)] {
        let labels = [("reporter", "source"), ("grpc_response_status", status)];
        assert_eq!(
            (
                scrape.sum("istio_request_messages_total", &labels),
                scrape.sum("istio_response_messages_total", &labels)
            ),
            (requests, responses),
            "grpc-status {status}: {}",
            scrape.text
        );
    }
}

/// gRPC is `application/grpc` or `application/grpc+<codec>`, as Envoy's
/// `hasGrpcContentType` reads it: a gRPC-Web call to an HTTP/1.1
/// application reaches it over HTTP/1.1 and counts as `http` (the agent
/// spoke HTTP/2 to it, which it could not read: every call failed 200
/// `grpc-status: 14` UPE). And a gRPC answer without `grpc-status` reports
/// the one Envoy infers from its HTTP status (a 503 is 14), not none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_web_is_http_and_a_grpc_status_is_inferred_as_envoy_infers_it() {
    let app = Upstream::start("web-app").await;
    let mesh = mesh(app.addr, "HTTP").await;
    let call = |content_type: &str| {
        Request::post("http://backend:9080/svc.Echo/Say")
            .header("content-type", content_type)
            .body(Full::new(Bytes::from_static(b"AAAAAAA=")))
            .unwrap()
    };
    let client = Client::h1(mesh.frontend.outbound);
    for content_type in ["application/grpc-web-text", "application/grpc-web+proto"] {
        let reply = client.send(call(content_type)).await;
        assert_eq!(reply.status, 200, "{content_type}: {:?}", reply.headers);
        assert!(reply.header("grpc-status").is_none(), "{content_type}");
        let seen = app.seen().pop().expect("the app saw the call");
        assert_eq!(seen.version, http::Version::HTTP_11, "{content_type}");
        assert_eq!(seen.headers["content-type"], content_type);
    }
    let scrape = mesh.frontend.metrics().await;
    let web = [("reporter", "source"), ("request_protocol", "http")];
    assert_eq!(
        scrape.sum("istio_requests_total", &web),
        2.0,
        "{}",
        scrape.text
    );
    // Messages are counted for gRPC only, as Istio's stats filter counts
    // them where `grpc_stats` ran.
    assert!(
        !scrape.text.contains("istio_request_messages_total{"),
        "{}",
        scrape.text
    );

    app.fail_with(503);
    let reply = Client::h2(mesh.frontend.outbound)
        .send(call("application/grpc"))
        .await;
    assert_eq!(reply.status, 503);
    let scrape = mesh.frontend.metrics().await;
    let inferred = [
        ("reporter", "source"),
        ("request_protocol", "grpc"),
        ("response_code", "503"),
        ("grpc_response_status", "14"),
    ];
    assert_eq!(
        scrape.sum("istio_requests_total", &inferred),
        1.0,
        "{}",
        scrape.text
    );

    // A `grpc-status` that is no unsigned number is Envoy's `InvalidCode`
    // (-1), not inferred from the 200; spaces and a `+` are read.
    app.fail_with(0);
    for (sent, reported) in [
        ("abc", "-1"),
        ("-3", "-1"),
        ("1e1", "-1"),
        ("+5", "5"),
        ("70000", "-1"),
    ] {
        let mut call = call("application/grpc");
        call.headers_mut().insert(
            "x-echo-set-header",
            format!("grpc-status:{sent}").parse().unwrap(),
        );
        let reply = Client::h2(mesh.frontend.outbound).send(call).await;
        assert_eq!(reply.status, 200, "{sent}");
        let scrape = mesh.frontend.metrics().await;
        let labels = [
            ("reporter", "source"),
            ("request_protocol", "grpc"),
            ("response_code", "200"),
            ("grpc_response_status", reported),
        ];
        assert!(
            scrape.sum("istio_requests_total", &labels) >= 1.0,
            "{sent}: {}",
            scrape.text
        );
    }
    let scrape = mesh.frontend.metrics().await;
    let inferred_ok = [("request_protocol", "grpc"), ("grpc_response_status", "2")];
    assert_eq!(scrape.sum("istio_requests_total", &inferred_ok), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_upgrades_pass_through() {
    let app = Upstream::start("ws").await;
    let mesh = mesh(app.addr, "HTTP").await;
    let mut ws = open_websocket(&mesh).await;
    ws.close(None).await.unwrap();
}

/// A WebSocket through the two agents, three echoed messages: the open
/// stream.
async fn open_websocket(mesh: &Mesh) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let mut ws = websocket(mesh.frontend.outbound, "ws://backend:9080/ws").await;
    for i in 0..3 {
        echoed(&mut ws, &format!("message {i}")).await;
    }
    ws
}

/// An open WebSocket holds a drain as any open connection does: served
/// on through the drain period, as Envoy keeps an upgraded stream through
/// its drain, and the agent leaves once it closes. (Its connection stopped
/// counting as open once upgraded: the drain ended at once and cut it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_websocket_is_served_through_the_drain() {
    use tokio::io::AsyncWriteExt;
    let app = Upstream::start("ws-drain").await;
    let drain = "  drainDuration: 60s";
    let yaml = agent_with("frontend", closed_port().await, NO_COLLECTOR, drain)
        + &service_entry(
            "backend",
            9080,
            "HTTP",
            &[Ep {
                addr: app.addr,
                labels: &[],
            }],
        );
    let agent = Agent::start(&yaml);
    let mut ws = websocket(agent.outbound, "ws://backend:9080/ws").await;
    echoed(&mut ws, "before").await;
    agent.send_sigterm();
    agent.wait_stderr_line(&["draining"]);
    for i in 0..3 {
        echoed(&mut ws, &format!("while draining {i}")).await;
    }
    let log = agent.stderr().join("\n");
    assert!(!log.contains("drained: no connection left"), "{log}");
    // Closed, it lets the agent go well before the drain period ends.
    ws.get_mut().shutdown().await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let status = agent.wait_exit(std::time::Duration::from_secs(45));
    assert!(status.success(), "{status}");
}

/// The `rq_active` of the frontend's cluster for `backend:9080`.
async fn backend_requests_active(agent: &Agent) -> String {
    let clusters = agent.admin_get("/clusters").await;
    let line = clusters
        .lines()
        .find(|l| {
            let parts: Vec<&str> = l.split("::").collect();
            parts.len() == 3
                && parts[0].starts_with("outbound|9080||backend")
                && parts[1] == "rq_active"
        })
        .unwrap_or_else(|| panic!("no cluster line for backend:9080 in {clusters}"));
    line.rsplit("::").next().unwrap().to_owned()
}

/// Both agents' scrapes once each has recorded a `101`.
async fn recorded_websockets(mesh: &Mesh) -> [common::metrics::Scrape; 2] {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let scrapes = [mesh.frontend.metrics().await, mesh.backend.metrics().await];
        let recorded = |s: &common::metrics::Scrape| {
            s.sum("istio_requests_total", &[("response_code", "101")])
        };
        if scrapes.iter().all(|s| recorded(s) > 0.0) {
            return scrapes;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a closed WebSocket not recorded by both agents:\n{}\n{}",
            scrapes[0].text,
            scrapes[1].text
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A WebSocket is one request from its upgrade to its end, as Envoy keeps
/// it: it counts as the cluster's active request while it is open, and is
/// recorded when it ends — its duration the whole stream's, its bytes
/// those that passed each way after the `101` (Envoy's `BYTES_RECEIVED`
/// and `BYTES_SENT` of a WebSocket), and the side that ended it as Envoy
/// 1.40 flags it: DC for a client that closed, UC for an app that did.
/// (Before, it was recorded at the `101`: a few milliseconds, no bytes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_websocket_is_one_request_until_it_ends_and_is_recorded_then() {
    use tokio::io::AsyncWriteExt;
    let app = Upstream::start("ws-recorded").await;
    let closed = mesh(app.addr, "HTTP").await;

    // The client ends it: a FIN, no closing handshake.
    let mut ws = open_websocket(&closed).await;
    let opened = std::time::Instant::now();
    assert_eq!(backend_requests_active(&closed.frontend).await, "1");
    let scrape = closed.frontend.metrics().await;
    assert_eq!(
        scrape.sum("istio_requests_total", &[("response_code", "101")]),
        0.0,
        "recorded while still open: {}",
        scrape.text
    );
    // Open a while, so that a duration cut at the 101 would show.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let held_ms = opened.elapsed().as_millis() as f64;
    ws.get_mut().shutdown().await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    for (scrape, reporter) in recorded_websockets(&closed)
        .await
        .iter()
        .zip(["source", "destination"])
    {
        let labels = [("reporter", reporter), ("response_code", "101")];
        let flagged = [labels[0], labels[1], ("response_flags", "DC")];
        assert_eq!(
            scrape.sum("istio_requests_total", &flagged),
            1.0,
            "{reporter}: {}",
            scrape.text
        );
        let duration = scrape.sum("istio_request_duration_milliseconds_sum", &labels);
        assert!(
            duration >= held_ms,
            "{reporter}: {duration} ms, open for {held_ms} ms at least"
        );
        // Client frames are masked: 2 + 4 + 9 bytes each; the app's 2 + 9.
        assert_eq!(
            scrape.sum("istio_request_bytes_sum", &labels),
            45.0,
            "{reporter}"
        );
        assert_eq!(
            scrape.sum("istio_response_bytes_sum", &labels),
            33.0,
            "{reporter}"
        );
    }
    assert_eq!(backend_requests_active(&closed.frontend).await, "0");

    // The app ends it.
    let app = Upstream::start("ws-hung-up").await;
    let hung_up = mesh(app.addr, "HTTP").await;
    let mut ws = open_websocket(&hung_up).await;
    let hang_up =
        tokio_tungstenite::tungstenite::Message::text(common::upstream::WEBSOCKET_HANG_UP);
    ws.send(hang_up).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    for (scrape, reporter) in recorded_websockets(&hung_up)
        .await
        .iter()
        .zip(["source", "destination"])
    {
        let labels = [
            ("reporter", reporter),
            ("response_code", "101"),
            ("response_flags", "UC"),
        ];
        assert_eq!(
            scrape.sum("istio_requests_total", &labels),
            1.0,
            "{reporter}: {}",
            scrape.text
        );
        // Four client frames now, the last with 7 bytes of text.
        assert_eq!(
            scrape.sum("istio_request_bytes_sum", &labels),
            58.0,
            "{reporter}"
        );
        assert_eq!(
            scrape.sum("istio_response_bytes_sum", &labels),
            33.0,
            "{reporter}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn absolute_form_requests_work_like_an_http_proxy() {
    let app = Upstream::start("abs").await;
    let mesh = mesh(app.addr, "HTTP").await;
    let response = raw_exchange(
        mesh.frontend.outbound,
        "GET http://backend:9080/absolute HTTP/1.1\r\nHost: backend:9080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"path\":\"/absolute\""), "{response}");
}

/// An application that answers every request as HTTP/1.0 (Python's
/// `http.server`, old servers) and closes the connection after it.
async fn http10_app() -> std::net::SocketAddr {
    canned_server(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nold")
        .await
}

/// Envoy answers an HTTP/1.1 client in HTTP/1.1 whatever version the
/// upstream spoke: an HTTP/1.0 upstream must not make the mesh answer
/// HTTP/1.0, which closes the client's connection after every response.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http10_upstream_does_not_downgrade_the_callers_connection() {
    let mesh = mesh(http10_app().await, "HTTP").await;
    let two = "GET /one HTTP/1.1\r\nHost: backend:9080\r\n\r\n\
               GET /two HTTP/1.1\r\nHost: backend:9080\r\nConnection: close\r\n\r\n";
    for listener in [mesh.frontend.outbound, mesh.backend.inbound] {
        let response = raw_exchange(listener, two).await;
        assert_eq!(
            response.matches("HTTP/1.1 200 OK").count(),
            2,
            "both requests answered in HTTP/1.1 on one connection: {response}"
        );
        assert!(!response.contains("HTTP/1.0"), "{response}");
    }
}

/// A request head is bounded as Envoy bounds it (60 KiB of headers by
/// default): 50 KiB passes, 100 KiB is answered 431 by the agent and never
/// reaches the upstream (hyper's own bound, ~400 KiB, forwarded it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_heads_past_envoys_bound_get_431() {
    let app = Upstream::start("heads").await;
    let mesh = mesh(app.addr, "HTTP").await;
    let request = |size: usize| {
        format!(
            "GET /head HTTP/1.1\r\nHost: backend:9080\r\nx-big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(size)
        )
    };
    let small = raw_exchange(mesh.frontend.outbound, &request(50 * 1024)).await;
    assert!(small.starts_with("HTTP/1.1 200"), "{small}");
    let seen = app.seen().len();
    for listener in [mesh.frontend.outbound, mesh.backend.inbound] {
        let big = raw_exchange(listener, &request(100 * 1024)).await;
        assert!(big.starts_with("HTTP/1.1 431"), "{big}");
    }
    assert_eq!(app.seen().len(), seen, "an oversized head reached the app");
}

/// The bound is Envoy's `max_request_headers_kb` counted as Envoy's
/// HTTP/1 parser counts it: the whole head, request line included. A head
/// of 61440 bytes is read and served; one byte more is answered 431 (a
/// bound of 60 KiB of headers plus 4 KiB for the request line passed
/// heads Envoy refuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_head_of_60_kib_is_read_and_one_byte_more_is_431() {
    let app = Upstream::start("heads").await;
    let mesh = mesh(app.addr, "HTTP").await;
    let head = |len: usize| {
        let bare =
            "GET /head HTTP/1.1\r\nHost: backend:9080\r\nConnection: close\r\nx-big: \r\n\r\n";
        let head = bare.replace(
            "x-big: ",
            &format!("x-big: {}", "a".repeat(len - bare.len())),
        );
        assert_eq!(head.len(), len);
        head
    };
    let fits = raw_exchange(mesh.backend.inbound, &head(60 * 1024)).await;
    assert!(fits.starts_with("HTTP/1.1 200"), "{fits}");
    let seen = app.seen().len();
    let over = raw_exchange(mesh.backend.inbound, &head(60 * 1024 + 1)).await;
    assert!(over.starts_with("HTTP/1.1 431"), "{over}");
    assert_eq!(app.seen().len(), seen, "an oversized head reached the app");
}

/// An HTTP/2 request is bounded at Envoy's 100 header fields
/// (`max_headers_count`), pseudo-headers counted, as an HTTP/1.1 request
/// is bounded at 100 header lines: 100 pass, 101 are refused (431) and
/// never reach the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_requests_past_100_header_fields_are_refused() {
    let app = Upstream::start("fields").await;
    // An HTTP/2 app, which bounds no count (an HTTP/1.1 app's hyper refuses
    // 100 lines and the agent's own request id and trace context).
    let labels = [("app", "backend")];
    let endpoint = [Ep {
        addr: app.addr,
        labels: &labels,
    }];
    let agent = Agent::start(
        &(agent("frontend", closed_port().await, NO_COLLECTOR)
            + &service_entry("backend", 9080, "HTTP2", &endpoint)),
    );
    let client = Client::h2(agent.outbound);
    let names: Vec<String> = (0..97).map(|i| format!("x-field-{i}")).collect();
    let fields = |count: usize| -> Vec<(&str, &str)> {
        names[..count].iter().map(|n| (n.as_str(), "v")).collect()
    };
    // :method, :scheme, :authority and :path, and 96 more.
    let reply = client
        .get_with("http://backend:9080/fields", &fields(96))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(app.seen().pop().unwrap().headers["x-field-95"], "v");
    let seen = app.seen().len();
    let reply = client
        .get_with("http://backend:9080/fields", &fields(97))
        .await;
    assert_eq!(reply.status, 431);
    assert_eq!(app.seen().len(), seen, "101 header fields reached the app");
}

/// An HTTP/2 client's cookie crumbs (RFC 9113 §8.2.3: one `cookie` field
/// per cookie) reach the app as one `Cookie` line, joined with `; ` in
/// the order sent, as RFC 9113 requires of a hop to HTTP/1.1 and as Envoy
/// joins them: an HTTP/1.1 app reading the first `Cookie` line saw only
/// the first cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_cookie_crumbs_reach_the_app_as_one_cookie_line() {
    let app = Upstream::start("cookies").await;
    let mesh = mesh(app.addr, "HTTP").await;
    let reply = Client::h2(mesh.frontend.outbound)
        .get_with(
            "http://backend:9080/cookies",
            &[
                ("cookie", "session=abc"),
                ("cookie", "theme=dark"),
                ("cookie", "lang=en"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200);
    let seen = app.seen().pop().unwrap();
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["session=abc; theme=dark; lang=en"], "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hop_by_hop_headers_do_not_cross() {
    let app = Upstream::start("hop").await;
    let mesh = mesh(app.addr, "HTTP").await;
    let reply = Client::h1(mesh.frontend.outbound)
        .get_with(
            "http://backend:9080/hop",
            &[
                ("connection", "x-private"),
                ("x-private", "secret"),
                ("keep-alive", "timeout=5"),
                ("x-request-id", "given-id"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200);
    let seen = app.seen().pop().unwrap();
    assert!(!seen.headers.contains_key("x-private"));
    assert!(!seen.headers.contains_key("keep-alive"));
    assert_eq!(
        seen.headers["x-request-id"], "given-id",
        "an existing request id is kept"
    );
    // A Connection line naming the request id does not take it from the
    // app: the one the agent gave the request (and its span) arrives.
    for given in [None, Some("named-id")] {
        let mut lines = vec![("connection", "keep-alive, X-Request-Id")];
        lines.extend(given.map(|id| ("x-request-id", id)));
        let reply = Client::h1(mesh.frontend.outbound)
            .get_with("http://backend:9080/named", &lines)
            .await;
        assert_eq!(reply.status, 200);
        let seen = app.seen().pop().unwrap();
        let id = seen
            .headers
            .get("x-request-id")
            .map(|v| v.to_str().unwrap());
        match given {
            Some(given) => assert_eq!(id, Some(given)),
            None => assert_eq!(id.map(str::len), Some(36), "{id:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_ports_are_proxied_as_bytes() {
    let echo = tcp_echo().await;
    let backend = Agent::start(
        &AgentDoc {
            name: "db-v1",
            service: "db",
            app: "db",
            version: "v1",
            app_addr: echo,
            otlp: NO_COLLECTOR,
            app_protocol: "TCP",
            outbound_tcp: "[]",
            extra: "",
        }
        .yaml(),
    );
    let labels = [("app", "db")];
    let frontend_yaml = AgentDoc {
        name: "frontend-v1",
        service: "frontend",
        app: "frontend",
        version: "v1",
        app_addr: closed_port().await,
        otlp: NO_COLLECTOR,
        app_protocol: "HTTP",
        outbound_tcp: "[{listen: \"127.0.0.1:0\", host: db, port: 5432}]",
        extra: "",
    }
    .yaml()
        + &service_entry(
            "db",
            5432,
            "TCP",
            &[Ep {
                addr: backend.inbound,
                labels: &labels,
            }],
        );
    let frontend = Agent::start(&frontend_yaml);
    assert_eq!(frontend.outbound_tcp.len(), 1);

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(frontend.outbound_tcp[0])
        .await
        .unwrap();
    let payload: Vec<u8> = (0..300_000u64).map(pattern).collect();
    let (mut r, mut w) = conn.split();
    let write = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut echoed = Vec::new();
    let read = r.read_to_end(&mut echoed);
    let (_, read) = tokio::join!(write, read);
    read.unwrap();
    assert_eq!(echoed, payload);

    let source = frontend.metrics().await;
    let labels = [
        ("reporter", "source"),
        ("destination_service", "db.default.svc.cluster.local"),
        ("request_protocol", "tcp"),
    ];
    assert_eq!(
        source.sum("istio_tcp_connections_opened_total", &labels),
        1.0,
        "{}",
        source.text
    );
    assert_eq!(
        source.sum("istio_tcp_received_bytes_total", &labels),
        payload.len() as f64
    );
    let destination = wait_for_tcp_close(&backend).await;
    let labels = [("reporter", "destination"), ("destination_app", "db")];
    assert_eq!(
        destination.sum("istio_tcp_sent_bytes_total", &labels),
        payload.len() as f64
    );
    assert_eq!(
        destination.sum("istio_tcp_connections_closed_total", &labels),
        1.0
    );
}

async fn wait_for_tcp_close(agent: &Agent) -> common::metrics::Scrape {
    for _ in 0..200 {
        let scrape = agent.metrics().await;
        if scrape.sum("istio_tcp_connections_closed_total", &[]) >= 1.0 {
            return scrape;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the TCP connection was never counted as closed");
}

/// The agent on an IPv6-only path: both agents listen on `::1`, the
/// ServiceEntry's endpoint is `::1`, the app listens on `::1` — the request
/// arrives at the app over IPv6, and the metrics name
/// the route; a TCP service on `::1` passes bytes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ipv6_only_paths_carry_http_and_tcp() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no IPv6 loopback on a CI machine"
        );
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    }
    let v6 = |doc: String| doc.replace("\"127.0.0.1:0\"", "\"[::1]:0\"");
    let listener = std::net::TcpListener::bind("[::1]:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let app = Upstream::start_on("v6-app", listener);
    let backend = Agent::start(&v6(agent("backend", app.addr, NO_COLLECTOR)));
    assert!(backend.inbound.is_ipv6(), "{}", backend.inbound);
    let echo = tcp_echo_on(std::net::TcpListener::bind("[::1]:0").unwrap());
    let tcp = AgentDoc {
        name: "frontend-v1",
        service: "frontend",
        app: "frontend",
        version: "v1",
        app_addr: closed_port().await,
        otlp: NO_COLLECTOR,
        app_protocol: "HTTP",
        outbound_tcp: "[{listen: \"[::1]:0\", host: echo, port: 7000}]",
        extra: "",
    };
    let yaml = v6(tcp.yaml())
        + &format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: default}}
spec:
  hosts: [backend.default.svc.cluster.local]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: "::1", ports: {{http: {}}}, labels: {{app: backend, version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.default.svc.cluster.local]
  ports: [{{number: 7000, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: "::1", ports: {{tcp: {}}}}}]
"#,
            backend.inbound.port(),
            echo.port()
        );
    let frontend = Agent::start(&yaml);
    assert!(frontend.outbound.is_ipv6(), "{}", frontend.outbound);

    let reply = Client::h1(frontend.outbound)
        .get("http://backend:9080/v6")
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.upstream(), "v6-app");
    let seen = app.seen().pop().unwrap();
    assert_eq!(seen.peer.ip(), "::1".parse::<std::net::IpAddr>().unwrap());
    let scrape = frontend.metrics().await;
    let labels = [
        ("reporter", "source"),
        ("destination_service", "backend.default.svc.cluster.local"),
        ("response_code", "200"),
    ];
    assert_eq!(scrape.sum("istio_requests_total", &labels), 1.0);

    let mut conn = tokio::net::TcpStream::connect(frontend.outbound_tcp[0])
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"over v6").await.unwrap();
    let mut buf = [0u8; 7];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"over v6");
}

/// A ServiceEntry port without `protocol` is valid, as Istio's
/// `ValidateProtocol` allows it ("used for protocol sniffing"): the upstream
/// is spoken to as the client spoke. The agent refused the whole config.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_port_without_a_protocol_is_spoken_as_the_client_spoke() {
    let app = Upstream::start("undeclared").await;
    let entry = format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: backend, namespace: default}}\nspec:\n  hosts: [backend.default.svc.cluster.local]\n  ports: [{{number: 9080, name: web}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1, ports: {{web: {}}}}}]\n",
        app.addr.port()
    );
    let frontend = Agent::start(&(agent("frontend", closed_port().await, NO_COLLECTOR) + &entry));
    for (client, version) in [
        (Client::h1(frontend.outbound), http::Version::HTTP_11),
        (Client::h2(frontend.outbound), http::Version::HTTP_2),
    ] {
        let reply = client.get("http://backend:9080/sniffed").await;
        assert_eq!(reply.status, 200, "{version:?}");
        assert_eq!(app.seen().pop().expect("seen").version, version);
    }
}

/// A request as [`expect_aware_app`] read it.
#[derive(Debug, Clone)]
struct Arrived {
    /// Which of the app's connections it came on (0, 1, … in accept order).
    connection: usize,
    /// Its path.
    path: String,
    /// Whether its head carried `Expect: 100-continue`.
    expects: bool,
    /// When its head was read whole.
    head: std::time::Instant,
    /// When its body was read whole (`None`: never read).
    body: Option<std::time::Instant>,
}

/// What [`expect_aware_app`] has read, in order.
type ArrivedLog = std::sync::Arc<std::sync::Mutex<Vec<Arrived>>>;

/// An HTTP/1.1 app that answers `Expect: 100-continue` itself, noting each
/// request it reads ([`Arrived`]): `/refuse` is answered 413 from its head
/// alone (no 100, the body unread, the connection closed, as servers
/// refuse an upload); `/refuse-open` likewise but with the connection kept
/// open (a server that would read on); `/deaf` is read and answered as if
/// it had not asked (as an HTTP/1.0 server reads it); `/flaky` likewise,
/// but answered 503 the first time; anything else gets the app's own
/// `100 Continue` when it asked for one, then its body is read and
/// answered `200 got N`.
async fn expect_aware_app() -> (std::net::SocketAddr, ArrivedLog) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: ArrivedLog = Default::default();
    let noted = seen.clone();
    tokio::spawn(async move {
        let mut connection = 0;
        let flaky = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = noted.clone();
            let flaky = flaky.clone();
            tokio::spawn(async move {
                let mut read = Vec::new();
                loop {
                    let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut buf = [0u8; 4096];
                        match stream.read(&mut buf).await {
                            Ok(n) if n > 0 => read.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&read[..end]).to_ascii_lowercase();
                    read.drain(..end + 4);
                    let expects = head.contains("\r\nexpect: 100-continue");
                    let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                    let index = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(Arrived {
                            connection,
                            path: path.clone(),
                            expects,
                            head: std::time::Instant::now(),
                            body: None,
                        });
                        seen.len() - 1
                    };
                    if path == "/refuse" {
                        let _ = stream
                            .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!")
                            .await;
                        return;
                    }
                    if path == "/refuse-open" {
                        if stream
                            .write_all(
                                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!",
                            )
                            .await
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    let deaf = path == "/deaf" || path == "/flaky";
                    if expects && !deaf {
                        let _ = stream
                            .write_all(b"HTTP/1.1 100 Continue\r\nx-from: app\r\n\r\n")
                            .await;
                    }
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while read.len() < length {
                        let mut buf = [0u8; 4096];
                        match stream.read(&mut buf).await {
                            Ok(n) if n > 0 => read.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    read.drain(..length);
                    seen.lock().unwrap()[index].body = Some(std::time::Instant::now());
                    let answer = if path == "/flaky"
                        && flaky.swap(false, std::sync::atomic::Ordering::SeqCst)
                    {
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_owned()
                    } else {
                        let body = format!("got {length}");
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
            connection += 1;
        }
    });
    (addr, seen)
}

/// Reads from `stream` until `bytes` holds a whole response head (the
/// first one), within 10 s; returns it.
/// Connects to `addr`, sends the head of a POST of `length` bytes to
/// `path` with `Expect: 100-continue`, and reads the first head answered:
/// the stream, what was read, and that head.
async fn expect_post(
    addr: std::net::SocketAddr,
    path: &str,
    length: usize,
) -> (tokio::net::TcpStream, Vec<u8>, String) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: app:9080\r\nexpect: 100-continue\r\ncontent-length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    let head = read_one_head(&mut stream, &mut bytes).await;
    (stream, bytes, head)
}

async fn read_one_head(stream: &mut tokio::net::TcpStream, bytes: &mut Vec<u8>) -> String {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
            bytes.drain(..end + 4);
            return head;
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("a response head in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before a head: {:?}",
            String::from_utf8_lossy(bytes)
        );
        bytes.extend_from_slice(&buf[..n]);
    }
}

/// `Expect: 100-continue` goes on to the app, as Istio renders Envoy's
/// `proxy_100_continue: true`: an app that refuses the upload from its head
/// gets its 413 to the client with no `100 Continue` before it (the client
/// never sends the body), and an app that wants the body asks for it, the
/// client then told `100 Continue`. (Found by a breaker: the agent took the
/// header off and answered 100 at once, so the client sent its upload
/// before the app could refuse it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expect_100_continue_is_the_apps_to_answer() {
    use tokio::io::AsyncWriteExt;
    let (app, seen) = expect_aware_app().await;
    let frontend = Agent::start(
        &(agent("frontend", closed_port().await, NO_COLLECTOR)
            + &service_entry(
                "app",
                9080,
                "HTTP",
                &[Ep {
                    addr: app,
                    labels: &[],
                }],
            )),
    );
    // Refused from the head: the 413 is the first thing the client reads.
    let (_refused, _, head) = expect_post(frontend.outbound, "/refuse", 10000000).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // Refused from the head by an app that keeps its connection open: the
    // agent never sent the body it announced, so that connection is not
    // used again (the app would read the next request where the body was
    // to be).
    let (_refused_open, _, head) = expect_post(frontend.outbound, "/refuse-open", 10000000).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // Wanted: the client is told to go on, sends the body, gets the answer.
    let (mut stream, mut bytes, head) = expect_post(frontend.outbound, "/upload", 5).await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    stream.write_all(b"hello").await.unwrap();
    let head = read_one_head(&mut stream, &mut bytes).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // An app that never answers the expectation is sent the body after
    // the agent's wait, the client then told to go on: neither waits for
    // good.
    let (mut stream, mut bytes, head) = expect_post(frontend.outbound, "/deaf", 5).await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    stream.write_all(b"hello").await.unwrap();
    let head = read_one_head(&mut stream, &mut bytes).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = seen.lock().unwrap().clone();
    let paths: Vec<_> = seen.iter().map(|a| a.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/refuse", "/refuse-open", "/upload", "/deaf"],
        "each request read as its own head"
    );
    assert!(
        seen.iter().all(|a| a.expects),
        "the app was asked: {seen:?}"
    );
    assert_ne!(
        seen[2].connection, seen[1].connection,
        "the upload came on a connection of its own, not after a body never sent"
    );
}

/// A retry sends the body the agent already holds at once: the client was
/// told `100 Continue` for the first attempt, and there is no other to wait
/// for, as Envoy sends a retry's buffered body. The app ignores the
/// expectation (as an HTTP/1.0 server does): the first attempt's body waits
/// for the agent's `CONTINUE_WAIT` (1 s), the retry's must not. (Found by a
/// review: each attempt held its body for the app's 100 again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_does_not_wait_for_100_continue_again() {
    use tokio::io::AsyncWriteExt;
    let (app, seen) = expect_aware_app().await;
    let retries = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: app, namespace: default}\nspec:\n  hosts: [app]\n  http:\n  - retries: {attempts: 2, retryOn: 5xx}\n    route: [{destination: {host: app}}]\n";
    let frontend = Agent::start(
        &(agent("frontend", closed_port().await, NO_COLLECTOR)
            + &service_entry(
                "app",
                9080,
                "HTTP",
                &[Ep {
                    addr: app,
                    labels: &[],
                }],
            )
            + retries),
    );
    let (mut stream, mut bytes, head) = expect_post(frontend.outbound, "/flaky", 5).await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    stream.write_all(b"hello").await.unwrap();
    let head = read_one_head(&mut stream, &mut bytes).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "an attempt and its retry: {seen:?}");
    let gap = |a: &Arrived| a.body.expect("body read") - a.head;
    // The first attempt's body waited the agent's second for a 100 that
    // never came (its head reached the app a little after the wait began);
    // the retry's body, held by the agent, follows its head at once: far
    // under that second even on a loaded machine.
    let (first, retry) = (gap(&seen[0]), gap(&seen[1]));
    assert!(first >= std::time::Duration::from_millis(500), "{first:?}");
    assert!(
        retry < std::time::Duration::from_millis(500),
        "the retry's body waited {retry:?} after its head"
    );
}

/// An h2c application that takes WebSockets only as RFC 8441 extended
/// CONNECTs (`SETTINGS_ENABLE_CONNECT_PROTOCOL`), answering 200 with no
/// `Sec-WebSocket-Accept` (HTTP/2 has none) and echoing each text message;
/// anything else gets 404. It takes at most `max_streams` streams at once
/// on a connection (`SETTINGS_MAX_CONCURRENT_STREAMS`; `None`: hyper's
/// default).
async fn h2_websocket_app(max_streams: Option<u32>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service =
                hyper::service::service_fn(|mut req: Request<hyper::body::Incoming>| async move {
                    let websocket = req.method() == http::Method::CONNECT
                        && req
                            .extensions()
                            .get::<hyper::ext::Protocol>()
                            .is_some_and(|p| p.as_str() == "websocket");
                    if !websocket {
                        let response = http::Response::builder().status(404);
                        return Ok::<_, std::convert::Infallible>(
                            response
                                .body(http_body_util::Empty::<Bytes>::new())
                                .unwrap(),
                        );
                    }
                    let upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let io = hyper_util::rt::TokioIo::new(upgrade.await.unwrap());
                        let role = tokio_tungstenite::tungstenite::protocol::Role::Server;
                        let mut ws =
                            tokio_tungstenite::WebSocketStream::from_raw_socket(io, role, None)
                                .await;
                        while let Some(Ok(message)) = ws.next().await {
                            if message.is_text() && ws.send(message).await.is_err() {
                                break;
                            }
                        }
                    });
                    Ok(http::Response::new(http_body_util::Empty::<Bytes>::new()))
                });
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .enable_connect_protocol()
                        .max_concurrent_streams(max_streams)
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                        .await;
            });
        }
    });
    addr
}

/// A WebSocket to an application whose port is declared HTTP2 goes to it
/// as an RFC 8441 extended CONNECT, as Envoy sends it, and its 200 comes
/// back as the 101 with the `Sec-WebSocket-Accept` the client's key asks
/// for (which Envoy leaves out, so that clients fail the handshake there).
/// Through two agents: the frontend's goes to the backend's sidecar as an
/// HTTP/1.1 upgrade, the backend's to the application as the CONNECT.
/// (Found by a breaker: the agent sent the h2c-only application an
/// HTTP/1.1 upgrade, answered 502 UPE.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websockets_reach_an_http2_app_as_extended_connect() {
    let app = h2_websocket_app(None).await;
    let doc = AgentDoc {
        name: "backend-v1",
        service: "backend",
        app: "backend",
        version: "v1",
        app_addr: app,
        otlp: NO_COLLECTOR,
        app_protocol: "HTTP2",
        outbound_tcp: "[]",
        extra: "",
    };
    let Mesh {
        frontend,
        backend: _backend,
    } = mesh_of(&doc.yaml(), "HTTP2").await;
    let mut ws = websocket(frontend.outbound, "ws://backend:9080/ws").await;
    echoed(&mut ws, "over an extended CONNECT").await;
    echoed(&mut ws, "and again").await;
}

/// An open WebSocket to an HTTP/2 application counts as a live stream on
/// its pooled connection until it ends: once the application's
/// `SETTINGS_MAX_CONCURRENT_STREAMS` are all open WebSockets, a request
/// goes on another connection. (Found by a review: the stream stopped
/// counting once the CONNECT's empty 200 was read, so the pool put the
/// request on the full connection, where it waited for a WebSocket to
/// close.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_websockets_count_against_an_http2_apps_streams() {
    let app = h2_websocket_app(Some(2)).await;
    // One worker: every request shares its pool.
    let doc = AgentDoc {
        name: "backend-v1",
        service: "backend",
        app: "backend",
        version: "v1",
        app_addr: app,
        otlp: NO_COLLECTOR,
        app_protocol: "HTTP2",
        outbound_tcp: "[]",
        extra: "",
    };
    let yaml = doc.yaml().replace("concurrency: 2", "concurrency: 1");
    let Mesh {
        frontend,
        backend: _backend,
    } = mesh_of(&yaml, "HTTP2").await;
    let mut first = websocket(frontend.outbound, "ws://backend:9080/ws").await;
    echoed(&mut first, "one").await;
    let mut second = websocket(frontend.outbound, "ws://backend:9080/ws").await;
    echoed(&mut second, "two").await;
    let plain = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        Client::h1(frontend.outbound).get("http://backend:9080/plain"),
    )
    .await
    .expect("a request answered beside two open WebSockets");
    assert_eq!(plain.status, 404, "the app's own answer");
    // Both still open and working.
    echoed(&mut first, "one again").await;
    echoed(&mut second, "two again").await;
}
