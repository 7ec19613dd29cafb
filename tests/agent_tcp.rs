//! TCP proxying end to end: AuthorizationPolicy on inbound TCP connections
//! (Istio's network RBAC semantics: DENY by principal and ipBlocks, an ALLOW
//! policy of HTTP-only fields allowing no connection) and the TCP idle
//! timeout (DestinationRule `connectionPool.tcp.idleTimeout`, the agent's
//! `spec.downstream.idleTimeout` inbound). Real agents, real sockets, a real
//! CA for the mTLS identities.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use common::agent::Agent;
use common::mesh::{AgentDoc, Ep, NO_COLLECTOR, service_entry};
use common::otlp::Receiver;
use common::pki::Ca;
use common::upstream::closed_port;

const SIDECAR: [(&str, &str); 2] = [("app", "db"), ("security.istio.io/tlsMode", "istio")];

/// A TCP echo application that counts the connections that reached it.
struct CountingEcho {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl CountingEcho {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Self { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// An agent in front of a TCP application, with `extra` under `spec:` and
/// `docs` after it.
fn tcp_agent(service: &str, app: SocketAddr, outbound_tcp: &str, extra: &str, docs: &str) -> Agent {
    let doc = AgentDoc {
        name: &format!("{service}-v1"),
        service,
        app: service,
        version: "v1",
        app_addr: app,
        otlp: NO_COLLECTOR,
        app_protocol: "TCP",
        outbound_tcp,
        extra,
    };
    Agent::start(&(doc.yaml() + docs))
}

/// A client workload of `service_account` whose one outbound TCP listener
/// goes to `db:5432` at `target` (mTLS: the endpoint runs a sidecar).
async fn client(ca: &Ca, service_account: &str, target: SocketAddr, docs: &str) -> Agent {
    let entry = service_entry(
        "db",
        5432,
        "TCP",
        &[Ep {
            addr: target,
            labels: &SIDECAR,
        }],
    );
    tcp_agent(
        service_account,
        closed_port().await,
        "[{listen: \"127.0.0.1:0\", host: db, port: 5432}]",
        &ca.identity_yaml(service_account, "1h"),
        &(entry + docs),
    )
}

/// Sends `ping` on a fresh connection to `addr` (from `source` when given)
/// and reads until the proxy closes or `ping` comes back: the bytes read.
async fn ping(addr: SocketAddr, source: Option<&str>) -> Vec<u8> {
    let mut conn = match source {
        Some(ip) => {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            socket.connect(addr).await.unwrap()
        }
        None => TcpStream::connect(addr).await.unwrap(),
    };
    // A refused connection may already be closed: the write can fail.
    let _ = conn.write_all(b"ping").await;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < 4 {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the connection to {addr} (from {source:?}) neither answered nor closed; read {got:?}"
            ),
        }
    }
    got
}

/// A DestinationRule for `db` whose `connectionPool.tcp` is `settings`.
fn db_tcp_pool(settings: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: db, namespace: default}}\nspec:\n  host: db\n  trafficPolicy: {{connectionPool: {{tcp: {{{settings}}}}}}}\n"
    )
}

/// Waits until `agent` counts `n` closed TCP connections with `labels`.
async fn closed(agent: &Agent, n: f64, labels: &[(&str, &str)]) -> common::metrics::Scrape {
    for _ in 0..400 {
        let scrape = agent.metrics().await;
        if scrape.sum("istio_tcp_connections_closed_total", labels) >= n {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{n} TCP connections with {labels:?} were never counted as closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deny_policies_close_inbound_tcp_before_the_app_sees_a_byte() {
    let ca = Ca::start();
    let app = CountingEcho::start().await;
    let spans = Receiver::start().await;
    let policies = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-intruder, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/intruder]}}]
    to: [{operation: {paths: [/admin]}}]
  - from: [{source: {ipBlocks: [127.0.0.9/32]}}]
