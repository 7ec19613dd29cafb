//! Istio's Telemetry API on the request path, through real agents: custom
//! tags on reported spans (literal, header with default, environment),
//! sampling of new traces at 0 and 100 per workload with Istio's
//! precedence between the mesh (root namespace), namespace and workload
//! resources, `disableSpanReporting` on one side (no span, the caller's
//! context passed on unchanged), a metric disabled and a label removed and added, an access
//! log filtered by `response.code >= 400` — and live reloads changing them.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::agent::{Agent, validate};
use common::client::Client;
use common::mesh::{AgentDoc, NO_COLLECTOR, istio_config_map};
use common::otlp::Receiver;
use common::upstream::Upstream;

const MESH: &str = r#"---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: otel
      opentelemetry: {service: collector.observability.svc.cluster.local, port: 4317}
    defaultProviders:
      tracing: [otel]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - randomSamplingPercentage: 0
    customTags:
      mesh: {literal: {value: from-mesh}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: namespace-default, namespace: default}
spec:
  tracing:
  - randomSamplingPercentage: 100
    customTags:
      tier: {literal: {value: backend}}
      team: {header: {name: x-team, defaultValue: none}}
      home: {environment: {name: HOME, defaultValue: no-home}}
"#;

fn doc(service: &str, app: SocketAddr, otlp: &str) -> String {
    AgentDoc {
        name: &format!("{service}-v1"),
        service,
        app: service,
        version: "v1",
        app_addr: app,
        otlp,
        app_protocol: "HTTP",
        outbound_tcp: "[]",
        extra: "",
    }
    .yaml()
}

/// A workload Telemetry for `app` that samples `percent` of new traces.
fn workload_sampling(app: &str, percent: u32) -> String {
    format!(
        "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {app}-sampling, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: {app}}}}}\n  tracing:\n  - randomSamplingPercentage: {percent}\n"
    )
}

/// The sampled flag of the `traceparent` the app received last.
fn upstream_sampled(app: &Upstream) -> bool {
    let seen = app.seen().pop().unwrap();
    let value = seen.headers["traceparent"].to_str().unwrap().to_owned();
    value.ends_with("-01")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sampling_and_custom_tags_follow_mesh_namespace_and_workload_resources() {
    let otlp = Receiver::start().await;
    let reviews_app = Upstream::start("reviews").await;
    let ratings_app = Upstream::start("ratings").await;
    // The namespace's resource (100%) wins over the mesh's (0%) for reviews;
    // ratings' own resource (0%) wins over both.
    let reviews = Agent::start(&(doc("reviews", reviews_app.addr, &otlp.endpoint()) + MESH));
    let ratings_config = doc("ratings", ratings_app.addr, &otlp.endpoint()) + MESH;
    let ratings = Agent::start(&(ratings_config.clone() + &workload_sampling("ratings", 0)));

    // reviews: every new trace sampled, the namespace's tags (replacing the
    // mesh's as a whole, as Istio does).
    let client = Client::h1(reviews.inbound);
    let reply = client
        .get_with("http://reviews:9080/tagged", &[("x-team", "payments")])
        .await;
    assert_eq!(reply.status, 200);
    assert!(
        upstream_sampled(&reviews_app),
        "100%: a new trace is sampled"
    );
    assert_eq!(client.get("http://reviews:9080/untagged").await.status, 200);
    let span = otlp.span_of("/tagged").await;
    assert_eq!(span.attr("tier").as_deref(), Some("backend"), "literal");
    assert_eq!(span.attr("team").as_deref(), Some("payments"), "header");
    let home = std::env::var("HOME").unwrap_or_else(|_| "no-home".into());
    assert_eq!(span.attr("home"), Some(home), "environment");
    assert_eq!(
        span.attr("mesh"),
        None,
        "the namespace's tags replace the mesh's"
    );
    let span = otlp.span_of("/untagged").await;
    assert_eq!(
        span.attr("team").as_deref(),
        Some("none"),
        "the header's default"
    );

    // ratings: no new trace sampled, but a caller's decision is followed.
    let client = Client::h1(ratings.inbound);
    for i in 0..5 {
        let reply = client.get(&format!("http://ratings:9080/new/{i}")).await;
        assert_eq!(reply.status, 200);
        assert!(
            !upstream_sampled(&ratings_app),
            "0%: new trace {i} not sampled"
        );
    }
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = client
        .get_with("http://ratings:9080/continued", &[("traceparent", caller)])
        .await;
    assert_eq!(reply.status, 200);
    assert!(upstream_sampled(&ratings_app), "the caller sampled it");
    let span = otlp.span_of("/continued").await;
    assert_eq!(span.attr("tier").as_deref(), Some("backend"));
    assert!(
        otlp.spans()
            .iter()
            .all(|s| !s.attr("url.path").unwrap_or_default().starts_with("/new/")),
        "no span of an unsampled trace is reported"
    );

    // A live reload turns ratings' sampling to 100%.
    ratings.rewrite_config(&(ratings_config + &workload_sampling("ratings", 100)));
    ratings.wait_for_config_version(2.0).await;
    let reply = client.get("http://ratings:9080/after-reload").await;
    assert_eq!(reply.status, 200);
    assert!(upstream_sampled(&ratings_app), "100% after the reload");
    otlp.span_of("/after-reload").await;
}

/// The mesh config's `defaultConfig.tracing` as Istio reads it
/// (`proxyConfigSamplingValue`, `configureCustomTags`): `sampling: 0` is
/// unset, so the Agent's own sampling (every new trace) applies, and
/// `customTags` tag every span where no Telemetry gives tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mesh_configs_tracing_defaults_are_read_as_istio_reads_them() {
    let otlp = Receiver::start().await;
    let app = Upstream::start("reviews").await;
    let mesh = "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    defaultConfig:\n      tracing:\n        sampling: 0\n        customTags:\n          team: {literal: {value: mesh-team}}\n          user: {header: {name: x-user, defaultValue: nobody}}\n";
    let agent = Agent::start(&(doc("reviews", app.addr, &otlp.endpoint()) + mesh));
    let client = Client::h1(agent.inbound);
    let reply = client
        .get_with("http://reviews:9080/mesh-tags", &[("x-user", "ada")])
        .await;
    assert_eq!(reply.status, 200);
    assert!(
        upstream_sampled(&app),
        "sampling 0 is unset: the Agent's own sampling applies"
    );
    let span = otlp.span_of("/mesh-tags").await;
    assert_eq!(span.attr("team").as_deref(), Some("mesh-team"), "literal");
    assert_eq!(span.attr("user").as_deref(), Some("ada"), "header");
}

