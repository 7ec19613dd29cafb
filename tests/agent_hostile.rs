//! The agent under hostile traffic, over real sockets: hosts and peer
//! identities a client makes up do not become metric series, every metric
//! family has a hard cap on series, connections and request bodies that
//! do nothing are timed out, and CONNECT is refused where no route allows it.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use common::agent::Agent;
use common::client::{Client, raw_exchange};
use common::grpc::{self, Echo, Methods, Routed};
use common::mesh::{Ep, NO_COLLECTOR, agent_with, service_entry};
use common::upstream::{self, Upstream, canned_server, closed_port};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Status;
use tonic_prost::ProstCodec;

/// The agent's resident set size, in bytes (`VmRSS` of `/proc/PID/status`).
fn rss(agent: &Agent) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

fn len_field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    let mut n = bytes.len();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(bytes);
}

/// A protobuf `Struct` whose fields hold encoded `Value`s.
fn struct_bytes(fields: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut root = Vec::new();
    for (key, value) in fields {
        let mut entry = Vec::new();
        len_field(&mut entry, 0x0a, key.as_bytes());
        len_field(&mut entry, 0x12, value);
        len_field(&mut root, 0x0a, &entry); // Struct.fields = 1
    }
    root
}

/// Istio's peer metadata: string fields and `LABELS`, base64 of a `Struct`.
fn peer_metadata(fields: &[(&str, &str)], labels: &[(&str, &str)]) -> String {
    let string = |s: &str| {
        let mut v = Vec::new();
        len_field(&mut v, 0x1a, s.as_bytes()); // Value.string_value = 3
        v
    };
    let mut all: Vec<(&str, Vec<u8>)> = fields.iter().map(|(k, v)| (*k, string(v))).collect();
    if !labels.is_empty() {
        let labels: Vec<(&str, Vec<u8>)> = labels.iter().map(|(k, v)| (*k, string(v))).collect();
        let mut value = Vec::new();
        len_field(&mut value, 0x2a, &struct_bytes(&labels)); // Value.struct_value = 5
        all.push(("LABELS", value));
    }
    base64::engine::general_purpose::STANDARD.encode(struct_bytes(&all))
}

/// Sends `total` requests over `connections` keep-alive connections,
/// `request(i)` the bytes of the i-th, pipelined in batches; returns the
/// status of each response by class (index 0: 1xx … 4: 5xx).
async fn drive(
    addr: SocketAddr,
    total: usize,
    connections: usize,
    request: impl Fn(usize) -> String + Clone + Send + 'static,
) -> [usize; 5] {
    let per = total / connections;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let mut classes = [0usize; 5];
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut sent = 0;
            while sent < per {
                let batch = (per - sent).min(64);
                let mut out = String::new();
                for i in 0..batch {
                    out.push_str(&request(c * per + sent + i));
                }
                stream.write_all(out.as_bytes()).await.unwrap();
                for _ in 0..batch {
                    let status = read_response(&mut stream, &mut buf).await;
                    classes[(status / 100 - 1) as usize] += 1;
                }
                sent += batch;
            }
            classes
        }));
    }
    let mut classes = [0usize; 5];
    for task in tasks {
        for (sum, n) in classes.iter_mut().zip(task.await.unwrap()) {
            *sum += n;
        }
    }
    classes
}

/// Reads one HTTP/1.1 response with a content-length body; returns its status.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status: u16 = head[9..12].parse().unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            let total = end + 4 + length;
            while buf.len() < total {
                read_more(stream, buf).await;
            }
            buf.drain(..total);
            return status;
        }
        read_more(stream, buf).await;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await.unwrap();
    assert!(n > 0, "the agent closed a keep-alive connection");
    buf.extend_from_slice(&chunk[..n]);
}

fn frontend(app: SocketAddr, extra: &str) -> String {
    agent_with("frontend", app, NO_COLLECTOR, extra)
}