";
    let doc = AgentDoc {
        name: "db-v1",
        service: "db",
        app: "db",
        version: "v1",
        app_addr: app.addr,
        otlp: &spans.endpoint(),
        app_protocol: "TCP",
        outbound_tcp: "[]",
        extra: &ca.identity_yaml("db", "1h"),
    };
    let db = Agent::start(&(doc.yaml() + policies));
    let frontend = client(&ca, "frontend", db.inbound, "").await;
    let intruder = client(&ca, "intruder", db.inbound, "").await;

    // The DENY rule's path is HTTP-only: on TCP it is left out (Istio's
    // builder widens DENY rules), so the principal alone refuses.
    assert_eq!(ping(intruder.outbound_tcp[0], None).await, b"");
    // ipBlocks match the TCP peer: plaintext from 127.0.0.9 is refused.
    assert_eq!(ping(db.inbound, Some("127.0.0.9")).await, b"");
    let denied = [("reporter", "destination"), ("response_flags", "RBAC")];
    let scrape = closed(&db, 2.0, &denied).await;
    assert_eq!(
        scrape.sum("istio_tcp_connections_opened_total", &denied),
        2.0,
        "{}",
        scrape.text
    );
    assert_eq!(
        app.accepted(),
        0,
        "a refused connection never reaches the app"
    );

    // Allowed: another principal, and plaintext from another address.
    assert_eq!(ping(frontend.outbound_tcp[0], None).await, b"ping");
    assert_eq!(ping(db.inbound, Some("127.0.0.1")).await, b"ping");
    assert_eq!(app.accepted(), 2);
    let allowed = [("reporter", "destination"), ("response_flags", "-")];
    let scrape = closed(&db, 2.0, &allowed).await;
    assert_eq!(
        scrape.sum(
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/default/sa/frontend"
                ),
            ]
        ),
        1.0,
        "{}",
        scrape.text
    );
    // No metadata comes with TCP: the caller's namespace is its
    // certificate's, as Istio's populatePeerInfo reads it from the SAN.
    assert_eq!(
        scrape.sum(
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("source_workload_namespace", "default"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/default/sa/frontend"
                ),
            ]
        ),
        1.0,
        "{}",
        scrape.text
    );

    // Each refusal is a SERVER span naming the rule that refused.
    let refused = |s: &common::otlp::ReceivedSpan| {
        s.attr("tracemesh.response_flags").as_deref() == Some("RBAC")
    };
    let received = spans
        .wait_for("two refused connection spans", |spans| {
            spans.iter().filter(|s| refused(s)).count() >= 2
        })
        .await;
    let mut details: Vec<String> = received
        .iter()
        .filter(|s| refused(s))
        .map(|s| s.attr("tracemesh.connection_termination_details").unwrap())
        .collect();
    details.sort();
    let policies: Vec<String> = received
        .iter()
        .filter(|s| refused(s))
        .map(|s| s.attr("tracemesh.authz.policy").unwrap())
        .collect();
    assert!(
        policies
            .iter()
            .all(|p| p.starts_with("default/no-intruder[")),
        "{policies:?}"
    );
    assert_eq!(
        details,
        [
            "rbac_access_denied_matched_policy[ns[default]-policy[no-intruder]-rule[0]]",
            "rbac_access_denied_matched_policy[ns[default]-policy[no-intruder]-rule[1]]",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allow_policies_of_http_fields_allow_no_tcp_connection() {
    let ca = Ca::start();
    let app = CountingEcho::start().await;
    // The oracle is Istio's authz builder: on a TCP filter chain an ALLOW
    // rule with an HTTP-only field (here methods) is skipped, and an ALLOW
    // filter without policies denies every connection.
    let http_only = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers, namespace: default}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/frontend]}}]
    to: [{operation: {methods: [GET]}}]
