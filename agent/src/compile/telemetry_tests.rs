//! Istio's Telemetry precedence, compiled from real config text: mesh
//! (root namespace), namespace and workload resources, per side.

use std::sync::Arc;

use http::HeaderMap;

use crate::model::expr::{Attributes, ResponseAttributes};
use crate::model::telemetry::{IstioMetric, Side, TagOverride, TagValue, TelemetryPolicy};

const AGENT: &str = r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: reviews-v1, namespace: shop}
spec: {service: reviews, labels: {app: reviews, version: v1}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    defaultConfig:
      tracing: {sampling: 5}
    extensionProviders:
    - name: otel
      opentelemetry: {service: collector.observability.svc.cluster.local, port: 4317}
    - name: otel-b
      opentelemetry: {service: other.observability.svc.cluster.local, port: 4317}
    - name: file-log
      envoyFileAccessLog: {path: /tmp/access.log}
    defaultProviders:
      tracing: [otel]
      metrics: [prometheus]
      accessLogging: [envoy]
"#;

fn compile(extra: &str) -> (TelemetryPolicy, Vec<String>) {
    let file: Arc<str> = Arc::from("mesh.yaml");
    let text = format!("{AGENT}---\n{extra}");
    let compiled = super::super::compile_text(&file, &text, 1, &Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let warnings = compiled
        .diagnostics
        .warnings()
        .map(ToString::to_string)
        .collect();
    ((*compiled.snapshot.telemetry).clone(), warnings)
}

fn attrs<'a>(req: &'a HeaderMap, resp: &'a HeaderMap, code: u16) -> Attributes<'a> {
    Attributes {
        request: true,
        method: "GET",
        path: "/api",
        host: "reviews",
        scheme: "http",
        protocol: "HTTP/1.1",
        request_headers: req,
        request_size: 0,
        response: Some(ResponseAttributes {
            code,
            code_details: "via_upstream",
            grpc_status: None,
            headers: resp,
            size: 0,
        }),
        source: "10.0.0.1:1000".parse().unwrap(),
        destination: "10.0.0.2:8080".parse().unwrap(),
        mtls: false,
        sni: None,
    }
}

#[test]
fn without_telemetry_the_mesh_defaults_apply() {
    let (policy, _) = compile("");
    assert!(policy.sources.is_empty());
    let tracing = policy.server.tracing.as_ref().unwrap();
    assert_eq!(tracing.provider.as_ref().unwrap().name, "otel");
    assert_eq!(
        tracing.sampling_percent,
        Some(5.0),
        "defaultConfig.tracing.sampling"
    );
    assert!(!tracing.disabled);
    let metrics = policy.server.metrics.as_ref().unwrap();
    assert!(metrics.enabled(IstioMetric::RequestCount));
    let logs = policy.client.access_logs.as_ref().unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(
        logs[0].file(),
        Some("/dev/stdout"),
        "Istio's built-in `envoy`"
    );
}

#[test]
fn workload_over_namespace_over_mesh() {
    let (policy, warnings) = compile(
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - randomSamplingPercentage: 10
    customTags:
      cluster: {literal: {value: east}}
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: "response.code >= 400"}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: shop-default, namespace: shop}
spec:
  tracing:
  - randomSamplingPercentage: 50
    customTags:
      user: {header: {name: x-user, defaultValue: anonymous}}
      pkg: {environment: {name: CARGO_PKG_NAME}}
      absent: {environment: {name: TRACEMESH_SURELY_UNSET_VARIABLE}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  tracing:
  - match: {mode: SERVER}
    randomSamplingPercentage: 100
  - match: {mode: CLIENT}
    disableSpanReporting: true
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ratings-only, namespace: shop}
spec:
  selector: {matchLabels: {app: ratings}}
  tracing: [{randomSamplingPercentage: 0}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: other-namespace, namespace: payments}
spec:
  tracing: [{randomSamplingPercentage: 0}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: second-default, namespace: shop}
spec:
  tracing: [{randomSamplingPercentage: 1}]
"#,
    );
    assert_eq!(
        policy.sources,
        [
            "istio-system/mesh-default",
            "shop/shop-default",
            "shop/reviews"
        ]
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("second-default") || w.contains("only the first applies")),
        "{warnings:?}"
    );
    let server = policy.server.tracing.as_ref().unwrap();
    let client = policy.client.tracing.as_ref().unwrap();
    assert_eq!(
        server.sampling_percent,
        Some(100.0),
        "the workload's, SERVER only"
    );
    assert!(!server.disabled);
    assert_eq!(client.sampling_percent, Some(50.0), "the namespace's");
    assert!(client.disabled, "disableSpanReporting, CLIENT only");
    // customTags replace the mesh's as a whole (Istio's shallow merge).
    let mut headers = HeaderMap::new();
    let tags: Vec<(&str, &str)> = server.tags(&headers).collect();
    assert_eq!(
        tags,
        [("pkg", "tracemesh-agent"), ("user", "anonymous")],
        "environment read at load, header default, unset environment left out"
    );
    headers.insert("x-user", "alice".parse().unwrap());
    assert!(server.tags(&headers).any(|t| t == ("user", "alice")));
    assert!(matches!(
        server
            .custom_tags
            .iter()
            .find(|t| t.name == "user")
            .unwrap()
            .value,
        TagValue::Header { .. }
    ));
    // The mesh's access-log filter still applies (nothing below names a log).
    let logs = policy.server.access_logs.as_ref().unwrap();
    let (req, resp) = (HeaderMap::new(), HeaderMap::new());
    assert!(!logs[0].logs(&attrs(&req, &resp, 200)));
    assert!(logs[0].logs(&attrs(&req, &resp, 503)));
}