/// The example from the report: 100k made-up hosts to the outbound listener
/// took the agent from 19 MB to 1.7 GB, and 100k forged peer identities
/// grew the inbound side the same way. Now both are one label set each,
/// and the agent's memory stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_hosts_and_forged_peers_do_not_grow_the_metrics() {
    // No spans (they are bounded by their own queue; this test measures
    // the metrics, and a debug build spends most of its time on spans).
    let app = Upstream::start("frontend-app").await;
    let agent = Agent::start(&frontend(app.addr, "").replace("sampling: 1.0", "sampling: 0.0"));
    let outbound = |i: usize| format!("GET / HTTP/1.1\r\nhost: made-up-{i}.example\r\n\r\n");
    let forged = |i: usize| {
        let meta = peer_metadata(
            &[
                ("NAME", &format!("forged-{i}")),
                ("WORKLOAD_NAME", &format!("forged-{i}")),
                ("NAMESPACE", &format!("ns-{i}")),
                ("CLUSTER_ID", &format!("cluster-{i}")),
            ],
            &[("app", &format!("forged-app-{i}"))],
        );
        format!(
            "GET / HTTP/1.1\r\nhost: frontend\r\nx-envoy-peer-metadata: {meta}\r\nx-envoy-peer-metadata-id: sidecar~{i}\r\n\r\n"
        )
    };
    // Warm up: allocator arenas, pools, caches and the span queue filled.
    drive(agent.outbound, 5_000, 4, outbound).await;
    drive(agent.inbound, 5_000, 4, move |i| forged(1_000_000 + i)).await;
    let idle = rss(&agent);

    let n = 100_000;
    let started = std::time::Instant::now();
    let out = drive(agent.outbound, n, 4, move |i| outbound(2_000_000 + i)).await;
    assert_eq!(out[3], n, "every made-up host is no route (404)");
    let inb = drive(agent.inbound, n, 4, move |i| forged(3_000_000 + i)).await;
    assert_eq!(inb[1], n, "every forged caller is served (200)");
    let after = rss(&agent);
    eprintln!(
        "RSS idle {} MB, after {n} hosts and {n} forged peers {} MB ({:?})",
        idle >> 20,
        after >> 20,
        started.elapsed()
    );
    assert!(
        after < idle + (20 << 20),
        "RSS grew from {} MB to {} MB",
        idle >> 20,
        after >> 20
    );

    let scrape = agent.metrics().await;
    assert!(
        scrape.text.len() < 256 * 1024,
        "the scrape stays small: {} bytes",
        scrape.text.len()
    );
    let outside = [
        ("reporter", "source"),
        ("destination_service", "unknown"),
        ("destination_service_name", "BlackHoleCluster"),
        ("destination_service_namespace", "unknown"),
        ("response_flags", "NR"),
    ];
    assert_eq!(
        scrape.sum("istio_requests_total", &outside),
        (n + 5_000) as f64,
        "{}",
        scrape.text
    );
    let forged_callers = [
        ("reporter", "destination"),
        ("source_workload", "unknown"),
        ("source_workload_namespace", "unknown"),
        ("source_cluster", "unknown"),
    ];
    assert_eq!(
        scrape.sum("istio_requests_total", &forged_callers),
        (n + 5_000) as f64,
        "{}",
        scrape.text
    );
    assert!(!scrape.text.contains("made-up-"), "no host becomes a label");
    assert!(
        !scrape.text.contains("forged-"),
        "no forged name becomes a label"
    );
    // One series a side.
    let series = scrape.matching("istio_requests_total", &[]).count();
    let inbound = scrape
        .matching("istio_requests_total", &[("reporter", "destination")])
        .count();
    assert_eq!(series - inbound, 1, "one series outbound:\n{}", scrape.text);
    assert_eq!(inbound, 1, "one series inbound:\n{}", scrape.text);
}

/// A plaintext caller's self-description is believed when it matches a peer
/// of the registry (and then labelled with the registry's values), and not
/// otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_peer_metadata_counts_only_when_the_registry_knows_the_peer() {
    let app = Upstream::start("app").await;
    let caller = Ep {
        addr: "127.0.0.1:9".parse().unwrap(),
        labels: &[("app", "reviews"), ("version", "v2")],
    };
    let agent = Agent::start(
        &(frontend(app.addr, "") + &service_entry("reviews", 9080, "HTTP", &[caller])),
    );
    let client = Client::h1(agent.inbound);
    let with_labels = peer_metadata(
        &[
            ("WORKLOAD_NAME", "reviews-v2-7f9c"),
            ("NAMESPACE", "default"),
            ("CLUSTER_ID", "Kubernetes"),
        ],
        &[("app", "reviews"), ("version", "v2")],
    );
    let unknown_app = peer_metadata(
        &[("WORKLOAD_NAME", "evil"), ("NAMESPACE", "default")],
        &[("app", "evil")],
    );
    for meta in [&with_labels, &unknown_app] {
        let reply = client
            .get_with("http://frontend/", &[("x-envoy-peer-metadata", meta)])
            .await;
        assert_eq!(reply.status, 200);
    }
    let scrape = agent.metrics().await;
    let registry = [
        ("reporter", "destination"),
        ("source_app", "reviews"),
        ("source_version", "v2"),
        ("source_workload_namespace", "default"),
        ("source_workload", "unknown"),
    ];
    assert_eq!(
        scrape.sum("istio_requests_total", &registry),
        1.0,
        "{}",
        scrape.text
    );
    let unknown = [
        ("reporter", "destination"),
        ("source_app", "unknown"),
        ("source_workload_namespace", "unknown"),
    ];
    assert_eq!(scrape.sum("istio_requests_total", &unknown), 1.0);
    assert!(!scrape.text.contains("evil"));
    assert!(!scrape.text.contains("reviews-v2-7f9c"));
}

/// `maxSeriesPerMetric` is a hard cap: label sets past it are not recorded,
/// and each observation left out is counted in a metric of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_family_holds_at_most_max_series_label_sets() {
    let app = Upstream::start("app").await;
    // Lines of `extra` indented four spaces continue `spec.telemetry`.
    let agent = Agent::start(&frontend(app.addr, "    maxSeriesPerMetric: 3\n"));
    let client = Client::h1(agent.inbound);
    for code in [200, 201, 202, 203, 204, 203] {
        let reply = client.get(&format!("http://frontend/status/{code}")).await;
        assert_eq!(reply.status.as_u16(), code);
    }
    let scrape = agent.metrics().await;
    assert_eq!(
        scrape.matching("istio_requests_total", &[]).count(),
        3,
        "{}",
        scrape.text
    );
    assert_eq!(
        scrape.sum(
            "tracemesh_agent_metric_series_overflow_total",
            &[("family", "istio_requests")]
        ),
        3.0,
        "203, 204 and 203 again are left out: {}",
        scrape.text
    );
    assert!(
        agent
            .stderr()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("metric series cap reached")),
        "{:?}",
        agent.stderr()
    );
}

/// Reads until the agent closes the connection (or 10 s pass); returns
/// what it sent and whether it closed.
async fn read_until_closed(stream: &mut TcpStream) -> (String, bool) {
    let mut out = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut out),
    )
    .await;
    (String::from_utf8_lossy(&out).into_owned(), read.is_ok())
}

