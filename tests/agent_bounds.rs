//! The agent stays bounded whatever its config says: sizes in the config
//! have documented maxima checked before anything is allocated, an oversize
//! file is refused unread, an unchanged file is not read again, and a slow
//! reload never stalls the admin API.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::agent::{Agent, binary, validate, write_config};
use common::client::raw_get;
use common::mesh::{NO_COLLECTOR, agent};
use common::upstream::closed_port;

/// A RateLimitPolicy whose one rule keeps `max_keys` keyed buckets.
fn rate_limit(max_keys: &str) -> String {
    format!(
        "---\napiVersion: tracemesh.io/v1\nkind: RateLimitPolicy\nmetadata: {{name: per-client, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: frontend}}}}\n  rules:\n  - name: per-client\n    key: {{remoteIp: true}}\n    maxKeys: {max_keys}\n    tokenBucket: {{maxTokens: 10, tokensPerFill: 10, fillInterval: 1s}}\n"
    )
}

/// `count` ServiceEntries: a config that takes seconds to compile in a
/// debug build, and megabytes to read.
fn many_service_entries(count: usize) -> String {
    (0..count)
        .map(|i| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc{i}, namespace: default}}\nspec:\n  hosts: [svc{i}.example.com]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 10.1.{}.{}}}]\n",
                i / 250,
                i % 250
            )
        })
        .collect()
}

/// Replaces the file in one step, as editors and ConfigMap updates do.
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_table_past_its_bound_is_refused_before_it_is_allocated() {
    let base = agent("frontend", closed_port().await, NO_COLLECTOR);
    // The example from the report: 4294967295 keys made `validate` allocate
    // until the kernel killed it. Now it is an error naming the field.
    let started = Instant::now();
    let (ok, out) = validate(&(base.clone() + &rate_limit("4294967295")));
    assert!(!ok, "{out}");
    assert!(
        out.contains("spec.rules[0].maxKeys: must be between 1 and 1048576"),
        "{out}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "validate took {:?}",
        started.elapsed()
    );
    let (ok, out) = validate(&(base.clone() + &rate_limit("1048576")));
    assert!(ok, "the documented maximum is accepted: {out}");

    // A live reload with it is rejected, and the agent runs on.
    let agent = Agent::start(&(base.clone() + &rate_limit("100")));
    write_atomically(&agent.config, &(base + &rate_limit("4294967295")));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scrape = agent.metrics().await;
        if scrape.sum(
            "tracemesh_agent_config_loads_total",
            &[("result", "rejected")],
        ) >= 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "the reload was never rejected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(raw_get(agent.admin, "/ready").await.0, 200);
}