#[test]
fn metrics_merge_per_metric_and_tag() {
    let (policy, warnings) = compile(
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: ALL_METRICS}
      tagOverrides:
        request_protocol: {operation: REMOVE}
    - match: {metric: REQUEST_DURATION, mode: CLIENT}
      disabled: true
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        request_host: {value: "request.host"}
        destination_port: {value: "string(destination.port)"}
    - match: {customMetric: requests_total, mode: SERVER}
      tagOverrides:
        response_flags: {operation: REMOVE}
    - match: {customMetric: my_own_metric}
      disabled: true
    - match: {customMetric: istio_requests_total}
      disabled: true
"#,
    );
    assert!(
        warnings.iter().any(|w| w.contains("my_own_metric")),
        "{warnings:?}"
    );
    // Istio's stats filter names it `requests_total`: the Prometheus
    // name matches nothing, and the count stays.
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("\"istio_requests_total\"")),
        "{warnings:?}"
    );
    assert!(
        policy
            .server
            .metrics
            .as_ref()
            .unwrap()
            .enabled(IstioMetric::RequestCount)
    );
    let server = policy.server.metrics.as_ref().unwrap();
    let client = policy.client.metrics.as_ref().unwrap();
    assert!(server.enabled(IstioMetric::RequestDuration));
    assert!(!client.enabled(IstioMetric::RequestDuration));
    let labels = |tags: &[TagOverride]| -> Vec<String> {
        tags.iter()
            .map(|t| match t {
                TagOverride::Remove(l) => format!("-{l}"),
                TagOverride::Upsert(l, e) => format!("{l}={}", e.source()),
            })
            .collect()
    };
    assert_eq!(
        labels(server.tags(IstioMetric::RequestCount)),
        [
            "destination_port=string(destination.port)",
            "request_host=request.host",
            "-request_protocol",
            "-response_flags"
        ]
    );
    assert_eq!(
        labels(client.tags(IstioMetric::RequestCount)),
        [
            "destination_port=string(destination.port)",
            "request_host=request.host",
            "-request_protocol"
        ]
    );
    assert_eq!(
        labels(server.tags(IstioMetric::TcpSentBytes)),
        ["-request_protocol"]
    );
}