fn with_timeouts(app: SocketAddr) -> String {
    frontend(
        app,
        "  downstream: {idleTimeout: 500ms, streamIdleTimeout: 500ms}\n",
    ) + &service_entry(
        "backend",
        9080,
        "HTTP",
        &[Ep {
            addr: app,
            labels: &[],
        }],
    )
}

/// A connection that sends nothing is closed after `idleTimeout`, on both
/// listeners, and so is an HTTP/2 one that acknowledges nothing; one with
/// a request in flight is not, however long it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let app = Upstream::start("app").await;
    let agent = Agent::start(&with_timeouts(app.addr));
    for listener in [agent.outbound, agent.inbound] {
        let mut silent = TcpStream::connect(listener).await.unwrap();
        let (sent, closed) = read_until_closed(&mut silent).await;
        assert!(closed, "a silent connection is closed");
        assert_eq!(sent, "", "closed without a word, as Envoy's idle timeout");
    }

    // An HTTP/2 client that opens its connection and then acknowledges
    // nothing: the idle close's GOAWAY and PING go unanswered, and it is
    // dropped 5 s later (Envoy's drain_timeout), as Envoy drops it. It
    // was held for ever.
    let mut silent = TcpStream::connect(agent.outbound).await.unwrap();
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        silent.read_to_end(&mut out),
    )
    .await;
    assert!(read.is_ok(), "a silent HTTP/2 connection is closed");

    // A request slower than the idle timeout keeps its connection.
    app.delay_all(1_500);
    let mut busy = TcpStream::connect(agent.outbound).await.unwrap();
    busy.write_all(b"GET / HTTP/1.1\r\nhost: backend:9080\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut busy, &mut buf).await, 200);
    // … and is closed once it has been idle for the timeout after it.
    let (_, closed) = read_until_closed(&mut busy).await;
    assert!(closed);
}

/// A kept-alive connection idle for longer than hyper's 30 s header read
/// timeout is still open under the default idle timeout (1 h, Envoy's):
/// clients that reuse pooled connections after a pause were racing a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_outlives_thirty_seconds_idle() {
    let app = Upstream::start("app").await;
    let agent = Agent::start(
        &(frontend(app.addr, "")
            + &service_entry(
                "backend",
                9080,
                "HTTP",
                &[Ep {
                    addr: app.addr,
                    labels: &[],
                }],
            )),
    );
    let mut stream = TcpStream::connect(agent.outbound).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nhost: backend:9080\r\n\r\n";
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut stream, &mut buf).await, 200);
    tokio::time::sleep(std::time::Duration::from_secs(35)).await;
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(
        read_response(&mut stream, &mut buf).await,
        200,
        "the connection was still open after 35 s idle"
    );
}

/// The agent counted exactly one request with `code` and `flags` in
/// `istio_requests_total` (every other label summed).
async fn assert_counted_once(agent: &Agent, code: &str, flags: &str) {
    let scrape = agent.metrics().await;
    let labels = [("response_code", code), ("response_flags", flags)];
    assert_eq!(
        scrape.sum("istio_requests_total", &labels),
        1.0,
        "{code} {flags}: {}",
        scrape.text
    );
}

/// A request body that stalls gets Envoy's answer to a stream idle
/// timeout: 408 `stream timeout`, flagged SI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408() {
    let app = Upstream::start("app").await;
    let agent = Agent::start(&with_timeouts(app.addr));
    let mut stream = TcpStream::connect(agent.outbound).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nhost: backend:9080\r\ncontent-length: 100\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let (reply, closed) = read_until_closed(&mut stream).await;
    assert!(closed, "{reply}");
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.ends_with("stream timeout"), "{reply}");
    assert_counted_once(&agent, "408", "SI").await;
}

/// gRPC calls that keep a stream open with nothing passing one way:
/// `/test.Idle/Chat` reads one message, then streams `count` replies
/// 300 ms apart while the caller's stream stays open and unread, and ends
/// (or, for the text `hush`, falls silent for ever);
/// `/test.Idle/Stall` sends one reply, then nothing, never ending.
#[derive(Clone)]
struct IdleStreams;

type Replies = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Echo, Status>> + Send>>;

impl Methods for IdleStreams {
    const NAME: &'static str = "test.Idle";

    async fn answer(
        self,
        req: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<Echo, Echo>::default());
        match req.uri().path() {
            "/test.Idle/Chat" => grpc.streaming(Chat, req).await,
            "/test.Idle/Stall" => grpc.server_streaming(Stall, req).await,
            _ => Status::unimplemented("no such method").into_http(),
        }
    }
}

struct Chat;

impl tower::Service<tonic::Request<tonic::Streaming<Echo>>> for Chat {
    type Response = tonic::Response<Replies>;
    type Error = Status;
    type Future = tonic::codegen::BoxFuture<Self::Response, Status>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Status>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<tonic::Streaming<Echo>>) -> Self::Future {
        Box::pin(async move {
            let mut inbound = request.into_inner();
            let first = inbound.message().await?.unwrap_or_default();
            // The caller's stream is kept (open, unread) until the last reply.
            let replies = futures_util::stream::unfold((0, inbound), move |(i, inbound)| {
                let text = first.text.clone();
                async move {
                    if i == first.count {
                        if text == "hush" {
                            std::future::pending::<()>().await;
                        }
                        return None;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    let reply = Echo {
                        text: format!("{text} {i}"),
                        count: i,
                        payload: Vec::new(),
                    };
                    Some((Ok(reply), (i + 1, inbound)))
                }
            });
            Ok(tonic::Response::new(Box::pin(replies) as Replies))
        })
    }
}