#[test]
fn a_config_past_16_mib_is_refused_unread() {
    let (_dir, path) = write_config(&format!("# {}\n", "x".repeat(16 * 1024 * 1024 + 1)));
    let out = Command::new(binary())
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "unreadable: {text}");
    assert!(
        text.contains("larger than 16 MiB, the most a config may hold"),
        "{text}"
    );
    let out = Command::new(binary())
        .args(["agent", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("larger than 16 MiB, the most a config may hold"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_config_is_not_read_again() {
    let config = agent("frontend", closed_port().await, NO_COLLECTOR) + &many_service_entries(2000);
    let size = config.len() as u64;
    let log = [("RUST_LOG", "info,tracemesh::image=debug")];
    let agent = Agent::start_with_env(&config, &log);
    // Start-up over first: a second after it is ready a proxy reads its own
    // text (2 MiB of its executable, for the huge page) and its smaps.
    agent.wait_stderr_line(&["start-up pages"]);
    // The watcher looks every 200 ms: over two seconds, reading the file's
    // content each time would read it ten times.
    let before = agent.bytes_read();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let read = agent.bytes_read() - before;
    assert!(
        read < size,
        "read {read} bytes while the {size}-byte config stayed unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_throughout_a_slow_reload() {
    let base = agent("frontend", closed_port().await, NO_COLLECTOR);
    let agent = Agent::start(&base);
    // Thousands of documents: seconds of compiling in a debug build.
    write_atomically(&agent.config, &(base + &many_service_entries(10_000)));
    let started = Instant::now();
    let mut last_answer = Instant::now();
    let mut longest_gap = Duration::ZERO;
    loop {
        let answered =
            tokio::time::timeout(Duration::from_secs(10), raw_get(agent.admin, "/ready"))
                .await
                .is_ok_and(|(status, _)| status == 200);
        if answered {
            let now = Instant::now();
            longest_gap = longest_gap.max(now.duration_since(last_answer));
            last_answer = now;
        }
        if agent.stderr().iter().any(|l| l.contains("config reloaded")) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the reload never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reload = started.elapsed();
    // Compiling took seconds; the admin API never went a second unanswered.
    assert!(
        longest_gap < Duration::from_secs(1),
        "/ready went {longest_gap:?} unanswered during a {reload:?} reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_shows_no_credentials() {
    let endpoint = "http://spans:hunter2@127.0.0.1:1";
    let config = agent("frontend", closed_port().await, endpoint).replace(
        &format!("otlp: {{endpoint: \"{endpoint}\"}}"),
        &format!(
            "otlp: {{endpoint: \"{endpoint}\", headers: {{authorization: \"Bearer s3cret-token\", x-api-key: k3y}}}}"
        ),
    );
    assert!(config.contains("s3cret-token"), "{config}");
    let agent = Agent::start(&config);
    let dump = agent.admin_get("/config_dump").await;
    for secret in ["hunter2", "s3cret-token", "k3y"] {
        assert!(!dump.contains(secret), "{secret} in {dump}");
    }
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let otlp = dump["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "Agent")
        .map(|r| r["spec"]["telemetry"]["otlp"].clone())
        .unwrap();
    assert_eq!(otlp["headers"]["authorization"], "<redacted>", "{otlp}");
    assert_eq!(otlp["headers"]["x-api-key"], "<redacted>", "{otlp}");
    assert_eq!(
        otlp["endpoint"], "http://spans:<redacted>@127.0.0.1:1",
        "{otlp}"
    );
}

/// The mesh config is part of `/config_dump` (where the extension
/// providers are), with the credentials a provider carries redacted: an
/// ext_authz check's fixed headers, an OpenTelemetry exporter's HTTP
/// headers and gRPC initial metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_shows_the_mesh_config_without_provider_credentials() {
    let mesh = r#"---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: authz
      envoyExtAuthzHttp:
        service: 127.0.0.1
        port: 9
        includeAdditionalHeadersInCheck: {authorization: "Bearer authz-s3cret"}
    - name: otel-grpc
      opentelemetry:
        service: 127.0.0.1
        port: 4317
        grpc: {initialMetadata: [{name: authorization, value: grpc-s3cret}]}
    - name: otel-http
      opentelemetry:
        service: 127.0.0.1
        port: 4318
        http: {path: /v1/traces, headers: [{name: x-api-key, value: http-s3cret}]}
"#;
    let config = agent("frontend", closed_port().await, NO_COLLECTOR) + mesh;
    let agent = Agent::start(&config);
    let dump = agent.admin_get("/config_dump").await;
    for secret in ["authz-s3cret", "grpc-s3cret", "http-s3cret"] {
        assert!(!dump.contains(secret), "{secret} in {dump}");
    }
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let mesh = dump["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "ConfigMap")
        .map(|r| r["data"]["mesh"].clone())
        .unwrap_or_else(|| panic!("no mesh config in {dump:#}"));
    let providers = &mesh["extensionProviders"];
    assert_eq!(providers[0]["name"], "authz", "{mesh}");
    assert_eq!(
        providers[0]["envoyExtAuthzHttp"]["includeAdditionalHeadersInCheck"]["authorization"],
        "<redacted>",
        "{mesh}"
    );
    let grpc = &providers[1]["opentelemetry"]["grpc"]["initialMetadata"][0];
    assert_eq!(grpc["name"], "authorization", "{mesh}");
    assert_eq!(grpc["value"], "<redacted>", "{mesh}");
    let http = &providers[2]["opentelemetry"]["http"]["headers"][0];
    assert_eq!(http["name"], "x-api-key", "{mesh}");
    assert_eq!(http["value"], "<redacted>", "{mesh}");
}
