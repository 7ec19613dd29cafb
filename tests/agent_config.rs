//! Config errors name file, document and field; `validate` checks without
//! starting; skipped kinds and unenforced fields are warned about; a dead
//! OTLP endpoint never hurts proxying; SIGTERM drains the inbound side while
//! the outbound side serves on.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use common::agent::{Agent, validate, validate_file};
use common::client::{Client, OneConnection};
use common::mesh::{AgentDoc, Ep, NO_COLLECTOR, agent, service_entry};
use common::upstream::{Upstream, closed_port, tcp_echo};

fn bad_weights_vs() -> &'static str {
    r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 0}
    - {destination: {host: reviews, subset: v2}, weight: 0}
"#
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_names_file_document_and_field() {
    let app = closed_port().await;
    let yaml = agent("productpage", app, NO_COLLECTOR)
        + &service_entry(
            "reviews",
            9080,
            "HTTP",
            &[Ep {
                addr: app,
                labels: &[],
            }],
        )
        + bad_weights_vs();
    let error = Agent::try_start(&yaml)
        .err()
        .expect("the agent must refuse the config");
    assert!(
        error.contains("mesh.yaml: document 3 (VirtualService default/reviews"),
        "{error}"
    );
    assert!(
        error.contains("spec.http[0].route: total destination weight = 0: weights are relative"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_field_is_an_error_with_its_path() {
    let app = closed_port().await;
    let yaml = agent("productpage", app, NO_COLLECTOR)
        + "---\napiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: r, namespace: default}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer: {simpel: ROUND_ROBIN}\n";
    let error = Agent::try_start(&yaml).err().expect("refused");
    assert!(
        error.contains("document 2 (DestinationRule default/r"),
        "{error}"
    );
    assert!(
        error.contains("spec.trafficPolicy.loadBalancer.simpel: unknown field `simpel`"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_reports_every_problem_without_starting() {
    let app = closed_port().await;
    let good = agent("productpage", app, NO_COLLECTOR)
        + &service_entry(
            "reviews",
            9080,
            "HTTP",
            &[Ep {
                addr: app,
                labels: &[],
            }],
        )
        + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: reviews-v1}\nspec: {replicas: 1}\n"
        + "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: ingressgateway}\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*\"]}]\n"
        + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - retries: {attempts: 1, retryRemoteLocalities: true}\n    route: [{destination: {host: reviews}}]\n";
    let (ok, out) = validate(&good);
    assert!(ok, "{out}");
    assert!(
        out.contains("apps/v1 Deployment is not used by the agent; skipped"),
        "{out}"
    );
    assert!(
        out.contains("Gateway gw")
            && out.contains("configures ingress gateways (`tracemesh gateway`); sidecars skip it"),
        "{out}"
    );
    assert!(
        out.contains("spec.http[0].retries.retryRemoteLocalities: accepted but not enforced yet"),
        "{out}"
    );
    assert!(out.contains("valid (3 warnings)"), "{out}");

    let bad = agent("productpage", app, NO_COLLECTOR)
        + bad_weights_vs()
        + "---\nmetadata: {name: nokind}\n"
        + "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se}\nspec:\n  hosts: [x]\n  ports: [{number: 80, name: http, protocol: CARRIER_PIGEON}]\n";
    let (ok, out) = validate(&bad);
    assert!(!ok, "{out}");
    assert!(
        out.contains("total destination weight = 0: weights are relative"),
        "{out}"
    );
    assert!(out.contains("document 3 (line "), "{out}");
    assert!(out.contains("needs both `apiVersion` and `kind`"), "{out}");
    assert!(
        out.contains("spec.ports[0].protocol: unsupported protocol \"CARRIER_PIGEON\""),
        "{out}"
    );
    assert!(out.contains("invalid (3 errors)"), "{out}");
}

/// Listeners sharing an address would both bind (every socket has
/// SO_REUSEPORT) and split connections at random, as two agents sharing
/// one did; an app at the inbound listener's own address would loop.
/// Refused by name, as Envoy refuses two listeners on one address and the
/// gateway refuses two ports on one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_sharing_an_address_are_refused() {
    let app = closed_port().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let shared = format!("\"127.0.0.1:{port}\"");
    let yaml = agent("productpage", app, NO_COLLECTOR)
        .replacen("listen: \"127.0.0.1:0\"", &format!("listen: {shared}"), 2)
        .replace(
            "tcp: []",
            &format!("tcp: [{{listen: \"0.0.0.0:{port}\", host: db, port: 5432}}]"),
        );
    let (ok, out) = validate(&yaml);
    assert!(!ok, "{out}");
    for field in ["spec.outbound.listen", "spec.outbound.tcp[0].listen"] {
        assert!(
            out.contains(&format!("{field}: "))
                && out.contains("is also spec.inbound.listen's address"),
            "{field}: {out}"
        );
    }
    let looped = agent("productpage", app, NO_COLLECTOR)
        .replacen("listen: \"127.0.0.1:0\"", &format!("listen: {shared}"), 1)
        .replace(&format!("app: \"{app}\""), &format!("app: {shared}"));
    let (ok, out) = validate(&looped);
    assert!(!ok, "{out}");
    assert!(
        out.contains("spec.inbound.app: ") && out.contains("the inbound listener's own address"),
        "{out}"
    );
    // An app on another host on the same port, behind a wildcard inbound
    // listener, and an IPv6 listener beside an IPv4 wildcard: no overlap.
    let apart = agent("productpage", app, NO_COLLECTOR)
        .replacen(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"0.0.0.0:{port}\""),
            1,
        )
        .replacen(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"[::1]:{port}\""),
            1,
        )
        .replace(
            &format!("app: \"{app}\""),
            &format!("app: \"192.0.2.9:{port}\""),
        );
    let (ok, out) = validate(&apart);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_normalization_takes_istios_names() {
    let app = closed_port().await;
    let with = |name: &str| {
        agent("productpage", app, NO_COLLECTOR).replace(
            "  telemetry:",
            &format!("  pathNormalization: {{normalization: {name}}}\n  telemetry:"),
        )
    };
    for name in [
        "NONE",
        "BASE",
        "DEFAULT",
        "MERGE_SLASHES",
        "DECODE_AND_MERGE_SLASHES",
    ] {
        let (ok, out) = validate(&with(name));
        assert!(ok, "{name}: {out}");
    }
    let (ok, out) = validate(&with("MERGE"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("spec.pathNormalization.normalization: unknown \"MERGE\""),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_config_is_valid() {
    let (ok, out) = validate_file(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/agent.yaml"
    )));
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxying_is_unaffected_when_the_otlp_endpoint_is_down() {
    let app = Upstream::start("app").await;
    let yaml = agent("productpage", closed_port().await, NO_COLLECTOR).replace(
        "flushInterval: 100ms",
        "flushInterval: 100ms\n    maxQueuedSpans: 16",
    ) + &service_entry(
        "reviews",
        9080,
        "HTTP",
        &[Ep {
            addr: app.addr,
            labels: &[],
        }],
    );
    let agent = Agent::start(&yaml);
    let client = Client::h1(agent.outbound);
    let started = Instant::now();
    for _ in 0..300 {
        assert_eq!(client.get("http://reviews:9080/").await.status, 200);
    }
    // Wide margin: 300 local requests take well under a second even on a
    // loaded machine; an agent blocked on its exporter would take minutes.
    assert!(started.elapsed() < Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scrape = agent.metrics().await;
        let dropped = scrape.sum("tracemesh_agent_spans_dropped_total", &[]);
        let failed = scrape.sum("tracemesh_agent_spans_export_failed_total", &[]);
        if dropped > 0.0 {
            assert_eq!(scrape.sum("tracemesh_agent_spans_exported_total", &[]), 0.0);
            assert!(dropped + failed <= 300.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no dropped spans counted: {}",
            scrape.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_in_flight_requests_finish() {
    let app = Upstream::start("app").await;
    let yaml = agent("productpage", closed_port().await, NO_COLLECTOR)
        + &service_entry(
            "reviews",
            9080,
            "HTTP",
            &[Ep {
                addr: app.addr,
                labels: &[],
            }],
        );
    let agent = Agent::start(&yaml);
    let client = Client::h1(agent.outbound);
    let in_flight =
        tokio::spawn(async move { client.get("http://reviews:9080/slow/700").await.status });
    while app.count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = tokio::task::spawn_blocking(move || agent.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the in-flight request completed"
    );
}

/// An application whose requests to `/held…` are held: each request's path
/// is sent on `arrived` when it reaches the app; a held one is answered 200
/// (`released`) once `release` is set, any other at once (`served`).
struct HeldApp {
    addr: SocketAddr,
    arrived: mpsc::UnboundedReceiver<String>,
    release: watch::Sender<bool>,
}

impl HeldApp {
    async fn start() -> HeldApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (arrive, arrived) = mpsc::unbounded_channel();
        let (release, released) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (arrive, released) = (arrive.clone(), released.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (arrive, mut released) = (arrive.clone(), released.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let held = path.starts_with("/held");
                        let _ = arrive.send(path);
                        if !held {
                            return Ok(Response::new(Full::new(Bytes::from_static(b"served"))));
                        }
                        let _ = released.wait_for(|released| *released).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"released",
                        ))))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        HeldApp {
            addr,
            arrived,
            release,
        }
    }
}

/// Writes `bytes` on a new connection to `addr` and reads as many back (an
/// echo behind it), within 30 s.
async fn echoed(addr: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let exchange = async {
        let mut conn = TcpStream::connect(addr).await?;
        conn.write_all(bytes).await?;
        let mut back = vec![0; bytes.len()];
        conn.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    match tokio::time::timeout(Duration::from_secs(30), exchange).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("no echo within 30 s".to_owned()),
    }
}

/// SIGTERM drains the inbound side only, as Istio's pilot-agent asks Envoy
/// to drain its inbound listeners only (`drain_listeners?inboundonly`): an
/// application still finishing an inbound request calls out through its
/// sidecar — on a new connection and on the one it pooled before the
/// stop, which is not told to close — and through its outbound TCP
/// listener, and the inbound request completes. The inbound listener
/// keeps accepting, as Envoy's graceful drain does: a caller that has not
/// yet heard the pod is going is answered (HTTP/1.1 with `Connection:
/// close`, then closed; HTTP/2), not refused, and a connection that sends
/// nothing is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_keeps_the_outbound_side_serving_while_inbound_drains() {
    let mut app = HeldApp::start().await;
    let reviews = Upstream::start("reviews").await;
    let db = tcp_echo().await;
    // Longer than the default 5 s so that a loaded machine cannot end the
    // drain before the calls below; the agent leaves earlier, once no
    // connection is left.
    let drain = Duration::from_secs(20);
    let extra = format!("  drainDuration: {}s", drain.as_secs());
    let yaml = AgentDoc {
        name: "productpage-v1",
        service: "productpage",
        app: "productpage",
        version: "v1",
        app_addr: app.addr,
        otlp: NO_COLLECTOR,
        app_protocol: "HTTP",
        outbound_tcp: r#"[{listen: "127.0.0.1:0", host: db, port: 5432}]"#,
        extra: &extra,
    }
    .yaml()
        + &service_entry(
            "reviews",
            9080,
            "HTTP",
            &[Ep {
                addr: reviews.addr,
                labels: &[],
            }],
        )
        + &service_entry(
            "db",
            5432,
            "TCP",
            &[Ep {
                addr: db,
                labels: &[],
            }],
        );
    let agent = Agent::start(&yaml);
    let mut pooled = OneConnection::open(agent.outbound).await;
    assert_eq!(
        pooled.get("reviews:9080", "/before").await,
        Ok((200, false)),
        "the app's pooled connection to its sidecar works before the stop"
    );

    let inbound = Client::h1(agent.inbound);
    let in_flight = tokio::spawn(async move { inbound.get("http://productpage:9080/held").await });
    let arrived = tokio::time::timeout(Duration::from_secs(30), app.arrived.recv()).await;
    assert_eq!(
        arrived,
        Ok(Some("/held".to_owned())),
        "the inbound request reached the app"
    );

    let stopped = Instant::now();
    agent.send_sigterm();
    // The drain has begun once a new inbound connection is answered with
    // `Connection: close` (before, without; a connection accepted just as
    // the drain began may be closed unasked, and is tried again).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut late = loop {
        let mut late = OneConnection::open(agent.inbound).await;
        match late.get("productpage:9080", "/late").await {
            Ok((200, true)) => break late,
            Ok((200, false)) | Err(_) => {}
            other => panic!("a new inbound connection during the drain: {other:?}"),
        }
        assert!(Instant::now() < deadline, "the drain never began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        late.get("productpage:9080", "/late-again").await.is_err(),
        "a connection accepted while draining closes after its one request"
    );
    let h2 = Client::h2(agent.inbound)
        .try_get("http://productpage:9080/late-h2")
        .await
        .expect("an HTTP/2 connection accepted while draining is served");
    assert_eq!(h2.status, 200);
    assert_eq!(h2.body, "served");
    // One that sends nothing is closed, not left to hold the drain open.
    let mut silent = TcpStream::connect(agent.inbound).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "a silent connection accepted while draining is closed: {read:?}"
    );

    let fresh = Client::h1(agent.outbound)
        .try_get("http://reviews:9080/after")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "a new outbound connection during the drain: {e}\n{}",
                agent.stderr().join("\n")
            )
        });
    assert_eq!(fresh.status, 200, "{:?}", fresh.body);
    assert_eq!(fresh.upstream(), "reviews");
    assert_eq!(
        pooled.get("reviews:9080", "/pooled").await,
        Ok((200, false)),
        "the pooled outbound connection serves on, not told to close"
    );
    assert_eq!(
        echoed(agent.outbound_tcp[0], b"ping").await,
        Ok(b"ping".to_vec()),
        "a new connection to the outbound TCP listener during the drain"
    );
    let paths: Vec<String> = reviews.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/before", "/after", "/pooled"]);
    drop(pooled);

    app.release.send(true).unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(30), in_flight)
        .await
        .expect("the inbound request completes once released")
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "released");
    assert_eq!(
        reply.header("connection").as_deref(),
        Some("close"),
        "the drained inbound connection closes after its request"
    );

    let margin = Duration::from_secs(30);
    let status = tokio::task::spawn_blocking(move || agent.wait_exit(drain + margin))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(stopped.elapsed() < drain + margin);
}