/// Two Telemetries select the workload, one for tracing, a newer one for
/// metrics: both apply, as Istio appends every match (the breaker's
/// example: the metrics override was dropped with a warning).
#[test]
fn two_workload_telemetries_both_apply() {
    let (policy, warnings) = compile(
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: a-tracing, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  selector: {matchLabels: {app: reviews}}
  tracing: [{randomSamplingPercentage: 100}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: b-metrics, namespace: shop, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  selector: {matchLabels: {version: v1}}
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        request_protocol: {operation: REMOVE}
"#,
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(policy.sources, ["shop/a-tracing", "shop/b-metrics"]);
    assert_eq!(policy.sampling_percent(Side::Server, 0.01), 100.0);
    let server = policy.server.metrics.as_ref().unwrap();
    assert!(matches!(
        server.tags(IstioMetric::RequestCount),
        [TagOverride::Remove(label)] if label == "request_protocol"
    ));
}

#[test]
fn all_metrics_off_until_a_workload_turns_one_on() {
    let mesh_off = r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - overrides:
    - {match: {metric: ALL_METRICS}, disabled: true}
"#;
    let (policy, _) = compile(mesh_off);
    assert!(
        !policy
            .server
            .metrics
            .as_ref()
            .unwrap()
            .enabled(IstioMetric::RequestCount)
    );
    let (policy, _) = compile(&format!(
        "{mesh_off}---\n{}",
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  metrics:
  - overrides:
    - {match: {metric: REQUEST_COUNT, mode: SERVER}, disabled: false}
"#
    ));
    assert!(
        policy
            .server
            .metrics
            .as_ref()
            .unwrap()
            .enabled(IstioMetric::RequestCount)
    );
    assert!(
        !policy
            .client
            .metrics
            .as_ref()
            .unwrap()
            .enabled(IstioMetric::RequestCount)
    );
    // A provider set without Prometheus: the agent serves no Istio metrics.
    let (policy, warnings) = compile(
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: shop, namespace: shop}
spec:
  metrics: [{providers: [{name: stackdriver}]}]
"#,
    );
    assert!(policy.server.metrics.as_ref().unwrap().disabled);
    assert!(
        warnings.iter().any(|w| w.contains("stackdriver")),
        "{warnings:?}"
    );
}

#[test]
fn access_logs_follow_the_last_level_that_names_them() {
    let (policy, _) = compile(
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - providers: [{name: envoy}, {name: file-log}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  accessLogging:
  - providers: [{name: file-log}]
    filter: {expression: "request.headers['x-debug'] == 'on'"}
  - match: {mode: CLIENT}
    providers: [{name: file-log}]
    disabled: true
"#,
    );
    let server = policy.server.access_logs.as_ref().unwrap();
    assert_eq!(server.len(), 1, "the workload names only file-log");
    assert_eq!(server[0].file(), Some("/tmp/access.log"));
    let mut req = HeaderMap::new();
    let resp = HeaderMap::new();
    assert!(!server[0].logs(&attrs(&req, &resp, 200)));
    req.insert("x-debug", "on".parse().unwrap());
    assert!(server[0].logs(&attrs(&req, &resp, 200)));
    let client = policy.client.access_logs.as_ref().unwrap();
    assert!(client[0].disabled);
    assert!(!client[0].logs(&attrs(&req, &resp, 200)));
    // Without any access log setting the Agent's own log applies.
    let (policy, _) = compile(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated, namespace: shop}
data: {}
"#,
    );
    assert!(
        policy.server.access_logs.is_some(),
        "defaultProviders.accessLogging: envoy"
    );
}

#[test]
fn a_selector_for_another_workload_or_a_gateway_target_does_not_apply() {
    let (policy, warnings) = compile(
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: gw, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: web}]
  tracing: [{randomSamplingPercentage: 0}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: v2-only, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews, version: v2}}
  tracing: [{randomSamplingPercentage: 0}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: unknown-provider, namespace: shop}
spec:
  tracing: [{providers: [{name: zipkin}]}]