";
    let db = tcp_agent(
        "db",
        app.addr,
        "[]",
        &ca.identity_yaml("db", "1h"),
        http_only,
    );
    let frontend = client(&ca, "frontend", db.inbound, "").await;
    assert_eq!(ping(frontend.outbound_tcp[0], None).await, b"");
    assert_eq!(ping(db.inbound, None).await, b"");
    closed(
        &db,
        2.0,
        &[("reporter", "destination"), ("response_flags", "RBAC")],
    )
    .await;
    assert_eq!(app.accepted(), 0);

    // The same principal with an L4 rule (ports) is let in.
    let by_port = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers, namespace: default}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/frontend]}}]
    to: [{operation: {methods: [GET]}}]
  - from: [{source: {principals: [cluster.local/ns/default/sa/frontend]}}]
    to: [{operation: {ports: [\"PORT\"]}}]
";
    let by_port = by_port.replace("PORT", &app.addr.port().to_string());
    let db = tcp_agent(
        "db",
        app.addr,
        "[]",
        &ca.identity_yaml("db", "1h"),
        &by_port,
    );
    let frontend = client(&ca, "frontend", db.inbound, "").await;
    assert_eq!(ping(frontend.outbound_tcp[0], None).await, b"ping");
    assert_eq!(app.accepted(), 1);
    // Plaintext has no principal: still refused.
    assert_eq!(ping(db.inbound, None).await, b"");
    assert_eq!(app.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_tcp_connections_close_and_busy_ones_stay() {
    let ca = Ca::start();
    let app = CountingEcho::start().await;
    // Outbound: the DestinationRule's connectionPool.tcp.idleTimeout (the
    // server side keeps its 1h default).
    let db = tcp_agent("db", app.addr, "[]", &ca.identity_yaml("db", "1h"), "");
    let rule = db_tcp_pool("idleTimeout: 2s");
    let frontend = client(&ca, "frontend", db.inbound, &rule).await;
    // Inbound: the agent-wide idle timeout (Istio's IDLE_TIMEOUT).
    let quick = tcp_agent(
        "quick",
        app.addr,
        "[]",
        "  downstream: {idleTimeout: 2s}\n",
        "",
    );
    for (side, addr) in [
        ("outbound", frontend.outbound_tcp[0]),
        ("inbound", quick.inbound),
    ] {
        idle_one_closes_busy_one_stays(side, addr, Duration::from_secs(2)).await;
    }
}

/// Opens two connections to `addr`; one goes quiet, the other passes a
/// byte every 250 ms for more than twice `timeout`. The quiet one must be
/// closed, not before `timeout`; the busy one must still echo.
async fn idle_one_closes_busy_one_stays(side: &str, addr: SocketAddr, timeout: Duration) {
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut busy = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    for conn in [&mut idle, &mut busy] {
        conn.write_all(b"hi").await.unwrap();
        conn.read_exact(&mut buf[..2]).await.unwrap();
    }
    let quiet_since = Instant::now();
    let closed_at = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(30), idle.read(&mut buf)).await;
        (read.map(|r| r.map_err(|e| e.kind())), Instant::now())
    });
    let busy_for = timeout * 2 + Duration::from_secs(1);
    while quiet_since.elapsed() < busy_for {
        tokio::time::sleep(Duration::from_millis(250)).await;
        busy.write_all(b"x").await.unwrap();
        busy.read_exact(&mut buf[..1]).await.unwrap();
    }
    let (read, at) = closed_at.await.unwrap();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "{side}: the idle connection stayed open: {read:?}"
    );
    assert!(
        at - quiet_since >= timeout - Duration::from_millis(100),
        "{side}: closed after {:?}, before its idle timeout",
        at - quiet_since
    );
    busy.write_all(b"y").await.unwrap();
    busy.read_exact(&mut buf[..1]).await.unwrap();
    assert_eq!(&buf[..1], b"y", "{side}: the busy connection still echoes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policies_selecting_the_gateway_guard_its_tcp_servers() {
    let app = CountingEcho::start().await;
    let mut yaml = common::gateway::bootstrap(&[82], NO_COLLECTOR, "");
    yaml += &format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: default}}
spec:
  hosts: [db.default.svc.cluster.local]
  ports: [{{number: 5432, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: 82, name: tcp, protocol: TCP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [edge]
  tcp: [{{route: [{{destination: {{host: db.default.svc.cluster.local, port: {{number: 5432}}}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules:
  - from: [{{source: {{ipBlocks: [127.0.0.9/32]}}}}]
    to: [{{operation: {{ports: ["82"]}}}}]
"#,
        port = app.addr.port()
    );
    let gateway = common::gateway::Gateway::start(&yaml);
    assert_eq!(ping(gateway.port(82), Some("127.0.0.9")).await, b"");
    assert_eq!(app.accepted(), 0);
    assert_eq!(ping(gateway.port(82), Some("127.0.0.1")).await, b"ping");
    assert_eq!(app.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn virtual_service_tcp_rules_shift_connections_between_subsets() {
    // Istio's TCP traffic shifting: db's v1 and v2 are two echo servers,
    // and the frontend's outbound TCP listener to db:5432 is routed by the
    // VirtualService's tcp[] rule, 25/75.
    let v1 = CountingEcho::start().await;
    let v2 = CountingEcho::start().await;
    let version = |v| [("app", "db"), ("version", v)];
    let (l1, l2) = (version("v1"), version("v2"));
    let entry = service_entry(
        "db",
        5432,
        "TCP",
        &[
            Ep {
                addr: v1.addr,
                labels: &l1,
            },
            Ep {
                addr: v2.addr,
                labels: &l2,
            },
        ],
    );
    let routing = "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: default}
spec:
  host: db
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [db]
  tcp:
  - match: [{sourceLabels: {app: reviews}}]
    route: [{destination: {host: db, subset: v1}}]
  - match: [{port: 5432}]
    route:
    - {destination: {host: db, subset: v1}, weight: 25}
    - {destination: {host: db, subset: v2}, weight: 75}
";
    let frontend = Agent::start(&(frontend_config(&entry) + routing));
    // Enforced, so not warned as accepted-but-ignored.
    let (valid, said) = common::agent::validate(&(frontend_config(&entry) + routing));
    assert!(valid && !said.contains("spec.tcp"), "{said}");
    const CONNECTIONS: usize = 200;
    for _ in 0..CONNECTIONS {
        assert_eq!(ping(frontend.outbound_tcp[0], None).await, b"ping");
    }
    let (to_v1, to_v2) = (v1.accepted(), v2.accepted());
    assert_eq!(to_v1 + to_v2, CONNECTIONS);
    // 25% of 200 is 50, with a standard deviation of about 6: the bounds
    // are five deviations wide, so only a broken split falls outside.
    assert!(
        (20..=80).contains(&to_v1),
        "v1 took {to_v1} of {CONNECTIONS} connections, v2 {to_v2}; the weights say 25/75"
    );
    // The metrics name the subset each connection went to.
    let scrape = closed(&frontend, CONNECTIONS as f64, &[("reporter", "source")]).await;
    let opened = |v: &str| {
        scrape.sum(
            "istio_tcp_connections_opened_total",
            &[
                ("destination_version", v),
                ("destination_service", "db.default.svc.cluster.local"),
            ],
        )
    };
    assert_eq!((opened("v1"), opened("v2")), (to_v1 as f64, to_v2 as f64));
    // A live reload routes every connection to a subset no DestinationRule
    // defines: closed before a byte reaches either version, and counted
    // with Envoy's NC (no cluster found) under the destination's host.
    let nowhere = routing.replace("weight: 25", "weight: 0").replace(
        "{destination: {host: db, subset: v2}, weight: 75}",
        "{destination: {host: db, subset: v9}, weight: 75}",
    );
    let text = frontend_config(&entry) + &nowhere;
    frontend.rewrite_config(&text);
    frontend.wait_for_config_version(2.0).await;
    assert_eq!(ping(frontend.outbound_tcp[0], None).await, b"");
    assert_eq!(v1.accepted() + v2.accepted(), CONNECTIONS);
    let nc = [
        ("response_flags", "NC"),
        ("destination_service", "db.default.svc.cluster.local"),
    ];
    closed(&frontend, 1.0, &nc).await;
}

/// The frontend of the TCP routing test, with the ServiceEntry `entry`:
/// one outbound TCP listener to db:5432.
fn frontend_config(entry: &str) -> String {
    let doc = AgentDoc {
        name: "frontend-v1",
        service: "frontend",
        app: "frontend",
        version: "v1",
        app_addr: "127.0.0.1:1".parse().unwrap(),
        otlp: NO_COLLECTOR,
        app_protocol: "TCP",
        outbound_tcp: "[{listen: \"127.0.0.1:0\", host: db, port: 5432}]",
        extra: "",
    };
    doc.yaml() + entry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tcp_connection_busy_past_its_max_duration_is_closed_as_dt() {
    // Istio renders connectionPool.tcp.maxConnectionDuration as the
    // tcp_proxy's max_downstream_connection_duration: the connection is
    // closed however busy it is, flagged DT.
    let ca = Ca::start();
    let app = CountingEcho::start().await;
    let db = tcp_agent("db", app.addr, "[]", &ca.identity_yaml("db", "1h"), "");
    let rule = db_tcp_pool("maxConnectionDuration: 2s");
    let frontend = client(&ca, "frontend", db.inbound, &rule).await;
    let began = Instant::now();
    let mut conn = TcpStream::connect(frontend.outbound_tcp[0]).await.unwrap();
    let mut buf = [0u8; 16];
    // A byte every 100 ms until the agent closes it (at most 30 s).
    let lived = loop {
        assert!(began.elapsed() < Duration::from_secs(30), "never closed");
        if conn.write_all(b"x").await.is_err() {
            break began.elapsed();
        }
        match tokio::time::timeout(Duration::from_secs(30), conn.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break began.elapsed(),
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => panic!("neither echoed nor closed"),
        }
    };
    assert!(
        lived >= Duration::from_millis(1900),
        "closed after {lived:?}, before its 2 s"
    );
    let scrape = closed(&frontend, 1.0, &[("response_flags", "DT")]).await;
    // DT is the close's alone, as in Envoy: no opened or byte series of
    // its own; the connection was opened (and its bytes counted) under `-`.
    for family in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
    ] {
        assert!(
            scrape
                .matching(family, &[("response_flags", "DT")])
                .next()
                .is_none(),
            "{family} has a DT series"
        );
        assert!(
            scrape.sum(family, &[("response_flags", "-")]) > 0.0,
            "{family}"
        );
    }
}

/// A reset is passed on as a reset, both ways, as Envoy's tcp_proxy passes
/// it (`detect_and_raise_rst_tcp_connection`, on by default): an
/// application that aborts its connection after sending part of a
/// close-delimited answer leaves its client with an error, not an end of
/// stream that makes the cut-short answer look complete; and a client that
/// aborts leaves the application with one. The agent passed a normal close
/// on, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reset_is_passed_on_as_a_reset_both_ways() {
    // The application: on its first connection, reads a byte, sends 64 KiB
    // and aborts; on its second, reads until the end and says how it ended.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    let (accepted_tx, accepted_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        // Answers only once asked, so that the client's connect has
        // completed before the reset can reach it.
        let mut asked = [0u8; 1];
        first.read_exact(&mut asked).await.unwrap();
        first.write_all(&[7u8; 64 * 1024]).await.unwrap();
        reset(first);
        let (mut second, _) = listener.accept().await.unwrap();
        let _ = accepted_tx.send(());
        let mut buf = [0u8; 4096];
        let ended = loop {
            match second.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(error) => break Err(error.kind()),
            }
        };
        let _ = ended_tx.send(ended);
    });
    let agent = tcp_agent("db", app, "[]", "", "");

    let mut client = TcpStream::connect(agent.inbound).await.unwrap();
    client.write_all(b"?").await.unwrap();
    let mut read = 0;
    let mut buf = [0u8; 4096];
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(20), client.read(&mut buf)).await {
            Ok(Ok(0)) => break Ok(()),
            Ok(Ok(n)) => read += n,
            Ok(Err(error)) => break Err(error.kind()),
            Err(_) => panic!("the client was left waiting after {read} bytes"),
        }
    };
    assert_eq!(
        ended,
        Err(std::io::ErrorKind::ConnectionReset),
        "the application's reset reached the client as {ended:?} after {read} bytes"
    );

    let mut client = TcpStream::connect(agent.inbound).await.unwrap();
    client.write_all(b"part of a request").await.unwrap();
    // Once the agent has its upstream connection.
    tokio::time::timeout(Duration::from_secs(20), accepted_rx)
        .await
        .expect("the agent never connected to the application")
        .unwrap();
    reset(client);
    let ended = tokio::time::timeout(Duration::from_secs(20), ended_rx)
        .await
        .expect("the application was left waiting")
        .unwrap();
    assert_eq!(
        ended,
        Err(std::io::ErrorKind::ConnectionReset),
        "the client's reset reached the application as {ended:?}"
    );
}

/// Closes `stream` with a reset: `SO_LINGER` 0, an abortive close, which
/// does not block the thread as a lingering close would (tokio deprecates
/// `set_linger` for that).
#[allow(deprecated)]
fn reset(stream: TcpStream) {
    stream.set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
}

/// Every TCP connection gets an access-log line at its close, as Envoy's
/// `tcp_proxy` writes one: its bytes each way, the cluster and endpoint,
/// its flags, and for a refused one the RBAC denial as Envoy's
/// `connection_termination_details`; what a dry-run policy would have
/// decided, as for HTTP. No TCP connection was logged, a refused one
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_connections_are_access_logged_refused_ones_included() {
    let app = CountingEcho::start().await;
    let policy = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-nine, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {ipBlocks: [127.0.0.9/32]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: shadow
  namespace: default
  annotations: {\"istio.io/dry-run\": \"true\"}
spec:
  action: DENY
  rules:
  - from: [{source: {ipBlocks: [127.0.0.1/32]}}]
";
    let db = tcp_agent("db", app.addr, "[]", "  accessLog: {enabled: true}", policy);
    assert_eq!(ping(db.inbound, Some("127.0.0.9")).await, b"");
    assert_eq!(ping(db.inbound, Some("127.0.0.1")).await, b"ping");
    let lines = db.wait_stdout_lines(2);
    let entries: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let of = |client: &str| {
        entries
            .iter()
            .find(|e| {
                e["downstream_remote_address"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(&format!("{client}:")))
            })
            .unwrap_or_else(|| panic!("no line for {client}: {lines:?}"))
    };
    let refused = of("127.0.0.9");
    assert_eq!(refused["response_flags"], "RBAC", "{refused}");
    assert_eq!(
        refused["connection_termination_details"],
        "rbac_access_denied_matched_policy[ns[default]-policy[no-nine]-rule[0]]",
        "{refused}"
    );
    assert_eq!(
        refused["authorization_policy"], "default/no-nine[0]",
        "{refused}"
    );
    assert!(refused["upstream_host"].is_null(), "{refused}");
    assert!(refused["upstream_local_address"].is_null(), "{refused}");
    assert!(
        refused["method"].is_null() && refused["protocol"].is_null(),
        "{refused}"
    );
    // A dry-run DENY on the served client: recorded on its line, never
    // enforced; the refused client matched no dry-run policy.
    assert_eq!(refused["authz_dry_run"], "allowed", "{refused}");
    let served = of("127.0.0.1");
    assert_eq!(
        served["authz_dry_run"], "denied by default/shadow[0]",
        "{served}"
    );
    assert_eq!(served["response_flags"], "-", "{served}");
    assert_eq!(served["bytes_received"], 4, "{served}");
    assert_eq!(served["bytes_sent"], 4, "{served}");
    assert_eq!(served["upstream_host"], app.addr.to_string(), "{served}");
    let local: std::net::SocketAddr = served["upstream_local_address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no upstream_local_address: {served}"));
    assert!(local.ip().is_loopback() && local.port() != 0, "{served}");
    assert_eq!(served["response_code"], 0, "{served}");
    assert!(
        served["upstream_cluster"]
            .as_str()
            .is_some_and(|c| c.starts_with("inbound|")),
        "{served}"
    );
}