/// A VM outside Kubernetes, registered as Istio registers it: a
/// ServiceEntry whose `workloadSelector` picks WorkloadEntries by label.
/// Requests reach the WorkloadEntries' addresses and ports (by port name),
/// and DestinationRule subsets select on the WorkloadEntries' labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workload_entries_are_the_endpoints_of_a_selecting_service_entry() {
    let vm1 = Upstream::start("vm-v1").await;
    let vm2 = Upstream::start("vm-v2").await;
    let workload_entry = |name: &str, addr: std::net::SocketAddr, version: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  address: {}\n  ports: {{http: {}}}\n  labels: {{app: legacy, version: {version}}}\n",
            addr.ip(),
            addr.port()
        )
    };
    let yaml = agent("productpage", closed_port().await, NO_COLLECTOR)
        + r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: default}
spec:
  hosts: [legacy.example.internal]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: legacy}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: legacy, namespace: default}
spec:
  host: legacy.example.internal
  subsets:
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: legacy, namespace: default}
spec:
  hosts: [legacy.example.internal]
  http:
  - match: [{headers: {x-version: {exact: v2}}}]
    route: [{destination: {host: legacy.example.internal, subset: v2}}]
  - route: [{destination: {host: legacy.example.internal}}]
"# + &workload_entry("legacy-vm-1", vm1.addr, "v1")
        + &workload_entry("legacy-vm-2", vm2.addr, "v2")
        // Another namespace's entry is not selected (Istio selects in the
        // ServiceEntry's namespace).
        + "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: elsewhere, namespace: other}\nspec:\n  address: 127.0.0.1\n  ports: {http: 1}\n  labels: {app: legacy, version: v1}\n";
    let (ok, out) = validate(&yaml);
    assert!(ok, "{out}");
    let agent = Agent::start(&yaml);
    let client = Client::h1(agent.outbound);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let reply = client.get("http://legacy.example.internal:8080/").await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        seen.insert(reply.upstream());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["vm-v1", "vm-v2"],
        "both VMs serve the entry, and only they"
    );
    for _ in 0..5 {
        let reply = client
            .get_with(
                "http://legacy.example.internal:8080/",
                &[("x-version", "v2")],
            )
            .await;
        assert_eq!(
            reply.upstream(),
            "vm-v2",
            "the subset selects on the WorkloadEntry's labels"
        );
    }
}