"#,
    );
    assert_eq!(policy.sources, ["shop/unknown-provider"]);
    assert!(
        warnings.iter().any(|w| w.contains("sidecars skip it")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("\"zipkin\"")),
        "{warnings:?}"
    );
    let tracing = policy.server.tracing.as_ref().unwrap();
    assert!(
        tracing.provider.is_none() && tracing.disabled,
        "an unknown provider reports nothing"
    );
    assert_eq!(tracing.sampling_percent, Some(5.0));
}

#[test]
fn sampling_is_telemetry_then_mesh_then_agent() {
    let (policy, _) = compile(
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  tracing: [{match: {mode: SERVER}, randomSamplingPercentage: 0}]
"#,
    );
    assert_eq!(policy.sampling_percent(Side::Server, 1.0), 0.0);
    assert_eq!(policy.sampling_percent(Side::Client, 1.0), 5.0);
    let without_mesh = TelemetryPolicy::default();
    assert_eq!(without_mesh.sampling_percent(Side::Client, 0.25), 25.0);
}

/// Of several namespace-wide Telemetries the oldest applies, by
/// `creationTimestamp` then name, as Istio's `sortConfigByCreationTime`
/// orders them — not the file's order (found by a breaker: the first in
/// the file applied); every Telemetry that selects the workload applies,
/// oldest first, a newer one over an older (Istio's
/// `appendApplicableTelemetries`; found by a breaker: only the oldest
/// applied).
#[test]
fn the_oldest_namespace_telemetry_and_every_workload_telemetry_apply() {
    let telemetry = |name: &str, created: &str, selector: &str, percent: u32| {
        format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: shop, creationTimestamp: \"{created}\"}}\nspec:\n{selector}  tracing: [{{randomSamplingPercentage: {percent}}}]\n"
        )
    };
    let selector = "  selector: {matchLabels: {app: reviews}}\n";
    let text = [
        telemetry("newer", "2024-05-02T00:00:00Z", selector, 10),
        telemetry("older", "2024-05-01T00:00:00Z", selector, 20),
        // Tied on time: the name decides.
        telemetry("b-wide", "2024-05-01T00:00:00Z", "", 30),
        telemetry("a-wide", "2024-05-01T00:00:00Z", "", 40),
    ]
    .join("---\n");
    let (policy, warnings) = compile(&text);
    assert_eq!(
        policy.sources,
        ["shop/a-wide", "shop/older", "shop/newer"],
        "{warnings:?}"
    );
    assert_eq!(policy.sampling_percent(Side::Server, 1.0), 10.0);
    assert!(
        warnings.iter().any(|w| w.contains("a-wide")),
        "the later namespace-wide one is warned about: {warnings:?}"
    );
}