const METRICS: &str = r#"---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews-telemetry, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_DURATION, mode: SERVER}
      disabled: true
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        request_protocol: {operation: REMOVE}
        request_method: {value: request.method}
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: "response.code >= 400"}
"#;

/// The access log lines (JSON) the agent wrote so far.
fn log_paths(agent: &Agent) -> Vec<String> {
    agent
        .stdout()
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|entry| entry["path"].as_str().map(str::to_owned))
        .collect()
}

fn wait_for_log(agent: &Agent, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log_paths(agent).iter().any(|p| p == path) {
        assert!(
            Instant::now() < deadline,
            "no access log line for {path}: {:?}",
            agent.stdout()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metric_overrides_and_access_log_filters_apply_and_reload() {
    let app = Upstream::start("reviews").await;
    let base = doc("reviews", app.addr, NO_COLLECTOR);
    let agent = Agent::start(&(base.clone() + METRICS));
    let client = Client::h1(agent.inbound);

    assert_eq!(client.get("http://reviews:9080/ok").await.status, 200);
    app.fail_with(404);
    assert_eq!(client.get("http://reviews:9080/missing").await.status, 404);
    assert_eq!(client.get("http://reviews:9080/gone").await.status, 404);

    let scrape = agent.metrics().await;
    assert!(
        !scrape.text.contains("istio_request_duration_milliseconds"),
        "REQUEST_DURATION disabled on the server side: not served"
    );
    assert_eq!(
        scrape.histogram_count("istio_request_bytes", &[("reporter", "destination")]),
        3,
        "the other metrics are untouched"
    );
    let requests: Vec<_> = scrape.matching("istio_requests_total", &[]).collect();
    assert_eq!(
        requests.iter().map(|s| s.value).sum::<f64>(),
        3.0,
        "{}\n{:?}",
        scrape.text,
        agent.stderr()
    );
    for sample in &requests {
        assert!(
            !sample.labels.contains_key("request_protocol"),
            "removed: {:?}",
            sample.labels
        );
        assert_eq!(sample.labels["request_method"], "GET", "upserted");
    }
    assert_eq!(
        scrape.sum("istio_requests_total", &[("response_code", "404")]),
        2.0
    );

    // Only the responses the filter keeps are logged.
    wait_for_log(&agent, "/gone");
    let logged = log_paths(&agent);
    assert!(logged.contains(&"/missing".to_owned()), "{logged:?}");
    assert!(!logged.contains(&"/ok".to_owned()), "a 200 is filtered out");

    // A live reload without the Telemetry: the standard families again, and
    // the Agent's own settings for the log (none here).
    agent.rewrite_config(&base);
    agent.wait_for_config_version(2.0).await;
    assert_eq!(client.get("http://reviews:9080/after").await.status, 404);
    let scrape = agent.metrics().await;
    assert_eq!(
        scrape.histogram_count(
            "istio_request_duration_milliseconds",
            &[("reporter", "destination")]
        ),
        1,
        "served again, counting from the reload"
    );
    let after: Vec<_> = scrape.matching("istio_requests_total", &[]).collect();
    assert_eq!(after.len(), 1, "a new family: {after:?}");
    assert_eq!(after[0].labels["request_protocol"], "http");
    assert!(!after[0].labels.contains_key("request_method"));
    assert_eq!(client.get("http://reviews:9080/unlogged").await.status, 404);
    assert!(!log_paths(&agent).contains(&"/after".to_owned()));
}

/// reviews' Telemetry: the SERVER side (inbound) reports no spans, the
/// CLIENT side (outbound) does; both sample every new trace.
const SERVER_REPORTING_OFF: &str = r#"---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews-reporting, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  tracing:
  - match: {mode: SERVER}
    randomSamplingPercentage: 100
    disableSpanReporting: true
  - match: {mode: CLIENT}
    randomSamplingPercentage: 100
"#;

/// `disableSpanReporting` stops the side's spans, not its trace context.
/// The absence is shown without a timed wait: the agent runs one worker
/// (`concurrency: 1`), which appends each finished span to its one batch
/// in finish order, and batches reach the export thread, which sends them
/// one after another, in the order they were shipped. Request A (inbound,
/// reporting off) ends — its span finished — before request B (outbound,
/// reporting on) is sent, so once B's span is at the receiver, A's would
/// be there too had it been reported.
/// An `envoyFileAccessLog` provider's `logFormat`, as Istio renders it
/// into Envoy's formatter: a `text` line of command operators (an absent
/// value is `-`), JSON `labels` (a label that is one operator keeps its
/// type; `omitEmptyValues` leaves the empty ones out); an operator the
/// agent does not fill is an error naming the field, not a silent blank.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_access_logs_format_is_envoys() {
    let app = Upstream::start("reviews").await;
    let dir = tempfile::tempdir().unwrap();
    let labels_file = dir.path().join("labels.log");
    let mesh = |text: &str| {
        format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n    extensionProviders:\n    - name: text-log\n      envoyFileAccessLog:\n        path: /dev/stdout\n        logFormat: {{text: \"{text}\\n\"}}\n    - name: labels-log\n      envoyFileAccessLog:\n        path: {}\n        omitEmptyValues: true\n        logFormat:\n          labels: {{code: \"%RESPONSE_CODE%\", path: \"%REQ(:PATH)%\", line: \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\", sni: \"%REQUESTED_SERVER_NAME%\", agent: \"%REQ(USER-AGENT):4%\", n: 5, b: true, nested: {{c: \"%RESPONSE_CODE%\", xff: \"%REQ(X-FORWARDED-FOR)%\"}}}}\n---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: logs, namespace: default}}\nspec:\n  accessLogging:\n  - providers: [{{name: text-log}}, {{name: labels-log}}]\n",
            labels_file.display()
        )
    };
    let config = doc("reviews", app.addr, NO_COLLECTOR)
        + &mesh(
            "[%RESPONSE_CODE%] %REQ(:METHOD)% %REQ(:PATH)% sni=%REQUESTED_SERVER_NAME% 100%% %BYTES_SENT% ua=%REQ(X-FORWARDED-FOR)%.",
        );
    let agent = Agent::start(&config);
    let reply = Client::h1(agent.inbound)
        .get_with(
            "http://reviews:9080/formatted",
            &[("user-agent", "curl/8.0"), ("x-forwarded-for", "")],
        )
        .await;
    assert_eq!(reply.status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = format!("[200] GET /formatted sni=- 100% {} ua=.", reply.body.len());
    while !agent.stdout().contains(&want) {
        assert!(
            Instant::now() < deadline,
            "{want:?} not in {:?}",
            agent.stdout()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let line = loop {
        let text = std::fs::read_to_string(&labels_file).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no line in {}",
            labels_file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        line,
        serde_json::json!({"code": 200, "path": "/formatted", "line": "GET /formatted", "agent": "curl", "n": 5, "b": true, "nested": {"c": 200, "xff": ""}}),
        "the code a number, literals and objects as written, a header sent empty kept empty, the absent SNI left out"
    );

    let (valid, out) = validate(
        &(doc("reviews", app.addr, NO_COLLECTOR) + &mesh("%DYNAMIC_METADATA(istio.mixer)%")),
    );
    assert!(!valid, "{out}");
    assert!(
        out.contains("extensionProviders[0].envoyFileAccessLog.logFormat.text")
            && out.contains("%DYNAMIC_METADATA(istio.mixer)% is not supported"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disabled_span_reporting_reports_nothing_and_still_propagates_the_context() {
    let otlp = Receiver::start().await;
    let app = Upstream::start("reviews").await;
    let ratings = Upstream::start("ratings").await;
    let one_worker =
        doc("reviews", app.addr, &otlp.endpoint()).replace("concurrency: 2", "concurrency: 1");
    assert!(one_worker.contains("concurrency: 1"), "{one_worker}");
    let ratings_entry = common::mesh::service_entry(
        "ratings",
        9080,
        "HTTP",
        &[common::mesh::Ep {
            addr: ratings.addr,
            labels: &[],
        }],
    );
    let agent = Agent::start(&(one_worker + MESH + SERVER_REPORTING_OFF + &ratings_entry));

    // A: inbound, reporting off; the app gets the caller's context as it
    // was sent: a new span id would be a parent no one ever reports. (Found
    // by a breaker: the app's spans had a missing parent.)
    let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let reply = Client::h1(agent.inbound)
        .get_with(
            "http://reviews:9080/reporting-off",
            &[("traceparent", caller)],
        )
        .await;
    assert_eq!(reply.status, 200);
    let seen = app.seen().pop().unwrap();
    assert_eq!(
        seen.headers["traceparent"], caller,
        "the caller's context goes on unchanged, without a span reported"
    );
    // Without a caller's context the agent makes none up.
    let reply = Client::h1(agent.inbound)
        .get("http://reviews:9080/reporting-off-no-context")
        .await;
    assert_eq!(reply.status, 200);
    let seen = app.seen().pop().unwrap();
    assert!(
        !seen.headers.contains_key("traceparent"),
        "{:?}",
        seen.headers
    );
    let scrape = agent.metrics().await;
    assert_eq!(
        scrape.sum("istio_requests_total", &[("reporter", "destination")]),
        2.0,
        "still counted: {}",
        scrape.text
    );

    // B: outbound, reporting on, on the same worker after A ended.
    let reply = Client::h1(agent.outbound)
        .get("http://ratings:9080/reporting-on")
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert!(upstream_sampled(&ratings));
    otlp.span_of("/reporting-on").await;
    let reported: Vec<String> = otlp
        .spans()
        .iter()
        .filter_map(|s| s.attr("url.path"))
        .collect();
    assert!(
        !reported.iter().any(|p| p.starts_with("/reporting-off")),
        "the SERVER side reports nothing: {reported:?}"
    );
}

/// An Agent document without `spec.telemetry.otlp`: spans go where the
/// workload's tracing provider says.
fn doc_without_otlp(service: &str, app: SocketAddr) -> String {
    let with = doc(service, app, "unused");
    let without = with.replace("    otlp: {endpoint: \"unused\"}\n", "");
    assert_ne!(with, without, "the otlp line is gone");
    without
}

/// The `istio` ConfigMap with the `otel` provider at `otel_port` as the
/// mesh's default tracing provider, and `direct` at `direct_port`.
fn mesh_with_providers(otel_port: u16, direct_port: u16) -> String {
    istio_config_map(&format!(
        r#"    extensionProviders:
    - name: otel
      opentelemetry: {{service: 127.0.0.1, port: {otel_port}}}
    - name: direct
      opentelemetry: {{service: 127.0.0.1, port: {direct_port}}}
    defaultProviders:
      tracing: [otel]
"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_go_to_the_workloads_opentelemetry_provider_when_the_agent_names_no_endpoint() {
    let mesh_default = Receiver::start().await;
    let named = Receiver::start().await;
    let (otel, direct) = (mesh_default.addr.port(), named.addr.port());
    // reviews: no Telemetry names a provider, so the mesh's
    // defaultProviders.tracing (`otel`) is its exporter.
    let reviews_app = Upstream::start("reviews").await;
    let reviews = Agent::start(
        &(doc_without_otlp("reviews", reviews_app.addr) + &mesh_with_providers(otel, direct)),
    );
    // ratings: its namespace's Telemetry names `direct`, which wins over the
    // mesh default.
    let ratings_app = Upstream::start("ratings").await;
    let ratings = Agent::start(
        &(doc_without_otlp("ratings", ratings_app.addr)
            + &mesh_with_providers(otel, direct)
            + "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: direct, namespace: default}\nspec:\n  tracing:\n  - providers: [{name: direct}]\n"),
    );
    let reply = Client::h1(reviews.inbound)
        .get("http://reviews:9080/via-default-provider")
        .await;
    assert_eq!(reply.status, 200);
    let reply = Client::h1(ratings.inbound)
        .get("http://ratings:9080/via-named-provider")
        .await;
    assert_eq!(reply.status, 200);
    let span = mesh_default.span_of("/via-default-provider").await;
    assert_eq!(span.service, "reviews");
    assert_eq!(
        named.span_of("/via-named-provider").await.service,
        "ratings"
    );
    // Each exporter got only its own workload's spans.
    let services = |r: &Receiver| r.spans().into_iter().map(|s| s.service).collect::<Vec<_>>();
    assert!(services(&mesh_default).iter().all(|s| s == "reviews"));
    assert!(services(&named).iter().all(|s| s == "ratings"));

    // A reload that moves the mesh default to the other receiver is warned
    // about; the exporter set up at startup stays until a restart.
    reviews.rewrite_config(
        &(doc_without_otlp("reviews", reviews_app.addr) + &mesh_with_providers(direct, otel)),
    );
    reviews.wait_for_config_version(2.0).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reviews
        .stderr()
        .iter()
        .any(|l| l.contains("the span exporter's endpoint") && l.contains("after a restart"))
    {
        assert!(
            Instant::now() < deadline,
            "no restart warning: {:?}",
            reviews.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = Client::h1(reviews.inbound)
        .get("http://reviews:9080/after-reload")
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        mesh_default.span_of("/after-reload").await.service,
        "reviews"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_with_an_http_block_exports_over_otlp_http_with_its_path_and_headers() {
    let receiver = Receiver::start_http("/custom/v1/traces").await;
    let app = Upstream::start("reviews").await;
    let mesh = istio_config_map(&format!(
        r#"    extensionProviders:
    - name: otel-http
      opentelemetry:
        service: 127.0.0.1
        port: {port}
        http:
          path: /custom/v1/traces
          timeout: 5s
          headers: [{{name: x-api-key, value: k3y}}]
"#,
        port = receiver.addr.port()
    )) + r#"---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: http-export, namespace: default}
spec:
  tracing:
  - providers: [{name: otel-http}]
"#;
    let agent = Agent::start(&(doc_without_otlp("reviews", app.addr) + &mesh));
    let reply = Client::h1(agent.inbound)
        .get("http://reviews:9080/over-http")
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(receiver.span_of("/over-http").await.service, "reviews");
    let requests = receiver.http_requests();
    assert!(!requests.is_empty());
    for (path, headers) in &requests {
        assert_eq!(path, "/custom/v1/traces");
        assert_eq!(headers["content-type"], "application/x-protobuf");
        assert_eq!(headers["x-api-key"], "k3y");
    }
}

#[test]
fn validate_warns_when_client_and_server_pick_different_exporters() {
    let app: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let yaml = doc_without_otlp("reviews", app)
        + &mesh_with_providers(4317, 4318)
        + "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: client-direct, namespace: default}\nspec:\n  tracing:\n  - match: {mode: CLIENT}\n    providers: [{name: direct}]\n";
    let (ok, out) = validate(&yaml);
    assert!(ok, "a warning, not an error: {out}");
    assert!(
        out.contains("spec.telemetry.otlp.endpoint")
            && out.contains("\"otel\"")
            && out.contains("\"direct\"")
            && out.contains("default/client-direct"),
        "the warning names both providers, the field and the Telemetry: {out}"
    );
}

/// `tagOverrides` on TCP metrics are CEL over the connection, as Istio's
/// stats filter evaluates them on the connection's stream info: `source.*`
/// is the peer, `destination.*` the address it connected to; request
/// attributes are absent on a connection, so a tag reading one is `unknown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_metric_tag_overrides_read_the_connections_attributes() {
    let overrides = r#"    - match: {metric: TCP_OPENED_CONNECTIONS}
      tagOverrides:
        peer_ip: {value: source.address}
        listener_port: {value: string(destination.port)}
        method: {value: request.method}
        fixed: {value: "'db'"}
"#;
    let agent = tcp_agent(overrides, "").await;
    ping(agent.inbound).await;

    let scrape = agent.metrics().await;
    let opened: Vec<_> = scrape
        .matching("istio_tcp_connections_opened_total", &[])
        .collect();
    assert_eq!(opened.len(), 1, "{}", scrape.text);
    let labels = &opened[0].labels;
    assert_eq!(labels["peer_ip"], "127.0.0.1", "{labels:?}");
    assert_eq!(
        labels["listener_port"],
        agent.inbound.port().to_string(),
        "{labels:?}"
    );
    assert_eq!(labels["method"], "unknown", "no request on a connection");
    assert_eq!(labels["fixed"], "db", "{labels:?}");
}

/// A TCP tag that reads the connection (here the client's own port) is a
/// label like any other: `maxSeriesPerMetric` bounds its label sets, and
/// what is left out is counted. (Found by a hostile user: 24 connections
/// made 24 series under a cap of 5.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_tags_from_the_connection_are_bounded_by_the_series_cap() {
    let overrides = r#"    - match: {metric: TCP_CLOSED_CONNECTIONS}
      tagOverrides:
        src_port: {value: string(source.port)}
"#;
    // Lines of `extra` indented four spaces continue `spec.telemetry`.
    let agent = tcp_agent(overrides, "    maxSeriesPerMetric: 5\n").await;
    for _ in 0..24 {
        ping(agent.inbound).await;
    }
    // Every connection is closed and counted (admitted or left out) once
    // the overflow and the closed series add up to 24.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let scrape = agent.metrics().await;
        let closed = scrape
            .matching("istio_tcp_connections_closed_total", &[])
            .count();
        let counted: f64 = scrape.sum("istio_tcp_connections_closed_total", &[])
            + scrape.sum(
                "tracemesh_agent_metric_series_overflow_total",
                &[("family", "istio_tcp")],
            );
        assert!(
            closed <= 5,
            "{closed} series under a cap of 5: {}",
            scrape.text
        );
        if counted >= 24.0 {
            assert_eq!(closed, 5, "{}", scrape.text);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "24 closed connections never all counted: {}",
            scrape.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A TCP service's sidecar (`db`, app protocol TCP, in front of a TCP echo)
/// with `extra` lines of `spec.telemetry` and a Telemetry whose TCP metric
/// `overrides` are `overrides` (YAML list items, six spaces in).
async fn tcp_agent(overrides: &str, extra: &str) -> Agent {
    let echo = common::upstream::tcp_echo().await;
    let telemetry = format!(
        "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: db-telemetry, namespace: default}}\nspec:\n  metrics:\n  - providers: [{{name: prometheus}}]\n    overrides:\n{overrides}"
    );
    let yaml = AgentDoc {
        name: "db-v1",
        service: "db",
        app: "db",
        version: "v1",
        app_addr: echo,
        otlp: NO_COLLECTOR,
        app_protocol: "TCP",
        outbound_tcp: "[]",
        extra,
    }
    .yaml()
        + &telemetry;
    Agent::start(&yaml)
}

/// One TCP connection to `addr` that sends `ping` and reads its echo.
async fn ping(addr: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"ping").await.unwrap();
    conn.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    conn.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"ping");
}

/// reviews' Telemetry adding the request path to `istio_requests_total`.
const PATH_TAG: &str = r#"---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews-path, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        path: {value: request.url_path}
"#;

/// The series cap counts the label sets a family holds, and a reload that
/// makes the family anew starts its count over with its series. (Found by
/// a breaker: after the Telemetry was deleted, the rebuilt family stayed
/// empty — every new label set refused as overflow until a restart.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reshaped_family_gets_a_fresh_series_cap() {
    let app = Upstream::start("reviews").await;
    let base = AgentDoc {
        name: "reviews-v1",
        service: "reviews",
        app: "reviews",
        version: "v1",
        app_addr: app.addr,
        otlp: NO_COLLECTOR,
        app_protocol: "HTTP",
        outbound_tcp: "[]",
        // Lines of `extra` indented four spaces continue `spec.telemetry`.
        extra: "    maxSeriesPerMetric: 5\n",
    }
    .yaml();
    let agent = Agent::start(&(base.clone() + PATH_TAG));
    let client = Client::h1(agent.inbound);
    for i in 1..=8 {
        let url = format!("http://reviews:9080/p{i}");
        assert_eq!(client.get(&url).await.status, 200);
    }
    let scrape = agent.metrics().await;
    let overflow = |scrape: &common::metrics::Scrape| {
        scrape.sum(
            "tracemesh_agent_metric_series_overflow_total",
            &[("family", "istio_requests")],
        )
    };
    assert_eq!(
        scrape.matching("istio_requests_total", &[]).count(),
        5,
        "{}",
        scrape.text
    );
    assert_eq!(overflow(&scrape), 3.0, "{}", scrape.text);
    assert_eq!(
        scrape.histogram_count("istio_request_bytes", &[("reporter", "destination")]),
        8,
        "a family without the path holds one label set: {}",
        scrape.text
    );

    // The Telemetry deleted: `istio_requests_total` is made anew, and so
    // is the count of its label sets.
    agent.rewrite_config(&base);
    agent.wait_for_config_version(2.0).await;
    assert_eq!(client.get("http://reviews:9080/ok").await.status, 200);
    assert_eq!(
        client.get("http://reviews:9080/status/503").await.status,
        503
    );
    app.fail_with(404);
    assert_eq!(client.get("http://reviews:9080/gone").await.status, 404);
    let scrape = agent.metrics().await;
    for code in ["200", "503", "404"] {
        assert_eq!(
            scrape.sum("istio_requests_total", &[("response_code", code)]),
            1.0,
            "{code}: {}",
            scrape.text
        );
    }
    assert_eq!(
        overflow(&scrape),
        3.0,
        "nothing more left out: {}",
        scrape.text
    );
}

/// The series cap counts the label sets as served: with `response_code`
/// removed, requests that differ only in their code are one series.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_series_cap_counts_label_sets_after_the_tag_overrides() {
    let app = Upstream::start("reviews").await;
    let telemetry = r#"---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews-codes, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: ALL_METRICS}
      tagOverrides:
        response_code: {operation: REMOVE}
"#;
    let yaml = AgentDoc {
        name: "reviews-v1",
        service: "reviews",
        app: "reviews",
        version: "v1",
        app_addr: app.addr,
        otlp: NO_COLLECTOR,
        app_protocol: "HTTP",
        outbound_tcp: "[]",
        extra: "    maxSeriesPerMetric: 3\n",
    }
    .yaml()
        + telemetry;
    let agent = Agent::start(&yaml);
    let client = Client::h1(agent.inbound);
    let codes = [200, 201, 202, 203, 205, 206, 400, 401, 403, 409, 418];
    for code in codes {
        let url = format!("http://reviews:9080/status/{code}");
        assert_eq!(client.get(&url).await.status.as_u16(), code);
    }
    let scrape = agent.metrics().await;
    let requests: Vec<_> = scrape.matching("istio_requests_total", &[]).collect();
    assert_eq!(requests.len(), 1, "{}", scrape.text);
    assert_eq!(requests[0].value, 11.0, "{}", scrape.text);
    assert!(!requests[0].labels.contains_key("response_code"));
    assert_eq!(
        scrape.sum(
            "tracemesh_agent_metric_series_overflow_total",
            &[("family", "istio_requests")]
        ),
        0.0,
        "{}",
        scrape.text
    );
}