struct Stall;

impl tonic::server::ServerStreamingService<Echo> for Stall {
    type Response = Echo;
    type ResponseStream = Replies;
    type Future = tonic::codegen::BoxFuture<tonic::Response<Replies>, Status>;

    fn call(&mut self, request: tonic::Request<Echo>) -> Self::Future {
        let first = Ok(request.into_inner());
        let replies = futures_util::stream::iter([first]).chain(futures_util::stream::pending());
        Box::pin(async move { Ok(tonic::Response::new(Box::pin(replies) as Replies)) })
    }
}

/// Opens `/test.Idle/Chat`: one message (`text`, `count` replies wanted),
/// then the caller's side stays open and silent. The replies.
async fn open_chat(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    text: &str,
    count: u32,
) -> tonic::Streaming<Echo> {
    client.ready().await.unwrap();
    let hello = Echo {
        text: text.into(),
        count,
        payload: Vec::new(),
    };
    let outbound = futures_util::stream::iter([hello]).chain(futures_util::stream::pending());
    let path = http::uri::PathAndQuery::from_static("/test.Idle/Chat");
    let call = client.streaming(
        tonic::Request::new(outbound),
        path,
        ProstCodec::<Echo, Echo>::default(),
    );
    call.await.expect("the call is answered").into_inner()
}

/// Reads a call's first reply (`first`), then waits for the agent to cut
/// the call off: an error, not an end, and not before the 1 s stream idle
/// timeout (less a margin for the reply's way from the agent) after that
/// reply.
async fn cut_off_after(mut replies: tonic::Streaming<Echo>, first: &str) {
    let reply = replies.message().await.expect("the first reply");
    assert_eq!(reply.map(|echo| echo.text).as_deref(), Some(first));
    let silent = std::time::Instant::now();
    let cut = tokio::time::timeout(std::time::Duration::from_secs(30), replies.message())
        .await
        .expect("cut off, not left waiting");
    assert!(cut.is_err(), "an error, not an end: {cut:?}");
    assert!(
        silent.elapsed() >= std::time::Duration::from_millis(750),
        "cut after {:?}, before the timeout",
        silent.elapsed()
    );
}

/// An agent whose `backend:9080` is the gRPC server at `app`, under a
/// stream idle timeout of `idle`.
fn grpc_backend(app: SocketAddr, idle: &str) -> String {
    frontend(
        app,
        &format!("  downstream: {{streamIdleTimeout: {idle}}}\n"),
    ) + &service_entry(
        "backend",
        9080,
        "GRPC",
        &[Ep {
            addr: app,
            labels: &[],
        }],
    )
}

/// The stream idle timeout counts what passes either way, as Envoy's
/// does: a caller that opens a bidirectional stream, sends one message
/// and then nothing while the replies stream back is not cut off. (The
/// timer used to be the request body's alone: the call was reset after
/// the timeout, three replies in.) Once both sides are silent, it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_caller_is_not_cut_off_while_replies_stream() {
    let app = grpc::serve(Routed(IdleStreams)).await;
    let agent = Agent::start(&grpc_backend(app, "1s"));
    let mut client = grpc::client(agent.outbound, "http://backend:9080").await;
    let mut replies = open_chat(&mut client, "chat", 10).await;
    let mut received = Vec::new();
    let end = loop {
        match replies.message().await {
            Ok(Some(reply)) => received.push(reply.text),
            Ok(None) => break Ok(()),
            Err(status) => break Err(status),
        }
    };
    assert_eq!(end.map_err(|s| s.to_string()), Ok(()), "after {received:?}");
    assert_eq!(received.len(), 10, "{received:?}");
    assert_eq!(received[9], "chat 9");

    // Once the replies stop too, nothing passes either way: the call is cut
    // off after the timeout, and counted with Envoy's flag, whichever of
    // the two sides' timers noticed first.
    let replies = open_chat(&mut client, "hush", 1).await;
    cut_off_after(replies, "hush 0").await;
    assert_counted_once(&agent, "200", "-").await;
    assert_counted_once(&agent, "200", "SI").await;
}

/// An upstream that falls silent mid-response is cut off after the stream
/// idle timeout, as Envoy resets it: the caller's stream ends in an error
/// (it would have waited for ever), and the request is counted with
/// Envoy's flag, SI, and the status its head had already carried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_is_cut_off_mid_response() {
    let app = grpc::serve(Routed(IdleStreams)).await;
    let agent = Agent::start(&grpc_backend(app, "1s"));
    let mut client = grpc::client(agent.outbound, "http://backend:9080").await;
    let hello = Echo {
        text: "stall".into(),
        count: 1,
        payload: Vec::new(),
    };
    let replies = grpc::open_stream(&mut client, "/test.Idle/Stall", hello)
        .await
        .expect("the call is answered");
    cut_off_after(replies, "stall").await;
    assert_counted_once(&agent, "200", "SI").await;
}

/// A client that stops reading its response is cut off after the stream
/// idle timeout, as Envoy cuts it (its wait for the peer's window): its
/// connection is closed and the request recorded with the status sent and
/// SI. It used to be held for as long as the client liked, the upstream's
/// connection with it, and given the whole body when it read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off() {
    let app = Upstream::start("app").await;
    let agent = Agent::start(&with_timeouts(app.addr));
    // Far more than the sockets between the app and the client hold.
    let total: usize = 64 << 20;
    let mut stream = TcpStream::connect(agent.outbound).await.unwrap();
    let request = format!("GET /stream/{total} HTTP/1.1\r\nhost: backend:9080\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 16 * 1024];
    let first = stream.read(&mut head).await.unwrap();
    let text = String::from_utf8_lossy(&head[..first]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // The client reads nothing for six times the timeout (500 ms) …
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    // … and then finds the connection closed after what was under way.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        stream.read_to_end(&mut rest),
    )
    .await
    .expect("closed, not sending on");
    let received = first + rest.len();
    assert!(received < total, "{read:?}: all {received} bytes sent");
    assert_counted_once(&agent, "200", "SI").await;
}