/// The exporter the compiled bootstrap holds, and the warnings, for a whole
/// config text.
fn exporter(text: &str) -> (crate::model::bootstrap::Otlp, Vec<String>) {
    let file: Arc<str> = Arc::from("mesh.yaml");
    let compiled = super::super::compile_text(&file, text, 1, &Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let warnings = compiled
        .diagnostics
        .warnings()
        .map(ToString::to_string)
        .collect();
    (compiled.snapshot.bootstrap.telemetry.otlp.clone(), warnings)
}

#[test]
fn the_exporter_is_the_agents_endpoint_then_the_tracing_provider_then_the_builtin() {
    use crate::model::bootstrap::OtlpProtocol;
    // No endpoint on the Agent: the mesh's default tracing provider.
    let (otlp, _) = exporter(AGENT);
    assert_eq!(
        otlp.endpoint,
        "http://collector.observability.svc.cluster.local:4317"
    );
    assert_eq!(otlp.protocol, OtlpProtocol::Grpc);
    // The Agent's own endpoint wins over any provider.
    let explicit = AGENT.replace(
        "spec: {service: reviews,",
        "spec: {telemetry: {otlp: {endpoint: \"http://10.0.0.9:4318\", protocol: http}}, service: reviews,",
    );
    let (otlp, _) = exporter(&explicit);
    assert_eq!(otlp.endpoint, "http://10.0.0.9:4318/v1/traces");
    assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
    // No tracing provider at all: the built-in collector.
    let (otlp, _) = exporter(&AGENT.replace("      tracing: [otel]\n", ""));
    assert_eq!(otlp.endpoint, "http://127.0.0.1:4317");
    assert_eq!(otlp.protocol, OtlpProtocol::Grpc);
    // A provider with `http`: OTLP/HTTP at its path, timeout and headers.
    let http = AGENT.replace(
        "    - name: file-log\n",
        "    - name: otel-http\n      opentelemetry:\n        service: 10.0.0.7\n        port: 4318\n        http:\n          path: /otlp/v1/traces\n          timeout: 3s\n          headers: [{name: x-api-key, value: k3y}]\n    - name: file-log\n",
    );
    let (otlp, _) = exporter(&format!(
        "{http}---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: shop}}\nspec:\n  tracing: [{{providers: [{{name: otel-http}}]}}]\n"
    ));
    assert_eq!(otlp.endpoint, "http://10.0.0.7:4318/otlp/v1/traces");
    assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(otlp.timeout, std::time::Duration::from_secs(3));
    assert_eq!(otlp.headers, vec![("x-api-key".into(), "k3y".into())]);
}

#[test]
fn client_and_server_providers_that_differ_export_to_the_servers_with_a_warning() {
    let (otlp, warnings) = exporter(&format!(
        "{AGENT}---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: shop}}\nspec:\n  tracing:\n  - match: {{mode: CLIENT}}\n    providers: [{{name: otel-b}}]\n"
    ));
    assert_eq!(
        otlp.endpoint, "http://collector.observability.svc.cluster.local:4317",
        "the SERVER side's provider (the mesh default) wins"
    );
    let warning = warnings
        .iter()
        .find(|w| w.contains("spec.telemetry.otlp.endpoint"))
        .unwrap_or_else(|| panic!("a warning naming both providers: {warnings:?}"));
    assert!(warning.contains("mesh.yaml"), "{warning}");
    assert!(
        warning.contains("\"otel\"") && warning.contains("\"otel-b\""),
        "{warning}"
    );
}

/// A Telemetry that only adds `customTags`, in a mesh whose config names
/// no tracing provider, keeps the Agent's own exporter reporting (as Istio
/// keeps its mesh-wide tracing when no default provider is named), with
/// the tags added.
#[test]
fn custom_tags_without_any_tracing_provider_keep_the_agents_exporter() {
    let file: Arc<str> = Arc::from("mesh.yaml");
    let text = r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: shop-v1, namespace: default}
spec: {service: shop, labels: {app: shop}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: tags, namespace: default}
spec:
  selector: {matchLabels: {app: shop}}
  tracing:
  - customTags:
      env: {literal: {value: prod}}
"#;
    let compiled = super::super::compile_text(&file, text, 1, &Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let tracing = compiled
        .snapshot
        .telemetry
        .side(Side::Server)
        .tracing
        .clone()
        .unwrap_or_else(|| panic!("a tracing policy"));
    assert!(!tracing.disabled);
    assert_eq!(tracing.custom_tags.len(), 1);
    // A provider named but unknown still reports nothing (and is warned).
    let unknown = text.replace(
        "  - customTags:",
        "  - providers: [{name: nowhere}]\n    customTags:",
    );
    let compiled = super::super::compile_text(&file, &unknown, 1, &Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let tracing = compiled
        .snapshot
        .telemetry
        .side(Side::Server)
        .tracing
        .clone();
    assert!(tracing.is_some_and(|t| t.disabled));
}

/// A tracing provider's timeout of nothing is a config error naming its
/// field: it becomes the span export's, and every export would fail.
#[test]
fn a_tracing_providers_timeout_of_nothing_is_refused() {
    let text = AGENT.replace(
        "port: 4317}\n    - name: otel-b",
        "port: 4317, grpc: {timeout: 0s}}\n    - name: otel-b",
    );
    assert_ne!(text, AGENT);
    let file: Arc<str> = Arc::from("mesh.yaml");
    let error = super::super::compile_text(&file, &text, 1, &Default::default())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("extensionProviders[0].opentelemetry.grpc.timeout"),
        "{error}"
    );
}
