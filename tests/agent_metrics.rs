//! Istio metrics, response flags, the admin API and the access log, read the
//! way an operator reads them: over the admin port and standard output.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::agent::Agent;
use common::client::Client;
use common::mesh::{AgentDoc, Ep, NO_COLLECTOR, agent, service_entry};
use common::upstream::{Upstream, closed_port, resetting_server};

struct Mesh {
    app: Upstream,
    frontend: Agent,
    backend: Agent,
}

async fn mesh(access_log: bool) -> Mesh {
    let app = Upstream::start("app").await;
    let backend = Agent::start(&agent("backend", app.addr, NO_COLLECTOR));
    let labels = [("app", "backend"), ("version", "v1")];
    let extra = if access_log {
        "  accessLog: {enabled: true}"
    } else {
        ""
    };
    let doc = AgentDoc {
        name: "frontend-v1",
        service: "frontend",
        app: "frontend",
        version: "v1",
        app_addr: closed_port().await,
        otlp: NO_COLLECTOR,
        app_protocol: "HTTP",
        outbound_tcp: "[]",
        extra,
    };
    let frontend = Agent::start(
        &(doc.yaml()
            + &service_entry(
                "backend",
                9080,
                "HTTP",
                &[Ep {
                    addr: backend.inbound,
                    labels: &labels,
                }],
            )),
    );
    Mesh {
        app,
        frontend,
        backend,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_are_counted_with_istio_labels_on_both_sides() {
    let m = mesh(false).await;
    let client = Client::h1(m.frontend.outbound);
    for _ in 0..3 {
        assert_eq!(client.get("http://backend:9080/ok").await.status, 200);
    }
    assert_eq!(
        client.get("http://backend:9080/status/500").await.status,
        500
    );

    let source = m.frontend.metrics().await;
    let labels = [
        ("reporter", "source"),
        ("source_workload", "frontend-v1"),
        ("source_workload_namespace", "default"),
        ("source_app", "frontend"),
        ("source_version", "v1"),
        ("source_canonical_service", "frontend"),
        // Plaintext: the callee's metadata matches the registry's endpoint,
        // whose values are used (the registry names no workload).
        ("destination_workload", "unknown"),
        ("destination_workload_namespace", "default"),
        ("destination_app", "backend"),
        ("destination_version", "v1"),
        ("destination_service", "backend.default.svc.cluster.local"),
        ("destination_service_name", "backend"),
        ("destination_service_namespace", "default"),
        ("request_protocol", "http"),
        ("response_flags", "-"),
        ("connection_security_policy", "unknown"),
        ("grpc_response_status", ""),
    ];
    let with_code = |code| {
        let mut l = labels.to_vec();
        l.push(("response_code", code));
        l
    };
    assert_eq!(
        source.sum("istio_requests_total", &with_code("200")),
        3.0,
        "{}",
        source.text
    );
    assert_eq!(source.sum("istio_requests_total", &with_code("500")), 1.0);
    assert_eq!(
        source.histogram_count("istio_request_duration_milliseconds", &with_code("200")),
        3
    );
    // Whole milliseconds, as Istio's stats filter records a duration.
    let total = source.sum("istio_request_duration_milliseconds_sum", &with_code("200"));
    assert_eq!(total.fract(), 0.0, "{total}");
    for bound in ["0.5", "25", "3600000"] {
        assert!(
            source.text.contains(&format!("le=\"{bound}\"")),
            "Envoy's default buckets include {bound}"
        );
    }
    assert!(source.text.contains("istio_request_bytes_bucket"));
    assert!(source.text.contains("istio_response_bytes_bucket"));

    let destination = m.backend.metrics().await;
    let labels = [
        ("reporter", "destination"),
        // Plaintext from a caller the backend's registry does not know:
        // its self-description is not believed (agent_mtls has the mTLS case).
        ("source_workload", "unknown"),
        ("source_app", "unknown"),
        ("destination_workload", "backend-v1"),
        ("destination_service", "backend.default.svc.cluster.local"),
        ("connection_security_policy", "none"),
        ("response_code", "200"),
    ];
    assert_eq!(
        destination.sum("istio_requests_total", &labels),
        3.0,
        "{}",
        destination.text
    );
    assert_eq!(m.app.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_failures_answer_like_envoy_and_carry_flags() {
    let resetting = resetting_server().await;
    let closed = closed_port().await;
    let app = Upstream::start("app").await;
    let yaml = agent("frontend", closed_port().await, NO_COLLECTOR)
        + &service_entry(
            "refused",
            9080,
            "HTTP",
            &[Ep {
                addr: closed,
                labels: &[],
            }],
        )
        + &service_entry(
            "resetting",
            9080,
            "HTTP",
            &[Ep {
                addr: resetting,
                labels: &[],
            }],
        )
        + &service_entry(
            "app",
            9080,
            "HTTP",
            &[Ep {
                addr: app.addr,
                labels: &[("version", "v1")],
            }],
        )
        + r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: app, namespace: default}
spec:
  host: app
  subsets: [{name: v9, labels: {version: v9}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app, namespace: default}
spec:
  hosts: [app]
  http:
  - match: [{uri: {prefix: /empty-subset}}]
    route: [{destination: {host: app, subset: v9}}]
  - match: [{uri: {prefix: /unknown-host}}]
    route: [{destination: {host: ghost}}]
  - match: [{uri: {prefix: /undefined-subset}}]
    route: [{destination: {host: app, subset: v7}}]
  - route: [{destination: {host: app}}]
"#;
    let agent = Agent::start(&yaml);
    let client = Client::h1(agent.outbound);
    let cases = [
        ("http://nowhere:9080/", 404, "NR", ""),
        (
            "http://refused:9080/",
            503,
            "URX,UF",
            "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure",
        ),
        (
            "http://resetting:9080/",
            503,
            "UC",
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
        ),
        (
            "http://app:9080/empty-subset",
            503,
            "UH",
            "no healthy upstream",
        ),
        // No body, as Envoy's router answers a route whose cluster is
        // not found.
        ("http://app:9080/unknown-host", 503, "NC", ""),
        ("http://app:9080/undefined-subset", 503, "NC", ""),
    ];
    for (url, status, flag, body) in cases {
        let reply = client.get(url).await;
        assert_eq!(reply.status, status, "{url}");
        assert_eq!(
            reply.header("x-tracemesh-response-flags").as_deref(),
            Some(flag),
            "{url}"
        );
        assert_eq!(String::from_utf8_lossy(&reply.body), body, "{url}");
        if body.is_empty() {
            assert_eq!(
                reply.header("content-length").as_deref(),
                Some("0"),
                "{url}"
            );
            assert_eq!(reply.header("content-type"), None, "{url}");
        }
    }
    let scrape = agent.metrics().await;
    let expect = [
        // A host outside the registry is never a label (BlackHoleCluster).
        ("404", "NR", "unknown"),
        ("503", "URX,UF", "refused.default.svc.cluster.local"),
        ("503", "UC", "resetting.default.svc.cluster.local"),
        ("503", "UH", "app.default.svc.cluster.local"),
        ("503", "NC", "ghost.default.svc.cluster.local"),
        ("503", "NC", "app.default.svc.cluster.local"),
    ];
    for (code, flag, service) in expect {
        let labels = [
            ("response_code", code),
            ("response_flags", flag),
            ("destination_service", service),
            ("reporter", "source"),
        ];
        assert_eq!(
            scrape.sum("istio_requests_total", &labels),
            1.0,
            "{flag}: {}",
            scrape.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_goes_away_is_recorded_as_dc() {
    let m = mesh(true).await;
    let mut stream = tokio::net::TcpStream::connect(m.frontend.outbound)
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(b"GET /slow/3000 HTTP/1.1\r\nHost: backend:9080\r\n\r\n")
        .await
        .unwrap();
    // Wait until the request reached the app, then hang up.
    for _ in 0..200 {
        if m.app.count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stream);
    for _ in 0..200 {
        let scrape = m.frontend.metrics().await;
        if scrape.sum(
            "istio_requests_total",
            &[("response_flags", "DC"), ("response_code", "0")],
        ) == 1.0
        {
            // As Envoy 1.40 logs it (`resetAllStreams` on the close).
            let line = m.frontend.access_log_line("/slow/3000");
            assert_eq!(
                line["response_code_details"], "downstream_remote_disconnect",
                "{line}"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "no DC request recorded: {}",
        m.frontend.metrics().await.text
    );
}

/// An HTTP/1.1 client that closes its connection mid-upload never gets a
/// response head: Envoy records `response_code` 0 with `DC`, as for an
/// HTTP/2 reset, on both reporters. (Found by a breaker: both recorded
/// 503 DC, and the access log said 503.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_goes_away_mid_upload_is_recorded_with_code_0() {
    let m = mesh(true).await;
    let mut stream = tokio::net::TcpStream::connect(m.frontend.outbound)
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: backend:9080\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    // Once the request has gone through both agents: the backend's agent
    // dials the application when it has the request head.
    let give_up = std::time::Instant::now() + Duration::from_secs(20);
    while m.app.accepted_connections() == 0 {
        assert!(
            std::time::Instant::now() < give_up,
            "the request never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);
    let dc = [("response_flags", "DC"), ("response_code", "0")];
    for (agent, reporter) in [(&m.frontend, "source"), (&m.backend, "destination")] {
        let mut recorded = false;
        for _ in 0..400 {
            let scrape = agent.metrics().await;
            if scrape.sum("istio_requests_total", &[]) >= 1.0 {
                let labels = [dc[0], dc[1], ("reporter", reporter)];
                assert_eq!(
                    scrape.sum("istio_requests_total", &labels),
                    1.0,
                    "{reporter}: {}",
                    scrape.text
                );
                recorded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(recorded, "{reporter}: nothing recorded");
    }
    let line = m.frontend.access_log_line("/upload");
    assert_eq!(line["response_code"], 0, "{line}");
    assert_eq!(line["response_flags"], "DC", "{line}");
    assert_eq!(line["bytes_sent"], 0, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_api_shows_config_clusters_and_routes() {
    let m = mesh(false).await;
    Client::h1(m.frontend.outbound)
        .get("http://backend:9080/")
        .await;
    assert_eq!(m.frontend.admin_get("/ready").await.trim(), "LIVE");

    let dump: serde_json::Value =
        serde_json::from_str(&m.frontend.admin_get("/config_dump").await).unwrap();
    assert_eq!(dump["version"], 1);
    let kinds: Vec<&str> = dump["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["Agent", "ServiceEntry"]);
    assert_eq!(
        dump["listeners"]["outbound"],
        m.frontend.outbound.to_string()
    );

    let text = m.frontend.admin_get("/clusters").await;
    let line = format!(
        "outbound|9080||backend.default.svc.cluster.local::{}::rq_total::1",
        m.backend.inbound
    );
    assert!(text.lines().any(|l| l == line), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&m.frontend.admin_get("/clusters?format=json").await).unwrap();
    let cluster = json["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "outbound|9080||backend.default.svc.cluster.local")
        .unwrap();
    assert_eq!(cluster["endpoints"][0]["labels"]["version"], "v1");
    assert_eq!(cluster["loadBalancer"], "LEAST_REQUEST");

    let routes: serde_json::Value =
        serde_json::from_str(&m.frontend.admin_get("/routes").await).unwrap();
    let host = routes["virtualHosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "backend.default.svc.cluster.local")
        .unwrap();
    let domains: Vec<&str> = host["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        domains.contains(&"backend") && domains.contains(&"backend.default"),
        "{domains:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_access_log_has_envoys_fields() {
    let m = mesh(true).await;
    let client = Client::h1(m.frontend.outbound);
    client
        .get_with(
            "http://backend:9080/logged?x=1",
            &[("x-request-id", "log-me"), ("user-agent", "logger")],
        )
        .await;
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    client
        .get_with("http://nowhere/", &[("traceparent", caller)])
        .await;
    let lines = m.frontend.wait_stdout_lines(2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let ok: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/logged?x=1");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["response_code"], 200);
    assert_eq!(ok["response_flags"], "-");
    assert_eq!(ok["request_id"], "log-me");
    assert_eq!(ok["user_agent"], "logger");
    assert_eq!(ok["authority"], "backend:9080");
    assert_eq!(
        ok["upstream_cluster"],
        "outbound|9080||backend.default.svc.cluster.local"
    );
    assert_eq!(ok["upstream_host"], m.backend.inbound.to_string());
    assert!(ok["traceparent"].as_str().unwrap().starts_with("00-"));
    assert!(ok["duration"].is_u64() && ok["start_time"].as_str().unwrap().ends_with('Z'));
    let nr: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(nr["response_code"], 404);
    assert_eq!(nr["response_flags"], "NR");
    assert_eq!(nr["response_code_details"], "route_not_found");
    assert!(
        nr["request_id"].as_str().is_some_and(|id| id.len() == 36),
        "a generated request id"
    );
    // Answered by the agent, nothing went on: the line names this hop's
    // span, a child in the caller's trace.
    let own = nr["traceparent"].as_str().expect("a traceparent");
    assert_eq!(own.len(), caller.len(), "{own}");
    assert_eq!(own[..36], caller[..36], "the caller's trace");
    assert_ne!(
        own[36..52],
        caller[36..52],
        "this hop's span, not the caller's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_request_body_is_the_clients_fault() {
    // One endpoint that outlier detection would eject after a single 5xx or
    // gateway error: a broken body must count as neither.
    let app = Upstream::start("app").await;
    let frontend = Agent::start(
        &(agent("frontend", closed_port().await, NO_COLLECTOR)
            + &service_entry(
                "backend",
                9080,
                "HTTP",
                &[Ep {
                    addr: app.addr,
                    labels: &[],
                }],
            )
            + "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: backend, namespace: default}\nspec:\n  host: backend\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 1, consecutiveGatewayErrors: 1, maxEjectionPercent: 100}\n"),
    );
    let broken = "POST /upload HTTP/1.1\r\nHost: backend:9080\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nnot-a-size\r\n";
    let reply = common::client::raw_exchange(frontend.outbound, broken).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("x-tracemesh-response-flags: DPE"), "{reply}");
    // The endpoint was not ejected: the next request reaches it.
    let ok = Client::h1(frontend.outbound)
        .get("http://backend:9080/after")
        .await;
    assert_eq!(ok.status, 200);
    let scrape = frontend.metrics().await;
    let count = |labels: &[(&str, &str)]| scrape.sum("istio_requests_total", labels);
    assert_eq!(
        count(&[("response_code", "400"), ("response_flags", "DPE")]),
        1.0
    );
    assert_eq!(count(&[("response_flags", "UC")]), 0.0);
    assert_eq!(count(&[("response_code", "503")]), 0.0);
    assert_eq!(
        scrape.sum("tracemesh_agent_outlier_ejections_total", &[]),
        0.0
    );
}

/// An h2c application that ends every answer after its head with a frame
/// of its own rather than END_STREAM on the HEADERS frame: `/trailers`
/// with trailers, any other path with an empty DATA frame (as hyper's and
/// Python's h2 servers do). `/no-content` answers 204, `/not-modified`
/// 304, anything else 200 with `content-length: 5` and, but to a HEAD,
/// a body of 5 bytes.
async fn h2_app_ending_after_the_head() -> std::net::SocketAddr {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let status = match req.uri().path() {
                        "/no-content" => 204,
                        "/not-modified" => 304,
                        _ => 200,
                    };
                    let mut frames = Vec::new();
                    if status == 200 && req.method() != http::Method::HEAD {
                        frames.push(Frame::data(Bytes::from_static(b"hello")));
                    }
                    if req.uri().path() == "/trailers" {
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("x-trailer", "t".parse().unwrap());
                        frames.push(Frame::trailers(trailers));
                    }
                    let mut response = http::Response::builder().status(status);
                    if status == 200 {
                        response = response.header("content-length", "5");
                    }
                    // A stream body does not know its end before it is
                    // polled: hyper sends the head alone, then the frames
                    // (an empty DATA frame with END_STREAM for none).
                    let frames = frames.into_iter().map(Ok::<_, std::convert::Infallible>);
                    let body = StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, std::convert::Infallible>(response.body(body).unwrap())
                },
            );
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                        .await;
            });
        }
    });
    addr
}

/// An HTTP/1.1 answer that by HTTP has no body (to a HEAD; a 204, a 304)
/// is whole once its head is written, and one with a `Content-Length` once
/// that many bytes are, whatever frames end the upstream's HTTP/2 stream
/// after: Envoy logs it `200 -`. (Found by a breaker: hyper's HTTP/1.1
/// server drops such an answer's body unread, and the request was recorded
/// as the client's disconnect, `DC`, in the access log, the metrics and the
/// span.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_answers_from_an_http2_app_are_not_the_clients_disconnect() {
    use http_body_util::{BodyExt, Empty};
    let app = h2_app_ending_after_the_head().await;
    let frontend = Agent::start(
        &(common::mesh::agent_with(
            "frontend",
            closed_port().await,
            NO_COLLECTOR,
            "  accessLog: {enabled: true}",
        ) + &service_entry(
            "app",
            9080,
            "HTTP2",
            &[Ep {
                addr: app,
                labels: &[],
            }],
        )),
    );
    // One HTTP/1.1 connection for all of them: each answer ends, and the
    // connection is kept for the next.
    let stream = tokio::net::TcpStream::connect(frontend.outbound)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let cases = [
        (http::Method::HEAD, "/empty-data", 200),
        (http::Method::HEAD, "/trailers", 200),
        (http::Method::GET, "/no-content", 204),
        (http::Method::GET, "/not-modified", 304),
        (http::Method::GET, "/after", 200),
    ];
    for (method, path, status) in &cases {
        let request = http::Request::builder()
            .method(method)
            .uri(*path)
            .header("host", "app:9080")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), *status, "{method} {path}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let expected: &[u8] = if path == &"/after" { b"hello" } else { b"" };
        assert_eq!(body, expected, "{method} {path}");
    }
    for (method, path, status) in &cases {
        let line = frontend.access_log_line(path);
        assert_eq!(line["response_code"], *status, "{method} {path}: {line}");
        assert_eq!(line["response_flags"], "-", "{method} {path}: {line}");
        assert_eq!(
            line["response_code_details"], "via_upstream",
            "{method} {path}: {line}"
        );
    }
    let mut scrape = frontend.metrics().await;
    for _ in 0..400 {
        if scrape.sum("istio_requests_total", &[]) >= 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        scrape = frontend.metrics().await;
    }
    assert_eq!(
        scrape.sum("istio_requests_total", &[("response_flags", "-")]),
        5.0,
        "{}",
        scrape.text
    );
    assert_eq!(
        scrape.sum("istio_requests_total", &[("response_flags", "DC")]),
        0.0,
        "{}",
        scrape.text
    );
}