/// A WebSocket after its 101 is still the request's stream, as Envoy's
/// `stream_idle_timeout` counts it: messages going back and forth keep it
/// open well past the timeout, and once both sides fall silent the agent
/// closes it, recorded SI. (The splice had no timer: a WebSocket whose
/// peers had gone quiet held its two connections for as long as neither
/// closed them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_is_closed_at_the_stream_idle_timeout() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let app = Upstream::start("ws").await;
    let idle = std::time::Duration::from_secs(2);
    let yaml = frontend(
        closed_port().await,
        "  downstream: {streamIdleTimeout: 2s}\n",
    ) + &service_entry(
        "backend",
        9080,
        "HTTP",
        &[Ep {
            addr: app.addr,
            labels: &[],
        }],
    );
    let agent = Agent::start(&yaml);
    let stream = TcpStream::connect(agent.outbound).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async("ws://backend:9080/ws", stream)
        .await
        .expect("websocket handshake through the agent");
    assert_eq!(response.status(), 101);
    // A message every 200 ms for over twice the timeout: never idle.
    let talking = std::time::Instant::now();
    let mut sent = 0;
    while talking.elapsed() < 2 * idle + std::time::Duration::from_secs(1) {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let text = format!("message {sent}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = ws.next().await.expect("open").expect("echoed");
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
        sent += 1;
    }
    // Then silence from both: the agent ends the connection.
    let silent = std::time::Instant::now();
    let end = tokio::time::timeout(std::time::Duration::from_secs(60), ws.next())
        .await
        .expect("the silent WebSocket is closed within a minute");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{end:?}"
    );
    assert!(
        silent.elapsed() >= idle - std::time::Duration::from_millis(500),
        "closed {:?} into the silence, before the timeout",
        silent.elapsed()
    );
    // Recorded as Envoy records the cut, once it is over.
    assert_counted_once(&agent, "101", "SI").await;
}

/// An upload the upstream stops reading is ended by the stream idle
/// timeout, as Envoy ends it: the agent cannot send the body on, so it
/// reads none of it either, and nothing passes. Envoy's answer, 408 SI. It
/// used to wait for as long as the upstream did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_upstream_stops_reading_gets_408() {
    let deaf = upstream::deaf().await;
    let yaml = frontend(deaf, "  downstream: {streamIdleTimeout: 500ms}\n")
        + &service_entry(
            "backend",
            9080,
            "HTTP",
            &[Ep {
                addr: deaf,
                labels: &[],
            }],
        );
    let agent = Agent::start(&yaml);
    // Far more than the sockets between the client and the upstream hold.
    let total: usize = 64 << 20;
    let stream = TcpStream::connect(agent.outbound).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head =
        format!("POST /upload HTTP/1.1\r\nhost: backend:9080\r\ncontent-length: {total}\r\n\r\n");
    tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..total / chunk.len() {
            writer.write_all(&chunk).await?;
        }
        std::io::Result::Ok(())
    });
    // The answer, or a reset in its place: closed with the client's bytes
    // unread, the agent's socket may reset the connection before the
    // client reads it. The record says what the agent did.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        reader.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the connection ended");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert_counted_once(&agent, "408", "SI").await;
}

/// The timeouts have bounds, and an error names the field.
#[test]
fn timeouts_past_their_bound_are_refused() {
    let yaml = frontend(
        "127.0.0.1:9".parse().unwrap(),
        "  downstream: {idleTimeout: 25h}\n",
    );
    let (ok, out) = common::agent::validate(&yaml);
    assert!(!ok, "{out}");
    assert!(out.contains("spec.downstream.idleTimeout"), "{out}");
    // Under 1ms (but not 0s, which turns it off) is refused too: Envoy
    // counts milliseconds, so it would be off unasked. Each field is named.
    let yaml = frontend(
        "127.0.0.1:9".parse().unwrap(),
        "  downstream: {idleTimeout: 1ns, streamIdleTimeout: 0.1ms}\n",
    );
    let (ok, out) = common::agent::validate(&yaml);
    assert!(!ok, "{out}");
    for field in [
        "spec.downstream.idleTimeout",
        "spec.downstream.streamIdleTimeout",
    ] {
        assert!(out.contains(field), "{field}: {out}");
    }
    assert!(out.contains("shorter than the minimum, 1ms"), "{out}");
    let yaml = frontend(
        "127.0.0.1:9".parse().unwrap(),
        "  downstream: {idleTimeout: 0s, streamIdleTimeout: 0s}\n",
    );
    let (ok, out) = common::agent::validate(&yaml);
    assert!(ok, "0s turns them off: {out}");
    let yaml = frontend(
        "127.0.0.1:9".parse().unwrap(),
        "    maxSeriesPerMetric: 0\n",
    );
    let (ok, out) = common::agent::validate(&yaml);
    assert!(!ok, "{out}");
    assert!(out.contains("spec.telemetry.maxSeriesPerMetric"), "{out}");
}

