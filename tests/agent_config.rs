//! Config errors name file, document and field; `validate` checks without
//! starting; skipped kinds and unenforced fields are warned about; a dead
//! OTLP endpoint never hurts proxying; SIGTERM drains.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::agent::{Agent, validate, validate_file};
use common::client::Client;
use common::mesh::{Ep, NO_COLLECTOR, agent, service_entry};
use common::upstream::{Upstream, closed_port};

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