/// CONNECT is refused both ways, as Envoy refuses it where no route has a
/// `connect_matcher`: 404, and the HTTP/1 connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_both_ways() {
    let app = Upstream::start("app").await;
    let agent = Agent::start(&with_timeouts(app.addr));
    for (listener, target) in [
        (agent.outbound, "backend:9080"),
        (agent.outbound, "example.com:443"),
        (agent.inbound, "frontend:80"),
    ] {
        let mut stream = TcpStream::connect(listener).await.unwrap();
        let request = format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let (reply, closed) = read_until_closed(&mut stream).await;
        assert!(reply.starts_with("HTTP/1.1 404"), "{target}: {reply}");
        assert!(
            reply.to_ascii_lowercase().contains("connection: close"),
            "{reply}"
        );
        assert!(closed);
    }
    assert_eq!(app.count(), 0, "nothing reached the app");
}

/// A Host that is no URI authority is answered 400, as Envoy answers it,
/// on both sides, and never reaches the app (a new user's trial: `Host:
/// evil.com/x` was routed, and written into a gateway redirect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_is_no_authority_gets_400() {
    let app = Upstream::start("app").await;
    let agent = Agent::start(&with_timeouts(app.addr));
    for listener in [agent.inbound, agent.outbound] {
        for host in ["evil.com/x", "a b", "a\\b", "frontend?x"] {
            let mut stream = TcpStream::connect(listener).await.unwrap();
            let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            let status = read_response(&mut stream, &mut buf).await;
            assert_eq!(status, 400, "{host:?} on {listener}");
        }
    }
    assert_eq!(app.count(), 0, "nothing reached the app");
}

/// An upstream answer framed both ways (`Transfer-Encoding: chunked` and a
/// `Content-Length`) reaches the client whole: the transfer coding
/// overrides the length, and the length is not forwarded (RFC 9112 §6.3).
/// A new user's trial: the client got `content-length: 5` and the first
/// five bytes of "hello world".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_framed_both_ways_arrives_whole() {
    let app = canned_server(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let agent = Agent::start(&with_timeouts(app));
    let request = "GET / HTTP/1.1\r\nhost: frontend\r\nconnection: close\r\n\r\n";
    let reply = raw_exchange(agent.inbound, request).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        !reply.to_ascii_lowercase().contains("content-length: 5"),
        "{reply}"
    );
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    assert!(
        body.contains("hello world") || body.contains("hello\r\n6\r\n world"),
        "the whole body: {reply:?}"
    );
}

/// Waits until `count` has moved and then stops (four readings 200 ms
/// apart alike, at most 30 s): the stalled streams have taken what the
/// windows let them. Read early on a loaded machine, the test only asks
/// less of the agent.
async fn settled(count: &AtomicU64) {
    let mut last = count.load(Ordering::Relaxed);
    let mut alike = 0;
    for _ in 0..150 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = count.load(Ordering::Relaxed);
        alike = if now == last { alike + 1 } else { 0 };
        if alike == 3 && now > 0 {
            return;
        }
        last = now;
    }
    panic!("not settled after 30 s (last count {last}: 0 never moved)");
}

/// The echo service, with `/test.Echo/Pour` added: replies of 16 KiB for
/// as long as the caller takes them, each counted in the shared count.
#[derive(Clone)]
struct Flood(Arc<AtomicU64>);

impl Methods for Flood {
    const NAME: &'static str = "test.Echo";

    async fn answer(
        self,
        req: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        if req.uri().path() != "/test.Echo/Pour" {
            return grpc::EchoServer.answer(req).await;
        }
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<Echo, Echo>::default());
        grpc.server_streaming(Pour(self.0), req).await
    }
}

struct Pour(Arc<AtomicU64>);

impl tonic::server::ServerStreamingService<Echo> for Pour {
    type Response = Echo;
    type ResponseStream = Replies;
    type Future = tonic::codegen::BoxFuture<tonic::Response<Replies>, Status>;

    fn call(&mut self, _: tonic::Request<Echo>) -> Self::Future {
        let poured = self.0.clone();
        let replies = futures_util::stream::repeat_with(move || {
            poured.fetch_add(1, Ordering::Relaxed);
            Ok(Echo {
                text: "pour".into(),
                count: 0,
                payload: vec![0; 16 << 10],
            })
        });
        Box::pin(async move { Ok(tonic::Response::new(Box::pin(replies) as Replies)) })
    }
}

/// Callers that stop reading do not starve the other calls to the same
/// upstream. The agent's requests to an HTTP/2 upstream share one
/// connection (per worker), whose window hyper gives back only as a
/// response is read. The stream window was as large as the connection's,
/// so a stalled caller's response could hold it all: every other call to
/// that upstream got nothing until the stream idle timeout (5 min). Now a
/// stream holds at most its own window of a far larger connection window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_stop_reading_do_not_starve_a_shared_upstream_connection() {
    let poured = Arc::new(AtomicU64::new(0));
    let app = grpc::serve(Routed(Flood(poured.clone()))).await;
    let agent = Agent::start(&grpc_backend(app, "5m"));
    // Each on its own connection: the kernel spreads them over the
    // agent's two workers, each with its own upstream connection.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut client = grpc::client(agent.outbound, "http://backend:9080").await;
        let replies = grpc::open_stream(&mut client, "/test.Echo/Pour", Echo::default())
            .await
            .expect("the call is answered");
        stalled.push((client, replies));
    }
    settled(&poured).await;
    for i in 0..4 {
        let mut client = grpc::client(agent.outbound, "http://backend:9080").await;
        let hello = Echo {
            text: format!("fresh {i}"),
            count: 0,
            payload: vec![1; 64 << 10],
        };
        let reply = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            grpc::unary(&mut client, hello),
        )
        .await
        .expect("answered while the stalled calls wait")
        .expect("answered with OK");
        assert_eq!(reply.text, format!("fresh {i}"));
    }
    // The stalled calls are still open: they were waiting, not ended.
    for (_, replies) in &mut stalled {
        let next = futures_util::FutureExt::now_or_never(replies.message());
        assert!(
            !matches!(next, Some(Ok(None) | Err(_))),
            "a stalled call ended: {next:?}"
        );
    }
    drop(stalled);
}

/// Uploads an upstream stops reading do not starve the other requests of
/// the same downstream HTTP/2 connection (the mesh's connections between
/// agents carry many clients' calls). The agent reads a request body only
/// as it can pass it on, and the stream window was as large as the
/// connection's: four stalled uploads held it all, and a fresh request's
/// body could not be sent. Now each holds at most its own window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_an_upstream_stops_reading_do_not_starve_their_connection() {
    let deaf = upstream::deaf().await;
    let app = Upstream::start("app").await;
    let ep = |addr| Ep { addr, labels: &[] };
    let yaml = frontend(app.addr, "")
        + &service_entry("deaf", 9080, "HTTP", &[ep(deaf)])
        + &service_entry("backend", 9080, "HTTP", &[ep(app.addr)]);
    let agent = Agent::start(&yaml);

    // One HTTP/2 connection carries every request.
    let sender = h2_connection(agent.outbound).await;
    let sent = Arc::new(AtomicU64::new(0));
    let mut uploads = Vec::new();
    for _ in 0..4 {
        let req = endless_upload("http://deaf:9080/upload", sent.clone());
        let mut sender = sender.clone();
        uploads.push(tokio::spawn(async move { sender.send_request(req).await }));
    }
    settled(&sent).await;

    let mut sender = sender.clone();
    let body = http_body_util::Full::new(bytes::Bytes::from(vec![b'y'; 64 << 10]));
    let req = http::Request::post("http://backend:9080/fresh")
        .body(body.boxed_unsync())
        .unwrap();
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(10), sender.send_request(req))
            .await
            .expect("answered while the stalled uploads wait")
            .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(report["body_len"], 64 << 10, "{report}");
    for upload in uploads {
        assert!(!upload.is_finished(), "the stalled uploads still wait");
        upload.abort();
    }
}

/// A request body the tests' HTTP/2 clients send.
type UploadBody =
    http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, std::convert::Infallible>;

/// One HTTP/2 connection to `addr` (prior knowledge), driven in the
/// background.
async fn h2_connection(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<UploadBody> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// A POST to `uri` whose body never ends: 16 KiB chunks for as long as
/// they are taken, each counted in `sent`.
fn endless_upload(uri: &str, sent: Arc<AtomicU64>) -> http::Request<UploadBody> {
    static CHUNK: [u8; 16 << 10] = [b'x'; 16 << 10];
    let chunks = futures_util::stream::repeat_with(move || {
        sent.fetch_add(1, Ordering::Relaxed);
        Ok(hyper::body::Frame::data(bytes::Bytes::from_static(&CHUNK)))
    });
    http::Request::post(uri)
        .body(http_body_util::StreamBody::new(chunks).boxed_unsync())
        .unwrap()
}

/// Waits (up to 30 s) for the sum of `metric` with `labels` to reach
/// `want`; the value last read.
async fn metric_reaches(agent: &Agent, metric: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let mut value = 0.0;
    for _ in 0..300 {
        value = agent.metrics().await.sum(metric, labels);
        if value >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    value
}

/// Reads `replies` until the call ends; how it ended (10 s at most).
async fn drained(replies: &mut tonic::Streaming<Echo>) -> Result<usize, Status> {
    let drain = async {
        let mut read = 0;
        while replies.message().await?.is_some() {
            read += 1;
        }
        Ok(read)
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), drain)
        .await
        .expect("the call ended within 10 s")
}

/// A client that stops reading HTTP/2 responses makes the agent hold each
/// stream's window of the upstream's bytes. Past `maxStalledStreams`
/// stalled streams (2 per worker here) the agent stops reading those that
/// have waited longest, as Envoy's overload manager resets the streams that
/// hold the most: the upstream stream is reset, the client gets what was
/// already on its way and then a reset, and the call is recorded with
/// Envoy's `OM` flag. The streams within the limit go on. (Before, every stalled
/// stream held its window for as long as its client waited: 1024 per
/// connection, no limit across connections.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_downloads_past_the_limit_are_cut_longest_waiting_first() {
    let poured = Arc::new(AtomicU64::new(0));
    let app = grpc::serve(Routed(Flood(poured.clone()))).await;
    let yaml = frontend(app, "  overload: {maxStalledStreams: 4}\n")
        + &service_entry(
            "backend",
            9080,
            "GRPC",
            &[Ep {
                addr: app,
                labels: &[],
            }],
        );
    let agent = Agent::start(&yaml);
    // One connection, so one worker, whose share of the limit is 2; each
    // stream stalls before the next opens, so their waits are in order.
    let mut client = grpc::client(agent.outbound, "http://backend:9080").await;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let replies = grpc::open_stream(&mut client, "/test.Echo/Pour", Echo::default())
            .await
            .expect("the call is answered");
        settled(&poured).await;
        stalled.push(replies);
    }
    let cut = |reason| [("reason", reason)];
    let cuts = "tracemesh_agent_stalled_streams_cut_total";
    assert_eq!(
        metric_reaches(&agent, cuts, &cut("overload"), 2.0).await,
        2.0
    );

    let mut kept = stalled.split_off(2);
    for replies in &mut stalled {
        let ended = drained(replies).await;
        assert!(ended.is_err(), "a cut call ended cleanly: {ended:?}");
    }
    for replies in &mut kept {
        for _ in 0..300 {
            let message =
                tokio::time::timeout(std::time::Duration::from_secs(10), replies.message())
                    .await
                    .expect("a call within the limit goes on");
            assert!(matches!(message, Ok(Some(_))), "{message:?}");
        }
    }
    let om = [("response_flags", "OM"), ("reporter", "source")];
    assert_eq!(
        metric_reaches(&agent, "istio_requests_total", &om, 2.0).await,
        2.0
    );
    assert_eq!(agent.metrics().await.sum(cuts, &cut("overload")), 2.0);
}

/// A client that grants an HTTP/2 stream no more window is idle as Envoy's
/// `stream_idle_timeout` counts it: once nothing has passed either way for
/// the timeout, the agent stops reading the stream (its upstream stream is
/// reset) and records the call `SI` — whether the client reads again (and
/// gets the reset) or gives the call up unread. (Before, hyper never asked
/// the response body for a frame, so its timer never ran: the stream held
/// its window for as long as the client kept the connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_grants_no_window_is_cut_at_the_stream_idle_timeout() {
    let poured = Arc::new(AtomicU64::new(0));
    let app = grpc::serve(Routed(Flood(poured.clone()))).await;
    let agent = Agent::start(&grpc_backend(app, "2s"));
    let mut client = grpc::client(agent.outbound, "http://backend:9080").await;
    let mut read_again = grpc::open_stream(&mut client, "/test.Echo/Pour", Echo::default())
        .await
        .expect("the call is answered");
    let given_up = grpc::open_stream(&mut client, "/test.Echo/Pour", Echo::default())
        .await
        .expect("the call is answered");
    let cuts = "tracemesh_agent_stalled_streams_cut_total";
    let idle = [("reason", "stream_idle_timeout")];
    assert_eq!(metric_reaches(&agent, cuts, &idle, 2.0).await, 2.0);
    let ended = drained(&mut read_again).await;
    assert!(ended.is_err(), "the cut call ended cleanly: {ended:?}");
    // Dropped unread: the client resets its stream.
    drop(given_up);
    let si = [("response_flags", "SI"), ("reporter", "source")];
    assert_eq!(
        metric_reaches(&agent, "istio_requests_total", &si, 2.0).await,
        2.0
    );
    let dc = [("response_flags", "DC"), ("reporter", "source")];
    assert_eq!(agent.metrics().await.sum("istio_requests_total", &dc), 0.0);
}

/// The same bound on uploads: an HTTP/2 client's bodies that an upstream
/// stops reading each hold their stream's window. Past the limit (1 per
/// worker here) the one that has waited longest is answered 503 with the `OM`
/// flag, as Envoy's overload manager answers, and the newer one waits on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_past_the_limit_are_answered_503_om() {
    let deaf = upstream::deaf().await;
    let yaml = frontend(closed_port().await, "  overload: {maxStalledStreams: 2}\n")
        + &service_entry(
            "deaf",
            9080,
            "HTTP",
            &[Ep {
                addr: deaf,
                labels: &[],
            }],
        );
    let agent = Agent::start(&yaml);
    let sender = h2_connection(agent.outbound).await;
    let upload = |sent: Arc<AtomicU64>| {
        let req = endless_upload("http://deaf:9080/upload", sent);
        let mut sender = sender.clone();
        tokio::spawn(async move { sender.send_request(req).await })
    };
    let (first_sent, second_sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let first = upload(first_sent.clone());
    settled(&first_sent).await;
    let second = upload(second_sent.clone());
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), first)
        .await
        .expect("the upload that waited longest is answered")
        .unwrap()
        .expect("a response");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["x-tracemesh-response-flags"], "OM");
    settled(&second_sent).await;
    assert!(!second.is_finished(), "the newer upload waits on");
    let cuts = "tracemesh_agent_stalled_streams_cut_total";
    assert_eq!(
        agent.metrics().await.sum(cuts, &[("reason", "overload")]),
        1.0
    );
    second.abort();
}

/// An HTTP/2 upstream that takes a call and then neither reads its body
/// nor answers.
#[derive(Clone)]
struct Unread;

impl Methods for Unread {
    const NAME: &'static str = "test.Echo";

    async fn answer(
        self,
        req: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        let _held = req;
        std::future::pending().await
    }
}

/// An upload an HTTP/2 upstream stops reading is ended at the stream idle
/// timeout like one to an HTTP/1.1 upstream: 408 `SI`. The agent stops
/// reading the client's body and gives up waiting for the answer; before,
/// hyper sent the body only as the upstream took it, so the agent never
/// asked the body for a frame, its timer never ran, and the client waited
/// for as long as the upstream did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_an_http2_upstream_stops_reading_gets_408() {
    let app = grpc::serve(Routed(Unread)).await;
    let agent = Agent::start(&grpc_backend(app, "2s"));
    let mut sender = h2_connection(agent.outbound).await;
    let req = endless_upload("http://backend:9080/test.Echo/Upload", Arc::default());
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(30), sender.send_request(req))
            .await
            .expect("answered at the stream idle timeout")
            .expect("a response");
    assert_eq!(response.status(), 408);
    assert_eq!(response.headers()["x-tracemesh-response-flags"], "SI");
    let cuts = "tracemesh_agent_stalled_streams_cut_total";
    let idle = [("reason", "stream_idle_timeout")];
    assert_eq!(agent.metrics().await.sum(cuts, &idle), 1.0);
}
